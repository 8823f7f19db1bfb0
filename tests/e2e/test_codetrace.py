"""The code trace: `record -- CMD` names the line of the client's own code behind each call and conversation.

Real clients (the samples, the official SDK in its socket thread, raw httpx with a client per
call, a Node client) run under `sessiontap record` against the simulator; their calls in the
journal and findings.json must name the right file, line and function of the client's code.
The hook must not change what the client does or prints, and keeps the user's own
sitecustomize and NODE_OPTIONS working.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sessiontap.app.capture import analyse_capture
from tests.conftest import ROOT, SESSIONTAP, Run, clean_env, ensure_node_clients

MATRIX = ROOT / "tests" / "clients" / "matrix"
NODE = ROOT / "tests" / "clients" / "node"
SAMPLES = ROOT / "addons" / "samples"


def sample(*args: str) -> list[str]:
    """The command that runs a sample replica with these arguments."""
    return [sys.executable, "-m", "sessiontap.samples", *args]


def line_of(path: Path, function: str, needle: str) -> int:
    """The line number of the first line holding ``needle`` inside ``function`` of a Python file."""
    lines = path.read_text().splitlines()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == function:
            for i in range(node.lineno, (node.end_lineno or node.lineno) + 1):
                if needle in lines[i - 1]:
                    return i
    raise AssertionError(f"{needle!r} is not in {function}() of {path}")


def recorded(tmp_path: Path, home: Path, command: list[str], *flags: str, cwd: Path = ROOT,
             env: dict[str, str] | None = None) -> Run:
    from sessiontap.simulator.server import running_simulator

    out = tmp_path / "out"
    with running_simulator() as sim:
        proc = subprocess.run([SESSIONTAP, "record", "--mode", "reverse", "--upstream", sim.url, "--out", str(out),
                               *flags, "--", *command], capture_output=True, text=True, timeout=120, cwd=cwd,
                              env=clean_env(home, ELEVENLABS_API_KEY="sk_trace_0000", **(env or {})))
    return Run(proc.returncode, proc.stdout, proc.stderr, out)


def codes(run: Run) -> list[list[list]]:
    """Each journaled call's code path, in order."""
    return [c.get("code") or [] for c in run.calls()]


def test_the_faulty_socket_client_opens_every_conversation_in_send(tmp_path, sessiontap_home):
    run = recorded(tmp_path, sessiontap_home, sample("faulty-ws", "--declare", "none"))
    assert run.code == 0, run.stderr
    connect = line_of(SAMPLES / "websocket.py", "_connect", "return connect(")
    send = line_of(SAMPLES / "websocket.py", "send", "self._conversation()")
    paths = codes(run)
    assert len(paths) == 5
    for path in paths:  # innermost first: the socket made in _connect, reached from send()
        assert path[0] == ["addons/samples/websocket.py", connect, "_connect"]
        assert ["addons/samples/websocket.py", send, "send"] in path[:3]
    findings = json.loads((run.out / "findings.json").read_text())
    [per_message] = [f for f in findings["findings"] if f["rule"] == "new-conversation-per-message"]
    assert per_message["evidence"]["code"][0] == {"file": "addons/samples/websocket.py", "line": connect,
                                                  "function": "_connect"}
    assert len(per_message["evidence"]["opened_at"]) == 5
    assert f"websocket.py:{send} send" in findings["verdict"]
    # the saved directory alone still knows where: the capture carries the code
    offline, _ = analyse_capture(run.out)
    assert offline.verdict() == findings["verdict"]


def test_the_fixed_socket_client_opens_its_one_conversation_in_start_session(tmp_path, sessiontap_home):
    run = recorded(tmp_path, sessiontap_home, sample("fixed-ws", "--declare", "none"))
    assert run.code == 0, run.stderr
    start = line_of(SAMPLES / "websocket.py", "start_session", "self._conversation()")
    paths = codes(run)
    assert len(paths) == 5 and all(p == paths[0] for p in paths)  # one socket: one place
    assert ["addons/samples/websocket.py", start, "start_session"] in paths[0]


def test_http_calls_name_the_line_that_sent_each_one(tmp_path, sessiontap_home):
    run = recorded(tmp_path, sessiontap_home, sample("faulty-http", "--declare", "none", "--new-connection-per-call"))
    assert run.code == 0, run.stderr
    post = line_of(SAMPLES / "chat.py", "_simulate", "http.post(url")
    assert [p[0] for p in codes(run)] == [["addons/samples/chat.py", post, "_simulate"]] * 5
    findings = json.loads((run.out / "findings.json").read_text())
    reset = next(f for f in findings["findings"] if f["rule"] == "context-reset")
    assert reset["evidence"]["code"][0]["line"] == post and "sent from addons/samples/chat.py" in reset["message"]


def test_raw_httpx_with_a_client_per_call_and_keep_alive_name_the_client_script(tmp_path, sessiontap_home):
    for transport in ("new-connection", "keep-alive"):
        run = recorded(tmp_path / transport, sessiontap_home,
                       [sys.executable, str(MATRIX / "http_client.py"), "--behaviour", "new-conversation",
                        "--transport", transport])
        assert run.code == 0, run.stderr
        paths = codes(run)
        assert len(paths) == 5
        assert all(any(f[0] == "tests/clients/matrix/http_client.py" for f in p) for p in paths), paths


def test_the_official_sdk_socket_thread_still_names_the_users_line(tmp_path, sessiontap_home):
    run = recorded(tmp_path, sessiontap_home, [sys.executable, str(MATRIX / "sdk_client.py"), "--protocol",
                                               "websocket", "--behaviour", "socket-per-message"])
    assert run.code == 0, run.stderr
    paths = codes(run)
    assert len(paths) == 5
    # the SDK opens its socket in a thread of its own: the thread's creator is the user's code
    assert all(any(f[0] == "tests/clients/matrix/sdk_client.py" for f in p) for p in paths), paths


def test_a_node_client_names_its_own_line(tmp_path, sessiontap_home):
    why = ensure_node_clients()
    if why:
        pytest.fail(why)
    run = recorded(tmp_path, sessiontap_home, ["node", str(NODE / "js_ws.mjs"), "--behaviour", "socket-per-message"])
    assert run.code == 0, run.stderr
    paths = codes(run)
    assert len(paths) == 5
    assert all(any(f[0].endswith("js_ws.mjs") for f in p) for p in paths), paths


def test_output_is_byte_identical_with_and_without_the_hook(tmp_path, sessiontap_home):
    command = sample("fixed-http", "--declare", "none", "--turns", "3")
    with_hook = recorded(tmp_path / "on", sessiontap_home, command)
    without = recorded(tmp_path / "off", sessiontap_home, command, "--no-code-trace")
    assert with_hook.code == without.code == 0
    assert with_hook.stdout == without.stdout and with_hook.stdout
    assert all(codes(with_hook)) and not any(codes(without))
    assert not (without.out / "code.jsonl").exists()


def test_the_users_own_sitecustomize_and_node_options_still_work(tmp_path, sessiontap_home):
    mine = tmp_path / "mine"
    mine.mkdir()
    marker = tmp_path / "marker"
    (mine / "sitecustomize.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    child = "import os, sys; print(os.environ.get('NODE_OPTIONS', '')); sys.exit(3)"
    run = recorded(tmp_path, sessiontap_home, [sys.executable, "-c", child],
                   env={"PYTHONPATH": str(mine), "NODE_OPTIONS": "--max-old-space-size=300"})
    assert run.code == 3  # the child's own exit code
    assert marker.read_text() == "ran"  # the user's sitecustomize ran after ours
    assert run.stdout.strip().endswith("--max-old-space-size=300") and "preload.cjs" in run.stdout
    node = subprocess.run(["node", "-e", "process.exit(0)"], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "NODE_OPTIONS": run.stdout.strip(), "SESSIONTAP_CODE_TRACE": ""})
    assert node.returncode == 0, node.stderr


ASYNC_CLIENT = '''
import asyncio, json, os
from websockets.asyncio.client import connect


async def converse(text):
    url = os.environ["ELEVENLABS_BASE_URL"].replace("http", "ws", 1) + "/v1/convai/conversation?agent_id=a"
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "conversation_initiation_client_data"}))
        await ws.send(json.dumps({"type": "user_message", "text": text}))
        for _ in range(20):
            if json.loads(await ws.recv())["type"] == "agent_response":
                break


async def main():
    for text in ("I need to classify cotton t-shirts.", "They are made in Vietnam."):
        await asyncio.create_task(converse(text))


asyncio.run(main())
'''


def test_asyncio_and_the_sdks_http_client_name_their_lines(tmp_path, sessiontap_home):
    script = tmp_path / "async_client.py"
    script.write_text(ASYNC_CLIENT)
    run = recorded(tmp_path / "async", sessiontap_home, [sys.executable, str(script)], cwd=tmp_path)
    assert run.code == 0, run.stderr
    paths = codes(run)
    assert len(paths) == 2
    opened = line_of(script, "converse", "async with connect(")
    created = line_of(script, "main", "asyncio.create_task(")
    for path in paths:  # the socket opened in converse(), the task that runs it created in main()
        assert ["async_client.py", opened, "converse"] in path and ["async_client.py", created, "main"] in path, path
    sdk = recorded(tmp_path / "sdk", sessiontap_home, [sys.executable, str(MATRIX / "sdk_client.py"), "--protocol",
                                                       "http", "--behaviour", "new-conversation"])
    assert sdk.code == 0, sdk.stderr
    assert all(any(f[0] == "tests/clients/matrix/sdk_client.py" for f in p) for p in codes(sdk)) and codes(sdk)

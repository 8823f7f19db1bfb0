"""Tests for addons/probe/run.py through `sessiontap probe`: real mitmproxy, the simulator, real line clients."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sessiontap.probe.scenarios import NAMES
from sessiontap.simulator.server import running_simulator
from tests.conftest import SESSIONTAP, clean_env, ensure_node_clients

PROTOCOLS = ("http", "websocket")
CHECKS = {"conversation": ["facts-carried", "one-session", "opening-once", "context-grows"],
          "product": ["facts-carried", "opening-once"], "officer": ["facts-carried", "opening-once"],
          "persistence": ["one-session", "context-grows"], "context-size": ["context-size", "context-grows"]}
# How the faulty sample clients fail each check (--turns 3): the rule, or the words, each reason starts with.
FAULTY = {
    "http": {"facts-carried": "context-missing-turn: the newest user message is missing from `conversation_context`",
             "one-session": "context-reset: context went back to empty at call #2",
             "opening-once": "repeated-opening: the agent answered with its opening line again",
             "context-grows": "the context did not grow: 0 turns at message 1",
             "context-size": "after 12 messages the product ('cotton t-shirts') is no longer in the context"},
    "websocket": {"facts-carried": "the product ('cotton t-shirts', said in message 1) is not in the context of "
                                   "message 2 (websocket transcript: 1 turn)",
                  "one-session": "new-conversation-per-message: ",
                  "opening-once": "repeated-opening: the agent answered with its opening line again",
                  "context-grows": "the context did not grow: 1 turn at message 1",
                  "context-size": "after 12 messages the product ('cotton t-shirts') is no longer in the context"},
}
LINE_CLIENT = """import os, runpy, sys
assert os.environ["SESSIONTAP_PROBE_SCENARIO"] == "persistence"
kind = {"http": "fixed-http", "websocket": "fixed-ws"}[os.environ["SESSIONTAP_PROBE_PROTOCOL"]]
sys.argv = ["client", kind, "--stdin"]
runpy.run_module("sessiontap.samples", run_name="__main__")
"""


def runs_of(out: Path) -> list[dict[str, Any]]:
    return json.loads((out / "probe.json").read_text())["runs"]


def rows(stdout: str) -> dict[str, list[str]]:
    """The table's check rows, scenario by scenario: 'scenario check' -> its cells."""
    out: dict[str, list[str]] = {}
    scenario = ""
    for line in stdout.splitlines():
        if line and not line.startswith(" "):
            scenario = line.split(":")[0]
        elif line.startswith("  ") and not line.startswith("    ") and not line.startswith("  check"):
            check, *cells = line.split()
            out[f"{scenario} {check}"] = cells
    return out


def test_the_fixed_samples_pass_every_scenario_over_both_protocols(sessiontap, tmp_path: Path):
    out = tmp_path / "probe"
    run = sessiontap("probe", "--out", str(out), timeout=240)  # the defaults: regular mode, all, both, simulator
    assert run.code == 0, run.stderr
    runs = runs_of(out)
    assert [(r["scenario"], r["protocol"]) for r in runs] == [(s, p) for p in PROTOCOLS for s in NAMES]
    assert all(c["passed"] for r in runs for c in r["checks"]), runs
    assert rows(run.stdout) == {f"{s} {c}": ["pass", "pass"] for s in NAMES for c in CHECKS[s]}
    assert "24 of 24 checks passed" in run.stdout and "Traceback" not in run.stderr
    for r in runs:
        assert [c["check"] for c in r["checks"]] == CHECKS[r["scenario"]]
        assert all((Path(r["out"]) / name).is_file() for name in ("flows.mitm", "findings.json", "report.html"))
        assert f"sessiontap: {r['scenario']} over {r['protocol']}: {len(r['checks'])} of {len(r['checks'])} " \
               "checks passed" in run.stderr
    assert "the conversation continues" in runs[0]["verdict"]


def test_the_faulty_samples_fail_every_check_naming_the_findings(sessiontap, tmp_path: Path):
    out = tmp_path / "probe"
    run = sessiontap("probe", "--sample", "faulty", "--mode", "reverse", "--turns", "3", "--out", str(out),
                     timeout=240)
    assert run.code == 1, run.stderr
    runs = runs_of(out)
    assert len(runs) == 10 and not any(c["passed"] for r in runs for c in r["checks"])
    for r in runs:
        for c in r["checks"]:
            assert c["reason"].startswith(FAULTY[r["protocol"]][c["check"]]), (r["scenario"], r["protocol"], c)
            assert f"    {r['protocol']} {c['check']}: {c['reason']}" in run.stdout
    assert rows(run.stdout) == {f"{s} {c}": ["FAIL", "FAIL"] for s in NAMES for c in CHECKS[s]}
    assert "0 of 24 checks passed, 24 failed" in run.stdout


def test_client_probes_its_protocol_as_asked_through_the_environment(sessiontap, tmp_path: Path):
    script = tmp_path / "client.py"
    script.write_text(LINE_CLIENT)
    out = tmp_path / "probe"
    run = sessiontap("probe", "--client", f"{sys.executable} {script}", "--protocol", "both", "--scenario",
                     "persistence", "--mode", "reverse", "--out", str(out))
    assert run.code == 0, run.stderr
    assert [(r["protocol"], r["passed"]) for r in runs_of(out)] == [("http", True), ("websocket", True)]
    assert f"probing `{sys.executable} {script}`" in run.stderr


def test_client_without_a_protocol_runs_once_labelled_by_what_it_spoke(sessiontap, tmp_path: Path):
    out = tmp_path / "probe"
    fixed = sessiontap("probe", "--client", f"{sys.executable} -m sessiontap.samples fixed-ws --stdin",
                       "--scenario", "officer", "--mode", "reverse", "--out", str(out))
    assert fixed.code == 0, fixed.stderr
    (only,) = runs_of(out)
    assert only["protocol"] == "websocket" and Path(only["out"]).name == "officer-client"
    faulty = sessiontap("probe", "--client", f"{sys.executable} -m sessiontap.samples faulty-http --stdin",
                        "--scenario", "officer", "--mode", "reverse", "--out", str(tmp_path / "faulty"))
    assert faulty.code == 1
    failed = {c["check"]: c["reason"] for c in runs_of(tmp_path / "faulty")[0]["checks"]}
    assert failed["opening-once"].startswith("repeated-opening:")
    assert failed["facts-carried"].startswith("context-missing-turn:")


CLIENTS = Path(__file__).resolve().parents[1] / "clients"
SDK = f"{sys.executable} {CLIENTS / 'matrix' / 'sdk_client.py'} --stdin"
JS = f"node {CLIENTS / 'node'}"
FORGETS_HTTP = {"facts-carried": "the product ('cotton t-shirts', said in message 1) is not in the context of "
                                 "message 2",
                "one-session": "context-reset: ", "context-grows": "the context did not grow"}
FORGETS_WS = {"one-session": "new-conversation-per-message: ", "opening-once": "repeated-opening: "}


@pytest.mark.parametrize(("client", "protocol", "mode", "failed"), [
    (f"{SDK} --protocol http", "http", "reverse", {}),
    (f"{SDK} --protocol http --behaviour new-message-only", "http", "reverse", FORGETS_HTTP),
    (f"{SDK} --protocol websocket", "websocket", "reverse", {}),
    (f"{SDK} --protocol websocket --behaviour socket-per-message", "websocket", "regular", FORGETS_WS),
    (f"{JS}/js_http.mjs --stdin", "http", "regular", {}),
    (f"{JS}/js_http.mjs --stdin --behaviour new-conversation", "http", "reverse", FORGETS_HTTP),
    (f"{JS}/js_ws.mjs --stdin", "websocket", "reverse", {}),
    (f"{JS}/js_ws.mjs --stdin --behaviour socket-per-message", "websocket", "regular", FORGETS_WS),
], ids=["sdk-http", "sdk-http-newest-only", "sdk-ws", "sdk-ws-socket-per-message", "elevenlabs-js-regular",
        "elevenlabs-js-newest-only", "elevenlabs-client-ws", "elevenlabs-client-ws-socket-per-message-regular"])
def test_clients_we_did_not_write_that_declare_no_session_are_probed_through_the_line_contract(
        sessiontap, tmp_path: Path, client: str, protocol: str, mode: str, failed: dict[str, str]):
    """Not our samples: the `elevenlabs` SDK's simulate_conversation and Conversation, elevenlabs-js's
    simulateConversation and @elevenlabs/client's Conversation on the WebSocket; no session id, no API key set."""
    if client.startswith("node") and (why := ensure_node_clients()):
        pytest.fail(why)
    out = tmp_path / "probe"
    # In regular mode the client keeps the real API's address; the proxy sends it to the simulator.
    env = {"ELEVENLABS_API_KEY": "", "ELEVENLABS_BASE_URL": "https://api.elevenlabs.io"}
    run = sessiontap("probe", "--client", client, "--protocol", protocol, "--scenario", "conversation", "--mode",
                     mode, "--out", str(out), env=env)
    assert run.code == (1 if failed else 0), run.stderr
    (only,) = runs_of(out)
    assert only["protocol"] == protocol
    reasons = {c["check"]: c["reason"] for c in only["checks"] if not c["passed"]}
    assert set(reasons) >= set(failed), reasons
    for check, start in failed.items():
        assert reasons[check].startswith(start), (check, reasons[check])
    assert bool(reasons) == bool(failed)


@pytest.mark.parametrize(("client", "said"), [
    ("{python} -c \"import sys; sys.stdin.readline(); sys.exit('no agent configured')\"",
     "conversation over http: the client exited (code 1) before replying to message 1; it said last: "
     "no agent configured (recorded so far: "),
    ("{python} -m sessiontap.samples fixed-http --stdin --protocol websocket",
     "conversation: asked for websocket, the client spoke http; give --protocol http, or have the client read "
     "SESSIONTAP_PROBE_PROTOCOL"),
    ("no-such-client-command", "cannot run 'no-such-client-command'"),
])
def test_a_client_that_breaks_the_contract_stops_the_probe_with_one_line(sessiontap, tmp_path: Path, client: str,
                                                                        said: str):
    command, _, protocol = client.format(python=sys.executable).partition(" --protocol ")
    run = sessiontap("probe", "--client", command, "--protocol", protocol or "http", "--scenario", "conversation",
                     "--mode", "reverse", "--out", str(tmp_path / "probe"))
    assert run.code == 1
    errors = [line for line in run.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and said in errors[0], run.stderr
    assert "Traceback" not in run.stderr
    (only,) = runs_of(tmp_path / "probe")  # the probe stops there, and keeps what it played
    assert only["stopped"] in errors[0] and not only["passed"]
    assert run.stdout.splitlines()[-1] == (f"no check ran; stopped at conversation over {protocol or 'http'}: its 4 "
                                           "checks not judged")


def test_a_run_that_cannot_be_judged_keeps_the_runs_before_it(sessiontap, tmp_path: Path):
    """An HTTP-only client asked for both protocols: its HTTP half is kept, the WebSocket run stops the probe."""
    out = tmp_path / "probe"
    run = sessiontap("probe", "--client", f"{sys.executable} -m sessiontap.samples fixed-http --stdin", "--protocol",
                     "both", "--scenario", "persistence", "--mode", "reverse", "--out", str(out))
    assert run.code == 1
    http, websocket = runs_of(out)
    assert http["passed"] and http["stopped"] is None
    assert not websocket["passed"] and "asked for websocket, the client spoke http" in websocket["stopped"]
    assert rows(run.stdout) == {"persistence one-session": ["pass", "FAIL"],
                                "persistence context-grows": ["pass", "FAIL"]}
    assert run.stdout.splitlines()[-1] == ("2 of 2 checks passed; stopped at persistence over websocket: its 2 checks "
                                           "not judged")


@contextlib.contextmanager
def simulator_with(home: Path, *flags: str) -> Iterator[str]:
    """`sessiontap simulate FLAGS` on a free port: its URL."""
    proc = subprocess.Popen([SESSIONTAP, "simulate", "--port", "0", *flags], text=True,
                            stdout=subprocess.PIPE, env=clean_env(home))
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "ElevenLabs simulator listening on http://127.0.0.1:PORT"
        assert "listening on http://127.0.0.1:" in line, line
        yield line.split()[-1]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def removed_404(sessiontap_home: Path) -> Iterator[str]:
    with simulator_with(sessiontap_home, "--simulate-removed", "404") as url:
        yield url


def test_the_fixed_samples_pass_when_the_api_echoes_the_history_in_its_reply(sessiontap, sessiontap_home: Path,
                                                                             tmp_path: Path):
    """The other reply shape: the fixed client once took an echoed agent turn for the reply (context-missing-turn)."""
    with simulator_with(sessiontap_home, "--history-echo") as url:
        run = sessiontap("probe", "--to", url, "--protocol", "http", "--out", str(tmp_path / "probe"), timeout=240)
    assert run.code == 0, run.stdout
    assert "12 of 12 checks passed" in run.stdout


def gone_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "simulate-conversation answered HTTP" in line]


def test_when_simulate_conversation_is_gone_the_http_half_says_so_and_the_websocket_half_runs(
        sessiontap, tmp_path: Path, removed_404: str):
    out = tmp_path / "probe"
    run = sessiontap("probe", "--to", removed_404, "--turns", "2", "--mode", "reverse", "--out", str(out),
                     timeout=240)
    assert run.code == 0, run.stderr  # the half that could run passed; the other did not run
    (line,) = gone_lines(run.stderr)
    for words in ("HTTP 404: it is gone", "2026-10-31", "a 404 can also be a wrong path or agent id",
                  "WebSocket text-only conversation (/v1/convai/conversation)",
                  "agent-testing API (/v1/convai/agent-testing/create, then /v1/convai/agents/{agent_id}/run-tests)",
                  "the HTTP runs are skipped; the WebSocket half runs"):
        assert words in line
    runs = runs_of(out)
    http, websocket = runs[:5], runs[5:]
    assert [r["gone"] for r in http] == [404] * 5 and not any(r["passed"] for r in http)
    assert [r["scenario"] for r in websocket] == list(NAMES) and all(r["passed"] for r in websocket)
    assert (out / "conversation-http" / "findings.json").is_file()  # the one HTTP run played
    assert not (out / "product-http").exists()  # the others were not
    assert rows(run.stdout) == {f"{s} {c}": ["gone", "pass"] for s in NAMES for c in CHECKS[s]}
    assert "    http: simulate-conversation answered HTTP 404: the endpoint is gone" in run.stdout
    assert run.stdout.splitlines()[-1] == "12 of 12 checks passed; 12 not run (simulate-conversation is gone: HTTP 404)"
    assert json.loads((out / "probe.json").read_text())["passed"] is True


def test_when_simulate_conversation_is_gone_a_failing_websocket_half_still_fails(sessiontap, tmp_path: Path):
    with running_simulator(simulate_removed=404) as sim:
        run = sessiontap("probe", "--to", sim.url, "--sample", "faulty", "--scenario", "persistence", "--mode",
                         "reverse", "--out", str(tmp_path / "probe"))
    assert run.code == 1, run.stderr
    assert run.stdout.splitlines()[-1] == "0 of 2 checks passed, 2 failed; 2 not run (simulate-conversation is gone: " \
                                          "HTTP 404)"


def test_a_410_over_http_alone_points_at_the_websocket_half(sessiontap, tmp_path: Path):
    with running_simulator(simulate_removed=410) as sim:
        run = sessiontap("probe", "--to", sim.url, "--protocol", "http", "--scenario", "product", "--mode",
                         "reverse", "--out", str(tmp_path / "probe"))
    assert run.code == 1  # nothing could be checked
    (line,) = gone_lines(run.stderr)
    assert "HTTP 410" in line and "probe the WebSocket half with --protocol websocket" in line
    assert "wrong path" not in line  # a 410 says gone, and nothing else
    assert run.stdout.splitlines()[-1] == "no check ran; 2 not run (simulate-conversation is gone: HTTP 410)"


def test_an_interrupted_probe_ends_with_one_line_and_stops_its_client(sessiontap_home: Path, tmp_path: Path):
    script = tmp_path / "slow.py"
    script.write_text("import sys, time\nsys.stdin.readline()\nprint('first', flush=True)\nsys.stdin.readline()\n"
                      "time.sleep(60)\n")
    proc = subprocess.Popen([SESSIONTAP, "probe", "--client", f"{sys.executable} {script}", "--protocol", "http",
                             "--scenario", "conversation", "--mode", "reverse", "--out", str(tmp_path / "probe")],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=clean_env(sessiontap_home))
    try:
        assert proc.stderr is not None
        for _ in range(20):  # the run's first lines: the probe, then the proxy recording
            if "recording to" in proc.stderr.readline():
                break
        time.sleep(1.0)  # the first reply comes at once, the second never
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1 and "Traceback" not in err
    assert "Error: conversation over http: interrupted after 1 of 5 replies (recorded so far: " in err


def test_a_probe_run_again_into_the_same_out_is_judged_alone(sessiontap, tmp_path: Path):
    out = tmp_path / "probe"
    args = ("probe", "--scenario", "persistence", "--protocol", "http", "--mode", "reverse", "--out", str(out))
    assert sessiontap(*args, "--sample", "faulty").code == 1
    again = sessiontap(*args)
    assert again.code == 0, again.stdout
    findings = json.loads((out / "persistence-http" / "findings.json").read_text())
    assert findings["calls"] == 6 and findings["findings"] == [], findings["verdict"]  # 12 calls, appended
    assert sessiontap("check", str(out / "persistence-http")).code == 0  # the faulty run is gone from the capture

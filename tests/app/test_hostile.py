"""Hostile payloads: lone surrogates, deep nesting and huge numbers never crash a command or lose a flow.

Offline, a capture holding them (HTTP bodies and WebSocket frames) goes through `check`,
`report` and `export`: exit codes 0/1 for check (2 only when the capture cannot be read), every
artifact parses. Live, the same bodies go through `sessiontap record` to the simulator: the
client gets what it gets directly, every journal line parses, the flows are in the capture.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from mitmproxy import io
from mitmproxy.test import tflow

from sessiontap.app.capture import read_capture
from sessiontap.app.cli import main as cli
from tests.conftest import SESSIONTAP, clean_env

SIMULATE = "/v1/convai/agents/agent_customs_demo/simulate-conversation"
DEEP = 3000


def history(*turns: str) -> str:
    return '{"simulation_specification": {"partial_conversation_history": [' + ", ".join(turns) + "]}}"


HOSTILE = {
    "lone-surrogate": history('{"role": "user", "message": "hi \\ud83d there", "time_in_call_secs": 0}'),
    "deep-nesting": '{"simulation_specification": {"partial_conversation_history": '
                    + "[" * DEEP + "]" * DEEP + "}}",
    "deep-turn": history('{"role": "user", "message": "x", "time_in_call_secs": 0, "extra": '
                         + "[" * DEEP + "]" * DEEP + "}"),
    "huge-number": history('{"role": "user", "message": "x", "time_in_call_secs": 1' + "0" * 400 + "}"),
    "huge-float": history('{"role": "user", "message": "x", "time_in_call_secs": 1e999}'),
    "wrong-types": history('{"role": 7, "message": {"a": 1}}', '{"role": "user", "message": null}', '"text"',
                           "null", "3"),
}
REPLY = '{"simulated_conversation": [{"role": "agent", "message": "ok \\udc00", "time_in_call_secs": 1e400}]}'
FRAMES = ['{"type": "user_message", "text": "hi \\ud83d"}', '{"type": "user_message", "text": ' + "[" * DEEP
          + "]" * DEEP + "}", '{"type": "agent_response", "agent_response_event": {"agent_response": '
          + "[" * DEEP + "]" * DEEP + "}}"]


def capture(path: Path) -> Path:
    """A flow file with every hostile body as a simulate call and every hostile frame on one socket."""
    with open(path, "wb") as f:
        writer = io.FlowWriter(f)
        for body in HOSTILE.values():
            flow = tflow.tflow(resp=True)
            flow.request.method, flow.request.path = "POST", SIMULATE
            flow.request.content = body.encode()
            flow.response.content = REPLY.encode()
            writer.add(flow)
        ws = tflow.twebsocketflow()
        ws.request.path = "/v1/convai/conversation?agent_id=a"
        for i, text in enumerate(FRAMES):
            ws.websocket.messages[i % len(ws.websocket.messages)].content = text.encode()
        writer.add(ws)
    return path


def test_check_report_and_export_survive_every_hostile_payload(tmp_path: Path):
    flows = capture(tmp_path / "flows.mitm")
    runner = CliRunner()
    check = runner.invoke(cli, ["check", str(flows)])
    assert check.exit_code in (0, 1), check.output
    assert "Traceback" not in check.output
    report = runner.invoke(cli, ["report", str(flows), "--out", str(tmp_path / "r")])
    assert report.exit_code == 0, report.output
    findings = json.loads((tmp_path / "r" / "findings.json").read_text(encoding="utf-8"))
    assert findings["calls"] >= len(HOSTILE)
    assert {f["rule"] for f in findings["findings"]} >= {"unparsed-payload"}  # the deep bodies are named
    assert (tmp_path / "r" / "report.html").read_text(encoding="ascii")
    export = runner.invoke(cli, ["export", str(flows), "--har", str(tmp_path / "out.har")])
    assert export.exit_code == 0, export.output
    assert len(json.loads((tmp_path / "out.har").read_text())["log"]["entries"]) == len(HOSTILE) + 1


def test_an_unreadable_capture_is_exit_2_and_a_crash_is_never_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    runner = CliRunner()
    bad = tmp_path / "bad.mitm"
    bad.write_bytes(b"\x00\x01 not a flow file")
    result = runner.invoke(cli, ["check", str(bad)])
    assert result.exit_code == 2 and result.output.startswith("Error: ")

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("analysis exploded")

    monkeypatch.setattr("sessiontap.app.capture.analyse_records", boom)
    flows = capture(tmp_path / "flows.mitm")
    for args, code in ((["check", str(flows)], 2), (["report", str(flows), "--out", str(tmp_path / "r")], 1)):
        result = runner.invoke(cli, args)
        assert result.exit_code == code, result.output
        assert "analysis exploded" in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1


CLIENT = r"""
import json, os, sys, httpx
bodies = json.loads(sys.argv[1])
out = {}
with httpx.Client(timeout=20) as http:
    for name, body in bodies.items():
        r = http.post(os.environ["ELEVENLABS_BASE_URL"] + sys.argv[2], content=body.encode(),
                      headers={"xi-api-key": "sk_hostile_0000", "content-type": "application/json"})
        out[name] = [r.status_code, r.content.decode("latin-1")]
print(json.dumps(out, sort_keys=True))
"""


def test_hostile_bodies_pass_through_the_proxy_unchanged_and_are_recorded(tmp_path: Path, sessiontap_home: Path):
    from sessiontap.simulator.server import running_simulator

    command = [sys.executable, "-c", CLIENT, json.dumps(HOSTILE), SIMULATE]
    with running_simulator() as sim:
        env = clean_env(sessiontap_home, ELEVENLABS_API_KEY="sk_hostile_0000")
        direct = subprocess.run(command, capture_output=True, text=True, timeout=60,
                                env={**env, "ELEVENLABS_BASE_URL": sim.url})
        proxied = subprocess.run([SESSIONTAP, "record", "--mode", "reverse", "--upstream", sim.url, "--out",
                                  str(tmp_path / "out"), "--", *command], capture_output=True, text=True,
                                 timeout=120, env=env)
    assert direct.returncode == proxied.returncode == 0, proxied.stderr
    assert json.loads(proxied.stdout.splitlines()[0]) == json.loads(direct.stdout)  # byte for byte, status and body
    lines = (tmp_path / "out" / "journal.jsonl").read_text(encoding="utf-8").splitlines()
    assert all(json.loads(line) for line in lines)
    assert sum(1 for line in lines if json.loads(line)["event"] == "call") == len(HOSTILE)
    assert len(read_capture(tmp_path / "out").records) == len(HOSTILE)
    json.loads((tmp_path / "out" / "findings.json").read_text(encoding="utf-8"))
    assert "Traceback" not in proxied.stderr

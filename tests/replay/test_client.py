"""Client replay: the recorded conversations re-sent through the proxy to the simulator, as recorded or varied."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import io

from sessiontap.app.capture import analyse_flows, analyse_records, flow_records, read_capture, redacted_records
from sessiontap.replay.client import (
    REPLAY_OF_HEADER,
    Replayer,
    ReplayTargetError,
    build_plan,
    parse_replay_of,
    replay_of,
    replay_upstream,
)
from sessiontap.replay.vary import AS_RECORDED
from sessiontap.router import DEFAULT_UPSTREAM
from sessiontap.simulator.server import Faults, running_simulator
from tests.conftest import DEMO_KEY, SESSIONTAP, clean_env, free_port

FAULTY_HTTP = "elevenlabs-session-0"


def client_replay(demo: Path, out: Path, home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([SESSIONTAP, "replay", "--client", str(demo), "--out", str(out), *args],
                          capture_output=True, text=True, timeout=timeout, env=clean_env(home))


def sessions_by_protocol(behaviour: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The behaviour.json sessions of the demo by who made them: faulty/fixed and http/websocket."""
    out = {}
    for s in behaviour["sessions"]:
        faulty = not s["continuity"]["original"]["continues"]
        out[("faulty-" if faulty else "fixed-") + ("http" if s["protocol"] == "http" else "ws")] = s
    return out


@pytest.fixture(scope="module")
def demo(demo_capture: tuple[Path, Any]) -> Path:
    return demo_capture[0]


@pytest.fixture(scope="module")
def varied(demo: Path, sessiontap_home: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One client replay of the demo in every context mode (about 10 s), shared by the tests below."""
    out = tmp_path_factory.mktemp("varied")
    proc = client_replay(demo, out, sessiontap_home, "--vary-context", "all")
    assert proc.returncode == 0, proc.stderr
    return out, json.loads((out / "behaviour.json").read_text())


def test_the_plan_holds_every_call_in_order_and_no_secret(demo: Path):
    cap = read_capture(demo)
    analysis = analyse_records(cap.records)
    plan = build_plan(redacted_records(cap.records), analysis, str(demo))
    assert DEMO_KEY not in json.dumps(plan)
    assert len(plan["flows"]) == len(cap.records)
    sessions = {s["id"]: s for s in plan["sessions"]}
    faulty = sessions[FAULTY_HTTP]
    assert [c["number"] for c in faulty["calls"]] == [1, 2, 3, 4, 5]
    assert faulty["calls"][0]["user_text"] == "I need to classify cotton t-shirts for import."
    ws = [s for s in plan["sessions"] if s["protocol"] == "websocket"]
    assert all(s["init"]["type"] == "conversation_initiation_client_data" and s["opening"] for s in ws)
    # the fixed WebSocket client sent its officer update before the first message; it is sent again
    assert any(s["calls"][0]["updates"] == ["Officer on duty: J. Smith"] for s in ws)
    assert parse_replay_of(replay_of("a b#2", 3)) == ("a b#2", 3) and parse_replay_of("x") is None


@pytest.mark.timeout(180)
def test_replayed_as_recorded_the_simulator_answers_every_call_as_it_did(demo, sessiontap_home, tmp_path):
    proc = client_replay(demo, tmp_path, sessiontap_home)
    assert proc.returncode == 0, proc.stderr
    behaviour = json.loads((tmp_path / "behaviour.json").read_text())
    assert behaviour["variants"] == [AS_RECORDED]
    for s in behaviour["sessions"]:
        runs = s["continuity"]
        assert runs[AS_RECORDED]["label"] == runs["original"]["label"] and not s["changed"][AS_RECORDED]
        for call in s["calls"]:  # the simulator is deterministic: the very same replies
            assert call["replies"][AS_RECORDED]["text"] == call["replies"]["original"]["text"], (s["id"], call)
    for name in ("flows.mitm", "findings.json", "report.html", "journal.jsonl"):
        assert (tmp_path / AS_RECORDED / name).exists()
    assert "does the conversation continue?" in proc.stderr and "behaviour.html" in proc.stderr
    for path in (tmp_path / "plan.json", tmp_path / AS_RECORDED / "flows.mitm"):
        assert DEMO_KEY.encode() not in path.read_bytes()


def test_full_context_makes_every_conversation_continue(varied):
    _, behaviour = varied
    by = sessions_by_protocol(behaviour)
    for kind, s in by.items():
        assert s["continuity"]["full"]["continues"], kind
        assert s["changed"]["full"] == kind.startswith("faulty"), kind
    # the faulty WebSocket client's five sockets become one
    assert by["faulty-ws"]["continuity"]["original"]["server_conversations"] == 5
    assert by["faulty-ws"]["continuity"]["full"]["server_conversations"] == 1


def test_no_context_resets_every_conversation_and_the_agent_forgets_the_product(varied):
    _, behaviour = varied
    for kind, s in sessions_by_protocol(behaviour).items():
        assert not s["continuity"]["none"]["continues"], kind
        assert s["changed"]["none"] == kind.startswith("fixed"), kind
        second = s["calls"][1]["replies"]
        assert "cotton t-shirts" in second["full"]["text"] and "cotton t-shirts" not in second["none"]["text"], kind
        assert second["none"]["reset"] and not second["full"]["reset"]


def test_flattened_formats_carry_the_turns_on_http_and_a_summary_keeps_the_facts(varied):
    _, behaviour = varied
    by = sessions_by_protocol(behaviour)
    for kind in ("faulty-http", "fixed-http"):
        runs = by[kind]["continuity"]
        assert runs["transcript"]["continues"] and runs["structured"]["continues"], kind
        assert not runs["summary"]["continues"], kind  # the wire shows turns replaced by a summary...
    for kind, s in by.items():  # ...but the agent answers closer to the full history than with nothing
        runs = s["continuity"]
        assert runs["summary"]["like_full"] > runs["none"]["like_full"], kind
        assert runs["full"]["like_full"] is None
    # on the socket, these formats reconnect for every message: the agent greets again each time
    assert "new-conversation-per-message" in by["fixed-ws"]["continuity"]["transcript"]["rules"]


def test_the_full_replay_sends_the_whole_history_on_the_wire(varied):
    out, _ = varied
    with open(out / "full" / "flows.mitm", "rb") as f:
        flows = list(io.FlowReader(f).stream())
    sizes: dict[str, list[int]] = {}
    for flow in flows:
        tag = parse_replay_of(flow.request.headers.get(REPLAY_OF_HEADER))
        if tag and flow.websocket is None and flow.request.method == "POST":
            history = json.loads(flow.request.content)["simulation_specification"]["partial_conversation_history"]
            sizes.setdefault(tag[0], []).append(len(history))
    assert sizes and all(n == [1, 3, 5, 7, 9] for n in sizes.values()), sizes


@pytest.mark.timeout(60)
def test_a_signed_socket_gets_a_fresh_signed_url_and_pings_are_answered():
    plan = {"sessions": [{
        "id": "signed", "protocol": "websocket", "headers": {"x-session-id": "signed"}, "opening": True,
        "target": "/v1/convai/conversation?agent_id=agent_customs_demo&conversation_signature=%5BREDACTED%5D",
        "init": {"type": "conversation_initiation_client_data"},
        "calls": [{"number": 1, "user_text": "I need to classify cotton t-shirts.", "updates": []},
                  {"number": 2, "user_text": "They are made in Vietnam.", "updates": []}]}]}
    said: list[str] = []
    with running_simulator(require_signed_url=True, ping_interval=0.05, faults=Faults(latency=0.3)) as sim:
        failed = Replayer(sim.url, "sk_any", "full", timeout=10, say=said.append).run(plan)
        hits = list(sim.hits)
    assert failed == 0, said
    assert said[1].startswith("[full] signed call #2: reply") and "Vietnam" in said[1]
    assert said[-1].startswith("[full] done: 2 played, 0 failed, in ")
    assert [h.kind for h in hits if h.kind != "ws-message"] == ["http", "ws-open"]  # one socket for both calls
    assert hits[0].path.endswith("/get-signed-url") and "REDACTED" not in hits[1].query
    assert "conversation_signature=" in hits[1].query
    pongs = [json.loads(h.body) for h in hits if h.message_type == "pong"]
    assert pongs and all(isinstance(p["event_id"], int) for p in pongs)  # pings came while replies were awaited


@pytest.mark.timeout(120)
def test_failing_and_silent_upstreams_fail_calls_clearly_and_the_run_ends(demo, sessiontap_home, tmp_path):
    with running_simulator(faults=Faults(status=503)) as sim:
        proc = client_replay(demo, tmp_path / "503", sessiontap_home, "--to", sim.url, "--vary-context", "full")
    assert proc.returncode == 1
    assert "FAILED: HTTP 503" in proc.stdout
    by = sessions_by_protocol(json.loads((tmp_path / "503" / "behaviour.json").read_text()))
    assert by["fixed-http"]["calls"][0]["replies"]["full"]["status"] == "HTTP 503"
    assert by["fixed-http"]["continuity"]["full"]["label"] == "5 unanswered"  # failed calls do not "continue"
    assert by["fixed-ws"]["continuity"]["full"]["continues"]  # the socket has no HTTP fault
    with running_simulator(faults=Faults(latency=3.0)) as sim:
        proc = client_replay(demo, tmp_path / "slow", sessiontap_home, "--to", sim.url, "--timeout", "0.5")
    assert proc.returncode == 1 and "no reply within 0.5 s" in proc.stdout
    down = client_replay(demo, tmp_path / "down", sessiontap_home, "--to", f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 1 and "is not reachable" in down.stderr and "Traceback" not in down.stderr


def test_the_replay_target_policy_refuses_other_hosts_without_live_and_a_key():
    assert replay_upstream(None, True, {"ELEVENLABS_API_KEY": "sk_x"}) == DEFAULT_UPSTREAM
    assert replay_upstream("http://localhost:8080", False, {}) == "http://localhost:8080"
    assert replay_upstream("http://127.0.0.2:9", False, {}) == "http://127.0.0.2:9"
    assert replay_upstream(None, False, {}) is None  # the built-in simulator
    with pytest.raises(ReplayTargetError, match="is not on this machine"):
        replay_upstream("http://10.0.0.1:80", False, {})
    with pytest.raises(ReplayTargetError, match="needs ELEVENLABS_API_KEY"):
        replay_upstream(None, True, {})
    assert replay_upstream("https://example.invalid", True, {"ELEVENLABS_API_KEY": "sk_x"}) == "https://example.invalid"


def test_only_elevenlabs_agent_calls_are_resent_and_other_apis_keys_never_reach_the_plan():
    from mitmproxy.test import tflow, tutils

    other = tflow.tflow(req=tutils.treq(host="api.other.example", path="/v1/messages", method=b"POST",
                                        headers=[(b"x-api-key", b"sk-ant-secret-key-0001")]), resp=True)
    delete = tflow.tflow(req=tutils.treq(path="/v1/convai/agents/a1", method=b"DELETE"), resp=True)
    socket_flow = tflow.twebsocketflow()
    socket_flow.request.path = "/v1/convai/conversation?agent_id=a1"
    socket_flow.websocket.messages[0].content = json.dumps({
        "type": "conversation_initiation_client_data",
        "dynamic_variables": {"secret__db_password": "hunter2hunter2hunter2"}}).encode()
    socket_flow.websocket.messages[0].from_client = True
    flows = [other, delete, socket_flow]
    records = flow_records(flows)
    plan = build_plan(records, analyse_flows(flows))
    assert [step["target"].split("?")[0] for step in plan["flows"]] == ["/v1/convai/conversation"]
    text = json.dumps(plan) + json.dumps([r.exchange.request_headers for r in records.values()])
    assert "sk-ant-secret" not in text and "hunter2" not in json.dumps(
        [m.text for r in records.values() for m in r.messages])

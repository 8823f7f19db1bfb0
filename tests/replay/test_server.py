"""Offline server replay: the sample clients replayed from their captures, misses explained, nothing leaves loopback."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
import websockets.sync.client as ws_client
from websockets.exceptions import ConnectionClosed, InvalidStatus

from sessiontap.app.capture import read_flows
from sessiontap.core.errors import CaptureError
from sessiontap.core.model import Exchange, FlowRecord, WsMessage
from sessiontap.replay.match import WsMiss, WsReplay, parse_ignore
from sessiontap.replay.server import (
    MISS_CLOSE_CODE,
    MISS_STATUS,
    REPLAY_FLOW_HEADER,
    REPLAY_HEADER,
    Recording,
    ReplayServer,
    advance,
    close_reason,
    load_recording,
    replay_headers,
    running_replay,
)
from sessiontap.simulator.server import running_simulator
from tests.conftest import SESSIONTAP, clean_env, sample

KINDS = ("fixed-http", "faulty-http", "fixed-ws", "faulty-ws")
KEY = "sk_test_replay_recorded_key_0001"
OTHER_KEY = "sk_test_replay_another_key_0002"
DEAD_PROXY = "http://127.0.0.1:9"  # nothing listens: any attempt to leave loopback fails loudly
SAMPLE_IGNORE = parse_ignore("user_id")  # the sample WebSocket clients pick a new user_id on every run
WAIT = 5.0
SIMULATE = "/v1/convai/agents/agent_customs_demo/simulate-conversation"

Recorded = tuple[Path, str]  # capture directory, the client's stdout while it was recorded


@pytest.fixture(scope="module")
def captures(tmp_path_factory: pytest.TempPathFactory, sessiontap_home: Path) -> Callable[[str], Recorded]:
    """Record a sample client through the proxy against the simulator (once per kind); the simulator then stops."""
    done: dict[str, Recorded] = {}

    def capture(kind: str) -> Recorded:
        if kind not in done:
            out = tmp_path_factory.mktemp(f"capture-{kind}")
            with running_simulator() as sim:
                proc = subprocess.run([SESSIONTAP, "record", "--mode", "reverse", "--upstream", sim.url,
                                       "--out", str(out), "--", *sample(kind)], capture_output=True, text=True,
                                      timeout=90, env=clean_env(sessiontap_home, ELEVENLABS_API_KEY=KEY))
            assert proc.returncode == 0, proc.stderr
            done[kind] = (out, proc.stdout)
        return done[kind]

    return capture


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every address this process connects a socket to while the test runs (the replay server runs in-process)."""
    seen: list[Any] = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def connect(self: socket.socket, address: Any) -> None:
        seen.append(address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        seen.append(address)
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    return seen


def offline_env(home: Path, base_url: str) -> dict[str, str]:
    """A client environment pointed at the replay server, with every non-loopback request sent to a dead proxy."""
    proxies = {name: DEAD_PROXY for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")}
    return clean_env(home, ELEVENLABS_BASE_URL=base_url, ELEVENLABS_API_KEY=OTHER_KEY, NO_PROXY="127.0.0.1,localhost",
                     no_proxy="127.0.0.1,localhost", **proxies)


def run_client(kind: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(sample(kind), capture_output=True, text=True, timeout=60, env=env)


def findings_shape(out: Path) -> tuple[list[tuple[Any, ...]], list[str]]:
    """What a diagnosis says regardless of ids: per session (protocol, calls, server conversations, resets), rules."""
    data = json.loads((out / "findings.json").read_text())
    sessions = [(s["protocol"], s["calls"], s["server_conversations"], s["resets"]) for s in data["sessions"]]
    return sessions, sorted(f["rule"] for f in data["findings"])


# --- the sample clients, replayed ------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", KINDS)
def test_a_replayed_client_prints_the_recorded_conversation_offline(kind, captures, connects, sessiontap_home):
    capture, recorded_stdout = captures(kind)
    with running_replay(capture, ignore=SAMPLE_IGNORE) as server:
        proc = run_client(kind, offline_env(sessiontap_home, server.url))
        socket.create_connection(("127.0.0.1", server.port), timeout=WAIT).close()  # proves the hook sees connects
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == recorded_stdout
    assert server.misses == []
    assert server.unused == []
    assert connects == [("127.0.0.1", server.port)]  # the probe only: the server itself connected nowhere


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["fixed-http", "fixed-ws"])
def test_the_offline_client_environment_cannot_leave_loopback(kind, sessiontap_home):
    proc = subprocess.run([*sample(kind), "--turns", "1"], capture_output=True, text=True, timeout=30,
                          env=offline_env(sessiontap_home, "https://api.elevenlabs.io"))
    assert proc.returncode == 1
    assert "Connection refused" in proc.stderr  # the dead proxy, not the internet


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["fixed-ws", "faulty-http"])
def test_a_replay_recorded_through_the_proxy_gives_the_same_diagnosis(kind, captures, sessiontap_home, tmp_path):
    capture, recorded_stdout = captures(kind)
    out = tmp_path / "replayed"
    with running_replay(capture, ignore=SAMPLE_IGNORE) as server:
        proc = subprocess.run([SESSIONTAP, "record", "--mode", "reverse", "--upstream", server.url, "--out", str(out),
                               "--", *sample(kind)], capture_output=True, text=True, timeout=90,
                              env=clean_env(sessiontap_home, ELEVENLABS_API_KEY=OTHER_KEY))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == recorded_stdout
    assert server.misses == []
    assert findings_shape(out) == findings_shape(capture)


# --- misses ----------------------------------------------------------------------------------------


def recorded_socket(capture: Path) -> FlowRecord:
    return next(r for r in load_recording(capture).records if r.messages)


@pytest.mark.timeout(60)
def test_an_unrecorded_ws_message_closes_the_socket_with_the_miss_code(captures):
    capture, _ = captures("fixed-ws")
    rec = recorded_socket(capture)
    init, update = [m.text or "" for m in rec.messages if m.from_client][:2]
    with running_replay(capture) as server:
        url = "ws" + server.url[4:] + "/v1/convai/conversation?agent_id=agent_customs_demo"
        with ws_client.connect(url, open_timeout=WAIT, close_timeout=WAIT) as ws:
            ws.send(init)  # the recorded user_id: matched without any ignore path
            kinds = [json.loads(ws.recv(timeout=WAIT))["type"] for _ in range(2)]
            ws.send(update)
            ws.send(json.dumps({"type": "user_message", "text": "I need to classify leather shoes."}))
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=WAIT)
    assert kinds == ["conversation_initiation_metadata", "agent_response"]
    assert closed.value.rcvd is not None and closed.value.rcvd.code == MISS_CLOSE_CODE
    assert closed.value.rcvd.reason.startswith("replay miss: user_message differs")
    [miss] = server.misses
    assert (miss.protocol, miss.nearest_flow, miss.step) == ("websocket", rec.exchange.flow_id, 3)
    assert ("user_message differs: recorded 'I need to classify cotton t-shirts for import.', "
            "got 'I need to classify leather shoes.'") in miss.message
    finding = miss.finding()
    assert finding.rule == "replay-miss" and finding.evidence["nearest_flow"] == rec.exchange.flow_id
    assert finding.flow_ids == [] and finding.session == ""  # not replayed through a proxy: no flow of its own


def first_request(capture: Path) -> tuple[Exchange, dict[str, Any]]:
    ex = next(r.exchange for r in load_recording(capture).records if r.exchange.method == "POST")
    return ex, json.loads(ex.request_body)


def post(server: ReplayServer, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(server.url + SIMULATE, json=body, headers={"xi-api-key": OTHER_KEY}, timeout=WAIT)


@pytest.mark.timeout(60)
def test_a_changed_user_message_gets_the_miss_response_naming_both_values(captures):
    capture, _ = captures("fixed-http")
    recorded, body = first_request(capture)
    body["simulation_specification"]["partial_conversation_history"][0]["message"] = "I need to classify shoes."
    with running_replay(capture) as server:
        response = post(server, body)
    assert response.status_code == MISS_STATUS
    assert response.headers[REPLAY_HEADER] == "miss"
    detail = response.json()["detail"]
    assert detail["status"] == "replay_miss" and detail["nearest_flow"] == recorded.flow_id
    assert ("user_message differs: recorded 'I need to classify cotton t-shirts for import.', "
            "got 'I need to classify shoes.'") in detail["message"]
    [miss] = server.misses
    assert (miss.protocol, miss.nearest_flow, miss.message) == ("http", recorded.flow_id, detail["message"])
    assert miss.request is not None and OTHER_KEY not in json.dumps(miss.request.request_headers)


@pytest.mark.timeout(60)
def test_volatile_fields_still_match_and_each_response_is_served_once(captures):
    capture, _ = captures("fixed-http")
    recorded, body = first_request(capture)
    body["simulation_specification"]["partial_conversation_history"][0]["time_in_call_secs"] = 4242
    with running_replay(capture) as server:
        first, again = post(server, body), post(server, body)
    assert first.status_code == recorded.status == 200
    assert first.content == recorded.response_body
    assert first.headers[REPLAY_HEADER] == "hit" and first.headers[REPLAY_FLOW_HEADER] == recorded.flow_id
    assert again.status_code == MISS_STATUS
    assert "it matches but its response was already served" in again.json()["detail"]["message"]
    with running_replay(capture, repeat_last=True) as server:
        assert [post(server, body).content for _ in range(2)] == [recorded.response_body] * 2


# --- hand-built recordings -------------------------------------------------------------------------


def exchange(flow_id: str, path: str, *, method: str = "GET", status: int | None = 200, body: bytes = b"",
             headers: dict[str, str] | None = None, request_headers: dict[str, str] | None = None,
             url: str = "") -> Exchange:
    url = url or f"http://upstream{path}"
    query = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
    return Exchange(flow_id, method, url, path, query, request_headers or {}, b"", 0.0, status, headers or {}, body)


def text(from_client: bool, obj: dict[str, Any]) -> WsMessage:
    raw = json.dumps(obj)
    return WsMessage(from_client, 0.0, raw, len(raw))


UPGRADE = {"upgrade": "websocket", "connection": "Upgrade"}
INIT = {"type": "conversation_initiation_client_data"}


@pytest.fixture
def handmade() -> Iterator[ReplayServer]:
    lines = b'{"simulated_conversation": [{"role": "agent", "message": "Hi"}]}\n{"analysis": {}}\n'
    signed = json.dumps({"signed_url": "wss://api.elevenlabs.io/v1/convai/conversation?agent_id=a1&"
                                       "conversation_signature=[REDACTED]"}).encode()
    records = [
        FlowRecord(exchange("stream", SIMULATE + "/stream", method="POST", body=lines,
                            headers={"content-type": "application/x-ndjson", "content-length": "3",
                                     "content-encoding": "gzip", "transfer-encoding": "chunked", "x-custom": "kept",
                                     "x-sessiontap-session": "old-session"})),
        FlowRecord(exchange("signed", "/v1/convai/conversation/get-signed-url", body=signed,
                            headers={"content-type": "application/json"},
                            url="http://upstream/v1/convai/conversation/get-signed-url?agent_id=a1")),
        FlowRecord(exchange("socket", "/v1/convai/conversation", status=101, request_headers=UPGRADE,
                            url="http://upstream/v1/convai/conversation?agent_id=a1&conversation_signature=x"),
                   [text(True, INIT), text(False, {"type": "conversation_initiation_metadata"}),
                    WsMessage(False, 0.0, None, 4), text(False, {"type": "agent_response"})], close_code=1011),
    ]
    with running_replay(Recording(records, {"socket": False}), idle_close=0.2) as server:
        yield server


@pytest.mark.timeout(30)
def test_a_streamed_body_is_sent_as_recorded_without_stale_headers(handmade):
    with httpx.stream("POST", handmade.url + SIMULATE + "/stream", timeout=WAIT) as response:
        lines = list(response.iter_lines())
        headers = response.headers
    assert lines == ['{"simulated_conversation": [{"role": "agent", "message": "Hi"}]}', '{"analysis": {}}']
    assert headers["content-type"] == "application/x-ndjson" and headers["x-custom"] == "kept"
    assert "content-encoding" not in headers and "x-sessiontap-session" not in headers
    assert replay_headers({"Content-Length": "1", "Upgrade": "x", "Date": "d"}) == {"Date": "d"}


@pytest.mark.timeout(30)
def test_a_signed_url_points_back_at_the_replay_and_its_socket_replays_to_the_recorded_close(handmade):
    signed = httpx.get(handmade.url + "/v1/convai/conversation/get-signed-url?agent_id=a1", timeout=WAIT).json()
    url = signed["signed_url"]
    assert url.startswith("ws" + handmade.url[4:] + "/v1/convai/conversation?agent_id=a1&conversation_signature=")
    with ws_client.connect(url, open_timeout=WAIT, close_timeout=WAIT) as ws:
        ws.send(json.dumps(INIT))
        kinds = [json.loads(ws.recv(timeout=WAIT))["type"] for _ in range(2)]
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=WAIT)
    assert kinds == ["conversation_initiation_metadata", "agent_response"]
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011  # the server closed it, recorded so
    assert handmade.skipped["binary_frames"] == 1
    assert handmade.misses == [] and handmade.unused == ["stream"]


@pytest.mark.timeout(30)
def test_an_upgrade_with_no_recorded_socket_is_refused_with_the_miss(handmade):
    url = "ws" + handmade.url[4:] + "/v1/convai/conversation?agent_id=someone-else"
    with pytest.raises(InvalidStatus) as refused:
        ws_client.connect(url, open_timeout=WAIT)
    assert refused.value.response.status_code == MISS_STATUS
    [miss] = handmade.misses
    assert miss.protocol == "websocket" and miss.nearest_flow == "socket"
    assert "query parameter agent_id differs: recorded 'a1', got 'someone-else'" in miss.message


@pytest.mark.timeout(30)
def test_a_finished_socket_the_client_keeps_open_is_closed_with_the_recorded_code():
    rec = FlowRecord(exchange("socket", "/v1/convai/conversation", status=101, request_headers=UPGRADE),
                     [text(True, INIT), text(False, {"type": "agent_response"})], close_code=1000)
    with running_replay([rec], idle_close=0.2) as server, \
            ws_client.connect("ws" + server.url[4:] + "/v1/convai/conversation", open_timeout=WAIT) as ws:
        ws.send(json.dumps(INIT))
        assert json.loads(ws.recv(timeout=WAIT))["type"] == "agent_response"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=WAIT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000


@pytest.mark.timeout(30)
def test_a_subprotocol_the_recording_did_not_choose_is_answered_as_recorded_without_a_warning(caplog):
    rec = FlowRecord(exchange("socket", "/v1/convai/conversation", status=101, request_headers=UPGRADE),
                     [text(True, INIT), text(False, {"type": "agent_response"})], close_code=1000)
    with caplog.at_level("DEBUG"), running_replay([rec]) as server, \
            ws_client.connect("ws" + server.url[4:] + "/v1/convai/conversation", subprotocols=["convai"],
                              open_timeout=WAIT) as ws:
        assert ws.subprotocol is None  # the recorded server chose none
        ws.send(json.dumps(INIT))
        assert json.loads(ws.recv(timeout=WAIT))["type"] == "agent_response"
    assert not [r for r in caplog.records if "overlap" in r.getMessage()]


def test_pongs_follow_the_client_not_the_recorded_timing():
    ping = text(False, {"type": "ping", "ping_event": {"event_id": 1}})
    pong = text(True, {"type": "pong", "event_id": 1})
    hello = text(True, {"type": "user_message", "text": "hello"})
    reply = text(False, {"type": "agent_response"})
    replay = WsReplay([ping, pong, hello, reply])
    assert advance(replay, hello) == [reply]  # the recorded pong the client never sent is passed over
    assert advance(replay, pong) is None  # a pong the recording does not expect here is ignored
    missed = advance(WsReplay([hello, reply]), text(True, {"type": "user_message", "text": "bye"}))
    assert isinstance(missed, WsMiss)


def test_close_reasons_fit_a_close_frame_and_bad_captures_fail_before_serving(tmp_path):
    assert len(close_reason("é" * 200).encode("utf-8")) <= 123
    assert close_reason("short") == "short"
    with pytest.raises(CaptureError, match="no such capture"):
        ReplayServer(tmp_path / "missing")


# --- the replay command ----------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_replay_command_runs_the_client_offline_in_regular_mode(captures, sessiontap, tmp_path):
    capture, recorded_stdout = captures("fixed-ws")
    run = sessiontap("replay", str(capture), "--out", str(tmp_path / "r"), "--", *sample("fixed-ws"),
                     env={"ELEVENLABS_API_KEY": OTHER_KEY})
    assert run.code == 0, run.stderr
    assert run.stdout == recorded_stdout
    assert findings_shape(tmp_path / "r") == findings_shape(capture)
    assert "(offline)" in run.stderr and (tmp_path / "r" / "report.html").exists()


@pytest.mark.timeout(120)
def test_a_fixed_client_replayed_on_a_faulty_capture_misses_and_says_where(captures, sessiontap, tmp_path):
    capture, _ = captures("faulty-http")
    out = tmp_path / "r"
    run = sessiontap("replay", str(capture), "--mode", "reverse", "--out", str(out), "--", *sample("fixed-http"),
                     env={"ELEVENLABS_API_KEY": OTHER_KEY})
    assert run.code == 1  # the client failed on the 501 it got
    assert "replay-miss: no recorded call matches: nearest is flow" in run.stderr
    data = json.loads((out / "findings.json").read_text())
    misses = [f for f in data["findings"] if f["rule"] == "replay-miss"]
    assert misses and misses[0]["severity"] == "error" and misses[0]["evidence"]["nearest_flow"]
    # each miss sits at the replayed call that got it: its flow in the replay's capture, its session
    replayed = {f.id: f for f in read_flows(out).flows}
    assert all(m["flow_ids"] and replayed[m["flow_ids"][0]].response.status_code == MISS_STATUS for m in misses)
    assert {m["session"] for m in misses} <= {s["id"] for s in data["sessions"]} and misses[0]["call_ids"]
    assert "requests the replayed capture does not hold" in data["verdict"]
    assert "replay-miss" in (out / "report.html").read_text()
    usage = sessiontap("replay", str(capture))
    assert usage.code == 2 and "give the client command" in usage.stderr

"""Tests for addons/samples: each ProperDurinClient replica against the simulator on loopback."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sessiontap.samples.chat import (
    DEFAULT_AGENT_ID,
    DEFAULT_BASE_URL,
    AgentEndpoint,
    ElevenLabsChatClient,
    FixedElevenLabsChatClient,
    SampleClientError,
)
from sessiontap.samples.durin import HTTP_KINDS, SAMPLE_KINDS, ProperDurinClient, make_client, run_sample
from sessiontap.samples.script import CUSTOMS_SCRIPT, OFFICER_CONTEXT, script_messages
from sessiontap.samples.websocket import ElevenLabsWebSocketClient, FixedElevenLabsWebSocketClient
from sessiontap.simulator.agent import FIRST_MESSAGE
from sessiontap.simulator.server import Faults, Simulator, running_simulator

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = [line.text for line in CUSTOMS_SCRIPT]
PRODUCT, ORIGIN, VALUE = "cotton t-shirts", "Vietnam", "12,000"


pytestmark = pytest.mark.usefixtures("direct_env")


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with running_simulator() as running:
        yield running


def _header(headers: dict[str, str], name: str) -> str | None:
    return next((v for k, v in headers.items() if k.lower() == name), None)


def _simulate_bodies(sim: Simulator) -> list[tuple[dict[str, str], dict[str, Any]]]:
    return [
        (hit.headers, json.loads(hit.body))
        for hit in sim.hits
        if hit.kind == "http" and hit.path.endswith("/simulate-conversation")
    ]


def _run(client: Any) -> tuple[list[tuple[str, str]], str]:
    out = io.StringIO()
    with client:
        transcript = ProperDurinClient(client, out=out).run()
    return transcript, out.getvalue()


# HTTP ------------------------------------------------------------------------------------------


def test_faulty_http_gets_the_opening_line_every_turn(sim: Simulator) -> None:
    transcript, printed = _run(ElevenLabsChatClient(sim.url))
    assert [user for user, _ in transcript] == SCRIPT
    assert [agent for _, agent in transcript] == [FIRST_MESSAGE] * 5
    assert f"[1] user: {SCRIPT[0]}\n[1] agent: {FIRST_MESSAGE}\n" in printed
    assert printed.count("agent: ") == 5


def test_faulty_http_session_id_collides_across_conversations(sim: Simulator) -> None:
    with ElevenLabsChatClient(sim.url) as client:
        first = client.start_session()
        client.send(first, SCRIPT[0])
        second = client.start_session()
        assert first == second == "elevenlabs-session-0"
        assert client.history == []  # start_session wiped the first conversation


def test_faulty_http_sends_flattened_context_without_the_newest_message(sim: Simulator) -> None:
    _run(ElevenLabsChatClient(sim.url))
    sent = _simulate_bodies(sim)
    assert len(sent) == 5
    for number, (headers, body) in enumerate(sent):
        spec = body["simulation_specification"]
        assert spec["partial_conversation_history"] == []
        assert spec["simulated_user_config"]["first_message"] == SCRIPT[number]
        assert body["new_turns_limit"] == 1
        expected = " ".join(f"User: {text} Agent: {FIRST_MESSAGE}" for text in SCRIPT[:number])
        assert body["conversation_context"] == expected
        assert SCRIPT[number] not in body["conversation_context"]
        assert _header(headers, "x-session-id") == "elevenlabs-session-0"
        assert _header(headers, "xi-api-key")


def test_fixed_http_replies_build_up(sim: Simulator) -> None:
    transcript, _ = _run(FixedElevenLabsChatClient(sim.url))
    replies = [agent for _, agent in transcript]
    assert FIRST_MESSAGE not in replies
    assert all(fact in replies[4] for fact in (PRODUCT, ORIGIN, VALUE))


def test_fixed_http_resends_the_full_history(sim: Simulator) -> None:
    _run(FixedElevenLabsChatClient(sim.url))
    sent = _simulate_bodies(sim)
    session_ids = {_header(headers, "x-session-id") or "" for headers, _ in sent}
    assert len(session_ids) == 1 and session_ids.pop().startswith("durin-")
    for number, (_, body) in enumerate(sent):
        assert "conversation_context" not in body
        assert body["new_turns_limit"] == 1
        history = body["simulation_specification"]["partial_conversation_history"]
        assert len(history) == 2 * number + 1
        assert [turn["role"] for turn in history] == ["user", "agent"] * number + ["user"]
        assert history[-1]["message"] == SCRIPT[number]
        assert all(isinstance(turn["time_in_call_secs"], int) for turn in history)


def test_fixed_http_new_session_gets_new_id_and_empty_history(sim: Simulator) -> None:
    with FixedElevenLabsChatClient(sim.url) as client:
        first = client.start_session()
        client.send(first, SCRIPT[0])
        assert client.start_session(first) == first and len(client.history) == 2
        second = client.start_session()
        assert second != first and client.history == []
        with pytest.raises(ValueError, match="unknown session id"):
            client.send(first, SCRIPT[1])


def test_http_error_status_is_a_sample_client_error(sim: Simulator) -> None:
    sim.faults.status, sim.faults.status_count = 500, 1
    with FixedElevenLabsChatClient(sim.url) as client:
        session = client.start_session()
        with pytest.raises(SampleClientError, match="HTTP 500"):
            client.send(session, SCRIPT[0])
        assert client.history == []  # the unanswered message is not kept for the retry
        assert PRODUCT in client.send(session, SCRIPT[0])


# WebSocket -------------------------------------------------------------------------------------


def test_faulty_ws_opens_a_socket_per_message(sim: Simulator) -> None:
    client = ElevenLabsWebSocketClient(sim.url)
    transcript, _ = _run(client)
    opens = [hit for hit in sim.hits if hit.kind == "ws-open"]
    assert len(opens) == 5
    assert len(set(client.conversation_ids)) == 5
    assert {hit.conversation_id for hit in opens} == set(client.conversation_ids)
    assert client.openings == [FIRST_MESSAGE] * 5
    assert PRODUCT in transcript[0][1]
    assert all(PRODUCT not in agent for _, agent in transcript[1:])
    assert {_header(hit.headers, "x-session-id") for hit in opens} == {client_session(sim)}
    inits = [json.loads(hit.body) for hit in sim.hits if hit.message_type == "conversation_initiation_client_data"]
    assert len(inits) == 5 and {init["user_id"] for init in inits} == {client.user_id}
    assert inits[0]["conversation_config_override"] == {"conversation": {"text_only": True}}
    assert all(stored.close_code == 1000 for stored in sim.conversations.values())


def client_session(sim: Simulator) -> str:
    """Return the one x-session-id the socket upgrades carried."""
    ids = {_header(hit.headers, "x-session-id") for hit in sim.hits if hit.kind == "ws-open"}
    assert len(ids) == 1
    found = ids.pop()
    assert found is not None and found.startswith("durin-")
    return found


def test_fixed_ws_keeps_one_socket(sim: Simulator) -> None:
    client = FixedElevenLabsWebSocketClient(sim.url, contextual_update=OFFICER_CONTEXT)
    transcript, _ = _run(client)
    assert [hit.kind for hit in sim.hits].count("ws-open") == 1
    assert len(client.conversation_ids) == 1 and client.openings == [FIRST_MESSAGE]
    assert all(fact in transcript[4][1] for fact in (PRODUCT, ORIGIN))
    stored = sim.conversations[client.conversation_ids[0]]
    assert stored.contextual_updates == [OFFICER_CONTEXT]
    assert stored.user_messages == 5 and stored.close_code == 1000
    assert client_session(sim)


def test_ws_clients_answer_pings_and_skip_response_parts() -> None:
    with running_simulator(ping_interval=0.05, faults=Faults(latency=0.15)) as sim:
        client = FixedElevenLabsWebSocketClient(sim.url)
        with client:
            client.start_session()
            assert PRODUCT in client.send(SCRIPT[0])
            client.end_session()
        pongs = sim.conversations[client.conversation_ids[0]].pongs
    assert pongs and all(isinstance(event_id, int) for event_id in pongs)


def test_ws_server_close_is_a_sample_client_error() -> None:
    faults = Faults(ws_close_code=1011, ws_close_after=1)
    with running_simulator(faults=faults) as sim, FixedElevenLabsWebSocketClient(sim.url) as client:
        client.start_session()
        with pytest.raises(SampleClientError, match="socket closed"):
            client.send(SCRIPT[0])
        client.end_session()  # ending a session the server already closed is fine


# undeclared variants: --declare and --new-connection-per-call ----------------------------------


def _declared(sim: Simulator) -> tuple[set[str | None], set[str | None]]:
    """Return what the simulator saw declared: the x-session-id values and the user_id values."""
    headers = {_header(hit.headers, "x-session-id") for hit in sim.hits if hit.kind in ("http", "ws-open")}
    bodies = [
        json.loads(hit.body)
        for hit in sim.hits
        if hit.path.endswith("/simulate-conversation") or hit.message_type == "conversation_initiation_client_data"
    ]
    assert bodies
    return headers, {body.get("user_id") for body in bodies}


def _simulate_ports(sim: Simulator) -> list[int | None]:
    return [hit.peer_port for hit in sim.hits if hit.kind == "http" and hit.path.endswith("/simulate-conversation")]


DEFAULT_DECLARE = {"faulty-http": "header", "fixed-http": "header", "faulty-ws": "both", "fixed-ws": "both"}


@pytest.mark.parametrize("declare", [None, "header", "user-id", "none", "both"])
@pytest.mark.parametrize("kind", SAMPLE_KINDS)
def test_declare_sends_exactly_the_chosen_declarations(sim: Simulator, kind: str, declare: Any) -> None:
    client = make_client(kind, base_url=sim.url, declare=declare)
    with client:
        transcript = ProperDurinClient(client, out=io.StringIO()).run(SCRIPT[:2])
    assert len(transcript) == 2
    mode = declare or DEFAULT_DECLARE[kind]
    headers, user_ids = _declared(sim)
    if mode in ("header", "both"):
        (value,) = headers
        assert (value or "").startswith("elevenlabs-session-" if kind == "faulty-http" else "durin-")
    else:
        assert headers == {None}
    if mode in ("user-id", "both"):
        assert user_ids == {client.user_id} and (client.user_id or "").startswith("durin-user-")
    else:
        assert user_ids == {None} and client.user_id is None


@pytest.mark.parametrize("kind", HTTP_KINDS)
def test_new_connection_per_call_gives_a_new_peer_port_per_call(kind: str) -> None:
    for fresh in (False, True):
        with running_simulator() as sim:
            client = make_client(kind, base_url=sim.url, new_connection_per_call=fresh)
            _run(client)
            ports = _simulate_ports(sim)
        assert len(ports) == 5 and None not in ports
        assert len(set(ports)) == (5 if fresh else 1)


def test_new_connection_per_call_is_for_http_kinds_only(sim: Simulator) -> None:
    with pytest.raises(ValueError, match="new_connection_per_call"):
        make_client("fixed-ws", base_url=sim.url, new_connection_per_call=True)
    with pytest.raises(ValueError, match="declare"):
        FixedElevenLabsChatClient(sim.url, declare="cookie")  # type: ignore[arg-type]
    assert _entry("faulty-ws", sim.url, "--new-connection-per-call").returncode == 2
    assert _entry("faulty-ws", sim.url, "--declare", "cookie").returncode == 2


def test_entry_point_all_kinds_undeclared_on_new_connections(sim: Simulator) -> None:
    done = _entry("all", sim.url, "--declare", "none", "--new-connection-per-call", "--turns", "2")
    assert done.returncode == 0, done.stderr
    assert all(f"== {kind} ==" in done.stdout for kind in SAMPLE_KINDS)
    assert _declared(sim) == ({None}, {None})
    ports = _simulate_ports(sim)
    assert len(ports) == 4 and len(set(ports)) == 4
    assert [hit.kind for hit in sim.hits].count("ws-open") == 3  # faulty-ws: 2 sockets, fixed-ws: 1


# configuration and entry point -----------------------------------------------------------------


def test_endpoint_reads_env_and_arguments_win(monkeypatch: pytest.MonkeyPatch) -> None:
    default = AgentEndpoint.from_env()
    assert (default.base_url, default.agent_id) == (DEFAULT_BASE_URL, DEFAULT_AGENT_ID)
    assert default.ws_url("v1", "convai", "conversation", agent_id="a") == (
        "wss://api.elevenlabs.io/v1/convai/conversation?agent_id=a"
    )
    monkeypatch.setenv("ELEVENLABS_BASE_URL", "http://127.0.0.1:8080/el/")
    monkeypatch.setenv("ELEVENLABS_API_KEY", "sk_test")
    monkeypatch.setenv("ELEVENLABS_AGENT_ID", "agent_env")
    endpoint = AgentEndpoint.from_env()
    assert endpoint.http_url("v1", "x") == "http://127.0.0.1:8080/el/v1/x"
    assert endpoint.ws_url("v1", "y", agent_id="z") == "ws://127.0.0.1:8080/el/v1/y?agent_id=z"
    assert (endpoint.api_key, endpoint.agent_id) == ("sk_test", "agent_env")
    assert "sk_test" not in repr(endpoint)
    assert AgentEndpoint.from_env(agent_id="agent_arg").agent_id == "agent_arg"
    with pytest.raises(SampleClientError, match="ELEVENLABS_BASE_URL"):
        AgentEndpoint.from_env(base_url="api.elevenlabs.io")


def test_script_turn_counts() -> None:
    assert script_messages() == SCRIPT
    assert script_messages(2) == SCRIPT[:2]
    longer = script_messages(7)
    assert longer[:5] == SCRIPT and len(set(longer)) == 7
    with pytest.raises(ValueError, match="turns"):
        script_messages(0)


def test_run_sample_reports_an_http_error_on_one_line(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    sim.faults.status = 503
    monkeypatch.setenv("ELEVENLABS_BASE_URL", sim.url)
    err = io.StringIO()
    assert run_sample("faulty-http", out=io.StringIO(), err=err) == 1
    assert err.getvalue().count("\n") == 1 and "HTTP 503" in err.getvalue()


def _entry(kind: str, base_url: str, *extra: str, lines: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ELEVENLABS_BASE_URL": base_url, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "sessiontap.samples", kind, *extra],
        cwd=ROOT,
        env=env,
        input="".join(f"{line}\n" for line in lines) if lines is not None else None,
        capture_output=True,
        text=True,
        timeout=20,
    )


@pytest.mark.parametrize("kind", SAMPLE_KINDS)
def test_entry_point_plays_the_script(sim: Simulator, kind: str) -> None:
    done = _entry(kind, sim.url)
    assert done.returncode == 0, done.stderr
    for number, text in enumerate(SCRIPT, 1):
        assert f"[{number}] user: {text}\n" in done.stdout
        assert f"[{number}] agent: " in done.stdout


def test_entry_point_turns_option(sim: Simulator) -> None:
    done = _entry("fixed-http", sim.url, "--turns", "2")
    assert done.returncode == 0, done.stderr
    assert "[2] agent: " in done.stdout and "[3]" not in done.stdout
    assert _entry("fixed-http", sim.url, "--turns", "0").returncode == 2


@pytest.mark.parametrize("kind", ["faulty-http", "fixed-ws"])
def test_entry_point_closed_port_fails_with_one_line(kind: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = _entry(kind, f"http://127.0.0.1:{port}")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert f"127.0.0.1:{port}" in done.stderr


# line mode (the probe's --client contract) ------------------------------------------------------


@pytest.mark.parametrize("kind", SAMPLE_KINDS)
def test_line_mode_answers_each_stdin_line_with_one_reply_line(sim: Simulator, kind: str) -> None:
    done = _entry(kind, sim.url, "--stdin", lines=SCRIPT[:3])
    assert done.returncode == 0, done.stderr
    replies = done.stdout.splitlines()
    assert len(replies) == 3 and "user:" not in done.stdout
    if kind == "faulty-http":
        assert replies == [FIRST_MESSAGE] * 3  # the fault, as in script mode
    else:
        assert all(f'You said: "{text.rstrip(".")}"' in reply for text, reply in zip(SCRIPT, replies, strict=False))


def test_line_mode_sends_each_message_only_after_the_reply_before(sim: Simulator) -> None:
    env = {**os.environ, "ELEVENLABS_BASE_URL": sim.url, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "sessiontap.samples", "fixed-ws", "--stdin"], cwd=ROOT, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        for number, text in enumerate(SCRIPT[:2], 1):
            proc.stdin.write(text + "\n")
            proc.stdin.flush()
            assert PRODUCT in proc.stdout.readline()
            (conversation,) = sim.conversations.values()
            assert conversation.user_messages == number  # one socket, and the next line not yet read
        proc.stdin.close()
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert conversation.close_code == 1000  # the end of stdin ended the session normally


def test_line_mode_takes_one_kind_and_no_turns(sim: Simulator) -> None:
    assert _entry("all", sim.url, "--stdin", lines=[]).returncode == 2
    assert _entry("fixed-http", sim.url, "--stdin", "--turns", "2", lines=[]).returncode == 2
    assert _entry("fixed-http", sim.url, "--stdin", lines=[]).stdout == ""  # no input, no call, no output

"""Tests for addons/simulator: the agent brain, and the server driven by real clients on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets.sync.client as ws_client
from elevenlabs import (
    AgentConfig,
    ConversationHistoryTranscriptCommonModelInput,
    ConversationSimulationSpecification,
    ElevenLabs,
)
from elevenlabs.conversational_ai.conversation import (
    AgentChatResponsePartType,
    Conversation,
    ConversationInitiationData,
    DisconnectionDetails,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus

from sessiontap.simulator import agent
from sessiontap.simulator.agent import (
    CONTEXT,
    DEFAULT_AGENT_ID,
    FIRST_MESSAGE,
    SIMULATED_USER_SCRIPT,
    facts_in,
    reply,
    simulate_turns,
)
from sessiontap.simulator.server import (
    Faults,
    Shapes,
    Simulator,
    running_simulator,
    validate_simulation,
)

KEY = {"xi-api-key": "sk_test_simulator"}
WAIT = 5.0
SCRIPT = (
    "I need to classify cotton t-shirts for import.",
    "They are made in Vietnam.",
    "The fabric is 100% cotton, knitted.",
    "The declared value is $12,000 for 2,000 units.",
    "The customs officer says the shirts have a printed logo; does that change the HS code?",
)
REPO = Path(__file__).resolve().parents[2]


def simulate_path(agent_id: str = DEFAULT_AGENT_ID, stream: bool = False) -> str:
    suffix = "/stream" if stream else ""
    return f"/v1/convai/agents/{agent_id}/simulate-conversation{suffix}"


def spec(history: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "simulation_specification": {
            "simulated_user_config": {},
            "partial_conversation_history": history or [],
        }
    }
    body.update(extra)
    return body


def client_for(sim: Simulator) -> ElevenLabs:
    return ElevenLabs(api_key="sk_test_simulator", base_url=sim.url)


# the brain ------------------------------------------------------------------------------------


def play(messages: tuple[str, ...] | list[str]) -> list[str]:
    """Play `messages` as one conversation; return the agent's replies."""
    history: list[tuple[str, str]] = [("agent", FIRST_MESSAGE)]
    replies = []
    for message in messages:
        history.append(("user", message))
        answer = reply(history)
        history.append(("agent", answer))
        replies.append(answer)
    return replies


def test_reply_with_context_recaps_every_earlier_fact() -> None:
    replies = play(SCRIPT)
    last = replies[-1]
    for fact in ("cotton t-shirts", "Vietnam", "100% cotton", "USD 12,000"):
        assert fact in last
    assert "officer" in last
    assert "6109.10 to 6109.90" in last
    assert "cotton t-shirts" in replies[2]
    assert "Vietnam" in replies[2]


def test_reply_without_context_knows_only_the_lone_message() -> None:
    lone = reply([("user", SCRIPT[2])])
    assert "100% cotton" in lone
    assert "t-shirts" not in lone
    assert "Which product would you like to classify?" in lone
    officer_alone = reply([("user", SCRIPT[4])])
    assert "6109" not in officer_alone
    assert "Which product" in officer_alone


def test_reply_asks_for_the_next_missing_fact() -> None:
    replies = play(SCRIPT[:4])
    assert replies[0].endswith("Which country is the product made in?")
    assert replies[1].endswith("What material is it made of?")
    assert replies[2].endswith("What is the customs value of the shipment?")
    assert "anything else" in replies[3]


def test_contextual_update_is_remembered() -> None:
    history = [
        ("agent", FIRST_MESSAGE),
        (CONTEXT, "The user is classifying leather shoes made in Italy."),
        ("user", "What do you need from me?"),
    ]
    answer = reply(history)
    assert "leather shoes" in answer
    assert "Italy" in answer
    assert "Context noted" in answer


@pytest.mark.parametrize(
    ("text", "field", "expected"),
    [
        ("I need to classify cotton t-shirts", "product", "cotton t-shirts"),
        ("Please classify the wool sweaters from Peru", "product", "wool sweaters"),
        ("made in vietnam", "origin", "Vietnam"),
        ("They come from Bangladesh.", "origin", "Bangladesh"),
        ("origin: Viet Nam", "origin", "Viet Nam"),
        ("100% cotton", "material", "100% cotton"),
        ("60% cotton, 40% polyester", "material", "60% cotton / 40% polyester"),
        ("They are made of organic wool.", "material", "organic wool"),
        ("It is worth $12,000.", "value", "USD 12,000"),
        ("12000 USD", "value", "USD 12,000"),
        ("EUR 500", "value", "EUR 500"),
        ("about €1.5k", "value", "EUR 1,500"),
    ],
)
def test_facts_in_reads_common_phrasings(text: str, field: str, expected: str) -> None:
    assert getattr(facts_in(text), field) == expected


def test_officer_feedback_with_a_code_uses_that_code() -> None:
    replies = play([SCRIPT[0], "The officer says it should be 6109.90.00."])
    assert "to 6109.90.00" in replies[-1]


@pytest.mark.parametrize(
    "text", ["", "   ", "😀🚢📦", "مرحبا، أريد تصنيف قمصان قطنية", "x" * 100_000, "classify " * 20_000]
)
def test_reply_survives_odd_text(text: str) -> None:
    answer = reply([("user", text)])
    assert answer == reply([("user", text)])
    assert len(answer) < 2_000


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["user", "agent", CONTEXT, "system"]), st.text(max_size=300)),
        max_size=8,
    )
)
def test_reply_never_raises_and_is_deterministic(history: list[tuple[str, str]]) -> None:
    first = reply(history)
    assert isinstance(first, str)
    assert first
    assert reply(list(history)) == first
    assert agent.summarize(history) == agent.summarize(history)


def test_simulate_turns_starts_fresh_with_the_opening_line() -> None:
    turns = simulate_turns([], new_turns_limit=4)
    assert [role for role, _ in turns] == ["agent", "user", "agent", "user"]
    assert turns[0][1] == FIRST_MESSAGE
    assert turns[1][1] == SIMULATED_USER_SCRIPT[0]
    assert "cotton t-shirts" in turns[2][1]


def test_simulate_turns_continue_from_history() -> None:
    history = [("agent", FIRST_MESSAGE), ("user", SCRIPT[0])]
    turns = simulate_turns(history, new_turns_limit=2, user_first_message="Made in Vietnam.")
    assert turns[0][0] == "agent"
    assert FIRST_MESSAGE not in [text for _, text in turns]
    assert turns[1] == ("user", "Made in Vietnam.")
    after_agent = simulate_turns([*history, turns[0]], new_turns_limit=1)
    assert after_agent == [("user", SIMULATED_USER_SCRIPT[1])]
    assert simulate_turns(history, new_turns_limit=0) == []


# simulate over HTTP, through the official SDK ------------------------------------------------


def test_sdk_simulate_with_empty_history_opens_with_first_message(simulator: Simulator) -> None:
    result = client_for(simulator).conversational_ai.agents.simulate_conversation(
        agent_id=DEFAULT_AGENT_ID,
        simulation_specification=ConversationSimulationSpecification(
            simulated_user_config=AgentConfig(first_message="I need to classify cotton t-shirts."),
            partial_conversation_history=[],
        ),
        new_turns_limit=3,
    )
    turns = result.simulated_conversation
    assert [turn.role for turn in turns] == ["agent", "user", "agent"]
    assert turns[0].message == FIRST_MESSAGE
    assert turns[1].message == "I need to classify cotton t-shirts."
    assert "cotton t-shirts" in (turns[2].message or "")
    assert result.analysis.call_successful == "success"
    assert simulator.hits[-1].headers.get("xi-api-key") == "sk_test_simulator"


def test_sdk_simulate_with_history_uses_earlier_facts(simulator: Simulator) -> None:
    replies = play(SCRIPT[:1])
    history = [
        ConversationHistoryTranscriptCommonModelInput(
            role="agent", message=FIRST_MESSAGE, time_in_call_secs=0
        ),
        ConversationHistoryTranscriptCommonModelInput(
            role="user", message=SCRIPT[0], time_in_call_secs=4
        ),
        ConversationHistoryTranscriptCommonModelInput(
            role="agent", message=replies[0], time_in_call_secs=6
        ),
        ConversationHistoryTranscriptCommonModelInput(
            role="user", message=SCRIPT[1], time_in_call_secs=10
        ),
    ]
    result = client_for(simulator).conversational_ai.agents.simulate_conversation(
        agent_id=DEFAULT_AGENT_ID,
        simulation_specification=ConversationSimulationSpecification(
            simulated_user_config=AgentConfig(), partial_conversation_history=history
        ),
        new_turns_limit=1,
    )
    (turn,) = result.simulated_conversation
    assert turn.role == "agent"
    assert "cotton t-shirts" in (turn.message or "")
    assert "Vietnam" in (turn.message or "")
    assert turn.time_in_call_secs > 10


def test_simulate_ignores_conversation_context(simulator: Simulator) -> None:
    body = spec(conversation_context="User: I need to classify cotton t-shirts made in Vietnam")
    body["new_turns_limit"] = 1
    response = httpx.post(simulator.url + simulate_path(), json=body, headers=KEY)
    assert response.status_code == 200
    assert response.json()["simulated_conversation"] == [
        {"role": "agent", "message": FIRST_MESSAGE, "time_in_call_secs": 0}
    ]


def test_simulate_new_turns_limit_defaults_to_ten_and_caps_at_fifty(simulator: Simulator) -> None:
    default = httpx.post(simulator.url + simulate_path(), json=spec(), headers=KEY)
    assert len(default.json()["simulated_conversation"]) == 10
    capped = httpx.post(
        simulator.url + simulate_path(), json=spec(new_turns_limit=500), headers=KEY
    )
    assert len(capped.json()["simulated_conversation"]) == 50


def test_stream_is_ndjson_one_turn_a_line_then_analysis(simulator: Simulator) -> None:
    raw = client_for(simulator).conversational_ai.agents.with_raw_response
    wrapped = raw.simulate_conversation_stream(
        agent_id=DEFAULT_AGENT_ID,
        simulation_specification=ConversationSimulationSpecification(
            simulated_user_config=AgentConfig()
        ),
        new_turns_limit=3,
    )
    assert wrapped.headers["content-type"].startswith("application/x-ndjson")
    # SDK 2.78.0 returns None for the body; the bytes sit on the private httpx response.
    lines = [json.loads(line) for line in wrapped._response.text.splitlines()]
    assert len(lines) == 4
    assert [len(line["simulated_conversation"]) for line in lines[:3]] == [1, 1, 1]
    assert lines[0]["simulated_conversation"][0]["message"] == FIRST_MESSAGE
    assert set(lines[3]) == {"analysis"}
    assert lines[3]["analysis"]["call_successful"] == "success"


def test_stream_lines_arrive_before_the_response_ends(simulator: Simulator) -> None:
    simulator.faults.latency = 0.5
    body = spec(new_turns_limit=3)
    with httpx.stream(
        "POST", simulator.url + simulate_path(stream=True), json=body, headers=KEY, timeout=WAIT
    ) as response:
        lines = response.iter_lines()
        first = json.loads(next(lines))
        hit = simulator.hits[-1]
        assert hit.status is None  # the handler is still producing later turns
        rest = [json.loads(line) for line in lines if line]
    assert first["simulated_conversation"][0]["role"] == "agent"
    assert len(rest) == 3
    deadline = time.monotonic() + WAIT  # the handler records its status just after the last line is sent
    while hit.status is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert hit.status == 200


# answer shapes: history echo and SSE framing ------------------------------------------------

ECHO_HISTORY = [
    {"role": "agent", "message": FIRST_MESSAGE, "time_in_call_secs": 0},
    {"role": "user", "message": SCRIPT[0], "time_in_call_secs": "4", "source_medium": "text"},
]
ECHOED = [ECHO_HISTORY[0], {**ECHO_HISTORY[1], "time_in_call_secs": 4}]


def simulate(sim: Simulator, stream: bool = False, **extra: Any) -> httpx.Response:
    """POST the echo-test history with `new_turns_limit=2` (or `extra`) and return the answer."""
    body = spec(ECHO_HISTORY, **{"new_turns_limit": 2, **extra})
    response = httpx.post(sim.url + simulate_path(stream=stream), json=body, headers=KEY, timeout=WAIT)
    assert response.status_code == 200
    return response


def parse_sse(text: str) -> list[dict[str, str]]:
    """Decode a Server-Sent Events body: one {field: value} per event, its data lines joined by \\n."""
    events: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    data: list[str] = []
    for line in re.split(r"\r\n|\r|\n", text):
        if not line:
            if data:
                events.append({**fields, "data": "\n".join(data)})
            fields, data = {}, []
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            else:
                fields[name] = value
    return events


def test_history_echo_off_and_on_in_the_batch_answer(simulator: Simulator) -> None:
    new = simulate(simulator).json()["simulated_conversation"]
    assert [turn["role"] for turn in new] == ["agent", "user"]
    assert new[0]["time_in_call_secs"] > 4
    simulator.shapes.history_echo = True  # switched on the running server
    assert simulate(simulator).json()["simulated_conversation"] == ECHOED + new


def test_history_echo_off_and_on_in_the_ndjson_stream(simulator: Simulator) -> None:
    batch = simulate(simulator).json()
    off = simulate(simulator, stream=True)
    expected = [{"simulated_conversation": [turn]} for turn in batch["simulated_conversation"]]
    expected.append({"analysis": batch["analysis"]})
    assert off.text == "".join(json.dumps(line) + "\n" for line in expected)  # today's bytes
    simulator.shapes.history_echo = True
    on = [json.loads(line) for line in simulate(simulator, stream=True).text.splitlines()]
    assert on == [{"simulated_conversation": [turn]} for turn in ECHOED] + expected


def test_history_echo_from_the_constructor_parses_in_the_sdk(make_simulator: Any) -> None:
    sim = make_simulator(history_echo=True)
    result = client_for(sim).conversational_ai.agents.simulate_conversation(
        agent_id=DEFAULT_AGENT_ID,
        simulation_specification=ConversationSimulationSpecification(
            simulated_user_config=AgentConfig(),
            partial_conversation_history=[
                ConversationHistoryTranscriptCommonModelInput(**turn) for turn in ECHOED
            ],
        ),
        new_turns_limit=1,
    )
    turns = result.simulated_conversation
    assert [(turn.role, turn.message) for turn in turns[:2]] == [
        (turn["role"], turn["message"]) for turn in ECHOED
    ]
    assert len(turns) == 3 and turns[2].role == "agent"
    assert "cotton t-shirts" in (turns[2].message or "")


def test_sse_framing_events_ids_split_data_and_done(make_simulator: Any) -> None:
    sim = make_simulator(stream_framing="sse")
    batch = simulate(sim, new_turns_limit=3).json()
    response = simulate(sim, stream=True, new_turns_limit=3)
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text.startswith(": ping\n")
    events = parse_sse(response.text)
    assert [event.get("event") for event in events] == ["message"] * 3 + ["analysis", None]
    assert [event.get("id") for event in events[:3]] == ["1", "2", "3"]
    turns = [turn for event in events[:3] for turn in json.loads(event["data"])["simulated_conversation"]]
    assert turns == batch["simulated_conversation"]
    assert json.loads(events[3]["data"]) == {"analysis": batch["analysis"]}
    assert events[4]["data"] == "[DONE]"
    assert "\n" in events[3]["data"]  # split across two data: lines; only joined it is JSON
    data_lines = [line for line in response.text.splitlines() if line.startswith("data:")]
    assert len(data_lines) > len(events)


def test_sse_framing_with_history_echo_switched_at_run_time(simulator: Simulator) -> None:
    simulator.shapes.stream_framing = "sse"
    simulator.shapes.history_echo = True
    batch = simulate(simulator).json()
    events = parse_sse(simulate(simulator, stream=True).text)
    messages = [event for event in events if event.get("event") == "message"]
    assert [event["id"] for event in messages] == ["1", "2", "3", "4"]
    turns = [json.loads(event["data"])["simulated_conversation"][0] for event in messages]
    assert turns[:2] == ECHOED
    assert turns == batch["simulated_conversation"]


def test_shapes_refuse_an_unknown_stream_framing() -> None:
    with pytest.raises(ValueError, match="stream_framing"):
        Shapes(stream_framing="xml")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stream_framing"):
        Simulator(stream_framing="json")  # type: ignore[arg-type]


@pytest.mark.parametrize("status", [404, 410])
def test_simulate_removed_answers_both_simulate_endpoints_and_nothing_else(make_simulator: Any, status: int) -> None:
    sim = make_simulator(simulate_removed=status)
    for stream in (False, True):
        response = httpx.post(sim.url + simulate_path(stream=stream), json=spec(ECHO_HISTORY), headers=KEY,
                              timeout=WAIT)
        assert response.status_code == status
        detail = response.json()["detail"]
        assert detail == "Not Found" if status == 404 else "agent-testing" in detail["message"]
    assert httpx.get(sim.url + f"/v1/convai/agents/{DEFAULT_AGENT_ID}", headers=KEY).status_code == 200
    sim.shapes.simulate_removed = None  # switched on the running server
    assert simulate(sim).status_code == 200


def test_simulate_removed_takes_404_or_410_only() -> None:
    with pytest.raises(ValueError, match="simulate_removed must be one of 404, 410"):
        Simulator(simulate_removed=500)


# HTTP errors and faults -----------------------------------------------------------------------


def test_missing_api_key_is_401(simulator: Simulator) -> None:
    response = httpx.get(simulator.url + f"/v1/convai/agents/{DEFAULT_AGENT_ID}")
    assert response.status_code == 401
    assert response.json() == {
        "detail": {"status": "invalid_api_key", "message": "Invalid API key"}
    }
    assert httpx.post(simulator.url + simulate_path(), json=spec()).status_code == 401


def test_wrong_api_key_is_401_when_a_key_is_set(make_simulator: Any) -> None:
    sim = make_simulator(api_key="sk_right")
    url = sim.url + f"/v1/convai/agents/{DEFAULT_AGENT_ID}"
    assert httpx.get(url, headers={"xi-api-key": "sk_wrong"}).status_code == 401
    assert httpx.get(url, headers={"xi-api-key": "sk_right"}).status_code == 200


@pytest.mark.parametrize(
    ("body", "loc", "kind"),
    [
        (b"{not json", ["body", 1], "json_invalid"),
        ({}, ["body", "simulation_specification"], "missing"),
        ({"simulation_specification": {}}, ["body", "simulation_specification", "simulated_user_config"], "missing"),
        (
            {"simulation_specification": {"simulated_user_config": {}, "partial_conversation_history": "hi"}},
            ["body", "simulation_specification", "partial_conversation_history"],
            "list_type",
        ),
        (
            spec([{"message": "hi", "time_in_call_secs": 0}]),
            ["body", "simulation_specification", "partial_conversation_history", 0, "role"],
            "missing",
        ),
        (
            spec([{"role": "user", "message": "hi"}]),
            ["body", "simulation_specification", "partial_conversation_history", 0, "time_in_call_secs"],
            "missing",
        ),
        (
            spec([{"role": "system", "message": "hi", "time_in_call_secs": 0}]),
            ["body", "simulation_specification", "partial_conversation_history", 0, "role"],
            "enum",
        ),
        (spec(new_turns_limit="many"), ["body", "new_turns_limit"], "int_type"),
        ([1, 2], ["body"], "dict_type"),
    ],
)
def test_malformed_simulate_body_is_422(
    simulator: Simulator, body: Any, loc: list[Any], kind: str
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {**KEY, "content-type": "application/json"}
    for stream in (False, True):
        response = httpx.post(
            simulator.url + simulate_path(stream=stream), content=content, headers=headers
        )
        assert response.status_code == 422
        errors = response.json()["detail"]
        assert {"loc": loc, "type": kind} in [
            {"loc": error["loc"], "type": error["type"]} for error in errors
        ]


def test_validate_simulation_reports_every_error() -> None:
    request, errors = validate_simulation(spec([{"role": "x"}, "turn"], new_turns_limit=[]))
    assert request is None
    assert len(errors) == 4  # bad role, missing time, turn not an object, limit not an int


def test_unknown_conversation_and_unknown_path_are_404(simulator: Simulator) -> None:
    response = httpx.get(simulator.url + "/v1/convai/conversations/conv_nope", headers=KEY)
    assert response.status_code == 404
    assert response.json()["detail"]["status"] == "conversation_not_found"
    other = httpx.get(simulator.url + "/v1/elsewhere", headers=KEY)
    assert other.status_code == 404
    assert other.json() == {"detail": "Not Found"}


def test_status_fault_applies_count_times_then_clears(simulator: Simulator) -> None:
    simulator.faults.status = 503
    simulator.faults.status_count = 2
    url = simulator.url + f"/v1/convai/agents/{DEFAULT_AGENT_ID}"
    statuses = [httpx.get(url, headers=KEY).status_code for _ in range(3)]
    assert statuses == [503, 503, 200]
    assert simulator.faults.status is None
    simulator.faults.status = 429
    for _ in range(3):
        response = httpx.post(simulator.url + simulate_path(), json=spec(), headers=KEY)
        assert response.status_code == 429
        assert response.json()["detail"]["status"] == "too_many_requests"


def test_latency_fault_delays_http_responses(simulator: Simulator) -> None:
    simulator.faults.latency = 0.3
    started = time.monotonic()
    response = httpx.get(simulator.url + f"/v1/convai/agents/{DEFAULT_AGENT_ID}", headers=KEY)
    assert response.status_code == 200
    assert time.monotonic() - started >= 0.3


def test_hostile_text_is_appended_verbatim(make_simulator: Any) -> None:
    hostile = '<script>alert("x")</script>&amp;'
    sim = make_simulator(faults=Faults(hostile_text=hostile))
    response = httpx.post(sim.url + simulate_path(), json=spec(new_turns_limit=3), headers=KEY)
    turns = response.json()["simulated_conversation"]
    assert [turn["message"].endswith(hostile) for turn in turns] == [True, False, True]
    with socket(sim) as (ws, opening):
        assert opening == FIRST_MESSAGE + hostile
        assert ask(ws, SCRIPT[0]).endswith(hostile)


# other HTTP endpoints -------------------------------------------------------------------------


def test_agent_document(simulator: Simulator) -> None:
    body = httpx.get(simulator.url + "/v1/convai/agents/agent_any", headers=KEY).json()
    assert body["agent_id"] == "agent_any"
    assert body["conversation_config"]["agent"]["first_message"] == FIRST_MESSAGE
    assert body["platform_settings"]["auth"]["enable_auth"] is False


def test_signed_url_names_the_request_host_and_scheme(simulator: Simulator) -> None:
    url = simulator.url + "/v1/convai/conversation/get-signed-url?agent_id=agent_x"
    plain = httpx.get(url, headers=KEY).json()["signed_url"]
    assert plain.startswith(f"ws://127.0.0.1:{simulator.port}/v1/convai/conversation?agent_id=agent_x&")
    assert "conversation_signature=" in plain
    proxied = httpx.get(
        url, headers={**KEY, "Host": "proxy.test:9", "X-Forwarded-Proto": "https"}
    ).json()["signed_url"]
    assert proxied.startswith("wss://proxy.test:9/v1/convai/conversation?agent_id=agent_x&")
    assert [hit.host for hit in simulator.hits] == [f"127.0.0.1:{simulator.port}", "proxy.test:9"]


def test_token_endpoint(simulator: Simulator) -> None:
    response = httpx.get(
        simulator.url + "/v1/convai/conversation/token?agent_id=agent_x", headers=KEY
    )
    assert response.json()["conversation_id"].startswith("conv_")
    assert response.json()["token"]
    missing = httpx.get(simulator.url + "/v1/convai/conversation/token", headers=KEY)
    assert missing.status_code == 422


# the agent WebSocket, raw -------------------------------------------------------------------


def recv_json(ws: Any) -> dict[str, Any]:
    data = json.loads(ws.recv(timeout=WAIT))
    assert isinstance(data, dict)
    return data


def next_response(ws: Any) -> str:
    """Return the next agent_response text, skipping other frames (bounded)."""
    for _ in range(100):
        frame = recv_json(ws)
        if frame["type"] == "agent_response":
            return str(frame["agent_response_event"]["agent_response"])
    raise AssertionError("no agent_response within 100 frames")


def ask(ws: Any, text: str) -> str:
    ws.send(json.dumps({"type": "user_message", "text": text}))
    return next_response(ws)


@contextmanager
def socket(
    sim: Simulator, initiation: dict[str, Any] | None = None, query: str = ""
) -> Iterator[tuple[Any, str | None]]:
    """Open the agent socket, initiate, and yield it with its opening line (None if none)."""
    url = f"{sim.ws_url}/v1/convai/conversation?agent_id={DEFAULT_AGENT_ID}{query}"
    with ws_client.connect(url, open_timeout=WAIT, close_timeout=WAIT) as ws:
        first = {"type": "conversation_initiation_client_data", **(initiation or {})}
        ws.send(json.dumps(first))
        metadata = recv_json(ws)
        assert metadata["type"] == "conversation_initiation_metadata"
        opening = None
        wants_opening = (initiation or {}).get("conversation_config_override", {}).get("agent", {})
        if wants_opening.get("first_message", FIRST_MESSAGE):
            opening = next_response(ws)
        yield ws, opening


def test_socket_initiation_metadata_and_opening(simulator: Simulator) -> None:
    url = f"{simulator.ws_url}/v1/convai/conversation?agent_id={DEFAULT_AGENT_ID}"
    with ws_client.connect(url, open_timeout=WAIT) as ws:
        ws.send(json.dumps({"type": "conversation_initiation_client_data", "user_id": "u1"}))
        event = recv_json(ws)["conversation_initiation_metadata_event"]
        assert event["conversation_id"].startswith("conv_")
        assert event["agent_output_audio_format"] == "pcm_16000"
        assert event["user_input_audio_format"] == "pcm_16000"
        opening = recv_json(ws)
        assert opening["type"] == "agent_response"
        assert opening["agent_response_event"]["agent_response"] == FIRST_MESSAGE
    stored = simulator.conversations[event["conversation_id"]]
    assert stored.user_id == "u1"
    assert [hit.kind for hit in simulator.hits] == ["ws-open", "ws-message"]
    assert simulator.hits[1].conversation_id == event["conversation_id"]


def test_first_message_override_and_empty_first_message(simulator: Simulator) -> None:
    override = {"conversation_config_override": {"agent": {"first_message": "Hi Bob!"}}}
    with socket(simulator, override) as (_, opening):
        assert opening == "Hi Bob!"
    silent = {"conversation_config_override": {"agent": {"first_message": ""}}}
    with socket(simulator, silent) as (ws, opening):
        assert opening is None
        ws.send(json.dumps({"type": "user_message", "text": SCRIPT[0]}))
        frame = recv_json(ws)
        assert frame["type"] == "agent_chat_response_part"  # no greeting came first
        assert "cotton t-shirts" in next_response(ws)


def test_chat_parts_stream_the_reply_then_agent_response(simulator: Simulator) -> None:
    with socket(simulator) as (ws, _):
        ws.send(json.dumps({"type": "user_message", "text": SCRIPT[0]}))
        frames = [recv_json(ws)]
        while frames[-1]["type"] != "agent_response":
            assert len(frames) < 100
            frames.append(recv_json(ws))
    parts = [frame["text_response_part"] for frame in frames[:-1]]
    final = frames[-1]["agent_response_event"]
    assert parts[0]["type"] == "start"
    assert parts[-1]["type"] == "stop"
    assert {part["type"] for part in parts[1:-1]} == {"delta"}
    assert "".join(part["text"] for part in parts) == final["agent_response"]
    assert {part["event_id"] for part in parts} == {final["event_id"]}


def test_without_stream_parts_only_agent_response(make_simulator: Any) -> None:
    sim = make_simulator(stream_parts=False)
    with socket(sim) as (ws, _):
        ws.send(json.dumps({"type": "user_message", "text": SCRIPT[0]}))
        assert recv_json(ws)["type"] == "agent_response"


def test_socket_rejects_a_first_frame_that_is_not_initiation(simulator: Simulator) -> None:
    url = f"{simulator.ws_url}/v1/convai/conversation?agent_id={DEFAULT_AGENT_ID}"
    with ws_client.connect(url, open_timeout=WAIT) as ws:
        ws.send(json.dumps({"type": "user_message", "text": "hello"}))
        with pytest.raises(ConnectionClosedError) as closed:
            ws.recv(timeout=WAIT)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1008
    assert simulator.conversations == {}


def test_junk_frames_do_not_kill_the_socket(simulator: Simulator) -> None:
    with socket(simulator) as (ws, _):
        ws.send("{this is not json")
        ws.send(b"\x00\x01binary")
        ws.send(json.dumps(["a", "list"]))
        ws.send(json.dumps({"type": "no_such_type", "x": 1}))
        ws.send(json.dumps({"user_audio_chunk": "AAAA"}))
        ws.send(json.dumps({"type": "user_activity"}))
        ws.send(json.dumps({"type": "pong", "event_id": 99}))
        ws.send(json.dumps({"type": "feedback", "score": "like", "event_id": 1}))
        ws.send(json.dumps({"type": "client_tool_result", "tool_call_id": "t", "result": "ok"}))
        ws.send(json.dumps({"type": "contextual_update", "text": "Goods: leather shoes"}))
        answer = ask(ws, "What do you know?")
    assert "leather shoes" in answer
    (stored,) = simulator.conversations.values()
    assert stored.audio_chunks == 1
    assert stored.pongs == [99]
    assert stored.contextual_updates == ["Goods: leather shoes"]
    assert [turn["role"] for turn in stored.transcript] == ["agent", "user", "agent"]
    kinds = [hit.message_type for hit in simulator.hits if hit.kind == "ws-message"]
    assert kinds[1:4] == ["invalid-json", "binary", "invalid-json"]
    assert "user_audio_chunk" in kinds


def test_socket_memory_kept_within_and_lost_across_sockets(simulator: Simulator) -> None:
    with socket(simulator) as (ws, opening):
        assert opening == FIRST_MESSAGE
        replies = [ask(ws, message) for message in SCRIPT[:3]]
    assert "cotton t-shirts" in replies[2]
    with socket(simulator) as (ws, opening):
        assert opening == FIRST_MESSAGE
        fresh = ask(ws, SCRIPT[2])
    assert "cotton t-shirts" not in fresh
    assert "Which product" in fresh
    assert len(simulator.conversations) == 2


def test_close_1011_after_n_user_messages(make_simulator: Any) -> None:
    sim = make_simulator(faults=Faults(ws_close_code=1011, ws_close_after=2))
    with socket(sim) as (ws, _):
        assert "cotton t-shirts" in ask(ws, SCRIPT[0])
        ws.send(json.dumps({"type": "user_message", "text": SCRIPT[1]}))
        with pytest.raises(ConnectionClosedError) as closed:
            next_response(ws)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1011
    (stored,) = sim.conversations.values()
    assert stored.status == "failed"
    assert stored.user_messages == 2


def test_close_1006_aborts_without_a_close_frame(make_simulator: Any) -> None:
    sim = make_simulator(faults=Faults(ws_close_code=1006))
    with socket(sim) as (ws, _):
        ws.send(json.dumps({"type": "user_message", "text": SCRIPT[0]}))
        with pytest.raises(ConnectionClosedError) as closed:
            next_response(ws)
    assert closed.value.rcvd is None


def test_latency_fault_delays_agent_replies(simulator: Simulator) -> None:
    with socket(simulator) as (ws, _):
        simulator.faults.latency = 0.3
        started = time.monotonic()
        ask(ws, SCRIPT[0])
        assert time.monotonic() - started >= 0.3


def test_ping_events_when_enabled(make_simulator: Any) -> None:
    sim = make_simulator(ping_interval=0.05)
    with socket(sim) as (ws, _):
        ping = recv_json(ws)
        assert ping["type"] == "ping"
        event_id = ping["ping_event"]["event_id"]
        assert "ping_ms" in ping["ping_event"]
        ws.send(json.dumps({"type": "pong", "event_id": event_id}))
        assert "cotton t-shirts" in ask(ws, SCRIPT[0])
    (stored,) = sim.conversations.values()
    assert event_id in stored.pongs


def signed_url(sim: Simulator) -> str:
    response = httpx.get(
        sim.url + f"/v1/convai/conversation/get-signed-url?agent_id={DEFAULT_AGENT_ID}",
        headers=KEY,
    )
    return str(response.json()["signed_url"])


def test_wrong_signature_is_refused_with_403(simulator: Simulator) -> None:
    good = signed_url(simulator)
    with pytest.raises(InvalidStatus) as refused:
        ws_client.connect(good[: -4] + "XXXX", open_timeout=WAIT)
    assert refused.value.response.status_code == 403
    with ws_client.connect(good, open_timeout=WAIT) as ws:
        ws.send(json.dumps({"type": "conversation_initiation_client_data"}))
        assert recv_json(ws)["type"] == "conversation_initiation_metadata"
    (stored,) = simulator.conversations.values()
    assert stored.authorization_method == "signed_url"


def test_require_signed_url_refuses_public_sockets(make_simulator: Any) -> None:
    sim = make_simulator(require_signed_url=True)
    with pytest.raises(InvalidStatus) as refused:
        ws_client.connect(
            f"{sim.ws_url}/v1/convai/conversation?agent_id={DEFAULT_AGENT_ID}", open_timeout=WAIT
        )
    assert refused.value.response.status_code == 403
    with ws_client.connect(signed_url(sim), open_timeout=WAIT) as ws:
        ws.send(json.dumps({"type": "conversation_initiation_client_data"}))
        assert recv_json(ws)["type"] == "conversation_initiation_metadata"


# the agent WebSocket, through the official SDK ------------------------------------------------


class SdkSession:
    """A text-only SDK Conversation with bounded waits."""

    def __init__(self, sim: Simulator, *, requires_auth: bool = False, **kwargs: Any) -> None:
        self.responses: queue.Queue[str] = queue.Queue()
        self.parts: list[tuple[str, AgentChatResponsePartType]] = []
        self.disconnects: queue.Queue[DisconnectionDetails] = queue.Queue()
        self.conversation = Conversation(
            client_for(sim),
            DEFAULT_AGENT_ID,
            requires_auth=requires_auth,
            callback_agent_response=self.responses.put,
            callback_agent_chat_response_part=lambda text, kind: self.parts.append((text, kind)),
            callback_disconnect=self.disconnects.put,
            **kwargs,
        )

    def start(self) -> str:
        self.conversation.start_session()
        return self.responses.get(timeout=WAIT)

    def ask(self, text: str) -> str:
        self.conversation.send_user_message(text)
        return self.responses.get(timeout=WAIT)

    def end(self) -> str | None:
        self.conversation.end_session()
        thread = self.conversation._thread
        assert thread is not None
        thread.join(timeout=WAIT)
        assert not thread.is_alive()
        return self.conversation.wait_for_session_end()


@contextmanager
def sdk_session(sim: Simulator, **kwargs: Any) -> Iterator[SdkSession]:
    session = SdkSession(sim, **kwargs)
    try:
        yield session
    finally:
        session.conversation.end_session()


@pytest.mark.parametrize("requires_auth", [False, True])
def test_sdk_conversation_remembers_within_one_socket_only(
    simulator: Simulator, requires_auth: bool
) -> None:
    with sdk_session(simulator, requires_auth=requires_auth, user_id="user-7") as first:
        assert first.start() == FIRST_MESSAGE
        replies = [first.ask(message) for message in SCRIPT[:3]]
        first_id = first.end()
    assert "cotton t-shirts" in replies[2]
    assert "Vietnam" in replies[2]
    with sdk_session(simulator, requires_auth=requires_auth, user_id="user-7") as second:
        assert second.start() == FIRST_MESSAGE
        fresh = second.ask(SCRIPT[2])
        second_id = second.end()
    assert "cotton t-shirts" not in fresh
    assert "Which product" in fresh
    assert first_id != second_id
    assert set(simulator.conversations) == {first_id, second_id}
    opened = [hit for hit in simulator.hits if hit.kind == "ws-open"]
    signed = ["conversation_signature=" in hit.query for hit in opened]
    assert signed == [requires_auth, requires_auth]
    assert all("source=python_sdk" in hit.query for hit in opened)
    signing = [hit for hit in simulator.hits if hit.path.endswith("/get-signed-url")]
    assert len(signing) == (2 if requires_auth else 0)


def test_sdk_conversation_transcript_endpoint(simulator: Simulator) -> None:
    config = ConversationInitiationData(dynamic_variables={"shipment": "A-1"})
    with sdk_session(simulator, user_id="user-9", config=config) as session:
        session.start()
        session.ask(SCRIPT[0])
        conversation_id = session.end()
    assert session.parts[0][1] is AgentChatResponsePartType.START
    assert session.parts[-1][1] is AgentChatResponsePartType.STOP
    details = httpx.get(
        simulator.url + f"/v1/convai/conversations/{conversation_id}", headers=KEY
    ).json()
    assert details["status"] == "done"
    assert details["user_id"] == "user-9"
    assert [turn["role"] for turn in details["transcript"]] == ["agent", "user", "agent"]
    assert details["transcript"][1]["message"] == SCRIPT[0]
    echo = details["conversation_initiation_client_data"]
    assert echo["dynamic_variables"] == {"shipment": "A-1"}
    assert echo["conversation_config_override"]["text_only"] is True
    assert details["metadata"]["conversation_initiation_source"] == "python_sdk"
    listing = httpx.get(
        simulator.url + "/v1/convai/conversations?user_id=user-9", headers=KEY
    ).json()
    assert [item["conversation_id"] for item in listing["conversations"]] == [conversation_id]
    assert listing["conversations"][0]["message_count"] == 3
    assert listing["has_more"] is False
    nobody = httpx.get(simulator.url + "/v1/convai/conversations?user_id=nobody", headers=KEY)
    assert nobody.json()["conversations"] == []


def test_sdk_sees_an_error_disconnect_on_1011(make_simulator: Any) -> None:
    sim = make_simulator(faults=Faults(ws_close_code=1011, ws_close_after=1))
    with sdk_session(sim) as session:
        session.start()
        session.conversation.send_user_message(SCRIPT[0])
        details = session.disconnects.get(timeout=WAIT)
    assert details.reason == "error"
    assert details.close_code == 1011
    assert session.responses.empty()


# lifecycle --------------------------------------------------------------------------------------


async def test_async_start_and_stop(async_simulator: Simulator) -> None:
    assert async_simulator.port > 0
    async with httpx.AsyncClient(base_url=async_simulator.url) as client:
        response = await client.get(f"/v1/convai/agents/{DEFAULT_AGENT_ID}", headers=KEY)
    assert response.status_code == 200
    assert async_simulator.hits[0].kind == "http"


def test_stopping_closes_open_sockets_with_1001() -> None:
    with contextlib.ExitStack() as server:
        sim = server.enter_context(running_simulator())
        url = f"{sim.ws_url}/v1/convai/conversation?agent_id={DEFAULT_AGENT_ID}"
        with ws_client.connect(url, open_timeout=WAIT, close_timeout=WAIT) as ws:
            ws.send(json.dumps({"type": "conversation_initiation_client_data"}))
            assert recv_json(ws)["type"] == "conversation_initiation_metadata"
            assert next_response(ws) == FIRST_MESSAGE
            server.close()  # stops the simulator while the socket is open
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=WAIT)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1001


@contextmanager
def simulator_process(tmp_path: Path, *flags: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """Run `python -m sessiontap.simulator` with `flags`; yield the process and its port."""
    port_file = tmp_path / "port"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "sessiontap.simulator", "--port", "0", "--port-file", str(port_file), *flags],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 15
        while not port_file.exists() and time.monotonic() < deadline:
            assert process.poll() is None
            time.sleep(0.05)
        yield process, int(port_file.read_text())
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)


def test_subprocess_writes_port_file_and_exits_on_sigterm(tmp_path: Path) -> None:
    with simulator_process(tmp_path) as (process, port):
        response = httpx.get(
            f"http://127.0.0.1:{port}/v1/convai/agents/{DEFAULT_AGENT_ID}", headers=KEY
        )
        assert response.status_code == 200
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=10)
    assert process.returncode == 0
    assert out.strip() == f"ElevenLabs simulator listening on http://127.0.0.1:{port}"


def test_subprocess_shape_flags(tmp_path: Path) -> None:
    with simulator_process(tmp_path, "--history-echo", "--stream-framing", "sse") as (_, port):
        url = f"http://127.0.0.1:{port}" + simulate_path(stream=True)
        body = spec(ECHO_HISTORY, new_turns_limit=1)
        response = httpx.post(url, json=body, headers=KEY, timeout=WAIT)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(response.text)
    turns = [json.loads(event["data"])["simulated_conversation"][0] for event in events[:3]]
    assert turns[:2] == ECHOED and turns[2]["role"] == "agent"
    assert [event.get("event") for event in events[3:]] == ["analysis", None]


def test_subprocess_simulate_removed_flag(tmp_path: Path) -> None:
    with simulator_process(tmp_path, "--simulate-removed", "410") as (_, port):
        response = httpx.post(f"http://127.0.0.1:{port}" + simulate_path(), json=spec(ECHO_HISTORY), headers=KEY,
                              timeout=WAIT)
    assert response.status_code == 410

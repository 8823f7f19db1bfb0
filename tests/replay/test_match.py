"""Tests for addons/replay/match.py: replay predicates, served-once matching, nearest-miss reasons, WebSocket steps."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qsl

import pytest
from websockets.sync.client import connect

from sessiontap.core.model import Exchange, WsMessage
from sessiontap.replay.match import (
    DEFAULT_MATCH_ON,
    MATCHERS,
    Match,
    Matcher,
    Miss,
    WsMiss,
    WsReplay,
    WsStepMatch,
    compare,
    compare_ws_message,
    match_ws_step,
    parse_ignore,
    parse_match_on,
    ws_steps,
)
from sessiontap.samples.chat import FixedElevenLabsChatClient
from sessiontap.samples.script import script_messages
from sessiontap.simulator.server import Simulator

KEY = "sk_test_MATCHKEY0123456789"
AGENT = "agent_customs_demo"
SIMULATE = f"/v1/convai/agents/{AGENT}/simulate-conversation"


pytestmark = pytest.mark.usefixtures("direct_env")


def play_fixed_client(sim: Simulator, turns: int) -> list[Exchange]:
    """Run the fixed HTTP client against the simulator; its requests as Exchange records."""
    start = len(sim.hits)
    with FixedElevenLabsChatClient(sim.url, KEY, AGENT) as client:
        session = client.start_session()
        for message in script_messages(turns):
            client.send(session, message)
    hits = [h for h in sim.hits[start:] if h.kind == "http"]
    return [
        Exchange(flow_id=f"flow-{start + i}", method=h.method, url=sim.url + h.path, path=h.path,
                 query=dict(parse_qsl(h.query)), request_headers=dict(h.headers), request_body=h.body.encode(),
                 started=h.timestamp)
        for i, h in enumerate(hits)
    ]


def with_body(ex: Exchange, body: dict[str, Any] | bytes, flow_id: str = "new") -> Exchange:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return replace(ex, flow_id=flow_id, request_body=raw)


def body_of(ex: Exchange) -> dict[str, Any]:
    return json.loads(ex.request_body)


@pytest.fixture
def recorded(simulator: Simulator) -> list[Exchange]:
    """Three simulate calls of the fixed client, recorded from real traffic."""
    calls = play_fixed_client(simulator, 3)
    assert len(calls) == 3
    return calls


# --- HTTP predicates and the Matcher -----------------------------------------------------------


def test_the_same_client_run_again_matches_each_recorded_call_in_order(simulator, recorded):
    again = play_fixed_client(simulator, 3)
    assert again[0].request_headers["x-session-id"] != recorded[0].request_headers["x-session-id"]
    matcher = Matcher(recorded)
    found = [matcher.find(ex) for ex in again]
    assert all(isinstance(f, Match) for f in found)
    assert [f.index for f in found if isinstance(f, Match)] == [0, 1, 2]


def test_volatile_fields_are_ignored_by_default(recorded):
    body = body_of(recorded[1])
    for turn in body["simulation_specification"]["partial_conversation_history"]:
        turn["time_in_call_secs"] += 41
        turn["created_at_unix_ms"] = 1_700_000_000_000
        turn["source_event_id"] = 7
    body["request_timestamp"] = "2030-01-01T00:00:00Z"
    got = with_body(recorded[1], body)
    assert compare(got, recorded[1]).ok
    found = Matcher(recorded).find(got)
    assert isinstance(found, Match) and found.index == 1

    strict = Matcher(recorded, ignore=parse_ignore((), with_defaults=False)).find(got)
    assert isinstance(strict, Miss)
    assert dict(strict.failures)["body"].startswith(
        "body differs at simulation_specification.partial_conversation_history.0.time_in_call_secs: recorded 0, got 41")


def test_a_changed_user_message_is_refused_naming_both_values_and_the_nearest_call(recorded):
    matcher = Matcher(recorded)
    assert isinstance(matcher.find(recorded[0]), Match)  # the replay is past call 1
    body = body_of(recorded[1])
    body["simulation_specification"]["partial_conversation_history"][-1]["message"] = "They are made in Portugal."
    miss = matcher.find(with_body(recorded[1], body))
    assert isinstance(miss, Miss)
    nearest_id = recorded[1].flow_id
    assert miss.nearest is recorded[1]
    reasons = dict(miss.failures)
    assert reasons["user_message"] == ("user_message differs: recorded 'They are made in Vietnam.', "
                                       "got 'They are made in Portugal.'")
    assert reasons["context"].startswith(
        "context differs in simulation_specification.partial_conversation_history at turn 3: "
        "recorded user 'They are made in Vietnam.', got user 'They are made in Portugal.'")
    assert miss.passed == ["method", "endpoint", "query"]
    message = miss.message()
    assert message.startswith(f"no recorded call matches: nearest is flow {nearest_id} (POST {SIMULATE}): "
                              "user_message differs: recorded 'They are made in Vietnam.'")
    assert "body differs at simulation_specification.partial_conversation_history.2.message" in message


def test_a_dropped_turn_is_a_context_difference(recorded):
    body = body_of(recorded[2])
    del body["simulation_specification"]["partial_conversation_history"][3]  # the agent's second reply
    reason = MATCHERS["context"](with_body(recorded[2], body), recorded[2], parse_ignore(()))
    assert reason is not None
    assert reason.startswith("context differs in simulation_specification.partial_conversation_history at turn 4: "
                             "recorded agent '")
    assert reason.endswith("got user 'The fabric is 100% cotton, knitted.' (recorded 5 turns, got 4)")


def test_context_compares_normalized_turns_not_bytes(recorded):
    flat = with_body(recorded[0], {"conversation_context": "User: hello\nAgent: hi there"})
    listed = with_body(recorded[0], {"conversation_context": [{"role": "user", "content": "hello"},
                                                             {"role": "assistant", "text": "hi   there"}]})
    assert MATCHERS["context"](flat, listed, parse_ignore(())) is None
    assert MATCHERS["body"](flat, listed, parse_ignore(())) is not None


def test_match_on_chooses_the_predicates(recorded):
    body = body_of(recorded[0])
    body["simulation_specification"]["partial_conversation_history"][0]["message"] = "shoes"
    got = with_body(recorded[0], body)
    found = Matcher(recorded, match_on="method, endpoint").find(got)
    assert isinstance(found, Match) and found.index == 0
    miss = Matcher(recorded, match_on=["user_message"]).find(got)
    assert isinstance(miss, Miss)
    assert miss.failures == [("user_message", "user_message differs: recorded "
                                              "'I need to classify cotton t-shirts for import.', got 'shoes'")]


def test_ignore_paths_are_configurable(recorded):
    body = body_of(recorded[1])
    body["new_turns_limit"] = 3
    got = with_body(recorded[1], body)
    miss = Matcher(recorded).find(got)
    assert isinstance(miss, Miss)
    assert dict(miss.failures)["body"] == "body differs at new_turns_limit: recorded 1, got 3"
    assert isinstance(Matcher(recorded, ignore=parse_ignore(["new_turns_limit"])).find(got), Match)

    # a dotted path is anchored at the root; '*' is one key or list index
    history_times = parse_ignore(["simulation_specification.partial_conversation_history.*.time_in_call_secs"],
                                 with_defaults=False)
    body = body_of(recorded[1])
    body["simulation_specification"]["partial_conversation_history"][2]["time_in_call_secs"] = 9
    assert compare(with_body(recorded[1], body), recorded[1], ignore=history_times).ok
    body["time_in_call_secs"] = 9
    result = compare(with_body(recorded[1], body), recorded[1], ignore=history_times)
    assert result.failures == [("body", "body differs at time_in_call_secs: recorded (absent), got 9")]


@pytest.mark.parametrize("bad", ["a..b", ".a", "a."])
def test_a_bad_ignore_path_is_a_value_error(bad):
    with pytest.raises(ValueError, match="empty segment"):
        parse_ignore([bad])


def test_an_unknown_matcher_name_lists_the_valid_ones():
    with pytest.raises(ValueError) as err:
        parse_match_on(["method", "bdy"])
    assert str(err.value) == ("unknown matcher 'bdy' (did you mean body? "
                              "valid: method, endpoint, query, user_message, context, body)")
    with pytest.raises(ValueError, match="valid: method, endpoint"):
        Matcher([], match_on="method,nonsense")
    with pytest.raises(ValueError, match="at least one"):
        parse_match_on("")
    assert parse_match_on("body, method,body") == ("body", "method")
    assert parse_match_on(DEFAULT_MATCH_ON) == tuple(MATCHERS)


def test_a_response_is_served_once_then_the_next_identical_one(recorded):
    first, twin = recorded[0], replace(recorded[0], flow_id="twin")
    matcher = Matcher([first, twin, recorded[1]])
    got = with_body(first, first.request_body)
    one, two, three = matcher.find(got), matcher.find(got), matcher.find(got)
    assert isinstance(one, Match) and one.recorded is first and not one.repeated
    assert isinstance(two, Match) and two.recorded is twin
    assert isinstance(three, Miss) and three.served and three.nearest is twin
    assert three.message() == (f"no recorded call matches: nearest is flow twin (POST {SIMULATE}): "
                               "it matches but its response was already served")

    repeating = Matcher([first, twin], repeat_last=True)
    served = [repeating.find(got) for _ in range(4)]
    assert [(m.recorded.flow_id, m.repeated) for m in served if isinstance(m, Match)] == [
        (first.flow_id, False), ("twin", False), ("twin", True), ("twin", True)]


def test_a_miss_with_nothing_recorded_or_another_endpoint_says_so(recorded):
    empty = Matcher([]).find(recorded[0])
    assert isinstance(empty, Miss)
    assert empty.message() == f"no recorded call matches POST {SIMULATE}: the capture holds no recorded calls"
    other = replace(recorded[0], flow_id="x", method="GET", path="/v1/convai/agents/other_agent", request_body=b"")
    miss = Matcher(recorded).find(other)
    assert isinstance(miss, Miss)
    assert dict(miss.failures)["method"] == "method differs: recorded POST, got GET"
    assert dict(miss.failures)["endpoint"] == (f"endpoint differs: recorded {SIMULATE}, "
                                               "got /v1/convai/agents/other_agent")
    assert dict(miss.failures)["body"] == "body differs: recorded a JSON body, got a non-JSON body"


def test_non_json_bodies_compare_as_bytes(recorded):
    bad = with_body(recorded[0], b'{"simulation_specification": {oops', "bad")
    assert MATCHERS["body"](with_body(bad, bad.request_body), bad, parse_ignore(())) is None
    reason = MATCHERS["body"](with_body(bad, b"{oops!"), bad, parse_ignore(()))
    assert reason == "body differs: recorded 34 bytes '{\"simulation_specification\": {oops', got 6 bytes '{oops!'"


def test_secrets_masked_in_the_capture_still_match_the_live_values(recorded):
    """Captures are redacted; the live request carries the real values."""
    live = {"simulation_specification": {"dynamic_variables": {"secret__token": "tok-123456789"}}}
    stored = {"simulation_specification": {"dynamic_variables": {"secret__token": "[REDACTED]"}}}
    rec = replace(with_body(recorded[0], stored, "rec"),
                  query={"agent_id": AGENT, "conversation_signature": "[REDACTED]"})
    got = replace(with_body(recorded[0], live), query={"agent_id": AGENT, "conversation_signature": "sig-abcdef123"})
    assert compare(got, rec).ok
    moved = replace(got, query={"agent_id": "agent_other", "conversation_signature": "sig-abcdef123"})
    assert compare(moved, rec).failures == [
        ("query", "query parameter agent_id differs: recorded 'agent_customs_demo', got 'agent_other'")]


# --- WebSocket steps ---------------------------------------------------------------------------


def record_socket(sim: Simulator, user_messages: list[str]) -> list[WsMessage]:
    """One real text conversation with the simulator, recorded in both directions."""
    log: list[WsMessage] = []

    def sent(ws: Any, obj: dict[str, Any]) -> None:
        text = json.dumps(obj)
        ws.send(text)
        log.append(WsMessage(True, time.time(), text, len(text.encode())))

    def until_reply(ws: Any) -> None:
        while True:
            text = ws.recv(timeout=10)
            log.append(WsMessage(False, time.time(), text, len(text.encode())))
            if json.loads(text)["type"] == "agent_response":
                return

    with connect(f"{sim.ws_url}/v1/convai/conversation?agent_id={AGENT}", open_timeout=10) as ws:
        sent(ws, {"type": "conversation_initiation_client_data", "user_id": "match-test",
                  "dynamic_variables": {}, "custom_llm_extra_body": {}})
        until_reply(ws)
        for text in user_messages:
            sent(ws, {"type": "user_message", "text": text})
            until_reply(ws)
    return log


def client(obj: dict[str, Any] | str | bytes) -> WsMessage:
    if isinstance(obj, bytes):
        return WsMessage(True, 0.0, None, len(obj))
    text = obj if isinstance(obj, str) else json.dumps(obj)
    return WsMessage(True, 0.0, text, len(text.encode()))


def server(obj: dict[str, Any]) -> WsMessage:
    text = json.dumps(obj)
    return WsMessage(False, 0.0, text, len(text.encode()))


@pytest.fixture
def socket_log(simulator: Simulator) -> list[WsMessage]:
    return record_socket(simulator, ["I need to classify cotton t-shirts", "They are made in Vietnam."])


def kind(msg: WsMessage | None) -> str:
    assert msg is not None and msg.text is not None
    return str(json.loads(msg.text)["type"])


def test_a_recorded_socket_splits_into_client_message_steps(socket_log):
    steps = ws_steps(socket_log)
    assert [kind(s.client) for s in steps] == ["conversation_initiation_client_data", "user_message", "user_message"]
    assert [kind(m) for m in steps[0].server] == ["conversation_initiation_metadata", "agent_response"]
    assert kind(steps[1].server[0]) == "agent_chat_response_part"
    assert kind(steps[2].server[-1]) == "agent_response"
    assert [i for s in steps for i in [s.client_index, *s.server_indexes]] == list(range(len(socket_log)))


def test_a_socket_replays_turn_by_turn(socket_log):
    replay = WsReplay(socket_log)
    assert replay.opening == []
    sent: list[WsMessage] = []
    for msg in [m for m in socket_log if m.from_client]:
        step = replay.feed(client(msg.text or ""))
        assert isinstance(step, WsStepMatch)
        sent += step.send
    assert replay.done
    assert [m.text for m in sent] == [m.text for m in socket_log if not m.from_client]
    extra = replay.feed(client({"type": "user_message", "text": "one more thing"}))
    assert isinstance(extra, WsMiss)
    assert extra.message() == ("WebSocket replay: client sent user_message 'one more thing', but the recording "
                               "has no more client messages (all 3 replayed)")


def test_an_out_of_order_or_extra_client_message_is_a_miss(socket_log):
    replay = WsReplay(socket_log)
    hello = client({"type": "user_message", "text": "I need to classify cotton t-shirts"})
    early = replay.feed(hello)
    assert isinstance(early, WsMiss) and replay.position == 0
    assert early.reason == "message type differs: recorded 'conversation_initiation_client_data', got 'user_message'"
    assert isinstance(replay.feed(client(socket_log[0].text or "")), WsStepMatch)
    extra = replay.feed(client({"type": "user_activity"}))
    assert isinstance(extra, WsMiss) and replay.position == 1
    assert extra.message() == ("WebSocket replay: client sent user_activity, but step 2 of 3 expects user_message "
                               "'I need to classify cotton t-shirts': message type differs: recorded "
                               "'user_message', got 'user_activity'")
    changed = replay.feed(client({"type": "user_message", "text": "I need to classify shoes"}))
    assert isinstance(changed, WsMiss)
    assert changed.reason == ("user_message differs: recorded 'I need to classify cotton t-shirts', "
                              "got 'I need to classify shoes'")
    assert isinstance(replay.feed(hello), WsStepMatch)


def test_ws_messages_compare_json_aware_ignoring_volatile_fields(socket_log):
    init = socket_log[0]
    reordered = client({"custom_llm_extra_body": {}, "dynamic_variables": {}, "user_id": "match-test",
                        "type": "conversation_initiation_client_data"})
    assert compare_ws_message(reordered, init) is None
    other_user = client({**json.loads(init.text or ""), "user_id": "someone-else"})
    assert compare_ws_message(other_user, init) == ("conversation_initiation_client_data differs at user_id: "
                                                    "recorded 'match-test', got 'someone-else'")
    assert compare_ws_message(client({"type": "pong", "event_id": 9}), client({"type": "pong", "event_id": 3})) is None
    assert compare_ws_message(client(b"\x00\x01ab"), client(b"\x00\x01cd")) is None
    assert compare_ws_message(client(b"\x00\x01abc"), client(b"\x00\x01")) == (
        "binary frame differs: recorded 2 bytes, got 5 bytes")
    assert compare_ws_message(client("not json"), client(b"\x00")) == (
        "frame differs: recorded a binary frame of 1 bytes, got text 'not json'")


def test_server_messages_before_the_first_client_message_are_the_opening():
    log = [server({"type": "conversation_initiation_metadata"}), client({"type": "user_message", "text": "hi"}),
           server({"type": "agent_response"})]
    steps = ws_steps(log)
    assert steps[0].client is None and steps[0].server_indexes == [0]
    replay = WsReplay(log)
    assert [m.text for m in replay.opening] == [log[0].text]
    found = replay.feed(client({"type": "user_message", "text": "hi"}))
    assert isinstance(found, WsStepMatch) and [m.text for m in found.send] == [log[2].text]
    first = match_ws_step(steps, 0, client({"type": "user_message", "text": "hi"}))
    assert isinstance(first, WsMiss) and first.reason == "the recording expects the server to speak first"

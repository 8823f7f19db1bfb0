"""Context variants (core/vary.py): each format says what phase 5 of the plan means, and the decoder reads it back."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sessiontap.core.decode import FORMAT_FLAT, FORMAT_STRUCTURED, FORMAT_TRANSCRIPT, HISTORY_FIELD, decode_simulate
from sessiontap.core.model import AGENT, USER, Exchange, SessionState, Turn
from sessiontap.core.rules import Judged, context_format
from sessiontap.core.settings import Settings
from sessiontap.replay import vary

HISTORY = [Turn(USER, "I need to classify cotton t-shirts."), Turn(AGENT, "Which country are they made in?"),
           Turn(USER, "They are made in Vietnam."), Turn(AGENT, "What material is it made of?")]
NEW = "The fabric is 100% cotton."
TEMPLATE = {
    "simulation_specification": {"simulated_user_config": {"first_message": NEW, "prompt": {"prompt": "be a user"}},
                                 "partial_conversation_history": [], "dynamic_variables": {"name": "Bob"}},
    "conversation_context": "User: I need to classify cotton t-shirts. Agent: Which country?",
    "new_turns_limit": 1,
}


def decoded(body: dict) -> tuple[list[tuple[str, str]], str, str | None]:
    """What the analysis reads from a simulate body: its context turns, the history's format, the user message."""
    ex = Exchange("f1", "POST", "http://x/v1/convai/agents/a/simulate-conversation",
                  "/v1/convai/agents/a/simulate-conversation", {}, {}, json.dumps(body).encode(), 0.0)
    [call] = decode_simulate(ex, "a", False, "x-session-id", "").calls
    return [t.key() for t in call.context], call.context_formats[HISTORY_FIELD], call.user_text


def test_modes_parse_in_the_order_given_and_all_means_every_one():
    assert vary.parse_modes("none, full,none") == ["none", "full"]
    assert vary.parse_modes("all") == list(vary.MODES)
    for bad in ("", "full,bogus"):
        with pytest.raises(ValueError, match="mode"):
            vary.parse_modes(bad)


@pytest.mark.parametrize("mode, fmt", [("full", "turns"), ("transcript", FORMAT_TRANSCRIPT),
                                       ("structured", FORMAT_STRUCTURED)])
def test_full_transcript_and_structured_all_hand_the_agent_every_turn(mode, fmt):
    body = vary.simulate_body(TEMPLATE, mode, HISTORY, NEW)
    turns, found_format, user_text = decoded(body)
    assert turns == [t.key() for t in HISTORY] + [(USER, NEW)]
    assert found_format == fmt and user_text == NEW


def test_none_sends_only_the_new_message_and_summary_keeps_the_facts_but_not_the_turns():
    assert decoded(vary.simulate_body(TEMPLATE, "none", HISTORY, NEW))[0] == [(USER, NEW)]
    turns, _, user_text = decoded(vary.simulate_body(TEMPLATE, "summary", HISTORY, NEW))
    assert len(turns) == 2 and user_text == NEW
    summary = turns[0][1]
    assert summary.startswith(vary.SUMMARY_PREFIX)
    assert "cotton t-shirts" in summary and "Vietnam" in summary and "What material is it made of?" in summary


def test_the_rewritten_body_keeps_the_rest_drops_other_carriers_and_leaves_the_template_alone():
    before = json.dumps(TEMPLATE, sort_keys=True)
    body = vary.simulate_body(TEMPLATE, "full", HISTORY, NEW)
    assert json.dumps(TEMPLATE, sort_keys=True) == before
    spec = body["simulation_specification"]
    assert "conversation_context" not in body and "first_message" not in spec["simulated_user_config"]
    assert spec["simulated_user_config"]["prompt"] == {"prompt": "be a user"}
    assert spec["dynamic_variables"] == {"name": "Bob"} and body["new_turns_limit"] == 1
    assert all(isinstance(t["time_in_call_secs"], int) for t in spec["partial_conversation_history"])
    with pytest.raises(ValueError, match="not a JSON object"):
        vary.simulate_body(["not", "an", "object"], "full", HISTORY, NEW)


def test_on_the_socket_only_full_keeps_one_socket_and_the_others_send_their_context_as_an_update():
    assert vary.shares_socket("full") and not any(vary.shares_socket(m) for m in ("transcript", "none", "summary"))
    assert vary.socket_frames("full", HISTORY, NEW, ["Officer on duty"]) == [
        {"type": "contextual_update", "text": "Officer on duty"}, {"type": "user_message", "text": NEW}]
    update, message = vary.socket_frames("transcript", HISTORY, NEW)
    assert update == {"type": "contextual_update", "text": vary.transcript(HISTORY)} and message["text"] == NEW
    assert json.loads(vary.socket_frames("structured", HISTORY, NEW)[0]["text"])["conversation_history"][0] == {
        "role": "user", "content": HISTORY[0].text}
    assert vary.socket_frames("none", HISTORY, NEW, ["Officer on duty"]) == [{"type": "user_message", "text": NEW}]
    assert vary.socket_frames("summary", [], NEW) == [{"type": "user_message", "text": NEW}]  # nothing to carry yet


words = st.text(alphabet=st.characters(whitelist_categories=("L", "N"), whitelist_characters=" .,!?'-"),
                min_size=1, max_size=40).filter(lambda s: s.strip() != "")


@given(st.lists(st.tuples(st.sampled_from([USER, AGENT]), words), min_size=2, max_size=8))  # a history is 2+ turns
def test_a_transcript_and_a_structured_history_decode_back_to_the_same_turns(pairs):
    history = [Turn(role, text) for role, text in pairs]
    for mode in ("transcript", "structured"):
        turns, _, _ = decoded(vary.simulate_body(TEMPLATE, mode, history, NEW))
        assert turns == [t.key() for t in history] + [(USER, NEW)]


def test_one_history_turn_holding_a_flattened_transcript_is_opened_and_flagged():
    flat = "User: I need to classify cotton t-shirts. Agent: Which country? User: Vietnam."
    body = {"simulation_specification": {"simulated_user_config": {},
                                         "partial_conversation_history": [
                                             {"role": "user", "message": flat, "time_in_call_secs": 0},
                                             {"role": "user", "message": NEW, "time_in_call_secs": 1}]}}
    turns, fmt, _ = decoded(body)
    assert fmt == FORMAT_FLAT and [r for r, _ in turns] == [USER, AGENT, USER, USER]
    ex = Exchange("f1", "POST", "http://x/v1/convai/agents/a/simulate-conversation",
                  "/v1/convai/agents/a/simulate-conversation", {}, {}, json.dumps(body).encode(), 0.0)
    [call] = decode_simulate(ex, "a", False, "x-session-id", "").calls
    [finding] = context_format(Judged(SessionState("s", "client", "http"), Settings(), call=call))
    assert finding.rule == "context-format" and "boundaries are lost" in finding.message
    # a message that merely mentions a speaker, or JSON that is no history, stays one turn
    for text in ("User: hello", '{"order": 12}', "{not json"):
        body["simulation_specification"]["partial_conversation_history"][0]["message"] = text
        assert decoded(body)[0][0] == (USER, text)

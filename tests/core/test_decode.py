"""Tests for addons/core/decode.py: simulate and WebSocket decoding, context normalising."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sessiontap.core.decode import (
    FORMAT_FLAT,
    FORMAT_STRUCTURED,
    FORMAT_SUMMARY,
    FORMAT_TRANSCRIPT,
    FORMAT_TURNS,
    HISTORY_FIELD,
    decode_exchange,
    decode_websocket,
    normalize_context,
)
from sessiontap.core.model import AGENT, CONTEXT, USER, Exchange, Turn, WsMessage
from sessiontap.core.protocol import json_objects

PATH = "/v1/convai/agents/agent_x/simulate-conversation"


def simulate(body: object, response: object | None = None, status: int = 200, headers=None) -> Exchange:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Exchange(
        flow_id="f1", method="POST", url="http://h" + PATH, path=PATH, query={},
        request_headers=headers or {"x-session-id": "s-1"}, request_body=raw, started=1.0,
        status=status, response_body=json.dumps(response).encode() if response is not None else None, ended=2.0,
    )


def test_simulate_call_reads_history_reply_and_ignored_context():
    body = {
        "simulation_specification": {
            "simulated_user_config": {"first_message": "ignored when history ends with user"},
            "partial_conversation_history": [
                {"role": "user", "message": "I need to classify shirts", "time_in_call_secs": 0},
                {"role": "agent", "message": "Which origin?", "time_in_call_secs": 1},
                {"role": "user", "message": "Vietnam", "time_in_call_secs": 2},
            ],
        },
        "conversation_context": "User: a Agent: b",
    }
    resp = {"simulated_conversation": [{"role": "agent", "message": "Shirts from Vietnam", "time_in_call_secs": 3}]}
    call = decode_exchange(simulate(body, resp)).calls[0]
    assert call.agent_id == "agent_x"
    assert call.declared_session == "s-1"
    assert [t.role for t in call.context] == [USER, AGENT, USER]
    assert call.user_text == "Vietnam"
    assert call.reply_text == "Shirts from Vietnam"
    assert call.context_field == HISTORY_FIELD
    assert call.extra_context["conversation_context"] == [Turn(USER, "a"), Turn(AGENT, "b")]
    assert call.context_formats["conversation_context"] == FORMAT_FLAT
    assert call.opening is None


def test_empty_history_reply_is_an_opening_and_user_text_from_first_message():
    body = {"simulation_specification": {"simulated_user_config": {"first_message": "hi"},
                                         "partial_conversation_history": []}}
    resp = {"simulated_conversation": [{"role": "agent", "message": "Hello! I'm Durin", "time_in_call_secs": 0}]}
    call = decode_exchange(simulate(body, resp)).calls[0]
    assert call.context == []
    assert call.user_text == "hi"
    assert call.opening == "Hello! I'm Durin"


def test_invalid_json_request_is_a_note_and_still_a_call():
    found = decode_exchange(simulate(b"{not json", None, status=422))
    assert len(found.calls) == 1
    assert found.notes[0].kind == "request-body"


def test_stream_body_ndjson_and_sse_both_decode():
    lines = b'{"simulated_conversation":[{"role":"agent","message":"A","time_in_call_secs":0}]}\n{"analysis":{}}\n'
    assert [o for o in json_objects(lines) if "analysis" in o] == [{"analysis": {}}]
    sse = b'data: {"simulated_conversation":[{"role":"agent","message":"B","time_in_call_secs":0}]}\n\n'
    ex = simulate({"simulation_specification": {}}, None)
    ex.path = ex.path + "/stream"
    ex.response_body = sse
    call = decode_exchange(ex).calls[0]
    assert call.endpoint == "simulate-stream"
    assert call.reply_text == "B"


def test_get_agent_yields_first_message():
    ex = Exchange(flow_id="g", method="GET", url="", path="/v1/convai/agents/ag1", query={}, request_headers={},
                  request_body=b"", started=0, status=200,
                  response_body=json.dumps({"conversation_config": {"agent": {"first_message": "Hi!"}}}).encode())
    assert decode_exchange(ex).first_messages == {"ag1": "Hi!"}


def test_other_endpoints_yield_nothing():
    ex = Exchange(flow_id="g", method="GET", url="", path="/v1/voices", query={}, request_headers={},
                  request_body=b"", started=0, status=200, response_body=b"[]")
    found = decode_exchange(ex)
    assert found.calls == [] and found.notes == []


def ws(from_client: bool, obj: object, t: float) -> WsMessage:
    text = json.dumps(obj)
    return WsMessage(from_client, t, text, len(text))


def test_websocket_turns_become_calls_with_transcript_context():
    msgs = [
        ws(True, {"type": "conversation_initiation_client_data", "user_id": "u1"}, 1),
        ws(False, {"type": "conversation_initiation_metadata",
                   "conversation_initiation_metadata_event": {"conversation_id": "conv_1"}}, 2),
        ws(False, {"type": "agent_response", "agent_response_event": {"agent_response": "Hello!"}}, 3),
        ws(True, {"type": "user_message", "text": "shirts"}, 4),
        ws(False, {"type": "agent_chat_response_part", "text_response_part": {"text": "x", "type": "delta"}}, 5),
        ws(False, {"type": "agent_response", "agent_response_event": {"agent_response": "Shirts noted"}}, 6),
        ws(True, {"type": "contextual_update", "text": "officer is J"}, 7),
        ws(True, {"user_audio_chunk": "AAAA"}, 7.5),
        ws(True, {"type": "user_message", "text": "from Vietnam"}, 8),
        ws(False, {"type": "agent_response", "agent_response_event": {"agent_response": "Vietnam noted"}}, 9),
        WsMessage(True, 10, None, 12),
        WsMessage(True, 10, "{oops", 5),
        ws(False, {"type": "brand_new_event"}, 11),
    ]
    found = decode_websocket("w1", "ws://h/v1/convai/conversation?agent_id=ag", {"x-session-id": "S"}, 0.5,
                             msgs, 1000, 12)
    a, b = found.calls
    assert (a.user_text, a.reply_text, a.opening) == ("shirts", "Shirts noted", "Hello!")
    assert a.context == [Turn(AGENT, "Hello!", 2.5)]
    assert a.conversation_id == "conv_1" and a.user_id == "u1" and a.declared_session == "S"
    assert a.agent_id == "ag"
    assert b.opening is None
    assert [t.role for t in b.context] == [AGENT, USER, AGENT, CONTEXT]
    assert {n.kind for n in found.notes} == {"binary-frame", "invalid-json", "unknown-message-type"}


def test_websocket_unanswered_user_message_is_closed_as_a_call_without_reply():
    msgs = [ws(True, {"type": "conversation_initiation_client_data"}, 1), ws(True, {"type": "user_message",
                                                                                  "text": "hi"}, 2)]
    found = decode_websocket("w", "ws://h/v1/convai/conversation", {}, 0, msgs, 1011, 3)
    assert found.calls[0].reply == [] and found.calls[0].close_code == 1011


def test_normalize_context_formats():
    assert normalize_context("User: hi\nAgent: hello")[1] == FORMAT_TRANSCRIPT
    assert normalize_context("User: hi Agent: hello")[1] == FORMAT_FLAT
    turns, fmt = normalize_context({"conversation_history": [{"role": "user", "content": "hi"}]})
    assert (turns, fmt) == ([Turn(USER, "hi")], FORMAT_STRUCTURED)
    assert normalize_context([{"role": "assistant", "message": "yo"}]) == ([Turn(AGENT, "yo")], FORMAT_TURNS)
    turns, fmt = normalize_context("Previous context: user asked about shirts")
    assert fmt == FORMAT_SUMMARY and turns[0].role == CONTEXT


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@given(json_values)
def test_normalize_context_never_raises_on_any_json(value):
    turns, fmt = normalize_context(value)
    assert isinstance(turns, list) and isinstance(fmt, str)


@given(st.lists(st.tuples(st.sampled_from(["User", "Agent"]), st.text(alphabet="abc xyz.,!", min_size=1)),
                min_size=1, max_size=8))
def test_transcript_round_trip(pairs):
    text = "\n".join(f"{r}: {t}" for r, t in pairs)
    turns, _ = normalize_context(text)
    assert [(t.role, t.text) for t in turns] == [(r.lower(), t.strip()) for r, t in pairs]


def test_a_sockets_calls_carry_lineage_keys_and_sizes_equal_to_counting_their_turns_again():
    from sessiontap.core.sessions import prefix_hashes

    def frame(from_client: bool, obj: dict) -> WsMessage:
        return WsMessage(from_client, 0.0, json.dumps(obj), 0)

    messages = [frame(False, {"type": "agent_response", "agent_response_event": {"agent_response": "Hello"}})]
    for i in range(4):
        messages.append(frame(True, {"type": "user_message", "text": f"question {i}"}))
        if i == 1:
            messages.append(frame(True, {"type": "contextual_update", "text": "the user scrolled"}))
        messages.append(frame(False, {"type": "agent_response", "agent_response_event": {"agent_response": f"a{i}"}}))
        if i == 2:  # the last agent turn is corrected in place
            messages.append(frame(False, {"type": "agent_response_correction", "agent_response_correction_event": {
                "original_agent_response": f"a{i}", "corrected_agent_response": f"corrected {i}"}}))
    calls = decode_websocket("f1", "wss://h/v1/convai/conversation?agent_id=a1", {}, 0.0, messages, 1000, 1.0).calls
    assert len(calls) == 4
    for call in calls:
        seed = (call.protocol, call.agent_id)
        assert call.context_key == prefix_hashes(call.context, seed)[-1]
        assert call.carried_key() == prefix_hashes(call.carried_state(), seed)[-1]
        assert "context_key" not in call.to_json()  # a per-process hash is never written
        assert call.context_chars == sum(len(t.text) for t in call.context)  # kept as it went, corrections too
        assert "context_chars" not in call.to_json()
    assert any(t.text == "corrected 2" for t in calls[3].context)


_frames = st.sampled_from(["user", "agent", "correction", "update", "audio"])


@given(st.lists(st.tuples(_frames, st.text(alphabet="ab c", min_size=1, max_size=4)), max_size=40))
def test_a_sockets_contexts_share_its_transcript_yet_each_stays_what_it_was_when_its_call_began(script):
    """Calls refer to one transcript by length (no copy per call); later turns and corrections never leak in."""
    from sessiontap.core.decode import WsDecoder
    from sessiontap.core.model import TurnsSoFar

    make = {
        "user": lambda t: (True, {"type": "user_message", "text": t}),
        "agent": lambda t: (False, {"type": "agent_response", "agent_response_event": {"agent_response": t}}),
        "correction": lambda t: (False, {"type": "agent_response_correction", "agent_response_correction_event": {
            "original_agent_response": "?", "corrected_agent_response": t}}),
        "update": lambda t: (True, {"type": "contextual_update", "text": t}),
        "audio": lambda t: (True, {"user_audio_chunk": "AAAA"}),
    }
    dec = WsDecoder("f1", "wss://h/v1/convai/conversation?agent_id=a1", {}, 0.0)
    calls, seen = [], {}
    for kind, text in script:
        calls += dec.feed(ws(*make[kind](text), 1.0)).calls
        if dec.pending is not None and dec.pending.id not in seen:
            seen[dec.pending.id] = [(t.role, t.text) for t in dec.pending.context]  # a copy, as it was then
    calls += dec.close(1000, 2.0).calls
    assert [c.id for c in calls] == list(seen)
    for call in calls:
        assert isinstance(call.context, TurnsSoFar)
        assert [(t.role, t.text) for t in call.context] == seen[call.id]
        assert call.context == list(call.context) and list(call.context) == call.context  # equal as lists are
        assert call.context[:] == list(call.context) and len(call.context[-2:]) == min(2, len(call.context))
    for a, b in zip(calls, calls[1:], strict=False):
        assert b.context.starts(a.context) and len(b.context) > len(a.context)


@given(st.integers(0, 12), st.integers(0, 12), st.one_of(st.none(), st.integers(-15, 15)),
       st.one_of(st.none(), st.integers(-15, 15)), st.one_of(st.none(), st.sampled_from([1, 2, 3, -1, -2, -3])))
def test_a_prefix_of_a_transcript_indexes_and_slices_as_the_list_of_its_turns(length, n, start, stop, step):
    from sessiontap.core.model import TurnsSoFar

    log = [Turn(USER, str(k)) for k in range(length)]
    n = min(n, length)
    view, copy = TurnsSoFar(log, n), log[:n]
    assert view[start:stop:step] == copy[start:stop:step]
    assert list(view) == copy and len(view) == n and list(reversed(view)) == copy[::-1]
    for k in range(-n - 1, n + 1):
        if -n <= k < n:
            assert view[k] is copy[k]
        else:
            with pytest.raises(IndexError):
                view[k]


def test_a_long_sockets_calls_hold_memory_linear_in_its_turns():
    """3,000 turns: calls holding a copy each came to about 50 MB; sharing the transcript, a few MB."""
    import tracemalloc

    tracemalloc.start()
    try:
        messages = []
        for i in range(3000):
            messages.append(ws(True, {"type": "user_message", "text": f"question {i} about cotton shirts"}, i))
            messages.append(ws(False, {"type": "agent_response",
                                       "agent_response_event": {"agent_response": f"answer {i}: noted"}}, i + 0.5))
        before = tracemalloc.get_traced_memory()[0]
        calls = decode_websocket("f1", "wss://h/v1/convai/conversation", {}, 0.0, messages, 1000, 1.0).calls
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(calls) == 3000 and len(calls[-1].context) == 5998
    assert held < 15_000_000, f"{held / 1e6:.1f} MB held by 3,000 calls"


def test_a_calls_json_is_what_asdict_gives_without_the_per_process_fields():
    from dataclasses import asdict

    from sessiontap.core.model import Call, Turn

    call = Call("c1", "f1", "http", "simulate", "a1", 1.0, 2.0, "hi", reply=[Turn("agent", "hello", 3.0)],
                context=[Turn("user", "x"), Turn("agent", "y", 1.5)], extra_context={"conversation_context": [
                    Turn("context", "summary")]}, context_formats={"h": "turns"}, code=[("a.py", 3, "send")],
                context_key=42, context_chars=2, prefix_keys=[7, 42])
    expected = asdict(call)
    del expected["context_key"], expected["context_chars"], expected["prefix_keys"]
    assert call.to_json() == expected
    tail = call.to_json(context=call.context[-1:], extra_context={})
    assert tail["context"] == expected["context"][-1:] and tail["extra_context"] == {}
    assert Call.from_json(call.to_json()) == call


@given(st.lists(st.sampled_from(["User:", "Agent: ", "AI:", "user :", "hello", "10:30", "\n", " ", "x: y", ":"]),
                max_size=8).map("".join))
@settings(max_examples=400, derandomize=True, deadline=None)
def test_the_colon_count_skips_only_texts_that_hold_no_embedded_transcript(text):
    from sessiontap.core.decode import FORMAT_FLAT, FORMAT_TRANSCRIPT, embedded_context, turns_from_transcript

    turns, fmt = turns_from_transcript(text)
    whole = (turns, fmt) if fmt in (FORMAT_TRANSCRIPT, FORMAT_FLAT) and len(turns) > 1 else ([], "")
    assert embedded_context(text) == whole or text.strip().startswith("{")

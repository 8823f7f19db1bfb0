"""Tests for addons/core/protocol.py: every body framing and reply shape the API may use reads the same."""

from __future__ import annotations

import json

import pytest

from sessiontap.core.model import AGENT, USER, Turn
from sessiontap.core.protocol import (
    agent_response_text,
    conversation_id,
    json_objects,
    new_turns,
    simulated_turns,
    user_message_text,
)

HISTORY = [{"role": "user", "message": "I need to classify cotton t-shirts", "time_in_call_secs": 0},
           {"role": "agent", "message": "Which country are they made in?", "time_in_call_secs": 2},
           {"role": "user", "message": "Vietnam", "time_in_call_secs": 5}]
NEW = [{"role": "agent", "message": "Noted: Vietnam. What material?", "time_in_call_secs": 7}]


def turns(items: list[dict]) -> list[Turn]:
    return [Turn(USER if t["role"] == "user" else AGENT, t["message"], t["time_in_call_secs"]) for t in items]


def sse(events: list[object], split_first: bool = False) -> bytes:
    out = [": ping", ""]
    for i, ev in enumerate(events):
        data = json.dumps(ev, indent=1) if split_first and i == 0 else json.dumps(ev)  # one event over many lines
        lines = [f"data: {line}" for line in data.splitlines()]
        out += ["event: message", f"id: {i}", *lines, ""]
    out += ["data: [DONE]", ""]
    return "\n".join(out).encode()


@pytest.mark.parametrize("body", [
    json.dumps({"simulated_conversation": NEW, "analysis": {}}).encode(),
    b"\n".join(json.dumps({"simulated_conversation": [t]}).encode() for t in NEW) + b'\n{"analysis": {}}\n',
    sse([{"simulated_conversation": [t]} for t in NEW] + [{"analysis": {}}]),
    sse([{"simulated_conversation": [t]} for t in NEW], split_first=True),
    "\r\n".join(sse([{"simulated_conversation": NEW}]).decode().split("\n")).encode(),
], ids=["batch", "ndjson", "sse", "sse-multiline-data", "sse-crlf"])
def test_every_framing_gives_the_same_turns(body: bytes):
    assert simulated_turns(body) == turns(NEW)


@pytest.mark.parametrize("echo", [False, True], ids=["new-turns-only", "history-echoed"])
def test_the_reply_is_the_same_whether_or_not_the_history_is_echoed(echo: bool):
    returned = turns((HISTORY if echo else []) + NEW)
    assert new_turns(turns(HISTORY), returned) == turns(NEW)


def test_an_echo_that_differs_keeps_what_differs_and_no_history_keeps_everything():
    changed = turns(HISTORY[:1]) + [Turn(AGENT, "something else")] + turns(NEW)
    assert new_turns(turns(HISTORY), changed) == changed[1:]
    assert new_turns([], turns(NEW)) == turns(NEW)


def test_a_broken_part_is_an_error_not_silence():
    with pytest.raises(ValueError):
        list(json_objects(b"data: {not json\n\n"))
    with pytest.raises(ValueError):
        list(json_objects(b'{"a": 1}\n{oops\n'))


def test_socket_frames_are_read_by_type():
    assert user_message_text({"type": "user_message", "text": "hi"}) == "hi"
    assert user_message_text({"type": "multimodal_message", "text": {"text": "look"}}) == "look"
    assert user_message_text({"type": "user_activity"}) is None
    assert agent_response_text({"type": "agent_response", "agent_response_event": {"agent_response": "ok"}}) == "ok"
    assert agent_response_text({"type": "ping"}) is None
    assert conversation_id({"type": "conversation_initiation_metadata",
                            "conversation_initiation_metadata_event": {"conversation_id": "conv_1"}}) == "conv_1"

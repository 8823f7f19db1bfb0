"""Context variants for client replay: one conversation's history rewritten in each format phase 5 compares.

A variant decides two things for every replayed call: what context travels with it, and
(on the WebSocket) whether the call shares the session's socket.

| mode | simulate-conversation | WebSocket |
|---|---|---|
| ``full`` | every earlier turn in ``partial_conversation_history`` | one socket for the whole session |
| ``transcript`` | one turn: ``"User: …\\nAgent: …"`` | a socket per message, the transcript as an update |
| ``structured`` | one turn: ``{"conversation_history": [{role, content}]}`` | as transcript, that JSON as the update |
| ``summary`` | one turn: ``"Previous context: …"`` | as transcript, the summary as the update |
| ``none`` | no earlier turn | a socket per message, nothing else |

In every mode the user's new message is the last turn of the history it is sent with (on
simulate) or a ``user_message`` (on the socket); fields a client may have used for context
elsewhere (``conversation_context`` …) are dropped, so the mode is the only carrier.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from typing import Any

from sessiontap.core.decode import EXTRA_CONTEXT_FIELDS
from sessiontap.core.model import AGENT, USER, Turn

AS_RECORDED = "as-recorded"  # no variant: every request re-sent as it was recorded
FULL, TRANSCRIPT, STRUCTURED, SUMMARY, NONE = "full", "transcript", "structured", "summary", "none"
MODES = (FULL, TRANSCRIPT, STRUCTURED, SUMMARY, NONE)
MEANINGS = {  # what each variant sends, one line each (the behaviour report's legend)
    AS_RECORDED: "every recorded request sent again exactly as it was recorded.",
    FULL: "every earlier turn in partial_conversation_history; on the WebSocket, one socket for the whole session.",
    TRANSCRIPT: 'the history flattened into one "User: ... / Agent: ..." turn; on the WebSocket, a new socket '
                "per message with that transcript as a contextual update.",
    STRUCTURED: 'the history as one turn of {"conversation_history": [{role, content}]} JSON; on the WebSocket, '
                "a new socket per message with that JSON as a contextual update.",
    SUMMARY: 'one "Previous context: ..." turn quoting the user\'s messages and the last agent reply; on the '
             "WebSocket, a new socket per message with that summary as a contextual update.",
    NONE: "no earlier turn at all; on the WebSocket, a new socket per message and nothing else.",
}
SUMMARY_PREFIX = "Previous context: "
SUMMARY_QUOTE_CHARS = 160  # each message quoted in a summary is cut to this many characters
_LABELS = {USER: "User", AGENT: "Agent"}


def parse_modes(text: str) -> list[str]:
    """The modes of a comma-separated list (``all`` means every mode), in the order given; ValueError if unknown."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError("give at least one context mode")
    out: list[str] = []
    for name in names:
        for mode in MODES if name == "all" else (name,):
            if mode not in MODES:
                raise ValueError(f"unknown context mode {name!r} (known: {', '.join(MODES)}, all)")
            if mode not in out:
                out.append(mode)
    return out


def shares_socket(mode: str) -> bool:
    """True when the mode sends every message of a session on one WebSocket (the socket is the context)."""
    return mode in (FULL, AS_RECORDED)


def _quote(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= SUMMARY_QUOTE_CHARS else flat[: SUMMARY_QUOTE_CHARS - 1] + "…"


def transcript(history: Sequence[Turn]) -> str:
    """The history as one ``User: …\\nAgent: …`` string, a turn a line (plan phase 5.1, format 1)."""
    return "\n".join(f"{_LABELS.get(t.role, t.role.title())}: {' '.join(t.text.split())}" for t in history)


def structured(history: Sequence[Turn]) -> str:
    """The history as ``{"conversation_history": [{role, content}]}`` JSON text (format 2)."""
    return json.dumps({"conversation_history": [{"role": t.role, "content": t.text} for t in history]},
                      ensure_ascii=False)


def summary(history: Sequence[Turn]) -> str:
    """A short, deterministic summary of the history (format 3): every user message, the last agent reply."""
    said = [f'"{_quote(t.text)}"' for t in history if t.role == USER]
    replies = [t.text for t in history if t.role == AGENT]
    parts = [f"the user said {'; '.join(said)}" if said else "the user has said nothing yet"]
    if replies:
        parts.append(f'the agent last replied "{_quote(replies[-1])}"')
    return SUMMARY_PREFIX + ", and ".join(parts) + "."


def context_text(mode: str, history: Sequence[Turn]) -> str | None:
    """The context of one call as text in a flattened mode, or None (full and none carry no text)."""
    if not history or mode in (FULL, NONE, AS_RECORDED):
        return None
    return {TRANSCRIPT: transcript, STRUCTURED: structured, SUMMARY: summary}[mode](history)


def history_turns(mode: str, history: Sequence[Turn], user_text: str) -> list[dict[str, Any]]:
    """``partial_conversation_history`` for one simulate call: the mode's context, then the new user message."""
    clock = 0
    out: list[dict[str, Any]] = []

    def add(role: str, message: str) -> None:
        nonlocal clock
        out.append({"role": role, "message": message, "time_in_call_secs": clock})
        clock += 1

    if mode == FULL:
        for t in history:
            add(t.role, t.text)
    else:
        text = context_text(mode, history)
        if text is not None:
            add(USER, text)
    add(USER, user_text)
    return out


def simulate_body(template: Any, mode: str, history: Sequence[Turn], user_text: str) -> dict[str, Any]:
    """A recorded simulate-conversation body with its context rewritten in ``mode``; ValueError if not an object.

    The recorded ``simulated_user_config.first_message`` is dropped when it carried the user's
    message (the faulty client's way of sending it): the message now travels as a turn.
    """
    if not isinstance(template, dict):
        raise ValueError("the recorded request body is not a JSON object")
    body = copy.deepcopy(template)
    for name in EXTRA_CONTEXT_FIELDS:
        body.pop(name, None)
    spec = body.get("simulation_specification")
    if not isinstance(spec, dict):
        spec = body["simulation_specification"] = {}
    config = spec.get("simulated_user_config")
    if not isinstance(config, dict):
        config = spec["simulated_user_config"] = {}
    if config.get("first_message") == user_text:
        del config["first_message"]
    spec["partial_conversation_history"] = history_turns(mode, history, user_text)
    return body


def socket_frames(mode: str, history: Sequence[Turn], user_text: str,
                  updates: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The client frames of one WebSocket call after the socket's start: context update(s), then the message.

    ``updates`` are the contextual updates the client sent before this message when recorded;
    they are sent again in every mode but ``none``, which sends the message and nothing else.
    """
    frames: list[dict[str, Any]] = [{"type": "contextual_update", "text": u} for u in updates if mode != NONE]
    text = None if shares_socket(mode) else context_text(mode, history)
    if text is not None:
        frames.append({"type": "contextual_update", "text": text})
    frames.append({"type": "user_message", "text": user_text})
    return frames

"""The ElevenLabs wire formats, read in one place: endpoints, bodies (JSON, NDJSON, SSE), turns and socket frames.

Everything that reads an ElevenLabs payload (decoding, replay matching, the replay server and
client, audio, the report) asks this module, so a new shape the API may take (history echoed
or not, NDJSON or SSE framing, a new message type) is taught here once. See
shared/elevenlabs-protocol.md for the formats themselves. Pure: text and bytes in, values out.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator
from typing import Any

from sessiontap.core.model import AGENT, USER, Turn

SIMULATE_RE = re.compile(r"/v1/convai/agents/(?P<agent>[^/]+)/simulate-conversation(?P<stream>/stream)?/?$")
AGENT_RE = re.compile(r"/v1/convai/agents/(?P<agent>[^/]+)/?$")
WS_PATH_RE = re.compile(r"/v1/convai/conversation/?$")
SIGNED_URL_RE = re.compile(r"/v1/convai/conversation/get[-_]signed[-_]url/?$")

_ROLE_WORDS = {
    "user": USER,
    "human": USER,
    "customer": USER,
    "officer": USER,
    "agent": AGENT,
    "assistant": AGENT,
    "ai": AGENT,
    "bot": AGENT,
}
def normalize_role(value: object) -> str | None:
    """The canonical role (user or agent) for a role label, or None when unknown."""
    if not isinstance(value, str):
        return None
    return _ROLE_WORDS.get(value.strip().lower())


def loads(text: str | bytes) -> Any:
    """``json.loads``, with JSON nested too deeply for Python a ValueError like any other bad JSON."""
    try:
        return json.loads(text)
    except RecursionError as e:
        raise ValueError("JSON nested too deeply to read") from e


def seconds(value: object) -> float | None:
    """A number of seconds from JSON, or None when it is not a finite number (a bool, a 400-digit integer, inf)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def turn_from_obj(obj: object) -> Turn | None:
    if not isinstance(obj, dict):
        return None
    role = normalize_role(obj.get("role"))
    text = next(
        (obj[k] for k in ("message", "content", "text") if isinstance(obj.get(k), str)),
        None,
    )
    if role is None or text is None:
        return None
    time = obj.get("time_in_call_secs")
    return Turn(role, text, seconds(time))


def turns_from_list(items: Iterable[object]) -> list[Turn]:
    """The turns of a list of {role, message|content|text} objects, skipping what isn't one."""
    return [t for t in (turn_from_obj(i) for i in items) if t is not None]


def header(headers: dict[str, str], name: str) -> str | None:
    """A header's value by case-insensitive name, or None."""
    lname = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lname), None)


def json_body(raw: bytes | None) -> Any:
    if not raw:
        raise ValueError("empty body")
    return loads(raw.decode("utf-8"))


def _values(text: str) -> Iterator[Any]:
    """The JSON values of one text that holds one or more of them, side by side or comma-separated."""
    decoder = json.JSONDecoder()
    pos = 0
    while pos < len(text):
        while pos < len(text) and text[pos] in " ,\t\r\n":
            pos += 1
        if pos < len(text):
            try:
                value, pos = decoder.raw_decode(text, pos)
            except RecursionError as e:
                raise ValueError("JSON nested too deeply to read") from e
            yield value


def is_sse(text: str) -> bool:
    """True when a body is framed as server-sent events (``data:``, ``event:``, ``id:`` or comment lines)."""
    return any(line.startswith(("data:", "event:", "id:", ":", "retry:")) for line in text.splitlines()[:50])


def sse_data(text: str) -> Iterator[str]:
    """The data of each server-sent event: its ``data:`` lines joined by newlines; comments, ids, names skipped."""
    data: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)


def json_objects(raw: bytes) -> Iterator[Any]:
    """Every JSON value in a body: one JSON document, NDJSON, concatenated JSON, or SSE (``[DONE]`` skipped).

    Raises ValueError (or UnicodeDecodeError) when a part is not JSON.
    """
    text = raw.decode("utf-8")
    try:
        whole = loads(text)
    except ValueError:
        pass
    else:
        yield whole
        return
    if is_sse(text):
        for data in sse_data(text):
            if data.strip() != "[DONE]":
                yield from _values(data)
        return
    for line in text.splitlines():
        yield from _values(line)


def simulated_turns(raw: bytes) -> list[Turn]:
    """The turns of a simulate-conversation response body (batch JSON, NDJSON or SSE), in order."""
    turns: list[Turn] = []
    for obj in json_objects(raw):
        if isinstance(obj, dict) and isinstance(obj.get("simulated_conversation"), list):
            turns.extend(turns_from_list(obj["simulated_conversation"]))
        elif isinstance(obj, list):
            turns.extend(turns_from_list(obj))
        elif isinstance(obj, dict) and "role" in obj:
            turns.extend(turns_from_list([obj]))
    return turns


def new_turns(sent: list[Turn], returned: list[Turn]) -> list[Turn]:
    """The turns a simulate call produced: ``returned`` after its longest prefix equal to the history ``sent``.

    Whether the API echoes the history it was given is not documented; with this, an echoed
    history and a reply of new turns only give the same answer.
    """
    k = 0
    while k < min(len(sent), len(returned)) and sent[k].key() == returned[k].key():
        k += 1
    return returned[k:]


def get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def is_conversational(path: str) -> bool:
    """True for the endpoints that carry conversation turns (simulate, agent WebSocket)."""
    return bool(SIMULATE_RE.search(path) or WS_PATH_RE.search(path))


def is_websocket_path(path: str) -> bool:
    """True for the agent conversation WebSocket path."""
    return bool(WS_PATH_RE.search(path))


# Client frames the protocol defines: anything else is noted as unknown.
KNOWN_CLIENT_TYPES = {
    "conversation_initiation_client_data",
    "user_message",
    "contextual_update",
    "user_activity",
    "pong",
    "client_tool_result",
    "multimodal_message",
    "feedback",
    "mcp_tool_approval_result",
    "enclave_setup_config",
}
KNOWN_SERVER_TYPES = {
    "conversation_initiation_metadata",
    "user_transcript",
    "tentative_user_transcript",
    "agent_response",
    "agent_response_correction",
    "agent_chat_response_part",
    "agent_reasoning_response_part",
    "audio",
    "interruption",
    "ping",
    "client_tool_call",
    "vad_score",
    "internal_turn_probability",
    "context_usage",
    "agent_tool_request",
    "agent_tool_response",
    "agent_tool_response_full_payload",
    "mcp_tool_call",
    "mcp_connection_status",
    "asr_initiation_metadata",
    "agent_typing",
    "guardrail_triggered",
    "rich_content",
    "external_agent_connected",
    "external_agent_disconnected",
    "error",
    "agent_response_metadata",
    "agent_response_complete",
    "dtmf_request",
    "client_error",
}


def is_audio_frame(obj: Any) -> bool:
    """True for a user audio chunk or an agent audio event (summarised, not kept)."""
    return isinstance(obj, dict) and ("user_audio_chunk" in obj or obj.get("type") == "audio")




def frame_type(obj: Any) -> str | None:
    """The ``type`` of a socket frame, or None when it has none."""
    kind = obj.get("type") if isinstance(obj, dict) else None
    return kind if isinstance(kind, str) else None


def parse_frame(text: str | None) -> Any:
    """A text frame's JSON value, or None when it is binary or not JSON."""
    if text is None:
        return None
    try:
        return loads(text)
    except ValueError:
        return None


def user_message_text(obj: Any) -> str | None:
    """The text of a client ``user_message`` (or ``multimodal_message``) frame, or None for other frames."""
    if frame_type(obj) not in ("user_message", "multimodal_message"):
        return None
    text = obj.get("text")
    if isinstance(text, dict):
        text = text.get("text")
    return text if isinstance(text, str) else ""


def agent_response_text(obj: Any) -> str | None:
    """The agent's words in an ``agent_response`` frame, or None for other frames."""
    if frame_type(obj) != "agent_response":
        return None
    text = get(obj, "agent_response_event.agent_response")
    return text if isinstance(text, str) else ""


def corrected_agent_text(obj: Any) -> str | None:
    """The corrected words of an ``agent_response_correction`` frame, or None."""
    text = get(obj, "agent_response_correction_event.corrected_agent_response")
    return text if frame_type(obj) == "agent_response_correction" and isinstance(text, str) else None


def identifier(value: object) -> str | None:
    """An id from JSON or a header as text any writer can encode, or None when it is no id (empty, a bool, a list).

    A lone surrogate (a JSON ``\\ud800``, an undecodable header byte) becomes its escape: ids
    end up in flow metadata and file names, which must encode as UTF-8.
    """
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        return None
    try:
        text = str(value)
    except ValueError:  # an integer past Python's 4,300-digit limit
        return None
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def conversation_id(obj: Any) -> str | None:
    """The conversation id a ``conversation_initiation_metadata`` frame announces, or None."""
    cid = get(obj, "conversation_initiation_metadata_event.conversation_id")
    return identifier(cid) if frame_type(obj) == "conversation_initiation_metadata" else None

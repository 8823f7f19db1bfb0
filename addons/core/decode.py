"""Decoding: recorded HTTP exchanges and WebSocket messages into calls, turns and notes.

Endpoints understood (see shared/elevenlabs-protocol.md):

- ``POST /v1/convai/agents/{agent_id}/simulate-conversation[/stream]``: one call each.
  The context the endpoint reads is ``simulation_specification.partial_conversation_history``;
  any other context-like field (a top-level ``conversation_context`` for instance) is kept in
  ``Call.extra_context``: it travelled, but the endpoint ignores it.
- The agent WebSocket ``/v1/convai/conversation``: one call per user turn (user message up
  to the agent's reply); the context is the socket's own transcript so far.
- ``GET /v1/convai/agents/{agent_id}``: the agent's configured ``first_message``.

Everything here is pure: bytes and records in, records out.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from sessiontap.core.model import AGENT, CONTEXT, HTTP, USER, WEBSOCKET, Call, Exchange, Note, Turn, WsMessage
from sessiontap.core.settings import DEFAULTS

SIMULATE_RE = re.compile(r"/v1/convai/agents/(?P<agent>[^/]+)/simulate-conversation(?P<stream>/stream)?/?$")
AGENT_RE = re.compile(r"/v1/convai/agents/(?P<agent>[^/]+)/?$")
WS_PATH_RE = re.compile(r"/v1/convai/conversation/?$")
HISTORY_FIELD = "simulation_specification.partial_conversation_history"
TRANSCRIPT_FIELD = "websocket transcript"

# Fields a client may (wrongly) use to carry context; the simulate endpoint ignores them all.
EXTRA_CONTEXT_FIELDS = (
    "conversation_context",
    "context",
    "conversation_history",
    "history",
    "messages",
    "chat_history",
)

# Formats a context value can take (phase 5.1 of the investigation plan).
FORMAT_TURNS = "turns"  # a list of {role, message|content|text}
FORMAT_TRANSCRIPT = "transcript"  # "User: …\nAgent: …" with one turn a line
FORMAT_FLAT = "flat-transcript"  # "User: … Agent: …" with turn boundaries lost
FORMAT_STRUCTURED = "structured"  # {"conversation_history": [...]} and similar dicts
FORMAT_SUMMARY = "summary"  # free text with no turns in it
FORMAT_EMPTY = "empty"

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
_SPEAKER_RE = re.compile(r"(?:^|(?<=\s))(User|Human|Customer|Agent|Assistant|AI|Bot)\s*:\s*", re.I)


def normalize_role(value: object) -> str | None:
    """The canonical role (user or agent) for a role label, or None when unknown."""
    if not isinstance(value, str):
        return None
    return _ROLE_WORDS.get(value.strip().lower())


def _turn_from_obj(obj: object) -> Turn | None:
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
    return Turn(role, text, float(time) if isinstance(time, int | float) else None)


def turns_from_list(items: Iterable[object]) -> list[Turn]:
    """The turns of a list of {role, message|content|text} objects, skipping what isn't one."""
    return [t for t in (_turn_from_obj(i) for i in items) if t is not None]


def turns_from_transcript(text: str) -> tuple[list[Turn], str]:
    """Split a "User: … Agent: …" string into turns; return them with the format found."""
    marks = list(_SPEAKER_RE.finditer(text))
    if not marks:
        return ([], FORMAT_EMPTY if not text.strip() else FORMAT_SUMMARY)
    turns = []
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        role = normalize_role(m.group(1)) or USER
        turns.append(Turn(role, text[m.end() : end].strip()))
    one_per_line = all(m.start() == 0 or text[m.start() - 1] == "\n" for m in marks)
    if len(marks) > 1 and not one_per_line:
        return (turns, FORMAT_FLAT)
    return (turns, FORMAT_TRANSCRIPT)


def normalize_context(value: object) -> tuple[list[Turn], str]:
    """Turns and format name for any context value: list, transcript, dict or summary."""
    if value is None or value == "" or value == [] or value == {}:
        return ([], FORMAT_EMPTY)
    if isinstance(value, str):
        turns, fmt = turns_from_transcript(value)
        if fmt == FORMAT_SUMMARY:
            return ([Turn(CONTEXT, value.strip())], FORMAT_SUMMARY)
        return (turns, fmt)
    if isinstance(value, list):
        return (turns_from_list(value), FORMAT_TURNS)
    if isinstance(value, dict):
        for key in ("conversation_history", "history", "messages", "turns", "transcript"):
            if key in value:
                turns, _ = normalize_context(value[key])
                return (turns, FORMAT_STRUCTURED)
        summary = value.get("summary")
        if isinstance(summary, str):
            return ([Turn(CONTEXT, summary)], FORMAT_SUMMARY)
        return ([], FORMAT_STRUCTURED)
    return ([Turn(CONTEXT, str(value))], FORMAT_SUMMARY)


def embedded_context(text: str) -> tuple[list[Turn], str]:
    """The turns of a history turn that itself holds a whole transcript or structured history, or none.

    Clients that flatten their context into one turn (``"User: …\nAgent: …"``, or
    ``{"conversation_history": [...]}`` as text) still hand the agent those turns.
    """
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            obj = json.loads(stripped)
        except ValueError:
            return ([], "")
        turns, fmt = normalize_context(obj) if isinstance(obj, dict) else ([], "")
        return (turns, fmt) if fmt == FORMAT_STRUCTURED and turns else ([], "")
    turns, fmt = turns_from_transcript(text)
    return (turns, fmt) if fmt in (FORMAT_TRANSCRIPT, FORMAT_FLAT) and len(turns) > 1 else ([], "")


def open_embedded(turns: list[Turn]) -> tuple[list[Turn], str]:
    """History turns with each embedded transcript opened into its turns, and the history's format."""
    out: list[Turn] = []
    fmt = FORMAT_TURNS
    for turn in turns:
        inner, inner_fmt = embedded_context(turn.text)
        if inner:
            out += inner
            fmt = inner_fmt
        else:
            out.append(turn)
    return (out, fmt)


@dataclass(slots=True)
class Decoded:
    """What one exchange or socket yielded: calls, notes, and agents' opening lines."""

    calls: list[Call] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    first_messages: dict[str, str] = field(default_factory=dict)


def header(headers: dict[str, str], name: str) -> str | None:
    """A header's value by case-insensitive name, or None."""
    lname = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lname), None)


def _json_body(raw: bytes | None) -> Any:
    if not raw:
        raise ValueError("empty body")
    return json.loads(raw.decode("utf-8"))


def json_objects(raw: bytes) -> Iterator[Any]:
    """Every JSON value in a body that is one JSON document, NDJSON, SSE or concatenated JSON."""
    text = raw.decode("utf-8")
    try:
        yield json.loads(text)
        return
    except json.JSONDecodeError:
        pass
    decoder = json.JSONDecoder()
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("data:"):
            line = line[5:].strip()
        pos = 0
        while pos < len(line):
            value, pos = decoder.raw_decode(line, pos)
            yield value
            while pos < len(line) and line[pos] in " ,\t":
                pos += 1


def simulated_turns(raw: bytes) -> list[Turn]:
    """The turns of a simulate-conversation response body (batch JSON, NDJSON or SSE)."""
    turns: list[Turn] = []
    for obj in json_objects(raw):
        if isinstance(obj, dict) and isinstance(obj.get("simulated_conversation"), list):
            turns.extend(turns_from_list(obj["simulated_conversation"]))
        elif isinstance(obj, list):
            turns.extend(turns_from_list(obj))
        elif isinstance(obj, dict) and "role" in obj:
            turns.extend(turns_from_list([obj]))
    return turns


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def declared_session_id(headers: dict[str, str], body: Any, session_header: str, session_field: str) -> str | None:
    """The session id the client declared, from its header or a dotted body field."""
    value = header(headers, session_header) if session_header else None
    if value:
        return value
    if session_field and isinstance(body, dict):
        found = _get(body, session_field)
        if isinstance(found, str | int) and str(found):
            return str(found)
    return None


def request_digest(body: bytes) -> str:
    """A short digest of a request body: equal digests mean byte-identical requests."""
    return hashlib.sha256(body).hexdigest()[:16]


def decode_simulate(ex: Exchange, agent_id: str, stream: bool, session_header: str, session_field: str) -> Decoded:
    """One simulate-conversation exchange as a call, or a note when its body cannot be read."""
    out = Decoded()
    call = Call(
        id=ex.flow_id,
        flow_id=ex.flow_id,
        protocol=HTTP,
        endpoint="simulate-stream" if stream else "simulate",
        agent_id=agent_id,
        started=ex.started,
        ended=ex.ended,
        context_field=HISTORY_FIELD,
        server_conversation=ex.flow_id,
        status=ex.status,
        error=ex.error,
        client=ex.client,
        request_digest=request_digest(ex.request_body),
    )
    try:
        body = _json_body(ex.request_body)
    except (ValueError, UnicodeDecodeError) as e:
        out.notes.append(Note(ex.flow_id, "request-body", f"request body is not JSON: {e}"))
        call.declared_session = declared_session_id(ex.request_headers, None, session_header, "")
        out.calls.append(call)
        return out
    call.declared_session = declared_session_id(ex.request_headers, body, session_header, session_field)
    spec = body.get("simulation_specification") if isinstance(body, dict) else None
    history = spec.get("partial_conversation_history") if isinstance(spec, dict) else None
    if isinstance(history, list):
        call.context, fmt = open_embedded(turns_from_list(history))
        call.context_formats[HISTORY_FIELD] = fmt if history else FORMAT_EMPTY
    else:
        call.context_formats[HISTORY_FIELD] = FORMAT_EMPTY
    user_config = spec.get("simulated_user_config") if isinstance(spec, dict) else None
    if call.context and call.context[-1].role == USER:
        call.user_text = call.context[-1].text
    elif isinstance(user_config, dict) and isinstance(user_config.get("first_message"), str):
        call.user_text = user_config["first_message"]
    if isinstance(body, dict):
        for name in EXTRA_CONTEXT_FIELDS:
            if name in body:
                turns, fmt = normalize_context(body[name])
                call.extra_context[name] = turns
                call.context_formats[name] = fmt
    if ex.response_body and ex.status is not None and 200 <= ex.status < 300:
        try:
            call.reply = simulated_turns(ex.response_body)
        except (ValueError, UnicodeDecodeError) as e:
            out.notes.append(Note(ex.flow_id, "response-body", f"response body is not JSON: {e}"))
    if not call.context and call.reply and call.reply[0].role == AGENT:
        call.opening = call.reply[0].text
    out.calls.append(call)
    return out


def decode_agent(ex: Exchange, agent_id: str) -> Decoded:
    """The agent's configured first_message from a GET agent response."""
    out = Decoded()
    if ex.status != 200 or not ex.response_body:
        return out
    try:
        body = _json_body(ex.response_body)
    except (ValueError, UnicodeDecodeError) as e:
        out.notes.append(Note(ex.flow_id, "response-body", f"agent config is not JSON: {e}"))
        return out
    first = _get(body, "conversation_config.agent.first_message")
    if isinstance(first, str) and first:
        out.first_messages[agent_id] = first
    return out


def decode_exchange(ex: Exchange, session_header: str = DEFAULTS.session_header,
                    session_field: str = DEFAULTS.session_field) -> Decoded:
    """Calls, notes and agent facts from one HTTP exchange (nothing for other endpoints)."""
    m = SIMULATE_RE.search(ex.path)
    if m and ex.method == "POST":
        return decode_simulate(ex, m.group("agent"), bool(m.group("stream")), session_header, session_field)
    m = AGENT_RE.search(ex.path)
    if m and ex.method == "GET":
        return decode_agent(ex, m.group("agent"))
    return Decoded()


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


class WsDecoder:
    """Turns the messages of one agent WebSocket, fed in order, into calls (one per user turn).

    Live, ``feed`` is called from ``websocket_message``; offline, over the stored messages.
    The context of a call is the socket's transcript before the user message: the server
    keeps exactly that for the life of the socket.
    """

    def __init__(self, flow_id: str, url: str, headers: dict[str, str], started: float,
                 client: str = "", session_header: str = DEFAULTS.session_header) -> None:
        query = dict(parse_qsl(urlsplit(url).query))
        self.flow_id = flow_id
        self.agent_id = query.get("agent_id", "")
        self.declared_session = header(headers, session_header) if session_header else None
        self.client = client
        self.started = started
        self.user_id: str | None = None
        self.conversation_id: str | None = None
        self.first_message_override: str | None = None
        self.transcript: list[Turn] = []
        self.opening: str | None = None
        self.pending: Call | None = None
        self.turns = 0
        self.audio_frames = 0
        self.audio_bytes = 0
        self.messages = 0

    def _new_call(self, text: str, ts: float) -> Call:
        self.turns += 1
        call = Call(
            id=f"{self.flow_id}#{self.turns}",
            flow_id=self.flow_id,
            protocol=WEBSOCKET,
            endpoint="websocket",
            agent_id=self.agent_id,
            started=ts,
            user_text=text,
            context=list(self.transcript),
            context_field=TRANSCRIPT_FIELD,
            declared_session=self.declared_session,
            user_id=self.user_id,
            conversation_id=self.conversation_id,
            server_conversation=self.conversation_id or self.flow_id,
            turn_index=self.turns,
            opening=self.opening if self.turns == 1 else None,
            first_message_override=self.first_message_override,
            client=self.client,
            request_digest=request_digest(text.encode()),
        )
        call.context_formats[TRANSCRIPT_FIELD] = FORMAT_TURNS if self.transcript else FORMAT_EMPTY
        return call

    def feed(self, msg: WsMessage) -> Decoded:
        """Take the next message; return the call it completes and anything odd about it."""
        out = Decoded()
        self.messages += 1
        if msg.text is None:
            out.notes.append(Note(self.flow_id, "binary-frame",
                                  f"binary {'client' if msg.from_client else 'server'} frame of {msg.size} bytes"))
            return out
        try:
            obj = json.loads(msg.text)
        except ValueError as e:
            out.notes.append(Note(self.flow_id, "invalid-json", f"message #{self.messages} is not JSON: {e}"))
            return out
        if is_audio_frame(obj):
            self.audio_frames += 1
            self.audio_bytes += msg.size
            return out
        if not isinstance(obj, dict):
            out.notes.append(Note(self.flow_id, "unknown-message", f"message #{self.messages} is not an object"))
            return out
        kind = obj.get("type")
        known = KNOWN_CLIENT_TYPES if msg.from_client else KNOWN_SERVER_TYPES
        if kind not in known:
            out.notes.append(Note(self.flow_id, "unknown-message-type",
                                  f"{'client' if msg.from_client else 'server'} message type {kind!r}"))
            return out
        if msg.from_client:
            self._client(kind, obj, msg.timestamp, out)
        else:
            self._server(kind, obj, msg.timestamp, out)
        return out

    def _client(self, kind: str, obj: dict[str, Any], ts: float, out: Decoded) -> None:
        if kind == "conversation_initiation_client_data":
            uid = obj.get("user_id")
            self.user_id = str(uid) if uid else None
            first = _get(obj, "conversation_config_override.agent.first_message")
            self.first_message_override = first if isinstance(first, str) and first else None
        elif kind in ("user_message", "multimodal_message"):
            text = obj.get("text")
            if isinstance(text, dict):
                text = text.get("text")
            text = text if isinstance(text, str) else ""
            if self.pending is not None:  # a second message before the reply: close the first
                out.calls.append(self._finish(None, ts))
            self.pending = self._new_call(text, ts)
            self.transcript.append(Turn(USER, text, ts - self.started))
        elif kind == "contextual_update":
            text = obj.get("text")
            if isinstance(text, str):
                self.transcript.append(Turn(CONTEXT, text, ts - self.started))

    def _server(self, kind: str, obj: dict[str, Any], ts: float, out: Decoded) -> None:
        if kind == "conversation_initiation_metadata":
            cid = _get(obj, "conversation_initiation_metadata_event.conversation_id")
            self.conversation_id = str(cid) if cid else None
        elif kind == "agent_response":
            text = _get(obj, "agent_response_event.agent_response")
            text = text if isinstance(text, str) else ""
            self.transcript.append(Turn(AGENT, text, ts - self.started))
            if self.pending is not None:
                out.calls.append(self._finish(Turn(AGENT, text, ts - self.started), ts))
            elif self.opening is None and self.turns == 0:
                self.opening = text
        elif kind == "agent_response_correction":
            text = _get(obj, "agent_response_correction_event.corrected_agent_response")
            if isinstance(text, str) and self.transcript and self.transcript[-1].role == AGENT:
                self.transcript[-1] = Turn(AGENT, text, self.transcript[-1].time)

    def _finish(self, reply: Turn | None, ts: float) -> Call:
        call = self.pending
        assert call is not None
        self.pending = None
        call.ended = ts
        call.reply = [reply] if reply else []
        call.conversation_id = call.conversation_id or self.conversation_id
        call.server_conversation = self.conversation_id or self.flow_id
        return call

    def close(self, code: int | None, ts: float | None) -> Decoded:
        """End of the socket: a user turn still waiting for its reply becomes a call without one."""
        out = Decoded()
        if self.pending is not None:
            call = self._finish(None, ts or self.started)
            call.close_code = code
            out.calls.append(call)
        return out


def decode_websocket(flow_id: str, url: str, headers: dict[str, str], started: float,
                     messages: Iterable[WsMessage], close_code: int | None, ended: float | None,
                     client: str = "", session_header: str = DEFAULTS.session_header) -> Decoded:
    """All calls of one recorded WebSocket (the offline twin of feeding a WsDecoder live)."""
    dec = WsDecoder(flow_id, url, headers, started, client, session_header)
    out = Decoded()
    for msg in messages:
        part = dec.feed(msg)
        out.calls.extend(part.calls)
        out.notes.extend(part.notes)
    out.calls.extend(dec.close(close_code, ended).calls)
    return out

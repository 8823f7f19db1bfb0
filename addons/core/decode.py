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
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from sessiontap.core.model import (
    AGENT,
    CONTEXT,
    HTTP,
    USER,
    WEBSOCKET,
    Call,
    Exchange,
    Note,
    Turn,
    TurnsSoFar,
    WsMessage,
    fold_turns,
    lineage_seed,
)
from sessiontap.core.protocol import (
    AGENT_RE,
    KNOWN_CLIENT_TYPES,
    KNOWN_SERVER_TYPES,
    SIMULATE_RE,
    agent_response_text,
    conversation_id,
    corrected_agent_text,
    frame_type,
    get,
    header,
    identifier,
    is_audio_frame,
    json_body,
    loads,
    new_turns,
    normalize_role,
    simulated_turns,
    turns_from_list,
    user_message_text,
)
from sessiontap.core.settings import DEFAULTS

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

_SPEAKER_RE = re.compile(r"(?:^|(?<=\s))(User|Human|Customer|Agent|Assistant|AI|Bot)\s*:\s*", re.I)


def turns_from_transcript(text: str) -> tuple[list[Turn], str]:
    """Split a "User: … Agent: …" string into turns; return them with the format found."""
    marks = list(_SPEAKER_RE.finditer(text)) if ":" in text else []  # the search is slow; most texts have no colon
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
            obj = loads(stripped)
        except ValueError:
            return ([], "")
        turns, fmt = normalize_context(obj) if isinstance(obj, dict) else ([], "")
        return (turns, fmt) if fmt == FORMAT_STRUCTURED and turns else ([], "")
    if text.count(":") < 2:  # two speakers at least, each a "Name:": most turns are plain text
        return ([], "")
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


def declared_session_id(headers: dict[str, str], body: Any, session_header: str, session_field: str) -> str | None:
    """The session id the client declared, from its header or a dotted body field."""
    value = identifier(header(headers, session_header)) if session_header else None
    if value:
        return value
    if session_field and isinstance(body, dict):
        return identifier(get(body, session_field))
    return None


def request_digest(body: bytes | str) -> str:
    """A short digest of a request body or message text: equal digests mean byte-identical requests."""
    if isinstance(body, str):  # a text may hold lone surrogates (JSON escapes): kept, not refused
        body = body.encode("utf-8", "surrogatepass")
    return hashlib.sha256(body).hexdigest()[:16]


@dataclass
class SimulateRequest:
    """A simulate call decoded from its request alone; ``answered`` completes it with the response.

    Live, the request is decoded once, when it is sent (its session id tags it upstream), and
    the same call is completed when the response comes: a body is parsed once, not twice.
    """

    decoded: Decoded
    sent: list[Turn]  # the history as sent, before any embedded transcript is opened

    def answered(self, ex: Exchange) -> Decoded:
        """The decoded call with the exchange's outcome and the reply's new turns."""
        out = self.decoded
        call = out.calls[0]
        call.ended, call.status, call.error = ex.ended, ex.status, ex.error
        if ex.response_body and ex.status is not None and 200 <= ex.status < 300:
            try:
                call.reply = new_turns(self.sent, simulated_turns(ex.response_body))
            except (ValueError, UnicodeDecodeError) as e:
                out.notes.append(Note(ex.flow_id, "response-body", f"response body is not JSON: {e}"))
        if not call.context and call.reply and call.reply[0].role == AGENT:
            call.opening = call.reply[0].text
        return out


def decode_simulate(ex: Exchange, agent_id: str, stream: bool, session_header: str, session_field: str) -> Decoded:
    """One simulate-conversation exchange as a call, or a note when its body cannot be read."""
    return simulate_request(ex, agent_id, stream, session_header, session_field).answered(ex)


def simulate_request(ex: Exchange, agent_id: str, stream: bool, session_header: str,
                     session_field: str) -> SimulateRequest:
    """The call a simulate-conversation request makes, from the request alone."""
    out = Decoded()
    call = Call(
        id=ex.flow_id,
        flow_id=ex.flow_id,
        protocol=HTTP,
        endpoint="simulate-stream" if stream else "simulate",
        agent_id=agent_id,
        started=ex.started,
        context_field=HISTORY_FIELD,
        server_conversation=ex.flow_id,
        client=ex.client,
        connection=ex.connection,
        code=list(ex.code),
        request_digest=request_digest(ex.request_body),
    )
    out.calls.append(call)
    try:
        body = json_body(ex.request_body)
    except (ValueError, UnicodeDecodeError) as e:
        out.notes.append(Note(ex.flow_id, "request-body", f"request body is not JSON: {e}"))
        call.declared_session = declared_session_id(ex.request_headers, None, session_header, "")
        return SimulateRequest(out, [])
    call.declared_session = declared_session_id(ex.request_headers, body, session_header, session_field)
    spec = body.get("simulation_specification") if isinstance(body, dict) else None
    history = spec.get("partial_conversation_history") if isinstance(spec, dict) else None
    sent = turns_from_list(history) if isinstance(history, list) else []
    if isinstance(history, list):
        call.context, fmt = open_embedded(sent)
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
    return SimulateRequest(out, sent)


def decode_agent(ex: Exchange, agent_id: str) -> Decoded:
    """The agent's configured first_message from a GET agent response."""
    out = Decoded()
    if ex.status != 200 or not ex.response_body:
        return out
    try:
        body = json_body(ex.response_body)
    except (ValueError, UnicodeDecodeError) as e:
        out.notes.append(Note(ex.flow_id, "response-body", f"agent config is not JSON: {e}"))
        return out
    first = get(body, "conversation_config.agent.first_message")
    if isinstance(first, str) and first:
        out.first_messages[agent_id] = first
    return out


def decode_request(ex: Exchange, session_header: str = DEFAULTS.session_header,
                   session_field: str = DEFAULTS.session_field) -> SimulateRequest | None:
    """The call an HTTP request makes, decoded before its response exists (None: not a simulate call)."""
    m = SIMULATE_RE.search(ex.path)
    if m and ex.method == "POST":
        return simulate_request(ex, m.group("agent"), bool(m.group("stream")), session_header, session_field)
    return None


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


class WsDecoder:
    """Turns the messages of one agent WebSocket, fed in order, into calls (one per user turn).

    Live, ``feed`` is called from ``websocket_message``; offline, over the stored messages.
    The context of a call is the socket's transcript before the user message: the server
    keeps exactly that for the life of the socket.
    """

    def __init__(self, flow_id: str, url: str, headers: dict[str, str], started: float,
                 client: str = "", session_header: str = DEFAULTS.session_header, connection: str = "",
                 code: list[tuple[str, int, str]] | None = None) -> None:
        query = dict(parse_qsl(urlsplit(url).query))
        self.flow_id = flow_id
        self.agent_id = query.get("agent_id", "")
        self.declared_session = declared_session_id(headers, None, session_header, "")
        self.client = client
        self.connection = connection
        self.code = list(code or [])
        self.started = started
        self.user_id: str | None = None
        self.conversation_id: str | None = None
        self.first_message_override: str | None = None
        self.transcript: list[Turn] = []
        self.keys: list[int] = []  # the transcript's lineage hash after each of its turns
        self.chars = 0  # the characters of the transcript's texts
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
            context=TurnsSoFar(self.transcript, len(self.transcript)),
            context_key=self.keys[-1] if self.keys else None,
            context_chars=self.chars,
            context_field=TRANSCRIPT_FIELD,
            declared_session=self.declared_session,
            user_id=self.user_id,
            conversation_id=self.conversation_id,
            server_conversation=self.conversation_id or self.flow_id,
            turn_index=self.turns,
            opening=self.opening if self.turns == 1 else None,
            first_message_override=self.first_message_override,
            client=self.client,
            connection=self.connection,
            code=list(self.code),
            request_digest=request_digest(text),
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
            obj = loads(msg.text)
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
        kind = frame_type(obj)  # None unless a string: a list or an object as the type is unknown too
        known = KNOWN_CLIENT_TYPES if msg.from_client else KNOWN_SERVER_TYPES
        if kind is None or kind not in known:
            raw = obj.get("type")
            shown = repr(kind) if kind is not None or raw is None else f"of JSON {type(raw).__name__}"
            out.notes.append(Note(self.flow_id, "unknown-message-type",
                                  f"{'client' if msg.from_client else 'server'} message type {shown}"))
            return out
        if msg.from_client:
            self._client(kind, obj, msg.timestamp, out)
        else:
            self._server(kind, obj, msg.timestamp, out)
        return out

    def _client(self, kind: str, obj: dict[str, Any], ts: float, out: Decoded) -> None:
        if kind == "conversation_initiation_client_data":
            self.user_id = identifier(obj.get("user_id"))
            first = get(obj, "conversation_config_override.agent.first_message")
            self.first_message_override = first if isinstance(first, str) and first else None
        elif (text := user_message_text(obj)) is not None:
            if self.pending is not None:  # a second message before the reply: close the first
                out.calls.append(self._finish(None, ts))
            self.pending = self._new_call(text, ts)
            self._append(Turn(USER, text, ts - self.started))
        elif kind == "contextual_update":
            text = obj.get("text")
            if isinstance(text, str):
                self._append(Turn(CONTEXT, text, ts - self.started))

    def _server(self, kind: str, obj: dict[str, Any], ts: float, out: Decoded) -> None:
        if kind == "conversation_initiation_metadata":
            self.conversation_id = conversation_id(obj)
        elif (text := agent_response_text(obj)) is not None:
            self._append(Turn(AGENT, text, ts - self.started))
            if self.pending is not None:
                out.calls.append(self._finish(Turn(AGENT, text, ts - self.started), ts))
            elif self.opening is None and self.turns == 0:
                self.opening = text
        elif (corrected := corrected_agent_text(obj)) is not None and self.transcript \
                and self.transcript[-1].role == AGENT:
                replaced = self.transcript.pop()
                self.keys.pop()
                self.chars -= len(replaced.text)
                self._append(Turn(AGENT, corrected, replaced.time))

    def _append(self, turn: Turn) -> None:
        """Add a turn to the transcript, and its lineage hash (one step: no call re-hashes the transcript)."""
        start = self.keys[-1] if self.keys else lineage_seed(WEBSOCKET, self.agent_id)
        self.transcript.append(turn)
        self.keys.append(fold_turns(start, (turn,)))
        self.chars += len(turn.text)

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
                     client: str = "", session_header: str = DEFAULTS.session_header,
                     connection: str = "", code: list[tuple[str, int, str]] | None = None) -> Decoded:
    """All calls of one recorded WebSocket (the offline twin of feeding a WsDecoder live)."""
    dec = WsDecoder(flow_id, url, headers, started, client, session_header, connection, code)
    out = Decoded()
    for msg in messages:
        part = dec.feed(msg)
        out.calls.extend(part.calls)
        out.notes.extend(part.notes)
    out.calls.extend(dec.close(close_code, ended).calls)
    return out

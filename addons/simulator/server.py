"""The ElevenLabs simulator: a loopback HTTP + WebSocket server with the real paths and payloads.

One port serves everything, like `api.elevenlabs.io`:

- `POST /v1/convai/agents/{agent_id}/simulate-conversation[/stream]`
- `GET  /v1/convai/agents/{agent_id}`
- `GET  /v1/convai/conversation/get-signed-url` (alias `get_signed_url`), `.../conversation/token`
- `GET  /v1/convai/conversation` (the agent WebSocket)
- `GET  /v1/convai/conversations` and `/v1/convai/conversations/{conversation_id}`

HTTP endpoints want an `xi-api-key` header (any non-empty key, or exactly `api_key` when
one is set). The WebSocket is a public agent unless `require_signed_url` is set; an
unknown `conversation_signature` is always refused with 403.

Choices made where the real API is an open question (see elevenlabs-protocol.md):

- simulate keeps no state. The only context is
  `simulation_specification.partial_conversation_history`; `conversation_context` and any
  other unknown field is accepted and ignored.
- `simulated_conversation` holds only the new turns, never the history sent. The
  `history_echo` switch (`Shapes`) makes it the history sent followed by the new turns,
  in the batch answer and in the stream alike.
- An empty history starts fresh: the agent's `first_message` is the first new turn. After
  that, whoever did not speak last speaks next (the agent after a user turn). The first
  simulated-user turn of a call says `simulated_user_config.first_message` when set, later
  ones follow `agent.SIMULATED_USER_SCRIPT`.
- `new_turns_limit` counts messages (default 10, capped at 50, below 0 means 0).
- The stream variant answers `application/x-ndjson`: one line `{"simulated_conversation":
  [turn]}` per new turn, written as it is produced, then `{"analysis": {...}}`. The
  `stream_framing="sse"` switch (`Shapes`) answers `text/event-stream` instead: a `: ping`
  comment, then per turn `event: message`, `id: N` and `data: {"simulated_conversation":
  [turn]}`, then `event: analysis` with `data: {"analysis": {...}}`, then `data: [DONE]`.
  An object longer than `SSE_SPLIT_CHARS` (always the analysis) is split after its key
  across two `data:` lines, which SSE joins with a newline.
- On the WebSocket, a user message that trips the `ws_close_code` fault gets no reply.
- `simulate_removed=404|410` (`Shapes`) plays the API after simulate-conversation's removal:
  both simulate endpoints answer that status (404 as an unknown route, 410 with a detail
  naming the replacements); everything else is served as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlencode

from aiohttp import WSMsgType, web

from sessiontap.app.background import CLOSE_TIMEOUT, LoopbackServer, running_in_thread
from sessiontap.simulator import agent

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
DEFAULT_TURNS_LIMIT = 10
MAX_TURNS_LIMIT = 50
INIT_TIMEOUT = 30.0
AUDIO_FORMAT = "pcm_16000"
AGENT_TURN_SECS = 2
USER_TURN_SECS = 5
SSE_SPLIT_CHARS = 120

StreamFraming = Literal["ndjson", "sse"]
STREAM_FRAMINGS: tuple[StreamFraming, ...] = ("ndjson", "sse")
REMOVED_STATUSES = (404, 410)  # what a removed simulate-conversation may answer

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Faults:
    """Failure switches; change them on a running server (`sim.faults.latency = 0.2`).

    - `latency`: seconds slept before each HTTP response and each agent reply.
    - `status`: HTTP endpoints answer this status with a JSON error body; `status_count`
      is how many requests it still applies to (None = all). It counts down and clears
      both fields when it reaches 0.
    - `ws_close_code`: when a socket's user-message count reaches `ws_close_after`, the
      server closes with this code instead of replying (1006 aborts the TCP connection
      without a close frame). `ws_close_after = 0` closes right after the opening line.
    - `hostile_text`: appended verbatim to every agent turn (opening line included).
    """

    latency: float = 0.0
    status: int | None = None
    status_count: int | None = None
    ws_close_code: int | None = None
    ws_close_after: int = 1
    hostile_text: str | None = None


@dataclass
class Shapes:
    """Answer shapes the real API may take; change them on a running server (`sim.shapes.history_echo = True`).

    - `history_echo`: `simulated_conversation` repeats the `partial_conversation_history`
      sent (each turn as sent, `time_in_call_secs` as an int) before the new turns; the
      stream sends the echoed turns first.
    - `stream_framing`: `"ndjson"` (one JSON object a line) or `"sse"` (Server-Sent Events).
    - `simulate_removed`: 404 or 410 makes simulate-conversation (and `/stream`) answer that
      status, as the real API may once the endpoint is removed (announced for 2026-10-31);
      None serves it.
    """

    history_echo: bool = False
    stream_framing: StreamFraming = "ndjson"
    simulate_removed: int | None = None

    def __post_init__(self) -> None:
        if self.stream_framing not in STREAM_FRAMINGS:
            raise ValueError(f"stream_framing must be one of {', '.join(STREAM_FRAMINGS)}")
        if self.simulate_removed not in (None, *REMOVED_STATUSES):
            raise ValueError(f"simulate_removed must be one of {', '.join(map(str, REMOVED_STATUSES))} or None "
                             f"(got {self.simulate_removed!r})")


@dataclass
class Hit:
    """One thing the simulator received: an HTTP request, a socket upgrade, a socket frame."""

    kind: str  # "http" | "ws-open" | "ws-message"
    method: str
    path: str
    query: str
    host: str
    timestamp: float
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    status: int | None = None
    message_type: str | None = None
    conversation_id: str | None = None
    peer: str | None = None  # the client's address
    peer_port: int | None = None  # the client's source port: a new one means a new connection


_HIT_KEY = web.RequestKey("sessiontap_hit", Hit)


@dataclass
class StoredConversation:
    """One WebSocket conversation as the server holds it."""

    conversation_id: str
    agent_id: str
    user_id: str | None
    initiation: dict[str, Any]
    authorization_method: str
    start_time_unix_secs: int
    started: float
    history: list[tuple[str, str]] = field(default_factory=list)
    transcript: list[dict[str, Any]] = field(default_factory=list)
    contextual_updates: list[str] = field(default_factory=list)
    user_messages: int = 0
    audio_chunks: int = 0
    pongs: list[Any] = field(default_factory=list)
    status: str = "in-progress"
    close_code: int | None = None
    ended: float | None = None
    event_id: int = 0

    def next_event_id(self) -> int:
        """Return the next server event id of this conversation."""
        self.event_id += 1
        return self.event_id

    def seconds(self) -> int:
        """Return the whole seconds since the conversation started (or its length if ended)."""
        end = self.ended if self.ended is not None else time.monotonic()
        return int(end - self.started)

    def add_turn(self, role: str, text: str) -> None:
        """Append a user or agent turn to the history and the transcript."""
        self.history.append((role, text))
        self.transcript.append({"role": role, "message": text, "time_in_call_secs": self.seconds()})

    def text_only(self) -> bool:
        """Return whether the session asked for text-only mode (or the agent's default)."""
        override = self.initiation.get("conversation_config_override")
        if isinstance(override, dict):
            conversation = override.get("conversation")
            if isinstance(conversation, dict) and "text_only" in conversation:
                return bool(conversation["text_only"])
            if "text_only" in override:
                return bool(override["text_only"])
        return True

    def summary(self) -> dict[str, Any]:
        """Return the conversation as `GET /v1/convai/conversations` lists it."""
        source = self.initiation.get("source_info")
        return {
            "agent_id": self.agent_id,
            "agent_name": agent.AGENT_NAME,
            "conversation_id": self.conversation_id,
            "start_time_unix_secs": self.start_time_unix_secs,
            "call_duration_secs": self.seconds(),
            "message_count": len(self.transcript),
            "status": self.status,
            "call_successful": "success",
            "transcript_summary": agent.summarize(self.history),
            "conversation_initiation_source": (
                source.get("source") if isinstance(source, dict) else None
            ),
        }

    def details(self) -> dict[str, Any]:
        """Return the conversation as `GET /v1/convai/conversations/{id}` returns it."""
        source = self.initiation.get("source_info")
        source = source if isinstance(source, dict) else {}
        return {
            "conversation_id": self.conversation_id,
            "agent_id": self.agent_id,
            "agent_name": agent.AGENT_NAME,
            "status": self.status,
            "user_id": self.user_id,
            "transcript": [dict(turn) for turn in self.transcript],
            "metadata": {
                "start_time_unix_secs": self.start_time_unix_secs,
                "call_duration_secs": self.seconds(),
                "text_only": self.text_only(),
                "authorization_method": self.authorization_method,
                "conversation_initiation_source": source.get("source"),
                "conversation_initiation_source_version": source.get("version"),
                "termination_reason": "" if self.close_code is None else f"code {self.close_code}",
            },
            "analysis": _analysis(self.history, []),
            "conversation_initiation_client_data": {
                key: value for key, value in self.initiation.items() if key != "type"
            },
            "has_audio": False,
            "has_user_audio": self.audio_chunks > 0,
            "has_response_audio": False,
        }


@dataclass
class _Signature:
    agent_id: str
    conversation_id: str | None
    used: bool = False


@dataclass
class SimulationRequest:
    """A validated simulate-conversation body: only the fields the simulator uses."""

    history: list[tuple[str, str]]
    last_time: int
    user_first_message: str | None
    new_turns_limit: int
    criteria_ids: list[str]
    turns: list[dict[str, Any]] = field(default_factory=list)
    """The history turns as sent, `time_in_call_secs` made an int (what `history_echo` returns)."""


def agent_config(agent_id: str) -> dict[str, Any]:
    """Return the agent document `GET /v1/convai/agents/{agent_id}` serves (any id)."""
    return {
        "agent_id": agent_id,
        "name": agent.AGENT_NAME,
        "conversation_config": {
            "agent": {
                "first_message": agent.FIRST_MESSAGE,
                "language": agent.LANGUAGE,
                "prompt": {"prompt": agent.AGENT_PROMPT},
            },
            "conversation": {"text_only": True},
        },
        "platform_settings": {
            "auth": {"enable_auth": False},
            "overrides": {
                "conversation_config_override": {
                    "agent": {"first_message": True, "language": True, "prompt": {"prompt": True}},
                    "conversation": {"text_only": True},
                }
            },
        },
    }


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"detail": {"status": code, "message": message}}, status=status)


def _missing(loc: list[Any]) -> dict[str, Any]:
    return {"loc": loc, "msg": "Field required", "type": "missing"}


def _wrong(loc: list[Any], kind: str, msg: str) -> dict[str, Any]:
    return {"loc": loc, "msg": msg, "type": kind}


def _as_int(value: Any) -> int | None:
    """Return `value` as an int the way pydantic's lax mode would, or None."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d{1,18}\s*", value):
        return int(value)
    return None


def _check_history(turns: Any, loc: list[Any], errors: list[dict[str, Any]]) -> list[Any]:
    if turns is None:
        return []
    if not isinstance(turns, list):
        errors.append(_wrong(loc, "list_type", "Input should be a valid list"))
        return []
    for index, turn in enumerate(turns):
        where = [*loc, index]
        if not isinstance(turn, dict):
            errors.append(_wrong(where, "dict_type", "Input should be a valid dictionary"))
            continue
        if "role" not in turn:
            errors.append(_missing([*where, "role"]))
        elif turn["role"] not in (agent.USER, agent.AGENT):
            errors.append(_wrong([*where, "role"], "enum", "Input should be 'user' or 'agent'"))
        if "time_in_call_secs" not in turn:
            errors.append(_missing([*where, "time_in_call_secs"]))
        elif _as_int(turn["time_in_call_secs"]) is None:
            errors.append(
                _wrong([*where, "time_in_call_secs"], "int_type", "Input should be a valid integer")
            )
        message = turn.get("message")
        if message is not None and not isinstance(message, str):
            errors.append(_wrong([*where, "message"], "string_type", "Input should be a valid string"))
    return turns


def validate_simulation(body: Any) -> tuple[SimulationRequest | None, list[dict[str, Any]]]:
    """Return the simulate request in `body`, or the FastAPI-style 422 errors it raises."""
    errors: list[dict[str, Any]] = []
    if not isinstance(body, dict):
        return None, [_wrong(["body"], "dict_type", "Input should be a valid dictionary")]
    spec = body.get("simulation_specification")
    spec_loc: list[Any] = ["body", "simulation_specification"]
    turns: list[Any] = []
    user_first: str | None = None
    if "simulation_specification" not in body:
        errors.append(_missing(spec_loc))
    elif not isinstance(spec, dict):
        errors.append(_wrong(spec_loc, "dict_type", "Input should be a valid dictionary"))
    else:
        user = spec.get("simulated_user_config")
        user_loc = [*spec_loc, "simulated_user_config"]
        if "simulated_user_config" not in spec:
            errors.append(_missing(user_loc))
        elif not isinstance(user, dict):
            errors.append(_wrong(user_loc, "dict_type", "Input should be a valid dictionary"))
        else:
            first = user.get("first_message")
            if first is not None and not isinstance(first, str):
                errors.append(
                    _wrong([*user_loc, "first_message"], "string_type", "Input should be a valid string")
                )
            else:
                user_first = first
        turns = _check_history(
            spec.get("partial_conversation_history"),
            [*spec_loc, "partial_conversation_history"],
            errors,
        )
    limit = DEFAULT_TURNS_LIMIT
    if body.get("new_turns_limit") is not None:
        parsed = _as_int(body["new_turns_limit"])
        if parsed is None:
            errors.append(
                _wrong(["body", "new_turns_limit"], "int_type", "Input should be a valid integer")
            )
        else:
            limit = max(0, min(MAX_TURNS_LIMIT, parsed))
    criteria = body.get("extra_evaluation_criteria")
    criteria_ids: list[str] = []
    if criteria is not None:
        if not isinstance(criteria, list):
            errors.append(
                _wrong(["body", "extra_evaluation_criteria"], "list_type", "Input should be a valid list")
            )
        else:
            for index, item in enumerate(criteria):
                where = ["body", "extra_evaluation_criteria", index]
                if not isinstance(item, dict):
                    errors.append(_wrong(where, "dict_type", "Input should be a valid dictionary"))
                    continue
                for name in ("id", "name", "conversation_goal_prompt"):
                    if name not in item:
                        errors.append(_missing([*where, name]))
                criteria_ids.append(str(item.get("id", "")))
    if errors:
        return None, errors
    history = [(turn["role"], turn.get("message") or "") for turn in turns]
    times = [_as_int(turn["time_in_call_secs"]) or 0 for turn in turns]
    return SimulationRequest(
        history=history,
        last_time=max(times, default=0),
        user_first_message=user_first,
        new_turns_limit=limit,
        criteria_ids=criteria_ids,
        turns=[{**turn, "time_in_call_secs": secs} for turn, secs in zip(turns, times, strict=True)],
    ), []


def _analysis(history: list[tuple[str, str]], criteria_ids: list[str]) -> dict[str, Any]:
    return {
        "call_successful": "success",
        "transcript_summary": agent.summarize(history),
        "evaluation_criteria_results": {
            criteria_id: {
                "criteria_id": criteria_id,
                "result": "unknown",
                "rationale": "The simulator does not evaluate criteria.",
            }
            for criteria_id in criteria_ids
        },
        "data_collection_results": {},
    }


def _chunks(text: str, words: int = 5) -> list[str]:
    """Return `text` in pieces of a few words whose concatenation is `text`."""
    tokens = re.findall(r"\s*\S+\s*", text)
    if not tokens:
        return [text]
    return ["".join(tokens[start : start + words]) for start in range(0, len(tokens), words)]


def _stream_event(
    payload: dict[str, Any], sse: bool, event: str = "message", event_id: int | None = None
) -> bytes:
    """Return one stream event: an NDJSON line, or an SSE event (long data split in two lines)."""
    text = json.dumps(payload)
    if not sse:
        return (text + "\n").encode()
    lines = [f"event: {event}"] + ([f"id: {event_id}"] if event_id is not None else [])
    if len(text) > SSE_SPLIT_CHARS and len(payload) == 1:
        ((key, value),) = payload.items()
        lines += [f"data: {{{json.dumps(key)}:", f"data: {json.dumps(value)}}}"]
    else:
        lines.append(f"data: {text}")
    return ("\n".join(lines) + "\n\n").encode()


def _status_code(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "simulated_error"


class Simulator(LoopbackServer):
    """The ElevenLabs simulator server; `start()` binds it, `stop()` closes everything."""

    stop_message = b"Simulator shutting down"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        api_key: str | None = None,
        faults: Faults | None = None,
        require_signed_url: bool = False,
        stream_parts: bool = True,
        ping_interval: float | None = None,
        history_echo: bool = False,
        stream_framing: StreamFraming = "ndjson",
        simulate_removed: int | None = None,
    ) -> None:
        super().__init__(host, port)
        self.api_key = api_key
        self.faults = faults if faults is not None else Faults()
        self.shapes = Shapes(history_echo=history_echo, stream_framing=stream_framing,
                             simulate_removed=simulate_removed)
        self.require_signed_url = require_signed_url
        self.stream_parts = stream_parts
        self.ping_interval = ping_interval
        self.hits: list[Hit] = []
        self.conversations: dict[str, StoredConversation] = {}
        self._signatures: dict[str, _Signature] = {}

    # lifecycle ----------------------------------------------------------------------------

    @property
    def ws_url(self) -> str:
        """The base WebSocket URL, e.g. `ws://127.0.0.1:PORT`."""
        return "ws" + self.url[len("http") :]

    async def start(self) -> None:
        """Bind the server (port 0 picks a free port) and start serving."""
        app = web.Application(middlewares=[self._middleware], client_max_size=MAX_MESSAGE_BYTES)
        convai = "/v1/convai"
        app.router.add_post(
            convai + "/agents/{agent_id}/simulate-conversation", self._simulate_batch
        )
        app.router.add_post(
            convai + "/agents/{agent_id}/simulate-conversation/stream", self._simulate_stream
        )
        app.router.add_get(convai + "/agents/{agent_id}", self._get_agent)
        app.router.add_get(convai + "/conversation/get-signed-url", self._get_signed_url)
        app.router.add_get(convai + "/conversation/get_signed_url", self._get_signed_url)
        app.router.add_get(convai + "/conversation/token", self._get_token)
        app.router.add_get(convai + "/conversation", self._socket)
        app.router.add_get(convai + "/conversations", self._list_conversations)
        app.router.add_get(convai + "/conversations/{conversation_id}", self._get_conversation)
        await self._serve(app)

    # HTTP plumbing --------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        hit = Hit(
            kind="ws-open" if upgrade else "http",
            method=request.method,
            path=request.path,
            query=request.query_string,
            host=request.headers.get("Host", ""),
            timestamp=time.time(),
            headers=dict(request.headers),
            peer=request.remote,
            peer_port=_peer_port(request),
        )
        self.hits.append(hit)
        request[_HIT_KEY] = hit
        if not upgrade:
            hit.body = (await request.read()).decode("utf-8", "replace")
        response = await self._answer(request, handler, upgrade)
        hit.status = response.status
        return response

    async def _answer(
        self, request: web.Request, handler: Handler, upgrade: bool
    ) -> web.StreamResponse:
        faults = self.faults
        if not upgrade and faults.latency > 0:
            await asyncio.sleep(faults.latency)
        missing = request.match_info.http_exception
        if missing is not None:
            return web.json_response({"detail": missing.reason}, status=missing.status)
        if upgrade:
            return await handler(request)
        if faults.status is not None:
            status = faults.status
            if faults.status_count is not None:
                faults.status_count -= 1
                if faults.status_count <= 0:
                    faults.status, faults.status_count = None, None
            return _error(status, _status_code(status), f"Simulated fault: HTTP {status}")
        key = request.headers.get("xi-api-key", "")
        if not key or (self.api_key is not None and key != self.api_key):
            return _error(401, "invalid_api_key", "Invalid API key")
        return await handler(request)

    # HTTP endpoints ---------------------------------------------------------------------------

    async def _read_simulation(self, request: web.Request) -> SimulationRequest | web.Response:
        removed = self.shapes.simulate_removed
        if removed == 404:
            return web.json_response({"detail": "Not Found"}, status=404)  # the route is gone: FastAPI's own 404
        if removed is not None:
            return _error(removed, "endpoint_removed", "simulate-conversation was removed on 2026-10-31; use "
                          "/v1/convai/agent-testing/create and /v1/convai/agents/{agent_id}/run-tests, or the "
                          "agent WebSocket")
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError as exc:
            error = {
                "loc": ["body", getattr(exc, "pos", 0)],
                "msg": "JSON decode error",
                "type": "json_invalid",
                "ctx": {"error": getattr(exc, "msg", str(exc))},
            }
            return web.json_response({"detail": [error]}, status=422)
        spec, errors = validate_simulation(body)
        if spec is None:
            return web.json_response({"detail": errors}, status=422)
        return spec

    def _simulated_turns(self, spec: SimulationRequest) -> list[dict[str, Any]]:
        new = agent.simulate_turns(
            spec.history,
            new_turns_limit=spec.new_turns_limit,
            user_first_message=spec.user_first_message,
        )
        turns: list[dict[str, Any]] = []
        clock = spec.last_time
        for index, (role, text) in enumerate(new):
            if index or spec.history:
                clock += AGENT_TURN_SECS if role == agent.AGENT else USER_TURN_SECS
            message = text + (self.faults.hostile_text or "") if role == agent.AGENT else text
            turns.append({"role": role, "message": message, "time_in_call_secs": clock})
        return turns

    def _echoed(self, spec: SimulationRequest) -> list[dict[str, Any]]:
        """Return the history turns the answer repeats: all of them with `history_echo`, else none."""
        return [dict(turn) for turn in spec.turns] if self.shapes.history_echo else []

    async def _simulate_batch(self, request: web.Request) -> web.Response:
        spec = await self._read_simulation(request)
        if isinstance(spec, web.Response):
            return spec
        turns = self._simulated_turns(spec)
        everything = spec.history + [(turn["role"], turn["message"]) for turn in turns]
        return web.json_response(
            {
                "simulated_conversation": self._echoed(spec) + turns,
                "analysis": _analysis(everything, spec.criteria_ids),
            }
        )

    async def _simulate_stream(self, request: web.Request) -> web.StreamResponse:
        spec = await self._read_simulation(request)
        if isinstance(spec, web.Response):
            return spec
        turns = self._simulated_turns(spec)
        echoed = self._echoed(spec)
        sse = self.shapes.stream_framing == "sse"
        content_type = "text/event-stream" if sse else "application/x-ndjson"
        response = web.StreamResponse(headers={"Content-Type": content_type})
        await response.prepare(request)
        if sse:
            await response.write(b": ping\n\n")
        for number, turn in enumerate(echoed + turns, 1):
            produced = number > len(echoed)
            if produced and turn["role"] == agent.AGENT and self.faults.latency > 0:
                await asyncio.sleep(self.faults.latency)
            payload = {"simulated_conversation": [turn]}
            await response.write(_stream_event(payload, sse, event_id=number))
        everything = spec.history + [(turn["role"], turn["message"]) for turn in turns]
        final = {"analysis": _analysis(everything, spec.criteria_ids)}
        await response.write(_stream_event(final, sse, event="analysis"))
        if sse:
            await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _get_agent(self, request: web.Request) -> web.Response:
        return web.json_response(agent_config(request.match_info["agent_id"]))

    def _query_agent(self, request: web.Request) -> str | web.Response:
        agent_id = request.query.get("agent_id")
        if not agent_id:
            return web.json_response({"detail": [_missing(["query", "agent_id"])]}, status=422)
        return agent_id

    async def _get_signed_url(self, request: web.Request) -> web.Response:
        agent_id = self._query_agent(request)
        if isinstance(agent_id, web.Response):
            return agent_id
        signature = secrets.token_urlsafe(24)
        include_id = request.query.get("include_conversation_id", "").lower() == "true"
        conversation_id = _new_conversation_id() if include_id else None
        self._signatures[signature] = _Signature(agent_id, conversation_id)
        forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
        scheme = "wss" if request.secure or forwarded == "https" else "ws"
        params = [("agent_id", agent_id), ("conversation_signature", signature)]
        if conversation_id:
            params.append(("conversation_id", conversation_id))
        host = request.headers.get("Host") or f"{self.host}:{self.port}"
        url = f"{scheme}://{host}/v1/convai/conversation?{urlencode(params, quote_via=quote)}"
        body: dict[str, Any] = {"signed_url": url}
        if conversation_id:
            body["conversation_id"] = conversation_id
        return web.json_response(body)

    async def _get_token(self, request: web.Request) -> web.Response:
        agent_id = self._query_agent(request)
        if isinstance(agent_id, web.Response):
            return agent_id
        token = "eyJ" + secrets.token_urlsafe(48)
        return web.json_response({"token": token, "conversation_id": _new_conversation_id()})

    async def _get_conversation(self, request: web.Request) -> web.Response:
        conversation_id = request.match_info["conversation_id"]
        stored = self.conversations.get(conversation_id)
        if stored is None:
            return _error(
                404, "conversation_not_found", f"Conversation {conversation_id} was not found."
            )
        return web.json_response(stored.details())

    async def _list_conversations(self, request: web.Request) -> web.Response:
        query = request.query
        chosen = [
            stored
            for stored in self.conversations.values()
            if query.get("agent_id") in (None, "", stored.agent_id)
            and query.get("user_id") in (None, "", stored.user_id)
        ]
        chosen.reverse()  # newest first
        size = max(1, min(100, _as_int(query.get("page_size", "30")) or 30))
        start = _as_int(query.get("cursor", "0")) or 0
        page = chosen[start : start + size]
        more = start + size < len(chosen)
        return web.json_response(
            {
                "conversations": [stored.summary() for stored in page],
                "has_more": more,
                "next_cursor": str(start + size) if more else None,
            }
        )

    # WebSocket ------------------------------------------------------------------------------

    def _refuse(self, reason: str) -> web.Response:
        return _error(403, "forbidden", reason)

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(
            max_msg_size=MAX_MESSAGE_BYTES, timeout=CLOSE_TIMEOUT, protocols=("convai",)
        )
        if not ws.can_prepare(request).ok:
            return web.json_response({"detail": "Expected a WebSocket upgrade"}, status=400)
        agent_id = request.query.get("agent_id")
        if not agent_id:
            return self._refuse("agent_id is required")
        signature = request.query.get("conversation_signature")
        preset_id: str | None = None
        if signature is not None:
            issued = self._signatures.get(signature)
            if issued is None or issued.used or issued.agent_id != agent_id:
                return self._refuse("Invalid conversation signature")
            if issued.conversation_id is not None:
                issued.used = True
                preset_id = issued.conversation_id
            method = "signed_url"
        elif self.require_signed_url:
            return self._refuse("This agent requires a signed URL")
        else:
            method = "public"
        await ws.prepare(request)
        self._open_sockets.add(ws)
        try:
            await self._converse(request, ws, agent_id, method, preset_id)
        finally:
            self._open_sockets.discard(ws)
        return ws

    def _ws_hit(self, request: web.Request, body: str, kind: str, cid: str | None) -> None:
        self.hits.append(
            Hit(
                kind="ws-message",
                method="WS",
                path=request.path,
                query=request.query_string,
                host=request.headers.get("Host", ""),
                timestamp=time.time(),
                body=body,
                message_type=kind,
                conversation_id=cid,
                peer=request.remote,
                peer_port=_peer_port(request),
            )
        )

    async def _converse(
        self,
        request: web.Request,
        ws: web.WebSocketResponse,
        agent_id: str,
        method: str,
        preset_id: str | None,
    ) -> None:
        try:
            first = await ws.receive(timeout=INIT_TIMEOUT)
        except TimeoutError:
            await ws.close(code=1008, message=b"No conversation_initiation_client_data received")
            return
        if first.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            return
        text, data = _decode_frame(first)
        self._ws_hit(request, text, _frame_kind(first, data), None)
        first_hit = self.hits[-1]
        if data is None or data.get("type") != "conversation_initiation_client_data":
            await ws.close(
                code=1008, message=b"First message must be conversation_initiation_client_data"
            )
            return
        user_id = data.get("user_id")
        conversation = StoredConversation(
            conversation_id=preset_id or _new_conversation_id(),
            agent_id=agent_id,
            user_id=user_id if isinstance(user_id, str) else None,
            initiation=data,
            authorization_method=method,
            start_time_unix_secs=int(time.time()),
            started=time.monotonic(),
        )
        self.conversations[conversation.conversation_id] = conversation
        request[_HIT_KEY].conversation_id = conversation.conversation_id
        first_hit.conversation_id = conversation.conversation_id
        session = _Session(self, request, ws, conversation)
        await session.run()


class _Session:
    """One live agent WebSocket: the initiation reply, then the message loop."""

    def __init__(
        self,
        sim: Simulator,
        request: web.Request,
        ws: web.WebSocketResponse,
        conversation: StoredConversation,
    ) -> None:
        self.sim = sim
        self.request = request
        self.ws = ws
        self.conversation = conversation
        self.lock = asyncio.Lock()
        self.pings: dict[int, float] = {}
        self.ping_ms: int | None = None

    async def send(self, payload: dict[str, Any]) -> bool:
        """Send one JSON frame; return False when the socket is gone."""
        if self.ws.closed:
            return False
        try:
            async with self.lock:
                await self.ws.send_str(json.dumps(payload))
        except (ConnectionError, RuntimeError):
            return False
        return True

    async def agent_says(self, text: str, *, parts: bool) -> bool:
        """Send one agent turn (with its streamed parts when enabled) and record it."""
        if self.sim.faults.latency > 0:
            await asyncio.sleep(self.sim.faults.latency)
        text += self.sim.faults.hostile_text or ""
        event_id = self.conversation.next_event_id()
        if parts and self.sim.stream_parts:
            pieces = [("start", ""), *(("delta", piece) for piece in _chunks(text)), ("stop", "")]
            for kind, piece in pieces:
                part = {"text": piece, "type": kind, "event_id": event_id}
                sent = await self.send({"type": "agent_chat_response_part", "text_response_part": part})
                if not sent:
                    return False
        self.conversation.add_turn(agent.AGENT, text)
        return await self.send(
            {
                "type": "agent_response",
                "agent_response_event": {"agent_response": text, "event_id": event_id},
            }
        )

    async def run(self) -> None:
        """Greet, then answer client frames until the socket closes."""
        conversation = self.conversation
        metadata = {
            "conversation_id": conversation.conversation_id,
            "agent_output_audio_format": AUDIO_FORMAT,
            "user_input_audio_format": AUDIO_FORMAT,
        }
        await self.send(
            {
                "type": "conversation_initiation_metadata",
                "conversation_initiation_metadata_event": metadata,
            }
        )
        opening = _first_message_override(conversation.initiation)
        if opening and not await self.agent_says(opening, parts=False):
            self.finish()
            return
        pinger = None
        if self.sim.ping_interval:
            pinger = asyncio.create_task(self.ping_loop(self.sim.ping_interval))
        try:
            if await self.fault_due():
                return
            async for message in self.ws:
                if message.type == WSMsgType.ERROR:
                    break
                if not await self.handle(message):
                    break
        finally:
            if pinger is not None:
                pinger.cancel()
            self.finish()

    def finish(self) -> None:
        """Mark the stored conversation ended."""
        conversation = self.conversation
        if conversation.ended is None:
            conversation.ended = time.monotonic()
        if conversation.status == "in-progress":
            conversation.status = "done"
        if conversation.close_code is None:
            conversation.close_code = self.ws.close_code

    async def fault_due(self) -> bool:
        """Close the socket as the `ws_close_code` fault says; return whether it did."""
        faults = self.sim.faults
        code = faults.ws_close_code
        if code is None or self.conversation.user_messages < faults.ws_close_after:
            return False
        self.conversation.status = "failed"
        self.conversation.close_code = code
        if code == 1006:
            transport = self.request.transport
            if transport is not None:
                transport.abort()
            return True
        await self.ws.close(code=code, message=b"Simulated server error")
        return True

    async def handle(self, message: Any) -> bool:
        """Act on one client frame; return False when the socket must stop."""
        conversation = self.conversation
        if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            return True
        text, data = _decode_frame(message)
        kind = _frame_kind(message, data)
        self.sim._ws_hit(self.request, text, kind, conversation.conversation_id)
        if data is None:
            return True
        if kind == "user_audio_chunk":
            conversation.audio_chunks += 1
        elif kind in ("user_message", "multimodal_message"):
            said = data.get("text")
            if isinstance(said, dict):
                said = said.get("text")
            if not isinstance(said, str):
                return True
            conversation.user_messages += 1
            conversation.add_turn(agent.USER, said)
            if await self.fault_due():
                return False
            return await self.agent_says(agent.reply(conversation.history), parts=True)
        elif kind == "contextual_update":
            update = data.get("text")
            if isinstance(update, str):
                conversation.contextual_updates.append(update)
                conversation.history.append((agent.CONTEXT, update))
        elif kind == "pong":
            event_id = data.get("event_id")
            conversation.pongs.append(event_id)
            sent = self.pings.pop(event_id, None) if isinstance(event_id, int) else None
            if sent is not None:
                self.ping_ms = int((time.monotonic() - sent) * 1000)
        return True

    async def ping_loop(self, interval: float) -> None:
        """Send a JSON `ping` every `interval` seconds while the socket is open."""
        while not self.ws.closed:
            await asyncio.sleep(interval)
            event_id = self.conversation.next_event_id()
            self.pings[event_id] = time.monotonic()
            event = {"event_id": event_id, "ping_ms": self.ping_ms}
            if not await self.send({"type": "ping", "ping_event": event}):
                return


def _peer_port(request: web.Request) -> int | None:
    """Return the client's source port, or None when the transport does not say."""
    transport = request.transport
    peername = transport.get_extra_info("peername") if transport is not None else None
    return peername[1] if isinstance(peername, tuple) and len(peername) >= 2 else None


def _new_conversation_id() -> str:
    return "conv_" + secrets.token_hex(16)


def _decode_frame(message: Any) -> tuple[str, dict[str, Any] | None]:
    """Return a frame's text (for the hit log) and its JSON object, or None if it has none."""
    if message.type == WSMsgType.BINARY:
        return bytes(message.data).decode("utf-8", "replace"), None
    text = str(message.data)
    try:
        data = json.loads(text)
    except ValueError:
        return text, None
    return text, data if isinstance(data, dict) else None


def _frame_kind(message: Any, data: dict[str, Any] | None) -> str:
    if message.type == WSMsgType.BINARY:
        return "binary"
    if data is None:
        return "invalid-json"
    kind = data.get("type")
    if kind is None and "user_audio_chunk" in data:
        return "user_audio_chunk"
    return kind if isinstance(kind, str) else "unknown"


def _first_message_override(initiation: dict[str, Any]) -> str:
    override = initiation.get("conversation_config_override")
    if isinstance(override, dict):
        section = override.get("agent")
        if isinstance(section, dict) and isinstance(section.get("first_message"), str):
            return str(section["first_message"])
    return agent.FIRST_MESSAGE


# running it ---------------------------------------------------------------------------------


@contextlib.contextmanager
def running_simulator(**kwargs: Any) -> Iterator[Simulator]:
    """Yield a started `Simulator` running on its own event loop in a daemon thread."""
    with running_in_thread(Simulator(**kwargs), "elevenlabs-simulator") as sim:
        yield sim


def _write_port_file(path: str | Path, port: int) -> None:
    """Write `port` to `path` atomically (a temporary file renamed over it)."""
    target = Path(path)
    handle, temporary = tempfile.mkstemp(dir=target.parent or ".", prefix=".port-")
    with os.fdopen(handle, "w") as out:
        out.write(f"{port}\n")
    os.replace(temporary, target)


async def _serve(host: str, port: int, port_file: str | Path | None, kwargs: Any) -> None:
    sim = Simulator(host, port, **kwargs)
    await sim.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
    try:
        if port_file is not None:
            _write_port_file(port_file, sim.port)
        print(f"ElevenLabs simulator listening on {sim.url}", flush=True)
        await stop.wait()
    finally:
        await sim.stop()


def serve(host: str = "127.0.0.1", port: int = 0, *, port_file: str | Path | None = None,
          **kwargs: Any) -> None:
    """Run the simulator until SIGINT/SIGTERM; print its URL, optionally write its port."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(host, port, port_file, kwargs))

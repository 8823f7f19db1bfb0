"""Offline server replay: a loopback HTTP + WebSocket server that answers a client from a capture, never the network.

Usage: ``with running_replay("out/flows.mitm") as server: ...`` then point the client at
``server.url`` (``ELEVENLABS_BASE_URL``), directly or through ``sessiontap record --upstream``.

- HTTP: each request is matched with ``Matcher`` (each recorded response served once, in
  recording order) and answered with the recorded status, headers and body; streamed bodies
  (NDJSON, SSE) are written back line by line. A miss answers HTTP 501 with
  ``X-Sessiontap-Replay: miss`` and a JSON ``detail`` naming the nearest recorded call.
- WebSocket: an upgrade picks the first unused recorded socket with the same endpoint and
  query, then ``WsReplay`` releases the recorded server messages of each step as the
  client's messages match. A miss closes the socket with ``MISS_CLOSE_CODE`` and a reason.
  Recorded binary frames cannot be replayed (``WsMessage`` keeps no bytes): they are
  skipped and counted in ``ReplayServer.skipped``, like audio frames the capture left out.
- Every miss is kept in ``ReplayServer.misses`` (``miss_findings`` makes them
  ``replay-miss`` findings, each at the flow of the replay that got it). The server opens no
  outbound connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web
from mitmproxy import http

from sessiontap.app.background import CLOSE_TIMEOUT, LoopbackServer, running_in_thread
from sessiontap.app.capture import flow_records, read_capture, redacted_records
from sessiontap.core import rules
from sessiontap.core.errors import SessiontapError
from sessiontap.core.model import HTTP, WEBSOCKET, Call, Exchange, Finding, FlowRecord, Note, SessionState, WsMessage
from sessiontap.core.protocol import SIGNED_URL_RE, frame_type, is_audio_frame, parse_frame
from sessiontap.core.redact import Redactor
from sessiontap.findings import write_findings
from sessiontap.replay.match import (
    DEFAULT_IGNORE_PATHS,
    DEFAULT_MATCH_ON,
    IgnorePaths,
    Matcher,
    Miss,
    WsMiss,
    WsReplay,
    WsStepMatch,
    describe,
    parse_json,
)
from sessiontap.router import rewrite_signed_url
from sessiontap.tagger import TAG_HEADER

if TYPE_CHECKING:
    from sessiontap.app.runner import RecordResult

MISS_STATUS = 501
MISS_CLOSE_CODE = 4000  # private-use range (RFC 6455): the client sent what the recording does not hold
IDLE_CLOSE_CODE = 4001  # the client sent nothing for idle_timeout seconds while the recording expected more
REPLAY_HEADER = "X-Sessiontap-Replay"  # hit | miss | error
REPLAY_FLOW_HEADER = "X-Sessiontap-Replay-Flow"  # the recorded flow answering (or nearest to a miss)
IDLE_CLOSE = 2.0  # seconds a finished recording waits for the client to close before closing itself
IDLE_TIMEOUT = 60.0  # seconds a socket waits for the next client message before giving up
START_TIMEOUT = 10.0
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
MAX_REASON_BYTES = 123  # the longest close reason a WebSocket close frame carries
# Headers that described the recorded connection or encoding, not the response now sent.
DROP_HEADERS = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "te", "trailer", "transfer-encoding",
    "upgrade", "content-length", "content-encoding", TAG_HEADER.lower(),
})
STREAM_TYPES = ("ndjson", "jsonl", "json-seq", "event-stream")
NO_BODY_STATUSES = frozenset({204, 304})
ALWAYS_IGNORED = ("user_id",)  # clients make a fresh user id each run; it names the user, not the content

ReplaySource = str | Path | Sequence[http.HTTPFlow] | Iterable[FlowRecord] | Mapping[str, FlowRecord]


# --- what is replayed --------------------------------------------------------------------------


@dataclass(slots=True)
class Recording:
    """The recorded flows a replay serves, in order (secrets masked), and any warning about the capture."""

    records: list[FlowRecord]
    warning: str | None = None


def load_recording(source: ReplaySource | Recording) -> Recording:
    """The Recording of a capture path, a list of flows or of records; a CaptureError when a path is unreadable."""
    if isinstance(source, Recording):
        return source
    if isinstance(source, str | Path):
        capture = read_capture(Path(source))
        return Recording(list(redacted_records(capture.records).values()), capture.warning)
    items = list(source.values() if isinstance(source, Mapping) else source)
    if all(isinstance(item, http.HTTPFlow) for item in items):
        return Recording(list(flow_records(items).values()))
    return Recording([item for item in items if isinstance(item, FlowRecord)])


def is_upgrade(ex: Exchange) -> bool:
    """True when the request asked for a WebSocket."""
    return ex.request_headers.get("upgrade", "").lower() == "websocket"


def is_socket(rec: FlowRecord) -> bool:
    """True when the recorded upgrade was accepted (a socket to replay), False for a refused one."""
    return rec.exchange.status == 101 or bool(rec.messages) or rec.close_code is not None


# --- requests and responses --------------------------------------------------------------------


def request_exchange(request: web.Request, body: bytes, flow_id: str) -> Exchange:
    """The core record of a request the replay server received (to match against the recording)."""
    return Exchange(
        flow_id=flow_id,
        method=request.method,
        url=str(request.url),
        path=request.raw_path.split("?", 1)[0],
        query=dict(request.query),
        request_headers={k.lower(): v for k, v in request.headers.items()},
        request_body=body,
        started=time.time(),
        client=request.remote or "",
    )


def redacted_exchange(ex: Exchange) -> Exchange:
    """A copy of a received request with its secrets masked (misses are kept and may be written)."""
    red = Redactor()
    headers = red.headers_(ex.request_headers)
    return replace(ex, url=red.url(ex.url), query={}, request_headers=headers,
                   request_body=red.body(ex.request_body) or b"")


def replay_headers(recorded: Mapping[str, str]) -> dict[str, str]:
    """The recorded response headers still true of the replayed response (hop-by-hop, length, encoding dropped)."""
    return {k: v for k, v in recorded.items() if k.lower() not in DROP_HEADERS}


def is_streamed(headers: Mapping[str, str]) -> bool:
    """True when the recorded response was a stream of lines (NDJSON, SSE): it is written back line by line."""
    kind = headers.get("content-type", "").lower()
    return any(name in kind for name in STREAM_TYPES)


def stream_chunks(body: bytes) -> list[bytes]:
    """A streamed body cut into its lines (line ends kept), as the server wrote them."""
    return body.splitlines(keepends=True) or [body]


def replay_body(ex: Exchange, origin: str) -> bytes:
    """The recorded response body, with a get-signed-url ``signed_url`` pointed back at this server."""
    body = ex.response_body or b""
    if SIGNED_URL_RE.search(ex.path):
        return rewrite_signed_url(body, origin) or body
    return body


def close_reason(text: str) -> str:
    """A close reason that fits a close frame (123 bytes of UTF-8), cut with an ellipsis."""
    raw = text.encode("utf-8")
    if len(raw) <= MAX_REASON_BYTES:
        return text
    return raw[: MAX_REASON_BYTES - 3].decode("utf-8", "ignore") + "…"


def sendable_close_code(code: int | None) -> int | None:
    """The close code to send for a recorded one: 1000 when unknown or 1005; None for 1006 (abort, no frame)."""
    if code is None or code == 1005:
        return 1000
    if code == 1006:
        return None
    return code if 1000 <= code <= 4999 and code not in (1004, 1015) else 1011


def live_message(msg: Any) -> WsMessage:
    """The core record of a client frame the server received."""
    if msg.type == WSMsgType.TEXT:
        text = str(msg.data)
        return WsMessage(True, time.time(), text, len(text.encode("utf-8")))
    return WsMessage(True, time.time(), None, len(bytes(msg.data)))


def _kind(msg: WsMessage | None) -> str | None:
    return frame_type(parse_frame(msg.text)) if msg is not None else None


def is_audio(msg: WsMessage) -> bool:
    """True for an audio frame (user_audio_chunk or audio event)."""
    return msg.text is not None and is_audio_frame(parse_json(msg.text))


def advance(replay: WsReplay, got: WsMessage) -> list[WsMessage] | WsMiss | None:
    """The recorded server messages a client message releases, None for a stray pong, or the WsMiss.

    Pings are timing: a pong the recording does not expect here is ignored, and recorded pong
    steps the client has not produced are passed over when the next step matches.
    """
    start = replay.position
    found = replay.feed(got)
    if isinstance(found, WsStepMatch):
        return list(found.send)
    if _kind(got) == "pong":
        return None
    passed: list[WsMessage] = []
    while not replay.done and _kind(replay.steps[replay.position].client) == "pong":
        passed += replay.steps[replay.position].server
        replay.position += 1
    retry = replay.feed(got) if replay.position != start else found
    if isinstance(retry, WsStepMatch):
        return passed + retry.send
    replay.position = start
    return found


# --- misses ------------------------------------------------------------------------------------


@dataclass(slots=True)
class ReplayMiss:
    """A request or client message the recording does not answer: what came, the nearest recorded flow, why."""

    protocol: str  # http | websocket
    method: str
    path: str
    message: str
    nearest_flow: str | None
    failures: list[tuple[str, str]] = field(default_factory=list)
    step: int | None = None  # WebSocket: the 1-based recorded step the client message was compared with
    request: Exchange | None = None  # the received request, secrets masked
    ws_text: str | None = None  # WebSocket: the client message, secrets masked
    timestamp: float = field(default_factory=time.time)

    def detail(self) -> dict[str, Any]:
        """The JSON ``detail`` of a miss response."""
        return {"status": "replay_miss", "message": self.message, "nearest_flow": self.nearest_flow,
                "failures": [{"matcher": name, "reason": reason} for name, reason in self.failures]}

    def finding(self, replayed_flow: str | None = None, calls: Sequence[Call] = ()) -> Finding:
        """The miss as a ``replay-miss`` finding (error): at the replayed flow and call that got it, when known.

        The nearest recorded flow (of the capture replayed, not of this replay) is evidence.
        """
        at = list(calls[-1:])  # a socket misses at its last call: the message that did not match
        note = Note(replayed_flow or "", "replay-miss", self.message, {
            "protocol": self.protocol, "method": self.method, "path": self.path, "step": self.step,
            "replayed_flow": replayed_flow, "nearest_flow": self.nearest_flow,
            "failures": [list(f) for f in self.failures], "call_ids": [c.id for c in at]})
        [finding] = rules.replay_miss(rules.Judged(SessionState(at[0].session if at else "", "", self.protocol),
                                                   note=note))
        return finding


def http_miss(miss: Miss, ws: bool = False) -> ReplayMiss:
    """The ReplayMiss of a request (or socket upgrade) no unused recorded call answers."""
    got = miss.got
    failures = list(miss.failures) or ([("served", "its response was already served")] if miss.served else [])
    return ReplayMiss(WEBSOCKET if ws else HTTP, got.method, got.path, miss.message(),
                      miss.nearest.flow_id if miss.nearest else None, failures, request=redacted_exchange(got))


def ws_miss(miss: WsMiss, rec: FlowRecord) -> ReplayMiss:
    """The ReplayMiss of a client message the recorded socket does not expect at this step."""
    text = Redactor().text(miss.got.text) if miss.got.text is not None else None
    return ReplayMiss(WEBSOCKET, "WS", rec.exchange.path, f"{describe(rec.exchange)}: {miss.message()}",
                      rec.exchange.flow_id, [("ws_message", miss.reason)], step=miss.position + 1, ws_text=text)


def miss_response(miss: ReplayMiss) -> web.Response:
    """HTTP 501 with ``X-Sessiontap-Replay: miss`` and the miss as JSON ``detail``."""
    headers = {REPLAY_HEADER: "miss"}
    if miss.nearest_flow:
        headers[REPLAY_FLOW_HEADER] = miss.nearest_flow
    return web.json_response({"detail": miss.detail()}, status=MISS_STATUS, headers=headers)


def error_response(ex: Exchange) -> web.Response:
    """HTTP 502 for a recorded call that got no response (the upstream failed while recording)."""
    message = f"the recorded {describe(ex)} got no response: {ex.error or 'unknown error'}"
    return web.json_response({"detail": {"status": "replay_recorded_error", "message": message}}, status=502,
                             headers={REPLAY_HEADER: "error", REPLAY_FLOW_HEADER: ex.flow_id})


def miss_findings(misses: Sequence[ReplayMiss], records: Sequence[FlowRecord], calls: Iterable[Call] = ()
                  ) -> list[Finding]:
    """The misses as findings, each tied to the flow of the replay's own capture that got it, in time order.

    That flow is the one answered ``X-Sessiontap-Replay: miss`` (HTTP) or closed with
    ``MISS_CLOSE_CODE`` (WebSocket); ``calls`` (the replay's analysis) give its session and call.
    """
    ordered = sorted(records, key=lambda r: r.exchange.started)
    answered = {HTTP: iter([r.exchange.flow_id for r in ordered if not r.websocket and r.exchange.status is not None
                            and r.exchange.response_headers.get(REPLAY_HEADER.lower()) == "miss"]),
                WEBSOCKET: iter([r.exchange.flow_id for r in ordered
                                 if r.websocket and r.close_code == MISS_CLOSE_CODE])}
    by_flow: dict[str, list[Call]] = {}
    for call in calls:
        by_flow.setdefault(call.flow_id, []).append(call)
    out = []
    for miss in sorted(misses, key=lambda m: m.timestamp):
        flow_id = next(answered[WEBSOCKET if miss.protocol == WEBSOCKET else HTTP], None)
        out.append(miss.finding(flow_id, by_flow.get(flow_id, []) if flow_id else []))
    return out


def record_misses(result: RecordResult, misses: Sequence[ReplayMiss]) -> None:
    """Add a replay's misses to its recorded analysis as replay-miss findings, and rewrite its findings.json."""
    if not misses or result.analysis is None:
        return
    try:
        records = read_capture(Path(result.out)).records
    except SessiontapError:
        records = []  # the findings still name the recorded flow nearest to each miss
    result.analysis.add_findings(miss_findings(misses, records, result.analysis.calls))
    result.verdict = result.analysis.verdict()
    write_findings(result.analysis, Path(result.out), result.redactor)


# --- the server --------------------------------------------------------------------------------


class _SubprotocolNoise(logging.Filter):
    """Drops aiohttp's per-socket warning that the client's subprotocols (e.g. `convai`) were not chosen.

    The replay answers each upgrade with the subprotocol the recorded server chose, none included:
    that is the point of a replay, not something to warn about once per socket.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "overlap server-known ones" not in record.getMessage()


_SUBPROTOCOL_NOISE = _SubprotocolNoise()


class ReplayServer(LoopbackServer):
    """Serves a capture on loopback: recorded HTTP responses and WebSocket conversations, matched, never fetched."""

    stop_message = b"sessiontap replay stopping"

    def __init__(self, source: ReplaySource | Recording, *, match_on: str | Iterable[str] = DEFAULT_MATCH_ON,
                 ignore: IgnorePaths = DEFAULT_IGNORE_PATHS, repeat_last: bool = False, host: str = "127.0.0.1",
                 port: int = 0, pace: float = 0.0, idle_close: float = IDLE_CLOSE,
                 idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.recording = load_recording(source)
        records = self.recording.records
        self._http = [r for r in records if not is_upgrade(r.exchange)]
        self._sockets = [r for r in records if is_upgrade(r.exchange)]
        self.http = Matcher([r.exchange for r in self._http], match_on, ignore, repeat_last)
        self.sockets = Matcher([r.exchange for r in self._sockets], match_on, ignore, repeat_last)
        self.ignore = ignore
        super().__init__(host, port)
        self.pace, self.idle_close, self.idle_timeout = pace, idle_close, idle_timeout
        self.misses: list[ReplayMiss] = []
        self.served: list[str] = []  # recorded flow ids answered, in order
        self.skipped: Counter[str] = Counter()  # binary_frames, audio_frames, client_audio, stray_pongs
        self._ids = itertools.count(1)

    @property
    def unused(self) -> list[str]:
        """The recorded flow ids never served (calls the client did not make this time)."""
        pairs = [*zip(self._http, self.http.served, strict=True), *zip(self._sockets, self.sockets.served, strict=True)]
        return [rec.exchange.flow_id for rec, count in pairs if not count]

    async def start(self) -> None:
        """Bind the server (port 0 picks a free port) and start serving."""
        logging.getLogger("aiohttp.websocket").addFilter(_SUBPROTOCOL_NOISE)  # idempotent
        app = web.Application(client_max_size=MAX_MESSAGE_BYTES)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        await self._serve(app)

    def _miss(self, miss: ReplayMiss) -> ReplayMiss:
        self.misses.append(miss)
        return miss

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._socket(request)
        got = request_exchange(request, await request.read(), f"replay-{next(self._ids)}")
        found = self.http.find(got)
        if isinstance(found, Miss):
            return miss_response(self._miss(http_miss(found)))
        return await self._answer(request, self._http[found.index].exchange)

    async def _answer(self, request: web.Request, ex: Exchange) -> web.StreamResponse:
        self.served.append(ex.flow_id)
        if ex.status is None:
            return error_response(ex)
        headers = {**replay_headers(ex.response_headers), REPLAY_HEADER: "hit", REPLAY_FLOW_HEADER: ex.flow_id}
        body = b"" if ex.status in NO_BODY_STATUSES else replay_body(ex, f"{request.scheme}://{request.host}")
        if not is_streamed(ex.response_headers) or not body:
            return web.Response(status=ex.status, headers=headers, body=body or None)
        response = web.StreamResponse(status=ex.status, headers=headers)
        await response.prepare(request)
        for chunk in stream_chunks(body):
            await response.write(chunk)
            if self.pace > 0:
                await asyncio.sleep(self.pace)
        await response.write_eof()
        return response

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        if not web.WebSocketResponse().can_prepare(request).ok:
            return web.json_response({"detail": "Expected a WebSocket upgrade"}, status=400)
        got = request_exchange(request, b"", f"replay-{next(self._ids)}")
        found = self.sockets.find(got)
        if isinstance(found, Miss):
            return miss_response(self._miss(http_miss(found, ws=True)))
        rec = self._sockets[found.index]
        if not is_socket(rec):
            return await self._answer(request, rec.exchange)  # a refused upgrade: refused again
        protocol = rec.exchange.response_headers.get("sec-websocket-protocol", "")
        ws = web.WebSocketResponse(protocols=[p.strip() for p in protocol.split(",") if p.strip()],
                                   max_msg_size=MAX_MESSAGE_BYTES, timeout=CLOSE_TIMEOUT)
        self.served.append(rec.exchange.flow_id)
        await ws.prepare(request)
        self._open_sockets.add(ws)
        try:
            await self._converse(request, ws, rec)
        finally:
            self._open_sockets.discard(ws)
        return ws

    async def _send(self, ws: web.WebSocketResponse, messages: Sequence[WsMessage]) -> bool:
        for msg in messages:
            if msg.text is None:
                self.skipped["binary_frames"] += 1
                continue
            if ws.closed:
                return False
            try:
                await ws.send_str(msg.text)
            except (ConnectionError, RuntimeError):
                return False
            if self.pace > 0:
                await asyncio.sleep(self.pace)
        return True

    async def _close_as_recorded(self, request: web.Request, ws: web.WebSocketResponse, code: int | None) -> None:
        sendable = sendable_close_code(code)
        if sendable is None and request.transport is not None:
            request.transport.abort()  # the recording ended without a close frame (1006)
            return
        await ws.close(code=sendable or 1000)

    async def _converse(self, request: web.Request, ws: web.WebSocketResponse, rec: FlowRecord) -> None:
        replay = WsReplay(rec.messages, self.ignore)
        if rec.audio.get("frames"):
            self.skipped["audio_frames"] += rec.audio["frames"]
        server_closed = rec.closed_by_client is False
        if not await self._send(ws, replay.opening):
            return
        while not ws.closed and not (replay.done and server_closed):
            try:
                msg = await ws.receive(timeout=self.idle_close if replay.done else self.idle_timeout)
            except TimeoutError:
                break
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY) and not await self._on_message(ws, rec, replay, msg):
                return
        if ws.closed:
            return
        if replay.done:
            await self._close_as_recorded(request, ws, rec.close_code)
        else:
            reason = f"sessiontap replay: no client message for {self.idle_timeout:g} s"
            await ws.close(code=IDLE_CLOSE_CODE, message=close_reason(reason).encode("utf-8"))

    async def _on_message(self, ws: web.WebSocketResponse, rec: FlowRecord, replay: WsReplay, msg: Any) -> bool:
        """Answer one client frame with the recorded step; False when the socket closed (on a miss) or is gone."""
        got = live_message(msg)
        if rec.audio.get("from_client", 0) and is_audio(got):  # the capture left the client's audio out
            self.skipped["client_audio"] += 1
            return True
        found = advance(replay, got)
        if found is None:
            self.skipped["stray_pongs"] += 1
            return True
        if isinstance(found, WsMiss):
            self._miss(ws_miss(found, rec))
            reason = close_reason(f"replay miss: {found.reason}")
            await ws.close(code=MISS_CLOSE_CODE, message=reason.encode("utf-8"))
            return False
        return await self._send(ws, found)


# --- running it --------------------------------------------------------------------------------


@contextlib.contextmanager
def running_replay(source: ReplaySource | Recording, **options: Any) -> Iterator[ReplayServer]:
    """Yield a started ReplayServer on its own event loop in a daemon thread; stopped on exit."""
    server = ReplayServer(source, **options)  # load (and fail) before any thread starts
    with running_in_thread(server, "sessiontap-replay", START_TIMEOUT) as started:
        yield started

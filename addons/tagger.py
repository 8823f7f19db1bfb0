"""Session tagging: each live call decoded, given a session id, tagged upstream and on the response."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from functools import partial
from typing import IO, Any, ClassVar, Protocol

from mitmproxy import ctx, http
from mitmproxy.addonmanager import Loader

from sessiontap.bridge import adapt
from sessiontap.bridge.guard import guarded, in_thread
from sessiontap.bridge.options import Check, check_updated
from sessiontap.core.code import CodeTrace, Frame, frames_of
from sessiontap.core.decode import Decoded, SimulateRequest, WsDecoder, decode_exchange, decode_request
from sessiontap.core.model import Call, Closing, Note
from sessiontap.core.protocol import header, identifier, is_conversational, is_websocket_path
from sessiontap.core.sessions import SessionTracker, work_out_keys
from sessiontap.core.settings import DEFAULTS, check_session_gap

log = logging.getLogger("sessiontap")

TAG_HEADER = "X-Sessiontap-Session"
META_KEY = "sessiontap"
BIG_BODY = 1 << 20  # bytes from which a body is decoded in a worker thread, off the event loop
BIG_ENCODED = BIG_BODY // 64  # the same for a compressed body (gzip, br...): JSON may grow 70 times once decoded


def is_big(message: http.Message) -> bool:
    """Whether the body is decoded in a worker thread: big, or compressed and maybe big once decoded."""
    size = len(message.raw_content or b"")
    return size >= BIG_BODY or (size >= BIG_ENCODED and "content-encoding" in message.headers)


class Listener(Protocol):
    """An addon that wants each call, note and socket end the tagger decodes (Findings, Journal)."""

    def on_call(self, call: Call, flow: http.HTTPFlow) -> None: ...

    def on_note(self, note: Note, flow: http.HTTPFlow) -> None: ...

    def on_close(self, closing: Closing, flow: http.HTTPFlow, info: dict[str, Any]) -> None: ...

    def on_first_message(self, agent_id: str, text: str) -> None: ...


class SessionTagger:
    """Decodes each conversational flow as it happens and tags it with its session id."""

    CHECKS: ClassVar[dict[str, Check]] = {"sessiontap_session_gap": check_session_gap}

    def __init__(self, listeners: list[Listener] | None = None) -> None:
        self.tracker = SessionTracker()
        self.pending: dict[str, SimulateRequest] = {}  # flow id -> its call, decoded from the request
        self.sockets: dict[str, WsDecoder] = {}
        self.listeners: list[Listener] = list(listeners or [])  # in order: findings, then the journal
        self.code = CodeTrace()
        self.trace: IO[bytes] | None = None
        # What else reads a big body, done with its decoding in the worker thread (the secret check that
        # the scrubber and the journal then find answered): pure functions of the body.
        self.prework: list[Callable[[bytes], object]] = []

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "sessiontap_session_header", str, DEFAULTS.session_header,
            "Request header in which the client declares its session id ('' for none).",
        )
        loader.add_option(
            "sessiontap_session_field", str, DEFAULTS.session_field,
            "Dotted JSON body field in which the client declares its session id, e.g. "
            "'metadata.session_id' ('' for none).",
        )
        loader.add_option(
            "sessiontap_client", str, "",
            "Name of the client that makes all the traffic ('' : each client is told apart by its address, "
            "User-Agent and key fingerprint). `sessiontap record -- CMD` names the run.",
        )
        loader.add_option(
            "sessiontap_code_trace", str, "",
            "File of the client's code trace (where each connection and request came from); "
            "`sessiontap record -- CMD` keeps one as code.jsonl unless --no-code-trace.",
        )
        loader.add_option(
            "sessiontap_session_gap", float, DEFAULTS.session_gap,
            "Seconds after which a call with no other evidence no longer joins the same client's "
            "latest session.",
        )

    def configure(self, updated: set[str]) -> None:
        check_updated(self.CHECKS, updated)
        if "sessiontap_session_gap" in updated:
            self.tracker.session_gap = ctx.options.sessiontap_session_gap

    # -- the hand-offs -------------------------------------------------------------------
    def _emit(self, flow: http.HTTPFlow, found: Decoded) -> None:
        for call in found.calls:
            if not call.session:
                self.tracker.assign(call)
            self.tracker.complete(call)
            call.prefix_keys = None  # worked out ahead for the tracker, which is done with them
            meta = flow.metadata.setdefault(META_KEY, {})
            meta.update(session=call.session, session_source=call.session_source)
            meta.setdefault("calls", []).append(call.id)
            for listener in self.listeners:
                listener.on_call(call, flow)
        for note in found.notes:
            for listener in self.listeners:
                listener.on_note(note, flow)
        for agent, text in found.first_messages.items():
            for listener in self.listeners:
                listener.on_first_message(agent, text)

    def on_error(self, hook: str, flow: object, error: Exception) -> None:
        """A hook failed: keep the traffic, note the failure as an unparsed payload."""
        flow_id = getattr(flow, "id", "")
        found = Decoded(notes=[Note(flow_id, "analysis-error", f"{hook}: {type(error).__name__}: {error}")])
        if isinstance(flow, http.HTTPFlow):
            self._emit(flow, found)

    def _code(self, flow: http.HTTPFlow) -> list[Frame]:
        """The client's frames that sent this request, from the code trace the record run keeps (none without)."""
        path = ctx.options.sessiontap_code_trace
        if not path:
            return []
        if self.trace is None or self.trace.name != path:  # opened once; new lines are read as they come
            self._close_trace()
            try:
                self.trace = open(path, "rb")  # noqa: SIM115 - kept open until done()
            except OSError:
                return []
        data = self.trace.read()
        end = data.rfind(b"\n") + 1  # whole lines only; a line being written is read next time
        self.trace.seek(end - len(data), 1)
        self.code.feed(data[:end].decode("utf-8", "replace").splitlines())
        peer = flow.client_conn.peername
        return self.code.code_for(peer[1] if peer else None, flow.request.timestamp_start)

    def _close_trace(self) -> None:
        if self.trace is not None:
            self.trace.close()
            self.trace = None

    def done(self) -> None:
        self._close_trace()

    def _options(self) -> tuple[str, str]:
        return ctx.options.sessiontap_session_header, ctx.options.sessiontap_session_field

    # -- hooks ----------------------------------------------------------------------------
    @guarded
    def request(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        if not flow.live or not is_conversational(flow.request.path.split("?", 1)[0]):
            return None
        client = adapt.client_identity(flow, ctx.options.sessiontap_client)
        meta: dict[str, Any] = {adapt.CLIENT_KEY: client}
        code = self._code(flow)
        if code:
            meta[adapt.CODE_KEY] = [list(f) for f in code]
        if is_websocket_path(flow.request.path.split("?", 1)[0]):
            name = self._options()[0]
            declared = identifier(header(adapt.request_headers(flow), name)) if name else None
            sid = declared or f"ws-{flow.id[:8]}"
            flow.request.headers[TAG_HEADER] = sid
            flow.metadata[META_KEY] = {"session": sid, "session_source": "client" if declared else "", **meta}
            return None
        flow.metadata[META_KEY] = meta
        big = is_big(flow.request)
        work = partial(self._decode_request, flow, big, *self._options())
        if big:
            return in_thread(self, "request", flow, work, partial(self._requested, flow))
        self._requested(flow, work())
        return None

    def _decode_request(self, flow: http.HTTPFlow, big: bool, header: str, field: str) -> SimulateRequest | None:
        """The request's call, decoded (reads the flow, changes nothing: a big body's runs in a worker thread)."""
        exchange = adapt.exchange(flow)  # the body decoded (gzip...) here too: off the loop when big
        started = decode_request(exchange, header, field)
        if big:
            if started is not None:
                work_out_keys(started.decoded.calls[0])
            self._prework(exchange.request_body)
        return started

    def _requested(self, flow: http.HTTPFlow, started: SimulateRequest | None) -> None:
        if started is None:
            return
        call = started.decoded.calls[0]
        self.tracker.assign(call)
        if flow.error is not None:  # it failed while its body was decoded off the loop: its error hook has run
            self._ended_in_error(flow, started)
            return
        self.pending[flow.id] = started
        flow.request.headers[TAG_HEADER] = call.session
        flow.metadata[META_KEY].update(session=call.session, session_source=call.session_source)

    def _prework(self, body: bytes | None) -> None:
        """A head start for later hooks: a failure here costs them the time, never the decode."""
        if not body:
            return
        for fn in self.prework:
            try:
                fn(body)
            except Exception:  # noqa: BLE001 - fail open
                log.exception("sessiontap: prework %s failed", getattr(fn, "__qualname__", fn))

    @guarded
    def response(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        if not flow.live or flow.response is None:
            return None
        if flow.websocket is not None:
            self.sockets[flow.id] = WsDecoder(
                flow.id, flow.request.url, adapt.request_headers(flow), flow.request.timestamp_start,
                adapt.client_identity(flow), self._options()[0], adapt.connection(flow),
                frames_of(flow.metadata.get(META_KEY, {}).get(adapt.CODE_KEY)),
            )
            flow.response.headers[TAG_HEADER] = flow.metadata.get(META_KEY, {}).get("session", "")
            return None
        started = self.pending.pop(flow.id, None)  # its request was decoded when it was sent: parsed once
        big_request = started is None and is_big(flow.request)  # not decoded yet: decoded with the response
        big_response = is_big(flow.response)
        work = partial(self._decode_response, flow, started, big_request, big_response, *self._options())
        if big_request or big_response:
            return in_thread(self, "response", flow, work, partial(self._responded, flow, started))
        self._responded(flow, started, work())
        return None

    def _decode_response(self, flow: http.HTTPFlow, started: SimulateRequest | None, big_request: bool,
                         big_response: bool, header: str, field: str) -> Decoded:
        """The call completed with its response (reads the flow, changes nothing: runs in a worker thread when big)."""
        exchange = adapt.exchange(flow)
        if started is not None:
            found = started.answered(exchange)
        else:
            found = decode_exchange(exchange, header, field)
            if big_request:
                for call in found.calls:
                    work_out_keys(call)
        if big_response:
            self._prework(exchange.response_body)
        return found

    def _responded(self, flow: http.HTTPFlow, started: SimulateRequest | None, found: Decoded) -> None:
        if started is not None and flow.response is not None:
            flow.response.headers[TAG_HEADER] = started.decoded.calls[0].session
        self._emit(flow, found)

    @guarded
    def error(self, flow: http.HTTPFlow) -> None:
        started = self.pending.pop(flow.id, None)  # first: a flow killed while it waited is no longer live
        if started is None and (not flow.live or not is_conversational(flow.request.path.split("?", 1)[0])):
            return
        self._ended_in_error(flow, started)

    def _ended_in_error(self, flow: http.HTTPFlow, started: SimulateRequest | None) -> None:
        msg = flow.error.msg if flow.error else "unknown error"
        if started is None:  # no call to pin it on: the failure is a note of its own
            self._emit(flow, Decoded(notes=[Note(flow.id, "upstream-error", msg)]))
            return
        call = started.decoded.calls[0]
        call.error, call.ended = msg, flow.error.timestamp if flow.error else call.started
        self._emit(flow, Decoded(calls=[call], notes=started.decoded.notes))

    @guarded
    def websocket_message(self, flow: http.HTTPFlow) -> None:
        dec = self.sockets.get(flow.id)
        if dec is None or flow.websocket is None:
            return
        self._emit(flow, dec.feed(adapt.ws_message(flow.websocket.messages[-1])))

    @guarded
    def websocket_end(self, flow: http.HTTPFlow) -> None:
        dec = self.sockets.pop(flow.id, None)
        if dec is None or flow.websocket is None:
            return
        ws = flow.websocket
        found = dec.close(ws.close_code, ws.timestamp_end)
        self._emit(flow, found)
        meta = flow.metadata.setdefault(META_KEY, {})
        meta.update(conversation_id=dec.conversation_id, user_id=dec.user_id, turns=dec.turns)
        closing = Closing(dec.conversation_id or flow.id, flow.id, ws.close_code, ws.closed_by_client,
                          ws.timestamp_end or 0.0)
        self.tracker.close(closing.key, closing.time or flow.request.timestamp_start)
        info = {"turns": dec.turns, "audio_frames": dec.audio_frames, "audio_bytes": dec.audio_bytes}
        for listener in self.listeners:
            listener.on_close(closing, flow, info)

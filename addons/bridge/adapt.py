"""The only place that touches mitmproxy flows: flows to core records, and redacted flow copies."""

from __future__ import annotations

import codecs
import hashlib
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlparse

from mitmproxy import http
from mitmproxy.net import encoding
from mitmproxy.net.http import url as mitm_url
from mitmproxy.websocket import WebSocketData, WebSocketMessage
from wsproto.frame_protocol import Opcode

from sessiontap.core.code import frames_of
from sessiontap.core.model import Exchange, FlowRecord, WsMessage
from sessiontap.core.protocol import identifier
from sessiontap.core.redact import Redactor


def _headers(h: http.Headers | None) -> dict[str, str]:
    """Lower-cased names to values, a repeated header's values joined by ", " (as ``Headers[name]`` gives them)."""
    return {} if h is None else _from_fields(h.fields)


def _from_fields(fields: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """Headers from their raw fields, in one pass.

    ``Headers.items()`` looks each name up again, which is quadratic in the headers and was the
    largest part of reading a capture.
    """
    out: dict[str, str] = {}
    for raw_name, raw_value in fields:
        name = raw_name.decode("utf-8", "surrogateescape").lower()
        value = raw_value.decode("utf-8", "surrogateescape")
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


CLIENT_KEY = "client"  # in flow.metadata["sessiontap"]: the client as the live run named it
CODE_KEY = "code"  # in flow.metadata["sessiontap"]: the client's frames that sent the flow
KEY_HEADERS = ("xi-api-key", "authorization", "x-api-key", "api-key")
Peer = tuple[str, int] | list[Any] | None  # a client address: a flow's, or as a flow file holds it
MessageParts = tuple[Iterable[tuple[bytes, bytes]], bytes | None]  # header fields and raw body


def _connection(peer: Peer) -> str:
    return f"{peer[0]}:{peer[1]}" if peer else ""


def connection(flow: http.HTTPFlow) -> str:
    """The client connection as "ip:port" ("" when unknown)."""
    return _connection(flow.client_conn.peername)


def key_fingerprint(headers: dict[str, str]) -> str:
    """A short fingerprint of the API key a request carries, never the key ("" when none)."""
    key = next((headers[name] for name in KEY_HEADERS if headers.get(name)), "")
    return hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()[:8] if key else ""


def client_identity(flow: http.HTTPFlow, run: str = "", headers: dict[str, str] | None = None) -> str:
    """Who made the flow: the name the live run gave it, else ``run``, else address + User-Agent + key fingerprint.

    The address is taken without its port: every new connection has a new port, and one client
    opens many.
    """
    return _identity(flow.metadata, flow.client_conn.peername,
                     _headers(flow.request.headers) if headers is None else headers, run)


def _identity(metadata: dict[str, Any], peer: Peer, headers: dict[str, str], run: str = "") -> str:
    named = metadata.get("sessiontap", {}).get(CLIENT_KEY)
    if isinstance(named, str) and named:
        return named
    if run:
        return run
    parts = [str(peer[0]) if peer else "", headers.get("user-agent", ""), key_fingerprint(headers)]
    return identifier(" ".join(p for p in parts if p)) or ""  # an undecodable User-Agent byte as its escape


def _content(raw: bytes | None, headers: dict[str, str]) -> bytes | None:
    """A body, decoded as ``get_content(strict=False)`` does it: left as it is when its encoding fails.

    Decoded as ``encoding.decode`` does it but without its cache of the last body, which is one
    for the whole process: this runs in the tagger's worker thread too, and a switch between the
    cache's check and its read would hand the event loop another body.
    """
    coding = headers.get("content-encoding")
    if raw is None or not coding:
        return raw
    coding = coding.lower()
    try:
        decode = encoding.custom_decode.get(coding)
        content = decode(raw) if decode is not None else codecs.decode(raw, coding, "strict")
    except TypeError:
        raise
    except Exception:  # noqa: BLE001 - what encoding.decode turns into the ValueError get_content swallows
        return raw
    return raw if isinstance(content, str) else content  # a text codec named as content-encoding


def _query(url: str) -> dict[str, str]:
    """A repeated parameter's first value, as ``Request.query[name]`` gives it."""
    query: dict[str, str] = {}
    for name, value in mitm_url.decode(urlparse(url).query):
        query.setdefault(name, value)
    return query


def _exchange(flow_id: str, method: str, url: str, path: str, request: MessageParts, started: float,
              response: tuple[int, MessageParts, float | None] | None, error: tuple[str, float] | None,
              peer: Peer, metadata: dict[str, Any]) -> Exchange:
    """The core record of an HTTP exchange, from its parts however they were read."""
    request_headers = _from_fields(request[0])
    response_headers = _from_fields(response[1][0]) if response else {}
    ended = response[2] if response else None
    return Exchange(
        flow_id=flow_id,
        method=method,
        url=url,
        path=path.split("?", 1)[0],
        query=_query(url),
        request_headers=request_headers,
        request_body=_content(request[1], request_headers) or b"",
        started=started,
        status=response[0] if response else None,
        response_headers=response_headers,
        response_body=_content(response[1][1], response_headers) if response else None,
        ended=ended or (error[1] if error else None),
        error=error[0] if error else None,
        client=_identity(metadata, peer, request_headers),
        connection=_connection(peer),
        code=frames_of(metadata.get("sessiontap", {}).get(CODE_KEY)),
    )


def exchange(flow: http.HTTPFlow) -> Exchange:
    """The core record of an HTTP flow (request, and response or error when present)."""
    req, resp, err = flow.request, flow.response, flow.error
    return _exchange(
        flow.id, req.method, req.url, req.path, (req.headers.fields, req.raw_content), req.timestamp_start,
        (resp.status_code, (resp.headers.fields, resp.raw_content), resp.timestamp_end) if resp else None,
        (err.msg, err.timestamp) if err else None, flow.client_conn.peername, flow.metadata)


def request_headers(flow: http.HTTPFlow) -> dict[str, str]:
    """The request headers, lower-cased names."""
    return _headers(flow.request.headers)


def _ws_message(is_text: bool, from_client: bool, content: bytes, timestamp: float) -> WsMessage:
    text = content.decode("utf-8", "replace") if is_text else None  # a text frame need not be UTF-8
    return WsMessage(from_client=from_client, timestamp=timestamp, text=text, size=len(content))


def ws_message(msg: object) -> WsMessage:
    """The core record of one mitmproxy WebSocket message."""
    assert isinstance(msg, WebSocketMessage)
    return _ws_message(msg.is_text, msg.from_client, msg.content, msg.timestamp)


def record(flow: http.HTTPFlow) -> FlowRecord:
    """A flow as a record: its exchange and, for a WebSocket, its messages and how it closed (nothing redacted)."""
    rec = FlowRecord(exchange(flow))
    ws = flow.websocket
    if ws is not None:
        rec.websocket, rec.messages = True, [ws_message(m) for m in ws.messages]
        rec.close_code, rec.closed_by_client, rec.socket_ended = ws.close_code, ws.closed_by_client, ws.timestamp_end
    return rec


def record_of_state(state: dict[str, Any]) -> FlowRecord:
    """The same record from a flow's state as a flow file holds it (current format), without building the flow."""
    req, resp, err, ws = state["request"], state["response"], state["error"], state["websocket"]
    method = _text(req["method"]).upper()
    path = _text(req["path"])
    if method == "CONNECT":
        url = f"{req['host']}:{req['port']}"
    else:
        url = mitm_url.unparse(_text(req["scheme"]), req["host"], req["port"], "" if path == "*" else path)
    rec = FlowRecord(_exchange(
        state["id"], method, url, path, (req["headers"], req["content"]), req["timestamp_start"],
        (resp["status_code"], (resp["headers"], resp["content"]), resp["timestamp_end"]) if resp else None,
        (err["msg"], err["timestamp"]) if err else None, state["client_conn"].get("peername"), state["metadata"]))
    if ws is not None:
        rec.websocket, rec.messages = True, [_ws_message(kind == Opcode.TEXT, from_client, content, timestamp)
                                             for kind, from_client, content, timestamp, *_ in ws["messages"]]
        rec.close_code, rec.closed_by_client, rec.socket_ended = (ws["close_code"], ws["closed_by_client"],
                                                                  ws["timestamp_end"])
    return rec


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def redact_request(req: http.Request, redactor: Redactor) -> None:
    """Mask the secrets of a request in place: URL, headers and body."""
    url = req.url
    masked = redactor.url(url)
    if masked != url:
        req.url = masked
    _redact_headers(req.headers, redactor)
    body = req.get_content(strict=False)
    red = redactor.body(body)
    if red != body:
        req.content = red


def redact_response(resp: http.Response, redactor: Redactor) -> None:
    """Mask the secrets of a response in place: headers and body."""
    _redact_headers(resp.headers, redactor)
    if resp.raw_content is not None:
        body = resp.get_content(strict=False)
        red = redactor.body(body)
        if red != body:
            resp.content = red


def redact_messages(messages: list[WebSocketMessage], redactor: Redactor) -> None:
    """Mask the secrets of WebSocket text messages in place."""
    for m in messages:
        if m.is_text:
            red = redactor.body(m.content)
            if red != m.content and red is not None:
                m.content = red


def _redact_headers(headers: http.Headers, redactor: Redactor) -> None:
    current = _headers(headers)
    for name, value in redactor.headers_(current).items():
        if current[name] != value:
            headers[name] = value


def redact(flow: http.HTTPFlow, redactor: Redactor) -> None:
    """Mask every secret of a flow in place: request, response, messages and error."""
    redact_request(flow.request, redactor)
    if flow.response is not None:
        redact_response(flow.response, redactor)
    if flow.websocket is not None:
        redact_messages(flow.websocket.messages, redactor)
    if flow.error is not None:
        flow.error.msg = redactor.text(flow.error.msg)
    flow.metadata.pop("proxyauth", None)  # mitmproxy keeps the proxy user and password there


def sent_state(flow: http.HTTPFlow, redactor: Redactor) -> dict[str, Any]:
    """The state of a finished flow for a capture file, every secret masked.

    What has surely been sent (the request, once its response or error came back; a closed
    socket's messages) is masked in the flow itself, as the scrubber masks it, which spares the
    copy that cost most of a save. The response may still be on its way to the client, so only
    its state is masked, and only when it holds something to mask. Metadata is made encodable.
    """
    redact_request(flow.request, redactor)
    if flow.websocket is not None and flow.websocket.timestamp_end is not None:
        redact_messages(flow.websocket.messages, redactor)
    if flow.error is not None:
        flow.error.msg = redactor.text(flow.error.msg)
    flow.metadata.pop("proxyauth", None)
    state = flow.get_state()
    if flow.response is not None and _holds_secret(flow.response, redactor):
        copy = http.Response.from_state(state["response"])
        redact_response(copy, redactor)
        state["response"] = copy.get_state()
    if flow.websocket is not None and flow.websocket.timestamp_end is None:  # saved at shutdown, still open
        copy_ws = WebSocketData.from_state(state["websocket"])
        redact_messages(copy_ws.messages, redactor)
        state["websocket"] = copy_ws.get_state()
    state["metadata"] = _encodable(state["metadata"])
    return state


def _holds_secret(resp: http.Response, redactor: Redactor) -> bool:
    headers = _headers(resp.headers)
    if redactor.headers_(headers) != headers:
        return True
    return redactor.may_hold_secret(_content(resp.raw_content, headers) or b"")


def redacted_copy(flow: http.HTTPFlow, redactor: Redactor) -> http.HTTPFlow:
    """An id-preserving deep copy of the flow with every secret removed; the live flow is untouched."""
    f = http.HTTPFlow.from_state(flow.get_state())
    assert isinstance(f, http.HTTPFlow)
    redact(f, redactor)
    f.metadata = _encodable(f.metadata)
    return f


def _encodable(value: Any) -> Any:
    """Metadata whose every text encodes as UTF-8 (lone surrogates as escapes): else the flow cannot be written."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_encodable(k): _encodable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_encodable(v) for v in value)
    return value

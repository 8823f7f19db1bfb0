"""The only place that touches mitmproxy flows: flows to core records, and redacted flow copies."""

from __future__ import annotations

import hashlib
from typing import Any

from mitmproxy import http
from mitmproxy.websocket import WebSocketData, WebSocketMessage

from sessiontap.core.code import frames_of
from sessiontap.core.model import Exchange, WsMessage
from sessiontap.core.protocol import identifier
from sessiontap.core.redact import Redactor


def _headers(h: http.Headers | None) -> dict[str, str]:
    """Lower-cased names to values, a repeated header's values joined by ", " (as ``Headers[name]`` gives them).

    Read from the raw fields in one pass: ``Headers.items()`` looks each name up again, which is
    quadratic in the headers and was the largest part of reading a capture.
    """
    out: dict[str, str] = {}
    if h is None:
        return out
    for raw_name, raw_value in h.fields:
        name = raw_name.decode("utf-8", "surrogateescape").lower()
        value = raw_value.decode("utf-8", "surrogateescape")
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


CLIENT_KEY = "client"  # in flow.metadata["sessiontap"]: the client as the live run named it
CODE_KEY = "code"  # in flow.metadata["sessiontap"]: the client's frames that sent the flow
KEY_HEADERS = ("xi-api-key", "authorization", "x-api-key", "api-key")


def connection(flow: http.HTTPFlow) -> str:
    """The client connection as "ip:port" ("" when unknown)."""
    peer = flow.client_conn.peername
    return f"{peer[0]}:{peer[1]}" if peer else ""


def key_fingerprint(headers: dict[str, str]) -> str:
    """A short fingerprint of the API key a request carries, never the key ("" when none)."""
    key = next((headers[name] for name in KEY_HEADERS if headers.get(name)), "")
    return hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()[:8] if key else ""


def client_identity(flow: http.HTTPFlow, run: str = "", headers: dict[str, str] | None = None) -> str:
    """Who made the flow: the name the live run gave it, else ``run``, else address + User-Agent + key fingerprint.

    The address is taken without its port: every new connection has a new port, and one client
    opens many.
    """
    named = flow.metadata.get("sessiontap", {}).get(CLIENT_KEY)
    if isinstance(named, str) and named:
        return named
    if run:
        return run
    peer = flow.client_conn.peername
    headers = _headers(flow.request.headers) if headers is None else headers
    parts = [str(peer[0]) if peer else "", headers.get("user-agent", ""), key_fingerprint(headers)]
    return identifier(" ".join(p for p in parts if p)) or ""  # an undecodable User-Agent byte as its escape


def _content(message: http.Message, headers: dict[str, str]) -> bytes | None:
    """A message's body, decoded (``get_content(strict=False)``), with its headers already read."""
    if message.raw_content is None or not headers.get("content-encoding"):
        return message.raw_content  # each lookup in mitmproxy's Headers walks them all: one less a body
    return message.get_content(strict=False)


def exchange(flow: http.HTTPFlow) -> Exchange:
    """The core record of an HTTP flow (request, and response or error when present)."""
    req = flow.request
    resp = flow.response
    request_headers = _headers(req.headers)
    response_headers = _headers(resp.headers) if resp else {}
    query: dict[str, str] = {}
    for name, value in req.query.fields:
        query.setdefault(name, value)  # a repeated parameter's first value, as ``query[name]`` gives it
    return Exchange(
        flow_id=flow.id,
        method=req.method,
        url=req.url,
        path=req.path.split("?", 1)[0],
        query=query,
        request_headers=request_headers,
        request_body=_content(req, request_headers) or b"",
        started=req.timestamp_start,
        status=resp.status_code if resp else None,
        response_headers=response_headers,
        response_body=_content(resp, response_headers) if resp else None,
        ended=(resp.timestamp_end if resp else None) or (flow.error.timestamp if flow.error else None),
        error=flow.error.msg if flow.error else None,
        client=client_identity(flow, headers=request_headers),
        connection=connection(flow),
        code=frames_of(flow.metadata.get("sessiontap", {}).get(CODE_KEY)),
    )


def request_headers(flow: http.HTTPFlow) -> dict[str, str]:
    """The request headers, lower-cased names."""
    return _headers(flow.request.headers)


def ws_message(msg: object) -> WsMessage:
    """The core record of one mitmproxy WebSocket message."""
    assert isinstance(msg, WebSocketMessage)
    text = msg.content.decode("utf-8", "replace") if msg.is_text else None  # a text frame need not be UTF-8
    return WsMessage(from_client=msg.from_client, timestamp=msg.timestamp, text=text, size=len(msg.content))


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
    return redactor.may_hold_secret(_content(resp, headers) or b"")


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

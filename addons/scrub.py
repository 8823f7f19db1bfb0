"""Masks secrets in the live flows once they have been sent: what mitmdump prints, mitmweb shows and saves.

sessiontap's own files are redacted copies (see ``journal.py``). The flows themselves stay in
mitmproxy's hands after sessiontap's hooks: mitmdump prints their URLs (a signed WebSocket URL
carries its ``conversation_signature`` on every message line), mitmweb keeps them in memory
and its "save" writes them to disk. Secrets cannot be masked before they are sent (traffic
flows byte for byte), so each part is masked at the first hook after it has gone:

- the request (API key headers, signed URL, ``secret__`` variables in its body): at its
  response or error, when it has reached the server;
- WebSocket messages: each once the next message of its socket has gone on (through the chain's
  backlog, off that message's latency), and every one not masked yet at the socket's end;
- a response (signed URLs and tokens in its body): once the client has it, that is at the next
  HTTP/1 request on the same connection, when the client disconnects, or at shutdown.

Runs last of sessiontap's addons, so the others see the flow as it was sent. What mitmdump
prints of a response's body (``--flow-detail 3``) or mitmproxy's own ``save_stream_file``
writes of it happens before the response is sent, and cannot be masked: use ``sessiontap_out``.
"""

from __future__ import annotations

import logging
from collections import defaultdict

from mitmproxy import connection, ctx, http

from sessiontap.bridge import adapt
from sessiontap.bridge.backlog import Backlog
from sessiontap.bridge.guard import guarded
from sessiontap.core.redact import Redactor

log = logging.getLogger("sessiontap")

MAX_UNSENT = 64  # responses held per connection (HTTP/2 keeps one open); older ones have surely gone out


class Scrubber:
    """Masks each part of a live flow in place as soon as it has been sent."""

    def __init__(self, redactor: Redactor | None = None, backlog: Backlog | None = None) -> None:
        self.redactor = redactor or Redactor()  # the journal's: it knows every secret seen so far
        self.backlog = backlog or Backlog()  # earlier messages are masked off the next one's latency
        self.unsent: dict[str, list[http.HTTPFlow]] = defaultdict(list)  # client connection id -> responses
        self.messages: dict[str, int] = {}  # flow id -> WebSocket messages whose masking is queued
        self.masked: dict[str, int] = {}  # flow id -> WebSocket messages masked so far

    def configure(self, updated: set[str]) -> None:
        if "save_stream_file" in updated and getattr(ctx.options, "save_stream_file", None):
            log.warning("sessiontap: save_stream_file writes each response before it is sent, so signed URLs "
                        "and tokens in response bodies stay in it; sessiontap_out writes a redacted flows.mitm")

    @guarded
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.request.http_version.startswith("HTTP/1"):  # the previous response on this connection is out
            self._responses(flow.client_conn.id)

    @guarded
    def response(self, flow: http.HTTPFlow) -> None:
        adapt.redact_request(flow.request, self.redactor)
        flow.metadata.pop("proxyauth", None)  # the proxy user and password, when the proxy is exposed
        if flow.response is not None and flow.websocket is None:
            if flow.client_conn.timestamp_end is not None:  # the client hung up while a hook awaited: never sent
                self._redact_response(flow)
                return
            held = self.unsent[flow.client_conn.id]
            held.append(flow)
            if len(held) > MAX_UNSENT:
                self._redact_response(held.pop(0))

    @guarded
    def error(self, flow: http.HTTPFlow) -> None:
        adapt.redact_request(flow.request, self.redactor)
        flow.metadata.pop("proxyauth", None)
        if flow.error is not None:
            flow.error.msg = self.redactor.text(flow.error.msg)

    @guarded
    def websocket_message(self, flow: http.HTTPFlow) -> None:
        assert flow.websocket is not None
        sent = len(flow.websocket.messages) - 1  # the last one is on its way
        done = self.messages.get(flow.id, 0)
        if sent > done:
            self.backlog.add(self._mask_messages, flow, done, sent)
            self.messages[flow.id] = sent

    def _mask_messages(self, flow: http.HTTPFlow, start: int, stop: int) -> None:
        assert flow.websocket is not None
        adapt.redact_messages(flow.websocket.messages[start:stop], self.redactor)
        if flow.id in self.messages:  # the socket is still open
            self.masked[flow.id] = stop

    @guarded
    def websocket_end(self, flow: http.HTTPFlow) -> None:
        assert flow.websocket is not None
        # From the last message actually masked: the end may come before the backlog has run (and
        # mitmproxy's own save of the stream runs right after this hook).
        self.messages.pop(flow.id, None)
        adapt.redact_messages(flow.websocket.messages[self.masked.pop(flow.id, 0):], self.redactor)
        if flow.error is not None:
            flow.error.msg = self.redactor.text(flow.error.msg)

    @guarded
    def client_disconnected(self, client: connection.Client) -> None:
        self._responses(client.id)

    def done(self) -> None:
        self.backlog.drain()
        for conn in list(self.unsent):
            self._responses(conn)

    def _responses(self, conn: str) -> None:
        for flow in self.unsent.pop(conn, []):
            self._redact_response(flow)

    def _redact_response(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            adapt.redact_response(flow.response, self.redactor)

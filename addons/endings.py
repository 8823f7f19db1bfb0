"""Abnormal endings passed on as abnormal: a lost peer is no clean WebSocket close, a failed upstream no 502 page."""

from __future__ import annotations

import logging
from collections.abc import Callable

import wsproto.events
from mitmproxy import ctx, http
from mitmproxy.proxy import commands, layer
from mitmproxy.proxy.layers.websocket import WebsocketConnection, WebsocketLayer
from wsproto.frame_protocol import CloseReason

from sessiontap.bridge.guard import guarded
from sessiontap.router import ORIGIN_KEY

log = logging.getLogger("sessiontap")


def websocket_layer(flow: http.HTTPFlow) -> WebsocketLayer | None:
    """The layer relaying ``flow``'s WebSocket, found in its client connection's layer tree; None if not there.

    Layers hold their children as attributes, in dicts (an HTTP layer's streams) or as a bound
    ``handle_event`` (mitmproxy's regular-mode ``HttpProxy``): all three are followed.
    """
    proxyserver = ctx.master.addons.get("proxyserver")
    handler = getattr(proxyserver, "connections", {}).get(flow.client_conn.id)
    todo: list[object] = [getattr(handler, "layer", None)]
    seen: set[int] = set()
    while todo:
        node = todo.pop()
        if not isinstance(node, layer.Layer) or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, WebsocketLayer) and node.flow is flow:
            return node
        for value in vars(node).values():
            todo += value.values() if isinstance(value, dict) else [getattr(value, "__self__", value)]
    return None


def without_lost_peer_close(ws: WebsocketConnection) -> Callable[[wsproto.events.Event], commands.SendData]:
    """``ws.send2`` that sends no close frame for a peer lost without one (1006): the connection just ends.

    When one side's TCP connection ends without a close frame, wsproto reports close code 1006 and
    mitmproxy's WebSocket layer sends that close to the other side, where wsproto must write it as
    1000 (RFC 6455 forbids 1006 on the wire). That happens before any hook (``websocket_end`` runs
    after), so this is the one point of control: the layer still closes the connection right after,
    having sent everything received before the loss.
    """
    send2 = ws.send2

    def send(event: wsproto.events.Event) -> commands.SendData:
        if isinstance(event, wsproto.events.CloseConnection) and event.code == CloseReason.ABNORMAL_CLOSURE:
            ws.send(event)  # wsproto's state moves on as if the frame had gone; its bytes are dropped
            return commands.SendData(ws.conn, b"")
        return send2(event)

    return send


class AbnormalEndings:
    """Lets the client see an upstream's abnormal ending as one, as it would without the proxy.

    mitmproxy answers a refused, reset or closed-before-replying upstream with its own ``502`` page,
    which a client parses as the server's answer (and may retry on), and it ends a WebSocket whose peer
    vanished without a close frame (1006) with a clean close frame (1000) to the other side. Instead the
    client's connection is closed without a response (mitmproxy buffers bodies, so a reply cut short is
    not forwarded at all; it cannot tell a reset from a close upstream), and a vanished WebSocket peer
    is passed on as a connection ended without a close frame, both ways. Only flows the router
    intercepts are touched; the journal, which runs before, records the upstream's own error.
    """

    def __init__(self) -> None:
        self.warned = False

    @guarded
    def error(self, flow: http.HTTPFlow) -> None:
        # Only failures past a whole request, with the client still waiting: the upstream's, not the client's.
        if not flow.killable or ORIGIN_KEY not in flow.metadata:
            return
        if flow.request.timestamp_end is None or not flow.client_conn.connected:
            return
        flow.kill()  # mitmproxy then closes the client's connection without a response (HTTP/2: resets the stream)

    @guarded
    def websocket_start(self, flow: http.HTTPFlow) -> None:
        if not flow.live or ORIGIN_KEY not in flow.metadata:
            return
        relay = websocket_layer(flow)
        if relay is None:
            if not self.warned:
                self.warned = True
                log.warning("sessiontap: this mitmproxy's WebSocket relay was not found; a peer lost without a "
                            "close frame will reach the other side as a clean close (1000)")
            return
        for ws in (relay.client_ws, relay.server_ws):
            ws.send2 = without_lost_peer_close(ws)  # type: ignore[method-assign,assignment]

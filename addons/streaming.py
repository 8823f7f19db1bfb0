"""Streamed replies: passed to the client chunk by chunk as they arrive, and kept whole for decoding and the capture.

mitmproxy holds a response until its body is complete, so without this a streamed
``simulate-conversation/stream`` reply (NDJSON or Server-Sent Events) would reach the client
all at once at its end, changing the timing the user came to observe. Each chunk is forwarded
as it comes and a copy kept; at the response hook the copy becomes the flow's body again, so
the tagger decodes the whole stream into turns and the journal saves it, byte for byte.
"""

from __future__ import annotations

from mitmproxy import ctx, http
from mitmproxy.addonmanager import Loader

from sessiontap.bridge.guard import guarded
from sessiontap.core.protocol import SIMULATE_RE

STREAMED_TYPES = ("text/event-stream", "application/x-ndjson", "application/jsonl", "application/stream+json")
STREAM_KEY = "sessiontap.streamed"


def is_streamed_reply(path: str, content_type: str) -> bool:
    """A conversational reply that the server sends as a stream (by its endpoint or its content type)."""
    match = SIMULATE_RE.search(path.split("?", 1)[0])
    if match is None:
        return False
    return bool(match.group("stream")) or content_type.split(";", 1)[0].strip().lower() in STREAMED_TYPES


class Copy:
    """A response stream callback that forwards each chunk unchanged and keeps a copy."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def __call__(self, data: bytes) -> bytes:
        if data:
            self.chunks.append(data)
        return data

    def body(self) -> bytes:
        return b"".join(self.chunks)


class StreamedReplies:
    """Streams conversational replies through at once, then restores their body for the other addons."""

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "sessiontap_stream_replies", bool, True,
            "Forward streamed replies (simulate-conversation/stream, SSE, NDJSON) chunk by chunk as they "
            "arrive; off: mitmproxy holds each until it is complete.",
        )

    @guarded
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        resp = flow.response
        if resp is None or resp.stream or not ctx.options.sessiontap_stream_replies:
            return
        if is_streamed_reply(flow.request.path, resp.headers.get("content-type", "")):
            resp.stream = Copy()

    @guarded
    def response(self, flow: http.HTTPFlow) -> None:
        self._restore(flow)

    @guarded
    def error(self, flow: http.HTTPFlow) -> None:
        self._restore(flow)  # a stream cut short: keep what did arrive

    @staticmethod
    def _restore(flow: http.HTTPFlow) -> None:
        resp = flow.response
        if resp is None or not isinstance(resp.stream, Copy):
            return
        if not resp.raw_content:  # unless mitmproxy's store_streamed_bodies kept it already
            resp.raw_content = resp.stream.body()
        resp.stream = False
        flow.metadata[STREAM_KEY] = True

"""Audio frames: counted and summarised in flow metadata, then released from memory."""

from __future__ import annotations

from mitmproxy import http

from sessiontap.bridge.guard import guarded
from sessiontap.core.protocol import is_audio_frame, parse_frame

AUDIO_KEY = "sessiontap.audio"


def _is_audio(text: str) -> bool:
    if '"user_audio_chunk"' not in text and '"audio"' not in text:
        return False
    return is_audio_frame(parse_frame(text))


class AudioSummary:
    """Keeps WebSocket audio out of memory and out of the capture: only frame counts and bytes stay."""

    @guarded
    def websocket_message(self, flow: http.HTTPFlow) -> None:
        if flow.websocket is None or not flow.live:
            return
        msg = flow.websocket.messages[-1]
        if not msg.is_text or not _is_audio(msg.text):
            return
        summary = flow.metadata.setdefault(AUDIO_KEY, {"frames": 0, "bytes": 0, "from_client": 0})
        summary["frames"] += 1
        summary["bytes"] += len(msg.content)
        summary["from_client"] += int(msg.from_client)
        # mitmproxy relays the message object it holds, so removing it from the list is safe.
        flow.websocket.messages.pop()

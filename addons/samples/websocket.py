"""WebSocket chat clients for the agent conversation socket: the faulty one and its fix."""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, ClassVar
from uuid import uuid4

from websockets.exceptions import InvalidURI, WebSocketException
from websockets.sync.client import ClientConnection, connect

from sessiontap.samples.chat import BaseSampleClient, Declare, SampleClientError

MAX_FRAME_BYTES = 16 * 1024 * 1024
"""The same frame limit as the ElevenLabs Python SDK."""


class _AgentSocketClient(BaseSampleClient):
    """Opens agent sockets and reads their frames; the subclasses decide when to reconnect.

    By default (`declare="both"`) the upgrade carries `x-session-id` and the initiation a `user_id`.
    """

    DEFAULT_DECLARE: ClassVar[Declare] = "both"

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        agent_id: str | None = None,
        *,
        user_id: str | None = None,
        timeout: float = 10.0,
        declare: Declare | None = None,
    ) -> None:
        super().__init__(base_url, api_key, agent_id, declare=declare, user_id=user_id)
        self.timeout = timeout
        self.session_id: str | None = None
        self.conversation_ids: list[str] = []
        """Every server conversation this client opened, in order."""
        self.openings: list[str] = []
        """The opening agent_response of each server conversation."""

    @property
    def conversation_url(self) -> str:
        """Return the conversation socket URL for the configured agent."""
        return self.endpoint.ws_url("v1", "convai", "conversation", agent_id=self.endpoint.agent_id)

    def start_session(self) -> str:
        """Start a client session and return its id."""
        self.session_id = f"durin-{uuid4().hex[:12]}"
        return self.session_id

    def end_session(self) -> None:
        """End the client session."""
        self.session_id = None

    def close(self) -> None:
        """End the session if one is open."""
        if self.session_id is not None:
            self.end_session()

    @contextmanager
    def _conversation(self) -> Iterator[ClientConnection]:
        """Yield a socket with a started conversation; closed on exit (1000, or 1011 on error)."""
        with self._connect() as ws:
            initiation: dict[str, Any] = {
                "type": "conversation_initiation_client_data",
                "conversation_config_override": {"conversation": {"text_only": True}},
                "custom_llm_extra_body": {},
                "dynamic_variables": {},
            }
            if self.user_id is not None:
                initiation["user_id"] = self.user_id
            self._send_frame(ws, initiation)
            metadata = self._read_event(ws, "conversation_initiation_metadata")
            event = metadata.get("conversation_initiation_metadata_event") or {}
            self.conversation_ids.append(str(event.get("conversation_id", "")))
            self.openings.append(self._agent_text(self._read_event(ws, "agent_response")))
            yield ws

    def _connect(self) -> ClientConnection:
        url = self.conversation_url
        headers = self.session_headers(self.session_id)
        options: dict[str, Any] = {}
        if url.startswith("wss:"):
            # The default context reads SSL_CERT_FILE / SSL_CERT_DIR (e.g. mitmproxy's CA).
            options["ssl"] = ssl.create_default_context()
        try:
            # proxy=True (the default): ws_proxy / wss_proxy / https_proxy / NO_PROXY apply.
            return connect(
                url,
                additional_headers=headers,
                open_timeout=self.timeout,
                close_timeout=self.timeout,
                max_size=MAX_FRAME_BYTES,
                **options,
            )
        except InvalidURI as exc:
            raise SampleClientError(f"bad WebSocket URL {url}: {exc}") from exc
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise SampleClientError(
                f"cannot open {url}: {exc or type(exc).__name__}; "
                "check ELEVENLABS_BASE_URL and that the server or proxy is running"
            ) from exc

    def _ask(self, ws: ClientConnection, text: str) -> str:
        """Send one user message on an open socket and return the agent's reply."""
        self._send_frame(ws, {"type": "user_message", "text": text})
        return self._agent_text(self._read_event(ws, "agent_response"))

    def _send_frame(self, ws: ClientConnection, frame: dict[str, Any]) -> None:
        try:
            ws.send(json.dumps(frame))
        except WebSocketException as exc:
            raise SampleClientError(f"socket closed while sending {frame['type']}: {exc}") from exc

    def _read_event(self, ws: ClientConnection, wanted: str) -> dict[str, Any]:
        """Return the next frame of type `wanted`, answering pings and skipping the rest."""
        deadline = time.monotonic() + self.timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                raw = ws.recv(timeout=remaining)
            except TimeoutError:
                break
            except WebSocketException as exc:
                raise SampleClientError(f"socket closed while waiting for {wanted}: {exc}") from exc
            try:
                frame = json.loads(raw)
            except ValueError as exc:
                raise SampleClientError(f"expected a JSON frame, got {raw[:200]!r}") from exc
            if not isinstance(frame, dict):
                continue
            kind = frame.get("type")
            if kind == wanted:
                return frame
            if kind == "ping":
                event_id = (frame.get("ping_event") or {}).get("event_id")
                self._send_frame(ws, {"type": "pong", "event_id": event_id})
            elif kind == "error":
                raise SampleClientError(f"agent reported an error: {frame.get('error_event')}")
            # agent_chat_response_part and every other event: not needed for a turn.
        raise SampleClientError(f"no {wanted} within {self.timeout:g} s")

    @staticmethod
    def _agent_text(frame: dict[str, Any]) -> str:
        event = frame.get("agent_response_event") or {}
        text = event.get("agent_response")
        if not isinstance(text, str):
            raise SampleClientError(f"agent_response without text: {frame!r:.200}")
        return text


class ElevenLabsWebSocketClient(_AgentSocketClient):
    """The user's WebSocket client as it is: a new socket, so a new conversation, per message."""

    def send(self, message: str) -> str:
        """Open a socket, send one user message, close it and return the reply (the bug)."""
        with self._conversation() as ws:
            return self._ask(ws, message)


class FixedElevenLabsWebSocketClient(_AgentSocketClient):
    """The fix: one socket, so one server conversation, for the whole session."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        agent_id: str | None = None,
        *,
        user_id: str | None = None,
        timeout: float = 10.0,
        declare: Declare | None = None,
        contextual_update: str | None = None,
    ) -> None:
        super().__init__(base_url, api_key, agent_id, user_id=user_id, timeout=timeout, declare=declare)
        self.contextual_update = contextual_update
        self._ws: ClientConnection | None = None
        self._stack = ExitStack()

    def start_session(self) -> str:
        """Open the session's socket and return the session id."""
        if self._ws is not None:
            self.end_session()
        session_id = super().start_session()
        self._ws = self._stack.enter_context(self._conversation())
        if self.contextual_update:
            self._send_frame(self._ws, {"type": "contextual_update", "text": self.contextual_update})
        return session_id

    def send(self, message: str) -> str:
        """Send one user message on the session's socket and return the reply."""
        if self._ws is None:
            raise SampleClientError("no open session: call start_session() before send()")
        return self._ask(self._ws, message)

    def end_session(self) -> None:
        """Close the session's socket normally (code 1000)."""
        self._ws = None
        try:
            self._stack.close()
        except WebSocketException:
            pass  # already closed by the server: nothing left to end
        finally:
            super().end_session()

"""HTTP chat clients for simulate-conversation: the faulty ElevenLabsChatClient and its fix.

Also owns what every sample client shares: the endpoint settings read from the
environment (`AgentEndpoint`), the error they raise (`SampleClientError`) and how they
declare their session (`BaseSampleClient`, `DECLARE_MODES`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar, Literal, Self, get_args
from urllib.parse import quote, urlencode, urlsplit, urlunsplit
from uuid import uuid4

import httpx

from sessiontap.core.model import AGENT
from sessiontap.core.protocol import new_turns, turns_from_list

DEFAULT_BASE_URL = "https://api.elevenlabs.io"
DEFAULT_AGENT_ID = "agent_customs_demo"
SAMPLE_API_KEY = "sk_sample_not_a_real_key"
"""Sent when ELEVENLABS_API_KEY is unset: the simulator takes any key, the real API none."""
SIMULATED_USER_PROMPT = "You are a customs officer's assistant user."
SESSION_HEADER = "x-session-id"

Declare = Literal["header", "user-id", "none", "both"]
"""How a client declares its session: the `x-session-id` header, a `user_id`, neither, or both."""
DECLARE_MODES: tuple[Declare, ...] = get_args(Declare)

_WS_SCHEMES = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}


class SampleClientError(RuntimeError):
    """A sample client could not reach the agent or got an answer it cannot use."""


@dataclass(frozen=True)
class AgentEndpoint:
    """Where the agent lives: base URL, API key and agent id."""

    base_url: str
    api_key: str = field(repr=False)
    agent_id: str

    @classmethod
    def from_env(
        cls,
        base_url: str | None = None,
        api_key: str | None = None,
        agent_id: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> AgentEndpoint:
        """Return the endpoint from the arguments, else ELEVENLABS_* variables, else defaults."""
        env = os.environ if environ is None else environ
        base = base_url or env.get("ELEVENLABS_BASE_URL") or DEFAULT_BASE_URL
        scheme = urlsplit(base).scheme
        if scheme not in _WS_SCHEMES or not urlsplit(base).netloc:
            raise SampleClientError(
                f"ELEVENLABS_BASE_URL must be an http(s) URL such as {DEFAULT_BASE_URL} (got {base!r})"
            )
        return cls(
            base_url=base.rstrip("/"),
            api_key=api_key or env.get("ELEVENLABS_API_KEY") or SAMPLE_API_KEY,
            agent_id=agent_id or env.get("ELEVENLABS_AGENT_ID") or DEFAULT_AGENT_ID,
        )

    def http_url(self, *segments: str) -> str:
        """Return the HTTP URL of a path under the base URL (its path prefix kept)."""
        return "/".join([self.base_url, *segments])

    def ws_url(self, *segments: str, **params: str) -> str:
        """Return the WebSocket URL of a path: http→ws, https→wss, host, port and prefix kept."""
        parts = urlsplit(self.http_url(*segments))
        return urlunsplit((_WS_SCHEMES[parts.scheme], parts.netloc, parts.path, urlencode(params), ""))


class BaseSampleClient:
    """What every sample client shares: its endpoint, how it declares its session, `with` support.

    `declare` (default `DEFAULT_DECLARE`): "header" sends the session id in `x-session-id`,
    "user-id" sends `user_id` (the WebSocket initiation's field; a top-level body field over
    HTTP), "both" sends both and "none" neither. `user_id` is None unless it is declared.
    """

    DEFAULT_DECLARE: ClassVar[Declare] = "header"

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        agent_id: str | None = None,
        *,
        declare: Declare | None = None,
        user_id: str | None = None,
    ) -> None:
        self.endpoint = AgentEndpoint.from_env(base_url, api_key, agent_id)
        self.declare: Declare = self.DEFAULT_DECLARE if declare is None else declare
        if self.declare not in DECLARE_MODES:
            raise ValueError(f"declare must be one of {', '.join(DECLARE_MODES)} (got {declare!r})")
        declares_user = self.declare in ("user-id", "both")
        self.user_id = (user_id or f"durin-user-{uuid4().hex[:8]}") if declares_user else None

    def session_headers(self, session_id: str | None) -> dict[str, str]:
        """Return the session header to send with a request (none unless it is declared)."""
        if session_id and self.declare in ("header", "both"):
            return {SESSION_HEADER: session_id}
        return {}

    def close(self) -> None:
        """Release the client's connections."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _SimulateChatClient(BaseSampleClient):
    """Posts simulate-conversation calls; the subclasses decide what context to send.

    `new_connection_per_call` posts each call on a new HTTP connection (a new httpx.Client),
    so each comes from a new source port; by default one pooled connection is reused.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        agent_id: str | None = None,
        *,
        timeout: float = 30.0,
        declare: Declare | None = None,
        user_id: str | None = None,
        new_connection_per_call: bool = False,
    ) -> None:
        super().__init__(base_url, api_key, agent_id, declare=declare, user_id=user_id)
        self.timeout = timeout
        self.new_connection_per_call = new_connection_per_call
        self._http = self._new_http()
        self._conversation_history: list[dict[str, Any]] = []

    def _new_http(self) -> httpx.Client:
        # trust_env: HTTP(S)_PROXY, NO_PROXY, SSL_CERT_FILE and SSL_CERT_DIR are honoured.
        return httpx.Client(trust_env=True, timeout=self.timeout)

    @property
    def simulate_url(self) -> str:
        """Return the simulate-conversation URL of the configured agent."""
        return self.endpoint.http_url(
            "v1", "convai", "agents", quote(self.endpoint.agent_id, safe=""), "simulate-conversation"
        )

    @property
    def history(self) -> list[dict[str, Any]]:
        """Return a copy of the client's conversation history, as the client keeps it."""
        return [dict(turn) for turn in self._conversation_history]

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    @staticmethod
    def _simulated_user_config(first_message: str | None = None) -> dict[str, Any]:
        config: dict[str, Any] = {"prompt": {"prompt": SIMULATED_USER_PROMPT}}
        if first_message is not None:
            config = {"first_message": first_message, **config}
        return config

    def _simulate(self, session_id: str, body: dict[str, Any]) -> str:
        """POST one simulation and return the first agent turn's message after the history it sent.

        Whether the API echoes that history at the start of its answer is not documented: an
        echoed agent turn taken for the reply would be sent back as the agent's last words.
        """
        headers = {**self.session_headers(session_id), "xi-api-key": self.endpoint.api_key}
        if self.user_id is not None:
            body = {**body, "user_id": self.user_id}
        url = self.simulate_url
        try:
            if self.new_connection_per_call:
                with self._new_http() as http:
                    response = http.post(url, json=body, headers=headers)
            else:
                response = self._http.post(url, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise SampleClientError(
                f"cannot reach {url}: {exc or type(exc).__name__}; "
                "check ELEVENLABS_BASE_URL and that the server or proxy is running"
            ) from exc
        if response.status_code >= 400:
            hint = "; check ELEVENLABS_API_KEY" if response.status_code in (401, 403) else ""
            raise SampleClientError(f"POST {url} answered HTTP {response.status_code}: {response.text[:200]}{hint}")
        try:
            sent = turns_from_list(body["simulation_specification"]["partial_conversation_history"])
            added = new_turns(sent, turns_from_list(response.json()["simulated_conversation"]))
            return next(turn.text for turn in added if turn.role == AGENT)
        except (ValueError, KeyError, TypeError, AttributeError, StopIteration) as exc:
            raise SampleClientError(
                f"POST {url}: expected a simulated_conversation with an agent turn (got {response.text[:200]!r})"
            ) from exc


class ElevenLabsChatClient(_SimulateChatClient):
    """The user's client as it is: every conversation is session 0 and context is lost."""

    def start_session(self) -> str:
        """Return the session id (bug: the history is wiped, so it is always session 0)."""
        self._conversation_history = []  # Resets history!
        return f"elevenlabs-session-{len(self._conversation_history)}"

    def send(self, session_id: str, message: str) -> str:
        """Send one user message and return the agent's reply (bug: context is lost)."""
        self._conversation_history.append({"role": "user", "content": message})
        body = {
            "simulation_specification": {
                "simulated_user_config": self._simulated_user_config(first_message=message),
                "partial_conversation_history": [],
            },
            # Bug: history[:-1] drops the newest message, " " loses turn boundaries,
            # and the endpoint ignores this field anyway.
            "conversation_context": " ".join(
                f"{'User' if turn['role'] == 'user' else 'Agent'}: {turn['content']}"
                for turn in self._conversation_history[:-1]
            ),
            "new_turns_limit": 1,
        }
        reply = self._simulate(session_id, body)
        self._conversation_history.append({"role": "agent", "content": reply})
        return reply


class FixedElevenLabsChatClient(_SimulateChatClient):
    """The fix: a unique session id and the full history resent on every call."""

    _session_id: str | None = None
    _started: float = 0.0

    def start_session(self, session_id: str | None = None) -> str:
        """Return the session id: `session_id` resumes the current session, else a new one."""
        if session_id is not None and session_id == self._session_id:
            return session_id
        self._session_id = f"durin-{uuid4().hex[:12]}"
        self._started = time.monotonic()
        self._conversation_history = []
        return self._session_id

    def send(self, session_id: str, message: str) -> str:
        """Send one user message with the whole history and return the agent's reply."""
        if session_id != self._session_id:
            raise ValueError(f"unknown session id {session_id!r}; use the id start_session() returned")
        self._append("user", message)
        body = {
            "simulation_specification": {
                "simulated_user_config": self._simulated_user_config(),
                "partial_conversation_history": self.history,
            },
            "new_turns_limit": 1,
        }
        try:
            reply = self._simulate(session_id, body)
        except SampleClientError:
            self._conversation_history.pop()  # unanswered: a retry must not send it twice
            raise
        self._append("agent", reply)
        return reply

    def _append(self, role: str, message: str) -> None:
        elapsed = int(time.monotonic() - self._started)
        self._conversation_history.append({"role": role, "message": message, "time_in_call_secs": elapsed})

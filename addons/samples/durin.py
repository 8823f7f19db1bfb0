"""ProperDurinClient: plays the customs script through one chat client, turn by turn."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Protocol, TextIO, runtime_checkable

from sessiontap.samples.chat import (
    Declare,
    ElevenLabsChatClient,
    FixedElevenLabsChatClient,
    SampleClientError,
)
from sessiontap.samples.script import OFFICER_CONTEXT, script_messages
from sessiontap.samples.websocket import ElevenLabsWebSocketClient, FixedElevenLabsWebSocketClient

SAMPLE_KINDS = ("faulty-http", "fixed-http", "faulty-ws", "fixed-ws")
HTTP_KINDS = ("faulty-http", "fixed-http")

Transcript = list[tuple[str, str]]


@runtime_checkable
class HttpChatClient(Protocol):
    """The HTTP client shape: one session id, passed on every send."""

    def start_session(self) -> str: ...

    def send(self, session_id: str, message: str) -> str: ...


@runtime_checkable
class SocketChatClient(Protocol):
    """The WebSocket client shape: the client holds the session between start and end."""

    def start_session(self) -> str: ...

    def send(self, message: str) -> str: ...

    def end_session(self) -> None: ...


class ProperDurinClient:
    """Runs a multi-turn conversation through a chat client, as the user's app does.

    `replies_only` prints each agent reply alone on one line (line mode) instead of the
    numbered user and agent lines.
    """

    def __init__(self, client: HttpChatClient | SocketChatClient, out: TextIO | None = None,
                 replies_only: bool = False):
        self.client = client
        self.out = out
        self.replies_only = replies_only
        self.session_id: str | None = None

    def run(self, messages: Iterable[str] | None = None) -> Transcript:
        """Play `messages` (the customs script by default) and return (user, agent) pairs.

        `messages` is read one at a time, each sent and answered before the next is taken,
        so it may be a stream (stdin in line mode).
        """
        lines = script_messages() if messages is None else messages
        client = self.client
        if isinstance(client, SocketChatClient):
            self.session_id = client.start_session()
            try:
                return [self._turn(n, text, client.send(text)) for n, text in enumerate(lines, 1)]
            finally:
                client.end_session()
        session_id = self.session_id = client.start_session()
        return [self._turn(n, text, client.send(session_id, text)) for n, text in enumerate(lines, 1)]

    def _turn(self, number: int, user: str, agent: str) -> tuple[str, str]:
        out = self.out or sys.stdout
        if self.replies_only:
            print(" ".join(agent.split()), file=out, flush=True)  # one line, whatever the agent said
            return user, agent
        print(f"[{number}] user: {user}", file=out)
        print(f"[{number}] agent: {agent}", file=out, flush=True)
        return user, agent


SampleClient = (
    ElevenLabsChatClient | FixedElevenLabsChatClient | ElevenLabsWebSocketClient | FixedElevenLabsWebSocketClient
)


def make_client(
    kind: str,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    agent_id: str | None = None,
    declare: Declare | None = None,
    new_connection_per_call: bool = False,
) -> SampleClient:
    """Return a new sample client of `kind` (one of SAMPLE_KINDS); arguments beat the env.

    `declare` None keeps the kind's own way; `new_connection_per_call` is for HTTP kinds only.
    """
    if new_connection_per_call and kind not in HTTP_KINDS:
        raise ValueError(f"new_connection_per_call applies to {' and '.join(HTTP_KINDS)} only (got {kind!r})")
    where = (base_url, api_key, agent_id)
    match kind:
        case "faulty-http":
            return ElevenLabsChatClient(*where, declare=declare, new_connection_per_call=new_connection_per_call)
        case "fixed-http":
            return FixedElevenLabsChatClient(*where, declare=declare, new_connection_per_call=new_connection_per_call)
        case "faulty-ws":
            return ElevenLabsWebSocketClient(*where, declare=declare)
        case "fixed-ws":
            return FixedElevenLabsWebSocketClient(*where, declare=declare, contextual_update=OFFICER_CONTEXT)
    raise ValueError(f"sample kind must be one of {', '.join(SAMPLE_KINDS)} (got {kind!r})")


def run_sample(
    kind: str,
    turns: int | None = None,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
    declare: Declare | None = None,
    new_connection_per_call: bool = False,
    lines: Iterable[str] | None = None,
) -> int:
    """Play the script with the `kind` sample client and return the exit code (0 ok, 1 error).

    `lines` (line mode) are the user messages to play instead of the script, each reply
    printed alone on one line as soon as it comes (`turns` is then ignored).
    """
    messages = script_messages(turns) if lines is None else lines
    try:
        with make_client(kind, declare=declare, new_connection_per_call=new_connection_per_call) as client:
            ProperDurinClient(client, out=out, replies_only=lines is not None).run(messages)
    except SampleClientError as exc:
        message = " ".join(str(exc).split())  # one line, whatever the server answered
        print(f"sessiontap sample {kind}: error: {message}", file=err or sys.stderr)
        return 1
    return 0

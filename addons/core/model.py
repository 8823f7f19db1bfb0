"""The neutral records the analysis works on: Exchange, WsMessage, Turn, Call, Finding."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import islice
from typing import Any, overload

USER = "user"
AGENT = "agent"
CONTEXT = "context"  # a contextual update: context the agent holds, but not a spoken turn

HTTP = "http"
WEBSOCKET = "websocket"
RETRY_STATUSES = frozenset({408, 409, 429})  # statuses SDKs retry (and 5xx)


@lru_cache(maxsize=65536)
def fold_space(text: str) -> str:
    """Text with every run of whitespace folded to one space (cached: each context repeats its turns)."""
    return " ".join(text.split())


def lineage_seed(protocol: str, agent_id: str) -> int:
    """Where a lineage hash starts: turns only match within one protocol and agent."""
    return hash((protocol, agent_id))


def fold_turns(start: int, turns: Iterable[Turn]) -> int:
    """A rolling hash of turns (role and folded text), continued from ``start``."""
    h = start
    for t in turns:
        h = hash((h, t.key()))
    return h


@dataclass(frozen=True, slots=True)
class Turn:
    """One turn of a conversation: who spoke (user, agent, or context) and what."""

    role: str
    text: str
    time: float | None = None

    def key(self) -> tuple[str, str]:
        """The identity used to compare turns: role and whitespace-folded text."""
        return (self.role, fold_space(self.text))


class TurnsSoFar(Sequence[Turn]):
    """The first ``n`` turns of a transcript that only grows at its end: a socket call's context, uncopied.

    Every call of a socket refers to the one transcript list; a copy per call would hold n² turns
    over a long conversation. Only turns past ``n`` may change later (an agent correction replaces
    the newest turn, which no earlier call's context includes).
    """

    __slots__ = ("_log", "_n")

    def __init__(self, log: list[Turn], n: int) -> None:
        self._log = log
        self._n = n

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, i: int) -> Turn: ...
    @overload
    def __getitem__(self, i: slice) -> list[Turn]: ...
    def __getitem__(self, i: int | slice) -> Turn | list[Turn]:
        if isinstance(i, slice):
            start, stop, step = i.indices(self._n)
            if step == 1:
                return self._log[start:stop]
            return [self._log[k] for k in range(start, stop, step)]  # a stop of -1 would read as the list's end
        if not -self._n <= i < self._n:
            raise IndexError("turn index out of range")
        return self._log[i % self._n]

    def __iter__(self) -> Iterator[Turn]:
        return islice(self._log, self._n)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, TurnsSoFar) and other._log is self._log:
            return other._n == self._n
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return len(other) == self._n and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # equal to lists, which are unhashable too

    def __repr__(self) -> str:
        return f"TurnsSoFar({list(self)!r})"

    def starts(self, other: Sequence[Turn]) -> bool:
        """True when ``other`` is this prefix's own start (cheap when it is a prefix of the same transcript)."""
        return starts_with(self, other)


def starts_with(turns: Sequence[Turn], prefix: Sequence[Turn]) -> bool:
    """Whether ``turns`` begins with all of ``prefix``, decided without reading text in the usual cases.

    Two prefixes of one socket's transcript compare by length; lists compare in C (the same Turn
    objects are equal at once).
    """
    if isinstance(turns, TurnsSoFar) and isinstance(prefix, TurnsSoFar) and prefix._log is turns._log:
        return len(prefix) <= len(turns)
    return len(prefix) <= len(turns) and turns[: len(prefix)] == (
        prefix if isinstance(prefix, list) else list(prefix))


type Turns = list[Turn] | TurnsSoFar  # a context: its own list, or a prefix of a socket's transcript


@dataclass(slots=True)
class Exchange:
    """One HTTP request and its response (or error), as recorded; no mitmproxy types."""

    flow_id: str
    method: str
    url: str
    path: str
    query: dict[str, str]
    request_headers: dict[str, str]
    request_body: bytes
    started: float
    status: int | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    response_body: bytes | None = None
    ended: float | None = None
    error: str | None = None
    client: str = ""  # who made the traffic: the record run, or address (no port) + User-Agent + key fingerprint
    connection: str = ""  # the client's address and port: one TCP connection
    code: list[tuple[str, int, str]] = field(default_factory=list)  # the client's frames that sent it (file, line, fn)


@dataclass(slots=True)
class WsMessage:
    """One WebSocket message: direction, time, text (None when binary) and size in bytes."""

    from_client: bool
    timestamp: float
    text: str | None
    size: int


@dataclass(slots=True)
class FlowRecord:
    """One recorded flow: its HTTP exchange and, for a WebSocket, its messages and how it closed."""

    exchange: Exchange
    messages: list[WsMessage] = field(default_factory=list)
    close_code: int | None = None
    audio: dict[str, int] = field(default_factory=dict)  # audio frames left out of the capture: frames, bytes
    websocket: bool = False
    closed_by_client: bool | None = None
    socket_ended: float | None = None


@dataclass(slots=True)
class Call:
    """One exchange with the agent: an HTTP simulate call or one WebSocket user turn."""

    id: str
    flow_id: str
    protocol: str
    endpoint: str
    agent_id: str
    started: float
    ended: float | None = None
    user_text: str | None = None
    reply: list[Turn] = field(default_factory=list)
    context: Turns = field(default_factory=list)  # a socket's is a TurnsSoFar of its transcript
    context_field: str = ""
    extra_context: dict[str, list[Turn]] = field(default_factory=dict)
    context_formats: dict[str, str] = field(default_factory=dict)
    declared_session: str | None = None
    user_id: str | None = None
    conversation_id: str | None = None
    server_conversation: str = ""
    turn_index: int = 0
    opening: str | None = None
    first_message_override: str | None = None
    status: int | None = None
    close_code: int | None = None
    error: str | None = None
    client: str = ""
    connection: str = ""
    code: list[tuple[str, int, str]] = field(default_factory=list)  # client frames that sent it, innermost first
    request_digest: str = ""
    session: str = ""
    session_source: str = ""
    session_evidence: str = ""
    churned_from: str | None = None
    # The lineage hash of ``context`` (``fold_turns(lineage_seed(...), context)``) when whoever built the
    # call kept it as it went (a socket's transcript grows by one turn a message): None, compute it.
    # Never written: Python's hash differs from one process to the next.
    context_key: int | None = field(default=None, compare=False, repr=False)
    # The characters of ``context``'s texts, when whoever built it kept the count as it went (None: count them).
    context_chars: int | None = field(default=None, compare=False, repr=False)
    # The lineage hash of each prefix of ``context`` (``prefix_hashes``), when worked out ahead (a big body's,
    # off the event loop) for the session tracker to match; dropped once the call is complete.
    prefix_keys: list[int] | None = field(default=None, compare=False, repr=False)

    def chars_of(self, turns: Turns) -> int:
        """The characters of ``turns``' texts: ``context_chars`` when they are the context and it was kept."""
        if turns is self.context and self.context_chars is not None:
            return self.context_chars
        return sum(len(t.text) for t in turns)

    @property
    def reply_text(self) -> str:
        """The agent's answer to this call: its first agent turn, or empty."""
        return next((t.text for t in self.reply if t.role == AGENT), "")

    def to_json(self, context: Turns | None = None,
                extra_context: dict[str, list[Turn]] | None = None) -> dict[str, Any]:
        """A JSON-ready dict of this call (turns as {role, text, time}), built directly (``asdict`` of a list context).

        ``context`` and ``extra_context`` stand in for the call's own (a journal line keeps their tails).
        """
        out = {name: getattr(self, name) for name in _CALL_FIELDS}
        out["reply"] = _turns_json(self.reply)
        out["context"] = _turns_json(self.context if context is None else context)
        extra = self.extra_context if extra_context is None else extra_context
        out["extra_context"] = {name: _turns_json(turns) for name, turns in extra.items()}
        out["context_formats"] = dict(self.context_formats)
        out["code"] = [tuple(frame) for frame in self.code]
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Call:
        """A call back from ``to_json``'s shape, or from a journal line (context cut to ``context_tail``).

        Unknown keys are ignored; ValueError (TypeError, KeyError) when the essentials are not there.
        """
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k not in _UNWRITTEN}
        known["reply"] = _turns(data.get("reply"))
        known["context"] = _turns(data.get("context", data.get("context_tail")))
        extra = data.get("extra_context")
        known["extra_context"] = {str(k): _turns(v) for k, v in extra.items()} if isinstance(extra, dict) else {}
        known["code"] = [(str(f), int(n), str(fn)) for f, n, fn in data.get("code") or []]
        call = cls(**known)
        if not (isinstance(call.id, str) and isinstance(call.flow_id, str) and isinstance(call.started, int | float)):
            raise ValueError("a call needs an id, a flow_id and a start time")
        return call

    @property
    def failed(self) -> bool:
        """True when the call got no answer or an HTTP error status."""
        return self.error is not None or (self.status is not None and self.status >= 400)

    @property
    def failed_retryably(self) -> bool:
        """True when the call failed in a way an SDK retries (transport error, 408/409/429, 5xx)."""
        return self.error is not None or (self.status is not None and (self.status in RETRY_STATUSES
                                                                       or self.status >= 500))

    def earlier_turns(self) -> list[Turn]:
        """The turns this call carries from before its newest user message, less a leading opening line.

        Empty for a client that sends nothing but the new message, and for the first message on
        a new socket (whose transcript holds only the agent's greeting).
        """
        turns = self.context
        if self.protocol == HTTP and turns and turns[-1].role == USER:
            turns = turns[:-1]
        start = 0
        while start < len(turns) and turns[start].role == AGENT:
            start += 1
        return turns[start:]

    def asked(self) -> list[Turn]:
        """What this call handed the agent: its context, ending with the user's message."""
        return list(self.context) + self._user_turn()

    def carried_state(self) -> list[Turn]:
        """What the server should hold after this call: what it was asked, and the reply."""
        return self.asked() + self._replies()

    def carried_key(self) -> int | None:
        """The lineage hash of ``carried_state()`` (None when it is empty), from ``context_key`` when kept."""
        added = self._user_turn() + self._replies()
        if not self.context and not added:
            return None
        seed = lineage_seed(self.protocol, self.agent_id)
        start = self.context_key if self.context_key is not None else fold_turns(seed, self.context)
        return fold_turns(start, added)

    def _user_turn(self) -> list[Turn]:
        turns = self.context
        if self.user_text is None or (turns and turns[-1].role == USER and turns[-1].text == self.user_text):
            return []
        return [Turn(USER, self.user_text)]

    def _replies(self) -> list[Turn]:
        return [t for t in self.reply if t.role == AGENT]


_UNWRITTEN = ("context_key", "context_chars", "prefix_keys")  # per process, or kept only while it is live
_CALL_FIELDS = tuple(name for name in Call.__dataclass_fields__ if name not in _UNWRITTEN)


def _turns_json(turns: Turns) -> list[dict[str, Any]]:
    return [{"role": t.role, "text": t.text, "time": t.time} for t in turns]


def _turns(value: Any) -> list[Turn]:
    """Turns from their JSON dicts ({role, text, time}); anything else is left out."""
    if not isinstance(value, list):
        return []
    return [Turn(str(t["role"]), str(t["text"]), t.get("time")) for t in value
            if isinstance(t, dict) and "role" in t and "text" in t]


@dataclass(slots=True)
class Note:
    """Something that is not a call: an undecodable payload, an upstream failure, a replay miss."""

    flow_id: str
    kind: str
    detail: str
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Closing:
    """A socket's end, ordered among the calls by time."""

    key: str
    flow_id: str
    code: int | None
    by_client: bool | None
    time: float


@dataclass(slots=True)
class Finding:
    """A rule's verdict on some calls: rule id, severity, evidence and a likely fix."""

    rule: str
    severity: str
    session: str
    flow_ids: list[str]
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)
    fix: str = ""
    call_ids: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict in the findings.json shape (its evidence as it is, not copied as ``asdict`` would)."""
        return {"rule": self.rule, "severity": self.severity, "session": self.session, "flow_ids": list(self.flow_ids),
                "message": self.message, "evidence": self.evidence, "fix": self.fix, "call_ids": list(self.call_ids)}


@dataclass(slots=True)
class ServerConversation:
    """What ElevenLabs held for a session: one socket / conversation_id, or one simulate call."""

    key: str
    flow_id: str
    user_messages: int = 0
    close_code: int | None = None
    closed_by_client: bool | None = None
    after_upstream_error: bool = False

    @property
    def upstream_failed(self) -> bool:
        """True when the server side ended it abnormally (1011, or 1006 not caused by the client)."""
        return self.close_code in (1011, 1006) and not self.closed_by_client


@dataclass(slots=True)
class SessionState:
    """Everything the rules know about one session so far (built call by call)."""

    id: str
    source: str
    protocol: str
    calls: list[Call] = field(default_factory=list)
    opening: str | None = None
    server_conversations: dict[str, ServerConversation] = field(default_factory=dict)
    thread_calls: dict[int, int] = field(default_factory=dict)  # thread number -> calls
    latest_thread: int = 0
    resets: set[str] = field(default_factory=set)
    aggregates: dict[str, Finding] = field(default_factory=dict)
    # aggregate key -> the call ids and the flow ids of its finding, as sets to look them up
    aggregated: dict[str, tuple[set[str], set[str]]] = field(default_factory=dict)
    evidence: dict[str, int] = field(default_factory=dict)  # what placed its calls in it -> how many calls
    # kept as calls join for new-conversation-per-message, which would otherwise walk them all at every call:
    fresh_conversations: list[str] = field(default_factory=list)  # keys of those not opened after a server failure
    chatty_conversations: int = 0  # of those, how many carried more than one user message
    opened_at: dict[str, str] = field(default_factory=dict)  # conversation key -> where its first call was sent
    opened_places: set[str] = field(default_factory=set)  # the places (file:line) those first calls were sent from

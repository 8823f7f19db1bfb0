"""Sessions: which calls the client meant as one conversation, and where that id came from.

The algorithm, applied to each call as it starts (live) or in time order (offline):

1. A call of a server conversation already seen (the next turn on the same WebSocket, or the
   same ``conversation_id``) belongs to that conversation's session.
2. The client's declared session id (header ``x-session-id`` by default, or a body field)
   names the session: ``id_source = "client"``.
3. On the WebSocket, the ``user_id`` of the initiation message names it: ``client`` too.
4. Context lineage: a call whose context starts with an earlier call's context plus that
   call's reply continues the earlier call's session (longest such prefix that holds a user
   turn wins; same protocol and agent only):
   ``lineage``. Two interleaved conversations carry different histories, so they stay two.
   A declared id that changes while the lineage goes on keeps the earlier session (and the
   call is marked ``churned_from``, the rule ``session-id-churn``).
5. A byte-identical repeat of an HTTP call that failed in a way SDKs retry (transport error,
   408/409/429, 5xx) is that call's retry: same session.
6. The server's ``conversation_id``: ``conversation_id``.
7. Failing all, a call that carries no context at all joins the latest session of the same
   agent, protocol and client whose last call was at most ``session_gap`` seconds ago
   (``lineage``, inferred); otherwise it starts a new session.

One declared id can still hold several conversations (the fault ``session-id-collision``).
The analysis numbers the lineage threads of such a session and, when an earlier thread goes on
after a later one began (the conversations interleave), splits the session after the fact:
thread 1 keeps the id, thread *n* becomes ``<id>#n`` (``addons/core/analysis.py``).

Lineage look-ups are linear in the context length: a rolling hash of each prefix is looked
up in a table of (context + reply) hashes of completed calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sessiontap.core.model import HTTP, USER, Call, Turn
from sessiontap.core.rules import failed_retryably
from sessiontap.core.settings import DEFAULTS

CLIENT = "client"
CONVERSATION_ID = "conversation_id"
LINEAGE = "lineage"


def prefix_hashes(turns: list[Turn], seed: object = 0) -> list[int]:
    """Rolling hashes of every non-empty prefix of a turn list (index k = first k+1 turns)."""
    out = []
    h = hash(seed)
    for t in turns:
        h = hash((h, t.key()))
        out.append(h)
    return out


@dataclass(slots=True)
class _SessionState:
    id: str
    source: str
    protocol: str
    agent_id: str
    client: str
    last_seen: float
    calls: int = 0
    server_conversations: set[str] = field(default_factory=set)


class SessionTracker:
    """Assigns each call a session id and its source; feed it calls in start order."""

    def __init__(self, session_gap: float = DEFAULTS.session_gap) -> None:
        self.session_gap = session_gap
        self.sessions: dict[str, _SessionState] = {}
        self.by_server_conversation: dict[str, str] = {}
        self.lineage: dict[int, str] = {}
        self.failed: dict[str, str] = {}  # request digest of a retryable failure -> its session
        self._counter = 0

    def _new_id(self) -> str:
        self._counter += 1
        return f"session-{self._counter}"

    def _lineage_match(self, call: Call) -> str | None:
        """The session whose context + reply this call's context extends (a shared user turn is required)."""
        first_user = next((i for i, t in enumerate(call.context) if t.role == USER), None)
        if first_user is None:
            return None
        hashes = prefix_hashes(call.context, (call.protocol, call.agent_id))
        for h in reversed(hashes[first_user:]):
            sid = self.lineage.get(h)
            if sid is not None:
                return sid
        return None

    def _gap_match(self, call: Call) -> str | None:
        best: _SessionState | None = None
        for s in self.sessions.values():
            if (s.protocol, s.agent_id, s.client) != (call.protocol, call.agent_id, call.client):
                continue
            if call.started - s.last_seen > self.session_gap:
                continue
            if best is None or s.last_seen > best.last_seen:
                best = s
        return best.id if best else None

    def resolve(self, call: Call) -> tuple[str, str]:
        """The (session id, id source) this call belongs to, without recording anything."""
        known = self.by_server_conversation.get(call.server_conversation)
        if known is None and call.conversation_id:
            known = self.by_server_conversation.get(call.conversation_id)
        if known is not None:
            return known, self.sessions[known].source
        if call.declared_session:
            sid = self._lineage_match(call)
            if (sid is not None and sid != call.declared_session and call.declared_session not in self.sessions
                    and self.sessions[sid].source == CLIENT):
                return sid, CLIENT  # the declared id changed while the conversation went on (churn)
            return call.declared_session, CLIENT
        if call.user_id:
            return f"user:{call.user_id}", CLIENT
        sid = self._lineage_match(call)
        if sid is not None:
            return sid, LINEAGE
        sid = self.failed.get(call.request_digest) if call.request_digest else None
        if sid is not None:
            return sid, self.sessions[sid].source
        if call.conversation_id:
            return call.conversation_id, CONVERSATION_ID
        if not call.context:
            sid = self._gap_match(call)
            if sid is not None:
                return sid, LINEAGE
        return self._new_id(), LINEAGE

    def assign(self, call: Call) -> str:
        """Give the call its session (sets ``call.session``/``session_source``) and return the id."""
        sid, source = self.resolve(call)
        state = self.sessions.get(sid)
        if state is None:
            state = _SessionState(sid, source, call.protocol, call.agent_id, call.client, call.started)
            self.sessions[sid] = state
        state.calls += 1
        state.last_seen = max(state.last_seen, call.started)
        state.server_conversations.add(call.server_conversation)
        self.by_server_conversation[call.server_conversation] = sid
        if call.conversation_id:
            self.by_server_conversation[call.conversation_id] = sid
        call.session, call.session_source = sid, state.source
        if call.declared_session and call.declared_session != sid and state.source == CLIENT:
            call.churned_from = sid
        return sid

    def complete(self, call: Call) -> None:
        """Record a finished call's context + reply so later calls can continue its lineage."""
        if not call.session:
            return
        turns = call.context + call.reply
        if turns:
            self.lineage[prefix_hashes(turns, (call.protocol, call.agent_id))[-1]] = call.session
        if call.protocol == HTTP and call.request_digest and failed_retryably(call):
            self.failed[call.request_digest] = call.session
        else:
            self.failed.pop(call.request_digest, None)
        state = self.sessions.get(call.session)
        if state is not None and call.ended:
            state.last_seen = max(state.last_seen, call.ended)

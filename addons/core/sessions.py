"""Sessions: which calls the client meant as one conversation, from evidence, and which evidence said so.

A *client* is whoever made the traffic (``Call.client``): the ``sessiontap record -- CMD`` run
when there is one, otherwise the client's address without its port, its User-Agent and a
fingerprint of its API key. Connections come and go within a client. Nothing is needed from
the client itself: most real clients declare no session id at all.

Each call, as it starts (live) or in start order (offline), takes the first of these that holds:

1. **server conversation** — a call of a server conversation already seen (the next turn on
   the same WebSocket, or the same ``conversation_id``) belongs to that conversation's session.
2. **declared id** — the client's own id (header ``sessiontap_session_header``, default
   ``x-session-id``, or the body field ``sessiontap_session_field``) names the session
   (``id_source = "client"``). It is a hint: one id over interleaved conversations is
   ``session-id-collision`` (the analysis splits them), an id that changes while the lineage
   goes on keeps the earlier session (``session-id-churn``).
3. **context lineage** — a call whose context extends what an earlier call left behind (its
   context plus its reply), or strictly extends the context an earlier call sent (a client
   that drops the agent's reply still continues), continues that call's session
   (``lineage``). Only a session idle at that point can be continued: two overlapping
   conversations with the same words stay two (one connection is preferred over another).
4. **retry** — a byte-identical repeat of an HTTP call that failed in a way SDKs retry
   (transport error, 408/409/429, 5xx) stays in that call's session.
5. **order in time** — within one client, agent and protocol (and one ``user_id``, which names
   a user, never a session), a call that carries no earlier turns joins the latest session
   whose server conversations each held at most one user message and carried no history,
   when that session's last server conversation ended before this call started and at most
   ``sessiontap_session_gap`` seconds (default 600) before it, and its last connection is
   this call's or carries no call after this one began (a keep-alive connection that goes on
   belongs to a conversation that goes on: concurrent look-alikes stay apart). Such a session is
   ``inferred``: the client meant one conversation but opened a new one per message, and the
   rules see a reset at each new server conversation.
6. Otherwise the call starts a session: the WebSocket's ``conversation_id`` names it
   (``conversation_id``), or a fresh ``session-N`` (``lineage``).

Each call records the evidence that placed it (``Call.session_evidence``); a session's
evidence is the count of each kind over its calls (findings.json and the report show it).
Lineage look-ups are linear in the context length: rolling hashes of each prefix are looked
up in tables of the hashes that completed calls left behind.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from sessiontap.core.model import HTTP, USER, Call, Turn
from sessiontap.core.settings import DEFAULTS

CLIENT = "client"
CONVERSATION_ID = "conversation_id"
LINEAGE = "lineage"
INFERRED = "inferred"

# What placed a call in its session (the evidence kinds, in the order they are tried).
BY_CONVERSATION = "server conversation"
BY_DECLARED = "declared id"
BY_LINEAGE = "context lineage"
BY_RETRY = "retry"
BY_ORDER = "order in time"
BY_NEW = "new conversation"


def prefix_hashes(turns: Iterable[Turn], seed: object = 0) -> list[int]:
    """Rolling hashes of every non-empty prefix of a turn list (index k = first k+1 turns)."""
    out = []
    h = hash(seed)
    for t in turns:
        h = hash((h, t.key()))
        out.append(h)
    return out


def lineage_keys(call: Call) -> list[int]:
    """The lineage hash of each prefix of a call's context: the ones worked out ahead, or counted now."""
    if call.prefix_keys is not None:
        return call.prefix_keys
    return prefix_hashes(call.context, (call.protocol, call.agent_id))


def work_out_keys(call: Call) -> None:
    """Keep a call's lineage hashes on it (pure, so a worker thread can do it ahead of ``assign``)."""
    call.prefix_keys = lineage_keys(call)
    call.context_key = call.prefix_keys[-1] if call.prefix_keys else None


@dataclass(slots=True)
class _Conversation:
    started: float
    ended: float | None = None
    user_messages: int = 0


@dataclass(slots=True)
class _SessionState:
    id: str
    source: str
    protocol: str
    agent_id: str
    client: str
    user_id: str | None
    last_seen: float
    calls: int = 0
    one_message: bool = True  # every server conversation held <= 1 user message and no history was carried
    conversations: dict[str, _Conversation] = field(default_factory=dict)
    head: Call | None = None  # the latest call
    head_keys: tuple[int, ...] = ()  # the lineage keys its latest completed call left

    def idle_at(self, t: float) -> bool:
        """True when the session's latest call had ended by time t (it can be continued then)."""
        head = self.head
        return head is None or (head.ended is not None and head.ended <= t)

    def last_end(self) -> float | None:
        """When its last server conversation ended (None while one is still open)."""
        ends = [c.ended for c in self.conversations.values()]
        return None if any(e is None for e in ends) else max((e for e in ends if e is not None), default=None)


SPANS_KEPT = 256  # a client's call spans kept before the ended ones are pruned


class SessionTracker:
    """Assigns each call a session id, its source and its evidence; feed it calls in start order."""

    def __init__(self, session_gap: float = DEFAULTS.session_gap, last_use: Mapping[str, float] | None = None,
                 infer_order: bool = True, concurrent: Iterable[str] = ()) -> None:
        self.session_gap = session_gap
        self.infer_order = infer_order  # False: only what the wire proves (lineage, sockets, retries)
        # connection -> when its last call started (known offline); read only, so shared, not copied: the
        # analysis makes a tracker a session, and a copy each was quadratic in a capture's connections
        self.last_use: Mapping[str, float] = last_use if last_use is not None else {}
        self.concurrent = frozenset(concurrent)  # clients that ever had two calls in flight at once (offline)
        self.sessions: dict[str, _SessionState] = {}
        self.by_server_conversation: dict[str, str] = {}
        self.heads: dict[int, dict[str, None]] = {}  # hash of (context + reply) a call left -> sessions (in order)
        self.asks: dict[int, dict[str, None]] = {}  # hash of the context a call sent -> sessions (in order)
        self.now: dict[int, dict[str, None]] = {}  # a hash -> the sessions whose latest completed call left it
        self.failed: dict[str, str] = {}  # request digest of a retryable failure -> its session
        self.spans: dict[str, dict[str, list[float | None]]] = {}  # client -> call id -> [started, ended]
        self._spans_kept: dict[str, int] = {}  # client -> how many spans before pruning again
        self._counter = 0

    def _busy(self, call: Call) -> bool:
        """True when another call of the same client was in flight when this one started (concurrency)."""
        for cid, (start, end) in self.spans.get(call.client, {}).items():
            if cid != call.id and start is not None and start <= call.started and (end is None or end > call.started):
                return True
        return False

    def _span(self, call: Call) -> None:
        """Note the call's time span (again at ``complete``, with its end); the ended ones pruned now and then."""
        spans = self.spans.setdefault(call.client, {})
        spans[call.id] = [call.started, call.ended]
        if len(spans) > self._spans_kept.get(call.client, SPANS_KEPT):  # only calls still in flight matter
            for cid in [c for c, (_, end) in spans.items() if end is not None and end < call.started]:
                del spans[cid]
            # pruned again only once as many more came: calls that never end (failed before an answer)
            # would otherwise make every later call walk them all
            self._spans_kept[call.client] = max(SPANS_KEPT, 2 * len(spans))

    def _new_id(self) -> str:
        self._counter += 1
        while f"session-{self._counter}" in self.sessions:
            self._counter += 1
        return f"session-{self._counter}"

    # -- evidence --------------------------------------------------------------------------------
    def _pick(self, ids: dict[str, None], key: int, call: Call) -> str | None:
        """The idle session among ``ids`` that best continues ``call``: at that very point, same connection.

        Those whose latest call left ``key`` rank first, so they are looked at first, and alone when
        one of them is idle: identical scripted conversations share their hashes, and scanning every
        session that ever left one made the analysis quadratic in sessions.
        """
        latest = [sid for sid in self.now.get(key, ()) if sid in ids]
        return (self._best(latest, key, call) if latest else None) or self._best(ids, key, call)

    def _best(self, ids: Iterable[str], key: int, call: Call) -> str | None:
        best: tuple[bool, bool, float] | None = None
        found = None
        for sid in ids:
            s = self.sessions.get(sid)
            if s is None or not s.idle_at(call.started):
                continue
            head = s.head
            rank = (key in s.head_keys, bool(head and head.connection and head.connection == call.connection),
                    s.last_seen)
            if best is None or rank > best:
                best, found = rank, sid
        return found

    def _lineage_match(self, call: Call) -> str | None:
        """The session whose state this call's context extends (a shared user turn is required)."""
        first_user = next((i for i, t in enumerate(call.context) if t.role == USER), None)
        if first_user is None:
            return None
        hashes = lineage_keys(call)
        heads, asks = self.heads, self.asks
        known = [k for k in range(first_user, len(hashes)) if hashes[k] in heads or hashes[k] in asks]
        for k in reversed(known):  # longest first; prefixes no call left or sent are skipped
            h = hashes[k]
            sid = self._pick(self.heads.get(h, {}), h, call)
            if sid is None and k < len(hashes) - 1:  # an earlier request: only strictly extended
                sid = self._pick(self.asks.get(h, {}), h, call)
            if sid is not None:
                return sid
        return None

    def _order_match(self, call: Call) -> str | None:
        """The one-message session of the same client this call follows in time (order-in-time evidence)."""
        if not self.infer_order or call.earlier_turns() or call.turn_index > 1:
            return None
        best: tuple[float, str] | None = None
        for s in self.sessions.values():
            if not s.one_message or s.source == CLIENT:
                continue
            if (s.protocol, s.agent_id, s.client, s.user_id) != (call.protocol, call.agent_id, call.client,
                                                                  call.user_id):
                continue
            end = s.last_end()
            if end is None or end > call.started or call.started - end > self.session_gap:
                continue
            last = s.head.connection if s.head else ""
            concurrent = call.client in self.concurrent or self._busy(call)
            if last and last != call.connection and self.last_use.get(last, 0.0) > call.started and concurrent:
                continue  # another conversation of this client is in flight and that connection goes on: it is theirs
            if best is None or end > best[0]:
                best = (end, s.id)
        return best[1] if best else None

    def resolve(self, call: Call) -> tuple[str, str, str]:
        """The (session id, id source, evidence) this call belongs to, without recording anything."""
        known = self.by_server_conversation.get(call.server_conversation)
        if known is None and call.conversation_id:
            known = self.by_server_conversation.get(call.conversation_id)
        if known is not None:
            return known, self.sessions[known].source, BY_CONVERSATION
        if call.declared_session:
            sid = self._lineage_match(call)
            if (sid is not None and sid != call.declared_session and call.declared_session not in self.sessions
                    and self.sessions[sid].source == CLIENT):
                return sid, CLIENT, BY_LINEAGE  # the declared id changed while the conversation went on (churn)
            return call.declared_session, CLIENT, BY_DECLARED
        sid = self._lineage_match(call)
        if sid is not None:
            return sid, self.sessions[sid].source, BY_LINEAGE
        sid = self.failed.get(call.request_digest) if call.request_digest else None
        if sid is not None:
            return sid, self.sessions[sid].source, BY_RETRY
        sid = self._order_match(call)
        if sid is not None:
            return sid, INFERRED, BY_ORDER
        if call.conversation_id and call.conversation_id not in self.sessions:
            return call.conversation_id, CONVERSATION_ID, BY_NEW
        return self._new_id(), LINEAGE, BY_NEW

    # -- recording -------------------------------------------------------------------------------
    def assign(self, call: Call) -> str:
        """Give the call its session (sets ``session``, ``session_source``, ``session_evidence``); return the id."""
        sid, source, evidence = self.resolve(call)
        state = self.sessions.get(sid)
        if state is None:
            state = _SessionState(sid, source, call.protocol, call.agent_id, call.client, call.user_id, call.started)
            self.sessions[sid] = state
        elif source == INFERRED:
            state.source = INFERRED
        state.calls += 1
        state.last_seen = max(state.last_seen, call.started)
        state.head = call
        self._span(call)
        conv = state.conversations.setdefault(call.server_conversation, _Conversation(call.started))
        if call.user_text is not None:
            conv.user_messages += 1
        if conv.user_messages > 1 or call.earlier_turns():
            state.one_message = False
        self.by_server_conversation[call.server_conversation] = sid
        if call.conversation_id:
            self.by_server_conversation[call.conversation_id] = sid
        call.session, call.session_source, call.session_evidence = sid, state.source, evidence
        if call.declared_session and call.declared_session != sid and state.source == CLIENT:
            call.churned_from = sid
        return sid

    def complete(self, call: Call) -> None:
        """Record a finished call: what it left behind for lineage, its end, a retryable failure."""
        state = self.sessions.get(call.session)
        if state is None:
            return
        keys = []
        after = call.carried_key()
        if after is not None:
            keys.append(after)
            self.heads.setdefault(after, {})[call.session] = None
        if call.context:
            asked = call.context_key
            keys.append(asked if asked is not None else lineage_keys(call)[-1])
            self.asks.setdefault(keys[-1], {})[call.session] = None
        if state.head is not None and state.head.id == call.id:  # live, the completed call is a new record
            for old in state.head_keys:
                self.now.get(old, {}).pop(call.session, None)
            state.head, state.head_keys = call, tuple(keys)
            for new in keys:
                self.now.setdefault(new, {})[call.session] = None
        if call.protocol == HTTP and call.request_digest and call.failed_retryably:
            self.failed[call.request_digest] = call.session
        else:
            self.failed.pop(call.request_digest, None)
        end = call.ended if call.ended is not None else call.started
        state.last_seen = max(state.last_seen, end)
        self._span(call)
        conv = state.conversations.get(call.server_conversation)
        if conv is not None and call.protocol == HTTP:
            conv.ended = end

    def close(self, server_conversation: str, ended: float) -> None:
        """A server conversation (a WebSocket) ended at ``ended``."""
        sid = self.by_server_conversation.get(server_conversation)
        state = self.sessions.get(sid) if sid else None
        conv = state.conversations.get(server_conversation) if state else None
        if conv is not None:
            conv.ended = ended

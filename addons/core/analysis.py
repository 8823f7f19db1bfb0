"""The analysis pipeline: calls in (live, or from a capture), sessions, diffs and findings out.

``Analyzer`` takes calls in start order, one at a time, so the same code serves a live run
(findings as they happen) and a saved capture (``analyse``). ``Analysis`` is the result
that ``findings.json``, the terminal verdict and the report are all made from.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from sessiontap.core import rules
from sessiontap.core.contextdiff import ContextDiff, approx_tokens, diff
from sessiontap.core.model import Call, Finding, Note, ServerConversation, SessionState
from sessiontap.core.rules import ERROR, INFO, WARNING
from sessiontap.core.sessions import CLIENT, SessionTracker, prefix_hashes
from sessiontap.core.settings import Settings

FORMAT_VERSION = 1  # findings.json: 1 = first published shape (DESIGN.md)
SEVERITY_ORDER = {ERROR: 0, WARNING: 1, INFO: 2}
NOTE_SEVERITY = {"request-body": WARNING, "response-body": WARNING, "invalid-json": WARNING,
                 "analysis-error": WARNING, "binary-frame": INFO, "unknown-message-type": INFO,
                 "unknown-message": INFO}


@dataclass(slots=True)
class Analysis:
    """Sessions, calls, diffs and findings of one run or capture."""

    sessions: list[SessionState]
    calls: list[Call]
    diffs: dict[str, ContextDiff]
    findings: list[Finding]
    notes: list[Note] = field(default_factory=list)

    def add_findings(self, found: Iterable[Finding]) -> None:
        """Add findings made outside the rules (e.g. replay misses), keeping the severity order."""
        self.findings = by_severity([*self.findings, *found])

    @property
    def has_errors(self) -> bool:
        """True when any finding has severity error."""
        return any(f.severity == ERROR for f in self.findings)

    @property
    def check_code(self) -> int:
        """The exit code of ``sessiontap check``: 1 when an error finding exists, else 0."""
        return 1 if self.has_errors else 0

    def session_summaries(self) -> list[dict[str, Any]]:
        """One dict per session in the findings.json shape."""
        return [{
            "id": s.id, "id_source": s.source, "protocol": s.protocol, "calls": len(s.calls),
            "server_conversations": len(s.server_conversations), "resets": len(s.resets),
            "first_call": s.calls[0].id if s.calls else None,
        } for s in self.sessions]

    def to_json(self, version: str) -> dict[str, Any]:
        """The findings.json document."""
        return {
            "sessiontap": version,
            "format": FORMAT_VERSION,
            "verdict": self.verdict(),
            "sessions": self.session_summaries(),
            "findings": [f.to_json() for f in self.findings],
            "calls": len(self.calls),
        }

    def verdict(self) -> str:
        """One line: sessions, calls, resets and the main causes."""
        resets = sum(len(s.resets) for s in self.sessions)
        convs = sum(len(s.server_conversations) for s in self.sessions)
        head = " · ".join(count(n, word) for n, word in ((len(self.sessions), "session"), (len(self.calls), "call"),
                                                         (convs, "server conversation"), (resets, "reset")))
        counts = Counter(f.rule for f in self.findings if f.severity == ERROR)
        causes = []
        if counts["repeated-opening"]:
            causes.append(f"agent repeated its opening line {counts['repeated-opening']}×")
        if any(f.rule == "context-ignored" and "ignores" in f.message for f in self.findings):
            causes.append("context sent in a field the API ignores")
        if counts["new-conversation-per-message"]:
            causes.append("a new WebSocket conversation for every message")
        if counts["context-reset"]:
            causes.append(f"context went back to empty {counts['context-reset']}×")
        if counts["session-id-collision"]:
            causes.append("one session id shared by several conversations")
        if counts["upstream-error"]:
            causes.append("upstream failures")
        if counts["replay-miss"]:
            causes.append(f"{counts['replay-miss']} requests the replayed capture does not hold")
        if not causes:
            return head + ": the conversation continues" if self.calls else head + ": no calls seen"
        return head + ": " + ", ".join(causes)


def count(n: int, word: str) -> str:
    """'1 call', '1,000 calls'."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


class Analyzer:
    """Runs the rules over calls as they come; keeps the state the report needs."""

    def __init__(self, settings: Settings | None = None, tracker: SessionTracker | None = None) -> None:
        self.settings = settings or Settings()
        self.tracker = tracker or SessionTracker(self.settings.session_gap)
        self.sessions: dict[str, SessionState] = {}
        self.calls: list[Call] = []
        self.diffs: dict[str, ContextDiff] = {}
        self.findings: list[Finding] = []
        self.notes: list[Note] = []
        self.first_messages: dict[str, str] = {}
        self.conversation_session: dict[str, str] = {}
        self.events: list[Call | Closing | tuple[Note, str]] = []  # in arrival order, to split sessions after
        self.thread_of: dict[str, tuple[str, int]] = {}  # call id -> (session, lineage thread), client-named

    def _state(self, call: Call) -> SessionState:
        state = self.sessions.get(call.session)
        if state is None:
            state = SessionState(call.session, call.session_source, call.protocol)
            self.sessions[call.session] = state
        return state

    def _thread(self, state: SessionState, call: Call, prev: Call | None) -> int:
        """Which lineage thread of the session this call continues (a new one when none)."""
        _, carried = rules.carried_context(call)
        thread = next((state.threads[h] for h in reversed(prefix_hashes(carried)) if h in state.threads), None)
        if thread is None:
            thread = len(state.thread_calls) + 1
            state.latest_thread = thread
        state.thread_calls[thread] = state.thread_calls.get(thread, 0) + 1
        after = carried + [t for t in rules.carried_state(call)[len(call.context):]]
        for turns in (carried, after):
            if turns:
                state.threads[prefix_hashes(turns)[-1]] = thread
        return thread

    def add_call(self, call: Call) -> list[Finding]:
        """Judge one call (its session assigned if not yet); return the findings it raised."""
        if not call.session:
            self.tracker.assign(call)
            self.tracker.complete(call)
        state = self._state(call)
        prev = state.calls[-1] if state.calls else None
        conv = state.server_conversations.get(call.server_conversation)
        if conv is None:
            conv = ServerConversation(call.server_conversation, call.flow_id)
            if prev is not None:
                before = state.server_conversations.get(prev.server_conversation)
                conv.after_upstream_error = before is not None and before.upstream_failed
            state.server_conversations[call.server_conversation] = conv
            self.conversation_session[call.server_conversation] = state.id
        if call.user_text is not None:
            conv.user_messages += 1
        if prev is not None:
            self.diffs[call.id] = diff(prev.context, call.context)
        found: list[Finding] = []
        s, fm = self.settings, self.first_messages
        found += rules.upstream_error(call, state)
        thread = self.thread_of.get(prev.id, ("", 1))[1] if prev else 1
        if not rules.is_retry(call, prev) and not found:
            thread = self._thread(state, call, prev)
            found += rules.context_reset(state, call, prev, s)
            found += rules.repeated_opening(state, call, prev, s, fm)
            found += rules.context_ignored(state, call, prev, s, fm)
            found += rules.context_missing_turn(state, call, prev, s)
            found += rules.context_oversize(state, call, prev, s)
            found += rules.context_format(state, call, prev, s)
            found += rules.session_id_collision(state, call, prev, s, thread)
            found += rules.session_id_churn(state, call, prev, s)
        state.calls.append(call)
        found += rules.new_conversation_per_message(state, call, prev, s)
        if state.opening is None:
            state.opening = call.opening
        if state.source == CLIENT:
            self.thread_of[call.id] = (state.id, thread)
        self.calls.append(call)
        self.events.append(call)
        self.findings += found
        return found

    def add_note(self, note: Note, session: str = "") -> list[Finding]:
        """Turn a decoder note into an unparsed-payload or upstream-error finding."""
        self.notes.append(note)
        self.events.append((note, session))
        if note.kind == "upstream-error":
            finding = Finding("upstream-error", WARNING, session, [note.flow_id], f"the upstream failed: {note.detail}",
                              evidence={"error": note.detail},
                              fix="not a client fault; check that the upstream is up and reachable")
        else:
            finding = Finding("unparsed-payload", NOTE_SEVERITY.get(note.kind, WARNING), session, [note.flow_id],
                              f"{note.kind}: {note.detail}", evidence={"kind": note.kind, "detail": note.detail},
                              fix="sessiontap passed the payload through unchanged; check the client sends JSON "
                                  "text frames of the documented types")
        self.findings.append(finding)
        return [finding]

    def close_conversation(self, key: str, flow_id: str, code: int | None, by_client: bool | None) -> list[Finding]:
        """A socket ended: remember how; an abnormal server-side close is an upstream-error."""
        self.events.append(Closing(key, flow_id, code, by_client, 0.0))
        sid = self.conversation_session.get(key, "")
        state = self.sessions.get(sid)
        conv = state.server_conversations.get(key) if state else None
        if conv is not None:
            conv.close_code, conv.closed_by_client = code, by_client
        if code in (1011, 1006) and not by_client:
            finding = Finding("upstream-error", WARNING, sid, [flow_id],
                              f"the server closed the WebSocket abnormally (code {code})",
                              evidence={"close_code": code},
                              fix="not a client fault; a reconnect after this is a new conversation")
            self.findings.append(finding)
            return [finding]
        return []

    def result(self) -> Analysis:
        """The analysis so far, findings sorted by severity then by the order they were found.

        A session whose declared id turned out to hold interleaved conversations
        (``session-id-collision``) is split, one session per conversation, and analysed again.
        """
        collisions = [f for f in self.findings if f.rule == "session-id-collision"]
        if collisions:
            return self._split(collisions)
        return self._sorted()

    def _split(self, collisions: list[Finding]) -> Analysis:
        """Analyse the collided sessions again, one session per lineage thread; the others stay as they are."""
        collided = {f.session for f in collisions}
        again = Analyzer(self.settings)
        again.first_messages.update(self.first_messages)
        split_into: dict[str, list[str]] = {}
        for ev in self.events:
            if isinstance(ev, Closing):
                if self.conversation_session.get(ev.key) in collided:
                    again.close_conversation(ev.key, ev.flow_id, ev.code, ev.by_client)
            elif isinstance(ev, tuple):
                if ev[1] in collided:
                    again.add_note(*ev)
            else:
                origin, thread = self.thread_of.get(ev.id, (ev.session, 1))
                if origin in collided:
                    ev.session = origin if thread == 1 else f"{origin}#{thread}"
                    parts = split_into.setdefault(origin, [])
                    if ev.session not in parts:
                        parts.append(ev.session)
                    again.add_call(ev)
        position = {c.id: i for i, c in enumerate(self.calls)}
        sessions = [s for s in self.sessions.values() if s.id not in collided] + list(again.sessions.values())
        sessions.sort(key=lambda s: position[s.calls[0].id] if s.calls else -1)
        redone = {c.id for s in again.sessions.values() for c in s.calls}
        diffs = {k: d for k, d in self.diffs.items() if k not in redone} | again.diffs
        findings = [f for f in self.findings if f.session not in collided]
        findings += [f for f in again.findings if f.rule != "session-id-collision"]
        findings.sort(key=lambda f: min((position.get(c, 0) for c in f.call_ids), default=0))
        for f in collisions:
            parts = sorted(split_into.get(f.session, ()))
            findings.append(replace(f, evidence={**f.evidence, "split_into": parts},
                                    message=f"{f.message}; shown as {len(parts)} sessions"))
        return Analysis(sessions, list(self.calls), diffs, by_severity(findings), list(self.notes))

    def _sorted(self) -> Analysis:
        return Analysis(list(self.sessions.values()), list(self.calls), dict(self.diffs), by_severity(self.findings),
                        list(self.notes))


def by_severity(findings: Iterable[Finding]) -> list[Finding]:
    """Findings, errors first; the order they came in kept within a severity."""
    return sorted(findings, key=lambda f: SEVERITY_ORDER.get(f.severity, 3))


def context_size(call: Call) -> dict[str, int]:
    """The size of a call's context: turns, characters and approximate tokens."""
    _, turns = rules.carried_context(call)
    return {"turns": len(turns), "chars": sum(len(t.text) for t in turns), "tokens": approx_tokens(turns)}


@dataclass(slots=True)
class Closing:
    """A socket's end, ordered among the calls by time."""

    key: str
    flow_id: str
    code: int | None
    by_client: bool | None
    time: float


def analyse(calls: Iterable[Call], notes: Iterable[Note] = (), first_messages: dict[str, str] | None = None,
            closings: Iterable[Closing] = (), settings: Settings | None = None) -> Analysis:
    """Analyse a finished recording: calls in start order, socket closes in time order."""
    an = Analyzer(settings)
    an.first_messages.update(first_messages or {})
    events: list[tuple[float, int, Call | Closing]] = [(c.started, 0, c) for c in calls]
    events += [(c.time, 1, c) for c in closings]
    for _, _, ev in sorted(events, key=lambda e: (e[0], e[1])):
        if isinstance(ev, Call):
            an.add_call(ev)
        else:
            an.close_conversation(ev.key, ev.flow_id, ev.code, ev.by_client)
    for note in notes:
        an.add_note(note)
    return an.result()

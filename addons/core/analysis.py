"""The analysis pipeline: calls in (live, or from a capture), sessions, diffs and findings out.

``Analyzer`` takes calls in start order, one at a time, so the same code serves a live run
(findings as they happen) and a saved capture (``analyse``). ``Analysis`` is the result
that ``findings.json``, the terminal verdict and the report are all made from.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from sessiontap.core import rules
from sessiontap.core.code import frames_of, place, where
from sessiontap.core.contextdiff import ContextDiff, diff, tokens_of
from sessiontap.core.decode import TRANSCRIPT_FIELD
from sessiontap.core.model import Call, Closing, Finding, Note, ServerConversation, SessionState
from sessiontap.core.rules import ERROR, INFO, WARNING
from sessiontap.core.sessions import BY_NEW, CLIENT, INFERRED, LINEAGE, SessionTracker
from sessiontap.core.settings import Settings

FORMAT_VERSION = 1  # findings.json: 1 = first published shape (DESIGN.md)
SEVERITY_ORDER = {ERROR: 0, WARNING: 1, INFO: 2}


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
            "first_call": s.calls[0].id if s.calls else None, "evidence": dict(s.evidence),
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
        """One line: sessions, calls, resets and the main causes, built from the findings' rule ids."""
        resets = sum(len(s.resets) for s in self.sessions)
        convs = sum(len(s.server_conversations) for s in self.sessions)
        head = " · ".join(count(n, word) for n, word in ((len(self.sessions), "session"), (len(self.calls), "call"),
                                                         (convs, "server conversation"), (resets, "reset")))
        errors = Counter(f.rule for f in self.findings if f.severity == ERROR)
        warnings = Counter(f.rule for f in self.findings if f.severity == WARNING)
        causes = [text(errors[rule]) for rule, text in CAUSES if errors[rule]]
        if any(f.rule == "context-ignored" and f.evidence.get("ignored_field") for f in self.findings):
            causes.append("context sent in a field the API ignores")
        failed = sum(1 for c in self.calls if c.failed)
        upstream = errors["upstream-error"] + warnings["upstream-error"]
        if upstream:
            causes.append(f"{count(upstream, 'upstream failure')}" + (f" ({count(failed, 'call')} failed)"
                                                                       if failed else ""))
        if not self.calls:
            return head + ": no calls seen" + (f", {', '.join(causes)}" if causes else "")
        if failed == len(self.calls):
            return head + ": no call succeeded, " + ", ".join(causes or ["every call failed"])
        causes += self.code_causes()
        if not causes:
            doubts = sum(n for rule, n in warnings.items() if rule in DOUBTS)
            return head + ": the conversation continues" + (f" ({count(doubts, 'warning')} to check)"
                                                            if doubts else "")
        return head + ": " + ", ".join(causes)


    def code_causes(self) -> list[str]:
        """Where in the client's code the context was lost, when every loss of a session came from one place.

        One cause a place: sessions that lost it at the same line are counted, not listed.
        """
        places: dict[tuple[str, str], list[str]] = {}  # (what, where) -> the sessions
        by_session: dict[str, list[Finding]] = {}
        for f in self.findings:
            if f.rule == "context-reset" and f.severity == ERROR:
                by_session.setdefault(f.session, []).append(f)
        for session, found in by_session.items():
            frames = [frames_of([[c.get("file"), c.get("line"), c.get("function")] for c in f.evidence.get("code", [])])
                      for f in found]
            innermost = {fr[0] for fr in frames if fr}
            if len(found) < 2 or len(innermost) != 1 or any(not fr for fr in frames):
                continue
            socket = found[0].evidence.get("field") == TRANSCRIPT_FIELD
            what = "new conversation was opened" if socket else "call that lost the context was sent"
            places.setdefault((what, where(frames[0])), []).append(session)
        return [f"in {sessions[0] if len(sessions) == 1 else count(len(sessions), 'session')} every {what} at {place}"
                for (what, place), sessions in places.items()]


# Error findings named in the verdict, most telling first (rule id -> how the verdict says it).
CAUSES: tuple[tuple[str, Callable[[int], str]], ...] = (
    ("repeated-opening", lambda n: f"agent repeated its opening line {n}×"),
    ("new-conversation-per-message", lambda n: "a new WebSocket conversation for every message"),
    ("context-reset", lambda n: f"context lost {n}×"),
    ("context-ignored", lambda n: f"context sent but ignored {n}×"),
    ("session-id-collision", lambda n: "one session id shared by several conversations"),
    ("replay-miss", lambda n: f"{n} requests the replayed capture does not hold"),
)
DOUBTS = ("context-reset", "context-missing-turn", "context-format", "context-oversize", "session-id-churn")


def count(n: int, word: str) -> str:
    """'1 call', '1,000 calls'."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


class Analyzer:
    """Runs the rules over calls as they come; keeps the state the report needs."""

    def __init__(self, settings: Settings | None = None, tracker: SessionTracker | None = None,
                 hindsight: Hindsight | None = None) -> None:
        self.settings = settings or Settings()
        self.hindsight = hindsight or Hindsight()  # what only the whole capture tells (offline; live: at the end)
        self.tracker = tracker or SessionTracker(self.settings.session_gap, self.hindsight.last_use,
                                                 concurrent=self.hindsight.concurrent)
        self.thread_trackers: dict[str, SessionTracker] = {}  # per session: its conversations (lineage threads)
        self.thread_numbers: dict[str, dict[str, int]] = {}
        self.sessions: dict[str, SessionState] = {}
        self.calls: list[Call] = []
        self.diffs: dict[str, ContextDiff] = {}
        self.findings: list[Finding] = []
        self.notes: list[Note] = []
        self.first_messages: dict[str, str] = {}
        self.conversation_session: dict[str, str] = {}
        self.events: list[Call | Closing | tuple[Note, str]] = []  # in arrival order, to split sessions after
        self.thread_of: dict[str, tuple[str, int]] = {}  # call id -> (session, lineage thread), client-named
        self._raised: set[tuple[str, str, tuple[str, ...], str]] = set()
        self.interleaved: set[str] = set()  # sessions that held conversations interleaving in time

    def _state(self, call: Call) -> SessionState:
        state = self.sessions.get(call.session)
        if state is None:
            state = SessionState(call.session, call.session_source, call.protocol)
            self.sessions[call.session] = state
        elif call.session_source == INFERRED:
            state.source = INFERRED  # order in time joined another server conversation to it
        if call.session_evidence:
            state.evidence[call.session_evidence] = state.evidence.get(call.session_evidence, 0) + 1
        return state

    def _thread(self, state: SessionState, call: Call) -> int:
        """Which conversation of the session (lineage thread) this call continues; a new number when none.

        The session's calls are grouped again as if nothing were declared, by what the wire proves
        (``SessionTracker`` without order in time, on a copy of the call), so look-alike
        conversations under one id are told apart by their lineage, connections and timing.
        """
        tracker = self.thread_trackers.get(state.id)
        if tracker is None:  # made once a session: it shares last_use, one entry per connection
            tracker = self.thread_trackers[state.id] = SessionTracker(self.settings.session_gap,
                                                                       self.hindsight.last_use, infer_order=False)
        numbers = self.thread_numbers.setdefault(state.id, {})
        turns = rules.carried_context(call)[1]
        bare = replace(call, declared_session=None, session="", session_source="", session_evidence="",
                       churned_from=None, user_id=None, context=turns,
                       context_key=call.context_key if turns is call.context else None,
                       prefix_keys=None)  # the tagger drops them once the call is complete
        sid = tracker.assign(bare)
        tracker.complete(bare)
        thread = numbers.setdefault(sid, len(numbers) + 1)
        if thread == len(numbers) and thread not in state.thread_calls:
            state.latest_thread = thread
        state.thread_calls[thread] = state.thread_calls.get(thread, 0) + 1
        return thread

    def close_thread(self, closing: Closing) -> None:
        """Let the session's thread tracker know a socket ended."""
        sid = self.conversation_session.get(closing.key, "")
        tracker = self.thread_trackers.get(sid)
        if tracker is not None:
            tracker.close(closing.key, closing.time)

    def _keep(self, found: list[Finding]) -> list[Finding]:
        """The findings not yet raised: each (rule, session, calls or flows) once."""
        fresh = []
        for f in found:
            key = (f.rule, f.session, tuple(f.call_ids) or tuple(f.flow_ids), f.message if not f.call_ids else "")
            if key not in self._raised:
                self._raised.add(key)
                fresh.append(f)
        self.findings += fresh
        return fresh

    def _judged(self, state: SessionState, **event: Any) -> rules.Judged:
        return rules.Judged(state, self.settings, self.first_messages, **event)

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
            if not conv.after_upstream_error:
                state.fresh_conversations.append(conv.key)
            if call.code:
                state.opened_at[conv.key] = where(call.code)
                state.opened_places.add(place(call.code))
        if call.user_text is not None:
            conv.user_messages += 1
            if conv.user_messages == 2 and not conv.after_upstream_error:
                state.chatty_conversations += 1
        if prev is not None:
            self.diffs[call.id] = diff(prev.context, call.context)
        thread = self.thread_of.get(prev.id, ("", 1))[1] if prev else 1
        judge_continuity = not call.failed and not rules.is_retry(call, prev)
        if judge_continuity:
            thread = self._thread(state, call)
        found = rules.judge(rules.CALL, self._judged(state, call=call, prev=prev, thread=thread), judge_continuity)
        state.calls.append(call)
        found += rules.judge(rules.JOINED, self._judged(state, call=call, prev=prev, thread=thread))
        if state.opening is None:
            state.opening = call.opening
        self.thread_of[call.id] = (state.id, thread)
        went_on = thread != state.latest_thread and state.thread_calls.get(thread, 0) > 1
        if went_on and state.source in (CLIENT, INFERRED):
            self.interleaved.add(state.id)  # an earlier conversation went on after a later one began
        self.calls.append(call)
        self.events.append(call)
        return self._keep(found)

    def add_note(self, note: Note, session: str = "") -> list[Finding]:
        """Judge something that is not a call: an undecodable payload, an upstream failure, a replay miss."""
        self.notes.append(note)
        self.events.append((note, session))
        state = self.sessions.get(session) or SessionState(session, "", "")
        return self._keep(rules.judge(rules.NOTE, self._judged(state, note=note)))

    def close_conversation(self, closing: Closing) -> list[Finding]:
        """A socket ended: remember how and when; an abnormal server-side close is an upstream-error."""
        self.events.append(closing)
        self.tracker.close(closing.key, closing.time)
        self.close_thread(closing)
        sid = self.conversation_session.get(closing.key, "")
        state = self.sessions.get(sid)
        conv = state.server_conversations.get(closing.key) if state else None
        if conv is not None:
            conv.close_code, conv.closed_by_client = closing.code, closing.by_client
        state = state or SessionState(sid, "", "")
        return self._keep(rules.judge(rules.CLOSE, self._judged(state, closing=closing)))

    def result(self) -> Analysis:
        """The analysis so far, findings sorted by severity then by the order they were found.

        A session that turned out to hold interleaved conversations is split, one session per
        conversation, and analysed again: a declared id shared by them (``session-id-collision``),
        or conversations that order in time had joined before their own lineage went on.
        """
        seen = Hindsight.of(self.calls)
        if seen != self.hindsight:  # live, how connections and clients go on is only known at the end: group again
            return self._again(seen)
        if self.interleaved:
            return self._split([f for f in self.findings if f.rule == "session-id-collision"])
        return self._sorted()

    def _again(self, hindsight: Hindsight) -> Analysis:
        """The whole analysis again, in time order, knowing which connections carried several calls."""
        calls = [c for c in self.events if isinstance(c, Call)]
        for c in calls:
            c.session = c.session_source = c.session_evidence = ""
            c.churned_from = None
        closings = [c for c in self.events if isinstance(c, Closing)]
        notes = [n for n in self.events if isinstance(n, tuple)]
        an = Analyzer(self.settings, hindsight=hindsight)
        an.first_messages.update(self.first_messages)
        run_in_time_order(an, calls, closings)
        for note, session in notes:
            an.add_note(note, session)
        return an.result()

    def _split(self, collisions: list[Finding]) -> Analysis:
        """Analyse the interleaved sessions again, one session per lineage thread; the others stay as they are."""
        collided = set(self.interleaved)
        started: set[str] = set()
        again = Analyzer(self.settings, hindsight=self.hindsight)
        again.first_messages.update(self.first_messages)
        split_into: dict[str, list[str]] = {}
        for ev in self.events:
            if isinstance(ev, Closing):
                if self.conversation_session.get(ev.key) in collided:
                    again.close_conversation(ev)
            elif isinstance(ev, tuple):
                if ev[1] in collided:
                    again.add_note(*ev)
            else:
                origin, thread = self.thread_of.get(ev.id, (ev.session, 1))
                if origin in collided:
                    ev.session = origin if thread == 1 else f"{origin}#{thread}"
                    if ev.session_source == INFERRED:  # each part is a conversation of its own lineage
                        ev.session_source = LINEAGE
                        if ev.session not in started:
                            ev.session_evidence = BY_NEW
                    started.add(ev.session)
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
    chars = call.chars_of(turns)
    return {"turns": len(turns), "chars": chars, "tokens": tokens_of(chars)}


@dataclass(slots=True)
class Hindsight:
    """What only the whole recording tells the session grouping: how long connections go on, who runs calls at once."""

    last_use: dict[str, float] = field(default_factory=dict)  # connection (with 2+ flows) -> its last call's start
    concurrent: frozenset[str] = frozenset()  # clients that ever had two calls in flight at once

    @classmethod
    def of(cls, calls: Iterable[Call]) -> Hindsight:
        """The hindsight of a finished set of calls."""
        flows: dict[str, set[str]] = {}
        last: dict[str, float] = {}
        by_client: dict[str, list[Call]] = {}
        for c in calls:
            by_client.setdefault(c.client, []).append(c)
            if c.connection:
                flows.setdefault(c.connection, set()).add(c.flow_id)
                last[c.connection] = max(last.get(c.connection, c.started), c.started)
        concurrent = set()
        for client, mine in by_client.items():
            busy_until = float("-inf")
            for c in sorted(mine, key=lambda c: c.started):
                if c.started < busy_until:
                    concurrent.add(client)
                    break
                busy_until = max(busy_until, c.ended if c.ended is not None else c.started)
        return cls({conn: t for conn, t in last.items() if len(flows[conn]) > 1}, frozenset(concurrent))


def run_in_time_order(an: Analyzer, calls: Iterable[Call], closings: Iterable[Closing]) -> None:
    """Feed an analyzer the calls in start order and the socket closes in time order, interleaved."""
    events: list[tuple[float, int, Call | Closing]] = [(c.started, 0, c) for c in calls]
    events += [(c.time, 1, c) for c in closings]
    for _, _, ev in sorted(events, key=lambda e: (e[0], e[1])):
        if isinstance(ev, Call):
            an.add_call(ev)
        else:
            an.close_conversation(ev)


def analyse(calls: Iterable[Call], notes: Iterable[Note] = (), first_messages: dict[str, str] | None = None,
            closings: Iterable[Closing] = (), settings: Settings | None = None) -> Analysis:
    """Analyse a finished recording: calls in start order, socket closes in time order."""
    calls = list(calls)
    an = Analyzer(settings, hindsight=Hindsight.of(calls))
    an.first_messages.update(first_messages or {})
    run_in_time_order(an, calls, closings)
    for note in notes:
        an.add_note(note)
    return an.result()

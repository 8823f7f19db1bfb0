"""API behaviour: an original capture and its client replays side by side, call by call and session by session.

Replayed calls are matched to the original ones by the replay-of header the replay client
sends (``(session, call number)`` of the original call), so a replay that regroups calls
(one socket instead of one per message) still lines up. A session *continues* when none of
its calls was reset and no continuity rule fired on it; ``changed`` compares that between
the original and a replay. That is what the wire shows. What the agent did shows in
``like_full``: when the ``full`` variant was replayed too, each reply's similarity to the
reply the same call got with the whole history (a summary may lose the turns but keep the facts).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sessiontap.core.analysis import Analysis
from sessiontap.core.model import WEBSOCKET, Call
from sessiontap.core.rules import INFO, similarity
from sessiontap.replay.vary import FULL

# Rules that mean the conversation did not continue (the others are about form, size or errors).
CONTINUITY_RULES = ("context-reset", "repeated-opening", "context-ignored", "new-conversation-per-message")
ORIGINAL = "original"


@dataclass(slots=True)
class Reply:
    """One call's outcome in one run: the agent's reply and what the analysis said at that call."""

    text: str = ""
    status: str = "not replayed"  # ok | HTTP 4xx/5xx | error: … | no reply | not replayed
    context_turns: int = 0
    reset: bool = False
    rules: list[str] = field(default_factory=list)
    like_full: float | None = None  # how alike this reply is to the one the full history got (0..1)

    @property
    def continues(self) -> bool:
        """True when the call went through and nothing at it says the conversation started over."""
        return self.status == "ok" and not self.reset and not set(self.rules) & set(CONTINUITY_RULES)


@dataclass(slots=True)
class Continuity:
    """A session's continuity in one run: calls, server conversations, resets and the rules that fired."""

    calls: int = 0
    server_conversations: int = 0
    resets: int = 0
    rules: list[str] = field(default_factory=list)
    like_full: float | None = None  # the mean of its replies' like_full
    unanswered: int = 0  # calls without an ok reply (failed, or not replayed at all)

    @property
    def continues(self) -> bool:
        """True when every call was answered in one unbroken conversation (as far as the analysis sees)."""
        return (self.calls > 0 and self.resets == 0 and self.unanswered == 0
                and not set(self.rules) & set(CONTINUITY_RULES))

    @property
    def label(self) -> str:
        """``continues``, ``resets N×``, ``starts over`` (a rule but no reset) or ``not replayed``."""
        if not self.calls:
            return "not replayed"
        if self.continues:
            return "continues"
        if self.resets:
            return f"resets {self.resets}×"
        return f"{self.unanswered} unanswered" if self.unanswered else "starts over"


@dataclass(slots=True)
class CallRow:
    """One original call and its replies in every run."""

    number: int
    user_text: str
    original: Reply
    replayed: dict[str, Reply] = field(default_factory=dict)


@dataclass(slots=True)
class SessionBehaviour:
    """One original session and how it went in every replay."""

    id: str
    protocol: str
    original: Continuity
    replayed: dict[str, Continuity] = field(default_factory=dict)
    rows: list[CallRow] = field(default_factory=list)

    def changed(self, variant: str) -> bool:
        """True when the replay in ``variant`` continues where the original did not, or the other way round.

        A session the variant did not replay at all has not changed: there is nothing to compare.
        """
        replayed = self.replayed[variant]
        return replayed.calls > 0 and self.original.continues != replayed.continues


@dataclass(slots=True)
class Behaviour:
    """The API behaviour report's data: the variants replayed and every original session's comparison."""

    variants: list[str]
    sessions: list[SessionBehaviour]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (behaviour.json): continuity labels and the changed flags spelled out."""
        def session(s: SessionBehaviour) -> dict[str, Any]:
            runs = {ORIGINAL: s.original, **s.replayed}
            return {"id": s.id, "protocol": s.protocol,
                    "continuity": {name: {**asdict(c), "label": c.label, "continues": c.continues}
                                   for name, c in runs.items()},
                    "changed": {v: s.changed(v) for v in s.replayed},
                    "calls": [{"number": r.number, "user_text": r.user_text,
                               "replies": {name: {**asdict(x), "continues": x.continues}
                                           for name, x in {ORIGINAL: r.original, **r.replayed}.items()}}
                              for r in s.rows]}
        return {"variants": self.variants, "sessions": [session(s) for s in self.sessions]}

    def table(self) -> list[str]:
        """Lines of a terminal table: does each session continue in each run (* = changed from the original)."""
        names = [ORIGINAL, *self.variants]
        width = max([len(s.id) for s in self.sessions] + [len("session")])
        lines = ["session".ljust(width) + "".join(f"  {n:<16}" for n in names)]
        for s in self.sessions:
            cells = [s.original.label] + [s.replayed[v].label + (" *" if s.changed(v) else "") for v in self.variants]
            lines.append(s.id.ljust(width) + "".join(f"  {c:<16}" for c in cells))
        return lines


BEHAVIOUR_FILE = "behaviour.json"


def write_behaviour_json(behaviour: Behaviour, out: Path) -> Path:
    """Write behaviour.json into ``out`` and return its path."""
    path = out / BEHAVIOUR_FILE
    path.write_text(json.dumps(behaviour.to_json(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8",
                    errors="backslashreplace")
    return path


class _Index:
    """Per run: the rules at each call and the calls that were resets."""

    def __init__(self, analysis: Analysis) -> None:
        self.rules: dict[str, list[str]] = defaultdict(list)
        harmless: set[str] = set()  # calls whose only continuity finding is info (a reset after a long pause)
        for f in analysis.findings:
            for call_id in f.call_ids:
                if f.severity == INFO and f.rule in CONTINUITY_RULES:
                    harmless.add(call_id)
                elif f.rule not in self.rules[call_id]:
                    self.rules[call_id].append(f.rule)
        self.resets = {call_id for s in analysis.sessions for call_id in s.resets} - harmless

    def reply(self, call: Call) -> Reply:
        if call.error:
            status = f"error: {call.error}"
        elif call.status is not None and call.status >= 400:
            status = f"HTTP {call.status}"
        else:
            status = "ok" if call.reply_text or call.reply else "no reply"
        return Reply(call.reply_text, status, len(call.context), call.id in self.resets, list(self.rules[call.id]))

    def continuity(self, calls: list[Call], replies: list[Reply]) -> Continuity:
        """A session's continuity over the ``calls`` a run made, given its ``replies`` to every original call."""
        rules = list(dict.fromkeys(r for c in calls for r in self.rules[c.id]))
        return Continuity(len(calls), len({c.server_conversation for c in calls}),
                          sum(1 for c in calls if c.id in self.resets), rules,
                          unanswered=sum(1 for r in replies if r.status != "ok"))


def replayed_calls(analysis: Analysis, replay_of: Callable[[str], tuple[str, int] | None]
                   ) -> dict[tuple[str, int], Call]:
    """The calls of a replay by the original (session, call number) they replay; ``replay_of`` reads a flow's tag."""
    out: dict[tuple[str, int], Call] = {}
    for call in analysis.calls:
        tag = replay_of(call.flow_id)
        if tag is None:
            continue
        session, number = tag
        key = (session, number + (call.turn_index - 1 if call.protocol == WEBSOCKET else 0))
        out.setdefault(key, call)
    return out


def compare(original: Analysis, runs: Mapping[str, tuple[Analysis, Callable[[str], tuple[str, int] | None]]]
            ) -> Behaviour:
    """Every original session's continuity and replies set against each replayed run."""
    index = _Index(original)
    replays = {name: (_Index(a), replayed_calls(a, tag)) for name, (a, tag) in runs.items()}
    sessions: list[SessionBehaviour] = []
    for state in original.sessions:
        rows = [CallRow(n, call.user_text or "", index.reply(call)) for n, call in enumerate(state.calls, 1)]
        behaviour = SessionBehaviour(state.id, state.protocol,
                                     index.continuity(state.calls, [r.original for r in rows]), rows=rows)
        for name, (rindex, by_key) in replays.items():
            matched = [by_key.get((state.id, row.number)) for row in rows]
            for row, call in zip(rows, matched, strict=True):
                row.replayed[name] = rindex.reply(call) if call is not None else Reply()
            behaviour.replayed[name] = rindex.continuity([c for c in matched if c is not None],
                                                         [r.replayed[name] for r in rows])
        if FULL in runs:
            _measure_against_full(behaviour)
        sessions.append(behaviour)
    return Behaviour(list(runs), sessions)


def _measure_against_full(behaviour: SessionBehaviour) -> None:
    """Set like_full on every reply of the other runs, and its mean on each run's continuity."""
    runs: dict[str, Continuity] = {ORIGINAL: behaviour.original, **behaviour.replayed}
    for name, continuity in runs.items():
        if name == FULL:
            continue
        scores = []
        for row in behaviour.rows:
            reply = row.original if name == ORIGINAL else row.replayed[name]
            reference = row.replayed[FULL]
            if reply.status == "ok" and reference.status == "ok":
                reply.like_full = round(similarity(reply.text, reference.text), 3)
                scores.append(reply.like_full)
        continuity.like_full = round(sum(scores) / len(scores), 3) if scores else None

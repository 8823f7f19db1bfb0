"""The probe's checks: each a predicate over the analysis of one scenario's traffic, failed by the analysis' findings.

There is no second judge: a check passes or fails on what the analysis found (its findings,
its sessions, and the context each call carried), never on the agent's wording. What each
check looks at:

- ``one-session``: every message reached the agent, the analysis placed them all in one
  session, and it found none of ``new-conversation-per-message``, ``session-id-churn``,
  ``session-id-collision``, ``context-reset``.
- ``opening-once``: no ``repeated-opening`` and no ``context-ignored`` (the agent did not
  start over).
- ``facts-carried``: no ``context-missing-turn``, and each fact the scenario gives (the
  product, the origin, the officer's feedback) is in the context of every later message.
- ``context-grows``: the context's turns never shrink from one message to the next, and the
  last message carries more than the first.
- ``context-size``: no ``context-oversize`` (``sessiontap_max_context_tokens``), and the key
  fact is still in the context of the last message.

"The context" of a message is what the API reads: ``partial_conversation_history`` of a
simulate call, the socket's transcript on the WebSocket (its contextual updates included).
Context sent in a field the API ignores (``conversation_context``) does not count: the agent
never sees it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sessiontap.core.analysis import Analysis, count
from sessiontap.core.contextdiff import tokens_of
from sessiontap.core.model import CONTEXT, WEBSOCKET, Call, Finding, Turn, fold_space
from sessiontap.core.settings import DEFAULTS
from sessiontap.probe.scenarios import CONTEXT_GROWS, CONTEXT_SIZE, FACTS_CARRIED, ONE_SESSION, OPENING_ONCE, Scenario

# The rule ids whose findings fail each check (none of them: the check can pass).
FAILED_BY: dict[str, tuple[str, ...]] = {
    ONE_SESSION: ("new-conversation-per-message", "session-id-churn", "session-id-collision", "context-reset"),
    OPENING_ONCE: ("repeated-opening", "context-ignored"),
    FACTS_CARRIED: ("context-missing-turn",),
    CONTEXT_GROWS: (),
    CONTEXT_SIZE: ("context-oversize",),
}
CONTINUITY_RULES = (*FAILED_BY[ONE_SESSION], *FAILED_BY[OPENING_ONCE], *FAILED_BY[FACTS_CARRIED])
"""The rule ids of a conversation that does not continue: what ``assert_continuous()`` fails on (with any error)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """One check's verdict on one run: passed or not, and why, in one line."""

    check: str
    passed: bool
    reason: str


@dataclass(slots=True)
class Played:
    """One scenario as played: the analysis of its traffic, and the call that carried each message."""

    scenario: Scenario
    analysis: Analysis
    max_context_tokens: int = DEFAULTS.max_context_tokens
    calls: list[Call | None] = field(init=False)  # by message: the call that carried it (None: none did)

    def __post_init__(self) -> None:
        self.calls = message_calls(self.analysis.calls, self.scenario.lines)

    def findings(self, check: str) -> list[Finding]:
        """The analysis' findings that fail ``check``, in the order of its rules (the most telling first)."""
        rules = FAILED_BY[check]
        return sorted((f for f in self.analysis.findings if f.rule in rules), key=lambda f: rules.index(f.rule))

    def missing(self) -> int | None:
        """The number of the first message no call carried (None: every one reached the agent)."""
        return next((n for n, call in enumerate(self.calls, 1) if call is None), None)


def message_calls(calls: Iterable[Call], lines: Iterable[str]) -> list[Call | None]:
    """For each message, the first call that carried it and got an answer (in start order), or None."""
    by_text: dict[str, list[Call]] = {}
    for call in sorted(calls, key=lambda c: c.started):
        if call.user_text is not None and not call.failed:
            by_text.setdefault(fold_space(call.user_text), []).append(call)
    out: list[Call | None] = []
    for line in lines:
        waiting = by_text.get(fold_space(line))
        out.append(waiting.pop(0) if waiting else None)
    return out


def mentions(turns: Iterable[Turn], text: str) -> bool:
    """True when one of the turns holds ``text`` (case and spacing aside)."""
    wanted = fold_space(text).lower()
    return any(wanted in fold_space(t.text).lower() for t in turns)


def because(found: list[Finding]) -> str:
    """A failed check's reason from the findings that fail it: the first one's rule and message, and the others."""
    first, rest = found[0], Counter(f.rule for f in found[1:])
    more = f" (and {', '.join(f'{rule} ×{n}' for rule, n in rest.items())})" if rest else ""
    return f"{first.rule}: {first.message}{more}"


def _failed(p: Played, check: str, every_message: bool = True) -> Outcome | None:
    """The check failed by its findings, or (``every_message``) by a message no call carried; None: neither."""
    found = p.findings(check)
    if found:
        return Outcome(check, False, because(found))
    number = p.missing() if every_message else None
    if number is not None:
        return Outcome(check, False, f"message {number} never reached the agent (no answered call carried it)")
    return None


def one_session(p: Played) -> Outcome:
    """One session throughout, and no finding of a reset or of the session id changing or being shared."""
    if (failed := _failed(p, ONE_SESSION)) is not None:
        return failed
    ids = list(dict.fromkeys(c.session for c in p.calls if c is not None))
    if len(ids) != 1:
        return Outcome(ONE_SESSION, False, f"{len(ids)} sessions ({', '.join(ids[:3])}): nothing on the wire "
                                           "ties the messages together")
    state = next(s for s in p.analysis.sessions if s.id == ids[0])
    conversations = len(state.server_conversations)
    return Outcome(ONE_SESSION, True, f"1 session ({state.source}), {len(p.calls)} messages, "
                                      f"{conversations} server conversation{'s' if conversations != 1 else ''}")


def opening_once(p: Played) -> Outcome:
    """The agent never started over: no repeated opening line, no context sent and ignored."""
    if (failed := _failed(p, OPENING_ONCE)) is not None:
        return failed
    return Outcome(OPENING_ONCE, True, "no reply was the opening line again")


def facts_carried(p: Played) -> Outcome:
    """Every fact given is in the context of every later message, and no message lacks its newest turns."""
    if (failed := _failed(p, FACTS_CARRIED, every_message=False)) is not None:
        return failed
    for fact in p.scenario.facts:
        for number in range(fact.given + 1, len(p.calls) + 1):
            call = p.calls[number - 1]
            if call is None:
                return Outcome(FACTS_CARRIED, False, f"message {number} never reached the agent, so neither did "
                                                     f"the {fact.label}")
            if not mentions(call.context, fact.text):
                held = count(len(call.context), "turn")
                return Outcome(FACTS_CARRIED, False,
                               f"the {fact.label} ({fact.text!r}, said in message {fact.given}) is not in the "
                               f"context of message {number} ({call.context_field}: {held})")
    labels = ", ".join(dict.fromkeys(f.label for f in p.scenario.facts)) or "every turn"
    return Outcome(FACTS_CARRIED, True, f"{labels}: in the context of every later message")


def context_grows(p: Played) -> Outcome:
    """The context never shrinks from one message to the next, and the last carries more than the first."""
    if (failed := _failed(p, CONTEXT_GROWS)) is not None:
        return failed
    turns = [len(c.context) for c in p.calls if c is not None]
    for number in range(2, len(turns) + 1):
        if turns[number - 1] < turns[number - 2]:
            return Outcome(CONTEXT_GROWS, False, f"the context shrank from {count(turns[number - 2], 'turn')} to "
                                                 f"{turns[number - 1]} at message {number}")
    if turns[-1] <= turns[0]:
        return Outcome(CONTEXT_GROWS, False, f"the context did not grow: {count(turns[0], 'turn')} at message 1, "
                                             f"{turns[-1]} at message {len(turns)}")
    return Outcome(CONTEXT_GROWS, True, f"{count(turns[0], 'turn')} at message 1, {turns[-1]} at message {len(turns)}")


def context_size(p: Played) -> Outcome:
    """No context beyond the token limit, and the key fact still in the context of the last message.

    On the WebSocket the context is the server's own transcript, which no client can trim: there,
    ``context-oversize`` is said in the reason and fails only when the client's own contextual
    updates are beyond the limit by themselves.
    """
    last = p.calls[-1] if p.calls else None
    if last is not None and last.protocol == WEBSOCKET:
        sent = tokens_of(last.chars_of([t for t in last.context if t.role == CONTEXT]))
        if sent > p.max_context_tokens:
            return Outcome(CONTEXT_SIZE, False, f"the client's contextual updates alone are ~{sent} tokens, over "
                                                f"the limit of {p.max_context_tokens}")
    elif (failed := _failed(p, CONTEXT_SIZE, every_message=False)) is not None:
        return failed
    if last is None:
        return Outcome(CONTEXT_SIZE, False, f"the last message (#{len(p.calls)}) never reached the agent")
    key = p.scenario.facts[0] if p.scenario.facts else None
    if key is not None and not mentions(last.context, key.text):
        return Outcome(CONTEXT_SIZE, False, f"after {len(p.calls)} messages the {key.label} ({key.text!r}) is no "
                                            "longer in the context")
    tokens = tokens_of(last.chars_of(last.context))
    kept = f"; the {key.label} still in it" if key is not None else ""
    over = ", over it: the server's transcript, for the agent to trim" if tokens > p.max_context_tokens else ""
    return Outcome(CONTEXT_SIZE, True, f"~{tokens} tokens at message {len(p.calls)} "
                                       f"(limit {p.max_context_tokens}{over}){kept}")


CHECKS: dict[str, Callable[[Played], Outcome]] = {
    FACTS_CARRIED: facts_carried,
    ONE_SESSION: one_session,
    OPENING_ONCE: opening_once,
    CONTEXT_GROWS: context_grows,
    CONTEXT_SIZE: context_size,
}
MEANINGS = {
    FACTS_CARRIED: "later messages carry the facts given earlier (product, origin, officer feedback)",
    ONE_SESSION: "one session throughout, never reset",
    OPENING_ONCE: "the opening line is said once",
    CONTEXT_GROWS: "the context grows with every message",
    CONTEXT_SIZE: "a long conversation stays within the context limit and keeps its key facts",
}


def judge(p: Played) -> list[Outcome]:
    """The outcome of each of the scenario's checks, in its order."""
    return [CHECKS[name](p) for name in p.scenario.checks]

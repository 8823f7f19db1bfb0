"""The rules: one function per rule id of DESIGN.md, each judging the newest call of a session.

Every rule takes the session so far, the new call and the settings, and returns findings
with evidence and a likely fix. Per-call rules yield one finding per call; session-wide
rules (``new-conversation-per-message``, ``context-format``, ``session-id-collision``,
``session-id-churn``) keep one finding per session in ``state.aggregates`` and add each new
call's flows to it.
"""

from __future__ import annotations

import difflib

from sessiontap.core.contextdiff import approx_tokens, diff
from sessiontap.core.decode import FORMAT_FLAT, FORMAT_SUMMARY, HISTORY_FIELD
from sessiontap.core.model import AGENT, USER, WEBSOCKET, Call, Finding, SessionState, Turn
from sessiontap.core.settings import Settings

ERROR, WARNING, INFO = "error", "warning", "info"
RULES = {  # rule id -> what it means (DESIGN.md); the ids are stable
    "context-reset": "within a session the context shrank or went back to empty",
    "repeated-opening": "the agent answered with the session's opening message again",
    "new-conversation-per-message": "each user message opened a new server conversation "
                                    "(new WebSocket or new conversation_id)",
    "session-id-collision": "one client-declared session id used for different conversations",
    "session-id-churn": "the client-declared id changed while the conversation went on",
    "context-missing-turn": "the newest user message or the previous agent reply is absent from the context sent",
    "context-ignored": "the request carried earlier turns but the reply shows none of them (opening line again)",
    "context-format": "context flattened or ambiguous (turn boundaries or roles lost)",
    "context-oversize": "context beyond the configured limit",
    "upstream-error": "the upstream failed (connection refused, 5xx, abnormal WebSocket close)",
    "unparsed-payload": "a payload on a conversational endpoint could not be decoded",
    "replay-miss": "during a replay, a request or message the capture holds no answer for",
}
RETRY_STATUSES = frozenset({408, 409, 429})
REMOVED_ENDPOINT_HINT = (
    "ElevenLabs scheduled simulate-conversation for removal on 2026-10-31; move to "
    "/v1/convai/agent-testing/create and POST /v1/convai/agents/{agent_id}/run-tests, or to the "
    "agent WebSocket."
)
HTTP_CONTEXT_FIX = (
    "send the whole history (every user and agent turn, with role, message and time_in_call_secs) "
    "in simulation_specification.partial_conversation_history on every call"
)


def similarity(a: str, b: str) -> float:
    """How alike two texts are, 0..1, ignoring case and spacing (first 500 characters)."""
    x, y = " ".join(a.lower().split())[:500], " ".join(b.lower().split())[:500]
    if not x or not y:
        return 0.0
    if x == y:
        return 1.0
    return difflib.SequenceMatcher(None, x, y, autojunk=False).ratio()


def _text(turns: list[Turn], limit: int = 20) -> list[list[str]]:
    return [[t.role, t.text] for t in turns[-limit:]]


def carried_state(call: Call) -> list[Turn]:
    """What the server should hold after a call: its context, the user's message, and the reply."""
    turns = list(call.context)
    if call.user_text is not None and not (turns and turns[-1].role == USER and turns[-1].text == call.user_text):
        turns.append(Turn(USER, call.user_text))
    return turns + [t for t in call.reply if t.role == AGENT]


def carried_context(call: Call) -> tuple[str, list[Turn]]:
    """The field that carried the most context in a call, and those turns."""
    best = (call.context_field, call.context)
    for name, turns in call.extra_context.items():
        if len(turns) > len(best[1]):
            best = (name, turns)
    return best


def is_retry(call: Call, prev: Call | None) -> bool:
    """True when a call repeats the previous one byte for byte after a retryable failure."""
    if prev is None or call.request_digest != prev.request_digest or call.protocol == WEBSOCKET:
        return False
    return failed_retryably(prev)


def failed_retryably(call: Call) -> bool:
    """True when a call failed in a way an SDK retries (transport error, 408/409/429, 5xx)."""
    return call.error is not None or (call.status is not None and (call.status in RETRY_STATUSES
                                                                   or call.status >= 500))


def _finding(rule: str, severity: str, state: SessionState, calls: list[Call], message: str,
             fix: str, at: Call | None = None, **evidence: object) -> Finding:
    """A finding over ``calls`` (their flows are its evidence); it happens at ``at`` when given, else at all."""
    flow_ids = list(dict.fromkeys(c.flow_id for c in calls))
    return Finding(rule, severity, state.id, flow_ids, message, dict(evidence), fix,
                   [at.id] if at is not None else [c.id for c in calls])


def _aggregate(state: SessionState, key: str, call: Call, make: Finding) -> list[Finding]:
    found = state.aggregates.get(key)
    if found is None:
        found = make
        state.aggregates[key] = found
        return [found]
    found.message, found.evidence = make.message, make.evidence  # the counts as of this call
    if call.id not in found.call_ids:
        found.call_ids.append(call.id)
        if call.flow_id not in found.flow_ids:
            found.flow_ids.append(call.flow_id)
    return []


def context_reset(state: SessionState, call: Call, prev: Call | None, settings: Settings) -> list[Finding]:
    """context-reset: the server conversation started over without the context the session had."""
    if prev is None or call.status is not None and call.status >= 400:
        return []
    expected = carried_state(prev)
    if call.protocol == WEBSOCKET and call.server_conversation == prev.server_conversation:
        return []  # same socket: the server keeps its own transcript
    d = diff(expected, call.context)
    if d.is_extension:
        return []
    previous_conv = state.server_conversations.get(prev.server_conversation)
    if call.protocol == WEBSOCKET and previous_conv is not None and previous_conv.upstream_failed:
        return []  # a reconnect after the server failed: upstream-error, not the client's fault
    state.resets.add(call.id)
    gap = call.started - (prev.ended or prev.started)
    empty = len(call.context) <= (1 if call.opening is not None or call.protocol == WEBSOCKET else 0)
    if gap > settings.session_gap:
        severity, how = INFO, f"after a pause of {gap:.0f} s (a new conversation?)"
    elif empty:
        severity, how = ERROR, "went back to empty"
    else:
        severity, how = WARNING, f"shrank from {len(expected)} to {len(call.context)} turns"
    fix = (HTTP_CONTEXT_FIX if call.protocol != WEBSOCKET else
           "keep one WebSocket open for the whole conversation; a new socket is a new conversation")
    return [_finding(
        "context-reset", severity, state, [prev, call],
        f"context {how} at call #{len(state.calls) + 1} of the session ({call.context_field})", fix, at=call,
        previous_context=_text(expected), context=_text(call.context), field=call.context_field,
        dropped=len(d.dropped), kept=d.prefix,
    )]


def repeated_opening(state: SessionState, call: Call, prev: Call | None, settings: Settings,
                     first_messages: dict[str, str]) -> list[Finding]:
    """repeated-opening: the agent answered with the session's opening message again."""
    if prev is None:
        return []
    references = [r for r in (state.opening, first_messages.get(call.agent_id), call.first_message_override) if r]
    candidates = [call.reply_text]
    conv = state.server_conversations.get(call.server_conversation)
    reconnect = conv is not None and conv.after_upstream_error  # the greeting after a server failure is expected
    if call.opening is not None and call.server_conversation != prev.server_conversation and not reconnect:
        candidates.append(call.opening)
    for text in candidates:
        for ref in references:
            score = similarity(text, ref)
            if score >= settings.opening_similarity:
                fix = (HTTP_CONTEXT_FIX + "; with an empty history the agent starts over with its first_message"
                       if call.protocol != WEBSOCKET else
                       "send every user message on the same WebSocket; each new socket greets again")
                return [_finding(
                    "repeated-opening", ERROR, state, [call],
                    f"the agent answered with its opening line again (similarity {score:.2f})", fix,
                    repeated=text, opening=ref, similarity=round(score, 3),
                )]
    return []


def context_ignored(state: SessionState, call: Call, prev: Call | None, settings: Settings,
                    first_messages: dict[str, str]) -> list[Finding]:
    """context-ignored: earlier turns were sent but the reply is the opening line again."""
    name, turns = carried_context(call)
    if not turns or prev is None:
        return []
    references = [r for r in (state.opening, first_messages.get(call.agent_id)) if r]
    if not any(similarity(call.reply_text, r) >= settings.opening_similarity for r in references):
        return []
    if name != call.context_field:
        fix = (f"the endpoint reads only {HISTORY_FIELD}; `{name}` is ignored. Move the turns there "
               "as [{role, message, time_in_call_secs}]")
        message = f"{len(turns)} earlier turns were sent in `{name}`, a field the API ignores; the agent started over"
    else:
        fix = "check the agent's first_message settings and that roles are 'user'/'agent'"
        message = f"{len(turns)} earlier turns were sent in {name} but the agent started over"
    return [_finding("context-ignored", ERROR, state, [call], message, fix,
                     field=name, context=_text(turns), reply=call.reply_text)]


def context_missing_turn(state: SessionState, call: Call, prev: Call | None, settings: Settings) -> list[Finding]:
    """context-missing-turn: the newest user message or the last agent reply is absent from the context."""
    if call.protocol == WEBSOCKET or prev is None:
        return []
    name, turns = carried_context(call)
    if not turns:
        return []
    texts = {t.key()[1] for t in turns}
    norm = lambda s: " ".join(s.split())  # noqa: E731
    missing = []
    if call.user_text and norm(call.user_text) not in texts and not any(norm(call.user_text) in x for x in texts):
        missing.append(("newest user message", call.user_text))
    last_reply = prev.reply_text
    if last_reply and norm(last_reply) not in texts and not any(norm(last_reply) in x for x in texts):
        missing.append(("previous agent reply", last_reply))
    if not missing:
        return []
    what = " and ".join(m[0] for m in missing)
    fix = ("build the context from the whole history after appending the newest message "
           "(history, not history[:-1])")
    return [_finding("context-missing-turn", WARNING, state, [call], f"the {what} is missing from `{name}`", fix,
                     field=name, missing=[m[1] for m in missing], context=_text(turns))]


def context_oversize(state: SessionState, call: Call, prev: Call | None, settings: Settings) -> list[Finding]:
    """context-oversize: the context is beyond the configured token limit."""
    name, turns = carried_context(call)
    tokens = approx_tokens(turns)
    if tokens <= settings.max_context_tokens:
        return []
    return _aggregate(state, f"context-oversize:{name}", call, _finding(
        "context-oversize", WARNING, state, [call],
        f"context of ~{tokens} tokens in `{name}` exceeds the limit of {settings.max_context_tokens}",
        "summarise or truncate older turns, keeping the product facts and the latest exchange",
        tokens=tokens, limit=settings.max_context_tokens, turns=len(turns), field=name))


def context_format(state: SessionState, call: Call, prev: Call | None, settings: Settings) -> list[Finding]:
    """context-format: context flattened into one string (turn boundaries or roles lost)."""
    out: list[Finding] = []
    for name, fmt in call.context_formats.items():
        if fmt not in (FORMAT_FLAT, FORMAT_SUMMARY):
            continue
        how = "turns joined on one line, so boundaries are lost" if fmt == FORMAT_FLAT else "no turns or roles"
        finding = _finding(
            "context-format", WARNING, state, [call], f"context in `{name}` is a flattened string: {how}",
            "send a list of turns with explicit roles; join transcript strings with newlines at the very least",
            field=name, format=fmt, example=_text(call.extra_context.get(name, call.context), 6))
        out += _aggregate(state, f"context-format:{name}", call, finding)
    return out


def new_conversation_per_message(state: SessionState, call: Call, prev: Call | None,
                                 settings: Settings) -> list[Finding]:
    """new-conversation-per-message: each user message opened a new server conversation."""
    if call.protocol != WEBSOCKET:
        return []
    convs = [c for c in state.server_conversations.values() if not c.after_upstream_error]
    if len(convs) < 2 or any(c.user_messages > 1 for c in convs):
        return []
    return _aggregate(state, "new-conversation-per-message", call, _finding(
        "new-conversation-per-message", ERROR, state, list(state.calls),
        f"{len(convs)} server conversations for one session, one user message each",
        "open one WebSocket per conversation and send every user message on it; close it only at the end",
        server_conversations=[c.key for c in convs]))


def session_id_collision(state: SessionState, call: Call, prev: Call | None, settings: Settings,
                         thread: int) -> list[Finding]:
    """session-id-collision: one declared id used by two conversations that interleave."""
    if state.source != "client" or thread == state.latest_thread or state.thread_calls.get(thread, 0) < 2:
        return []
    return _aggregate(state, "session-id-collision", call, _finding(
        "session-id-collision", ERROR, state, list(state.calls),
        f"session id {state.id!r} is used by {len(state.thread_calls)} conversations that interleave",
        "give every conversation its own unique session id (e.g. a UUID made once per conversation)",
        conversations=len(state.thread_calls)))


def session_id_churn(state: SessionState, call: Call, prev: Call | None, settings: Settings) -> list[Finding]:
    """session-id-churn: the client's declared id changed while the conversation went on."""
    if not call.churned_from or call.churned_from == call.declared_session:
        return []
    return _aggregate(state, "session-id-churn", call, _finding(
        "session-id-churn", WARNING, state, [prev, call] if prev else [call],
        f"the declared session id changed from {call.churned_from!r} to {call.declared_session!r} "
        "while the conversation went on",
        "create the session id once per conversation and reuse it on every call",
        at=call, before=call.churned_from, after=call.declared_session))


def upstream_error(call: Call, state: SessionState) -> list[Finding]:
    """upstream-error: the upstream failed this call (refused, 5xx, removed endpoint)."""
    if call.error is None and (call.status is None or call.status < 500) and call.status not in (404, 410):
        return []
    if call.status in (404, 410) and call.protocol != WEBSOCKET:
        return [_finding("upstream-error", ERROR, state, [call],
                         f"{call.endpoint} answered {call.status}: the endpoint may be gone",
                         REMOVED_ENDPOINT_HINT, status=call.status)]
    what = call.error or f"HTTP {call.status}"
    return [_finding("upstream-error", WARNING, state, [call], f"the upstream failed: {what}",
                     "not a client fault; retry later or check the upstream's status", status=call.status,
                     error=call.error)]

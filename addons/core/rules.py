"""The rules: one function per rule id of DESIGN.md, all with one signature, listed in ``REGISTRY``.

Every rule takes a ``Judged`` (the session so far, the settings, and the new event: a call, a
note or a socket's end) and returns its findings, each with evidence and a likely fix. A rule
only ever makes or updates its own findings. Session-wide rules (``new-conversation-per-message``,
``context-format``, ``context-oversize``, ``session-id-collision``, ``session-id-churn``) keep
one finding per session in ``state.aggregates`` and add each new call to it.

Severities say what a user can act on: ``error`` only where the agent demonstrably lost the
context (it greeted again, its reply ignored turns that were sent, the context went back to
empty or lost turns after a reply existed, a new conversation per message), ``warning`` for the
suspicious but unproven, ``info`` for the harmless.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

from sessiontap.core.code import as_json, where
from sessiontap.core.contextdiff import diff, tokens_of
from sessiontap.core.decode import FORMAT_FLAT, FORMAT_SUMMARY, HISTORY_FIELD
from sessiontap.core.model import AGENT, USER, WEBSOCKET, Call, Closing, Finding, Note, SessionState, Turns
from sessiontap.core.settings import DEFAULTS, Settings

ERROR, WARNING, INFO = "error", "warning", "info"
CALL, JOINED, NOTE, CLOSE = "call", "joined", "note", "close"  # when a rule judges (see Rule.on)

REMOVED_ENDPOINT_HINT = (
    "ElevenLabs scheduled simulate-conversation for removal on 2026-10-31; move to "
    "/v1/convai/agent-testing/create and POST /v1/convai/agents/{agent_id}/run-tests, or to the "
    "agent WebSocket."
)
HTTP_CONTEXT_FIX = (
    "send the whole history (every user and agent turn, with role, message and time_in_call_secs) "
    "in simulation_specification.partial_conversation_history on every call"
)
NOTE_SEVERITY = {"request-body": WARNING, "response-body": WARNING, "invalid-json": WARNING,
                 "analysis-error": WARNING, "binary-frame": INFO, "unknown-message-type": INFO,
                 "unknown-message": INFO}


@dataclass(slots=True)
class Judged:
    """What a rule judges: the session so far and one new event (a call, a note or a socket's end)."""

    state: SessionState
    settings: Settings = DEFAULTS
    first_messages: dict[str, str] = field(default_factory=dict)
    call: Call | None = None
    prev: Call | None = None
    thread: int = 1
    note: Note | None = None
    closing: Closing | None = None


Judge = Callable[[Judged], list[Finding]]


@dataclass(frozen=True, slots=True)
class Rule:
    """A rule id, what it means (DESIGN.md), the function that judges it, and when it judges.

    ``on``: ``call`` (a call before it joins its session's calls), ``joined`` (after),
    ``note`` or ``close``. ``continuity`` rules skip a failed call and a retry.
    """

    id: str
    meaning: str
    judge: Judge
    on: frozenset[str]
    continuity: bool = False


@lru_cache(maxsize=512)  # the opening line is compared with every reply: its pairs are counted once
def _pairs(text: str) -> Counter[str]:
    """The text's character pairs, counted."""
    return Counter(text[i:i + 2] for i in range(len(text) - 1))


def similarity(a: str, b: str) -> float:
    """How alike two texts are, 0..1, ignoring case and spacing (first 500 characters).

    The Dice coefficient of their character pairs: linear in the texts' length, and close to
    difflib's ratio for insertions and deletions (an added word costs about as much), a little
    stricter for substitutions. Unrelated sentences of one language score about 0.3-0.5.
    """
    x, y = " ".join(a.lower().split())[:500], " ".join(b.lower().split())[:500]
    if not x or not y:
        return 0.0
    if x == y:
        return 1.0
    if len(x) < 2 or len(y) < 2:
        return 0.0
    shared = sum((_pairs(x) & _pairs(y)).values())
    return 2 * shared / (len(x) + len(y) - 2)


def _text(turns: Turns, limit: int = 20) -> list[list[str]]:
    return [[t.role, t.text] for t in turns[-limit:]]


def carried_context(call: Call) -> tuple[str, Turns]:
    """The field that carried the most context in a call, and those turns."""
    best: tuple[str, Turns] = (call.context_field, call.context)
    for name, turns in call.extra_context.items():
        if len(turns) > len(best[1]):
            best = (name, turns)
    return best


def is_retry(call: Call, prev: Call | None) -> bool:
    """True when a call repeats the previous one byte for byte after a retryable failure."""
    if prev is None or call.request_digest != prev.request_digest or call.protocol == WEBSOCKET:
        return False
    return prev.failed_retryably


def continues(prev: Call, call: Call) -> bool:
    """True when the call's context keeps what the session held after ``prev``.

    Over HTTP the user's turns decide: a context that keeps every earlier user message in
    order continues, even when agent replies are left out (that is context-missing-turn).
    """
    if diff(prev.carried_state(), call.context).is_extension:
        return True
    if call.protocol == WEBSOCKET:
        return False
    said = [t for t in prev.asked() if t.role == USER]
    return diff(said, [t for t in call.context if t.role == USER]).is_extension


def _finding(rule: str, severity: str, state: SessionState, calls: list[Call], message: str,
             fix: str, at: Call | None = None, **evidence: object) -> Finding:
    """A finding over ``calls`` (their flows are its evidence); it happens at ``at`` when given, else at all."""
    flow_ids = list(dict.fromkeys(c.flow_id for c in calls))
    return Finding(rule, severity, state.id, flow_ids, message, dict(evidence), fix,
                   [at.id] if at is not None else [c.id for c in calls])


def _session_calls(state: SessionState, key: str, call: Call) -> list[Call]:
    """The calls a session-wide aggregate is over: all the session's when it is first raised, else just this one.

    Once raised, ``_aggregate`` takes only a new finding's message and evidence, so the calls of
    a later one would be read for nothing (once a call, quadratic in the session's length).
    """
    return [call] if key in state.aggregates else list(state.calls)


def _aggregate(state: SessionState, key: str, call: Call, make: Finding) -> list[Finding]:
    found = state.aggregates.get(key)
    if found is None:
        found = make
        state.aggregates[key] = found
        return [found]
    found.message, found.evidence = make.message, make.evidence  # the counts as of this call
    if key not in state.aggregated:
        state.aggregated[key] = (set(found.call_ids), set(found.flow_ids))
    call_ids, flow_ids = state.aggregated[key]
    if call.id not in call_ids:
        call_ids.add(call.id)
        found.call_ids.append(call.id)
        if call.flow_id not in flow_ids:
            flow_ids.add(call.flow_id)
            found.flow_ids.append(call.flow_id)
    return []


# --- continuity rules (a call, before it joins its session) ----------------------------------


def context_reset(j: Judged) -> list[Finding]:
    """context-reset: the server conversation started over without the context the session had."""
    state, call, prev, settings = j.state, j.call, j.prev, j.settings
    if call is None or prev is None:
        return []
    if call.protocol == WEBSOCKET and call.server_conversation == prev.server_conversation:
        return []  # same socket: the server keeps its own transcript
    if continues(prev, call):
        return []
    previous_conv = state.server_conversations.get(prev.server_conversation)
    if call.protocol == WEBSOCKET and previous_conv is not None and previous_conv.upstream_failed:
        return []  # a reconnect after the server failed: upstream-error, not the client's fault
    state.resets.add(call.id)
    expected = prev.carried_state()
    kept = call.earlier_turns()
    d = diff(expected, call.context)
    gap = call.started - (prev.ended or prev.started)
    had_reply = any(t.role == AGENT for t in prev.reply)
    window = bool(kept) and diff(expected[len(expected) - len(kept):], kept).is_extension
    if gap > settings.session_gap:
        severity, how = INFO, f"after a pause of {gap:.0f} s (a new conversation?)"
    elif not kept:  # nothing of what came before: at most the newest message itself
        severity = ERROR if had_reply else WARNING
        alone = len(call.context) == 1 and call.context[0].role == USER
        how = "went back to the newest message alone" if alone else "went back to empty"
    elif window:
        severity, how = WARNING, f"kept only the last {len(kept)} of {len(expected)} turns"
    else:
        severity, how = (ERROR if had_reply else WARNING), f"lost turns: {len(expected)} held, {len(kept)} sent"
    fix = (HTTP_CONTEXT_FIX if call.protocol != WEBSOCKET else
           "keep one WebSocket open for the whole conversation; a new socket is a new conversation")
    sent_from = f"; sent from {where(call.code)}" if call.code else ""
    return [_finding(
        "context-reset", severity, state, [prev, call],
        f"context {how} at call #{len(state.calls) + 1} of the session ({call.context_field}){sent_from}", fix,
        at=call, previous_context=_text(expected), context=_text(call.context), field=call.context_field,
        dropped=len(d.dropped), kept=d.prefix, empty=not kept, code=as_json(call.code),
    )]


def _references(j: Judged, call: Call, with_override: bool) -> list[str]:
    refs = [j.state.opening, j.first_messages.get(call.agent_id)]
    if with_override:
        refs.append(call.first_message_override)
    return [r for r in refs if r]


def repeated_opening(j: Judged) -> list[Finding]:
    """repeated-opening: the agent answered with the session's opening message again."""
    state, call, prev = j.state, j.call, j.prev
    if call is None or prev is None:
        return []
    candidates = [call.reply_text]
    conv = state.server_conversations.get(call.server_conversation)
    reconnect = conv is not None and conv.after_upstream_error  # the greeting after a server failure is expected
    if call.opening is not None and call.server_conversation != prev.server_conversation and not reconnect:
        candidates.append(call.opening)
    for text in candidates:
        for ref in _references(j, call, True):
            score = similarity(text, ref)
            if score >= j.settings.opening_similarity:
                fix = (HTTP_CONTEXT_FIX + "; with an empty history the agent starts over with its first_message"
                       if call.protocol != WEBSOCKET else
                       "send every user message on the same WebSocket; each new socket greets again")
                return [_finding(
                    "repeated-opening", ERROR, state, [call],
                    f"the agent answered with its opening line again (similarity {score:.2f})", fix,
                    repeated=text, opening=ref, similarity=round(score, 3), code=as_json(call.code),
                )]
    return []


def context_ignored(j: Judged) -> list[Finding]:
    """context-ignored: earlier turns were sent but the reply is the opening line again."""
    call = j.call
    if call is None or j.prev is None:
        return []
    name, turns = carried_context(call)
    ignored_field = name != call.context_field
    earlier = turns if ignored_field else call.earlier_turns()
    if not any(t.role in (USER, AGENT) for t in earlier):
        return []
    opening_again = any(similarity(call.reply_text, r) >= j.settings.opening_similarity
                        for r in _references(j, call, False))
    if ignored_field and call.earlier_turns():
        return []  # the read field carried the history too: nothing was lost
    if not opening_again and not ignored_field:
        return []
    if ignored_field:
        fix = (f"the endpoint reads only {HISTORY_FIELD}; `{name}` is ignored. Move the turns there "
               "as [{role, message, time_in_call_secs}]")
        how = "the agent started over" if opening_again else "the agent got none of them"
        message = f"{len(turns)} earlier turns were sent in `{name}`, a field the API ignores; {how}"
    else:
        fix = "check the agent's first_message settings and that roles are 'user'/'agent'"
        message = f"{len(turns)} earlier turns were sent in {name} but the agent started over"
    return [_finding("context-ignored", ERROR, j.state, [call], message, fix,
                     field=name, ignored_field=ignored_field, context=_text(turns), reply=call.reply_text)]


def context_missing_turn(j: Judged) -> list[Finding]:
    """context-missing-turn: the newest user message or the last agent reply is absent from the context."""
    call, prev = j.call, j.prev
    if call is None or prev is None or call.protocol == WEBSOCKET:
        return []
    name, turns = carried_context(call)
    if not turns or name == call.context_field and call.id in j.state.resets:
        return []  # after a reset the context is missing everything: context-reset says so
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
    return [_finding("context-missing-turn", WARNING, j.state, [call], f"the {what} is missing from `{name}`", fix,
                     field=name, missing=[m[1] for m in missing], context=_text(turns))]


def context_oversize(j: Judged) -> list[Finding]:
    """context-oversize: the context is beyond the configured token limit."""
    call, limit = j.call, j.settings.max_context_tokens
    if call is None:
        return []
    name, turns = carried_context(call)
    tokens = tokens_of(call.chars_of(turns))
    if tokens <= limit:
        return []
    return _aggregate(j.state, f"context-oversize:{name}", call, _finding(
        "context-oversize", WARNING, j.state, [call],
        f"context of ~{tokens} tokens in `{name}` exceeds the limit of {limit}",
        "summarise or truncate older turns, keeping the product facts and the latest exchange",
        tokens=tokens, limit=limit, turns=len(turns), field=name))


def context_format(j: Judged) -> list[Finding]:
    """context-format: context flattened into one string (turn boundaries or roles lost)."""
    call = j.call
    if call is None:
        return []
    out: list[Finding] = []
    for name, fmt in call.context_formats.items():
        if fmt not in (FORMAT_FLAT, FORMAT_SUMMARY):
            continue
        how = "turns joined on one line, so boundaries are lost" if fmt == FORMAT_FLAT else "no turns or roles"
        shown = call.extra_context.get(name)
        finding = _finding(
            "context-format", WARNING, j.state, [call], f"context in `{name}` is a flattened string: {how}",
            "send a list of turns with explicit roles; join transcript strings with newlines at the very least",
            field=name, format=fmt, example=_text(call.context if shown is None else shown, 6))
        out += _aggregate(j.state, f"context-format:{name}", call, finding)
    return out


def session_id_collision(j: Judged) -> list[Finding]:
    """session-id-collision: one declared id used by two conversations that interleave."""
    state, call, thread = j.state, j.call, j.thread
    if call is None or state.source != "client" or thread == state.latest_thread:
        return []
    if state.thread_calls.get(thread, 0) < 2:
        return []
    return _aggregate(state, "session-id-collision", call, _finding(
        "session-id-collision", ERROR, state, _session_calls(state, "session-id-collision", call),
        f"session id {state.id!r} is used by {len(state.thread_calls)} conversations that interleave",
        "give every conversation its own unique session id (e.g. a UUID made once per conversation)",
        conversations=len(state.thread_calls)))


def session_id_churn(j: Judged) -> list[Finding]:
    """session-id-churn: the client's declared id changed while the conversation went on."""
    call, prev = j.call, j.prev
    if call is None or not call.churned_from or call.churned_from == call.declared_session:
        return []
    return _aggregate(j.state, "session-id-churn", call, _finding(
        "session-id-churn", WARNING, j.state, [prev, call] if prev else [call],
        f"the declared session id changed from {call.churned_from!r} to {call.declared_session!r} "
        "while the conversation went on",
        "create the session id once per conversation and reuse it on every call",
        at=call, before=call.churned_from, after=call.declared_session))


# --- after the call joined its session --------------------------------------------------------


def new_conversation_per_message(j: Judged) -> list[Finding]:
    """new-conversation-per-message: each user message opened a new server conversation."""
    state, call = j.state, j.call
    if call is None or call.protocol != WEBSOCKET:
        return []
    convs = state.fresh_conversations
    if len(convs) < 2 or state.chatty_conversations:
        return []
    places = state.opened_places  # where each conversation's first call was sent from
    at = f"; opened at {next(iter(places))}" if len(places) == 1 else ""
    return _aggregate(state, "new-conversation-per-message", call, _finding(
        "new-conversation-per-message", ERROR, state, _session_calls(state, "new-conversation-per-message", call),
        f"{len(convs)} server conversations for one session, one user message each{at}",
        "open one WebSocket per conversation and send every user message on it; close it only at the end",
        server_conversations=list(convs), code=as_json(call.code), opened_at=dict(state.opened_at)))


# --- failures and undecodable payloads ---------------------------------------------------------


def _why_failed(call: Call) -> tuple[str, str, str]:
    """(severity, what happened, likely fix) for a failed call."""
    if call.error is not None:
        return WARNING, f"the upstream failed: {call.error}", "not a client fault; check that the upstream is up"
    status = call.status or 0
    if status in (404, 410) and call.protocol != WEBSOCKET:
        return ERROR, f"{call.endpoint} answered {status}: the endpoint may be gone", REMOVED_ENDPOINT_HINT
    if status == 429:
        return WARNING, "rate limited (HTTP 429)", "slow down or retry after the Retry-After delay; not a reset"
    if status >= 500:
        return WARNING, f"the upstream failed: HTTP {status}", "not a client fault; retry later or check its status"
    return WARNING, f"the call was rejected: HTTP {status}", "check the request (key, agent id, body) against the API"


def upstream_error(j: Judged) -> list[Finding]:
    """upstream-error: a call failed (refused, 429, 4xx/5xx, removed endpoint), or the server dropped a socket."""
    if j.call is not None:
        call = j.call
        if not call.failed:
            return []
        severity, message, fix = _why_failed(call)
        return [_finding("upstream-error", severity, j.state, [call], message, fix,
                         status=call.status, error=call.error)]
    if j.note is not None and j.note.kind == "upstream-error":
        return [Finding("upstream-error", WARNING, j.state.id, [j.note.flow_id],
                        f"the upstream failed: {j.note.detail}", {"error": j.note.detail},
                        "not a client fault; check that the upstream is up and reachable")]
    closing = j.closing
    if closing is not None and closing.code in (1011, 1006) and not closing.by_client:
        return [Finding("upstream-error", WARNING, j.state.id, [closing.flow_id],
                        f"the server closed the WebSocket abnormally (code {closing.code})",
                        {"close_code": closing.code},
                        "not a client fault; a reconnect after this is a new conversation")]
    return []


def unparsed_payload(j: Judged) -> list[Finding]:
    """unparsed-payload: a payload on a conversational endpoint could not be decoded (it passed unchanged)."""
    note = j.note
    if note is None or note.kind in ("upstream-error", "replay-miss"):
        return []
    return [Finding("unparsed-payload", NOTE_SEVERITY.get(note.kind, WARNING), j.state.id, [note.flow_id],
                    f"{note.kind}: {note.detail}", {"kind": note.kind, "detail": note.detail},
                    "sessiontap passed the payload through unchanged; check the client sends JSON text frames "
                    "of the documented types")]


def replay_miss(j: Judged) -> list[Finding]:
    """replay-miss: during a replay, the capture held no answer for a request or message."""
    note = j.note
    if note is None or note.kind != "replay-miss":
        return []
    evidence = {k: v for k, v in note.evidence.items() if k != "call_ids"}
    return [Finding("replay-miss", ERROR, j.state.id, [note.flow_id] if note.flow_id else [], note.detail,
                    evidence, "Record the capture again with this client, or leave the failing predicate out of "
                    "match_on, or add the changing member to the ignore paths.",
                    [str(c) for c in note.evidence.get("call_ids", [])])]


REGISTRY: tuple[Rule, ...] = (
    Rule("upstream-error", "the upstream failed (connection refused, 5xx, abnormal WebSocket close)",
         upstream_error, frozenset({CALL, NOTE, CLOSE})),
    Rule("context-reset", "within a session the context shrank or went back to empty",
         context_reset, frozenset({CALL}), continuity=True),
    Rule("repeated-opening", "the agent answered with the session's opening message again",
         repeated_opening, frozenset({CALL}), continuity=True),
    Rule("context-ignored", "the request carried earlier turns but the reply shows none of them (opening line again)",
         context_ignored, frozenset({CALL}), continuity=True),
    Rule("context-missing-turn",
         "the newest user message or the previous agent reply is absent from the context sent",
         context_missing_turn, frozenset({CALL}), continuity=True),
    Rule("context-oversize", "context beyond the configured limit", context_oversize, frozenset({CALL}),
         continuity=True),
    Rule("context-format", "context flattened or ambiguous (turn boundaries or roles lost)",
         context_format, frozenset({CALL}), continuity=True),
    Rule("session-id-collision", "one client-declared session id used for different conversations",
         session_id_collision, frozenset({CALL}), continuity=True),
    Rule("session-id-churn", "the client-declared id changed while the conversation went on",
         session_id_churn, frozenset({CALL}), continuity=True),
    Rule("new-conversation-per-message",
         "each user message opened a new server conversation (new WebSocket or new conversation_id)",
         new_conversation_per_message, frozenset({JOINED})),
    Rule("unparsed-payload", "a payload on a conversational endpoint could not be decoded",
         unparsed_payload, frozenset({NOTE})),
    Rule("replay-miss", "during a replay, a request or message the capture holds no answer for",
         replay_miss, frozenset({NOTE})),
)
RULES = {r.id: r.meaning for r in REGISTRY}  # rule id -> what it means (DESIGN.md); the ids are stable


def judge(on: str, j: Judged, continuity: bool = True) -> list[Finding]:
    """Every registered rule that judges at ``on``, in registry order (continuity rules only when asked)."""
    found: list[Finding] = []
    for rule in REGISTRY:
        if on in rule.on and (continuity or not rule.continuity):
            found += rule.judge(j)
    return found

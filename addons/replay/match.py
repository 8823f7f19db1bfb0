"""Replay matching: named predicates comparing a new request with a recorded one, and recorded WebSocket steps."""

from __future__ import annotations

import difflib
import fnmatch
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from sessiontap.core.decode import EXTRA_CONTEXT_FIELDS, HISTORY_FIELD, normalize_context
from sessiontap.core.model import USER, Exchange, WsMessage
from sessiontap.core.protocol import frame_type, loads, turns_from_list, user_message_text
from sessiontap.core.redact import SECRET_PARAMS, Redactor

# Volatile members ignored by default. A pattern without a dot names a key at any depth.
DEFAULT_IGNORE: tuple[str, ...] = (
    "time_in_call_secs",
    "*event_id",
    "*_time",
    "*timestamp",
    "*_unix_secs",
    "*_unix_ms",
)
SHOW_MAX = 60  # characters of a value quoted in a reason


class _Absent:
    """The value of a member one side lacks."""

    def __repr__(self) -> str:
        return "(absent)"


ABSENT = _Absent()
NOT_JSON = object()


# --- ignore paths -------------------------------------------------------------------------


def _glob_path(pattern: tuple[str, ...], path: tuple[str, ...]) -> bool:
    if not pattern:
        return not path
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        if "**" not in rest:  # the rest must match the path's tail exactly
            return len(path) >= len(rest) and _glob_path(rest, path[len(path) - len(rest):])
        return any(_glob_path(rest, path[i:]) for i in range(len(path) + 1))
    return bool(path) and fnmatch.fnmatchcase(path[0], head) and _glob_path(rest, path[1:])


@dataclass(frozen=True, slots=True)
class IgnorePaths:
    """Compiled ignore patterns: the JSON members that never take part in a comparison."""

    patterns: tuple[tuple[str, ...], ...] = ()

    def matches(self, path: tuple[str, ...]) -> bool:
        """True when a pattern matches this path (keys, and list indexes as strings)."""
        return any(_glob_path(p, path) for p in self.patterns)

    def strip(self, value: Any, path: tuple[str, ...] = ()) -> Any:
        """A copy of a JSON value without the object members an ignore pattern matches."""
        if isinstance(value, dict):
            return {k: self.strip(v, (*path, str(k))) for k, v in value.items() if not self.matches((*path, str(k)))}
        if isinstance(value, list):
            return [self.strip(v, (*path, str(i))) for i, v in enumerate(value)]
        return value


def _split_names(values: str | Iterable[str]) -> list[str]:
    items = [values] if isinstance(values, str) else list(values)
    return [part.strip() for item in items for part in str(item).split(",") if part.strip()]


def parse_ignore(patterns: str | Iterable[str], *, with_defaults: bool = True) -> IgnorePaths:
    """Compiled ignore paths (dotted, `*` = one key or index, `**` = any depth); ValueError on a bad one.

    A pattern without a dot matches that key at any depth (``event_id``); a dotted pattern
    is anchored at the body's root
    (``simulation_specification.partial_conversation_history.*.time_in_call_secs``).
    """
    names = [*DEFAULT_IGNORE, *_split_names(patterns)] if with_defaults else _split_names(patterns)
    compiled: list[tuple[str, ...]] = []
    for name in names:
        segments = tuple(name.split("."))
        if any(not s for s in segments):
            raise ValueError(f"ignore path {name!r} has an empty segment (use '*' for any key or list index)")
        if len(segments) == 1 and segments[0] != "**":
            segments = ("**", *segments)
        if segments not in compiled:
            compiled.append(segments)
    return IgnorePaths(tuple(compiled))


DEFAULT_IGNORE_PATHS = parse_ignore(())


# --- comparing JSON -----------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _parse(raw: bytes) -> Any:
    if not raw:
        return NOT_JSON
    try:
        return loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return NOT_JSON


def parse_json(raw: bytes | str | None) -> Any:
    """The JSON value of a body or message text, or NOT_JSON (never mutate the result: it is cached)."""
    if raw is None:
        return NOT_JSON
    return _parse(raw.encode("utf-8") if isinstance(raw, str) else bytes(raw))


def comparable(value: Any, ignore: IgnorePaths) -> Any:
    """A JSON value ready to compare: ignored members removed, secrets masked (captures are redacted)."""
    return Redactor().json(ignore.strip(value))


@lru_cache(maxsize=4096)
def _comparable_raw(raw: bytes, ignore: IgnorePaths) -> Any:
    value = _parse(raw)
    return value if value is NOT_JSON else comparable(value, ignore)


def comparable_body(raw: bytes | str, ignore: IgnorePaths) -> Any:
    """The comparable() form of a body or message text, or NOT_JSON (cached: never mutate the result)."""
    return _comparable_raw(raw.encode("utf-8") if isinstance(raw, str) else bytes(raw), ignore)


def _same_scalar(a: Any, b: Any) -> bool:
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def first_difference(recorded: Any, got: Any, path: tuple[str, ...] = ()) -> tuple[str, Any, Any] | None:
    """The first place two JSON values differ, as (dotted path, recorded value, new value), or None."""
    if isinstance(recorded, dict) and isinstance(got, dict):
        for key in [*recorded, *(k for k in got if k not in recorded)]:
            found = first_difference(recorded.get(key, ABSENT), got.get(key, ABSENT), (*path, str(key)))
            if found:
                return found
        return None
    if isinstance(recorded, list) and isinstance(got, list):
        for i in range(max(len(recorded), len(got))):
            a = recorded[i] if i < len(recorded) else ABSENT
            b = got[i] if i < len(got) else ABSENT
            found = first_difference(a, b, (*path, str(i)))
            if found:
                return found
        return None
    if isinstance(recorded, dict | list) or isinstance(got, dict | list) or not _same_scalar(recorded, got):
        return (".".join(path) or "(root)", recorded, got)
    return None


def show(value: Any) -> str:
    """A value as quoted in a reason: strings in quotes, others as JSON, long ones cut."""
    if value is ABSENT:
        return "(absent)"
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
    if len(text) > SHOW_MAX:
        text = text[: SHOW_MAX - 1] + "…"
    return repr(text) if isinstance(value, str) else text


def _fold(text: str | None) -> str | None:
    return " ".join(text.split()) if text is not None else None


def _show_said(text: str | None) -> str:
    return "(none)" if text is None else show(text)


# --- what a request says --------------------------------------------------------------------


def user_text(obj: Any) -> str | None:
    """The newest user message of a body: a WS user_message's text, else a simulate call's newest user turn.

    For simulate-conversation that is the last user turn of ``partial_conversation_history``,
    or ``simulated_user_config.first_message`` when the history has none.
    """
    if not isinstance(obj, dict):
        return None
    said = user_message_text(obj)
    if said is not None:
        return said
    spec = obj.get("simulation_specification")
    if not isinstance(spec, dict):
        return None
    history = spec.get("partial_conversation_history")
    turns = turns_from_list(history) if isinstance(history, list) else []
    newest = next((t.text for t in reversed(turns) if t.role == USER), None)
    if newest is not None:
        return newest
    config = spec.get("simulated_user_config")
    first = config.get("first_message") if isinstance(config, dict) else None
    return first if isinstance(first, str) else None


def context_turns(obj: Any) -> dict[str, list[tuple[str, str]]]:
    """The conversation turns a body carries by field (simulate history, context-like fields), normalized."""
    out: dict[str, list[tuple[str, str]]] = {}
    if not isinstance(obj, dict):
        return out
    spec = obj.get("simulation_specification")
    history = spec.get("partial_conversation_history") if isinstance(spec, dict) else None
    if isinstance(history, list) and history:
        out[HISTORY_FIELD] = [t.key() for t in turns_from_list(history)]
    for name in EXTRA_CONTEXT_FIELDS:
        if name in obj:
            turns, _ = normalize_context(obj[name])
            if turns:
                out[name] = [t.key() for t in turns]
    return out


@lru_cache(maxsize=4096)
def _user_text_raw(raw: bytes) -> str | None:
    return user_text(_parse(raw))


@lru_cache(maxsize=4096)
def _context_raw(raw: bytes) -> dict[str, list[tuple[str, str]]]:
    return context_turns(_parse(raw))


def _show_turn(turn: tuple[str, str] | None) -> str:
    return "(absent)" if turn is None else f"{turn[0]} {show(turn[1])}"


# --- the predicates -------------------------------------------------------------------------

Predicate = Callable[[Exchange, Exchange, IgnorePaths], str | None]


def method(got: Exchange, recorded: Exchange, ignore: IgnorePaths) -> str | None:
    """None when the HTTP methods are equal, else the reason."""
    if got.method.upper() == recorded.method.upper():
        return None
    return f"method differs: recorded {recorded.method}, got {got.method}"


def endpoint(got: Exchange, recorded: Exchange, ignore: IgnorePaths) -> str | None:
    """None when the paths (agent id included, trailing slash aside) are equal, else the reason."""
    if got.path.rstrip("/") == recorded.path.rstrip("/"):
        return None
    return f"endpoint differs: recorded {recorded.path}, got {got.path}"


def _query_view(query: dict[str, str], ignore: IgnorePaths) -> dict[str, str]:
    return dict(ignore.strip({k: v for k, v in query.items() if k.lower() not in SECRET_PARAMS}))


def query(got: Exchange, recorded: Exchange, ignore: IgnorePaths) -> str | None:
    """None when the query parameters agree (secret and ignored ones aside), else the reason."""
    found = first_difference(_query_view(recorded.query, ignore), _query_view(got.query, ignore))
    if found is None:
        return None
    name, was, now = found
    return f"query parameter {name} differs: recorded {show(was)}, got {show(now)}"


def user_message(got: Exchange, recorded: Exchange, ignore: IgnorePaths) -> str | None:
    """None when both carry the same newest user message (whitespace folded), else the reason."""
    was, now = _user_text_raw(recorded.request_body), _user_text_raw(got.request_body)
    if _fold(was) == _fold(now):
        return None
    return f"user_message differs: recorded {_show_said(was)}, got {_show_said(now)}"


def context(got: Exchange, recorded: Exchange, ignore: IgnorePaths) -> str | None:
    """None when both carry the same conversation turns (roles and folded text), else the first difference."""
    was, now = _context_raw(recorded.request_body), _context_raw(got.request_body)
    for name in [*was, *(k for k in now if k not in was)]:
        a, b = was.get(name, []), now.get(name, [])
        if a == b:
            continue
        i = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        at = (a[i] if i < len(a) else None), (b[i] if i < len(b) else None)
        return (f"context differs in {name} at turn {i + 1}: recorded {_show_turn(at[0])}, got {_show_turn(at[1])} "
                f"(recorded {len(a)} turns, got {len(b)})")
    return None


def _body_text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def body(got: Exchange, recorded: Exchange, ignore: IgnorePaths) -> str | None:
    """None when the bodies agree: JSON after ignored members and secrets are removed, other bodies as bytes."""
    was, now = parse_json(recorded.request_body), parse_json(got.request_body)
    if was is NOT_JSON and now is NOT_JSON:
        a, b = Redactor().body(recorded.request_body) or b"", Redactor().body(got.request_body) or b""
        if a == b:
            return None
        return (f"body differs: recorded {len(a)} bytes {show(_body_text(a))}, "
                f"got {len(b)} bytes {show(_body_text(b))}")
    if was is NOT_JSON or now is NOT_JSON:
        kind = {True: "a JSON body", False: "a non-JSON body"}
        return f"body differs: recorded {kind[was is not NOT_JSON]}, got {kind[now is not NOT_JSON]}"
    old, new = comparable_body(recorded.request_body, ignore), comparable_body(got.request_body, ignore)
    found = None if old == new else first_difference(old, new)
    if found is None:
        return None
    where, was, now = found
    return f"body differs at {where}: recorded {show(was)}, got {show(now)}"


MATCHERS: dict[str, Predicate] = {
    "method": method,
    "endpoint": endpoint,
    "query": query,
    "user_message": user_message,
    "context": context,
    "body": body,
}
DEFAULT_MATCH_ON: tuple[str, ...] = tuple(MATCHERS)


def parse_match_on(names: str | Iterable[str]) -> tuple[str, ...]:
    """The matcher names to use, checked (a list or "a,b"); ValueError naming the valid ones for an unknown one."""
    chosen: list[str] = []
    for name in _split_names(names):
        if name not in MATCHERS:
            close = difflib.get_close_matches(name, list(MATCHERS), n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ValueError(f"unknown matcher {name!r} ({hint}valid: {', '.join(MATCHERS)})")
        if name not in chosen:
            chosen.append(name)
    if not chosen:
        raise ValueError(f"name at least one matcher (valid: {', '.join(MATCHERS)})")
    return tuple(chosen)


# --- finding the recorded call ---------------------------------------------------------------


@dataclass(slots=True)
class Comparison:
    """How one recorded request compares with a new one: predicates passed, and (name, reason) for the rest."""

    passed: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every predicate passed."""
        return not self.failures


def compare(got: Exchange, recorded: Exchange, match_on: Sequence[str] = DEFAULT_MATCH_ON,
            ignore: IgnorePaths = DEFAULT_IGNORE_PATHS) -> Comparison:
    """The Comparison of a new request with a recorded one over the named predicates."""
    out = Comparison()
    for name in match_on:
        reason = MATCHERS[name](got, recorded, ignore)
        if reason is None:
            out.passed.append(name)
        else:
            out.failures.append((name, reason))
    return out


def describe(ex: Exchange) -> str:
    """A recorded call as named in messages: "flow ID (METHOD PATH)"."""
    return f"flow {ex.flow_id} ({ex.method} {ex.path})"


@dataclass(slots=True)
class Match:
    """The recorded request that answers a new one, its index in the recording, and whether it was served before."""

    recorded: Exchange
    index: int
    repeated: bool = False


@dataclass(slots=True)
class Miss:
    """No unused recorded request answers: the nearest one, what it passed, and why the rest failed."""

    got: Exchange
    nearest: Exchange | None
    passed: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    served: bool = False  # the nearest matched on every predicate but its response was already served

    def message(self) -> str:
        """One sentence for an error response or a finding: the nearest recorded call and each failing reason."""
        head = "no recorded call matches"
        if self.nearest is None:
            return f"{head} {self.got.method} {self.got.path}: the capture holds no recorded calls"
        if self.served:
            return f"{head}: nearest is {describe(self.nearest)}: it matches but its response was already served"
        return f"{head}: nearest is {describe(self.nearest)}: " + "; ".join(reason for _, reason in self.failures)


class Matcher:
    """Finds the recorded request that answers a new one; each response is served once, in recording order."""

    def __init__(self, recorded: Sequence[Exchange], match_on: str | Iterable[str] = DEFAULT_MATCH_ON,
                 ignore: IgnorePaths = DEFAULT_IGNORE_PATHS, repeat_last: bool = False) -> None:
        self.recorded = list(recorded)
        self.match_on = parse_match_on(match_on)
        self.ignore = ignore
        self.repeat_last = repeat_last
        self.served = [0] * len(self.recorded)

    def find(self, got: Exchange) -> Match | Miss:
        """The first unused recorded match (marked served), the last one again if repeat_last, else a Miss."""
        results = [compare(got, r, self.match_on, self.ignore) for r in self.recorded]
        matching = [i for i, c in enumerate(results) if c.ok]
        for i in matching:
            if not self.served[i]:
                self.served[i] += 1
                return Match(self.recorded[i], i)
        if matching and self.repeat_last:
            self.served[matching[-1]] += 1
            return Match(self.recorded[matching[-1]], matching[-1], repeated=True)
        if matching:
            return Miss(got, self.recorded[matching[-1]], list(self.match_on), [], served=True)
        if not self.recorded:
            return Miss(got, None)
        nearest = max(range(len(results)), key=lambda i: (len(results[i].passed), not self.served[i]))
        return Miss(got, self.recorded[nearest], results[nearest].passed, results[nearest].failures)


# --- WebSocket steps --------------------------------------------------------------------------


@dataclass(slots=True)
class WsStep:
    """One step of a recorded socket: a client message (None before the first) and the server messages after it."""

    client: WsMessage | None
    client_index: int | None = None
    server: list[WsMessage] = field(default_factory=list)
    server_indexes: list[int] = field(default_factory=list)


def ws_steps(messages: Sequence[WsMessage]) -> list[WsStep]:
    """A recorded socket's messages split into steps; only the first step may lack a client message."""
    steps: list[WsStep] = []
    current = WsStep(None)
    for i, msg in enumerate(messages):
        if msg.from_client:
            if current.client is not None or current.server:
                steps.append(current)
            current = WsStep(msg, i)
        else:
            current.server.append(msg)
            current.server_indexes.append(i)
    if current.client is not None or current.server:
        steps.append(current)
    return steps


def _ws_kind(obj: Any) -> str | None:
    if isinstance(obj, dict) and "type" not in obj and "user_audio_chunk" in obj:
        return "user_audio_chunk"
    return frame_type(obj)


def describe_ws(msg: WsMessage) -> str:
    """A WebSocket message as named in messages: its type (and user text), or its size when binary."""
    if msg.text is None:
        return f"a binary frame of {msg.size} bytes"
    obj = parse_json(msg.text)
    if obj is NOT_JSON:
        return f"text {show(msg.text)}"
    kind = _ws_kind(obj) or "an untyped JSON message"
    said = user_text(obj)
    return f"{kind} {show(said)}" if said is not None else kind


def compare_ws_message(got: WsMessage, recorded: WsMessage, ignore: IgnorePaths = DEFAULT_IGNORE_PATHS) -> str | None:
    """None when a client message matches the recorded one (JSON-aware, ignored members aside), else the reason."""
    if recorded.text is None or got.text is None:
        if recorded.text is None and got.text is None:
            return None if recorded.size == got.size else (
                f"binary frame differs: recorded {recorded.size} bytes, got {got.size} bytes")
        return f"frame differs: recorded {describe_ws(recorded)}, got {describe_ws(got)}"
    was, now = parse_json(recorded.text), parse_json(got.text)
    if was is NOT_JSON or now is NOT_JSON:
        if was is NOT_JSON and now is NOT_JSON and Redactor().text(recorded.text) == Redactor().text(got.text):
            return None
        return f"message differs: recorded {describe_ws(recorded)}, got {describe_ws(got)}"
    if _ws_kind(was) != _ws_kind(now):
        return f"message type differs: recorded {_show_said(_ws_kind(was))}, got {_show_said(_ws_kind(now))}"
    said_was, said_now = user_text(was), user_text(now)
    if _fold(said_was) != _fold(said_now):
        return f"user_message differs: recorded {_show_said(said_was)}, got {_show_said(said_now)}"
    found = first_difference(comparable_body(recorded.text, ignore), comparable_body(got.text, ignore))
    if found is None:
        return None
    where, a, b = found
    return f"{_ws_kind(was) or 'message'} differs at {where}: recorded {show(a)}, got {show(b)}"


@dataclass(slots=True)
class WsStepMatch:
    """A client message matched the next step: the server messages to send, and the position after it."""

    step: WsStep
    position: int

    @property
    def send(self) -> list[WsMessage]:
        """The recorded server messages that followed the matched client message, in order."""
        return self.step.server


@dataclass(slots=True)
class WsMiss:
    """A client message the recording does not expect here: what was expected and why it differs."""

    got: WsMessage
    position: int
    steps: int
    expected: WsMessage | None
    reason: str

    def message(self) -> str:
        """One sentence: the client message, the recorded step it was compared with, and the reason."""
        got = describe_ws(self.got)
        if self.expected is None:
            return f"WebSocket replay: client sent {got}, but {self.reason}"
        return (f"WebSocket replay: client sent {got}, but step {self.position + 1} of {self.steps} expects "
                f"{describe_ws(self.expected)}: {self.reason}")


def match_ws_step(steps: Sequence[WsStep], position: int, got: WsMessage,
                  ignore: IgnorePaths = DEFAULT_IGNORE_PATHS) -> WsStepMatch | WsMiss:
    """The server messages to send when a client message matches the step at `position`, else a WsMiss."""
    if position >= len(steps):
        client_steps = sum(1 for s in steps if s.client is not None)
        return WsMiss(got, position, len(steps), None,
                      f"the recording has no more client messages (all {client_steps} replayed)")
    expected = steps[position].client
    if expected is None:
        return WsMiss(got, position, len(steps), None, "the recording expects the server to speak first")
    reason = compare_ws_message(got, expected, ignore)
    if reason is not None:
        return WsMiss(got, position, len(steps), expected, reason)
    return WsStepMatch(steps[position], position + 1)


class WsReplay:
    """Walks one recorded socket: each client message that matches the next step releases the server's answer."""

    def __init__(self, messages: Sequence[WsMessage], ignore: IgnorePaths = DEFAULT_IGNORE_PATHS) -> None:
        self.steps = ws_steps(messages)
        self.ignore = ignore
        self.position = 1 if self.steps and self.steps[0].client is None else 0

    @property
    def opening(self) -> list[WsMessage]:
        """The server messages recorded before any client message (sent on connect)."""
        return self.steps[0].server if self.steps and self.steps[0].client is None else []

    @property
    def done(self) -> bool:
        """True when every recorded client message has been matched."""
        return self.position >= len(self.steps)

    def feed(self, got: WsMessage) -> WsStepMatch | WsMiss:
        """Match the next client message; on a match advance and return what to send, else a WsMiss (no advance)."""
        found = match_ws_step(self.steps, self.position, got, self.ignore)
        if isinstance(found, WsStepMatch):
            self.position = found.position
        return found

"""View records: the analysis turned into exactly what the report shows (sorting, labels, classes, diff lines).

Templates only loop over these records and print their fields; every decision (what is a
reset, which class a row gets, how a body is clipped) is made here, in plain Python.
"""

from __future__ import annotations

import contextlib
import json
import re
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from markupsafe import Markup

from sessiontap.core.analysis import Analysis, context_size
from sessiontap.core.code import where
from sessiontap.core.contextdiff import ContextDiff, diff
from sessiontap.core.model import HTTP, WEBSOCKET, Call, Finding, FlowRecord, SessionState, Turn, Turns, WsMessage
from sessiontap.core.protocol import frame_type, loads, parse_frame
from sessiontap.core.rules import ERROR, INFO, RULES, WARNING, carried_context
from sessiontap.core.settings import DEFAULTS
from sessiontap.reports.svg import SERVER_LABEL, DiagramRow, GrowthPoint, flow_diagram, growth_chart

BODY_LIMIT = 4000  # characters of a request/response body shown; the rest is in flows.mitm
INDENT_DEPTH = 32  # JSON nested deeper is shown compact: indenting costs time and width quadratic in the depth
TURN_LIMIT = 2000  # characters of one turn in a diff
MESSAGE_LIMIT = 600  # characters of one WebSocket message
FOLD_KEEP = 2  # unchanged turns shown at each side of a change; the rest fold into one line
SEVERITY_RANK = {ERROR: 0, WARNING: 1, INFO: 2, "": 3}
FINDINGS_SHOWN = 25  # findings listed per rule; a session's own are on its calls
AUDIO_KEYS = ("audio_base_64", "user_audio_chunk", "audio")


@dataclass(slots=True)
class Meta:
    """Where the report came from: capture, version, time, and the limit the growth chart draws."""

    source: str
    version: str
    generated: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
    max_context_tokens: int = DEFAULTS.max_context_tokens


@dataclass(slots=True)
class DiffLine:
    """One line of a context diff: op is same, add, drop, change or fold (``count`` turns folded)."""

    op: str
    role: str = ""
    text: str = ""
    old: str = ""
    count: int = 0

    @property
    def sign(self) -> str:
        """The diff sign shown in the margin."""
        return {"add": "+", "drop": "−", "change": "~"}.get(self.op, " ")


@dataclass(slots=True)
class DiffView:
    """The turns a call carried against the previous call of its session."""

    where: str  # the field the context travelled in, and its format
    summary: str
    size: str
    lines: list[DiffLine]
    also: list[str] = field(default_factory=list)  # other fields that carried context


@dataclass(slots=True)
class Body:
    """A request or response body, pretty-printed and clipped."""

    title: str
    text: str
    note: str = ""


@dataclass(slots=True)
class WsLine:
    """One WebSocket message of a call, in order."""

    direction: str  # "client" or "server"
    time: str
    kind: str
    text: str


@dataclass(slots=True)
class CallDetails:
    """What was on the wire for one call."""

    method: str
    url: str
    status: str
    timing: str
    request_headers: list[tuple[str, str]]
    response_headers: list[tuple[str, str]]
    bodies: list[Body]
    messages: list[WsLine]
    audio: str = ""
    error: str = ""


@dataclass(slots=True)
class CallRow:
    """One call as a row of its session: what was said, what happened to the server conversation."""

    anchor: str
    number: int
    session_anchor: str
    protocol: str
    when: str
    duration: str
    status: str
    status_class: str
    declared: str
    server_conversation: str
    conversation_event: str  # new | reused | restarted | failed
    conversation_label: str
    reset: bool
    rules: list[str]
    severity: str
    user_text: str
    reply_text: str
    diff: DiffView
    details: CallDetails | None
    code: str = ""  # the client's code that sent it: "websocket.py:171 send ← durin.py:55 run"


@dataclass(slots=True)
class SessionView:
    """One session: summary always; diagram, chart and calls when it is shown in detail."""

    id: str
    anchor: str
    id_source: str
    evidence: str  # how its calls were grouped, e.g. "server conversation ×4, order in time ×1"
    protocol: str
    n_calls: int
    server_conversations: int
    resets: int
    severity: str
    rules: list[str]
    started: str
    diagram: Markup = Markup("")
    growth: Markup = Markup("")
    calls: list[CallRow] = field(default_factory=list)
    omitted_calls: int = 0


@dataclass(slots=True)
class FindingView:
    """A finding with links to its session and calls."""

    rule: str
    severity: str
    message: str
    fix: str
    session: str
    session_anchor: str
    calls: list[tuple[str, str]]  # (label, anchor)
    evidence: str
    times: int = 1  # findings of this rule in this session, shown as one


@dataclass(slots=True)
class RuleGroup:
    """The findings of one rule (the first ``FINDINGS_SHOWN``; the rest are counted, and are in findings.json)."""

    rule: str
    meaning: str
    severity: str
    findings: list[FindingView]
    total: int = 0

    @property
    def hidden(self) -> int:
        """Findings of this rule not listed on the page."""
        return self.total - sum(f.times for f in self.findings)


@dataclass(slots=True)
class ProtocolRow:
    """HTTP vs WebSocket: how each protocol's sessions fared."""

    protocol: str
    sessions: int
    calls: int
    server_conversations: int
    turns_per_conversation: str
    resets: int
    median_latency: str


@dataclass(slots=True)
class ReportView:
    """Everything on the page."""

    meta: Meta
    headline: str
    headline_class: str
    verdict: str
    tiles: list[tuple[str, str, str]]  # (label, value, css class)
    top_findings: list[FindingView]
    sessions: list[SessionView]
    rule_groups: list[RuleGroup]
    protocols: list[ProtocolRow]
    rules_seen: list[str]
    notes: int


# -- small pure helpers ------------------------------------------------------------------------------------------

def plural(n: int, word: str, many: str | None = None) -> str:
    """'1 call', '3 calls'."""
    return f"{n:,} {word if n == 1 else (many or word + 's')}"


def clip(text: str, limit: int) -> tuple[str, str]:
    """The text cut to ``limit`` characters, and a note saying how much was left out."""
    if len(text) <= limit:
        return text, ""
    return text[:limit], f"{len(text) - limit:,} more characters not shown (the full text is in flows.mitm)"


def clock(ts: float | None) -> str:
    """A timestamp as UTC HH:MM:SS.mmm ("" when unknown)."""
    if ts is None:
        return ""
    return time.strftime("%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}"


def duration(call: Call) -> str:
    """How long a call took, in ms."""
    if call.ended is None:
        return "—"
    return f"{(call.ended - call.started) * 1000:,.0f} ms"


def worst(severities: list[str]) -> str:
    """The most severe of some severities ("" when none)."""
    return min(severities, key=lambda s: SEVERITY_RANK.get(s, 3), default="")


def summarise_audio(obj: Any) -> Any:
    """A JSON value with base64 audio replaced by its size (audio is never shown)."""
    if isinstance(obj, dict):
        return {k: (f"<{len(v):,} characters of base64 audio>" if k in AUDIO_KEYS and isinstance(v, str) and len(v) > 64
                    else summarise_audio(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [summarise_audio(v) for v in obj]
    return obj


def pretty(raw: bytes | str | None, limit: int = BODY_LIMIT) -> tuple[str, str]:
    """A body for reading: JSON indented (audio summarised), text as is, binary as its size; clipped."""
    if raw is None:
        return "", ""
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return f"<{len(raw):,} bytes of binary data>", ""
    else:
        text = raw
    if not text:
        return "", ""
    with contextlib.suppress(ValueError, RecursionError):
        value = summarise_audio(loads(text))
        indent = 2 if nesting(value, INDENT_DEPTH) <= INDENT_DEPTH else None  # deeper: compact, in linear time
        text = json.dumps(value, indent=indent, ensure_ascii=False)
    return clip(text, limit)


def nesting(value: Any, limit: int) -> int:
    """How deeply a JSON value nests (a scalar 0), counted up to ``limit + 1``; any depth is safe (no recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack and deepest <= limit:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def anchor_for(prefix: str, n: int) -> str:
    """A stable, safe element id."""
    return f"{prefix}-{n}"


_SAFE = re.compile(r"[^A-Za-z0-9_.:-]")


def message_kind(text: str | None) -> str:
    """The ``type`` of a WebSocket JSON message ("binary" or "text" when it has none)."""
    if text is None:
        return "binary"
    obj = parse_frame(text)
    if obj is None and text.strip() != "null":
        return "text"
    kind = frame_type(obj)
    return _SAFE.sub("_", kind)[:60] if kind else "json"


# -- diffs -------------------------------------------------------------------------------------------------------

def _line(op: str, t: Turn) -> DiffLine:
    return DiffLine(op, t.role, clip(t.text, TURN_LIMIT)[0])


def _kept(turns: list[Turn], at_start: bool) -> list[DiffLine]:
    """Unchanged turns: a few shown next to the change, the rest folded into one line."""
    if len(turns) <= 2 * FOLD_KEEP + 1:
        return [_line("same", t) for t in turns]
    if at_start:
        return [DiffLine("fold", count=len(turns) - FOLD_KEEP)] + [_line("same", t) for t in turns[-FOLD_KEEP:]]
    return [_line("same", t) for t in turns[:FOLD_KEEP]] + [DiffLine("fold", count=len(turns) - FOLD_KEEP)]


def diff_lines(old: Turns, new: Turns, d: ContextDiff) -> list[DiffLine]:
    """The diff as lines, like a code diff: kept turns folded, dropped, changed and added turns marked."""
    lines = _kept(new[: d.prefix], at_start=True)
    for a, b in d.changed:
        lines.append(DiffLine("change", b.role, clip(b.text, TURN_LIMIT)[0], clip(a.text, TURN_LIMIT)[0]))
    lines += [_line("drop", t) for t in d.dropped]
    lines += [_line("add", t) for t in d.added]
    lines += _kept(new[len(new) - d.suffix:] if d.suffix else [], at_start=False)
    return lines


def diff_view(call: Call, prev: Call | None, d: ContextDiff | None) -> DiffView:
    """The context diff of a call against the previous call of its session, in the field that carried most."""
    where, turns = carried_context(call)
    old = carried_context(prev)[1] if prev else []
    if where != call.context_field or d is None:
        d = diff(old, turns)
    size = context_size(call)
    if prev is None:
        summary = "first call of the session: " + plural(len(turns), "turn") + " sent"
    else:
        parts = [f"{n} {word}" for n, word in ((len(d.added), "added"), (len(d.dropped), "dropped"),
                                                (len(d.changed), "changed")) if n]
        summary = ", ".join(parts) if parts else "no change"
        if d.new_len < d.old_len:
            summary += f" (went from {d.old_len} to {d.new_len} turns)"
    fields = {call.context_field: call.context, **call.extra_context} if call.context_field else call.extra_context
    also = [f"{name}: {plural(len(t), 'turn')}" + (f" ({call.context_formats[name]})"
                                                   if name in call.context_formats else "")
            for name, t in fields.items() if name != where]
    fmt = call.context_formats.get(where, "")
    return DiffView(
        where=(where or "—") + (f" ({fmt})" if fmt else ""),
        summary=summary,
        size=f"{plural(size['turns'], 'turn')} · {size['chars']:,} chars · ~{size['tokens']:,} tokens",
        lines=diff_lines(old, turns, d),
        also=also,
    )


# -- call details ------------------------------------------------------------------------------------------------

def ws_windows(calls: list[Call], messages: list[WsMessage]) -> dict[str, list[WsMessage]]:
    """The messages of a socket split by call: each message goes to the first call still open at its time."""
    out: dict[str, list[WsMessage]] = {c.id: [] for c in calls}
    if not calls:
        return out
    ordered = sorted(calls, key=lambda c: c.started)
    i = 0
    for m in messages:
        while i < len(ordered) - 1 and m.timestamp > (ordered[i].ended or ordered[i].started):
            i += 1
        out[ordered[i].id].append(m)
    return out


def call_details(call: Call, rec: FlowRecord | None, messages: list[WsMessage]) -> CallDetails | None:
    """What was on the wire for a call (None when its flow is not in the capture)."""
    if rec is None:
        return None
    ex = rec.exchange
    bodies = []
    if call.protocol == HTTP:
        for title, raw in (("request", ex.request_body), ("response", ex.response_body)):
            text, note = pretty(raw)
            if text:
                bodies.append(Body(title, text, note))
    lines = []
    for m in messages:
        text, _ = pretty(m.text if m.text is not None else f"<{m.size:,} bytes binary>", MESSAGE_LIMIT)
        lines.append(WsLine("client" if m.from_client else "server", clock(m.timestamp), message_kind(m.text),
                            " ".join(text.split()) if len(text) < MESSAGE_LIMIT else text))
    audio = ""
    if rec.audio.get("frames"):
        audio = (f"{plural(rec.audio['frames'], 'audio frame')} ({rec.audio.get('bytes', 0):,} bytes) "
                 "on this socket were summarised, not kept")
    timing = f"{clock(call.started)} → {clock(call.ended)} ({duration(call)})"
    status = str(ex.status) if call.protocol == HTTP and ex.status is not None else ""
    if call.protocol == WEBSOCKET:
        status = f"101, closed {rec.close_code}" if rec.close_code is not None else "101"
    return CallDetails(ex.method, ex.url, status, timing, sorted(ex.request_headers.items()),
                       sorted(ex.response_headers.items()), bodies, lines, audio, ex.error or "")


# -- sessions ----------------------------------------------------------------------------------------------------

def _conversation(call: Call, prev: Call | None, seen: set[str], reset: bool) -> tuple[str, str]:
    """(event class, label) for what happened to the server conversation at this call."""
    short = call.conversation_id or call.server_conversation
    short = short if len(short) <= 24 else short[:23] + "…"
    if call.error is not None or (call.status or 0) >= 400:
        return "failed", f"failed: {call.error or call.status}"
    if call.protocol == HTTP:
        sent = plural(len(call.context), "turn") + " of history"
        elsewhere = sum(len(t) for t in call.extra_context.values())
        if elsewhere:
            sent += f" (+{elsewhere} in {', '.join(call.extra_context)})"
        if reset:
            return "restarted", f"history restarted: {sent}"
        return ("reused" if prev is not None else "new"), f"{'continued' if prev else 'started'}: {sent}"
    if call.server_conversation in seen:
        return "reused", f"same conversation {short}"
    why = "new socket" if prev is None or prev.flow_id != call.flow_id else "new conversation_id"
    return ("restarted" if reset else "new"), f"new conversation {short} ({why})"


def session_rows(state: SessionState, session_anchor: str, call_anchors: Mapping[str, str],
                 by_call: Mapping[str, list[Finding]], diffs: Mapping[str, ContextDiff],
                 records: Mapping[str, FlowRecord]) -> list[CallRow]:
    """The calls of a session as rows, with diffs and wire details."""
    windows: dict[str, list[WsMessage]] = {}
    flows: dict[str, list[Call]] = {}
    for c in state.calls:
        if c.protocol == WEBSOCKET:
            flows.setdefault(c.flow_id, []).append(c)
    for flow_id, calls in flows.items():
        rec = records.get(flow_id)
        windows.update(ws_windows(calls, rec.messages if rec else []))
    rows: list[CallRow] = []
    seen: set[str] = set()
    prev: Call | None = None
    for n, call in enumerate(state.calls, 1):
        found = by_call.get(call.id, [])
        reset = call.id in state.resets
        event, label = _conversation(call, prev, seen, reset)
        seen.add(call.server_conversation)
        status = str(call.status) if call.status is not None else ("error" if call.error else "")
        rows.append(CallRow(
            anchor=call_anchors[call.id], number=n, session_anchor=session_anchor, protocol=call.protocol,
            when=clock(call.started), duration=duration(call), status=status,
            status_class="bad" if call.error or (call.status or 0) >= 400 else "ok",
            declared=call.declared_session or call.user_id or "", server_conversation=call.server_conversation,
            conversation_event=event, conversation_label=label, reset=reset,
            rules=sorted({f.rule for f in found}), severity=worst([f.severity for f in found]),
            user_text=clip(call.user_text or "", TURN_LIMIT)[0], reply_text=clip(call.reply_text, TURN_LIMIT)[0],
            diff=diff_view(call, prev, diffs.get(call.id)),
            details=call_details(call, records.get(call.flow_id), windows.get(call.id, [])),
            code=where(call.code),
        ))
        prev = call
    return rows


def opened_from(row: CallRow) -> str:
    """A diagram's server label: what happened to the conversation, and for a new one the line that opened it."""
    if row.code and row.conversation_event in ("new", "restarted"):
        file, _, rest = row.code.split(" ← ")[0].partition(":")
        at = f" ← {file.rsplit('/', 1)[-1]}:{rest.split(' ')[0]}"
        room = SERVER_LABEL - len(at)
        label = row.conversation_label
        return (label if len(label) <= room else label[: room - 1] + "…") + at
    return row.conversation_label


def detail_session(view: SessionView, state: SessionState, analysis: Analysis, index: ReportIndex,
                   records: Mapping[str, FlowRecord], limit: int) -> None:
    """Fill a session's diagram, growth chart and call rows (the heavy part, done only for shown sessions)."""
    rows = session_rows(state, view.anchor, index.call_anchor, index.by_call, analysis.diffs, records)
    diagram = [DiagramRow(r.anchor, f"#{r.number} {r.declared or '(no id)'}", opened_from(r),
                          r.conversation_event, r.reset, ", ".join(r.rules), code=r.code) for r in rows]
    view.diagram = flow_diagram(diagram, f"flow of session {view.id}")
    points = [GrowthPoint(**{k: context_size(c)[k] for k in ("turns", "tokens")}) for c in state.calls]
    view.growth = growth_chart(points, limit, f"context growth of session {view.id}")
    view.calls = rows


# -- the whole report --------------------------------------------------------------------------------------------

@dataclass(slots=True)
class ReportIndex:
    """Look-ups shared by the builders: anchors by call id and session id, findings by call."""

    call_anchor: dict[str, str]
    session_anchor: dict[str, str]
    by_call: dict[str, list[Finding]]
    call_label: dict[str, str]


def build_index(analysis: Analysis) -> ReportIndex:
    """Anchors and look-ups for an analysis (stable: call and session order)."""
    call_anchor = {c.id: anchor_for("call", i) for i, c in enumerate(analysis.calls, 1)}
    session_anchor = {s.id: anchor_for("session", i) for i, s in enumerate(analysis.sessions, 1)}
    label = {}
    for s in analysis.sessions:
        for n, c in enumerate(s.calls, 1):
            label[c.id] = f"{s.id} #{n}"
    by_call: dict[str, list[Finding]] = {}
    for f in analysis.findings:
        for cid in f.call_ids:
            by_call.setdefault(cid, []).append(f)
    return ReportIndex(call_anchor, session_anchor, by_call, label)


def finding_view(f: Finding, index: ReportIndex) -> FindingView:
    """A finding for the page."""
    evidence, note = pretty(json.dumps(f.evidence, ensure_ascii=False, default=str), BODY_LIMIT)
    calls = [(index.call_label.get(cid, cid), index.call_anchor[cid]) for cid in f.call_ids if cid in index.call_anchor]
    return FindingView(f.rule, f.severity, f.message, f.fix, f.session, index.session_anchor.get(f.session, ""),
                       calls, evidence + (f"\n… {note}" if note else ""))


def protocol_rows(analysis: Analysis) -> list[ProtocolRow]:
    """HTTP vs WebSocket, one row per protocol seen."""
    rows = []
    for proto in (HTTP, WEBSOCKET):
        sessions = [s for s in analysis.sessions if s.protocol == proto]
        if not sessions:
            continue
        calls = [c for s in sessions for c in s.calls]
        convs = sum(len(s.server_conversations) for s in sessions)
        user_turns = sum(1 for c in calls if c.user_text is not None)
        latencies = [c.ended - c.started for c in calls if c.ended is not None and c.error is None]
        rows.append(ProtocolRow(
            "HTTP (simulate-conversation)" if proto == HTTP else "WebSocket", len(sessions), len(calls), convs,
            f"{user_turns / convs:.1f}" if convs else "—", sum(len(s.resets) for s in sessions),
            f"{statistics.median(latencies) * 1000:,.0f} ms" if latencies else "—"))
    return rows


def session_view(state: SessionState, found: list[Finding], index: ReportIndex) -> SessionView:
    """A session's summary from its findings (its details are filled by ``detail_session`` when shown)."""
    return SessionView(
        id=state.id, anchor=index.session_anchor[state.id], id_source=state.source,
        evidence=", ".join(f"{kind} ×{n}" for kind, n in sorted(state.evidence.items(), key=lambda kv: -kv[1])),
        protocol=state.protocol,
        n_calls=len(state.calls), server_conversations=len(state.server_conversations), resets=len(state.resets),
        severity=worst([f.severity for f in found]), rules=sorted({f.rule for f in found}),
        started=clock(state.calls[0].started) if state.calls else "")


def build_report(analysis: Analysis, meta: Meta) -> tuple[ReportView, ReportIndex]:
    """The page's records; sessions come worst first, each with its summary only."""
    index = build_index(analysis)
    resets = sum(len(s.resets) for s in analysis.sessions)
    errors = sum(1 for f in analysis.findings if f.severity == ERROR)
    warnings = sum(1 for f in analysis.findings if f.severity == WARNING)
    if not analysis.calls:
        headline, cls = "No conversational calls were recorded", "neutral"
    elif errors or resets:
        headline, cls = "The conversation does not continue", "bad"
    else:
        headline, cls = "The conversation continues", "good"
    tiles = [("sessions", f"{len(analysis.sessions):,}", ""), ("calls", f"{len(analysis.calls):,}", ""),
             ("server conversations", f"{sum(len(s.server_conversations) for s in analysis.sessions):,}", ""),
             ("resets", f"{resets:,}", "bad" if resets else "good"),
             ("errors", f"{errors:,}", "bad" if errors else "good"),
             ("warnings", f"{warnings:,}", "warn" if warnings else "")]
    top: list[FindingView] = []
    seen_rules: set[str] = set()
    for f in analysis.findings:
        if f.rule not in seen_rules and len(top) < 5 and f.severity != INFO:
            seen_rules.add(f.rule)
            top.append(finding_view(f, index))
    groups: dict[str, RuleGroup] = {}
    by_session: dict[str, list[Finding]] = {}
    once: dict[tuple[str, str, str], FindingView] = {}  # (rule, session, severity): one entry with all its calls
    for f in analysis.findings:
        by_session.setdefault(f.session, []).append(f)
        g = groups.setdefault(f.rule, RuleGroup(f.rule, RULES.get(f.rule, ""), f.severity, []))
        g.severity = worst([g.severity, f.severity])
        g.total += 1
        shown = once.get((f.rule, f.session, f.severity))
        if shown is not None:
            shown.times += 1
            shown.calls += [c for c in finding_view(f, index).calls if c not in shown.calls]
        elif len(g.findings) < FINDINGS_SHOWN:
            once[(f.rule, f.session, f.severity)] = view = finding_view(f, index)
            g.findings.append(view)
    sessions = [session_view(s, by_session.get(s.id, []), index) for s in analysis.sessions]
    order = {s.id: i for i, s in enumerate(analysis.sessions)}
    sessions.sort(key=lambda v: (SEVERITY_RANK.get(v.severity, 3), -v.resets, order[v.id]))
    rule_groups = sorted(groups.values(), key=lambda g: (SEVERITY_RANK.get(g.severity, 3), g.rule))
    return ReportView(meta, headline, cls, analysis.verdict(), tiles, top, sessions, rule_groups,
                      protocol_rows(analysis), [g.rule for g in rule_groups], len(analysis.notes)), index

"""Inline SVG drawn from view records: the session flow diagram and the context growth chart.

Every text that reaches the SVG goes through ``markupsafe.escape``; colours come from CSS
classes in ``static/report.css`` (no style attributes, so the page's CSP needs no
'unsafe-inline' for styles).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH = 760
ROW = 30
TOP = 44
LANES = (("client", 8, 242), ("sessiontap", 262, 146), ("ElevenLabs", 420, 336))
ARROW_FROM, ARROW_TO = 222, 412
MAX_POINTS = 400  # a growth line keeps at most this many points (long sessions are sampled evenly)


@dataclass(slots=True)
class DiagramRow:
    """One call in a flow diagram; ``gap`` rows stand for calls left out of a long session."""

    anchor: str
    label: str  # "#3 elevenlabs-session-0": call number and the client-declared id
    server: str  # "new conv_1a2b (new socket)", "same conv_1a2b", "sent 4 turns"
    event: str  # css class: new | reused | restarted | failed | gap
    reset: bool = False
    rules: str = ""  # the rule ids raised at this call, for the tooltip
    gap: int = 0
    code: str = ""  # the client's code path that sent the call, for the tooltip


SERVER_LABEL = 46  # characters of the server lane's label


def _clip(text: str, n: int) -> str:
    """The text cut to at most n characters, at a word boundary when one is near, with an ellipsis."""
    if len(text) <= n:
        return text
    cut = text[: n - 1]
    space = cut.rfind(" ")
    if space >= n // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:(") + "…"


def _text(x: float, y: float, text: str, cls: str = "", anchor: str = "start") -> str:
    c = f' class="{cls}"' if cls else ""
    a = f' text-anchor="{anchor}"' if anchor != "start" else ""
    return f'<text x="{x:.0f}" y="{y:.0f}"{c}{a}>{escape(text)}</text>'


def elide(rows: Sequence[DiagramRow], keep: int = 24) -> list[DiagramRow]:
    """Long sessions: keep the first and last ``keep`` rows and every reset or finding row; fold the rest."""
    if len(rows) <= 3 * keep:
        return list(rows)
    out: list[DiagramRow] = []
    skipped = 0
    for i, row in enumerate(rows):
        if i < keep or i >= len(rows) - keep or row.reset or row.rules:
            if skipped:
                out.append(DiagramRow("", "", "", "gap", gap=skipped))
                skipped = 0
            out.append(row)
        else:
            skipped += 1
    return out


def flow_diagram(rows: Sequence[DiagramRow], title: str) -> Markup:
    """The session flow diagram: lanes for client, sessiontap and ElevenLabs, one row per call."""
    rows = elide(rows)
    height = TOP + ROW * len(rows) + 10
    parts = [f'<svg class="flow" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" role="img" '
             f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
             'orient="auto-start-reverse"><path d="M0,0L10,5L0,10z" class="arrowhead"/></marker></defs>']
    for name, x, width in LANES:
        parts.append(f'<rect class="lane" x="{x - 4}" y="4" width="{width}" height="{height - 8}" rx="6"/>')
        parts.append(_text(x + 4, 24, name, "lane-title"))
    for i, row in enumerate(rows):
        y = TOP + i * ROW + ROW / 2
        if row.event == "gap":
            parts.append(_text(WIDTH / 2, y + 4, f"… {row.gap} calls without findings …", "gap", "middle"))
            continue
        tip = f"<title>{escape(row.label)}: {escape(row.server)}{escape(' — ' + row.rules if row.rules else '')}"
        tip += escape(f" — sent from {row.code}") if row.code else ""
        tip += "</title>"
        cls = "row reset" if row.reset else ("row flagged" if row.rules else "row")
        parts.append(f'<a href="#{escape(row.anchor)}" class="{cls}" data-call="{escape(row.anchor)}">{tip}')
        parts.append(f'<rect class="hit" x="0" y="{y - ROW / 2:.0f}" width="{WIDTH}" height="{ROW}"/>')
        parts.append(_text(12, y + 4, _clip(row.label, 30), "client"))
        parts.append(f'<line class="call-line" x1="{ARROW_FROM}" y1="{y:.0f}" x2="{ARROW_TO}" y2="{y:.0f}" '
                     'marker-end="url(#arrow)"/>')
        if row.reset:
            parts.append(f'<path class="reset-marker" d="M{337},{y - 9:.0f}l9,9l-9,9l-9,-9z"/>')
            parts.append(_text(352, y + 4, "reset", "reset-label"))
        else:
            parts.append(f'<circle class="tag" cx="337" cy="{y:.0f}" r="4"/>')
        parts.append(f'<rect class="conv {escape(row.event)}" x="420" y="{y - 11:.0f}" width="326" height="22" '
                     'rx="4"/>')
        parts.append(_text(428, y + 4, _clip(row.server, SERVER_LABEL), "conv-label"))
        parts.append("</a>")
    parts.append("</svg>")
    return Markup("".join(parts))


@dataclass(slots=True)
class GrowthPoint:
    """Context size at one call: turns and approximate tokens."""

    turns: int
    tokens: int


def growth_chart(points: Sequence[GrowthPoint], limit: int, title: str) -> Markup:
    """Context growth per call: tokens (solid) and turns (dashed), with the token limit drawn."""
    w, h, left, right, top, bottom = WIDTH, 170, 56, 56, 16, 28
    peak_tokens = max((p.tokens for p in points), default=0)
    scale_tokens = max(peak_tokens * 1.15, 10.0)
    limit_on_chart = 0 < limit <= scale_tokens * 1.5
    if limit_on_chart:
        scale_tokens = max(scale_tokens, limit * 1.05)
    peak_turns = max((p.turns for p in points), default=0) or 1
    n = max(len(points) - 1, 1)

    def x(i: int) -> float:
        return left + (w - left - right) * (i / n if len(points) > 1 else 0.5)

    def y(v: float, top_v: float) -> float:
        return top + (h - top - bottom) * (1 - v / top_v)

    parts = [f'<svg class="growth" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" '
             f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
             f'<rect class="plot" x="{left}" y="{top}" width="{w - left - right}" height="{h - top - bottom}"/>',
             _text(left - 6, top + 8, f"{scale_tokens:,.0f}", "axis", "end"),
             _text(left - 6, h - bottom, "0", "axis", "end"),
             _text(w - right + 6, top + 8, f"{peak_turns} turns", "axis turns-axis"),
             _text(left, h - 8, "call 1", "axis"),
             _text(w - right, h - 8, f"call {len(points)}", "axis", "end")]
    if limit_on_chart:
        ly = y(limit, scale_tokens)
        parts.append(f'<line class="limit" x1="{left}" y1="{ly:.1f}" x2="{w - right}" y2="{ly:.1f}"/>')
        parts.append(_text(left + 4, ly - 4, f"limit {limit:,} tokens", "limit-label"))
    elif limit > 0:
        parts.append(_text(left + 6, top + 12, f"limit {limit:,} tokens: far above this session", "limit-label"))
    if points:
        step = max(1, -(-len(points) // MAX_POINTS))
        shown = [(i, points[i]) for i in range(0, len(points), step)]
        if shown[-1][0] != len(points) - 1:
            shown.append((len(points) - 1, points[-1]))
        tokens = " ".join(f"{x(i):.1f},{y(p.tokens, scale_tokens):.1f}" for i, p in shown)
        turns = " ".join(f"{x(i):.1f},{y(p.turns, peak_turns):.1f}" for i, p in shown)
        parts.append(f'<polyline class="tokens" points="{tokens}"/>')
        parts.append(f'<polyline class="turns" points="{turns}"/>')
    parts.append(_text(left + 6, h - bottom - 6, "— approx. tokens   - - turns", "legend"))
    parts.append("</svg>")
    return Markup("".join(parts))

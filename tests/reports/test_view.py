"""View records and rendering without a browser (reports/view.py, svg.py, html.py)."""

from __future__ import annotations

import base64
import hashlib
import json
import re

from sessiontap.core.analysis import Analyzer
from sessiontap.core.contextdiff import diff
from sessiontap.core.model import AGENT, HTTP, USER, WEBSOCKET, Call, Exchange, FlowRecord, Turn, WsMessage
from sessiontap.reports.html import render
from sessiontap.reports.svg import DiagramRow, GrowthPoint, elide, flow_diagram, growth_chart
from sessiontap.reports.view import Meta, diff_lines, pretty, ws_windows

U, A = (lambda s: Turn(USER, s)), (lambda s: Turn(AGENT, s))


def call(i: int, context: list[Turn], reply: str, session: str = "S", **kw) -> Call:
    c = Call(id=f"c{i}", flow_id=f"f{i}", protocol=kw.pop("protocol", HTTP), endpoint="simulate", agent_id="ag",
             started=1_700_000_000.0 + i, context=context, reply=[A(reply)], declared_session=session,
             server_conversation=kw.pop("server", f"f{i}"), context_field="history",
             user_text=context[-1].text if context and context[-1].role == USER else None, **kw)
    c.ended = c.started + 0.25
    return c


def analysed(calls: list[Call]):
    an = Analyzer()
    for c in calls:
        an.add_call(c)
    return an.result()


def record(flow_id: str, body: dict | None = None, messages: list[WsMessage] | None = None) -> FlowRecord:
    ex = Exchange(flow_id, "POST", "http://127.0.0.1/v1/x", "/v1/x", {}, {"xi-api-key": "[REDACTED]"},
                  json.dumps(body or {}).encode(), 1.0, 200, {}, b'{"ok": true}', 1.1)
    return FlowRecord(ex, messages or [])


def test_long_unchanged_context_folds_and_changes_are_marked():
    old = [U(f"u{i}") if i % 2 == 0 else A(f"a{i}") for i in range(20)]
    new = old[:-1] + [A("edited"), U("next")]
    lines = diff_lines(old, new, diff(old, new))
    assert [ln.op for ln in lines] == ["fold", "same", "same", "change", "add"]
    assert lines[0].count == 17 and lines[3].old == "a19" and lines[3].text == "edited"
    assert [ln.sign for ln in lines[3:]] == ["~", "+"]
    dropped = diff_lines(new, [], diff(new, []))
    assert {ln.op for ln in dropped} == {"drop"} and len(dropped) == len(new)


def test_bodies_are_pretty_clipped_and_audio_is_summarised():
    audio = {"type": "audio", "audio_event": {"audio_base_64": base64.b64encode(b"\0" * 3000).decode()}}
    text, note = pretty(json.dumps(audio).encode())
    assert "characters of base64 audio" in text and "AAAA" not in text and note == ""
    text, note = pretty(b"x" * 5000, limit=100)
    assert len(text) == 100 and note.startswith("4,900 more characters")
    assert pretty(b"\xff\xfe\x00") == ("<3 bytes of binary data>", "")


def test_websocket_messages_are_split_by_call():
    c1, c2 = call(1, [], "r1", protocol=WEBSOCKET, server="s"), call(2, [], "r2", protocol=WEBSOCKET, server="s")
    msgs = [WsMessage(False, c1.started - 0.5, "opening", 7), WsMessage(True, c1.started, "m1", 2),
            WsMessage(False, c1.started + 0.2, "r1", 2), WsMessage(True, c2.started, "m2", 2),
            WsMessage(False, c2.started + 0.2, "r2", 2)]
    windows = ws_windows([c2, c1], msgs)
    assert [m.text for m in windows["c1"]] == ["opening", "m1", "r1"]
    assert [m.text for m in windows["c2"]] == ["m2", "r2"]


def test_long_diagrams_keep_resets_and_fold_the_rest():
    rows = [DiagramRow(f"call-{i}", f"#{i}", "continued", "reused", reset=(i == 100)) for i in range(200)]
    kept = elide(rows, keep=10)
    assert [r.gap for r in kept if r.event == "gap"] == [90, 89]
    assert any(r.reset and r.anchor == "call-100" for r in kept)
    svg = flow_diagram(rows, "t")
    assert svg.count('class="row reset"') == 1 and "75 calls without findings" in svg


def test_growth_chart_draws_the_limit_when_it_is_near():
    near = growth_chart([GrowthPoint(2, 100), GrowthPoint(4, 900)], 1000, "t")
    assert 'class="limit"' in near and "limit 1,000 tokens" in near
    far = growth_chart([GrowthPoint(2, 10)], 8000, "t")
    assert 'class="limit"' not in far and "far above" in far
    many = growth_chart([GrowthPoint(i, i) for i in range(5000)], 8000, "t")
    assert len(re.search(r'class="tokens" points="([^"]*)"', many).group(1).split()) <= 402


def test_hostile_text_is_escaped_everywhere():
    evil = '</script><script>alert(1)</script><svg onload=alert(2)>'
    calls = [call(1, [U(evil)], evil, session=evil), call(2, [U(evil), A(evil), U("x")], "y", session=evil)]
    page, _ = render(analysed(calls), {"f1": record("f1", {"m": evil})}, Meta("cap", "test"))
    assert "<script>alert" not in page and "<svg onload" not in page
    assert page.count("<script>") == 1 and "&lt;/script&gt;&lt;script&gt;alert(1)" in page


def test_csp_hashes_match_the_inline_style_and_script():
    page, _ = render(analysed([call(1, [U("a")], "b")]), {}, Meta("cap", "test"))
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page).group(1)
    for tag, directive in (("style", "style-src"), ("script", "script-src")):
        inline = re.search(rf"<{tag}>(.*?)</{tag}>", page, re.S).group(1)
        digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
        assert f"{directive} 'sha256-{digest}'" in csp.replace("&#39;", "'")


def test_same_analysis_same_page_but_for_the_stamp():
    calls = [call(1, [U("a")], "b"), call(2, [U("a"), A("b"), U("c")], "d")]
    one, _ = render(analysed(calls), {}, Meta("cap", "test", generated="T1"))
    two, _ = render(analysed(calls), {}, Meta("cap", "test", generated="T2"))
    assert one.replace("T1", "T2") == two


def test_a_small_budget_keeps_every_session_but_details_only_the_first():
    calls = []
    for s in range(3):
        history: list[Turn] = []
        for i in range(4):
            history = history + [U(f"s{s} message {i}")]
            calls.append(call(s * 10 + i, list(history), f"reply {i}", session=f"S{s}"))
            history.append(A(f"reply {i}"))
    page, view = render(analysed(calls), {}, Meta("cap", "test"), budget=3000)
    assert len(view.sessions) == 3 and page.count('<section class="session') == 3
    assert page.count("Not shown in detail") == 2
    assert page.count('<details class="call') < 12
    full, _ = render(analysed(calls), {}, Meta("cap", "test"), only_session="S2")
    assert full.count('<section class="session') == 1 and full.count('<details class="call') == 4


def test_labels_are_cut_at_a_word_and_findings_are_listed_once_per_rule_and_session():
    from sessiontap.reports.svg import _clip
    from sessiontap.reports.view import build_report

    label = _clip("history restarted: 0 turns of history (+8 in conversation_context)", 30)
    assert label.endswith("…") and len(label) <= 30 and not label[:-1].endswith(("histor", "conv"))
    assert label == "history restarted: 0 turns…"
    assert _clip("short", 30) == "short"
    # five calls that each start over: one entry for the rule in the session, naming all its calls
    result = analysed([call(i, [U(f"message {i}")], "Hi, I'm Durin.", opening="Hi, I'm Durin.") for i in range(5)])
    view, _ = build_report(result, Meta("capture", "0"))
    [group] = [g for g in view.rule_groups if g.rule == "context-reset"]
    [entry] = group.findings
    assert entry.times == 4 and len(entry.calls) == 4 and group.hidden == 0
    [session] = view.sessions
    assert session.evidence == "declared id ×5"

"""report.html in a real browser: Debian's Chromium driven by Playwright, opened from file://."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from playwright.sync_api import Page

from tests.browser import SHOTS, assert_quiet, open_report
from tests.conftest import client_script


@pytest.fixture(scope="module")
def demo_report(demo_capture) -> Path:
    out, proc = demo_capture
    assert f"report written to {out / 'report.html'}" in proc.stderr
    assert (out / "report.html").resolve().as_uri() in proc.stderr
    return out / "report.html"


def session_section(page: Page, session_id: str):
    return page.locator("section.session", has=page.locator(f"h3 code:text-is('{session_id}')"))


def test_demo_report_states_the_verdict_and_loads_nothing(browser, demo_report):
    opened = open_report(browser, demo_report)
    page = opened.page
    verdict = page.locator("#verdict").inner_text()
    assert "The conversation does not continue" in verdict
    assert "agent repeated its opening line" in verdict and "a new WebSocket conversation for every message" in verdict
    assert "context sent in a field the API ignores" in verdict
    top = page.locator(".top-findings li").all_inner_texts()
    assert any("context-ignored" in t and "partial_conversation_history" in t for t in top)
    csp = page.locator("meta[http-equiv='Content-Security-Policy']").get_attribute("content") or ""
    assert "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert page.evaluate("document.querySelectorAll('script[src], link[rel=stylesheet], img[src]').length") == 0
    assert_quiet(opened, demo_report)


def test_diagram_marks_resets_on_the_calls_where_they_happen(browser, demo_report, demo_capture):
    out, _ = demo_capture
    data = json.loads((out / "findings.json").read_text())
    resets = {s["id"]: s["resets"] for s in data["sessions"]}
    page = open_report(browser, demo_report).page
    faulty = session_section(page, "elevenlabs-session-0")
    reset_rows = faulty.locator("svg.flow a.reset").evaluate_all("els => els.map(e => e.dataset.call)")
    reset_calls = faulty.locator("details.call.reset").evaluate_all("els => els.map(e => e.id)")
    assert len(reset_rows) == resets["elevenlabs-session-0"] == 4
    assert reset_rows == reset_calls
    numbers = [page.locator(f"#{a} .num").inner_text() for a in reset_rows]
    assert numbers == ["#2", "#3", "#4", "#5"]  # the first call starts the session; each later one restarts it
    for sid, n in resets.items():
        if n == 0:
            assert session_section(page, sid).locator("svg.flow a.reset").count() == 0
    # the diagram shows the declared id beside the server conversation, and links to the call
    first_row = faulty.locator("svg.flow a.row").first
    assert "elevenlabs-session-0" in (first_row.text_content() or "")
    first_row.click()
    assert page.locator(f"#{first_row.get_attribute('data-call')}").get_attribute("open") is not None


def test_expanding_a_call_shows_its_context_diff(browser, demo_report):
    page = open_report(browser, demo_report).page
    fixed = page.locator("section.session.sev-clean[data-session]").filter(has_text="http").first
    call = fixed.locator("details.call").nth(1)
    diff = call.locator(".diff")
    assert not diff.is_visible()
    call.locator(":scope > summary").click()
    assert diff.is_visible()
    added = call.locator("ol.turns li.add").all_inner_texts()
    assert len(added) == 2 and "agent" in added[0] and "user" in added[1]  # previous reply, then the new message
    assert "partial_conversation_history" in call.locator(".diff-head").inner_text()
    call.locator("details.wire > summary").click()
    assert "simulate-conversation" in call.locator("details.wire").inner_text()
    assert "[REDACTED]" in call.locator("details.wire").inner_text()


def test_filters_by_rule_and_by_session(browser, demo_report):
    page = open_report(browser, demo_report).page
    total = page.locator("details.call").count()
    page.select_option("#f-rule", "new-conversation-per-message")
    visible = page.locator("section.session:visible")
    assert visible.count() == 1
    assert page.locator("details.call:visible").count() == 5
    assert page.locator("section.rule-group:visible").count() == 1
    assert f"showing 5 of {total} calls" == page.locator("#f-count").inner_text()
    page.select_option("#f-rule", "")
    page.select_option("#f-session", label="elevenlabs-session-0")
    assert page.locator("section.session:visible").count() == 1
    assert page.locator("details.call:visible").count() == 5
    page.check("#f-flagged")
    flagged = page.locator("details.call:visible").count()
    assert 0 < flagged <= 5
    page.select_option("#f-session", "")
    page.uncheck("#f-flagged")
    assert page.locator("details.call:visible").count() == total


def test_keyboard_and_themes(browser, demo_report):
    page = open_report(browser, demo_report, scheme="dark").page
    dark_bg = page.evaluate("getComputedStyle(document.documentElement).backgroundColor")
    page.keyboard.press("j")
    focused = page.evaluate("document.activeElement.closest('details.call').id")
    page.keyboard.press("j")
    assert page.evaluate("document.activeElement.closest('details.call').id") != focused
    page.keyboard.press("o")
    assert page.evaluate("document.activeElement.closest('details.call').open")
    page.keyboard.press("t")
    light_bg = page.evaluate("getComputedStyle(document.documentElement).backgroundColor")
    assert dark_bg != light_bg and light_bg == "rgb(255, 255, 255)"


def test_screenshots_at_laptop_and_narrow_widths(browser, demo_report):
    SHOTS.mkdir(exist_ok=True)
    for width in (1280, 420):
        opened = open_report(browser, demo_report, width=width)
        page = opened.page
        assert page.evaluate("document.documentElement.scrollWidth") <= width  # nothing pushes the page sideways
        page.screenshot(path=str(SHOTS / f"report-{width}.png"), full_page=True)
        assert (SHOTS / f"report-{width}.png").stat().st_size > 20_000
        assert_quiet(opened, demo_report)


def test_hostile_conversation_text_is_shown_and_never_runs(browser, simulator, sessiontap, tmp_path):
    from tests.clients.hostile_client import XSS_CORPUS

    simulator.faults.hostile_text = XSS_CORPUS
    try:
        run = sessiontap("record", "--mode", "reverse", "--upstream", simulator.url, "--",
                         *client_script("hostile_client"))
    finally:
        simulator.faults.hostile_text = None
    assert run.code == 0, run.stderr
    report = run.out / "report.html"
    raw = report.read_bytes()
    assert raw.isascii()
    opened = open_report(browser, report)
    page = opened.page
    for call in page.locator("details.call").all():
        call.locator(":scope > summary").click()
    for wire in page.locator("details.wire, details.evidence").all():
        if wire.is_visible():
            wire.locator("summary").first.click()
    page.wait_for_timeout(200)
    assert page.evaluate("window.__pwned") is None
    assert page.evaluate("document.querySelectorAll('iframe, img, body script').length") == 1  # our one script
    text = page.locator("body").inner_text()
    assert "<script>window.__pwned=1</script>" in text and "javascript:window.__pwned=6" in text
    assert "<svg onload=x>" in text  # the declared session id, as text
    assert re.search(r"\u202eRTL", text) and "\U0001F600" in text
    assert_quiet(opened, report)


def test_report_command_writes_both_files_and_checks_the_session(demo_capture, sessiontap, tmp_path):
    out, _ = demo_capture
    run = sessiontap("report", str(out / "flows.mitm"), "--out", str(tmp_path / "r"))
    assert run.code == 0, run.stderr
    assert (tmp_path / "r" / "findings.json").exists() and (tmp_path / "r" / "report.html").exists()
    assert (tmp_path / "r" / "report.html").resolve().as_uri() in run.stderr
    one = sessiontap("report", str(out), "--out", str(tmp_path / "one"), "--session", "elevenlabs-session-0")
    assert one.code == 0, one.stderr
    assert (tmp_path / "one" / "report.html").read_text().count('<section class="session') == 1
    bad = sessiontap("report", str(out), "--out", str(tmp_path / "bad"), "--session", "no-such-session")
    assert bad.code == 2 and "no session 'no-such-session'" in bad.stderr and "elevenlabs-session-0" in bad.stderr

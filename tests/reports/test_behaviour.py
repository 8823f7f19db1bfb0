"""behaviour.html in a real browser: the demo capture replayed with its context varied, opened from file://."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page

from sessiontap.replay.compare import Behaviour, CallRow, Continuity, Reply, SessionBehaviour
from sessiontap.reports.html import render_behaviour, write_behaviour
from tests.browser import SHOTS, assert_quiet, open_report
from tests.conftest import SESSIONTAP, clean_env

FAULTY_HTTP = "elevenlabs-session-0"
OPENING = "Hello! I'm Durin"
SAFE_ID = re.compile(r"^(theme|verdict|verdict-title|legend|legend-title|sessions|sessions-title|s-\d+(-title)?)$")


@pytest.fixture(scope="module")
def replayed(demo_capture, sessiontap_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo capture replayed to the simulator with full and with no context; its out directory."""
    capture, _ = demo_capture
    out = tmp_path_factory.mktemp("behaviour") / "replay"
    proc = subprocess.run([SESSIONTAP, "replay", "--client", str(capture), "--out", str(out),
                           "--vary-context", "full,none"], capture_output=True, text=True, timeout=120,
                          cwd=out.parent, env=clean_env(sessiontap_home))
    assert proc.returncode == 0, proc.stderr
    assert (out / "behaviour.html").resolve().as_uri() in proc.stderr
    return out


@pytest.fixture(scope="module")
def data(replayed: Path) -> dict[str, Any]:
    return json.loads((replayed / "behaviour.json").read_text(encoding="utf-8"))


def percent(x: float) -> str:
    return f"{round(x * 100)}% like full"


def section(page: Page, session_id: str):
    return page.locator("section.session", has=page.locator(f"h3 code:text-is('{session_id}')"))


def test_summary_table_matches_behaviour_json_and_the_page_loads_nothing(browser, replayed, data):
    page_path = replayed / "behaviour.html"
    assert page_path.read_bytes().isascii()
    opened = open_report(browser, page_path)
    page = opened.page
    assert data["variants"] == ["full", "none"]
    runs = ["original", *data["variants"]]
    assert page.locator("table.continuity thead th").all_inner_texts() == ["session", *runs]
    rows = page.locator("table.continuity tbody tr")
    assert rows.count() == len(data["sessions"]) == 4
    for i, s in enumerate(data["sessions"]):
        row = rows.nth(i)
        link = row.locator("th a")
        assert link.inner_text() == s["id"]
        cells = row.locator("td.run")
        assert cells.locator(".label").all_inner_texts() == [s["continuity"][name]["label"] for name in runs]
        for j, name in enumerate(runs):
            cell = cells.nth(j)
            changed = s["changed"].get(name, False)
            assert ("changed" in (cell.get_attribute("class") or "").split()) == changed
            assert (cell.locator(".badge.changed").count() == 1) == changed
            like = s["continuity"][name]["like_full"]
            assert cell.locator(".like").all_inner_texts() == ([percent(like)] if like is not None else [])
        # the row links to its session's section, by index: no session id ever becomes an id
        target = (link.get_attribute("href") or "").lstrip("#")
        assert target == f"s-{i + 1}"
        assert page.locator(f"section#{target} h3 code").inner_text() == s["id"]
    ids = page.evaluate("Array.from(document.querySelectorAll('[id]'), e => e.id)")
    assert ids and all(SAFE_ID.match(i) for i in ids), ids
    # one section per session, one row per recorded call, one reply cell per run
    for s in data["sessions"]:
        calls = section(page, s["id"]).locator("table.replies tbody tr")
        assert calls.count() == len(s["calls"])
        assert calls.first.locator("td.reply").evaluate_all("els => els.map(e => e.dataset.run)") == runs
    legend = page.locator("#legend").inner_text()
    assert "like full" in legend and "partial_conversation_history" in legend and "no earlier turn" in legend
    csp = page.locator("meta[http-equiv='Content-Security-Policy']").get_attribute("content") or ""
    assert "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert page.evaluate("document.querySelectorAll('script[src], link[rel=stylesheet], img, iframe').length") == 0
    assert_quiet(opened, page_path)


def test_the_faulty_http_session_continues_with_full_context_and_resets_with_none(browser, replayed, data):
    faulty = next(s for s in data["sessions"] if s["id"] == FAULTY_HTTP)
    assert faulty["changed"]["full"] and faulty["continuity"]["full"]["label"] == "continues"
    second = faulty["calls"][1]["replies"]
    assert second["none"]["reset"]
    opened = open_report(browser, replayed / "behaviour.html")
    page = opened.page
    row = page.locator("table.continuity tbody tr", has=page.locator(f"th code:text-is('{FAULTY_HTTP}')"))
    full = row.locator("td.run").nth(1)
    assert "changed" in (full.get_attribute("class") or "").split()
    assert full.locator(".label").inner_text() == "continues" and full.locator(".badge.changed").is_visible()
    call2 = section(page, FAULTY_HTTP).locator("table.replies tbody tr[data-call='2']")
    assert call2.locator("th").inner_text() == "2"
    assert OPENING in call2.locator("td[data-run='original']").inner_text()  # the recording started over
    assert OPENING not in call2.locator("td[data-run='full']").inner_text()
    assert call2.locator("td[data-run='full'] .badge.reset").count() == 0
    reset = call2.locator("td[data-run='none'] .badge.reset")
    assert reset.is_visible() and reset.inner_text() == "reset"
    assert "context-reset" in call2.locator("td[data-run='none'] .badge.rule").all_inner_texts()
    # the section heading shows each run's continuity too
    heads = section(page, FAULTY_HTTP).locator("table.replies thead th.run .label").all_inner_texts()
    assert heads == [faulty["continuity"][name]["label"] for name in ("original", "full", "none")]
    assert_quiet(opened, replayed / "behaviour.html")


def test_narrow_and_wide_screenshots_without_page_overflow(browser, replayed):
    SHOTS.mkdir(exist_ok=True)
    path = replayed / "behaviour.html"
    for width in (1280, 420):
        opened = open_report(browser, path, width=width)
        page = opened.page
        scroll, client = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        assert scroll <= client  # only the tables' own scroll containers may be wider than the window
        wrappers = page.locator("table.replies").evaluate_all(
            "els => els.map(t => getComputedStyle(t.parentElement).overflowX)")
        assert wrappers and set(wrappers) == {"auto"}
        if width == 420:  # the wide table does not fit: it scrolls inside its container
            assert page.evaluate("(() => { const s = document.querySelector('table.replies').parentElement;"
                                 " return s.scrollWidth > s.clientWidth; })()")
        shot = SHOTS / f"behaviour-{width}.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 20_000
        assert_quiet(opened, path)


def test_dark_mode_and_the_theme_toggle(browser, replayed):
    path = replayed / "behaviour.html"
    bg = "getComputedStyle(document.documentElement).backgroundColor"
    cell = "getComputedStyle(document.querySelector('table.replies td.reply.broken')).backgroundColor"
    light = open_report(browser, path, scheme="light")
    dark = open_report(browser, path, scheme="dark")
    assert light.page.evaluate(bg) == "rgb(255, 255, 255)"
    assert dark.page.evaluate(bg) != light.page.evaluate(bg)
    assert dark.page.evaluate(cell) != light.page.evaluate(cell)
    dark.page.click("#theme")
    assert dark.page.evaluate(bg) == "rgb(255, 255, 255)"
    dark.page.keyboard.press("t")
    assert dark.page.evaluate(bg) != "rgb(255, 255, 255)"
    assert_quiet(light, path)
    assert_quiet(dark, path)


HOSTILE_ID = 'x"><img src=x onerror="window.__pwned=1"> \'quoted\' </section>'
HOSTILE_USER = "</script><img src=x onerror=alert(1)>"
HOSTILE_REPLY = "<script>window.__pwned=2</script><b onmouseover=alert(2)>bold?</b> \u202eRTL \U0001F600"
HOSTILE_CAPTURE = "</title><script>alert(3)</script>"
HOSTILE_RULE = "<svg onload=alert(4)>"
HOSTILE_VARIANT = 'v"><img src=x onerror=alert(5)>'


def hostile_behaviour() -> Behaviour:
    original = Reply(HOSTILE_REPLY, "ok", 2, reset=True, rules=["context-reset", HOSTILE_RULE], like_full=0.5)
    row = CallRow(1, HOSTILE_USER, original,
                  {"full": Reply("fine", "ok", 3), HOSTILE_VARIANT: Reply("", "error: <i>boom</i>", 1)})
    session = SessionBehaviour(HOSTILE_ID, "http", Continuity(1, 1, 1, [HOSTILE_RULE], 0.5),
                               {"full": Continuity(1, 1, 0, []), HOSTILE_VARIANT: Continuity(1, 1, 0, [])}, [row])
    return Behaviour(["full", HOSTILE_VARIANT], [session])


def test_hostile_text_is_shown_as_text_and_never_runs(browser, tmp_path):
    behaviour = hostile_behaviour()
    html = render_behaviour(behaviour, HOSTILE_CAPTURE, "0.0-test")
    assert "<img" not in html and "<svg" not in html and html.count("<script>") == 1
    path = write_behaviour(behaviour, HOSTILE_CAPTURE, "0.0-test", tmp_path)
    assert path == tmp_path / "behaviour.html" and path.read_bytes().isascii()
    opened = open_report(browser, path)
    page = opened.page
    for el in page.locator("td, th, span.badge").all():
        el.hover()  # an injected mouseover handler would run now
    page.wait_for_timeout(200)
    assert page.evaluate("window.__pwned") is None
    assert page.evaluate("document.querySelectorAll('img, svg, iframe, b, i, body script').length") == 1  # ours
    assert page.title() == f"sessiontap API behaviour: {HOSTILE_CAPTURE}"
    text = page.locator("body").inner_text()
    for hostile in (HOSTILE_ID, HOSTILE_USER, HOSTILE_RULE, HOSTILE_VARIANT, "error: <i>boom</i>", HOSTILE_CAPTURE):
        assert hostile in text, hostile
    assert "<script>window.__pwned=2</script><b onmouseover=alert(2)>bold?</b>" in text
    assert "\u202eRTL" in text and "\U0001F600" in text
    assert page.locator("table.continuity tbody th code").inner_text() == HOSTILE_ID
    assert page.locator("table.continuity tbody th a").get_attribute("href") == "#s-1"
    ids = page.evaluate("Array.from(document.querySelectorAll('[id]'), e => e.id)")
    assert all(SAFE_ID.match(i) for i in ids), ids
    # an unknown run gets no link to a report of its name; a known one does
    hrefs = page.locator("#legend a").evaluate_all("els => els.map(a => a.getAttribute('href'))")
    assert hrefs == ["full/report.html"]
    assert_quiet(opened, path)

"""Opening a page in Debian's Chromium (Playwright) and checking it stayed quiet: shared by the report tests."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, Page, sync_playwright

SHOTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@contextlib.contextmanager
def launched() -> Iterator[Browser]:
    """A headless Chromium for the duration of a with block (the `browser` fixture in conftest)."""
    exe = shutil.which("chromium")
    assert exe, "Debian's chromium is needed (apt-get install chromium; .ci/run does it)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe)
        yield b
        b.close()


@dataclass
class Opened:
    page: Page
    console: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)


def open_report(browser: Browser, path: Path, width: int = 1280, scheme: Any = "light") -> Opened:
    """Open a report from file://, recording console errors, page errors, dialogs and every request."""
    ctx = browser.new_context(viewport={"width": width, "height": 900}, color_scheme=scheme)
    page = ctx.new_page()
    opened = Opened(page)
    page.on("console", lambda m: opened.console.append(f"{m.type}: {m.text}") if m.type in ("error", "warning")
            else None)
    page.on("pageerror", lambda e: opened.console.append(f"pageerror: {e}"))
    page.on("request", lambda r: opened.requests.append(r.url))
    page.on("dialog", lambda d: (opened.dialogs.append(d.message), d.dismiss()))
    page.goto(path.resolve().as_uri())
    page.wait_for_load_state("load")
    return opened


def assert_quiet(opened: Opened, path: Path) -> None:
    """No console errors (CSP violations included), no dialogs, no request but the page itself."""
    assert opened.console == []
    assert opened.dialogs == []
    assert [u for u in opened.requests if u != path.resolve().as_uri()] == []

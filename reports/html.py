"""The HTML pages: report.html and behaviour.html, rendered with Jinja2 into self-contained, CSP-locked ASCII files."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

import jinja2
from markupsafe import Markup

from sessiontap.core.analysis import Analysis
from sessiontap.core.model import FlowRecord
from sessiontap.core.redact import Redactor
from sessiontap.replay.compare import ORIGINAL, Behaviour
from sessiontap.replay.vary import MEANINGS
from sessiontap.reports.view import Meta, ReportView, build_report, detail_session

REPORT_FILE = "report.html"
BUDGET = 2_500_000  # bytes of sessions in one report (10k calls must stay under 5 MB and open in under 2 s)
SESSION_BUDGET = 1_000_000  # bytes one session may take, so one huge session cannot hide the others


def _static(name: str) -> str:
    text = resources.files(__package__ or "sessiontap.reports").joinpath("static", name).read_text(encoding="utf-8")
    text.encode("ascii")  # the inline CSS and JS are hashed for the CSP, and must survive the ASCII write as is
    return text


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("ascii")).digest()).decode() + "'"


def environment() -> jinja2.Environment:
    """The one Jinja2 environment: autoescape on, undefined names are errors, no filters beyond the built-ins."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader(__package__ or "sessiontap.reports", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def csp(css: str, js: str) -> str:
    """The page's Content-Security-Policy: nothing from anywhere; only its own inline style and script run."""
    return (f"default-src 'none'; style-src {_hash(css)}; script-src {_hash(js)}; img-src data:; "
            "base-uri 'none'; form-action 'none'")


def render(analysis: Analysis, records: Mapping[str, FlowRecord], meta: Meta, only_session: str | None = None,
           budget: int = BUDGET) -> tuple[str, ReportView]:
    """The report page as text, and the view it shows (sessions beyond the size budget stay summaries)."""
    env = environment()
    view, index = build_report(analysis, meta)
    per_session = SESSION_BUDGET
    if only_session is not None:
        view.sessions = [s for s in view.sessions if s.id == only_session]
        budget = per_session = 1 << 40  # the one session asked for, in full
    states = {s.id: s for s in analysis.sessions}
    call_t, session_t = env.get_template("call.html"), env.get_template("session.html")
    sections: list[Markup] = []
    spent = 0
    for sv in view.sessions:
        detailed = spent < budget
        calls_html: list[Markup] = []
        if detailed:
            detail_session(sv, states[sv.id], analysis, index, records, meta.max_context_tokens)
            own = 0
            for i, row in enumerate(sv.calls):
                if spent + own > budget or own > per_session:
                    sv.omitted_calls = len(sv.calls) - i
                    break
                html = call_t.render(c=row)
                own += len(html)
                calls_html.append(Markup(html))
            spent += own
        section = session_t.render(s=sv, detailed=detailed, calls_html=calls_html)
        spent += len(section) - sum(len(c) for c in calls_html)
        sections.append(Markup(section))
        sv.calls = []  # rendered; let the rows go
    css, js = _static("report.css"), _static("theme.js") + _static("report.js")
    page = env.get_template("report.html").render(view=view, sessions_html=sections, css=Markup(css),
                                                  js=Markup(js), csp=csp(css, js))
    return page, view


def write_report(analysis: Analysis, records: Mapping[str, FlowRecord], meta: Meta, out: Path,
                 only_session: str | None = None, redactor: Redactor | None = None) -> Path:
    """Write report.html into ``out`` (pure ASCII, atomically) and return its path.

    ``redactor``, when given, masks every secret it has learned wherever the page shows it.
    """
    page, _ = render(analysis, records, meta, only_session)
    return write_page(redactor.text(page) if redactor else page, out / REPORT_FILE)


def write_page(page: str, path: Path) -> Path:
    """Write a page as pure ASCII (other characters as references), atomically; return its path."""
    tmp = path.with_suffix(".html.tmp")
    tmp.write_bytes(page.encode("ascii", "xmlcharrefreplace"))
    tmp.replace(path)
    return path


BEHAVIOUR_FILE = "behaviour.html"
RUN_MEANINGS = {ORIGINAL: "the capture as recorded: the client's own calls and the replies it got.", **MEANINGS}
def _behaviour_headline(behaviour: Behaviour, continuing: Mapping[str, int]) -> tuple[str, str]:
    """The page's verdict: in how many replays continuity changed, and which runs kept every session going."""
    pairs = [(s, v) for s in behaviour.sessions for v in behaviour.variants]
    changed = sum(1 for s, v in pairs if s.changed(v))
    if not pairs:
        headline = "Nothing was replayed"
    elif changed:
        headline = f"Continuity changed in {changed} of {len(pairs)} replays"
    else:
        headline = f"Continuity is as recorded in all {len(pairs)} replays"
    every = [name for name, n in continuing.items() if behaviour.sessions and n == len(behaviour.sessions)]
    return headline, (f"Every session continues in: {', '.join(every)}." if every
                      else "No run keeps every session going.")


def render_behaviour(behaviour: Behaviour, capture: str, version: str) -> str:
    """The API behaviour page as text: the recorded and replayed replies of every call, side by side."""
    css, js = _static("report.css"), _static("theme.js")
    runs = [ORIGINAL, *behaviour.variants]
    continuing = {name: sum(1 for s in behaviour.sessions
                            if (s.original if name == ORIGINAL else s.replayed[name]).continues) for name in runs}
    headline, best = _behaviour_headline(behaviour, continuing)
    return environment().get_template("behaviour.html").render(
        b=behaviour, capture=capture, version=version, headline=headline, best=best,
        continuing=continuing, meanings={name: RUN_MEANINGS.get(name, "") for name in runs},
        css=Markup(css), js=Markup(js), csp=csp(css, js))


def write_behaviour(behaviour: Behaviour, capture: str, version: str, out: Path) -> Path:
    """Write behaviour.html into ``out`` (pure ASCII, atomically) and return its path."""
    return write_page(render_behaviour(behaviour, capture, version), out / BEHAVIOUR_FILE)

"""Live findings: each call judged once forwarded, journaled, marked in mitmweb; findings.json at the end."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Protocol

from mitmproxy import ctx, hooks, http
from mitmproxy.addonmanager import Loader

from sessiontap.bridge.backlog import Backlog
from sessiontap.bridge.guard import guarded
from sessiontap.bridge.options import Check, check_updated, sessiontap_values
from sessiontap.core.analysis import Analysis, Analyzer
from sessiontap.core.model import Call, Closing, Finding, Note
from sessiontap.core.redact import Redactor
from sessiontap.core.rules import ERROR
from sessiontap.core.settings import (
    DEFAULTS,
    Settings,
    check_max_context_tokens,
    check_opening_similarity,
)

log = logging.getLogger("sessiontap")

FINDINGS_FILE = "findings.json"
MARKS = {"error": ":x:", "warning": ":warning:", "info": ":information_source:"}


def version() -> str:
    """sessiontap's installed version."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as pkg_version

    try:
        return pkg_version("sessiontap")
    except PackageNotFoundError:
        return "0+unknown"


def document(doc: dict[str, Any]) -> Iterator[str]:
    """JSON text of a findings document, in pieces: a key a line, a list's items one a line, each item compact.

    Readable line by line, and written by json's C encoder (``indent`` makes json encode in Python,
    which cost seconds for 10,000 calls). In pieces, so that a big one is never one string (about
    1.5 KB a call, and a copy or two more for masking and encoding).
    """
    yield "{"
    for i, (k, v) in enumerate(doc.items()):
        yield f"{',' if i else ''}\n  {json.dumps(k, ensure_ascii=False)}: "
        if isinstance(v, list) and v:
            yield "["
            for j, item in enumerate(v):
                yield f"{',' if j else ''}\n    {json.dumps(item, ensure_ascii=False)}"
            yield "\n  ]"
        else:
            yield json.dumps(v, ensure_ascii=False)
    yield "\n}\n"


def write_findings(analysis: Analysis, out: Path, redactor: Redactor | None = None) -> Path:
    """Write findings.json into ``out`` (atomically) and return its path.

    ``redactor`` is the one that saw the traffic: every secret it learned (a ``secret__`` value
    quoted in a message, a token) is masked wherever the analysis repeats it (piece by piece: a
    secret is inside one JSON string, so inside one piece).
    """
    path = out / FINDINGS_FILE
    tmp = path.with_suffix(".json.tmp")
    # a lone surrogate is written as its JSON escape
    with open(tmp, "w", encoding="utf-8", errors="backslashreplace") as f:
        for piece in document(analysis.to_json(version())):
            f.write(redactor.text(piece) if redactor else piece)
    tmp.replace(path)
    return path


class Recorder(Protocol):
    """Where findings are written as they are found (the Journal)."""

    def record(self, event: str, payload: dict[str, Any], flow: http.HTTPFlow | None = None) -> None: ...


class Findings:
    """Runs the continuity rules over each call the tagger decodes, once its message has been forwarded.

    The tagger decodes and the journal writes each call before its last message goes on (so a
    kill loses no completed turn); judging it waits on the backlog, off the message's latency.
    """

    CHECKS: ClassVar[dict[str, Check]] = {
        "sessiontap_max_context_tokens": check_max_context_tokens,
        "sessiontap_opening_similarity": check_opening_similarity,
    }

    def __init__(self, journal: Recorder | None = None, redactor: Redactor | None = None,
                 backlog: Backlog | None = None) -> None:
        self.analyzer = Analyzer()
        self.backlog = backlog or Backlog()  # the rules run once the call's last message has been forwarded
        self.analysis: Analysis | None = None
        self.journal = journal
        self.redactor = redactor or Redactor()  # the journal's: masks what flow comments and findings.json repeat

    def load(self, loader: Loader) -> None:
        loader.add_option("sessiontap_max_context_tokens", int, DEFAULTS.max_context_tokens,
                          "Approximate token count above which a context raises context-oversize.")
        loader.add_option("sessiontap_opening_similarity", float, DEFAULTS.opening_similarity,
                          "How alike (0-1) a reply must be to the opening line to count as repeated-opening.")

    def configure(self, updated: set[str]) -> None:
        check_updated(self.CHECKS, updated)
        self.analyzer.settings = Settings.from_options(sessiontap_values())

    def _publish(self, found: list[Finding], flow: http.HTTPFlow) -> None:
        marked = False
        for f in found:
            if self.journal is not None:
                self.journal.record("finding", f.to_json())
            if flow.id in f.flow_ids and (not flow.marked or f.severity == ERROR):
                flow.marked = MARKS.get(f.severity, ":warning:")
                note = self.redactor.text(f"[{f.rule}] {f.message}")
                flow.comment = "\n".join(x for x in (flow.comment, note) if x)
                marked = True
        # Only a flow view (mitmweb's, the console's) redraws on it; without one, the hook would
        # still walk every addon, once a call with a finding.
        if marked and ctx.master.addons.get("view") is not None:
            ctx.master.addons.trigger(hooks.UpdateHook([flow]))

    def on_call(self, call: Call, flow: http.HTTPFlow) -> None:
        self.backlog.add(self._call, call, flow)

    def on_note(self, note: Note, flow: http.HTTPFlow) -> None:
        self.backlog.add(self._note, note, flow, flow.metadata.get("sessiontap", {}).get("session", ""))

    def on_close(self, closing: Closing, flow: http.HTTPFlow, info: dict[str, Any]) -> None:
        self.backlog.add(self._close, closing, flow)

    def on_first_message(self, agent_id: str, text: str) -> None:
        self.backlog.add(self.analyzer.first_messages.__setitem__, agent_id, text)  # in order with the calls

    @guarded
    def _call(self, call: Call, flow: http.HTTPFlow) -> None:
        self._publish(self.analyzer.add_call(call), flow)

    @guarded
    def _note(self, note: Note, flow: http.HTTPFlow, session: str) -> None:
        self._publish(self.analyzer.add_note(note, session), flow)

    @guarded
    def _close(self, closing: Closing, flow: http.HTTPFlow) -> None:
        self._publish(self.analyzer.close_conversation(closing), flow)

    def done(self) -> None:
        self.backlog.drain()
        self.analysis = self.analyzer.result()
        out = getattr(ctx.options, "sessiontap_out", "")
        if out:
            try:
                write_findings(self.analysis, Path(out), self.redactor)
            except OSError as e:
                log.error("sessiontap: could not write %s: %s", FINDINGS_FILE, e.strerror or e)

"""Captures: reading a flow file (ours or plain mitmdump's) into core records, and analysing it offline."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from mitmproxy import http, io
from mitmproxy.exceptions import FlowReadException

from sessiontap.audio import AUDIO_KEY
from sessiontap.bridge import adapt
from sessiontap.core.analysis import Analysis, analyse
from sessiontap.core.decode import decode_exchange, decode_websocket
from sessiontap.core.errors import CaptureError
from sessiontap.core.model import Call, Closing, FlowRecord, Note
from sessiontap.core.redact import Redactor
from sessiontap.core.settings import DEFAULTS, Settings
from sessiontap.journal import CAPTURE_FILE, JOURNAL_FILE


@dataclass(slots=True)
class Capture:
    """The flows of a capture, and a warning when its tail was unreadable (a killed recording)."""

    flows: list[http.HTTPFlow] = field(default_factory=list)
    warning: str | None = None


def capture_path(path: Path) -> Path:
    """The flow file for a path that names either the file or a record output directory."""
    if path.is_dir():
        path = path / CAPTURE_FILE
    if not path.exists():
        raise CaptureError(f"{path}: no such capture")
    return path


def read_capture(path: Path) -> Capture:
    """Every readable HTTP flow of a capture; a torn tail gives a warning, not an error."""
    path = capture_path(path)
    out = Capture()
    try:
        with open(path, "rb") as f:
            for flow in io.FlowReader(f).stream():
                if isinstance(flow, http.HTTPFlow):
                    out.flows.append(flow)
    except FlowReadException as e:
        if not out.flows:
            raise CaptureError(f"{path}: not a mitmproxy flow file ({e})") from e
        out.warning = f"{path}: read {len(out.flows)} flows, the rest is unreadable ({e})"
    except OSError as e:
        raise CaptureError(f"{path}: cannot read: {e.strerror or e}") from e
    return out


def analyse_flows(flows: list[http.HTTPFlow], settings: Settings = DEFAULTS,
                  recovered: Sequence[Call] = ()) -> Analysis:
    """The analysis of recorded flows (the offline twin of the live addons), with calls recovered elsewhere."""
    session_header, session_field = settings.session_header, settings.session_field
    calls: list[Call] = []
    notes: list[Note] = []
    closings: list[Closing] = []
    first: dict[str, str] = {}
    for flow in flows:
        if flow.websocket is not None:
            ws = flow.websocket
            found = decode_websocket(
                flow.id, flow.request.url, adapt.request_headers(flow), flow.request.timestamp_start,
                (adapt.ws_message(m) for m in ws.messages), ws.close_code, ws.timestamp_end,
                adapt.client_identity(flow), session_header, adapt.connection(flow), adapt.exchange(flow).code)
            key = found.calls[0].server_conversation if found.calls else flow.id
            closings.append(Closing(key, flow.id, ws.close_code, ws.closed_by_client,
                                    ws.timestamp_end or flow.request.timestamp_start))
        else:
            found = decode_exchange(adapt.exchange(flow), session_header, session_field)
        calls += found.calls
        notes += found.notes
        first.update(found.first_messages)
    calls += recovered
    return analyse(calls, notes, first, closings, settings)


def journaled_calls(journal: Path, missing_from: Iterable[http.HTTPFlow] = ()) -> list[Call]:
    """The calls of a journal.jsonl whose flows are not among ``missing_from`` (none if it is absent).

    A recording killed before it saved a flow (a WebSocket still open, a response just in) has
    journaled its turns all the same: each line was flushed as the turn completed. Lines that do
    not parse (a torn last line) are skipped.
    """
    saved = {f.id for f in missing_from}
    out: list[Call] = []
    try:
        lines = journal.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            entry = json.loads(line)
            if not isinstance(entry, dict) or entry.get("event") != "call" or entry.get("flow_id") in saved:
                continue
            out.append(Call.from_json(entry))
        except (ValueError, TypeError, KeyError):
            continue
    return out


def analyse_capture(path: Path, settings: Settings = DEFAULTS) -> tuple[Analysis, Capture]:
    """Read and analyse a capture; the Capture keeps the flows and any warning about a torn tail.

    For a record output directory, turns the journal holds but flows.mitm lacks are recovered
    from the journal (and the warning says how many).
    """
    cap = read_capture(path)
    recovered = journaled_calls(path / JOURNAL_FILE, cap.flows) if path.is_dir() else []
    if recovered:
        flows = len({c.flow_id for c in recovered})
        note = (f"{len(recovered)} calls of {flows} flows were recovered from {JOURNAL_FILE}: {CAPTURE_FILE} lacks "
                "them (the recording ended before it could save them); their wire details are not in the report")
        cap.warning = f"{cap.warning}; {note}" if cap.warning else note
    return analyse_flows(cap.flows, settings, recovered), cap


def default_out(kind: str = "") -> Path:
    """A fresh output directory under ./sessiontap-out, named for the kind and time of the run."""
    return Path("sessiontap-out") / time.strftime(f"{kind + '-' if kind else ''}%Y%m%d-%H%M%S")


def write_report(analysis: Analysis, capture: Path, out: Path, settings: Settings = DEFAULTS,
                 only_session: str | None = None, cap: Capture | None = None, redactor: Redactor | None = None) -> Path:
    """Write report.html for an analysis, its wire details from the capture (read unless given); return its path.

    ``redactor`` (a fresh one unless given) learns every secret of the capture on the way, and
    masks them wherever the page repeats them: pass the same one on to ``write_findings``.
    """
    from sessiontap.findings import version
    from sessiontap.reports.html import write_report as render_report
    from sessiontap.reports.view import Meta

    red = redactor if redactor is not None else Redactor()
    records = flow_records((cap or read_capture(capture)).flows, red)
    meta = Meta(str(capture), version(), max_context_tokens=settings.max_context_tokens)
    return render_report(analysis, records, meta, out, only_session, red)


def flow_records(flows: list[http.HTTPFlow], redactor: Redactor | None = None) -> dict[str, FlowRecord]:
    """Each flow as a redacted record for the report, by flow id (plain mitmdump captures hold secrets)."""
    red = redactor or Redactor()
    out: dict[str, FlowRecord] = {}
    for flow in flows:
        ex = adapt.exchange(flow)
        ex.url = red.url(ex.url)
        ex.query = dict(parse_qsl(urlsplit(ex.url).query, keep_blank_values=True))  # as redacted
        ex.request_headers = red.headers_(ex.request_headers)
        ex.response_headers = red.headers_(ex.response_headers)
        ex.request_body = red.body(ex.request_body) or b""
        ex.response_body = red.body(ex.response_body) if ex.response_body is not None else None
        ex.error = red.text(ex.error) if ex.error else None
        rec = FlowRecord(ex)
        if flow.websocket is not None:
            for m in flow.websocket.messages:
                msg = adapt.ws_message(m)
                if msg.text is not None:  # JSON-aware: secret__ variables and tokens inside frames too
                    msg.text = (red.body(msg.text.encode("utf-8")) or b"").decode("utf-8", "replace")
                rec.messages.append(msg)
            rec.close_code = flow.websocket.close_code
        audio = flow.metadata.get(AUDIO_KEY)
        if isinstance(audio, dict):
            rec.audio = {k: int(v) for k, v in audio.items() if isinstance(v, int)}
        out[flow.id] = rec
    return out

"""Captures: reading a flow file (ours or plain mitmdump's) into core records, and analysing it offline."""

from __future__ import annotations

import contextlib
import gc
import json
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from mitmproxy import http, io
from mitmproxy.exceptions import FlowReadException

from sessiontap.audio import AUDIO_KEY
from sessiontap.bridge import adapt, flowfile
from sessiontap.core.analysis import Analysis, analyse
from sessiontap.core.decode import decode_exchange, decode_websocket
from sessiontap.core.errors import CaptureError
from sessiontap.core.model import Call, Closing, FlowRecord, Note, WsMessage
from sessiontap.core.redact import Redactor
from sessiontap.core.settings import DEFAULTS, Settings
from sessiontap.journal import CAPTURE_FILE, JOURNAL_FILE


@dataclass(slots=True)
class Capture:
    """The flows of a capture as records (nothing redacted yet), and a warning when its tail was unreadable."""

    records: list[FlowRecord] = field(default_factory=list)
    warning: str | None = None


def capture_path(path: Path) -> Path:
    """The flow file for a path that names either the file or a record output directory."""
    if path.is_dir():
        path = path / CAPTURE_FILE
    if not path.exists():
        raise CaptureError(f"{path}: no such capture")
    return path


def _torn(path: Path, read: int, e: Exception) -> str:
    """The warning for a capture whose tail is unreadable; a CaptureError when nothing of it was."""
    if not read:
        raise CaptureError(f"{path}: not a mitmproxy flow file ({e})") from e
    return f"{path}: read {read} flows, the rest is unreadable ({e})"


def read_capture(path: Path) -> Capture:
    """Every readable HTTP flow of a capture as a record; a torn tail gives a warning, not an error.

    Read from the flow file's states (``bridge.flowfile``) without building mitmproxy flows: what
    most of offline analysis cost. A HAR file (which mitmproxy reads too) goes through its flows.
    """
    path = capture_path(path)
    out = Capture()
    try:
        if not flowfile.is_flow_file(str(path)):
            flows = read_flows(path)
            return Capture(records_of(flows.flows), flows.warning)
        states, odd = flowfile.flow_states(str(path)), 0
        while True:
            try:
                state = next(states, None)
            except (ValueError, TypeError) as e:  # torn here, not a flow file, or a format mitmproxy cannot read
                out.warning = _torn(path, len(out.records), e)
                break
            if state is None:
                break
            if state.get("type") != "http":
                continue
            try:
                out.records.append(_with_audio(adapt.record_of_state(state), state.get("metadata")))
            except (KeyError, TypeError, ValueError, AttributeError, IndexError):  # one odd flow: the rest still read
                odd += 1
    except OSError as e:
        raise CaptureError(f"{path}: cannot read: {e.strerror or e}") from e
    if odd:
        note = f"{path}: {odd} flows are not HTTP flows as mitmproxy writes them: left out"
        out.warning = f"{out.warning}; {note}" if out.warning else note
    return out


@dataclass(slots=True)
class Flows:
    """The flows of a capture as mitmproxy flows (for what needs them whole: a HAR export), and any warning."""

    flows: list[http.HTTPFlow] = field(default_factory=list)
    warning: str | None = None


def read_flows(path: Path) -> Flows:
    """Every readable HTTP flow of a capture, built by mitmproxy's FlowReader; a torn tail gives a warning."""
    path = capture_path(path)
    out = Flows()
    try:
        with open(path, "rb") as f:
            for flow in io.FlowReader(f).stream():
                if isinstance(flow, http.HTTPFlow):
                    out.flows.append(flow)
    except FlowReadException as e:
        out.warning = _torn(path, len(out.flows), e)
    except OSError as e:
        raise CaptureError(f"{path}: cannot read: {e.strerror or e}") from e
    return out


def _with_audio(rec: FlowRecord, metadata: object) -> FlowRecord:
    """The record with the audio summary its flow's metadata holds (frames left out of the capture)."""
    audio = metadata.get(AUDIO_KEY) if isinstance(metadata, dict) else None
    if isinstance(audio, dict):
        rec.audio = {k: int(v) for k, v in audio.items() if isinstance(v, int)}
    return rec


def _record(flow: http.HTTPFlow) -> FlowRecord:
    return _with_audio(adapt.record(flow), flow.metadata)


def records_of(flows: Iterable[http.HTTPFlow]) -> list[FlowRecord]:
    """Flows as records (nothing redacted)."""
    return [_record(f) for f in flows]


def analyse_records(records: Iterable[FlowRecord], settings: Settings = DEFAULTS,
                    recovered: Sequence[Call] = ()) -> Analysis:
    """The analysis of recorded flows (the offline twin of the live addons), with calls recovered elsewhere."""
    session_header, session_field = settings.session_header, settings.session_field
    calls: list[Call] = []
    notes: list[Note] = []
    closings: list[Closing] = []
    first: dict[str, str] = {}
    for rec in records:
        ex = rec.exchange
        if rec.websocket:
            found = decode_websocket(
                ex.flow_id, ex.url, ex.request_headers, ex.started, iter(rec.messages), rec.close_code,
                rec.socket_ended, ex.client, session_header, ex.connection, ex.code)
            key = found.calls[0].server_conversation if found.calls else ex.flow_id
            closings.append(Closing(key, ex.flow_id, rec.close_code, rec.closed_by_client,
                                    rec.socket_ended or ex.started))
        else:
            found = decode_exchange(ex, session_header, session_field)
        calls += found.calls
        notes += found.notes
        first.update(found.first_messages)
    calls += recovered
    return analyse(calls, notes, first, closings, settings)


def analyse_flows(flows: Iterable[http.HTTPFlow], settings: Settings = DEFAULTS) -> Analysis:
    """The analysis of mitmproxy flows."""
    return analyse_records(records_of(flows), settings)


def journaled_calls(journal: Path, missing_from: Iterable[FlowRecord] = ()) -> list[Call]:
    """The calls of a journal.jsonl whose flows are not among ``missing_from`` (none if it is absent).

    A recording killed before it saved a flow (a WebSocket still open, a response just in) has
    journaled its turns all the same: each line was flushed as the turn completed. Lines that do
    not parse (a torn last line) are skipped.
    """
    saved = {r.exchange.flow_id for r in missing_from}
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
    with few_collections():
        cap = read_capture(path)
        recovered = journaled_calls(path / JOURNAL_FILE, cap.records) if path.is_dir() else []
        if recovered:
            flows = len({c.flow_id for c in recovered})
            note = (f"{len(recovered)} calls of {flows} flows were recovered from {JOURNAL_FILE}: {CAPTURE_FILE} "
                    "lacks them (the recording ended before it could save them); their wire details are not in "
                    "the report")
            cap.warning = f"{cap.warning}; {note}" if cap.warning else note
        return analyse_records(cap.records, settings, recovered), cap


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
    with few_collections():
        records = redacted_records((cap or read_capture(capture)).records, red)
        meta = Meta(str(capture), version(), max_context_tokens=settings.max_context_tokens)
        return render_report(analysis, records, meta, out, only_session, red)


@contextlib.contextmanager
def few_collections() -> Iterator[None]:
    """Python's cyclic garbage collector run less often while a capture is read, analysed or rendered.

    Millions of records, turns and calls are made, nearly none in a cycle, and each collection
    walks those still young: about a tenth of a 10,000-call report (4 MB more at its peak).
    """
    before = gc.get_threshold()
    gc.set_threshold(50_000, 20, 20)
    try:
        yield
    finally:
        gc.set_threshold(*before)


def redacted_records(records: Iterable[FlowRecord], redactor: Redactor | None = None) -> dict[str, FlowRecord]:
    """Redacted copies of records, by flow id, as the report shows them (plain mitmdump captures hold secrets)."""
    red = redactor or Redactor()
    out: dict[str, FlowRecord] = {}
    for rec in records:
        ex = replace(rec.exchange)
        ex.url = red.url(ex.url)
        ex.query = dict(parse_qsl(urlsplit(ex.url).query, keep_blank_values=True))  # as redacted
        ex.request_headers = red.headers_(ex.request_headers)
        ex.response_headers = red.headers_(ex.response_headers)
        ex.request_body = red.body(ex.request_body) or b""
        ex.response_body = red.body(ex.response_body) if ex.response_body is not None else None
        ex.error = red.text(ex.error) if ex.error else None
        out[ex.flow_id] = replace(rec, exchange=ex, messages=_redacted_messages(rec.messages, red))
    return out


def _redacted_messages(messages: list[WsMessage], red: Redactor) -> list[WsMessage]:
    """A socket's messages with their secrets masked; checked all at once first (nearly always, none to mask)."""
    texts = [m.text.encode("utf-8") for m in messages if m.text is not None]
    if not red.may_hold_secret(b"\n".join(texts), keep=False):
        return list(messages)
    return [m if m.text is None else  # JSON-aware: secret__ variables and tokens inside frames too
            replace(m, text=(red.body(m.text.encode("utf-8")) or b"").decode("utf-8", "replace"))
            for m in messages]


def flow_records(flows: Iterable[http.HTTPFlow], redactor: Redactor | None = None) -> dict[str, FlowRecord]:
    """Each flow as a redacted record for the report, by flow id."""
    return redacted_records(records_of(flows), redactor)

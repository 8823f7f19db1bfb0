"""The journal: ``journal.jsonl`` and ``flows.mitm`` written, redacted and flushed, as flows complete.

A call's line is written before its last message is forwarded (a kill then loses no turn the
client saw); a flow is saved once it has been forwarded, through the chain's backlog, so the
bigger write adds nothing to a message's latency (and a big flow is written by a writer thread,
so its write adds nothing to other connections' either). What of it has surely been sent is
masked in the flow itself, as the scrubber would mask it, and the rest on a copy (``adapt.sent_state``).

Write-failure policy: traffic always flows. When a write fails (disk full, directory gone)
the error is logged once, writing stops, and ``failed`` holds the reason so that
``sessiontap record`` can report it and exit non-zero. Nothing fails silently.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, BinaryIO

from mitmproxy import ctx, exceptions, http
from mitmproxy.addonmanager import Loader

from sessiontap.bridge import adapt, flowfile
from sessiontap.bridge.backlog import Backlog
from sessiontap.bridge.guard import guarded
from sessiontap.core.model import Call, Closing, Note
from sessiontap.core.redact import ANSWER_KEPT_FROM, SECRET_PREFIX, Redactor

log = logging.getLogger("sessiontap")

JOURNAL_FILE = "journal.jsonl"
CAPTURE_FILE = "flows.mitm"
CONTEXT_TAIL = 4  # turns of context kept on a journal line: lines stay small in long sessions
LINE_TEXT = 4000  # characters of any one text on a journal line (flows.mitm keeps every body whole)
BIG_WRITE = 1 << 20  # bytes of a saved flow from which the writer thread writes it, off the event loop


def bounded(value: Any, limit: int = LINE_TEXT) -> Any:
    """A JSON-ready value with every text longer than ``limit`` clipped, saying how much was left out."""
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + f"… [{len(value) - limit:,} more characters]"
    if isinstance(value, dict):
        return {k: bounded(v, limit) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [bounded(v, limit) for v in value]
    return value


def _learn_secret_variables(redactor: Redactor, raw: bytes | None) -> None:
    """Teach the redactor the ``secret__`` values of a JSON body (cheap: most bodies have none).

    A big body's kept answer (worked out in the tagger's worker thread) settles it without a pass when it
    holds nothing to mask at all.
    """
    if raw and redactor.kept_answer(raw) is not False and SECRET_PREFIX.encode() in raw:
        redactor.body(raw)


class Journal:
    """Appends one redacted JSON line per event and one redacted flow per completed flow."""

    def __init__(self, backlog: Backlog | None = None) -> None:
        self.redactor = Redactor()
        self.backlog = backlog or Backlog()  # flows are saved once they have been forwarded
        self.out: Path | None = None
        self.lines: IO[str] | None = None
        self.capture: BinaryIO | None = None
        self.open_sockets: dict[str, http.HTTPFlow] = {}
        self.learned: dict[str, int] = {}  # flow id -> WebSocket messages whose secrets the redactor knows
        self.writer: ThreadPoolExecutor | None = None  # writes big flows, and the flows after them meanwhile
        self.writes: deque[Future[None]] = deque()  # its writes not known to be done, oldest first
        self.failed: str | None = None
        self.closed = False

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "sessiontap_out", str, "",
            "Directory for journal.jsonl and flows.mitm (created if missing; '' writes nothing).",
        )

    def configure(self, updated: set[str]) -> None:
        if "sessiontap_out" not in updated:
            return
        self._close()
        value = ctx.options.sessiontap_out
        if not value:
            self.out = None
            return
        out = Path(value)
        try:
            out.mkdir(parents=True, exist_ok=True)
            # backslashreplace: a lone surrogate from a client's JSON is written as its JSON escape
            self.lines = open(out / JOURNAL_FILE, "a", encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
            self.capture = open(out / CAPTURE_FILE, "ab")  # noqa: SIM115 - lives until done()
        except OSError as e:
            raise exceptions.OptionsError(f"sessiontap_out: cannot write to {value!r}: {e.strerror or e}") from e
        self.out = out
        self.closed = False
        self.record("start", {"pid": os.getpid(), "out": str(out)})

    def _fail(self, what: str, e: OSError) -> None:
        if self.failed is None:
            self.failed = f"could not write {what}: {e.strerror or e}"
            log.error("sessiontap: %s; recording stopped, traffic still flows", self.failed)

    def learn(self, flow: http.HTTPFlow) -> None:
        """Let the redactor see the flow's secrets before anything about it is written.

        Headers, query and the request body's ``secret__`` variables once a flow; then each
        WebSocket message not seen yet, so that a value is masked wherever it shows up next (an
        agent reply quoting it, a later call's context), not only once the socket has ended.
        """
        if flow.id not in self.learned:
            self.learned[flow.id] = 0
            self._learn_head(flow)  # again: later addons (upstream_auth, modify_headers, mitmweb edits) add to it
            _learn_secret_variables(self.redactor, flow.request.raw_content)
        if flow.websocket is not None:
            messages = flow.websocket.messages
            for m in messages[self.learned[flow.id]:]:
                if m.from_client and m.is_text:
                    _learn_secret_variables(self.redactor, m.content)
            self.learned[flow.id] = len(messages)

    def _learn_head(self, flow: http.HTTPFlow) -> None:
        self.redactor.headers_(adapt.request_headers(flow))
        self.redactor.url(flow.request.url)

    def record(self, event: str, payload: dict[str, Any], flow: http.HTTPFlow | None = None) -> None:
        """Append one journal line ``{"event": ..., "time": ..., **payload}``, redacted and flushed."""
        if self.lines is None or self.failed or self.closed:
            return
        if flow is not None:
            self.learn(flow)
        line = {"event": event, "time": round(time.time(), 6), **payload}
        text = self.redactor.dumps(line)
        if len(text) > LINE_TEXT:  # only then can one of its texts be too long to keep whole
            text = self.redactor.dumps(line, bounded)
        try:
            self.lines.write(text + "\n")
            self.lines.flush()
        except OSError as e:
            self._fail(JOURNAL_FILE, e)

    def on_call(self, call: Call, flow: http.HTTPFlow) -> None:
        """Journal a decoded call; its context as a size and its last turns (flows.mitm keeps it all).

        Only the tails are converted: a line costs the same at the 5,000th turn of a socket as at the first.
        """
        line = call.to_json(context=call.context[-CONTEXT_TAIL:],
                            extra_context={name: turns[-CONTEXT_TAIL:] for name, turns in call.extra_context.items()})
        line["context_tail"] = line.pop("context")
        line["context_turns"] = len(call.context)
        self.record("call", line, flow)

    def on_note(self, note: Note, flow: http.HTTPFlow) -> None:
        """Journal something the decoder could not take as a call."""
        self.record("note", {"flow_id": note.flow_id, "kind": note.kind, "detail": note.detail}, flow)

    def on_close(self, closing: Closing, flow: http.HTTPFlow, info: dict[str, Any]) -> None:
        """Journal the end of a WebSocket conversation."""
        self.record("ws-close", {"flow_id": closing.flow_id, "conversation": closing.key, "close_code": closing.code,
                                 "closed_by_client": closing.by_client, **info}, flow)

    def on_first_message(self, agent_id: str, text: str) -> None:
        """Journal an agent's configured opening line."""
        self.record("agent", {"agent_id": agent_id, "first_message": text})

    @guarded
    def _save(self, flow: http.HTTPFlow) -> None:
        """Mask the flow (it has been sent) and append it to flows.mitm (its secrets were learned at its hooks).

        A big flow is written by the writer thread, off the event loop, and so is every flow after it
        while that write lasts (one thread, in order); the others are written here.
        """
        if self.capture is None or self.failed or self.closed:
            return
        parts, size = flowfile.pieces(adapt.sent_state(flow, self.redactor))
        self._written()
        if size < BIG_WRITE and not self.writes:
            self._write(self.capture, parts)
            return
        if self.writer is None:
            self.writer = ThreadPoolExecutor(1, thread_name_prefix="sessiontap-capture")
        self.writes.append(self.writer.submit(self._write, self.capture, parts))

    def _write(self, capture: BinaryIO, parts: list[bytes]) -> None:
        if self.failed:  # a write before it failed (disk full): nothing more after a torn record
            return
        try:
            capture.writelines(parts)
            capture.flush()
        except OSError as e:
            self._fail(CAPTURE_FILE, e)
        except Exception as e:  # noqa: BLE001 - in the writer thread: logged, never raised into done()
            self._fail(CAPTURE_FILE, OSError(f"{type(e).__name__}: {e}"))

    def _written(self, wait: bool = False) -> None:
        """Forget the writer thread's finished writes (all of them, waiting for them, with ``wait``)."""
        while self.writes and (wait or self.writes[0].done()):
            self.writes.popleft().result()

    def settle(self) -> None:
        """Wait for the writer thread's writes: flows.mitm holds every flow saved so far."""
        self._written(wait=True)

    @guarded
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """A request that announces a big body: its head's secrets learnt before the tagger's worker checks the body.

        Learnt after that check, they would have the body searched again for them, on the event loop.
        """
        headers = flow.request.headers
        length = headers.get("content-length", "")
        if "transfer-encoding" in headers or (length.isdigit() and int(length) >= ANSWER_KEPT_FROM):
            self._learn_head(flow)

    @guarded
    def response(self, flow: http.HTTPFlow) -> None:
        if flow.websocket is None:
            self.learn(flow)
            self.learned.pop(flow.id, None)
            self.backlog.add(self._save, flow)
        else:
            self.learn(flow)
            self.open_sockets[flow.id] = flow

    @guarded
    def websocket_message(self, flow: http.HTTPFlow) -> None:
        self.learn(flow)

    @guarded
    def error(self, flow: http.HTTPFlow) -> None:
        if flow.websocket is None:  # saved now: the endings addon replaces the error when it kills the flow
            self.learn(flow)
            self.learned.pop(flow.id, None)
            self._save(flow)

    @guarded
    def websocket_end(self, flow: http.HTTPFlow) -> None:
        if self.open_sockets.pop(flow.id, None) is not None:
            self.learn(flow)
            self.backlog.add(self._save, flow)
        self.learned.pop(flow.id, None)

    def done(self) -> None:
        self.backlog.drain()
        # mitmproxy calls done() before the open sockets' websocket_end: save them as they are now.
        for flow in list(self.open_sockets.values()):
            self.learn(flow)
            self._save(flow)
        self.open_sockets.clear()
        self.record("end", {})
        self._close()

    def _close(self) -> None:
        self._written(wait=True)
        if self.writer is not None:
            self.writer.shutdown()
            self.writer = None
        for f in (self.lines, self.capture):
            if f is not None:
                try:
                    f.close()
                except OSError as e:
                    self._fail("files", e)
        self.lines = self.capture = None
        self.closed = True

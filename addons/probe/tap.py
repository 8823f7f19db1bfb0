"""sessiontap in-process for one test: the recording proxy on a thread of its own, in front of the simulator, a
replay of a capture or the real API, and the analysis of what went through it whenever asked."""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from sessiontap.app.target import placeholder_key
from sessiontap.core.errors import CaptureError, SessiontapError
from sessiontap.router import ws_origin

if TYPE_CHECKING:
    import asyncio

    from sessiontap.app.capture import Capture
    from sessiontap.app.runner import Listening, RecordResult
    from sessiontap.core.analysis import Analysis
    from sessiontap.core.model import Call, Finding, SessionState
    from sessiontap.core.redact import Redactor
    from sessiontap.core.settings import Settings
    from sessiontap.replay.server import ReplayServer

START_TIMEOUT = 30.0  # seconds for the proxy to listen, and for it to stop
MODES = ("reverse", "regular")
READ_TRIES = 3
FLAGS = ("--sessiontap-upstream", "--sessiontap-live")  # how the plugin's options are named in errors


class TapError(SessiontapError):
    """sessiontap could not be started (or stopped) for the test."""


@dataclass(frozen=True, slots=True)
class Where:
    """Where a test's traffic goes: a capture's replay, a server on this machine, the real API, else the simulator."""

    replay: Path | None = None
    upstream: str | None = None
    live: bool = False
    mode: str = "reverse"

    def target(self, environ: Mapping[str, str]) -> str | None:
        """The upstream URL (None: the built-in simulator, or the replay); TapError when it may not be used."""
        from sessiontap.app.target import TargetError, send_target

        if self.mode not in MODES:
            raise TapError(f"mode must be reverse or regular (got {self.mode!r})")
        if self.replay is not None:
            if self.upstream or self.live:
                raise TapError("a replay answers from its capture: it takes no upstream and no live")
            return None
        try:
            return send_target(self.upstream, self.live, "the test's traffic", environ, FLAGS)
        except TargetError as e:
            raise TapError(str(e)) from e


@dataclass(slots=True, repr=False)
class Tap:
    """The recording proxy for one test, and what went through it: ``calls``, ``sessions``, ``findings``.

    ``start()`` brings up the upstream (unless live or given) and the proxy; ``env()`` gives the
    variables that point a client at it; ``stop()`` ends the recording and writes ``report``.
    The capture, journal, findings.json and report.html go to ``out``.
    """

    out: Path
    where: Where = Where()
    name: str = ""  # the test: names the client in the capture
    config: Path | None = None  # mitm.yaml (default: ./mitm.yaml when present)
    listening: Listening | None = field(default=None, init=False)
    result: RecordResult | None = field(default=None, init=False)
    report: Path | None = field(default=None, init=False)
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)
    _ready: concurrent.futures.Future[Listening] = field(default_factory=concurrent.futures.Future, init=False,
                                                          repr=False)
    _stop: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = field(default=None, init=False, repr=False)
    _failed: BaseException | None = field(default=None, init=False, repr=False)
    _replay: ReplayServer | None = field(default=None, init=False, repr=False)
    _settings: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    # -- running ----------------------------------------------------------------------------------
    def start(self, environ: Mapping[str, str] | None = None) -> Self:
        """Start the upstream (simulator or replay, unless another is given) and the proxy in front of it."""
        import os

        from sessiontap.app.config import settings_from
        from sessiontap.app.runner import fresh_out
        from sessiontap.replay.match import parse_ignore
        from sessiontap.replay.server import ALWAYS_IGNORED, running_replay
        from sessiontap.simulator.server import running_simulator

        env = os.environ if environ is None else environ
        upstream = self.where.target(env)
        fresh_out(self.out)  # a test run again into the same --sessiontap-out is judged alone
        try:
            if self.where.replay is not None:
                replay = running_replay(self.where.replay, ignore=parse_ignore(ALWAYS_IGNORED))  # as `replay` does
                self._replay = self._stack.enter_context(replay)
                upstream = self._replay.url
            elif upstream is None:
                upstream = self._stack.enter_context(running_simulator()).url
            self._settings = {**settings_from(self.config, {}), "sessiontap_mode": self.where.mode,
                              "sessiontap_upstream": upstream, "sessiontap_out": str(self.out),
                              "sessiontap_client": f"test {self.name}" if self.name else ""}
            self._thread = threading.Thread(target=self._record, name="sessiontap-tap", daemon=True)
            self._thread.start()
            self.listening = self._ready.result(timeout=START_TIMEOUT)
        except concurrent.futures.TimeoutError as e:
            self._stack.close()
            raise TapError(f"the proxy did not start within {START_TIMEOUT:g} s") from e
        except BaseException:
            self._stack.close()
            raise
        return self

    def _record(self) -> None:
        from sessiontap.app.runner import run_record

        try:
            self.result = run_record(self._settings, [], announce=lambda line: None, drive=self._drive)
        except BaseException as e:  # handed to the test's thread: start() or stop() raises it
            self._failed = e
            if not self._ready.done():
                self._ready.set_exception(e)

    async def _drive(self, listening: Listening, proc: object) -> int:
        import asyncio

        stop = asyncio.Event()
        self._stop = (asyncio.get_running_loop(), stop)
        self._ready.set_result(listening)
        await stop.wait()
        return 0

    def stop(self) -> None:
        """End the recording (findings.json is written), write report.html and stop the upstream."""
        try:
            if self._stop is not None:
                loop, event = self._stop
                with contextlib.suppress(RuntimeError):  # the loop already closed: the proxy has stopped
                    loop.call_soon_threadsafe(event.set)
            if self._thread is not None:
                self._thread.join(START_TIMEOUT)
                if self._thread.is_alive():
                    raise TapError(f"the proxy did not stop within {START_TIMEOUT:g} s")
        finally:
            self._stack.close()
        if self._failed is not None:
            raise TapError(f"the recording failed: {self._failed}") from self._failed
        if self.result is not None and self.result.analysis is not None:
            self.write_report(self.analysis())

    def __enter__(self) -> Self:
        return self.start()

    def __repr__(self) -> str:
        at = self.listening.url if self.listening is not None else "not started"
        return f"<sessiontap {self.where.mode} proxy at {at}, recording to {self.out}>"

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # -- pointing a client at it ------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """The proxy's base URL (reverse mode: what ELEVENLABS_BASE_URL is set to)."""
        return self._listening().url

    @property
    def ws_url(self) -> str:
        """The proxy's WebSocket base URL, ``ws://HOST:PORT`` (the agent socket is ``/v1/convai/conversation``)."""
        return ws_origin(self.base_url)

    def env(self, base: Mapping[str, str]) -> dict[str, str]:
        """``base`` pointed at the proxy as ``record -- CMD`` points a client; a placeholder key unless live."""
        out = self._listening().env(dict(base))
        return {**out, **placeholder_key(self.where.live, out)}

    def changes(self, base: Mapping[str, str]) -> Iterator[tuple[str, str | None]]:
        """The variables ``env`` sets (name, value) or removes (name, None) in ``base``."""
        new = self.env(base)
        for name, value in new.items():
            if base.get(name) != value:
                yield name, value
        for name in base:
            if name not in new:
                yield name, None

    def _listening(self) -> Listening:
        if self.listening is None:
            raise TapError("sessiontap is not started")
        return self.listening

    # -- what went through it ---------------------------------------------------------------------
    def analysis(self) -> Analysis:
        """The analysis of everything recorded so far (an open WebSocket's turns included), replay misses too.

        While the proxy runs, it is a copy of the live analysis, taken on the proxy's loop once its deferred
        work has run: a call whose reply was forwarded whole is in it, judged, its context whole (an open
        socket's turns too, though its flow is written to flows.mitm only when it closes). Once the proxy
        has stopped, the capture is read and analysed again.
        """
        from sessiontap.core.settings import Settings
        from sessiontap.replay.server import miss_findings

        analysis = self._live()
        misses = list(self._replay.misses) if self._replay is not None else []
        if analysis is None or misses:
            offline, cap = self._read(Settings.from_options(self._settings))
            analysis = analysis or offline
            if misses:  # matched against what went through, as `replay` does
                analysis.add_findings(miss_findings(misses, cap.records, analysis.calls))
        return analysis

    def _live(self) -> Analysis | None:
        """The proxy's analysis so far, from its own loop; None once it has stopped."""
        import asyncio

        settled = self.listening.settled if self.listening is not None else None
        if self._stop is None or settled is None or self.result is not None:
            return None
        waiting = settled()
        try:
            answer = asyncio.run_coroutine_threadsafe(waiting, self._stop[0])
        except RuntimeError:  # the loop has closed: the proxy has stopped
            waiting.close()
            return None
        try:
            return answer.result(START_TIMEOUT)
        except concurrent.futures.CancelledError:  # the proxy stopped meanwhile
            return None
        except concurrent.futures.TimeoutError as e:
            answer.cancel()
            raise TapError(f"the proxy did not answer within {START_TIMEOUT:g} s") from e

    def _read(self, settings: Settings) -> tuple[Analysis, Capture]:
        from sessiontap.app.capture import analyse_capture

        for _ in range(READ_TRIES - 1):  # the proxy's thread may be writing the capture's first flow
            with contextlib.suppress(CaptureError):
                return analyse_capture(self.out, settings)
            time.sleep(0.1)
        return analyse_capture(self.out, settings)

    @property
    def calls(self) -> list[Call]:
        """Every call so far (an HTTP simulate call, or one WebSocket user turn), in the order they started."""
        return self.analysis().calls

    @property
    def sessions(self) -> list[SessionState]:
        """The sessions so far, as the analysis grouped the calls."""
        return self.analysis().sessions

    @property
    def findings(self) -> list[Finding]:
        """The findings so far, errors first."""
        return self.analysis().findings

    def write_report(self, analysis: Analysis) -> tuple[Path, Redactor]:
        """Write report.html for ``analysis``; its path, and the redactor that learned the capture's secrets."""
        from sessiontap.app.capture import write_report
        from sessiontap.core.redact import Redactor
        from sessiontap.core.settings import Settings

        red = Redactor()
        self.report = write_report(analysis, self.out, self.out, Settings.from_options(self._settings), redactor=red)
        return self.report, red

    def assert_continuous(self, sessions: int | None = None) -> None:
        """Fail (AssertionError) when a conversation did not continue: the findings' messages and the report's path.

        Fails on any finding of a reset, a new conversation per message, a changed or shared
        session id, the opening line again, context ignored or a missing turn
        (``checks.CONTINUITY_RULES``), on any error finding (an upstream failure, a replay
        miss), when nothing went through sessiontap, and (``sessions`` given) when the calls
        do not make exactly that many sessions.
        """
        __tracebackhide__ = True  # pytest shows the test's line, not this one
        from sessiontap.core.rules import ERROR
        from sessiontap.probe.checks import CONTINUITY_RULES

        analysis = self.analysis()
        if not analysis.calls:
            how = ("take its base URL from ELEVENLABS_BASE_URL (or sessiontap.base_url)" if self.where.mode == "reverse"
                   else "use HTTPS_PROXY and sessiontap's CA from the environment (not trust_env=False or proxy=None)")
            raise AssertionError(f"sessiontap: no call went through sessiontap at {self.base_url}: the code under "
                                 f"test must {how}")
        problems = [f for f in analysis.findings if f.rule in CONTINUITY_RULES or f.severity == ERROR]
        count = len(analysis.sessions)
        if not problems and (sessions is None or count == sessions):
            return
        report, red = self.write_report(analysis)
        lines = [f"sessiontap: the conversation does not continue: {analysis.verdict()}"]
        if sessions is not None and count != sessions:
            lines.append(f"  expected {sessions} session{'s' if sessions != 1 else ''}, found {count}: "
                         + ", ".join(s.id for s in analysis.sessions[:5]))
        lines += [f"  {f.severity} [{f.rule}] {f.session}: {f.message}" for f in problems]
        lines.append(f"  report: {report}")
        raise AssertionError(red.text("\n".join(lines)))

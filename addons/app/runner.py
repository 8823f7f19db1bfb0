"""Running the recording proxy in-process: mitmproxy with sessiontap's chain, and the client under it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shlex
import signal
import socket
import sys
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import certifi
from mitmproxy import exceptions, options
from mitmproxy.addons import default_addons
from mitmproxy.master import Master

from sessiontap.core.analysis import Analysis
from sessiontap.core.code import CODE_FILE, Lookup, around_proxy, lookups, where
from sessiontap.core.errors import SessiontapError
from sessiontap.core.redact import Redactor
from sessiontap.exposure import AUTH_USER, LOOPBACK, exposure_problem, proxy_url
from sessiontap.findings import FINDINGS_FILE
from sessiontap.journal import CAPTURE_FILE, JOURNAL_FILE
from sessiontap.router import DEFAULT_UPSTREAM, ELEVENLABS_HOSTS, parse_upstream
from sessiontap.sessiontap import chain

CA_CERT = "mitmproxy-ca-cert.pem"
BUNDLE = "ca-bundle.pem"
CHILD_GRACE_SECONDS = 10.0


def confdir() -> Path:
    """Where sessiontap keeps its own mitmproxy CA: $SESSIONTAP_HOME or ~/.config/sessiontap."""
    env = os.environ.get("SESSIONTAP_HOME")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "sessiontap"


@dataclass
class RecordResult:
    """What a recording run ended with: the exit code, where it wrote, and the verdict line."""

    exit_code: int
    out: str = ""
    journal_error: str | None = None
    verdict: str = ""
    analysis: Analysis | None = None
    redactor: Redactor | None = None  # the one that saw the traffic: knows every secret to mask in what is written
    warnings: list[str] = field(default_factory=list)  # traffic around the proxy, how to route it (printed)


def check_upstream(url: str, timeout: float = 3.0) -> None:
    """Raise SessiontapError when an explicitly chosen upstream does not accept connections."""
    _, host, port = parse_upstream(url)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:
        raise SessiontapError(f"upstream {url} is not reachable ({e.strerror or e})") from e


def ca_bundle(conf: Path) -> Path:
    """A CA bundle of the usual roots plus sessiontap's CA, for clients in regular mode.

    Written whole or not at all (a temporary file renamed over it): runs that share the
    config directory rewrite it while each other's clients read it.
    """
    ca = conf / CA_CERT
    bundle = conf / BUNDLE
    roots = Path(certifi.where()).read_text(encoding="ascii")
    partial = conf / f".{BUNDLE}.{os.getpid()}.{secrets.token_hex(4)}"
    partial.write_text(roots.rstrip("\n") + "\n" + ca.read_text(encoding="ascii"), encoding="ascii")
    os.replace(partial, bundle)
    return bundle


CODE_TRACE_DIR = Path(__file__).resolve().parent / "codetrace"  # sitecustomize.py, preload.cjs and proxy.cjs


def node_require(script: Path, node_options: str) -> str:
    """NODE_OPTIONS with ``--require script`` first (quoted as Node reads it), the user's own options after."""
    quoted = '"' + str(script).replace("\\", "\\\\").replace('"', '\\"') + '"'
    return " ".join(p for p in (f"--require {quoted}", node_options) if p)


def child_env(mode: str, host: str, port: int, conf: Path, base: dict[str, str],
              auth: str | None = None) -> dict[str, str]:
    """The client's environment: proxy and CA variables (regular) or the base URL (reverse).

    In regular mode Node also gets proxy.cjs: Node's fetch, https and ws ignore HTTPS_PROXY by themselves.
    """
    env = dict(base)
    if mode == "reverse":
        env["ELEVENLABS_BASE_URL"] = f"http://{host}:{port}"
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
        return env
    proxy = proxy_url(host, port, auth)
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        env[name] = proxy
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(name, None)
    bundle = str(ca_bundle(conf))
    env.update(SSL_CERT_FILE=bundle, REQUESTS_CA_BUNDLE=bundle, CURL_CA_BUNDLE=bundle,
               NODE_EXTRA_CA_CERTS=str(conf / CA_CERT))
    env["NODE_OPTIONS"] = node_require(CODE_TRACE_DIR / "proxy.cjs", env.get("NODE_OPTIONS", ""))
    return env


def traced_env(env: dict[str, str], trace: Path) -> dict[str, str]:
    """The environment with the code trace on: our sitecustomize first on PYTHONPATH, our preload in NODE_OPTIONS.

    What the user had is kept after ours (their sitecustomize still runs: ours hands over to it).
    """
    out = dict(env)
    out["SESSIONTAP_CODE_TRACE"] = str(trace)
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(CODE_TRACE_DIR), env.get("PYTHONPATH", "")) if p)
    out["NODE_OPTIONS"] = node_require(CODE_TRACE_DIR / "preload.cjs", env.get("NODE_OPTIONS", ""))
    return out


def env_lines(mode: str, host: str, port: int, conf: Path, auth: str | None = None) -> list[str]:
    """The shell lines a user copies to point a client at a running proxy, for both modes."""
    bundle = conf / BUNDLE
    proxy = proxy_url(host, port, auth)
    return [
        "# regular mode (no change to the client):" + (" [active]" if mode == "regular" else ""),
        f"export HTTPS_PROXY={proxy} HTTP_PROXY={proxy}",
        f"export SSL_CERT_FILE={bundle} REQUESTS_CA_BUNDLE={bundle} CURL_CA_BUNDLE={bundle} "
        f"NODE_EXTRA_CA_CERTS={conf / CA_CERT}",
        "# reverse mode (point the client's base URL at the proxy):" + (" [active]" if mode == "reverse" else ""),
        f"export ELEVENLABS_BASE_URL=http://{host}:{port}",
    ]


class _Ready:
    """Signals when mitmproxy has bound its listeners."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def running(self) -> None:
        self.event.set()


class _Seen:
    """Counts the flows that reached the proxy (in regular mode only ElevenLabs hosts become flows)."""

    def __init__(self) -> None:
        self.flows = 0

    def requestheaders(self, flow: object) -> None:
        self.flows += 1


HOW_TO_ROUTE = {
    "regular": "to record it, the client must use HTTPS_PROXY: check NO_PROXY, and a client made with "
               "trust_env=False (requests, httpx, aiohttp) or proxy=None (httpx)",
    "reverse": "to record it, the client must take its base URL from ELEVENLABS_BASE_URL (or point it at the proxy)",
}


def bypass_warnings(mode: str, flows: int, found: list[Lookup]) -> list[str]:
    """What to say when a `record -- CMD` run's traffic went around the proxy, unrecorded (nothing: all went through).

    ``flows`` is how many flows reached the proxy; ``found``, the ElevenLabs hosts the client looked up
    itself (from the code trace), which a client going through the proxy never does. The warnings, then
    how to route the client.
    """
    out = []
    if not flows:
        out.append("warning: no call went through the proxy, so nothing was recorded (if the command talked "
                   "to ElevenLabs, it went around sessiontap)")
    for host, count, frames in around_proxy(found):
        times = "once" if count == 1 else f"{count} times"
        at = f", first at {where(frames)}" if frames else ""
        out.append(f"warning: the client looked up {host} itself {times}{at}: it went to ElevenLabs around "
                   "the proxy and that traffic was not recorded")
    if out:
        out.append(HOW_TO_ROUTE.get(mode, HOW_TO_ROUTE["regular"]))
    return out


def _trace_lookups(trace: Path | None, since: float) -> list[Lookup]:
    """The ElevenLabs hosts the client looked up itself during this run, from its code trace (none without)."""
    if trace is None:
        return []
    try:
        with open(trace, encoding="utf-8", errors="replace") as f:
            return lookups(f, since)
    except OSError:
        return []


class _RedactingHandler(logging.Handler):
    """Prints warnings and errors to stderr with secret-looking text masked."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.redactor = Redactor()

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):  # logging must never break the proxy
            sys.stderr.write(f"sessiontap: {self.redactor.text(record.getMessage())}\n")


@contextlib.contextmanager
def _logging() -> Any:
    root = logging.getLogger()
    handler = _RedactingHandler()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def mitm_options(settings: dict[str, Any], conf: Path) -> dict[str, Any]:
    """mitmproxy's own options for a sessiontap run (mode, listener, lazy upstream connections)."""
    mode = settings.get("sessiontap_mode", "regular")
    upstream = settings.get("sessiontap_upstream", DEFAULT_UPSTREAM)
    opts: dict[str, Any] = {
        "listen_host": settings.get("sessiontap_listen_host", LOOPBACK),
        "listen_port": settings.get("sessiontap_listen_port", 0),
        "mode": [f"reverse:{upstream}" if mode == "reverse" else "regular"],
        "connection_strategy": "lazy",
        "confdir": str(conf),
    }
    if mode == "regular":
        opts["allow_hosts"] = [ELEVENLABS_HOSTS]
    if settings.get("sessiontap_expose"):
        opts["proxyauth"] = f"{AUTH_USER}:{secrets.token_urlsafe(12)}"  # clients get it in HTTPS_PROXY
    return opts


@dataclass(frozen=True)
class Listening:
    """A running proxy as a driver sees it: where it listens, in which mode, and what a client needs to use it."""

    host: str
    port: int
    mode: str
    conf: Path
    auth: str | None = None
    settled: Callable[[], Coroutine[Any, Any, Analysis]] | None = field(default=None, compare=False)  # see Chain

    @property
    def url(self) -> str:
        """The proxy's own base URL, ``http://HOST:PORT`` (reverse mode: the client's ELEVENLABS_BASE_URL)."""
        return f"http://{self.host}:{self.port}"

    def env(self, base: dict[str, str]) -> dict[str, str]:
        """``base`` pointed at the proxy, as ``record -- CMD`` points its client (see ``child_env``)."""
        return child_env(self.mode, self.host, self.port, self.conf, base, self.auth)


Drive = Callable[[Listening, asyncio.subprocess.Process | None], Coroutine[Any, Any, int]]
"""Takes a run over once the proxy listens (see ``record``); returns the run's exit code."""
PIPE_LIMIT = 16 * 1024 * 1024  # the longest line a driver reads from a piped child


async def _start_child(command: list[str], env: dict[str, str], piped: bool) -> asyncio.subprocess.Process:
    """Start the client command; its stdin, stdout and stderr piped when a driver talks to it."""
    pipes: dict[str, Any] = {}
    if piped:
        pipes = {"stdin": asyncio.subprocess.PIPE, "stdout": asyncio.subprocess.PIPE,
                 "stderr": asyncio.subprocess.PIPE, "limit": PIPE_LIMIT}
    try:
        return await asyncio.create_subprocess_exec(*command, env=env, **pipes)
    except OSError as e:
        raise SessiontapError(f"cannot run {command[0]!r}: {e.strerror or e}") from e


async def _stop_child(proc: asyncio.subprocess.Process) -> int:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), CHILD_GRACE_SECONDS)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    return proc.returncode if proc.returncode is not None else 1


async def record(settings: dict[str, Any], command: list[str],
                 announce: Callable[[str], None] = print, code_trace: bool = True,
                 drive: Drive | None = None, extra_env: Mapping[str, str] | None = None) -> RecordResult:
    """Run the proxy (and the client command, if any) until it ends; return the exit code and counts.

    ``drive`` takes the run over once the proxy listens: with a command, the child is started
    with its stdin, stdout and stderr piped and handed to it; without one, it is handed None
    (the client is the caller's own, pointed at ``Listening``). The run ends when it returns
    (or on SIGINT/SIGTERM, when it is cancelled), and its return value is the exit code.
    ``extra_env`` is added to the command's environment before it is pointed at the proxy.
    """
    conf = confdir()
    conf.mkdir(parents=True, exist_ok=True)
    opts = options.Options()
    master = Master(opts)
    ours = chain()
    ready = _Ready()
    seen = _Seen()
    master.addons.add(ready, seen, ours, *default_addons())
    if command and not settings.get("sessiontap_client"):
        settings = {**settings, "sessiontap_client": "run: " + shlex.join(command)[:120]}  # the run is the client
    trace = Path(settings["sessiontap_out"]) / CODE_FILE if command and code_trace and settings.get("sessiontap_out") \
        else None
    if trace is not None:
        trace.parent.mkdir(parents=True, exist_ok=True)
        trace.touch()
        settings = {**settings, "sessiontap_code_trace": str(trace)}
    try:
        master.options.update(**mitm_options(settings, conf))
        master.options.update(**settings)
    except (exceptions.OptionsError, KeyError, TypeError) as e:
        raise SessiontapError(f"bad option: {e}") from e
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_quiet_when_cancelled)  # for asyncio.run's own end, when it cancels what is left
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    task = asyncio.create_task(master.run())
    waiter = asyncio.create_task(ready.event.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    try:
        addrs = master.addons.get("proxyserver").listen_addrs()
        if not addrs:
            host, port = master.options.listen_host, master.options.listen_port
            raise SessiontapError(f"cannot listen on {host}:{port} (address in use or not available)")
        host, port = str(addrs[0][0]), int(addrs[0][1])
        mode = settings.get("sessiontap_mode", "regular")
        out = settings.get("sessiontap_out", "")
        code = 0
        started = time.time()  # the code trace may hold earlier runs' lines: only this run's count
        listening = Listening(host, port, mode, conf, master.options.proxyauth, ours.settled)
        if command:
            env = listening.env({**os.environ, **(extra_env or {})})
            if trace is not None:
                env = traced_env(env, trace)
            announce(f"sessiontap: {mode} proxy on {host}:{port}, recording to {out or '(nowhere)'}")
            proc = await _start_child(command, env, piped=drive is not None)
            work: asyncio.Task[int] = asyncio.create_task(proc.wait() if drive is None else drive(listening, proc))
            driven = await _until(work, stop, task)
            code = await _stop_child(proc)
            if drive is not None:
                code = driven if driven is not None else code or 1
        elif drive is not None:
            announce(f"sessiontap: {mode} proxy on {host}:{port}, recording to {out or '(nowhere)'}")
            code = await _until(asyncio.create_task(drive(listening, None)), stop, task) or 0
        else:
            if mode == "regular":
                ca_bundle(conf)
            announce(f"sessiontap: {mode} proxy listening on {host}:{port}, recording to {out or '(nowhere)'}")
            announce("Point a client at it (copy one block), then press Ctrl-C to stop:")
            for line in env_lines(mode, host, port, conf, master.options.proxyauth):
                announce(line)
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({stopper, task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        master.shutdown()
        with contextlib.suppress(Exception):
            await task
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
    warnings = bypass_warnings(mode, seen.flows, _trace_lookups(trace, started)) if command else []
    for line in warnings:
        announce(f"sessiontap: {line}")
    analysis = ours.findings.analysis
    verdict = analysis.verdict() if analysis else ""
    return RecordResult(code, out, ours.journal.failed, verdict, analysis, ours.journal.redactor, warnings=warnings)


async def _until(work: asyncio.Task[int], stop: asyncio.Event, proxy: asyncio.Task[None]) -> int | None:
    """Wait for ``work`` unless a signal or the proxy's end comes first (then cancel it): its result, or None.

    An exception in ``work`` is raised here.
    """
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({work, stopper, proxy}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if not work.done():
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work
        return None
    return work.result()


def fresh_out(out: Path) -> None:
    """Remove what an earlier run wrote into ``out``, for a run that must be judged alone (a probe's, a test's).

    ``record`` itself appends to a directory it is given again; these runs start over in theirs.
    """
    from sessiontap.reports.html import REPORT_FILE  # the report's module loads its templates: only here

    for name in (CAPTURE_FILE, JOURNAL_FILE, FINDINGS_FILE, CODE_FILE, REPORT_FILE):
        (out / name).unlink(missing_ok=True)


def _quiet_when_cancelled(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The loop's error handler: a client connection still open when the proxy stops has its handler
    cancelled, which Python 3.12.1's stream callback reports as an error; anything else is reported."""
    cancelled = isinstance(context.get("exception"), asyncio.CancelledError)
    if not (cancelled and "StreamReaderProtocol" in str(context.get("message", ""))):
        loop.default_exception_handler(context)


def run_record(settings: dict[str, Any], command: list[str],
               announce: Callable[[str], None] = print, code_trace: bool = True,
               drive: Drive | None = None, extra_env: Mapping[str, str] | None = None) -> RecordResult:
    """Synchronous entry for the CLI: checks the upstream, then records until done (``drive``, ``extra_env``: see
    ``record``)."""
    upstream = settings.get("sessiontap_upstream", DEFAULT_UPSTREAM)
    try:
        parse_upstream(upstream)
    except ValueError as e:
        raise SessiontapError(f"--upstream: {e}") from e
    problem = exposure_problem(settings.get("sessiontap_listen_host", LOOPBACK),
                               bool(settings.get("sessiontap_expose")), settings.get("sessiontap_mode") == "reverse")
    if problem:
        raise SessiontapError(f"--listen-host: {problem}")
    if upstream != DEFAULT_UPSTREAM:
        check_upstream(upstream)
    with _logging():
        return asyncio.run(record(settings, command, announce, code_trace, drive, extra_env))

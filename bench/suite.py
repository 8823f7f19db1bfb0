"""The benchmark suite: every latency, throughput, stall, memory and offline scenario, three ways, in one command.

Everything runs on 127.0.0.1. One simulator (`bench/sim_bounded.py`: the stock ElevenLabs simulator, its agent
reading only the last 64 turns), one bare `mitmdump --mode reverse:<simulator> -w FILE --set
connection_strategy=lazy` and one `sessiontap record --mode reverse --upstream <simulator>` are started once and kept
up for the whole run (`stream-ttfb` has its own trio, the simulator with `--latency 0.1`). Each scenario runs
`--rounds` rounds; each round runs it **direct**, through **mitmdump** and through **sessiontap**, in an order that
rotates every round. A way's figure is the median of its round values (each round value is the median, p99 or
rate of that round's samples); the table gives each figure and the ratios sessiontap/direct, sessiontap/mitmdump
and mitmdump/direct.

Scenarios (full size; `--quick` in brackets):

- http-1       simulate-conversation calls on one keep-alive connection: ms/call (300 [60] a round)
- http-8       8 threads, each its own httpx.Client: ms/call median and p99, calls/s (8x100 [8x20])
- ws-N         one socket carrying N user turns: ms/turn (user_message -> agent_response), all turns and the
               last tenth; N = 100, 1000, 5000 [ws-5000 skipped]
- voice        `user_audio_chunk` frames of 100 ms of 16 kHz 16-bit PCM (3,200 bytes, base64), one every 20 ms
               (5x real time), a user_message every 50 frames: ms/turn while audio flows (5,000 [500] frames)
- flood        audio frames back to back, then one user_message until its agent_response: frames/s (20,000 [2,000])
- reconnect    a socket per message (connect, initiation, metadata, opening line, one turn, close): ms/message
               (100 [20])
- stall-20mb   small calls back to back while another client POSTs a 16 MB simulate-conversation body (the
               simulator refuses more than 16 MiB): their p50/p99 during the transfer vs their p50 without it
               (2 [1] transfers a round)
- stream-ttfb  simulate-conversation/stream with new_turns_limit 4 against the latency simulator: ms to the
               headers, to the first body byte and to the last (20 [5] calls a round)
- rss          the proxies' resident memory (VmRSS of the process that listens) around one socket of 100,000
               [5,000] messages (audio, a turn every 50) and 10,000 [1,000] HTTP calls; direct is n/a
- offline      `sessiontap report` of synthetic captures (`synth_capture.py`) of 1k, 10k, 100k [1k] calls: wall
               time and peak RSS of the report process

Exit code: 0 whatever the timings; 1 when a scenario failed functionally (a wrong status, a missing reply, a
process that died or did not stop cleanly), and the output says which. The table is printed and written with
every sample to `bench/results/suite-<stamp>.json` and `.md`.

Run: `uv run python bench/suite.py [--quick] [--only NAME,...] [--rounds N]`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import itertools
import json
import math
import os
import platform
import random
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from measure import RESULTS, ROOT, code_state
from record_latency import (
    API_KEY,
    BIN,
    HOST,
    REPLY_TIMEOUT,
    SIMULATE_BODY,
    SIMULATE_PATH,
    USER_LINES,
    WAYS,
    BenchError,
    Proc,
    accepts,
    conversation,
    free_port,
    mitmdump_argv,
    notable,
    read_until,
    sessiontap_argv,
    started,
    wait_until,
)
from sim_bounded import DEFAULT_WINDOW
from websockets.exceptions import WebSocketException
from websockets.sync.client import ClientConnection

BENCH = ROOT / "bench"
SCENARIOS = ("http-1", "http-8", "ws-100", "ws-1000", "ws-5000", "voice", "flood", "reconnect", "stall-20mb",
             "stream-ttfb", "rss", "offline")
PROXIES = ("mitmdump", "sessiontap")
LATENCY = 0.1
"""Seconds of the latency simulator's fault: before each HTTP answer and each streamed agent turn."""
AUDIO_FRAME_MS = 100
AUDIO_RATE = 16_000
AUDIO_EVERY = 50
"""A user_message after this many audio frames (voice, rss)."""
HTTP_CLIENTS = 8
RSS_HTTP_CLIENTS = 4
WARMUP = 10
STOP_TIMEOUT = {True: 60.0, False: 600.0}
"""Seconds a proxy gets to stop after SIGINT (sessiontap writes its report then), quick and full."""


@dataclass(frozen=True)
class Sizes:
    """How much each scenario does in a round."""

    http1: int
    http8: int
    ws: dict[str, int]
    voice: int
    flood: int
    reconnect: int
    stall_runs: int
    stall_base: int
    stream: int
    rss_voice: int
    rss_http: int
    offline: tuple[str, ...]


FULL = Sizes(http1=300, http8=100, ws={"ws-100": 100, "ws-1000": 1000, "ws-5000": 5000}, voice=5000, flood=20_000,
             reconnect=100, stall_runs=2, stall_base=50, stream=20, rss_voice=100_000, rss_http=10_000,
             offline=("1k", "10k", "100k"))
QUICK = Sizes(http1=60, http8=20, ws={"ws-100": 100, "ws-1000": 1000}, voice=250, flood=2000, reconnect=20,
              stall_runs=1, stall_base=30, stream=5, rss_voice=5000, rss_http=1000, offline=("1k",))
QUICK_CHANGES = [
    "ws-5000 skipped (the ws growth summary compares ws-1000 with ws-100)",
    "voice 250 frames (5 turns), flood 2,000 frames, reconnect 20, http-1 60, http-8 8x20",
    "stall-20mb: one transfer a round instead of two",
    "rss: 5,000 socket messages and 1,000 HTTP calls instead of 100,000 and 10,000",
    "offline: the 1k capture only (10k and 100k skipped)",
]

METRICS: dict[str, list[tuple[str, str]]] = {
    "http-1": [("ms", "ms/call, median")],
    "http-8": [("ms", "ms/call, median"), ("p99", "ms/call, p99"), ("rate", "calls/s")],
    "ws": [("ms", "ms/turn, median of all turns"), ("last", "ms/turn, median of the last tenth")],
    "voice": [("ms", "ms/turn while audio flows, median"), ("p90", "ms/turn while audio flows, p90")],
    "flood": [("rate", "audio frames/s")],
    "reconnect": [("ms", "ms/message, connect to close")],
    "stall-20mb": [("base", "small call p50 without transfer, ms"), ("p50", "small call p50 during transfer, ms"),
                   ("p99", "small call p99 during transfer, ms"), ("added", "added p99 ms (p99 during - p50 without)"),
                   ("big", "the big call, ms")],
    "stream-ttfb": [("headers", "ms to response headers"), ("ttfb", "ms to first body byte (TTFB)"),
                    ("ttlb", "ms to last byte")],
    "rss": [("voice_open", "RSS growth MB, long socket (still open), largest round"),
            ("voice_closed", "RSS growth MB, long socket (after close), largest round"),
            ("http", "RSS growth MB, HTTP calls, largest round"),
            ("total", "RSS growth MB, first round start to last round end")],
}


def metrics_of(name: str, sizes: Sizes) -> list[tuple[str, str]]:
    if name.startswith("ws-"):
        return METRICS["ws"]
    if name == "offline":
        return [m for cap in sizes.offline for m in ((f"{cap}_s", f"{cap} capture: report s"),
                                                     (f"{cap}_rss", f"{cap} capture: report peak RSS MB"))]
    if name == "rss":
        rows = METRICS["rss"]
        return [(k, label.replace("long socket", f"{sizes.rss_voice:,} msgs on one socket")
                 .replace("HTTP calls", f"{sizes.rss_http:,} HTTP calls")) for k, label in rows]
    return METRICS[name]


def ways_of(name: str) -> tuple[str, ...]:
    return {"rss": PROXIES, "offline": ("sessiontap",)}.get(name, WAYS)


NOTES: dict[str, str] = {
    "http-1": "4-turn history, new_turns_limit 1, an x-session-id per series; one keep-alive connection.",
    "http-8": "8 client threads share the bench process's GIL: the client's own cost is in every figure, most "
              "visibly in direct's.",
    "ws": "one socket; turn = user_message until the next agent_response (the response parts are skipped). The "
          "simulator's agent reads only the last 64 turns (sim_bounded.py; the same replies for this traffic): "
          "the stock one re-reads the whole conversation per reply, 60-170 ms at 5,000 turns.",
    "voice": "audio paced at one 100 ms frame every 20 ms (5x real time, to keep it short); the simulator only "
             "counts user_audio_chunk and sends no audio back, so downstream is text frames only. "
             "permessage-deflate is on (websockets' default, which the sample clients use too).",
    "flood": "frames/s = frames / (first frame sent to the agent_response of the user_message after the last).",
    "reconnect": "the same user_id on every socket, as the faulty client does (sessiontap journals the resets).",
    "stall-20mb": "16 MB body, not 20: the simulator answers 413 above 16 MiB. ~4,350 turns (7 KB agent turns, "
                  "short user ones). Small calls counted 'during' overlap the big call; the simulator itself "
                  "parses the body in its event loop, so direct stalls too: the target is on st - direct.",
    "stream-ttfb": "simulator --latency 0.1: 100 ms before the headers, 100 ms before each agent turn. Bare "
                   "mitmdump buffers whole responses (no stream_large_bodies), so its TTFB is its TTLB.",
    "rss": "runs first, on fresh proxies (memory other scenarios freed would otherwise hide growth); VmRSS of the "
           "process that listens (found through /proc/net/tcp). Rows are the largest round, not the median: later "
           "rounds reuse what round 1 freed. The socket sends audio frames back to back with a user_message every "
           "50 (waiting for each reply); mitmdump keeps every message of an open WebSocket flow in memory by design.",
    "offline": "synthetic captures (bench/synth_capture.py, cached in bench/results/captures/synth-*); "
               "`sessiontap report` in a fresh process spawned by a small helper, peak RSS = its ru_maxrss (which "
               "counts the helper's own few MB, the floor). A capture whose report takes over 120 s is measured in "
               "the first round only.",
}


# numbers ---------------------------------------------------------------------------------------------------------


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else math.nan


def pct(xs: list[float], q: int) -> float:
    if len(xs) < 2:
        return xs[0] if xs else math.nan
    return statistics.quantiles(xs, n=100, method="inclusive")[q - 1]


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or math.isnan(a) or math.isnan(b) or b == 0:
        return None
    return a / b


def fmt(v: float | None, ratio_: bool = False, digits: int = 2) -> str:
    if v is None or math.isnan(v):
        return "n/a"
    if ratio_:
        return f"{v:.{digits}f}"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.1f}" if abs(v) >= 100 else f"{v:.2f}"


# payloads --------------------------------------------------------------------------------------------------------


def audio_frames(count: int = 20, seed: int = 7) -> list[str]:
    """`user_audio_chunk` frames of 100 ms of 16 kHz 16-bit PCM: voiced, varying tones with noise, base64."""
    rng = random.Random(seed)
    samples = AUDIO_RATE * AUDIO_FRAME_MS // 1000
    frames = []
    for k in range(count):
        pitch = rng.uniform(90, 240)
        loud = 6000 * abs(math.sin(k * 0.7)) + 800
        pcm = [int(max(-32768, min(32767, loud * (math.sin(2 * math.pi * pitch * (k * samples + n) / AUDIO_RATE)
                                                  + 0.4 * math.sin(6 * math.pi * pitch * n / AUDIO_RATE))
                                   + rng.gauss(0, 300)))) for n in range(samples)]
        chunk = base64.b64encode(struct.pack(f"<{samples}h", *pcm)).decode("ascii")
        frames.append(json.dumps({"user_audio_chunk": chunk}))
    return frames


AUDIO = audio_frames()
USER_MESSAGES = [json.dumps({"type": "user_message", "text": line}) for line in USER_LINES]
SMALL_BODY = json.dumps(SIMULATE_BODY).encode()
STREAM_BODY = json.dumps({**SIMULATE_BODY, "new_turns_limit": 4}).encode()
JSON_HEADERS = {"xi-api-key": API_KEY, "content-type": "application/json"}


def big_body(mb: float) -> bytes:
    """A simulate-conversation body of about `mb` MB: a long history of verbose agent turns and short user ones."""
    rng = random.Random(3)
    words = ("classification", "tariff", "heading", "origin", "cotton", "knitted", "garment", "declaration",
             "invoice", "shipment", "subheading", "customs", "value", "duty", "rate", "note", "chapter", "section")
    agent_text = " ".join(rng.choice(words) for _ in range(900))  # ~8 KB
    turns: list[dict[str, Any]] = []
    size, t = 0, 0
    while size < mb * 1e6 - 20_000:
        user = f"Follow-up {len(turns) // 2}: please go on."
        turns.append({"role": "user", "message": user, "time_in_call_secs": t})
        turns.append({"role": "agent", "message": agent_text, "time_in_call_secs": t + 2})
        size += len(agent_text) + len(user) + 120
        t += 5
    turns.append({"role": "user", "message": "Please recap the classification.", "time_in_call_secs": t})
    body = {"simulation_specification": {"simulated_user_config": {"prompt": {"prompt": "A customs user."}},
                                         "partial_conversation_history": turns}, "new_turns_limit": 1}
    return json.dumps(body).encode()


# processes -------------------------------------------------------------------------------------------------------


def status_kb(pid: int, key: str) -> int:
    """A `/proc/<pid>/status` field in kB (VmRSS, VmHWM); 0 when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_mb(pid: int) -> float:
    return status_kb(pid, "VmRSS") / 1024


def listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    inodes.add(cols[9])
    return inodes


def descendants(pid: int) -> list[int]:
    """`pid` and every process under it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def listener_pid(proc: Proc) -> int:
    """The process (the started one or one under it) that holds the listening socket of `proc.port`."""
    wanted = {f"socket:[{inode}]" for inode in listening_inodes(proc.port)}
    for pid in descendants(proc.popen.pid):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                        return pid
    raise BenchError(f"{proc.name}: no process under pid {proc.popen.pid} listens on port {proc.port}")


@dataclass
class Trio:
    """A simulator and the two proxies in front of it."""

    label: str
    workdir: Path
    sim: Proc
    proxies: dict[str, Proc]
    listeners: dict[str, int] = field(default_factory=dict)
    stopped: dict[str, dict[str, Any]] = field(default_factory=dict)

    def base(self, way: str) -> str:
        return f"http://{HOST}:{self.sim.port if way == 'direct' else self.proxies[way].port}"

    def check_alive(self) -> None:
        for proc in (self.sim, *self.proxies.values()):
            proc.check_alive()

    def rss(self) -> dict[str, float]:
        out = {way: round(rss_mb(pid), 1) for way, pid in self.listeners.items()}
        out["simulator"] = round(rss_mb(self.sim.popen.pid), 1)
        return out


def start_trios(stack: contextlib.ExitStack, root: Path, stock: bool,
                wanted: dict[str, list[str]]) -> dict[str, Trio]:
    """For each label, a simulator (with its extra flags), then bare mitmdump and sessiontap record in front of it.

    All simulators start at once, then all proxies at once; every process is stopped by `stack` if not before.
    """
    sims: dict[str, tuple[Proc, Path]] = {}
    for label, sim_flags in wanted.items():
        workdir = root / label
        workdir.mkdir(parents=True)
        port_file = workdir / "simulator.port"
        launcher = ["-m", "sessiontap.simulator"] if stock else [str(BENCH / "sim_bounded.py"), "--window",
                                                                  str(DEFAULT_WINDOW)]
        argv = [sys.executable, *launcher, "--host", HOST, "--port", "0", "--port-file", str(port_file), *sim_flags]
        sims[label] = stack.enter_context(started("simulator", argv, workdir)), port_file
    trios: dict[str, Trio] = {}
    for label, (sim, port_file) in sims.items():
        wait_until(sim, port_file.exists)
        sim.port = int(port_file.read_text().strip())
        workdir = root / label
        md_port, st_port = free_port(), free_port()
        md = stack.enter_context(started("mitmdump", mitmdump_argv(sim.port, md_port, workdir / "mitmdump.mitm"),
                                         workdir))
        env = {**os.environ, "SESSIONTAP_HOME": str(workdir / "sessiontap-home")}
        st = stack.enter_context(started("sessiontap", sessiontap_argv(sim.port, st_port,
                                                                       workdir / "sessiontap-out"), workdir, env))
        md.port, st.port = md_port, st_port
        trios[label] = Trio(label, workdir, sim, {"mitmdump": md, "sessiontap": st})
    for trio in trios.values():
        for proc in trio.proxies.values():
            wait_until(proc, accepts(proc.port))
        trio.listeners = {way: listener_pid(proc) for way, proc in trio.proxies.items()}
    return trios


def stop_proc(proc: Proc, timeout: float) -> dict[str, Any]:
    """SIGINT, wait up to `timeout` s (SIGKILL after); how long it took and how it ended."""
    began = time.monotonic()
    killed = False
    was_dead = proc.popen.poll() is not None
    if not was_dead:
        proc.popen.send_signal(signal.SIGINT)
        try:
            proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            killed = True
            proc.popen.kill()
            proc.popen.wait()
    return {"exit_code": proc.popen.returncode, "stop_seconds": round(time.monotonic() - began, 1),
            "killed_after_timeout": killed, "was_dead": was_dead, "stderr": notable(proc.stderr_text())[-20:]}


def stop_trio(trio: Trio, timeout: float) -> list[str]:
    """Stop both proxies at once, then the simulator; the problems (a non-zero exit, a kill) as failure lines."""
    threads = []
    for way, proc in trio.proxies.items():
        def stop(way: str = way, proc: Proc = proc) -> None:
            trio.stopped[way] = stop_proc(proc, timeout)
        threads.append(threading.Thread(target=stop, daemon=True))
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout + 30)
    trio.stopped["simulator"] = stop_proc(trio.sim, 15)
    problems = []
    for name, info in trio.stopped.items():
        if info.get("killed_after_timeout"):
            problems.append(f"{trio.label} {name}: did not stop within {timeout:g} s of SIGINT (killed)")
        elif info.get("exit_code") not in (0, None) and name != "simulator" and not info.get("was_dead"):
            problems.append(f"{trio.label} {name}: exited with {info['exit_code']} when stopped: "
                            f"{' | '.join(info['stderr'][-3:])[:300]}")
    return problems


# exchanges -------------------------------------------------------------------------------------------------------


def http_client(base: str, timeout: float = REPLY_TIMEOUT) -> httpx.Client:
    return httpx.Client(base_url=base, trust_env=False, timeout=timeout)


def simulate(client: httpx.Client, session: str, body: bytes = SMALL_BODY) -> None:
    """One simulate-conversation call; raises unless it answers 200 with one new turn."""
    response = client.post(SIMULATE_PATH, content=body, headers={**JSON_HEADERS, "x-session-id": session})
    if response.status_code != 200:
        raise BenchError(f"simulate-conversation answered {response.status_code}: {response.text[:200]}")
    turns = response.json().get("simulated_conversation")
    if not isinstance(turns, list) or len(turns) != 1:
        raise BenchError(f"simulate-conversation: unexpected body {response.text[:200]}")


def timed_loop(fn: Callable[[], None], n: int, cap: float) -> tuple[list[float], bool]:
    """Milliseconds of up to `n` calls of `fn`; (samples, whether the `cap` seconds stopped it early)."""
    samples: list[float] = []
    deadline = time.monotonic() + cap
    for _ in range(n):
        if time.monotonic() > deadline:
            return samples, True
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return samples, False


def parallel_calls(base: str, clients: int, per_client: int, cap: float, session: str,
                   warmup: int = 3) -> tuple[list[float], float, bool]:
    """`clients` threads, each its own httpx.Client, released together after a warm-up: (ms samples, wall s, capped)."""
    barrier = threading.Barrier(clients + 1, timeout=60)
    samples: list[list[float]] = [[] for _ in range(clients)]
    ends = [0.0] * clients
    errors: list[BaseException] = []
    capped = threading.Event()

    def worker(i: int) -> None:
        try:
            with http_client(base) as client:
                sid = f"{session}-{i}"
                for _ in range(warmup):
                    simulate(client, sid)
                barrier.wait()
                got, hit = timed_loop(lambda: simulate(client, sid), per_client, cap)
                samples[i] = got
                if hit:
                    capped.set()
                ends[i] = time.perf_counter()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for th in threads:
        th.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait()
    began = time.perf_counter()
    for th in threads:
        th.join(max(1.0, cap + 30 - (time.perf_counter() - began)))
    if errors:
        raise BenchError(f"client thread: {errors[0]!r}")
    if any(th.is_alive() for th in threads):
        raise BenchError(f"a client thread did not finish within {cap + 30:g} s")
    return [s for per in samples for s in per], max(ends) - began, capped.is_set()


def ws_base(base: str) -> str:
    return "ws" + base[len("http"):]


def await_frame(ws: ClientConnection, wanted: str, timeout: float) -> dict[str, Any]:
    """The next frame of type `wanted` within `timeout` s (other frames skipped)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        frame = json.loads(ws.recv(timeout=left))
        if frame.get("type") == wanted:
            return dict(frame)
        if frame.get("type") == "error":
            raise BenchError(f"agent error while waiting for {wanted}: {frame}")
    raise BenchError(f"no {wanted} within {timeout:g} s")


@dataclass
class RssSampler:
    """The largest VmRSS of a process, sampled every `every` s on a thread."""

    pid: int
    every: float = 0.25
    peak: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        self.peak = rss_mb(self.pid)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, rss_mb(self.pid))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        self.peak = max(self.peak, rss_mb(self.pid))


# scenarios -------------------------------------------------------------------------------------------------------


@dataclass
class WayResult:
    """One way's run in one round: its round values, samples and facts."""

    metrics: dict[str, float]
    samples: dict[str, list[float]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    capped: bool = False


@dataclass
class Ctx:
    """What a scenario needs: settings, sizes, the trios, the captures, where it is."""

    args: argparse.Namespace
    sizes: Sizes
    workdir: Path
    trios: dict[str, Trio] = field(default_factory=dict)
    captures: dict[str, Path] = field(default_factory=dict)
    round: int = 0
    serial: Iterator[int] = field(default_factory=itertools.count)
    once: set[str] = field(default_factory=set)
    """Offline captures too slow to measure again."""

    def uid(self, what: str, way: str) -> str:
        return f"bench-{what}-r{self.round + 1}-{way}-{next(self.serial)}"

    def base(self, way: str, trio: str = "main") -> str:
        return self.trios[trio].base(way)


def sc_http1(ctx: Ctx, way: str) -> WayResult:
    sid = ctx.uid("http1", way)
    with http_client(ctx.base(way)) as client:
        for _ in range(WARMUP):
            simulate(client, sid)
        samples, capped = timed_loop(lambda: simulate(client, sid), ctx.sizes.http1, 120)
    return WayResult({"ms": median(samples)}, {"ms": samples}, {"p99": pct(samples, 99)}, capped)


def sc_http8(ctx: Ctx, way: str) -> WayResult:
    samples, wall, capped = parallel_calls(ctx.base(way), HTTP_CLIENTS, ctx.sizes.http8, 120, ctx.uid("http8", way))
    return WayResult({"ms": median(samples), "p99": pct(samples, 99), "rate": len(samples) / wall},
                     {"ms": samples}, {"wall_s": wall, "calls": len(samples)}, capped)


def sc_ws(ctx: Ctx, way: str, turns: int) -> WayResult:
    base = ws_base(ctx.base(way))
    lines = itertools.cycle(USER_MESSAGES)
    with conversation(base, ctx.uid("ws-warm", way)) as ws:
        for _ in range(WARMUP):
            ws.send(next(lines))
            read_until(ws, "agent_response")
    with conversation(base, ctx.uid("ws", way)) as ws:
        def turn() -> None:
            ws.send(next(lines))
            read_until(ws, "agent_response")
        samples, capped = timed_loop(turn, turns, max(60.0, turns * 0.06))
    tenth = max(1, len(samples) // 10)
    return WayResult({"ms": median(samples), "last": median(samples[-tenth:])}, {"ms": samples},
                     {"first_tenth": median(samples[:tenth]), "p99": pct(samples, 99), "turns": len(samples)}, capped)


def sc_voice(ctx: Ctx, way: str) -> WayResult:
    frames, pace = ctx.sizes.voice, ctx.args.pace_ms / 1000
    cap = frames * pace * 2 + 30
    pending: deque[float] = deque()
    lock = threading.Lock()
    sent = {"frames": 0, "turns": 0}
    lag = [0.0]
    errors: list[BaseException] = []
    done = threading.Event()
    capped = threading.Event()
    lines = itertools.cycle(USER_MESSAGES)
    samples: list[float] = []
    with conversation(ws_base(ctx.base(way)), ctx.uid("voice", way)) as ws:
        def sender() -> None:
            try:
                deadline = time.monotonic() + cap
                due = time.perf_counter()
                for i in range(1, frames + 1):
                    if time.monotonic() > deadline:
                        capped.set()
                        break
                    ws.send(AUDIO[i % len(AUDIO)])
                    sent["frames"] += 1
                    if i % AUDIO_EVERY == 0:
                        with lock:
                            pending.append(time.perf_counter())
                            sent["turns"] += 1
                        ws.send(next(lines))
                    due += pace
                    wait = due - time.perf_counter()
                    if wait > 0:
                        time.sleep(wait)
                    else:
                        lag[0] = max(lag[0], -wait)
            except BaseException as exc:  # noqa: BLE001 - handed to the receiving thread
                errors.append(exc)
            finally:
                done.set()

        thread = threading.Thread(target=sender, daemon=True)
        thread.start()
        while not (done.is_set() and not pending) and not errors:
            with lock:
                oldest = pending[0] if pending else None
            if oldest is not None and time.perf_counter() - oldest > REPLY_TIMEOUT:
                raise BenchError(f"voice: no agent_response within {REPLY_TIMEOUT:g} s of a user_message")
            try:
                frame = json.loads(ws.recv(timeout=0.2))
            except TimeoutError:
                continue
            kind = frame.get("type")
            if kind == "agent_response":
                now = time.perf_counter()
                with lock:
                    if not pending:
                        raise BenchError("voice: an agent_response with no user_message waiting")
                    samples.append((now - pending.popleft()) * 1000)
            elif kind == "error":
                raise BenchError(f"voice: agent error {frame}")
        thread.join(5)
    if errors:
        raise BenchError(f"voice: sending failed: {errors[0]!r}")
    return WayResult({"ms": median(samples), "p90": pct(samples, 90)}, {"ms": samples},
                     {"frames": sent["frames"], "turns": sent["turns"], "max_pacing_lag_ms": round(lag[0] * 1000, 1),
                      "pace_ms": ctx.args.pace_ms}, capped.is_set())


def sc_flood(ctx: Ctx, way: str) -> WayResult:
    frames = ctx.sizes.flood
    lines = itertools.cycle(USER_MESSAGES)
    capped = False
    with conversation(ws_base(ctx.base(way)), ctx.uid("flood", way)) as ws:
        ws.send(next(lines))
        read_until(ws, "agent_response")
        deadline = time.monotonic() + 120
        began = time.perf_counter()
        count = 0
        for i in range(frames):
            if i % 500 == 0 and time.monotonic() > deadline:
                capped = True
                break
            ws.send(AUDIO[i % len(AUDIO)])
            count += 1
        sent = time.perf_counter()
        ws.send(next(lines))
        await_frame(ws, "agent_response", 120)
        ended = time.perf_counter()
    return WayResult({"rate": count / (ended - began)}, {},
                     {"frames": count, "seconds": ended - began, "send_phase_rate": count / (sent - began),
                      "frame_bytes": len(AUDIO[0])}, capped)


def sc_reconnect(ctx: Ctx, way: str) -> WayResult:
    base = ws_base(ctx.base(way))
    user = ctx.uid("reconnect", way)
    lines = itertools.cycle(USER_MESSAGES)

    def message() -> None:
        with conversation(base, user) as ws:
            ws.send(next(lines))
            read_until(ws, "agent_response")

    for _ in range(3):
        message()
    samples, capped = timed_loop(message, ctx.sizes.reconnect, 120)
    return WayResult({"ms": median(samples)}, {"ms": samples}, {"p99": pct(samples, 99)}, capped)


_BIG: dict[float, bytes] = {}


def sc_stall(ctx: Ctx, way: str) -> WayResult:
    body = _BIG.setdefault(ctx.args.stall_mb, big_body(ctx.args.stall_mb))
    sid = ctx.uid("stall-small", way)
    baseline: list[float] = []
    during: list[float] = []
    big_ms: list[float] = []
    capped = False
    with http_client(ctx.base(way)) as small, http_client(ctx.base(way), timeout=180) as big:
        for _ in range(WARMUP):
            simulate(small, sid)
        for _ in range(ctx.sizes.stall_runs):
            got, hit = timed_loop(lambda: simulate(small, sid), ctx.sizes.stall_base, 60)
            baseline += got
            window: list[float] = []
            errors: list[BaseException] = []

            def send_big(window: list[float] = window, errors: list[BaseException] = errors) -> None:
                try:
                    began = time.perf_counter()
                    simulate(big, ctx.uid("stall-big", way), body)
                    window.extend((began, time.perf_counter()))
                except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                    errors.append(exc)

            thread = threading.Thread(target=send_big, daemon=True)
            marks: list[tuple[float, float]] = []
            deadline = time.monotonic() + 120
            thread.start()
            while thread.is_alive() and len(marks) < 100_000:
                if time.monotonic() > deadline:
                    capped = True
                    break
                began = time.perf_counter()
                simulate(small, sid)
                marks.append((began, time.perf_counter()))
            thread.join(max(1.0, deadline + 60 - time.monotonic()))
            if errors:
                raise BenchError(f"the {ctx.args.stall_mb:g} MB call failed: {errors[0]!r}")
            if thread.is_alive() or len(window) != 2:
                raise BenchError(f"the {ctx.args.stall_mb:g} MB call did not finish")
            start, end = window
            during += [(e - s) * 1000 for s, e in marks if e > start and s < end]
            big_ms.append((end - start) * 1000)
            capped = capped or hit
    base, p99 = median(baseline), pct(during, 99)
    return WayResult({"base": base, "p50": median(during), "p99": p99, "added": p99 - base, "big": median(big_ms)},
                     {"baseline": baseline, "during": during, "big": big_ms},
                     {"during_calls": len(during), "body_bytes": len(body), "max_during": max(during, default=0)},
                     capped)


def sc_stream(ctx: Ctx, way: str) -> WayResult:
    headers: list[float] = []
    first: list[float] = []
    last: list[float] = []
    with http_client(ctx.base(way, "latency"), timeout=30) as client:
        def call(record: bool) -> None:
            began = time.perf_counter()
            with client.stream("POST", SIMULATE_PATH + "/stream", content=STREAM_BODY,
                               headers={**JSON_HEADERS, "x-session-id": ctx.uid("stream", way)}) as response:
                got_headers = time.perf_counter()
                if response.status_code != 200:
                    response.read()
                    raise BenchError(f"simulate-conversation/stream answered {response.status_code}: "
                                     f"{response.text[:200]}")
                chunks: list[bytes] = []
                first_byte: float | None = None
                for chunk in response.iter_raw():
                    if chunk and first_byte is None:
                        first_byte = time.perf_counter()
                    chunks.append(chunk)
                ended = time.perf_counter()
            lines = [line for line in b"".join(chunks).splitlines() if line.strip()]
            if len(lines) != 5 or b'"analysis"' not in lines[-1] or first_byte is None:
                raise BenchError(f"simulate-conversation/stream: expected 4 turns and the analysis, got {lines[:6]}")
            if record:
                headers.append((got_headers - began) * 1000)
                first.append((first_byte - began) * 1000)
                last.append((ended - began) * 1000)

        for _ in range(2):
            call(False)
        deadline = time.monotonic() + 120
        capped = False
        for _ in range(ctx.sizes.stream):
            if time.monotonic() > deadline:
                capped = True
                break
            call(True)
    return WayResult({"headers": median(headers), "ttfb": median(first), "ttlb": median(last)},
                     {"headers": headers, "ttfb": first, "ttlb": last}, {}, capped)


def sc_rss(ctx: Ctx, way: str) -> WayResult:
    trio = ctx.trios["main"]
    pid = trio.listeners[way]
    lines = itertools.cycle(USER_MESSAGES)
    total = ctx.sizes.rss_voice
    capped = False
    before = rss_mb(pid)
    began = time.monotonic()
    with RssSampler(pid) as voice_peak, conversation(ws_base(ctx.base(way)), ctx.uid("rss", way)) as ws:
        sent = 0
        while sent < total:
            if time.monotonic() - began > 900:
                capped = True
                break
            for _ in range(min(AUDIO_EVERY, total - sent)):
                ws.send(AUDIO[sent % len(AUDIO)])
                sent += 1
            if sent < total:
                ws.send(next(lines))
                sent += 1
                read_until(ws, "agent_response")
        open_mb = rss_mb(pid)
        voice_s = time.monotonic() - began
    time.sleep(0.5 if ctx.args.quick else 2.0)  # mitmdump writes the closed flow to its capture then
    closed_mb = rss_mb(pid)
    before_http = rss_mb(pid)
    with RssSampler(pid) as http_peak:
        _, wall, hit = parallel_calls(ctx.base(way), RSS_HTTP_CLIENTS, ctx.sizes.rss_http // RSS_HTTP_CLIENTS, 600,
                                      ctx.uid("rss-http", way))
        time.sleep(0.2)
        after_http = rss_mb(pid)
    info = {"pid": pid, "before_mb": before, "open_mb": open_mb, "closed_mb": closed_mb,
            "voice_peak_mb": voice_peak.peak, "voice_messages": sent, "voice_seconds": voice_s,
            "before_http_mb": before_http, "after_http_mb": after_http, "http_peak_mb": http_peak.peak,
            "http_calls_per_s": ctx.sizes.rss_http / wall, "hwm_mb": status_kb(pid, "VmHWM") / 1024}
    return WayResult({"voice_open": open_mb - before, "voice_closed": closed_mb - before,
                      "http": after_http - before_http}, {}, info, capped or hit)


REPORT_HELPER = r"""
import json, os, resource, sys, time
out, err, *argv = sys.argv[1:]
flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
actions = [(os.POSIX_SPAWN_OPEN, 1, out, flags, 0o644), (os.POSIX_SPAWN_OPEN, 2, err, flags, 0o644)]
began = time.perf_counter()
pid = os.posix_spawn(argv[0], argv, dict(os.environ), file_actions=actions)
_, status, usage = os.wait4(pid, 0)
own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": time.perf_counter() - began, "exit_code": os.waitstatus_to_exitcode(status),
                  "maxrss_kb": usage.ru_maxrss, "helper_maxrss_kb": own}))
"""


def measure_report(capture: Path, workdir: Path, timeout: float = 1800) -> dict[str, Any]:
    """`sessiontap report CAPTURE --out TMP` spawned by a small helper: wall s, its own max RSS, exit code, verdict."""
    out = workdir / "report-out"
    shutil.rmtree(out, ignore_errors=True)
    stdout, stderr = workdir / "report.stdout", workdir / "report.stderr"
    argv = [sys.executable, "-S", "-c", REPORT_HELPER, str(stdout), str(stderr),
            str(BIN / "sessiontap"), "report", str(capture), "--out", str(out)]
    helper = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        text, _ = helper.communicate(timeout=timeout)
    except BaseException:
        os.killpg(helper.pid, signal.SIGKILL)
        helper.wait()
        raise
    result: dict[str, Any] = json.loads(text.decode().strip().splitlines()[-1])
    err = stderr.read_text(encoding="utf-8", errors="replace")
    result["verdict"] = next((line.removeprefix("sessiontap: ") for line in err.splitlines()
                              if line.startswith("sessiontap: ") and "·" in line), "")
    if result["exit_code"] != 0:
        raise BenchError(f"sessiontap report {capture.name} exited with {result['exit_code']}: {err[-1000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return result


OFFLINE_REPEAT_S = 120.0
"""A capture whose report takes longer than this is measured in the first round only."""


def sc_offline(ctx: Ctx, way: str) -> WayResult:
    metrics: dict[str, float] = {}
    info: dict[str, Any] = {}
    for name in ctx.sizes.offline:
        if name in ctx.once:
            info[name] = {"skipped": f"measured in round 1 only (its report took over {OFFLINE_REPEAT_S:g} s)"}
            print(f"    {name}: {info[name]['skipped']}", file=sys.stderr)
            continue
        got = measure_report(ctx.captures[name], ctx.workdir)
        if got["seconds"] > OFFLINE_REPEAT_S:
            ctx.once.add(name)
        metrics[f"{name}_s"] = got["seconds"]
        metrics[f"{name}_rss"] = got["maxrss_kb"] / 1024
        info[name] = {"helper_floor_mb": got["helper_maxrss_kb"] / 1024, "verdict": got["verdict"][:300]}
        print(f"    {name}: {got['seconds']:.1f} s, peak RSS {got['maxrss_kb'] / 1024:.0f} MB", file=sys.stderr)
    return WayResult(metrics, {}, info)


def ensure_captures(ctx: Ctx) -> dict[str, Any]:
    """The synthetic captures the offline scenario reads (written by synth_capture.py in its own process if absent)."""
    made: dict[str, Any] = {}
    for name in ctx.sizes.offline:
        began = time.monotonic()
        done = subprocess.run([sys.executable, str(BENCH / "synth_capture.py"), "--ensure", name], cwd=ROOT,
                              capture_output=True, text=True, timeout=3600, check=False)
        if done.returncode != 0:
            raise BenchError(f"synth_capture.py --ensure {name} failed: {done.stderr[-1500:]}")
        path = Path(done.stdout.strip().splitlines()[-1])
        ctx.captures[name] = path
        meta = json.loads((path / "synth_capture.json").read_text(encoding="utf-8"))
        made[name] = {"path": str(path.relative_to(ROOT)), "bytes": (path / "flows.mitm").stat().st_size,
                      "calls": meta["calls_done"], "flows": meta["flows"],
                      "seconds": round(time.monotonic() - began, 1)}
        print(f"  capture {name}: {made[name]['bytes'] / 1e6:.0f} MB, {meta['calls_done']} calls "
              f"({made[name]['seconds']} s to ensure)", file=sys.stderr)
    return made


def runner(name: str) -> Callable[[Ctx, str], WayResult]:
    if name.startswith("ws-"):
        return lambda ctx, way: sc_ws(ctx, way, ctx.sizes.ws[name])
    return {"http-1": sc_http1, "http-8": sc_http8, "voice": sc_voice, "flood": sc_flood, "reconnect": sc_reconnect,
            "stall-20mb": sc_stall, "stream-ttfb": sc_stream, "rss": sc_rss, "offline": sc_offline}[name]


# the run ---------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """Everything measured, and what went wrong."""

    began: float = field(default_factory=time.monotonic)
    scenarios: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    rss_timeline: list[dict[str, Any]] = field(default_factory=list)

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.began:7.1f} s] {text}", file=sys.stderr, flush=True)


class Abort(Exception):
    """A process of a trio died: the rest of the run cannot be measured (the failure is already recorded)."""


FAILURES = (BenchError, httpx.HTTPError, WebSocketException, OSError, TimeoutError, json.JSONDecodeError)


def short(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {fmt(v)}" for k, v in metrics.items())


def run_scenario(name: str, ctx: Ctx, run: Run) -> None:
    """All rounds of one scenario; a functional failure ends the scenario (and is recorded)."""
    ways = ways_of(name)
    trio = ctx.trios.get("latency" if name == "stream-ttfb" else "main")
    rounds: list[dict[str, Any]] = []
    entry: dict[str, Any] = {"ways": list(ways), "rounds": rounds}
    run.scenarios[name] = entry
    fn = runner(name)
    began = time.monotonic()
    for r in range(ctx.args.rounds):
        ctx.round = r
        order = ways[r % len(ways):] + ways[:r % len(ways)]
        row: dict[str, Any] = {"round": r + 1, "order": list(order), "ways": {}}
        rounds.append(row)
        for way in order:
            run.say(f"{name}  round {r + 1}/{ctx.args.rounds}  {way}")
            t0 = time.monotonic()
            try:
                result = fn(ctx, way)
                if trio is not None:
                    trio.check_alive()
            except FAILURES as exc:
                dead = [p for p in ((trio.sim, *trio.proxies.values()) if trio else ()) if p.popen.poll() is not None]
                entry["failed"] = True
                if dead:
                    for proc in dead:
                        last = " | ".join(notable(proc.stderr_text())[-3:])[:300]
                        run.failures.append(f"{name} round {r + 1} {way}: {proc.name} died (exit "
                                            f"{proc.popen.returncode}){'; its stderr: ' + last if last else ''}")
                        run.say(f"  FAILED: {run.failures[-1]}")
                    raise Abort from exc
                run.failures.append(" ".join(f"{name} round {r + 1} {way}: {type(exc).__name__}: {exc}".split())[:600])
                run.say(f"  FAILED: {run.failures[-1]}")
                return
            seconds = time.monotonic() - t0
            row["ways"][way] = {"metrics": result.metrics, "info": result.info, "capped": result.capped,
                                "seconds": round(seconds, 2),
                                "samples": {k: [round(x, 4) for x in v] for k, v in result.samples.items()}}
            run.say(f"  {short(result.metrics)}  ({seconds:.1f} s{', CAPPED' if result.capped else ''})")
    entry["seconds"] = round(time.monotonic() - began, 1)


def figures(run: Run, sizes: Sizes) -> dict[str, dict[str, dict[str, float | None]]]:
    """Per scenario, per metric, per way: the median of the round values."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for name, entry in run.scenarios.items():
        per: dict[str, dict[str, float | None]] = {}
        for key, _ in metrics_of(name, sizes):
            per[key] = {}
            for way in entry["ways"]:
                vals = [r["ways"][way]["metrics"][key] for r in entry["rounds"]
                        if way in r["ways"] and key in r["ways"][way]["metrics"]]
                per[key][way] = (max(vals) if name == "rss" else median(vals)) if vals else None
        if name == "rss":  # growth over the whole scenario: first round's start to the last round's end
            for way in entry["ways"]:
                done = [r["ways"][way]["info"] for r in entry["rounds"] if way in r["ways"]]
                per["total"][way] = done[-1]["after_http_mb"] - done[0]["before_mb"] if done else None
        out[name] = per
    return out


def target(name: str, key: str, fig: dict[str, float | None]) -> tuple[str, bool | None]:
    """The target of one row and whether sessiontap meets it (None: no target, or not measurable)."""
    st, direct = fig.get("sessiontap"), fig.get("direct")
    if name == "stall-20mb" and key == "added":
        if st is None or direct is None:
            return "st - direct <= 50 ms", None
        return f"st - direct <= 50 ms (is {st - direct:.1f})", st - direct <= 50
    if name == "stream-ttfb" and key == "ttfb":
        if st is None or direct is None:
            return "<= direct + 5 ms", None
        return f"<= direct + 5 ms (is +{st - direct:.1f})", st <= direct + 5
    if name == "rss":
        return "<= 50 MB", None if st is None else st <= 50
    return "", None


def table_rows(run: Run, figs: dict[str, dict[str, dict[str, float | None]]], sizes: Sizes) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name in (n for n in SCENARIOS if n in run.scenarios):
        for key, label in metrics_of(name, sizes):
            fig = figs[name][key]
            tgt, met = target(name, key, fig)
            rows.append({"scenario": name, "metric": label, "key": key, "direct": fig.get("direct"),
                         "mitmdump": fig.get("mitmdump"), "sessiontap": fig.get("sessiontap"),
                         "st_direct": ratio(fig.get("sessiontap"), fig.get("direct")),
                         "st_mitmdump": ratio(fig.get("sessiontap"), fig.get("mitmdump")),
                         "md_direct": ratio(fig.get("mitmdump"), fig.get("direct")), "target": tgt, "met": met})
    rows += ws_growth(figs)
    return rows


def ws_growth(figs: dict[str, dict[str, dict[str, float | None]]]) -> list[dict[str, Any]]:
    """The summary: sessiontap/mitmdump on the longest socket measured against the 100-turn one (target 10 %)."""
    if "ws-100" not in figs:
        return []
    long = "ws-5000" if "ws-5000" in figs else "ws-1000" if "ws-1000" in figs else None
    if long is None:
        return []
    short_ = figs["ws-100"]["ms"]
    base = ratio(short_.get("sessiontap"), short_.get("mitmdump"))
    rows = []
    for key, what in (("ms", "all turns"), ("last", "last tenth")):
        fig = figs[long][key]
        at_long = ratio(fig.get("sessiontap"), fig.get("mitmdump"))
        growth = ratio(at_long, base)
        added_short = (short_.get("sessiontap") or math.nan) - (short_.get("mitmdump") or math.nan)
        added_long = (fig.get("sessiontap") or math.nan) - (fig.get("mitmdump") or math.nan)
        rows.append({"scenario": f"{long} vs ws-100", "key": f"growth_{key}",
                     "metric": f"st/mitmdump at {long[3:]} ({what}) / at 100: {fmt(at_long, True)} / "
                               f"{fmt(base, True)}; st - mitmdump {fmt(added_long)} vs {fmt(added_short)} ms",
                     "direct": None, "mitmdump": None, "sessiontap": growth, "st_direct": None, "st_mitmdump": None,
                     "md_direct": None, "target": "<= 1.10", "met": None if growth is None else growth <= 1.10})
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = ("| scenario | metric | direct | mitmdump | sessiontap | st/direct | st/mitmdump | md/direct | target "
            "| met? |\n|---|---|---:|---:|---:|---:|---:|---:|---|---|")
    lines = [head]
    for row in rows:
        growth = row["key"].startswith("growth_")
        met = {True: "yes", False: "**no**", None: ""}[row["met"]]
        lines.append(f"| {row['scenario']} | {row['metric']} | {fmt(row['direct'])} | {fmt(row['mitmdump'])} | "
                     f"{fmt(row['sessiontap'], growth, 3)} | {fmt(row['st_direct'], True)} | "
                     f"{fmt(row['st_mitmdump'], True)} | {fmt(row['md_direct'], True)} | {row['target'] or '—'} | "
                     f"{met} |")
    return "\n".join(lines)


def round_values(run: Run, sizes: Sizes) -> list[str]:
    """Each figure's round values, per way (the spread behind the medians)."""
    lines = []
    for name, entry in run.scenarios.items():
        for key, label in metrics_of(name, sizes):
            parts = []
            for way in entry["ways"]:
                vals = [r["ways"][way]["metrics"].get(key) for r in entry["rounds"] if way in r["ways"]]
                if any(v is not None for v in vals):
                    parts.append(f"{way} " + " / ".join(fmt(v) for v in vals if v is not None))
            if parts:
                lines.append(f"- {name}, {label}: " + "; ".join(parts))
    return lines


def report_md(report: dict[str, Any], rows: list[dict[str, Any]], run: Run, sizes: Sizes) -> str:
    s = report["settings"]
    out = [f"# sessiontap benchmark suite, {report['stamp']}", "",
           f"{'quick' if s['quick'] else 'full'} run, {s['rounds']} round(s), {report['seconds']:.0f} s wall; "
           f"commit {report['code']['commit'][:12]}{' + local changes' if report['code']['changed'] else ''}; "
           f"{report['machine']['cpus']} CPUs, Python {report['machine']['python']}, {report['machine']['platform']}; "
           f"simulator: {s['simulator']}; load average {report['machine']['loadavg_start'][0]:.2f} at start "
           f"(1 min; above ~0.5 something else was running).", ""]
    if s["quick"]:
        out += ["Quick mode: " + "; ".join(QUICK_CHANGES) + ".", ""]
    out += [markdown_table(rows), ""]
    out += ["Figures are medians of the round values (rss: the largest); ratios are of those figures (for a rate, "
            "below 1 is slower). Targets apply to sessiontap. The ws growth rows compare ratios, so their "
            "sessiontap column is itself a ratio.", ""]
    if run.failures:
        out += ["## Functional failures", ""] + [f"- {f}" for f in run.failures] + [""]
    if run.skipped:
        out += ["## Skipped", ""] + [f"- {k}: {v}" for k, v in run.skipped.items()] + [""]
    capped = [f"{name} round {r['round']} {way}" for name, e in run.scenarios.items() for r in e["rounds"]
              for way, w in r["ways"].items() if w["capped"]]
    if capped:
        out += ["## Stopped early by a wall-clock cap", ""] + [f"- {c}" for c in capped] + [""]
    notes = [f"- **{n}**: {NOTES['ws' if n.startswith('ws-') else n]}" for n in run.scenarios]
    out += ["## Notes", ""] + list(dict.fromkeys(notes)) + [""]
    out += ["## Round values", ""] + round_values(run, sizes) + [""]
    out += ["## Processes", ""]
    for label, procs in report["processes"].items():
        for name, info in procs.items():
            line = f"- {label} {name}: exit {info.get('exit_code')}, stopped in {info.get('stop_seconds')} s"
            if "listener_pid" in info:
                which = "the started process" if info["listener_pid"] == info["pid"] else "a child of it"
                line += f", listening pid {info['listener_pid']} ({which})"
            out.append(line)
            out += [f"  - `{x[:400]}`" for x in info.get("stderr", []) if x.startswith("sessiontap: ")][:2]
    if run.rss_timeline:
        out += ["", "## RSS after each scenario (MB)", "", "| after | mitmdump | sessiontap | simulator |",
                "|---|---:|---:|---:|"]
        out += [f"| {p['after']} | {p.get('mitmdump', '')} | {p.get('sessiontap', '')} | {p.get('simulator', '')} |"
                for p in run.rss_timeline]
    if report.get("captures"):
        out += ["", "## Offline captures", ""] + [f"- {k}: {v}" for k, v in report["captures"].items()]
    return "\n".join(out) + "\n"


def selected(args: argparse.Namespace, sizes: Sizes, run: Run) -> list[str]:
    wanted = list(SCENARIOS)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in SCENARIOS and n != "ws"]
        if unknown:
            raise SystemExit(f"unknown scenario(s): {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}, ws")
        wanted = [s for s in SCENARIOS if s in names or ("ws" in names and s.startswith("ws-"))]
    out = []
    for name in wanted:
        if name.startswith("ws-") and name not in sizes.ws:
            run.skipped[name] = "skipped in --quick"
            continue
        out.append(name)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the CI variant: small counts, ~90 s")
    parser.add_argument("--only", help=f"comma-separated scenarios ({', '.join(SCENARIOS)}; ws = all ws-N)")
    parser.add_argument("--rounds", type=int, help="rounds per scenario (3 full, 1 quick)")
    parser.add_argument("--pace-ms", type=float, default=20.0, help="voice: ms between audio frames (20)")
    parser.add_argument("--stall-mb", type=float, default=16.0,
                        help="stall-20mb: MB of the big body (16; the simulator refuses more than 16 MiB)")
    parser.add_argument("--stock-simulator", action="store_true",
                        help="run the stock simulator (its agent re-reads the whole conversation per reply)")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    sizes = QUICK if args.quick else FULL
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    run = Run()
    names = selected(args, sizes, run)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    code = code_state()
    sim_label = "stock (python -m sessiontap.simulator)" if args.stock_simulator else \
        f"bench/sim_bounded.py --window {DEFAULT_WINDOW}"
    names = [n for n in names if n == "rss"] + [n for n in names if n != "rss"]  # rss on fresh proxies
    run.say(f"{'quick' if args.quick else 'full'} suite, {args.rounds} round(s), in this order: {', '.join(names)}")
    if args.quick:
        for change in QUICK_CHANGES:
            run.say(f"quick: {change}")
    report: dict[str, Any] = {"stamp": stamp, "code": code, "processes": {}, "captures": {},
                              "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                          "platform": platform.platform(), "loadavg_start": os.getloadavg()}}
    if os.getloadavg()[0] > 0.5:
        run.say(f"note: load average {os.getloadavg()[0]:.2f} at start: something else is using the CPUs")
    mitm_yaml = ROOT / "mitm.yaml"
    report["settings"] = {**vars(args), "sizes": dataclasses.asdict(sizes),
                          "scenarios": names, "simulator": sim_label, "latency_s": LATENCY,
                          "mitm_yaml": mitm_yaml.read_text(encoding="utf-8") if mitm_yaml.exists() else None}
    interrupted = False
    with tempfile.TemporaryDirectory(prefix="sessiontap-suite-") as tmp, contextlib.ExitStack() as stack:
        ctx = Ctx(args, sizes, Path(tmp))
        try:
            wanted: dict[str, list[str]] = {}
            if any(n not in ("offline", "stream-ttfb") for n in names):
                wanted["main"] = []
            if "stream-ttfb" in names:
                wanted["latency"] = ["--latency", str(LATENCY)]
            ctx.trios = start_trios(stack, ctx.workdir, args.stock_simulator, wanted)
            for label, trio in ctx.trios.items():
                run.say(f"{label}: simulator :{trio.sim.port}, mitmdump :{trio.proxies['mitmdump'].port} "
                        f"(pid {trio.listeners['mitmdump']}), sessiontap :{trio.proxies['sessiontap'].port} "
                        f"(pid {trio.listeners['sessiontap']}, started as {trio.proxies['sessiontap'].popen.pid})")
            if "main" in ctx.trios:
                run.rss_timeline.append({"after": "start", **ctx.trios["main"].rss()})
            for name in names:
                if name == "offline":
                    run.say("offline: ensuring the synthetic captures")
                    report["captures"] = ensure_captures(ctx)
                run_scenario(name, ctx, run)
                if name == "stream-ttfb" and "latency" in ctx.trios:
                    run.failures += stop_trio(ctx.trios["latency"], STOP_TIMEOUT[args.quick])
                if "main" in ctx.trios and name != "offline":
                    run.rss_timeline.append({"after": name, **ctx.trios["main"].rss()})
        except KeyboardInterrupt:
            interrupted = True
            run.failures.append("interrupted (Ctrl-C or SIGTERM): the run is incomplete")
            run.say("interrupted: stopping the processes")
        except Abort:
            run.say("a process died: the remaining scenarios are not run")
        except BenchError as exc:
            run.failures.append(" ".join(str(exc).split())[:600])
            run.say(f"FAILED: {run.failures[-1]}")
        finally:
            for label, trio in ctx.trios.items():
                if not trio.stopped:
                    run.say(f"stopping the {label} trio (sessiontap writes its report)")
                    run.failures += stop_trio(trio, 15 if interrupted else STOP_TIMEOUT[args.quick])
                report["processes"][label] = {
                    name: {**trio.stopped.get(name, {}), "pid": proc.popen.pid,
                           **({"listener_pid": trio.listeners[name]} if name in trio.listeners else {})}
                    for name, proc in (("simulator", trio.sim), *trio.proxies.items())}
    report["seconds"] = round(time.monotonic() - run.began, 1)
    report["machine"]["loadavg_end"] = os.getloadavg()
    figs = figures(run, sizes)
    rows = table_rows(run, figs, sizes)
    report.update(scenarios=run.scenarios, figures=figs, table=rows, failures=run.failures, skipped=run.skipped,
                  rss_timeline=run.rss_timeline)
    text = report_md(report, rows, run, sizes)
    print()
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"suite-{stamp}"
    path.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    path.with_suffix(".md").write_text(text, encoding="utf-8")
    print(f"{report['seconds']:.0f} s; written to {path.relative_to(ROOT)}.json and .md")
    if run.failures:
        print("FUNCTIONAL FAILURES:\n" + "\n".join(f"  {f}" for f in run.failures), file=sys.stderr)
        return 130 if interrupted else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

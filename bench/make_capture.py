"""Make a real sessiontap capture of many calls: the sample clients through `sessiontap record`.

One ElevenLabs simulator runs in its own process (`python -m sessiontap.simulator`) on 127.0.0.1, and
`sessiontap record --mode reverse --upstream <simulator> --out DIR -- <client>` records this very
file run as the client (`--client`). The client plays sessions of the replicas in `addons/samples`
(their own classes and turn functions, driven here in a loop), several at a time on threads:

- fixed-http   FixedElevenLabsChatClient: one declared session id, the whole history resent each call
- faulty-http  ElevenLabsChatClient: `elevenlabs-session-0` for every session, history never sent
- fixed-ws     FixedElevenLabsWebSocketClient: one socket (one server conversation) for the session
- faulty-ws    ElevenLabsWebSocketClient: a new socket, so a new conversation, for every message

Sessions are cut from `calls` in that 8:4:5:3 mix, `turns_per_session` calls each (the last one
shorter if `calls` is not a multiple). A call is one user message and its reply, on either protocol.
`long_session=True` makes instead one fixed-http session of `calls` turns (the history sent grows to
about 2 x calls turns). The client writes `make_capture.json` beside the capture: what was asked, what
was done, the errors, and which declared session id belongs to which kind of client.

Run: `uv run python bench/make_capture.py --calls 1000 --out DIR` or `--long 500 --out DIR`.
The capture is written to DIR.partial and renamed to DIR once the recording ended well.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from record_latency import HOST, BenchError, simulator

from sessiontap.samples.chat import SampleClientError
from sessiontap.samples.durin import HttpChatClient, SocketChatClient, make_client
from sessiontap.samples.script import CUSTOMS_SCRIPT

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.prefix) / "bin"
API_KEY = "sk_bench_capture"
META_FILE = "make_capture.json"
MIX = (("fixed-http", 8), ("faulty-http", 4), ("fixed-ws", 5), ("faulty-ws", 3))
"""Session kinds and their weights; sessions are dealt in this interleaved order."""
DEFAULT_CONCURRENCY = 12
DEFAULT_CAP = 600.0
"""Seconds: the client starts no new session after this; the recording is killed 60 s later."""
STOP_GRACE = 60.0
CLIENT_TIMEOUT = 30.0


def pattern() -> list[str]:
    """The kinds of one round of sessions (weights of MIX), interleaved rather than in blocks."""
    left = dict(MIX)
    out: list[str] = []
    while any(left.values()):
        for kind, _ in MIX:
            if left[kind]:
                out.append(kind)
                left[kind] -= 1
    return out


@dataclass(frozen=True)
class Plan:
    """One session to play: its number, the client kind and how many calls (user messages)."""

    number: int
    kind: str
    turns: int


def plan(calls: int, turns_per_session: int, long_session: bool) -> list[Plan]:
    """The sessions that add up to exactly `calls` calls."""
    if long_session:
        return [Plan(1, "fixed-http", calls)]
    kinds = pattern()
    plans: list[Plan] = []
    left = calls
    while left > 0:
        turns = min(turns_per_session, left)
        plans.append(Plan(len(plans) + 1, kinds[len(plans) % len(kinds)], turns))
        left -= turns
    return plans


def messages(turns: int) -> list[str]:
    """The sample clients' customs script, then numbered recap requests (as `script_messages`, any length)."""
    recaps = range(1, max(0, turns - len(CUSTOMS_SCRIPT)) + 1)
    return [line.text for line in CUSTOMS_SCRIPT[:turns]] + [
        f"Follow-up {k}: please recap the classification so far." for k in recaps]


# the client (runs under `sessiontap record`) -------------------------------------------------------------------


class Progress:
    """Counts calls across threads; prints a line at every tenth of the total."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.errors = 0
        self.began = time.monotonic()
        self.lock = threading.Lock()
        self.next_tenth = 1

    def call(self) -> None:
        with self.lock:
            self.done += 1
            if self.done * 10 >= self.next_tenth * self.total:
                self.next_tenth = self.done * 10 // self.total + 1
                elapsed = time.monotonic() - self.began
                print(f"make_capture: {self.done}/{self.total} calls, {elapsed:.1f} s, {self.errors} errors",
                      file=sys.stderr, flush=True)


def play(session: Plan, progress: Progress, deadline: float) -> dict[str, Any]:
    """Play one session with its sample client; return its declared session id, calls and any error."""
    record: dict[str, Any] = {"number": session.number, "kind": session.kind, "turns": session.turns,
                              "session_id": None, "calls": 0, "error": None}
    if time.monotonic() > deadline:
        record["error"] = "skipped: wall-clock cap reached"
        return record
    try:
        with make_client(session.kind, api_key=API_KEY) as client:
            lines = messages(session.turns)
            if isinstance(client, SocketChatClient):
                record["session_id"] = client.start_session()
                try:
                    for text in lines:
                        client.send(text)
                        record["calls"] += 1
                        progress.call()
                finally:
                    client.end_session()
            else:
                assert isinstance(client, HttpChatClient)
                session_id = record["session_id"] = client.start_session()
                for text in lines:
                    client.send(session_id, text)
                    record["calls"] += 1
                    progress.call()
    except (SampleClientError, OSError) as exc:
        record["error"] = " ".join(str(exc).split())[:300]
        with progress.lock:
            progress.errors += 1
    return record


def client_main(args: argparse.Namespace) -> int:
    """The client side: play every planned session, `--concurrency` at a time, and write the meta file."""
    sessions = plan(args.calls, args.turns_per_session, args.long > 0)
    total = sum(s.turns for s in sessions)
    progress = Progress(total)
    deadline = time.monotonic() + args.cap
    print(f"make_capture: {len(sessions)} sessions, {total} calls, {args.concurrency} at a time, "
          f"base URL {os.environ.get('ELEVENLABS_BASE_URL')}", file=sys.stderr, flush=True)
    with ThreadPoolExecutor(args.concurrency) as pool:
        records = list(pool.map(lambda s: play(s, progress, deadline), sessions))
    seconds = time.monotonic() - progress.began
    meta = {
        "calls_planned": total,
        "calls_done": sum(r["calls"] for r in records),
        "sessions": len(records),
        "sessions_by_kind": dict(Counter(r["kind"] for r in records)),
        "calls_by_kind": {kind: sum(r["calls"] for r in records if r["kind"] == kind) for kind, _ in MIX},
        "errors": [r for r in records if r["error"]],
        "client_seconds": round(seconds, 2),
        "calls_per_second": round(progress.done / seconds, 1) if seconds else None,
        "concurrency": args.concurrency,
        "session_kinds": {r["session_id"]: r["kind"] for r in records if r["session_id"]},
    }
    Path(args.meta).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    print(f"make_capture: done, {meta['calls_done']}/{total} calls in {seconds:.1f} s "
          f"({meta['calls_per_second']} calls/s), {len(meta['errors'])} sessions with errors",
          file=sys.stderr, flush=True)
    return 1 if meta["errors"] else 0


# the driver: simulator + sessiontap record + this file as the client ---------------------------------------------


def clean_env(home: Path) -> dict[str, str]:
    """The environment of `sessiontap record` (and so of the client): no proxies, a private home."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(SESSIONTAP_HOME=str(home), PYTHONUNBUFFERED="1", ELEVENLABS_API_KEY=API_KEY)
    env.pop("ELEVENLABS_BASE_URL", None)  # set by sessiontap record (reverse mode)
    return env


def relay(proc: subprocess.Popen[bytes], sink: IO[bytes]) -> None:
    """Copy the recording's stderr to `sink`; echo the client's progress lines and any error line."""
    assert proc.stderr is not None
    for raw in proc.stderr:
        sink.write(raw)
        line = raw.decode("utf-8", "replace").rstrip()
        if line.startswith("make_capture:") or "error" in line.lower():
            print(f"  {line}", file=sys.stderr, flush=True)


def make_capture(out_dir: Path, calls: int, *, turns_per_session: int = 10, long_session: bool = False,
                 concurrency: int = DEFAULT_CONCURRENCY, cap: float = DEFAULT_CAP) -> Path:
    """Record `calls` calls (or one session of `calls` turns) into `out_dir`; return its flows.mitm.

    Raises BenchError when the recording does not end with a capture and the client's meta file.
    `out_dir` is replaced; the capture is made in `out_dir`.partial and renamed at the end.
    """
    if calls < 1 or turns_per_session < 1:
        raise ValueError("calls and turns_per_session must be at least 1")
    out_dir = out_dir.resolve()
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    meta_path = partial / META_FILE
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sessiontap-capture-") as tmp:
        work = Path(tmp)
        with simulator(work) as sim_port:
            client = [sys.executable, str(Path(__file__).resolve()), "--client", "--calls", str(calls),
                      "--turns-per-session", str(turns_per_session), "--long", str(calls if long_session else 0),
                      "--concurrency", str(concurrency), "--cap", str(cap), "--meta", str(meta_path)]
            argv = [str(BIN / "sessiontap"), "record", "--mode", "reverse", "--upstream", f"http://{HOST}:{sim_port}",
                    "--listen-host", HOST, "--out", str(partial), "--", *client]
            out_path, err_path = work / "sessiontap.stdout", work / "sessiontap.stderr"
            with open(out_path, "wb") as out, open(err_path, "wb") as err:
                # Own process group: a Ctrl-C on the bench does not reach it, and a timeout ends the client too.
                proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE,
                                        env=clean_env(work / "home"), start_new_session=True)
                echo = threading.Thread(target=relay, args=(proc, err), daemon=True)
                echo.start()
                try:
                    code = proc.wait(cap + STOP_GRACE)
                except subprocess.TimeoutExpired as exc:
                    raise BenchError(f"recording not finished within {cap + STOP_GRACE:g} s") from exc
                finally:
                    if proc.poll() is None:
                        os.killpg(proc.pid, signal.SIGINT)
                        try:
                            proc.wait(STOP_GRACE / 2)
                        except subprocess.TimeoutExpired:
                            os.killpg(proc.pid, signal.SIGKILL)
                            proc.wait()
                    echo.join(5)
            log = out_path.read_text(encoding="utf-8", errors="replace") + err_path.read_text(
                encoding="utf-8", errors="replace")
    capture = partial / "flows.mitm"
    if not capture.exists() or not meta_path.exists():
        raise BenchError(f"sessiontap record exited with {code} and no capture or meta file: {log[-2000:]}")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta.update(record_exit_code=code, record_seconds=round(time.monotonic() - began, 2),
                long_session=long_session, turns_per_session=turns_per_session,
                record_log=[line for line in log.splitlines() if line.strip() and not line.startswith("make_capture:")])
    meta_path.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.rename(out_dir)
    return out_dir / "flows.mitm"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000, help="calls to record (1000)")
    parser.add_argument("--long", type=int, default=0, metavar="N",
                        help="instead: one fixed-http session of N turns (overrides --calls)")
    parser.add_argument("--turns-per-session", type=int, default=10, help="calls per session (10)")
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY,
                        help=f"sessions played at a time ({DEFAULT_CONCURRENCY})")
    parser.add_argument("--cap", type=float, default=DEFAULT_CAP,
                        help=f"wall-clock cap in seconds: no new session after it ({DEFAULT_CAP:g})")
    parser.add_argument("--out", type=Path, help="output directory (replaced)")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--meta", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        if args.long:
            args.calls = args.long
        return client_main(args)
    if args.out is None:
        parser.error("--out is required")
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    calls = args.long or args.calls
    began = time.monotonic()
    capture = make_capture(args.out, calls, turns_per_session=args.turns_per_session, long_session=args.long > 0,
                           concurrency=args.concurrency, cap=args.cap)
    meta = json.loads((capture.parent / META_FILE).read_text(encoding="utf-8"))
    print(f"{capture}: {capture.stat().st_size / 1e6:.1f} MB, {meta['calls_done']} calls in {meta['sessions']} "
          f"sessions, {len(meta['errors'])} with errors, record exit code {meta['record_exit_code']}, "
          f"{time.monotonic() - began:.1f} s")
    for line in meta["record_log"]:
        print(f"  | {line}")
    return 0 if meta["record_exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

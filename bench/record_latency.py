"""What recording costs: per-call latency direct, through bare mitmdump, and through `sessiontap record`.

Everything runs on 127.0.0.1. One ElevenLabs simulator runs in its own process
(`python -m sessiontap.simulator`), and the same client traffic is sent three ways in one run:

- direct      client -> simulator
- mitmdump    client -> `mitmdump --mode reverse:<simulator> -w FILE` (no addons, writing a capture) -> simulator
- sessiontap  client -> `sessiontap record --mode reverse --upstream <simulator>` -> simulator

Two kinds of exchange are timed, each after a warm-up, over one connection per way:

- http  one `POST /v1/convai/agents/agent_customs_demo/simulate-conversation` (a 4-turn
        `partial_conversation_history`, `new_turns_limit: 1`) on a keep-alive httpx connection,
        from sending the request to the parsed JSON reply;
- ws    one turn on the agent WebSocket: send a `user_message`, wait for the next `agent_response`
        (the `agent_chat_response_part` frames before it are skipped). The socket's conversation is
        started (initiation data, metadata, opening line) before the clock runs, and it is replaced
        by a fresh one every `--ws-turns-per-socket` turns (0: one socket for all turns).

How to read the table: p50/p90 are in milliseconds; "+p50" is the median latency added over
direct; "x direct" and "x mitmdump" are ratios of medians. "x mitmdump" is what sessiontap's own
addons (routing, tagging, decoding, findings, journal) cost on top of mitmproxy itself. "drift" compares the
median of the last tenth of the samples with the first tenth: well above 1 means the cost grows
with the number of calls (or with the length of the socket's conversation). All processes share
the machine's cores, so compare numbers from the same machine only.

Run: `uv run python bench/record_latency.py [--http N] [--ws N]`; the table is printed and written as
JSON to `bench/results/record_latency-<timestamp>.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from measure import code_state
from websockets.sync.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BIN = Path(sys.prefix) / "bin"
HOST = "127.0.0.1"
AGENT_ID = "agent_customs_demo"
SIMULATE_PATH = f"/v1/convai/agents/{AGENT_ID}/simulate-conversation"
WS_PATH = f"/v1/convai/conversation?agent_id={AGENT_ID}"
API_KEY = "sk_bench"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
REPLY_TIMEOUT = 10.0
WAYS = ("direct", "mitmdump", "sessiontap")
KINDS = ("http", "ws")

SIMULATE_BODY = {
    "simulation_specification": {
        "simulated_user_config": {"prompt": {"prompt": "You are a customs officer's assistant user."}},
        "partial_conversation_history": [
            {"role": "agent", "message": "Hello! Which product would you like to classify today?",
             "time_in_call_secs": 0},
            {"role": "user", "message": "I need to classify cotton t-shirts.", "time_in_call_secs": 3},
            {"role": "agent", "message": "Noted: cotton t-shirts. Where are they made?", "time_in_call_secs": 5},
            {"role": "user", "message": "They are made in Vietnam.", "time_in_call_secs": 9},
        ],
    },
    "new_turns_limit": 1,
}
USER_LINES = (
    "I need to classify cotton t-shirts.",
    "They are made in Vietnam.",
    "The material is 100% cotton.",
    "The shipment is worth $12,000.",
)


class BenchError(RuntimeError):
    """A process did not start, or an exchange did not get the answer it should."""


# processes -----------------------------------------------------------------------------------


@dataclass
class Proc:
    """A subprocess started by the benchmark, with its output files."""

    name: str
    popen: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    port: int = 0
    """Where it listens, once known."""

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise BenchError(f"{self.name} exited with {self.popen.returncode}: {self.stderr_text()[-2000:]}")

    def stderr_text(self) -> str:
        return self.stderr.read_text(encoding="utf-8", errors="replace") if self.stderr.exists() else ""

    def stop(self) -> int:
        """SIGINT and wait; SIGKILL if it does not end in time (or the wait is interrupted)."""
        try:
            if self.popen.poll() is None:
                self.popen.send_signal(signal.SIGINT)
                self.popen.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
        finally:
            if self.popen.poll() is None:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


@contextlib.contextmanager
def started(name: str, argv: list[str], workdir: Path, env: dict[str, str] | None = None) -> Iterator[Proc]:
    """Run `argv` in its own session (a Ctrl-C on the bench does not reach it); stop it on exit."""
    out, err = workdir / f"{name}.stdout", workdir / f"{name}.stderr"
    with open(out, "wb") as out_f, open(err, "wb") as err_f:
        popen = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out_f, stderr=err_f,
                                 env=env, start_new_session=True)
    proc = Proc(name, popen, out, err)
    try:
        yield proc
    finally:
        proc.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_until(proc: Proc, ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        proc.check_alive()
        if ready():
            return
        time.sleep(0.05)
    raise BenchError(f"{proc.name} not ready within {START_TIMEOUT:g} s: {proc.stderr_text()[-2000:]}")


def accepts(port: int) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return True
        except OSError:
            return False

    return probe


@contextlib.contextmanager
def simulator(workdir: Path) -> Iterator[int]:
    """The ElevenLabs simulator in its own process; yields its port."""
    port_file = workdir / "simulator.port"
    port_file.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "sessiontap.simulator", "--host", HOST, "--port", "0", "--port-file", str(port_file)]
    with started("simulator", argv, workdir) as proc:
        wait_until(proc, port_file.exists)
        proc.port = int(port_file.read_text().strip())
        yield proc.port


def mitmdump_argv(sim_port: int, port: int, capture: Path) -> list[str]:
    """Bare mitmdump in reverse mode on `port` in front of the simulator, writing every flow to `capture`."""
    return [str(BIN / "mitmdump"), "-q", "--mode", f"reverse:http://{HOST}:{sim_port}", "--listen-host", HOST,
            "-p", str(port), "--set", "connection_strategy=lazy", "-w", str(capture)]


def sessiontap_argv(sim_port: int, port: int, out: Path) -> list[str]:
    """`sessiontap record --mode reverse` on `port` in front of the simulator, recording into `out`."""
    return [str(BIN / "sessiontap"), "record", "--mode", "reverse", "--upstream", f"http://{HOST}:{sim_port}",
            "--listen-host", HOST, "--listen-port", str(port), "--out", str(out)]


@contextlib.contextmanager
def bare_mitmdump(sim_port: int, workdir: Path) -> Iterator[Proc]:
    port = free_port()
    argv = mitmdump_argv(sim_port, port, workdir / "mitmdump.mitm")
    with started("mitmdump", argv, workdir) as proc:
        wait_until(proc, accepts(port))
        proc.port = port
        yield proc


@contextlib.contextmanager
def sessiontap_record(sim_port: int, workdir: Path) -> Iterator[Proc]:
    port = free_port()
    argv = sessiontap_argv(sim_port, port, workdir / "sessiontap-out")
    env = {**os.environ, "SESSIONTAP_HOME": str(workdir / "sessiontap-home")}
    with started("sessiontap", argv, workdir, env) as proc:
        wait_until(proc, accepts(port))
        proc.port = port
        yield proc


# the two exchanges ---------------------------------------------------------------------------


def http_exchange(client: httpx.Client) -> Callable[[], None]:
    """One simulate-conversation call; raises unless it answers 200 with one new turn."""

    def call() -> None:
        response = client.post(SIMULATE_PATH, json=SIMULATE_BODY, headers={"xi-api-key": API_KEY})
        if response.status_code != 200:
            raise BenchError(f"simulate-conversation answered {response.status_code}: {response.text[:200]}")
        if len(response.json().get("simulated_conversation", [])) != 1:
            raise BenchError(f"simulate-conversation: unexpected body {response.text[:200]}")

    return call


def read_until(ws: ClientConnection, wanted: str) -> dict[str, Any]:
    """The next frame of type `wanted`; every other frame (response parts, pings) is skipped."""
    deadline = time.monotonic() + REPLY_TIMEOUT
    while (left := deadline - time.monotonic()) > 0:
        frame = json.loads(ws.recv(timeout=left))
        if frame.get("type") == wanted:
            return frame
        if frame.get("type") == "error":
            raise BenchError(f"agent error while waiting for {wanted}: {frame}")
    raise BenchError(f"no {wanted} within {REPLY_TIMEOUT:g} s")


@contextlib.contextmanager
def conversation(base: str, user_id: str) -> Iterator[ClientConnection]:
    """An agent socket with its conversation started (metadata and opening line read)."""
    with connect(base + WS_PATH, proxy=None, open_timeout=REPLY_TIMEOUT, close_timeout=2, ping_interval=None) as ws:
        ws.send(json.dumps({
            "type": "conversation_initiation_client_data",
            "conversation_config_override": {"conversation": {"text_only": True}},
            "user_id": user_id,
        }))
        read_until(ws, "conversation_initiation_metadata")
        read_until(ws, "agent_response")
        yield ws


class AgentSocket:
    """One WebSocket turn per call; a fresh conversation every `turns_per_socket` turns (untimed)."""

    def __init__(self, base: str, turns_per_socket: int) -> None:
        self.base = base
        self.turns_per_socket = turns_per_socket
        self.lines = itertools.cycle(USER_LINES)
        self.stack = contextlib.ExitStack()
        self.ws: ClientConnection | None = None
        self.turns = 0
        self.sockets = 0

    def ready(self) -> None:
        """Open (or replace) the socket when the next turn needs one; not part of a timed turn."""
        if self.ws is not None and (not self.turns_per_socket or self.turns < self.turns_per_socket):
            return
        self.close()
        self.sockets += 1
        # One user per socket: sessiontap would rightly report a reused user_id on a new socket as a reset.
        self.ws = self.stack.enter_context(conversation(self.base, f"bench-user-{self.sockets}"))
        self.turns = 0

    def turn(self) -> None:
        assert self.ws is not None
        self.ws.send(json.dumps({"type": "user_message", "text": next(self.lines)}))
        read_until(self.ws, "agent_response")
        self.turns += 1

    def close(self) -> None:
        self.ws = None
        self.stack.close()


# timing --------------------------------------------------------------------------------------


def timed(exchange: Callable[[], None], n: int, warmup: int, cap: float,
          prepare: Callable[[], None] = lambda: None) -> list[float]:
    """Milliseconds of `n` exchanges after `warmup` untimed ones; stops early at `cap` seconds."""
    deadline = time.monotonic() + cap
    samples: list[float] = []
    for i in range(warmup + n):
        if time.monotonic() > deadline:
            print(f"  ! wall-clock cap of {cap:g} s reached after {len(samples)} samples", file=sys.stderr)
            break
        prepare()
        start = time.perf_counter()
        exchange()
        elapsed = (time.perf_counter() - start) * 1000
        if i >= warmup:
            samples.append(elapsed)
    return samples


def measure(base: str, args: argparse.Namespace) -> dict[str, list[float]]:
    """HTTP then WebSocket samples against one base URL (`http://127.0.0.1:PORT`)."""
    cap = args.cap / 2
    with httpx.Client(base_url=base, trust_env=False, timeout=REPLY_TIMEOUT) as client:
        http_samples = timed(http_exchange(client), args.http, args.warmup, cap)
    sock = AgentSocket("ws" + base[4:], args.ws_turns_per_socket)
    try:
        ws_samples = timed(sock.turn, args.ws, args.warmup, cap, prepare=sock.ready)
    finally:
        sock.close()
    return {"http": http_samples, "ws": ws_samples}


def stats(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"n": 0}
    tenth = max(1, len(samples) // 10)
    return {
        "n": len(samples),
        "p50": statistics.median(samples),
        "p90": statistics.quantiles(samples, n=10, method="inclusive")[8] if len(samples) > 1 else samples[0],
        "max": max(samples),
        "drift": statistics.median(samples[-tenth:]) / statistics.median(samples[:tenth]),
    }


def compare(results: dict[str, dict[str, dict[str, float]]]) -> None:
    """Add the columns relative to direct and to bare mitmdump to each way's stats (in place)."""
    for kind in KINDS:
        direct, bare = results["direct"][kind], results["mitmdump"][kind]
        for way in WAYS:
            row = results[way][kind]
            if not row["n"] or not direct["n"] or not bare["n"]:
                continue
            row["added_p50"] = row["p50"] - direct["p50"]
            row["x_direct"] = row["p50"] / direct["p50"]
            row["x_mitmdump"] = row["p50"] / bare["p50"]


def table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    head = f"{'kind':<5} {'way':<11} {'n':>4} {'p50 ms':>8} {'p90 ms':>8} {'max ms':>8} " \
           f"{'+p50 ms':>8} {'x direct':>9} {'x mitmdump':>11} {'drift':>6}"
    lines = [head, "-" * len(head)]
    for kind in KINDS:
        for way in WAYS:
            r = results[way][kind]

            def cell(key: str, width: int, sign: str = "", r: dict[str, float] = r) -> str:
                return f"{r[key]:>{sign}{width}.2f}" if key in r else f"{'-':>{width}}"

            lines.append(f"{kind:<5} {way:<11} {r['n']:>4} {cell('p50', 8)} {cell('p90', 8)} {cell('max', 8)} "
                         f"{cell('added_p50', 8, '+')} {cell('x_direct', 9)} {cell('x_mitmdump', 11)} "
                         f"{cell('drift', 6)}")
    return "\n".join(lines)


# the run -------------------------------------------------------------------------------------


def journal_events(out: Path) -> dict[str, Any]:
    """What sessiontap wrote: journal events by type (notes by kind), and the capture's size."""
    journal, capture = out / "journal.jsonl", out / "flows.mitm"
    events: Counter[str] = Counter()
    if journal.exists():
        for line in journal.read_text(encoding="utf-8").splitlines():
            entry = json.loads(line)
            events[entry["event"] if entry["event"] != "note" else f"note:{entry.get('kind')}"] += 1
    return {"events": dict(events), "capture_bytes": capture.stat().st_size if capture.exists() else 0}


def proxy_ways() -> dict[str, Callable[[int, Path], contextlib.AbstractContextManager[Proc]]]:
    return {"mitmdump": bare_mitmdump, "sessiontap": sessiontap_record}


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Measure the three ways in order against one simulator; return stats, samples and process facts."""
    samples: dict[str, dict[str, list[float]]] = {}
    processes: dict[str, Any] = {}
    with simulator(workdir) as sim_port:
        print(f"direct: simulator on {HOST}:{sim_port}", file=sys.stderr)
        samples["direct"] = measure(f"http://{HOST}:{sim_port}", args)
        for way, start in proxy_ways().items():
            with start(sim_port, workdir) as proc:
                print(f"{way}: listening on {HOST}:{proc.port}", file=sys.stderr)
                samples[way] = measure(f"http://{HOST}:{proc.port}", args)
                proc.check_alive()
            processes[way] = {"exit_code": proc.popen.returncode, "stderr": proc.stderr_text()}
    processes["sessiontap"].update(journal_events(workdir / "sessiontap-out"))
    results = {way: {kind: stats(samples[way][kind]) for kind in KINDS} for way in WAYS}
    compare(results)
    return {"results": results, "samples_ms": samples, "processes": processes}


def notable(stderr: str) -> list[str]:
    """Stderr lines worth showing: all but sessiontap's start-up banner (how to point a client)."""
    banner = ("export ", "# ", "Point a client", "sessiontap: reverse proxy listening")
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith(banner)]




def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--http", type=int, default=300, help="timed simulate-conversation calls per way (300)")
    parser.add_argument("--ws", type=int, default=300, help="timed WebSocket turns per way (300)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed exchanges before each series (20)")
    parser.add_argument("--ws-turns-per-socket", type=int, default=25,
                        help="start a fresh conversation (untimed) every N turns; 0: one socket for all (25)")
    parser.add_argument("--cap", type=float, default=120.0,
                        help="wall-clock cap per way in seconds, half for HTTP and half for WS (120)")
    args = parser.parse_args(argv)
    # Ctrl-C and SIGTERM unwind through the `finally` blocks, so every subprocess gets stopped.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    stamp = time.strftime("%Y%m%d-%H%M%S")
    began = time.monotonic()
    code = code_state()
    with tempfile.TemporaryDirectory(prefix="sessiontap-bench-") as tmp:
        report = run(args, Path(tmp))
    report["settings"] = vars(args)
    report["code"] = code
    report["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}
    report["seconds"] = round(time.monotonic() - began, 1)
    print(table(report["results"]))
    for name, info in report["processes"].items():
        journal = f", journal events {info['events']}, flows.mitm {info['capture_bytes']} B" if "events" in info else ""
        print(f"{name}: exit code {info['exit_code']}{journal}")
        for line in notable(info["stderr"]):
            print(f"  | {line}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"record_latency-{stamp}.json"
    path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"{report['seconds']} s; written to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

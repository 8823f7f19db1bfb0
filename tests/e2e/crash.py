"""Crash drill: SIGKILL `sessiontap record` at random points of mixed HTTP and WebSocket runs; nothing is lost.

Each round starts the simulator on loopback and `sessiontap record --mode reverse` around two
clients at once (raw HTTP simulate-conversation and raw WebSocket conversations, several in a
row), kills the recorder with SIGKILL after a random delay, lets the clients fail on the dead
proxy, then checks what the recording left: every journal line parses, and every turn a
client completed (it printed the agent's reply) is among the calls `sessiontap report DIR`
analyses, whether flows.mitm saved its flow or only the journal holds it.

    uv run python -m tests.e2e.crash --kills 20 [--seed N]

tests/e2e/test_crash.py runs a short form in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from sessiontap.app.capture import analyse_capture, analyse_records
from sessiontap.core.model import fold_space
from sessiontap.simulator.server import running_simulator
from tests.conftest import CLIENTS, SESSIONTAP, clean_env

MATRIX = CLIENTS / "matrix"
CLIENT_TIMEOUT = "5"
CLIENTS_SCRIPT = (  # each client prints its replies to its own file: two writers on one file interleave
    f'"{sys.executable}" "{MATRIX / "http_client.py"}" --conversations 30 --timeout {CLIENT_TIMEOUT} > http.txt & '
    f'"{sys.executable}" "{MATRIX / "ws_client.py"}" --conversations 30 --concurrent 3 --timeout {CLIENT_TIMEOUT} '
    "> ws.txt & wait"
)


@dataclass
class Round:
    """What one killed recording left, and what was missing from it."""

    delay: float
    replies: int = 0  # turns the clients completed before the proxy died
    journal_lines: int = 0
    saved_flows: int = 0
    calls: int = 0  # calls report DIR analyses
    recovered: int = 0  # of which only the journal held (their flow was never saved)
    report_code: int | None = None
    problems: list[str] = field(default_factory=list)


def wait_for_line(path: Path, needle: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_text(errors="replace"):
            return
        time.sleep(0.02)
    raise TimeoutError(f"{needle!r} never appeared in {path}")


def crash_round(base: Path, home: Path, delay: float) -> Round:
    """Record, SIGKILL the recorder after ``delay`` seconds of traffic, and check what it left."""
    out, replied = base / "out", [base / "http.txt", base / "ws.txt"]
    result = Round(delay)
    base.mkdir(parents=True, exist_ok=True)
    with running_simulator() as sim:
        env = clean_env(home, ELEVENLABS_API_KEY="sk_crash_key_0000")
        proc = subprocess.Popen([SESSIONTAP, "record", "--mode", "reverse", "--upstream", sim.url, "--out", str(out),
                                 "--", "bash", "-c", CLIENTS_SCRIPT], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=env, cwd=base, start_new_session=True)
        try:
            wait_for_line(replied[0], "agent: ")  # traffic is flowing
            time.sleep(delay)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        # the clients fail on the dead proxy within their timeout; then nothing more is written
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.killpg(proc.pid, signal.SIGKILL)
    replies = [fold_space(line[len("agent: "):]) for path in replied if path.exists()
               for line in path.read_text().splitlines() if line.startswith("agent: ")]
    result.replies = len(replies)
    lines = (out / "journal.jsonl").read_text(encoding="utf-8").splitlines()
    result.journal_lines = len(lines)
    for i, line in enumerate(lines, 1):
        try:
            json.loads(line)
        except ValueError as e:
            result.problems.append(f"journal line {i} does not parse: {e}")
    report = subprocess.run([SESSIONTAP, "report", str(out), "--out", str(base / "report")], capture_output=True,
                            text=True, timeout=120, env=clean_env(home))
    result.report_code = report.returncode
    if report.returncode != 0:
        result.problems.append(f"report exited {report.returncode}: {report.stderr.strip()[-300:]}")
    analysis, cap = analyse_capture(out)
    result.saved_flows, result.calls = len(cap.records), len(analysis.calls)
    result.recovered = result.calls - len(analyse_records(cap.records).calls)
    recorded = [fold_space(c.reply_text) for c in analysis.calls if c.reply_text]
    for reply in replies:  # each completed turn, as many times as the clients got it
        if reply in recorded:
            recorded.remove(reply)
        else:
            result.problems.append(f"a completed turn is missing from report DIR: agent said {reply[:80]!r}")
    return result


def drill(base: Path, home: Path, kills: int, seed: int) -> list[Round]:
    """``kills`` rounds at random delays (0-3 s into the traffic), each in its own directory."""
    rng = random.Random(seed)
    rounds = []
    for i in range(kills):
        done = crash_round(base / f"round-{i + 1:02d}", home, round(rng.uniform(0.0, 3.0), 2))
        rounds.append(done)
        print(f"round {i + 1:2d}: killed at +{done.delay:.2f}s · {done.replies} turns completed · "
              f"{done.journal_lines} journal lines · {done.saved_flows} flows saved · {done.calls} calls in report "
              f"({done.recovered} from the journal) · "
              f"{'OK' if not done.problems else 'LOST: ' + '; '.join(done.problems[:3])}", flush=True)
    return rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--dir", type=Path, default=Path("sessiontap-out/crash"))
    args = parser.parse_args()
    home = args.dir / "home"
    home.mkdir(parents=True, exist_ok=True)
    rounds = drill(args.dir, home, args.kills, args.seed)
    lost = sum(1 for r in rounds if r.problems)
    print(f"{len(rounds)} kills, {sum(r.replies for r in rounds)} completed turns, {sum(r.calls for r in rounds)} "
          f"calls in the reports ({sum(r.recovered for r in rounds)} only in the journal), "
          f"{lost} rounds lost something")
    raise SystemExit(1 if lost else 0)


if __name__ == "__main__":
    main()

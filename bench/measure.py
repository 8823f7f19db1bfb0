"""Shared by the benchmarks: where results and captures live, and how a step is timed and traced."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CAPTURES = RESULTS / "captures"
MEASURE_TIMEOUT = 1800.0
CAPTURE_SPECS: dict[str, dict[str, Any]] = {
    "1k": {"calls": 1000},
    "10k": {"calls": 10_000},
    "long500": {"calls": 500, "long_session": True},
}
MB = 1024 * 1024


def max_rss_mb() -> float:
    """This process's peak resident memory, MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def timed(fn: Callable[[], Any], repeat: int) -> tuple[list[float], Any]:
    """Seconds of `repeat` runs of `fn`, and the last run's result."""
    seconds: list[float] = []
    result = None
    for _ in range(repeat):
        result = None  # let the previous result go before the next run
        start = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - start)
    return seconds, result


def traced_peak(fn: Callable[[], Any]) -> tuple[float, Any]:
    """MB of the tracemalloc peak while `fn` runs (allocations made before it are not counted)."""
    tracemalloc.start()
    try:
        result = fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak / MB, result


def ensure_capture(name: str, fresh: bool = False) -> tuple[Path, bool]:
    """The capture directory `name` under bench/results/captures, made now if absent (or `fresh`); (dir, made now)."""
    from make_capture import META_FILE, make_capture  # make_capture imports record_latency, which imports this

    spec = CAPTURE_SPECS[name]
    out = CAPTURES / name
    if (out / "flows.mitm").exists() and (out / META_FILE).exists() and not fresh:
        return out, False
    print(f"{name}: making the capture ({spec})", file=sys.stderr, flush=True)
    began = time.monotonic()
    capture = make_capture(out, spec["calls"], long_session=spec.get("long_session", False))
    print(f"{name}: made in {time.monotonic() - began:.1f} s, {capture.stat().st_size / MB:.1f} MB",
          file=sys.stderr, flush=True)
    return out, True


def measure_in_child(script: str, *args: str) -> dict[str, Any]:
    """Run `script --measure ARGS` in a fresh interpreter (clean memory figures); its last stdout line as JSON."""
    argv = [sys.executable, script, "--measure", *args]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=MEASURE_TIMEOUT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"measuring {args[0]} failed ({done.returncode}): {done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def code_state() -> dict[str, Any]:
    """The commit measured and the files changed on top of it (the numbers depend on both)."""
    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.rstrip("\n")

    return {"commit": git("rev-parse", "HEAD"), "changed": git("status", "--porcelain", "--", "addons").splitlines()}

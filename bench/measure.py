"""Shared by the benchmarks: where results and captures live, and how a step is timed and traced."""

from __future__ import annotations

import resource
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

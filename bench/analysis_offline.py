"""What offline analysis costs: reading a capture and analysing it, for 1k calls, 10k calls and one long session.

The captures are real recordings made by `make_capture.py` (the sample clients through `sessiontap record`
against the simulator) into `bench/results/captures/<name>/`; a capture already there is reused
(`--fresh` makes them again). Each capture is measured in a fresh Python process, so its max RSS is its own:

- raw       `mitmproxy.io.FlowReader(f).stream()` into a list: the floor, just reading flows;
- read      `sessiontap.app.capture.read_capture(path)`: the flows as records, from their states (no flows built);
- analyse   `sessiontap.app.capture.analyse_records(records)`: decode, sessions, diffs and rules.

Each is run `--repeat` times (3) and the median wall time is kept. Then, untimed, `read_capture` and
`analyse_records` are run once more under tracemalloc: the peak of what each allocates (`read` peak
is roughly the records held in memory; `analyse` peak is the analysis on top of them). Max RSS is the
measuring process's `ru_maxrss` after the timed runs (before tracemalloc, which adds its own).
Counts come from the last analysis: calls, sessions, findings (by rule and severity), and findings
by the kind of client that made the session (from `make_capture.json`), so a finding on a fixed
client stands out. `live` repeats what the recording itself wrote in findings.json, for comparison.

Run: `uv run python bench/analysis_offline.py`; the table is printed and written as JSON to
`bench/results/analysis_offline-<timestamp>.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from make_capture import META_FILE
from measure import (
    CAPTURE_SPECS,
    MB,
    RESULTS,
    ROOT,
    code_state,
    ensure_capture,
    max_rss_mb,
    measure_in_child,
    timed,
    traced_peak,
)

# measuring one capture (in its own process) ------------------------------------------------------------------








def kind_of(session: str, kinds: dict[str, str]) -> str:
    """The client kind of an analysis session (a split `id#N` belongs to `id`)."""
    return kinds.get(session.split("#", 1)[0], "other" if session else "(none)")


def measure(path: Path, repeat: int) -> dict[str, Any]:
    """Time raw reading, read_capture and analyse_records over one capture; count what the analysis found."""
    from mitmproxy import io

    from sessiontap.app.capture import analyse_records, read_capture

    rss_start = max_rss_mb()

    def raw() -> list[Any]:
        with open(path, "rb") as f:
            return list(io.FlowReader(f).stream())

    raw_s, flows_raw = timed(raw, repeat)
    n_raw = len(flows_raw)
    del flows_raw
    read_s, capture = timed(lambda: read_capture(path), repeat)
    records, warning = capture.records, capture.warning
    websocket_flows = sum(1 for r in records if r.websocket)
    rss_after_read = max_rss_mb()
    analyse_s, _ = timed(lambda: analyse_records(records), repeat)
    rss_after_analyse = max_rss_mb()  # the headline max RSS: no tracemalloc overhead in it
    # Under tracemalloc, only what each call allocates is counted (the flows already read are not).
    analyse_peak, analysis = traced_peak(lambda: analyse_records(records))
    read_peak, _ = traced_peak(lambda: read_capture(path))

    meta_path = path.parent / META_FILE
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {}
    kinds: dict[str, str] = meta.get("session_kinds", {})
    by_kind: dict[str, Counter[str]] = {}
    for f in analysis.findings:
        by_kind.setdefault(kind_of(f.session, kinds), Counter())[f"{f.rule}/{f.severity}"] += 1
    sessions_by_kind = Counter(kind_of(s.id, kinds) for s in analysis.sessions)
    live_path = path.parent / "findings.json"
    live: dict[str, Any] = {}
    if live_path.exists():
        doc = json.loads(live_path.read_text(encoding="utf-8"))
        live = {"calls": doc.get("calls"), "sessions": len(doc.get("sessions", [])),
                "findings": len(doc.get("findings", [])), "verdict": doc.get("verdict")}
    return {
        "capture": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
        "bytes": path.stat().st_size,
        "flows": n_raw,
        "websocket_flows": websocket_flows,
        "raw_s": raw_s,
        "read_s": read_s,
        "analyse_s": analyse_s,
        "raw_median_s": statistics.median(raw_s),
        "read_median_s": statistics.median(read_s),
        "analyse_median_s": statistics.median(analyse_s),
        "read_peak_mb": round(read_peak, 1),
        "analyse_peak_mb": round(analyse_peak, 1),
        "rss_start_mb": round(rss_start, 1),
        "rss_after_read_mb": round(rss_after_read, 1),
        "max_rss_mb": round(rss_after_analyse, 1),
        "max_rss_with_tracemalloc_mb": round(max_rss_mb(), 1),
        "read_warning": warning,
        "calls": len(analysis.calls),
        "sessions": len(analysis.sessions),
        "sessions_by_protocol": dict(Counter(s.protocol for s in analysis.sessions)),
        "sessions_by_source": dict(Counter(s.source for s in analysis.sessions)),
        "sessions_by_kind": dict(sessions_by_kind),
        "server_conversations": sum(len(s.server_conversations) for s in analysis.sessions),
        "resets": sum(len(s.resets) for s in analysis.sessions),
        "findings": len(analysis.findings),
        "findings_by_rule": dict(Counter(f"{f.rule}/{f.severity}" for f in analysis.findings)),
        "findings_by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
        "notes": dict(Counter(n.kind for n in analysis.notes)),
        "verdict": analysis.verdict(),
        "live": live,
        "made": {k: meta.get(k) for k in ("calls_planned", "calls_done", "sessions", "calls_by_kind",
                                          "record_seconds", "calls_per_second", "record_exit_code")}
                | {"errors": len(meta.get("errors", []))},
    }


# the run ------------------------------------------------------------------------------------------------------






def table(rows: dict[str, dict[str, Any]]) -> str:
    head = (f"{'capture':<8} {'MB':>6} {'flows':>6} {'calls':>6} {'sess':>5} {'find':>5} {'raw s':>7} "
            f"{'read s':>7} {'analyse s':>9} {'read/raw':>8} {'an/raw':>7} {'us/call':>8} "
            f"{'read pk MB':>10} {'an pk MB':>9} {'maxRSS MB':>9}")
    lines = [head, "-" * len(head)]
    for name, r in rows.items():
        raw, read, an = r["raw_median_s"], r["read_median_s"], r["analyse_median_s"]
        lines.append(
            f"{name:<8} {r['bytes'] / MB:>6.1f} {r['flows']:>6} {r['calls']:>6} {r['sessions']:>5} "
            f"{r['findings']:>5} {raw:>7.3f} {read:>7.3f} {an:>9.3f} {read / raw:>8.2f} {an / raw:>7.2f} "
            f"{an / max(1, r['calls']) * 1e6:>8.0f} {r['read_peak_mb']:>10.1f} {r['analyse_peak_mb']:>9.1f} "
            f"{r['max_rss_mb']:>9.1f}")
    return "\n".join(lines)


def details(rows: dict[str, dict[str, Any]]) -> str:
    lines = []
    for name, r in rows.items():
        made = r["made"]
        lines.append(f"{name}: {r['verdict']}")
        lines.append(f"  made: {made.get('calls_done')}/{made.get('calls_planned')} calls, {made.get('errors')} "
                     f"client errors, record exit {made.get('record_exit_code')}, {made.get('record_seconds')} s"
                     f"{' (now)' if r['made_now'] else ' (reused)'}")
        lines.append(f"  sessions by kind {r['sessions_by_kind']}; by source {r['sessions_by_source']}; "
                     f"resets {r['resets']}; notes {r['notes'] or '{}'}")
        for kind, counts in r["findings_by_kind"].items():
            lines.append(f"  findings on {kind}: {counts}")
        live = r["live"]
        if live and (live["calls"], live["sessions"], live["findings"]) != (r["calls"], r["sessions"], r["findings"]):
            lines.append(f"  ! live findings.json differs: {live['calls']} calls, {live['sessions']} sessions, "
                         f"{live['findings']} findings")
    return "\n".join(lines)




def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--captures", default=",".join(CAPTURE_SPECS),
                        help=f"which captures, comma-separated ({','.join(CAPTURE_SPECS)})")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each step; the median is kept (3)")
    parser.add_argument("--fresh", action="store_true", help="make the captures again even if present")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure.resolve(), args.repeat)))
        return
    names = [n for n in args.captures.split(",") if n]
    unknown = set(names) - set(CAPTURE_SPECS)
    if unknown:
        parser.error(f"unknown capture {', '.join(sorted(unknown))}; known: {', '.join(CAPTURE_SPECS)}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    began = time.monotonic()
    code = code_state()
    rows: dict[str, dict[str, Any]] = {}
    for name in names:
        capture, made_now = ensure_capture(name, args.fresh)
        print(f"{name}: measuring {capture.relative_to(ROOT)}", file=sys.stderr, flush=True)
        rows[name] = measure_in_child(__file__, str(capture / "flows.mitm"), "--repeat", str(args.repeat)) | {
            "made_now": made_now}
    report = {"results": rows, "settings": vars(args) | {"measure": None}, "code": code,
              "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
              "seconds": round(time.monotonic() - began, 1)}
    print(table(rows))
    print(details(rows))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"analysis_offline-{stamp}.json"
    path.write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    print(f"{report['seconds']} s; written to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

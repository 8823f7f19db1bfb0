"""What report.html costs: generating it for 1k calls, 10k calls and one long session, and opening it in Chromium.

The captures are the ones `analysis_offline.py` uses (`make_capture.py`, in `bench/results/captures/<name>/`);
one already there is reused, a missing one is made. Each capture is measured in a fresh Python process, so
its max RSS is its own. The steps of `sessiontap report` are timed separately (median of `--repeat`, 3):

- read      `sessiontap.app.capture.read_capture(path)`;
- analyse   `sessiontap.app.capture.analyse_records(records)`;
- records   `sessiontap.app.capture.redacted_records(records)` (the redacted wire details);
- render    `reports.html.render(analysis, records, Meta(...))` (the page text, and its view);
- write     `page.encode("ascii", "xmlcharrefreplace")` and writing it to report.html.

Then, untimed, one render under tracemalloc (the peak of what render allocates), and the page is counted:
sessions shown in detail vs as a summary only ("Not shown in detail"), calls shown (`details class="call`)
and calls left out of detailed sessions (`omitted_calls`). Apart from that, the whole CLI
(`.venv/bin/sessiontap report <capture dir> --out <tmp>`) is run once from the parent process: wall time,
exit code, its max RSS.

The report written by the measuring process is opened `--loads` times (3) in headless Chromium (Playwright,
Debian's `chromium`), from file://, each in a fresh browser context: goto until `load` (wall), the navigation
entry's domContentLoadedEventEnd and loadEventEnd, first contentful paint, DOM nodes, JS heap; then the first
rule of `#f-rule` is applied (`change` dispatched inside the page, timed with performance.now(): the script
alone, and until the second animation frame after it, i.e. with style and layout). Console errors and page
errors (a CSP violation is one) are counted; there should be none.

Run: `uv run python bench/report_render.py`; the table is printed and written as JSON to
`bench/results/report_render-<timestamp>.json`. `--profile 10k` also prints the top functions of one render
under cProfile.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from make_capture import META_FILE
from measure import (
    CAPTURE_SPECS,
    RESULTS,
    ROOT,
    code_state,
    ensure_capture,
    max_rss_mb,
    measure_in_child,
    timed,
    traced_peak,
)

REPORTS = RESULTS / "report_render"  # the reports measured in Chromium, kept to look at
SESSIONTAP = ROOT / ".venv" / "bin" / "sessiontap"
SIZE_LIMIT = 5_000_000  # bytes: "10k calls produce a report under 5 MB ..."
LOAD_LIMIT_MS = 2000.0  # "... that opens in Chromium in under 2 s"








def text_of(page: str, element_id: str) -> str:
    """The text of the element with this id (tags dropped, whitespace folded), '' if absent."""
    found = re.search(rf'id="{element_id}"[^>]*>(.*?)</', page, re.S)
    return " ".join(re.sub(r"<[^>]+>", "", found.group(1)).split()) if found else ""


# generating the report (in its own process) -------------------------------------------------------------------


def run_cli(capture_dir: Path) -> dict[str, Any]:
    """`sessiontap report <dir> --out <tmp>` once: wall time, exit code, max RSS, and the report's size.

    Linux carries a forked child's RSS high-water mark across exec, so the max RSS is at least the
    caller's RSS at the fork (`rss_floor_mb`): run this from a small process.
    """
    rss_floor = max_rss_mb()
    with tempfile.TemporaryDirectory(prefix="report-render-") as tmp, open(Path(tmp) / "stderr", "w+b") as err:
        start = time.perf_counter()
        proc = subprocess.Popen([str(SESSIONTAP), "report", str(capture_dir), "--out", tmp], cwd=ROOT,
                                stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
        report = Path(tmp) / "report.html"
        return {"wall_s": round(wall, 3), "exit_code": proc.returncode, "max_rss_mb": round(usage.ru_maxrss / 1024, 1),
                "rss_floor_mb": round(rss_floor, 1),
                "report_bytes": report.stat().st_size if report.exists() else None,
                "stderr_tail": stderr[-2000:]}


def measure(path: Path, out: Path, repeat: int, profile: int) -> dict[str, Any]:
    """Time each step of writing report.html for one capture; count what the page shows."""
    from sessiontap.app.capture import analyse_records, read_capture, redacted_records
    from sessiontap.reports.html import REPORT_FILE, render
    from sessiontap.reports.view import Meta

    rss_start = max_rss_mb()
    read_s, capture = timed(lambda: read_capture(path), repeat)
    analyse_s, analysis = timed(lambda: analyse_records(capture.records), repeat)
    records_s, records = timed(lambda: redacted_records(capture.records), repeat)
    meta = Meta(str(path), "bench")
    render_s, (page, view) = timed(lambda: render(analysis, records, meta), repeat)
    out.mkdir(parents=True, exist_ok=True)
    report = out / REPORT_FILE

    def write() -> int:
        return report.write_bytes(page.encode("ascii", "xmlcharrefreplace"))

    write_s, size = timed(write, repeat)
    rss_after = max_rss_mb()  # the headline max RSS: no tracemalloc overhead in it
    render_peak, _ = traced_peak(lambda: render(analysis, records, meta))

    profile_top = ""
    if profile:
        import cProfile
        import io
        import pstats

        prof = cProfile.Profile()
        prof.runcall(render, analysis, records, meta)
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(profile)
        profile_top = buf.getvalue()

    summary_only = page.count("Not shown in detail")
    partial = [s for s in view.sessions if s.omitted_calls]
    calls_shown = page.count('details class="call')
    return {
        "capture": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
        "capture_bytes": (path / "flows.mitm").stat().st_size,
        "report": str(report.relative_to(ROOT) if report.is_relative_to(ROOT) else report),
        "flows": len(capture.records),
        "calls": len(analysis.calls),
        "sessions": len(view.sessions),
        "findings": len(analysis.findings),
        "read_s": read_s, "analyse_s": analyse_s, "records_s": records_s, "render_s": render_s, "write_s": write_s,
        "read_median_s": statistics.median(read_s),
        "analyse_median_s": statistics.median(analyse_s),
        "records_median_s": statistics.median(records_s),
        "render_median_s": statistics.median(render_s),
        "write_median_s": statistics.median(write_s),
        "page_chars": len(page),
        "report_bytes": size,
        "non_ascii_chars": sum(1 for ch in page if ord(ch) > 127),
        "sessions_detailed": len(view.sessions) - summary_only,
        "sessions_summary_only": summary_only,
        "sessions_partial": len(partial),
        "calls_shown": calls_shown,
        "calls_omitted_in_detailed": sum(s.omitted_calls for s in view.sessions),
        "calls_in_summary_only": len(analysis.calls) - calls_shown - sum(s.omitted_calls for s in view.sessions),
        "omitted_class_count": page.count('class="omitted"'),
        "render_peak_mb": round(render_peak, 1),
        "rss_start_mb": round(rss_start, 1),
        "max_rss_mb": round(rss_after, 1),
        "max_rss_with_tracemalloc_mb": round(max_rss_mb(), 1),
        "headline": view.headline,
        "verdict": view.verdict,
        "page_headline": text_of(page, "verdict-title"),
        "tiles": view.tiles,
        "rules_seen": view.rules_seen,
        "read_warning": capture.warning,
        "profile": profile_top,
    }


# opening it in Chromium -----------------------------------------------------------------------------------------

FILTER_JS = """(rule) => new Promise((done) => {
  const sel = document.getElementById("f-rule");
  sel.value = rule;
  const t0 = performance.now();
  sel.dispatchEvent(new Event("change"));
  const script = performance.now() - t0;
  requestAnimationFrame(() => requestAnimationFrame(() => done({
    script_ms: script, frame_ms: performance.now() - t0,
    count: (document.getElementById("f-count") || {}).textContent || ""})));
})"""

NAVIGATION_JS = """() => {
  const n = performance.getEntriesByType("navigation")[0];
  const fcp = performance.getEntriesByName("first-contentful-paint")[0];
  const mem = performance.memory;
  return {dom_content_loaded_ms: n.domContentLoadedEventEnd, load_event_end_ms: n.loadEventEnd,
          response_end_ms: n.responseEnd, fcp_ms: fcp ? fcp.startTime : null,
          timing_dcl_ms: performance.timing.domContentLoadedEventEnd - performance.timing.navigationStart,
          timing_load_ms: performance.timing.loadEventEnd - performance.timing.navigationStart,
          dom_nodes: document.getElementsByTagName("*").length,
          js_heap_mb: mem ? mem.usedJSHeapSize / 1048576 : null,
          filter_options: Array.prototype.map.call(document.querySelectorAll("#f-rule option"), (o) => o.value)};
}"""


def open_in_chromium(report: Path, loads: int) -> dict[str, Any]:
    """Open the report `loads` times in fresh contexts of headless Chromium; time load and one rule filter."""
    from playwright.sync_api import ConsoleMessage, sync_playwright
    from playwright.sync_api import Error as PlaywrightError

    executable = shutil.which("chromium")
    if executable is None:
        raise RuntimeError("no chromium on PATH")
    url = report.resolve().as_uri()
    runs: list[dict[str, Any]] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True,
                                     args=["--enable-precise-memory-info"])
        version = browser.version
        try:
            for _ in range(loads):
                context = browser.new_context()
                page = context.new_page()
                errors: list[str] = []

                def on_console(msg: ConsoleMessage, errors: list[str] = errors) -> None:
                    if msg.type == "error":
                        errors.append(msg.text)

                def on_error(exc: PlaywrightError, errors: list[str] = errors) -> None:
                    errors.append(f"pageerror: {exc}")

                page.on("console", on_console)
                page.on("pageerror", on_error)
                start = time.perf_counter()
                page.goto(url, wait_until="load", timeout=60_000)
                goto_ms = (time.perf_counter() - start) * 1000
                nav = page.evaluate(NAVIGATION_JS)
                rule = next((v for v in nav.pop("filter_options") if v), None)
                run: dict[str, Any] = {"goto_load_ms": round(goto_ms, 1), **nav, "filter_rule": rule}
                if rule is not None:
                    start = time.perf_counter()
                    run["filter"] = page.evaluate(FILTER_JS, rule)
                    run["filter_evaluate_ms"] = round((time.perf_counter() - start) * 1000, 1)
                    page.evaluate(FILTER_JS, "")  # back to all rules
                    start = time.perf_counter()
                    page.select_option("#f-rule", rule)
                    run["select_option_ms"] = round((time.perf_counter() - start) * 1000, 1)
                    run["count_after_select"] = page.evaluate(
                        '() => (document.getElementById("f-count") || {}).textContent || ""')
                page.wait_for_timeout(100)  # late console messages
                run["console_errors"] = list(errors)
                runs.append(run)
                context.close()
        finally:
            browser.close()

    def med(key: str, sub: str | None = None) -> float | None:
        values = [(r.get(key) or {}).get(sub) if sub else r.get(key) for r in runs]
        nums = [v for v in values if isinstance(v, int | float)]
        return round(statistics.median(nums), 1) if nums else None

    return {
        "chromium": version, "runs": runs,
        "goto_load_median_ms": med("goto_load_ms"),
        "dcl_median_ms": med("dom_content_loaded_ms"),
        "load_event_end_median_ms": med("load_event_end_ms"),
        "fcp_median_ms": med("fcp_ms"),
        "filter_script_median_ms": med("filter", "script_ms"),
        "filter_frame_median_ms": med("filter", "frame_ms"),
        "select_option_median_ms": med("select_option_ms"),
        "console_errors": sum(len(r["console_errors"]) for r in runs),
    }


# the run ------------------------------------------------------------------------------------------------------






def table(rows: dict[str, dict[str, Any]]) -> str:
    head = (f"{'capture':<8} {'calls':>6} {'sess':>5} {'read s':>7} {'anal s':>7} {'recs s':>7} {'rend s':>7} "
            f"{'write s':>7} {'CLI s':>6} {'rc':>3} {'MB':>5} {'det/sum':>9} {'calls shown':>11} {'omit':>5} "
            f"{'pk MB':>6} {'RSS MB':>6} {'load ms':>7} {'DCL ms':>7} {'filt ms':>7} {'cons err':>8}")
    lines = [head, "-" * len(head)]
    for name, r in rows.items():
        c = r["chromium"]
        lines.append(
            f"{name:<8} {r['calls']:>6} {r['sessions']:>5} {r['read_median_s']:>7.3f} {r['analyse_median_s']:>7.3f} "
            f"{r['records_median_s']:>7.3f} {r['render_median_s']:>7.3f} {r['write_median_s']:>7.3f} "
            f"{r['cli']['wall_s']:>6.1f} {r['cli']['exit_code']:>3} {r['report_bytes'] / 1e6:>5.2f} "
            f"{r['sessions_detailed']:>4}/{r['sessions_summary_only']:<4} {r['calls_shown']:>11} "
            f"{r['calls_omitted_in_detailed']:>5} {r['render_peak_mb']:>6.1f} {r['max_rss_mb']:>6.0f} "
            f"{c['goto_load_median_ms']:>7.0f} {c['dcl_median_ms']:>7.0f} "
            f"{c['filter_frame_median_ms'] or 0:>7.1f} {c['console_errors']:>8}")
    return "\n".join(lines)


def details(rows: dict[str, dict[str, Any]]) -> str:
    lines = []
    for name, r in rows.items():
        c, cli = r["chromium"], r["cli"]
        size_ok = r["report_bytes"] < SIZE_LIMIT
        load_ok = (c["goto_load_median_ms"] or 0) < LOAD_LIMIT_MS
        lines.append(f"{name}: {r['page_headline']!r} / {r['verdict']}")
        lines.append(f"  report {r['report_bytes']:,} B ({'<' if size_ok else '>='} 5 MB), "
                     f"{r['non_ascii_chars']} non-ASCII chars as refs; "
                     f"load {c['goto_load_median_ms']} ms ({'<' if load_ok else '>='} 2 s), "
                     f"loadEventEnd {c['load_event_end_median_ms']} ms, FCP {c['fcp_median_ms']} ms, "
                     f"{c['runs'][0]['dom_nodes']:,} DOM nodes, JS heap {c['runs'][0]['js_heap_mb'] or 0:.0f} MB")
        lines.append(f"  filter {c['runs'][0].get('filter_rule')!r}: script {c['filter_script_median_ms']} ms, "
                     f"to 2nd frame {c['filter_frame_median_ms']} ms, select_option {c['select_option_median_ms']} ms"
                     f" ({(c['runs'][0].get('filter') or {}).get('count')!r})")
        lines.append(f"  sessions {r['sessions_detailed']} detailed ({r['sessions_partial']} cut short) + "
                     f"{r['sessions_summary_only']} summary only; calls {r['calls_shown']} shown, "
                     f"{r['calls_omitted_in_detailed']} left out of detailed sessions, "
                     f"{r['calls_in_summary_only']} in summary-only sessions")
        lines.append(f"  CLI: exit {cli['exit_code']}, {cli['wall_s']} s, max RSS {cli['max_rss_mb']} MB "
                     f"(floor {cli['rss_floor_mb']}), "
                     f"report {cli['report_bytes']} B")
        if cli["exit_code"] != 0:
            lines.append(f"  ! CLI stderr: {cli['stderr_tail']}")
        for run in c["runs"]:
            for err in run["console_errors"]:
                lines.append(f"  ! console: {err[:300]}")
        if r["read_warning"]:
            lines.append(f"  ! read: {r['read_warning']}")
    return "\n".join(lines)




def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--captures", default=",".join(CAPTURE_SPECS),
                        help=f"which captures, comma-separated ({','.join(CAPTURE_SPECS)})")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each step; the median is kept (3)")
    parser.add_argument("--loads", type=int, default=3, help="loads of each report in Chromium (3)")
    parser.add_argument("--profile", default="", help="captures whose render is also run under cProfile (e.g. 10k)")
    parser.add_argument("--profile-top", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--report-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure.resolve(), args.report_dir, args.repeat, args.profile_top),
                         default=str))
        return
    names = [n for n in args.captures.split(",") if n]
    unknown = set(names) - set(CAPTURE_SPECS)
    if unknown:
        parser.error(f"unknown capture {', '.join(sorted(unknown))}; known: {', '.join(CAPTURE_SPECS)}")
    profiled = {n for n in args.profile.split(",") if n}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    began = time.monotonic()
    code = code_state()
    rows: dict[str, dict[str, Any]] = {}
    for name in names:
        capture, made_now = ensure_capture(name)
        print(f"{name}: measuring {capture.relative_to(ROOT)}", file=sys.stderr, flush=True)
        row = measure_in_child(__file__, str(capture), "--report-dir", str(REPORTS / name),
                               "--repeat", str(args.repeat), "--profile-top", str(25 if name in profiled else 0))
        print(f"{name}: sessiontap report (CLI)", file=sys.stderr, flush=True)
        row["cli"] = run_cli(capture)  # from this small process: a forked child's max RSS starts at ours
        print(f"{name}: opening {row['report']} in Chromium", file=sys.stderr, flush=True)
        row["chromium"] = open_in_chromium(ROOT / row["report"], args.loads)
        row["made_now"] = made_now
        row["made"] = json.loads((capture / META_FILE).read_text(encoding="utf-8")).get("calls_done") \
            if (capture / META_FILE).exists() else None
        rows[name] = row
    report = {"results": rows, "settings": vars(args) | {"measure": None, "report_dir": None}, "code": code,
              "limits": {"report_bytes": SIZE_LIMIT, "load_ms": LOAD_LIMIT_MS},
              "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
              "seconds": round(time.monotonic() - began, 1)}
    print(table(rows))
    print(details(rows))
    for name, r in rows.items():
        if r["profile"]:
            print(f"\n{name}: render under cProfile (cumulative)\n{r['profile']}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"report_render-{stamp}.json"
    path.write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    print(f"{report['seconds']} s; written to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

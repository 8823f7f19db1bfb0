"""What client replay costs: the same replay played direct, through bare mitmdump, and through sessiontap.

Everything runs on 127.0.0.1 against the simulator in its own process. The capture is
`bench/results/captures/1k` (made by `make_capture.py` when absent: 1,000 calls, 100 sessions of
four kinds of client). Its replay plan is built once (`build_plan`), then for each variant:

- direct      `python -m sessiontap.replay.client PLAN --variant V` with ELEVENLABS_BASE_URL = simulator
- mitmdump    the same client through `mitmdump --mode reverse:<simulator>` (no addons)
- sessiontap  the same client through `sessiontap record --mode reverse --upstream <simulator>`
- command     the whole `sessiontap replay --client CAPTURE --to <simulator> --vary-context V`
              (analysis of the capture, the proxy's start and stop, the replay's analysis,
              report.html and behaviour.html included)

The first three time the client process from start to exit (median of `--repeat` runs; the
proxies stay up between runs) and report the client's own "done" line; "x direct" and
"x mitmdump" are ratios of medians. The command row is timed once per repeat.

Run: `uv run python bench/client_replay.py [--variants as-recorded,full] [--repeat 3]`; the table
is printed and written as JSON to `bench/results/client_replay-<timestamp>.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from measure import RESULTS, ROOT, code_state, ensure_capture
from record_latency import BIN, HOST, bare_mitmdump, sessiontap_record, simulator

from sessiontap.app.capture import analyse_flows, flow_records, read_capture
from sessiontap.replay.client import build_plan

RUN_TIMEOUT = 600.0
WAYS = ("direct", "mitmdump", "sessiontap")


def play(plan: Path, variant: str, base_url: str) -> tuple[float, str]:
    """Seconds the replay client takes through `base_url`, and its last line (calls done, failed)."""
    env = {**os.environ, "ELEVENLABS_BASE_URL": base_url, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    argv = [sys.executable, "-m", "sessiontap.replay.client", str(plan), "--variant", variant]
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)
    seconds = time.perf_counter() - start
    last = (done.stdout.strip().splitlines() or [""])[-1]
    if done.returncode != 0:
        raise RuntimeError(f"{variant} via {base_url} failed ({done.returncode}): {last} {done.stderr[-2000:]}")
    return seconds, last


def command(capture: Path, variant: str, sim_url: str, workdir: Path) -> float:
    """Seconds of a whole `sessiontap replay --client` run to the simulator."""
    out = Path(tempfile.mkdtemp(dir=workdir))
    argv = [str(BIN / "sessiontap"), "replay", "--client", str(capture), "--to", sim_url, "--vary-context", variant,
            "--out", str(out)] if variant != "as-recorded" else [
        str(BIN / "sessiontap"), "replay", "--client", str(capture), "--to", sim_url, "--out", str(out)]
    env = {**os.environ, "SESSIONTAP_HOME": str(workdir / "sessiontap-home")}
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"sessiontap replay --client ({variant}) failed: {done.stderr[-2000:]}")
    return time.perf_counter() - start


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    capture, _ = ensure_capture("1k")
    flows = read_capture(capture).flows
    analysis = analyse_flows(flows)
    plan_path = workdir / "plan.json"
    plan_path.write_text(json.dumps(build_plan(flow_records(flows), analysis, str(capture))), encoding="utf-8")
    calls = len(analysis.calls)
    rows: dict[str, dict[str, Any]] = {}
    with simulator(workdir) as sim_port:
        sim_url = f"http://{HOST}:{sim_port}"
        with bare_mitmdump(sim_port, workdir) as dump, sessiontap_record(sim_port, workdir) as tap:
            urls = {"direct": sim_url, "mitmdump": f"http://{HOST}:{dump.port}",
                    "sessiontap": f"http://{HOST}:{tap.port}"}
            for variant in args.variants:
                for way in WAYS:
                    runs = [play(plan_path, variant, urls[way]) for _ in range(args.repeat)]
                    rows[f"{variant}/{way}"] = {"seconds": [r[0] for r in runs], "done": runs[-1][1]}
        for variant in args.variants:
            rows[f"{variant}/command"] = {"seconds": [command(capture, variant, sim_url, workdir)
                                                      for _ in range(args.repeat)], "done": ""}
    for key, row in rows.items():
        variant = key.split("/")[0]
        row["median"] = statistics.median(row["seconds"])
        row["ms_per_call"] = 1000 * row["median"] / calls
        row["x_direct"] = row["median"] / statistics.median(rows[f"{variant}/direct"]["seconds"])
        row["x_mitmdump"] = row["median"] / statistics.median(rows[f"{variant}/mitmdump"]["seconds"])
    return {"capture": str(capture), "calls": calls, "rows": rows, "machine": platform.platform(),
            "cpus": os.cpu_count(), "code": code_state()}


def table(result: dict[str, Any]) -> str:
    lines = [f"{result['calls']} calls replayed ({result['capture']}), median of the runs:",
             f"{'variant/way':<24}{'seconds':>9}{'ms/call':>9}{'x direct':>10}{'x mitmdump':>12}  client says"]
    for key, row in result["rows"].items():
        lines.append(f"{key:<24}{row['median']:>9.2f}{row['ms_per_call']:>9.2f}{row['x_direct']:>10.2f}"
                     f"{row['x_mitmdump']:>12.2f}  {row['done']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="as-recorded,full", help="comma-separated (default: as-recorded,full)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per way (default 3)")
    args = parser.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    with tempfile.TemporaryDirectory(prefix="bench-client-replay-") as tmp:
        result = run(args, Path(tmp))
    print(table(result))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"client_replay-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(f"written to {path}")


if __name__ == "__main__":
    main()

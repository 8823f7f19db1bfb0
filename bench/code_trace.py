"""What the code trace costs a Python client: time per TCP connect and per HTTP request write, with and without it.

Run: ``uv run python bench/code_trace.py [--connects N] [--requests N] [--repeat R]``.

A child Python process opens N loopback TCP connections to a listener of its own (then writes
N request-like payloads on one of them), once with the hook loaded exactly as ``sessiontap
record`` loads it (our ``sitecustomize`` first on PYTHONPATH, ``SESSIONTAP_CODE_TRACE`` set) and
once without; the figures are the child's own timings, median of R runs, and their difference.
Loopback only; every loop is bounded by N.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOOK = ROOT / "addons" / "app" / "codetrace"

CHILD = r"""
import json, socket, sys, time
n_connect, n_request = int(sys.argv[1]), int(sys.argv[2])
server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen(1024)
port = server.getsockname()[1]

def open_one():
    s = socket.create_connection(("127.0.0.1", port))
    peer, _ = server.accept()
    return s, peer

t0 = time.perf_counter()
for _ in range(n_connect):
    s, peer = open_one()
    s.close(); peer.close()
connect = (time.perf_counter() - t0) / n_connect
s, peer = open_one()
payload = b"POST /v1/convai/agents/a/simulate-conversation HTTP/1.1\r\nhost: x\r\n\r\n"
t0 = time.perf_counter()
for _ in range(n_request):
    s.sendall(payload)
    peer.recv(65536)
request = (time.perf_counter() - t0) / n_request
print(json.dumps({"connect": connect, "request": request}))
"""


def run(connects: int, requests: int, traced: bool, trace: Path) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SESSIONTAP_CODE_TRACE")}
    if traced:
        env.update(PYTHONPATH=str(HOOK), SESSIONTAP_CODE_TRACE=str(trace))
    out = subprocess.run([sys.executable, "-c", CHILD, str(connects), str(requests)], capture_output=True,
                         text=True, timeout=300, env=env, check=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connects", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "code.jsonl"
        runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
        for _ in range(args.repeat):
            for traced in (False, True):
                runs[traced].append(run(args.connects, args.requests, traced, trace))
        lines = sum(1 for _ in trace.open())
    print(f"code trace cost, {args.connects} connects and {args.requests} request writes, median of {args.repeat}:")
    print(f"{'':10}{'without':>12}{'with':>12}{'added':>12}")
    for what in ("connect", "request"):
        off = statistics.median(r[what] for r in runs[False]) * 1e6
        on = statistics.median(r[what] for r in runs[True]) * 1e6
        print(f"{what:10}{off:>10.1f}µs{on:>10.1f}µs{on - off:>10.1f}µs")
    print(f"trace lines written: {lines}")


if __name__ == "__main__":
    main()

"""Entry point: `python -m sessiontap.samples KIND [--turns N]` runs one sample client."""

from __future__ import annotations

import argparse
import sys

from sessiontap.samples.durin import SAMPLE_KINDS, run_sample
from sessiontap.samples.script import CUSTOMS_SCRIPT, MAX_TURNS


def _turns(value: str) -> int:
    try:
        turns = int(value)
    except ValueError:
        turns = 0
    if not 1 <= turns <= MAX_TURNS:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {MAX_TURNS}")
    return turns


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the sample client and return the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m sessiontap.samples",
        description=(
            "Play the customs-classification script through a replica of the ProperDurinClient. "
            "Reads ELEVENLABS_BASE_URL, ELEVENLABS_API_KEY and ELEVENLABS_AGENT_ID, and the "
            "usual proxy and CA variables. Exit codes: 0 done, 1 connection or HTTP error, "
            "2 usage error."
        ),
    )
    parser.add_argument("kind", choices=[*SAMPLE_KINDS, "all"], help="which replica ('all': each in turn)")
    parser.add_argument(
        "--turns",
        type=_turns,
        default=len(CUSTOMS_SCRIPT),
        help=f"number of user messages (default {len(CUSTOMS_SCRIPT)}; recap requests after that)",
    )
    args = parser.parse_args(argv)
    if args.kind != "all":
        return run_sample(args.kind, args.turns)
    codes = []
    for kind in SAMPLE_KINDS:
        print(f"== {kind} ==", flush=True)
        codes.append(run_sample(kind, args.turns))
    return max(codes)


if __name__ == "__main__":
    sys.exit(main())

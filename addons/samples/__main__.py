"""Entry: `python -m sessiontap.samples KIND [--turns N | --stdin] [--declare MODE] [--new-connection-per-call]`."""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Iterator

from sessiontap.samples.chat import DECLARE_MODES
from sessiontap.samples.durin import HTTP_KINDS, SAMPLE_KINDS, run_sample
from sessiontap.samples.script import CUSTOMS_SCRIPT, MAX_TURNS


def _turns(value: str) -> int:
    try:
        turns = int(value)
    except ValueError:
        turns = 0
    if not 1 <= turns <= MAX_TURNS:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {MAX_TURNS}")
    return turns


def stdin_lines() -> Iterator[str]:
    """The lines of stdin (UTF-8) without their line ends, each read only when the one before was answered."""
    if isinstance(sys.stdin, io.TextIOWrapper):
        sys.stdin.reconfigure(encoding="utf-8", errors="replace")
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(encoding="utf-8")
    for line in sys.stdin:
        yield line.rstrip("\r\n")


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
        default=None,
        help=f"number of user messages (default {len(CUSTOMS_SCRIPT)}; recap requests after that)",
    )
    parser.add_argument(
        "--declare",
        choices=DECLARE_MODES,
        help=(
            "how the client declares its session: the x-session-id header, a user_id (WebSocket "
            "initiation; a body field over HTTP), none or both (default: the kind's own: header "
            "for HTTP, both for WebSocket)"
        ),
    )
    parser.add_argument(
        "--new-connection-per-call",
        action="store_true",
        help="HTTP kinds: a new HTTP connection (so a new source port) for every call ('all': HTTP kinds only)",
    )
    parser.add_argument(
        "--stdin",
        action="store_true",
        help=(
            "line mode (the `sessiontap probe --client` contract): read the user messages from stdin, "
            "one a line, and print each agent reply alone on one line of stdout as soon as it comes; "
            "the session ends at the end of stdin"
        ),
    )
    args = parser.parse_args(argv)
    if args.stdin and (args.kind == "all" or args.turns is not None):
        parser.error("--stdin plays one kind, with the messages read from stdin (no 'all', no --turns)")
    if args.new_connection_per_call and args.kind not in (*HTTP_KINDS, "all"):
        parser.error(f"--new-connection-per-call applies to {' and '.join(HTTP_KINDS)} only")
    if args.stdin:
        return run_sample(args.kind, declare=args.declare, new_connection_per_call=args.new_connection_per_call,
                          lines=stdin_lines())
    kinds = SAMPLE_KINDS if args.kind == "all" else (args.kind,)
    codes = []
    for kind in kinds:
        if args.kind == "all":
            print(f"== {kind} ==", flush=True)
        fresh = args.new_connection_per_call and kind in HTTP_KINDS
        codes.append(run_sample(kind, args.turns, declare=args.declare, new_connection_per_call=fresh))
    return max(codes)


if __name__ == "__main__":
    sys.exit(main())

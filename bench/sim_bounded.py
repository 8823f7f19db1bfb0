"""The stock ElevenLabs simulator, its agent's reply computed over the last N turns only (no work that grows per turn).

The simulator's agent (`sessiontap.simulator.agent.reply`) re-reads the whole conversation on every reply: on a
WebSocket carrying 5,000 turns a reply costs it 60-170 ms, which would bury what a proxy adds (a few ms) and make
a 5,000-turn socket take minutes. The benchmark suite runs this launcher instead: the same server, paths, frames
and answers, with `agent.reply(history)` given `history[-N:]`. For the suite's traffic (the same four user lines
in turn, each stating one fact) the last 64 turns hold every fact, so each reply is the very text the stock
simulator would send; `bench/suite.py --stock-simulator` runs the stock one to compare.

Run: `python bench/sim_bounded.py --window 64 [any python -m sessiontap.simulator flag]`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from sessiontap.simulator import agent
from sessiontap.simulator.__main__ import main as simulator_main

DEFAULT_WINDOW = 64


def bound_reply(window: int) -> Callable[[Sequence[tuple[str, str]]], str]:
    """Make `agent.reply` (used by the server and by `simulate_turns`) look at the last `window` turns; 0: all."""
    stock = agent.reply

    def reply(history: Sequence[tuple[str, str]]) -> str:
        return stock(history[-window:] if window > 0 else history)

    agent.reply = reply
    return stock


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=False)
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW,
                        help=f"turns the agent's reply reads ({DEFAULT_WINDOW}; 0: the whole conversation)")
    args, rest = parser.parse_known_args(argv)
    bound_reply(args.window)
    simulator_main(rest)


if __name__ == "__main__":
    main()

"""What sessiontap's own hooks cost per WebSocket turn as one conversation grows (no network, no proxy).

    uv run python bench/ws_turn_cost.py --turns 5000 [--profile]

Drives the chain's hooks (mitmproxy's test flows, the real addons, a journal in a temp dir) with
one socket of N turns (a user_message and an agent_response each) and prints the mean cost per
turn over the first, a middle and the last tenth: flat means the cost does not grow with the
conversation. `--profile` prints the top functions under cProfile instead.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import tempfile
import time

from mitmproxy.test import taddons, tflow
from mitmproxy.websocket import WebSocketMessage
from wsproto.frame_protocol import Opcode

from sessiontap.sessiontap import chain


def turn_costs(turns: int) -> list[float]:
    """Seconds each turn took through every addon's websocket_message hook."""
    ours = chain()
    flow = tflow.twebsocketflow()
    flow.request.path = "/v1/convai/conversation?agent_id=bench"
    assert flow.websocket is not None
    flow.websocket.messages.clear()
    hooks = [a.websocket_message for a in ours.addons if hasattr(a, "websocket_message")]

    def send(from_client: bool, obj: dict[str, object]) -> None:
        assert flow.websocket is not None
        flow.websocket.messages.append(WebSocketMessage(Opcode.TEXT, from_client, json.dumps(obj).encode(),
                                                        time.time()))
        for hook in hooks:
            hook(flow)

    costs = []
    with taddons.context(*ours.addons) as tctx, tempfile.TemporaryDirectory() as out:
        tctx.configure(ours.journal, sessiontap_out=out)
        for addon in ours.addons:
            for name in ("request", "response"):
                if hasattr(addon, name):
                    getattr(addon, name)(flow)
        send(True, {"type": "conversation_initiation_client_data"})
        send(False, {"type": "conversation_initiation_metadata",
                     "conversation_initiation_metadata_event": {"conversation_id": "conv_bench"}})
        for i in range(turns):
            start = time.perf_counter()
            send(True, {"type": "user_message", "text": f"user message number {i} with a few words"})
            send(False, {"type": "agent_response",
                         "agent_response_event": {"agent_response": f"reply {i} " + "words " * 30}})
            costs.append(time.perf_counter() - start)
        ours.journal.done()
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=2000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(turn_costs, args.turns)
        pstats.Stats(profile).sort_stats("cumulative").print_stats(25)
        return
    costs = turn_costs(args.turns)
    tenth = max(1, len(costs) // 10)
    parts = {"first": costs[:tenth], "middle": costs[len(costs) // 2:][:tenth], "last": costs[-tenth:]}
    means = {name: 1000 * sum(c) / len(c) for name, c in parts.items()}
    print(" · ".join(f"{name} tenth {ms:.3f} ms/turn" for name, ms in means.items())
          + f" · last/first {means['last'] / means['first']:.2f}")


if __name__ == "__main__":
    main()

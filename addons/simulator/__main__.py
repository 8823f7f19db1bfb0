"""Run the ElevenLabs simulator as a process: `python -m sessiontap.simulator --port 0 --port-file P`."""

from __future__ import annotations

import argparse

from sessiontap.simulator.server import REMOVED_STATUSES, STREAM_FRAMINGS, Faults, serve


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m sessiontap.simulator", description="Run the ElevenLabs simulator."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one")
    parser.add_argument("--port-file", help="write the bound port to this file (atomically)")
    parser.add_argument("--api-key", help="accept only this xi-api-key (default: any)")
    parser.add_argument(
        "--require-signed-url", action="store_true", help="refuse sockets without a signature"
    )
    parser.add_argument(
        "--no-stream-parts", action="store_true", help="send no agent_chat_response_part frames"
    )
    parser.add_argument("--ping-interval", type=float, help="seconds between JSON pings")
    parser.add_argument("--latency", type=float, default=0.0, help="latency fault, in seconds")
    parser.add_argument("--hostile-text", help="append this text to every agent turn")
    parser.add_argument(
        "--history-echo",
        action="store_true",
        help="simulate answers repeat the partial_conversation_history sent before the new turns",
    )
    parser.add_argument(
        "--stream-framing",
        choices=STREAM_FRAMINGS,
        default="ndjson",
        help="framing of simulate-conversation/stream (default ndjson; sse: Server-Sent Events)",
    )
    parser.add_argument(
        "--simulate-removed",
        type=int,
        choices=REMOVED_STATUSES,
        help="simulate-conversation (and /stream) answer this status, as once the endpoint is removed",
    )
    args = parser.parse_args(argv)
    serve(
        args.host,
        args.port,
        port_file=args.port_file,
        api_key=args.api_key,
        require_signed_url=args.require_signed_url,
        stream_parts=not args.no_stream_parts,
        ping_interval=args.ping_interval,
        faults=Faults(latency=args.latency, hostile_text=args.hostile_text),
        history_echo=args.history_echo,
        stream_framing=args.stream_framing,
        simulate_removed=args.simulate_removed,
    )


if __name__ == "__main__":
    main()

"""Raw-httpx client for the ElevenLabs simulate-conversation endpoint.

Plays a scripted customs conversation against
  POST {ELEVENLABS_BASE_URL}/v1/convai/agents/{ELEVENLABS_AGENT_ID}/simulate-conversation[/stream]
with `xi-api-key: $ELEVENLABS_API_KEY`, one call per user message, and prints
`agent: <text>` for the agent's reply to each message (the first agent turn after
the history sent, whether or not the server echoes that history).

--behaviour  what partial_conversation_history carries on each call:
  correct              every earlier user and agent turn, then the new message
  new-conversation     only the new message (a fresh conversation per message)
  new-message-only     same wire shape as new-conversation
  drop-previous-reply  every earlier turn except the agent's latest reply
  ignored-field        only the new message; earlier turns go, as a "User: ...\\nAgent: ..."
                       transcript, into a top-level `conversation_context` field
  flattened            earlier turns as ONE user turn "User: ... Agent: ...", then the new message
--declare    how a conversation names itself: header (x-session-id: <uuid>), body
             (top-level "session_id": <uuid>), none, shared (x-session-id: conv-shared)
--transport  keep-alive (one httpx.Client per conversation) or new-connection (per call)
--stream     use /simulate-conversation/stream (NDJSON lines or SSE data: events)
"""

import json
import time
import urllib.parse
import uuid

import httpx

try:
    from . import common
except ImportError:
    import common


def build_parser():
    parser = common.make_parser(__doc__)
    parser.add_argument("--behaviour", choices=common.SIMULATE_BEHAVIOURS, default="correct")
    parser.add_argument("--declare", choices=["header", "body", "none", "shared"], default="none")
    parser.add_argument("--transport", choices=["keep-alive", "new-connection"], default="keep-alive")
    parser.add_argument("--stream", action="store_true", help="use the /stream variant")
    parser.add_argument(
        "--new-turns-limit", type=int, default=1, metavar="N", help="new_turns_limit sent with each call (default 1)"
    )
    return parser


def _turns_in(item) -> list:
    """Transcript turns inside one decoded stream item (a turn, a list, or a response object)."""
    if isinstance(item, list):
        return [t for x in item for t in _turns_in(x)]
    if isinstance(item, dict):
        if "role" in item:
            return [item]
        if isinstance(item.get("simulated_conversation"), list):
            return item["simulated_conversation"]
    return []


def read_stream(response: httpx.Response, deadline: float) -> list:
    """Concatenate the turns of a streamed answer, framed as NDJSON or as SSE."""
    turns, data = [], []

    def take(payload: str) -> None:
        if payload.strip() and payload.strip() != "[DONE]":
            turns.extend(_turns_in(json.loads(payload)))

    for line in response.iter_lines():
        if time.monotonic() > deadline:
            raise common.ClientError("stream did not finish within the timeout")
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif not line.strip():  # end of an SSE event
            take("\n".join(data))
            data.clear()
        elif not line.startswith((":", "event:", "id:", "retry:")):
            take(line)  # an NDJSON line
    take("\n".join(data))
    return turns


def simulate(client: httpx.Client, url: str, body: dict, headers: dict, args) -> list:
    """One simulate call; returns the turns the server answered with."""
    if args.stream:
        with client.stream("POST", url, json=body, headers=headers) as response:
            if response.status_code != 200:
                response.read()
                raise common.ClientError(f"HTTP {response.status_code} from {url}: {response.text[:200]}")
            return read_stream(response, time.monotonic() + args.timeout)
    response = client.post(url, json=body, headers=headers)
    if response.status_code != 200:
        raise common.ClientError(f"HTTP {response.status_code} from {url}: {response.text[:200]}")
    data = response.json()
    turns = data.get("simulated_conversation") if isinstance(data, dict) else None
    if not isinstance(turns, list):
        raise common.ClientError("response has no simulated_conversation list")
    return turns


def play(target: common.Target, args) -> None:
    session_id = "conv-shared" if args.declare == "shared" else str(uuid.uuid4())
    headers = {"xi-api-key": target.api_key}
    if args.declare in ("header", "shared"):
        headers["x-session-id"] = session_id
    agent = urllib.parse.quote(target.agent_id, safe="")
    url = f"{target.base_url}/v1/convai/agents/{agent}/simulate-conversation" + ("/stream" if args.stream else "")
    keep_alive = httpx.Client(timeout=args.timeout) if args.transport == "keep-alive" else None

    def call(history: list, extra: dict) -> list:
        body = {
            "simulation_specification": {
                "simulated_user_config": common.SIMULATED_USER_CONFIG,
                "partial_conversation_history": history,
            },
            "new_turns_limit": args.new_turns_limit,
            **extra,
        }
        if args.declare == "body":
            body["session_id"] = session_id
        if keep_alive is not None:
            return simulate(keep_alive, url, body, headers, args)
        with httpx.Client(timeout=args.timeout) as client:
            return simulate(client, url, body, headers, args)

    try:
        common.play_simulated(args, call)
    finally:
        if keep_alive is not None:
            keep_alive.close()


if __name__ == "__main__":
    common.main(build_parser(), play)

"""Raw-websockets client for the ElevenLabs agent conversation WebSocket (text only).

Connects to {ELEVENLABS_BASE_URL as ws://}/v1/convai/conversation?agent_id=$ELEVENLABS_AGENT_ID,
sends conversation_initiation_client_data with conversation.text_only, waits for
conversation_initiation_metadata, lets the agent's opening agent_response (if any
within 2 s) go by, then sends each scripted user_message and prints
`agent: <text>` for the next agent_response. JSON pings are answered with pongs.

--behaviour  one-socket (one socket per conversation) or socket-per-message (a new
             socket for every user message, each closed with code 1000)
--declare    user-id (user_id in the initiation frame), header (x-session-id: <uuid>
             on the upgrade request), none
--user-id    the user_id to declare (default: a new uuid per conversation)
--signed-url first GET /v1/convai/conversation/get-signed-url (with xi-api-key) and
             connect to the returned signed_url, once per socket
"""

import contextlib
import json
import time
import urllib.parse
import uuid

import httpx
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

try:
    from . import common
except ImportError:
    import common

OPENING_WAIT = 2.0


def build_parser():
    parser = common.make_parser(__doc__)
    parser.add_argument("--behaviour", choices=["one-socket", "socket-per-message"], default="one-socket")
    parser.add_argument("--declare", choices=["user-id", "header", "none"], default="none")
    parser.add_argument("--user-id", metavar="ID", help="fixed user_id for --declare user-id")
    parser.add_argument("--signed-url", action="store_true", help="connect through get-signed-url")
    return parser


def socket_url(target: common.Target, args, headers: dict) -> str:
    if not args.signed_url:
        return f"{target.ws_base}/v1/convai/conversation?" + urllib.parse.urlencode({"agent_id": target.agent_id})
    response = httpx.get(
        f"{target.base_url}/v1/convai/conversation/get-signed-url",
        params={"agent_id": target.agent_id},
        headers={"xi-api-key": target.api_key, **headers},
        timeout=args.timeout,
    )
    if response.status_code != 200:
        raise common.ClientError(f"HTTP {response.status_code} from get-signed-url: {response.text[:200]}")
    signed = response.json().get("signed_url")
    if not isinstance(signed, str) or not signed.startswith(("ws://", "wss://")):
        raise common.ClientError(f"get-signed-url gave no usable signed_url: {signed!r}")
    return signed


def next_event(ws: ClientConnection, kind: str, wait: float):
    """The next event of type `kind` within `wait` seconds (None if none came); pings are answered."""
    deadline = time.monotonic() + wait
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            event = json.loads(ws.recv(timeout=remaining))
        except TimeoutError:
            return None
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else 1006
            raise common.ClientError(f"socket closed while waiting for {kind}: code {code}") from None
        if event.get("type") == "ping":
            ping = event.get("ping_event") or {}
            ws.send(json.dumps({"type": "pong", "event_id": ping.get("event_id", event.get("event_id"))}))
        elif event.get("type") == kind:
            return event
    return None


@contextlib.contextmanager
def conversation_socket(target: common.Target, args, user_id: str, session_id: str):
    """Connect, initiate a text-only conversation, let the opening message go by,
    and close the socket with code 1000 when done."""
    headers = {"x-session-id": session_id} if args.declare == "header" else {}
    with connect(
        socket_url(target, args, headers),
        additional_headers=headers,
        open_timeout=args.timeout,
        close_timeout=args.timeout,
        max_size=16 * 1024 * 1024,
    ) as ws:
        init = {
            "type": "conversation_initiation_client_data",
            "conversation_config_override": {"conversation": {"text_only": True}},
        }
        if args.declare == "user-id":
            init["user_id"] = user_id
        ws.send(json.dumps(init))
        if next_event(ws, "conversation_initiation_metadata", args.timeout) is None:
            raise common.ClientError("no conversation_initiation_metadata within the timeout")
        next_event(ws, "agent_response", OPENING_WAIT)
        try:
            yield ws
        finally:
            ws.close(1000)


def ask(ws: ClientConnection, text: str, timeout: float) -> str:
    ws.send(json.dumps({"type": "user_message", "text": text}))
    event = next_event(ws, "agent_response", timeout)
    if event is None:
        raise common.ClientError("no agent_response within the timeout")
    return event["agent_response_event"]["agent_response"].strip()


def play(target: common.Target, args) -> None:
    user_id, session_id = args.user_id or str(uuid.uuid4()), str(uuid.uuid4())
    per_socket = [args.messages] if args.behaviour == "one-socket" else ([m] for m in args.messages)  # lazy: --stdin
    for messages in per_socket:
        with conversation_socket(target, args, user_id, session_id) as ws:
            for message in messages:
                common.say(ask(ws, message, args.timeout))


if __name__ == "__main__":
    common.main(build_parser(), play)

"""Client built on the official `elevenlabs` Python SDK only (ElevenLabs(base_url=...)).

Plays the scripted customs conversation and prints `agent: <text>` per agent reply.

--protocol http       client.conversational_ai.agents.simulate_conversation(), one call
                      per user message; --behaviour as in http_client.py: correct,
                      new-conversation, new-message-only, drop-previous-reply,
                      ignored-field, flattened (default correct)
--protocol websocket  elevenlabs.conversational_ai.conversation.Conversation, text only
                      (audio_interface=None); --behaviour one-socket (default) or
                      socket-per-message (a new Conversation per user message)
--declare   http: header (x-session-id: <uuid>, via ElevenLabs(headers=...)), body
            (top-level "session_id" via request_options), shared (x-session-id:
            conv-shared), none; websocket: user-id (Conversation(user_id=...)), none
--user-id   the user_id to declare (default: a new uuid per conversation)
--signed-url  websocket only: Conversation(requires_auth=True), i.e. the SDK fetches
            get-signed-url first and connects to the URL it returns
"""

import logging
import queue
import time
import uuid

from elevenlabs import ElevenLabs
from elevenlabs.conversational_ai.conversation import Conversation, ConversationInitiationData
from elevenlabs.core.api_error import ApiError

try:
    from . import common
except ImportError:
    import common

SOCKET_BEHAVIOURS = ["one-socket", "socket-per-message"]
DECLARE = {"http": ["none", "header", "body", "shared"], "websocket": ["none", "user-id"]}
OPENING_WAIT = 2.0

# The SDK logs socket errors itself; they reach us via callback_disconnect and are
# reported as the one stderr line, so keep its logger from printing them too.
logging.getLogger("elevenlabs").addHandler(logging.NullHandler())


def build_parser():
    parser = common.make_parser(__doc__)
    parser.add_argument("--protocol", choices=["http", "websocket"], default="http")
    parser.add_argument(
        "--behaviour",
        choices=common.SIMULATE_BEHAVIOURS + SOCKET_BEHAVIOURS,
        help="default: correct (http) or one-socket (websocket)",
    )
    parser.add_argument("--declare", choices=sorted(set(DECLARE["http"] + DECLARE["websocket"])), default="none")
    parser.add_argument("--user-id", metavar="ID", help="fixed user_id for --declare user-id")
    parser.add_argument("--signed-url", action="store_true", help="websocket: requires_auth=True")
    parser.add_argument(
        "--new-turns-limit", type=int, default=1, metavar="N", help="http: new_turns_limit per call (default 1)"
    )
    return parser


def check(args):
    websocket = args.protocol == "websocket"
    if args.behaviour is None:
        args.behaviour = "one-socket" if websocket else "correct"
    if (args.behaviour in SOCKET_BEHAVIOURS) != websocket:
        return f"--behaviour {args.behaviour} does not go with --protocol {args.protocol}"
    if args.declare not in DECLARE[args.protocol]:
        return f"--declare {args.declare} does not go with --protocol {args.protocol}"
    if args.signed_url and not websocket:
        return "--signed-url needs --protocol websocket"
    return None


def play_http(target: common.Target, args) -> None:
    session_id = "conv-shared" if args.declare == "shared" else str(uuid.uuid4())
    client = ElevenLabs(
        api_key=target.api_key,
        base_url=target.base_url,
        timeout=args.timeout,
        headers={"x-session-id": session_id} if args.declare in ("header", "shared") else None,
    )

    def call(history: list, extra: dict) -> list:
        if args.declare == "body":
            extra = {**extra, "session_id": session_id}
        result = client.conversational_ai.agents.simulate_conversation(
            target.agent_id,
            simulation_specification={
                "simulated_user_config": common.SIMULATED_USER_CONFIG,
                "partial_conversation_history": history,
            },
            new_turns_limit=args.new_turns_limit,
            request_options={"additional_body_parameters": extra} if extra else None,
        )
        return [{"role": t.role, "message": t.message} for t in result.simulated_conversation]

    common.play_simulated(args, call)


class Session:
    """One SDK Conversation (one socket) whose agent replies are queued by the callback."""

    def __init__(self, client: ElevenLabs, target: common.Target, args, user_id):
        self.replies, self.ended, self.started = queue.Queue(), None, False
        self.conversation = Conversation(
            client,
            target.agent_id,
            user_id=user_id,
            requires_auth=args.signed_url,
            audio_interface=None,
            config=ConversationInitiationData(conversation_config_override={"conversation": {"text_only": True}}),
            callback_agent_response=self.replies.put,
            callback_disconnect=self._disconnected,
        )

    def _disconnected(self, details) -> None:
        self.ended = details

    def _check_alive(self) -> None:
        if self.ended is not None and self.ended.reason != "user":
            d = self.ended
            detail = d.message or d.close_reason or ""
            raise common.ClientError(f"SDK session ended ({d.reason}, code {d.close_code}): {detail}")

    def next_reply(self, wait: float):
        deadline = time.monotonic() + wait
        while True:
            try:
                return self.replies.get(timeout=max(0.0, min(0.1, deadline - time.monotonic())))
            except queue.Empty:
                self._check_alive()
                if time.monotonic() >= deadline:
                    return None

    def start(self) -> None:
        self.conversation.start_session()
        self.started = True
        self.next_reply(OPENING_WAIT)  # the agent's opening message, if any, is not a reply

    def ask(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:  # send_user_message raises RuntimeError until the socket is open
            try:
                self.conversation.send_user_message(text)
                break
            except RuntimeError:
                self._check_alive()
                if time.monotonic() >= deadline:
                    raise common.ClientError("SDK socket did not open within the timeout") from None
                time.sleep(0.05)
        reply = self.next_reply(deadline - time.monotonic())
        if reply is None:
            raise common.ClientError("no agent_response within the timeout")
        return reply

    def close(self) -> None:
        self.conversation.end_session()
        if self.started:
            self.conversation.wait_for_session_end()


def play_websocket(target: common.Target, args) -> None:
    client = ElevenLabs(api_key=target.api_key, base_url=target.base_url, timeout=args.timeout)
    user_id = (args.user_id or str(uuid.uuid4())) if args.declare == "user-id" else None
    per_socket = [args.messages] if args.behaviour == "one-socket" else ([m] for m in args.messages)  # lazy: --stdin
    for messages in per_socket:
        session = Session(client, target, args, user_id)
        try:
            session.start()
            for message in messages:
                common.say(session.ask(message, args.timeout))
        finally:
            session.close()


def play(target: common.Target, args) -> None:
    try:
        (play_websocket if args.protocol == "websocket" else play_http)(target, args)
    except ApiError as exc:  # its str() dumps every response header
        raise common.ClientError(f"HTTP {exc.status_code} from the SDK: {str(exc.body)[:200]}") from None


if __name__ == "__main__":
    common.main(build_parser(), play, check)

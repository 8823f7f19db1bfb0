"""Shared plumbing for the matrix clients: the customs script, the target from the
environment, the common command-line flags, simulate-conversation history shapes,
and the fan-out of conversations over threads."""

import argparse
import json
import os
import sys
import threading
import time

DEFAULT_MESSAGES = [
    "I need to classify cotton t-shirts for import.",
    "They are made in Vietnam.",
    "The fabric is 100% cotton, knitted.",
    "The declared value is $12,000 for 2,000 units.",
    "The customs officer says the shirts have a printed logo; does that change the HS code?",
]
DEFAULT_AGENT_ID = "agent_customs_demo"
DEFAULT_TIMEOUT = 15.0

# Persona of the simulated user; every user turn is scripted, so it never gets to speak.
SIMULATED_USER_CONFIG = {
    "prompt": {"prompt": "You are an importer asking a customs broker how to classify a shipment."}
}
SIMULATE_BEHAVIOURS = [
    "correct",
    "new-conversation",
    "new-message-only",
    "drop-previous-reply",
    "ignored-field",
    "flattened",
]


class ClientError(Exception):
    """A failure reported as one line on stderr."""


class Target:
    """Where to connect, read like the SDK's users do: ELEVENLABS_BASE_URL/_API_KEY/_AGENT_ID."""

    def __init__(self) -> None:
        base = os.environ.get("ELEVENLABS_BASE_URL", "").strip().rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise ClientError("ELEVENLABS_BASE_URL must be set to an http(s):// URL")
        self.base_url = base
        self.ws_base = "ws" + base[len("http") :]  # http -> ws, https -> wss
        self.api_key = os.environ.get("ELEVENLABS_API_KEY", "")
        self.agent_id = os.environ.get("ELEVENLABS_AGENT_ID") or DEFAULT_AGENT_ID


def _message_list(text: str) -> list:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, list) or not value or not all(isinstance(m, str) for m in value):
        raise argparse.ArgumentTypeError("must be a non-empty JSON list of strings")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def make_parser(doc: str) -> argparse.ArgumentParser:
    """A parser with the flags every client shares; `doc` is the client's module docstring."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--messages",
        type=_message_list,
        default=DEFAULT_MESSAGES,
        help="JSON list of user messages (default: the five-message customs script)",
    )
    parser.add_argument(
        "--conversations",
        type=_positive_int,
        default=1,
        metavar="N",
        help="conversations to play one after another (default 1)",
    )
    parser.add_argument(
        "--concurrent",
        type=_positive_int,
        default=1,
        metavar="K",
        help="copies of the whole run to play at once, in threads (default 1)",
    )
    parser.add_argument(
        "--stdin",
        action="store_true",
        help="sessiontap probe's line contract: user messages from stdin, one a line, each reply printed "
        "alone on one stdout line before the next is read",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"bound on every wait (default {DEFAULT_TIMEOUT:g})",
    )
    return parser


_print_lock = threading.Lock()
_prefix = "agent: "  # none under --stdin: the line is the reply


def say(reply: str) -> None:
    """Print one agent reply as one stdout line (inner line breaks become spaces)."""
    line = _prefix + " ".join(reply.splitlines())
    with _print_lock:
        print(line, flush=True)


def turn(role: str, message: str, secs: int) -> dict:
    return {"role": role, "message": message, "time_in_call_secs": secs}


def simulate_request(behaviour: str, transcript: list, message: str, secs: int) -> tuple:
    """Return (partial_conversation_history, extra top-level body fields) for one call.

    `transcript` is the true conversation so far (user and agent turns, in order);
    `message` is the new user message, sent as the last history turn."""
    new = turn("user", message, secs)
    if behaviour == "correct":
        return transcript + [new], {}
    if behaviour in ("new-conversation", "new-message-only"):
        return [new], {}
    if behaviour == "drop-previous-reply":
        earlier = list(transcript)
        for i in range(len(earlier) - 1, -1, -1):
            if earlier[i]["role"] == "agent":
                del earlier[i]
                break
        return earlier + [new], {}
    labelled = [f"{t['role'].capitalize()}: {t['message']}" for t in transcript]
    if behaviour == "ignored-field":
        return [new], {"conversation_context": "\n".join(labelled)}
    if behaviour == "flattened":
        flat = [turn("user", " ".join(labelled), transcript[0]["time_in_call_secs"])] if transcript else []
        return flat + [new], {}
    raise ValueError(f"unknown behaviour {behaviour!r}")


def _same_turn(sent: dict, got: dict) -> bool:
    return (
        sent.get("role") == got.get("role")
        and (sent.get("message") or "").strip() == (got.get("message") or "").strip()
    )


def agent_reply(sent: list, returned: list) -> str:
    """The first agent turn of `returned` that comes after the history we `sent`,
    whether or not the server echoed that history at the start of its answer."""
    echoed = len(returned) >= len(sent) and all(_same_turn(s, r) for s, r in zip(sent, returned, strict=False))
    for t in returned[len(sent) if echoed else 0 :]:
        if t.get("role") == "agent" and (t.get("message") or "").strip():
            return t["message"].strip()
    raise ClientError(f"no agent turn after the {len(sent)} history turns in simulated_conversation")


def play_simulated(args, call) -> None:
    """Play args.messages over a stateless simulate endpoint, keeping the true transcript
    locally; `call(history, extra_fields)` makes one request and returns its turns."""
    transcript, started = [], time.monotonic()
    for message in args.messages:
        history, extra = simulate_request(args.behaviour, transcript, message, int(time.monotonic() - started))
        reply = agent_reply(history, call(history, extra))
        say(reply)
        transcript += [history[-1], turn("agent", reply, int(time.monotonic() - started))]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, ClientError) else f"{type(exc).__name__}: {text}"


def main(parser: argparse.ArgumentParser, play, check=None) -> None:
    """Parse flags (`check(args)` may return a usage error), then run `play(target, args)`
    once per conversation in each of `--concurrent` threads. Exit 0 on success, else 1
    with one line on stderr."""
    global _prefix
    args = parser.parse_args()
    if check and (problem := check(args)):
        parser.error(problem)
    if args.stdin:
        if args.conversations > 1 or args.concurrent > 1:
            parser.error("--stdin plays one conversation: no --conversations or --concurrent")
        args.messages = (line.rstrip("\n") for line in sys.stdin if line.strip())  # read as they come
        _prefix = ""
    errors = []
    try:
        target = Target()
    except ClientError as exc:
        errors.append(exc)
    else:

        def copy() -> None:
            try:
                for _ in range(args.conversations):
                    play(target, args)
            except Exception as exc:  # reported below, once
                errors.append(exc)

        threads = [threading.Thread(target=copy, name=f"copy-{k}") for k in range(args.concurrent)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()  # every wait inside play() is bounded by --timeout
    if errors:
        print(f"error: {_one_line(errors[0])}", file=sys.stderr, flush=True)
        sys.exit(1)
    sys.exit(0)

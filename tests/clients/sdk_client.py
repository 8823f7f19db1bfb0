"""The official elevenlabs SDK, unchanged, as a client: simulate, then text-only conversations."""

import os
import sys
import threading

from elevenlabs import ElevenLabs
from elevenlabs.conversational_ai.conversation import Conversation

AGENT = "agent_customs_demo"
TIMEOUT = 15


def converse(client: ElevenLabs, requires_auth: bool, messages: list[str]) -> list[str]:
    replies: list[str] = []
    got = threading.Event()

    def on_reply(text: str) -> None:
        replies.append(text)
        got.set()

    conv = Conversation(client, AGENT, requires_auth=requires_auth, audio_interface=None,
                        callback_agent_response=on_reply)
    conv.start_session()
    try:
        if not got.wait(TIMEOUT):
            raise SystemExit("no opening line")
        for msg in messages:
            got.clear()
            conv.send_user_message(msg)
            if not got.wait(TIMEOUT):
                raise SystemExit(f"no reply to {msg!r}")
    finally:
        conv.end_session()
        conv.wait_for_session_end()
    return replies


def main() -> None:
    base = os.environ.get("ELEVENLABS_BASE_URL")
    client = ElevenLabs(api_key=os.environ["ELEVENLABS_API_KEY"], **({"base_url": base} if base else {}))
    sim = client.conversational_ai.agents.simulate_conversation(
        agent_id=AGENT,
        simulation_specification={"simulated_user_config": {"first_message": "hi"},
                                  "partial_conversation_history": [
                                      {"role": "user", "message": "I need to classify cotton t-shirts",
                                       "time_in_call_secs": 0}]},
        new_turns_limit=1,
    )
    print("simulate:", sim.simulated_conversation[0].message)
    for auth in [False, True] if "--auth" in sys.argv else [False]:
        replies = converse(client, auth, ["I need to classify cotton t-shirts", "They are made in Vietnam."])
        for r in replies:
            print(f"conversation(auth={auth}):", r)


if __name__ == "__main__":
    main()

"""A client that carries every kind of secret ElevenLabs traffic holds, for the secrets scan.

1. simulate-conversation with the xi-api-key header, a `secret__pin` dynamic variable in the
   body and a user message quoting the pin (the agent's reply quotes it back);
2. get-signed-url (xi-api-key), then the signed socket (`conversation_signature` in its URL),
   a `secret__otp` dynamic variable in the initiation frame and a user message quoting it;
3. conversation/token, then a socket with `conversation_token` in its URL.

Secrets come from SECRET_PIN and SECRET_OTP; prints `agent: <text>` per reply.
"""

import json
import os
import urllib.parse

import httpx
from websockets.sync.client import connect

try:
    from . import common
    from .ws_client import ask, next_event
except ImportError:
    import common
    from ws_client import ask, next_event


def talk(url: str, variables: dict, text: str, timeout: float) -> None:
    with connect(url, open_timeout=timeout, close_timeout=timeout) as ws:
        ws.send(json.dumps({"type": "conversation_initiation_client_data", "dynamic_variables": variables,
                            "conversation_config_override": {"conversation": {"text_only": True}}}))
        if next_event(ws, "conversation_initiation_metadata", timeout) is None:
            raise common.ClientError("no conversation_initiation_metadata")
        next_event(ws, "agent_response", 2.0)  # the opening line
        common.say(ask(ws, text, timeout))
        ws.close(1000)


def play(target: common.Target, args) -> None:
    pin, otp = os.environ["SECRET_PIN"], os.environ["SECRET_OTP"]
    key = {"xi-api-key": target.api_key}
    agent = {"agent_id": target.agent_id}
    with httpx.Client(timeout=args.timeout, headers=key) as http:
        body = {"simulation_specification": {
            "simulated_user_config": common.SIMULATED_USER_CONFIG,
            "dynamic_variables": {"secret__pin": pin},
            "partial_conversation_history": [common.turn("user", f"My pin is {pin}", 0)]}}
        reply = http.post(f"{target.base_url}/v1/convai/agents/{target.agent_id}/simulate-conversation", json=body)
        reply.raise_for_status()
        common.say(common.agent_reply(body["simulation_specification"]["partial_conversation_history"],
                                      reply.json()["simulated_conversation"]))
        signed = http.get(f"{target.base_url}/v1/convai/conversation/get-signed-url", params=agent).json()
        talk(signed["signed_url"], {"secret__otp": otp}, f"The code is {otp}", args.timeout)
        token = http.get(f"{target.base_url}/v1/convai/conversation/token", params=agent).json()["token"]
    query = urllib.parse.urlencode({**agent, "conversation_token": token})
    talk(f"{target.ws_base}/v1/convai/conversation?{query}", {}, "Hello again", args.timeout)


if __name__ == "__main__":
    common.main(common.make_parser(__doc__), play)

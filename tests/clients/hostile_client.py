"""A client whose conversation text is an XSS corpus: the report must show all of it as text and run none of it.

Usage: hostile_client.py (reads ELEVENLABS_BASE_URL). The corpus is in XSS_CORPUS; the
simulator adds it to every agent turn too (Faults.hostile_text).
"""

import json
import os
import sys

import httpx
from websockets.sync.client import connect

XSS_CORPUS = (
    '<script>window.__pwned=1</script>'
    '</script><script>window.__pwned=2</script>'
    '<img src=x onerror="window.__pwned=3">'
    '<svg onload="window.__pwned=4"><script>window.__pwned=5</script></svg>'
    '<a href="javascript:window.__pwned=6">click</a>'
    '"><iframe srcdoc="<script>parent.__pwned=7</script>"></iframe>'
    "{{ 7*7 }} ]]> <!-- --> \u202eRTL\u202c \U0001F600 "
    + "x" * 3000
)


def main() -> None:
    base = os.environ["ELEVENLABS_BASE_URL"]
    path = "/v1/convai/agents/agent_customs_demo/simulate-conversation"
    history: list[dict] = []
    with httpx.Client(timeout=10) as http:
        for text in ("I need to classify " + XSS_CORPUS, "They are made in <b>Vietnam</b>" + XSS_CORPUS[:200]):
            history.append({"role": "user", "message": text, "time_in_call_secs": len(history)})
            body = {"simulation_specification": {"simulated_user_config": {"first_message": text},
                                                 "partial_conversation_history": history},
                    "new_turns_limit": 1}
            headers = {"xi-api-key": "sk_hostile", "x-session-id": "<svg onload=x>"}
            r = http.post(base + path, json=body, headers=headers)
            r.raise_for_status()
            turns = r.json()["simulated_conversation"]
            history.append({"role": "agent", "message": turns[-1]["message"], "time_in_call_secs": len(history)})

    ws_url = base.replace("http", "ws", 1) + "/v1/convai/conversation?agent_id=agent_customs_demo"
    with connect(ws_url, open_timeout=10, close_timeout=5) as ws:
        ws.send(json.dumps({"type": "conversation_initiation_client_data", "user_id": "</script><script>x()</script>"}))
        ws.send(json.dumps({"type": "contextual_update", "text": XSS_CORPUS[:300]}))
        ws.send(json.dumps({"type": "user_message", "text": XSS_CORPUS[:400]}))
        while json.loads(ws.recv(timeout=10))["type"] != "agent_response":
            pass
    print("hostile client done")


if __name__ == "__main__":
    main()
    sys.exit(0)

"""A client that sends what a careful proxy must pass through untouched: bad JSON, binary, unknown types.

Prints one JSON line per probe with what it got back, so a test can compare a direct run
with a run through the proxy.
"""

import json
import os
import sys

import httpx
from websockets.sync.client import connect

base = os.environ["ELEVENLABS_BASE_URL"]
key = os.environ.get("ELEVENLABS_API_KEY", "sk_odd_client_key")
path = "/v1/convai/agents/agent_customs_demo/simulate-conversation"
with httpx.Client(timeout=10) as http:
    r = http.post(base + path, content=b'{"simulation_specification": {oops', headers={
        "xi-api-key": key, "content-type": "application/json"})
    print(json.dumps({"probe": "invalid-json", "status": r.status_code, "body": r.text}))

ws_url = base.replace("http", "ws", 1) + "/v1/convai/conversation?agent_id=agent_customs_demo"
with connect(ws_url, open_timeout=10, close_timeout=5) as ws:
    ws.send(json.dumps({"type": "conversation_initiation_client_data", "user_id": "odd-user"}))
    seen = [json.loads(ws.recv(timeout=10))["type"], json.loads(ws.recv(timeout=10))["type"]]
    ws.send(b"\x00\x01binary-frame\xff")
    ws.send(json.dumps({"type": "made_up_type", "x": 1}))
    ws.send(json.dumps({"type": "user_message", "text": "I need to classify cotton t-shirts"}))
    while True:
        msg = json.loads(ws.recv(timeout=10))
        if msg["type"] == "agent_response":
            seen.append(msg["agent_response_event"]["agent_response"])
            break
    print(json.dumps({"probe": "websocket", "seen": seen}))
sys.exit(0)

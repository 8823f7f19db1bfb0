"""Tests for addons/app/har.py: HAR export of real captures (sessiontap's and plain mitmdump's), secrets removed."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from mitmproxy import io as mio
from mitmproxy.test import tflow

from sessiontap.app.capture import read_flows
from sessiontap.app.har import export_har, make_har
from sessiontap.core.redact import MASK
from tests.conftest import MITMDUMP, clean_env, free_port, wait_for_port

KEY = "sk_test_HARKEY0123456789abcdef"
BINARY = b"\x00\x01binary-frame\xff"

# One HTTP call and one text conversation (with a binary frame), with secrets where the
# brief says they travel: the xi-api-key header, a token query parameter, a signed URL.
CLIENT = f"""
import json, os, sys
from urllib.parse import urlsplit
import httpx
from websockets.sync.client import connect

base = os.environ["ELEVENLABS_BASE_URL"]
key = os.environ["ELEVENLABS_API_KEY"]
agent = "agent_customs_demo"
with httpx.Client(timeout=10, trust_env=False) as http:
    r = http.post(f"{{base}}/v1/convai/agents/{{agent}}/simulate-conversation", headers={{"xi-api-key": key}},
                  json={{"simulation_specification": {{"simulated_user_config": {{"first_message": "hi"}},
                         "partial_conversation_history": [{{"role": "user", "message": "cotton t-shirts",
                                                            "time_in_call_secs": 0}}]}}, "new_turns_limit": 1}})
    r.raise_for_status()
    signed_url = None
    if "--secrets" in sys.argv:
        http.get(f"{{base}}/v1/convai/agents/{{agent}}", params={{"token": key}}, headers={{"xi-api-key": key}})
        http.get(f"{{base}}/v1/convai/conversation/token", params={{"agent_id": agent}}, headers={{"xi-api-key": key}})
        signed = http.get(f"{{base}}/v1/convai/conversation/get-signed-url", params={{"agent_id": agent}},
                          headers={{"xi-api-key": key}}).json()["signed_url"]
        signed_url = urlsplit(signed)._replace(netloc=urlsplit(base).netloc).geturl()

url = signed_url or base.replace("http", "ws", 1) + f"/v1/convai/conversation?agent_id={{agent}}"
with connect(url, open_timeout=10, close_timeout=5, proxy=None) as ws:
    ws.send(json.dumps({{"type": "conversation_initiation_client_data", "user_id": "har-user"}}))
    for _ in range(2):
        ws.recv(timeout=10)
    ws.send({BINARY!r})
    ws.send(json.dumps({{"type": "user_message", "text": "I need to classify cotton t-shirts"}}))
    while json.loads(ws.recv(timeout=10))["type"] != "agent_response":
        pass
print("done")
"""


def client_command(tmp_path: Path, *args: str) -> list[str]:
    script = tmp_path / "har_client.py"
    script.write_text(CLIENT)
    return [sys.executable, str(script), *args]


def entry_shape_ok(entry: dict[str, Any]) -> None:
    assert isinstance(entry["startedDateTime"], str) and entry["startedDateTime"].endswith("+00:00")
    assert isinstance(entry["time"], int | float)
    request, response = entry["request"], entry["response"]
    assert {"method", "url", "httpVersion", "headers", "queryString", "cookies", "headersSize", "bodySize"} <= set(
        request)
    assert {"status", "statusText", "httpVersion", "headers", "content", "redirectURL"} <= set(response)
    assert all({"name", "value"} == set(h) for h in request["headers"] + response["headers"])
    assert {"send", "wait", "receive"} <= set(entry["timings"])
    assert "cache" in entry


def test_a_recorded_http_and_websocket_conversation_exports_as_har(tmp_path, simulator, sessiontap):
    run = sessiontap("record", "--mode", "reverse", "--upstream", simulator.url, "--", *client_command(tmp_path),
                     env={"ELEVENLABS_API_KEY": KEY})
    assert run.code == 0, run.stderr
    flows = read_flows(run.out).flows
    har = export_har(flows, tmp_path / "out.har")
    assert json.loads((tmp_path / "out.har").read_text()) == har

    log = har["log"]
    assert log["version"] == "1.2"
    assert log["creator"]["name"] == "sessiontap" and log["creator"]["version"]
    assert log["creator"]["comment"].startswith("entries built by mitmproxy 12.")
    assert len(log["entries"]) == len(flows) == 2
    for entry in log["entries"]:
        entry_shape_ok(entry)

    post, socket_entry = log["entries"]
    assert post["request"]["method"] == "POST"
    assert post["request"]["url"].endswith("/v1/convai/agents/agent_customs_demo/simulate-conversation")
    assert json.loads(post["request"]["postData"]["text"])["new_turns_limit"] == 1
    assert post["response"]["status"] == 200
    assert json.loads(post["response"]["content"]["text"])["simulated_conversation"]
    assert "_webSocketMessages" not in post

    assert socket_entry["_resourceType"] == "websocket"
    assert socket_entry["response"]["status"] == 101
    messages = socket_entry["_webSocketMessages"]
    assert all(set(m) == {"type", "time", "opcode", "data"} for m in messages)
    sends = [m for m in messages if m["type"] == "send"]
    receives = [m for m in messages if m["type"] == "receive"]
    assert len(sends) + len(receives) == len(messages)
    assert [m["opcode"] for m in sends] == [1, 2, 1]
    assert json.loads(sends[0]["data"])["type"] == "conversation_initiation_client_data"
    assert base64.b64decode(sends[1]["data"]) == BINARY
    assert json.loads(sends[2]["data"]) == {"type": "user_message", "text": "I need to classify cotton t-shirts"}
    kinds = [(m["type"], json.loads(m["data"])["type"]) for m in messages if m["opcode"] == 1]
    assert kinds[:3] == [("send", "conversation_initiation_client_data"),
                         ("receive", "conversation_initiation_metadata"), ("receive", "agent_response")]
    assert kinds[3] == ("send", "user_message") and kinds[-1] == ("receive", "agent_response")
    times = [m["time"] for m in messages]
    assert all(isinstance(t, float) and t > 1e9 for t in times) and times == sorted(times)
    assert KEY not in (tmp_path / "out.har").read_text()


def plain_mitmdump_capture(tmp_path: Path, upstream: str, home: Path) -> list[Any]:
    """Run the client through plain mitmdump -w (no sessiontap, nothing redacted); the flows."""
    port, capture = free_port(), tmp_path / "plain.mitm"
    proc = subprocess.Popen([MITMDUMP, "-q", "--listen-host", "127.0.0.1", "-p", str(port),
                             "--mode", f"reverse:{upstream}", "--set", "connection_strategy=lazy",
                             "--set", f"confdir={home}", "-w", str(capture)],
                            env=clean_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_port(port)
        run = subprocess.run(client_command(tmp_path, "--secrets"), capture_output=True, text=True, timeout=60,
                             env=clean_env(home, ELEVENLABS_BASE_URL=f"http://127.0.0.1:{port}",
                                           ELEVENLABS_API_KEY=KEY))
        assert run.returncode == 0, run.stderr
    finally:
        proc.terminate()
        proc.wait(15)
    with open(capture, "rb") as f:
        return list(mio.FlowReader(f).stream())


def test_secrets_of_a_plain_mitmdump_capture_never_reach_the_har(tmp_path, simulator, sessiontap_home):
    flows = plain_mitmdump_capture(tmp_path, simulator.url, sessiontap_home)
    by_path = {f.request.path.split("?")[0]: f for f in flows}
    agent = by_path["/v1/convai/agents/agent_customs_demo"]
    assert agent.request.headers["xi-api-key"] == KEY and agent.request.query["token"] == KEY  # really unredacted
    token = json.loads(by_path["/v1/convai/conversation/token"].response.content)["token"]
    signed_socket = next(f for f in flows if f.websocket is not None)
    signature = signed_socket.request.query["conversation_signature"]
    assert signature in by_path["/v1/convai/conversation/get-signed-url"].response.content.decode()

    path = tmp_path / "plain.har"
    har = export_har(flows, path)
    text = path.read_text()
    for secret in (KEY, token, signature):
        assert secret not in text
    entries = {e["request"]["url"].split("?")[0].split(":", 2)[-1].split("/", 1)[-1]: e for e in har["log"]["entries"]}
    agent_entry = entries["v1/convai/agents/agent_customs_demo"]
    assert {"name": "xi-api-key", "value": MASK} in agent_entry["request"]["headers"]
    assert {"name": "token", "value": MASK} in agent_entry["request"]["queryString"]
    assert entries["v1/convai/conversation"]["_resourceType"] == "websocket"
    assert {"name": "conversation_signature", "value": MASK} in entries["v1/convai/conversation"]["request"][
        "queryString"]
    # the live flows themselves are untouched
    assert agent.request.headers["xi-api-key"] == KEY


def test_a_secret_first_seen_in_a_later_flow_is_masked_in_an_earlier_one():
    echo = tflow.tflow(resp=True)
    assert echo.response is not None
    echo.response.text = "your key is plain-key-value-42 (echoed)"
    keyed = tflow.tflow(resp=True)
    keyed.request.headers["xi-api-key"] = "plain-key-value-42"
    text = json.dumps(make_har([echo, keyed]))
    assert "plain-key-value-42" not in text
    assert f"your key is {MASK} (echoed)" in text


def test_export_command_writes_the_demo_capture_as_har(demo_capture, sessiontap, tmp_path):
    out, _ = demo_capture
    target = tmp_path / "demo.har"
    run = sessiontap("export", str(out), "--har", str(target))
    assert run.code == 0, run.stderr
    har = json.loads(target.read_text())
    sockets = [e for e in har["log"]["entries"] if e.get("_resourceType") == "websocket"]
    assert len(sockets) >= 6 and all(e["_webSocketMessages"] for e in sockets)
    assert f"({len(sockets)} WebSocket) written to {target}" in run.stderr
    assert "sk_test_analysis_key_000" not in target.read_text()
    missing = sessiontap("export", str(tmp_path / "nope.mitm"), "--har", str(target))
    assert missing.code == 2

"""Streamed replies reach the client as the server sends them, and are still decoded and saved whole."""

from __future__ import annotations

import json
import sys

import pytest
from mitmproxy import io as mio

from sessiontap.simulator.server import Faults, running_simulator

LATENCY = 0.3  # the simulator sleeps this long before each agent turn it streams

# Times each streamed line as it arrives (relative to the request) and keeps the exact bytes.
CLIENT = r"""
import json, os, sys, time, httpx
url = os.environ.get("STREAM_URL") or os.environ["ELEVENLABS_BASE_URL"]
body = {"simulation_specification": {"simulated_user_config": {"first_message": "Hi"},
        "partial_conversation_history": [
            {"role": "user", "message": "Classify a ceramic mug", "time_in_call_secs": 0}]},
        "new_turns_limit": 4}
start = time.monotonic()
lines, raw = [], b""
with httpx.Client(timeout=30, headers={"xi-api-key": "sk_test_stream"}) as client, client.stream(
        "POST", url + "/v1/convai/agents/agent_customs_demo/simulate-conversation/stream", json=body) as r:
    for chunk in r.iter_raw():
        raw += chunk
        lines.append([round(time.monotonic() - start, 3), len(chunk)])
print("RESULT " + json.dumps({"status": r.status_code, "chunks": lines, "body": raw.decode()}))
"""


def _result(stdout: str) -> dict:
    line = next(x for x in stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def _events(body: str, framing: str) -> list[dict]:
    """The JSON objects of an NDJSON body, or of an SSE body's events (data lines joined)."""
    if framing == "ndjson":
        return [json.loads(line) for line in body.splitlines() if line.strip()]
    events = []
    for block in body.split("\n\n"):
        data = "\n".join(x.removeprefix("data:").removeprefix(" ") for x in block.splitlines() if x.startswith("data:"))
        if data and data != "[DONE]":
            events.append(json.loads(data))
    return events


def _spread(result: dict) -> float:
    times = [t for t, _ in result["chunks"]]
    return times[-1] - times[0]


@pytest.mark.parametrize("framing", ["ndjson", "sse"])
def test_a_streamed_reply_arrives_chunk_by_chunk_and_is_decoded_whole(framing, sessiontap, tmp_path):
    with running_simulator(faults=Faults(latency=LATENCY), stream_framing=framing) as sim:
        import subprocess

        direct = _result(subprocess.run([sys.executable, "-c", CLIENT], capture_output=True, text=True, timeout=60,
                                        env={"STREAM_URL": sim.url, "NO_PROXY": "*"}, check=True).stdout)
        run = sessiontap("record", "--mode", "reverse", "--upstream", sim.url, "--", sys.executable, "-c", CLIENT)
    assert run.code == 0, run.stderr
    proxied = _result(run.stdout)
    assert proxied["status"] == direct["status"] == 200, proxied["body"]
    # Two agent turns, each LATENCY apart: streamed, the first bytes come well before the last ones.
    assert _spread(direct) >= 0.8 * LATENCY, direct["chunks"]
    assert _spread(proxied) >= 0.8 * LATENCY, f"the reply was held until complete: {proxied['chunks']}"
    assert len(proxied["chunks"]) > 1

    # The whole stream is still one call, with the agent's last streamed turn as its reply.
    calls = run.calls()
    assert len(calls) == 1, calls
    agent_lines = [obj for obj in _events(proxied["body"], framing) if "simulated_conversation" in obj]
    streamed = [t["message"] for obj in agent_lines for t in obj["simulated_conversation"]]
    replied = [t["text"] for t in calls[0]["reply"]]
    assert replied and replied == streamed[-len(replied):], (replied, streamed)
    assert calls[0]["status"] == 200
    # ... and the capture keeps the body byte for byte as the client got it.
    with open(run.out / "flows.mitm", "rb") as f:
        flows = list(mio.FlowReader(f).stream())
    assert [f.response.content.decode() for f in flows if f.response] == [proxied["body"]]
    assert flows[0].metadata.get("sessiontap.streamed") is True


def test_with_streaming_off_the_reply_is_held_until_complete(sessiontap, tmp_path):
    config = tmp_path / "sessiontap.yaml"
    config.write_text("sessiontap_stream_replies: false\n")
    with running_simulator(faults=Faults(latency=LATENCY)) as sim:
        run = sessiontap("record", "--config", str(config), "--mode", "reverse", "--upstream", sim.url, "--",
                         sys.executable, "-c", CLIENT)
    assert run.code == 0, run.stderr
    proxied = _result(run.stdout)
    assert _spread(proxied) < LATENCY / 3, proxied["chunks"]  # one burst at the end
    assert len(run.calls()) == 1

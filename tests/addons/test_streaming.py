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


# Clients we did not write: the official SDK (it reads the whole stream, then returns None) and curl -N.
SDK_CLIENT = r"""
import os
from elevenlabs import ElevenLabs
client = ElevenLabs(base_url=os.environ["ELEVENLABS_BASE_URL"], api_key="sk_test_stream_sdk")
client.conversational_ai.agents.simulate_conversation_stream(
    "agent_customs_demo", new_turns_limit=4,
    simulation_specification={"simulated_user_config": {"first_message": "Hi"}, "partial_conversation_history": [
        {"role": "user", "message": "Classify a ceramic mug", "time_in_call_secs": 0}]})
print("SDK done")
"""
CURL = ("curl -sN -o \"$OUT\" -w 'first=%{time_starttransfer} total=%{time_total}' -H 'xi-api-key: sk_test_curl' "
        "-H 'content-type: application/json' --data '{\"simulation_specification\": {\"simulated_user_config\": "
        "{\"first_message\": \"Hi\"}, \"partial_conversation_history\": [{\"role\": \"user\", \"message\": "
        "\"Classify a ceramic mug\", \"time_in_call_secs\": 0}]}, \"new_turns_limit\": 4}' "
        "\"$ELEVENLABS_BASE_URL/v1/convai/agents/agent_customs_demo/simulate-conversation/stream\"")


def _recorded(run) -> tuple[list[dict], list]:
    with open(run.out / "flows.mitm", "rb") as f:
        return run.calls(), list(mio.FlowReader(f).stream())


@pytest.mark.parametrize(("framing", "echo"), [("ndjson", False), ("sse", False), ("sse", True)])
def test_the_official_sdk_streaming_with_no_session_id_is_one_decoded_call(framing, echo, sessiontap):
    with running_simulator(stream_framing=framing, history_echo=echo) as sim:
        run = sessiontap("record", "--mode", "reverse", "--upstream", sim.url, "--", sys.executable, "-c", SDK_CLIENT)
    assert run.code == 0 and "SDK done" in run.stdout, run.stderr
    calls, flows = _recorded(run)
    assert len(calls) == 1 and calls[0]["status"] == 200 and calls[0]["endpoint"] == "simulate-stream"
    assert calls[0]["declared_session"] is None
    assert calls[0]["reply"] and calls[0]["reply"][0]["text"] != "Classify a ceramic mug"  # the echo is not a reply
    assert flows[0].metadata.get("sessiontap.streamed") is True and flows[0].response.content


@pytest.mark.parametrize("framing", ["ndjson", "sse"])
def test_curl_gets_the_first_bytes_of_a_stream_before_its_end_and_the_capture_keeps_them_all(framing, sessiontap,
                                                                                              tmp_path):
    got = tmp_path / "curl.out"
    with running_simulator(faults=Faults(latency=LATENCY), stream_framing=framing) as sim:
        run = sessiontap("record", "--mode", "reverse", "--upstream", sim.url, "--", "sh", "-c", CURL,
                         env={"OUT": str(got)})
    assert run.code == 0, run.stderr
    timing = dict(part.split("=") for part in run.stdout.split() if part.startswith(("first=", "total=")))
    assert float(timing["total"]) - float(timing["first"]) >= 0.8 * LATENCY, timing  # streamed, not held
    calls, flows = _recorded(run)
    assert len(calls) == 1 and calls[0]["reply"], calls
    assert flows[0].response.content == got.read_bytes()

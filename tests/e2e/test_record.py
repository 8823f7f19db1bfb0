"""End to end: `sessiontap record` (real mitmproxy) between real clients and the simulator on loopback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest
from mitmproxy import io as mio

from tests.conftest import clean_env, client_script, sample

KEY = "sk_test_DISTINCTIVEKEY0123456789"


def direct(cmd: list[str], sim_url: str, home) -> subprocess.CompletedProcess[str]:
    """The same client run straight against the simulator, for comparison."""
    env = clean_env(home, ELEVENLABS_BASE_URL=sim_url, ELEVENLABS_API_KEY=KEY)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)


def capture_flows(run) -> list:
    with open(run.out / "flows.mitm", "rb") as f:
        return list(mio.FlowReader(f).stream())


@pytest.mark.parametrize("mode", ["reverse", "regular"])
@pytest.mark.parametrize("client", ["faulty-http", "fixed-http", "faulty-ws", "fixed-ws"])
def test_replicas_recorded_with_sessions_and_unchanged_output(mode, client, simulator, sessiontap, sessiontap_home):
    run = sessiontap("record", "--mode", mode, "--upstream", simulator.url, "--", *sample(client),
                     env={"ELEVENLABS_API_KEY": KEY})
    assert run.code == 0, run.stderr
    assert run.stdout == direct(sample(client), simulator.url, sessiontap_home).stdout
    calls = run.calls()
    assert len(calls) == 5
    sessions = {c["session"] for c in calls}
    assert len(sessions) == 1, sessions
    session = sessions.pop()
    if client == "faulty-http":
        assert session == "elevenlabs-session-0"
    elif client == "fixed-http":
        assert session.startswith("durin-")
    assert all(c["session_source"] == "client" for c in calls)
    servers = {c["server_conversation"] for c in calls}
    assert len(servers) == (1 if client == "fixed-ws" else 5)
    # every call that reached the simulator is in the capture, tagged
    flows = capture_flows(run)
    tagged = [f for f in flows if f.request.headers.get("X-Sessiontap-Session")]
    assert all(f.metadata["sessiontap"]["session"] == session for f in tagged)
    assert "5 calls" in run.stderr


def test_tag_header_reaches_upstream_and_is_echoed(simulator, sessiontap):
    run = sessiontap("record", "--mode", "reverse", "--upstream", simulator.url, "--",
                     *sample("fixed-http"), "--turns", "2", env={"ELEVENLABS_API_KEY": KEY})
    assert run.code == 0, run.stderr
    http_hits = [h for h in simulator.hits if h.kind == "http"]
    assert len(http_hits) == 2
    assert all(h.headers.get("X-Sessiontap-Session", "").startswith("durin-") for h in http_hits)
    flows = capture_flows(run)
    assert all(f.response.headers["X-Sessiontap-Session"].startswith("durin-") for f in flows)


@pytest.mark.parametrize("mode", ["regular", "reverse"])
def test_official_sdk_through_the_proxy_nothing_bypasses(mode, simulator, sessiontap):
    env = {"ELEVENLABS_API_KEY": KEY}
    run = sessiontap("record", "--mode", mode, "--upstream", simulator.url, "--",
                     *client_script("sdk_client", "--auth"), env=env)
    assert run.code == 0, run.stderr
    assert "simulate: You said" in run.stdout
    assert "conversation(auth=True): Hello! I'm Durin" in run.stdout
    flows = capture_flows(run)
    http_hits = [h for h in simulator.hits if h.kind == "http"]
    ws_opens = [h for h in simulator.hits if h.kind == "ws-open"]
    ws_msgs = [h for h in simulator.hits if h.kind == "ws-message"]
    http_flows = [f for f in flows if f.websocket is None]
    ws_flows = [f for f in flows if f.websocket is not None]
    assert len(http_hits) == len(http_flows) == 2  # simulate + get-signed-url
    assert len(ws_opens) == len(ws_flows) == 2
    assert len(ws_msgs) == sum(1 for f in ws_flows for m in f.websocket.messages if m.from_client)
    assert "conversation_signature" in ws_opens[1].query  # the signed socket came through the proxy too


def test_secrets_never_reach_disk_or_terminal(simulator, sessiontap):
    simulator.faults.hostile_text = None
    run = sessiontap("record", "--mode", "reverse", "--upstream", simulator.url, "--",
                     *client_script("sdk_client", "--auth"), env={"ELEVENLABS_API_KEY": KEY})
    assert run.code == 0, run.stderr
    signatures = [h.query.split("conversation_signature=")[1].split("&")[0]
                  for h in simulator.hits if "conversation_signature=" in h.query]
    assert signatures, "the signed URL was used"
    texts = [run.stdout, run.stderr] + [p.read_bytes().decode("utf-8", "replace") for p in run.out.iterdir()]
    for secret in [KEY, *signatures]:
        for text in texts:
            assert secret not in text


def test_bad_input_passes_through_unchanged_and_is_noted(simulator, sessiontap, sessiontap_home):
    run = sessiontap("record", "--mode", "reverse", "--upstream", simulator.url, "--",
                     *client_script("odd_client"), env={"ELEVENLABS_API_KEY": KEY})
    assert run.code == 0, run.stderr
    assert run.stdout == direct(client_script("odd_client"), simulator.url, sessiontap_home).stdout
    invalid = [h for h in simulator.hits if h.kind == "http" and "oops" in h.body]
    assert len(invalid) == 2 and invalid[0].body == invalid[1].body == '{"simulation_specification": {oops'
    kinds = {n["kind"] for n in run.notes()}
    assert {"request-body", "binary-frame", "unknown-message-type"} <= kinds
    assert json.loads(run.stdout.splitlines()[0])["status"] == 422


def test_upstream_down_gives_the_client_an_error_and_a_journal_entry(tmp_path, sessiontap, sessiontap_home):
    port_file = tmp_path / "port"
    sim = subprocess.Popen([sys.executable, "-m", "sessiontap.simulator", "--port", "0", "--port-file", str(port_file)])
    try:
        for _ in range(100):
            if port_file.exists() and port_file.read_text().strip():
                break
            time.sleep(0.1)
        url = f"http://127.0.0.1:{port_file.read_text().strip()}"
        # the child stops the upstream, then talks to it through the proxy
        child = (
            "import os, signal, subprocess, sys, time\n"
            f"os.kill({sim.pid}, signal.SIGTERM); time.sleep(1.0)\n"
            f"sys.exit(subprocess.run([{sys.executable!r}, '-m', 'sessiontap.samples', 'fixed-http', '--turns', '1'])"
            ".returncode)\n"
        )
        run = sessiontap("record", "--mode", "reverse", "--upstream", url, "--", sys.executable, "-c", child,
                         env={"ELEVENLABS_API_KEY": KEY})
    finally:
        sim.kill()
        sim.wait(10)
    alone = direct(sample("fixed-http") + ["--turns", "1"], url, sessiontap_home)
    assert alone.returncode == run.code == 1
    assert len(alone.stderr.strip().splitlines()) == 1
    assert "Traceback" not in run.stderr
    [call] = run.calls()
    assert call["error"] is not None
    failures = [e for e in run.journal() if e["event"] == "finding" and e["rule"] == "upstream-error"]
    assert len(failures) == 1 and failures[0]["session"] == call["session"]  # one finding, in its session
    findings = json.loads((run.out / "findings.json").read_text())
    assert "upstream failure" in findings["verdict"] and "continues" not in findings["verdict"]


def test_child_exit_code_is_returned(simulator, sessiontap):
    run = sessiontap("record", "--upstream", simulator.url, "--", sys.executable, "-c", "import sys; sys.exit(7)")
    assert run.code == 7


def test_port_in_use_is_a_clear_error(simulator, sessiontap):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        run = sessiontap("record", "--upstream", simulator.url, "--listen-port", str(port), "--",
                         sys.executable, "-c", "pass")
    assert run.code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in run.stderr
    assert "Traceback" not in run.stderr

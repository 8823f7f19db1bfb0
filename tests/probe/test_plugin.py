"""Tests for addons/probe/plugin.py (and tap.py): the `sessiontap` fixture used from a test module that imports
nothing of sessiontap, in a pytest process of its own (pytester), as a user's repository would."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import httpx
import pytest

from sessiontap.bridge.backlog import Backlog
from sessiontap.probe.tap import Tap, TapError, Where
from sessiontap.router import DEFAULT_UPSTREAM

pytest_plugins = ["pytester"]

# The README's worked example, as a user writes it: their client reads ELEVENLABS_BASE_URL; the fixture sets it.
EXAMPLE = '''
import os
import subprocess
import sys

import httpx
import pytest

MESSAGES = ["I need to classify cotton t-shirts for import.", "They are made in Vietnam.", "Which HS code fits?"]


class ChatClient:
    """The code under test: a simulate-conversation client that keeps (or, faulty, drops) the history."""

    def __init__(self, keep_history):
        self.base = os.environ.get("ELEVENLABS_BASE_URL", "https://api.elevenlabs.io")
        self.keep_history = keep_history
        self.history = []

    def send(self, text):
        self.history.append({"role": "user", "message": text, "time_in_call_secs": len(self.history)})
        body = {"simulation_specification": {
                    "simulated_user_config": {"prompt": {"prompt": "a customs officer"}},
                    "partial_conversation_history": self.history if self.keep_history else self.history[-1:]},
                "new_turns_limit": 1}
        answer = httpx.post(f"{self.base}/v1/convai/agents/agent_demo/simulate-conversation", json=body,
                            headers={"xi-api-key": os.environ["ELEVENLABS_API_KEY"]}, timeout=30)
        answer.raise_for_status()
        reply = next(t["message"] for t in answer.json()["simulated_conversation"] if t["role"] == "agent")
        self.history.append({"role": "agent", "message": reply, "time_in_call_secs": len(self.history)})
        return reply


@pytest.mark.parametrize("keep_history", [True, False], ids=["fixed", "faulty"])
def test_http_client_continues(sessiontap, keep_history):
    client = ChatClient(keep_history)
    for text in MESSAGES:
        client.send(text)
    sessiontap.assert_continuous(sessions=1)


@pytest.mark.sessiontap(mode="regular")
def test_http_client_through_https_proxy(sessiontap):
    client = ChatClient(keep_history=True)  # no base URL: https://api.elevenlabs.io through HTTPS_PROXY
    assert "ELEVENLABS_BASE_URL" not in os.environ and os.environ["HTTPS_PROXY"].startswith("http://127.0.0.1:")
    for text in MESSAGES:
        client.send(text)
    sessiontap.assert_continuous()


@pytest.mark.parametrize("kind", ["fixed-ws", "faulty-ws"])
def test_websocket_client_continues(sessiontap, kind):
    subprocess.run([sys.executable, "-m", "sessiontap.samples", kind, "--turns", "3"], check=True, timeout=60,
                   capture_output=True)
    assert len(sessiontap.calls) == 3
    sessiontap.assert_continuous(sessions=1)


def test_what_went_through_is_analysed_when_asked(sessiontap):
    client = ChatClient(keep_history=True)
    assert sessiontap.calls == [] and sessiontap.base_url == os.environ["ELEVENLABS_BASE_URL"]
    client.send(MESSAGES[0])
    client.send(MESSAGES[1])
    assert len(sessiontap.calls) == 2 and len(sessiontap.sessions) == 1 and sessiontap.findings == []
    assert sessiontap.ws_url == sessiontap.base_url.replace("http://", "ws://")
'''


@pytest.fixture
def example(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, sessiontap_home: Path) -> pytest.Pytester:
    monkeypatch.setenv("SESSIONTAP_HOME", str(sessiontap_home))  # pytester moves HOME: keep one CA for the run
    for name in ("ELEVENLABS_BASE_URL", "ELEVENLABS_API_KEY", "HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    pytester.makepyfile(test_example=EXAMPLE)
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    # anyio's pytest plugin (installed here, not by sessiontap) warns about a pytest rename as it loads: left out
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:anyio", *args, timeout=180)


def test_the_example_imports_nothing_of_sessiontap():
    imported = [n for node in ast.walk(ast.parse(EXAMPLE)) if isinstance(node, ast.Import | ast.ImportFrom)
                for n in ([a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""])]
    assert imported and not [n for n in imported if n.startswith("sessiontap")]


def test_the_fixture_passes_fixed_clients_and_fails_faulty_ones_with_the_findings_and_the_report(
        example: pytest.Pytester, tmp_path: Path):
    out = tmp_path / "captures"
    result = run(example, f"--sessiontap-out={out}")
    result.assert_outcomes(passed=4, failed=2, warnings=0)  # mitmproxy's deprecation warnings are not the user's
    text = result.stdout.str()
    result.stdout.fnmatch_lines([
        "*test_http_client_continues?faulty?*",
        "E*AssertionError: sessiontap: the conversation does not continue: 1 session * 2 resets: context lost 2*",
        "E*error [[]context-reset] *: context went back to the newest message alone at call #2 of the session*",
        "E*report: *test_http_client_continues_faulty_/report.html",
    ])
    result.stdout.fnmatch_lines([
        "*test_websocket_client_continues?faulty-ws?*",
        "E*error [[]new-conversation-per-message] durin-*: 3 server conversations for one session*",
    ])
    assert "error [repeated-opening]" in text
    reports = set(re.findall(r"report: (\S+report\.html)", text))  # a CI run's summary repeats the whole message
    assert len(reports) == 2 and all(Path(p).is_file() for p in reports)
    for test in ("test_http_client_continues_fixed_", "test_http_client_through_https_proxy",
                 "test_websocket_client_continues_fixed-ws_"):  # a directory a test, named for its node id
        assert all((out / f"test_example.py_{test}" / name).is_file()
                   for name in ("flows.mitm", "findings.json", "report.html")), test
    replayed = run(example, "-k", "test_http_client_continues and fixed",
                   f"--sessiontap-replay={out / 'test_example.py_test_http_client_continues_fixed_'}")
    replayed.assert_outcomes(passed=1)  # answered from the capture, offline


# Clients we did not write, in the shapes most real ones take: the official SDK and raw websockets, no session id.
THIRD_PARTY = '''
import json
import os

import pytest
import websockets.sync.client
from elevenlabs import ElevenLabs

LINES = ["I need to classify cotton t-shirts for import.", "They are made in Vietnam.", "What HS code applies?"]


@pytest.mark.parametrize("keep_history", [True, False], ids=["sdk-history", "sdk-newest-only"])
def test_sdk(sessiontap, keep_history):
    client = ElevenLabs(api_key=os.environ["ELEVENLABS_API_KEY"], base_url=os.environ["ELEVENLABS_BASE_URL"])
    history = []
    for line in LINES:
        history.append({"role": "user", "message": line, "time_in_call_secs": len(history)})
        answer = client.conversational_ai.agents.simulate_conversation(
            agent_id="agent_demo", new_turns_limit=1, simulation_specification={
                "simulated_user_config": {"first_message": line},
                "partial_conversation_history": history if keep_history else history[-1:]})
        reply = [t for t in answer.simulated_conversation if t.role == "agent"][-1].message
        history.append({"role": "agent", "message": reply, "time_in_call_secs": len(history)})
    sessiontap.assert_continuous()


@pytest.mark.parametrize("sockets", [1, 3], ids=["ws-one-socket", "ws-socket-per-message"])
def test_raw_websocket(sessiontap, sockets):
    url = f"{sessiontap.ws_url}/v1/convai/conversation?agent_id=agent_demo"
    for part in ([LINES] if sockets == 1 else [[line] for line in LINES]):
        with websockets.sync.client.connect(url) as ws:
            ws.send(json.dumps({"type": "conversation_initiation_client_data"}))
            for line in part:
                ws.send(json.dumps({"type": "user_message", "text": line}))
                while json.loads(ws.recv(timeout=10)).get("type") != "agent_response":
                    pass
    sessiontap.assert_continuous()
'''


def test_clients_we_did_not_write_pass_when_they_continue_and_fail_with_the_rule_when_not(
        example: pytest.Pytester):
    example.makepyfile(test_third_party=THIRD_PARTY)
    result = run(example, "test_third_party.py")
    result.assert_outcomes(passed=2, failed=2, warnings=0)
    result.stdout.fnmatch_lines([
        "*test_sdk?sdk-newest-only?*",
        "E*error [[]context-reset] *: context went back to the newest message alone at call #2 of the session*",
    ])
    result.stdout.fnmatch_lines([
        "*test_raw_websocket?ws-socket-per-message?*",
        "E*error [[]new-conversation-per-message] *: 3 server conversations for one session*",
    ])
    failed = re.findall(r"^FAILED test_third_party.py::(\S+)", result.stdout.str(), re.M)
    assert sorted(failed) == ["test_raw_websocket[ws-socket-per-message]", "test_sdk[sdk-newest-only]"]


def test_tests_whose_ids_make_the_same_name_keep_a_directory_each(example: pytest.Pytester, tmp_path: Path):
    """Their directory is replaced when they run again: two tests must never share one."""
    example.makepyfile(test_names='''
import os

import httpx
import pytest


@pytest.mark.parametrize("where", ["a/b", "a:b"])
def test_named(sessiontap, where):
    body = {"simulation_specification": {"simulated_user_config": {}, "partial_conversation_history": [
        {"role": "user", "message": where, "time_in_call_secs": 0}]}, "new_turns_limit": 1}
    httpx.post(os.environ["ELEVENLABS_BASE_URL"] + "/v1/convai/agents/a1/simulate-conversation", json=body,
               headers={"xi-api-key": os.environ["ELEVENLABS_API_KEY"]}, timeout=30).raise_for_status()
    assert len(sessiontap.calls) == 1
''')
    out = tmp_path / "captures"
    run(example, "test_names.py", f"--sessiontap-out={out}").assert_outcomes(passed=2)
    names = sorted(d.name for d in out.iterdir())
    assert names[0] == "test_names.py_test_named_a_b_" and len(names) == 2, names
    assert names[1].startswith(names[0] + "-")  # the second: a digest of its own id
    assert all((out / n / "flows.mitm").stat().st_size > 0 for n in names)


def test_live_and_a_remote_upstream_are_refused_before_anything_is_sent(example: pytest.Pytester):
    result = run(example, "--sessiontap-live", "-k", "test_what_went_through")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*sessiontap: --sessiontap-live sends the test's traffic to the real ElevenLabs API "
                                 "and needs ELEVENLABS_API_KEY*"])
    remote = run(example, "--sessiontap-upstream=https://api.elevenlabs.io", "-k", "test_what_went_through")
    remote.assert_outcomes(errors=1)
    remote.stdout.fnmatch_lines(["*--sessiontap-upstream https://api.elevenlabs.io is not on this machine; add "
                                 "--sessiontap-live*"])


def test_live_targets_the_real_api_by_construction():
    assert Where(live=True).target({"ELEVENLABS_API_KEY": "sk_x"}) == DEFAULT_UPSTREAM == "https://api.elevenlabs.io"
    assert Where().target({}) is None  # the simulator
    with pytest.raises(TapError, match="a replay answers from its capture"):
        Where(replay=Path("flows.mitm"), live=True).target({"ELEVENLABS_API_KEY": "sk_x"})
    with pytest.raises(TapError, match="mode must be reverse or regular"):
        Where(mode="socks").target({})


def test_what_a_test_reads_right_after_a_reply_is_that_call_judged_with_its_whole_context(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sessiontap_home: Path):
    """The capture is saved after the reply goes (off its latency): the tap must not read a flow not yet saved."""
    monkeypatch.setenv("SESSIONTAP_HOME", str(sessiontap_home))
    # A busy proxy: its deferred work (judging, the capture's save) runs a while after the reply has gone.
    close = Backlog._close
    monkeypatch.setattr(Backlog, "_close", lambda self, loop: loop.call_later(0.2, close, self, loop))
    with Tap(tmp_path / "out", name="race") as tap, httpx.Client(trust_env=False, timeout=30) as client:
        history: list[dict[str, object]] = []
        for n in range(8):
            history.append({"role": "user", "message": f"message {n} about cotton t-shirts", "time_in_call_secs": n})
            body = {"simulation_specification": {"simulated_user_config": {}, "partial_conversation_history": history},
                    "new_turns_limit": 1}
            answer = client.post(f"{tap.base_url}/v1/convai/agents/a1/simulate-conversation", json=body,
                                 headers={"xi-api-key": "sk_test_race"}).json()
            turns = answer["simulated_conversation"]
            new = turns[len(history):] if len(turns) > len(history) else turns  # the history echoed, or not
            reply = next(t for t in new if t["role"] == "agent")
            history.append({"role": "agent", "message": reply["message"], "time_in_call_secs": n})
            calls = tap.calls  # at once: no pause for the proxy to catch up
            assert [len(c.context) for c in calls] == [2 * k + 1 for k in range(n + 1)]
            assert not [f.message for f in tap.findings if f.severity != "info"]
            tap.assert_continuous(sessions=1)
            if n == 0:
                first = calls
        assert [c.id for c in first] == [calls[0].id] and len(first[0].context) == 1  # a copy: later calls left it
    assert tap.result is not None and tap.analysis().verdict() == tap.result.verdict  # the proxy's own, undisturbed


def test_a_test_recorded_again_into_the_same_directory_is_judged_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sessiontap_home: Path):
    monkeypatch.setenv("SESSIONTAP_HOME", str(sessiontap_home))
    body = {"simulation_specification": {"simulated_user_config": {}, "partial_conversation_history": [
        {"role": "user", "message": "I need to classify cotton t-shirts.", "time_in_call_secs": 0}]},
        "new_turns_limit": 1}
    for run in range(2):  # as `--sessiontap-out DIR` gives a test the same directory each time it runs
        with Tap(tmp_path / "out", name="again") as tap:
            for _ in range(run + 1):
                httpx.post(f"{tap.base_url}/v1/convai/agents/a1/simulate-conversation", json=body,
                           headers={"xi-api-key": "sk_test_again"}, trust_env=False, timeout=30)
            assert len(tap.calls) == run + 1
    assert len(tap.analysis().calls) == 2  # read from the capture once stopped: this run's two calls only


@pytest.mark.parametrize(("mode", "hint"), [("reverse", "take its base URL from ELEVENLABS_BASE_URL"),
                                            ("regular", "use HTTPS_PROXY and sessiontap's CA")])
def test_nothing_went_through_says_how_the_mode_expects_to_be_reached(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sessiontap_home: Path, mode: str, hint: str):
    monkeypatch.setenv("SESSIONTAP_HOME", str(sessiontap_home))
    with Tap(tmp_path / "out", Where(mode=mode)) as tap, pytest.raises(AssertionError, match="no call went through"
                                                                       ) as failed:
        tap.assert_continuous()
    assert hint in str(failed.value)


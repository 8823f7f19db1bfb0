"""Tests for addons/app/runner.py's driven runs: a driver takes a recording over (real mitmproxy, the simulator)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx
import pytest

from sessiontap.app.runner import Listening, run_record
from sessiontap.simulator.server import Simulator

pytestmark = pytest.mark.usefixtures("direct_env")

BODY = {"simulation_specification": {"simulated_user_config": {"prompt": {"prompt": "a user"}},
                                     "partial_conversation_history": [
                                         {"role": "user", "message": "I need to classify cotton t-shirts.",
                                          "time_in_call_secs": 0}]},
        "new_turns_limit": 1}
ECHO = "import os, sys\nfor line in sys.stdin:\n    print(os.environ['PROBED'], line.strip(), flush=True)\n"


@pytest.fixture(autouse=True)
def home(monkeypatch: pytest.MonkeyPatch, sessiontap_home: Path) -> None:
    monkeypatch.setenv("SESSIONTAP_HOME", str(sessiontap_home))


def test_a_driver_talks_to_the_piped_child_and_its_code_is_the_runs(simulator: Simulator, tmp_path: Path):
    said: list[bytes] = []

    async def drive(listening: Listening, proc: asyncio.subprocess.Process | None) -> int:
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        for word in (b"one", b"two"):
            proc.stdin.write(word + b"\n")
            said.append(await asyncio.wait_for(proc.stdout.readline(), 10))
        proc.stdin.close()
        await proc.wait()
        return 7

    settings = {"sessiontap_mode": "reverse", "sessiontap_upstream": simulator.url, "sessiontap_out": str(tmp_path)}
    result = run_record(settings, [sys.executable, "-c", ECHO], announce=lambda line: None, drive=drive,
                        extra_env={"PROBED": "yes"})
    assert said == [b"yes one\n", b"yes two\n"]  # stdin and stdout piped, the extra variable set
    assert result.exit_code == 7


def test_a_driver_without_a_command_is_the_client_itself(simulator: Simulator, tmp_path: Path):
    async def drive(listening: Listening, proc: asyncio.subprocess.Process | None) -> int:
        assert proc is None and listening.mode == "reverse"
        env = listening.env({})
        assert env["ELEVENLABS_BASE_URL"] == listening.url == f"http://127.0.0.1:{listening.port}"
        async with httpx.AsyncClient(trust_env=False) as client:
            response = await client.post(f"{listening.url}/v1/convai/agents/a1/simulate-conversation", json=BODY,
                                         headers={"xi-api-key": "sk_test"})
        return 0 if response.status_code == 200 else 1

    settings = {"sessiontap_mode": "reverse", "sessiontap_upstream": simulator.url, "sessiontap_out": str(tmp_path)}
    result = run_record(settings, [], announce=lambda line: None, drive=drive)
    assert result.exit_code == 0
    assert result.analysis is not None and len(result.analysis.calls) == 1
    assert (tmp_path / "flows.mitm").stat().st_size > 0 and (tmp_path / "findings.json").exists()


def test_a_connection_still_open_when_the_run_ends_is_closed_without_an_error(simulator: Simulator, tmp_path: Path,
                                                                             capfd: pytest.CaptureFixture[str]):
    """A keep-alive client outlives the proxy (the pytest fixture's case): its handler is cancelled quietly."""
    kept: list[httpx.Client] = []

    async def drive(listening: Listening, proc: asyncio.subprocess.Process | None) -> int:
        client = httpx.Client(trust_env=False)  # never closed while the proxy runs
        kept.append(client)
        response = await asyncio.to_thread(client.post, f"{listening.url}/v1/convai/agents/a1/simulate-conversation",
                                           json=BODY, headers={"xi-api-key": "sk_test"})
        return 0 if response.status_code == 200 else 1

    settings = {"sessiontap_mode": "reverse", "sessiontap_upstream": simulator.url, "sessiontap_out": str(tmp_path)}
    try:
        result = run_record(settings, [], announce=lambda line: None, drive=drive)
    finally:
        kept[0].close()
    assert result.exit_code == 0
    err = capfd.readouterr().err
    assert "Exception in callback" not in err and "CancelledError" not in err, err


def test_the_ca_bundle_is_replaced_whole_for_runs_sharing_the_config_directory(tmp_path: Path):
    import certifi

    from sessiontap.app.runner import BUNDLE, CA_CERT, ca_bundle

    (tmp_path / CA_CERT).write_text("-----BEGIN CERTIFICATE-----\nsessiontap\n-----END CERTIFICATE-----\n")
    (tmp_path / BUNDLE).write_text("a bundle a client is reading\n")
    bundle = ca_bundle(tmp_path)
    text = bundle.read_text()
    assert text.startswith(Path(certifi.where()).read_text().rstrip("\n"))
    assert text.endswith("\n-----BEGIN CERTIFICATE-----\nsessiontap\n-----END CERTIFICATE-----\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([BUNDLE, CA_CERT])  # no temporary file left

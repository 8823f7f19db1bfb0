"""Secrets scan: keys, signed URLs, tokens and secret__ values reach no file, terminal, console or mitmweb flow.

One client (tests/clients/matrix/secret_client.py) carries every kind of secret: the xi-api-key
header, a signed WebSocket URL, a conversation token, and `secret__` dynamic variables that the
user's messages quote and the agent's replies quote back. It runs through `sessiontap record`
(both modes), bare `mitmdump -s` (its console at flow detail 2) and `mitmweb -s` (its flows
read back through its API on loopback, including the "save" download); then every byte
written or printed is searched for every secret.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest

from sessiontap.simulator.server import Simulator, running_simulator
from tests.conftest import CLIENTS, MITMDUMP, SESSIONTAP, clean_env, free_port, wait_for_port

KEY = "sk_test_SECRETSCAN0123456789"
PIN, OTP = "pin-7431-zebra", "otp-99881-kiwi"
CLIENT = [sys.executable, str(CLIENTS / "matrix" / "secret_client.py")]
CHAIN = str(Path(__file__).resolve().parents[2] / "addons" / "sessiontap.py")
WEB_PASSWORD = "scan-password-0"


def client_env(home: Path, **extra: str) -> dict[str, str]:
    return clean_env(home, ELEVENLABS_API_KEY=KEY, SECRET_PIN=PIN, SECRET_OTP=OTP, **extra)


def handed_out(sim: Simulator) -> list[str]:
    """The signatures and tokens the client used, as the simulator saw them."""
    found: set[str] = set()
    for hit in sim.hits:
        query = parse_qs(hit.query)
        found.update(query.get("conversation_signature", []) + query.get("conversation_token", []))
    assert len(found) == 2, "the signed socket and the token socket were both opened"
    return sorted(found)


def files(*roots: Path) -> dict[str, str]:
    """Every file under the roots, as text (bytes as latin-1, so nothing is skipped)."""
    out = {}
    for root in roots:
        for path in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
            out[str(path)] = path.read_bytes().decode("latin-1")
    return out


def leaks(texts: dict[str, str], secrets: list[str]) -> list[str]:
    return [f"{secret!r} in {name}" for name, text in texts.items() for secret in secrets if secret in text]


def assert_exercised(stdout: str) -> None:
    """The secrets really went through: the agent quoted the pin and the code back."""
    assert PIN in stdout and OTP in stdout, stdout


@pytest.mark.parametrize("mode", ["reverse", "regular"])
def test_record_report_and_export_write_and_print_no_secret(mode, tmp_path, sessiontap_home):
    out = tmp_path / "out"
    with running_simulator() as sim:
        env = client_env(sessiontap_home, **({"ELEVENLABS_BASE_URL": "https://api.elevenlabs.io"}
                                            if mode == "regular" else {}))
        run = subprocess.run([SESSIONTAP, "record", "--mode", mode, "--upstream", sim.url, "--out", str(out),
                              "--", *CLIENT], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
        secrets = [KEY, PIN, OTP, *handed_out(sim)]
    assert run.returncode == 0, run.stderr
    assert_exercised(run.stdout)
    ours = "\n".join(line for line in run.stdout.splitlines() if not line.startswith("agent: "))  # not the client's
    terminal = {"record stdout": ours, "record stderr": run.stderr}
    for args in (["report", str(out), "--out", str(tmp_path / "report")],
                 ["export", str(out), "--har", str(tmp_path / "out.har")], ["check", str(out)]):
        done = subprocess.run([SESSIONTAP, *args], capture_output=True, text=True, timeout=60, env=env)
        assert done.returncode in (0, 1), done.stderr
        terminal |= {f"{args[0]} stdout": done.stdout, f"{args[0]} stderr": done.stderr}
    written = files(out, tmp_path / "report", tmp_path / "out.har")
    assert {"journal.jsonl", "flows.mitm", "findings.json", "report.html"} <= {Path(n).name for n in written}
    found = leaks(written | terminal, secrets)
    assert found == [], "\n".join(found)


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with running_simulator() as sim:
        yield sim


def under(tool: str, tmp_path: Path, sim: Simulator, *extra: str) -> tuple[int, Path, list[str]]:
    """The command line of mitmdump/mitmweb with sessiontap's chain in reverse mode on loopback: port, out, argv."""
    port, out = free_port(), tmp_path / "out"
    argv = [tool, "-s", CHAIN, "--mode", f"reverse:{sim.url}", "--listen-host", "127.0.0.1", "-p", str(port),
            "--set", "connection_strategy=lazy", "--set", f"sessiontap_out={out}", *extra]
    return port, out, argv


def test_mitmdump_console_shows_no_secret(tmp_path, sessiontap_home, sim):
    port, out, argv = under(MITMDUMP, tmp_path, sim, "--set", "flow_detail=2")
    dump = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=clean_env(sessiontap_home))
    try:
        wait_for_port(port)
        client = subprocess.run(CLIENT, capture_output=True, text=True, timeout=60,
                                env=client_env(sessiontap_home, ELEVENLABS_BASE_URL=f"http://127.0.0.1:{port}"))
    finally:
        dump.send_signal(signal.SIGINT)
        console, _ = dump.communicate(timeout=30)
    assert client.returncode == 0, client.stderr
    assert_exercised(client.stdout)
    assert "WebSocket text message" in console and "conversation_signature=" in console  # the lines are there
    assert leaks({"mitmdump console": console} | files(out), [KEY, PIN, OTP, *handed_out(sim)]) == []


def test_mitmweb_flows_and_its_save_hold_no_secret(tmp_path, sessiontap_home, sim):
    web = free_port()
    mitmweb = str(Path(MITMDUMP).with_name("mitmweb"))
    port, out, argv = under(mitmweb, tmp_path, sim, "--web-host", "127.0.0.1",
                                "--web-port", str(web), "--set", "web_open_browser=false",
                                "--set", f"web_password={WEB_PASSWORD}")
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=clean_env(sessiontap_home))
    try:
        wait_for_port(port)
        wait_for_port(web)
        client = subprocess.run(CLIENT, capture_output=True, text=True, timeout=60,
                                env=client_env(sessiontap_home, ELEVENLABS_BASE_URL=f"http://127.0.0.1:{port}"))
        assert client.returncode == 0, client.stderr
        assert_exercised(client.stdout)
        secrets = [KEY, PIN, OTP, *handed_out(sim)]
        with httpx.Client(base_url=f"http://127.0.0.1:{web}", timeout=10, trust_env=False,
                          headers={"Authorization": f"Bearer {WEB_PASSWORD}"}) as api:
            deadline, found = time.monotonic() + 10, ["not read yet"]
            while found and time.monotonic() < deadline:  # responses are masked once the client has them
                shown = api.get("/flows.json")
                assert shown.status_code == 200, shown.text
                saved = api.get("/flows/dump").content.decode("latin-1")
                texts = {"/flows.json": shown.text, "/flows/dump (save)": saved}
                for flow in shown.json():
                    for part in ("request", "response", "messages"):
                        texts[f"{flow['id']} {part}"] = api.get(f"/flows/{flow['id']}/{part}/content.data").text
                found = leaks(texts, secrets)
                time.sleep(0.2 if found else 0)
        assert len(shown.json()) == 5  # simulate, get-signed-url, two sockets, token
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    assert found == []
    assert leaks(files(out), secrets) == []

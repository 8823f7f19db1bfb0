"""Shared fixtures: the simulator on loopback, and `sessiontap` run as a real subprocess."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser

from sessiontap.simulator.server import Simulator, running_simulator

ROOT = Path(__file__).resolve().parent.parent
SESSIONTAP = str(Path(sys.executable).parent / "sessiontap")
CLIENTS = Path(__file__).resolve().parent / "clients"
NODE_CLIENTS = CLIENTS / "node"  # elevenlabs-js and @elevenlabs/client, pinned by package-lock.json


def ensure_node_clients() -> str | None:
    """Install the Node clients' packages (npm ci) when they are missing; say why they cannot be used, or None."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node and npm are needed for the Node clients (apt-get install nodejs npm; .ci/run does)"
    if not (NODE_CLIENTS / "node_modules").is_dir():
        proc = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_CLIENTS,
                              capture_output=True, text=True, timeout=300)
        if proc.returncode:
            return f"npm ci in {NODE_CLIENTS} failed: {proc.stderr.strip()[-500:]}"
    return None


@pytest.fixture(scope="session")
def sessiontap_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One sessiontap config directory (and so one CA) for the whole test run, never in $HOME."""
    return tmp_path_factory.mktemp("sessiontap-home")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's headless Chromium, one per test module."""
    from tests.browser import launched

    with launched() as b:
        yield b


@pytest.fixture
def simulator() -> Iterator[Simulator]:
    """A fresh simulator on 127.0.0.1 for one test."""
    with running_simulator() as sim:
        yield sim


@dataclass
class Run:
    """A finished `sessiontap` command: exit code, output and the out directory."""

    code: int
    stdout: str
    stderr: str
    out: Path

    def journal(self) -> list[dict]:
        return [json.loads(line) for line in (self.out / "journal.jsonl").read_text().splitlines()]

    def calls(self) -> list[dict]:
        return [e for e in self.journal() if e["event"] == "call"]

    def notes(self) -> list[dict]:
        return [e for e in self.journal() if e["event"] == "note"]


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment for a sessiontap run: no stray proxies, our config dir, the given extras."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["SESSIONTAP_HOME"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@pytest.fixture
def sessiontap(tmp_path: Path, sessiontap_home: Path):
    """Run `sessiontap ARGS...` as a subprocess (bounded by a timeout) and return a Run."""

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 90, out: Path | None = None) -> Run:
        out = out or tmp_path / "out"
        argv = [SESSIONTAP, *args]
        if args and args[0] in ("record", "demo") and "--out" not in args:
            argv[2:2] = ["--out", str(out)]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=tmp_path,
                              env=clean_env(sessiontap_home, **(env or {})))
        return Run(proc.returncode, proc.stdout, proc.stderr, out)

    return run


def sample(name: str) -> list[str]:
    """The command that runs one ProperDurinClient replica."""
    return [sys.executable, "-m", "sessiontap.samples", name]


def client_script(name: str, *args: str) -> list[str]:
    """The command that runs one of tests/clients/*.py."""
    return [sys.executable, str(CLIENTS / f"{name}.py"), *args]


DEMO_KEY = "sk_test_analysis_key_000"


@pytest.fixture(scope="session")
def demo_capture(tmp_path_factory: pytest.TempPathFactory,
                 sessiontap_home: Path) -> tuple[Path, subprocess.CompletedProcess]:
    """One recording of all four replicas against the simulator, shared by the whole run (report included)."""
    out = tmp_path_factory.mktemp("demo")
    with running_simulator() as sim:
        proc = subprocess.run([SESSIONTAP, "record", "--mode", "reverse", "--upstream", sim.url, "--out", str(out),
                               "--", *sample("all")], capture_output=True, text=True, timeout=120,
                              env=clean_env(sessiontap_home, ELEVENLABS_API_KEY=DEMO_KEY))
    assert proc.returncode == 0, proc.stderr
    return out, proc


MITMDUMP = str(Path(sys.executable).parent / "mitmdump")
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "ws_proxy", "wss_proxy", "socks_proxy")


def write_capture(flows: list[Any], path: Path) -> Path:
    """A flow file holding these mitmproxy flows, as mitmdump -w writes one."""
    from mitmproxy import io as mio

    with open(path, "wb") as f:
        writer = mio.FlowWriter(f)
        for flow in flows:
            writer.add(flow)
    return path


def free_port() -> int:
    """A port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, tries: int = 150) -> None:
    """Wait (at most tries × 0.1 s) until something listens on 127.0.0.1:port."""
    for _ in range(tries):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)


@pytest.fixture
def direct_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep loopback traffic off any proxy configured on the machine, and the ElevenLabs variables unset."""
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    for name in ("ELEVENLABS_BASE_URL", "ELEVENLABS_API_KEY", "ELEVENLABS_AGENT_ID"):
        monkeypatch.delenv(name, raising=False)

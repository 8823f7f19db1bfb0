"""Exposure: the proxy stays on loopback (under mitmdump too) unless exposed on purpose, and then needs a password."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from mitmproxy.addons.proxyauth import ProxyAuth
from mitmproxy.test import taddons

from sessiontap.app.cli import main as cli
from sessiontap.exposure import Exposure, exposure_problem, is_loopback, proxy_url
from tests.conftest import MITMDUMP, ROOT, SESSIONTAP, clean_env, free_port, wait_for_port


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True),
                                                ("[::1]", True), ("localhost", True), ("0.0.0.0", False),
                                                ("", False), ("::", False), ("192.168.1.5", False),
                                                ("proxy.example", False)])
def test_only_loopback_addresses_keep_the_proxy_on_this_machine(host, loopback):
    assert is_loopback(host) is loopback
    assert (exposure_problem(host, False, False) is None) is loopback
    assert exposure_problem(host, True, False) is None  # on purpose: allowed, with a password


def test_exposing_needs_regular_mode_and_clients_get_the_credentials():
    assert "regular mode" in (exposure_problem("0.0.0.0", True, True) or "")
    assert "every interface" in (exposure_problem("0.0.0.0", False, False) or "")
    assert proxy_url("0.0.0.0", 8080, "u:p") == "http://u:p@127.0.0.1:8080"
    assert proxy_url("::1", 8080) == "http://[::1]:8080"


def test_the_addon_binds_loopback_unless_told_and_refuses_the_network_without_expose(caplog):
    exposure = Exposure()
    with taddons.context(ProxyAuth(), exposure) as tctx:
        tctx.configure(exposure, listen_host="")  # mitmproxy's default: every interface
        assert tctx.options.listen_host == "127.0.0.1"
        tctx.configure(exposure, listen_host="0.0.0.0")
        assert tctx.options.listen_host == "127.0.0.1" and tctx.options.proxyauth is None
        assert "sessiontap_expose" in caplog.text
        tctx.configure(exposure, listen_host="0.0.0.0", sessiontap_expose=True)
        assert tctx.options.listen_host == "0.0.0.0"
        assert tctx.options.proxyauth == exposure.credentials and exposure.credentials.startswith("sessiontap:")
        assert len(exposure.credentials.split(":", 1)[1]) >= 16


def test_record_refuses_a_network_address_without_expose_before_listening():
    result = CliRunner().invoke(cli, ["record", "--listen-host", "0.0.0.0", "--", "true"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "--expose" in result.output and "other machines" in result.output


CLIENT = r"""
import json, os, httpx
proxy = os.environ["HTTPS_PROXY"]
bare = "http://" + proxy.split("@", 1)[1]
out = {"password": proxy.split("@", 1)[0].rsplit(":", 1)[1]}
for name, url in (("with", proxy), ("without", bare)):
    try:
        with httpx.Client(proxy=url, timeout=10) as http:
            out[name] = http.get("https://api.elevenlabs.io/v1/convai/agents/agent_customs_demo",
                                 headers={"xi-api-key": "sk_test_exposure_0000"}).status_code
    except httpx.ProxyError as e:
        out[name] = str(e)
print(json.dumps(out))
"""


def test_an_exposed_proxy_lets_the_client_in_with_its_password_and_nobody_without(tmp_path, sessiontap_home):
    from sessiontap.simulator.server import running_simulator

    with running_simulator() as sim:
        run = subprocess.run([SESSIONTAP, "record", "--expose", "--upstream", sim.url, "--out", str(tmp_path / "out"),
                              "--", sys.executable, "-c", CLIENT], capture_output=True, text=True, timeout=60,
                             env=clean_env(sessiontap_home))
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.splitlines()[-1])
    assert seen["with"] == 200 and len(seen["password"]) >= 16
    assert "407" in str(seen["without"])  # Proxy Authentication Required
    for path in (tmp_path / "out").iterdir():
        assert seen["password"] not in path.read_bytes().decode("latin-1"), path


def listening_addresses(port: int) -> set[str]:
    """The local addresses a TCP port is bound to, read from /proc (IPv4 and IPv6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def test_mitmdump_with_the_chain_listens_on_loopback_when_no_listen_host_is_given(tmp_path, sessiontap_home):
    port = free_port()
    proc = subprocess.Popen([MITMDUMP, "-s", str(ROOT / "addons" / "sessiontap.py"), "-p", str(port),
                             "--set", f"sessiontap_out={tmp_path / 'out'}"],
                            env=clean_env(sessiontap_home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_port(port)
        deadline = time.monotonic() + 10  # mitmproxy binds before it loads the chain, which then rebinds
        while (addresses := listening_addresses(port)) != {"0100007F"} and time.monotonic() < deadline:
            time.sleep(0.05)
        wait_for_port(port)  # and it takes connections there
    finally:
        proc.terminate()
        console, _ = proc.communicate(timeout=15)
    assert addresses == {"0100007F"}, (addresses, console)  # 127.0.0.1 only, not 0.0.0.0 or ::

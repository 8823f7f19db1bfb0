"""Node clients in regular mode: routed through the proxy by proxy.cjs, and a loud warning when traffic goes around it.

Node's own fetch, `https` and the `ws` package ignore HTTPS_PROXY; `record -- CMD` preloads
addons/app/codetrace/proxy.cjs so that they tunnel through the proxy anyway. The official SDKs
(elevenlabs-js over HTTP, @elevenlabs/client over the socket) and a plain fetch/https/ws script
run under `sessiontap record` in regular mode against the simulator: their calls are recorded and
their code trace still joins. A client that goes around the proxy (NO_PROXY, trust_env=False) or
makes no call at all is named on stderr.

Nothing here may leave the machine: every Node client runs with a guard (a `--require` of the
user's, loaded after ours) under which no name but localhost resolves and no address but loopback
connects, and the Python client that goes around the proxy has its resolver stubbed, so the
lookups the trace records never reach a DNS server.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from mitmproxy import io as mio

from sessiontap.app.runner import CODE_TRACE_DIR, bypass_warnings, child_env, traced_env
from sessiontap.core.code import CodeTrace, Lookup, around_proxy, lookups
from tests.conftest import ROOT, SESSIONTAP, Run, clean_env, ensure_node_clients

NODE = ROOT / "tests" / "clients" / "node"
PROXY_CJS = CODE_TRACE_DIR / "proxy.cjs"
KEY = "sk_test_nodeproxy_0000"
NO_CALL = "no call went through the proxy, so nothing was recorded"
AROUND = "went to ElevenLabs around the proxy and that traffic was not recorded"

# The user's own preload in these tests: nothing but loopback, ever. Under node_modules, so that the
# code trace leaves its frames out as a library's.
GUARD = r'''"use strict";
const dns = require("dns"), net = require("net");
const local = (h) => h === "localhost" || /^127\./.test(h) || h === "::1";
const refused = (h) => Object.assign(new Error(`test guard: ${h} is not loopback`), { code: "ENOTFOUND" });
dns.lookup = function (host, options, callback) {
  const cb = typeof options === "function" ? options : callback;
  if (!local(host)) return process.nextTick(cb, refused(host));
  const all = options && typeof options === "object" && options.all;
  const family = host === "::1" ? 6 : 4;
  const address = host === "::1" ? "::1" : "127.0.0.1";
  return process.nextTick(cb, null, all ? [{ address, family }] : address, family);
};
const connect = net.Socket.prototype.connect;
net.Socket.prototype.connect = function (...args) {
  const o = Array.isArray(args[0]) ? args[0][0] : net._normalizeArgs(args)[0];
  if (o && o.host && net.isIP(o.host) && !local(o.host)) {
    process.nextTick(() => this.destroy(refused(o.host)));
    return this;
  }
  return connect.apply(this, args);
};
'''

# fetch, https.request and ws, each once, straight at api.elevenlabs.io as if there were no proxy.
PLAIN = r'''const { createRequire } = require("module");
const WebSocket = createRequire(process.env.NODE_CLIENTS + "/package.json")("ws");
const https = require("https");
const base = "https://api.elevenlabs.io";
const url = `${base}/v1/convai/agents/agent_customs_demo/simulate-conversation`;
const headers = { "content-type": "application/json", "xi-api-key": process.env.ELEVENLABS_API_KEY };
const body = (text) => JSON.stringify({ simulation_specification: { simulated_user_config: {},
  partial_conversation_history: [{ role: "user", message: text, time_in_call_secs: 1 }] }, new_turns_limit: 1 });

async function viaFetch() {
  const reply = await fetch(url, { method: "POST", headers, body: body("fetch says hello") });
  console.log("fetch", reply.status);
}

function viaHttps() {
  return new Promise((resolve, reject) => {
    const req = https.request(url, { method: "POST", headers }, (res) => {
      res.resume();
      res.on("end", () => resolve(console.log("https", res.statusCode)));
    });
    req.on("error", reject);
    req.end(body("https says hello"));
  });
}

function viaWs() {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${base.replace("https", "wss")}/v1/convai/conversation?agent_id=agent_customs_demo`);
    ws.on("open", () => {
      ws.send(JSON.stringify({ type: "conversation_initiation_client_data" }));
      ws.send(JSON.stringify({ type: "user_message", text: "ws says hello" }));
    });
    ws.on("message", (data) => {
      if (JSON.parse(data).type === "agent_response") ws.close();
    });
    ws.on("close", () => resolve(console.log("ws closed")));
    ws.on("error", reject);
  });
}

async function main() {
  for (const call of [viaFetch, viaHttps, viaWs]) {
    try {
      await call();
    } catch (e) {
      console.log(call.name, "failed:", (e.cause && e.cause.message) || e.message);
    }
  }
}
main();
'''

# A Python client that turned the environment off: it resolves api.elevenlabs.io itself. Its resolver is
# stubbed (after the code trace's hook, below it), so the lookup fails here without asking any DNS server.
AROUND_PY = '''import _socket
import socket

import httpx


def offline(*args, **kwargs):
    raise socket.gaierror(socket.EAI_NONAME, "no lookups in the tests")


_socket.getaddrinfo = offline
try:
    with httpx.Client(trust_env=False) as http:
        http.post("https://api.elevenlabs.io/v1/convai/agents/a/simulate-conversation", json={})
except httpx.ConnectError as e:
    print("direct:", e)
'''


@pytest.fixture(scope="module")
def node() -> None:
    why = ensure_node_clients()
    if why:
        pytest.fail(why)


@pytest.fixture
def guard(tmp_path: Path) -> str:
    """NODE_OPTIONS that load the loopback-only guard (the user's own options, after ours)."""
    path = tmp_path / "node_modules" / "loopback-guard.cjs"
    path.parent.mkdir()
    path.write_text(GUARD)
    return f'--require "{path}"'


def recorded(tmp_path: Path, home: Path, command: list[str], *, mode: str = "regular", node_options: str = "",
             cwd: Path = ROOT) -> Run:
    """`sessiontap record` of a command against a fresh simulator, in regular mode unless told."""
    from sessiontap.simulator.server import running_simulator

    out = tmp_path / "out"
    extra = {"ELEVENLABS_API_KEY": KEY, "ELEVENLABS_BASE_URL": "https://api.elevenlabs.io",
             "NODE_CLIENTS": str(NODE), "NODE_OPTIONS": node_options}
    with running_simulator() as sim:
        proc = subprocess.run([SESSIONTAP, "record", "--mode", mode, "--upstream", sim.url, "--out", str(out),
                               "--", *command], capture_output=True, text=True, timeout=120, cwd=cwd,
                              env=clean_env(home, **extra))
    return Run(proc.returncode, proc.stdout, proc.stderr, out)


def flows(run: Run) -> list:
    with open(run.out / "flows.mitm", "rb") as f:
        return list(mio.FlowReader(f).stream())


def trace(run: Run) -> list[dict]:
    return [json.loads(line) for line in (run.out / "code.jsonl").read_text().splitlines()]


def assert_joined(run: Run) -> None:
    """Every flow's client port is a port the code trace saw connect: the trace and the capture still join."""
    connected = {line["port"] for line in trace(run) if line["kind"] == "connect"}
    ports = [f.client_conn.peername[1] for f in flows(run)]
    assert ports and set(ports) <= connected, (ports, connected)


def warnings(run: Run) -> list[str]:
    return [line for line in run.stderr.splitlines() if line.startswith("sessiontap: warning:")]


def advice(run: Run) -> str:
    """The line after the warnings that says how to route the client through the proxy."""
    return next(line for line in run.stderr.splitlines() if line.startswith("sessiontap: to record it,"))


# -- the official SDKs and plain Node, in regular mode --------------------------------------------------------

def test_elevenlabs_js_over_http_is_recorded_in_regular_mode(tmp_path, sessiontap_home, node, guard):
    # --timeout 3: elevenlabs-js leaves its request timer armed, and the client lingers that long after its last call
    run = recorded(tmp_path, sessiontap_home, ["node", str(NODE / "js_http.mjs"), "--behaviour", "new-conversation",
                                               "--messages", '["Cotton t-shirts.", "Made in Vietnam."]',
                                               "--timeout", "3"], node_options=guard)
    assert run.code == 0, run.stderr
    assert run.stdout.count("agent: ") == 2
    calls = run.calls()
    assert len(calls) == 2 and {c["endpoint"] for c in calls} == {"simulate"}, calls
    findings = json.loads((run.out / "findings.json").read_text())
    assert "context-reset" in {f["rule"] for f in findings["findings"]}  # the client that forgets, diagnosed
    assert len(flows(run)) == 2
    assert_joined(run)
    assert not warnings(run), run.stderr


def test_elevenlabs_client_over_the_socket_is_recorded_and_names_its_line(tmp_path, sessiontap_home, node, guard):
    run = recorded(tmp_path, sessiontap_home, ["node", str(NODE / "js_ws.mjs"), "--behaviour", "socket-per-message",
                                               "--messages", '["Cotton t-shirts.", "Made in Vietnam."]'],
                   node_options=guard)
    assert run.code == 0, run.stderr
    calls = run.calls()
    assert len(calls) == 2 and {c["protocol"] for c in calls} == {"websocket"}, calls
    findings = json.loads((run.out / "findings.json").read_text())
    assert "new-conversation-per-message" in {f["rule"] for f in findings["findings"]}
    assert "a new WebSocket conversation for every message" in findings["verdict"]
    assert all(any(f[0] == "tests/clients/node/js_ws.mjs" for f in c["code"]) for c in calls), calls
    assert_joined(run)
    assert not warnings(run), run.stderr


def test_plain_fetch_https_and_ws_go_through_the_proxy(tmp_path, sessiontap_home, node, guard):
    script = tmp_path / "plain.cjs"
    script.write_text(PLAIN)
    run = recorded(tmp_path, sessiontap_home, ["node", str(script)], node_options=guard, cwd=tmp_path)
    assert run.code == 0, run.stderr
    assert run.stdout.splitlines() == ["fetch 200", "https 200", "ws closed"], run.stdout
    calls = run.calls()
    assert [c["protocol"] for c in calls] == ["http", "http", "websocket"], calls
    assert [f.request.host for f in flows(run)] == ["127.0.0.1"] * 3  # re-targeted to the simulator
    assert_joined(run)
    lines = PLAIN.splitlines()
    https_line = next(i for i, t in enumerate(lines, 1) if "https.request(url" in t)
    ws_line = next(i for i, t in enumerate(lines, 1) if "new WebSocket(" in t)
    assert calls[1]["code"][0][:2] == ["plain.cjs", https_line], calls[1]["code"]
    assert calls[2]["code"][0][:2] == ["plain.cjs", ws_line], calls[2]["code"]
    assert not any("proxy.cjs" in f[0] for c in calls for f in c.get("code") or []), calls
    assert not warnings(run), run.stderr


# -- around the proxy -----------------------------------------------------------------------------------------

def test_a_node_client_exempted_by_no_proxy_is_warned_about(tmp_path, sessiontap_home, node, guard):
    script = tmp_path / "plain.cjs"
    script.write_text(PLAIN)
    run = recorded(tmp_path, sessiontap_home, ["env", "NO_PROXY=api.elevenlabs.io", "node", str(script)],
                   node_options=guard, cwd=tmp_path)
    assert run.code == 0, run.stderr
    assert "viaFetch failed: test guard: api.elevenlabs.io is not loopback" in run.stdout  # it did go direct
    assert not run.calls()
    [none, around] = warnings(run)
    assert NO_CALL in none
    assert "looked up api.elevenlabs.io itself 3 times, first at plain.cjs:" in around and AROUND in around, around
    assert "HTTPS_PROXY" in advice(run)


def test_a_python_client_with_trust_env_false_is_warned_about(tmp_path, sessiontap_home):
    script = tmp_path / "around.py"
    script.write_text(AROUND_PY)
    run = recorded(tmp_path, sessiontap_home, [sys.executable, str(script)], cwd=tmp_path)
    assert run.code == 0, run.stderr
    assert "direct:" in run.stdout and "no lookups in the tests" in run.stdout  # looked up (and failed, offline)
    [none, around] = warnings(run)
    assert NO_CALL in none and "trust_env=False" in advice(run)
    assert "looked up api.elevenlabs.io itself once, first at around.py:" in around and AROUND in around, around


def test_a_command_that_makes_no_call_is_warned_about(tmp_path, sessiontap_home):
    run = recorded(tmp_path, sessiontap_home, [sys.executable, "-c", "print('hello')"], mode="reverse")
    assert run.code == 0 and run.stdout == "hello\n", run.stderr
    [none] = warnings(run)  # printed once the command has ended, before the verdict
    assert NO_CALL in none and "ELEVENLABS_BASE_URL" in advice(run)
    assert run.stderr.index(advice(run)) < run.stderr.index("0 calls")


def test_a_client_that_goes_through_the_proxy_gets_no_warning(tmp_path, sessiontap_home):
    run = recorded(tmp_path, sessiontap_home, [sys.executable, "-m", "sessiontap.samples", "fixed-http",
                                               "--turns", "2"])
    assert run.code == 0, run.stderr
    assert len(run.calls()) == 2 and not warnings(run), run.stderr
    assert not [line for line in trace(run) if line["kind"] == "resolve"]


# -- proxy.cjs on its own -------------------------------------------------------------------------------------

def node_with_proxy(code: str, tmp_path: Path, guard: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``node -e code`` with proxy.cjs (then the guard) preloaded and only the given proxy variables."""
    base = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    options = f'--require "{PROXY_CJS}" {guard}'
    return subprocess.run(["node", "-e", code], capture_output=True, text=True, timeout=30, cwd=tmp_path,
                          env={**base, "NODE_OPTIONS": options, **env})


def refusing_proxy(reply: bytes) -> tuple[socket.socket, threading.Thread, list[bytes]]:
    """A loopback "proxy" that reads one CONNECT and answers ``reply``; what it read is kept."""
    server = socket.create_server(("127.0.0.1", 0))
    seen: list[bytes] = []

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            seen.append(conn.recv(4096))
            conn.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, thread, seen


FETCH = ('fetch("https://api.elevenlabs.io/v1/user").then((r) => console.log("status", r.status), '
         '(e) => console.log("error", e.cause && e.cause.code, e.cause && e.cause.message))')


def test_a_refused_tunnel_fails_the_request_cleanly(tmp_path, node, guard):
    server, thread, seen = refusing_proxy(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
    with server:
        port = server.getsockname()[1]
        proc = node_with_proxy(FETCH, tmp_path, guard, HTTPS_PROXY=f"http://user:pw@127.0.0.1:{port}")
        thread.join(10)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    assert proc.stdout == (f"error ERR_PROXY_TUNNEL the proxy 127.0.0.1:{port} refused CONNECT "
                           "api.elevenlabs.io:443: HTTP/1.1 403 Forbidden\n")
    assert seen[0].startswith(b"CONNECT api.elevenlabs.io:443 HTTP/1.1\r\nHost: api.elevenlabs.io:443\r\n")
    assert b"Proxy-Authorization: Basic dXNlcjpwdw==\r\n" in seen[0]


def test_an_unreachable_proxy_fails_the_request_cleanly(tmp_path, node, guard):
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]  # closed again below: nothing listens there
    proc = node_with_proxy(FETCH, tmp_path, guard, HTTPS_PROXY=f"http://127.0.0.1:{port}")
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    assert proc.stdout.startswith(f"error ECONNREFUSED cannot reach the proxy 127.0.0.1:{port} for "
                                  "api.elevenlabs.io:443"), proc.stdout


def test_without_a_proxy_variable_nothing_changes(tmp_path, node, guard):
    code = ('const tls = require("tls"); console.log(tls.connect.name, tls.connect.toString().includes("tunnel"));'
            + FETCH)
    proc = node_with_proxy(code, tmp_path, guard)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    assert proc.stdout.splitlines() == [  # node's own tls.connect; the guard answers the lookup
        "connect false", "error ENOTFOUND test guard: api.elevenlabs.io is not loopback"]


def test_no_proxy_and_loopback_hosts_connect_directly(tmp_path, node, guard):
    server, thread, seen = refusing_proxy(b"HTTP/1.1 403 Forbidden\r\n\r\n")
    with server:
        port = server.getsockname()[1]
        for no_proxy in ("api.elevenlabs.io", ".elevenlabs.io", "elevenlabs.io:443", "*"):
            proc = node_with_proxy(FETCH, tmp_path, guard, HTTPS_PROXY=f"http://127.0.0.1:{port}",
                                   NO_PROXY=no_proxy)
            assert "test guard: api.elevenlabs.io is not loopback" in proc.stdout, (no_proxy, proc.stdout)
        with socket.create_server(("127.0.0.1", 0)) as s:
            closed = s.getsockname()[1]  # nothing listens there once closed
        local = f'fetch("https://localhost:{closed}/").catch((e) => console.log(e.cause && e.cause.code))'
        proc = node_with_proxy(local, tmp_path, guard, HTTPS_PROXY=f"http://127.0.0.1:{port}")
        assert proc.stdout == "ECONNREFUSED\n", proc.stdout
    assert not seen  # the proxy never heard of any of them


# -- the pieces ------------------------------------------------------------------------------------------------

def test_regular_mode_preloads_proxy_cjs_before_the_users_node_options(tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "mitmproxy-ca-cert.pem").write_text("")
    regular = child_env("regular", "127.0.0.1", 8080, conf, {"NODE_OPTIONS": "--max-old-space-size=300"})
    assert regular["NODE_OPTIONS"] == f'--require "{PROXY_CJS}" --max-old-space-size=300'
    assert child_env("regular", "127.0.0.1", 8080, conf, {})["NODE_OPTIONS"] == f'--require "{PROXY_CJS}"'
    traced = traced_env(regular, tmp_path / "code.jsonl")["NODE_OPTIONS"]
    assert traced.startswith('--require "') and traced.endswith(regular["NODE_OPTIONS"]) and "preload.cjs" in traced
    assert "NODE_OPTIONS" not in child_env("reverse", "127.0.0.1", 8080, conf, {})


RESOLVE = '{"kind": "resolve", "host": "api.elevenlabs.io", "time": 10.0, "pid": 1, "frames": [["c.py", 3, "main"]]}'


def test_resolve_lines_are_read_apart_and_joined_by_nothing():
    lines = ['{"kind": "connect", "port": 5, "time": 9.0, "pid": 1, "frames": [["c.py", 2, "f"]]}', RESOLVE,
             RESOLVE.replace("10.0", "11.0").replace('"c.py", 3', '"c.py", 4'), "not json",
             RESOLVE.replace("api.elevenlabs.io", "API.us.elevenlabs.io.").replace("10.0", "12.0"),
             RESOLVE.replace("10.0", "1.0")]
    code = CodeTrace()
    code.feed(lines)
    assert list(code.by_port) == [5] and code.code_for(5, 20.0) == [("c.py", 2, "f")]
    found = lookups(lines, since=5.0)
    assert [(x.host, x.time) for x in found] == [("api.elevenlabs.io", 10.0), ("api.elevenlabs.io", 11.0),
                                                  ("api.us.elevenlabs.io", 12.0)]
    assert around_proxy(found) == [("api.elevenlabs.io", 2, [("c.py", 3, "main")]),
                                   ("api.us.elevenlabs.io", 1, [("c.py", 3, "main")])]
    assert bypass_warnings("regular", 3, []) == []
    [warning, how] = bypass_warnings("reverse", 1, [Lookup("api.elevenlabs.io", 1.0, [])])
    assert "looked up api.elevenlabs.io itself once:" in warning and AROUND in warning
    assert "ELEVENLABS_BASE_URL" in how

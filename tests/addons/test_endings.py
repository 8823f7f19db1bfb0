"""AbnormalEndings: an upstream that fails reaches the client as the same failure as without the proxy.

Each case runs one client twice: straight against a misbehaving upstream on 127.0.0.1 (in this
process), and under ``sessiontap record`` (reverse, and regular over HTTPS with sessiontap's CA). The
proxied side is one run per mode for every case: this file run as a script (``python test_endings.py
UPSTREAM CASE...``) goes through the cases in turn and prints what it observed in each as one JSON
line. The cases share one upstream, which tells them apart by the agent id in the path (``path``).
Each test compares the two sides of its case and checks that the capture and the journal hold the
failure, on the case's flow.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections import defaultdict
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.sync.client import connect

if __name__ != "__main__":  # the client (this file run as a script) needs none of these: it starts quicker
    from mitmproxy import http
    from mitmproxy import io as mio
    from mitmproxy.connection import ConnectionState
    from mitmproxy.flow import Error
    from mitmproxy.test import taddons, tflow

    from sessiontap.endings import AbnormalEndings
    from sessiontap.router import ORIGIN_KEY
    from tests.conftest import SESSIONTAP, Run, clean_env, free_port

BODY = {"simulation_specification": {"simulated_user_config": {"first_message": "Hello"},
                                     "partial_conversation_history": [
                                         {"role": "user", "message": "Where is Moria?", "time_in_call_secs": 0}]},
        "new_turns_limit": 1}
REPLY = b'{"simulated_conversation": [{"role": "agent", "message": "Under the mountains."}], "analysis": {}}'
INIT = {"type": "conversation_initiation_client_data", "conversation_config_override": {}}
METADATA = {"type": "conversation_initiation_metadata",
            "conversation_initiation_metadata_event": {"conversation_id": "conv_endings"}}
AGENT_REPLY = {"type": "agent_response", "agent_response_event": {"agent_response": "Under the mountains."}}
PING = {"type": "ping", "ping_event": {"event_id": 7}}

# What the client (httpx) ends in, straight against the upstream and through the proxy. Without
# AbnormalEndings every proxied case but "silent" is an HTTP 502 page. mitmproxy buffers the body, so
# a reply cut short never reached the client at all, and it cannot tell a reset from a close upstream:
# the client's connection is closed without a response (RemoteProtocolError) in every one of those.
HTTP_CASES = {
    "refused": ("ConnectError", "RemoteProtocolError"),
    "close-before-headers": ("RemoteProtocolError", "RemoteProtocolError"),
    "reset-before-headers": ("ReadError", "RemoteProtocolError"),
    "close-mid-body": ("RemoteProtocolError", "RemoteProtocolError"),
    "reset-mid-body": ("ReadError", "RemoteProtocolError"),
    "silent": ("ReadTimeout", "ReadTimeout"),  # the client gives up after 1 s; mitmproxy never answered
}
WS_CASES = {"ws-abort": 1006, "ws-reset": 1006, "ws-close-1000": 1000}  # the close code the client sees
# The order of the proxied run: "refused" last, as from then on the upstream no longer listens.
CASES = [*(c for c in HTTP_CASES if c != "refused"), *WS_CASES, "ws-client-abort", "refused"]
REFUSE = "/refuse"  # asked straight (not through the proxy): the upstream closes its listener


def path(case: str) -> str:
    """The path (and query) a case's client calls: its own agent id tells the upstream which case it is."""
    agent = "agent_" + case.replace("-", "_")
    if case.startswith("ws-"):
        return f"/v1/convai/conversation?agent_id={agent}"
    return f"/v1/convai/agents/{agent}/simulate-conversation"


CASE_AT = {path(case): case for case in CASES}


def user_message(text: str) -> str:
    return json.dumps({"type": "user_message", "text": text})


# ---------------------------------------------------------------- the client

def observe_http(case: str, base: str) -> dict[str, Any]:
    """POST one simulate-conversation call; the status and body, or the httpx error it ended in."""
    timeout = httpx.Timeout(10.0, read=1.0 if case == "silent" else 10.0)
    try:
        with httpx.Client(timeout=timeout) as client:
            response = client.post(base + path(case), json=BODY)
    except httpx.HTTPError as e:
        return {"error": type(e).__name__, "detail": str(e)[:120]}
    return {"status": response.status_code, "body": response.text[:80]}


def observe_ws(case: str, base: str) -> dict[str, Any]:
    """Talk on the agent WebSocket until it closes; the replies seen and how it closed."""
    seen: list[str] = []
    with connect("ws" + base[4:] + path(case), open_timeout=5, close_timeout=2) as ws:
        ws.send(json.dumps(INIT))
        seen.append(json.loads(ws.recv(timeout=5))["type"])
        ws.send(user_message("Where is Moria?"))
        seen.append(json.loads(ws.recv(timeout=5))["type"])
        if case == "ws-client-abort":
            ws.socket.shutdown(socket.SHUT_RDWR)  # as if the client died: the connection ends, no close frame
            return {"replies": seen}
        ws.send(user_message("And Lothlorien?"))
        try:
            while True:
                seen.append(json.loads(ws.recv(timeout=5))["type"])
        except ConnectionClosed as e:
            return {"replies": seen, "close_frame": e.rcvd is not None, "code": e.rcvd.code if e.rcvd else 1006,
                    "clean": isinstance(e, ConnectionClosedOK)}
        except TimeoutError:
            return {"replies": seen, "error": "TimeoutError"}


def observe(case: str, base: str) -> dict[str, Any]:
    """What the client observed in one case, against ``base`` (the upstream itself, or the proxy's)."""
    return observe_ws(case, base) if case.startswith("ws-") else observe_http(case, base)


def stop_listening(upstream: str) -> None:
    """Have the upstream close its listener (asked straight, not through the proxy): then nobody listens."""
    with socket.create_connection(("127.0.0.1", urlsplit(upstream).port or 80), timeout=5) as s:
        s.sendall(f"GET {REFUSE} HTTP/1.1\r\n\r\n".encode())
        s.recv(1)  # it ends this connection once its listener is closed


def observe_proxied(case: str, base: str, upstream: str) -> dict[str, Any]:
    """One case of the proxied run; a client that failed reports why, and the run goes on to the next case."""
    try:
        if case == "refused":
            stop_listening(upstream)
        return observe(case, base)
    except Exception:
        return {"crashed": traceback.format_exc()}


# ---------------------------------------------------------------- the upstream

def reset(transport: asyncio.BaseTransport) -> None:
    """End a TCP connection with a RST (SO_LINGER 0, then close)."""
    transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class Peer:
    """The server side of one agent WebSocket: websockets' sans-I/O protocol over the upstream's streams."""

    def __init__(self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.protocol = ServerProtocol()
        self.protocol.receive_data(head)
        [request] = self.protocol.events_received()
        assert isinstance(request, Request)
        self.protocol.send_response(self.protocol.accept(request))
        self.events: list[Any] = []
        self.flush()

    def flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                self.writer.write(data)
            else:
                self.writer.close()  # websockets' cue to end the TCP connection

    def send(self, message: dict[str, Any]) -> None:
        self.protocol.send_text(json.dumps(message).encode())
        self.flush()

    def close(self, code: int) -> None:
        self.protocol.send_close(code)
        self.flush()

    async def recv(self) -> None:
        """Wait for the client's next message; ConnectionClosed once the connection has ended."""
        while True:
            self.events += self.protocol.events_received()
            self.flush()  # answers to pings and close frames
            while self.events:
                event = self.events.pop(0)
                if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                    return
            if self.protocol.state is State.CLOSED:
                raise self.protocol.close_exc
            try:
                data = await self.reader.read(65536)
            except ConnectionError:
                data = b""
            if data:
                self.protocol.receive_data(data)
            else:
                self.protocol.receive_eof()


class Upstream:
    """A misbehaving upstream on 127.0.0.1, on its own thread: HTTP/1.1 or the agent WebSocket, as each path says."""

    def __init__(self) -> None:
        self.port = 0
        # How each case's client sockets ended, as the server saw them (1006: no close frame).
        self.closes: defaultdict[str, list[int]] = defaultdict(list)
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.stop: asyncio.Event | None = None
        self.listener: asyncio.Server | None = None
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self.serve(),), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def serve(self) -> None:
        self.stop = asyncio.Event()
        self.listener = await asyncio.start_server(self.answer, "127.0.0.1", 0)
        self.port = self.listener.sockets[0].getsockname()[1]
        self.ready.set()
        async with self.listener:
            await self.stop.wait()

    async def answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()  # sessiontap's reachability check
            return
        target = head.split(b" ", 2)[1].decode()
        if target == REFUSE:
            assert self.listener is not None
            self.listener.close()
            writer.close()
            return
        case = CASE_AT[target]
        if case.startswith("ws-"):
            await self.talk(case, Peer(head, reader, writer))
        else:
            await self.fail(case, head, reader, writer)

    async def fail(self, case: str, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        await reader.readexactly(length)
        if case in ("close-mid-body", "reset-mid-body"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                         % len(REPLY) + REPLY[:20])
            await writer.drain()
            await asyncio.sleep(0.2)  # the head and the first bytes arrive before the connection ends
        if case == "silent":
            await reader.read()  # never answers; waits for the client to give up
        if case.startswith("reset-"):
            reset(writer.transport)
        else:
            writer.close()

    async def talk(self, case: str, ws: Peer) -> None:
        try:
            await ws.recv()
            ws.send(METADATA)
            await ws.recv()
            ws.send(AGENT_REPLY)
            await ws.recv()  # the second user message: the reply above has arrived
            if case == "ws-abort":
                ws.send(PING)  # still delivered: it was sent before the connection ended
                ws.writer.close()  # the TCP connection ends, no close frame
                return
            if case == "ws-reset":
                reset(ws.writer.transport)
                return
            ws.close(1000)  # ws-close-1000
            await ws.recv()  # until the client's answering close frame
        except ConnectionClosed as e:
            self.closes[case].append(e.rcvd.code if e.rcvd else 1006)

    def __enter__(self) -> Upstream:
        self.thread.start()
        self.ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.stop is not None:
            self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(5)


def closes_seen(upstream: Upstream, case: str) -> list[int]:
    """The upstream's view of a case's client socket endings, once there is one (at most 5 s)."""
    for _ in range(50):
        if upstream.closes[case]:
            break
        time.sleep(0.1)
    return list(upstream.closes[case])


def direct(case: str) -> dict[str, Any]:
    """What the client observes in one case straight against the upstream, without the proxy."""
    if case == "refused":
        return observe(case, f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with Upstream() as upstream:
        return observe(case, upstream.url)


# ---------------------------------------------------------------- the proxied run

CLIENT = [sys.executable, __file__]
MODES = ["reverse", "regular"]


@dataclass
class Batch:
    """One ``sessiontap record`` run of every case in one mode: what the client saw, and what it left behind."""

    run: Run
    seen: dict[str, dict[str, Any]]  # the client's observation, by case
    flows: list[http.HTTPFlow]  # flows.mitm
    journal: list[dict[str, Any]]  # every line parses
    closes: list[int]  # how the client's socket ended in ws-client-abort, as the upstream saw it

    def observed(self, case: str) -> dict[str, Any]:
        assert case in self.seen, f"the client reported nothing on {case}: {self.run.stderr[-2000:]}"
        assert "crashed" not in self.seen[case], self.seen[case]["crashed"]
        return self.seen[case]

    def flow(self, case: str) -> http.HTTPFlow:
        [flow] = [f for f in self.flows if f.request.path == path(case)]
        return flow

    def events(self, flow: http.HTTPFlow) -> list[dict[str, Any]]:
        """The journal lines about ``flow``: its calls, its WebSocket's close, its findings."""
        return [e for e in self.journal if flow.id in (e.get("flow_id"), *e.get("flow_ids", ()))]


@pytest.fixture(scope="module", params=MODES)
def batch(request: pytest.FixtureRequest, sessiontap_home, tmp_path_factory) -> Batch:
    """Every case in turn under one ``sessiontap record`` in this mode, against one upstream."""
    mode = request.param
    cwd = tmp_path_factory.mktemp(f"endings-{mode}")
    out = cwd / "out"
    # No ElevenLabs variables, as with direct_env (clean_env leaves out the proxy ones).
    env = {k: v for k, v in clean_env(sessiontap_home).items() if not k.startswith("ELEVENLABS_")}
    with Upstream() as upstream:
        proc = subprocess.run([SESSIONTAP, "record", "--mode", mode, "--upstream", upstream.url, "--out", str(out),
                               "--", *CLIENT, upstream.url, *CASES],
                              capture_output=True, text=True, timeout=90, cwd=cwd, env=env)
        closes = closes_seen(upstream, "ws-client-abort")
    run = Run(proc.returncode, proc.stdout, proc.stderr, out)
    assert run.code == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith('{"case": ')]
    with open(out / "flows.mitm", "rb") as f:
        flows = [flow for flow in mio.FlowReader(f).stream() if isinstance(flow, http.HTTPFlow)]
    return Batch(run, {line.pop("case"): line for line in lines}, flows, run.journal(), closes)


@pytest.mark.parametrize("case", HTTP_CASES)
def test_an_upstream_failure_reaches_the_client_as_a_failure_not_a_502_page(case, batch, direct_env):
    alone = direct(case)
    proxied = batch.observed(case)
    assert "status" not in alone and "status" not in proxied, proxied  # no reply, no page made up by the proxy
    assert (alone["error"], proxied["error"]) == HTTP_CASES[case]
    flow = batch.flow(case)
    assert flow.error is not None and flow.error.msg != "Connection killed."  # the upstream's own error
    events = batch.events(flow)
    [call] = [e for e in events if e["event"] == "call"]
    assert call["error"] == flow.error.msg
    assert any(e["event"] == "finding" and e["rule"] == "upstream-error" for e in events)


@pytest.mark.parametrize("case", WS_CASES)
def test_a_websocket_ending_reaches_the_client_as_it_happened(case, batch, direct_env):
    alone = direct(case)
    proxied = batch.observed(case)
    assert proxied == alone  # the same messages, and no close frame where the upstream sent none
    code = WS_CASES[case]
    assert alone["code"] == code and alone["close_frame"] is (code == 1000)
    if case == "ws-abort":
        assert alone["replies"][-1] == "ping"  # what the upstream sent before it vanished still arrives
    flow = batch.flow(case)
    assert flow.websocket is not None
    assert flow.websocket.close_code == code and not flow.websocket.closed_by_client
    events = batch.events(flow)
    assert [e["close_code"] for e in events if e["event"] == "ws-close"] == [code]
    calls = [e for e in events if e["event"] == "call"]
    assert calls[-1]["reply"] == [] and calls[-1]["close_code"] == code  # the last message got no reply
    abnormal = any(e["event"] == "finding" and e["rule"] == "upstream-error" for e in events)
    assert abnormal is (code == 1006)


def test_a_client_that_vanishes_reaches_the_upstream_as_an_abort(batch, direct_env):
    with Upstream() as upstream:
        observe("ws-client-abort", upstream.url)
        alone = closes_seen(upstream, "ws-client-abort")
    batch.observed("ws-client-abort")  # its client got through its part
    assert alone == batch.closes == [1006]  # no close frame reached the upstream (mitmproxy alone sends 1000)
    flow = batch.flow("ws-client-abort")
    assert flow.websocket is not None
    assert flow.websocket.close_code == 1006 and flow.websocket.closed_by_client


def failed_flow(**metadata: str) -> http.HTTPFlow:
    flow = tflow.tflow(err=True)
    flow.metadata.update(metadata)
    return flow


def test_only_an_intercepted_upstream_failure_with_the_client_waiting_is_killed():
    addon = AbnormalEndings()
    ours = {ORIGIN_KEY: "http://127.0.0.1:8080"}
    killed = failed_flow(**ours)
    addon.error(killed)
    assert killed.error is not None and killed.error.msg == Error.KILLED_MESSAGE
    not_ours = failed_flow()
    request_cut_short = failed_flow(**ours)
    request_cut_short.request.timestamp_end = None
    client_gone = failed_flow(**ours)
    client_gone.client_conn.state = ConnectionState.CAN_WRITE
    for flow in (not_ours, request_cut_short, client_gone):
        addon.error(flow)
        assert flow.error is not None and flow.error.msg != Error.KILLED_MESSAGE


def test_without_the_websocket_relay_it_warns_once_and_changes_nothing(caplog):
    addon = AbnormalEndings()
    with taddons.context(addon):
        for _ in range(2):
            flow = tflow.twebsocketflow()
            flow.metadata[ORIGIN_KEY] = "http://127.0.0.1:8080"
            addon.websocket_start(flow)
    warnings = [r.message for r in caplog.records if "WebSocket relay was not found" in r.message]
    assert len(warnings) == 1 and "clean close (1000)" in warnings[0]
    assert not [r for r in caplog.records if r.levelname == "ERROR"]  # no hook failed


if __name__ == "__main__":  # the client under `sessiontap record`: regular mode goes to the real host name
    base = os.environ.get("ELEVENLABS_BASE_URL") or "https://api.elevenlabs.io"
    for case in sys.argv[2:]:  # after the upstream's URL
        print(json.dumps({"case": case, **observe_proxied(case, base, sys.argv[1])}), flush=True)

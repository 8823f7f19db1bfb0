"""Synthetic captures: a flows.mitm of N calls in make_capture.py's mix, written directly (no network, no proxy).

`make_capture.py` records real traffic, which takes minutes for 10k calls and most of an hour for 100k. This
file writes the same capture from the same ingredients, with mitmproxy's own flow classes and `FlowWriter`:

- the sessions of `make_capture.plan` (8:4:5:3 fixed-http, faulty-http, fixed-ws, faulty-ws; 10 calls each),
  played by 12 virtual clients at once (a virtual clock per client, so sessions interleave as they do live);
- request bodies and frames built as the sample clients build them (`sessiontap.samples`: the fixed HTTP client
  resends the whole history, the faulty one sends none and a `conversation_context` instead; the fixed
  WebSocket client keeps one socket and sends a `contextual_update`, the faulty one opens a socket per message);
- response bodies and server frames made by the simulator's own code (`validate_simulation`, `_simulated_turns`,
  `_analysis`, `agent.reply`, the `agent_chat_response_part` chunks), serialised as aiohttp does;
- what `sessiontap record` adds: the `X-Sessiontap-Session` header, `xi-api-key` as `[REDACTED]`, and the
  `sessiontap` flow metadata (session, client, call ids, and the code frames the code trace noted, copied from a
  real make_capture recording), flows written in the order they completed.

Timestamps are virtual: a few ms between a client's frames and 10-35 ms per HTTP answer, as a real 12-thread run
on loopback shows. What it does not have: the journal, findings.json and code.jsonl beside the capture, TCP
details, and any error or timing anomaly a real run may have.

Run: `uv run python bench/synth_capture.py --calls 10000 --out DIR` (`--long N`: one fixed-http session of N turns);
`--check 1000` records a real capture of that many calls (make_capture.py, cached under bench/results/captures/)
and a synthetic one, runs `sessiontap report` on both and prints their verdicts and findings side by side.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import heapq
import itertools
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import websockets
from make_capture import META_FILE as REAL_META_FILE
from make_capture import Plan, make_capture, messages, plan
from measure import CAPTURES, ROOT
from mitmproxy import connection, http, io
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.websocket import WebSocketData, WebSocketMessage
from wsproto.frame_protocol import Opcode

from sessiontap.samples.chat import DEFAULT_AGENT_ID, SESSION_HEADER, SIMULATED_USER_PROMPT
from sessiontap.samples.script import OFFICER_CONTEXT
from sessiontap.simulator import agent
from sessiontap.simulator.server import AUDIO_FORMAT, Simulator, _analysis, _chunks, validate_simulation

META_FILE = "synth_capture.json"
FORMAT = 1
"""Bumped when what this file writes changes: cached captures of another format are made again."""
CONCURRENCY = 12
HOST = "127.0.0.1"
SIM_PORT = 35933
PROXY_PORT = 52383
SIMULATE_PATH = f"/v1/convai/agents/{DEFAULT_AGENT_ID}/simulate-conversation"
WS_PATH = f"/v1/convai/conversation?agent_id={DEFAULT_AGENT_ID}"
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SERVER = f"Python/{sys.version_info.major}.{sys.version_info.minor} aiohttp/{aiohttp.__version__}"
HTTPX_AGENT = f"python-httpx/{httpx.__version__}"
WS_AGENT = f"Python/{sys.version_info.major}.{sys.version_info.minor} websockets/{websockets.__version__}"
CLIENT = "run: python bench/make_capture.py --client (synthetic, bench/synth_capture.py)"
ORIGIN = f"http://{HOST}:{PROXY_PORT}"


def _frames(*top: tuple[str, int, str]) -> list[list[Any]]:
    """Code-trace frames as sessiontap stores them: the sample client's, then make_capture's own."""
    runner = [["bench/make_capture.py", 168, "<lambda>"], ["bench/make_capture.py", 168, "client_main"],
              ["bench/make_capture.py", 285, "main"], ["bench/make_capture.py", 303, "<module>"]]
    return [list(frame) for frame in top] + runner


CODE: dict[str, list[list[Any]]] = {
    "fixed-http": _frames(("addons/samples/chat.py", 188, "_simulate"), ("addons/samples/chat.py", 267, "send"),
                          ("bench/make_capture.py", 149, "play")),
    "faulty-http": _frames(("addons/samples/chat.py", 188, "_simulate"), ("addons/samples/chat.py", 234, "send"),
                           ("bench/make_capture.py", 149, "play")),
    "fixed-ws": _frames(("addons/samples/websocket.py", 95, "_connect"),
                        ("addons/samples/websocket.py", 70, "_conversation"),
                        ("addons/samples/websocket.py", 191, "start_session"), ("bench/make_capture.py", 137, "play")),
    "faulty-ws": _frames(("addons/samples/websocket.py", 95, "_connect"),
                         ("addons/samples/websocket.py", 70, "_conversation"),
                         ("addons/samples/websocket.py", 163, "send"), ("bench/make_capture.py", 140, "play")),
}
"""Where the code trace of a real make_capture recording says each kind of call was made."""


def client_json(body: Any) -> bytes:
    """A JSON body as httpx encodes `json=`: compact, UTF-8."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def server_json(body: Any) -> bytes:
    """A JSON body or frame as the simulator writes it (aiohttp's json_response, `send_str(json.dumps(...))`)."""
    return json.dumps(body).encode("utf-8")


@dataclass
class Clock:
    """A virtual client's time, in epoch seconds, and its source of jitter."""

    now: float
    rng: random.Random

    def step(self, low_ms: float, high_ms: float) -> float:
        """Advance by a random number of milliseconds in [low, high]; return the new time."""
        self.now += self.rng.uniform(low_ms, high_ms) / 1000
        return self.now


@dataclass
class Generator:
    """Builds the flows of one capture; ids and jitter come from one seeded random source."""

    seed: int
    start: float
    rng: random.Random = field(init=False)
    sim: Simulator = field(init=False)
    next_port: int = 40000
    written: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.sim = Simulator()  # never started: only its answer-building methods are used

    # ids and connections -----------------------------------------------------------------------------------------

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def hex(self, n: int) -> str:
        return f"{self.rng.getrandbits(4 * n):0{n}x}"

    def port(self) -> int:
        self.next_port = 32768 + (self.next_port - 32768 + 1) % 28000
        return self.next_port

    def connections(self, at: float) -> tuple[connection.Client, connection.Server]:
        """A client connection to the proxy opened at `at`, and the proxy's connection to the simulator."""
        client = connection.Client(peername=(HOST, self.port()), sockname=(HOST, PROXY_PORT), id=self.uuid(),
                                   timestamp_start=at, proxy_mode=ProxyMode.parse(f"reverse:http://{HOST}:{SIM_PORT}"))
        server = connection.Server(address=(HOST, SIM_PORT), peername=(HOST, SIM_PORT), sockname=(HOST, self.port()),
                                   id=self.uuid(), timestamp_start=at + 0.012, timestamp_tcp_setup=at + 0.013)
        return client, server

    def flow(self, client: connection.Client, server: connection.Server, kind: str, session: str,
             **extra: Any) -> http.HTTPFlow:
        f = http.HTTPFlow(client, server)
        f.id = self.uuid()
        tags: dict[str, Any] = dict(extra)
        tags.update(calls=[f.id], code=CODE[kind], client=CLIENT, session_source="client", session=session)
        f.metadata = {"sessiontap": tags, "sessiontap.client_origin": ORIGIN}
        return f

    # HTTP ----------------------------------------------------------------------------------------------------------

    def simulate(self, clock: Clock, client: connection.Client, server: connection.Server, kind: str,
                 session: str, body: dict[str, Any]) -> tuple[http.HTTPFlow, dict[str, Any]]:
        """One simulate-conversation call on a keep-alive connection; the flow and the simulator's answer."""
        content = client_json(body)
        start = clock.step(0.5, 3)
        request = http.Request(
            HOST, SIM_PORT, b"POST", b"http", b"", SIMULATE_PATH.encode(), b"HTTP/1.1",
            http.Headers([(b"Host", f"{HOST}:{SIM_PORT}".encode()), (b"Accept", b"*/*"),
                          (b"Accept-Encoding", b"gzip, deflate, br, zstd"), (b"Connection", b"keep-alive"),
                          (b"User-Agent", HTTPX_AGENT.encode()), (SESSION_HEADER.encode(), session.encode()),
                          (b"xi-api-key", b"[REDACTED]"), (b"Content-Length", str(len(content)).encode()),
                          (b"Content-Type", b"application/json"), (b"X-Sessiontap-Session", session.encode())]),
            content, None, start, clock.step(0.3, 3))
        spec, errors = validate_simulation(body)
        assert spec is not None, errors
        turns = self.sim._simulated_turns(spec)
        everything = spec.history + [(turn["role"], turn["message"]) for turn in turns]
        answer = {"simulated_conversation": self.sim._echoed(spec) + turns,
                  "analysis": _analysis(everything, spec.criteria_ids)}
        out = server_json(answer)
        answered = clock.step(10, 35)
        response = http.Response(
            b"HTTP/1.1", 200, b"OK",
            http.Headers([(b"Content-Type", b"application/json; charset=utf-8"),
                          (b"Content-Length", str(len(out)).encode()),
                          (b"Date", formatdate(answered, usegmt=True).encode()), (b"Server", SERVER.encode()),
                          (b"X-Sessiontap-Session", session.encode())]),
            out, None, answered, clock.step(0.5, 4))
        f = self.flow(client, server, kind, session)
        f.request, f.response = request, response
        f.timestamp_created = start + 0.0002
        return f, answer

    def fixed_http(self, clock: Clock, session: Plan) -> tuple[str, list[http.HTTPFlow]]:
        """FixedElevenLabsChatClient: a unique session id, the whole history resent on every call."""
        sid = f"durin-{self.hex(12)}"
        began = clock.now
        client, server = self.connections(clock.step(1, 5))
        history: list[dict[str, Any]] = []
        flows = []
        for text in messages(session.turns):
            history.append({"role": "user", "message": text, "time_in_call_secs": int(clock.now - began)})
            body = {"simulation_specification": {
                        "simulated_user_config": {"prompt": {"prompt": SIMULATED_USER_PROMPT}},
                        "partial_conversation_history": [dict(turn) for turn in history]},
                    "new_turns_limit": 1}
            f, answer = self.simulate(clock, client, server, "fixed-http", sid, body)
            flows.append(f)
            reply = next(t["message"] for t in answer["simulated_conversation"] if t["role"] == "agent")
            history.append({"role": "agent", "message": reply, "time_in_call_secs": int(clock.now - began)})
        return sid, flows

    def faulty_http(self, clock: Clock, session: Plan) -> tuple[str, list[http.HTTPFlow]]:
        """ElevenLabsChatClient: `elevenlabs-session-0` always, no history, a `conversation_context` string."""
        sid = "elevenlabs-session-0"
        client, server = self.connections(clock.step(1, 5))
        history: list[tuple[str, str]] = []
        flows = []
        for text in messages(session.turns):
            history.append(("user", text))
            body = {"simulation_specification": {
                        "simulated_user_config": {"first_message": text, "prompt": {"prompt": SIMULATED_USER_PROMPT}},
                        "partial_conversation_history": []},
                    "conversation_context": " ".join(
                        f"{'User' if role == 'user' else 'Agent'}: {said}" for role, said in history[:-1]),
                    "new_turns_limit": 1}
            f, answer = self.simulate(clock, client, server, "faulty-http", sid, body)
            flows.append(f)
            history.append(("agent", next(t["message"] for t in answer["simulated_conversation"]
                                          if t["role"] == "agent")))
        return sid, flows

    # WebSocket -----------------------------------------------------------------------------------------------------

    def socket(self, clock: Clock, kind: str, sid: str, user_id: str, texts: list[str],
               context: str | None) -> http.HTTPFlow:
        """One agent socket: upgrade, initiation, metadata, opening line, then each text as a turn; client closes."""
        client, server = self.connections(clock.step(1, 5))
        key = base64.b64encode(self.rng.randbytes(16)).decode()
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        start = clock.step(8, 14)
        request = http.Request(
            HOST, SIM_PORT, b"GET", b"http", b"", WS_PATH.encode(), b"HTTP/1.1",
            http.Headers([(b"Host", f"{HOST}:{SIM_PORT}".encode()), (b"Upgrade", b"websocket"),
                          (b"Connection", b"Upgrade"), (b"Sec-WebSocket-Key", key.encode()),
                          (b"Sec-WebSocket-Version", b"13"),
                          (b"Sec-WebSocket-Extensions", b"permessage-deflate; client_max_window_bits"),
                          (SESSION_HEADER.encode(), sid.encode()), (b"User-Agent", WS_AGENT.encode()),
                          (b"X-Sessiontap-Session", sid.encode())]),
            b"", None, start, clock.step(0.3, 1.5))
        upgraded = clock.step(3, 15)
        response = http.Response(
            b"HTTP/1.1", 101, b"Switching Protocols",
            http.Headers([(b"Upgrade", b"websocket"), (b"Connection", b"upgrade"),
                          (b"Sec-WebSocket-Accept", accept.encode()),
                          (b"Sec-WebSocket-Extensions", b"permessage-deflate"),
                          (b"Date", formatdate(upgraded, usegmt=True).encode()), (b"Server", SERVER.encode()),
                          (b"X-Sessiontap-Session", sid.encode())]),
            b"", None, upgraded, clock.step(0.5, 3))
        cid = f"conv_{self.hex(32)}"
        msgs: list[WebSocketMessage] = []

        def say(from_client: bool, payload: dict[str, Any], low: float, high: float) -> None:
            msgs.append(WebSocketMessage(Opcode.TEXT, from_client, server_json(payload), clock.step(low, high)))

        say(True, {"type": "conversation_initiation_client_data",
                   "conversation_config_override": {"conversation": {"text_only": True}},
                   "custom_llm_extra_body": {}, "dynamic_variables": {}, "user_id": user_id}, 25, 40)
        say(False, {"type": "conversation_initiation_metadata", "conversation_initiation_metadata_event": {
            "conversation_id": cid, "agent_output_audio_format": AUDIO_FORMAT,
            "user_input_audio_format": AUDIO_FORMAT}}, 10, 25)
        history: list[tuple[str, str]] = [(agent.AGENT, agent.FIRST_MESSAGE)]
        say(False, {"type": "agent_response",
                    "agent_response_event": {"agent_response": agent.FIRST_MESSAGE, "event_id": 1}}, 4, 10)
        if context is not None:
            say(True, {"type": "contextual_update", "text": context}, 15, 25)
            history.append((agent.CONTEXT, context))
        event_id = 1
        for text in texts:
            say(True, {"type": "user_message", "text": text}, 5, 30)
            history.append((agent.USER, text))
            reply = agent.reply(history)
            event_id += 1
            for part, piece in [("start", ""), *(("delta", p) for p in _chunks(reply)), ("stop", "")]:
                say(False, {"type": "agent_chat_response_part",
                            "text_response_part": {"text": piece, "type": part, "event_id": event_id}}, 1, 8)
            say(False, {"type": "agent_response",
                        "agent_response_event": {"agent_response": reply, "event_id": event_id}}, 2, 10)
            history.append((agent.AGENT, reply))
        f = self.flow(client, server, kind, sid, turns=len(texts), user_id=user_id, conversation_id=cid)
        f.metadata["sessiontap"]["calls"] = [f"{f.id}#{n}" for n in range(1, len(texts) + 1)]
        f.request, f.response = request, response
        f.timestamp_created = start + 0.0002
        f.websocket = WebSocketData(messages=msgs, closed_by_client=True, close_code=1000, close_reason="",
                                    timestamp_end=clock.step(10, 60))
        return f

    def fixed_ws(self, clock: Clock, session: Plan) -> tuple[str, list[http.HTTPFlow]]:
        """FixedElevenLabsWebSocketClient: one socket for the session, a contextual_update after connecting."""
        sid, user = f"durin-{self.hex(12)}", f"durin-user-{self.hex(8)}"
        return sid, [self.socket(clock, "fixed-ws", sid, user, messages(session.turns), OFFICER_CONTEXT)]

    def faulty_ws(self, clock: Clock, session: Plan) -> tuple[str, list[http.HTTPFlow]]:
        """ElevenLabsWebSocketClient: a new socket, so a new server conversation, for every message."""
        sid, user = f"durin-{self.hex(12)}", f"durin-user-{self.hex(8)}"
        return sid, [self.socket(clock, "faulty-ws", sid, user, [text], None) for text in messages(session.turns)]

    def play(self, clock: Clock, session: Plan) -> tuple[str, list[http.HTTPFlow]]:
        player = {"fixed-http": self.fixed_http, "faulty-http": self.faulty_http,
                  "fixed-ws": self.fixed_ws, "faulty-ws": self.faulty_ws}[session.kind]
        return player(clock, session)


def flow_end(f: http.HTTPFlow) -> float:
    """When mitmproxy would have written the flow: at the socket's close, or at the end of the response."""
    if f.websocket is not None and f.websocket.timestamp_end is not None:
        return f.websocket.timestamp_end
    assert f.response is not None and f.response.timestamp_end is not None
    return f.response.timestamp_end


def write_capture(out_dir: Path, calls: int, *, turns_per_session: int = 10, long_session: bool = False,
                  seed: int = 1, start: float | None = None, concurrency: int = CONCURRENCY) -> Path:
    """Write `out_dir`/flows.mitm and its META_FILE (out_dir is replaced); return the capture's path.

    Sessions are dealt to `concurrency` virtual clients, each taking the next session when it is free; flows
    are written in the order they end, as soon as no later session can produce one that ends earlier.
    """
    if calls < 1 or turns_per_session < 1:
        raise ValueError("calls and turns_per_session must be at least 1")
    began = time.monotonic()
    out_dir = out_dir.resolve()
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    gen = Generator(seed, time.time() if start is None else start)
    sessions = plan(calls, turns_per_session, long_session)
    free: list[tuple[float, int]] = [(gen.start + n * 0.001, n) for n in range(concurrency)]
    heapq.heapify(free)
    pending: list[tuple[float, int, http.HTTPFlow]] = []
    order = itertools.count()  # ties in end time: first made, first written
    kinds: dict[str, str] = {}
    by_kind: Counter[str] = Counter()
    flows_written = websockets_written = 0
    with open(partial / "flows.mitm", "wb") as fh:
        writer = io.FlowWriter(fh)

        def flush(before: float) -> None:
            nonlocal flows_written, websockets_written
            while pending and pending[0][0] <= before:
                f = heapq.heappop(pending)[2]
                writer.add(f)
                flows_written += 1
                websockets_written += f.websocket is not None

        for session in sessions:
            at, worker = heapq.heappop(free)
            flush(at)  # every flow still to come ends after `at`
            clock = Clock(at, gen.rng)
            sid, flows = gen.play(clock, session)
            kinds[sid] = session.kind
            by_kind[session.kind] += session.turns
            for f in flows:
                heapq.heappush(pending, (flow_end(f), next(order), f))
            heapq.heappush(free, (clock.step(0.5, 5), worker))
        flush(float("inf"))
    meta = {
        "synthetic": True,
        "format": FORMAT,
        "generator": "bench/synth_capture.py",
        "seed": seed,
        "calls_planned": calls,
        "calls_done": sum(s.turns for s in sessions),
        "sessions": len(sessions),
        "sessions_by_kind": dict(Counter(s.kind for s in sessions)),
        "calls_by_kind": dict(by_kind),
        "flows": flows_written,
        "websocket_flows": websockets_written,
        "concurrency": concurrency,
        "turns_per_session": turns_per_session,
        "long_session": long_session,
        "virtual_seconds": round(max(t for t, _ in free) - gen.start, 2),
        "errors": [],
        "session_kinds": kinds,
        "generate_seconds": round(time.monotonic() - began, 2),
    }
    (partial / META_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.rename(out_dir)
    return out_dir / "flows.mitm"


SPECS: dict[str, dict[str, Any]] = {
    "1k": {"calls": 1000},
    "10k": {"calls": 10_000},
    "100k": {"calls": 100_000},
    "long500": {"calls": 500, "long_session": True},
}


def ensure_synthetic(name: str, fresh: bool = False) -> tuple[Path, bool]:
    """bench/results/captures/synth-<name>, written now if absent or of another format; (dir, written now)."""
    spec = SPECS[name]
    out = CAPTURES / f"synth-{name}"
    meta = out / META_FILE
    if (not fresh and (out / "flows.mitm").exists() and meta.exists()
            and json.loads(meta.read_text(encoding="utf-8")).get("format") == FORMAT):
        return out, False
    write_capture(out, spec["calls"], long_session=spec.get("long_session", False))
    return out, True


# --check: a real and a synthetic capture of the same mix, through `sessiontap report` -------------------------------


def report(capture: Path, out: Path) -> dict[str, Any]:
    """`sessiontap report CAPTURE --out OUT` in a fresh process; what findings.json says, by client kind."""
    argv = [str(Path(sys.prefix) / "bin" / "sessiontap"), "report", str(capture), "--out", str(out)]
    began = time.monotonic()
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=1800, check=False)
    seconds = time.monotonic() - began
    if done.returncode != 0:
        raise RuntimeError(f"sessiontap report {capture} exited with {done.returncode}: {done.stderr[-2000:]}")
    doc = json.loads((out / "findings.json").read_text(encoding="utf-8"))
    meta_file = capture / META_FILE if (capture / META_FILE).exists() else capture / REAL_META_FILE
    kinds: dict[str, str] = json.loads(meta_file.read_text(encoding="utf-8")).get("session_kinds", {})

    def kind(session: str) -> str:
        return kinds.get(session.split("#", 1)[0], "other")

    by_kind: dict[str, Counter[str]] = {}
    for finding in doc["findings"]:
        by_kind.setdefault(kind(finding["session"]), Counter())[f"{finding['rule']}/{finding['severity']}"] += 1
    sessions = doc["sessions"]
    return {
        "seconds": round(seconds, 2),
        "verdict": doc["verdict"],
        "calls": doc["calls"],
        "sessions": len(sessions),
        "sessions_by_kind": dict(Counter(kind(s["id"]) for s in sessions)),
        "sessions_by_protocol": dict(Counter(s["protocol"] for s in sessions)),
        "server_conversations": sum(s["server_conversations"] for s in sessions),
        "resets": sum(s["resets"] for s in sessions),
        "findings": len(doc["findings"]),
        "findings_by_rule": dict(Counter(f"{f['rule']}/{f['severity']}" for f in doc["findings"])),
        "findings_by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
    }


def check(calls: int) -> int:
    """Print a real and a synthetic capture's report side by side; 1 when their sessions or findings differ."""
    real = CAPTURES / ("1k" if calls == 1000 else f"real-{calls}")
    if not ((real / "flows.mitm").exists() and (real / REAL_META_FILE).exists()):
        print(f"recording a real capture of {calls} calls into {real} (make_capture.py)", file=sys.stderr)
        make_capture(real, calls)
    synth = CAPTURES / f"synth-check-{calls}"
    write_capture(synth, calls)
    with tempfile.TemporaryDirectory(prefix="synth-check-") as tmp:
        rows = {"real": report(real, Path(tmp) / "real"), "synthetic": report(synth, Path(tmp) / "synth")}
    for name, row in rows.items():
        print(f"{name:<9} {row['verdict']}")
    keys = ["calls", "sessions", "sessions_by_kind", "sessions_by_protocol", "server_conversations", "resets",
            "findings", "findings_by_rule", "findings_by_kind", "seconds"]
    differ = []
    for key in keys:
        same = rows["real"][key] == rows["synthetic"][key]
        if not same and key != "seconds":
            differ.append(key)
        print(f"{key}: {'same' if same else 'DIFFERENT'}")
        for name, row in rows.items():
            print(f"  {name:<9} {row[key]}")
    print(f"captures: {real} and {synth}")
    return 1 if differ else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000, help="calls to write (1000)")
    parser.add_argument("--long", type=int, default=0, metavar="N", help="instead: one fixed-http session of N turns")
    parser.add_argument("--turns-per-session", type=int, default=10, help="calls per session (10)")
    parser.add_argument("--seed", type=int, default=1, help="seed of ids and timing jitter (1)")
    parser.add_argument("--out", type=Path, help="output directory (replaced)")
    parser.add_argument("--check", type=int, metavar="N",
                        help="compare `sessiontap report` on a real and a synthetic capture of N calls")
    parser.add_argument("--ensure", choices=sorted(SPECS), metavar="NAME",
                        help=f"write bench/results/captures/synth-NAME unless it is there ({', '.join(SPECS)}); "
                             "print its directory")
    args = parser.parse_args(argv)
    if args.ensure:
        out, made = ensure_synthetic(args.ensure)
        print(f"{'written' if made else 'reused'}: {out}", file=sys.stderr)
        print(out)
        return 0
    if args.check:
        return check(args.check)
    if args.out is None:
        parser.error("--out is required (or --check N)")
    calls = args.long or args.calls
    capture = write_capture(args.out, calls, turns_per_session=args.turns_per_session, long_session=args.long > 0,
                            seed=args.seed)
    meta = json.loads((capture.parent / META_FILE).read_text(encoding="utf-8"))
    print(f"{capture}: {capture.stat().st_size / 1e6:.1f} MB, {meta['calls_done']} calls, {meta['flows']} flows "
          f"({meta['websocket_flows']} WebSocket) in {meta['sessions']} sessions, {meta['generate_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

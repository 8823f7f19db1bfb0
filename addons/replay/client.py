"""Client replay: a capture's conversations re-sent to an upstream, as recorded or with their context rewritten.

Two halves:

- ``build_plan`` (pure) turns a capture's redacted records and its analysis into a plan: every
  recorded flow in order (for ``as-recorded``) and every session's calls (for the context
  modes of ``core/vary.py``). The plan holds no secret; it is written beside the replay.
- ``python -m sessiontap.replay.client PLAN --variant V`` is the client that plays it. It is run
  under the recording proxy like any client (``ELEVENLABS_BASE_URL`` points at the proxy),
  waits for each reply before the next call, answers pings, and sends the API key from
  ``ELEVENLABS_API_KEY`` (never from the capture).

Every request carries ``X-Sessiontap-Replay-Of: <call number> <session>`` naming the
original call it replays (on a WebSocket: its first call), so the replayed capture can be
set side by side with the original (``core/compare.py``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import json
import os
import ssl
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

import httpx
from websockets.exceptions import InvalidURI, WebSocketException
from websockets.sync.client import ClientConnection, connect

from sessiontap.app.target import TargetError, send_target
from sessiontap.core.analysis import Analysis
from sessiontap.core.errors import SessiontapError
from sessiontap.core.model import AGENT, USER, WEBSOCKET, Call, FlowRecord, Turn
from sessiontap.core.protocol import (
    agent_response_text,
    frame_type,
    is_audio_frame,
    is_websocket_path,
    new_turns,
    simulated_turns,
    turns_from_list,
)
from sessiontap.core.redact import SECRET_HEADERS
from sessiontap.core.settings import Settings
from sessiontap.replay import vary
from sessiontap.replay.compare import Behaviour, compare
from sessiontap.replay.match import parse_json
from sessiontap.replay.server import DROP_HEADERS as CONNECTION_HEADERS
from sessiontap.router import ws_origin

if TYPE_CHECKING:
    from sessiontap.app.runner import RecordResult

PLAN_FILE = "plan.json"
CONVAI_PREFIX = "/v1/convai/"
PLAN_VERSION = 1
REPLAY_OF_HEADER = "x-sessiontap-replay-of"
DEFAULT_TIMEOUT = 30.0  # seconds to wait for each reply
OPENING_GRACE = 1.0  # seconds a new socket waits for an opening line the recording did not have
MAX_FRAME_BYTES = 16 * 1024 * 1024
PLACEHOLDER_KEY = "sk_sessiontap_replay_placeholder"  # sent unless --live: the user's key goes nowhere else
SIGNED_PARAMS = ("conversation_signature", "token")  # a recorded signature is redacted: a fresh URL is fetched
AWAITED = ("conversation_initiation_metadata", "agent_response")  # the server frames a replayed step waits for
# Request headers not re-sent: the connection's own, any secret (the key is sent fresh), and sessiontap's tags.
DROP_HEADERS = CONNECTION_HEADERS | SECRET_HEADERS | {
    "host", "accept-encoding", "user-agent", "sec-websocket-key", "sec-websocket-version",
    "sec-websocket-extensions", "sec-websocket-protocol", REPLAY_OF_HEADER,
}


# --- the plan ----------------------------------------------------------------------------------


def replay_of(session: str, number: int) -> str:
    """The replay-of header value: the original call's number in its session, then the session id."""
    return f"{number} {quote(session, safe='')}"


def parse_replay_of(value: str | None) -> tuple[str, int] | None:
    """(session, call number) of a replay-of header value, or None when it is not one."""
    number, _, session = (value or "").partition(" ")
    return (unquote(session), int(number)) if number.isdigit() and session else None


def call_numbers(analysis: Analysis) -> dict[str, tuple[str, int]]:
    """Each call's (session, 1-based number in that session), by call id."""
    return {call.id: (state.id, n) for state in analysis.sessions for n, call in enumerate(state.calls, 1)}


def kept_headers(recorded: Mapping[str, str]) -> dict[str, str]:
    """The recorded request headers worth sending again (the client's own, not the connection's or secrets)."""
    return {k: v for k, v in recorded.items() if k.lower() not in DROP_HEADERS}


def target(url: str) -> str:
    """The path and query of a recorded URL."""
    parts = urlsplit(url)
    return urlunsplit(("", "", parts.path or "/", parts.query, ""))


def body_fields(raw: bytes) -> dict[str, str]:
    """A request body for the plan: as text when it is UTF-8, else base64."""
    if not raw:
        return {}
    try:
        return {"body": raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {"body_b64": base64.b64encode(raw).decode("ascii")}


def recorded_frames(rec: FlowRecord) -> list[dict[str, Any]]:
    """A recorded socket's client frames to send again, each with how many awaited server frames follow it.

    Pongs are left out (live pings are answered instead; what follows a pong still answers
    the frame before), so are audio and binary frames (the capture keeps neither), and what
    the server sent after those is not awaited.
    """
    frames: list[dict[str, Any]] = []
    counting = False  # server frames answer the last client frame sent: not awaited after a skipped one
    for msg in rec.messages:
        obj = parse_json(msg.text)
        if msg.from_client:
            if isinstance(obj, dict) and obj.get("type") == "pong":
                continue  # timing: what follows still answers the frame before
            counting = not (msg.text is None or is_audio_frame(obj))
            if counting:
                frames.append({"text": msg.text, "expect": 0})
        elif counting and isinstance(obj, dict) and obj.get("type") in AWAITED:
            frames[-1]["expect"] += 1
    return frames


def _updates_before(rec: FlowRecord) -> list[list[str]]:
    """For each user message of a recorded socket, the contextual updates the client sent just before it."""
    out: list[list[str]] = []
    pending: list[str] = []
    for msg in rec.messages:
        obj = parse_json(msg.text) if msg.from_client else None
        if not isinstance(obj, dict):
            continue
        if obj.get("type") == "contextual_update" and isinstance(obj.get("text"), str):
            pending.append(obj["text"])
        elif obj.get("type") in ("user_message", "multimodal_message"):
            out.append(pending)
            pending = []
    return out


def _init_frame(rec: FlowRecord) -> dict[str, Any]:
    for msg in rec.messages:
        obj = parse_json(msg.text) if msg.from_client else None
        if isinstance(obj, dict) and obj.get("type") == "conversation_initiation_client_data":
            return obj
    return {"type": "conversation_initiation_client_data"}


def resendable(rec: FlowRecord) -> bool:
    """True for a recorded ElevenLabs agents call that is safe to send again (GET or POST under /v1/convai/).

    Anything else a capture holds (other hosts' APIs, deletes, uploads) is never re-sent.
    """
    return rec.exchange.path.startswith(CONVAI_PREFIX) and rec.exchange.method in ("GET", "POST")


def _flow_step(rec: FlowRecord, of: tuple[str, int] | None) -> dict[str, Any]:
    ex = rec.exchange
    step: dict[str, Any] = {"target": target(ex.url), "headers": kept_headers(ex.request_headers),
                            "of": replay_of(*of) if of else None, "status": ex.status}
    if is_websocket_path(ex.path) and (rec.messages or ex.status == 101):
        step.update(kind=WEBSOCKET, frames=recorded_frames(rec))
    else:
        step.update(kind="http", method=ex.method, **body_fields(ex.request_body))
    return step


def _session_plan(session: str, calls: list[tuple[int, Call]], records: Mapping[str, FlowRecord],
                  session_header: str) -> dict[str, Any]:
    """One session's calls of one protocol, to replay with their context rewritten.

    The session is declared under its own analysed id (when the client declared one), so two
    conversations that shared an id when recorded (``ID``, ``ID#2``) stay apart in the replay.
    """
    first = records[calls[0][1].flow_id]
    headers = kept_headers(first.exchange.request_headers)
    for name in list(headers):
        if name.lower() == session_header.lower():
            headers[name] = session
    plan: dict[str, Any] = {"id": session, "protocol": calls[0][1].protocol, "target": target(first.exchange.url),
                            "headers": headers, "calls": []}
    websocket = calls[0][1].protocol == WEBSOCKET
    if websocket:
        plan["init"] = _init_frame(first)
        plan["opening"] = calls[0][1].opening is not None
        updates = {flow: _updates_before(records[flow]) for flow in dict.fromkeys(c.flow_id for _, c in calls)}
    for n, call in calls:
        entry: dict[str, Any] = {"number": n, "user_text": call.user_text or ""}
        if websocket:
            before = updates[call.flow_id]
            entry["updates"] = before[call.turn_index - 1] if call.turn_index <= len(before) else []
        else:
            rec = records[call.flow_id]
            entry.update(target=target(rec.exchange.url), **body_fields(rec.exchange.request_body))
        plan["calls"].append(entry)
    return plan


def build_plan(records: Mapping[str, FlowRecord], analysis: Analysis, capture: str = "",
               session_header: str = "x-session-id") -> dict[str, Any]:
    """The replay plan of a capture: its re-sendable flows in order and its sessions' calls (no secret in it)."""
    numbers = call_numbers(analysis)
    first_call: dict[str, tuple[str, int]] = {}
    for call in analysis.calls:
        if call.id in numbers:
            first_call.setdefault(call.flow_id, numbers[call.id])
    sessions = []
    for state in analysis.sessions:
        for protocol in dict.fromkeys(c.protocol for c in state.calls):
            calls = [(numbers[c.id][1], c) for c in state.calls if c.protocol == protocol and c.flow_id in records
                     and c.user_text is not None and resendable(records[c.flow_id])]
            if calls:
                sessions.append(_session_plan(state.id, calls, records, session_header))
    return {"sessiontap_plan": PLAN_VERSION, "capture": capture,
            "flows": [_flow_step(rec, first_call.get(fid)) for fid, rec in records.items() if resendable(rec)],
            "sessions": sessions}


# --- the client that plays it ------------------------------------------------------------------


class ReplayError(Exception):
    """One replayed call failed (no reply, refused, closed); the replay goes on with the next."""


@dataclass
class Socket:
    """One open replay socket and how many awaited server frames it has had."""

    ws: ClientConnection
    timeout: float
    closing: contextlib.ExitStack
    awaited: int = 0

    def close(self) -> None:
        """Close the socket (1000), however it stands."""
        with contextlib.suppress(Exception):
            self.closing.close()

    def send(self, frame: str | dict[str, Any]) -> None:
        try:
            self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))
        except WebSocketException as e:
            raise ReplayError(f"socket closed while sending: {e}") from e

    def settle(self, seconds: float) -> None:
        """Take the agent's opening line if it comes within ``seconds`` (nothing is lost if it does not)."""
        with contextlib.suppress(ReplayError):
            self.wait(self.awaited + 1, [], seconds)

    def wait(self, total: int, replies: list[str], seconds: float | None = None) -> None:
        """Read until ``total`` awaited frames have come (pings answered, replies collected), at most ``seconds``."""
        limit = self.timeout if seconds is None else seconds
        deadline = time.monotonic() + limit
        while self.awaited < total:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ReplayError(f"no reply within {limit:g} s")
            try:
                raw = self.ws.recv(timeout=remaining)
            except TimeoutError as e:
                raise ReplayError(f"no reply within {limit:g} s") from e
            except WebSocketException as e:
                raise ReplayError(f"socket closed while waiting for a reply: {e}") from e
            frame = parse_json(raw)
            if not isinstance(frame, dict):
                continue
            kind = frame_type(frame)
            if kind == "ping":
                event = frame.get("ping_event")
                self.send({"type": "pong", "event_id": event.get("event_id") if isinstance(event, dict) else None})
            elif kind in AWAITED:
                self.awaited += 1
                text = agent_response_text(frame)
                if text is not None:
                    replies.append(text)


class Replayer:
    """Plays a plan through ``base_url`` (the proxy), one call at a time, and reports each call on ``say``."""

    def __init__(self, base_url: str, api_key: str, variant: str, timeout: float = DEFAULT_TIMEOUT,
                 say: Callable[[str], None] = print) -> None:
        self.base = base_url.rstrip("/")
        self.api_key = api_key
        self.variant = variant
        self.timeout = timeout
        self.say = say
        self.played = 0
        self.failed = 0
        self.http = httpx.Client(trust_env=True, timeout=timeout)

    def run(self, plan: Mapping[str, Any]) -> int:
        """Play the plan in this replayer's variant; the number of calls that failed (a summary line said last)."""
        began = time.monotonic()
        try:
            if self.variant == vary.AS_RECORDED:
                for step in plan.get("flows", []):
                    self._guarded(step.get("of") or step["target"], functools.partial(self._flow, step))
            else:
                for session in plan.get("sessions", []):
                    self._session(session)
        finally:
            self.http.close()
        self.say(f"[{self.variant}] done: {self.played} played, {self.failed} failed, "
                 f"in {time.monotonic() - began:.1f} s")
        return self.failed

    def _guarded(self, what: str, action: Callable[[], str]) -> None:
        self.played += 1
        try:
            self.say(f"[{self.variant}] {what}: {action()}")
        except ReplayError as e:
            self.failed += 1
            self.say(f"[{self.variant}] {what}: FAILED: {e}")
        except Exception as e:  # fail open: one odd call must not end the replay of the others
            self.failed += 1
            self.say(f"[{self.variant}] {what}: FAILED: unexpected {type(e).__name__}: {e}")

    # HTTP --------------------------------------------------------------------------------------

    def _post(self, method: str, path: str, headers: Mapping[str, str], content: bytes | None) -> httpx.Response:
        url = self.base + path
        try:
            return self.http.request(method, url, headers={**headers, "xi-api-key": self.api_key}, content=content)
        except httpx.HTTPError as e:
            raise ReplayError(f"{method} {url}: {e or type(e).__name__}") from e

    def _flow(self, step: Mapping[str, Any]) -> str:
        headers = dict(step["headers"])
        if step.get("of"):
            headers[REPLAY_OF_HEADER] = step["of"]
        if step["kind"] == WEBSOCKET:
            sock = self._open(step["target"], headers)
            replies: list[str] = []
            try:
                for frame in step["frames"]:
                    sock.send(frame["text"])
                    sock.wait(sock.awaited + frame["expect"], replies)
            finally:
                sock.close()
            return f"{len(step['frames'])} frames sent, {len(replies)} agent replies"
        raw = step.get("body")
        content = raw.encode() if raw is not None else base64.b64decode(step.get("body_b64") or "")
        response = self._post(step["method"], step["target"], headers, content)
        recorded = step.get("status")
        if response.status_code >= 400 and not (isinstance(recorded, int) and recorded >= 400):
            raise ReplayError(f"HTTP {response.status_code} (recorded: {recorded}): {response.text[:200]}")
        return f"HTTP {response.status_code}"

    def _session(self, session: Mapping[str, Any]) -> None:
        if session["protocol"] == WEBSOCKET:
            self._socket_session(session)
            return
        history: list[Turn] = []
        for call in session["calls"]:
            def one(call: Mapping[str, Any] = call) -> str:
                template = parse_json(call.get("body"))
                try:
                    body = vary.simulate_body(template, self.variant, history, call["user_text"])
                except ValueError as e:
                    raise ReplayError(str(e)) from e
                headers = {**session["headers"], "content-type": "application/json",
                           REPLAY_OF_HEADER: replay_of(session["id"], call["number"])}
                response = self._post("POST", call["target"], headers, json.dumps(body).encode())
                if response.status_code >= 400:
                    raise ReplayError(f"HTTP {response.status_code}: {response.text[:200]}")
                try:
                    sent = turns_from_list(body.get("simulation_specification", {}).get("partial_conversation_history")
                                           or [])
                    new = new_turns(sent, simulated_turns(response.content))
                    reply = next((t.text for t in new if t.role == AGENT), "")
                except (ValueError, UnicodeDecodeError) as e:
                    raise ReplayError(f"HTTP {response.status_code} with a body that is not JSON: {e}") from e
                history.extend([Turn(USER, call["user_text"]), Turn(AGENT, reply)])
                return f"HTTP {response.status_code}, reply {_short(reply)}"
            self._guarded(f"{session['id']} call #{call['number']}", one)

    # WebSocket ---------------------------------------------------------------------------------

    def _ws_url(self, path: str) -> str:
        query = parse_qsl(urlsplit(path).query, keep_blank_values=True)
        if any(k in SIGNED_PARAMS for k, _ in query):
            return self._signed_url(query)
        return ws_origin(self.base) + path

    def _signed_url(self, query: list[tuple[str, str]]) -> str:
        """A fresh signed URL for a recorded signed socket (the recorded signature is redacted)."""
        agent = dict(query).get("agent_id", "")
        response = self._post("GET", "/v1/convai/conversation/get-signed-url?" + urlencode({"agent_id": agent}),
                              {}, None)
        answer = parse_json(response.content)
        url = answer.get("signed_url") if isinstance(answer, dict) else None
        if response.status_code >= 400 or not isinstance(url, str):
            raise ReplayError(f"cannot get a signed URL for {agent!r}: HTTP {response.status_code}")
        rest = [(k, v) for k, v in query if k not in (*SIGNED_PARAMS, "agent_id")]
        return url + ("&" + urlencode(rest) if rest else "")

    def _open(self, path: str, headers: Mapping[str, str]) -> Socket:
        url = self._ws_url(path)
        options: dict[str, Any] = {"ssl": ssl.create_default_context()} if url.startswith("wss:") else {}
        closing = contextlib.ExitStack()
        try:
            ws = closing.enter_context(connect(url, additional_headers=dict(headers), open_timeout=self.timeout,
                                               close_timeout=self.timeout, max_size=MAX_FRAME_BYTES, **options))
        except (InvalidURI, OSError, TimeoutError, WebSocketException) as e:
            raise ReplayError(f"cannot open {url.split('?')[0]}: {e or type(e).__name__}") from e
        return Socket(ws, self.timeout, closing)

    def _start(self, session: Mapping[str, Any], number: int) -> Socket:
        headers = {**session["headers"], REPLAY_OF_HEADER: replay_of(session["id"], number)}
        sock = self._open(session["target"], headers)
        try:
            sock.send(session["init"])
            sock.wait(1, [])  # conversation_initiation_metadata
            # the opening line, if the agent has one: recorded or not, it must not pass for a reply
            sock.settle(self.timeout if session.get("opening") else OPENING_GRACE)
        except ReplayError:
            sock.close()
            raise
        return sock

    def _socket_session(self, session: Mapping[str, Any]) -> None:
        history: list[Turn] = []
        sock: Socket | None = None
        try:
            for call in session["calls"]:
                def one(call: Mapping[str, Any] = call) -> str:
                    nonlocal sock
                    if sock is None or not vary.shares_socket(self.variant):
                        if sock is not None:
                            sock.close()
                        sock = None  # a failed start leaves no socket to reuse
                        sock = self._start(session, call["number"])
                    replies: list[str] = []
                    frames = vary.socket_frames(self.variant, history, call["user_text"], call.get("updates", ()))
                    for frame in frames:
                        sock.send(frame)
                    sock.wait(sock.awaited + 1, replies)
                    history.extend([Turn(USER, call["user_text"]), Turn(AGENT, replies[-1])])
                    return f"reply {_short(replies[-1])}"
                before = self.failed
                self._guarded(f"{session['id']} call #{call['number']}", one)
                if self.failed != before and sock is not None:  # the socket's state is unknown: start again
                    sock.close()
                    sock = None
        finally:
            if sock is not None:
                sock.close()


# --- the run: the plan played once per variant, each under the recording proxy --------------------


@dataclass
class VariantRun:
    """One variant's replay: where it was written, the recording's result and the replay's analysis."""

    variant: str
    out: Path
    result: RecordResult
    analysis: Analysis | None = None
    tags: dict[str, tuple[str, int] | None] = field(default_factory=dict)  # flow id -> replay-of


def replay_tags(records: list[FlowRecord]) -> dict[str, tuple[str, int] | None]:
    """Each replayed flow's (session, call number) of the original call it replays, by flow id."""
    return {r.exchange.flow_id: parse_replay_of(r.exchange.request_headers.get(REPLAY_OF_HEADER)) for r in records}


def run_variants(plan: dict[str, Any], out: Path, variants: list[str], upstream: str,
                 settings: dict[str, Any], analysis_settings: Settings, timeout: float = DEFAULT_TIMEOUT,
                 announce: Callable[[str], None] = print, live: bool = False) -> list[VariantRun]:
    """Write the plan into ``out`` and play it once per variant through the recording proxy into ``out/<variant>``.

    Only ``live`` runs send the user's ``ELEVENLABS_API_KEY``; the others send a placeholder
    key. Each replay is read back and analysed with ``analysis_settings``; a run that recorded
    nothing readable has no analysis.
    """
    from sessiontap.app.capture import analyse_records, read_capture
    from sessiontap.app.runner import run_record

    out.mkdir(parents=True, exist_ok=True)
    plan_path = out / PLAN_FILE
    plan_path.write_text(json.dumps(plan, indent=1, ensure_ascii=False), encoding="utf-8")
    runs: list[VariantRun] = []
    for variant in variants:
        target_dir = out / variant
        announce(f"sessiontap: replaying {variant} to {upstream}, recording to {target_dir}")
        command = [sys.executable, "-m", "sessiontap.replay.client", str(plan_path), "--variant", variant,
                   "--timeout", f"{timeout:g}", *(["--live"] if live else [])]
        result = run_record({**settings, "sessiontap_mode": "reverse", "sessiontap_upstream": upstream,
                             "sessiontap_out": str(target_dir)}, command, announce)
        run = VariantRun(variant, target_dir, result)
        with contextlib.suppress(SessiontapError):
            records = read_capture(target_dir).records
            run.analysis, run.tags = analyse_records(records, analysis_settings), replay_tags(records)
        runs.append(run)
    return runs


ReplayTargetError = TargetError  # the name replay's callers know


def replay_upstream(to_url: str | None, live: bool, environ: Mapping[str, str] | None = None) -> str | None:
    """Where a client replay may send (None: the built-in simulator); ReplayTargetError before anything is sent.

    The key never comes from a capture: ``--live`` takes it from ``ELEVENLABS_API_KEY`` (see ``send_target``).
    """
    return send_target(to_url, live, "the recorded conversations", environ)


def client_replay(capture: Path, out: Path, variants: list[str], upstream: str, settings: dict[str, Any],
                  timeout: float = DEFAULT_TIMEOUT, announce: Callable[[str], None] = print,
                  live: bool = False) -> tuple[list[VariantRun], Behaviour]:
    """Re-send a capture's conversations once per variant and compare each run with the original.

    ``settings`` are the sessiontap_* values (mitm.yaml and flags); the original and every
    replay are analysed with the same analysis settings.
    """
    from sessiontap.app.capture import analyse_capture, redacted_records

    analysis_settings = Settings.from_options(settings)
    analysis, cap = analyse_capture(capture, analysis_settings)
    if cap.warning:
        announce(f"sessiontap: warning: {cap.warning}")
    plan = build_plan(redacted_records(cap.records), analysis, str(capture), analysis_settings.session_header)
    if not plan["flows"]:
        raise SessiontapError(f"{capture} holds no ElevenLabs agents call to re-send")
    if variants != [vary.AS_RECORDED] and not plan["sessions"]:
        raise SessiontapError(f"{capture} holds no conversation with a user message: there is no context to vary")
    runs = run_variants(plan, out, variants, upstream, settings, analysis_settings, timeout, announce, live)
    behaviour = compare(analysis, {r.variant: (r.analysis, r.tags.get) for r in runs if r.analysis is not None})
    return runs, behaviour


def _short(text: str, limit: int = 70) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[: limit - 1] + "…")


def main(argv: list[str] | None = None) -> int:
    """Play a replay plan through $ELEVENLABS_BASE_URL; exit 0 when every call got its reply, 1 otherwise."""
    parser = argparse.ArgumentParser(prog="python -m sessiontap.replay.client",
                                     description="Re-send a capture's conversations "
                                                 "(run by `sessiontap replay --client`).")
    parser.add_argument("plan", help=f"the {PLAN_FILE} that `sessiontap replay --client` wrote")
    parser.add_argument("--variant", default=vary.AS_RECORDED, choices=[vary.AS_RECORDED, *vary.MODES])
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds to wait for each reply")
    parser.add_argument("--live", action="store_true",
                        help="send $ELEVENLABS_API_KEY (without it, a sample key: the real key never goes elsewhere)")
    args = parser.parse_args(argv)
    base = os.environ.get("ELEVENLABS_BASE_URL")
    if not base:
        print("replay client: ELEVENLABS_BASE_URL is not set (run it through `sessiontap replay --client`)",
              file=sys.stderr)
        return 2
    try:
        with open(args.plan, encoding="utf-8") as f:
            plan = json.load(f)
    except (OSError, ValueError) as e:
        print(f"replay client: cannot read {args.plan}: {e}", file=sys.stderr)
        return 2
    key = (os.environ.get("ELEVENLABS_API_KEY") if args.live else None) or PLACEHOLDER_KEY
    replayer = Replayer(base, key, args.variant, args.timeout, say=lambda s: print(s, flush=True))
    return 1 if replayer.run(plan) else 0


if __name__ == "__main__":
    sys.exit(main())

"""Addon-level tests: the chain under plain mitmdump, and the fail-open guard (taddons, tflow)."""

from __future__ import annotations

import contextlib
import json
import subprocess

from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy.test import taddons, tflow

from sessiontap import tagger as tagger_module
from sessiontap.journal import Journal
from sessiontap.tagger import SessionTagger
from tests.conftest import MITMDUMP, ROOT, clean_env, free_port, sample, wait_for_port


def test_mitmdump_loads_the_chain_with_set_options(simulator, tmp_path, sessiontap_home):
    port = free_port()
    out = tmp_path / "out"
    proc = subprocess.Popen([MITMDUMP, "-q", "-s", str(ROOT / "addons" / "sessiontap.py"), "--listen-host", "127.0.0.1",
                             "-p", str(port), "--mode", f"reverse:{simulator.url}", "--set", "connection_strategy=lazy",
                             "--set", f"sessiontap_out={out}", "--set", "sessiontap_session_header=x-session-id"],
                            env=clean_env(sessiontap_home), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_port(port)
        run = subprocess.run(sample("fixed-http") + ["--turns", "2"], capture_output=True, text=True, timeout=60,
                             env=clean_env(sessiontap_home, ELEVENLABS_BASE_URL=f"http://127.0.0.1:{port}"))
        assert run.returncode == 0, run.stderr
    finally:
        proc.terminate()
        proc.wait(15)
    lines = [json.loads(x) for x in (out / "journal.jsonl").read_text().splitlines()]
    calls = [e for e in lines if e["event"] == "call"]
    assert len(calls) == 2 and calls[0]["session"].startswith("durin-")
    assert (out / "flows.mitm").stat().st_size > 0
    assert (out / "findings.json").exists()


@contextlib.contextmanager
def tagged_into_journal(out):
    """A tagger that hands its calls and notes to a journal writing into ``out`` (done at the end)."""
    tagger, journal = SessionTagger(), Journal()
    with taddons.context(tagger, journal) as tctx:
        tctx.configure(journal, sessiontap_out=str(out))
        tagger.listeners = [journal]
        yield tagger, journal
        journal.done()


def journal_lines(out) -> list[dict]:
    return [json.loads(x) for x in (out / "journal.jsonl").read_text().splitlines()]


def test_a_failing_hook_skips_nothing_and_becomes_a_note(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("decoder exploded")

    monkeypatch.setattr(tagger_module, "decode_exchange", boom)
    with tagged_into_journal(tmp_path) as (tagger, journal):
        flow = tflow.tflow(resp=True)
        flow.request.path = "/v1/convai/agents/a/simulate-conversation"
        tagger.request(flow)  # raises inside: must not propagate
        tagger.response(flow)
        journal.response(flow)  # the journal's own hook still runs and saves the flow
    notes = journal_lines(tmp_path)
    assert any(n.get("kind") == "analysis-error" and "decoder exploded" in n["detail"] for n in notes)
    assert (tmp_path / "flows.mitm").stat().st_size > 0


def test_findings_mark_and_comment_the_flows_in_mitmweb():
    from sessiontap.core.model import AGENT, HTTP, Call, Turn
    from sessiontap.findings import Findings

    findings = Findings()
    with taddons.context(findings) as tctx:
        tctx.configure(findings, sessiontap_max_context_tokens=10)
        flows = [tflow.tflow(resp=True) for _ in range(2)]
        for i, flow in enumerate(flows):
            call = Call(id=f"c{i}", flow_id=flow.id, protocol=HTTP, endpoint="simulate", agent_id="ag",
                        started=float(i), ended=i + 0.5, user_text="hello " * 20 if i else "hi",
                        context=[Turn("user", "hello " * 20)] if i else [], reply=[Turn(AGENT, "Hi, I'm Durin.")],
                        declared_session="S", server_conversation=flow.id, opening="Hi, I'm Durin.")
            findings.on_call(call, flow)
    assert not flows[0].marked and not flows[0].comment
    assert flows[1].marked == ":x:"  # repeated-opening is an error
    assert any(line.startswith("[repeated-opening] the agent answered with its opening line again")
               for line in flows[1].comment.splitlines())
    assert findings.analyzer.settings.max_context_tokens == 10  # the option reached the rules


def test_a_marked_flow_is_redrawn_where_a_flow_view_shows_it_and_nowhere_else():
    from mitmproxy.addons.view import View

    from sessiontap.core.model import AGENT, HTTP, Call, Turn
    from sessiontap.findings import Findings

    class Updates:
        seen: list[str] = []

        def update(self, flows):
            self.seen += [f.id for f in flows]

    for with_view in (False, True):
        findings, updates = Findings(), Updates()
        updates.seen = []
        flow = tflow.tflow(resp=True)
        with taddons.context(findings, updates, *([View()] if with_view else [])):
            for i in range(2):
                call = Call(id=f"c{i}", flow_id=flow.id if i else f"other{i}", protocol=HTTP, endpoint="simulate",
                            agent_id="ag", started=float(i), ended=i + 0.5, user_text="hi", context=[],
                            reply=[Turn(AGENT, "Hi, I'm Durin.")], declared_session="S", server_conversation=f"s{i}",
                            opening="Hi, I'm Durin.")
                findings.on_call(call, flow)
        assert flow.marked and updates.seen == ([flow.id] if with_view else [])


def test_journal_lines_stay_bounded_whatever_the_body(tmp_path):
    from sessiontap.core.model import AGENT, HTTP, USER, Call, Turn

    journal = Journal()
    huge = "x" * 2_000_000
    with taddons.context(journal) as tctx:
        tctx.configure(journal, sessiontap_out=str(tmp_path))
        flow = tflow.tflow(resp=True)
        call = Call(id="c1", flow_id=flow.id, protocol=HTTP, endpoint="simulate", agent_id="ag", started=1.0,
                    user_text=huge, context=[Turn(USER, huge)] * 50, reply=[Turn(AGENT, huge)],
                    extra_context={"conversation_context": [Turn(USER, huge)] * 50})
        journal.on_call(call, flow)
        journal.done()
    [line] = [x for x in (tmp_path / "journal.jsonl").read_text().splitlines() if '"event": "call"' in x]
    assert len(line) < 100_000  # the call held over 100 MB of text: flows.mitm keeps it, the journal line does not
    record = json.loads(line)
    assert record["user_text"].endswith("more characters]") and record["context_turns"] == 50
    assert len(record["extra_context"]["conversation_context"]) == 4


def test_record_without_a_command_prints_every_ca_variable():
    from pathlib import Path

    from sessiontap.app.runner import env_lines

    text = "\n".join(env_lines("regular", "127.0.0.1", 8080, Path("/conf")))
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "HTTPS_PROXY"):
        assert f"{name}=" in text


async def test_undecodable_header_bytes_never_lose_a_flow(tmp_path):
    from sessiontap.sessiontap import chain

    ours = chain()
    simulate = tflow.tflow(resp=True)
    simulate.request.method, simulate.request.path = "POST", "/v1/convai/agents/a1/simulate-conversation"
    simulate.request.headers.fields = ((b"user-agent", b"client \xff"), (b"content-type", b"application/json"))
    socket = tflow.twebsocketflow()
    socket.request.path = "/v1/convai/conversation?agent_id=a1"
    socket.request.headers.fields += ((b"x-session-id", b"\xff\xfe"),)
    with taddons.context(*ours.addons) as tctx:
        tctx.configure(ours.journal, sessiontap_out=str(tmp_path))
        for flow in (simulate, socket):
            for addon in ours.addons:
                await tctx.cycle(addon, flow)
        ours.journal.done()
    from sessiontap.app.capture import read_flows

    saved = read_flows(tmp_path).flows
    assert {f.id for f in saved} == {simulate.id, socket.id}
    assert saved[1].metadata["sessiontap"]["session"] == "\\udcff\\udcfe"  # the bytes, as escapes


@given(st.lists(st.tuples(st.sampled_from([b"X-Id", b"x-id", b"Content-Type", b"XI-API-KEY", b"\xc3\xa9t\xc3\xa9"]),
                          st.binary(max_size=8)), max_size=6))
@settings(max_examples=200, derandomize=True, deadline=None)
def test_headers_read_in_one_pass_are_what_mitmproxy_gives_name_by_name(fields):
    from mitmproxy import http as mhttp

    from sessiontap.bridge.adapt import _headers

    headers = mhttp.Headers(fields)
    assert _headers(headers) == {k.lower(): v for k, v in headers.items(multi=False)}


def _big_simulate_flow(turns: int = 3000):
    """A simulate-conversation flow whose body is over the tagger's BIG_BODY: decoded in a worker thread."""
    history = []
    for i in range(turns):
        history += [{"role": "user", "message": f"question {i}", "time_in_call_secs": i},
                    {"role": "agent", "message": "tariff heading " * 40, "time_in_call_secs": i}]
    history.append({"role": "user", "message": "recap please", "time_in_call_secs": turns})
    flow = tflow.tflow()
    flow.request.method = "POST"
    flow.request.path = "/v1/convai/agents/a/simulate-conversation"
    flow.request.content = json.dumps({"simulation_specification": {"partial_conversation_history": history}}).encode()
    assert len(flow.request.content) >= tagger_module.BIG_BODY
    return flow


async def test_a_big_body_is_decoded_off_the_event_loop_and_still_tagged_and_journaled(tmp_path):
    import asyncio

    with tagged_into_journal(tmp_path) as (tagger, _):
        flow = _big_simulate_flow()
        turns = 0
        stop = asyncio.Event()

        async def other_connection():  # stands for every other conversation the proxy serves meanwhile
            nonlocal turns
            while not stop.is_set():
                turns += 1
                await asyncio.sleep(0)

        other = asyncio.create_task(other_connection())
        pending = tagger.request(flow)
        assert pending is not None and tagger_module.TAG_HEADER not in flow.request.headers  # not decoded yet
        await pending
        stop.set()
        await other
        assert turns > 0, "the event loop was held for the whole decoding"
        session = flow.request.headers[tagger_module.TAG_HEADER]
        flow.response = tflow.tresp(content=json.dumps({"simulated_conversation": [
            {"role": "agent", "message": "Recap: tariff heading.", "time_in_call_secs": 1}]}).encode())
        assert tagger.response(flow) is None  # a small response: completed at once
    calls = [c for c in journal_lines(tmp_path) if c.get("event") == "call"]
    assert len(calls) == 1 and calls[0]["session"] == session and calls[0]["context_turns"] == 6001
    assert calls[0]["reply"][0]["text"] == "Recap: tariff heading."


async def test_a_big_body_that_fails_to_decode_in_its_worker_is_a_note_and_the_flow_goes_on(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("worker exploded")

    monkeypatch.setattr(tagger_module, "decode_request", boom)
    with tagged_into_journal(tmp_path) as (tagger, _):
        await tagger.request(_big_simulate_flow(1500))  # must not raise
    notes = journal_lines(tmp_path)
    assert any(n.get("kind") == "analysis-error" and "worker exploded" in n["detail"] for n in notes)


def test_a_response_whose_client_hung_up_while_a_hook_awaited_is_masked_at_once():
    """A big body's hook may await; the client can be gone by the time the scrubber sees the response."""
    from sessiontap.core.redact import Redactor
    from sessiontap.scrub import Scrubber

    redactor = Redactor()
    scrubber = Scrubber(redactor)
    with taddons.context(scrubber):
        flow = tflow.tflow(resp=tflow.tresp(content=b'{"signed_url": "wss://h/c?conversation_signature=sig-123456"}'))
        flow.client_conn.timestamp_end = flow.response.timestamp_end  # the client disconnected meanwhile
        scrubber.response(flow)
    assert b"sig-123456" not in flow.response.content
    assert not any(scrubber.unsent.values())  # nothing held until shutdown


async def test_a_big_request_killed_while_its_body_was_decoded_leaves_nothing_pending(tmp_path):
    from mitmproxy.flow import Error

    with tagged_into_journal(tmp_path) as (tagger, _):
        flow = _big_simulate_flow(1500)
        pending = tagger.request(flow)
        flow.error = Error("Connection killed.")  # killed from mitmweb while the worker decoded
        flow.live = False
        await pending
        assert tagger.pending == {}
    calls = [c for c in journal_lines(tmp_path) if c.get("event") == "call"]
    assert len(calls) == 1 and calls[0]["error"] == "Connection killed."


def test_a_call_killed_while_it_waits_for_its_reply_is_journaled_with_its_error(tmp_path):
    """A kill from mitmweb makes the flow no longer live before the error hook runs: the call must not stay pending."""
    with tagged_into_journal(tmp_path) as (tagger, _):
        flow = tflow.tflow()
        flow.request.method = "POST"
        flow.request.path = "/v1/convai/agents/a/simulate-conversation"
        flow.request.content = json.dumps({"simulation_specification": {"partial_conversation_history": [
            {"role": "user", "message": "hello", "time_in_call_secs": 0}]}}).encode()
        assert tagger.request(flow) is None and flow.id in tagger.pending
        flow.kill()
        assert not flow.live
        tagger.error(flow)
        assert tagger.pending == {}
    calls = [c for c in journal_lines(tmp_path) if c.get("event") == "call"]
    assert len(calls) == 1 and calls[0]["error"] == "Connection killed."


async def test_a_compressed_big_body_is_decompressed_off_the_event_loop_too(tmp_path, monkeypatch):
    import gzip
    import threading

    from sessiontap.bridge import adapt

    threads = []
    real = adapt.exchange

    def watched(flow):
        threads.append(threading.current_thread())
        return real(flow)

    monkeypatch.setattr(adapt, "exchange", watched)
    with tagged_into_journal(tmp_path) as (tagger, _):
        flow = _big_simulate_flow(3000)
        flow.request.headers["content-encoding"] = "gzip"
        flow.request.raw_content = gzip.compress(flow.request.raw_content)
        assert len(flow.request.raw_content) < tagger_module.BIG_BODY  # big only once decoded
        await tagger.request(flow)
        assert flow.request.headers[tagger_module.TAG_HEADER]
    assert threads and threading.main_thread() not in threads


def test_a_requests_key_is_known_once_its_headers_arrive_before_its_body_is_checked(tmp_path):
    """The tagger checks a big body for secrets in its worker at the request hook: the key must be known by then."""
    with tagged_into_journal(tmp_path) as (tagger, journal):
        flow = _big_simulate_flow(1500)
        flow.request.headers["xi-api-key"] = "sk_live_key_0000000001"
        small = tflow.tflow()
        small.request.headers["xi-api-key"] = "sk_live_key_0000000002"
        journal.requestheaders(small)  # a small body: its head is learnt at its first line, as before (no extra work)
        assert "sk_live_key_0000000002" not in journal.redactor.seen
        journal.requestheaders(flow)
        assert "sk_live_key_0000000001" in journal.redactor.seen
        tagger.prework.append(journal.redactor.may_hold_secret)
        tagger.request(flow)  # no event loop here: the worker's part runs at once
        [(body, known, found)] = journal.redactor._answers.values()
        assert body is flow.request.raw_content and known == len(journal.redactor.seen_bytes) and not found


def test_a_big_flow_is_written_off_the_event_loop_and_the_flows_after_it_keep_their_order(tmp_path, monkeypatch):
    import threading

    from mitmproxy import io as mio

    from sessiontap import journal as journal_module

    threads = []
    real = Journal._write

    def watched(self, capture, parts):
        threads.append(threading.current_thread().name)
        return real(self, capture, parts)

    monkeypatch.setattr(Journal, "_write", watched)
    with tagged_into_journal(tmp_path) as (_, journal):
        big = tflow.tflow(resp=True)
        big.request.content = b"x" * journal_module.BIG_WRITE
        small = [tflow.tflow(resp=True) for _ in range(3)]
        for flow in (small[0], big, *small[1:]):
            journal._save(flow)
    # the small flows after it go to the writer thread too while its write lasts, else straight to the file
    assert threads[0] == "MainThread" and threads[1].startswith("sessiontap-capture"), threads
    with open(tmp_path / journal_module.CAPTURE_FILE, "rb") as f:
        written = [flow.id for flow in mio.FlowReader(f).stream()]
    assert written == [small[0].id, big.id, small[1].id, small[2].id]


async def test_a_socket_that_ends_before_the_backlog_ran_has_every_message_masked_at_its_end():
    """mitmproxy's own stream save and mitmweb see the flow right after websocket_end: nothing may wait for later."""
    from mitmproxy.websocket import WebSocketMessage
    from wsproto.frame_protocol import Opcode

    from sessiontap.bridge.backlog import Backlog
    from sessiontap.core.redact import Redactor
    from sessiontap.scrub import Scrubber

    redactor = Redactor()
    redactor.body(b'{"secret__pin": "pin-4242-77"}')
    scrubber = Scrubber(redactor, Backlog())
    flow = tflow.twebsocketflow()
    flow.websocket.messages = [WebSocketMessage(Opcode.TEXT, True, b'{"text": "my pin is pin-4242-77"}'),
                               WebSocketMessage(Opcode.TEXT, False, b'{"type": "agent_response"}')]
    with taddons.context(scrubber):
        scrubber.websocket_message(flow)  # the first message's masking is queued (an event loop runs)
        assert b"pin-4242-77" in flow.websocket.messages[0].content
        scrubber.websocket_end(flow)  # the close came at once, before the queue ran
        assert all(b"pin-4242-77" not in m.content for m in flow.websocket.messages)


def test_the_writer_thread_writes_nothing_after_a_failed_write(tmp_path):
    with tagged_into_journal(tmp_path) as (_, journal):
        journal.failed = "could not write flows.mitm: No space left on device"  # an earlier write failed
        journal._write(journal.capture, [b"5:hello,"])
        assert journal.capture.tell() == 0

"""Reading a capture without building flows gives exactly the records mitmproxy's own reader and flows give.

The fast reader (``bridge.flowfile`` + ``adapt.record_of_state``) re-implements what
``FlowReader`` and ``HTTPFlow`` do for us, so every test here compares it with them: the same
records for every shape of flow, the same values for any tnetstring, the same flows before a
torn tail.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy import http
from mitmproxy.io import tnetstring
from mitmproxy.test import tflow

from sessiontap.app.capture import read_capture, read_flows, records_of
from sessiontap.bridge import flowfile
from sessiontap.core.errors import CaptureError
from sessiontap.journal import CAPTURE_FILE
from tests.conftest import write_capture

SIMULATE = "/v1/convai/agents/agent_customs_demo/simulate-conversation"


def shapes() -> list[http.HTTPFlow]:
    """Flows of every shape the reader must read as mitmproxy does."""
    plain = tflow.tflow(resp=True)
    plain.request.method, plain.request.path = "POST", SIMULATE + "?a=1&a=2&b=%C3%A9"
    plain.request.content = b'{"simulation_specification": {}}'
    plain.request.headers.add("X-Id", "one")
    plain.request.headers.add("x-id", "two")  # repeated: joined, as Headers[name] gives it
    plain.metadata["sessiontap"] = {"client": "named run", "code": [["a.py", 3, "f"]]}
    plain.metadata["sessiontap.audio"] = {"frames": 4, "bytes": 400, "from_client": 4}
    gzipped = tflow.tflow(resp=True)
    gzipped.response.headers["content-encoding"] = "gzip"
    gzipped.response.raw_content = gzip.compress(b'{"simulated_conversation": []}')
    broken = tflow.tflow(resp=True)
    broken.response.headers["content-encoding"] = "gzip"
    broken.response.raw_content = b"not gzip at all"  # left as it is, as get_content(strict=False) does
    text_codec = tflow.tflow(resp=True)
    text_codec.response.headers["content-encoding"] = "utf8"
    failed = tflow.tflow(err=True)  # no response, an error
    binary_path = tflow.tflow(resp=True)
    binary_path.request.data.path = b"/v1/\xff\xfe?x=\xff"
    asterisk = tflow.tflow(resp=True)
    asterisk.request.method, asterisk.request.path = "OPTIONS", "*"
    absolute = tflow.tflow(resp=True)
    absolute.request.authority = "example.com:443"
    absolute.request.scheme, absolute.request.port = "https", 443
    connect = tflow.tflow(resp=True)
    connect.request.method, connect.request.authority = "CONNECT", "example.com:443"
    null_body = tflow.tflow(resp=True)
    null_body.response.content = None
    socket = tflow.twebsocketflow()
    socket.request.path = "/v1/convai/conversation?agent_id=a"
    socket.websocket.messages[0].content = b'{"type": "user_message", "text": "hi \xff"}'  # not UTF-8
    socket.websocket.close_code, socket.websocket.closed_by_client = 1011, False
    open_socket = tflow.twebsocketflow()
    open_socket.websocket.timestamp_end, open_socket.websocket.close_code = None, None
    return [plain, gzipped, broken, text_codec, failed, binary_path, asterisk, absolute, connect,
            null_body, socket, open_socket]


def test_every_shape_of_flow_reads_as_the_record_of_mitmproxys_flow(tmp_path: Path):
    path = write_capture([*shapes(), tflow.ttcpflow(), tflow.tdnsflow()], tmp_path / CAPTURE_FILE)
    fast = read_capture(path)
    slow = read_flows(path)
    assert fast.warning is None and slow.warning is None
    assert len(fast.records) == len(shapes())  # the TCP and DNS flows are not HTTP: left out by both
    expected = records_of(slow.flows)
    for got, want in zip(fast.records, expected, strict=True):
        assert got == want, want.exchange.url
    by_url = {r.exchange.flow_id: r for r in fast.records}
    first = by_url[slow.flows[0].id]
    assert first.exchange.query == {"a": "1", "b": "é"} and first.exchange.request_headers["x-id"] == "one, two"
    assert first.audio == {"frames": 4, "bytes": 400, "from_client": 4} and first.exchange.client == "named run"
    assert fast.records[1].exchange.response_body == b'{"simulated_conversation": []}'  # decoded
    assert fast.records[-2].websocket and fast.records[-2].close_code == 1011
    assert fast.records[-2].closed_by_client is False
    others = [state for state in flowfile.flow_states(str(path)) if state["type"] != "http"]
    assert [sorted(state) for state in others] == [["type", "version"]] * 2  # nothing else of them parsed


def test_bodies_are_decoded_without_mitmproxys_cache_of_the_last_one():
    """The tagger decodes in a worker thread too: the process-wide cache would race the event loop's reads."""
    from mitmproxy.net import encoding

    from sessiontap.bridge import adapt

    before = encoding._cache
    body = b'{"simulated_conversation": []}'
    for coding in ("gzip", "deflate", "br", "zstd"):
        raw = encoding.encode(body, coding)
        encoding._cache = before
        assert adapt._content(raw, {"content-encoding": coding.upper()}) == body
        assert encoding._cache is before
    assert adapt._content(b"not gzip", {"content-encoding": "gzip"}) == b"not gzip"


def test_a_torn_tail_keeps_the_flows_before_it_with_a_warning(tmp_path: Path):
    whole = write_capture(shapes(), tmp_path / "whole.mitm").read_bytes()
    first = len(tnetstring.dumps(shapes()[0].get_state()))
    for cut in (first + 7, len(whole) - 1, len(whole) - 200):
        torn = tmp_path / f"torn-{cut}.mitm"
        torn.write_bytes(whole[:cut])
        fast, slow = read_capture(torn), read_flows(torn)
        assert fast.records == records_of(slow.flows) and fast.records
        assert fast.warning and f"read {len(fast.records)} flows, the rest is unreadable" in fast.warning


def test_an_older_format_is_upgraded_as_mitmproxy_upgrades_it(tmp_path: Path):
    flow = shapes()[0]
    state = flow.get_state()
    state["version"] = 19
    state["client_conn"]["state"] = 0  # what format 19 had and 20 dropped
    path = tmp_path / "old.mitm"
    path.write_bytes(tnetstring.dumps(state))
    assert read_capture(path).records == records_of(read_flows(path).flows) != []


def test_a_har_file_and_an_empty_file_read_too(tmp_path: Path):
    har = tmp_path / "x.har"
    har.write_text(json.dumps({"log": {"entries": []}}))
    assert read_capture(har).records == []
    empty = tmp_path / "empty.mitm"
    empty.write_bytes(b"")
    assert read_capture(empty).records == [] and read_capture(empty).warning is None


values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**30, 10**30) | st.floats(allow_nan=False) | st.binary(max_size=40)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=30)


@given(values)
@settings(max_examples=300, derandomize=True, deadline=None)
def test_any_value_parses_as_mitmproxys_tnetstring_parses_it(value):
    raw = tnetstring.dumps(value)
    parsed, end = flowfile._value(raw, 0)
    assert parsed == tnetstring.loads(raw) and end == len(raw)


def written(value) -> bytes:
    """What the journal writes of a value: its pieces, in turn."""
    parts, size = flowfile.pieces(value)
    data = b"".join(parts)
    assert len(data) == size
    return data


class Tagged(str):  # a subclass: left to mitmproxy's own dumps
    pass


@given(values | st.builds(lambda v: {"wrapped": [v, Tagged("x"), (1, 2.5)]}, values))
@settings(max_examples=300, derandomize=True, deadline=None)
def test_any_value_is_written_as_mitmproxys_tnetstring_writes_it(value):
    assert written(value) == tnetstring.dumps(value)


def test_every_shape_of_flow_is_written_as_mitmproxy_writes_it():
    big = tflow.tflow(resp=True)
    big.request.content = bytes(range(256)) * 64  # past the size written in one piece
    big.metadata["note"] = "é" * 5000
    for flow in [*shapes(), big, tflow.ttcpflow(), tflow.tdnsflow()]:
        state = flow.get_state()
        assert written(state) == tnetstring.dumps(state)


FRAMES = ['{"type": "user_message", "text": "hello"}', '{"type": "agent_response", "token": "tok-abcdef-1"}',
          '{"dynamic_variables": {"secret__pin": "4242-9999"}}', "echo tok-abcdef-1 and 4242-9999",
          "Bearer abcdefgh12345", "plain words", '{"conversation_signature": "sig-0000001"}']


@given(st.lists(st.sampled_from(FRAMES), max_size=6))
@settings(max_examples=200, derandomize=True, deadline=None)
def test_a_sockets_frames_checked_at_once_are_masked_as_frame_by_frame(texts):
    from sessiontap.app.capture import _redacted_messages
    from sessiontap.core.model import WsMessage
    from sessiontap.core.redact import Redactor

    messages = [WsMessage(i % 2 == 0, float(i), t, len(t)) for i, t in enumerate(texts)]
    messages.append(WsMessage(True, 9.0, None, 3))  # a binary frame
    at_once, each = Redactor(), Redactor()
    one_by_one = [m if m.text is None else replace(m, text=(each.body(m.text.encode()) or b"").decode())
                  for m in messages]
    assert _redacted_messages(messages, at_once) == one_by_one
    assert at_once.seen == each.seen


def test_the_collector_runs_less_often_only_while_a_capture_is_analysed(tmp_path: Path, monkeypatch):
    import gc

    from sessiontap.app import capture

    seen = []
    monkeypatch.setattr(capture, "analyse_records", lambda *a, **k: seen.append(gc.get_threshold()))
    before = gc.get_threshold()
    capture.analyse_capture(write_capture(shapes(), tmp_path / CAPTURE_FILE))
    assert seen and seen[0][0] > before[0] and gc.get_threshold() == before


def test_a_length_prefix_that_is_not_digits_is_unreadable_never_a_loop(tmp_path: Path):
    for raw in (b"7:1:a;-4:}", b"9:+1:a;0:~}", b"8: 1:a0:~}", b"12:1_0:abcdefghij}", b"x:", b"5:ab"):
        path = tmp_path / "odd.mitm"
        path.write_bytes(raw)
        with pytest.raises(CaptureError):
            read_capture(path)  # as mitmproxy's reader: not a flow file
        with pytest.raises(CaptureError):
            read_flows(path)


def test_one_odd_flow_is_left_out_with_a_warning_and_the_flows_after_it_are_still_read(tmp_path: Path):
    flows = shapes()[:3]
    odd = flows[1].get_state()
    odd["request"]["headers"] = "not a list of fields"  # parses as a value, is no HTTP flow mitmproxy wrote
    path = tmp_path / "odd.mitm"
    path.write_bytes(b"".join(tnetstring.dumps(s) for s in (flows[0].get_state(), odd, flows[2].get_state())))
    cap = read_capture(path)
    assert [r.exchange.flow_id for r in cap.records] == [flows[0].id, flows[2].id]
    assert cap.warning and "1 flows are not HTTP flows as mitmproxy writes them: left out" in cap.warning


def test_an_unreadable_file_is_a_capture_error_not_a_traceback(tmp_path: Path):
    with pytest.raises(CaptureError, match="cannot read"):  # there, but reading it fails (as root too)
        read_capture(Path("/proc/self/mem"))

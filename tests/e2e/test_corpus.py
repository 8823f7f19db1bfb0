"""The hostile-input corpus (#13): every case through the real proxy, and through the offline commands.

A case is one exchange with a loopback upstream that answers with canned bytes: an HTTP
response (status, headers, body, encodings right and mislabelled), or an agent WebSocket
that sends canned frames, echoes every client frame, sends more canned frames and closes.
The corpus holds hand-written cases, a matrix of wrong types for every field the decoder
reads, hypothesis-generated JSON of the decoder's shapes (deep nesting, lone surrogates,
huge numbers, wrong types anywhere), a 20 MB body, and invalid, binary, empty, 1 MB and
unknown WebSocket frames.

Live: one `sessiontap record --mode reverse` runs one client over the whole corpus, and the
same client runs straight against the upstream. Each case reaches the client exactly as it
does directly (status, headers, body bytes; frames and close), only the documented
``signed_url`` rewrite excepted; every flow is in flows.mitm, every artifact parses, and
`report`, `check` (0 or 1) and `export` succeed with no traceback. Offline: the same corpus
as a flow file goes through the three commands; hypothesis drives the pure analysis too.
"""

from __future__ import annotations

import base64
import copy
import gzip
import hashlib
import inspect
import json
import os
import random
import subprocess
import sys
import time
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from unittest import mock

import brotli
import pytest
import zstandard
from aiohttp import WSMsgType, web
from click.testing import CliRunner
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from sessiontap.core.protocol import KNOWN_CLIENT_TYPES, KNOWN_SERVER_TYPES, is_audio_frame, parse_frame
from sessiontap.reports import html as report_html
from tests.app.test_hostile import FRAMES as HOSTILE_FRAMES
from tests.app.test_hostile import HOSTILE
from tests.app.test_hostile import REPLY as HOSTILE_REPLY
from tests.conftest import write_capture

pytestmark = pytest.mark.timeout(600)  # the live run alone is about a minute on two idle cores; more when busy

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk_corpus_0000000000000000"
AGENT = "agent_corpus"
SIMULATE = f"/v1/convai/agents/{AGENT}/simulate-conversation"
STREAM = SIMULATE + "/stream"
AGENT_CONFIG = f"/v1/convai/agents/{AGENT}"
SIGNED_URL = "/v1/convai/conversation/get-signed-url"
WS_PATH = "/v1/convai/conversation"
DEEP = 3000  # beyond what Python's json reads
PARSABLE = 400  # deep, yet read: the walkers over parsed values get it
MB = 1 << 20


# -- JSON text with hostile leaves -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """JSON text written as is: numbers and nestings json.dumps cannot or will not write."""

    text: str


def dump(value: Any) -> str:
    """JSON text of a value whose leaves may be Raw; lone surrogates become \\uXXXX escapes."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {dump(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(dump(v) for v in value) + "]"
    return json.dumps(value)  # nan and inf as NaN and Infinity, which Python reads and others do not


def deep(depth: int, inner: str = "") -> Raw:
    return Raw("[" * depth + inner + "]" * depth)


def deep_object(depth: int, key: str) -> Raw:
    """{"key": {"key": ... 1}} nested depth times: what a walker following key recurses into."""
    return Raw(f'{{"{key}": ' * depth + "1" + "}" * depth)


def digits(n: int) -> Raw:
    return Raw("9" * n)


def replaced(doc: Any, path: tuple[str | int, ...], value: Any) -> Any:
    """A copy of doc with the value at path (keys and indices) set to value; () replaces it all."""
    if not path:
        return value
    out = copy.deepcopy(doc)
    here = out
    for step in path[:-1]:
        here = here[step]
    here[path[-1]] = value
    return out


# -- the cases -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpCase:
    """One HTTP exchange: what the client sends, and the canned response the upstream gives."""

    name: str
    kind: str
    path: str
    body: bytes = b""
    method: str = "POST"
    headers: tuple[tuple[str, bytes], ...] = (("content-type", b"application/json"),)
    status: int = 200
    reply: bytes = b""
    reply_headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),)


@dataclass(frozen=True)
class Frame:
    """One WebSocket frame: its payload and opcode (text may hold invalid UTF-8 on purpose)."""

    data: bytes
    opcode: str = "text"  # text, binary, ping


def text(value: Any) -> Frame:
    """A text frame: a str as is, anything else as hostile JSON text."""
    return Frame((value if isinstance(value, str) else dump(value)).encode())


def binary(data: bytes) -> Frame:
    return Frame(data, "binary")


@dataclass(frozen=True)
class WsCase:
    """One agent WebSocket: frames the upstream sends first, the client's (each echoed), then more and a close."""

    name: str
    kind: str
    server: tuple[Frame, ...] = ()
    client: tuple[Frame, ...] = ()
    after: tuple[Frame, ...] = ()
    close: tuple[int, str] = (1000, "")
    query: str = f"agent_id={AGENT}"


Case = HttpCase | WsCase

GREETING = {"type": "agent_response", "agent_response_event": {"agent_response": "Hello! How can I help you?"}}
INIT_META = {"type": "conversation_initiation_metadata",
             "conversation_initiation_metadata_event": {"conversation_id": "conv_corpus", "agent_output_audio_format":
                                                        "pcm_16000"}}
CLIENT_INIT = {"type": "conversation_initiation_client_data", "user_id": "corpus-user",
               "dynamic_variables": {"name": "Bob", "secret__token": "s3cr3t-value"}}
HISTORY = ("simulation_specification", "partial_conversation_history")
TURNS = [{"role": "agent", "message": "Hello! How can I help you?", "time_in_call_secs": 0},
         {"role": "user", "message": "my name is Bob", "time_in_call_secs": 3}]
REQUEST = {"simulation_specification": {"simulated_user_config": {"first_message": "Hi there", "prompt": {"prompt":
                                                                                                        "be a user"}},
                                        "partial_conversation_history": TURNS,
                                        "dynamic_variables": {"name": "Bob", "secret__token": "s3cr3t-value"}},
           "new_turns_limit": 2}
REPLY = {"simulated_conversation": [*TURNS, {"role": "agent", "message": "Nice to meet you, Bob.",
                                             "time_in_call_secs": 5}],
         "analysis": {"call_successful": "success", "transcript_summary": "ok"}}
CONFIG = {"agent_id": AGENT, "conversation_config": {"agent": {"first_message": "Hello! How can I help you?"}}}
SIGNED = {"signed_url": f"wss://api.elevenlabs.io{WS_PATH}?agent_id={AGENT}&conversation_signature=sig_corpus_000"}


def simulate(name: str, kind: str, body: Any = REQUEST, reply: Any = REPLY, **kw: Any) -> HttpCase:
    """A simulate-conversation call: values are written as hostile JSON, bytes as they are."""
    as_bytes = [v if isinstance(v, bytes) else dump(v).encode() for v in (body, reply)]
    return HttpCase(name, kind, kw.pop("path", SIMULATE), as_bytes[0], reply=as_bytes[1], **kw)


def get(name: str, kind: str, path: str, reply: Any, **kw: Any) -> HttpCase:
    return HttpCase(name, kind, path, method="GET", headers=(), reply=reply if isinstance(reply, bytes)
                    else dump(reply).encode(), **kw)


def encoded(name: str, encoding: str, data: bytes, path: str = SIMULATE) -> HttpCase:
    return HttpCase(name, "encoding", path, dump(REQUEST).encode(), reply=data,
                    reply_headers=(("Content-Type", "application/json"), ("Content-Encoding", encoding)))


HTML = b"<html><body>502 Bad Gateway</body></html>"
NDJSON = b"\n".join(dump(t).encode() for t in REPLY["simulated_conversation"])
SSE = b"".join(b"data: " + dump([t]).encode() + b"\n\n" for t in REPLY["simulated_conversation"])


def request_cases() -> list[HttpCase]:
    """Hostile simulate requests: not JSON, not UTF-8, wrong shapes, odd text, encodings, headers, paths."""
    cases = [simulate(f"test-hostile-{name}", "request", body.encode(), HOSTILE_REPLY.encode())
             for name, body in HOSTILE.items()]
    cases += [simulate(name, "request", body) for name, body in {
        "request-not-json": b"not json at all",
        "request-empty": b"",
        "request-whitespace": b" \r\n\t ",
        "request-truncated": dump(REQUEST).encode()[:37],
        "request-invalid-utf8": b'{"simulation_specification": {"partial_conversation_history": "\xff\xfe\xc3\x28"}}',
        "request-utf8-bom": b"\xef\xbb\xbf" + dump(REQUEST).encode(),
        "request-utf16": dump(REQUEST).encode("utf-16"),
        "request-ndjson": dump(REQUEST).encode() + b"\n" + dump(REQUEST).encode(),
        "request-binary": random.Random(13).randbytes(4096),
        "request-5000-digits": Raw('{"new_turns_limit": ' + "9" * 5000 + "}").text.encode(),
    }.items()]
    cases += [simulate(name, "request", body) for name, body in {
        "request-array": [], "request-string": "simulate please", "request-null": None, "request-number": 123,
        "request-duplicate-keys": Raw('{"simulation_specification": {"partial_conversation_history": [], '
                                      '"partial_conversation_history": ' + dump(TURNS) + "}}"),
        "request-nan-times": replaced(REQUEST, HISTORY,
                                      [{**TURNS[0], "time_in_call_secs": Raw(v)} for v in
                                       ("NaN", "Infinity", "-Infinity", "-1e999", "1e-999", "-0")]),
        "request-5k-turns": replaced(REQUEST, HISTORY, [{"role": ("user", "agent")[i % 2], "message": f"turn {i}",
                                                         "time_in_call_secs": i} for i in range(5000)]),
        "request-odd-text": replaced(REQUEST, HISTORY,
                                     [{"role": "user", "message": m, "time_in_call_secs": 0} for m in (
                                         "nul \x00 byte", "line\u2028separator", "rtl \u202e override",
                                         "bom \ufeff inside", "</script><script>alert(1)</script>", "{{ 7 * 7 }}",
                                         "<!-- comment", "x" * 100_000, "", " ", "\udfff")]),
        "request-odd-roles": replaced(REQUEST, HISTORY,
                                      [{"role": r, "message": "x", "time_in_call_secs": 0} for r in (
                                          "USER", " agent ", "system", "", "\ud800", "officer", "Assistant")]),
        "request-context-deep": {**REQUEST, "conversation_context": deep_object(PARSABLE * 2, "history")},
        "request-embedded-deep": replaced(REQUEST, HISTORY, [{"role": "user", "time_in_call_secs": 0, "message":
                                                              deep_object(PARSABLE * 2, "conversation_history").text}]),
        "request-every-context-field": {**REQUEST, "conversation_context": "User: hi Agent: hello User: again",
                                        "context": {"summary": 5}, "conversation_history": {"turns": "User: x"},
                                        "history": [None, 1, {"role": "bot", "text": "t"}],
                                        "messages": {"messages": {"messages": [{"role": "human", "content": "c"}]}},
                                        "chat_history": Raw("1e999")},
    }.items()]
    gz = gzip.compress(dump(REQUEST).encode())
    cases += [
        simulate("request-gzip", "request", gz, headers=(("content-type", b"application/json"),
                                                          ("content-encoding", b"gzip"))),
        simulate("request-gzip-mislabelled", "request", dump(REQUEST).encode(),
                 headers=(("content-type", b"application/json"), ("content-encoding", b"gzip"))),
        simulate("request-br", "request", brotli.compress(dump(REQUEST).encode()),
                 headers=(("content-encoding", b"br"),)),
        simulate("request-session-header-bytes", "request", headers=(("x-session-id", b"\xff\xfe\x80 s\xc3\xa9ss"),)),
        simulate("request-session-header-long", "request", headers=(("x-session-id", b"</script>" + b"s" * 4000),)),
        simulate("request-session-header-twice", "request", headers=(("x-session-id", b"one"),
                                                                       ("x-session-id", b"two"))),
        simulate("request-agent-id-encoded", "request", path="/v1/convai/agents/%ED%A0%80%F0%9F%A4%96%3Cb%3E"
                                                              "/simulate-conversation"),
        simulate("request-agent-id-long", "request", path=f"/v1/convai/agents/{'a' * 2000}/simulate-conversation"),
    ]
    return cases


def reply_cases() -> list[HttpCase]:
    """Hostile simulate replies, batch and stream (NDJSON, SSE): not JSON, wrong shapes, deep, huge."""
    reply = dump(REPLY).encode()
    cases = [simulate(name, "response", reply=body) for name, body in {
        "reply-not-json": HTML,
        "reply-invalid-utf8": b'{"simulated_conversation": [{"role": "agent", "message": "\xff\xfe"}]}',
        "reply-deep": deep(DEEP),
        "reply-deep-turns": {"simulated_conversation": [deep(PARSABLE), deep(DEEP)]},
        "reply-surrogates": {"simulated_conversation": [{"role": "agent", "message": "\ud800 \udfff \ud83d",
                                                         "time_in_call_secs": 1}]},
        "reply-huge-numbers": {"simulated_conversation": [{"role": "agent", "message": "x", "time_in_call_secs":
                                                           digits(400)}], "analysis": {"score": Raw("1e999")}},
        "reply-5000-digits": Raw('{"simulated_conversation": [], "n": ' + "9" * 5000 + "}"),
        "reply-conversation-string": {"simulated_conversation": "Agent: hello"},
        "reply-junk-turns": {"simulated_conversation": [1, None, [], "agent", {"role": []}, {"role": "agent"},
                                                        {"role": "agent", "message": {"text": "x"}}]},
        "reply-bare-list": [{"role": "agent", "message": "bare list"}, 7],
        "reply-bare-turn": {"role": "agent", "message": "bare turn"},
        "reply-null": None,
        "reply-empty": b"",
        "reply-echo-wrong-types": {"simulated_conversation": [{"role": "agent", "message": 5}, *TURNS]},
    }.items()]
    cases += [simulate(name, "response", path=STREAM, reply=body) for name, body in {
        "stream-ndjson": NDJSON,
        "stream-ndjson-bad-line": NDJSON.replace(b"\n", b"\n{oops\n", 1),
        "stream-sse": SSE + b"data: [DONE]\n\n",
        "stream-sse-crlf": SSE.replace(b"\n", b"\r\n"),
        "stream-sse-broken": b"event: x\ndata: {\"role\": \ndata: [1,\n\n: comment\nid: 7\nretry: x\n\n",
        "stream-sse-done-only": b"data: [DONE]\n\n",
        "stream-concatenated": reply + reply + b"," + reply,
        "stream-deep": b"data: " + deep(DEEP).text.encode() + b"\n\n",
        "stream-binary": bytes(range(256)) * 16,
    }.items()]
    return cases


def endpoint_cases() -> list[HttpCase]:
    """The other endpoints the proxy reads or rewrites: agent config, get-signed-url, token, conversations."""
    cases = [get(name, "endpoint", AGENT_CONFIG, body) for name, body in {
        "agent-config-not-json": HTML,
        "agent-config-first-message-list": replaced(CONFIG, ("conversation_config", "agent", "first_message"),
                                                    ["Hello"]),
        "agent-config-deep": {"conversation_config": {"agent": deep(DEEP)}},
        "agent-config-surrogate": replaced(CONFIG, ("conversation_config", "agent", "first_message"), "Hi \udc00"),
        "agent-config-string": {"conversation_config": "agent"},
    }.items()]
    cases += [get(name, "endpoint", SIGNED_URL + f"?agent_id={AGENT}", body) for name, body in {
        "signed-url-not-json": HTML,
        "signed-url-number": {"signed_url": 5},
        "signed-url-list": [SIGNED],
        "signed-url-bad-ipv6": {"signed_url": "wss://[::1/v1/convai/conversation"},
        "signed-url-relative": {"signed_url": "/v1/convai/conversation?agent_id=x"},
        "signed-url-surrogate": {"signed_url": f"wss://api.elevenlabs.io{WS_PATH}?agent_id=\ud800"},
        "signed-url-huge-number": {**SIGNED, "expires": Raw("1e999")},
        "signed-url-5000-digits": Raw('{"signed_url": "wss://api.elevenlabs.io/x", "n": ' + "9" * 5000 + "}"),
    }.items()]
    cases += [
        HttpCase("signed-url-gzip", "endpoint", SIGNED_URL, method="GET", headers=(),
                 reply=gzip.compress(dump(SIGNED).encode()),
                 reply_headers=(("Content-Type", "application/json"), ("Content-Encoding", "gzip"))),
        HttpCase("signed-url-gzip-mislabelled", "endpoint", SIGNED_URL, method="GET", headers=(),
                 reply=dump(SIGNED).encode(),
                 reply_headers=(("Content-Type", "application/json"), ("Content-Encoding", "gzip"))),
        get("conversation-token", "endpoint", "/v1/convai/conversation/token", {"token": deep(DEEP)}),
        get("conversation-transcript", "endpoint", "/v1/convai/conversations/conv_corpus",
            {"conversation_id": Raw("1e999"), "transcript": [deep(PARSABLE), {"role": "\ud800"}]}),
        simulate("unknown-endpoint", "endpoint", path=f"/v1/convai/agents/{AGENT}/unknown", reply=deep(DEEP)),
    ]
    return cases


def encoding_cases() -> list[HttpCase]:
    """Content encodings: right, mislabelled, truncated, stacked, unknown, and a gzip bomb."""
    plain = dump(REPLY).encode()
    return [
        encoded("gzip", "gzip", gzip.compress(plain)),
        encoded("gzip-upper", "GZIP", gzip.compress(plain)),
        encoded("deflate-zlib", "deflate", zlib.compress(plain)),
        encoded("deflate-raw", "deflate", zlib.compress(plain)[2:-4]),
        encoded("br", "br", brotli.compress(plain)),
        encoded("zstd", "zstd", zstandard.ZstdCompressor().compress(plain)),
        encoded("gzip-over-plain", "gzip", plain),
        encoded("br-over-gzip", "br", gzip.compress(plain)),
        encoded("zstd-over-plain", "zstd", plain),
        encoded("deflate-over-plain", "deflate", plain),
        encoded("gzip-truncated", "gzip", gzip.compress(plain)[:-12]),
        encoded("br-truncated", "br", brotli.compress(plain)[:-5]),
        encoded("zstd-truncated", "zstd", zstandard.ZstdCompressor().compress(plain)[:-5]),
        encoded("gzip-then-br", "gzip, br", brotli.compress(gzip.compress(plain))),
        encoded("unknown-encoding", "x-corpus", plain),
        encoded("identity", "identity", plain),
        encoded("empty-encoding", "", plain),
        encoded("gzip-bomb", "gzip", gzip.compress(b'{"simulated_conversation": [' + b" " * (4 * MB) + b"]}", 9)),
        encoded("gzip-sse-stream", "gzip", gzip.compress(SSE), path=STREAM),
    ]


def status_cases() -> list[HttpCase]:
    """Statuses the decoder reads differently (errors, retries, removed), and content types that lie."""
    reply = dump(REPLY).encode()
    return [simulate(name, "status", reply=body, status=status, reply_headers=headers) for name, status, body, headers
            in (("status-204", 204, b"", ()),
                  ("status-404-removed", 404, {"detail": {"status": "not_found", "message": "\ud800"}},
                   (("Content-Type", "application/json"),)),
                  ("status-410", 410, b"", ()),
                  ("status-422", 422, {"detail": [{"loc": deep(PARSABLE), "msg": 1e308, "type": None}]},
                   (("Content-Type", "application/json"),)),
                  ("status-429", 429, b"slow down", (("Retry-After", "soon"),)),
                  ("status-500-html", 500, HTML, (("Content-Type", "text/html"),)),
                  ("status-503-deep", 503, deep(DEEP), (("Content-Type", "application/json"),)),
                  ("status-599", 599, reply, (("Content-Type", "application/json"),)),
                  ("status-302", 302, b"", (("Location", "http://127.0.0.1:9/elsewhere"),)),
                  ("content-type-lies", 200, reply, (("Content-Type", "text/event-stream"),)),
                  ("content-type-binary", 200, bytes(range(256)), (("Content-Type", "application/json"),)))]


def size_case() -> HttpCase:
    """20 MB each way: a history whose user message is 20 MB, and a 20 MB agent turn back."""
    history = [TURNS[0], {**TURNS[1], "message": "u" * (20 * MB)}]
    reply = {"simulated_conversation": [{"role": "agent", "message": "a" * (20 * MB), "time_in_call_secs": 9}]}
    return simulate("size-20mb", "size", replaced(REQUEST, HISTORY, history), reply)


# -- wrong types in every field the decoder reads -------------------------------------------------------------

WRONG: dict[str, Any] = {
    "null": None,
    "true": True,
    "inf": Raw("1e999"),
    "400-digits": digits(400),
    "surrogate": "lone \ud800 surrogate",
    "list": [1, "a", None, {}],
    "object": {"a": {"b": []}},
    "deep": deep(DEEP),
    "deep-read": deep(PARSABLE),
}
REQUEST_FIELDS: dict[str, tuple[str | int, ...]] = {
    "body": (),
    "simulation_specification": HISTORY[:1],
    "partial_conversation_history": HISTORY,
    "turn": (*HISTORY, 1),
    "role": (*HISTORY, 1, "role"),
    "message": (*HISTORY, 1, "message"),
    "time_in_call_secs": (*HISTORY, 1, "time_in_call_secs"),
    "simulated_user_config": (HISTORY[0], "simulated_user_config"),
    "first_message": (HISTORY[0], "simulated_user_config", "first_message"),
    "dynamic_variables": (HISTORY[0], "dynamic_variables"),
    "secret_variable": (HISTORY[0], "dynamic_variables", "secret__token"),
    "conversation_context": ("conversation_context",),
}
REPLY_FIELDS: dict[str, tuple[str | int, ...]] = {
    "reply": (),
    "simulated_conversation": ("simulated_conversation",),
    "reply_turn": ("simulated_conversation", 2),
    "reply_role": ("simulated_conversation", 2, "role"),
    "reply_message": ("simulated_conversation", 2, "message"),
}
CONFIG_FIELDS: dict[str, tuple[str | int, ...]] = {
    "conversation_config": ("conversation_config",),
    "agent": ("conversation_config", "agent"),
    "agent_first_message": ("conversation_config", "agent", "first_message"),
}
CLIENT_FIELDS: dict[str, tuple[Any, tuple[str | int, ...]]] = {
    "client_type": (CLIENT_INIT, ("type",)),
    "user_id": (CLIENT_INIT, ("user_id",)),
    "conversation_config_override": (CLIENT_INIT, ("conversation_config_override",)),
    "override_first_message": ({**CLIENT_INIT, "conversation_config_override": {"agent": {"first_message": "x"}}},
                               ("conversation_config_override", "agent", "first_message")),
    "client_dynamic_variables": (CLIENT_INIT, ("dynamic_variables",)),
    "user_message_text": ({"type": "user_message", "text": "hi"}, ("text",)),
    "multimodal_text": ({"type": "multimodal_message", "text": {"text": "hi"}}, ("text", "text")),
    "contextual_update_text": ({"type": "contextual_update", "text": "ctx"}, ("text",)),
    "user_audio_chunk": ({"user_audio_chunk": "AAAA"}, ("user_audio_chunk",)),
    "pong_event_id": ({"type": "pong", "event_id": 1}, ("event_id",)),
}
SERVER_FIELDS: dict[str, tuple[Any, tuple[str | int, ...]]] = {
    "server_type": (GREETING, ("type",)),
    "conversation_initiation_metadata_event": (INIT_META, ("conversation_initiation_metadata_event",)),
    "conversation_id": (INIT_META, ("conversation_initiation_metadata_event", "conversation_id")),
    "agent_response_event": (GREETING, ("agent_response_event",)),
    "agent_response": (GREETING, ("agent_response_event", "agent_response")),
    "corrected_agent_response": ({"type": "agent_response_correction", "agent_response_correction_event": {
        "original_agent_response": "a", "corrected_agent_response": "b"}},
        ("agent_response_correction_event", "corrected_agent_response")),
    "user_transcription_event": ({"type": "user_transcript", "user_transcription_event": {"user_transcript": "hi"}},
                                 ("user_transcription_event",)),
    "ping_event": ({"type": "ping", "ping_event": {"event_id": 1, "ping_ms": 5}}, ("ping_event",)),
    "audio_event": ({"type": "audio", "audio_event": {"audio_base_64": "AAAA", "event_id": 1}}, ("audio_event",)),
}


def wrong_types() -> list[Case]:
    """Each field the decoder reads, once with each wrong value: a call each (HTTP), a socket each (WebSocket)."""
    cases: list[Case] = []
    for kind, value in WRONG.items():
        cases += [simulate(f"wrong-{name}-{kind}", "wrong-types", replaced(REQUEST, path, value))
                  for name, path in REQUEST_FIELDS.items()]
        cases += [simulate(f"wrong-{name}-{kind}", "wrong-types", reply=replaced(REPLY, path, value))
                  for name, path in REPLY_FIELDS.items()]
        cases += [get(f"wrong-{name}-{kind}", "wrong-types", AGENT_CONFIG, replaced(CONFIG, path, value))
                  for name, path in CONFIG_FIELDS.items()]
        cases.append(get(f"wrong-signed_url-{kind}", "wrong-types", SIGNED_URL, {"signed_url": value}))
    user = text({"type": "user_message", "text": "and now?"})
    for name, (doc, path) in CLIENT_FIELDS.items():
        frames = tuple(text(replaced(doc, path, v)) for v in WRONG.values())
        cases.append(WsCase(f"wrong-{name}", "wrong-types", (text(INIT_META), text(GREETING)), (*frames, user)))
    for name, (doc, path) in SERVER_FIELDS.items():
        frames = tuple(text(replaced(doc, path, v)) for v in WRONG.values())
        cases.append(WsCase(f"wrong-{name}", "wrong-types", frames, (text(CLIENT_INIT), user), frames))
    return cases


# -- hypothesis: JSON of the decoder's shapes, hostile anywhere ------------------------------------------------

FIELD_NAMES = sorted({str(step) for paths in (REQUEST_FIELDS, REPLY_FIELDS, CONFIG_FIELDS)
                      for path in paths.values() for step in path if isinstance(step, str)}
                     | {str(step) for fields in (CLIENT_FIELDS, SERVER_FIELDS) for _, path in fields.values()
                        for step in path if isinstance(step, str)}
                     | {"content", "text", "history", "messages", "turns", "transcript", "summary", "context",
                        "chat_history", "conversation_history", "secret__key", "signed_url", "token"})
ROLES = ["user", "agent", "User", " AGENT ", "assistant", "human", "bot", "system", ""]


def hostile_leaves() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(),  # floats: NaN and Infinity too
        st.integers(300, 5000).map(digits),  # huge numbers: past 4,300 digits Python will not read them
        st.sampled_from(["1e999", "-1e999", "1e-400", "-0", "0.1e-99999", "1E+308"]).map(Raw),
        st.integers(PARSABLE, DEEP).map(deep),  # deep nesting: read up to about 1,000, refused beyond
        st.text(st.characters(), max_size=20),  # any code point, lone surrogates included
        st.sampled_from(ROLES + ["User: hi\nAgent: hello", "User: hi Agent: hello",
                                 '{"conversation_history": [{"role": "user", "content": "x"}]}']),
    )


def hostile_values() -> st.SearchStrategy[Any]:
    keys = st.sampled_from(FIELD_NAMES) | st.text(max_size=6)
    return st.recursive(hostile_leaves(), lambda kids: st.lists(kids, max_size=3) | st.dictionaries(
        keys, kids, max_size=3), max_leaves=8)


def shaped(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """An object with any of these fields, each of its shape or hostile; or a hostile value instead."""
    return st.fixed_dictionaries({}, optional={k: s | hostile_values() for k, s in fields.items()}) | hostile_values()


def turns() -> st.SearchStrategy[Any]:
    any_ = hostile_values()
    turn = shaped({"role": st.sampled_from(ROLES), "message": st.text(max_size=20), "content": any_, "text": any_,
                   "time_in_call_secs": st.integers(0, 100) | st.floats()})
    return st.lists(turn, max_size=4)


def requests() -> st.SearchStrategy[Any]:
    spec = shaped({"partial_conversation_history": turns(),
                   "simulated_user_config": shaped({"first_message": st.text(max_size=10)}),
                   "dynamic_variables": st.dictionaries(st.sampled_from(["name", "secret__key"]), hostile_values())})
    return shaped({"simulation_specification": spec, "conversation_context": turns(), "history": turns(),
                   "messages": turns(), "new_turns_limit": st.integers()})


def replies() -> st.SearchStrategy[Any]:
    return shaped({"simulated_conversation": turns(), "analysis": hostile_values()}) | turns()


def client_frames() -> st.SearchStrategy[Any]:
    any_ = hostile_values()
    return shaped({"type": st.sampled_from(sorted(KNOWN_CLIENT_TYPES)), "text": st.text(max_size=10), "user_id": any_,
                   "conversation_config_override": shaped({"agent": shaped({"first_message": any_})}),
                   "dynamic_variables": any_, "user_audio_chunk": any_, "event_id": any_})


def server_frames() -> st.SearchStrategy[Any]:
    any_ = hostile_values()
    return shaped({"type": st.sampled_from(sorted(KNOWN_SERVER_TYPES)),
                   "conversation_initiation_metadata_event": shaped({"conversation_id": any_}),
                   "agent_response_event": shaped({"agent_response": st.text(max_size=10)}),
                   "agent_response_correction_event": shaped({"corrected_agent_response": any_}),
                   "user_transcription_event": shaped({"user_transcript": any_}),
                   "ping_event": shaped({"event_id": any_}), "audio_event": any_})


GENERATE = settings(derandomize=True, database=None, deadline=None, phases=[Phase.generate],
                    suppress_health_check=list(HealthCheck))


def drawn(strategy: st.SearchStrategy[Any], n: int) -> list[Any]:
    """n values of a strategy, the same on every run (derandomized), for the live corpus."""
    found: list[Any] = []

    @settings(GENERATE, max_examples=n)
    @given(strategy)
    def collect(value: Any) -> None:
        found.append(value)

    collect()
    return found


def generated() -> list[Case]:
    """Hypothesis-generated cases: simulate calls (hostile request and reply) and sockets of hostile frames."""
    pairs = drawn(st.tuples(requests(), replies()), 40)
    cases: list[Case] = [simulate(f"generated-{i}", "generated", body, reply, path=STREAM if i % 4 == 3 else SIMULATE)
                         for i, (body, reply) in enumerate(pairs)]
    sockets = drawn(st.tuples(st.lists(server_frames(), max_size=6), st.lists(client_frames(), max_size=6),
                              st.lists(server_frames(), max_size=6)), 8)
    cases += [WsCase(f"generated-ws-{i}", "generated", tuple(map(text, s)), tuple(map(text, c)), tuple(map(text, a)))
              for i, (s, c, a) in enumerate(sockets)]
    return cases


# -- hand-written sockets --------------------------------------------------------------------------------------


def frames(values: Sequence[Any]) -> tuple[Frame, ...]:
    return tuple(v if isinstance(v, Frame) else text(v) for v in values)


def opened(name: str, server: Sequence[Any], client: Sequence[Any], after: Sequence[Any] = (), **kw: Any) -> WsCase:
    """A socket opened as usual (metadata, greeting; the client's initiation), then the hostile frames."""
    return WsCase(name, "websocket", frames([INIT_META, GREETING, *server]), frames([CLIENT_INIT, *client]),
                  frames(after), **kw)


def user(words: Any) -> dict[str, Any]:
    return {"type": "user_message", "text": words}


def agent(words: Any) -> dict[str, Any]:
    return {"type": "agent_response", "agent_response_event": {"agent_response": words}}


def socket_cases() -> list[WsCase]:
    """Hand-written sockets: invalid, binary, empty, 1 MB and unknown frames, odd closes and queries."""
    noise = random.Random(7).randbytes(MB)
    return [
        opened("ws-test-hostile-frames", [HOSTILE_FRAMES[2]], HOSTILE_FRAMES[:2]),
        opened("ws-invalid-json", ["{not json", "}{", "[1,", "null x", "'single'", "NaN"],
               ["{oops", "undefined", user("ok")], ['{"type": "agent_response"']),
        opened("ws-binary", [binary(noise[:256]), binary(dump(agent("in binary")).encode())],
               [binary(b"\x00\xff"), binary(dump(user("in binary")).encode()), user("text")], [agent("reply")]),
        opened("ws-unknown-types", [{"type": "brand_new"}, {"type": 7}, {"type": None}, {"type": ["agent_response"]},
                                    {"type": {"a": 1}}, {}],
               [{"type": "teleport"}, {"type": ""}, {"no_type": 1}, user("hi")], [{"type": "agent_response_v2"}]),
        opened("ws-deep", [deep(DEEP), agent(deep(DEEP)), agent(deep(PARSABLE))],
               [user(deep(DEEP)), user(deep(PARSABLE)), {"type": "contextual_update", "text": deep(PARSABLE)}],
               [agent(deep(PARSABLE)), agent("after deep")]),
        opened("ws-surrogates", [{"type": "conversation_initiation_metadata",
                                  "conversation_initiation_metadata_event": {"conversation_id": "\ud800"}}],
               [user("\ud83d"), {"type": "contextual_update", "text": "\udc00"}], [agent("\ud800 \udfff")]),
        opened("ws-huge-numbers", [{"type": "ping", "ping_event": {"event_id": digits(5000)}},
                                   {"type": "conversation_initiation_metadata",
                                    "conversation_initiation_metadata_event": {"conversation_id": Raw("1e999")}}],
               [{"type": "pong", "event_id": Raw("1e999")}, user(digits(400))], [agent(Raw("-1e999"))]),
        opened("ws-1mb-text", [agent("a" * MB)], [user("u" * MB)], [agent("b" * MB)]),
        opened("ws-1mb-binary", [binary(noise)], [binary(noise[::-1])]),
        opened("ws-empty-frames", [Frame(b""), binary(b"")], [Frame(b""), binary(b""), user("")], [agent("")]),
        opened("ws-json-scalars", ["null", "[]", "123", '"string"', "true"], ["null", "[]", "123", '"s"', "false"]),
        opened("ws-reply-before-message", [agent("one"), agent("two"), {
            "type": "agent_response_correction", "agent_response_correction_event": {"corrected_agent_response": 5}}],
            [user("now")], [{"type": "agent_response_correction",
                             "agent_response_correction_event": {"corrected_agent_response": "fixed"}}, agent("r")]),
        opened("ws-multimodal", [], [{"type": "multimodal_message", "text": {"text": 5}},
                                     {"type": "multimodal_message", "text": ["x"]}, {"type": "multimodal_message"}]),
        opened("ws-audio-wrong-types", [{"type": "audio", "audio_event": 5}, {"type": "audio"}],
               [{"user_audio_chunk": 123}, {"user_audio_chunk": None, "type": "user_message", "text": "hi"}]),
        opened("ws-user-message-no-text", [], [{"type": "user_message"}, user(None), user({"text": "x"})]),
        opened("ws-many-turns", [], [user(f"message {i}") for i in range(100)],
               [agent(f"reply {i}") for i in range(100)]),
        opened("ws-html-injection", [agent("</script><script>alert(1)</script>")],
               [user("<!--"), user("{{ 7 * 7 }}"), user("${x}")], [agent("<svg onload=alert(1)>")]),
        opened("ws-initiation-twice", [], [{**CLIENT_INIT, "user_id": None}, {
            "type": "conversation_initiation_client_data", "conversation_config_override": {"agent": deep(PARSABLE)}}]),
        opened("ws-close-unicode-reason", [], [user("bye")], [agent("bye")], close=(4999, "ünïcødé 🤖 reason")),
        opened("ws-close-1011", [], [user("fail")], close=(1011, "internal error")),
        opened("ws-close-3000-long-reason", [], [user("x")], close=(3000, "r" * 123)),
        opened("ws-hostile-query", [], [user("q")], query="agent_id=%ED%A0%80&agent_id=two"
                                                          "&conversation_signature=sig_SECRET_0000&token=%FF%FE"),
        opened("ws-no-agent-id", [], [user("who")], query=""),
        opened("ws-ping", [Frame(b"ping payload", "ping"), Frame(b"", "ping")], [user("still there?")]),
        opened("ws-invalid-utf8-from-server", [Frame(b'{"type": "agent_response", "text": "\xff\xfe"}')],
               [user("x")]),
        opened("ws-invalid-utf8-from-client", [], [user("before"),
                                                    Frame(b'{"type": "user_message", "text": "\xc3\x28"}')]),
    ]


@cache
def corpus() -> tuple[Case, ...]:
    """The whole corpus, built once (the generated part is the same on every run)."""
    cases = (*request_cases(), *reply_cases(), *endpoint_cases(), *encoding_cases(), *status_cases(), size_case(),
             *wrong_types(), *generated(), *socket_cases())
    names = Counter(c.name for c in cases)
    assert max(names.values()) == 1, [n for n, k in names.items() if k > 1]
    return cases


# -- the upstream: canned responses and sockets on 127.0.0.1 ---------------------------------------------------


class Upstream:
    """A loopback server that answers each case (named by the ``case`` query parameter) with its canned bytes."""

    def __init__(self, cases: tuple[Case, ...]) -> None:
        self.http = {c.name: c for c in cases if isinstance(c, HttpCase)}
        self.ws = {c.name: c for c in cases if isinstance(c, WsCase)}
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * MB)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None, auto_decompress=False)  # the request's bytes as sent
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.query.get("case", "")
        if name in self.ws and request.headers.get("Upgrade", "").lower() == "websocket":
            return await self.socket(request, self.ws[name])
        case = self.http.get(name)
        body = await request.read()
        if case is None:
            return web.Response(status=404, text=f"no case {name!r}")
        headers = CIMultiDict(case.reply_headers)
        headers["X-Corpus-Received"] = f"{len(body)} {hashlib.sha256(body).hexdigest()}"  # what reached us
        return web.Response(status=case.status, body=case.reply, headers=headers)

    async def socket(self, request: web.Request, case: WsCase) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        for frame in case.server:
            await send(ws, frame)
        for _ in case.client:
            msg = await ws.receive(timeout=5)
            if msg.type == WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
            else:  # closed, or a frame it refused
                break
        for frame in case.after:
            await send(ws, frame)
        await ws.close(code=case.close[0], message=case.close[1].encode())
        return ws


async def send(ws: web.WebSocketResponse, frame: Frame) -> None:
    if ws.closed:
        return
    if frame.opcode == "ping":
        await ws.ping(frame.data)
    else:
        await ws.send_frame(frame.data, WSMsgType.TEXT if frame.opcode == "text" else WSMsgType.BINARY)


# -- the client: every case, raw bytes in and out ----------------------------------------------------------------


def digest(data: bytes) -> dict[str, Any]:
    """What a client got, comparable: size and hash (and the bytes themselves when small)."""
    out: dict[str, Any] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    if len(data) <= 64 * 1024:
        out["b64"] = base64.b64encode(data).decode()
    return out


def write_spec(cases: tuple[Case, ...], path: Path) -> Path:
    """The client's half of the corpus: an index (spec.json) into one file of bodies and frames (spec.bin)."""
    blob = bytearray()

    def put(data: bytes) -> list[int]:
        blob.extend(data)
        return [len(blob) - len(data), len(blob)]

    spec: dict[str, list[dict[str, Any]]] = {"http": [], "ws": []}
    for c in cases:
        if isinstance(c, HttpCase):
            spec["http"].append({"name": c.name, "method": c.method, "path": c.path, "body": put(c.body),
                                 "headers": [[k, put(v)] for k, v in c.headers]})
        else:
            spec["ws"].append({"name": c.name, "query": c.query, "expect": len(c.server) + len(c.client) + len(c.after),
                               "client": [[f.opcode == "text", put(f.data)] for f in c.client]})
    path.with_suffix(".bin").write_bytes(bytes(blob))
    path.write_text(json.dumps(spec), encoding="utf-8")
    return path


def client_main() -> None:
    """Run every case of spec.json against $ELEVENLABS_BASE_URL; write what came back to the output file."""
    import httpx
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    spec_path, out_path = Path(sys.argv[1]), Path(sys.argv[2])
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    blob = spec_path.with_suffix(".bin").read_bytes()
    base = os.environ["ELEVENLABS_BASE_URL"]
    out: dict[str, Any] = {"base": base, "http": {}, "ws": {}, "seconds": {}}
    with httpx.Client(timeout=60, trust_env=False) as http:
        for c in spec["http"]:
            started = time.monotonic()
            url = f"{base}{c['path']}{'&' if '?' in c['path'] else '?'}case={c['name']}"
            headers = [(k, blob[a:b]) for k, [a, b] in c["headers"]] + [("xi-api-key", KEY)]
            a, b = c["body"]
            try:
                with http.stream(c["method"], url, content=blob[a:b], headers=headers) as r:
                    raw = b"".join(r.iter_raw())  # as sent: no content decoding
                out["http"][c["name"]] = {"status": r.status_code, "reason": r.reason_phrase, "body": digest(raw),
                                          "headers": [[k.decode("latin-1").lower(), v.decode("latin-1")]
                                                      for k, v in r.headers.raw]}
            except httpx.HTTPError as e:
                out["http"][c["name"]] = {"error": type(e).__name__}
            out["seconds"][c["name"]] = time.monotonic() - started
    ws_base = "ws" + base[4:]
    for c in spec["ws"]:
        started = time.monotonic()
        got: list[Any] = []
        sent = 0
        end: Any = "no close"
        try:
            with connect(f"{ws_base}{WS_PATH}?{c['query']}{'&' if c['query'] else ''}case={c['name']}", max_size=None,
                         open_timeout=10, close_timeout=5, proxy=None) as ws:
                for is_text, [a, b] in c["client"]:
                    ws.send(blob[a:b], text=is_text)
                    sent += 1
                for _ in range(c["expect"] + 2):
                    msg = ws.recv(timeout=10)
                    got.append(["text", digest(msg.encode())] if isinstance(msg, str) else ["binary", digest(msg)])
        except ConnectionClosed as e:
            end = [e.rcvd.code, e.rcvd.reason] if e.rcvd else ["not received", e.sent.code if e.sent else None]
        except (OSError, TimeoutError) as e:
            end = ["error", type(e).__name__]
        out["ws"][c["name"]] = {"frames": got, "sent": sent, "end": end}
        out["seconds"][c["name"]] = time.monotonic() - started
    out_path.write_text(json.dumps(out), encoding="utf-8")


# The client runs alone (python -c): these two functions and the few names they use, not this whole module.
CLIENT = [sys.executable, "-c", "\n".join([
    "import base64, hashlib, json, os, sys, time", "from pathlib import Path", "from typing import Any",
    f"KEY, WS_PATH = {KEY!r}, {WS_PATH!r}", inspect.getsource(digest), inspect.getsource(client_main),
    "client_main()"])]


# -- live: one recording of the whole corpus, and the same client straight to the upstream ----------------------


@dataclass
class Live:
    """The live run: what the client got directly and through the proxy, the record run and the commands after."""

    out: Path
    direct: dict[str, Any]
    proxied: dict[str, Any]
    runs: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)


def run_all(commands: dict[str, list[str]], env: dict[str, str],
            timeout: float) -> dict[str, subprocess.CompletedProcess[str]]:
    """Run the commands side by side (each bounded by the timeout) and return each one's result."""
    procs = {name: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
             for name, cmd in commands.items()}
    done = {}
    for name, proc in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        done[name] = subprocess.CompletedProcess(commands[name], proc.returncode, stdout, stderr)
    return done


def run_live(work: Path, home: Path) -> Live:
    """Record the corpus (and run it directly), then report, check and export the capture."""
    from sessiontap.app.background import running_in_thread
    from tests.conftest import SESSIONTAP, clean_env

    spec = write_spec(corpus(), work / "spec.json")
    out = work / "out"
    env = clean_env(home, ELEVENLABS_API_KEY=KEY, NO_PROXY="127.0.0.1,localhost")
    with running_in_thread(Upstream(corpus()), "corpus-upstream") as upstream:
        runs = run_all({
            "direct": [*CLIENT, str(spec), str(work / "direct.json")],
            "record": [SESSIONTAP, "record", "--mode", "reverse", "--upstream", upstream.url, "--out", str(out), "--",
                       *CLIENT, str(spec), str(work / "proxied.json")],
        }, {**env, "ELEVENLABS_BASE_URL": upstream.url}, timeout=400)
    runs |= run_all({
        "report": [SESSIONTAP, "report", str(out), "--out", str(work / "again")],
        "check": [SESSIONTAP, "check", str(out)],
        "export": [SESSIONTAP, "export", str(out), "--har", str(work / "out.har")],
    }, env, timeout=400)
    for name in ("direct", "record"):
        assert runs[name].returncode == 0, (name, runs[name].stderr[-3000:])
    direct, proxied = (json.loads((work / f"{name}.json").read_text(encoding="utf-8")) for name in ("direct",
                                                                                                  "proxied"))
    return Live(out, direct, proxied, runs)


@pytest.fixture(scope="module")
def live_started(tmp_path_factory: pytest.TempPathFactory, sessiontap_home: Path) -> Iterator[Future[Live]]:
    """The live run, started in the background: the offline tests run meanwhile (the proxy keeps one core busy)."""
    corpus()  # built here, once, before two threads want it
    with ThreadPoolExecutor(1) as pool:
        yield pool.submit(run_live, tmp_path_factory.mktemp("corpus"), sessiontap_home)


@pytest.fixture(scope="module")
def live(live_started: Future[Live]) -> Live:
    return live_started.result()


IGNORED_HEADERS = {"date", "server", "x-sessiontap-session"}  # the proxy's one added header, and the clock


def decoded(body: bytes, headers: list[list[str]]) -> bytes:
    """A body with its Content-Encoding undone, or as it is when that fails (as mitmproxy reads it)."""
    from mitmproxy.net import encoding

    ce = next((v for k, v in headers if k == "content-encoding"), "")
    try:
        return encoding.decode(body, ce) if ce else body
    except ValueError:
        return body


def body_of(result: dict[str, Any]) -> bytes:
    return base64.b64decode(result["body"]["b64"])


def http_difference(case: HttpCase, direct: dict[str, Any], proxied: dict[str, Any], origin: str) -> str | None:
    """How the proxied response differs from the direct one (None: it does not), the signed_url rewrite allowed."""
    from sessiontap.router import rewrite_signed_url

    if "error" in direct or "error" in proxied:
        return None if direct == proxied else f"direct {direct.get('error')}, proxied {proxied.get('error')}"
    if (direct["status"], direct["reason"]) != (proxied["status"], proxied["reason"]):
        return f"status {direct['status']} {direct['reason']!r} became {proxied['status']} {proxied['reason']!r}"
    rewritten = None
    if case.path.startswith(SIGNED_URL) and direct["status"] == 200 and "b64" in direct["body"]:
        try:
            rewritten = rewrite_signed_url(decoded(body_of(direct), direct["headers"]), origin)
        except ValueError:  # the router fails on it too (see the known defects): the body goes through as is
            rewritten = None
    skip = IGNORED_HEADERS | ({"content-length"} if rewritten is not None else set())
    headers = [sorted(h for h in r["headers"] if h[0] not in skip) for r in (direct, proxied)]
    if headers[0] != headers[1]:
        return f"headers {headers[0]} became {headers[1]}"
    if rewritten is not None:
        return None if decoded(body_of(proxied), proxied["headers"]) == rewritten else "signed_url rewrite differs"
    if direct["body"]["sha256"] != proxied["body"]["sha256"]:
        return f"body of {direct['body']['size']} bytes became {proxied['body']['size']} bytes"
    return None


def is_valid(frame: Frame) -> bool:
    """False for a text frame that is not UTF-8: the receiving side (and mitmproxy) fails the connection on it."""
    try:
        frame.data.decode("utf-8") if frame.opcode == "text" else None
    except UnicodeDecodeError:
        return False
    return True


def breaks(case: Case) -> bool:
    return isinstance(case, WsCase) and not all(map(is_valid, (*case.server, *case.client, *case.after)))


def audio(data: bytes) -> bool:
    """True for a frame the audio addon keeps out of the capture (it is counted instead)."""
    try:
        return is_audio_frame(parse_frame(data.decode("utf-8")))
    except UnicodeDecodeError:
        return False


def ws_difference(case: WsCase, direct: dict[str, Any], proxied: dict[str, Any]) -> str | None:
    """How the proxied socket differs from the direct one (None: it does not).

    A text frame that is not UTF-8 fails the connection with 1007 wherever it is read: directly
    the client or the upstream fails it, through the proxy mitmproxy does, closing both sides at
    once, so frames still in flight may be lost and the client may see a reset instead of the
    close. There the proxied frames must be the direct ones' start.
    """
    if not breaks(case):
        return None if direct == proxied else f"frames/close {direct['end']} became {proxied['end']}"
    direct_code, proxied_code = (r["end"][0] if r["end"][0] != "not received" else r["end"][1]
                                 for r in (direct, proxied))
    # mitmproxy closes both sides at once: the client may see the connection reset instead of the 1007.
    # The client may also close (1000) before the invalid frame reaches it, directly or through the proxy.
    failed = (1007, 1006, None, "error")
    if direct_code not in (1007, 1000) or proxied_code not in (*failed, 1000) \
            or proxied["frames"] != direct["frames"][:len(proxied["frames"])]:
        return f"an invalid frame ended {direct['end']} directly, {proxied['end']} through the proxy"
    return None


def test_the_corpus_has_over_a_hundred_cases_of_every_kind(live_started: Future[Live]):  # starts the live run
    kinds = Counter(c.kind for c in corpus())
    assert len(corpus()) >= 100
    assert set(kinds) == {"request", "response", "endpoint", "encoding", "status", "size", "wrong-types", "generated",
                          "websocket"}
    generated_ws = [c for c in corpus() if isinstance(c, WsCase) and c.kind == "generated"]
    assert kinds["generated"] >= 40 and len(generated_ws) >= 5
    assert generated() == [c for c in corpus() if c.kind == "generated"]  # derandomized: the same on every run


# -- offline: the corpus as a flow file, and hypothesis over the pure analysis ---------------------------------


def case_url(case: Case) -> str:
    path, query = (case.path, "") if isinstance(case, HttpCase) else (WS_PATH, case.query)
    if "?" in path:
        path, query = path.split("?", 1)
    return f"{path}?{query}{'&' if query else ''}case={case.name}"


def recorded(cases: tuple[Case, ...] | list[Case]) -> list[Any]:
    """The cases as mitmproxy records them: HTTP flows, and sockets with every frame it relays (echoes included)."""
    from mitmproxy import http
    from mitmproxy.test import tflow
    from mitmproxy.websocket import WebSocketMessage
    from wsproto.frame_protocol import Opcode

    flows = []
    for i, case in enumerate(cases):
        start = 1_700_000_000.0 + 10 * i
        if isinstance(case, HttpCase):
            flow = tflow.tflow(resp=True)
            flow.request.method = case.method
            flow.request.headers = http.Headers([(k.encode(), v) for k, v in case.headers] + [(b"xi-api-key",
                                                                                              KEY.encode())])
            flow.request.raw_content = case.body
            flow.response.status_code = case.status
            flow.response.headers = http.Headers([(k.encode(), v.encode()) for k, v in case.reply_headers])
            flow.response.raw_content = case.reply
        else:
            flow = tflow.twebsocketflow(close_code=case.close[0], close_reason=case.close[1])
            client = [f for f in case.client if is_valid(f)]
            order = [(False, f) for f in case.server] + [(side, f) for f in client for side in (True, False)]
            order += [(False, f) for f in case.after]
            assert flow.websocket is not None
            flow.websocket.messages = [
                WebSocketMessage(Opcode.TEXT if f.opcode == "text" else Opcode.BINARY, from_client, f.data,
                                 start + 0.01 * (n + 1))
                for n, (from_client, f) in enumerate(order) if f.opcode != "ping" and is_valid(f)]
            flow.websocket.timestamp_end = start + 5
        flow.request.path = case_url(case)
        flow.request.timestamp_start, flow.request.timestamp_end = start, start + 0.001
        if flow.response is not None:
            flow.response.timestamp_start, flow.response.timestamp_end = start + 0.5, start + 1
        flows.append(flow)
    return flows


def test_the_offline_commands_take_the_whole_corpus_as_a_flow_file(tmp_path: Path):
    from sessiontap.app.cli import main as cli

    cases = [c for c in corpus() if c.kind != "size"]  # the 20 MB body: the live capture goes through these too
    capture = write_capture(recorded(cases), tmp_path / "flows.mitm")
    runner = CliRunner()
    results = {"check": runner.invoke(cli, ["check", str(capture)]),
               "report": runner.invoke(cli, ["report", str(capture), "--out", str(tmp_path / "r")]),
               "export": runner.invoke(cli, ["export", str(capture), "--har", str(tmp_path / "out.har")])}
    assert results["check"].exit_code in (0, 1), results["check"].output
    assert results["report"].exit_code == results["export"].exit_code == 0, {k: r.output for k, r in results.items()}
    assert not [name for name, r in results.items() if "Traceback" in r.output or r.exception not in (None,)
                and not isinstance(r.exception, SystemExit)]
    assert_artifacts_parse(tmp_path / "r", sum(1 for c in cases if isinstance(c, HttpCase)
                                               and "simulate-conversation" in c.path))
    har = strict_json((tmp_path / "out.har").read_text(encoding="ascii"))
    assert len(har["log"]["entries"]) == len(cases)


report_environment = cache(report_html.environment)  # one Jinja2 environment for all the examples


@settings(GENERATE, max_examples=40)
@given(requests(), replies(), st.lists(server_frames(), max_size=5), st.lists(client_frames(), max_size=5))
def test_the_analysis_report_and_har_take_any_generated_payload(body: Any, reply: Any, server: list[Any],
                                                                client: list[Any]):
    from sessiontap.app.capture import analyse_flows, flow_records
    from sessiontap.app.har import make_har
    from sessiontap.reports.view import Meta

    flows = recorded([simulate("g", "generated", body, reply), simulate("s", "generated", body, reply, path=STREAM),
                      WsCase("w", "generated", (text(INIT_META), *map(text, server)), tuple(map(text, client)))])
    analysis = analyse_flows(flows)
    assert [c.endpoint for c in analysis.calls if c.protocol == "http"] == ["simulate", "simulate-stream"]
    strict_json(json.dumps(analysis.to_json("test"), ensure_ascii=False))
    with mock.patch("sessiontap.reports.html.environment", report_environment):  # templates compiled once
        page, _ = report_html.render(analysis, flow_records(flows), Meta("generated", "test"))
    page.encode("ascii", "xmlcharrefreplace")
    strict_json(json.dumps(make_har(flows)))



def test_ids_from_hostile_frames_and_headers_stay_writable_and_wrong_types_are_no_ids():
    from sessiontap.app.capture import analyse_flows

    by_name = {c.name: c for c in corpus()}
    flows = recorded([by_name[n] for n in ("ws-surrogates", "wrong-client_type", "wrong-user_id",
                                           "wrong-conversation_id", "request-session-header-bytes")])
    calls = {c.flow_id: c for c in analyse_flows(flows).calls}
    surrogates, client_type, user_id, conversation, header = (calls[f.id] for f in flows)
    assert surrogates.conversation_id == "\\ud800" and surrogates.user_text == "\ud83d"  # escaped id, text kept
    assert client_type.user_text == "and now?" and user_id.user_id is None and conversation.conversation_id is None
    assert header.declared_session == "\\udcff\\udcfe\\udc80 s\u00e9ss"
    for call in calls.values():
        for value in (call.session, call.conversation_id, call.user_id, call.declared_session):
            (value or "").encode("utf-8")  # flow metadata and file names must encode


def test_a_capture_with_a_text_frame_that_is_not_utf8_exports(tmp_path: Path):
    from sessiontap.app.cli import main as cli

    result = CliRunner().invoke(cli, ["export", str(invalid_text_capture(tmp_path)), "--har", str(tmp_path / "o.har")])
    assert result.exit_code == 0, result.output
    (entry,) = strict_json((tmp_path / "o.har").read_text(encoding="ascii"))["log"]["entries"]
    (message,) = entry["_webSocketMessages"]
    assert (message["opcode"], base64.b64decode(message["data"])) == (2, INVALID_TEXT)  # its exact bytes


# -- live: the tests of the recording -----------------------------------------------------------------------


def test_the_client_gets_through_the_proxy_exactly_what_it_gets_directly(live: Live):
    origin = live.proxied["base"]
    wrong = {}
    for case in corpus():
        direct, proxied = (r["http" if isinstance(case, HttpCase) else "ws"][case.name] for r in (live.direct,
                                                                                                  live.proxied))
        if isinstance(case, HttpCase):
            why = http_difference(case, direct, proxied, origin)
        else:
            why = ws_difference(case, direct, proxied)
        if why:
            wrong[case.name] = why
    assert not wrong, wrong


def test_every_case_is_one_flow_in_the_capture_with_every_frame_but_audio(live: Live):
    from sessiontap.app.capture import read_flows

    cap = read_flows(live.out)
    assert cap.warning is None
    flows = {f.request.query.get("case"): f for f in cap.flows}
    assert len(cap.flows) == len(flows) and set(flows) == {c.name for c in corpus()}
    for case in corpus():
        ws = flows[case.name].websocket
        if isinstance(case, HttpCase):
            assert ws is None and flows[case.name].response is not None, case.name
            continue
        assert ws is not None, case.name
        got = live.proxied["ws"][case.name]
        sent = case.client[:got["sent"]]
        sent = sent[:next((i for i, f in enumerate(sent) if not is_valid(f)), len(sent))]
        received = [base64.b64decode(d["b64"]) if "b64" in d else b"" for _, d in got["frames"]]
        expected = (sum(1 for f in sent if not audio(f.data)), sum(1 for data in received if not audio(data)))
        recorded = (sum(1 for m in ws.messages if m.from_client), sum(1 for m in ws.messages if not m.from_client))
        if breaks(case):  # mitmproxy failed the connection: frames in flight then may not reach the other side
            assert recorded[0] <= expected[0] and recorded[1] >= expected[1], (case.name, recorded, expected)
        else:
            assert recorded == expected, (case.name, recorded, expected)


def strict_json(text: str) -> Any:
    """json.loads that refuses NaN and Infinity (no JSON reader outside Python takes them)."""
    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags += 1


def assert_artifacts_parse(out: Path, calls: int | None = None) -> dict[str, Any]:
    """findings.json, report.html and (when present) journal.jsonl and code.jsonl all read; return the findings."""
    findings = strict_json((out / "findings.json").read_text(encoding="utf-8"))
    if calls is not None:
        assert findings["calls"] >= calls
    for name in ("journal.jsonl", "code.jsonl"):
        if (out / name).exists():
            for line in (out / name).read_text(encoding="utf-8").splitlines():
                strict_json(line)
    page = _Page()
    page.feed((out / "report.html").read_bytes().decode("ascii"))
    assert page.tags > 100
    return findings


def test_every_artifact_parses(live: Live):
    http_calls = sum(1 for c in corpus() if isinstance(c, HttpCase) and "simulate-conversation" in c.path)
    findings = assert_artifacts_parse(live.out, http_calls)
    again = assert_artifacts_parse(live.out.parent / "again", http_calls)
    assert (findings["calls"], len(findings["sessions"])) == (again["calls"], len(again["sessions"]))
    journal = [strict_json(line) for line in (live.out / "journal.jsonl").read_text(encoding="utf-8").splitlines()]
    assert not [e for e in journal if e.get("kind") == "analysis-error"]  # no hook failed on the way
    har = strict_json((live.out.parent / "out.har").read_text(encoding="ascii"))
    assert len(har["log"]["entries"]) == len(corpus())


def test_report_check_and_export_succeed_on_the_capture_with_no_traceback(live: Live):
    runs = live.runs
    assert runs["report"].returncode == 0, runs["report"].stderr
    assert runs["check"].returncode in (0, 1), runs["check"].stderr
    assert runs["export"].returncode == 0, runs["export"].stderr
    for name, run in runs.items():
        assert "Traceback" not in run.stdout + run.stderr, name


def test_no_addon_hook_fails_on_the_corpus(live: Live):
    failed = [line for line in live.runs["record"].stderr.splitlines() if line.endswith(" failed")]
    assert not [line for line in failed if "Router.response" not in line], failed  # Router: see the known defect


# -- known defects outside the files this corpus may fix: reported, each pinned here until it is fixed ----------

INVALID_TEXT = b'{"type": "agent_response", "text": "\xff"}'


def invalid_text_capture(tmp_path: Path) -> Path:
    """A capture holding a text frame that is not UTF-8 (mitmproxy refuses one on the wire; an injected one stays)."""
    flows = recorded([WsCase("invalid-text", "websocket", (Frame(b"{}"),))])
    flows[0].websocket.messages[0].content = INVALID_TEXT
    return write_capture(flows, tmp_path / "flows.mitm")


def test_check_and_report_read_a_text_frame_that_is_not_utf8(tmp_path: Path):
    from sessiontap.app.cli import main as cli

    capture = invalid_text_capture(tmp_path)
    assert CliRunner().invoke(cli, ["check", str(capture)]).exit_code in (0, 1)
    assert CliRunner().invoke(cli, ["report", str(capture), "--out", str(tmp_path / "r")]).exit_code == 0


def test_the_router_takes_a_signed_url_it_cannot_split(live: Live):
    assert "Router.response failed" not in live.runs["record"].stderr


def test_a_rewritten_signed_url_body_is_still_json(live: Live):
    for case in corpus():
        if not (isinstance(case, HttpCase) and case.path.startswith(SIGNED_URL)):
            continue
        proxied, direct = live.proxied["http"][case.name], live.direct["http"][case.name]
        if proxied["body"] != direct["body"]:  # rewritten
            strict_json(decoded(body_of(proxied), proxied["headers"]).decode("utf-8"))

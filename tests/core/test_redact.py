"""Tests for addons/core/redact.py: secrets removed by place and, once seen, by value."""

import json

from sessiontap.core.redact import MASK, Redactor

KEY = "sk_live_0123456789abcdefDISTINCT"
SIG = "sigDISTINCT987654321"


def test_headers_masked_and_remembered_in_text():
    r = Redactor()
    out = r.headers_({"xi-api-key": KEY, "Authorization": "Bearer tok_abcdefgh1234", "accept": "json"})
    assert out == {"xi-api-key": MASK, "Authorization": MASK, "accept": "json"}
    assert KEY not in r.text(f"echo: {KEY}!")
    assert "tok_abcdefgh1234" not in r.text("token tok_abcdefgh1234 here")


def test_query_signature_and_token_masked():
    r = Redactor()
    url = r.url(f"wss://api.elevenlabs.io/v1/convai/conversation?agent_id=a1&conversation_signature={SIG}&token=t0k3n123")
    assert SIG not in url and "t0k3n123" not in url and "agent_id=a1" in url
    assert SIG not in r.text(f"later {SIG}")


def test_json_secret_keys_secret_vars_and_signed_url():
    r = Redactor()
    body = {
        "signed_url": f"wss://h/v1/convai/conversation?agent_id=a&conversation_signature={SIG}",
        "dynamic_variables": {"secret__pin": "4242-SECRET", "name": "Bob"},
        "platform_settings": {"auth": {"shareable_token": "shr_123456789"}},
        "token": "livekit.jwt.value",
    }
    out = r.body(json.dumps(body).encode())
    assert out is not None
    text = out.decode()
    for secret in (SIG, "4242-SECRET", "shr_123456789", "livekit.jwt.value"):
        assert secret not in text
    assert "Bob" in text and "agent_id=a" in text


def test_patterns_catch_unnamed_keys_and_non_json_bodies_unchanged_otherwise():
    r = Redactor()
    assert r.body(f"key={KEY}".encode()) != f"key={KEY}".encode()
    plain = b"nothing secret here"
    assert r.body(plain) is plain
    binary = b"\xff\xfe\x00"
    assert r.body(binary) is binary


def test_websocket_bearer_subprotocol_masked():
    r = Redactor()
    out = r.headers_({"sec-websocket-protocol": "convai, bearer.abcdefghijkl"})
    assert out["sec-websocket-protocol"] == f"convai, bearer.{MASK}"
    assert "abcdefghijkl" not in r.text("abcdefghijkl")

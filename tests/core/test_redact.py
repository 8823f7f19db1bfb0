"""Tests for addons/core/redact.py: secrets removed by place and, once seen, by value."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from sessiontap.core.redact import MASK, PATTERNS, Redactor

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


WORDS = ["token", "Token", "secret__pin", "sk_live_abcdefgh12", "Bearer abcdefgh12", "conversation_signature=x1",
         "api_key", "hello", "user_message", "https://h/p?token=zz9&a=1", "remembered-value-1", "é", "AAAA=="]


@given(st.recursive(st.one_of(st.sampled_from(WORDS), st.integers(), st.none()),
                    lambda inner: st.one_of(st.lists(inner, max_size=4),
                                            st.dictionaries(st.sampled_from(WORDS), inner, max_size=4)),
                    max_leaves=12), st.booleans())
@settings(max_examples=300, derandomize=True, deadline=None)
def test_the_quick_check_never_changes_what_a_body_becomes(value, as_text):
    raw = (str(value) if as_text else json.dumps(value, ensure_ascii=False)).encode()
    quick, full = Redactor(), Redactor()
    for r in (quick, full):
        r.body(b'{"token": "remembered-value-1"}')  # a value learned earlier, to be found by value
    full.may_hold_secret = lambda raw: True  # type: ignore[method-assign]
    assert quick.body(raw) == full.body(raw)
    assert quick.seen == full.seen


def test_a_body_with_nothing_to_mask_is_returned_as_it_came():
    audio = json.dumps({"user_audio_chunk": "QUJD" * 250_000 + "=="}).encode()
    assert Redactor().body(audio) is audio


@given(st.recursive(st.one_of(st.sampled_from(WORDS + ['say "pïn-42 ok"']), st.integers(), st.none()),
                    lambda inner: st.one_of(st.lists(inner, max_size=4),
                                            st.dictionaries(st.sampled_from(WORDS), inner, max_size=4)),
                    max_leaves=12))
@settings(max_examples=300, derandomize=True, deadline=None)
def test_dumps_skips_the_walk_only_when_the_walk_would_change_nothing(value):
    def clip(v):
        return v[:12] if isinstance(v, str) else [clip(x) for x in v] if isinstance(v, list) else \
            {k: clip(x) for k, x in v.items()} if isinstance(v, dict) else v

    quick, full = Redactor(), Redactor()
    for r in (quick, full):
        r.body(b'{"token": "remembered-value-1", "secret__pin": "say \\"p\\u00efn-42 ok\\""}')
    full.may_hold_secret = lambda raw: True  # type: ignore[method-assign]
    assert quick.dumps({"v": value}, clip) == full.dumps({"v": value}, clip)
    assert full.dumps({"v": value}, clip) == full.text(json.dumps(clip(full.json({"v": value})),
                                                                   ensure_ascii=False))


def test_a_known_value_is_found_however_a_json_body_escapes_it():
    r = Redactor()
    r.body('{"secret__pin": "say \\"pïn-42\\" ok"}'.encode())
    for body in (json.dumps({"text": 'he said: say "pïn-42" ok'}), json.dumps({"text": 'say "pïn-42" ok'},
                                                                               ensure_ascii=False)):
        assert r.may_hold_secret(body.encode())
        assert b"42" not in r.body(body.encode()), body


def test_a_big_bodys_answer_is_kept_until_a_new_secret_is_learned_and_small_bodies_never_push_it_out():
    r = Redactor()
    big = json.dumps({"text": "hello " * 20_000 + "pin-4242-77"}).encode()
    assert r.may_hold_secret(big) is False  # checked once (in the tagger's worker, live)
    for i in range(20):  # a flood of small calls meanwhile
        r.may_hold_secret(f'{{"user_message": "hi {i}"}}'.encode())
    r.body(b'{"secret__pin": "pin-4242-77"}')  # a value learned after the big body was checked
    assert r.may_hold_secret(big) is True  # not the stale answer: the known value is in it
    assert b"pin-4242-77" not in r.body(big)


def test_a_big_body_checked_again_after_new_secrets_is_searched_only_for_them():
    class Needles(tuple):
        walked = 0

        def __iter__(self):
            Needles.walked += 1
            return super().__iter__()

    r = Redactor()
    r.needles = Needles(r.needles)
    big = json.dumps({"text": "hello " * 20_000 + "pin-4242-77"}).encode()
    assert r.may_hold_secret(big) is False and Needles.walked == 1
    r.headers_({"xi-api-key": "sk_unrelated_0000"})  # learnt meanwhile (another call), not in the body
    assert r.may_hold_secret(big) is False and Needles.walked == 1  # the new secret alone was looked for
    r.body(b'{"secret__pin": "pin-4242-77"}')  # learnt from a small body (itself checked: one walk)
    walked = Needles.walked
    assert r.may_hold_secret(big) is True and Needles.walked == walked
    assert r.may_hold_secret(big) is True and Needles.walked == walked  # a yes stays a yes


def test_a_kept_answer_is_given_only_while_no_secret_has_been_learnt_since():
    r = Redactor()
    big = json.dumps({"text": "hello " * 20_000}).encode()
    assert r.kept_answer(big) is None  # never checked
    assert r.may_hold_secret(big) is False and r.kept_answer(big) is False
    assert r.kept_answer(b"small") is None  # small bodies' answers are not kept
    r.headers_({"xi-api-key": "sk_unrelated_0000"})
    assert r.kept_answer(big) is None


def test_the_kept_answers_take_checks_from_two_threads_at_once():
    """The tagger's worker checks big bodies while the loop checks others: no 'changed size during iteration'."""
    from concurrent.futures import ThreadPoolExecutor

    r = Redactor()
    bodies = [json.dumps({"text": f"{i} " + "x" * 70_000}).encode() for i in range(24)]

    def check(offset: int) -> int:
        return sum(r.may_hold_secret(bodies[(n + offset) % len(bodies)]) for n in range(3000))

    with ThreadPoolExecutor(3) as pool:
        found = [f.result(timeout=60) for f in [pool.submit(check, k * 7) for k in range(3)]]  # re-raises
    assert found == [0, 0, 0]  # and every answer right: nothing to mask in these bodies


def _each_value(r: Redactor, headers: dict[str, str]) -> dict[str, str]:
    """headers_ as it was: every value through text(), one by one, the secret headers first."""
    masked = r.headers_({k: v for k, v in headers.items() if k.lower() in r.headers})
    return {k: masked[k] if k in masked else r.text(v) for k, v in headers.items()}


@given(st.dictionaries(st.sampled_from(["Accept", "Content-Type", "X-Echo", "Referer", "xi-api-key", "Cookie"]),
                       st.lists(st.sampled_from([*WORDS, "SEEN-secret-42", "charset=utf-8", ", ", "BEARER"]),
                                max_size=4).map("".join), max_size=6))
@settings(max_examples=300, derandomize=True, deadline=None)
def test_headers_checked_joined_are_masked_as_value_by_value(headers):
    joined, each = Redactor(), Redactor()
    for r in (joined, each):
        r.headers_({"authorization": "SEEN-secret-42"})  # a secret learned before
    assert joined.headers_(headers) == _each_value(each, headers)
    assert joined.seen == each.seen


@given(st.lists(st.sampled_from([*WORDS, "SEEN-secret-42", " ", "\n", "TOKEN=", "sK_abcdefgh1"]),
                max_size=6).map("".join))
@settings(max_examples=300, derandomize=True, deadline=None)
def test_may_hold_text_is_false_only_where_no_pattern_or_known_value_is(text):
    r = Redactor()
    r.headers_({"authorization": "SEEN-secret-42"})
    assert r.may_hold_text(text) or not ("SEEN-secret-42" in text or any(p.search(text) for p, _ in PATTERNS))

"""Redaction: API keys, signatures, tokens and secret__ variables removed from copies before any write.

A ``Redactor`` works in two passes on everything it is given: it removes secrets by where
they stand (header names, query parameter names, JSON keys, ``secret__`` dynamic variables),
and it remembers each secret value it removed so that the same value is scrubbed wherever
else it shows up (echoed in a body, pasted in a log line). Live traffic is never touched:
callers redact copies.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "[REDACTED]"

SECRET_HEADERS = frozenset({"xi-api-key", "x-api-key", "api-key", "authorization", "proxy-authorization",
                            "cookie", "set-cookie"})
SECRET_PARAMS = frozenset({"conversation_signature", "token", "conversation_token", "xi-api-key", "api_key",
                           "signature"})
SECRET_KEYS = frozenset({
    "xi_api_key",
    "api_key",
    "token",
    "conversation_token",
    "conversation_signature",
    "shareable_token",
    "hmac_secret",
    "secret",
    "password",
    "authorization",
})
URL_KEYS = frozenset({"signed_url", "url", "conversation_url"})
SECRET_PREFIX = "secret__"
# Secret-looking values caught even when nobody named them: ElevenLabs keys and bearer tokens. Each
# with the substrings one of its matches must hold, lower-cased: a pattern runs only where one is
# found in the lower-cased text (a substring search is many times faster than a regex over a large body).
PATTERNS = (
    (re.compile(r"\bsk_[A-Za-z0-9_]{8,}"), ("sk_",)),
    (re.compile(r"(?i)(conversation_signature|[?&]token)=[^&\s\"'<>]+"), ("conversation_signature=", "token=")),
    (re.compile(r"(?i)\bbearer[ .][A-Za-z0-9._~+/=-]{8,}"), ("bearer",)),
)
ANSWERS_KEPT = 8  # bodies whose secret check is remembered (a flow's request and response, a few flows)
ANSWER_KEPT_FROM = 64 * 1024  # bytes: smaller bodies are checked again (cheap), and never push a big one out
MIN_SECRET_LEN = 6  # shorter values are not scrubbed globally (too many false hits)


class Redactor:
    """Removes secrets from headers, URLs, JSON and text, remembering each value it removed."""

    def __init__(self, extra_headers: frozenset[str] = frozenset(), extra_keys: frozenset[str] = frozenset()) -> None:
        self.headers = SECRET_HEADERS | {h.lower() for h in extra_headers}
        self.keys = SECRET_KEYS | {k.lower() for k in extra_keys}
        self.seen: set[str] = set()
        # What a body must hold (lower-cased) for anything in it to be masked: a secret key or query
        # parameter name (a secret__ variable's name holds "secret"), or a pattern's fixed part.
        names = {n.encode() for n in self.keys | SECRET_PARAMS} | {b"sk_", b"bearer"}
        # one search for each name that holds no other (``token`` finds ``conversation_token`` too)
        self.needles = tuple(sorted(n for n in names if not any(m != n and m in n for m in names)))
        # The seen values as they may stand in raw bytes; replaced whole when one is learnt, never changed in
        # place, so that a worker thread reads a consistent set without a lock or a copy.
        self.seen_bytes: tuple[bytes, ...] = ()
        # The last bodies checked, by identity: the body (held, so that its id stays its own), as many
        # secrets known then, the answer. A big body is checked once, maybe in a worker thread ahead of
        # the hooks (the tagger's), then found here by the scrubber and the journal.
        self._answers: dict[int, tuple[bytes, int, bool]] = {}
        self._answers_lock = threading.Lock()  # the tagger's worker thread checks bodies too
        self.by_length: list[str] = []  # the seen values, longest first (a value inside another is masked after it)

    def _remember(self, value: str) -> None:
        value = value.strip()
        if len(value) >= MIN_SECRET_LEN and value != MASK:
            self._known(value)
            if value.lower().startswith("bearer "):
                self._known(value[7:].strip())

    def _known(self, value: str) -> None:
        if value in self.seen:
            return
        self.seen.add(value)
        self.by_length = sorted(self.seen, key=len, reverse=True)
        # As it may stand in raw bytes: plain, and escaped inside a JSON string (with and without
        # ensure_ascii), so that the prefilter of may_hold_secret never misses it.
        forms = (value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1])
        self.seen_bytes = tuple(dict.fromkeys((*self.seen_bytes, *(f.encode("utf-8", "surrogatepass") for f in forms))))

    def may_hold_secret(self, raw: bytes, keep: bool = True) -> bool:
        """False only when ``body`` would return ``raw`` unchanged: no secret name, pattern or known value in it.

        Substring searches in C, so that the bodies and frames with nothing to mask (nearly all)
        are not parsed and walked on the proxy's hot path. A big body's answer is kept unless not
        ``keep`` (a body made only to be checked, never passed on).
        """
        known = self.seen_bytes  # a snapshot: a worker thread may check while the loop learns a secret
        big = len(raw) >= ANSWER_KEPT_FROM
        if big and (last := self._kept(raw)) is not None:  # the same body again (the scrubber, then the journal)
            if last[1] == len(known) or last[2]:
                return last[2]
            # Secrets learnt since (they are only ever added at the end): only they can change the answer.
            found = any(v in raw for v in known[last[1]:])
            self._keep(raw, len(known), found)
            return found
        low = raw.lower()
        found = any(n in low for n in self.needles) or any(v in raw for v in known)
        if keep and big:
            self._keep(raw, len(known), found)
        return found

    def kept_answer(self, raw: bytes) -> bool | None:
        """``may_hold_secret(raw)`` if its answer is kept and still holds (no secret learnt since), else None."""
        last = self._kept(raw) if len(raw) >= ANSWER_KEPT_FROM else None
        return last[2] if last is not None and last[1] == len(self.seen_bytes) else None

    def _kept(self, raw: bytes) -> tuple[bytes, int, bool] | None:
        """The answer kept for this very body: (it, how many secrets were known then, the answer)."""
        with self._answers_lock:
            last = self._answers.get(id(raw))
        return last if last is not None and last[0] is raw else None

    def _keep(self, raw: bytes, known: int, found: bool) -> None:
        """Keep a big body's answer, by its identity (the oldest one goes when there are too many)."""
        with self._answers_lock:
            if len(self._answers) >= ANSWERS_KEPT and id(raw) not in self._answers:
                self._answers.pop(next(iter(self._answers)), None)
            self._answers[id(raw)] = (raw, known, found)

    def headers_(self, headers: dict[str, str]) -> dict[str, str]:
        """A copy of the headers with secret ones masked (and the WebSocket bearer subprotocol).

        The other values are checked joined, in one pass: nearly always nothing in them is masked.
        """
        out = {}
        plain = []
        for name, value in headers.items():
            low = name.lower()
            if low in self.headers:
                self._remember(value)
                out[name] = MASK
            elif low == "sec-websocket-protocol" and "bearer." in value:
                parts = [p.strip() for p in value.split(",")]
                for p in parts:
                    if p.startswith("bearer."):
                        self._remember(p[7:])
                out[name] = ", ".join(f"bearer.{MASK}" if p.startswith("bearer.") else p for p in parts)
            else:
                out[name] = value
                plain.append(name)
        if plain and self.may_hold_text("\n".join(out[name] for name in plain)):
            for name in plain:
                out[name] = self.text(out[name])
        return out

    def url(self, url: str) -> str:
        """The URL with secret query values masked."""
        try:
            parts = urlsplit(url)
        except ValueError:
            return self.text(url)
        if not parts.query:
            return url
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        changed = False
        clean = []
        for k, v in pairs:
            if k.lower() in SECRET_PARAMS and v:
                self._remember(v)
                clean.append((k, MASK))
                changed = True
            else:
                clean.append((k, v))
        if not changed:
            return self.text(url)
        return urlunsplit(parts._replace(query=urlencode(clean, safe="[]")))

    def json(self, obj: Any) -> Any:
        """A copy of a JSON value with secret keys, secret__ variables and secret URL params masked."""
        if isinstance(obj, dict):
            out: dict[str, Any] = {}
            for k, v in obj.items():
                low = str(k).lower()
                if (low in self.keys or low.startswith(SECRET_PREFIX)) and v not in (None, "", {}, []):
                    if isinstance(v, str):
                        self._remember(v)
                    out[k] = MASK
                elif low in URL_KEYS and isinstance(v, str):
                    out[k] = self.url(v)
                else:
                    out[k] = self.json(v)
            return out
        if isinstance(obj, list):
            return [self.json(v) for v in obj]
        return obj

    def _strings(self, obj: Any) -> Any:
        """A copy of a JSON value with ``text`` applied to every string in it."""
        if isinstance(obj, str):
            return self.text(obj)
        if isinstance(obj, dict):
            return {k: self._strings(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self._strings(v) for v in obj]
        return obj

    def text(self, text: str) -> str:
        """Free text with every remembered secret value and secret-looking pattern masked."""
        for value in self.by_length:
            if value in text:
                text = text.replace(value, MASK)
        low = text.lower()
        for pattern, needles in PATTERNS:
            if any(n in low for n in needles):
                text = pattern.sub(_mask_match, text)
                low = text.lower()
        return text

    def may_hold_text(self, text: str) -> bool:
        """False only when ``text`` would return ``text`` unchanged (one pass over several values joined)."""
        if any(value in text for value in self.by_length):
            return True
        low = text.lower()
        return any(n in low for _, needles in PATTERNS for n in needles)

    def dumps(self, obj: Any, clip: Callable[[Any], Any] = lambda value: value) -> str:
        """JSON text of ``obj`` (its texts passed through ``clip``) with every secret masked.

        The same as ``text(json.dumps(clip(json(obj))))``, but when the plain text holds nothing
        ``may_hold_secret`` looks for (nearly always), it is returned without walking ``obj``.
        """
        text = json.dumps(clip(obj), ensure_ascii=False, default=str)
        if not self.may_hold_secret(text.encode("utf-8", "surrogatepass")):
            return text
        return self.text(json.dumps(clip(self.json(obj)), ensure_ascii=False, default=str))

    def body(self, raw: bytes | None) -> bytes | None:
        """A body with secrets masked: JSON is rewritten structurally, other text by value."""
        if not raw or not self.may_hold_secret(raw):
            return raw
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw
        try:
            obj = json.loads(text)
            clean = self.json(obj)
            rewritten = None if clean == obj else json.dumps(clean, ensure_ascii=False)
        except (ValueError, RecursionError):  # not JSON, or nested too deeply to walk: masked as text
            obj, rewritten = None, None
        if rewritten is None:
            red = self.text(text)
            if red != text:
                return red.encode("utf-8", "backslashreplace")
            if obj is None:
                return raw
            # A known value may stand escaped in the raw JSON ("\u00ef", "\""): look in the decoded strings.
            strings = self._strings(obj)
            if strings == obj:
                return raw
            return json.dumps(strings, ensure_ascii=False).encode("utf-8", "backslashreplace")
        return self.text(rewritten).encode("utf-8", "backslashreplace")


def _mask_match(m: re.Match[str]) -> str:
    text = m.group(0)
    if "=" in text and not text.lower().startswith("bearer"):
        return text.split("=", 1)[0] + "=" + MASK
    if text.lower().startswith("bearer"):
        return text[:7] + MASK
    return MASK

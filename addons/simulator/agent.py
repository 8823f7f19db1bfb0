"""The simulated agent's deterministic brain: facts from the turns it is given, and its replies.

The agent remembers only what the protocol carries. On the WebSocket that is the
socket's own history (user messages, its replies, contextual updates); on
simulate-conversation it is `partial_conversation_history`. Every function here is
pure: same turns in, same text out (no randomness, no clock, no I/O).

Turns are `(role, text)` pairs with role `"user"`, `"agent"` or `"context"` (a
WebSocket `contextual_update`). Facts come from user and context turns only; the
agent's own turns add nothing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation

DEFAULT_AGENT_ID = "agent_customs_demo"
AGENT_NAME = "Durin customs classification assistant"
FIRST_MESSAGE = (
    "Hello! I'm Durin, your customs classification assistant. "
    "Which product would you like to classify today?"
)
AGENT_PROMPT = (
    "You are Durin, a customs classification assistant. Collect the product, its country "
    "of origin, its material and its customs value, then propose an HS code."
)
LANGUAGE = "en"

USER = "user"
AGENT = "agent"
CONTEXT = "context"

SIMULATED_USER_SCRIPT: tuple[str, ...] = (
    "I need to classify cotton t-shirts.",
    "They are made in Vietnam.",
    "The material is 100% cotton.",
    "The shipment is worth $12,000.",
    "The customs officer says the printed logo changes the classification. "
    "Please double-check the HS code.",
    "Thanks, that's all for now.",
)
"""What the simulated user says on simulate-conversation, one line per user turn."""

_SNIPPET = 60
_FACT_CHARS = 60
_NOTE_CHARS = 120
_SPAN = r"[^.,;:!?\n]{1,80}"

_PRODUCT_RES = (
    re.compile(r"\bclassify\s+(?P<x>" + _SPAN + ")", re.IGNORECASE),
    re.compile(r"\bproduct(?:\s+is|\s*:)\s*(?P<x>" + _SPAN + ")", re.IGNORECASE),
    re.compile(r"\b(?:importing|exporting)\s+(?P<x>" + _SPAN + ")", re.IGNORECASE),
    re.compile(r"\bshipment\s+of\s+(?P<x>" + _SPAN + ")", re.IGNORECASE),
)
_PRODUCT_STOP = re.compile(
    r"\s(?:made|from|manufactured|produced|with|worth|valued|for|that|which|please|"
    r"origin|in|to|because|but|so)\b",
    re.IGNORECASE,
)
_LEADING_WORDS = frozenset(
    {"a", "an", "the", "some", "my", "our", "these", "this", "those", "new", "of"}
)
_NOT_A_PRODUCT = frozenset(
    {"it", "them", "this", "that", "something", "stuff", "product", "products", "goods",
     "item", "items", "things", "thing", "me", "you"}
)

_ORIGIN_RES = (
    re.compile(
        r"\b(?:made|manufactured|produced|assembled|grown|sewn)\s+in\s+(?P<x>" + _SPAN + ")",
        re.IGNORECASE,
    ),
    re.compile(
        r"\b(?:country\s+of\s+)?origin(?:\s+country)?(?:\s+is|\s*:)\s*(?P<x>" + _SPAN + ")",
        re.IGNORECASE,
    ),
    re.compile(
        r"\b(?:shipped|imported|coming|comes|come|sourced)\s+from\s+(?P<x>" + _SPAN + ")",
        re.IGNORECASE,
    ),
    re.compile(r"(?<![Mm]ade )\bfrom\s+(?P<x>[A-Z][^.,;:!?\n]{0,79})"),
)
_ORIGIN_STOP = re.compile(
    r"\s(?:and|with|for|at|worth|valued|by|but|which|so|of|made|to|in|via)\b", re.IGNORECASE
)

_PERCENT_RE = re.compile(r"(?P<pct>\d{1,3}(?:\.\d{1,2})?)\s?%\s*(?P<name>[^\W\d_][\w-]{0,30})")
_MATERIAL_RES = (
    re.compile(
        r"\b(?:made|composed|consisting)\s+(?:of|from)\s+(?P<x>" + _SPAN + ")", re.IGNORECASE
    ),
    re.compile(r"\b(?:material|fabric)(?:\s+is|\s*:)\s*(?P<x>" + _SPAN + ")", re.IGNORECASE),
)
_MATERIAL_STOP = re.compile(
    r"\s(?:in|from|worth|valued|with|for|and\s+(?:it|they|is|are|the))\b", re.IGNORECASE
)

_AMOUNT = r"(?P<amt>\d[\d,]{0,15}(?:\.\d{1,2})?)"
_MULT = r"(?P<mult>\s?(?:k|m|thousand|million)\b)?"
_VALUE_RES = (
    re.compile(r"(?P<cur>[$€£])\s?" + _AMOUNT + _MULT, re.IGNORECASE),
    re.compile(r"\b(?P<cur>US\$|USD|EUR|GBP)\s?" + _AMOUNT + _MULT, re.IGNORECASE),
    re.compile(_AMOUNT + _MULT + r"\s?(?P<cur>USD|EUR|GBP|dollars?|euros?)\b", re.IGNORECASE),
)
_CURRENCIES = {
    "$": "USD", "us$": "USD", "usd": "USD", "dollar": "USD", "dollars": "USD",
    "€": "EUR", "eur": "EUR", "euro": "EUR", "euros": "EUR",
    "£": "GBP", "gbp": "GBP",
}
_MULTIPLIERS = {"k": 1000, "thousand": 1000, "m": 1_000_000, "million": 1_000_000}

_OFFICER_RE = re.compile(r"\bofficer\b", re.IGNORECASE)
_HS_CODE_RE = re.compile(r"(?<![\d.])(?P<code>\d{4}\.\d{2}(?:\.\d{2})?)(?!\d)")

# keywords → (code when the goods are cotton, code otherwise)
_HS_TABLE: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("t-shirt", "tshirt", "t shirt", "tee"), "6109.10", "6109.90"),
    (("hoodie", "sweater", "jumper", "pullover"), "6110.20", "6110.30"),
    (("shirt", "blouse"), "6205.20", "6205.30"),
    (("jeans", "trousers", "pants"), "6203.42", "6203.43"),
    (("sneaker", "shoe", "footwear", "boot"), "6404.19", "6404.11"),
    (("laptop", "notebook computer", "computer"), "8471.30", "8471.30"),
    (("smartphone", "phone"), "8517.13", "8517.13"),
    (("coffee",), "0901.21", "0901.21"),
    (("bicycle", "bike"), "8712.00", "8712.00"),
    (("toy",), "9503.00", "9503.00"),
)
_HS_ALTERNATE = {
    "6109.10": "6109.90", "6109.90": "6109.10", "6110.20": "6110.30", "6110.30": "6110.20",
    "6205.20": "6205.30", "6205.30": "6205.20", "6203.42": "6203.43", "6203.43": "6203.42",
    "6404.19": "6404.11", "6404.11": "6404.19", "8471.30": "8471.41", "8517.13": "8517.14",
    "0901.21": "0901.22", "8712.00": "8711.60", "9503.00": "9504.90",
}

_QUESTIONS = (
    ("product", "Which product would you like to classify?"),
    ("origin", "Which country is the product made in?"),
    ("material", "What material is it made of?"),
    ("value", "What is the customs value of the shipment?"),
)


@dataclass(frozen=True)
class Facts:
    """What the agent knows about the goods; later turns override earlier ones."""

    product: str | None = None
    origin: str | None = None
    material: str | None = None
    value: str | None = None
    officer_feedback: str | None = None
    officer_code: str | None = None
    context_note: str | None = None

    def known(self) -> list[tuple[str, str]]:
        """Return the (label, value) pairs of the known goods facts, in a fixed order."""
        pairs = [
            ("product", self.product),
            ("origin", self.origin),
            ("material", self.material),
            ("value", self.value),
        ]
        return [(label, value) for label, value in pairs if value]


def _clean(text: str, limit: int) -> str:
    """Return `text` on one line, whitespace collapsed, cut at a word boundary to `limit`."""
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    cut = flat[:limit].rsplit(" ", 1)[0] or flat[:limit]
    return cut + "…"


def _strip_leading(words: list[str]) -> list[str]:
    """Return `words` without leading articles and determiners."""
    start = 0
    while start < len(words) and words[start].lower() in _LEADING_WORDS:
        start += 1
    return words[start:]


def _cut(span: str, stop: re.Pattern[str]) -> str:
    """Return `span` up to the first stop word."""
    found = stop.search(" " + span)
    return span[: max(found.start() - 1, 0)] if found else span


def _product(text: str) -> str | None:
    for pattern in _PRODUCT_RES:
        found = pattern.search(text)
        if not found:
            continue
        words = _strip_leading(_cut(found.group("x"), _PRODUCT_STOP).split())
        candidate = _clean(" ".join(words), _FACT_CHARS)
        if candidate and candidate.lower() not in _NOT_A_PRODUCT:
            return candidate
    return None


def _origin(text: str) -> str | None:
    for pattern in _ORIGIN_RES:
        found = pattern.search(text)
        if not found:
            continue
        words = _strip_leading(_cut(found.group("x"), _ORIGIN_STOP).split())[:3]
        if not words or not all(word.replace("-", "").replace("'", "").isalpha()
                                for word in words):
            continue
        name = " ".join(words)
        if name.islower():
            name = name.title()
        return _clean(name, _FACT_CHARS)
    return None


def _material(text: str) -> str | None:
    percents = [
        f"{found.group('pct')}% {found.group('name').lower()}"
        for found in _PERCENT_RE.finditer(text)
    ][:4]
    if percents:
        return _clean(" / ".join(percents), _FACT_CHARS)
    for pattern in _MATERIAL_RES:
        found = pattern.search(text)
        if not found:
            continue
        words = _strip_leading(_cut(found.group("x"), _MATERIAL_STOP).split())[:4]
        candidate = _clean(" ".join(words), _FACT_CHARS)
        if candidate:
            return candidate
    return None


def _value(text: str) -> str | None:
    matches = [found for pattern in _VALUE_RES if (found := pattern.search(text))]
    if not matches:
        return None
    found = min(matches, key=lambda match: match.start())
    currency = _CURRENCIES.get(found.group("cur").lower(), found.group("cur").upper())
    try:
        amount = Decimal(found.group("amt").replace(",", ""))
    except InvalidOperation:
        return None
    multiplier = (found.group("mult") or "").strip().lower()
    amount *= _MULTIPLIERS.get(multiplier, 1)
    shown = f"{int(amount):,}" if amount == amount.to_integral_value() else f"{amount:,.2f}"
    return f"{currency} {shown}"


def facts_in(text: str) -> Facts:
    """Return the facts one message states on its own (officer feedback included)."""
    officer = _clean(text, _NOTE_CHARS) if _OFFICER_RE.search(text) else None
    code = None
    if officer:
        found = _HS_CODE_RE.search(text)
        code = found.group("code") if found else None
    return Facts(
        product=_product(text),
        origin=_origin(text),
        material=_material(text),
        value=_value(text),
        officer_feedback=officer,
        officer_code=code,
    )


def _merge(old: Facts, new: Facts) -> Facts:
    return Facts(
        product=new.product or old.product,
        origin=new.origin or old.origin,
        material=new.material or old.material,
        value=new.value or old.value,
        officer_feedback=new.officer_feedback or old.officer_feedback,
        officer_code=new.officer_code if new.officer_feedback else old.officer_code,
        context_note=new.context_note or old.context_note,
    )


def gather_facts(history: Sequence[tuple[str, str]]) -> Facts:
    """Return the facts stated across all user turns and contextual updates of `history`."""
    facts = Facts()
    for role, text in history:
        if role == USER:
            facts = _merge(facts, facts_in(text))
        elif role == CONTEXT:
            learned = replace(facts_in(text), officer_feedback=None, officer_code=None)
            note = _clean(text, _NOTE_CHARS) or None
            facts = _merge(facts, replace(learned, context_note=note))
    return facts


def hs_code(facts: Facts) -> str | None:
    """Return the tentative HS code for the product, before any officer feedback."""
    if not facts.product:
        return None
    goods = f"{facts.product} {facts.material or ''}".lower()
    for keywords, cotton_code, other_code in _HS_TABLE:
        if any(keyword in goods for keyword in keywords):
            return cotton_code if "cotton" in goods else other_code
    return None


def adjusted_hs_code(facts: Facts) -> str | None:
    """Return the HS code after the officer's feedback (the tentative one without feedback)."""
    base = hs_code(facts)
    if not facts.officer_feedback:
        return base
    return facts.officer_code or (_HS_ALTERNATE.get(base) if base else None)


def _classification(facts: Facts) -> str | None:
    base = hs_code(facts)
    if facts.officer_feedback:
        adjusted = adjusted_hs_code(facts)
        if adjusted and base and adjusted != base:
            return (
                f"After the officer's feedback I have adjusted the HS code from {base} "
                f"to {adjusted}."
            )
        if adjusted:
            return f"After the officer's feedback the HS code is {adjusted}."
        return "I need the product details before I can revise the code for the officer."
    if base:
        return f"Tentative HS code: {base}."
    if facts.product:
        return "The HS code for this product needs a specialist review."
    return None


def _last_user_text(history: Sequence[tuple[str, str]]) -> str | None:
    for role, text in reversed(history):
        if role == USER:
            return text
    return None


def reply(history: Sequence[tuple[str, str]]) -> str:
    """Return the agent's reply to the newest user turn, knowing only `history`."""
    newest = _last_user_text(history)
    facts = gather_facts(history)
    parts: list[str] = []
    if newest is None:
        parts.append("I haven't heard from you yet.")
    elif not newest.strip():
        parts.append("I didn't catch that: your message was empty.")
    else:
        parts.append(f'You said: "{_clean(newest, _SNIPPET).rstrip(".")}".')
        own = facts_in(newest)
        learned = [f"{label} {value}" for label, value in own.known()]
        if learned:
            parts.append("Noted: " + "; ".join(learned) + ".")
        if own.officer_feedback:
            parts.append("Thank you for passing on the customs officer's feedback.")
    known = facts.known()
    if known:
        recap = "; ".join(f"{label}: {value}" for label, value in known)
        parts.append(f"So far I have: {recap}.")
    if facts.context_note:
        parts.append(f"Context noted: {facts.context_note}.")
    classification = _classification(facts)
    if classification:
        parts.append(classification)
    missing = [question for field, question in _QUESTIONS if not getattr(facts, field)]
    if missing:
        parts.append(missing[0])
    else:
        parts.append("That completes the details I need. Is there anything else to check?")
    return " ".join(parts)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def summarize(history: Sequence[tuple[str, str]]) -> str:
    """Return a one-sentence transcript summary of `history`."""
    facts = gather_facts(history)
    user_turns = sum(1 for role, _ in history if role == USER)
    if not facts.product:
        return f"The user has not named a product yet ({_plural(user_turns, 'user turn')})."
    details = "; ".join(f"{label}: {value}" for label, value in facts.known()[1:])
    code = adjusted_hs_code(facts)
    summary = f"The user asked to classify {facts.product}"
    if details:
        summary += f" ({details})"
    if facts.officer_feedback:
        summary += "; a customs officer gave feedback"
    if code:
        summary += f"; HS code {code}"
    return summary + f" ({_plural(user_turns, 'user turn')})."


def simulated_user_message(
    history: Sequence[tuple[str, str]], first_message: str | None = None
) -> str:
    """Return the simulated user's next line: `first_message` if given, else the script's."""
    if first_message:
        return first_message
    spoken = sum(1 for role, _ in history if role == USER)
    return SIMULATED_USER_SCRIPT[min(spoken, len(SIMULATED_USER_SCRIPT) - 1)]


def simulate_turns(
    history: Sequence[tuple[str, str]],
    *,
    new_turns_limit: int,
    user_first_message: str | None = None,
    agent_first_message: str = FIRST_MESSAGE,
) -> list[tuple[str, str]]:
    """Return the new turns a simulation adds after `history` (never the history itself).

    An empty history starts fresh: the agent opens with `agent_first_message` (when not
    empty). After that the speaker alternates: after a user turn the agent replies,
    after an agent turn the simulated user speaks. The first simulated-user turn of the
    call says `user_first_message` when it is set, later ones follow the script.
    """
    turns: list[tuple[str, str]] = list(history)
    new: list[tuple[str, str]] = []
    limit = max(0, new_turns_limit)
    user_first = user_first_message or None
    if not turns and agent_first_message and limit:
        new.append((AGENT, agent_first_message))
        turns.append(new[-1])
    while len(new) < limit:
        if turns and turns[-1][0] == USER:
            turn = (AGENT, reply(turns))
        else:
            turn = (USER, simulated_user_message(turns, user_first))
            user_first = None
        new.append(turn)
        turns.append(turn)
    return new

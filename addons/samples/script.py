"""The customs-classification script the sample clients play, one user message a turn."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScriptLine:
    """One user message of the script and the fact it gives the agent."""

    topic: str
    text: str


CUSTOMS_SCRIPT: tuple[ScriptLine, ...] = (
    ScriptLine("product", "I need to classify cotton t-shirts for import."),
    ScriptLine("origin", "They are made in Vietnam."),
    ScriptLine("material", "The fabric is 100% cotton, knitted."),
    ScriptLine("value", "The declared value is $12,000 for 2,000 units."),
    ScriptLine(
        "officer feedback",
        "The customs officer says the shirts have a printed logo; does that change the HS code?",
    ),
)

OFFICER_CONTEXT = "Officer on duty: J. Smith"
"""The contextual update the fixed WebSocket client sends once after connecting."""

MAX_TURNS = 50


def script_messages(turns: int | None = None) -> list[str]:
    """Return the first `turns` user messages (all five by default).

    Beyond the five scripted lines, numbered recap requests follow, so a long
    conversation can be played; each message stays distinct.
    """
    count = len(CUSTOMS_SCRIPT) if turns is None else turns
    if not 1 <= count <= MAX_TURNS:
        raise ValueError(f"turns must be a whole number from 1 to {MAX_TURNS} (got {count})")
    messages = [line.text for line in CUSTOMS_SCRIPT[:count]]
    for extra in range(len(messages), count):
        number = extra - len(CUSTOMS_SCRIPT) + 1
        messages.append(f"Follow-up {number}: please recap the classification so far.")
    return messages

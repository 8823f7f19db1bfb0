"""The probe's scenarios: one per test case of the investigation plan, each a scripted customs conversation."""

from __future__ import annotations

from dataclasses import dataclass

# The checks (checks.py), named here so that a scenario can list those that apply to it.
FACTS_CARRIED = "facts-carried"
ONE_SESSION = "one-session"
OPENING_ONCE = "opening-once"
CONTEXT_GROWS = "context-grows"
CONTEXT_SIZE = "context-size"

DEFAULT_TURNS = 5
SAMPLES = ("fixed", "faulty")  # the built-in clients that play a scenario (--sample)
MIN_TURNS, MAX_TURNS = 2, 50
LONG_FACTOR = 4  # the context-size scenario plays this many times --turns messages


@dataclass(frozen=True, slots=True)
class Fact:
    """Something the user says once that every later call must still carry: its label, its words, where said."""

    label: str
    text: str
    given: int  # the 1-based number of the message that says it


@dataclass(frozen=True, slots=True)
class Scenario:
    """One test case: the user messages to play, the facts they give, and the checks that judge the run."""

    name: str
    case: str  # the investigation plan's test case, as the table heads it
    lines: tuple[str, ...]
    facts: tuple[Fact, ...]
    checks: tuple[str, ...]


PRODUCT = Fact("product", "cotton t-shirts", 1)


CUSTOMS_CONVERSATION = (  # the plan's customs classification, one fact a message
    "I need to classify cotton t-shirts for import.",
    "They are made in Vietnam.",
    "The fabric is 100% cotton, knitted.",
    "The declared value is $12,000 for 2,000 units.",
    "The customs officer says the shirts have a printed logo; does that change the HS code?",
)


def _conversation(turns: int) -> Scenario:
    script = list(CUSTOMS_CONVERSATION)
    lines = script[:turns] + [f"Follow-up {n}: please recap the classification so far."
                              for n in range(1, turns - len(script) + 1)]
    said = (PRODUCT, Fact("origin", "Vietnam", 2), Fact("material", "100% cotton", 3),
            Fact("value", "$12,000", 4), Fact("officer feedback", "printed logo", 5))
    return Scenario("conversation", f"{turns}-turn conversation: the agent remembers every earlier turn",
                    tuple(lines), tuple(f for f in said if f.given < turns),
                    (FACTS_CARRIED, ONE_SESSION, OPENING_ONCE, CONTEXT_GROWS))


PRODUCT_CLASSIFICATION = Scenario(
    "product", "product classification: the product details are kept throughout",
    ("I need to classify cotton t-shirts for import.",
     "They are made in Vietnam.",
     "Which HS heading would they fall under?",
     "Would that change if they were sold in packs of three?",
     "Please summarise what you know about the goods."),
    (PRODUCT, Fact("origin", "Vietnam", 2)),
    (FACTS_CARRIED, OPENING_ONCE))

INTERACTIVE_OFFICER = Scenario(
    "officer", "interactive officer: the officer's feedback reaches the later replies",
    ("I need to classify cotton t-shirts for import.",
     "They are made in Vietnam; the fabric is 100% cotton, knitted.",
     "Which HS code do you propose?",
     "The customs officer says the printed logo makes them promotional goods; please revise the HS code.",
     "What is the HS code now, after the officer's feedback?"),
    (PRODUCT, Fact("officer feedback", "printed logo", 4)),
    (FACTS_CARRIED, OPENING_ONCE))

SESSION_PERSISTENCE = Scenario(
    "persistence", "session persistence: one session from the first message to the last",
    ("I need to classify cotton t-shirts for import.",
     "They are made in Vietnam.",
     "The declared value is $12,000 for 2,000 units.",
     "Is this still the same conversation as a minute ago?",
     "Please keep this session open while I check the invoice.",
     "Thanks, that's all for now."),
    (),
    (ONE_SESSION, CONTEXT_GROWS))


def _context_size(turns: int) -> Scenario:
    count = max(LONG_FACTOR * turns, 2)
    notes = [f"Note {n} for the file: carton batch B-{n:03d} weighs {10 + n % 7} kg and is sealed; "
             "keep it with the classification." for n in range(1, count - 1)]
    lines = ["I need to classify cotton t-shirts for import; they are made in Vietnam.", *notes,
             "Which product are we classifying, and where is it made?"]
    return Scenario("context-size", f"context size: after {count} messages the key facts are still there",
                    tuple(lines), (PRODUCT, Fact("origin", "Vietnam", 1)), (CONTEXT_SIZE, CONTEXT_GROWS))


NAMES = ("conversation", "product", "officer", "persistence", "context-size")


def scenarios(turns: int = DEFAULT_TURNS) -> tuple[Scenario, ...]:
    """The five scenarios in the plan's order; ``turns`` sets the conversation's length (context-size: four times)."""
    if not MIN_TURNS <= turns <= MAX_TURNS:
        raise ValueError(f"turns must be a whole number from {MIN_TURNS} to {MAX_TURNS} (got {turns})")
    return (_conversation(turns), PRODUCT_CLASSIFICATION, INTERACTIVE_OFFICER, SESSION_PERSISTENCE,
            _context_size(turns))


def chosen(name: str, turns: int = DEFAULT_TURNS) -> tuple[Scenario, ...]:
    """The scenario called ``name`` (``all``: every one); ValueError naming the known ones."""
    every = scenarios(turns)
    if name == "all":
        return every
    found = tuple(s for s in every if s.name == name)
    if not found:
        raise ValueError(f"unknown scenario {name!r} (known: {', '.join(NAMES)}, all)")
    return found

"""The analysis settings: each ``sessiontap_*`` option the analysis reads, its one default and its check.

The live addons declare these options in ``load()`` with the defaults below, ``mitm.yaml``
holds the same keys, and the offline commands build ``Settings`` from the same values, so a
live run and a re-analysis of its capture judge with the same thresholds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

PREFIX = "sessiontap_"


@dataclass(frozen=True, slots=True)
class Settings:
    """Thresholds and session evidence settings (option ``sessiontap_<field>`` for each field)."""

    max_context_tokens: int = 8000
    opening_similarity: float = 0.8  # Dice of character pairs (rules.similarity)
    session_gap: float = 600.0
    session_header: str = "x-session-id"
    session_field: str = ""

    @classmethod
    def from_options(cls, values: Mapping[str, Any]) -> Settings:
        """Settings from ``sessiontap_*`` values (mitm.yaml keys or mitmproxy options); absent ones default."""
        given = {f.name: values[PREFIX + f.name] for f in fields(cls) if values.get(PREFIX + f.name) is not None}
        return cls(**given)


DEFAULTS = Settings()


def check_max_context_tokens(value: int) -> None:
    """Raise ValueError unless the token limit is a whole number >= 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"must be a whole number >= 0 (got {value!r})")


def check_opening_similarity(value: float) -> None:
    """Raise ValueError unless the similarity is above 0 and at most 1."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ValueError(f"must be a number above 0 and at most 1 (got {value!r})")


def check_session_gap(value: float) -> None:
    """Raise ValueError unless the gap is a number of seconds >= 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"must be a number of seconds >= 0 (got {value!r})")


CHECKS: dict[str, Callable[[Any], None]] = {
    PREFIX + "max_context_tokens": check_max_context_tokens,
    PREFIX + "opening_similarity": check_opening_similarity,
    PREFIX + "session_gap": check_session_gap,
}

"""Context diffs: what changed in the context between two calls of a session, in linear time.

A diff keeps the common prefix and suffix (by turn identity) and the middle parts that
differ, so ``apply(old, diff(old, new)) == new``. Turns in the middle paired by position
and role are "changed"; the rest are "dropped" (only in old) or "added" (only in new).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sessiontap.core.model import Turn, Turns, starts_with

CHARS_PER_TOKEN = 4  # the usual rough figure for English text


def tokens_of(chars: int) -> int:
    """Approximate tokens in so many characters (/ 4, rounded up)."""
    return -(-chars // CHARS_PER_TOKEN)


@dataclass(slots=True)
class ContextDiff:
    """The difference between an old and a new context: kept prefix/suffix, and the middle parts."""

    prefix: int
    suffix: int
    removed: list[Turn] = field(default_factory=list)
    inserted: list[Turn] = field(default_factory=list)
    old_len: int = 0
    new_len: int = 0

    def _pairs(self) -> int:
        n = 0
        while n < min(len(self.removed), len(self.inserted)) and self.removed[n].role == self.inserted[n].role:
            n += 1
        return n

    @property
    def changed(self) -> list[tuple[Turn, Turn]]:
        """Middle turns paired by position and role: a turn edited in place."""
        n = self._pairs()
        return list(zip(self.removed[:n], self.inserted[:n], strict=True))

    @property
    def added(self) -> list[Turn]:
        """New turns with no counterpart in the old context."""
        return self.inserted[self._pairs() :]

    @property
    def dropped(self) -> list[Turn]:
        """Old turns with no counterpart in the new context."""
        return self.removed[self._pairs() :]

    @property
    def is_extension(self) -> bool:
        """True when the new context keeps all of the old one in front (it only grew)."""
        return self.prefix == self.old_len

    def to_json(self) -> dict[str, object]:
        """A JSON-ready summary: counts, and the turns added, dropped and changed."""
        return {
            "kept": self.prefix + self.suffix,
            "added": [[t.role, t.text] for t in self.added],
            "dropped": [[t.role, t.text] for t in self.dropped],
            "changed": [[[a.role, a.text], [b.role, b.text]] for a, b in self.changed],
            "old_turns": self.old_len,
            "new_turns": self.new_len,
        }


def _same(a: Turn, b: Turn) -> bool:
    """Whether two turns are the same turn (one object: a socket's transcript shares them, no text compared)."""
    return a is b or a.key() == b.key()


def diff(old: Turns, new: Turns) -> ContextDiff:
    """The diff from old to new context (linear in their lengths; constant for one socket's prefixes)."""
    limit = min(len(old), len(new))
    prefix = 0
    if starts_with(new, old):
        prefix = limit
    while prefix < limit and _same(old[prefix], new[prefix]):
        prefix += 1
    suffix = 0
    while suffix < limit - prefix and _same(old[len(old) - 1 - suffix], new[len(new) - 1 - suffix]):
        suffix += 1
    return ContextDiff(
        prefix=prefix,
        suffix=suffix,
        removed=old[prefix : len(old) - suffix],
        inserted=new[prefix : len(new) - suffix],
        old_len=len(old),
        new_len=len(new),
    )


def apply(old: list[Turn], d: ContextDiff) -> list[Turn]:
    """The new context rebuilt from the old one and a diff."""
    return old[: d.prefix] + d.inserted + old[len(old) - d.suffix :]

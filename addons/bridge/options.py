"""Option checks: each addon's pure ``CHECKS``, run by its ``configure()`` and by mitm.yaml's validation alike."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from mitmproxy import ctx, exceptions

Check = Callable[[Any], object]  # raises ValueError with "must be … (got …)"


def problem(name: str, value: Any, checks: Mapping[str, Check]) -> str | None:
    """The sentence saying what is wrong with an option's value, or None when it passes its check."""
    check = checks.get(name)
    if check is None:
        return None
    try:
        check(value)
    except ValueError as e:
        return f"{name} {e}"
    return None


def check_updated(checks: Mapping[str, Check], updated: set[str]) -> None:
    """Raise OptionsError naming the option when an updated option fails its check (for ``configure``)."""
    for name in sorted(updated & checks.keys()):
        said = problem(name, getattr(ctx.options, name), checks)
        if said is not None:
            raise exceptions.OptionsError(said)


def sessiontap_values() -> dict[str, Any]:
    """The current value of every ``sessiontap_*`` option."""
    names = ctx.options.keys()  # OptManager is not a Mapping: keys() is its own method
    return {name: getattr(ctx.options, name) for name in names if name.startswith("sessiontap_")}

"""Fail-open guard for addon hooks: an exception is logged and noted, never raised into mitmproxy."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("sessiontap")

def guarded[F: Callable[..., Any]](hook: F) -> F:
    """Wrap a hook so that its exception is logged and handed to ``self.on_error``, then dropped.

    mitmproxy skips the remaining addons of a chain entry when one raises, so every sessiontap
    hook is guarded: traffic always flows and the other hooks always run.
    """

    @functools.wraps(hook)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return hook(self, *args, **kwargs)
        except Exception as e:  # noqa: BLE001 - fail open is the point
            log.exception("sessiontap: %s.%s failed", type(self).__name__, hook.__name__)
            on_error = getattr(self, "on_error", None)
            if on_error is not None:
                try:
                    on_error(hook.__name__, args[0] if args else None, e)
                except Exception:  # noqa: BLE001
                    log.exception("sessiontap: error handler failed")
            return None

    return wrapper  # type: ignore[return-value]

"""Fail-open guard for addon hooks: an exception is logged and noted, never raised into mitmproxy."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger("sessiontap")


def _failed(owner: Any, hook: str, arg: object, error: Exception) -> None:
    """Log a hook's exception and hand it to ``owner.on_error`` (which must not raise either)."""
    log.error("sessiontap: %s.%s failed", type(owner).__name__, hook, exc_info=error)
    on_error = getattr(owner, "on_error", None)
    if on_error is not None:
        try:
            on_error(hook, arg, error)
        except Exception:  # noqa: BLE001
            log.exception("sessiontap: error handler failed")


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
            _failed(self, hook.__name__, args[0] if args else None, e)
            return None

    return wrapper  # type: ignore[return-value]


def in_thread[T](owner: Any, hook: str, flow: object, work: Callable[[], T],
                 then: Callable[[T], None]) -> Coroutine[Any, Any, None] | None:
    """Run a hook's heavy, pure part (``work``) in a worker thread, then ``then(result)`` back on the loop.

    A hook returns what this returns: mitmproxy awaits it before the message goes on, while the event
    loop serves every other connection (a thread holds the GIL for a switch interval at a time, or one
    C call, so a 16 MB body no longer stalls them all). Guarded like the hook. Without a running loop
    (unit tests) both parts run at once and None is returned.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        then(work())
        return None

    async def run() -> None:
        try:
            then(await asyncio.to_thread(work))
        except Exception as e:  # noqa: BLE001 - fail open, as in ``guarded``
            _failed(owner, hook, flow, e)

    return run()

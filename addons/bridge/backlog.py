"""Work that can wait until the message it is about has been forwarded: run two event loop turns later.

mitmproxy forwards a message only once every addon's hook for it has returned, so whatever a
hook does adds to the message's latency. What only reads the message (decoding a frame, judging
a call, writing the journal) is queued here instead and run, in order, once the message has
usually gone: while the other side is busy answering.

When: a hook runs while its connection's handler holds its event lock, so the hook's task
resumes, and the message is written, on the loop turn after the hook (later when other events
of that connection wait for the lock first). Work queued during one turn runs on the turn after
the next: the first callback closes the turn's batch, the second runs it. Nothing here may
change what is sent: it could run before the message has gone, which only costs the latency.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger("sessiontap")


class Backlog:
    """A first-in, first-out queue of calls, each run once the message its hook was about has been forwarded."""

    def __init__(self) -> None:
        self.queue: deque[tuple[int, Callable[..., Any], tuple[Any, ...]]] = deque()
        self.added = 0  # calls queued so far (each call's number)
        self.collecting = False  # a batch is open: this turn's calls join it

    def add(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` once the hook's message has gone (at once when no event loop runs, as in unit tests)."""
        self.queue.append((self.added, fn, args))
        self.added += 1
        if self.collecting:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.drain()
            return
        self.collecting = True
        loop.call_soon(self._close, loop)

    def _close(self, loop: asyncio.AbstractEventLoop) -> None:
        """Next turn: this batch's messages are being written now; run the batch on the turn after."""
        self.collecting = False
        loop.call_soon(self._run, self.added)

    def _run(self, upto: int) -> None:
        while self.queue and self.queue[0][0] < upto:
            self._call(self.queue.popleft())

    async def caught_up(self, poll: float = 0.005) -> None:
        """Return once everything queued so far has run, each in its own turn (never early; later work not awaited)."""
        until = self.added
        while self.queue and self.queue[0][0] < until:
            await asyncio.sleep(poll)

    def drain(self) -> None:
        """Run everything queued, oldest first (at shutdown, or before something that must see it all)."""
        while self.queue:
            self._call(self.queue.popleft())

    @staticmethod
    def _call(item: tuple[int, Callable[..., Any], tuple[Any, ...]]) -> None:
        _, fn, args = item
        try:
            fn(*args)
        except Exception:  # noqa: BLE001 - fail open: the callee's own guard should have caught it
            log.exception("sessiontap: deferred %s failed", getattr(fn, "__qualname__", fn))

"""The line contract: a client spoken to through its stdin and stdout, one user message and one reply a line.

The probe writes each message as one UTF-8 line on the client's stdin and waits for one line
on its stdout, the agent's reply, before it writes the next; after the last reply it closes
stdin, and the client ends its session and exits. Anything else the client says goes to
stderr (the last lines are quoted when it fails). A client that exits, closes its stdout or
stays silent for ``timeout`` seconds before a reply has broken the contract: ``LineClient``
says which message it was and what the client said last.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from sessiontap.app.runner import Listening

EXIT_GRACE = 10.0  # seconds a client has to exit once its stdin is closed
STDERR_LINES = 5  # how many of the client's last stderr lines are kept to quote


@dataclass(slots=True)
class LineClient:
    """Drives one client process through a scenario's messages (a ``runner.Drive``); keeps what it got.

    ``failure`` is the contract broken (None: every message got its reply); ``note`` says what
    was odd but harmless (a client that had to be stopped, or exited with an error after its
    last reply).
    """

    lines: Sequence[str]
    timeout: float = 30.0
    replies: list[str] = field(default_factory=list)
    failure: str | None = None
    note: str | None = None
    stderr: deque[str] = field(default_factory=lambda: deque(maxlen=STDERR_LINES))
    _reading: asyncio.Task[None] | None = field(default=None, repr=False)

    async def __call__(self, listening: Listening, proc: asyncio.subprocess.Process | None) -> int:
        """Play every message through ``proc``; 0 when each got its reply, else 1 (``failure`` says why)."""
        if proc is None or proc.stdin is None or proc.stdout is None or proc.stderr is None:
            raise ValueError("a LineClient needs a client process with its stdin, stdout and stderr piped")
        reading = self._reading = asyncio.create_task(self._read_stderr(proc.stderr))
        try:
            for number, line in enumerate(self.lines, 1):
                reply = await self._ask(proc, number, line)
                if reply is None:
                    return 1
                self.replies.append(reply)
            await self._finish(proc)
            return 0
        finally:
            await asyncio.sleep(0)  # let the stderr reader take what is already there
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading

    async def _ask(self, proc: asyncio.subprocess.Process, number: int, line: str) -> str | None:
        """Write one message and read its reply line (None: the contract was broken, ``failure`` says how)."""
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(line.encode("utf-8") + b"\n")
            await proc.stdin.drain()
            raw = await asyncio.wait_for(proc.stdout.readline(), self.timeout)
        except (BrokenPipeError, ConnectionResetError):
            raw = b""
        except TimeoutError:
            self.failure = (f"the client gave no reply to message {number} within {self.timeout:g} s (does it print "
                            f"each reply on one line of stdout, and flush it?){self._said()}")
            return None
        except ValueError:  # longer than the pipe's limit
            self.failure = f"the client's reply to message {number} is not one line (over the length limit)"
            return None
        if not raw:
            code = await self._exit_code(proc)
            self.failure = f"the client exited{f' (code {code})' if code is not None else ''} before replying to " \
                           f"message {number}{self._said()}"
            return None
        return raw.decode("utf-8", "replace").rstrip("\r\n")

    async def _finish(self, proc: asyncio.subprocess.Process) -> None:
        """Close stdin and give the client time to end its session and exit; note it if it does not."""
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            proc.stdin.close()
            await proc.stdin.wait_closed()
        try:
            code = await asyncio.wait_for(proc.wait(), EXIT_GRACE)
        except TimeoutError:
            self.note = f"the client did not exit within {EXIT_GRACE:g} s of the end of its input; it was stopped"
            return
        if code:
            self.note = f"the client exited with code {code} after its last reply{self._said()}"

    async def _exit_code(self, proc: asyncio.subprocess.Process) -> int | None:
        """The exit code of a client that closed its stdout (None: still running), its stderr read to the end."""
        try:
            code: int | None = await asyncio.wait_for(proc.wait(), 2.0)
        except TimeoutError:
            return None
        if self._reading is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._reading), 2.0)
        return code

    async def _read_stderr(self, stream: asyncio.StreamReader) -> None:
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line over the limit: skip it
                continue
            if not raw:
                return
            text = " ".join(raw.decode("utf-8", "replace").split())
            if text:
                self.stderr.append(text)

    def _said(self) -> str:
        return f"; it said last: {self.stderr[-1]}" if self.stderr else ""

"""Tests for addons/probe/lines.py: the line contract spoken with real child processes (no proxy needed)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from sessiontap.app.runner import Listening
from sessiontap.probe import lines
from sessiontap.probe.lines import LineClient

AT = Listening("127.0.0.1", 1, "reverse", Path("."))
ECHO = "import sys\nfor line in sys.stdin:\n    print('re: ' + line.strip(), flush=True)\n"


async def drive(client: LineClient, script: str) -> tuple[int, int | None]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script, stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        code = await asyncio.wait_for(client(AT, proc), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    return code, proc.returncode


async def test_each_message_gets_its_reply_line_then_stdin_ends_and_the_client_exits():
    client = LineClient(["one", "two ünï"])
    assert await drive(client, ECHO) == (0, 0)
    assert client.replies == ["re: one", "re: two ünï"]
    assert client.failure is None and client.note is None


async def test_a_silent_client_fails_after_the_timeout_naming_the_message():
    client = LineClient(["one", "two"], timeout=1.0)
    script = ("import sys, time\nprint('re', flush=True)\nsys.stdin.readline()\nsys.stdin.readline()\n"
              "print('still connecting', file=sys.stderr, flush=True)\ntime.sleep(30)\n")
    code, _ = await drive(client, script)
    assert code == 1 and client.replies == ["re"]
    assert client.failure == ("the client gave no reply to message 2 within 1 s (does it print each reply on one "
                              "line of stdout, and flush it?); it said last: still connecting")


async def test_a_client_that_exits_early_is_quoted_from_its_stderr():
    client = LineClient(["one"])
    code, _ = await drive(client, "import sys\nprint('starting', file=sys.stderr)\nsys.exit('no key: set X')\n")
    assert code == 1
    assert client.failure == "the client exited (code 1) before replying to message 1; it said last: no key: set X"


async def test_a_client_that_outlives_its_input_is_stopped_with_a_note(monkeypatch):
    monkeypatch.setattr(lines, "EXIT_GRACE", 0.3)
    client = LineClient(["one"])
    code, _ = await drive(client, "import sys, time\nsys.stdin.readline()\nprint('re', flush=True)\ntime.sleep(30)\n")
    assert code == 0 and client.replies == ["re"]
    assert client.note == "the client did not exit within 0.3 s of the end of its input; it was stopped"

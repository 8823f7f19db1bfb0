"""Code paths: where in the client's code each connection and request came from, joined to flows by port and time.

``sessiontap record -- CMD`` runs the client with a code trace (``addons/app/codetrace/``)
that appends a line per TCP connect and per plain HTTP request: the client's local port,
the time and the client's own frames, innermost first. The proxy sees that port as the
flow's client port, so a flow's code is the trace's latest request line on its port at or
before the flow started, else the connect line of that port. Pure: lines in, frames out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

CODE_FILE = "code.jsonl"
CLOCK_SLACK = 0.5  # seconds a trace line may be stamped after the flow it belongs to (two processes' clocks)

Frame = tuple[str, int, str]  # (file, line, function)


def frames_of(value: object) -> list[Frame]:
    """Frames from their JSON form ``[[file, line, function], ...]`` (anything else is dropped)."""
    out: list[Frame] = []
    if isinstance(value, list):
        for item in value:
            if (isinstance(item, list | tuple) and len(item) == 3 and isinstance(item[0], str)
                    and isinstance(item[1], int) and isinstance(item[2], str)):
                out.append((item[0], item[1], item[2]))
    return out


def where(frames: Sequence[Frame], depth: int = 3) -> str:
    """A code path as people read it: ``websocket.py:171 send ← durin.py:55 run`` (innermost first)."""
    return " ← ".join(f"{file}:{line} {function}" for file, line, function in frames[:depth])


def place(frames: Sequence[Frame]) -> str:
    """The innermost frame as ``file:line`` in ``function()``, or empty."""
    if not frames:
        return ""
    file, line, function = frames[0]
    return f"`{file}:{line}` in `{function}()`"


def as_json(frames: Sequence[Frame]) -> list[dict[str, object]]:
    """Frames in findings.json's ``evidence.code`` shape: ``[{file, line, function}]``."""
    return [{"file": f, "line": n, "function": fn} for f, n, fn in frames]


@dataclass(slots=True)
class _Mark:
    time: float
    kind: str
    frames: list[Frame]


@dataclass(slots=True)
class CodeTrace:
    """The trace's lines by local port; feed it lines as they are written, ask it for a flow's code."""

    by_port: dict[int, list[_Mark]] = field(default_factory=dict)

    def feed(self, lines: Iterable[str]) -> None:
        """Take trace lines (JSON objects); a line that is not one is skipped."""
        for line in lines:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if not isinstance(obj, dict) or not isinstance(obj.get("port"), int):
                continue
            t = obj.get("time")
            mark = _Mark(float(t) if isinstance(t, int | float) else 0.0, str(obj.get("kind", "")),
                         frames_of(obj.get("frames")))
            self.by_port.setdefault(obj["port"], []).append(mark)

    def code_for(self, port: int | None, at: float, request: bool = True) -> list[Frame]:
        """The frames that sent the request (or, ``request=False``, opened the connection) on a port at ``at``."""
        marks = [m for m in self.by_port.get(port or -1, ()) if m.time <= at + CLOCK_SLACK]
        if not marks:
            return []
        connect = next((m for m in reversed(marks) if m.kind == "connect"), None)
        if request:
            since = connect.time if connect else 0.0
            sent = next((m for m in reversed(marks) if m.kind == "request" and m.time >= since), None)
            if sent is not None and sent.frames:
                return sent.frames
        return connect.frames if connect else []

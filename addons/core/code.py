"""Code paths: where in the client's code each connection and request came from, joined to flows by port and time.

``sessiontap record -- CMD`` runs the client with a code trace (``addons/app/codetrace/``)
that appends a line per TCP connect and per plain HTTP request: the client's local port,
the time and the client's own frames, innermost first. The proxy sees that port as the
flow's client port, so a flow's code is the trace's latest request line on its port at or
before the flow started, else the connect line of that port. A ``resolve`` line (no port) says the client
looked up an ElevenLabs host itself, which a client going through the proxy never does: its
traffic went around the proxy, unrecorded (``lookups``, ``around_proxy``). Pure: lines in, frames out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

CODE_FILE = "code.jsonl"
CLOCK_SLACK = 0.5  # seconds a trace line may be stamped after the flow it belongs to (two processes' clocks)
RESOLVE = "resolve"  # the kind of a trace line that names a host the client looked up itself

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


@dataclass(frozen=True, slots=True)
class Lookup:
    """An ElevenLabs host the client looked up itself (a ``resolve`` line): it went to it around the proxy."""

    host: str
    time: float
    frames: list[Frame]


def lookups(lines: Iterable[str], since: float = 0.0) -> list[Lookup]:
    """The trace's ``resolve`` lines stamped at or after ``since``, in order; any other line is skipped."""
    out: list[Lookup] = []
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if not isinstance(obj, dict) or obj.get("kind") != RESOLVE or not isinstance(obj.get("host"), str):
            continue
        t = obj.get("time")
        at = float(t) if isinstance(t, int | float) else 0.0
        if at >= since:
            out.append(Lookup(obj["host"].lower().rstrip("."), at, frames_of(obj.get("frames"))))
    return out


def around_proxy(found: Iterable[Lookup]) -> list[tuple[str, int, list[Frame]]]:
    """Per host, in the order first looked up: the host, how many lookups, the first one's frames (or any)."""
    hosts: dict[str, tuple[int, list[Frame]]] = {}
    for lookup in found:
        count, frames = hosts.get(lookup.host, (0, []))
        hosts[lookup.host] = (count + 1, frames or lookup.frames)
    return [(host, count, frames) for host, (count, frames) in hosts.items()]

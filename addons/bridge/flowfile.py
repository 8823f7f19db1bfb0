"""Reading and writing mitmproxy flow files fast: states parsed without building flows, and written in pieces.

mitmproxy's ``FlowReader`` parses every value of every flow (its tnetstring parser scans each
length prefix byte by byte in Python) and then builds the flow, type-checking every field of both
connections: most of the time offline analysis took. Here the file is mapped, a value's length
prefix is found by ``find`` (in C), and the values no record needs (the server connection, a flow's backup) are
stepped over by their length. A flow of another format version is parsed whole and upgraded by
mitmproxy's own ``compat.migrate_flow``, as ``FlowReader`` does. ``pieces`` gives a state's bytes as
mitmproxy's ``tnetstring.dumps`` writes them, in about two thirds of its time (the live capture's write).
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from typing import Any, cast

from mitmproxy import version
from mitmproxy.io import compat, tnetstring

SKIPPED = frozenset({"server_conn", "backup"})  # of the current format: what no record reads
PICKED = {"client_conn": frozenset({"peername"})}  # of the current format: the only parts of these records read
WHOLE_BELOW = 4096  # bytes: a shorter string is written in one piece with its length; a longer one is not copied
# tnetstring type tags
_BYTES, _TEXT, _INT, _FLOAT, _BOOL, _NULL, _DICT, _LIST = b",;#^!~}]"


class FlowFileError(ValueError):
    """The file holds no flow where one should begin: not a flow file, or torn there."""


def _span(buf: Any, pos: int) -> tuple[int, int, int]:
    """Where the value at ``pos`` lies: (start, stop, type tag); it ends at stop + 1."""
    colon = buf.find(b":", pos, pos + 12)
    length = buf[pos:colon] if colon > pos else b""
    if not length.isdigit():  # digits only, as mitmproxy reads them (int() takes "-4", "+3", " 1", "1_0")
        raise FlowFileError(f"no value at byte {pos}")
    start = colon + 1
    stop = start + int(length)
    if stop >= len(buf):
        raise FlowFileError(f"no value at byte {pos}: it runs past the end")
    return start, stop, buf[stop]


def _value(buf: Any, pos: int) -> tuple[Any, int]:
    """The value at ``pos`` and where the next one begins."""
    start, stop, tag = _span(buf, pos)
    if tag == _BYTES:
        return buf[start:stop], stop + 1
    if tag == _TEXT:
        return buf[start:stop].decode("utf-8"), stop + 1
    if tag == _DICT:
        d = {}
        while start < stop:
            key, start = _value(buf, start)
            d[key], start = _value(buf, start)
        return d, stop + 1
    if tag == _LIST:
        items = []
        while start < stop:
            item, start = _value(buf, start)
            items.append(item)
        return items, stop + 1
    if tag == _INT:
        return int(buf[start:stop]), stop + 1
    if tag == _FLOAT:
        return float(buf[start:stop]), stop + 1
    if tag == _BOOL:
        return buf[start:stop] == b"true", stop + 1
    if tag == _NULL:
        return None, stop + 1
    raise FlowFileError(f"unknown value type {chr(tag)!r} at byte {pos}")


def _picked(buf: Any, pos: int, keys: frozenset[str]) -> Any:
    """The dict at ``pos`` with only these keys parsed (anything else as a whole)."""
    start, stop, tag = _span(buf, pos)
    if tag != _DICT:
        return _value(buf, pos)[0]
    d = {}
    while start < stop:
        key, start = _value(buf, start)
        if key in keys:
            d[key], start = _value(buf, start)
        else:
            start = _span(buf, start)[1] + 1
    return d


def _flow(buf: Any, pos: int) -> tuple[dict[str, Any], int]:
    """The flow whose record begins at ``pos`` (its skipped parts absent when of the current format).

    Of the current format, a flow that is not HTTP is only its type and version: nothing else of it is read.
    """
    start, stop, tag = _span(buf, pos)
    if tag != _DICT:
        raise FlowFileError(f"no flow at byte {pos}")
    spans: dict[str, int] = {}
    while start < stop:
        key, start = _value(buf, start)
        spans[key] = start
        start = _span(buf, start)[1] + 1
    if "version" not in spans or _value(buf, spans["version"])[0] != version.FLOW_FORMAT_VERSION:
        return cast(dict[str, Any], compat.migrate_flow({k: _value(buf, at)[0] for k, at in spans.items()})), stop + 1
    if "type" not in spans or _value(buf, spans["type"])[0] != "http":  # TCP, UDP, DNS: no record reads them
        return {k: _value(buf, spans[k])[0] for k in ("type", "version") if k in spans}, stop + 1
    return {k: _picked(buf, at, PICKED[k]) if k in PICKED else _value(buf, at)[0]
            for k, at in spans.items() if k not in SKIPPED}, stop + 1


def flow_states(path: str) -> Iterator[dict[str, Any]]:
    """Each flow of a flow file, as its state: raises FlowFileError where no flow begins (the rest is unreadable).

    ``compat.migrate_flow`` raises ValueError for a format version it cannot read.
    """
    with open(path, "rb") as f:
        if f.seek(0, 2) == 0:
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            pos, end = 0, len(buf)
            while pos < end:
                state, pos = _flow(buf, pos)
                yield state


def is_flow_file(path: str) -> bool:
    """Whether the file is a tnetstring flow file (mitmproxy's FlowReader also reads HAR files, JSON)."""
    with open(path, "rb") as f:
        head = f.read(4)
    return not head.startswith((b"{", b"\xef\xbb\xbf{"))


def pieces(value: Any) -> tuple[list[bytes], int]:
    """``value`` as mitmproxy's ``tnetstring.dumps`` writes it, as the pieces to write in turn, and their size.

    Joined, they are its bytes exactly (a dict's items last first, as it writes them). A big body
    is a piece of its own, never copied; a small value is one piece with its length, where
    mitmproxy pushes three or four onto a deque. A type other than the plain ones (a subclass) is
    left to mitmproxy's own.
    """
    out: list[bytes] = []
    return out, _dump(value, out)


def _dump(value: Any, out: list[bytes]) -> int:
    """Append ``value``'s pieces to ``out``; return how many bytes they are."""
    kind = value.__class__
    if kind is str:
        value, kind, tag = value.encode("utf8"), bytes, b";"
    else:
        tag = b","
    if kind is bytes:
        if len(value) < WHOLE_BELOW:
            piece = b"%d:%s%s" % (len(value), value, tag)
            out.append(piece)
            return len(piece)
        head = b"%d:" % len(value)
        out += (head, value, tag)
        return len(head) + len(value) + 1
    if kind is dict or kind is list or kind is tuple:
        slot = len(out)
        out.append(b"")  # the length, once the items are known
        size = 0
        if kind is dict:
            for k, v in reversed(value.items()):
                size += _dump(k, out) + _dump(v, out)
        else:
            for v in value:
                size += _dump(v, out)
        out[slot] = b"%d:" % size
        out.append(b"}" if kind is dict else b"]")
        return len(out[slot]) + size + 1
    if value is None:
        piece = b"0:~"
    elif kind is bool:
        piece = b"4:true!" if value else b"5:false!"
    elif kind is int:
        data = str(value).encode()
        piece = b"%d:%s#" % (len(data), data)
    elif kind is float:
        data = repr(value).encode()
        piece = b"%d:%s^" % (len(data), data)
    else:
        piece = tnetstring.dumps(value)
    out.append(piece)
    return len(piece)

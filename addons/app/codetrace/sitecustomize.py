"""sessiontap's code trace for a Python client run by ``sessiontap record``: where each connection came from.

Loaded as ``sitecustomize`` (``record`` puts this folder first on the child's PYTHONPATH) when
``SESSIONTAP_CODE_TRACE`` names a file. At every TCP connect, and at the write of every plain
HTTP request, it appends one JSON line: the local port, the time and the client's own frames
(file, line, function; innermost first; standard library, site-packages and this file left
out; paths relative to the working directory when under it). A thread or asyncio task
carries the frames that created it, so a socket opened in a library's thread still names
the user's line. When the client looks up an ElevenLabs host (``*.elevenlabs.io``) itself, which
a client going through the proxy never does, it appends a ``resolve`` line (the host, the time,
the frames; no port; written before the lookup, so a lookup that fails counts too) for ``record``
to say the traffic went around the proxy. It records no variable or argument, prints nothing,
and never raises: the client behaves as without it. Then it hands over to any ``sitecustomize``
of the user's.
"""

import asyncio
import contextlib
import json
import os
import re
import socket
import ssl
import sys
import sysconfig
import threading
import time
import types
import weakref

_TRACE = os.environ.get("SESSIONTAP_CODE_TRACE", "")
# Folders that hold the client's own code even inside site-packages (the demo's sample clients).
_ALSO_USER = tuple(p for p in os.environ.get("SESSIONTAP_CODE_TRACE_USER", "").split(os.pathsep) if p)
_HERE = os.path.dirname(os.path.abspath(__file__))
_CWD = os.getcwd()
_MAX_FRAMES = 12
_TASKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # asyncio task -> frames that created it
_METHODS = (b"GET ", b"POST ", b"PUT ", b"PATCH ", b"DELETE ", b"HEAD ", b"OPTIONS ")
_ELEVENLABS = re.compile(r"(^|\.)elevenlabs\.io\.?$", re.IGNORECASE)


def _library_dirs():
    dirs = {os.path.abspath(p) for key in ("stdlib", "platstdlib", "purelib", "platlib")
            if (p := sysconfig.get_paths().get(key))}
    dirs.update(os.path.abspath(p) for p in sys.path if p and ("site-packages" in p or "dist-packages" in p))
    return tuple(sorted(dirs, key=len, reverse=True))


_LIBRARIES = _library_dirs()


def _is_user(path):
    if not path or path.startswith("<"):
        return False
    path = os.path.abspath(path)
    if path.startswith(_HERE):
        return False
    if any(path.startswith(d) for d in _ALSO_USER):
        return True
    return not any(path.startswith(d + os.sep) for d in _LIBRARIES)


def _shown(path):
    try:
        rel = os.path.relpath(path, _CWD)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


def _user_frames(skip=2):
    """The client's own frames on the current stack, innermost first, then those of the thread's or task's creator."""
    frames: list = []
    f: types.FrameType | None = sys._getframe(skip)
    while f is not None and len(frames) < _MAX_FRAMES:
        path = f.f_code.co_filename
        if _is_user(path):
            frames.append([_shown(path), f.f_lineno, f.f_code.co_name])
        f = f.f_back
    origin = getattr(threading.current_thread(), "_sessiontap_origin", None)
    try:
        task = asyncio.current_task()
    except RuntimeError:
        task = None
    origin = (_TASKS.get(task) if task is not None else None) or origin
    for frame in origin or ():
        if len(frames) >= _MAX_FRAMES:
            break
        if frame not in frames:
            frames.append(frame)
    return frames


def _append(record):
    """Append one trace line (one write on an O_APPEND file: lines of several processes never interleave)."""
    line = json.dumps({**record, "time": time.time(), "pid": os.getpid()}) + "\n"
    fd = os.open(_TRACE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode("utf-8", "replace"))
    finally:
        os.close(fd)


def _write(kind, sock):
    with contextlib.suppress(Exception):  # the client must never notice the trace
        _append({"kind": kind, "port": sock.getsockname()[1], "frames": _user_frames(3)})


def _wrap_resolve(original):
    def resolve(host, *args, **kwargs):
        try:
            name = host.decode("ascii", "replace") if isinstance(host, bytes) else host
            if isinstance(name, str) and _ELEVENLABS.search(name):
                _append({"kind": "resolve", "host": name, "frames": _user_frames(2)})
        except Exception:  # noqa: BLE001
            pass
        return original(host, *args, **kwargs)
    return resolve


def _wrap_connect(original):
    def connect(self, *args, **kwargs):
        try:
            return original(self, *args, **kwargs)
        finally:
            if self.family in (socket.AF_INET, socket.AF_INET6) and self.type == socket.SOCK_STREAM:
                _write("connect", self)
    return connect


def _wrap_send(original):
    def send(self, data, *args, **kwargs):
        try:
            if bytes(data[:8]).startswith(_METHODS):
                _write("request", self)
        except Exception:  # noqa: BLE001
            pass
        return original(self, data, *args, **kwargs)
    return send


def _wrap_start(original):
    def start(self, *args, **kwargs):
        with contextlib.suppress(Exception):
            self._sessiontap_origin = _user_frames(2)
        return original(self, *args, **kwargs)
    return start


def _wrap_create_task(original):
    def create_task(self, *args, **kwargs):
        task = original(self, *args, **kwargs)
        with contextlib.suppress(Exception):
            _TASKS[task] = _user_frames(2)
        return task
    return create_task


def _install():
    socket.socket.connect = _wrap_connect(socket.socket.connect)  # type: ignore[method-assign]
    socket.socket.connect_ex = _wrap_connect(socket.socket.connect_ex)  # type: ignore[method-assign]
    for name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex"):  # asyncio, httpx, requests: via these
        setattr(socket, name, _wrap_resolve(getattr(socket, name)))
    for cls in (socket.socket, ssl.SSLSocket):
        for name in ("send", "sendall"):
            setattr(cls, name, _wrap_send(getattr(cls, name)))
    threading.Thread.start = _wrap_start(threading.Thread.start)  # type: ignore[method-assign]
    loop = asyncio.base_events.BaseEventLoop
    loop.create_task = _wrap_create_task(loop.create_task)  # type: ignore[method-assign]


def _chain():
    """Run the user's own sitecustomize, if there is one further along the path."""
    import importlib

    ours = sys.modules.pop("sitecustomize", None)
    saved = list(sys.path)
    try:
        sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
        importlib.import_module("sitecustomize")
    except ImportError:
        pass
    finally:
        sys.path[:] = saved
        if "sitecustomize" not in sys.modules and ours is not None:
            sys.modules["sitecustomize"] = ours


if _TRACE:
    with contextlib.suppress(Exception):  # never break the client
        _install()
_chain()

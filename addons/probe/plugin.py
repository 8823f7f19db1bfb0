"""pytest plugin (the ``pytest11`` entry point): the ``sessiontap`` fixture, sessiontap in front of one test.

The fixture starts the recording proxy in-process (on a thread) in front of the built-in
simulator, a replay of a capture, a server on this machine or the real API; points the code
under test at it through the environment (reverse mode: ``ELEVENLABS_BASE_URL``; regular
mode: ``HTTPS_PROXY`` and the CA variables), restored after the test; and yields a ``Tap``
with ``calls``, ``sessions``, ``findings`` (analysed when asked), ``base_url``, ``ws_url`` and
``assert_continuous()``. Each test's capture, findings.json and report.html go to its own
directory.

Where the traffic goes, highest first: the ``sessiontap`` marker's keywords
(``@pytest.mark.sessiontap(replay=..., upstream=..., live=..., mode=...)``; a relative
replay path is taken from the test file's folder), the command line (``--sessiontap-*``),
the ini file (``sessiontap_*`` keys; paths from the rootdir), else the simulator in reverse
mode. This module is imported by every pytest run once sessiontap is installed: it imports
nothing of sessiontap until the fixture is used.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from sessiontap.probe.tap import Tap

OPTIONS = {  # name: (metavar, help); each is --sessiontap-NAME on the command line and sessiontap_NAME in the ini
    "upstream": ("URL", "send each test's traffic to this server on this machine (another host needs live)"),
    "replay": ("CAPTURE", "answer each test's traffic from this capture (a flows.mitm or a record output "
                          "directory), offline"),
    "live": (None, "send each test's traffic to the real ElevenLabs API with ELEVENLABS_API_KEY (spends credit)"),
    "mode": (None, "how the code under test reaches the proxy: reverse (ELEVENLABS_BASE_URL, the default) or "
                   "regular (HTTPS_PROXY and sessiontap's CA)"),
    "out": ("DIR", "write each test's capture and report into DIR/<test id> (default: the test's "
                   "tmp_path/sessiontap)"),
    "config": ("FILE", "sessiontap settings file (default: ./mitm.yaml when present)"),
}
MARKER = ("sessiontap(replay=None, upstream=None, live=False, mode='reverse'): where the sessiontap fixture sends "
          "this test's traffic")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sessiontap", "sessiontap (the `sessiontap` fixture)")
    for name, (metavar, text) in OPTIONS.items():
        flag = f"--sessiontap-{name}"
        if name == "live":
            group.addoption(flag, action="store_true", default=None, help=text)
            parser.addini(f"sessiontap_{name}", text, type="bool", default=False)
        else:
            group.addoption(flag, metavar=metavar, choices=("reverse", "regular") if name == "mode" else None,
                            help=text)
            parser.addini(f"sessiontap_{name}", text, default="")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER)


def _setting(request: pytest.FixtureRequest, name: str) -> tuple[Any, Path | None]:
    """A setting's value and the folder a relative path in it is taken from (marker, command line, ini)."""
    marker = request.node.get_closest_marker("sessiontap")
    if marker is not None and name in marker.kwargs:
        return marker.kwargs[name], request.path.parent
    config = request.config
    value = config.getoption(f"--sessiontap-{name}")
    if value is not None:
        return value, config.invocation_params.dir
    return config.getini(f"sessiontap_{name}") or None, config.rootpath


def _path(request: pytest.FixtureRequest, name: str) -> Path | None:
    value, base = _setting(request, name)
    if not value:
        return None
    path = Path(os.path.expanduser(str(value)))
    return path if path.is_absolute() or base is None else base / path


_NAMED = pytest.StashKey[dict[str, str]]()  # a run's test directories: name -> the node id it was given to


def _directory(config: pytest.Config, nodeid: str) -> str:
    """A test's directory under ``--sessiontap-out``: its node id made a file name, and the same on every run.

    Two node ids that make the same name (``t[a/b]`` and ``t[a:b]``) must not share one: a rerun's
    directory is replaced, so the second gets a short digest of its id.
    """
    named = config.stash.setdefault(_NAMED, {})
    name = re.sub(r"[^\w.-]+", "_", nodeid)[-120:]
    if named.setdefault(name, nodeid) != nodeid:
        name = f"{name[-111:]}-{hashlib.sha1(nodeid.encode()).hexdigest()[:8]}"
        named[name] = nodeid
    return name


@pytest.fixture
def sessiontap(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
               tmp_path: Path) -> Iterator[Tap]:
    """sessiontap in-process in front of this test, the code under test pointed at it; a ``Tap``.

    Call ``sessiontap.assert_continuous()`` after the conversation; ``calls``, ``sessions``
    and ``findings`` hold what went through it so far.
    """
    with warnings.catch_warnings():  # mitmproxy's own deprecated calls into its parsers: not the user's to see
        warnings.simplefilter("ignore", DeprecationWarning)
        from sessiontap.core.errors import SessiontapError
        from sessiontap.probe.tap import Tap, Where

    upstream, _ = _setting(request, "upstream")
    mode, _ = _setting(request, "mode")
    live, _ = _setting(request, "live")
    where = Where(_path(request, "replay"), upstream or None, bool(live), mode or "reverse")
    base = _path(request, "out")
    out = base / _directory(request.config, request.node.nodeid) if base else tmp_path / "sessiontap"
    tap = Tap(out, where, request.node.nodeid, _path(request, "config"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            tap.start()
    except SessiontapError as e:
        pytest.fail(f"sessiontap: {e}", pytrace=False)
    for name, value in list(tap.changes(os.environ)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    try:
        yield tap
    finally:
        try:
            tap.stop()
        except SessiontapError as e:
            pytest.fail(f"sessiontap: {e}", pytrace=False)
        if tap.report is not None:
            request.node.user_properties.append(("sessiontap report", str(tap.report)))

"""HAR export of a capture: mitmproxy's own HAR entries, WebSocket messages included, built from redacted copies."""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mitmproxy import http
from mitmproxy.addons.savehar import SaveHar
from mitmproxy.version import VERSION as MITMPROXY_VERSION
from wsproto.frame_protocol import Opcode

from sessiontap.bridge.adapt import redacted_copy
from sessiontap.core.errors import CaptureError
from sessiontap.core.redact import Redactor
from sessiontap.findings import version

# mitmproxy's SaveHar.make_har already writes HAR 1.2 with each WebSocket flow as an entry
# carrying _resourceType "websocket" and _webSocketMessages (type send/receive, time in epoch
# seconds, opcode 1 text / 2 binary, data as text or base64): the form Chrome DevTools and
# HTTP Toolkit read. sessiontap adds the redaction: each flow is redacted on a copy first (a
# plain mitmdump capture holds API keys and signatures), then every string of the HAR is
# scrubbed again with all the secrets the copies revealed, so a secret first seen in a later
# flow is masked where an earlier flow echoed it too. Binary frames are not searched.


def scrub(value: Any, redactor: Redactor) -> Any:
    """A copy of a JSON value with every string passed through the redactor's text masking."""
    if isinstance(value, str):
        return redactor.text(value)
    if isinstance(value, dict):
        return {k: scrub(v, redactor) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v, redactor) for v in value]
    return value


def is_utf8(data: bytes) -> bool:
    """True when the bytes decode as UTF-8."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def make_har(flows: Sequence[http.HTTPFlow], redactor: Redactor | None = None) -> dict[str, Any]:
    """The HAR 1.2 dict of the flows, secrets removed; WebSocket flows carry `_webSocketMessages`."""
    redactor = redactor or Redactor()
    copies = [redacted_copy(f, redactor) for f in flows]
    for f in copies:
        for m in f.websocket.messages if f.websocket is not None else []:
            if m.is_text and not is_utf8(m.content):  # a hand-made or injected frame: not text after all
                m.type = Opcode.BINARY  # so its exact bytes are exported (base64, opcode 2), not refused
    har: dict[str, Any] = SaveHar().make_har(copies)
    har["log"]["creator"] = {
        "name": "sessiontap",
        "version": version(),
        "comment": f"entries built by mitmproxy {MITMPROXY_VERSION}",
    }
    scrubbed: dict[str, Any] = scrub(har, redactor)
    return scrubbed


def write_har(har: dict[str, Any], path: Path) -> None:
    """Write a HAR dict as JSON (zlib-compressed for a .zhar name); CaptureError when it cannot."""
    data = json.dumps(har, indent=2).encode("ascii")
    if path.suffix == ".zhar":
        data = zlib.compress(data, 9)
    try:
        path.write_bytes(data)
    except OSError as e:
        raise CaptureError(f"{path}: cannot write the HAR file: {e.strerror or e}") from e


def export_har(flows: Sequence[http.HTTPFlow], path: Path, redactor: Redactor | None = None) -> dict[str, Any]:
    """Write the flows' redacted HAR to path and return the HAR dict."""
    har = make_har(flows, redactor)
    write_har(har, Path(path))
    return har

"""Routing: ElevenLabs traffic to the chosen upstream, and signed URLs back through the proxy."""

from __future__ import annotations

import json
import re
from typing import ClassVar
from urllib.parse import urlsplit, urlunsplit

from mitmproxy import ctx, http
from mitmproxy.addonmanager import Loader
from mitmproxy.proxy import mode_specs

from sessiontap.bridge.guard import guarded
from sessiontap.bridge.options import Check, check_updated
from sessiontap.core.protocol import SIGNED_URL_RE, loads

DEFAULT_UPSTREAM = "https://api.elevenlabs.io"
# Every ElevenLabs API host: the default one and the regional and residency ones.
ELEVENLABS_HOSTS = r"^api(\.us|\.(eu|in|sg)\.residency)?\.elevenlabs\.io(:\d+)?$"
ORIGIN_KEY = "sessiontap.client_origin"
MODES = ["regular", "reverse"]


def parse_upstream(value: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an upstream base URL; ValueError with a sentence when it is not one."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// base URL (got {value!r})")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, parts.hostname, port


def ws_origin(http_origin: str) -> str:
    """The WebSocket origin matching an HTTP origin (http→ws, https→wss)."""
    return "ws" + http_origin[4:] if http_origin.startswith("http") else http_origin


SIGNED_URL_TOKEN = re.compile(rb'"signed_url"\s*:\s*("(?:[^"\\]|\\.)*")')


def rewrite_signed_url(body: bytes, origin: str) -> bytes | None:
    """The get-signed-url body with its URL's origin replaced by ``origin``; None if nothing to do.

    Only the URL's own string is replaced: every other byte of the body stays as the server sent it
    (a number past float range would not survive being parsed and written again).
    """
    try:
        obj = loads(body)
    except ValueError:
        return None
    url = obj.get("signed_url") if isinstance(obj, dict) else None
    if not isinstance(url, str):
        return None
    try:
        parts = urlsplit(url)
        new = urlsplit(ws_origin(origin))
    except ValueError:  # not a URL (an unclosed IPv6 bracket): nothing to point at the proxy
        return None
    fixed = urlunsplit((new.scheme, new.netloc, parts.path, parts.query, parts.fragment))
    if fixed == url:
        return None

    def swap(m: re.Match[bytes]) -> bytes:
        try:
            same = json.loads(m.group(1)) == url
        except ValueError:
            same = False
        token = json.dumps(fixed).encode() if same else m.group(1)
        return m.group(0)[: m.start(1) - m.start(0)] + token

    out = SIGNED_URL_TOKEN.sub(swap, body)
    return out if out != body else None


class Router:
    """Sends ElevenLabs traffic to ``sessiontap_upstream`` and keeps signed WebSockets on the proxy."""

    CHECKS: ClassVar[dict[str, Check]] = {"sessiontap_upstream": parse_upstream}

    def __init__(self) -> None:
        self.upstream: tuple[str, str, int] = parse_upstream(DEFAULT_UPSTREAM)
        self.hosts = re.compile(ELEVENLABS_HOSTS)

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "sessiontap_mode", str, "regular",
            "How clients reach the proxy: 'regular' (HTTPS_PROXY and sessiontap's CA, no change to the "
            "client) or 'reverse' (the client's base URL points at the proxy).",
            choices=MODES,
        )
        loader.add_option(
            "sessiontap_upstream", str, DEFAULT_UPSTREAM,
            "Where ElevenLabs traffic goes (the simulator's URL to run offline). In regular mode "
            "requests to any ElevenLabs API host are re-targeted here; in reverse mode pass the "
            "same URL as the reverse target.",
        )

    def configure(self, updated: set[str]) -> None:
        check_updated(self.CHECKS, updated)
        if "sessiontap_upstream" in updated:
            self.upstream = parse_upstream(ctx.options.sessiontap_upstream)

    @guarded
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if not flow.live:
            return
        req = flow.request
        mode = flow.client_conn.proxy_mode
        if isinstance(mode, mode_specs.ReverseMode):
            sock = flow.client_conn.sockname
            scheme = "https" if flow.client_conn.tls_established else "http"
            flow.metadata[ORIGIN_KEY] = f"{scheme}://{sock[0]}:{sock[1]}" if sock else ""
            return
        if not self.hosts.match(req.pretty_host):
            return
        default_port = 443 if req.scheme == "https" else 80
        port = "" if req.port == default_port else f":{req.port}"
        flow.metadata[ORIGIN_KEY] = f"{req.scheme}://{req.pretty_host}{port}"
        scheme, host, port_ = self.upstream
        if (req.scheme, req.host, req.port) != (scheme, host, port_):
            req.scheme, req.host, req.port = scheme, host, port_

    @guarded
    def response(self, flow: http.HTTPFlow) -> None:
        if not flow.live or flow.response is None or flow.response.status_code != 200:
            return
        origin = flow.metadata.get(ORIGIN_KEY)
        if not origin or not SIGNED_URL_RE.search(flow.request.path.split("?", 1)[0]):
            return
        body = rewrite_signed_url(flow.response.get_content(strict=False) or b"", origin)
        if body is not None:
            flow.response.content = body

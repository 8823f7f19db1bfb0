"""Where the proxy listens and who may use it: loopback by default; beyond it only on purpose, with proxy auth.

A recording proxy carries the user's API key and conversations. mitmproxy on its own listens on
every interface; sessiontap listens on ``sessiontap_listen_host`` (127.0.0.1) unless mitmproxy's
``listen_host`` names an address, and an address beyond this machine needs
``sessiontap_expose``, which turns on proxy authentication (regular mode only: in reverse mode
clients have no standard way to authenticate to a proxy). A refused address is replaced by the
loopback one and logged as an error, which also stops mitmdump and mitmweb at startup (their
errorcheck). mitmproxy binds before it loads a script, so without ``--listen-host`` mitmdump
listens everywhere for the instant until sessiontap is loaded and rebinds it: pass
``--listen-host 127.0.0.1``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
from typing import Any, ClassVar

from mitmproxy import ctx
from mitmproxy.addonmanager import Loader
from mitmproxy.proxy import mode_specs

from sessiontap.bridge.options import Check, check_updated

log = logging.getLogger("sessiontap")

LOOPBACK = "127.0.0.1"
AUTH_USER = "sessiontap"
WILDCARDS = frozenset({"", "0.0.0.0", "::"})


def check_port(value: int) -> None:
    """Raise ValueError unless the value is a port number (0 picks a free one)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ValueError(f"must be a port number 0-65535 (got {value!r})")


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` keeps the proxy on this machine ("" and 0.0.0.0 do not)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def exposure_problem(host: str, expose: bool, reverse: bool) -> str | None:
    """Why listening on ``host`` is refused, or None when it is allowed."""
    where = "every interface" if host in WILDCARDS else host
    if not expose and not is_loopback(host):
        return (f"listening on {where} would let other machines use this proxy (and see the API key it "
                "carries); set sessiontap_expose (record --expose) to do it on purpose: it turns on proxy "
                "authentication")
    if expose and reverse:
        return "sessiontap_expose needs regular mode: in reverse mode clients cannot authenticate to the proxy"
    return None


def client_host(host: str) -> str:
    """The address a client on this machine uses to reach a proxy listening on ``host``."""
    return LOOPBACK if host in WILDCARDS else host


def proxy_url(host: str, port: int, auth: str | None = None) -> str:
    """The HTTP proxy URL for clients, with the credentials when the proxy needs them."""
    host = client_host(host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{auth + '@' if auth else ''}{host}:{port}"


class Exposure:
    """Keeps the proxy on loopback unless exposed on purpose, and guards an exposed proxy with a password."""

    CHECKS: ClassVar[dict[str, Check]] = {"sessiontap_listen_port": check_port}

    def __init__(self) -> None:
        self.credentials: str | None = None  # user:password clients need, when sessiontap turned auth on
        self.restart: asyncio.Future[None] | None = None  # the listeners' move to loopback, under mitmdump

    def load(self, loader: Loader) -> None:
        loader.add_option("sessiontap_listen_host", str, LOOPBACK,
                          "Address the proxy listens on, unless mitmproxy's listen_host names one.")
        loader.add_option("sessiontap_listen_port", int, 0, "Port the proxy listens on (0: a free port).")
        loader.add_option("sessiontap_expose", bool, False,
                          "Allow listening beyond this machine; turns on proxy authentication (regular mode).")

    def configure(self, updated: set[str]) -> None:
        check_updated(self.CHECKS, updated)
        if not updated & {"listen_host", "sessiontap_listen_host", "sessiontap_expose", "mode", "proxyauth"}:
            return
        opts = ctx.options
        host = opts.listen_host or opts.sessiontap_listen_host  # mitmproxy's "" (everywhere) is not a choice
        reverse = any(str(m).startswith("reverse") for m in opts.mode)
        problem = exposure_problem(host, opts.sessiontap_expose, reverse)
        if problem:
            log.error("sessiontap: %s; listening on %s instead", problem, LOOPBACK)
            host = LOOPBACK
        if opts.listen_host != host:
            self._rebind(host)
        if opts.sessiontap_expose and not problem and not opts.proxyauth:
            self.credentials = f"{AUTH_USER}:{secrets.token_urlsafe(12)}"
            opts.update(proxyauth=self.credentials)
            log.warning("sessiontap: exposed on %s: clients must authenticate as %s (HTTPS_PROXY=%s)",
                        host, self.credentials, proxy_url(host, opts.listen_port or 8080, self.credentials))

    def _rebind(self, host: str) -> None:
        """Listen on ``host``; mitmdump loads scripts once its servers are up, so restart them on the new address."""
        ctx.options.update(listen_host=host)
        server = ctx.master.addons.get("proxyserver")
        if server is None or not ctx.options.server:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # not started: the servers will bind the new address
        self.restart = asyncio.ensure_future(_restart(server.servers))


async def _restart(servers: Any) -> None:
    """Stop every listener and start them again (after any setup under way: updates take turns)."""
    modes = [mode_specs.ProxyMode.parse(m) for m in ctx.options.mode]
    await servers.update([])
    await servers.update(modes)

"""Where a command that sends conversations itself may send them: the simulator, this machine, or the real API."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping

from sessiontap.core.errors import SessiontapError
from sessiontap.router import DEFAULT_UPSTREAM, parse_upstream

PLACEHOLDER_KEY = "sk_sessiontap_placeholder"  # ELEVENLABS_API_KEY for the simulator or a replay when none is set


def placeholder_key(live: bool, environ: Mapping[str, str]) -> dict[str, str]:
    """What a client's environment needs added for its key: a placeholder unless live or the user set one."""
    return {} if live or environ.get("ELEVENLABS_API_KEY") else {"ELEVENLABS_API_KEY": PLACEHOLDER_KEY}


class TargetError(SessiontapError, ValueError):
    """A command may not send where it was asked to (checked before anything is sent)."""


def is_local(url: str) -> bool:
    """True when a base URL names this machine (localhost or a loopback address); ValueError when not a URL."""
    _, host, _ = parse_upstream(url)
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def send_target(to_url: str | None, live: bool, sending: str, environ: Mapping[str, str] | None = None,
                flags: tuple[str, str] = ("--to", "--live")) -> str | None:
    """The upstream to send ``sending`` to (None: the built-in simulator); TargetError before anything is sent.

    The policy: a server on this machine needs nothing; another host, or the real API
    (``https://api.elevenlabs.io`` when ``live`` names no other), needs ``live`` and
    ``ELEVENLABS_API_KEY`` in the environment. ``flags`` name the two settings in the errors.
    """
    to_flag, live_flag = flags
    env = os.environ if environ is None else environ
    if live and not env.get("ELEVENLABS_API_KEY"):
        raise TargetError(f"{live_flag} sends {sending} to the real ElevenLabs API and needs ELEVENLABS_API_KEY in "
                          "the environment")
    if to_url is None:
        return DEFAULT_UPSTREAM if live else None
    try:
        local = is_local(to_url)
    except ValueError as e:
        raise TargetError(f"{to_flag}: {e}") from e
    if not live and not local:
        raise TargetError(f"{to_flag} {to_url} is not on this machine; add {live_flag} to send {sending} there "
                          "(with ELEVENLABS_API_KEY)")
    return to_url

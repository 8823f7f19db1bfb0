"""The addon chain in order; load it with ``mitmdump -s addons/sessiontap.py`` or ``mitmweb -s``.

Usage: ``mitmdump -s addons/sessiontap.py --mode reverse:https://api.elevenlabs.io
--set connection_strategy=lazy --set sessiontap_out=out``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def _importable() -> bool:
    try:
        return importlib.util.find_spec("addons.router") is not None
    except ModuleNotFoundError:
        return False


if not _importable():  # loaded as a plain script from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from addons.audio import AudioSummary  # noqa: E402
from addons.findings import Findings  # noqa: E402
from addons.journal import Journal  # noqa: E402
from addons.router import Router  # noqa: E402
from addons.tagger import SessionTagger  # noqa: E402


def chain() -> list[object]:
    """Fresh instances of sessiontap's addons in hook order (routing, tagging, audio, findings, journal)."""
    return [Router(), SessionTagger(), AudioSummary(), Findings(), Journal()]


addons = chain()

"""The addon chain in order; load it with ``mitmdump -s addons/sessiontap.py`` or ``mitmweb -s``.

Usage, from a synced checkout: ``mitmdump -s addons/sessiontap.py --mode reverse:https://api.elevenlabs.io
--set connection_strategy=lazy --set sessiontap_out=out``; from an installed package:
``mitmdump -s "$(sessiontap addon-path)" ...``.

The addons are wired here, by reference: the tagger hands each decoded call, note and socket
end to the findings and then to the journal; the findings write their findings to the journal; the
scrubber masks secrets in the live flows with what the journal's redactor has learned.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

# mitmproxy puts a script's folder first on sys.path (and leaves it there). This folder is the
# `sessiontap` package itself, so its modules would shadow the package (and other packages named
# like its subfolders): take it off again before importing anything of ours.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

try:
    from sessiontap.audio import AudioSummary
    from sessiontap.bridge.backlog import Backlog
    from sessiontap.endings import AbnormalEndings
    from sessiontap.exposure import Exposure
    from sessiontap.findings import Findings
    from sessiontap.journal import Journal
    from sessiontap.router import Router
    from sessiontap.scrub import Scrubber
    from sessiontap.streaming import StreamedReplies
    from sessiontap.tagger import SessionTagger

    if TYPE_CHECKING:
        from sessiontap.core.analysis import Analysis
except ModuleNotFoundError as e:  # pragma: no cover - only without an install
    raise ImportError(
        f"sessiontap is not installed in this Python ({sys.executable}): run `uv sync` in the checkout, "
        "or `pip install sessiontap`, then load the chain again"
    ) from e


class Chain:
    """sessiontap's addons, wired to each other, in the order mitmproxy must call them (one addon, nine nested)."""

    def __init__(self) -> None:
        self.exposure = Exposure()
        self.router = Router()
        self.streaming = StreamedReplies()  # before the tagger: it hands the tagger whole bodies
        self.backlog = Backlog()  # one queue, so that deferred work keeps the order of the hooks
        self.journal = Journal(self.backlog)
        self.findings = Findings(self.journal, self.journal.redactor, self.backlog)
        self.tagger = SessionTagger(listeners=[self.findings, self.journal])
        self.tagger.prework.append(self.journal.redactor.may_hold_secret)  # a big body checked in its worker
        self.audio = AudioSummary()
        self.endings = AbnormalEndings()  # after the journal, which records the upstream's own error
        self.scrubber = Scrubber(self.journal.redactor, self.backlog)  # last: the others see flows as sent

        # In hook order: exposure, routing, streaming, tagging, audio, findings, journal, endings, scrubbing;
        # all of them before mitmproxy's own (its dumper and its save see what the scrubber left).
        # mitmproxy calls nested addons through their parent: one dispatch per hook for the nine.
        self.addons: list[object] = [self.exposure, self.router, self.streaming, self.tagger, self.audio,
                                     self.findings, self.journal, self.endings, self.scrubber]

    async def settled(self) -> Analysis:
        """On the proxy's loop: the analysis so far, once the deferred work queued until now has run.

        What a client that has its reply may ask at once (its call judged; a finished flow in flows.mitm):
        for a test that asserts right after its last call. The backlog runs in its own turn (its work masks
        flows that have been sent, so it is never run early); this waits for that turn, not for traffic
        queued after it. The analysis is a copy: the proxy goes on with its own.
        """
        import copy

        await self.backlog.caught_up()
        self.journal.settle()
        return copy.deepcopy(self.findings.analyzer).result()


def chain() -> Chain:
    """A fresh, wired chain of sessiontap's addons."""
    return Chain()


addons = [chain()]

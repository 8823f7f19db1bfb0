"""A probe: each scenario over each protocol, recorded through sessiontap into a directory of its own, then checked.

Each run is one recording (the in-process runner, as ``record -- CMD``): the client (a
sample client in line mode, or the user's ``--client``) is started under the proxy and
spoken to through the line contract (``lines.py``), the recording is analysed, and the
scenario's checks (``checks.py``) judge that analysis. Runs are analysed apart, so one
scenario's traffic never joins another's sessions.

When simulate-conversation answers 404 or 410 (ElevenLabs announced its removal for
2026-10-31), the probe says so once, skips the HTTP runs left and goes on with the WebSocket
ones.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sessiontap.app.target import placeholder_key
from sessiontap.core.analysis import Analysis
from sessiontap.core.errors import SessiontapError
from sessiontap.core.model import HTTP, WEBSOCKET
from sessiontap.core.settings import Settings
from sessiontap.probe.checks import Outcome, Played, judge
from sessiontap.probe.lines import LineClient
from sessiontap.probe.scenarios import Scenario

PROTOCOLS = (HTTP, WEBSOCKET)
SAMPLE_SUFFIX = {HTTP: "http", WEBSOCKET: "ws"}  # sample kinds are fixed-http, faulty-ws, ...
AS_SPOKEN = "client"  # the column of a --client run that was not asked for a protocol
PROBE_FILE = "probe.json"
REMOVED_STATUSES = (404, 410)
SCENARIO_VAR, PROTOCOL_VAR = "SESSIONTAP_PROBE_SCENARIO", "SESSIONTAP_PROBE_PROTOCOL"
REPLACEMENTS = ("the WebSocket text-only conversation (/v1/convai/conversation) and the agent-testing API "
                "(/v1/convai/agent-testing/create, then /v1/convai/agents/{agent_id}/run-tests)")


class ProbeError(SessiontapError):
    """The probe cannot go on: the client broke the line contract, or the recording failed."""


@dataclass(frozen=True, slots=True)
class Probe:
    """What to probe, through what, and where to write: the command line, parsed."""

    scenarios: tuple[Scenario, ...]
    protocols: tuple[str | None, ...]  # None: whatever the --client speaks
    upstream: str
    out: Path
    settings: dict[str, Any] = field(default_factory=dict)  # sessiontap_* values (mitm.yaml, flags)
    client: tuple[str, ...] = ()  # the user's command; empty: the sample clients
    sample: str = "fixed"
    timeout: float = 30.0
    live: bool = False  # the real API: the client's own ELEVENLABS_API_KEY, never a placeholder

    def command(self, protocol: str | None) -> list[str]:
        """The client command of one run: the user's, or the sample client of that protocol in line mode."""
        if self.client:
            return list(self.client)
        kind = f"{self.sample}-{SAMPLE_SUFFIX[protocol or HTTP]}"
        return [sys.executable, "-m", "sessiontap.samples", kind, "--stdin"]


@dataclass(slots=True)
class RunResult:
    """One scenario over one protocol: where it was written, and each check's outcome.

    ``gone`` is the status simulate-conversation answered when it is removed (404/410); the
    outcomes of such a run, and of the HTTP runs skipped after it, say so, and count as not run
    (see ``probe_passed``).
    """

    scenario: str
    protocol: str
    out: Path
    outcomes: list[Outcome]
    verdict: str = ""
    gone: int | None = None
    seconds: float = 0.0
    stopped: str = ""  # why the run could not be judged: the probe stopped there

    @property
    def passed(self) -> bool:
        """True when every check passed."""
        return all(o.passed for o in self.outcomes)

    @property
    def judged(self) -> bool:
        """True when its checks were judged: it was neither skipped as gone nor stopped."""
        return self.gone is None and not self.stopped

    def to_json(self) -> dict[str, Any]:
        """The run as probe.json holds it."""
        return {"scenario": self.scenario, "protocol": self.protocol, "out": str(self.out), "passed": self.passed,
                "gone": self.gone, "stopped": self.stopped or None, "verdict": self.verdict,
                "checks": [{"check": o.check, "passed": o.passed, "reason": o.reason} for o in self.outcomes]}


def removed_status(analysis: Analysis) -> int | None:
    """The status (404, 410) the run's first simulate-conversation call got as an upstream error, or None.

    A removed endpoint refuses the first call already; a 404 later in a conversation is an upstream
    failure of that conversation, judged as such.
    """
    first = next((c.id for c in analysis.calls if c.protocol == HTTP and c.endpoint.startswith("simulate")), None)
    for f in analysis.findings:
        status = f.evidence.get("status")
        if f.rule == "upstream-error" and status in REMOVED_STATUSES and first in f.call_ids:
            return int(status)
    return None


def gone_line(status: int, websocket_next: bool) -> str:
    """The one line said when simulate-conversation is gone, naming what replaces it."""
    then = ("the HTTP runs are skipped; the WebSocket half runs" if websocket_next else
            "the HTTP runs are skipped (probe the WebSocket half with --protocol websocket)")
    unsure = " (a 404 can also be a wrong path or agent id: the WebSocket half, to the same agent, tells)" \
        if status == 404 else ""
    return (f"simulate-conversation answered HTTP {status}: it is gone (ElevenLabs announced its removal for "
            f"2026-10-31){unsure}; its replacements are {REPLACEMENTS}; {then}")


def spoken(analysis: Analysis) -> list[str]:
    """The protocols of the calls recorded, in the order first seen."""
    return list(dict.fromkeys(c.protocol for c in analysis.calls))


def play(probe: Probe, scenario: Scenario, protocol: str | None, say: Callable[[str], None]) -> RunResult:
    """Record one scenario over one protocol through sessiontap, write its report, and check it."""
    from sessiontap.app.capture import write_report
    from sessiontap.app.runner import fresh_out, run_record

    out = probe.out / f"{scenario.name}-{protocol or AS_SPOKEN}"
    fresh_out(out)  # a probe run again into the same --out is judged alone
    settings = {**probe.settings, "sessiontap_upstream": probe.upstream, "sessiontap_out": str(out)}
    client = LineClient(scenario.lines, probe.timeout)
    env = {SCENARIO_VAR: scenario.name, **({PROTOCOL_VAR: protocol} if protocol else {}),
           **placeholder_key(probe.live, os.environ)}  # the simulator wants a key; a client may insist on one too
    began = time.monotonic()
    result = run_record(settings, probe.command(protocol), announce=say, drive=client, extra_env=env)
    if result.journal_error or result.analysis is None:
        raise ProbeError(f"{scenario.name} over {protocol or AS_SPOKEN}: the recording failed: "
                         f"{result.journal_error or 'no analysis'}")
    analysis_settings = Settings.from_options(settings)
    write_report(result.analysis, out, out, analysis_settings, redactor=result.redactor)
    mask = result.redactor.text if result.redactor is not None else str
    run = judged(scenario, protocol, out, result.analysis, client, analysis_settings.max_context_tokens, mask)
    run.seconds = time.monotonic() - began
    if client.note:
        say(f"sessiontap: note: {client.note}")
    return run


def judged(scenario: Scenario, protocol: str | None, out: Path, analysis: Analysis, client: LineClient,
           max_context_tokens: int, mask: Callable[[str], str] = str) -> RunResult:
    """A played run's outcomes, from its analysis and what the client did; ProbeError when it cannot be judged.

    ``mask`` takes the secrets the recording saw out of every text the run's result keeps.
    """
    label = protocol or AS_SPOKEN
    # A client left to pick its protocol that went on over the WebSocket is judged on what it did there.
    gone = removed_status(analysis) if protocol == HTTP or (protocol is None and WEBSOCKET not in spoken(analysis)) \
        else None
    if gone is not None:
        reason = f"simulate-conversation answered HTTP {gone}: the endpoint is gone"
        return RunResult(scenario.name, label, out, all_failed(scenario, reason), mask(analysis.verdict()), gone)
    if client.failure is not None:
        raise ProbeError(f"{scenario.name} over {label}: {mask(client.failure)} (recorded so far: {out})")
    if len(client.replies) < len(scenario.lines):  # a signal, or the proxy ended, before the last reply
        raise ProbeError(f"{scenario.name} over {label}: interrupted after {len(client.replies)} of "
                         f"{len(scenario.lines)} replies (recorded so far: {out})")
    seen = spoken(analysis)
    if protocol is not None and seen and protocol not in seen:
        raise ProbeError(f"{scenario.name}: asked for {protocol}, the client spoke {' and '.join(seen)}; give "
                         f"--protocol {seen[0]}, or have the client read {PROTOCOL_VAR}")
    outcomes = [Outcome(o.check, o.passed, mask(o.reason))
                for o in judge(Played(scenario, analysis, max_context_tokens))]
    return RunResult(scenario.name, protocol or "+".join(seen) or AS_SPOKEN, out, outcomes, mask(analysis.verdict()))


def all_failed(scenario: Scenario, reason: str) -> list[Outcome]:
    """Every check of a run that was not judged, failed for one reason."""
    return [Outcome(c, False, reason) for c in scenario.checks]


def skipped(scenario: Scenario, probe: Probe, status: int) -> RunResult:
    """An HTTP run not played: simulate-conversation is gone."""
    reason = f"not run: simulate-conversation answered HTTP {status} (gone)"
    return RunResult(scenario.name, HTTP, probe.out / f"{scenario.name}-{HTTP}", all_failed(scenario, reason),
                     gone=status)


def broken(scenario: Scenario, probe: Probe, protocol: str | None, why: str) -> RunResult:
    """A run that could not be judged (the client broke the contract, the recording failed): every check fails."""
    label = protocol or AS_SPOKEN
    return RunResult(scenario.name, label, probe.out / f"{scenario.name}-{label}", all_failed(scenario, why),
                     stopped=why)


def run_probe(probe: Probe, say: Callable[[str], None]) -> list[RunResult]:
    """Play every scenario over every protocol (the HTTP ones first), say how each went, write probe.json.

    A run that cannot be judged stops the probe: it is the last of the runs returned (``stopped``), and
    the runs before it are kept.
    """
    from sessiontap.app.runner import check_upstream

    if not probe.live:
        check_upstream(probe.upstream)  # down before anything ran: the probe's one error, nothing written
    runs: list[RunResult] = []
    try:
        _play_all(probe, say, runs)
    finally:
        if runs:
            write_probe_json(runs, probe.out)
    return runs


def _play_all(probe: Probe, say: Callable[[str], None], runs: list[RunResult]) -> None:
    gone: int | None = None
    for protocol in probe.protocols:
        for scenario in probe.scenarios:
            if gone is not None and protocol == HTTP:
                runs.append(skipped(scenario, probe, gone))
                continue
            try:
                run = play(probe, scenario, protocol, say)
            except SessiontapError as e:  # the client broke the contract, or could not start; the recording failed
                runs.append(broken(scenario, probe, protocol, str(e)))
                return
            runs.append(run)
            passed = sum(o.passed for o in run.outcomes)
            how = (f"not run (HTTP {run.gone}: the endpoint is gone)" if run.gone is not None else
                   f"{passed} of {len(run.outcomes)} checks passed")
            say(f"sessiontap: {scenario.name} over {run.protocol}: {how} ({len(scenario.lines)} messages, "
                f"{run.seconds:.1f} s)")
            if run.gone is not None and gone is None:
                gone = run.gone
                say("sessiontap: " + gone_line(gone, WEBSOCKET in probe.protocols))


def probe_passed(runs: Sequence[RunResult]) -> bool:
    """The probe's verdict: every run played passed, and one was played.

    The HTTP half of a removed simulate-conversation is not run, so it neither passes nor fails the
    probe; a probe left with nothing to check (``--protocol http`` alone) fails.
    """
    played = [r for r in runs if r.gone is None]
    return bool(played) and all(r.passed for r in played)


def write_probe_json(runs: Sequence[RunResult], out: Path) -> Path:
    """Write probe.json (every run, every check) into ``out``; return its path."""
    from sessiontap.findings import version

    out.mkdir(parents=True, exist_ok=True)
    path = out / PROBE_FILE
    doc = {"sessiontap": version(), "passed": probe_passed(runs), "runs": [r.to_json() for r in runs]}
    path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def table(runs: Sequence[RunResult], scenarios: Sequence[Scenario]) -> list[str]:
    """The pass/fail table: per scenario, a row per check and a column per protocol, then why each failure failed."""
    lines: list[str] = []
    for scenario in scenarios:
        mine = [r for r in runs if r.scenario == scenario.name]
        if not mine:
            continue
        width = max(len(c) for c in ("check", *scenario.checks))
        heads = [r.protocol for r in mine]
        lines.append(f"{scenario.name}: {scenario.case}")
        lines.append("  " + "  ".join(["check".ljust(width), *(h.ljust(max(len(h), 4)) for h in heads)]).rstrip())
        for check in scenario.checks:
            cells = [_cell(r, check).ljust(max(len(r.protocol), 4)) for r in mine]
            lines.append("  " + "  ".join([check.ljust(width), *cells]).rstrip())
        for r in mine:
            if not r.judged:  # one reason for every check
                lines.append(f"    {r.protocol}: {r.outcomes[0].reason}" if r.outcomes else "")
                continue
            lines += [f"    {r.protocol} {o.check}: {o.reason}" for o in r.outcomes if not o.passed]
        lines.append("")
    judged = [o for r in runs if r.judged for o in r.outcomes]
    failed = sum(not o.passed for o in judged)
    parts = [f"{len(judged) - failed} of {len(judged)} checks passed" + (f", {failed} failed" if failed else "")
             if judged else "no check ran"]
    if gone := sorted({r.gone for r in runs if r.gone is not None}):
        not_run = sum(len(r.outcomes) for r in runs if r.gone is not None)
        parts.append(f"{not_run} not run (simulate-conversation is gone: HTTP {'/'.join(map(str, gone))})")
    if stopped := next((r for r in runs if r.stopped), None):
        parts.append(f"stopped at {stopped.scenario} over {stopped.protocol}: its {len(stopped.outcomes)} checks "
                     "not judged")
    lines.append("; ".join(parts))
    return lines


def _cell(run: RunResult, check: str) -> str:
    outcome = next((o for o in run.outcomes if o.check == check), None)
    if outcome is None:
        return "-"
    if outcome.passed:
        return "pass"
    return "gone" if run.gone is not None else "FAIL"

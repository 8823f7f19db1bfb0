"""Command line entry point: the `sessiontap` verbs. Each parses its flags and calls the module that owns the work."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from sessiontap.app.capture import default_out
from sessiontap.app.config import analysis_settings, settings_from
from sessiontap.core.errors import SessiontapError
from sessiontap.core.redact import Redactor
from sessiontap.probe.scenarios import DEFAULT_TURNS, MAX_TURNS, MIN_TURNS
from sessiontap.probe.scenarios import NAMES as SCENARIO_NAMES
from sessiontap.probe.scenarios import SAMPLES as PROBE_SAMPLES

if TYPE_CHECKING:
    from sessiontap.app.capture import Capture
    from sessiontap.app.runner import RecordResult
    from sessiontap.core.analysis import Analysis
    from sessiontap.core.settings import Settings

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


def say(text: str) -> None:
    """Print one progress or result line to stderr."""
    click.echo(text, err=True)


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(package_name="sessiontap")
def main() -> None:
    """sessiontap: see whether an agent conversation really continues.

    Record a client's ElevenLabs traffic through a proxy, tag every call with its session,
    and find where the conversation silently starts over.
    """


@main.command(
    context_settings={**CONTEXT_SETTINGS, "ignore_unknown_options": True},
    epilog="\b\nExample:\n  sessiontap record --out out -- python my_client.py",
)
@click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Settings file (default: ./mitm.yaml when present). Flags override it.")
@click.option("--mode", type=click.Choice(["regular", "reverse"]),
              help="regular: the client gets HTTPS_PROXY and sessiontap's CA [default]; "
                   "reverse: the client gets ELEVENLABS_BASE_URL pointing at the proxy.")
@click.option("--upstream", metavar="URL",
              help="Where ElevenLabs traffic goes [default: https://api.elevenlabs.io].")
@click.option("--listen-host", metavar="HOST", help="Address to listen on [default: 127.0.0.1].")
@click.option("--listen-port", type=int, metavar="PORT", help="Port to listen on [default: a free port].")
@click.option("--expose", is_flag=True, default=None,
              help="Allow a --listen-host beyond this machine; turns on proxy authentication (regular mode).")
@click.option("--out", metavar="DIR", help="Output directory [default: sessiontap-out/<time>].")
@click.option("--no-code-trace", is_flag=True,
              help="Do not note where in the client's code (Python, Node) each connection and request came from.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def record(config: Path | None, mode: str | None, upstream: str | None, listen_host: str | None,
           listen_port: int | None, expose: bool | None, out: str | None, no_code_trace: bool,
           command: tuple[str, ...]) -> None:
    """Record a client's ElevenLabs traffic, tagged by session.

    With a command after `--`, run it with the proxy already set in its environment, stop
    when it exits and exit with its exit code. Without one, print how to point a client at
    the proxy and record until Ctrl-C.
    """
    from sessiontap.app.runner import run_record

    try:
        settings = settings_from(config, {
            "sessiontap_mode": mode, "sessiontap_upstream": upstream,
            "sessiontap_listen_host": listen_host, "sessiontap_listen_port": listen_port,
            "sessiontap_expose": expose, "sessiontap_out": out,
        })
        settings.setdefault("sessiontap_out", str(default_out()))
        result = run_record(settings, list(command), announce=say, code_trace=not no_code_trace)
    except SessiontapError as e:
        raise click.ClickException(str(e)) from e
    _finish(result, settings)


@main.command(context_settings=CONTEXT_SETTINGS,
              epilog="\b\nExample:\n  sessiontap simulate --port 8089")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=0, type=int, help="Port to listen on [default: a free port].")
@click.option("--api-key", metavar="KEY", help="Accept only this xi-api-key (default: any non-empty key).")
@click.option("--latency", type=float, default=0.0, help="Seconds to wait before each answer.")
@click.option("--fail-status", type=int, help="Answer every HTTP request with this status.")
@click.option("--ws-close-code", type=int, help="Close sockets with this code (1006: abort) after each user message.")
@click.option("--history-echo", is_flag=True,
              help="Answer simulate-conversation with the history sent followed by the new turns.")
@click.option("--stream-framing", type=click.Choice(["ndjson", "sse"]), default="ndjson", show_default=True,
              help="How simulate-conversation/stream frames its turns.")
@click.option("--simulate-removed", type=click.Choice(["404", "410"]),
              help="Answer simulate-conversation (and /stream) with this status, as once the endpoint is removed "
                   "(announced for 2026-10-31).")
def simulate(host: str, port: int, api_key: str | None, latency: float, fail_status: int | None,
             ws_close_code: int | None, history_echo: bool, stream_framing: str, simulate_removed: str | None) -> None:
    """Run the built-in ElevenLabs simulator (HTTP and WebSocket) on loopback.

    It serves the ElevenLabs conversational endpoints with a deterministic customs
    classification agent that remembers only what the protocol carries.
    """
    from sessiontap.simulator.server import Faults, serve

    faults = Faults(latency=latency, status=fail_status, ws_close_code=ws_close_code)
    try:
        serve(host, port, api_key=api_key, faults=faults, history_echo=history_echo, stream_framing=stream_framing,
              simulate_removed=int(simulate_removed) if simulate_removed else None)
    except OSError as e:
        raise click.ClickException(f"cannot listen on {host}:{port}: {e.strerror or e}") from e


@main.command(context_settings=CONTEXT_SETTINGS, epilog="\b\nExample:\n  sessiontap demo --out demo-out")
@click.option("--out", metavar="DIR", help="Output directory [default: sessiontap-out/demo-<time>].")
@click.option("--mode", type=click.Choice(["regular", "reverse"]), default="regular", show_default=True,
              help="How the sample clients reach the proxy.")
def demo(out: str | None, mode: str) -> None:
    """Record the four sample clients against the built-in simulator.

    Starts the ElevenLabs simulator on loopback, runs the faulty and the fixed
    ProperDurinClient replicas (HTTP and WebSocket) through the proxy, and prints what
    was recorded. Needs no account and no network.
    """
    import os

    import sessiontap.samples
    from sessiontap.app.runner import run_record
    from sessiontap.simulator.server import running_simulator

    # the sample clients stand for the user's own code in the code trace, installed or not
    os.environ["SESSIONTAP_CODE_TRACE_USER"] = str(Path(sessiontap.samples.__file__).parent)
    with running_simulator() as sim:
        say(f"sessiontap: simulator on {sim.url}")
        settings = {"sessiontap_mode": mode, "sessiontap_upstream": sim.url,
                    "sessiontap_out": out or str(default_out("demo"))}
        try:
            result = run_record(settings, [sys.executable, "-m", "sessiontap.samples", "all"], announce=say)
        except SessiontapError as e:
            raise click.ClickException(str(e)) from e
    _finish(result, settings)


@main.command("addon-path", context_settings=CONTEXT_SETTINGS,
              epilog='\b\nExample:\n  mitmdump -s "$(sessiontap addon-path)" --set sessiontap_out=out')
def addon_path() -> None:
    """Print the path of the addon chain script, to load into mitmdump or mitmweb with -s."""
    import sessiontap.sessiontap as chain_script

    click.echo(chain_script.__file__)


def _write_report(analysis: Analysis, capture: Path, out: Path, settings: Settings,
                  only_session: str | None = None, cap: Capture | None = None,
                  redactor: Redactor | None = None) -> None:
    """Write report.html and print where."""
    from sessiontap.app.capture import write_report

    path = write_report(analysis, capture, out, settings, only_session, cap, redactor)
    say(f"sessiontap: report written to {path}")
    say(f"sessiontap: open {path.resolve().as_uri()}")


REPORT_NOTICE_CALLS = 2000  # from this many calls on, say that report.html is being written: it takes a while


def report_notice(calls: int) -> str | None:
    """What to print before writing a long run's report.html (None for a short one)."""
    if calls < REPORT_NOTICE_CALLS:
        return None
    return (f"sessiontap: writing report.html for {calls:,} calls (flows.mitm is read again: "
            "about 4 s per 10,000 calls on 2 CPUs)")


def _finish(result: RecordResult, settings: dict[str, Any]) -> None:
    """Write the report, print the end-of-run summary and exit with the run's code."""
    from sessiontap.core.settings import Settings

    say(f"sessiontap: {result.verdict}")
    say(f"sessiontap: written to {result.out}")
    if result.analysis is not None and result.out:
        notice = report_notice(len(result.analysis.calls))
        if notice:
            say(notice)
        try:
            _write_report(result.analysis, Path(result.out), Path(result.out), Settings.from_options(settings),
                          redactor=result.redactor)
        except (SessiontapError, OSError) as e:
            say(f"sessiontap: error: could not write the report: {e}")
            result.exit_code = result.exit_code or 1
    if result.journal_error:
        say(f"sessiontap: error: {result.journal_error}")
        raise SystemExit(result.exit_code or 1)
    raise SystemExit(result.exit_code)


def _analyse(capture: Path, config: Path | None) -> tuple[Analysis, Capture, Settings]:
    """Read and analyse a capture with mitm.yaml's settings; a torn tail is a warning on stderr."""
    from sessiontap.app.capture import analyse_capture

    settings = analysis_settings(config)
    analysis, cap = analyse_capture(capture, settings)
    if cap.warning:
        say(f"sessiontap: warning: {cap.warning}")
    return analysis, cap, settings


CAPTURE_ARG = click.argument("capture", type=click.Path(exists=True, path_type=Path))
CONFIG_OPT = click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                          help="Settings file (default: ./mitm.yaml when present).")


@main.command(context_settings=CONTEXT_SETTINGS,
              epilog="\b\nExit codes:\n  0  no error finding\n  1  an error finding exists\n"
                     "  2  usage error, or the capture cannot be read\n\b\nExample:\n"
                     "  sessiontap check sessiontap-out/demo/flows.mitm")
@CAPTURE_ARG
@CONFIG_OPT
def check(capture: Path, config: Path | None) -> None:
    """Analyse a capture and exit 1 when it has an error finding (a CI gate).

    CAPTURE is a flow file (flows.mitm, or any mitmdump capture) or a record output directory.
    """
    from sessiontap.app.capture import redacted_records

    try:
        analysis, cap, _ = _analyse(capture, config)
        redactor = Redactor()
        redacted_records(cap.records, redactor)  # learns the capture's secrets, to mask any a message quotes
    except SessiontapError as e:
        click.echo(f"Error: {e}", err=True)
        raise SystemExit(2) from e
    except Exception as e:  # noqa: BLE001 - exit 2 ("could not analyse") with one line, never a traceback or a 1
        click.echo(f"Error: could not analyse {capture}: {type(e).__name__}: {e}", err=True)
        raise SystemExit(2) from e
    click.echo(analysis.verdict())
    for f in analysis.findings:
        if f.severity == "error":
            click.echo(redactor.text(f"  {f.severity}: [{f.rule}] {f.session}: {f.message}"))
    raise SystemExit(analysis.check_code)


@main.command(context_settings=CONTEXT_SETTINGS,
              epilog="\b\nExample:\n  sessiontap report old.mitm --out old-report")
@CAPTURE_ARG
@CONFIG_OPT
@click.option("--out", metavar="DIR", help="Output directory [default: the capture's directory].")
@click.option("--session", "only_session", metavar="ID",
              help="Show only this session in report.html, in full (for captures too big to show whole).")
def report(capture: Path, config: Path | None, out: str | None, only_session: str | None) -> None:
    """Re-analyse a capture and write findings.json and report.html for it.

    CAPTURE is a flow file (flows.mitm, or any mitmdump capture) or a record output directory.
    """
    from sessiontap.findings import write_findings

    target = Path(out) if out else (capture if capture.is_dir() else capture.parent)
    try:
        analysis, cap, settings = _analyse(capture, config)
        if only_session is not None and only_session not in {s.id for s in analysis.sessions}:
            known = ", ".join(s.id for s in analysis.sessions[:10]) or "none"
            raise click.BadParameter(f"no session {only_session!r} in {capture} (sessions: {known})",
                                     param_hint="--session")
        target.mkdir(parents=True, exist_ok=True)
        say(f"sessiontap: {analysis.verdict()}")
        redactor = Redactor()  # learns the capture's secrets while the report reads it, then masks findings.json
        _write_report(analysis, capture, target, settings, only_session, cap, redactor)
        say(f"sessiontap: findings written to {write_findings(analysis, target, redactor)}")
    except SessiontapError as e:
        raise click.ClickException(str(e)) from e
    except OSError as e:
        raise click.ClickException(f"cannot write to {target}: {e.strerror or e}") from e
    except click.ClickException:
        raise
    except Exception as e:  # noqa: BLE001 - one line and exit 1, never a traceback
        raise click.ClickException(f"could not report on {capture}: {type(e).__name__}: {e}") from e


@main.command(context_settings=CONTEXT_SETTINGS,
              epilog="\b\nExample:\n  sessiontap export sessiontap-out/demo --har demo.har")
@CAPTURE_ARG
@click.option("--har", "har_path", required=True, metavar="FILE",
              type=click.Path(dir_okay=False, writable=True, path_type=Path),
              help="Where to write the HAR (a .zhar name writes it compressed).")
def export(capture: Path, har_path: Path) -> None:
    """Export a capture as HAR 1.2, WebSocket messages included, secrets redacted.

    CAPTURE is a flow file (flows.mitm, or any mitmdump capture) or a record output directory.
    The WebSocket messages are in the `_webSocketMessages` form that Chrome DevTools and HTTP
    Toolkit read.
    """
    from sessiontap.app.capture import read_flows
    from sessiontap.app.har import export_har

    try:
        cap = read_flows(capture)
        if cap.warning:
            click.echo(f"sessiontap: warning: {cap.warning}", err=True)
        har = export_har(cap.flows, har_path)
    except SessiontapError as e:
        raise click.ClickException(str(e)) from e
    except Exception as e:  # noqa: BLE001 - one line and exit 1, never a traceback
        raise click.ClickException(f"could not export {capture}: {type(e).__name__}: {e}") from e
    entries = har["log"]["entries"]
    sockets = sum(1 for e in entries if e.get("_resourceType") == "websocket")
    click.echo(f"sessiontap: {len(entries)} entries ({sockets} WebSocket) written to {har_path}", err=True)


@main.command(context_settings={**CONTEXT_SETTINGS, "ignore_unknown_options": True},
              epilog="\b\nExamples:\n  sessiontap replay sessiontap-out/demo --out replayed -- python my_client.py\n"
                     "  sessiontap replay --client sessiontap-out/demo --vary-context full,none\n"
                     "  sessiontap replay --client sessiontap-out/demo --live --vary-context all")
@CAPTURE_ARG
@CONFIG_OPT
@click.option("--out", metavar="DIR", help="Output directory for the replay's captures and reports "
                                           "[default: sessiontap-out/replay-<time>].")
@click.option("--mode", type=click.Choice(["regular", "reverse"]),
              help="Server replay: how the client reaches the proxy, as for record [default: regular].")
@click.option("--ignore", multiple=True, metavar="PATH",
              help="Server replay: a JSON path that may differ when matching (repeatable; e.g. "
                   "simulation_specification.extra_body.*). time_in_call_secs, event ids, timestamps "
                   "and user_id are always ignored.")
@click.option("--match-on", metavar="NAMES", help="Server replay: matchers to use, comma-separated "
                                                  "[default: method,endpoint,query,user_message,context,body].")
@click.option("--client", "client_replay", is_flag=True,
              help="Client replay: re-send the capture's conversations to an upstream (the built-in "
                   "simulator unless --to or --live) and set the replies beside the recorded ones.")
@click.option("--to", "to_url", metavar="URL",
              help="Client replay: the upstream to send to (a server on this machine; another host needs --live).")
@click.option("--live", is_flag=True,
              help="Client replay: send to the real ElevenLabs API (https://api.elevenlabs.io unless --to) "
                   "with ELEVENLABS_API_KEY from the environment. Spends API credit.")
@click.option("--vary-context", metavar="MODES",
              help="Client replay: rewrite each call's context as full, transcript, structured, summary "
                   "or none (comma-separated, or all; each is replayed in turn) [default: as recorded].")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="Client replay: seconds to wait for each reply.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def replay(capture: Path, config: Path | None, out: str | None, mode: str | None, ignore: tuple[str, ...],
           match_on: str | None, client_replay: bool, to_url: str | None, live: bool, vary_context: str | None,
           timeout: float, command: tuple[str, ...]) -> None:
    """Replay a capture: serve it to a client offline, or (--client) re-send it to an upstream.

    CAPTURE is a flow file (flows.mitm, or any mitmdump capture) or a record output directory.

    \b
    Server replay (a client command after --): each HTTP call is answered from
    the capture (JSON-aware matching) and each WebSocket conversation is replayed
    turn by turn; nothing leaves this machine. A request the capture does not
    hold gets HTTP 501 (a WebSocket message: close code 4000) and a replay-miss
    finding naming the nearest recorded call. The replay is recorded like a live
    run, so a fixed client replayed against a faulty client's capture shows.

    \b
    Client replay (--client): the recorded conversations are sent again, call by
    call, each reply awaited, through the recording proxy: as recorded, or with
    each call's context rewritten (--vary-context). Each run gets its own capture
    and report in OUT/<variant>, and OUT/behaviour.html sets the recorded and the
    replayed replies side by side and says where continuity changed.
    """
    if client_replay:
        wrong = [name for name, value in (("--mode", mode), ("--match-on", match_on), ("--ignore", ignore))
                 if value]
        if wrong or command:
            raise click.UsageError(f"{', '.join(wrong) or 'a client command'} is for server replay, not --client")
        _client_replay(capture, config, out, to_url, live, vary_context, timeout)
    wrong = [name for name, value in (("--to", to_url), ("--live", live), ("--vary-context", vary_context))
             if value]
    if wrong:
        raise click.UsageError(f"{', '.join(wrong)} needs --client")
    _server_replay(capture, config, out, mode, ignore, match_on, command)


def _server_replay(capture: Path, config: Path | None, out: str | None, mode: str | None, ignore: tuple[str, ...],
                   match_on: str | None, command: tuple[str, ...]) -> None:
    """Run a client command against the capture (offline), recorded and analysed."""
    from sessiontap.app.runner import run_record
    from sessiontap.replay.match import DEFAULT_MATCH_ON, parse_ignore, parse_match_on
    from sessiontap.replay.server import ALWAYS_IGNORED, record_misses, running_replay

    if not command:
        raise click.UsageError("give the client command after --, e.g. -- python my_client.py "
                               "(or --client to re-send the recorded calls instead)")
    try:
        paths = parse_ignore((*ALWAYS_IGNORED, *ignore))
        matchers = parse_match_on(match_on) if match_on else DEFAULT_MATCH_ON
    except ValueError as e:
        raise click.BadParameter(str(e)) from e
    try:
        with running_replay(capture, match_on=matchers, ignore=paths) as server:
            say(f"sessiontap: replaying {capture} from {server.url} (offline)")
            settings = settings_from(config, {"sessiontap_mode": mode, "sessiontap_upstream": server.url,
                                              "sessiontap_out": out or str(default_out("replay"))})
            result = run_record(settings, list(command), announce=say)
            misses = list(server.misses)
        record_misses(result, misses)
    except SessiontapError as e:
        raise click.ClickException(str(e)) from e
    for m in misses:
        say(f"sessiontap: replay-miss: {m.message}")
    _finish(result, settings)


def _client_replay(capture: Path, config: Path | None, out: str | None, to_url: str | None, live: bool,
                   vary_context: str | None, timeout: float) -> None:
    """Re-send the capture's conversations once per variant, then write the side-by-side behaviour report."""
    import contextlib

    from sessiontap.core.settings import Settings
    from sessiontap.findings import version
    from sessiontap.replay.client import ReplayTargetError, client_replay, replay_upstream
    from sessiontap.replay.compare import write_behaviour_json
    from sessiontap.replay.vary import AS_RECORDED, parse_modes
    from sessiontap.reports.html import write_behaviour
    from sessiontap.simulator.server import running_simulator

    try:
        variants = parse_modes(vary_context) if vary_context else [AS_RECORDED]
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--vary-context") from e
    try:
        upstream = replay_upstream(to_url, live)
    except ReplayTargetError as e:
        raise click.UsageError(str(e)) from e
    target = Path(out) if out else default_out("replay")
    try:
        settings = settings_from(config, {})
        with running_simulator() if upstream is None else contextlib.nullcontext() as sim:
            url = sim.url if sim is not None else str(upstream)
            runs, behaviour = client_replay(capture, target, variants, url, settings, timeout, say, live)
    except SessiontapError as e:
        raise click.ClickException(str(e)) from e
    code = 0
    for run in runs:
        code = max(code, run.result.exit_code)
        if run.analysis is None:
            say(f"sessiontap: error: the {run.variant} replay recorded nothing readable")
            code = max(code, 1)
            continue
        say(f"sessiontap: {run.variant}: {run.analysis.verdict()}")
        _write_report(run.analysis, run.out, run.out, Settings.from_options(settings), redactor=run.result.redactor)
    path = write_behaviour_json(behaviour, target)
    say("sessiontap: does the conversation continue? (* = changed from the original)")
    for line in behaviour.table():
        say("  " + line)
    page = write_behaviour(behaviour, str(capture), version(), target)
    say(f"sessiontap: behaviour written to {path} and {page}")
    say(f"sessiontap: open {page.resolve().as_uri()}")
    raise SystemExit(code)


@main.command(context_settings=CONTEXT_SETTINGS,
              epilog="\b\nExit codes:\n  0  every check that ran passed (a removed simulate-conversation's HTTP "
                     "half does not run)\n  1  a check failed, nothing could run, or the probe could not go on\n"
                     "  2  usage error\n\b\nExamples:\n  sessiontap probe\n  sessiontap probe --sample faulty "
                     "--scenario conversation\n  sessiontap probe --client 'python my_client.py --stdin' "
                     "--protocol http\n  sessiontap probe --live --protocol websocket")
@CONFIG_OPT
@click.option("--protocol", type=click.Choice(["http", "websocket", "both"]),
              help="Over which protocol each scenario runs: simulate-conversation (http), the agent WebSocket, "
                   "or both [default: both; with --client: the one the client speaks, run once].")
@click.option("--scenario", "scenario_name", type=click.Choice([*SCENARIO_NAMES, "all"]), default="all",
              show_default=True, help="Which test case of the investigation plan to play.")
@click.option("--turns", type=click.IntRange(MIN_TURNS, MAX_TURNS), default=DEFAULT_TURNS, show_default=True,
              help="User messages in the conversation scenario (context-size plays four times as many).")
@click.option("--to", "to_url", metavar="URL",
              help="Send to a server on this machine instead of the built-in simulator (another host needs --live).")
@click.option("--live", is_flag=True,
              help="Send to the real ElevenLabs API (https://api.elevenlabs.io unless --to) with ELEVENLABS_API_KEY "
                   "from the environment (and your agent in ELEVENLABS_AGENT_ID). Spends API credit.")
@click.option("--client", "client_cmd", metavar="CMD",
              help="Probe your own client: a command (split like a shell line) that keeps the line contract below.")
@click.option("--sample", type=click.Choice(PROBE_SAMPLES),
              help="Which built-in sample clients to probe [default: fixed]; faulty shows what the checks catch.")
@click.option("--mode", type=click.Choice(["regular", "reverse"]),
              help="How the client reaches the proxy, as for record [default: regular].")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="Seconds to wait for each reply line.")
@click.option("--out", metavar="DIR", help="Output directory [default: sessiontap-out/probe-<time>].")
def probe(config: Path | None, protocol: str | None, scenario_name: str, turns: int, to_url: str | None, live: bool,
          client_cmd: str | None, sample: str | None, mode: str | None, timeout: float, out: str | None) -> None:
    """Play the investigation plan's test cases through sessiontap and check that the conversation continues.

    Five scenarios (conversation, product, officer, persistence, context-size), each over
    simulate-conversation (http) and the agent WebSocket, are recorded through the proxy to
    the built-in simulator (or --to, or --live) and judged by the analysis' own findings:
    one session throughout, the opening line said once, earlier facts carried, the context
    growing, its size handled. Prints a pass/fail table per scenario (stdout), and writes
    flows.mitm, findings.json and report.html per scenario and protocol into OUT/<scenario>-<protocol>,
    and every outcome into OUT/probe.json. When simulate-conversation answers 404 or 410
    (removed), it says so, skips the HTTP runs and goes on with the WebSocket ones; the HTTP
    half then counts as not run, neither passed nor failed.

    \b
    The --client contract (python -m sessiontap.samples KIND --stdin keeps it):
    - CMD starts once per scenario (and protocol), its environment pointed at
      the proxy as `record -- CMD` does it, plus SESSIONTAP_PROBE_SCENARIO and,
      when --protocol is given, SESSIONTAP_PROBE_PROTOCOL (http or websocket),
      and unless --live a placeholder ELEVENLABS_API_KEY when none is set;
    - each user message is written to its stdin as one UTF-8 line; it answers
      with the agent's reply as one line on stdout (line breaks made spaces,
      flushed) before the next message is written;
    - anything else it prints goes to stderr; when stdin ends, it ends the
      session and exits;
    - no reply within --timeout seconds, or an exit before the last reply,
      stops the probe with one line naming the message and what the client
      last wrote to stderr.
    """
    import contextlib
    import shlex

    from sessiontap.app.target import TargetError, send_target
    from sessiontap.probe.run import PROBE_FILE, Probe, probe_passed, run_probe, table
    from sessiontap.probe.scenarios import chosen
    from sessiontap.simulator.server import running_simulator

    if client_cmd is not None and sample is not None:
        raise click.UsageError("--client and --sample exclude each other: --sample picks a built-in client")
    try:
        command = tuple(shlex.split(client_cmd or ""))
    except ValueError as e:
        raise click.BadParameter(f"cannot split {client_cmd!r}: {e}", param_hint="--client") from e
    if client_cmd is not None and not command:
        raise click.BadParameter("give the client's command, e.g. 'python my_client.py --stdin'", param_hint="--client")
    try:
        upstream = send_target(to_url, live, "the probe's conversations")
    except TargetError as e:
        raise click.UsageError(str(e)) from e
    if protocol in (None, "both"):
        protocols: tuple[str | None, ...] = (None,) if command and protocol is None else ("http", "websocket")
    else:
        protocols = (protocol,)
    scenarios = chosen(scenario_name, turns)
    target = Path(out) if out else default_out("probe")
    who = f"`{shlex.join(command)}`" if command else f"the {sample or 'fixed'} sample clients"
    try:
        settings = settings_from(config, {"sessiontap_mode": mode})
        with running_simulator() if upstream is None else contextlib.nullcontext() as sim:
            url = sim.url if sim is not None else str(upstream)
            say(f"sessiontap: probing {who} through sessiontap to {'the simulator at ' if sim else ''}{url}")
            runs = run_probe(Probe(scenarios, protocols, url, target, settings, command, sample or "fixed", timeout,
                                   live), say)
    except SessiontapError as e:
        raise click.ClickException(str(e)) from e
    for line in table(runs, scenarios):
        click.echo(line)
    say(f"sessiontap: written to {target}: {PROBE_FILE}, and flows.mitm, findings.json and report.html "
        "in a directory per scenario and protocol")
    if runs and runs[-1].stopped:
        raise click.ClickException(runs[-1].stopped)
    raise SystemExit(0 if probe_passed(runs) else 1)

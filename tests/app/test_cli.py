"""Tests for addons/app/cli.py through click's CliRunner: flags, config errors, refusals and exit codes (no proxy)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from sessiontap.app.cli import main


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_a_misspelt_config_key_is_one_line_with_the_close_match(tmp_path: Path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("sessiontap_sesion_gap: 5\n")
    result = run("record", "--config", str(cfg), "--out", str(tmp_path / "out"), "--", "true")
    assert result.exit_code == 1
    assert "unknown key 'sessiontap_sesion_gap' (did you mean sessiontap_session_gap?)" in result.output
    assert not (tmp_path / "out").exists()  # nothing started


@pytest.mark.parametrize(("yaml", "said"), [
    ("sessiontap_session_gap: -5\n", "sessiontap_session_gap must be a number of seconds >= 0 (got -5.0)"),
    ("sessiontap_max_context_tokens: -1\n", "sessiontap_max_context_tokens must be a whole number >= 0 (got -1)"),
    ("sessiontap_opening_similarity: 1.5\n", "sessiontap_opening_similarity must be a number above 0 and at most 1"),
    ("sessiontap_listen_port: 70000\n", "sessiontap_listen_port must be a port number 0-65535 (got 70000)"),
    ("sessiontap_mode: sideways\n", "sessiontap_mode must be one of regular, reverse (got 'sideways')"),
    ("sessiontap_session_gap: soon\n", "sessiontap_session_gap has a bad value 'soon'"),
    ("- a list\n", "expected a mapping of sessiontap_* keys"),
])
def test_bad_config_values_name_the_file_the_key_and_the_value(tmp_path: Path, yaml: str, said: str):
    cfg = tmp_path / "mitm.yaml"
    cfg.write_text(yaml)
    result = run("record", "--config", str(cfg), "--", "true")
    assert result.exit_code == 1, result.output
    assert f"{cfg}: " in result.output and said in result.output
    assert "Traceback" not in result.output


def test_bad_flags_are_named_as_the_command_line(tmp_path: Path):
    result = run("record", "--upstream", "ftp://x", "--out", str(tmp_path / "o"), "--", "true")
    assert result.exit_code == 1
    assert "command line: sessiontap_upstream expected an http:// or https:// base URL (got 'ftp://x')" in result.output
    result = run("record", "--listen-port", "-1", "--", "true")
    assert result.exit_code == 1 and "sessiontap_listen_port must be a port number" in result.output


def test_flags_win_over_mitm_yaml(tmp_path: Path):
    from sessiontap.app.config import settings_from

    cfg = tmp_path / "mitm.yaml"
    cfg.write_text("sessiontap_mode: reverse\nsessiontap_session_gap: 30\n")
    settings = settings_from(cfg, {"sessiontap_mode": "regular", "sessiontap_upstream": None})
    assert settings == {"sessiontap_mode": "regular", "sessiontap_session_gap": 30.0}


@pytest.mark.parametrize(("args", "said"), [
    (["--live"], "needs ELEVENLABS_API_KEY"),
    (["--to", "https://api.elevenlabs.io"], "is not on this machine; add --live"),
    (["--to", "ftp://127.0.0.1"], "expected an http"),
    (["--vary-context", "everything"], "unknown context mode"),
    (["--match-on", "method"], "is for server replay"),
])
def test_client_replay_refuses_before_anything_is_sent(tmp_path: Path, args: list[str], said: str):
    capture = tmp_path / "flows.mitm"
    capture.write_bytes(b"")
    result = run("replay", "--client", str(capture), "--out", str(tmp_path / "never"), *args,
                 env={"ELEVENLABS_API_KEY": ""})
    assert result.exit_code == 2 and said in result.output, result.output
    assert not (tmp_path / "never").exists()


def test_server_replay_flags_need_their_mode(tmp_path: Path):
    capture = tmp_path / "flows.mitm"
    capture.write_bytes(b"")
    result = run("replay", str(capture), "--vary-context", "full", "--", "true")
    assert result.exit_code == 2 and "--vary-context needs --client" in result.output
    result = run("replay", str(capture))
    assert result.exit_code == 2 and "give the client command after --" in result.output


def test_check_exits_2_with_one_line_on_an_unreadable_capture(tmp_path: Path):
    capture = tmp_path / "flows.mitm"
    capture.write_bytes(b"not a flow file")
    result = run("check", str(capture))
    assert result.exit_code == 2
    assert result.output.startswith("Error: ") and "not a mitmproxy flow file" in result.output
    assert "0  no error finding" in run("check", "--help").output


def test_addon_path_names_the_chain_script_of_this_install():
    result = run("addon-path")
    path = Path(result.output.strip())
    assert result.exit_code == 0 and path.name == "sessiontap.py" and path.is_file()
    assert "def chain() -> Chain:" in path.read_text()


def test_a_long_run_says_that_its_report_is_being_written_and_a_short_one_does_not():
    from sessiontap.app.cli import REPORT_NOTICE_CALLS, report_notice

    assert report_notice(REPORT_NOTICE_CALLS - 1) is None
    notice = report_notice(58_734)
    assert notice is not None and "58,734 calls" in notice and "report.html" in notice


@pytest.mark.parametrize(("args", "said"), [
    (["--live"], "--live sends the probe's conversations to the real ElevenLabs API and needs ELEVENLABS_API_KEY"),
    (["--to", "https://api.elevenlabs.io"], "is not on this machine; add --live"),
    (["--client", "python c.py", "--sample", "faulty"], "--client and --sample exclude each other"),
    (["--client", ""], "give the client's command"),
    (["--client", "python 'c.py"], "cannot split"),
    (["--turns", "1"], "1 is not in the range 2<=x<=50"),
    (["--scenario", "chat"], "'chat' is not one of"),
])
def test_probe_refuses_before_anything_is_started(tmp_path: Path, args: list[str], said: str):
    result = run("probe", "--out", str(tmp_path / "never"), *args, env={"ELEVENLABS_API_KEY": ""})
    assert result.exit_code == 2 and said in result.output, result.output
    assert not (tmp_path / "never").exists()


def test_probe_help_states_the_client_contract():
    text = " ".join(run("probe", "--help").output.split())
    for words in ("one UTF-8 line", "SESSIONTAP_PROBE_PROTOCOL", "flushed", "when stdin ends", "--timeout",
                  "404 or 410", "Exit codes"):
        assert words in text


def test_probe_to_an_upstream_that_is_down_is_one_line(tmp_path: Path):
    import socket

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    result = run("probe", "--to", f"http://127.0.0.1:{port}", "--out", str(tmp_path / "never"))
    assert result.exit_code == 1
    assert f"Error: upstream http://127.0.0.1:{port} is not reachable" in result.output
    assert not (tmp_path / "never").exists()  # refused before any run: nothing written

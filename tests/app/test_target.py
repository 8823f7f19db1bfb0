"""Tests for addons/app/target.py: where a command that sends conversations may send them."""

from __future__ import annotations

import pytest

from sessiontap.app.target import TargetError, is_local, send_target
from sessiontap.router import DEFAULT_UPSTREAM

KEY = {"ELEVENLABS_API_KEY": "sk_x"}


def test_the_simulator_by_default_and_this_machine_without_more():
    assert send_target(None, False, "it", {}) is None
    assert send_target("http://127.0.0.1:9", False, "it", {}) == "http://127.0.0.1:9"
    assert send_target("http://localhost:8080", False, "it", {}) == "http://localhost:8080"
    assert is_local("http://[::1]:8080") and not is_local("https://api.elevenlabs.io")


def test_live_targets_the_real_api_by_construction_and_only_with_a_key():
    assert send_target(None, True, "it", KEY) == DEFAULT_UPSTREAM == "https://api.elevenlabs.io"
    assert send_target("https://api.eu.residency.elevenlabs.io", True, "it", KEY) == (
        "https://api.eu.residency.elevenlabs.io")
    with pytest.raises(TargetError, match="--live sends the probe's talk to the real ElevenLabs API and needs "
                                          "ELEVENLABS_API_KEY"):
        send_target(None, True, "the probe's talk", {"ELEVENLABS_API_KEY": ""})


def test_another_host_needs_live_and_errors_name_the_callers_flags():
    with pytest.raises(TargetError, match="--to https://api.elevenlabs.io is not on this machine; add --live"):
        send_target("https://api.elevenlabs.io", False, "it", KEY)
    with pytest.raises(TargetError, match="^--up: expected an http"):
        send_target("ftp://127.0.0.1", False, "it", {}, flags=("--up", "--real"))
    with pytest.raises(TargetError, match="^--real sends"):
        send_target(None, True, "it", {}, flags=("--up", "--real"))

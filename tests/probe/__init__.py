"""Tests for sessiontap.probe: the probe command, its checks and line contract, and the pytest plugin."""

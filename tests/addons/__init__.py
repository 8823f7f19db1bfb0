"""Tests for the mitmproxy addons (taddons/tflow, and mitmdump loading the chain)."""

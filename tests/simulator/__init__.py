"""Tests for sessiontap.simulator, the ElevenLabs simulator."""

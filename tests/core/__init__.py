"""Tests for sessiontap.core, the pure analysis: hand-built records in, findings out."""

"""Tests for sessiontap.replay: matching, context variants, the replay server and client."""

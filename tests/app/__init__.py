"""Tests for sessiontap.app: the CLI (through CliRunner), config, capture files and HAR export."""

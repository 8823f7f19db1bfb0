"""Tests for sessiontap.reports: view records, rendering, and the pages in Chromium."""

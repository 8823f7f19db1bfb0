"""The multi-turn probe: the investigation plan's test cases played through sessiontap (scenarios), judged by the
analysis' own findings (checks), with a client spoken to one line at a time (lines); run by `sessiontap probe` (run)
and by the pytest plugin's `sessiontap` fixture (plugin, tap)."""

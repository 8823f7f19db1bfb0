"""sessiontap: a recording proxy that shows whether an ElevenLabs agent conversation really continues.

The data flow: a mitmproxy flow -> ``bridge.adapt`` (records) -> ``core.decode`` (calls, turns)
-> ``core.sessions`` (which session) -> ``core.contextdiff`` (what changed) -> ``core.rules``
(findings) -> ``findings`` / ``journal`` (findings.json, journal.jsonl, flows.mitm) and
``reports`` (report.html). The mitmproxy addons at this level are thin hooks over that core,
wired in ``sessiontap.py`` (the chain script); ``app`` holds the command line around them,
``replay`` the replays, ``simulator`` and ``samples`` the built-in stand-ins for ElevenLabs
and for the user's client. Arrows point one way: addons -> core, reports -> core, app -> all.
"""

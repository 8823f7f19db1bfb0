"""Replay: serving a capture to a client offline (server), re-sending it to an upstream (client, with its plan),
matching requests to recordings (match), context variants (vary) and the original-vs-replay comparison (compare)."""

"""Between mitmproxy and the core: flows to records and back (adapt), fail-open hooks (guard), option checks."""

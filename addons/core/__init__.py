"""The pure analysis: records in (``model``), calls out (``decode``), sessions (``sessions``), context diffs
(``contextdiff``), one function per rule id (``rules``), the pipeline (``analysis``), settings, redaction.
Imports no mitmproxy, click or jinja2, so it runs the same live and over a saved capture."""

"""The report: the analysis as view records (``view``), SVG diagrams (``svg``), Jinja2 rendering (``html``),
with ``templates/`` and ``static/`` shipped in the package and inlined into one offline page."""

"""`python -m sessiontap`: the command line, as the `sessiontap` script runs it."""

from sessiontap.app.cli import main

main(prog_name="sessiontap")

"""The error base class: every failure a user can cause is a SessiontapError with a sentence."""


class SessiontapError(Exception):
    """A failure to report as one sentence (the CLI turns it into a ClickException)."""


class ConfigError(SessiontapError, ValueError):
    """mitm.yaml or a flag holds an unknown key or a bad value."""


class CaptureError(SessiontapError, OSError):
    """A capture directory or flow file cannot be read or written."""

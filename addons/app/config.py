"""Configuration: mitm.yaml read and checked against the addons' own option declarations."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from mitmproxy import exceptions, optmanager

from sessiontap.bridge.options import problem
from sessiontap.core.errors import ConfigError
from sessiontap.core.settings import Settings
from sessiontap.sessiontap import chain

DEFAULT_CONFIG = "mitm.yaml"


class _Loader:
    """Collects the options addons declare in ``load()`` (the same declarations mitmproxy sees)."""

    def __init__(self, opts: optmanager.OptManager) -> None:
        self.opts = opts

    def add_option(self, name: str, typespec: Any, default: Any, help: str, choices: Any = None) -> None:
        self.opts.add_option(name, typespec, default, help, choices)

    def add_command(self, *args: Any, **kwargs: Any) -> None:
        pass


def option_table() -> optmanager.OptManager:
    """Every sessiontap option with its type, default, choices and help."""
    opts = optmanager.OptManager()
    loader = _Loader(opts)
    for addon in chain().addons:
        load = getattr(addon, "load", None)
        if load is not None:
            load(loader)
    return opts


def validate(values: dict[str, Any], where: str) -> dict[str, Any]:
    """The values, checked: known keys, right types, choices and each addon's own check; ConfigError if not."""
    opts = option_table()
    checks = {name: check for addon in chain().addons for name, check in getattr(addon, "CHECKS", {}).items()}
    for key, value in values.items():
        if key not in opts:
            close = difflib.get_close_matches(str(key), list(opts.keys()), n=1)
            hint = f" (did you mean {close[0]}?)" if close else f" (known keys: {', '.join(sorted(opts.keys()))})"
            raise ConfigError(f"{where}: unknown key {key!r}{hint}")
        if isinstance(value, int | float) and not isinstance(value, bool) and opts._options[key].typespec is float:
            value = float(value)
            values[key] = value
        choices = opts._options[key].choices
        if choices and value not in choices:
            raise ConfigError(f"{where}: {key} must be one of {', '.join(choices)} (got {value!r})")
        try:
            opts.update(**{key: value})
        except (TypeError, exceptions.OptionsError) as e:
            raise ConfigError(f"{where}: {key} has a bad value {value!r}: {e}") from e
        said = problem(key, value, checks)
        if said is not None:
            raise ConfigError(f"{where}: {said}")
    return values


def load_config(path: Path | None) -> dict[str, Any]:
    """The settings in a mitm.yaml (none when the default file is absent); ConfigError when malformed."""
    if path is None:
        path = Path(DEFAULT_CONFIG)
        if not path.exists():
            return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sessiontap_* keys, got {type(data).__name__}")
    return validate(dict(data), str(path))


def settings_from(config: Path | None, flags: dict[str, Any]) -> dict[str, Any]:
    """mitm.yaml's settings with the flags that were given laid over them (flags win), all checked."""
    settings = load_config(config)
    given = {k: v for k, v in flags.items() if v is not None}
    settings.update(validate(given, "command line"))
    return settings


def analysis_settings(config: Path | None) -> Settings:
    """The analysis settings of a mitm.yaml (the defaults for keys it does not set)."""
    return Settings.from_options(load_config(config))

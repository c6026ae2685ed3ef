"""``serve --config FILE.toml`` and ``MSGTRANS_*`` variables: the same settings as the
transport builder, from a file or the environment.

A file has two optional tables::

    [transport]                       # one key per TransportBuilder method
    request_timeout = 5.0             # one value: the method's argument
    connection_pool = [2, 64, 16]     # a list: its positional arguments
    receive_queue = { max_messages = 256, max_bytes = 4194304 }   # a table: keywords
    session_settings = { heartbeat_interval = 15.0 }

    [serve]                           # the command line's options, without the dashes
    tcp = "0.0.0.0:9000"
    ws = "0.0.0.0:9001"
    backend = "trio"

A variable ``MSGTRANS_<METHOD>`` (``MSGTRANS_REQUEST_TIMEOUT=5``) sets one transport setting;
its value is read as JSON when it parses (``5``, ``[2, 64, 16]``, ``{"max_messages": 256}``,
``null``), else as a comma-separated list (``2,64,16``), else as the plain string (``zstd``);
``none`` is ``None``.  The environment wins over the file, the command line over both.  Every
key names the builder method it calls, so the builder's own checks (ranges, conflicts such as
``request_timeout`` given twice through ``session_settings``) apply unchanged, and an unknown
key is refused with the list of known ones.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from ..core.errors import ConfigurationError

__all__ = ["ENV_PREFIX", "apply_settings", "env_settings", "read_config_file", "setting_names"]

#: The prefix of the environment variables ``serve`` reads.
ENV_PREFIX = "MSGTRANS_"

#: Builder methods that are not settings.
_NOT_SETTINGS = frozenset({"build", "settings"})

_B = TypeVar("_B")


def setting_names(builder: object) -> list[str]:
    """The builder methods a file key or a variable may name, sorted."""
    return sorted(
        name for name, member in inspect.getmembers(type(builder), inspect.isfunction)
        if not name.startswith("_") and name not in _NOT_SETTINGS
    )


def read_config_file(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a TOML file: its ``[transport]`` and ``[serve]`` tables (empty when missing).

    Raises:
        ConfigurationError: the file cannot be read, is not TOML, has another top-level key,
            or a table is not a table (field ``config``, naming the file).
    """
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - the tomli dependency is only installed below 3.11
        import tomli as tomllib  # type: ignore[import-not-found, no-redef, unused-ignore]

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigurationError("config", f"cannot read {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError("config", f"{path} is not valid TOML: {exc}") from exc
    unknown = sorted(set(data) - {"transport", "serve"})
    if unknown:
        raise ConfigurationError(
            "config", f"{path}: unknown table {unknown[0]!r} (known: [transport], [serve])"
        )
    tables: list[dict[str, Any]] = []
    for name in ("transport", "serve"):
        table = data.get(name, {})
        if not isinstance(table, dict):
            raise ConfigurationError("config", f"{path}: {name} must be a table")
        tables.append(table)
    return tables[0], tables[1]


def env_settings(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The transport settings of the ``MSGTRANS_*`` variables in *environ* (default
    ``os.environ``), keyed by builder method name (lower case)."""
    environ = os.environ if environ is None else environ
    return {
        key[len(ENV_PREFIX):].lower(): _env_value(value)
        for key, value in sorted(environ.items())
        if key.startswith(ENV_PREFIX) and len(key) > len(ENV_PREFIX)
    }


def _env_value(text: str) -> Any:
    text = text.strip()
    if text.lower() == "none":
        return None
    try:
        return json.loads(text)
    except ValueError:
        pass
    if "," in text:
        return [_env_value(part) for part in text.split(",")]
    return text


def apply_settings(builder: _B, settings: Mapping[str, Any], source: str) -> _B:
    """Call the builder method each key of *settings* names with its value (a table:
    keywords; a list: positional arguments; else the one argument); return the builder.

    Args:
        builder: a backend's ``TransportBuilder``.
        settings: method name -> value.
        source: where the settings come from, for errors (``"config.toml"``, ``"environment"``).

    Raises:
        ConfigurationError: a key names no builder setting, or the method refused its value
            (the error names the source and the setting).
    """
    known = setting_names(builder)
    for name, value in settings.items():
        if name not in known:
            raise ConfigurationError(
                name, f"{source}: unknown setting {name!r} (known: {', '.join(known)})"
            )
        method = getattr(builder, name)
        try:
            if isinstance(value, dict):
                method(**value)
            elif isinstance(value, list):
                method(*value)
            else:
                method(value)
        except ConfigurationError as exc:
            raise ConfigurationError(exc.field or name, f"{source}: {exc.reason}") from exc
        except TypeError as exc:
            raise ConfigurationError(name, f"{source}: {exc}") from exc
    return builder

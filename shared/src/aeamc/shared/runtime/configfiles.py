"""Reading a daemon's TOML configuration with its drop-in folder.

``/etc/aeamc/agent.toml`` is a packaged conffile; local changes belong in
``/etc/aeamc/agent.toml.d/*.toml`` (read in name order), so package upgrades never have to
merge an edited file. Tables merge key by key; any other value replaces the earlier one.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    """A daemon's configuration cannot be used; the message names the file or the key and
    what is wrong. Commands exit 78 (``EX_CONFIG``) on it."""


class ConfigFileError(ConfigError):
    """A file that exists cannot be read or is not TOML; the message names the file."""


def dropin_dir(path: Path) -> Path:
    return path.with_name(path.name + ".d")


def read_config_files(path: Path) -> dict[str, Any]:
    """The merged TOML of ``path`` and its drop-ins; ``FileNotFoundError`` if ``path`` is absent."""
    data = _read(path)
    for extra in sorted(dropin_dir(path).glob("*.toml")):
        merge_tables(data, _read(extra))
    return data


def merge_tables(base: dict[str, Any], override: Mapping[str, Any]) -> None:
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge_tables(base[key], value)
        else:
            base[key] = value


def _read(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ConfigFileError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"{path}: not valid TOML: {exc}") from None

"""uet's settings for a repository, configured once: `[tool.uet]` in its `pyproject.toml`, or
a `uet.toml` — found by walking up from the working directory, as git finds `.git`.

    # uet.toml (or [tool.uet] in pyproject.toml)
    database = ".ledger/framework.db"   # relative to this file's folder, or a postgresql:// URL
    project = "api"
    phase = "PH-2"
    workstream = "WS-7"

In each folder from the working directory up to the file system's root, a `uet.toml` is
taken first, then a `pyproject.toml` that has a `[tool.uet]` table (one without is passed
over, as ruff and pytest do); the first found is the one in effect. Its values are defaults:
a command's own option (`--db`, `--project` …) and `$UET_DATABASE` come first. A file that
cannot be read, is not TOML, or holds an unknown key or a value of the wrong type is one
ConfigError naming the file and the key; `$UET_CONFIG` names a file to use instead of
searching, and `UET_CONFIG=` (empty) turns the search off.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uet.errors import ValidationError

ENV_VAR = "UET_CONFIG"
KEYS = ("database", "project", "phase", "workstream")
MAX_BYTES = 1 << 20


class ConfigError(ValidationError):
    """A configuration file uet cannot use: `path` names it, `key` the key at fault (None:
    the file as a whole)."""

    def __init__(self, path: str, message: str, key: str | None = None) -> None:
        self.path, self.key = path, key
        where = f"{path}: {'tool.uet.' if path.endswith('pyproject.toml') else ''}{key}" \
            if key else path
        super().__init__(f"{where}: {message}", field=key)


@dataclass(frozen=True)
class Config:
    """The settings in effect: `source` is the file they came from (None: no file), `values`
    what it sets (only the keys it has; a relative `database` already made absolute)."""
    source: str | None = None
    values: dict[str, str] = field(default_factory=dict)

    def get(self, key: str) -> str | None:
        """The file's value for `key`, or None."""
        return self.values.get(key)


def find_config_file(start: str | os.PathLike[str] | None = None) -> Path | None:
    """The configuration file in effect for a working directory (default: the current one),
    or None."""
    explicit = os.environ.get(ENV_VAR)
    if explicit is not None:
        return Path(explicit) if explicit else None
    folder = Path(start if start is not None else os.getcwd()).resolve()
    for candidate in (folder, *folder.parents):
        uet_toml = candidate / "uet.toml"
        if uet_toml.is_file():
            return uet_toml
        pyproject = candidate / "pyproject.toml"
        if pyproject.is_file() and _has_tool_uet(pyproject):
            return pyproject
    return None


def _has_tool_uet(path: Path) -> bool:
    """Whether a pyproject.toml has a [tool.uet] table. One that cannot be parsed is taken
    (and then reported by load_config) only if its text mentions the table."""
    try:
        data = _read(path)
    except ConfigError:
        try:
            return "[tool.uet]" in path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
    tool = data.get("tool")
    return isinstance(tool, dict) and "uet" in tool


def _read(path: Path) -> dict[str, Any]:
    name = str(path)
    try:
        with open(path, "rb") as f:
            content = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(name, f"cannot be read ({exc.strerror or exc})") from None
    if len(content) > MAX_BYTES:
        raise ConfigError(name, f"larger than {MAX_BYTES:,} bytes: not a configuration file")
    try:
        return tomllib.loads(content.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(name, f"not UTF-8 text (byte 0x{content[exc.start]:02x} at offset "
                                f"{exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(name, f"not valid TOML: {exc}") from None


def load_config(start: str | os.PathLike[str] | None = None) -> Config:
    """The settings in effect for a working directory (default: the current one): the file
    `find_config_file` finds, checked (ConfigError names the file and key), or no settings."""
    path = find_config_file(start)
    if path is None:
        return Config()
    name = str(path)
    data = _read(path)
    if path.name == "pyproject.toml":
        tool = data.get("tool")
        table = tool.get("uet") if isinstance(tool, dict) else None
        if table is None:
            raise ConfigError(name, "has no [tool.uet] table")
        if not isinstance(table, dict):
            raise ConfigError(name, f"tool.uet must be a table ([tool.uet]), not {table!r}")
    else:
        table = data
    values: dict[str, str] = {}
    for key, value in table.items():
        if key not in KEYS:
            close = difflib.get_close_matches(key, KEYS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(name, f"unknown key{hint} (uet reads: {', '.join(KEYS)})", key)
        if not isinstance(value, str) or not value.strip() or "\x00" in value:
            raise ConfigError(name, f"must be a non-empty string, not {value!r}", key)
        values[key] = value
    database = values.get("database")
    if database is not None and not _is_url(database) and database != ":memory:":
        # a relative path is the file's: the same ledger from every folder below it
        values["database"] = str((path.parent / os.path.expanduser(database)).resolve())
    return Config(source=str(path.resolve()), values=values)


def _is_url(text: str) -> bool:
    return text.startswith(("postgresql://", "postgres://"))

"""Loads the SQL that lives in `.sql` files: named queries and numbered migrations per engine.

Read once at import time; a reader sees the whole data model in `sql/<engine>/` without Python.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Mapping

_NAME = re.compile(r"^-- name: ([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)
_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


def _sql_dir(engine: str):
    return resources.files("uet.state").joinpath("sql", engine)


def load_queries(engine: str) -> Mapping[str, str]:
    """The named queries of `sql/<engine>/queries.sql` ('-- name: x' starts query x)."""
    text = _sql_dir(engine).joinpath("queries.sql").read_text(encoding="utf-8")
    parts = _NAME.split(text)
    queries = {}
    for name, body in zip(parts[1::2], parts[2::2]):
        if name in queries:
            raise RuntimeError(f"query {name!r} defined twice in {engine}/queries.sql")
        queries[name] = body.strip()
    return MappingProxyType(queries)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    def statements(self) -> list[str]:
        """The migration's statements, one string each, in file order."""
        return split_statements(self.sql)


def load_migrations(engine: str) -> tuple[Migration, ...]:
    """Every `sql/<engine>/migrations/NNNN_name.sql`, in version order, numbered 1, 2, 3 ..."""
    found = []
    for entry in _sql_dir(engine).joinpath("migrations").iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2),
                                   entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"{engine} migrations are not numbered 1..n: {versions}")
    return tuple(found)


def split_statements(script: str) -> list[str]:
    """Split a SQL script into complete statements (comments stay with the next statement).

    `executescript` cannot be used inside our own transaction (it commits first), so
    migrations run statement by statement.
    """
    statements, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statement = pending.strip()
            if _has_code(statement):
                statements.append(statement)
            pending = ""
    if _has_code(pending):
        raise RuntimeError(f"incomplete SQL statement at the end of a script: {pending!r}")
    return statements


def _has_code(text: str) -> bool:
    return any(line.strip() and not line.strip().startswith("--")
               for line in text.splitlines())

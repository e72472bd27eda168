"""Loads the SQL that lives in `.sql` files: named queries and numbered migrations per engine.

Read once at import time; a reader sees the whole data model in `sql/<engine>/` without Python.
"""

from __future__ import annotations

import os
import re
import sqlite3
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

_NAME = re.compile(r"^-- name: ([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)
_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


def _sql_dir(engine: str) -> str:
    # package data beside this module (plain files: cheaper to read than importlib.resources
    # is to import, and `uet` commands start on every call)
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "sql", engine)


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def load_queries(engine: str) -> Mapping[str, str]:
    """The named queries of `sql/<engine>/queries.sql` ('-- name: x' starts query x)."""
    text = _read(os.path.join(_sql_dir(engine), "queries.sql"))
    parts = _NAME.split(text)
    queries = {}
    for name, body in zip(parts[1::2], parts[2::2]):
        if name in queries:
            raise RuntimeError(f"query {name!r} defined twice in {engine}/queries.sql")
        lines = body.strip().splitlines()
        while lines and (not lines[-1].strip() or lines[-1].lstrip().startswith("--")):
            lines.pop()  # a comment after the statement introduces the next ones
        queries[name] = "\n".join(lines)
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
    folder = os.path.join(_sql_dir(engine), "migrations")
    for name in os.listdir(folder):
        match = _MIGRATION_FILE.match(name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2),
                                   _read(os.path.join(folder, name))))
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

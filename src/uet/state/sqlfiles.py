"""Loads the SQL that lives in `.sql` files: named queries and numbered migrations per engine.

Read once at import time; a reader sees the whole data model in `sql/` without Python.
"""

from __future__ import annotations

import os
import re
import sqlite3
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

# '-- name: x' starts query x; in an engine's file '(this engine only)' after the name marks a
# query the other engine does not have (so that a misspelt override is not taken for one)
_NAME = re.compile(r"^-- name: ([a-z_][a-z0-9_]*)( \(this engine only\))?[ \t]*$", re.MULTILINE)
_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_SHARED = "queries.sql"  # the queries whose text is the same on every engine, in sql/


def _sql_dir(engine: str = "") -> str:
    # package data beside this module (plain files: cheaper to read than importlib.resources
    # is to import, and `uet` commands start on every call)
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "sql", engine)


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def load_queries(engine: str) -> Mapping[str, str]:
    """The named queries `engine` runs, in its driver's parameter style: those of the shared
    `sql/queries.sql`, where `sql/<engine>/queries.sql` overrides them by name."""
    return merge_queries(_read(os.path.join(_sql_dir(), _SHARED)),
                         _read(os.path.join(_sql_dir(engine), _SHARED)), engine)


def merge_queries(shared_sql: str, engine_sql: str, engine: str) -> Mapping[str, str]:
    """The shared queries with the engine's own text in place of theirs, converted to the
    engine's parameter style (both files are written in SQLite's: `?` and `:name`).

    The shared file names every query; one without a statement there must be written by each
    engine. An engine may override only a name the shared file has, unless it marks the query
    as its own ('(this engine only)'). Raises RuntimeError on any other combination.
    """
    engine_file = f"{engine}/{_SHARED}"
    shared, shared_only = _parse_queries(shared_sql, _SHARED)
    own, own_only = _parse_queries(engine_sql, engine_file)
    if shared_only:
        raise RuntimeError(f"{_SHARED} marks {sorted(shared_only)} '(this engine only)': "
                           f"a query of one engine belongs in that engine's file")
    merged = dict(shared)
    for name, sql in own.items():
        if not sql:
            raise RuntimeError(f"{engine_file} has no statement for {name!r}")
        if name in own_only:
            if name in shared:
                raise RuntimeError(f"{engine_file} marks {name!r} as this engine's only, "
                                   f"but {_SHARED} defines it")
        elif name not in shared:
            raise RuntimeError(f"{engine_file} overrides {name!r}, which {_SHARED} does not "
                               f"define (a misspelt name, or a query for this engine only?)")
        elif sql.split() == shared[name].split():
            raise RuntimeError(f"{engine_file} overrides {name!r} with the shared text: "
                               f"it belongs in {_SHARED} alone")
        merged[name] = sql
    missing = sorted(name for name, sql in merged.items() if not sql)
    if missing:
        raise RuntimeError(f"{engine_file} lacks {missing}, which {_SHARED} leaves to each "
                           f"engine's own text")
    if engine == "postgresql":  # SQLite's style is the one the files are written in
        for name, sql in merged.items():
            try:
                merged[name] = to_psycopg_style(sql)
            except ValueError as e:
                raise RuntimeError(f"{engine} query {name!r}: {e}") from e
    return MappingProxyType(merged)


def _parse_queries(text: str, source: str) -> tuple[dict[str, str], set[str]]:
    """The named queries of one file ('' for a name with no statement), and the names marked
    '(this engine only)'."""
    parts = _NAME.split(text)
    queries, only = {}, set()
    for name, marker, body in zip(parts[1::3], parts[2::3], parts[3::3]):
        if name in queries:
            raise RuntimeError(f"query {name!r} defined twice in {source}")
        lines = body.strip().splitlines()
        while lines and (not lines[-1].strip() or lines[-1].lstrip().startswith("--")):
            lines.pop()  # a comment after the statement introduces the next ones
        queries[name] = "\n".join(lines)
        if marker:
            only.add(name)
    return queries, only


# The tokens of a statement that matter to its parameters, leftmost first: text copied as it
# is (a literal, a quoted name, a comment; a quote doubled inside one, 'it''s', reads as two
# of them side by side, copied alike), an opening that never ends, a cast, a parameter, a %.
_TOKEN = re.compile(r"""
      (?P<verbatim> '[^']*' | "[^"]*" | --[^\n]* | /\*.*?\*/ )
    | (?P<unterminated> ['"] | /\* )
    | (?P<cast> :: )
    | :(?P<name> [A-Za-z_][A-Za-z0-9_]* )
    | \?(?P<number> [0-9]* )
    | (?P<percent> % )
""", re.VERBOSE | re.DOTALL)


def to_psycopg_style(sql: str) -> str:
    """`sql` written with SQLite's parameters (`?`, `:name`) as psycopg takes it (`%s`,
    `%(name)s`).

    Only placeholders in the statement's code are converted: string literals ('...'), quoted
    names ("...") and comments (-- and /* */) keep theirs, and a `::type` cast is no
    parameter. psycopg looks for placeholders in the whole text without knowing any SQL, so
    every other `%`, in literals and comments too, is doubled. Raises ValueError for what has
    no faithful conversion: a numbered `?NNN`, positional and named parameters in one
    statement, a literal or comment that does not end. (Dollar-quoted strings are not
    recognised: SQLite has none.)
    """
    styles: set[str] = set()

    def convert(token: re.Match[str]) -> str:
        kind = token.lastgroup
        if kind == "verbatim":
            return token.group().replace("%", "%%")
        if kind == "unterminated":
            raise ValueError(f"unterminated literal or comment at offset {token.start()}: "
                             f"{sql[token.start():token.start() + 40]!r}")
        if kind == "cast":
            return "::"
        if kind == "name":
            styles.add("named")
            return f"%({token.group('name')})s"
        if kind == "number":
            if token.group("number"):
                raise ValueError(f"numbered parameter {token.group()!r} at offset "
                                 f"{token.start()}: psycopg has no equivalent")
            styles.add("positional")
            return "%s"
        return "%%"

    converted = _TOKEN.sub(convert, sql)
    if len(styles) > 1:
        # neither driver binds a mix: psycopg refuses it, sqlite3 takes one kind of params
        raise ValueError(f"positional and named parameters in one statement: {sql[:60]!r}")
    return converted


@dataclass(frozen=True)
class Migration:
    """One numbered migration of an engine (`sql/<engine>/migrations/NNNN_name.sql`): its
    version (NNNN), name and SQL script."""
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

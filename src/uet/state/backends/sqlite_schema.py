"""Schema versions of the SQLite ledger: inspection, numbered migrations, seed adoption.

Each migration runs in its own BEGIN IMMEDIATE transaction, re-checks the version once it
holds the write lock (so concurrent openers never apply one twice) and records itself in
`schema_migrations`.
"""

from __future__ import annotations

import os
import sqlite3
from typing import ContextManager, Protocol, TypeAlias

from uet.errors import MigrationError, NotALedgerError
from uet.state import schema_versions
from uet.state.ids import normalize_timestamp, utc_now
from uet.state.sqlfiles import Migration, load_migrations
from uet.state.backends.sqlite_errors import DRIVER_ERRORS, rollback, translate_error

# a value as SQLite stores it
_SQLValue: TypeAlias = str | bytes | int | float | None


class SQLiteLedger(Protocol):
    """What the migrations need of the SQLite backend (`sqlite.SQLiteBackend`, which imports
    this module)."""

    @property
    def path(self) -> str:
        """The ledger file, as messages name it."""

    @property
    def busy_timeout(self) -> float:
        """How long a statement waits for a lock another connection holds, in seconds."""

    def locked_connection(self) -> ContextManager[sqlite3.Connection]:
        """The backend's own connection, held for the block (other threads wait)."""

    def enable_wal(self) -> str:
        """Switch the file to WAL once it is known to be a ledger; the journal mode in
        force."""

MIGRATIONS = load_migrations("sqlite")
LATEST_VERSION = MIGRATIONS[-1].version

# The seed's original implementation: these three tables with exactly these columns and no
# version record. Such a ledger is version 0 and is adopted by migration 1.
SEED_COLUMNS = {
    "runs": ("run_id", "project_id", "phase_id", "workstream_id", "execution_request_id",
             "created_at", "started_at", "ended_at", "state", "exit_code", "error_message",
             "metadata"),
    "step_attempts": ("step_attempt_id", "run_id", "sequence", "tool_id", "tool_run_id",
                      "execution_request_id", "prompt_id", "started_at", "ended_at", "state",
                      "exit_code", "input_prompt", "output_patch_id", "error_log",
                      "metadata"),
    "run_events": ("event_id", "run_id", "timestamp", "event_type", "data"),
}
SEED_INDEXES = ("idx_runs_project", "idx_runs_state", "idx_steps_run", "idx_events_run")


def ledger_version(conn: sqlite3.Connection, path: str) -> int | None:
    """The ledger's schema version: None for an empty database, 0 for a seed ledger.

    Reads only; call it inside a transaction so that all its reads see one snapshot (another
    process may be migrating). Raises NotALedgerError for a database that holds anything
    else.
    """
    objects = conn.execute(
        "SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'").fetchall()
    if not objects:
        return None
    tables = {name for kind, name in objects if kind == "table"}
    if "schema_migrations" in tables:
        # table names come from constants, never from a caller
        recorded = {r[1] for r in conn.execute("PRAGMA table_info(schema_migrations)")}
        version = None
        if recorded == {"version", "name", "applied_at"} and set(SEED_COLUMNS) <= tables:
            version = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]
        if isinstance(version, int) and version >= 1:
            return version
        raise NotALedgerError(
            f"{path} has a schema_migrations table but is not a uet ledger (its tables: "
            f"{', '.join(sorted(tables))}); refusing to change it")
    if set(SEED_COLUMNS) <= tables:
        for table, expected in SEED_COLUMNS.items():
            found = tuple(r[1] for r in conn.execute(f"PRAGMA table_info({table})"))
            if set(found) != set(expected):
                raise NotALedgerError(
                    f"{path} has a {table} table whose columns ({', '.join(found)}) are not "
                    "those of a uet ledger; refusing to change it")
        return 0
    listed = ", ".join(sorted(f"{kind} {name}" for kind, name in objects))
    raise NotALedgerError(
        f"{path} is a SQLite database but not a uet ledger (it holds: {listed}); point uet "
        "at a new or existing ledger file")


def _read_version(conn: sqlite3.Connection, path: str) -> int | None:
    conn.execute("BEGIN")
    try:
        return ledger_version(conn, path)
    finally:
        rollback(conn)  # a read-only transaction: nothing to keep


def peek_version(path: str) -> int | None:
    """A ledger file's schema version without changing anything (None: no ledger yet)."""
    if path == ":memory:" or not os.path.exists(path):
        return None
    from urllib.parse import quote  # only `uet migrate` needs it
    try:
        conn = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True)
        try:
            return _read_version(conn, path)
        finally:
            conn.close()
    except DRIVER_ERRORS as exc:
        raise translate_error(exc, path, 0) from None


def check_current(backend: SQLiteLedger) -> int:
    """For a read-only open: the ledger must exist and be at this code's version."""
    with backend.locked_connection() as conn:
        try:
            version = _read_version(conn, backend.path)
        except DRIVER_ERRORS as exc:
            raise translate_error(exc, backend.path, backend.busy_timeout) from None
    return schema_versions.require_current(version, LATEST_VERSION, backend.path,
                                           nothing_there="is empty, not a ledger yet")


def migrate(backend: SQLiteLedger) -> tuple[int | None, int]:
    """Bring the ledger up to LATEST_VERSION; returns (version before, version after).

    A newer ledger, or a file that is not a ledger, is refused before anything is written;
    a migration that fails leaves the file as it was.
    """
    with backend.locked_connection() as conn:
        def read_version() -> int | None:
            try:
                return _read_version(conn, backend.path)
            except DRIVER_ERRORS as exc:
                raise translate_error(exc, backend.path, backend.busy_timeout) from None

        def apply(migration: Migration, known: int | None) -> int:
            return _apply(backend, conn, migration, adopt_seed=known == 0)

        result = schema_versions.migrate(backend.path, MIGRATIONS, read_version, apply)
        # Only now that the file is known to be a ledger may its journal mode be changed
        # (a persistent write); a ledger someone switched out of WAL is switched back.
        backend.enable_wal()
        return result


def _apply(backend: SQLiteLedger, conn: sqlite3.Connection, migration: Migration, *,
           adopt_seed: bool) -> int:
    # Rebuilding tables needs foreign-key enforcement off, and SQLite only lets that change
    # outside a transaction; `PRAGMA foreign_key_check` stands in for it before COMMIT.
    try:
        if adopt_seed:
            conn.execute("PRAGMA foreign_keys=OFF")
        try:
            conn.execute("BEGIN IMMEDIATE")
            current = ledger_version(conn, backend.path)
            schema_versions.refuse_newer(current, LATEST_VERSION, backend.path)
            if current is not None and current >= migration.version:
                conn.execute("COMMIT")  # another process got here first
                return current
            if current == 0:
                if not adopt_seed:
                    raise MigrationError(f"ledger {backend.path} changed while it was being "
                                         "created; open it again")
                _adopt_seed(conn, migration, backend.path)
            else:
                for statement in migration.statements():
                    conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.name, utc_now()))
            conn.execute("COMMIT")
            return migration.version
        except BaseException:
            rollback(conn)
            raise
        finally:
            if adopt_seed:
                conn.execute("PRAGMA foreign_keys=ON")
    except DRIVER_ERRORS as exc:
        raise schema_versions.migration_failed(
            migration, backend.path,
            translate_error(exc, backend.path, backend.busy_timeout)) from None


def _seed_timestamp(value: _SQLValue) -> _SQLValue:
    """A seed timestamp in the ledger's format; a value that is no timestamp stays as it was."""
    if not isinstance(value, str):
        return value
    try:
        return normalize_timestamp(value, "timestamp")
    except ValueError:
        return value


def _seed_select(table: str) -> str:
    """The SELECT list that copies a seed table's columns: timestamps in the ledger's format,
    text that is not JSON kept inside a JSON object (the new tables check JSON columns)."""
    parts = []
    for column in SEED_COLUMNS[table]:
        if column in ("created_at", "started_at", "ended_at", "timestamp"):
            parts.append(f"uet_seed_timestamp({column})")
        elif column in ("metadata", "data"):
            parts.append(f"CASE WHEN {column} IS NULL OR json_valid({column}) THEN {column} "
                         f"ELSE json_object('seed_text', {column}) END")
        else:
            parts.append(column)
    return ", ".join(parts)


_ORPHAN = "(run_id IS NULL OR run_id NOT IN (SELECT run_id FROM _uet_seed_runs))"


def _adopt_seed(conn: sqlite3.Connection, initial: Migration, path: str) -> None:
    """Turn a seed ledger into version 1 in place, keeping every row.

    SQLite's documented way to change a table's definition: move the old tables aside, create
    the new ones from the same 0001 script a fresh ledger runs (so both end with identical
    schemas), copy the rows, drop the old tables, then check the foreign keys. The seed
    never enforced foreign keys: step attempts and events of runs that do not exist are kept
    in `seed_orphan_step_attempts` / `seed_orphan_run_events`, outside the ledger proper.
    """
    conn.create_function("uet_seed_timestamp", 1, _seed_timestamp, deterministic=True)
    for index in SEED_INDEXES:
        conn.execute(f"DROP INDEX IF EXISTS {index}")  # names from the constant above
    for table in SEED_COLUMNS:
        conn.execute(f"ALTER TABLE {table} RENAME TO _uet_seed_{table}")
    for table in ("step_attempts", "run_events"):
        if conn.execute(f"SELECT 1 FROM _uet_seed_{table} WHERE {_ORPHAN} LIMIT 1").fetchone():
            conn.execute(f"CREATE TABLE seed_orphan_{table} AS "
                         f"SELECT * FROM _uet_seed_{table} WHERE {_ORPHAN}")
    for statement in initial.statements():
        conn.execute(statement)
    conn.execute(f"INSERT INTO runs ({', '.join(SEED_COLUMNS['runs'])}) "
                 f"SELECT {_seed_select('runs')} FROM _uet_seed_runs")
    conn.execute(
        f"INSERT INTO step_attempts ({', '.join(SEED_COLUMNS['step_attempts'])}, attempt) "
        f"SELECT {_seed_select('step_attempts')}, row_number() OVER (PARTITION BY run_id, "
        "sequence ORDER BY uet_seed_timestamp(started_at), rowid) "
        f"FROM _uet_seed_step_attempts WHERE NOT {_ORPHAN}")
    conn.execute(
        f"INSERT INTO run_events ({', '.join(SEED_COLUMNS['run_events'])}, seq) "
        f"SELECT {_seed_select('run_events')}, row_number() OVER "
        "(ORDER BY uet_seed_timestamp(timestamp), rowid) "
        f"FROM _uet_seed_run_events WHERE NOT {_ORPHAN}")
    for table in reversed(tuple(SEED_COLUMNS)):
        conn.execute(f"DROP TABLE _uet_seed_{table}")
    if conn.execute("PRAGMA foreign_key_check").fetchone() is not None:
        raise MigrationError(f"cannot adopt the seed ledger {path}: rows still point at runs "
                             "that do not exist after the copy; nothing was changed")

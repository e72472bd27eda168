"""Schema versions of the SQLite ledger: inspection, numbered migrations, seed adoption.

Each migration runs in its own BEGIN IMMEDIATE transaction, re-checks the version once it
holds the write lock (so concurrent openers never apply one twice) and records itself in
`schema_migrations`.
"""

from __future__ import annotations

import sqlite3

from uet.errors import MigrationError, NotALedgerError, SchemaVersionError
from uet.state.ids import utc_now
from uet.state.sqlfiles import Migration, load_migrations
from uet.state.sqlite_backend import SQLiteBackend, translate_error

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

    Reads only. Raises NotALedgerError for a database that holds something else.
    """
    tables = {name for (name,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}
    if "schema_migrations" in tables:
        version = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]
        if isinstance(version, int) and version >= 1:
            return version
        raise NotALedgerError(f"{path} has an empty or damaged schema_migrations table; "
                              "it is not a uet ledger this code can open")
    if not tables:
        return None
    if set(SEED_COLUMNS) <= tables:
        for table, expected in SEED_COLUMNS.items():
            # table names come from the constant above, never from a caller
            found = tuple(r[1] for r in conn.execute(f"PRAGMA table_info({table})"))
            if set(found) != set(expected):
                raise NotALedgerError(
                    f"{path} has a {table} table whose columns ({', '.join(found)}) are not "
                    "those of a uet ledger; refusing to change it")
        return 0
    raise NotALedgerError(
        f"{path} is a SQLite database but not a uet ledger (its tables: "
        f"{', '.join(sorted(tables))}); point uet at a new or existing ledger file")


def check_version(version: int | None, path: str) -> None:
    if version is not None and version > LATEST_VERSION:
        raise SchemaVersionError(
            f"ledger {path} has schema version {version}, newer than this uet understands "
            f"(up to {LATEST_VERSION}); upgrade uet to open it. Nothing was changed.")


def migrate(backend: SQLiteBackend) -> tuple[int | None, int]:
    """Bring the ledger up to LATEST_VERSION; returns (version before, version after).

    A newer ledger, or a file that is not a ledger, is refused before anything is written
    (switching the file to WAL is itself a write, so it waits for the verdict). A ledger
    someone switched out of WAL is switched back.
    """
    with backend._lock:
        conn = backend.connect()
        try:
            before = ledger_version(conn, backend.path)
        except sqlite3.Error as exc:
            raise translate_error(exc, backend.path, backend.busy_timeout) from None
        check_version(before, backend.path)
        # Only now that the file is known to be ours (or empty) may it be written.
        backend.enable_wal()
        if before == LATEST_VERSION:
            return before, before
        version = before
        for migration in MIGRATIONS:
            if version is None or migration.version > version:
                version = _apply(backend, conn, migration, adopt_seed=version == 0)
        return before, version


def _apply(backend: SQLiteBackend, conn: sqlite3.Connection, migration: Migration, *,
           adopt_seed: bool) -> int:
    # Rebuilding tables needs foreign-key enforcement off, and SQLite only lets that change
    # outside a transaction; `PRAGMA foreign_key_check` stands in for it before COMMIT.
    try:
        if adopt_seed:
            conn.execute("PRAGMA foreign_keys=OFF")
        try:
            conn.execute("BEGIN IMMEDIATE")
            current = ledger_version(conn, backend.path)
            check_version(current, backend.path)
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
            SQLiteBackend._rollback(conn)
            raise
        finally:
            if adopt_seed:
                conn.execute("PRAGMA foreign_keys=ON")
    except sqlite3.Error as exc:
        error = translate_error(exc, backend.path, backend.busy_timeout)
        raise MigrationError(
            f"could not apply migration {migration.version:04d}_{migration.name} to "
            f"{backend.path}: {error}; the ledger was left as it was") from None


def _adopt_seed(conn: sqlite3.Connection, initial: Migration, path: str) -> None:
    """Turn a seed ledger into version 1 in place, keeping every row.

    SQLite's documented way to change a table's definition: move the old tables aside, create
    the new ones from the same 0001 script a fresh ledger runs (so both end with identical
    schemas), copy the rows, drop the old tables, then check the foreign keys.
    """
    for index in SEED_INDEXES:
        conn.execute(f"DROP INDEX IF EXISTS {index}")  # names from the constant above
    for table in SEED_COLUMNS:
        conn.execute(f"ALTER TABLE {table} RENAME TO _uet_seed_{table}")
    for statement in initial.statements():
        conn.execute(statement)
    run_cols = ", ".join(SEED_COLUMNS["runs"])
    conn.execute(f"INSERT INTO runs ({run_cols}) SELECT {run_cols} FROM _uet_seed_runs")
    step_cols = ", ".join(SEED_COLUMNS["step_attempts"])
    conn.execute(
        f"INSERT INTO step_attempts ({step_cols}, attempt) SELECT {step_cols}, "
        "row_number() OVER (PARTITION BY run_id, sequence ORDER BY started_at, rowid) "
        "FROM _uet_seed_step_attempts")
    event_cols = ", ".join(SEED_COLUMNS["run_events"])
    conn.execute(
        f"INSERT INTO run_events ({event_cols}, seq) SELECT {event_cols}, "
        "row_number() OVER (ORDER BY timestamp, rowid) FROM _uet_seed_run_events")
    for table in reversed(tuple(SEED_COLUMNS)):
        conn.execute(f"DROP TABLE _uet_seed_{table}")
    dangling: dict[str, int] = {}
    for table, *_ in conn.execute("PRAGMA foreign_key_check"):
        dangling[table] = dangling.get(table, 0) + 1
    if dangling:
        counts = ", ".join(f"{n} {table} rows" for table, n in sorted(dangling.items()))
        raise MigrationError(
            f"cannot adopt the seed ledger {path}: {counts} point at runs that do not exist. "
            "Delete or repair those rows (e.g. with the sqlite3 shell) and open it again; "
            "nothing was changed")

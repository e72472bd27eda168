"""A drop-in for code written against the framework's original `core/state/db.py`: change its
import line to `from uet.compat import Database, get_db, init_db`, nothing else."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import weakref
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from typing import Any, Callable, ContextManager, Iterator, Mapping, Sequence, overload

from uet.errors import StorageError, UetError
from uet.state import Database as _StateDatabase
from uet.state.backends.sqlite import SQLiteBackend
from uet.state.events import RESERVED_EVENT_TYPES
from uet.state.instances import process_instance
from uet.state.names import MEMORY, is_postgres_url

__all__ = ["Database", "get_db", "init_db", "ReadOnlyConnection", "ReadOnlyCursor",
           "ReadOnlyConnectionError", "ConnUnavailableError"]

_WRITE_CALLS = ("create_run, update_run, delete_run, create_step_attempt, "
                "update_step_attempt, create_event")


class ReadOnlyConnectionError(StorageError, sqlite3.OperationalError):
    """A statement through `Database.conn` tried to write (or to open a transaction, attach
    a database or change a setting of the shared in-memory connection). The ledger is
    written through the API. Both a uet `StorageError` and a `sqlite3.OperationalError`."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        # as sqlite3 sets them on its own errors, for code that inspects them
        self.sqlite_errorcode = sqlite3.SQLITE_READONLY
        self.sqlite_errorname = "SQLITE_READONLY"


class ConnUnavailableError(UetError, AttributeError):
    """`Database.conn` on a ledger that is not SQLite (it exists only for SQLite ledgers).
    An `AttributeError` too, so `hasattr(db, "conn")` and `getattr(db, "conn", None)` say
    there is none."""


# -- the read-only connection ----------------------------------------------------------------

# Pragmas that take an argument but only read (`PRAGMA table_info(runs)`, also as table-valued
# functions `pragma_table_info('runs')`); any other pragma with an argument sets something.
_READING_PRAGMAS = frozenset({
    "table_info", "table_xinfo", "table_list", "index_info", "index_xinfo", "index_list",
    "foreign_key_list", "foreign_key_check", "integrity_check", "quick_check",
})
# Connections a forked child inherited: never used or closed there (SQLite's rule), kept
# referenced so that they are not closed by garbage collection either.
_inherited: list[sqlite3.Connection] = []


def _refused(path: str, what: str) -> ReadOnlyConnectionError:
    return ReadOnlyConnectionError(
        f"db.conn of ledger {path} is read-only and refused {what}: the ledger is written "
        f"through the API ({_WRITE_CALLS}, transition_run, ...), which checks every change "
        "and records its event")


class ReadOnlyConnection:
    """What `Database.conn` returns on SQLite: a DB-API connection that reads the ledger.

    `execute`, `executemany`, `executescript` and `cursor()` work as on a
    `sqlite3.Connection`; rows are `sqlite3.Row` (index and key access) unless
    `row_factory` is changed. Writes raise `ReadOnlyConnectionError`. `commit()` and
    `rollback()` end a read transaction the caller began (a no-op otherwise); `close()`
    closes this connection (the next `db.conn` opens a new one), not the ledger.

    ATTACH/DETACH and pragmas that set something are refused too. A file ledger is read
    through a connection of its own (`mode=ro`, `query_only`, in autocommit: each statement
    sees what writers had committed; BEGIN ... COMMIT hold one snapshot over several reads).
    An in-memory ledger has no second connection: each call runs on the ledger's own
    connection under its lock, with `query_only` on for the call and BEGIN/SAVEPOINT
    refused, and its rows are fetched before the lock is released.
    """

    def __init__(self, db: "Database") -> None:
        self._db = db
        self._path = db.db_path
        self._memory = db.db_path == MEMORY
        self._conn: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._closed = False
        self._lock = threading.RLock()
        self._denied: list[str] = []  # what the authorizer refused during the current call
        self.row_factory: Callable[[sqlite3.Cursor, tuple[Any, ...]], Any] | None = sqlite3.Row
        if not self._memory:
            self._conn = _open_read_only(db._compat_file, db.busy_timeout)
            self._conn.set_authorizer(self._authorize)

    # -- what the original's users call -----------------------------------------------------

    def cursor(self) -> "ReadOnlyCursor":
        """A new cursor on this connection."""
        self._check_open()
        return ReadOnlyCursor(self)

    def execute(self, sql: str, parameters: Sequence[Any] | Mapping[str, Any] = ()
                ) -> "ReadOnlyCursor":
        """Run one statement; returns its cursor (as `sqlite3.Connection.execute`)."""
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Any) -> "ReadOnlyCursor":
        """Run one statement for each parameter set (a write: refused)."""
        return self.cursor().executemany(sql, seq_of_parameters)

    def executescript(self, sql_script: str) -> "ReadOnlyCursor":
        """Run a script of statements (any write in it: refused)."""
        return self.cursor().executescript(sql_script)

    def commit(self) -> None:
        """End a read transaction the caller began on a file ledger's connection; else a
        no-op (nothing is ever written through this connection)."""
        self._end_transaction()

    def rollback(self) -> None:
        """As `commit()`: nothing written through this connection can be undone."""
        self._end_transaction()

    def iterdump(self) -> Iterator[str]:
        """The ledger as SQL text (as `sqlite3.Connection.iterdump`)."""
        with self._use() as conn:
            lines = list(conn.iterdump())
        return iter(lines)

    def backup(self, target: sqlite3.Connection, **options: Any) -> None:
        """Copy the ledger into `target`, a `sqlite3.Connection` (as
        `sqlite3.Connection.backup`); the ledger itself is only read."""
        if isinstance(target, ReadOnlyConnection):
            raise _refused(self._path, "to be the target of a backup")
        with self._use() as conn:
            conn.backup(target, **options)

    @property
    def in_transaction(self) -> bool:
        """Whether a read transaction the caller began is open (never on a memory ledger)."""
        return bool(self._conn is not None and not self._closed and self._conn.in_transaction)

    @property
    def closed(self) -> bool:
        """Whether `close()` was called on this connection or its Database."""
        return self._closed

    def close(self) -> None:
        """Close this read-only connection (not the ledger); `db.conn` opens a new one."""
        with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
            if conn is not None and self._pid == os.getpid():
                conn.close()

    def __enter__(self) -> "ReadOnlyConnection":
        return self

    def __exit__(self, *exc_info: object) -> None:
        # as `with sqlite3.connect(...) as conn:`: ends the transaction, keeps the connection
        self._end_transaction()

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(
            f"db.conn is a read-only view of the ledger and has no {name!r}: it offers "
            "execute, executemany, executescript, cursor, commit, rollback, iterdump, backup, "
            "row_factory, in_transaction and close; write through the Database's methods")

    def __repr__(self) -> str:
        return f"<uet.compat.ReadOnlyConnection to {self._path!r}>"

    # -- internals --------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"db.conn of ledger {self._path} is closed; take db.conn again "
                               "(after db.connect() if the ledger was closed)")
        if self._pid != os.getpid():
            raise StorageError(f"db.conn of ledger {self._path} was opened by process "
                               f"{self._pid}; a forked process takes db.conn again")

    def _end_transaction(self) -> None:
        with self._lock:
            if self._conn is not None and not self._closed and self._conn.in_transaction:
                self._conn.execute("ROLLBACK")  # only reads happened in it

    def _authorize(self, action: int, arg1: str | None, arg2: str | None,
                   _db: str | None, _trigger: str | None) -> int:
        # `query_only` (and a file's `mode=ro`) refuse every data change; this refuses what
        # would change the connection itself: attached databases, settings, and on a memory
        # ledger (whose connection is the ledger's own) transactions
        if action in (sqlite3.SQLITE_TRANSACTION, sqlite3.SQLITE_SAVEPOINT) and self._memory:
            what = arg1 if action == sqlite3.SQLITE_TRANSACTION else f"SAVEPOINT {arg2}"
            self._denied.append(
                f"{what} (db.conn of an in-memory ledger shares the "
                "ledger's own connection: each statement is a read of its own)")
        elif action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
            self._denied.append("ATTACH/DETACH")
        elif (action == sqlite3.SQLITE_PRAGMA and arg2 is not None
              and (arg1 or "").lower() not in _READING_PRAGMAS):
            self._denied.append(f"setting PRAGMA {arg1}")
        else:
            return sqlite3.SQLITE_OK
        return sqlite3.SQLITE_DENY

    def _translated(self, exc: sqlite3.Error) -> Exception:
        code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
        if code == sqlite3.SQLITE_AUTH and self._denied:
            return _refused(self._path, self._denied[-1])
        if code == sqlite3.SQLITE_READONLY:
            return _refused(self._path, f"a write ({exc})")
        return exc

    @contextmanager
    def _use(self) -> Iterator[sqlite3.Connection]:
        """The sqlite3 connection to run a call on, with writes refused with a clear error."""
        if not self._memory:
            with self._lock:
                self._check_open()
                assert self._conn is not None
                self._denied = []
                try:
                    yield self._conn
                except sqlite3.Error as exc:
                    error = self._translated(exc)
                    if error is exc:
                        raise
                    raise error from None
            return
        self._check_open()
        backend = self._db.backend
        assert isinstance(backend, SQLiteBackend)  # a memory ledger is SQLite's
        with backend.locked_connection() as conn:
            self._denied = []
            was_query_only = conn.execute("PRAGMA query_only").fetchone()[0]
            conn.execute("PRAGMA query_only=ON")
            conn.set_authorizer(self._authorize)
            try:
                yield conn
            except sqlite3.Error as exc:
                error = self._translated(exc)
                if error is exc:
                    raise
                raise error from None
            finally:
                conn.set_authorizer(None)
                if not was_query_only:
                    conn.execute("PRAGMA query_only=OFF")


def _open_read_only(path: str, busy_timeout: float) -> sqlite3.Connection:
    """A read-only connection to a ledger file that sees what WAL writers commit."""
    from urllib.parse import quote
    uri = f"file:{quote(path)}?mode=ro"
    folder = os.path.dirname(path)
    if not os.access(folder, os.W_OK) and not os.path.exists(path + "-wal"):
        # nothing can be writing a file in a folder no one here may write (a read-only
        # mount): read it as it is, without the shared-memory file SQLite could not create
        uri += "&immutable=1"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=busy_timeout, isolation_level=None,
                               check_same_thread=False)
    except sqlite3.Error as exc:
        raise StorageError(f"cannot open ledger {path} for reading ({exc})") from None
    try:
        conn.execute("PRAGMA query_only=ON")
        conn.execute("PRAGMA foreign_keys=ON")
    except sqlite3.Error as exc:
        conn.close()
        raise StorageError(f"cannot open ledger {path} for reading ({exc})") from None
    return conn


class ReadOnlyCursor:
    """A DB-API cursor of `ReadOnlyConnection` (the subset of `sqlite3.Cursor` that reads)."""

    def __init__(self, connection: ReadOnlyConnection) -> None:
        self.connection = connection
        self.row_factory = connection.row_factory
        self.arraysize = 1
        self.description: tuple[tuple[Any, ...], ...] | None = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self._cursor: sqlite3.Cursor | None = None  # a file ledger's, read as it is fetched
        self._rows: list[Any] = []                  # a memory ledger's, fetched under the lock
        self._position = 0

    def execute(self, sql: str, parameters: Sequence[Any] | Mapping[str, Any] = ()
                ) -> "ReadOnlyCursor":
        """Run one statement; its rows are then fetched from this cursor."""
        return self._run(lambda cursor: cursor.execute(sql, parameters))

    def executemany(self, sql: str, seq_of_parameters: Any) -> "ReadOnlyCursor":
        """Run one statement for each parameter set (only writes do that: refused)."""
        return self._run(lambda cursor: cursor.executemany(sql, seq_of_parameters))

    def executescript(self, sql_script: str) -> "ReadOnlyCursor":
        """Run a script of statements."""
        return self._run(lambda cursor: cursor.executescript(sql_script))

    def _run(self, action: Callable[[sqlite3.Cursor], Any]) -> "ReadOnlyCursor":
        self.close()
        with self.connection._use() as conn:
            cursor = conn.cursor()
            cursor.row_factory = self.row_factory
            kept = False  # a file ledger's cursor stays open, read as it is fetched
            try:
                action(cursor)
                self.description = cursor.description
                self.rowcount = cursor.rowcount
                self.lastrowid = cursor.lastrowid
                if self.connection._memory:
                    # the shared connection is used by other threads once the lock is free
                    self._rows, self._position = cursor.fetchall(), 0
                else:
                    self._cursor, kept = cursor, True
            finally:
                if not kept:
                    cursor.close()
        return self

    def fetchone(self) -> Any:
        """The next row, or None."""
        if self._cursor is not None:
            return self._cursor.fetchone()
        if self._position >= len(self._rows):
            return None
        self._position += 1
        return self._rows[self._position - 1]

    def fetchmany(self, size: int | None = None) -> list[Any]:
        """The next `size` rows (default `arraysize`)."""
        size = self.arraysize if size is None else size
        if self._cursor is not None:
            return self._cursor.fetchmany(size)
        rows = self._rows[self._position:self._position + max(size, 0)]
        self._position += len(rows)
        return rows

    def fetchall(self) -> list[Any]:
        """The remaining rows."""
        if self._cursor is not None:
            return self._cursor.fetchall()
        rows = self._rows[self._position:]
        self._position = len(self._rows)
        return rows

    def __iter__(self) -> "ReadOnlyCursor":
        return self

    def __next__(self) -> Any:
        row = self.fetchone()
        if row is None:
            raise StopIteration
        return row

    def close(self) -> None:
        """Release the statement (the cursor can run another)."""
        cursor, self._cursor = self._cursor, None
        if cursor is not None:
            try:
                cursor.close()
            except sqlite3.ProgrammingError:
                pass  # its connection was closed already
        self._rows, self._position = [], 0

    def setinputsizes(self, sizes: object) -> None:
        """DB-API: nothing to do."""

    def setoutputsize(self, size: object, column: object = None) -> None:
        """DB-API: nothing to do."""


# -- whole-row write-back ----------------------------------------------------------------------

_LEDGER_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def _instant(value: object) -> datetime | None:
    """A timestamp as an aware datetime (naive taken as UTC, as the ledger does), or None."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def _json_text(value: object) -> str | None:
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return None


def same_value(name: str, current: object, given: object) -> bool:
    """Whether a value written back equals the one the row holds: JSON values as values
    (key order aside, but 1 is not 1.0 and True is not 1), a `*_at` timestamp as the same
    instant in any ISO-8601 spelling or as a `datetime`, anything else of the same type and
    equal."""
    if isinstance(current, (dict, list)):
        if not isinstance(given, (dict, list, tuple)):
            return False
        text = _json_text(given)
        return text is not None and text == _json_text(current)
    if (name.endswith("_at") and isinstance(current, str) and current != given
            and _LEDGER_TIMESTAMP.fullmatch(current)):
        moment = _instant(given)
        return moment is not None and moment == _instant(current)
    return type(current) is type(given) and current == given


@overload
def changed_only(current: Mapping[str, Any] | None,
                 updates: Mapping[str, Any]) -> Mapping[str, Any]: ...


@overload
def changed_only(current: Mapping[str, Any] | None, updates: object) -> object: ...


def changed_only(current: Mapping[str, Any] | None, updates: object) -> object:
    """`updates` without the fields whose value equals the row's current one; anything that
    is not a dict (or a row that does not exist) is passed on for the ledger to refuse."""
    if current is None or not isinstance(updates, Mapping):
        return updates
    return {name: value for name, value in updates.items()
            if not (isinstance(name, str) and name in current
                    and same_value(name, current[name], value))}


# -- the Database ------------------------------------------------------------------------------

class Database(_StateDatabase):
    """`uet.state.Database` for code written against the original `core/state/db.py`.

    What differs, and only for such code:

    - `list_events(run_id)` returns the events the caller wrote with `create_event`, in
      order; the ledger's own lifecycle events (`uet.state.events.RESERVED_EVENT_TYPES`:
      `run.created`, `run.state_changed`, ...) stay in the trail (`events_since`,
      `follow_events`, the CLI).
    - `.conn` is a read-only DB-API connection to a SQLite ledger (rows are `sqlite3.Row`, as
      the original's were) for code that runs its own SELECTs. A write through it raises
      `ReadOnlyConnectionError`, both a `uet.errors.StorageError` and a
      `sqlite3.OperationalError` (what code written for the original catches). On
      PostgreSQL `.conn` raises `ConnUnavailableError` (a `UetError` and an
      `AttributeError`, so `hasattr(db, "conn")` is False there).
    - `update_run` / `update_step_attempt` accept a whole row written back: values equal to
      the row's current ones (the unchanged state, run_id, created_at, ...; JSON compared as
      values, timestamps as instants) are dropped before the update, so only real changes
      are applied and checked. A changed read-only column is still refused.

    Everything else is `uet.state.Database`: the same ledger file, the same errors.
    """

    def __init__(self, db_path: str | os.PathLike[str] | None = None, **options: Any) -> None:
        self._compat_lock = threading.Lock()
        self._compat_conn: ReadOnlyConnection | None = None
        super().__init__(db_path, **options)
        _live.add(self)
        # fixed now, as the ledger's own: a later chdir must not point .conn elsewhere
        self._compat_file = (self.db_path if self.db_path == MEMORY
                             or is_postgres_url(self.db_path)
                             else os.path.abspath(self.db_path))

    @property
    def conn(self) -> ReadOnlyConnection:
        """A read-only DB-API connection to this SQLite ledger (rows are `sqlite3.Row`), for
        code that runs its own SELECTs; writes through it raise ReadOnlyConnectionError.

        On PostgreSQL it raises ConnUnavailableError; after `close()` StorageError (until
        `connect()`).
        """
        if self.engine != "sqlite":
            raise ConnUnavailableError(
                f"db.conn exists only for SQLite ledgers; ledger {self!r} is {self.engine}. "
                "Read through the API instead: get_run, list_runs, get_step_attempt, "
                "list_step_attempts, list_events, events_since (or query PostgreSQL with its "
                "own driver)", name="conn", obj=self)
        if self.closed:
            raise StorageError(f"ledger {self.db_path} is closed; call connect() to reopen it")
        with self._compat_lock:
            conn = self._compat_conn
            if conn is not None and conn._pid != os.getpid():
                # a forked child: never touch the parent's connection (SQLite's rule)
                if conn._conn is not None:
                    _inherited.append(conn._conn)
                    conn._conn = None
                conn = None
            if conn is None or conn.closed:
                conn = self._compat_conn = ReadOnlyConnection(self)
            return conn

    def close(self) -> None:
        """Close the ledger and its read-only `.conn`."""
        with self._compat_lock:
            conn, self._compat_conn = self._compat_conn, None
        if conn is not None:
            conn.close()
        super().close()

    def list_events(self, run_id: str) -> list[dict[str, Any]]:
        """The events the caller wrote with `create_event` for this run, in the order they
        were recorded; the ledger's own lifecycle events (RESERVED_EVENT_TYPES) are left out
        (they stay in the trail: `events_since`, `follow_events`, `uet events`)."""
        return [event for event in super().list_events(run_id)
                if event["event_type"] not in RESERVED_EVENT_TYPES]

    def update_run(self, run_id: str, updates: Mapping[str, Any]) -> dict[str, Any]:
        """`uet.state.Database.update_run`, accepting a whole row written back: fields equal
        to the run's current values are dropped first (so an unchanged state or created_at
        is no change); a changed read-only field is still refused. The comparison and the
        update are one transaction."""
        with self._together():
            return super().update_run(
                run_id, changed_only(self._current(self.get_run, run_id), updates))

    def update_step_attempt(self, step_attempt_id: str,
                            updates: Mapping[str, Any]) -> dict[str, Any]:
        """`uet.state.Database.update_step_attempt`, accepting a whole row written back (as
        `update_run`)."""
        with self._together():
            return super().update_step_attempt(step_attempt_id, changed_only(
                self._current(self.get_step_attempt, step_attempt_id), updates))

    def _together(self) -> ContextManager[Any]:
        # the row compared with is the row updated: no other writer can come in between
        atomic = getattr(self, "atomic", None)  # uet.state's transaction block, where it has one
        return atomic() if atomic is not None else nullcontext()

    @staticmethod
    def _current(get: Callable[[str], dict[str, Any] | None],
                 entity_id: str) -> dict[str, Any] | None:
        # A bad id, a closed ledger: the update itself then raises its own error.
        try:
            return get(entity_id)
        except UetError:
            return None


# -- process-wide instances --------------------------------------------------------------------

_live: "weakref.WeakSet[Database]" = weakref.WeakSet()


def _reset_locks_in_child() -> None:
    # another thread may have held a lock at fork time: the child starts with free ones
    for db in list(_live):
        db._compat_lock = threading.Lock()
        if db._compat_conn is not None:
            db._compat_conn._lock = threading.RLock()


os.register_at_fork(after_in_child=_reset_locks_in_child)


def get_db(db_path: str | os.PathLike[str] | None = None, *, durability: str | None = None,
           busy_timeout: float | None = None) -> Database:
    """The process-wide compat Database for `db_path` (default: $UET_DATABASE, else
    `.ledger/framework.db`), created on first use; safe to call from many threads.

    As `uet.state.get_db`: each database has its own instance, options apply on creation and
    asking for other ones later raises ValidationError. The instances are not
    `uet.state.get_db`'s, but a file is the same ledger.
    """
    return process_instance(Database, db_path, durability=durability,
                            busy_timeout=busy_timeout)


def init_db(db_path: str | os.PathLike[str] | None = None, *, durability: str = "normal",
            busy_timeout: float | None = None) -> Database:
    """A new compat Database instance (schema created or upgraded) on every call."""
    options: dict[str, Any] = {"durability": durability}
    if busy_timeout is not None:
        options["busy_timeout"] = busy_timeout
    return Database(db_path, **options)

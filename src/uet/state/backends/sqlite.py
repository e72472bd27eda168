"""The SQLite engine under the ledger: connections, pragmas, transactions, error translation.

The only module that imports sqlite3 for the ledger's data; nothing above it sees a driver
exception.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import threading
import time
import weakref
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

from uet.errors import NotALedgerError, StorageError, UetError
import uet.state.backends.sqlite_schema as sqlite_schema
from uet.state.backends.common import Params, Transaction, rows_of
from uet.state.backends.sqlite_errors import DRIVER_ERRORS, rollback, translate_error
from uet.state.locations import keep_out_of_git, missing_folders, remove_folders
from uet.state.names import MEMORY
from uet.state.sqlfiles import load_queries

QUERIES = load_queries("sqlite")
_T = TypeVar("_T")

DURABILITY = {
    # WAL + NORMAL: a commit survives the process being killed at any instant; only a power
    # loss or OS crash may drop the last commits (never corrupting the file).
    "normal": "PRAGMA synchronous=NORMAL",
    # WAL + FULL: every commit is fsynced before the call returns; survives power loss too.
    "full": "PRAGMA synchronous=FULL",
}
DEFAULT_BUSY_TIMEOUT = 10.0

_live_backends: "weakref.WeakSet[SQLiteBackend]" = weakref.WeakSet()
_held_for_fork: list["SQLiteBackend"] = []
# Connections that were inside a transaction of the forking thread when it forked: kept
# referenced and never used or closed in the child.
_inherited_connections: list[sqlite3.Connection] = []


def _before_fork() -> None:
    # SQLite keeps per-file lock bookkeeping in process memory. A child that inherits an
    # open connection believes it already holds the parent's file locks (POSIX locks are
    # not inherited), so the parent could checkpoint and delete the WAL under the child's
    # writes. Close file connections before fork, with no thread using them; both sides
    # reopen on next use.
    for backend in list(_live_backends):
        backend._lock.acquire()
        _held_for_fork.append(backend)
        backend._close_for_fork()


def _after_fork_in_parent() -> None:
    while _held_for_fork:
        _held_for_fork.pop()._lock.release()


def _after_fork_in_child() -> None:
    while _held_for_fork:
        _held_for_fork.pop()._after_fork()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)


def _lenient_text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


class SQLiteBackend:
    """One ledger file (or private in-memory database) with one connection, shared by the
    threads of a process.

    One connection guarded by a lock: writes are serialised by SQLite anyway, and queueing
    threads on a Python lock is fairer and faster than SQLite's sleeping busy handler. A
    forked child opens its own connection on first use.
    """

    engine = "sqlite"
    placeholder = "?"  # of the statements assembled from whitelisted column names
    no_limit = -1      # the LIMIT parameter that means "every row"
    queries = QUERIES  # sql/queries.sql with the overrides of sql/sqlite/queries.sql

    def __init__(self, path: str, *, durability: str = "normal",
                 busy_timeout: float = DEFAULT_BUSY_TIMEOUT, read_only: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        self.durability = durability
        self.busy_timeout = busy_timeout
        self.is_memory = path == MEMORY
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._immutable = False  # opened as the file it is (nothing can be writing it)
        self._closed = False
        self._depth = 0  # nesting of the open write transaction (its thread holds _lock)
        # called with each outermost write transaction once it began (the Database's fence)
        self.on_begin: Callable[[Transaction], None] | None = None
        self._tx_thread = 0  # the thread of that transaction
        self._callbacks: list[list[Callable[[], None]]] = []  # per level: run after commit
        _live_backends.add(self)

    # -- connections ---------------------------------------------------------------------

    def connect(self) -> sqlite3.Connection:
        """The open connection (opening it if needed), configured for the ledger."""
        conn = self._conn
        if conn is not None:
            return conn
        if self._closed:
            raise StorageError(f"ledger {self.path} is closed")
        made: list[str] = []  # the folders this open creates (removed if it fails)
        if not self.is_memory and not self.read_only:
            parent = os.path.dirname(self.path)
            if parent:
                made = missing_folders(self.path)
                try:
                    os.makedirs(parent, exist_ok=True)
                except OSError as exc:
                    remove_folders(made)
                    raise StorageError(f"cannot create the folder of ledger {self.path}: "
                                       f"{exc.strerror}") from None
        if not self.is_memory and os.path.isdir(self.path):
            raise StorageError(f"cannot open ledger {self.path}: it is a folder, not a file")
        target, uri = self.path, False
        if self.read_only and not self.is_memory:
            if not os.path.exists(self.path):
                raise NotALedgerError(f"no ledger at {self.path}")
            from urllib.parse import quote
            target, uri = f"file:{quote(self.path)}?mode=ro", True
            self._immutable = self._unchangeable()
            if self._immutable:
                target += "&immutable=1"
        try:
            conn = sqlite3.connect(target, timeout=self.busy_timeout, uri=uri,
                                   isolation_level=None, check_same_thread=False,
                                   cached_statements=256)
        except DRIVER_ERRORS as exc:
            remove_folders(made)
            raise translate_error(exc, self.path, self.busy_timeout) from None
        try:
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(DURABILITY[self.durability])
            if self.read_only:
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # opens it
        except DRIVER_ERRORS as exc:
            conn.close()
            remove_folders(made)
            raise self._blocked(exc) or translate_error(exc, self.path,
                                                        self.busy_timeout) from None
        self._conn = conn
        if not self.is_memory and not self.read_only:
            keep_out_of_git(self.path, made)
        return conn

    def _journal_mode(self, conn: sqlite3.Connection) -> str:
        """The file's journal mode; read from its header when it was opened as the file it
        is (`immutable`), where SQLite reports none of its own."""
        if self._immutable:
            with open(self.path, "rb") as f:
                header = f.read(20)
            return "wal" if header[18:20] == b"\x02\x02" else "delete"
        mode: str = conn.execute("PRAGMA journal_mode").fetchone()[0]
        return mode

    def _unchangeable(self) -> bool:
        """A ledger that nothing can be writing: in a folder this process may not write (a
        read-only mount, another user's folder) with no WAL file beside it — a WAL writer
        would have had to create one there. It is read as the file it is (SQLite's
        `immutable`), needing no shared-memory file that could not be created."""
        folder = os.path.dirname(os.path.abspath(self.path))
        return not os.access(folder, os.W_OK) and not os.path.exists(self.path + "-wal")

    def _blocked(self, exc: Exception) -> UetError | None:
        """For a read-only open that SQLite could not make: which file blocks it."""
        code = getattr(exc, "sqlite_errorcode", 0) or 0
        if not self.read_only or code & 0xFF not in (sqlite3.SQLITE_CANTOPEN,
                                                     sqlite3.SQLITE_READONLY):
            return None
        folder = os.path.dirname(os.path.abspath(self.path))
        for suffix in ("-shm", "-wal"):
            side = self.path + suffix
            if os.path.exists(side) and not os.access(side, os.R_OK | os.W_OK):
                return StorageError(
                    f"cannot read ledger {self.path}: {side} (a file of its write-ahead log) "
                    "cannot be opened for reading and writing by this user, which SQLite "
                    "needs even to read a ledger being written; ask its owner, or read a copy")
        if not os.access(folder, os.W_OK):
            return StorageError(
                f"cannot read ledger {self.path}: SQLite must create {self.path}-shm to read "
                f"a ledger being written, and the folder {folder} is not writable by this "
                "user (or is on a read-only file system); read a copy, or ask its owner")
        return None

    def enable_wal(self) -> str:
        """Switch the file to WAL (persistent in the file); returns the journal mode in force.

        Called only once the file is known to be a uet ledger (or empty): it writes the file.
        """
        if self.is_memory:
            return "memory"
        with self._lock:
            mode: str = self._run(
                lambda c: c.execute("PRAGMA journal_mode=WAL").fetchone()[0])
            return mode

    def close(self) -> None:
        """Close the connection, once a call or transaction of another thread has ended;
        later calls raise StorageError. An in-memory ledger is gone with it."""
        with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

    @property
    def closed(self) -> bool:
        """Whether `close()` was called (for good: later calls raise StorageError)."""
        return self._closed

    def _close_for_fork(self) -> None:
        conn = self._conn
        if self.is_memory or conn is None or conn.in_transaction:
            return  # memory: the child's own copy; a transaction: the forking thread's own
        self._conn = None
        conn.close()

    def _after_fork(self) -> None:
        self._lock = threading.RLock()  # the forking thread held it; the child starts free
        self._depth = 0
        self._callbacks = []
        if not self.is_memory and self._conn is not None:
            _inherited_connections.append(self._conn)
            self._conn = None

    # -- statements ----------------------------------------------------------------------

    def _run(self, action: Callable[[sqlite3.Connection], _T]) -> _T:
        try:
            return action(self.connect())
        except DRIVER_ERRORS as exc:
            raise translate_error(exc, self.path, self.busy_timeout) from None

    def query(self, sql: str, params: Params = ()) -> list[dict[str, Any]]:
        """Run one read statement; rows as dicts with JSON columns decoded. Text that is not
        UTF-8 (stored past uet's checks: raw SQL, another program) is read with its bad
        bytes as lone surrogates (U+DC80-U+DCFF), which the command line shows escaped."""
        def rows(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            try:
                return rows_of(conn.execute(sql, params))
            except sqlite3.OperationalError as exc:
                if "Could not decode to UTF-8" not in str(exc):  # the driver's own check
                    raise
                conn.text_factory = _lenient_text  # only for this read: it costs per value
                try:
                    return rows_of(conn.execute(sql, params))
                finally:
                    conn.text_factory = str
        with self._lock:
            return self._run(rows)

    def read(self, name: str, params: Params = ()) -> list[dict[str, Any]]:
        """Run a named read query (`queries`); rows as dicts."""
        return self.query(QUERIES[name], params)

    def query_value(self, sql: str, params: Params = ()) -> Any:
        """Run one read statement and return the first column of its first row (or None)."""
        with self._lock:
            row = self._run(lambda c: c.execute(sql, params).fetchone())
        return None if row is None else row[0]

    @contextmanager
    def locked_connection(self) -> Iterator[sqlite3.Connection]:
        """The backend's own connection, held for the caller's block (other threads wait),
        for code that runs its own statements on it (`uet.compat`'s read-only `.conn`)."""
        with self._lock:
            yield self.connect()

    def transaction(self) -> "_Transaction":
        """A write transaction: all of the block's statements commit together or not at all.

        BEGIN IMMEDIATE takes the write lock before the first read, so a read-then-write
        never needs to upgrade its lock (the upgrade is what fails with "database is
        locked" under concurrency); waiting for the lock is bounded by the busy timeout.
        Opened again by the thread that holds one (`Database.atomic()`, or a call inside
        it), it is a savepoint of the open transaction: an exception undoes only the inner
        block, and nothing is committed before the outermost block ends.
        """
        return _Transaction(self)

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Call `callback` once the calling thread's open transaction has committed; never
        if it (or the savepoint it was registered in) is rolled back."""
        if not self.in_transaction:
            raise RuntimeError("after_commit needs the calling thread's open transaction")
        self._callbacks[-1].append(callback)

    @property
    def in_transaction(self) -> bool:
        """Whether the calling thread holds this ledger's open write transaction."""
        return self._depth > 0 and self._tx_thread == threading.get_ident()

    @contextmanager
    def listen(self) -> Iterator[Callable[[float], None]]:
        """A wait(timeout) between reads of a follower: SQLite has no notifications, so it
        sleeps for the poll interval."""
        yield time.sleep

    def migrate(self) -> tuple[int | None, int]:
        """Bring the ledger's schema up to date; (version before, version after)."""
        return sqlite_schema.migrate(self)

    def check_current(self) -> int:
        """For a read-only open: the ledger must exist and be at this code's version."""
        return sqlite_schema.check_current(self)

    def peek_version(self) -> int | None:
        """The schema version without changing anything (None: no ledger there yet)."""
        return sqlite_schema.peek_version(self.path)

    def diagnostics(self) -> dict[str, Any]:
        """Pragmas, integrity and row counts, for `uet doctor`."""
        with self._lock:
            def read(conn: sqlite3.Connection) -> dict[str, Any]:
                tables = [r[0] for r in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' "
                    "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
                return {
                    "path": self.path,
                    "schema_version": conn.execute(
                        "SELECT max(version) FROM schema_migrations").fetchone()[0],
                    "journal_mode": self._journal_mode(conn),
                    "synchronous": {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(
                        conn.execute("PRAGMA synchronous").fetchone()[0], "?"),
                    "foreign_keys": bool(conn.execute("PRAGMA foreign_keys").fetchone()[0]),
                    "busy_timeout_ms": conn.execute("PRAGMA busy_timeout").fetchone()[0],
                    "integrity_check": [r[0] for r in conn.execute("PRAGMA integrity_check")],
                    "foreign_key_violations": len(
                        conn.execute("PRAGMA foreign_key_check").fetchall()),
                    # table names come from sqlite_master, quoted as identifiers
                    "row_counts": {t: conn.execute(
                        'SELECT count(*) FROM "' + t.replace('"', '""') + '"').fetchone()[0]
                        for t in tables},
                }
            return self._run(read)

    # -- long reads and copies (uet.state.portable: export, backup) -----------------------

    def _reader(self) -> sqlite3.Connection:
        """A connection of its own that only reads (`mode=ro`), for a long read that must not
        hold the backend's lock: other threads go on using the ledger meanwhile."""
        from urllib.parse import quote
        if self._closed:
            raise StorageError(f"ledger {self.path} is closed")
        if not os.path.exists(self.path):
            raise NotALedgerError(f"no ledger at {self.path}")
        target = f"file:{quote(self.path)}?mode=ro"
        if self._unchangeable():
            target += "&immutable=1"
        try:
            return sqlite3.connect(target, timeout=self.busy_timeout, uri=True,
                                   isolation_level=None, check_same_thread=False)
        except DRIVER_ERRORS as exc:
            raise self._blocked(exc) or translate_error(exc, self.path,
                                                        self.busy_timeout) from None

    @contextmanager
    def snapshot(self) -> Iterator["SQLiteSnapshot"]:
        """The ledger as committed when the block begins, for reads that take long (an
        export): one read transaction on a connection of its own, so every read in the block
        sees the same rows while writers go on (WAL: a reader never blocks a writer; only
        checkpoints wait for it). A ':memory:' ledger is read on its own connection, other
        threads of the process waiting meanwhile."""
        if self.is_memory:
            with self._lock:
                conn = self.connect()
                if conn.in_transaction:
                    raise StorageError(f"ledger {self.path}: a snapshot cannot be read inside "
                                       "an atomic() block of the same thread")
                self._run(lambda c: c.execute("BEGIN"))
                try:
                    yield SQLiteSnapshot(conn, self)
                finally:
                    rollback(conn)
            return
        conn = self._reader()
        try:
            try:  # the snapshot starts with the transaction's first read
                conn.execute("BEGIN")
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except DRIVER_ERRORS as exc:
                raise translate_error(exc, self.path, self.busy_timeout) from None
            yield SQLiteSnapshot(conn, self)
        finally:
            conn.close()

    def copy_to(self, path: str) -> None:
        """Copy the committed ledger into the new file `path`: SQLite's online backup API in
        a single step, which is one read transaction — a consistent copy of what was
        committed when it began, while writers go on (WAL: a reader never blocks them). A
        copy in several steps would start over each time another connection commits
        between two steps, so under steady writing it might never end."""
        if os.path.exists(path):
            raise StorageError(f"cannot copy ledger {self.path} to {path}: it exists")
        source = None
        try:
            if self.is_memory:
                with self._lock:
                    conn = self.connect()
                    if conn.in_transaction:
                        raise StorageError(f"ledger {self.path}: it cannot be copied inside "
                                           "an atomic() block of the same thread")
                    self._copy(conn, path)
            else:
                source = self._reader()
                self._copy(source, path)
        finally:
            if source is not None:
                source.close()

    def _copy(self, source: sqlite3.Connection, path: str) -> None:
        target = None
        try:
            target = sqlite3.connect(path, isolation_level=None)
            source.backup(target)  # pages=-1: every page in one step
        except DRIVER_ERRORS as exc:
            error = translate_error(exc, self.path, self.busy_timeout)
            raise StorageError(f"could not copy ledger {self.path} to {path}: {error}") from None
        finally:
            if target is not None:
                target.close()

    def check_copy(self, path: str) -> dict[str, Any]:
        """The health of a copy made by `copy_to`: `integrity_check` (its lines), the number
        of `foreign_key_check` violations, its schema version and how many runs it holds."""
        conn = None
        try:
            conn = sqlite3.connect(path, isolation_level=None)
            return {
                "integrity_check": [r[0] for r in conn.execute("PRAGMA integrity_check")],
                "foreign_key_violations": len(conn.execute("PRAGMA foreign_key_check")
                                              .fetchall()),
                "schema_version": conn.execute(
                    "SELECT max(version) FROM schema_migrations").fetchone()[0],
                "runs": conn.execute("SELECT count(*) FROM runs").fetchone()[0],
            }
        except DRIVER_ERRORS as exc:
            raise translate_error(exc, path, self.busy_timeout) from None
        finally:
            if conn is not None:
                conn.close()  # the last connection: SQLite removes its -wal and -shm


class SQLiteSnapshot:
    """The reads of `SQLiteBackend.snapshot()`: named queries, rows as tuples of the values
    as stored (JSON columns as their text, BLOBs as bytes; text that is not UTF-8 with its
    bad bytes as lone surrogates U+DC80-U+DCFF, as `SQLiteBackend.query` reads it)."""

    __slots__ = ("_conn", "_backend")

    def __init__(self, conn: sqlite3.Connection, backend: SQLiteBackend) -> None:
        self._conn, self._backend = conn, backend

    def rows(self, name: str, params: Params = ()
             ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run the named query: (its column names, its rows)."""
        conn, sql = self._conn, QUERIES[name]
        try:
            try:
                cursor = conn.execute(sql, params)
                found = cursor.fetchall()
            except sqlite3.OperationalError as exc:
                if "Could not decode to UTF-8" not in str(exc):
                    raise
                conn.text_factory = _lenient_text  # only for this read: it costs per value
                try:
                    cursor = conn.execute(sql, params)
                    found = cursor.fetchall()
                finally:
                    conn.text_factory = str
        except DRIVER_ERRORS as exc:
            raise translate_error(exc, self._backend.path,
                                  self._backend.busy_timeout) from None
        return [d[0] for d in cursor.description], found


class SQLiteTx(Transaction):
    """The statements of one open SQLite write transaction."""

    __slots__ = ()
    queries = QUERIES
    placeholder = SQLiteBackend.placeholder


class _Transaction:
    """The context manager of `SQLiteBackend.transaction()`: a class rather than a generator
    because every write enters one (twice inside an `atomic()` block), and a generator-based
    manager costs several times as much to enter and leave."""

    __slots__ = ("_backend", "_conn", "_savepoint", "_depth")

    def __init__(self, backend: SQLiteBackend) -> None:
        self._backend = backend

    def __enter__(self) -> SQLiteTx:
        backend = self._backend
        backend._lock.acquire()  # held by one thread for the whole block: others wait here
        try:
            conn = backend.connect()
            depth = backend._depth
            if depth:
                savepoint = f"uet_{depth}"  # from a counter, never from a caller
                conn.execute(f"SAVEPOINT {savepoint}")
            else:
                savepoint = None
                conn.execute("BEGIN IMMEDIATE")
                backend._tx_thread = threading.get_ident()
        except BaseException as exc:
            backend._lock.release()
            if isinstance(exc, DRIVER_ERRORS):
                raise translate_error(exc, backend.path, backend.busy_timeout) from None
            raise
        backend._depth = depth + 1
        backend._callbacks.append([])
        self._conn, self._savepoint, self._depth = conn, savepoint, depth
        tx = SQLiteTx(conn)
        if not depth and backend.on_begin is not None:
            try:
                backend.on_begin(tx)
            except BaseException:
                self.__exit__(*sys.exc_info())
                raise
        return tx

    def __exit__(self, exc_type: type | None, exc: BaseException | None,
                 traceback: object) -> None:
        backend, conn, savepoint = self._backend, self._conn, self._savepoint
        ended = False  # committed (or released into the enclosing block)
        try:
            if exc is None:
                try:
                    conn.execute(f"RELEASE {savepoint}" if savepoint else "COMMIT")
                    ended = True
                except BaseException as failed:
                    exc = failed
            if not ended:
                if savepoint is None:
                    rollback(conn)
                elif conn.in_transaction:  # SQLite may have ended it all (e.g. SQLITE_FULL)
                    try:
                        conn.execute(f"ROLLBACK TO {savepoint}")
                        conn.execute(f"RELEASE {savepoint}")
                    except sqlite3.Error:
                        pass  # the outer block's COMMIT or ROLLBACK settles what is left
                if isinstance(exc, DRIVER_ERRORS):
                    raise translate_error(exc, backend.path, backend.busy_timeout) from None
                if exc_type is None and exc is not None:
                    raise exc  # COMMIT itself was interrupted (KeyboardInterrupt)
        finally:
            callbacks = backend._callbacks.pop()
            if ended and savepoint:  # they wait for the enclosing block's commit
                backend._callbacks[-1].extend(callbacks)
            backend._depth = self._depth
            backend._lock.release()
        if ended and savepoint is None:
            for callback in callbacks:  # committed: the block's after-commit work, in order
                callback()

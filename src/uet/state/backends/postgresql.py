"""The PostgreSQL engine under the ledger: psycopg 3 connections from its pool, the
ledger's write lock, schema migrations, error translation and LISTEN/NOTIFY.

The only module that imports psycopg; nothing above it sees a driver exception. It offers
the SQLite backend's interface (`read`, `query`, `query_value`, `transaction`, `migrate`,
`check_current`, `diagnostics`, `listen`, `close`), so every public call returns the same
records on both engines.

Writes: no ledger-wide lock (migration 0004). Writers wait only for the rows they change
(compare-and-set reads lock their row, FOR UPDATE SKIP LOCKED when claiming), so their
commits share WAL flushes. Event `seq` comes from a sequence; a transaction's first seq is
marked in flight (a transaction-level shared advisory lock) until it ends, and followers
read only up to the horizon below the smallest seq in flight: a follower reading
`seq > cursor` never skips an event that commits late. The ledger's advisory lock (keyed
by its schema) now serves migrations only.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import psycopg
import psycopg_pool
from psycopg import sql as pg_sql
from psycopg.types.string import TextLoader

from uet.errors import ConstraintViolation, NotALedgerError, StorageError, UetError
from uet.state import schema_versions
from uet.state.backends.common import Params, Transaction, one_row, rows_of
from uet.state.backends.postgresql_errors import (POOL_MAX_SIZE, constraint_violation,
                                                  pool_wait, translate_error)
from uet.state.names import redact
from uet.state.ids import utc_now
from uet.state.sqlfiles import Migration, load_migrations, load_queries

QUERIES = load_queries("postgresql")
MIGRATIONS = load_migrations("postgresql")
LATEST_VERSION = MIGRATIONS[-1].version
# high 32 bits of the ledger lock's advisory key ('uet1'); the low 32 bits are the oid of
# the ledger's schema, so ledgers in different schemas of one database do not contend
_LOCK_CLASS = 0x75657431
# what a ledger's schema holds beside its tables (so that it is not taken for a foreign one)
_CORE_TABLES = {"schema_migrations", "runs", "step_attempts", "run_events", "ledger_counters"}

# what `uet doctor` reports as broken in the ledger's schema: (message, catalog query)
_CATALOG_CHECKS = {
    "index": ("index {} is not valid (rebuild it with REINDEX)",
              "SELECT i.indexrelid::regclass::text FROM pg_index AS i "
              "JOIN pg_class AS c ON c.oid = i.indrelid "
              "WHERE c.relnamespace = current_schema()::regnamespace AND NOT i.indisvalid"),
    "constraint": ("constraint {} is not validated",
                   "SELECT conname FROM pg_constraint "
                   "WHERE connamespace = current_schema()::regnamespace AND NOT convalidated"),
    "trigger": ("trigger {} is disabled",
                "SELECT t.tgname FROM pg_trigger AS t JOIN pg_class AS c ON c.oid = t.tgrelid "
                "WHERE c.relnamespace = current_schema()::regnamespace AND t.tgenabled = 'D'"),
}

_live_backends: "weakref.WeakSet[PostgresBackend]" = weakref.WeakSet()
# Pools and connections a forked child inherited: their sockets belong to the parent, so the
# child must neither use nor close them (closing would end the parent's sessions).
_inherited: list[Any] = []


def _after_fork_in_child() -> None:
    for backend in list(_live_backends):
        backend._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


class PostgresTx(Transaction):
    """The statements of one open PostgreSQL write transaction."""

    __slots__ = ()
    queries = QUERIES
    placeholder = "%s"


class PostgresBackend:
    """One ledger in a PostgreSQL database (the schema its URL's search_path selects, by
    default `public`), reached through a pool of connections shared by the process's
    threads. A forked child opens its own pool on first use."""

    engine = "postgresql"
    placeholder = "%s"
    no_limit = None  # LIMIT NULL: every row
    queries = QUERIES  # sql/queries.sql with the overrides of sql/postgresql/queries.sql

    def __init__(self, url: str, *, busy_timeout: float, read_only: bool = False) -> None:
        self.url = url
        self.path = redact(url)
        self.busy_timeout = busy_timeout
        self.read_only = read_only
        self._closed = False
        self._pool: psycopg_pool.ConnectionPool | None = None
        self._pool_lock = threading.Lock()
        self._own: psycopg.Connection | None = None
        self._own_lock = threading.Lock()
        self._begin = ""       # BEGIN of a write transaction, once the schema is checked
        # called with each outermost write transaction once it began (the Database's fence)
        self.on_begin: Callable[[Transaction], None] | None = None
        self._channel = ""     # the LISTEN channel of the ledger's event trail
        # per thread: the connection of its open write transaction and the nesting depth
        self._local = threading.local()
        self._columns_of: dict[str, tuple[str, ...]] = {}  # constraint name -> its columns
        _live_backends.add(self)

    # -- connections ---------------------------------------------------------------------

    def _settings(self) -> dict[str, Any]:
        # UTF8 whatever the database's encoding: any text the API accepts can be sent
        settings: dict[str, Any] = {"autocommit": True, "application_name": "uet",
                                    "client_encoding": "UTF8"}
        if "connect_timeout" not in self.url:
            settings["connect_timeout"] = 10
        return settings

    def _configure(self, conn: psycopg.Connection) -> None:
        # JSON columns arrive as the text that was stored and are decoded like SQLite's
        conn.adapters.register_loader("json", TextLoader)
        # a write waits this long for the ledger's write lock (0 would mean "forever")
        conn.execute("SELECT set_config('lock_timeout', %s, false), "
                     "set_config('default_transaction_read_only', %s, false)",
                     (f"{max(1, round(self.busy_timeout * 1000))}ms",
                      "on" if self.read_only else "off"))

    def _connect(self) -> psycopg.Connection:
        """A new connection outside the pool (migrations, listening), configured."""
        if self._closed:
            raise StorageError(f"ledger {self.path} is closed")
        try:
            conn = psycopg.connect(self.url, **self._settings())
        except psycopg.ProgrammingError:
            # libpq could not parse the URL; its message would quote it, password and all
            raise StorageError(f"{self.path} is not a PostgreSQL URL that libpq accepts; "
                               "check its spelling and percent-escapes (postgresql://user:"
                               "password@host:port/database)") from None
        except psycopg.Error as exc:
            raise translate_error(exc, self.path, self.busy_timeout) from None
        try:
            self._configure(conn)
        except psycopg.Error as exc:
            conn.close()
            raise translate_error(exc, self.path, self.busy_timeout) from None
        return conn

    def _get_pool(self) -> psycopg_pool.ConnectionPool:
        pool = self._pool
        if pool is not None:
            return pool
        with self._pool_lock:
            if self._closed:
                raise StorageError(f"ledger {self.path} is closed")
            if self._pool is None:
                self._pool = psycopg_pool.ConnectionPool(
                    self.url, min_size=1, max_size=POOL_MAX_SIZE, kwargs=self._settings(),
                    configure=self._configure, timeout=pool_wait(self.busy_timeout),
                    num_workers=1, open=True, name="uet")
            return self._pool

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        """A connection for one statement or transaction. An uncontended caller reuses the
        backend's own connection (taken from the pool once, so that the common single-
        threaded call skips the pool's bookkeeping); concurrent callers get pooled ones. A
        thread inside its write transaction uses that transaction's connection, so that it
        reads what the block wrote."""
        held = self._local.__dict__.get("conn")
        if held is not None:
            try:
                yield held
            except psycopg.Error as exc:
                raise translate_error(exc, self.path, self.busy_timeout) from None
            return
        if self._own_lock.acquire(blocking=False):
            try:
                conn = self._own
                try:
                    if conn is None:
                        conn = self._own = self._get_pool().getconn()
                    yield conn
                except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
                    raise translate_error(exc, self.path, self.busy_timeout) from None
                finally:
                    self._settle_own()
            finally:
                self._own_lock.release()
            return
        try:
            with self._get_pool().connection() as conn:
                yield conn
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise translate_error(exc, self.path, self.busy_timeout) from None

    def _settle_own(self) -> None:
        """After each use of the own connection: one left inside a transaction (an
        interrupted call) is rolled back, and a broken one (a server restart, a dropped
        session) is handed back to the pool, which replaces it; a closed backend's goes
        back too."""
        conn = self._own
        if conn is None:
            return
        if not conn.closed and conn.info.status == psycopg.pq.ConnStatus.OK:
            self._rollback(conn)
        if conn.closed or conn.info.status != psycopg.pq.ConnStatus.OK or self._closed:
            self._own = None
            pool = self._pool
            if pool is not None:
                pool.putconn(conn)
            else:
                conn.close()

    def close(self) -> None:
        """Close the pool. A call still running (on another thread, or the caller's own
        transaction) keeps its connection until it ends; that connection is closed then."""
        with self._pool_lock:
            self._closed = True
            pool = self._pool
        if self._own_lock.acquire(blocking=False):
            try:
                own, self._own = self._own, None
                if own is not None and pool is not None:
                    pool.putconn(own)
            finally:
                self._own_lock.release()
        with self._pool_lock:
            self._pool = None
        if pool is not None:
            pool.close()

    @property
    def closed(self) -> bool:
        """Whether `close()` was called (for good: later calls raise StorageError)."""
        return self._closed

    def _after_fork(self) -> None:
        self._local = threading.local()  # a transaction open at fork time is the parent's
        self._pool_lock = threading.Lock()
        self._own_lock = threading.Lock()
        if self._pool is not None:
            _inherited.append((self._pool, self._own))
            self._pool = self._own = None

    # -- statements ----------------------------------------------------------------------

    def query(self, sql: str, params: Params = ()) -> list[dict[str, Any]]:
        """Run one read statement; rows as dicts with JSON columns decoded."""
        with self._connection() as conn:
            return rows_of(conn.execute(sql, params))

    def read(self, name: str, params: Params = ()) -> list[dict[str, Any]]:
        """Run a named read query (`queries`); rows as dicts."""
        return self.query(QUERIES[name], params)

    def query_value(self, sql: str, params: Params = ()) -> Any:
        """Run one read statement and return the first column of its first row (or None)."""
        with self._connection() as conn:
            row = conn.execute(sql, params).fetchone()
        return None if row is None else row[0]

    @contextmanager
    def transaction(self) -> Iterator[PostgresTx]:
        """A write transaction holding the ledger's write lock: all of the block's
        statements commit together or not at all. Waiting for the lock is bounded by the
        busy timeout (lock_timeout). Opened again by the thread inside one
        (`Database.atomic()`, or a call inside it), it is a savepoint of the open
        transaction: an exception undoes only the inner block, and nothing is committed
        before the outermost block ends."""
        local = self._local.__dict__
        held = local.get("conn")
        if held is not None:
            yield from self._savepoint(held, local)
            return
        callbacks: list[Callable[[], None]] = []
        with self._connection() as conn:
            try:
                # a lock timeout or a Ctrl-C while waiting for the lock is rolled back too
                conn.execute(self._begin or self._begin_statement(conn))
                local["conn"], local["depth"], local["callbacks"] = conn, 1, [callbacks]
                tx = PostgresTx(conn)
                if self.on_begin is not None:
                    self.on_begin(tx)
                yield tx
                conn.execute("COMMIT")
            except BaseException as exc:
                callbacks = []  # rolled back: none of the block's after-commit work
                self._rollback(conn)
                if isinstance(exc, psycopg.Error):
                    raise self._translate(exc, conn) from None
                raise
            finally:
                local.pop("conn", None)
                local.pop("depth", None)
                local.pop("callbacks", None)
        for callback in callbacks:  # committed: the block's after-commit work, in order
            callback()

    def _savepoint(self, conn: psycopg.Connection, local: dict[str, Any]
                   ) -> Iterator[PostgresTx]:
        name = f"uet_{local['depth']}"  # from a counter, never from a caller
        try:
            conn.execute(f"SAVEPOINT {name}")
        except psycopg.Error as exc:
            raise translate_error(exc, self.path, self.busy_timeout) from None
        local["depth"] += 1
        local["callbacks"].append([])
        try:
            yield PostgresTx(conn)
            conn.execute(f"RELEASE SAVEPOINT {name}")
        except BaseException as exc:
            local["callbacks"].pop()  # undone with the savepoint
            try:  # after a failed statement only this brings the transaction back
                conn.execute(f"ROLLBACK TO SAVEPOINT {name}")
                conn.execute(f"RELEASE SAVEPOINT {name}")
            except psycopg.Error:
                pass  # the connection broke: the outer block's end reports it
            if isinstance(exc, psycopg.Error):
                raise self._translate(exc, conn) from None
            raise
        else:
            done = local["callbacks"].pop()
            local["callbacks"][-1].extend(done)  # they wait for the enclosing commit
        finally:
            local["depth"] -= 1

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Call `callback` once the calling thread's open transaction has committed; never
        if it (or the savepoint it was registered in) is rolled back."""
        stack = self._local.__dict__.get("callbacks")
        if not stack:
            raise RuntimeError("after_commit needs the calling thread's open transaction")
        stack[-1].append(callback)

    @property
    def in_transaction(self) -> bool:
        """Whether the calling thread holds an open write transaction of this ledger."""
        return "conn" in self._local.__dict__

    def _translate(self, exc: psycopg.Error, conn: psycopg.Connection) -> UetError:
        """translate_error, with a failed constraint's columns read from the catalog (the
        server names only the constraint); `conn` must be usable again (rolled back)."""
        error = translate_error(exc, self.path, self.busy_timeout)
        if isinstance(error, ConstraintViolation) and error.constraint and not error.columns:
            columns = self._constraint_columns(conn, error.constraint)
            if columns:
                error = constraint_violation(exc, columns)
        return error

    def _constraint_columns(self, conn: psycopg.Connection, name: str) -> tuple[str, ...]:
        columns = self._columns_of.get(name)
        if columns is None:
            try:  # a table constraint, else a unique index (the server names either)
                columns = tuple(r[0] for r in conn.execute(
                    "SELECT a.attname FROM pg_constraint AS c "
                    "CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, n) "
                    "JOIN pg_attribute AS a ON a.attrelid = c.conrelid AND a.attnum = k.attnum "
                    "WHERE c.conname = %s AND c.connamespace = current_schema()::regnamespace "
                    "ORDER BY k.n", (name,))) or tuple(r[0] for r in conn.execute(
                    "SELECT a.attname FROM pg_class AS ic "
                    "JOIN pg_index AS i ON i.indexrelid = ic.oid "
                    "CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) "
                    "JOIN pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
                    "WHERE ic.relname = %s AND ic.relnamespace = current_schema()::regnamespace "
                    "ORDER BY k.n", (name,)))
            except psycopg.Error:
                return ()  # a broken connection: the error keeps the constraint's name
            self._columns_of[name] = columns
        return columns

    @staticmethod
    def _rollback(conn: psycopg.Connection) -> None:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            try:
                conn.execute("ROLLBACK")
            except psycopg.Error:
                pass  # the connection is broken; the pool discards it and the server rolls back

    def _begin_statement(self, conn: psycopg.Connection) -> str:
        """BEGIN of a write transaction (checking, on first use, that the ledger's schema
        exists). READ COMMITTED whatever the server's default: each statement sees what was
        committed before it, and a compare-and-set reads the row it locked as it is. No
        ledger-wide lock (migration 0004): writers wait only for the rows they change, and
        followers read events up to the horizon of seqs still in flight."""
        self._schema_key(conn)
        self._begin = "BEGIN ISOLATION LEVEL READ COMMITTED"
        return self._begin

    def _locked_begin(self, conn: psycopg.Connection) -> str:
        """BEGIN plus the ledger's lock, in one round trip: migrations take it, so that
        concurrent openers apply each migration once."""
        return (f"BEGIN ISOLATION LEVEL READ COMMITTED; "
                f"SELECT pg_advisory_xact_lock({self._schema_key(conn)})")

    def _schema_key(self, conn: psycopg.Connection) -> int:
        """The advisory key of the ledger's lock: 'uet1' and the oid of its schema."""
        schema = conn.execute(
            "SELECT oid::bigint FROM pg_namespace WHERE nspname = current_schema()").fetchone()
        if schema is None:
            raise StorageError(f"ledger {self.path}: its search_path names no schema that "
                               "exists; create the schema or fix the URL's options")
        oid: int = schema[0]
        key = (_LOCK_CLASS << 32) | oid
        return key - (1 << 64) if key >= 1 << 63 else key  # the signed bigint it takes

    # -- schema --------------------------------------------------------------------------

    def _version(self, conn: psycopg.Connection) -> int | None:
        """The ledger's schema version: None for an empty schema. Raises NotALedgerError
        for a schema that holds anything else."""
        tables = {r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = current_schema()")}
        if not tables:
            return None
        if _CORE_TABLES <= tables:
            columns = {r[0] for r in conn.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = 'schema_migrations'")}
            version = None
            if columns == {"version", "name", "applied_at"}:
                version = one_row(conn.execute("SELECT max(version) FROM schema_migrations"))[0]
            if isinstance(version, int) and version >= 1:
                return version
        raise NotALedgerError(
            f"{self.path} holds tables that are not a uet ledger ({', '.join(sorted(tables))}); "
            "refusing to change them. Point uet at an empty database or schema (the URL's "
            "options=-csearch_path=NAME selects a schema)")

    def peek_version(self) -> int | None:
        """The schema version without changing anything (None: no ledger yet)."""
        conn = self._connect()
        try:
            return self._version(conn)
        except psycopg.Error as exc:
            raise translate_error(exc, self.path, self.busy_timeout) from None
        finally:
            conn.close()

    def check_current(self) -> int:
        """For a read-only open: the ledger must exist and be at this code's version."""
        return schema_versions.require_current(self.peek_version(), LATEST_VERSION, self.path)

    def migrate(self) -> tuple[int | None, int]:
        """Bring the ledger up to LATEST_VERSION; (version before, version after).

        Each migration runs in its own transaction under the ledger's write lock and
        re-reads the version once it holds it, so concurrent migrators apply each one once;
        DDL is transactional here, so a migration that fails leaves the schema as it was.
        """
        conn = self._connect()

        def apply(migration: Migration, known: int | None) -> int:
            try:
                conn.execute(self._locked_begin(conn))
                current = self._version(conn)
                schema_versions.refuse_newer(current, LATEST_VERSION, self.path)
                if current is None or current < migration.version:
                    conn.execute(migration.sql)
                    conn.execute("INSERT INTO schema_migrations (version, name, applied_at) "
                                 "VALUES (%s, %s, %s)",
                                 (migration.version, migration.name, utc_now()))
                    current = migration.version
                conn.execute("COMMIT")
                return current
            except psycopg.Error as exc:
                self._rollback(conn)
                raise schema_versions.migration_failed(
                    migration, self.path,
                    translate_error(exc, self.path, self.busy_timeout)) from None
            except BaseException:
                self._rollback(conn)
                raise

        try:
            result = schema_versions.migrate(self.path, MIGRATIONS,
                                             lambda: self._version(conn), apply)
            self._channel = self._events_channel(conn)
            return result
        except psycopg.Error as exc:
            raise translate_error(exc, self.path, self.busy_timeout) from None
        finally:
            conn.close()

    @staticmethod
    def _events_channel(conn: psycopg.Connection) -> str:
        oid = one_row(conn.execute("SELECT 'run_events'::regclass::oid::bigint"))[0]
        return f"uet_events_{int(oid)}"

    # -- following -----------------------------------------------------------------------

    @contextmanager
    def listen(self) -> Iterator[Callable[[float], None]]:
        """A wait(timeout) that returns as soon as another session commits events (LISTEN /
        NOTIFY), or after `timeout` seconds; listening starts before the caller's next
        read, so nothing committed in between is missed."""
        conn = self._connect()
        try:
            try:
                if not self._channel:
                    self._channel = self._events_channel(conn)
                conn.execute(f'LISTEN "{self._channel}"')  # a name built from an oid
            except psycopg.Error:
                # no notifications here (e.g. a pooler in transaction mode): poll instead
                conn.close()
                yield time.sleep
                return

            def wait(timeout: float) -> None:
                try:
                    for _ in conn.notifies(timeout=timeout, stop_after=1):
                        pass
                except psycopg.Error as exc:
                    raise translate_error(exc, self.path, self.busy_timeout) from None
            yield wait
        finally:
            conn.close()

    # -- long reads and copies (uet.state.portable: export, backup) -----------------------

    @contextmanager
    def snapshot(self) -> Iterator["PostgresSnapshot"]:
        """The ledger as committed when the block begins, for reads that take long (an
        export): a REPEATABLE READ, READ ONLY transaction on a connection of its own, so
        every read in the block sees the same rows while writers go on."""
        conn = self._connect()
        try:
            try:  # the snapshot is taken by the transaction's first statement
                conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                conn.execute("SELECT 1")
            except psycopg.Error as exc:
                raise translate_error(exc, self.path, self.busy_timeout) from None
            yield PostgresSnapshot(conn, self)
        finally:
            conn.close()

    def dump_command(self, dest: str) -> dict[str, Any]:
        """The `pg_dump` command that writes a consistent copy of this ledger's schema to
        `dest` (custom format, for `pg_restore`), and the `pg_restore` command that loads it
        into an empty database: host, port, user and database as libpq resolved them for
        this ledger's URL, the schema the ledger lives in. Never the password: pg_dump takes
        it from $PGPASSWORD or ~/.pgpass, or asks."""
        with self._connection() as conn:
            schema = one_row(conn.execute("SELECT current_schema()"))[0]
            info = conn.info
            host, port, user, dbname = info.host, info.port, info.user, info.dbname
        if schema is None:
            raise StorageError(f"ledger {self.path}: its search_path names no schema that "
                               "exists; create the schema or fix the URL's options")
        where = ["--host", host, "--port", str(port), "--username", user]
        return {
            "host": host, "port": port, "user": user, "database": dbname, "schema": schema,
            "dump": ["pg_dump", *where, "--dbname", dbname, "--schema", schema,
                     "--format", "custom", "--file", dest],
            "restore": ["pg_restore", *where, "--dbname", "DATABASE", dest],
        }

    # -- health --------------------------------------------------------------------------

    def diagnostics(self) -> dict[str, Any]:
        """Server facts, integrity and row counts, for `uet doctor`."""
        with self._connection() as conn:
            version, server, database, schema, synchronous = one_row(conn.execute(
                "SELECT (SELECT max(version) FROM schema_migrations), "
                "current_setting('server_version'), current_database(), current_schema(), "
                "current_setting('synchronous_commit')"))
            found = {kind: [r[0] for r in conn.execute(sql)]
                     for kind, (_, sql) in _CATALOG_CHECKS.items()}
            tables = [r[0] for r in conn.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' "
                "ORDER BY table_name")]
            # table names come from the catalog, quoted as identifiers
            counts = {t: one_row(conn.execute(pg_sql.SQL("SELECT count(*) FROM {}").format(
                pg_sql.Identifier(t))))[0] for t in tables}
        problems = [_CATALOG_CHECKS[kind][0].format(name)
                    for kind, names in found.items() for name in names]
        return {
            "path": self.path, "engine": self.engine, "schema_version": version,
            "server_version": server, "database": database, "schema": schema,
            # PostgreSQL always writes ahead; synchronous_commit says when a commit is durable
            "journal_mode": "wal", "synchronous": synchronous,
            "foreign_keys": not found["constraint"] and not found["trigger"],
            "busy_timeout_ms": max(1, round(self.busy_timeout * 1000)),
            "integrity_check": problems or ["ok"], "foreign_key_violations": 0,
            "row_counts": counts,
        }


class PostgresSnapshot:
    """The reads of `PostgresBackend.snapshot()`: named queries, rows as tuples of the values
    as stored (JSON columns as their text)."""

    __slots__ = ("_conn", "_backend")

    def __init__(self, conn: psycopg.Connection, backend: PostgresBackend) -> None:
        self._conn, self._backend = conn, backend

    def rows(self, name: str, params: Params = ()
             ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run the named query: (its column names, its rows)."""
        try:
            cursor = self._conn.execute(QUERIES[name], params)
            return [d[0] for d in cursor.description or ()], cursor.fetchall()
        except psycopg.Error as exc:
            raise translate_error(exc, self._backend.path,
                                  self._backend.busy_timeout) from None

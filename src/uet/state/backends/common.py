"""The interface every engine implements (`Backend`) and what the engines share: the
statements of an open write transaction and rows as dicts. The engines themselves are
`backends.sqlite` and `backends.postgresql`."""

from __future__ import annotations

from typing import (Any, Callable, ContextManager, Iterable, Iterator, Mapping, Protocol,
                    Sequence, TypeAlias, runtime_checkable)

from uet.state.tables import JSON_COLUMNS, decode_row

Params: TypeAlias = Sequence[Any] | Mapping[str, Any]
"""The parameters of one statement: positional (a sequence) or named (a mapping)."""


class Cursor(Protocol):
    """What a statement returns: a DB-API cursor of either engine's driver, its rows tuples
    of the values as stored."""

    @property
    def description(self) -> Sequence[Sequence[Any]] | None:
        """The result's columns, one sequence each whose first item is the column's name
        (DB-API); None for a statement that returns no rows."""

    @property
    def rowcount(self) -> int:
        """How many rows the statement changed (an INSERT, UPDATE or DELETE)."""

    def fetchone(self) -> tuple[Any, ...] | None:
        """The next row, or None when there is none left."""

    def fetchall(self) -> list[tuple[Any, ...]]:
        """Every row not fetched yet."""

    def __iter__(self) -> Iterator[tuple[Any, ...]]: ...


class BatchCursor(Protocol):
    """A cursor that runs one statement for many parameter sets."""

    def executemany(self, sql: str, params: Iterable[Params], /) -> object:
        """Run `sql` once for each parameter set (what it returns is not used)."""


class Connection(Protocol):
    """A DB-API connection of either engine's driver (sqlite3's, psycopg's), as the
    statements of a `Transaction` use it."""

    def execute(self, sql: str, params: Params = ..., /) -> Cursor:
        """Run one statement, written in the driver's parameter style; its cursor."""

    def cursor(self) -> BatchCursor:
        """A new cursor, for the statements run once per parameter set (`run_many`)."""


def one_row(cursor: Cursor) -> tuple[Any, ...]:
    """The row of a statement that always returns exactly one (an aggregate, a function
    call, an INSERT ... RETURNING of one row)."""
    row = cursor.fetchone()
    assert row is not None, "a statement that returns one row returned none"
    return row


def rows_of(cursor: Cursor) -> list[dict[str, Any]]:
    """A DB-API cursor's rows as plain dicts (JSON columns decoded)."""
    rows = cursor.fetchall()
    if not rows:
        return []
    names = [d[0] for d in cursor.description or ()]
    json_names = [name for name in names if name in JSON_COLUMNS]
    return [decode_row(names, values, json_names) for values in rows]


@runtime_checkable
class Backend(Protocol):
    """One ledger on one engine: its connections, transactions, schema and error
    translation. Nothing above a backend sees a driver or a driver's exception; every call
    raises only uet's errors (`uet.errors`)."""

    engine: str                   # "sqlite" or "postgresql"
    path: str                     # the ledger's name as shown to people (no password)
    read_only: bool
    busy_timeout: float
    placeholder: str              # the parameter mark of statements built from whitelists
    no_limit: Any                 # the LIMIT parameter that means "every row"
    # called with each outermost write transaction once it began, before the block's
    # statements (an exception rolls it back): the Database's fence
    on_begin: Callable[["Transaction"], None] | None
    queries: Mapping[str, str]    # the named statements, in this engine's parameter style

    @property
    def closed(self) -> bool:
        """Whether `close()` was called (for good: every later call raises StorageError)."""

    @property
    def in_transaction(self) -> bool:
        """Whether the calling thread is inside one of this backend's write transactions."""

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Call `callback` after the calling thread's open transaction commits (never if it,
        or the savepoint it was registered in, rolls back)."""

    def read(self, name: str, params: Params = ()) -> list[dict[str, Any]]:
        """Run a named read query; rows as dicts (JSON columns decoded)."""

    def query(self, sql: str, params: Params = ()) -> list[dict[str, Any]]:
        """Run one read statement (built from whitelisted names); rows as dicts."""

    def query_value(self, sql: str, params: Params = ()) -> Any:
        """Run one read statement; the first column of its first row, or None."""

    def transaction(self) -> ContextManager["Transaction"]:
        """A write transaction holding the ledger's write lock; all or nothing. Opened again
        by the thread inside one, it is a savepoint of it (`Database.atomic()`)."""

    def listen(self) -> ContextManager[Callable[[float], None]]:
        """A wait(timeout) for followers that returns early when events commit, where the
        engine can notify."""

    def migrate(self) -> tuple[int | None, int]:
        """Bring the schema up to this code's version; (version before, version after)."""

    def check_current(self) -> int:
        """For a read-only open: the ledger exists at this code's version; its version."""

    def peek_version(self) -> int | None:
        """The schema version without changing anything (None: no ledger there yet)."""

    def diagnostics(self) -> dict[str, Any]:
        """Health facts for `uet doctor`."""

    def close(self) -> None:
        """Release the connections; later calls raise StorageError."""

    def snapshot(self) -> ContextManager["Snapshot"]:
        """The ledger as committed when the block begins, read on a connection of its own
        for as long as the block lasts (an export) while writers go on.

        Engine-specific besides (`uet.state.portable` calls them by engine): SQLite's
        `copy_to(path)` and `check_copy(path)` (a consistent copy of a live ledger file and
        its health), PostgreSQL's `dump_command(dest)` (the pg_dump that copies it)."""


@runtime_checkable
class Snapshot(Protocol):
    """What a backend's `snapshot()` yields."""

    def rows(self, name: str, params: Params = ()
             ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run a named read query in the snapshot: (its column names, its rows as tuples of
        the values as stored — JSON columns as their text, not decoded)."""


class Transaction:
    """The statements of one open write transaction (what a backend's `transaction()`
    yields). `run` / `rows` take the name of one of the engine's named queries; `execute` /
    `query` a statement assembled from whitelisted names with `placeholder` marks."""

    __slots__ = ("conn",)
    queries: Mapping[str, str] = {}
    placeholder = "?"

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def run(self, name: str, params: Params = ()) -> Cursor:
        """Run a named statement (`queries`); its cursor (rows as stored, `rowcount`)."""
        return self.conn.execute(self.queries[name], params)

    def rows(self, name: str, params: Params = ()) -> list[dict[str, Any]]:
        """Run a named statement; its rows as dicts (JSON columns decoded)."""
        return rows_of(self.conn.execute(self.queries[name], params))

    def run_many(self, name: str, params: Sequence[Params]) -> None:
        """Run a named statement once for each parameter set (the driver batches them)."""
        self.conn.cursor().executemany(self.queries[name], params)

    def execute(self, sql: str, params: Params = ()) -> Cursor:
        """Run a statement assembled from whitelisted names (`placeholder` marks); its
        cursor."""
        return self.conn.execute(sql, params)

    def query(self, sql: str, params: Params = ()) -> list[dict[str, Any]]:
        """Run a statement assembled from whitelisted names; its rows as dicts (JSON columns
        decoded)."""
        return rows_of(self.conn.execute(sql, params))

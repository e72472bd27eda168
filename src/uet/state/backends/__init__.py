"""The engines under the ledger, one module each (`sqlite`, `postgresql`), behind one
interface (`Backend`, in `common`), and the factory that picks the engine from a ledger's
name."""

from __future__ import annotations

from uet.errors import StorageError
from uet.state.backends.common import Backend, Transaction
from uet.state.backends.sqlite import DEFAULT_BUSY_TIMEOUT, DURABILITY, SQLiteBackend
from uet.state.names import INSTALL_HINT, MEMORY, is_postgres_url

__all__ = ["Backend", "Transaction", "open_backend", "engine_of", "DEFAULT_BUSY_TIMEOUT",
           "DURABILITY", "MEMORY"]


def engine_of(name: str) -> str:
    """The engine a resolved ledger name selects: "postgresql" for a postgresql:// or
    postgres:// URL, else "sqlite" (a file path or ':memory:')."""
    return "postgresql" if is_postgres_url(name) else "sqlite"


def open_backend(name: str, *, durability: str = "normal",
                 busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
                 read_only: bool = False) -> Backend:
    """The backend of the engine `name` selects, not yet connected (connections open on
    first use). `durability` applies to SQLite; on PostgreSQL the server decides."""
    if engine_of(name) == "postgresql":
        try:  # the optional extra: imported only when a URL asks for it
            from uet.state.backends.postgresql import PostgresBackend
        except ImportError as exc:
            raise StorageError(f"the PostgreSQL backend needs psycopg 3 and psycopg_pool "
                               f"({exc}); install them with {INSTALL_HINT}") from None
        return PostgresBackend(name, busy_timeout=busy_timeout, read_only=read_only)
    return SQLiteBackend(name, durability=durability, busy_timeout=busy_timeout,
                         read_only=read_only)


def peek_version(name: str) -> int | None:
    """A ledger's schema version without changing anything (None: no ledger there yet)."""
    backend = open_backend(name, busy_timeout=DEFAULT_BUSY_TIMEOUT, read_only=True)
    try:
        return backend.peek_version()
    finally:
        backend.close()

"""How psycopg's failures become uet's typed errors: the one translation every PostgreSQL
path (pool, transactions, migrations, listening) uses, read from the server's diagnostics."""

from __future__ import annotations

import re

import psycopg
import psycopg_pool
from psycopg import errors as pg_errors

from uet.errors import (ConstraintViolation, DatabaseBusyError, StorageError, UetError,
                        ValidationError)

POOL_MAX_SIZE = 8
# the least a call waits for a pooled connection, whatever its busy_timeout: opening a new
# connection to the server alone can take that long
POOL_WAIT_FLOOR = 1.0


def pool_wait(busy_timeout: float) -> float:
    """How long a call waits for a connection from the pool."""
    return max(busy_timeout, POOL_WAIT_FLOOR)


# the SQLSTATEs of integrity failures, by the kind uet's errors name
_CONSTRAINT_KINDS = {
    pg_errors.UniqueViolation.sqlstate: "unique",
    pg_errors.ForeignKeyViolation.sqlstate: "foreign_key",
    pg_errors.CheckViolation.sqlstate: "check",
    pg_errors.NotNullViolation.sqlstate: "not_null",
}


def constraint_violation(exc: psycopg.Error,
                         columns: tuple[str, ...] = ()) -> ConstraintViolation:
    """A constraint failure from the server's diagnostics (SQLSTATE, table, constraint and
    column names); `columns` are the constraint's columns when the caller looked them up.
    The message says it as SQLite does, so that both engines read alike."""
    diag = exc.diag
    kind = _CONSTRAINT_KINDS.get(exc.sqlstate or "", "other")
    table = diag.table_name
    if kind == "not_null" and diag.column_name:
        columns = (diag.column_name,)
    if kind in ("unique", "not_null"):
        label = "UNIQUE" if kind == "unique" else "NOT NULL"
        message = f"{label} constraint failed: " + (
            ", ".join(f"{table or '?'}.{c}" for c in columns) or (diag.constraint_name or "?"))
    elif kind == "check":
        message = f"CHECK constraint failed: {diag.constraint_name or table or '?'}"
    elif kind == "foreign_key":
        message = "FOREIGN KEY constraint failed"
    else:
        message = " ".join((diag.message_primary or str(exc)).split())
    return ConstraintViolation(message, kind=kind, table=table, columns=columns,
                               constraint=diag.constraint_name)


def translate_error(exc: Exception, path: str, busy_timeout: float) -> UetError:
    """The typed uet error for a driver exception, with a message a person can act on."""
    # libpq's messages run over several lines; a uet error is one
    text = " ".join((getattr(getattr(exc, "diag", None), "message_primary", None)
                     or str(exc)).split())
    if isinstance(exc, pg_errors.IntegrityError):
        return constraint_violation(exc)
    if isinstance(exc, pg_errors.ProgramLimitExceeded):  # e.g. an index row over 8 kB
        return ValidationError(
            f"a value is too large for the ledger ({text}); ids and the text columns runs are "
            "listed by must stay within a few kilobytes")
    if isinstance(exc, psycopg_pool.PoolTimeout):
        return DatabaseBusyError(
            f"ledger {path}: no connection to the server could be had within "
            f"{pool_wait(busy_timeout):g} s ({text}); check that the server runs and accepts "
            f"connections, and that this process's {POOL_MAX_SIZE} pooled connections are not "
            "all held by long calls")
    if isinstance(exc, (pg_errors.LockNotAvailable, pg_errors.DeadlockDetected,
                        pg_errors.SerializationFailure, pg_errors.QueryCanceled)):
        return DatabaseBusyError(
            f"ledger {path} stayed locked by another writer for more than {busy_timeout:g} s "
            f"({text}); find the session holding it (pg_stat_activity) or raise busy_timeout")
    if isinstance(exc, pg_errors.ReadOnlySqlTransaction):
        return StorageError(f"ledger {path} was opened read-only (or the server is a "
                            f"read-only standby): {text}")
    if isinstance(exc, pg_errors.InsufficientResources):
        return StorageError(f"ledger {path}: the server is out of disk or memory ({text}); "
                            "free space on the server and retry. The call changed nothing")
    if isinstance(exc, pg_errors.InvalidCatalogName):
        return StorageError(f"ledger {path}: {text}; create the database first "
                            "(createdb) or name an existing one in the URL")
    if isinstance(exc, (pg_errors.InvalidAuthorizationSpecification,
                        pg_errors.InvalidPassword)):
        return StorageError(f"ledger {path}: the server refused the login ({text}); check "
                            "the user and password in the URL")
    if isinstance(exc, pg_errors.InsufficientPrivilege):
        return StorageError(f"ledger {path}: {text}; grant the URL's user the privileges a "
                            "ledger needs (CREATE on the schema, and on its tables)")
    if isinstance(exc, psycopg.OperationalError) and not getattr(exc, "sqlstate", None):
        # refused while connecting: libpq reports the server's reason only in the text
        if re.search(r'database "[^"]*" does not exist', text):
            return StorageError(f"ledger {path}: {text}; create the database first "
                                "(createdb) or name an existing one in the URL")
        if re.search(r'role "[^"]*" does not exist|authentication failed', text):
            return StorageError(f"ledger {path}: the server refused the login ({text}); "
                                "check the user and password in the URL")
    if isinstance(exc, psycopg.OperationalError):
        return StorageError(f"cannot reach the PostgreSQL server of ledger {path} ({text}); "
                            "check that it runs and that the URL's host, port and database "
                            "are right")
    return StorageError(f"ledger {path}: {text}")

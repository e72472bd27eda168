"""How the SQLite driver's failures become uet's typed errors: the one translation every
SQLite path (connections, transactions, migrations) uses."""

from __future__ import annotations

import re
import sqlite3

from uet.errors import (ConstraintViolation, DatabaseBusyError, NotALedgerError,
                        StorageError, UetError, ValidationError)
from uet.state.tables import MAX_VALUE_BYTES

_CONSTRAINT_KINDS = {
    sqlite3.SQLITE_CONSTRAINT_UNIQUE: "unique",
    sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY: "unique",
    sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY: "foreign_key",
    sqlite3.SQLITE_CONSTRAINT_CHECK: "check",
    sqlite3.SQLITE_CONSTRAINT_NOTNULL: "not_null",
}


# What a call into the driver may raise. Besides sqlite3.Error: UnicodeDecodeError, which
# the driver raises in place of the error when SQLite's message is not UTF-8. A uet
# ledger's schema, statements and paths are UTF-8, so such a message quotes bytes of the
# file that uet never wrote (a damaged schema, "malformed database schema ... near ..."):
# the file is corrupt.
DRIVER_ERRORS = (sqlite3.Error, UnicodeDecodeError)


def translate_error(exc: BaseException, path: str, busy_timeout: float) -> UetError:
    """The typed uet error for a driver exception, with a message a person can act on."""
    if isinstance(exc, UnicodeDecodeError):
        raw = exc.object if isinstance(exc.object, (bytes, bytearray)) else b""
        text = bytes(raw).decode("utf-8", "replace") or str(exc)
        return StorageError(f"ledger {path} is corrupt ({text}); restore it from a backup")
    code = getattr(exc, "sqlite_errorcode", None) or 0
    primary = code & 0xFF
    text = str(exc)
    if primary == sqlite3.SQLITE_CONSTRAINT:
        return constraint_violation(exc, code)
    if primary == sqlite3.SQLITE_TOOBIG:  # the values a row already holds and new ones
        return ValidationError(
            f"the record would be larger than {MAX_VALUE_BYTES:,} bytes, SQLite's limit on "
            f"one row ({text}); keep large output outside the ledger and store a reference")
    if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return DatabaseBusyError(
            f"ledger {path} stayed locked by another writer for more than {busy_timeout:g} s "
            f"({text}); find the process holding it or raise busy_timeout")
    if primary == sqlite3.SQLITE_NOTADB:
        return NotALedgerError(f"{path} is not a SQLite database, so not a uet ledger")
    if primary == sqlite3.SQLITE_FULL:
        return StorageError(f"ledger {path}: the disk is full ({text}); free space and retry")
    if primary == sqlite3.SQLITE_READONLY:
        return StorageError(
            f"ledger {path} cannot be written ({text}); check the file's and its folder's "
            "permissions and the file system")
    if primary == sqlite3.SQLITE_CANTOPEN:
        return StorageError(f"cannot open ledger {path} ({text}); check that the path is a "
                            "file in a folder you may write to")
    if primary == sqlite3.SQLITE_IOERR:
        return StorageError(
            f"ledger {path}: the file system refused a read or write ({text}); check free "
            "space, file-size limits and the device. The call changed nothing")
    if primary == sqlite3.SQLITE_CORRUPT:
        return StorageError(f"ledger {path} is corrupt ({text}); restore it from a backup")
    return StorageError(f"ledger {path}: {text}")


# SQLite reports which constraint failed only in its message, in fixed forms ("UNIQUE
# constraint failed: runs.run_id", "NOT NULL constraint failed: t.c", "CHECK constraint
# failed: name"); the kind comes from the extended result code. This is the one place that
# reads them: above the backend, errors are told apart by their fields.
_COLUMNS_FAILED = re.compile(r"^(?:UNIQUE|NOT NULL) constraint failed: (.+)$")
_CHECK_FAILED = re.compile(r"^CHECK constraint failed: (.+)$", re.DOTALL)


def constraint_violation(exc: BaseException, code: int) -> ConstraintViolation:
    """A constraint failure with its kind, table, columns and constraint name as SQLite
    reports them (foreign keys: SQLite names neither table nor column)."""
    text = str(exc)
    kind = _CONSTRAINT_KINDS.get(code, "other")
    table: str | None = None
    columns: tuple[str, ...] = ()
    constraint: str | None = None
    match = _COLUMNS_FAILED.match(text)
    if match:
        pairs = [part.strip().partition(".") for part in match.group(1).split(",")]
        tables = {t for t, dot, _ in pairs if dot}
        if len(tables) == 1 and all(dot for _, dot, _ in pairs):
            table, columns = tables.pop(), tuple(c for _, _, c in pairs)
    match = _CHECK_FAILED.match(text)
    if match:
        constraint = " ".join(match.group(1).split())  # an unnamed CHECK: its expression
    return ConstraintViolation(text, kind=kind, table=table, columns=columns,
                               constraint=constraint)


def rollback(conn: sqlite3.Connection) -> None:
    """End the connection's open transaction, if any, keeping nothing."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            # SQLite already rolled back (e.g. after SQLITE_FULL); nothing is left open.
            pass

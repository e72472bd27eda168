"""Every error type uet raises, in one place.

Each error carries the facts a person needs to act (entity, id, states, field); nothing above
the storage backend ever sees a raw driver exception.
"""

from __future__ import annotations


class UetError(Exception):
    """Base class of every error raised by uet."""


class NotFoundError(UetError, LookupError):
    """The named run, step attempt or other record does not exist."""

    def __init__(self, entity: str, entity_id: object) -> None:
        self.entity = entity
        self.entity_id = entity_id
        super().__init__(f"{entity} {entity_id!r} not found")


class AmbiguousIdError(UetError, LookupError):
    """An id prefix matches more than one record."""

    def __init__(self, entity: str, prefix: str, matches: list[str]) -> None:
        self.entity = entity
        self.prefix = prefix
        self.matches = matches
        shown = ", ".join(matches[:10]) + (", ..." if len(matches) > 10 else "")
        super().__init__(f"{entity} id prefix {prefix!r} is ambiguous: it matches {shown}")


class ValidationError(UetError, ValueError):
    """Input the ledger refuses: unknown or missing field, wrong type, unknown state,
    non-JSON metadata, dangling reference. Nothing was written."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(message)


class AlreadyExistsError(ValidationError):
    """A record with this id is already in the ledger."""

    def __init__(self, entity: str, entity_id: object) -> None:
        self.entity = entity
        self.entity_id = entity_id
        super().__init__(f"{entity} {entity_id!r} already exists", field=None)


class ConstraintViolation(ValidationError):
    """A database-level constraint refused the write, as the engine's diagnostics report
    it: `kind` (unique, foreign_key, check, not_null, other), `table`, `columns` (a tuple)
    and `constraint` (its name) where the engine names them. The public calls turn it into
    a message about the caller's input."""

    def __init__(self, message: str, *, kind: str, table: str | None = None,
                 columns: tuple[str, ...] = (), constraint: str | None = None) -> None:
        self.kind = kind
        self.table = table
        self.columns = tuple(columns)
        self.constraint = constraint
        super().__init__(message)


class InvalidTransitionError(UetError, ValueError):
    """The state machine does not allow this change (including 'to the same state')."""

    def __init__(self, entity: str, entity_id: object, current: str, requested: str,
                 allowed: tuple[str, ...] = (), *, reason: str | None = None) -> None:
        self.entity = entity
        self.entity_id = entity_id
        self.current = current
        self.requested = requested
        self.allowed = allowed
        if reason:
            why = reason
        elif current == requested:
            why = f"it is already {current}"
        elif allowed:
            why = f"from {current} it may only go to {', '.join(allowed)}"
        else:
            why = f"{current} is terminal"
        # not super(): DuplicateTransitionError puts ConcurrentUpdateError next in the MRO
        # "Invalid transition" leads, as the framework's contract words it (callers match it)
        UetError.__init__(
            self, f"Invalid transition: {entity} {entity_id!r} cannot go from {current} to "
                  f"{requested}: {why}")


class ConcurrentUpdateError(UetError):
    """A compare-and-set failed: the row was no longer in the expected state."""

    def __init__(self, entity: str, entity_id: object, expected: str, actual: str) -> None:
        self.entity = entity
        self.entity_id = entity_id
        self.expected = expected
        self.actual = actual
        UetError.__init__(
            self, f"{entity} {entity_id!r} was expected to be {expected} but is {actual}: "
            "another writer changed it first")


class DuplicateTransitionError(InvalidTransitionError, ConcurrentUpdateError):
    """A transition to the state the row is already in: the sign of two writers doing the
    same work. Both an InvalidTransitionError (a ValueError) and a ConcurrentUpdateError."""

    def __init__(self, entity: str, entity_id: object, state: str) -> None:
        InvalidTransitionError.__init__(self, entity, entity_id, state, state)
        self.expected = state
        self.actual = state


class StaleWorkerError(ValidationError):
    """A write by a worker process that is no longer the live incarnation of its worker id:
    it was reaped as lost (a paused process that woke up), stopped, or replaced by a newer
    process registered under the same id. Nothing was written; the process must stop
    working (its runs have been handed to others). A ValidationError, as any write by a
    TERMINATED worker is."""

    def __init__(self, worker_id: str, incarnation: str | None, why: str) -> None:
        self.worker_id = worker_id
        self.incarnation = incarnation
        ValidationError.__init__(
            self, f"worker {worker_id!r}" + (f" (incarnation {incarnation})" if incarnation
                                             else "")
            + f" is fenced off: {why}; it must stop working (its work was failed or handed "
            "to another worker)", field="incarnation")


class SchemaVersionError(UetError):
    """The ledger's schema is newer than this code knows; nothing was changed."""


class NotALedgerError(UetError):
    """The file is not SQLite, or is SQLite but not a uet ledger; nothing was changed."""


class MigrationError(UetError):
    """A schema upgrade could not be applied; the ledger was left at its previous version."""


class DatabaseBusyError(UetError):
    """Another writer held the ledger's write lock for longer than the busy timeout."""


class StorageError(UetError):
    """The storage under the ledger failed: disk full, read-only file, I/O error, closed."""


__all__ = [
    "UetError", "NotFoundError", "AmbiguousIdError", "ValidationError", "AlreadyExistsError",
    "ConstraintViolation",
    "InvalidTransitionError", "ConcurrentUpdateError", "DuplicateTransitionError",
    "StaleWorkerError",
    "SchemaVersionError",
    "NotALedgerError", "MigrationError", "DatabaseBusyError", "StorageError",
]

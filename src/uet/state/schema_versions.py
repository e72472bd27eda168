"""Schema versions, the same on every engine: how a ledger's version is judged against this
code's, and the loop that applies the numbered migrations (each engine supplies the reads
and the locked apply)."""

from __future__ import annotations

from typing import Callable, Sequence

from uet.errors import MigrationError, NotALedgerError, SchemaVersionError, UetError
from uet.state.sqlfiles import Migration


def refuse_newer(version: int | None, latest: int, path: str) -> None:
    """A ledger written by a newer uet is never changed by this one."""
    if version is not None and version > latest:
        raise SchemaVersionError(
            f"ledger {path} has schema version {version}, newer than this uet understands "
            f"(up to {latest}); upgrade uet to open it. Nothing was changed.")


def require_current(version: int | None, latest: int, path: str, *,
                    nothing_there: str = "holds no ledger yet") -> int:
    """For a read-only open: the ledger must exist and be at this code's version
    (`nothing_there` says, in the engine's terms, what was found instead of a ledger)."""
    refuse_newer(version, latest, path)
    if version is None:
        raise NotALedgerError(f"{path} {nothing_there}; create it with `uet init`")
    if version < latest:
        raise SchemaVersionError(
            f"ledger {path} is at schema version {version}, older than this uet "
            f"({latest}); upgrade it with `uet migrate` (it was not changed)")
    return version


def migrate(path: str, migrations: Sequence[Migration],
            read_version: Callable[[], int | None],
            apply: Callable[[Migration, int | None], int]) -> tuple[int | None, int]:
    """Bring a ledger up to the last of `migrations`; (version before, version after).

    `read_version` reads the version without a lock; `apply(migration, known_version)` runs
    one migration in its own transaction under the ledger's write lock, re-reading the
    version once it holds the lock (so concurrent migrators apply each one once), and
    returns the version after it. A newer ledger is refused before anything is written.
    """
    latest = migrations[-1].version
    before = read_version()
    refuse_newer(before, latest, path)
    version = before
    for migration in migrations:
        if version is None or migration.version > version:
            version = apply(migration, version)
    assert version is not None
    return before, version


def migration_failed(migration: Migration, path: str, error: UetError) -> MigrationError:
    """The error of a migration that could not be applied (its transaction rolled back)."""
    return MigrationError(
        f"could not apply migration {migration.version:04d}_{migration.name} to {path}: "
        f"{error}; the ledger was left as it was")

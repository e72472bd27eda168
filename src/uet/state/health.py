"""A ledger's health verdict (what `uet doctor` reports): which of the facts `Database.doctor()`
gathers are problems, and the report of a ledger that could not be opened at all."""

from __future__ import annotations

from typing import Any, Mapping

# the journal modes a healthy ledger may be in: WAL on disk (PostgreSQL reports it too, as
# its own log is write-ahead), memory for ":memory:", which has no file to journal
_HEALTHY_JOURNAL_MODES = ("wal", "memory")
_INTEGRITY_LINES_SHOWN = 5  # integrity_check can list thousands of lines; the first say enough


def problems(facts: Mapping[str, Any]) -> list[str]:
    """What is wrong with a ledger, one sentence each, judged from the facts
    `Database.doctor()` returned (empty: healthy)."""
    found = []
    if facts["integrity_check"] != ["ok"]:
        found.append("integrity_check: " + "; ".join(
            map(str, facts["integrity_check"][:_INTEGRITY_LINES_SHOWN])))
    if facts["foreign_key_violations"]:
        found.append(f"{facts['foreign_key_violations']} foreign key violations")
    if facts["journal_mode"] not in _HEALTHY_JOURNAL_MODES:
        found.append(f"journal_mode is {facts['journal_mode']}, not wal")
    if not facts["foreign_keys"]:
        found.append("foreign keys are not enforced")
    return found


def report(facts: Mapping[str, Any]) -> dict[str, Any]:
    """The facts of `Database.doctor()` with the verdict added under `problems`."""
    return {**facts, "problems": problems(facts)}


def unopened_report(database: str, error: Exception) -> dict[str, Any]:
    """The report of a ledger that could not be opened (none there, a corrupt or unreadable
    file, a server out of reach): that is its one problem. `database` is its name as shown
    to people (a URL without its password)."""
    return {"database": database, "problems": [str(error)]}

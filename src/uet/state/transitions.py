"""Changing a record under its state machine, inside the caller's transaction: the state
check and compare-and-set, timestamps, and the audit event written with the change.

Every write path of the ledger that moves a run or step attempt goes through `change_row`;
every event the ledger writes itself goes through `record_event`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from uet.errors import (ConcurrentUpdateError, NotFoundError, StaleWorkerError,
                        ValidationError)
from uet.state import tables
from uet.state.events import (RUN_STATE_CHANGED, RUN_UPDATED, STEP_ATTEMPT_STATE_CHANGED,
                              STEP_ATTEMPT_UPDATED)
from uet.state.ids import new_ulid, utc_now
from uet.state.machines import WORKER
from uet.state.statements import update_sql
from uet.state.tables import RUN_EVENTS, RUNS, STEP_ATTEMPTS, Table

if TYPE_CHECKING:
    from uet.state.backends.common import Transaction


def stamp(table: Table, state: str, changes: dict[str, object],
          current: Mapping[str, Any]) -> None:
    """Add to `changes` the timestamp the table's machine stamps on entering `state`."""
    changes.update(table.state_machine.stamps_entering(state, current, changes, utc_now()))


def locked_row(tx: Transaction, table: Table, entity_id: str,
               expected: object = None) -> dict[str, Any]:
    """The record, locked for the caller's transaction (NotFoundError when there is none);
    with `expected`, compare-and-set: a record no longer in that state raises
    ConcurrentUpdateError."""
    wanted = (None if expected is None
              else table.state_machine.check_state(expected, "expected"))
    found = tx.rows(f"lock_{table.entity}", (entity_id,))
    if not found:
        raise NotFoundError(table.entity, entity_id)
    current = found[0]
    if wanted is not None and current["state"] != wanted:
        raise ConcurrentUpdateError(table.entity, entity_id, wanted, current["state"])
    return current


def change_row(tx: Transaction, table: Table, entity_id: str, changes: dict[str, Any], *,
               expected: object = None, event_data: Mapping[str, Any] | None = None,
               record_changes: bool = False) -> dict[str, Any]:
    """Change a run or step attempt inside the caller's transaction; returns the new row.

    Checks the state machine (and `expected`, compare-and-set), stamps timestamps and writes
    the state-change event (with `event_data` added) in the same transaction. Fields given
    with the value they already hold (JSON compared as values) are left alone. With
    `record_changes`, the other fields the call changes are recorded too: under `changed`
    in the state-change event, or, when the state stays, in a `*.updated` event; a call that
    changes nothing writes no event. (Timestamps stamped for the state entered are not listed:
    the state-change event says when.)
    """
    machine = table.state_machine
    current = locked_row(tx, table, entity_id, expected)
    old_state = current["state"]
    changed = tables.describe_changes(table, current, changes)
    changes = {name: value for name, value in changes.items()
               if name == "state" or name in changed}
    new_state = changes.get("state")
    if new_state is not None:
        machine.check_transition(entity_id, old_state, new_state)
        stamp(table, new_state, changes, current)
    if not changes:
        return current
    columns = tuple(name for name in table.names if name in changes)
    row = tx.query(update_sql(table, columns, tx.placeholder),
                   [changes[name] for name in columns] + [entity_id])[0]
    named = {"step_attempt_id": entity_id} if table is STEP_ATTEMPTS else {}
    if new_state is not None:
        data: dict[str, Any] = {**named, "from": old_state, "to": new_state}
        if row["exit_code"] is not None:
            data["exit_code"] = row["exit_code"]
        data.update(event_data or {})
        if record_changes and changed:
            data["changed"] = changed
        event_type = RUN_STATE_CHANGED if table is RUNS else STEP_ATTEMPT_STATE_CHANGED
        record_event(tx, row["run_id"], event_type, data)
    elif record_changes:
        event_type = RUN_UPDATED if table is RUNS else STEP_ATTEMPT_UPDATED
        record_event(tx, row["run_id"], event_type, {**named, "changed": changed})
    return row


def redrive_row(tx: Transaction, table: Table, entity_id: str, target: str, reason: str, *,
                expected: object = None, also: Mapping[str, object] | None = None,
                event_data: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Move a record back to `target` under its machine's re-drive table, inside the caller's
    transaction; returns the new row. The columns the machine clears are emptied (and those
    of `also`, known columns set by the ledger itself, set), and the state-change event
    (`redrive: true`) keeps their previous values, the reason and `event_data`."""
    machine = table.state_machine
    current = locked_row(tx, table, entity_id, expected)
    machine.check_redrive(entity_id, current["state"], target)
    cleared = {name: current[name] for name in machine.redrive_clears
               if current[name] is not None}
    changes: dict[str, object] = {"state": target, **dict.fromkeys(machine.redrive_clears),
                                  **(also or {})}
    columns = tuple(name for name in table.names if name in changes)
    row = tx.query(update_sql(table, columns, tx.placeholder),
                   [changes[name] for name in columns] + [entity_id])[0]
    record_event(tx, row["run_id"], RUN_STATE_CHANGED, {
        "from": current["state"], "to": target, "redrive": True, "reason": reason,
        "cleared": {name: tables.shown(value) for name, value in cleared.items()},
        **(event_data or {})})
    return row


def redrive_run_row(tx: Transaction, run_id: str, reason: str, *, expected: object = None,
                    also: Mapping[str, object] | None = None,
                    event_data: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Send a run back to pending inside the caller's transaction (`Database.redrive_run`):
    its step attempts still running are failed as interrupted with it."""
    run = redrive_row(tx, RUNS, run_id, "pending", reason, expected=expected, also=also,
                      event_data=event_data)
    # attempts still running belong to the ending that is undone: they were interrupted,
    # and the run's next owner starts new ones (a refused re-drive above raised before this,
    # and the transaction undoes nothing else)
    for step in tx.rows("list_step_attempts", (run_id,)):
        if step["state"] == "running":
            change_row(tx, STEP_ATTEMPTS, step["step_attempt_id"], {
                "state": "failed", "error_log": f"interrupted: {reason}"})
    return run


def check_incarnation(worker: Mapping[str, Any] | None, worker_id: str,
                      incarnation: str | None) -> None:
    """Fencing: a write made as `incarnation` of `worker_id` (a locked read of the worker
    row, or None when there is none) is refused with StaleWorkerError unless that
    incarnation still holds the id and is not TERMINATED. None checks nothing."""
    if incarnation is None:
        return
    if worker is None:
        raise StaleWorkerError(worker_id, incarnation, "its worker record is gone")
    if worker["incarnation"] != incarnation:
        raise StaleWorkerError(worker_id, incarnation, "the id now belongs to incarnation "
                               f"{worker['incarnation']} (a newer process registered it)")
    if worker["state"] in WORKER.terminal:
        raise StaleWorkerError(worker_id, incarnation,
                               f"it is TERMINATED since {worker['terminated_at']} "
                               "(stopped, or reaped as lost after missing its heartbeats)")


def check_worker_can_work(tx: Transaction, worker_id: str) -> None:
    """Work may be recorded for an existing worker that is not in a terminal state."""
    found = tx.rows("get_worker", (worker_id,))
    if not found:
        raise ValidationError(f"worker {worker_id!r} does not exist", field="worker_id")
    if found[0]["state"] in WORKER.terminal:
        raise ValidationError(f"worker {worker_id!r} is TERMINATED and cannot run a step "
                              "attempt", field="worker_id")


def record_event(tx: Transaction, run_id: str | None, event_type: str, data: dict[str, Any]) -> None:
    """Append one of the ledger's own events inside the caller's transaction.

    Records that belong to no run (workers, most patches and gates) write run_id None: their
    events are in the same ordered trail, found by `events_since`.
    """
    tx.run("insert_event", {
        "event_id": new_ulid(), "run_id": run_id, "timestamp": utc_now(),
        "event_type": event_type,
        "data": tables.encode_value(RUN_EVENTS, RUN_EVENTS.by_name["data"], data)})

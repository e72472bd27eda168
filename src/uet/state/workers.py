"""Worker lifecycle: registration, heartbeats, claiming runs, draining, and reaping the stale.

A worker's work is never silently lost: terminating or reaping a worker fails the runs and
step attempts it held, in the same transaction, with an error that names the worker.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Mapping, overload

from uet.errors import (AlreadyExistsError, ConstraintViolation, NotFoundError,
                        StaleWorkerError, ValidationError)
from uet.state.backends import Backend, Transaction
from uet.state.db import Database
from uet.state.transitions import check_incarnation, change_row, record_event, redrive_run_row
from uet.state.events import WORKER_SPAWNED, WORKER_STATE_CHANGED
from uet.state.ids import utc_now
from uet.state.machines import WORKER
from uet.state.contracts import (WorkerRecord, json_object, moment, positive_seconds, stamp,
                              state_value, worker_from_row)
from uet.state.tables import RUNS, STEP_ATTEMPTS, text

DEFAULT_MAX_RECOVERIES = 3


class WorkerLifecycle:
    """Workers of one ledger: SPAWNING → IDLE → BUSY → (IDLE | DRAINING) → TERMINATED.

    Every state change is written to the event trail (run-independent: run_id None) in the
    same transaction; heartbeats only update the worker row.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    @property
    def _backend(self) -> Backend:
        return self._db.backend

    # -- registration and state ----------------------------------------------------------

    def spawn_worker(self, worker_id: str, worker_type: str,
                     affinity: dict[str, Any] | None = None, *,
                     incarnation: str | None = None) -> WorkerRecord:
        """Register a worker in SPAWNING. An existing worker_id raises AlreadyExistsError (a
        ValidationError). `affinity` (e.g. {"language": "python"}) is fixed once it leaves
        SPAWNING.

        `incarnation` names the process holding the id (fencing: every later call made with
        it is refused once another incarnation holds the id or the worker is TERMINATED). A
        new incarnation may register an id that is TERMINATED again (a restarted worker
        under the same id): the record starts over in SPAWNING, and `worker.spawned` says
        which incarnation it replaced.
        """
        worker_id = text(worker_id, "worker_id")
        worker_type = text(worker_type, "worker_type")
        if incarnation is not None:
            incarnation = text(incarnation, "incarnation")
        affinity_json = json_object({} if affinity is None else affinity, "affinity")
        event: dict[str, Any] = {"worker_id": worker_id, "worker_type": worker_type,
                 "affinity": affinity or {}, "state": "SPAWNING"}
        if incarnation is not None:
            event["incarnation"] = incarnation
        try:
            with self._backend.transaction() as tx:
                found = tx.rows("lock_worker", (worker_id,)) if incarnation else []
                if found and (found[0]["state"] != "TERMINATED"
                              or found[0]["incarnation"] == incarnation):
                    raise AlreadyExistsError("worker", worker_id)
                if found:
                    row = tx.rows("respawn_worker", {
                        "worker_id": worker_id, "worker_type": worker_type,
                        "affinity": affinity_json, "incarnation": incarnation,
                        "now": utc_now()})[0]
                    event.update(respawn=True,
                                 previous_incarnation=found[0]["incarnation"])
                else:
                    row = tx.rows("insert_worker", (worker_id, worker_type, affinity_json,
                                                    utc_now(), incarnation))[0]
                record_event(tx, None, WORKER_SPAWNED, event)
        except ConstraintViolation as exc:
            if exc.kind == "unique":
                raise AlreadyExistsError("worker", worker_id) from None
            raise  # pragma: no cover - every other constraint is checked above
        return worker_from_row(row)

    def transition_state(self, worker_id: str, new_state: object, *,
                         incarnation: str | None = None) -> bool:
        """Move a worker under its machine; returns True. Entering TERMINATED fails the work
        it still held; BUSY → IDLE is refused while it holds a running run. With
        `incarnation`, a call by a stale incarnation raises StaleWorkerError."""
        worker_id = text(worker_id, "worker_id")
        target = state_value(WORKER, new_state, "new_state")
        with self._backend.transaction() as tx:
            self._transition(tx, self._fetch(tx, worker_id, incarnation), target)
        return True

    def terminate_worker(self, worker_id: str, *,
                         incarnation: str | None = None) -> WorkerRecord:
        """Stop a worker gracefully: a BUSY one drains (finishes its run, then terminates);
        any other goes to TERMINATED."""
        worker_id = text(worker_id, "worker_id")
        with self._backend.transaction() as tx:
            worker = self._fetch(tx, worker_id, incarnation)
            target = "DRAINING" if worker["state"] == "BUSY" else "TERMINATED"
            return worker_from_row(self._transition(tx, worker, target))

    def heartbeat(self, worker_id: str, *, incarnation: str | None = None) -> None:
        """Record that the worker is alive (updates its row only; writes no event).

        A TERMINATED worker (reaped or stopped) gets a StaleWorkerError (a ValidationError):
        it must stop working; so does, with `incarnation`, an incarnation that no longer
        holds the id.
        """
        worker_id = text(worker_id, "worker_id")
        if incarnation is not None:
            incarnation = text(incarnation, "incarnation")
        with self._backend.transaction() as tx:
            if incarnation is None:
                beat = tx.run("heartbeat", (utc_now(), worker_id)).fetchone()
            else:
                beat = tx.run("heartbeat_incarnation",
                              (utc_now(), worker_id, incarnation)).fetchone()
            if beat is None:
                worker = self._fetch(tx, worker_id, incarnation)  # NotFound, or fenced
                raise StaleWorkerError(worker_id, worker["incarnation"],
                                       "it is TERMINATED (stopped, or reaped as lost)")

    # -- work ----------------------------------------------------------------------------

    @overload
    def claim_run(self, worker_id: str, run_id: str, *, incarnation: str | None = None,
                  queued: bool = False) -> dict[str, Any]: ...

    @overload
    def claim_run(self, worker_id: str, run_id: None = None, *,
                  incarnation: str | None = None,
                  queued: bool = False) -> dict[str, Any] | None: ...

    def claim_run(self, worker_id: str, run_id: str | None = None, *,
                  incarnation: str | None = None,
                  queued: bool = False) -> dict[str, Any] | None:
        """Atomically take a pending run for an IDLE worker: the given one, else the oldest
        (with `queued`, the next run of the work queue: runs submitted with a priority, the
        highest first, then the oldest; other pending runs are left alone).

        The run goes to running with the worker recorded, the worker IDLE → BUSY — all or
        nothing. Returns the run, or None when no run is pending. A given run that is no
        longer pending raises ConcurrentUpdateError (another worker took it). On PostgreSQL
        a run another claimer is taking is passed over (SKIP LOCKED), never waited for.
        """
        worker_id = text(worker_id, "worker_id")
        if run_id is not None:
            run_id = text(run_id, "run_id")
        with self._backend.transaction() as tx:
            worker = self._fetch(tx, worker_id, incarnation)
            WORKER.check_transition(worker_id, worker["state"], "BUSY")  # IDLE only
            if run_id is None:
                found = tx.run("next_queued_run" if queued else "oldest_pending_run").fetchone()
                if found is None:
                    return None
                run_id = found[0]
            run = change_row(tx, RUNS, run_id, {"state": "running", "worker_id": worker_id},
                             expected="pending", event_data={"worker_id": worker_id})
            self._transition(tx, worker, "BUSY", run_id=run_id)
            return run

    def release(self, worker_id: str, *, incarnation: str | None = None) -> WorkerRecord:
        """Return a BUSY worker to IDLE once its run is finished (or handed back)."""
        worker_id = text(worker_id, "worker_id")
        with self._backend.transaction() as tx:
            return worker_from_row(self._transition(
                tx, self._fetch(tx, worker_id, incarnation), "IDLE"))

    # -- staleness -----------------------------------------------------------------------

    def find_stale(self, heartbeat_interval_s: float,
                   now: object = None) -> list[WorkerRecord]:
        """IDLE, BUSY (and DRAINING, which still hold work) workers whose last heartbeat is
        older than two intervals before `now` (an aware UTC datetime; default the clock).
        Entering IDLE or BUSY counts as a heartbeat."""
        cutoff = self._cutoff(heartbeat_interval_s, now)
        return [worker_from_row(r)
                for r in self._backend.read("stale_workers", (cutoff,))]

    def reap_stale(self, heartbeat_interval_s: float, now: object = None) -> list[str]:
        """Terminate the stale workers and fail the runs and step attempts they held, all in
        one transaction; returns the ids of the reaped workers."""
        cutoff = self._cutoff(heartbeat_interval_s, now)
        reaped: list[str] = []
        with self._backend.transaction() as tx:
            for worker in tx.rows("stale_workers", (cutoff,)):
                self._transition(tx, worker, "TERMINATED", reason=(
                    f"worker {worker['worker_id']} was lost: no heartbeat since "
                    f"{worker['last_heartbeat'] or worker['created_at']}"))
                reaped.append(worker["worker_id"])
        return reaped

    def terminate_lost(self, worker_id: str, reason: str, *,
                       last_heartbeat: object = ...) -> bool:
        """Terminate a worker judged lost, failing the runs and step attempts it held with
        `reason`, in one transaction; returns False when it was already TERMINATED, or (when
        `last_heartbeat` is given) when it heartbeat since it was judged: it is alive."""
        worker_id = text(worker_id, "worker_id")
        reason = text(reason, "reason")
        with self._backend.transaction() as tx:
            worker = self._fetch(tx, worker_id)
            if worker["state"] == "TERMINATED" or (
                    last_heartbeat is not ... and worker["last_heartbeat"] != last_heartbeat):
                return False
            self._transition(tx, worker, "TERMINATED", reason=reason)
        return True

    # -- queries -------------------------------------------------------------------------

    def get_worker(self, worker_id: str) -> WorkerRecord | None:
        """The worker, or None."""
        rows = self._backend.read("get_worker", (text(worker_id, "worker_id"),))
        return worker_from_row(rows[0]) if rows else None

    def list_workers(self, state: object = None) -> list[WorkerRecord]:
        """Every worker (or those in `state`), oldest first."""
        if state is not None:
            return self.get_workers_by_state(state)
        return [worker_from_row(r) for r in self._backend.read("all_workers")]

    def get_workers_by_state(self, state: object) -> list[WorkerRecord]:
        """Workers in `state` (enum member or string), oldest first."""
        rows = self._backend.read("workers_by_state", (state_value(WORKER, state),))
        return [worker_from_row(r) for r in rows]

    def get_idle_workers(self, worker_type: str | None = None) -> list[WorkerRecord]:
        """IDLE workers (of one type, if given), oldest first: who can claim work."""
        if worker_type is None:
            rows = self._backend.read("idle_workers")
        else:
            rows = self._backend.read("idle_workers_of_type", (text(worker_type, "worker_type"),))
        return [worker_from_row(r) for r in rows]

    # -- internals -----------------------------------------------------------------------

    @staticmethod
    def _cutoff(heartbeat_interval_s: float, now: object) -> str:
        interval = positive_seconds(heartbeat_interval_s, "heartbeat_interval_s")
        assert interval is not None  # required: a number, never None
        try:
            return stamp(moment(now) - timedelta(seconds=2 * interval))
        except OverflowError:
            raise ValidationError(f"now minus two intervals is before the year 1: {now!r}",
                                  field="now") from None

    @staticmethod
    def _fetch(tx: Transaction, worker_id: str, incarnation: str | None = None) -> dict[str, Any]:
        rows = tx.rows("lock_worker", (worker_id,))
        if not rows:
            raise NotFoundError("worker", worker_id)
        if incarnation is not None:
            check_incarnation(rows[0], worker_id, text(incarnation, "incarnation"))
        return rows[0]

    def _transition(self, tx: Transaction, worker: dict[str, Any], target: str, *,
                    run_id: str | None = None, reason: str | None = None) -> dict[str, Any]:
        worker_id, current = worker["worker_id"], worker["state"]
        WORKER.check_transition(worker_id, current, target)
        if target == "IDLE" and current == "BUSY":
            held = tx.run("running_runs_of_worker", (worker_id,)).fetchone()
            if held is not None:
                raise ValidationError(
                    f"worker {worker_id!r} still holds running run {held[0]!r}; finish or fail "
                    "it before releasing the worker", field="worker_id")
        if target == "TERMINATED":
            self._fail_held_work(tx, worker_id, reason or f"worker {worker_id} was terminated "
                                 "while holding it")
        now = utc_now()
        held_run = run_id if target == "BUSY" else (
            worker["current_run_id"] if target == "DRAINING" else None)
        row = tx.rows("set_worker_state", {
            "state": target,
            "terminated_at": WORKER.stamps_entering(target, worker, {}, now).get("terminated_at"),
            "current_run_id": held_run, "worker_id": worker_id,
            # a worker that becomes IDLE or takes work is alive: its staleness starts now
            "heartbeat": now if target in ("IDLE", "BUSY") else None})[0]
        data: dict[str, Any] = {"worker_id": worker_id, "from": current, "to": target}
        if run_id is not None:
            data["run_id"] = run_id
        if reason:
            data["reason"] = reason
        record_event(tx, None, WORKER_STATE_CHANGED, data)
        return row

    @staticmethod
    def _fail_held_work(tx: Transaction, worker_id: str, reason: str) -> None:
        """The work of a worker that is terminated: its running step attempts failed, and
        each running run either re-queued for the pool (`requeue_verdict`) or failed."""
        steps = [r[0] for r in tx.run("running_steps_of_worker", {"worker_id": worker_id})]
        for step_id in steps:
            change_row(tx, STEP_ATTEMPTS, step_id, {"state": "failed", "error_log": reason},
                       event_data={"worker_id": worker_id})
        for (held_run,) in tx.run("running_runs_of_worker", (worker_id,)).fetchall():
            run = tx.rows("lock_run", (held_run,))[0]
            requeue, why_not = requeue_verdict(run)
            if requeue:
                redrive_run_row(tx, held_run, f"re-queued: {reason}",
                                also={"recoveries": run["recoveries"] + 1},
                                event_data={"worker_id": worker_id, "requeued": True,
                                            "recoveries": run["recoveries"] + 1})
            else:
                change_row(tx, RUNS, held_run, {
                    "state": "failed",
                    "error_message": reason + (f" ({why_not})" if why_not else "")},
                    event_data={"worker_id": worker_id})


def queue_settings(run: Mapping[str, Any]) -> dict[str, Any]:
    """How the pool recovers a submitted run (`metadata.queue`, written by `uet submit`
    from its workstream): {"resume": "auto" | "manual", "max_recoveries": int}."""
    meta = run["metadata"]
    queue = meta.get("queue") if isinstance(meta, dict) else None
    queue = queue if isinstance(queue, dict) else {}
    limit = queue.get("max_recoveries")
    return {"resume": "manual" if queue.get("resume") == "manual" else "auto",
            "max_recoveries": limit if isinstance(limit, int) and not isinstance(limit, bool)
            and limit >= 0 else DEFAULT_MAX_RECOVERIES}


def requeue_verdict(run: Mapping[str, Any]) -> tuple[bool, str | None]:
    """Whether a running run whose owner was lost goes back to the queue for another worker
    to resume (True, None), or is failed (False, why not re-queued; None for a run that was
    never queued: `uet run`'s and the API's runs are failed, as before)."""
    if run["priority"] is None:
        return False, None
    settings = queue_settings(run)
    if settings["resume"] != "auto":
        return False, "its workstream says resume: manual; `uet resume` it"
    if run["recoveries"] >= settings["max_recoveries"]:
        return False, (f"not re-queued: recovered {run['recoveries']} times already, "
                       f"max_recoveries {settings['max_recoveries']}")
    return True, None


__all__ = ["WorkerLifecycle", "queue_settings", "requeue_verdict", "DEFAULT_MAX_RECOVERIES",
           "WORKER_SPAWNED", "WORKER_STATE_CHANGED"]

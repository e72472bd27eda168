"""Ownership and recovery: a run that is `running` has a live owner, or it does not stay so.

Every process that runs work owns it through a worker record (`Owner`): the worker's affinity
names the host, the pid, the process's start time (so that a reused pid is not taken for
it), the boot it runs in, an incarnation id and its heartbeat interval, and a background
thread heartbeats. `recover()` is the reaper. One pass judges every owner that is not
TERMINATED:

- on this host, the owner is gone as soon as its pid is dead or belongs to another process
  (or the host restarted since it registered);
- on any host, the owner is gone once it missed two of its heartbeat intervals.

Each gone owner is TERMINATED, which fails the runs and step attempts it held with a reason
naming it and why, in one transaction per owner. On this host the pass also stops the
process group of a command the lost owner was running. A pending run an owner created for
itself (`metadata.uet_owner`) and never took, because it died in between, is canceled.
Workers that are not owners (no `heartbeat_s` and `pid` in their affinity: registered by
other code, with its own heartbeat interval) are left to `WorkerLifecycle.reap_stale`.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping, NamedTuple

from uet.errors import (ConcurrentUpdateError, NotFoundError, StaleWorkerError, UetError,
                        ValidationError)
from uet.state.contracts import WorkerRecord, positive_seconds
from uet.state.db import Database
from uet.state.events import RUN_CANCEL_REQUESTED, RUN_STATE_CHANGED
from uet.state.ids import new_ulid
from uet.state.tables import RUNS, STEP_ATTEMPTS
from uet.state.transitions import change_row, record_event
from uet.state.workers import WorkerLifecycle

DEFAULT_HEARTBEAT_S = 10.0
OWNER_STATES = ("SPAWNING", "IDLE", "BUSY", "DRAINING")


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip() or None
    except OSError:
        return None


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of a process, from /proc; None when
    there is no such process (or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], fields[19]  # fields 3 and 22 of proc(5)


def process_start(pid: int) -> str | None:
    """The start time of process `pid` as this host's kernel counts it (stable for the life
    of the process, different for a later process given the same pid); None if unknown."""
    found = _proc_stat(pid)
    return found[1] if found else None


def identity(pid: int | None = None) -> dict[str, Any]:
    """Host, pid, process start time and boot of a process (default: this one)."""
    pid = os.getpid() if pid is None else pid
    return {"host": socket.gethostname(), "pid": pid, "started": process_start(pid),
            "boot_id": _boot_id()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def why_gone(affinity: Mapping[str, Any]) -> str | None:
    """Why the process an owner's affinity names is gone, judged on this host; None when it
    is alive, or runs on another host (where only its heartbeats tell)."""
    host, pid = affinity.get("host"), affinity.get("pid")
    if host != socket.gethostname() or not isinstance(pid, int) or isinstance(pid, bool):
        return None
    boot = _boot_id()
    if affinity.get("boot_id") and boot and affinity["boot_id"] != boot:
        return f"host {host} restarted after process {pid} registered"
    stat = _proc_stat(pid)
    if stat is None:
        if os.path.isdir("/proc") or not _alive(pid):
            return f"process {pid} on host {host} has ended"
        return None  # no /proc here: the pid is alive, its identity cannot be checked
    state, started = stat
    if state in ("Z", "X"):
        return f"process {pid} on host {host} has ended"
    if affinity.get("started") is not None and started != affinity["started"]:
        return (f"process {pid} on host {host} has ended (its pid now belongs to another "
                "process)")
    return None


def _heartbeat_s(affinity: Mapping[str, Any]) -> float | None:
    value = affinity.get("heartbeat_s")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


def is_owner(affinity: Mapping[str, Any]) -> bool:
    """Whether a worker is an owner that `recover` judges (it declared its process and its
    heartbeat interval)."""
    return _heartbeat_s(affinity) is not None and isinstance(affinity.get("pid"), int)


def owner_lost(worker: WorkerRecord, now: datetime | None = None) -> str | None:
    """Why a worker record's owner is gone (see the module's rules), or None."""
    affinity = worker.affinity
    if worker.state == "TERMINATED" or not is_owner(affinity):
        return None
    gone = why_gone(affinity)
    if gone is not None:
        return gone
    interval = _heartbeat_s(affinity)
    assert interval is not None  # an owner declares its heartbeat interval (is_owner)
    last = worker.last_heartbeat or worker.created_at
    now = now or datetime.now(timezone.utc)
    try:
        beat = datetime.fromisoformat(last.replace("Z", "+00:00"))
    except (AttributeError, ValueError):  # only raw SQL can store such a time
        return f"its last heartbeat time {last!r} cannot be read"
    if now - beat > timedelta(seconds=2 * interval):
        return (f"no heartbeat since {last}: two heartbeat intervals ({interval:g} s each) "
                "missed")
    return None


@dataclass(frozen=True)
class Recovered:
    """One owner a reaper pass found gone: the runs it failed, why."""
    worker_id: str
    reason: str
    runs: list[str] = field(default_factory=list)


def recover(db: Database, *, now: datetime | None = None) -> list[Recovered]:
    """One reaper pass (see the module's docstring); returns what it recovered. Cheap: the
    owners not TERMINATED are read by an indexed query, and judged here."""
    workers = WorkerLifecycle(db)
    recovered: list[Recovered] = []
    for state in OWNER_STATES:
        for worker in workers.get_workers_by_state(state):
            why = owner_lost(worker, now)
            if why is None:
                continue
            reason = (f"owner {worker.worker_id} ({worker.worker_type} process "
                      f"{worker.affinity.get('pid')} on {worker.affinity.get('host')}) is "
                      f"gone: {why}")
            held = [r["run_id"] for r in db.list_runs({"worker_id": worker.worker_id,
                                                       "state": "running"}, limit=None)]
            groups = _command_groups(db, held, worker.affinity)
            if workers.terminate_lost(worker.worker_id, reason,
                                      last_heartbeat=worker.last_heartbeat):
                for pgid in groups:
                    _stop_group(pgid)
                recovered.append(Recovered(worker.worker_id, reason, held))
    recovered += _abandoned_pending(db, workers)
    return recovered


def _abandoned_pending(db: Database, workers: Any) -> list[Recovered]:
    """Pending runs an owner created for itself (`metadata.uet_owner`, a worker that exists)
    and died before taking: canceled, since no one else will ever run them."""
    found = []
    for run in db.list_runs({"state": "pending"}, limit=None):
        meta = run["metadata"] if isinstance(run["metadata"], dict) else {}
        owner = meta.get("uet_owner")
        if not isinstance(owner, str) or run["priority"] is not None:
            continue  # a queued run is the pool's to take, whoever queued it
        worker = workers.get_worker(owner)
        if worker is None or worker.state != "TERMINATED":
            continue
        reason = f"canceled: its owner {owner} ended before it started"
        try:
            db.transition_run(run["run_id"], "canceled", expected="pending",
                              error_message=reason)
        except ConcurrentUpdateError:
            continue  # taken meanwhile
        found.append(Recovered(owner, reason, [run["run_id"]]))
    return found


def _command_groups(db: Database, run_ids: list[str],
                    affinity: Mapping[str, Any]) -> list[int]:
    """The process groups of the commands the runs' running step attempts started, when
    they run on this host (recorded in the step attempt's metadata by `uet run`)."""
    if affinity.get("host") != socket.gethostname():
        return []
    groups: list[int] = []
    for run_id in run_ids:
        for step in db.list_step_attempts(run_id):
            meta = step["metadata"] if isinstance(step["metadata"], dict) else {}
            pgid = meta.get("pgid")
            if step["state"] == "running" and isinstance(pgid, int) and pgid > 1:
                started = process_start(pgid)
                # the group's leader is gone (the kernel reuses no pid while its group
                # lives), or it is still the command we started: the group is ours
                if started is None or started == meta.get("pid_started"):
                    groups.append(pgid)
    return groups


def _stop_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def request_cancel(db: Database, run_id: str, *, by: str = "uet cancel") -> dict[str, Any]:
    """Cancel a run: a pending one, or a running one whose owner is gone (or that has none),
    at once; a running one with a live owner by asking it through the ledger (a
    `run.cancel_requested` event its owner polls for), which stops the command and records
    `canceled`. Returns the run as it is now. A finished run raises InvalidTransitionError."""
    run = db.get_run(run_id)
    if run is None:
        raise NotFoundError("run", run_id)
    if run["state"] == "pending":
        return db.transition_run(run_id, "canceled", expected="pending",
                                 error_message=f"canceled by {by} before it started")
    if run["state"] != "running":
        return db.transition_run(run_id, "canceled")  # InvalidTransitionError, said well
    worker = (WorkerLifecycle(db).get_worker(run["worker_id"]) if run["worker_id"] else None)
    gone = "it has no owner" if worker is None else owner_lost(worker)
    running_steps = [s["step_attempt_id"] for s in db.list_step_attempts(run_id)
                     if s["state"] == "running"]
    with db.backend.transaction() as tx:
        if gone is None:
            record_event(tx, run_id, RUN_CANCEL_REQUESTED, {"by": by})
        else:  # all of it or nothing: a step that moved meanwhile is a ConcurrentUpdateError
            reason = f"canceled by {by}: {gone}"
            for step_id in running_steps:
                change_row(tx, STEP_ATTEMPTS, step_id,
                           {"state": "canceled", "error_log": reason}, expected="running")
            return change_row(tx, RUNS, run_id, {"state": "canceled", "error_message": reason},
                              expected="running")
    run = db.get_run(run_id)
    if run is None:  # deleted meanwhile
        raise NotFoundError("run", run_id)
    return run


class RunNews(NamedTuple):
    """What an owner polling its run's events after a cursor learns (`run_news`)."""
    canceled_by: str | None  # who asked to cancel it (`request_cancel`), or None
    taken: str | None        # why the run is no longer its owner's to write, or None
    after: int               # the seq to pass next time: each event is read once


def run_news(db: Database, run_id: str, after: int = 0) -> RunNews:
    """The run's events after seq `after`, as its owner must act on them: a cancel asked
    for it, and whether another process moved it out of running (the reaper of a paused
    owner, `uet cancel` of a lost one, a re-queue) — then this owner no longer owns it."""
    canceled_by = None
    for event in db.events_since(after, run_id=run_id):
        after = event["seq"]
        data = event["data"] if isinstance(event["data"], dict) else {}
        if event["event_type"] == RUN_CANCEL_REQUESTED:
            canceled_by = canceled_by or f"requested by {data.get('by', 'uet cancel')}"
        elif event["event_type"] == RUN_STATE_CHANGED and data.get("to") != "running":
            run = db.get_run(run_id) or {}
            why = data.get("reason") or run.get("error_message") or "see its events"
            return RunNews(canceled_by, f"the run went {data.get('from')} -> "
                           f"{data.get('to')} by another process: {why}", after)
    return RunNews(canceled_by, None, after)


def cancel_requested(db: Database, run_id: str, after: int = 0) -> tuple[str | None, int]:
    """Whether the run was asked to stop (`request_cancel`) in an event after seq `after`:
    (who asked, or None; the seq to pass next time), so that polling reads each event once."""
    news = run_news(db, run_id, after)
    return news.canceled_by, news.after


class Owner:
    """This process as the owner of the work it runs: a worker record (type `worker_type`,
    affinity: host, pid, process start time, boot, incarnation, heartbeat interval) that
    heartbeats from a background thread while `heartbeating()` is on, and is TERMINATED by
    `close()` when the process is done. The one mechanism every owner uses."""

    def __init__(self, db: Database, worker_type: str = "cli", *,
                 heartbeat_s: float = DEFAULT_HEARTBEAT_S,
                 worker_id: str | None = None) -> None:
        self.db, self.workers = db, WorkerLifecycle(db)
        interval = positive_seconds(heartbeat_s, "heartbeat_s")
        assert interval is not None  # required: a number, never None
        self.heartbeat_s = interval
        self.incarnation = new_ulid()
        # a given id is kept across restarts (each process a new incarnation of it)
        self.worker_id = worker_id or f"{worker_type}-{self.incarnation}"
        self.worker_type = worker_type
        self.lost: str | None = None  # why the ledger says we are gone (reaped), if it does
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._retired = False

    def register(self) -> str:
        """Record this process as an IDLE worker; returns its worker_id.

        A given worker id that a process still holds is taken over only when that owner is
        gone (`owner_lost`: its process ended, or it missed two heartbeats — a paused
        process too): it is terminated first (its runs failed or re-queued) and this
        process becomes the id's new incarnation, so the old one's writes are refused from
        then on. An owner that is alive keeps its id: ValidationError naming it."""
        existing = self.workers.get_worker(self.worker_id)
        if (existing is not None and existing.incarnation == self.incarnation
                and existing.state == "SPAWNING"):  # a first try that stopped half way
            self.workers.transition_state(self.worker_id, "IDLE", incarnation=self.incarnation)
            return self.worker_id
        if existing is not None and existing.state != "TERMINATED":
            why = owner_lost(existing)
            if why is None:
                raise ValidationError(
                    f"worker {self.worker_id} is already running (process "
                    f"{existing.affinity.get('pid')} on {existing.affinity.get('host')}, "
                    f"{existing.state.value}); stop it first or choose another id",
                    field="worker_id")
            self.workers.terminate_lost(
                self.worker_id, f"owner {self.worker_id} is gone ({why}): a new process "
                "registered under its id", last_heartbeat=existing.last_heartbeat)
        self.workers.spawn_worker(self.worker_id, self.worker_type, {
            **identity(), "incarnation": self.incarnation, "heartbeat_s": self.heartbeat_s},
            incarnation=self.incarnation)
        self.workers.transition_state(self.worker_id, "IDLE", incarnation=self.incarnation)
        return self.worker_id

    def claim(self, run_id: str) -> dict[str, Any]:
        """Take the pending run: it goes running with this owner recorded."""
        return self.workers.claim_run(self.worker_id, run_id, incarnation=self.incarnation)

    def claim_next(self) -> dict[str, Any] | None:
        """Take the next run of the work queue (highest priority, then oldest), or None."""
        return self.workers.claim_run(self.worker_id, incarnation=self.incarnation,
                                      queued=True)

    def release(self) -> None:
        """Back to IDLE once the run held is finished or handed back."""
        self.workers.release(self.worker_id, incarnation=self.incarnation)

    def start_heartbeat(self) -> None:
        """Heartbeat twice per interval from a daemon thread until `close()`. Start it
        after any fork the process makes (a child must not inherit a thread that holds a
        lock)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._beat, name="uet-heartbeat",
                                            daemon=True)
            self._thread.start()

    def _beat(self) -> None:
        # twice per interval: the owner is judged lost after two intervals without a beat,
        # so one beat delayed by a busy ledger (a writer holding the lock) costs nothing
        while not self._stop.wait(self.heartbeat_s / 2):
            try:
                self.workers.heartbeat(self.worker_id, incarnation=self.incarnation)
            except (ValidationError, NotFoundError) as exc:  # reaped, replaced or removed
                self.lost = str(exc)
                return
            except UetError:
                continue  # the ledger is out of reach for now: beat again next interval

    def stop_heartbeat(self) -> None:
        """Stop heartbeating and give up the record: `close()` then writes nothing (for a
        ledger out of reach; the reaper retires the worker once this process has ended)."""
        self._stop.set()
        self._retired = True

    def close(self) -> None:
        """Stop heartbeating and retire the worker record (its run must be finished: a run
        still running is failed by the termination, with a reason naming this owner)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._retired:
            return
        worker = self.workers.get_worker(self.worker_id)
        if (worker is None or worker.state == "TERMINATED"
                or worker.incarnation not in (None, self.incarnation)):
            return  # reaped, or the id belongs to a newer process: nothing is ours
        try:
            if worker.state == "BUSY":
                run = self.db.get_run(worker.current_run_id) if worker.current_run_id else None
                if run is None or run["state"] != "running":
                    self.workers.release(self.worker_id, incarnation=self.incarnation)
            self.workers.transition_state(self.worker_id, "TERMINATED",
                                          incarnation=self.incarnation)
        except StaleWorkerError:
            pass  # reaped meanwhile


__all__ = ["DEFAULT_HEARTBEAT_S", "Owner", "RUN_CANCEL_REQUESTED", "Recovered",
           "RunNews", "cancel_requested", "identity", "run_news", "is_owner", "owner_lost", "process_start",
           "recover", "request_cancel", "why_gone"]

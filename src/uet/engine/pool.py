"""The work queue and the worker pool: `uet submit` queues a workstream as a pending run;
`uet worker` processes claim queued runs, run each with the orchestrator and release them.

- **Submitting** records a `pending` run with a `priority` (what makes it queued: runs of
  `uet run` and of the API have none, and no pool takes them) carrying its workstream: the
  exact file content and hash, the repository, the base commit resolved at submit time and
  the branch, so that later edits of the file or new commits change nothing about a queued
  run; and how the pool recovers it (`resume`, `max_recoveries`, from the workstream).
- **A worker process** registers one worker record per slot (`--concurrency`), each an
  `Owner` (host, pid, process start time, a fresh incarnation, heartbeats from a thread);
  each slot claims the next queued run (highest priority, then oldest; SKIP LOCKED on
  PostgreSQL), runs it (`uet.engine.resume.run_queued`: from its start, or reconciled and
  resumed when it ran before) with every write fenced by its incarnation, and releases.
- **Recovery by the pool**: the process runs the reaper at start and every heartbeat
  interval. A run whose owner is gone is re-queued (running → pending) while its workstream
  says `resume: auto` and it was re-queued fewer than `max_recoveries` times, so another
  worker resumes it; else it is failed with the reason (see `uet.state.workers`).
- **Stopping**: the first SIGTERM (or SIGINT) drains — no new claims, the tasks that have
  started finish, a run with tasks left is handed back to the queue (pending, its
  committed tasks kept) — the second cancels the runs (their tools are stopped, the runs
  end canceled). A slot that learns it was fenced off (paused past its lease, reaped)
  stops without writing anything more.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from uet.engine import git
from uet.engine.orchestrator import (Orchestrator, WorkstreamResult, run_record,
                                     with_stop_signals)
from uet.engine.resume import run_queued
from uet.engine.workstream import Workstream
from uet.errors import (DatabaseBusyError, InvalidTransitionError, StaleWorkerError,
                        StorageError, UetError, ValidationError)
from uet.state.db import Database
from uet.state.ids import new_ulid
from uet.state.recovery import DEFAULT_HEARTBEAT_S, Owner, recover
from uet.state.workers import WorkerLifecycle

DEFAULT_PRIORITY = 0
PRIORITY_RANGE = (-1_000_000, 1_000_000)
DEFAULT_POLL_S = 0.5       # how often an idle slot looks for work (PostgreSQL: also woken)
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELED, EXIT_LOST = 0, 1, 2, 130, 3
FINISHED = ("succeeded", "failed", "canceled", "quarantined")


def submit(db: Database, ws: Workstream, *, priority: int = DEFAULT_PRIORITY,
           by: str | None = None) -> dict[str, Any]:
    """Queue `ws` as a pending run for the worker pool; returns the run.

    The workstream was validated when it was loaded; its repository must exist here (the
    workers run it at the same path) and its base resolve to a commit, which the run keeps:
    the workers start from it, whatever the branch does meanwhile."""
    if (not isinstance(priority, int) or isinstance(priority, bool)
            or not PRIORITY_RANGE[0] <= priority <= PRIORITY_RANGE[1]):
        raise ValidationError(f"priority must be an integer from {PRIORITY_RANGE[0]} to "
                              f"{PRIORITY_RANGE[1]}, got {priority!r}", field="priority")
    repo = git.open_repository(ws.repo)
    base = repo.resolve_commit(ws.base)
    run_id = new_ulid()
    branch = ws.branch_name(run_id)
    if repo.branch_head(branch) is not None:
        raise ValidationError(f"branch {branch!r} already exists in {repo.toplevel}: a "
                              "queued run needs a branch of its own (put {run_id} in the "
                              "workstream's branch template)", field="branch")
    record = run_record(ws, run_id, repo, base, queue={
        "resume": ws.resume, "max_recoveries": ws.max_recoveries,
        "submitted_by": by or f"{os.environ.get('USER', 'someone')}@{socket.gethostname()}"})
    record["priority"] = priority
    db.create_run(record)
    run = db.get_run(run_id)
    assert run is not None
    return run


@dataclass
class PoolReport:
    """What a worker process did: the runs it ran (how each ended this time: "pending" when
    handed back; `fenced_off` set when this process lost it) and why it stopped."""
    results: list[WorkstreamResult] = field(default_factory=list)
    lost: str | None = None
    stopped_by: str | None = None
    error: UetError | None = None  # what stopped a slot that could not work

    def exit_code(self, once: bool) -> int:
        """0 when all went as asked; `--once`: the run's outcome (0 succeeded, 1 failed or
        quarantined, 130 canceled); 3 when this process was fenced off; 2 when a slot was
        refused (its --id is held by a live worker), 1 when one failed otherwise."""
        if self.lost is not None:
            return EXIT_LOST
        if self.error is not None:
            return EXIT_USAGE if isinstance(self.error, ValidationError) else EXIT_FAILED
        if once and self.results:
            return {"succeeded": EXIT_OK, "pending": EXIT_OK,
                    "canceled": EXIT_CANCELED}.get(self.results[-1].state, EXIT_FAILED)
        return EXIT_OK


class WorkerPool:
    """One `uet worker` process: `concurrency` slots, each a worker record that claims and
    runs queued runs one at a time. Use `run()` once (from the main thread to handle
    SIGTERM/SIGINT: drain, then cancel)."""

    def __init__(self, db_path: str, *, worker_type: str = "worker",
                 worker_id: str | None = None, concurrency: int = 1,
                 heartbeat_s: float = DEFAULT_HEARTBEAT_S, once: bool = False,
                 poll_s: float = DEFAULT_POLL_S, parallel: int = 1, keep_failed: bool = False,
                 busy_timeout: float | None = None,
                 out: Callable[[str], None] | None = None) -> None:
        for value, what, low in ((concurrency, "concurrency", 1), (parallel, "parallel", 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValidationError(f"{what} must be an integer >= {low}, got {value!r}",
                                      field=what)
        if once and concurrency != 1:
            raise ValidationError("--once runs one run: it takes --concurrency 1",
                                  field="concurrency")
        self.db_path, self.worker_type, self.worker_id = db_path, worker_type, worker_id
        self.concurrency, self.heartbeat_s, self.once = concurrency, heartbeat_s, once
        self.poll_s, self.parallel, self.keep_failed = poll_s, parallel, keep_failed
        self.busy_timeout = busy_timeout  # None: the ledger's default
        self.out = out or (lambda line: None)
        self.report = PoolReport()
        self._drain = threading.Event()
        self._cancel: str | None = None
        self._lock = threading.RLock()  # the signal handler may take it in the main thread
        self._running: dict[int, Orchestrator] = {}
        self._owners: dict[int, Owner] = {}

    # -- stopping ---------------------------------------------------------------------------

    def drain(self, why: str = "asked to drain") -> None:
        """No new claims; the tasks that have started finish; runs with tasks left are
        handed back to the queue."""
        with self._lock:
            if not self._drain.is_set():
                self.report.stopped_by = why
                self.out(f"draining ({why}): no new runs; the current tasks finish")
            self._drain.set()
            for orchestrator in self._running.values():
                orchestrator.drain()

    def cancel(self, why: str) -> None:
        """Stop now: the runs' tools are stopped and the runs end canceled."""
        with self._lock:
            self._drain.set()
            self._cancel = why
            self.out(f"canceling the current runs ({why})")
            for orchestrator in self._running.values():
                orchestrator.stop(f"canceled: the worker was stopped ({why})")

    # -- the process -----------------------------------------------------------------------

    def run(self, *, handle_signals: bool = True) -> PoolReport:
        """Run the slots until drained (or, `once`, one run done); returns the report."""
        if not handle_signals:
            return self._run()

        def on_signal(name: str) -> None:
            if self._drain.is_set():
                self.cancel(f"a second {name}")
            else:
                self.drain(name)

        return with_stop_signals(on_signal, self._run)

    def _run(self) -> PoolReport:
        with self._open_db() as db:
            self._reap(db)
            threads = [threading.Thread(target=self._slot, args=(k,), name=f"uet-slot-{k}",
                                        daemon=True) for k in range(self.concurrency)]
            for thread in threads:
                thread.start()
            next_reap = time.monotonic() + self.heartbeat_s
            marked: set[int] = set()
            while any(thread.is_alive() for thread in threads):
                next(thread for thread in threads if thread.is_alive()).join(0.1)
                if time.monotonic() >= next_reap:
                    self._reap(db)
                    next_reap = time.monotonic() + self.heartbeat_s
                if self._drain.is_set():
                    self._mark_draining(db, marked)
        return self.report

    def _open_db(self) -> Database:
        """A connection of its own to the ledger (the process's, and each slot's)."""
        if self.busy_timeout is None:
            return Database(self.db_path)
        return Database(self.db_path, busy_timeout=self.busy_timeout)

    def _reap(self, db: Database) -> None:
        """One reaper pass: the runs of lost owners re-queued or failed."""
        try:
            for found in recover(db):
                self.out(f"recovered {', '.join(found.runs) or 'no run'}: {found.reason}")
                for run_id in found.runs:
                    self._clean_up(db, run_id)
        except UetError as exc:
            self.out(f"reaper pass skipped: {exc}")  # the ledger is out of reach: next time

    @staticmethod
    def _clean_up(db: Database, run_id: str) -> None:
        """The worktrees a lost owner left of a run that will not go on (failed, not
        re-queued: a poison run, `resume: manual`); a re-queued run's next owner removes
        them itself, and `uet resume` rebuilds what it needs."""
        run = db.get_run(run_id)
        meta = run["metadata"] if run and isinstance(run["metadata"], dict) else {}
        if run is None or run["state"] == "pending" or not isinstance(meta.get("repo"), str):
            return
        try:
            git.open_repository(meta["repo"]).remove_worktrees_named(f"{run_id}-")
        except UetError:
            pass  # the repository is gone or busy: nothing of ours to keep clean there

    def _mark_draining(self, db: Database, marked: set[int]) -> None:
        """Busy slots show DRAINING while their run finishes (`uet workers`)."""
        workers = WorkerLifecycle(db)
        with self._lock:
            owners = {k: self._owners[k] for k in self._running if k not in marked}
        for k, owner in owners.items():
            marked.add(k)
            try:
                worker = workers.get_worker(owner.worker_id)
                if worker is not None and worker.state == "BUSY":
                    workers.terminate_worker(owner.worker_id, incarnation=owner.incarnation)
            except UetError:
                pass  # the run ended meanwhile: the slot retires itself

    def _slot_id(self, k: int) -> str | None:
        if self.worker_id is None:
            return None  # a fresh id per process
        return self.worker_id if self.concurrency == 1 else f"{self.worker_id}-{k + 1}"

    def _slot(self, k: int) -> None:
        try:
            db = self._open_db()
        except UetError as exc:
            self.out(f"slot {k + 1} cannot open the ledger: {exc}")
            self._failed(exc)
            return
        owner = Owner(db, self.worker_type, heartbeat_s=self.heartbeat_s,
                      worker_id=self._slot_id(k))
        try:
            while not self._register(owner):
                if self._drain.is_set():
                    return
            with self._lock:
                self._owners[k] = owner
            owner.start_heartbeat()
            self.out(f"worker {owner.worker_id} ready (pid {os.getpid()})")
            self._work(k, db, owner)
        except StaleWorkerError as exc:
            self._lost(owner, str(exc))
        except UetError as exc:
            self.out(f"worker {owner.worker_id} stopped: {exc}")
            self._failed(exc)
        finally:
            try:
                owner.close()
            except UetError:
                pass  # out of reach: the reaper retires the record once we are gone
            db.close()

    def _register(self, owner: Owner) -> bool:
        """Register the slot's worker; False (after a pause) when the ledger was busy or
        out of reach: a worker started while another process holds the ledger waits."""
        try:
            owner.register()
            return True
        except (DatabaseBusyError, StorageError) as exc:
            self.out(f"worker {owner.worker_id}: the ledger is busy or out of reach ({exc}); "
                     "trying again")
            time.sleep(max(self.poll_s, 1.0))
            return False

    def _failed(self, error: UetError) -> None:
        """A slot stopped on an error: the process drains and exits non-zero."""
        with self._lock:
            self.report.error = self.report.error or error
        self.drain(f"a worker stopped: {error}")

    def _lost(self, owner: Owner, why: str) -> None:
        self.report.lost = why
        self.out(f"worker {owner.worker_id} was fenced off and stops: {why}")
        self.drain("fenced off")

    def _work(self, k: int, db: Database, owner: Owner) -> None:
        with db.backend.listen() as wait:  # PostgreSQL: woken by new events
            while not self._drain.is_set():
                if owner.lost is not None:
                    self._lost(owner, owner.lost)
                    return
                try:
                    waiting = bool(db.backend.read("queued_run_waiting"))  # no write lock
                    run = owner.claim_next() if waiting else None
                except (DatabaseBusyError, StorageError) as exc:
                    # a writer held the ledger past the busy timeout, or PostgreSQL is
                    # out of reach for a moment: the worker waits, it does not give up
                    self.out(f"worker {owner.worker_id}: the ledger is busy or out of reach "
                              f"({exc}); trying again")
                    wait(max(self.poll_s, 1.0))
                    continue
                if not waiting:
                    if self.once:
                        self.out("no queued run: nothing to do")
                        return
                    wait(self.poll_s)
                    continue
                if run is None:
                    continue  # another worker took it first
                self.out(f"worker {owner.worker_id} took run {run['run_id']}")
                result = run_queued(db, run, owner, parallel=self.parallel,
                                    keep_failed=self.keep_failed, out=self.out,
                                    started=lambda o: self._started(k, o))
                with self._lock:
                    self._running.pop(k, None)
                    self.report.results.append(result)
                if result.fenced_off is not None:
                    self._lost(owner, result.fenced_off)
                    return
                self._release(db, owner)
                if self.once:
                    return

    def _started(self, k: int, orchestrator: Orchestrator) -> None:
        with self._lock:
            self._running[k] = orchestrator
            if self._cancel is not None:
                orchestrator.stop(f"canceled: the worker was stopped ({self._cancel})")
            elif self._drain.is_set():
                orchestrator.drain()

    @staticmethod
    def _release(db: Database, owner: Owner) -> None:
        worker = WorkerLifecycle(db).get_worker(owner.worker_id)
        if worker is not None and worker.state == "BUSY":
            try:
                owner.release()
            except InvalidTransitionError:
                pass  # marked DRAINING meanwhile: the slot retires at close


__all__ = ["EXIT_CANCELED", "EXIT_FAILED", "EXIT_LOST", "EXIT_OK", "FINISHED", "PoolReport",
           "WorkerPool", "submit"]

"""Check 8: waiting, not failing. Calls wait for another process's write lock and succeed
within the busy timeout, and past it fail with the typed DatabaseBusyError; a write retried
after its caller missed the acknowledgement creates no duplicate; a ledger opened before
os.fork() never shares its connection with the children; every connection (library and
command line) runs with WAL, foreign keys and the busy timeout."""

from __future__ import annotations

import json
import os
import random
import subprocess
from contextlib import contextmanager
from pathlib import Path

from reliability_suite.common import Mode, Result, connect_raw, spawn, wait_for

TYPED_BUSY = "uet.errors.DatabaseBusyError"
DIFF = "--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n+b\n"


def _under_lock(path: str, workdir: Path, hold: float | None, busy_timeout: float,
                writers: int, mutant: str | None, tag: str) -> list[str]:
    """Writers, all started and ready, are let go once another process holds the lock. It
    holds it `hold` seconds, or (None) until every writer has answered: then no writer can
    find the lock free however late the machine lets it run, and only the busy timeout
    can end its wait."""
    go = str(workdir / f"go-{tag}")
    readies = [str(workdir / f"ready-{tag}-{n}") for n in range(writers)]
    procs = [spawn("write_once", path, str(busy_timeout), ready, go, mutant=mutant,
                   stdout=subprocess.PIPE, text=True) for ready in readies]
    holder = None
    release = str(workdir / f"release-{tag}")
    try:
        wait_for(lambda: all(os.path.exists(r) for r in readies), 120, "the writers")
        held = str(workdir / f"held-{tag}")
        holder = spawn("hold_lock", path, str(hold or 300), held, "IMMEDIATE",
                       release if hold is None else "", mutant=mutant)
        wait_for(lambda: os.path.exists(held), 60, "the lock holder")
        open(go, "w").close()
        return [p.communicate(timeout=120)[0].strip() for p in procs]
    finally:
        open(release, "w").close()
        for proc in procs + ([holder] if holder else []):
            proc.kill()
            proc.communicate()


def _retries(path: str) -> tuple[int, int, list[str]]:
    """Each create call whose commit succeeded but whose caller saw an error (injected right
    after COMMIT), retried with the same ids. Returns (calls, duplicates made, retries that
    raised something other than the documented answer to a repeated write)."""
    from uet.errors import AlreadyExistsError, ConcurrentUpdateError, DatabaseBusyError
    from uet.state import Database, PatchLedger, WorkerLifecycle
    with Database(path) as db:
        db.create_run({"run_id": "retry-run", "project_id": "p", "phase_id": "ph"})
        calls = [
            lambda: db.create_run({"run_id": "r-1", "project_id": "p", "phase_id": "ph"}),
            lambda: db.create_step_attempt({"step_attempt_id": "s-1", "run_id": "retry-run",
                                            "sequence": 1, "tool_id": "t"}),
            lambda: db.create_event({"event_id": "e-1", "run_id": "retry-run",
                                     "event_type": "note"}),
            lambda: db.transition_run("retry-run", "running", expected="pending"),
            lambda: WorkerLifecycle(db).spawn_worker("w-1", "t", {}),
            lambda: PatchLedger(db).record_patch(DIFF, run_id="retry-run",
                                                 step_attempt_id="s-1"),
        ]
        backend = db._backend
        original = type(backend).transaction

        @contextmanager
        def acknowledgement_lost(self):
            with original(self) as tx:
                yield tx
            raise DatabaseBusyError("simulated: the COMMIT succeeded, its answer was lost")

        duplicates, wrong = 0, []
        for call in calls:
            backend.transaction = acknowledgement_lost.__get__(backend)
            try:
                call()
                wrong.append("the injected error did not reach the caller")
            except DatabaseBusyError:
                pass  # what the caller saw, although the write committed
            finally:
                del backend.transaction
            first = _counts(path)
            try:
                call()  # the retry, with the same ids
            except (AlreadyExistsError, ConcurrentUpdateError):
                pass  # the documented answers to a repeated write
            except Exception as exc:  # counted
                wrong.append(f"retry raised {type(exc).__name__}: {exc}")
            after = _counts(path)
            duplicates += sum(after[table] - first[table] for table in after)
        return len(calls), duplicates, wrong


def _counts(path: str) -> dict[str, int]:
    conn = connect_raw(path)
    try:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # fixed names
                for t in ("runs", "step_attempts", "run_events", "workers", "patches",
                          "patch_ledger_entries", "test_gates")}
    finally:
        conn.close()


def _fork(path: str, children: int) -> tuple[int, int, int]:
    """A Database used by the parent right before each os.fork() (so it holds an open
    connection), then by the forked children and the parent at once. Returns (children
    that used the parent's connection, acknowledged events missing, writes that failed)."""
    from uet.state import Database
    db = Database(path)
    run_id = db.create_run({"project_id": "fork", "phase_id": "ph"})
    pids, reads, acked, failed = [], [], [], 0
    def parent_writes(count: int) -> int:
        failures = 0
        for _ in range(count):
            try:
                acked.append(db.create_event({"run_id": run_id, "event_type": "parent"}))
            except Exception:  # counted: the children's writes must not make ours fail
                failures += 1
        return failures

    for _ in range(children):
        failed += parent_writes(1)
        parents_connection = db._backend._conn
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child leaves with os._exit
            code = 0
            try:
                os.close(read_end)
                ids = [db.create_event({"run_id": run_id, "event_type": "child"})
                       for _ in range(20)]
                code = 3 if db._backend._conn is parents_connection else 0
                os.write(write_end, " ".join(ids).encode())
            except BaseException:  # reported through the exit code
                code = 4
            os._exit(code)
        os.close(write_end)
        pids.append(pid)
        reads.append(read_end)
    failed += parent_writes(20)
    shared = 0
    for pid, read_end in zip(pids, reads):
        with os.fdopen(read_end) as f:
            acked += f.read().split()
        _, status = os.waitpid(pid, 0)
        shared += os.WEXITSTATUS(status) == 3
        failed += os.WEXITSTATUS(status) == 4
    db.close()
    conn = connect_raw(path)
    try:
        present = {r[0] for r in conn.execute("SELECT event_id FROM run_events")}
    finally:
        conn.close()
    return shared, sum(1 for event_id in acked if event_id not in present), failed


def _settings(path: str, mutant: str | None) -> tuple[int, int, int]:
    """(connections checked, connections without WAL or the busy timeout, connections
    without foreign keys)."""
    seen = []
    library = spawn("settings", path, mutant=mutant, stdout=subprocess.PIPE, text=True)
    seen.extend(json.loads(library.communicate(timeout=60)[0]))
    cli = spawn("uet", "doctor", "--json", "--db", path, mutant=mutant,
                stdout=subprocess.PIPE, text=True)
    report = json.loads(cli.communicate(timeout=60)[0])
    seen.append({k: report[k] for k in ("journal_mode", "foreign_keys", "busy_timeout_ms")})
    waiting = sum(1 for s in seen if str(s["journal_mode"]).lower() != "wal"
                  or s["busy_timeout_ms"] < 1000)
    return len(seen), waiting, sum(1 for s in seen if not s["foreign_keys"])


def run(mode: Mode, workdir: Path, mutant: str | None, rng: random.Random) -> Result:
    from uet.state import init_db
    from uet.state.backends.sqlite import DEFAULT_BUSY_TIMEOUT
    result = Result("waiting")
    path = str(workdir / "wait.db")
    init_db(path).close()
    waited = _under_lock(path, workdir, mode.lock_hold_s, DEFAULT_BUSY_TIMEOUT, 4, mutant,
                         "long")
    failed_waiting = [o for o in waited if not o.startswith("ok")]
    past = _under_lock(path, workdir, None, 0.3, 2, mutant, "short")
    untyped = [o for o in past if not o.startswith(f"error {TYPED_BUSY} ")]
    calls, duplicates, wrong = _retries(path)
    shared, fork_lost, fork_failed = _fork(path, 4)
    connections, no_wait, no_fk = _settings(path, mutant)
    result.add("writes waiting for a held lock", len(waited), zero=False,
               note=f"lock held {mode.lock_hold_s:g} s, busy timeout {DEFAULT_BUSY_TIMEOUT:g} s")
    waits = [float(o.split()[1]) for o in waited if o.startswith("ok")]
    result.add("longest wait that then succeeded (s)", round(max(waits, default=0), 2),
               zero=False)
    result.add("that failed instead of waiting", len(failed_waiting), "locked")
    result.add("past the timeout: not DatabaseBusyError", len(untyped), "untyped",
               note="lock held until they answered, busy timeout 0.3 s")
    result.add("committed writes retried after an error", calls, zero=False,
               note="same ids")
    result.add("duplicates made by retries", duplicates, "double")
    result.add("retries answered wrongly", len(wrong), "untyped")
    # SQLite: carrying an open connection across fork() is a way to corrupt the file
    result.add("forked children sharing a connection", shared, "corrupt")
    result.add("acknowledged writes lost around fork", fork_lost, "lost")
    result.add("writers failing around fork", fork_failed, "locked")
    result.add("connections checked", connections, zero=False,
               note="library read-write and read-only, CLI")
    result.add("connections without WAL or busy timeout", no_wait, "locked")
    result.add("connections without foreign keys", no_fk, "corrupt")
    result.details = failed_waiting + untyped + wrong
    return result

"""Programs the tests run as separate processes (races, kills, concurrent openers), and the
seed's original schema for building legacy ledgers.

Run as `python tests/helpers.py COMMAND ARGS...`.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from collections import Counter
from pathlib import Path

# The seed's original implementation created exactly this (no version table).
SEED_DDL = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    phase_id TEXT NOT NULL,
    workstream_id TEXT,
    execution_request_id TEXT,
    created_at TEXT NOT NULL,
    started_at TEXT,
    ended_at TEXT,
    state TEXT NOT NULL CHECK(state IN (
        'pending', 'running', 'succeeded', 'failed',
        'quarantined', 'canceled'
    )),
    exit_code INTEGER,
    error_message TEXT,
    metadata TEXT
);
CREATE TABLE IF NOT EXISTS step_attempts (
    step_attempt_id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    tool_id TEXT NOT NULL,
    tool_run_id TEXT,
    execution_request_id TEXT,
    prompt_id TEXT,
    started_at TEXT NOT NULL,
    ended_at TEXT,
    state TEXT NOT NULL CHECK(state IN (
        'running', 'succeeded', 'failed', 'canceled'
    )),
    exit_code INTEGER,
    input_prompt TEXT,
    output_patch_id TEXT,
    error_log TEXT,
    metadata TEXT,
    FOREIGN KEY(run_id) REFERENCES runs(run_id)
);
CREATE TABLE IF NOT EXISTS run_events (
    event_id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    event_type TEXT NOT NULL,
    data TEXT,
    FOREIGN KEY(run_id) REFERENCES runs(run_id)
);
CREATE INDEX IF NOT EXISTS idx_runs_project ON runs(project_id);
CREATE INDEX IF NOT EXISTS idx_runs_state ON runs(state);
CREATE INDEX IF NOT EXISTS idx_steps_run ON step_attempts(run_id);
CREATE INDEX IF NOT EXISTS idx_events_run ON run_events(run_id);
"""


def make_seed_ledger(path: str) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(SEED_DDL)
    conn.commit()
    conn.close()


def wait_for(path: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise SystemExit(f"start signal {path} never came")
        time.sleep(0.001)


def ack(log, line: str) -> None:
    """Record that a call returned: written and fsynced before the next call starts."""
    log.write(line + "\n")
    log.flush()
    os.fsync(log.fileno())


def attempt_all(ids: list[str], attempt, out: str) -> None:
    """Call attempt(id) for each id; log won / lost (ConcurrentUpdateError) / error lines."""
    from uet.errors import ConcurrentUpdateError
    lines = []
    for entity_id in ids:
        try:
            attempt(entity_id)
            lines.append(f"won {entity_id}")
        except ConcurrentUpdateError:
            lines.append(f"lost {entity_id}")
        except Exception as exc:  # the test counts these: any is a failure
            lines.append(f"error {entity_id} {type(exc).__name__}: {exc}")
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")


def race_outcomes(outs: list[str]) -> tuple[Counter, Counter]:
    """What racers logged: (count per outcome kind, wins per id); no racer may have erred."""
    outcomes = [line.split(" ", 2) for out in outs for line in Path(out).read_text().splitlines()]
    errors = [o for o in outcomes if o[0] == "error"]
    assert errors == [], errors
    return Counter(o[0] for o in outcomes), Counter(o[1] for o in outcomes if o[0] == "won")


def start_when_ready(outs: list[str], go: str, timeout: float = 60.0) -> None:
    """Give the start signal once every racer has written `<out>.ready`."""
    deadline = time.monotonic() + timeout
    while not all(os.path.exists(out + ".ready") for out in outs):
        assert time.monotonic() < deadline, "racers never got ready"
        time.sleep(0.01)
    open(go, "w").close()


def race(db_path: str, go: str, out: str) -> None:
    """Try to move every pending run to running with compare-and-set; log each outcome."""
    from uet.state import Database
    db = Database(db_path)
    run_ids = [r["run_id"] for r in db.list_runs(limit=None)]
    open(out + ".ready", "w").close()
    wait_for(go)
    attempt_all(run_ids, lambda run_id: db.transition_run(run_id, "running",
                                                          expected="pending"), out)


def append(db_path: str, run_id: str, count: str, go: str) -> None:
    """Append `count` events to a run as fast as possible."""
    from uet.state import Database
    db = Database(db_path)
    wait_for(go)
    for i in range(int(count)):
        db.create_event({"run_id": run_id, "event_type": "append", "data": {"pid": os.getpid(),
                                                                              "i": i}})


def writer(db_path: str, acklog: str) -> None:
    """Write runs, transitions, steps and events until killed; ack each returned call."""
    from uet.state import Database
    db = Database(db_path)
    with open(acklog, "a") as log:
        while True:
            run_id = db.create_run({"project_id": "crash", "phase_id": "ph",
                                    "metadata": {"pad": "x" * 200}})
            ack(log, f"run {run_id} pending")
            db.transition_run(run_id, "running", expected="pending")
            ack(log, f"run {run_id} running")
            step_id = db.create_step_attempt({"run_id": run_id, "sequence": 1, "tool_id": "t"})
            ack(log, f"step {step_id} running")
            event_id = db.create_event({"run_id": run_id, "event_type": "note"})
            ack(log, f"event {event_id}")
            db.transition_step_attempt(step_id, "succeeded", exit_code=0)
            ack(log, f"step {step_id} succeeded")
            db.transition_run(run_id, "succeeded", exit_code=0)
            ack(log, f"run {run_id} succeeded")


def open_ledger(db_path: str, go: str) -> None:
    """Open (and so create or migrate) a ledger; print its schema version."""
    from uet.state import Database
    wait_for(go)
    with Database(db_path) as db:
        print(db.schema_version())


def hold_lock(db_path: str, seconds: str, ready: str, mode: str = "IMMEDIATE") -> None:
    """Hold the ledger's write lock for a while, as a slow writer in another process would;
    the transaction leaves a marker row that commits when the lock is released."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute({"IMMEDIATE": "BEGIN IMMEDIATE", "EXCLUSIVE": "BEGIN EXCLUSIVE"}[mode])
    conn.execute("INSERT INTO ledger_counters (name, value) VALUES ('lock_holder', 1)")
    open(ready, "w").close()
    time.sleep(float(seconds))
    conn.execute("COMMIT")


def fill_disk(db_path: str, out: str) -> None:
    """Write until the file-size limit stops SQLite; report what the caller saw, then show
    that the ledger is usable again once the limit is lifted."""
    import resource
    import signal
    from uet.errors import StorageError
    from uet.state import Database
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write() returns EFBIG instead
    db = Database(db_path)
    run_id = db.create_run({"project_id": "disk", "phase_id": "ph"})
    acked = []
    size = max(os.path.getsize(db_path), os.path.getsize(db_path + "-wal"))
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 256 * 1024, hard))
    error = None
    for i in range(100_000):
        try:
            acked.append(db.create_event({"run_id": run_id, "event_type": "fill",
                                          "data": {"pad": "x" * 4000, "i": i}}))
        except StorageError as exc:
            error = exc
            break
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    after = db.create_event({"run_id": run_id, "event_type": "after"})
    stored = {e["event_id"] for e in db.list_events(run_id)}
    with open(out, "w") as f:
        f.write(f"{type(error).__name__}\n{error}\n{len(acked)}\n"
                f"{int(set(acked) <= stored)}\n{int(after in stored)}\n")


def patch_race(db_path: str, ids_file: str, go: str, out: str, target: str = "validated",
               versioned: str = "") -> None:
    """Try to move each listed patch entry to `target` (with the version read before the
    start signal as compare-and-set, when `versioned`); log each outcome."""
    from uet.state import Database, PatchLedger
    ledger = PatchLedger(Database(db_path))
    with open(ids_file) as f:
        ids = f.read().split()
    versions = {i: ledger.get_entry(i).version for i in ids} if versioned else {}
    open(out + ".ready", "w").close()
    wait_for(go)
    attempt_all(ids, lambda ledger_id: ledger.transition_state(
        ledger_id, target, f"pid {os.getpid()}", expected_version=versions.get(ledger_id)), out)


def claim(db_path: str, worker_id: str, go: str, out: str) -> None:
    """Register a worker and claim, finish and release pending runs until none is left."""
    from uet.state import Database, WorkerLifecycle
    db = Database(db_path)
    workers = WorkerLifecycle(db)
    workers.spawn_worker(worker_id, "testing", {})
    workers.transition_state(worker_id, "IDLE")
    wait_for(go)
    claimed = []
    while (run := workers.claim_run(worker_id)) is not None:
        claimed.append(run["run_id"])
        db.transition_run(run["run_id"], "succeeded", exit_code=0)
        workers.release(worker_id)
    with open(out, "w") as f:
        f.write("\n".join(claimed) + "\n")


def try_write(db_path: str) -> None:
    """Open a ledger and try to write to it; print the error type and message, if any."""
    from uet.errors import UetError
    from uet.state import Database
    try:
        with Database(db_path) as db:
            db.create_run({"project_id": "p", "phase_id": "ph"})
        print("ok")
    except UetError as exc:
        print(f"{type(exc).__name__}: {exc}")


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"race": race, "append": append, "writer": writer, "open": open_ledger,
     "hold_lock": hold_lock, "fill_disk": fill_disk, "patch_race": patch_race, "claim": claim,
     "try_write": try_write}[command](*args)

"""The processes the checks start, kill and race: `python programs.py COMMAND ARGS...`.

The mutant named in $UET_RELIABILITY_MUTANT (if any) is applied before anything runs.
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reliability_suite.common import MUTANT_VAR, ack, attempt_each, wait_for  # noqa: E402
from reliability_suite.mutants import apply  # noqa: E402

apply(os.environ.get(MUTANT_VAR))


def writer(db_path: str, acklog: str, seed: str) -> None:
    """Create runs, move them on, add steps, events, patches; ack each call that returned.
    Runs until killed."""
    from uet.state import Database, PatchLedger
    rng = random.Random(int(seed))
    db = Database(db_path)
    patches = PatchLedger(db)
    with open(acklog, "a") as log:
        while True:
            try:
                run_id = db.create_run({"project_id": "crash", "phase_id": "ph",
                                        "metadata": {"pad": "x" * rng.randrange(400)}})
                ack(log, f"run {run_id} pending")
                db.transition_run(run_id, "running", expected="pending")
                ack(log, f"run {run_id} running")
                step_id = db.create_step_attempt({"run_id": run_id, "sequence": 1,
                                                  "tool_id": "t"})
                ack(log, f"step {step_id} running")
                event_id = db.create_event({"run_id": run_id, "event_type": "note",
                                            "data": {"n": rng.random()}})
                ack(log, f"event {event_id}")
                if rng.random() < 0.3:
                    patch = patches.record_patch(f"--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n+{run_id}\n",
                                                 step_attempt_id=step_id)
                    entry = patches.create_entry(patch, "ph")
                    ack(log, f"entry {entry.ledger_id} created")
                    patches.transition_state(entry.ledger_id, "validated", "ok")
                    ack(log, f"entry {entry.ledger_id} validated")
                final = rng.choice(["succeeded", "failed"])
                db.transition_step_attempt(step_id, final, exit_code=0)
                ack(log, f"step {step_id} {final}")
                db.transition_run(run_id, final, exit_code=0)
                ack(log, f"run {run_id} {final}")
            except Exception as exc:  # counted by the check: none is expected
                ack(log, f"error {type(exc).__module__}.{type(exc).__name__}: "
                    f"{exc}".replace("\n", " "))


def racer(db_path: str, ids_file: str, go: str, out: str, kind: str, seed: str) -> None:
    """Race to move each listed run (pending → running) or patch entry (→ validated, with
    the version read before the start as compare-and-set); log each outcome."""
    from uet.state import Database, PatchLedger
    db = Database(db_path)
    ids = Path(ids_file).read_text().split()
    random.Random(int(seed)).shuffle(ids)
    if kind == "runs":
        def attempt(entity_id):
            db.transition_run(entity_id, "running", expected="pending")
    else:
        ledger = PatchLedger(db)
        versions = {i: ledger.get_entry(i).version for i in ids}

        def attempt(entity_id):
            ledger.transition_state(entity_id, "validated", f"pid {os.getpid()}",
                                    expected_version=versions[entity_id])
    open(out + ".ready", "w").close()
    wait_for(lambda: os.path.exists(go), 60, "the start signal")
    Path(out).write_text("\n".join(attempt_each(ids, attempt)) + "\n")


def migrate(db_path: str) -> None:
    """Say "ready", wait for "go" on stdin, open (and so upgrade) the ledger, say so."""
    from uet.state import Database
    print("ready", flush=True)
    sys.stdin.readline()
    Database(db_path).close()
    print("migrated", flush=True)


def busy_worker(db_path: str, worker_id: str, run_id: str, heartbeat_s: str,
                ready: str) -> None:
    """Register, claim the given run, start a step, then heartbeat until killed."""
    from uet.state import Database, WorkerLifecycle
    db = Database(db_path)
    workers = WorkerLifecycle(db)
    workers.spawn_worker(worker_id, "reliability", {})
    workers.transition_state(worker_id, "IDLE")
    workers.claim_run(worker_id, run_id)
    db.create_step_attempt({"run_id": run_id, "sequence": 1, "tool_id": "t",
                            "worker_id": worker_id})
    open(ready, "w").close()
    while True:
        workers.heartbeat(worker_id)
        time.sleep(float(heartbeat_s) / 2)  # twice per interval, as a careful worker does


def fill_disk(db_path: str, acklog: str) -> None:
    """Write until the file-size limit stops SQLite, then lift the limit and write again;
    log every acknowledged event and every error (type and message)."""
    import resource
    import signal
    from uet.state import Database
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write() returns EFBIG instead
    db = Database(db_path)
    run_id = db.create_run({"run_id": "disk-run", "project_id": "disk", "phase_id": "ph"})
    size = max(os.path.getsize(db_path), os.path.getsize(db_path + "-wal"))
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 256 * 1024, hard))
    with open(acklog, "a") as log:
        errors = 0
        for i in range(100_000):
            event_id = f"fill-{i:06d}"
            try:
                db.create_event({"event_id": event_id, "run_id": run_id,
                                 "event_type": "fill", "data": {"pad": "x" * 4000}})
                ack(log, f"event {event_id}")
            except Exception as exc:  # the check judges the type
                ack(log, f"error {event_id} {type(exc).__module__}.{type(exc).__name__}: "
                    f"{exc}".replace("\n", " "))
                errors += 1
                if errors >= 3:
                    break
        # os limits go back to the hard limit: space "returns"
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
        for i in range(3):
            event_id = f"after-{i}"
            db.create_event({"event_id": event_id, "run_id": run_id, "event_type": "after"})
            ack(log, f"event {event_id}")
    db.close()


def steady_writer(db_path: str, acklog: str, stop: str) -> None:
    """Append events until `stop` exists, logging acks and errors (for the read-only check)."""
    from uet.state import Database
    db = Database(db_path)
    run_id = "ro-run"
    with open(acklog, "a") as log:
        i = 0
        while not os.path.exists(stop):
            event_id = f"ro-{i:06d}"
            i += 1
            try:
                db.create_event({"event_id": event_id, "run_id": run_id, "event_type": "w"})
                ack(log, f"event {event_id}")
            except Exception as exc:  # the check judges the type
                ack(log, f"error {event_id} {type(exc).__module__}.{type(exc).__name__}: "
                    f"{exc}".replace("\n", " "))
                time.sleep(0.02)
    db.close()


def hold_lock(db_path: str, seconds: str, ready: str, mode: str = "IMMEDIATE",
              release: str = "") -> None:
    """Hold the ledger's write lock for a while, as a slow writer in another process would;
    its transaction leaves a marker row (ledger_counters 'lock_holder') that commits when
    the lock is released. With `release`, hold it until that file exists (`seconds` is then
    only a cap), so a test decides when the lock goes, however slow the machine is."""
    import sqlite3
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute({"IMMEDIATE": "BEGIN IMMEDIATE", "EXCLUSIVE": "BEGIN EXCLUSIVE"}[mode])
    conn.execute("INSERT OR REPLACE INTO ledger_counters (name, value) "
                 "VALUES ('lock_holder', 1)")
    open(ready, "w").close()
    if release:
        wait_for(lambda: os.path.exists(release), float(seconds), "the release signal")
    else:
        time.sleep(float(seconds))
    conn.execute("COMMIT")
    conn.close()


def write_once(db_path: str, busy_timeout: str, ready: str, go: str) -> None:
    """Open the ledger, say ready, wait for the start signal, then one create_run with the
    given busy timeout; print how it went."""
    from uet.state import Database
    try:
        with Database(db_path, busy_timeout=float(busy_timeout)) as db:
            db.schema_version()
            open(ready, "w").close()
            wait_for(lambda: os.path.exists(go), 60, "the start signal")
            start = time.monotonic()
            db.create_run({"project_id": "wait", "phase_id": "ph"})
            print(f"ok {time.monotonic() - start:.3f}")
    except Exception as exc:  # the check judges the type
        print(f"error {type(exc).__module__}.{type(exc).__name__} {str(exc)!r}")


def settings(db_path: str) -> None:
    """Print, as JSON, the settings of the connections a library Database uses (read-write
    and read-only)."""
    import json
    from uet.state import Database
    seen = []
    for read_only in (False, True):
        with Database(db_path, read_only=read_only) as db:
            conn = db._backend.connect()
            seen.append({
                "journal_mode": conn.execute("PRAGMA journal_mode").fetchone()[0],
                "foreign_keys": conn.execute("PRAGMA foreign_keys").fetchone()[0],
                "busy_timeout_ms": conn.execute("PRAGMA busy_timeout").fetchone()[0]})
    print(json.dumps(seen))


def uet_cli(*args: str) -> None:
    """The `uet` command line, with the mutant applied."""
    from uet.cli import main
    main(list(args))


COMMANDS = {"writer": writer, "racer": racer, "migrate": migrate, "busy_worker": busy_worker,
            "fill_disk": fill_disk, "steady_writer": steady_writer, "hold_lock": hold_lock,
            "write_once": write_once, "settings": settings, "uet": uet_cli}

if __name__ == "__main__":
    command, *arguments = sys.argv[1:]
    COMMANDS[command](*arguments)

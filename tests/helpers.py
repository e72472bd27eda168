"""Programs the tests run as separate processes (races, concurrent openers), and what the
tests share with the reliability suite (bench/reliability_suite): the seed's original
schema, the racer loop, waiting for a start signal.

Run as `python tests/helpers.py COMMAND ARGS...`.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from reliability_suite.common import attempt_each  # noqa: E402
from reliability_suite.common import wait_for as _wait_until  # noqa: E402


def _refused() -> tuple[type[Exception], ...]:
    import sqlite3
    try:
        import psycopg
    except ImportError:
        return (sqlite3.IntegrityError,)
    # PostgreSQL's json type refuses text that is not JSON with a data error
    return (sqlite3.IntegrityError, psycopg.errors.IntegrityError, psycopg.errors.DataError)


REFUSED = _refused()  # what the driver raises when the schema refuses a raw write


def raw_execute(db, sql: str, params: tuple = ()) -> None:
    """Run one statement on the ledger of Database `db` with the driver itself, past every
    check of uet (as another program could). `?` marks parameters on both engines."""
    if db.engine == "postgresql":
        import psycopg
        with psycopg.connect(db.db_path, autocommit=True) as conn:
            conn.execute(sql.replace("?", "%s"), params or None)
    else:  # uet's own connection: the only one an in-memory ledger has
        db._backend.connect().execute(sql, params)


def refuse_event_inserts(db, event_type_like: str) -> None:
    """Make the ledger's event store fail inserts of events whose type is LIKE the pattern
    (a trigger, as an outage would), on either engine; `allow_event_inserts` undoes it."""
    if db.engine == "postgresql":
        raw_execute(db, "CREATE FUNCTION test_no_events() RETURNS trigger LANGUAGE plpgsql "
                        "AS $$ BEGIN RAISE EXCEPTION 'event store unavailable'; END; $$")
        raw_execute(db, "CREATE TRIGGER no_events BEFORE INSERT ON run_events FOR EACH ROW "
                        f"WHEN (NEW.event_type LIKE '{event_type_like}') "
                        "EXECUTE FUNCTION test_no_events()")
    else:
        raw_execute(db, "CREATE TRIGGER no_events BEFORE INSERT ON run_events "
                        f"WHEN NEW.event_type LIKE '{event_type_like}' "
                        "BEGIN SELECT RAISE(ABORT, 'event store unavailable'); END")


def allow_event_inserts(db) -> None:
    if db.engine == "postgresql":
        raw_execute(db, "DROP TRIGGER no_events ON run_events")
        raw_execute(db, "DROP FUNCTION test_no_events()")
    else:
        raw_execute(db, "DROP TRIGGER no_events")


def refused_by(sqlite: str, postgres: str) -> str:
    """The `match` pattern for a raw write refused by one constraint: SQLite quotes an
    unnamed CHECK's expression (as written, line breaks included), PostgreSQL names the
    constraint; a trigger's RAISE text is the same on both (pass it twice)."""
    import re
    if sqlite == postgres:
        return re.escape(sqlite)
    expression = r"\s+".join(re.escape(word) for word in sqlite.split())
    return (f"^CHECK constraint failed: {expression}"
            f'|violates check constraint "{re.escape(postgres)}"')


# every row of a ledger, children first (DELETE: far cheaper than TRUNCATE on tiny tables)
EMPTY_POSTGRES_LEDGER = ("DELETE FROM gate_dependencies; DELETE FROM test_gates; "
                 "DELETE FROM patch_ledger_entries; DELETE FROM patches; "
                 "DELETE FROM run_events; DELETE FROM step_attempts; DELETE FROM runs; "
                 "DELETE FROM workers; UPDATE ledger_counters SET value = 0; "
                 "ALTER SEQUENCE uet_event_seq RESTART")


def emptied_postgres_ledger(url: str) -> str:
    """A PostgreSQL ledger emptied of every row, as a new one is (the event seq starts at 1
    again); returns its URL."""
    import psycopg
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(EMPTY_POSTGRES_LEDGER)
    return url


def wait_for(path: str, timeout: float = 180.0) -> None:
    _wait_until(lambda: os.path.exists(path), timeout, f"start signal {path}")


def attempt_all(ids: list[str], attempt, out: str) -> None:
    """Call attempt(id) for each id; log won / lost (ConcurrentUpdateError) / error lines."""
    with open(out, "w") as f:
        f.write("\n".join(attempt_each(ids, attempt)) + "\n")


def race_outcomes(outs: list[str]) -> tuple[Counter, Counter]:
    """What racers logged: (count per outcome kind, wins per id); no racer may have erred."""
    outcomes = [line.split(" ", 2) for out in outs for line in Path(out).read_text().splitlines()]
    errors = [o for o in outcomes if o[0] == "error"]
    assert errors == [], errors
    return Counter(o[0] for o in outcomes), Counter(o[1] for o in outcomes if o[0] == "won")


def start_when_ready(outs: list[str], go: str, timeout: float = 120.0) -> None:
    """Give the start signal once every racer has written `<out>.ready`."""
    deadline = time.monotonic() + timeout
    while not all(os.path.exists(out + ".ready") for out in outs):
        assert time.monotonic() < deadline, "racers never got ready"
        time.sleep(0.01)
    open(go, "w").close()


def race(db_path: str, go: str, out: str, target: str = "running",
         expected: str = "pending", kind: str = "run") -> None:
    """Try to move every run (kind "run") or every step attempt (kind "step") that is in
    `expected` to `target` with compare-and-set; log each outcome."""
    from uet.state import Database
    db = Database(db_path)
    runs = db.list_runs(limit=None)
    if kind == "run":
        ids = [r["run_id"] for r in runs if r["state"] == expected]
        move = db.transition_run
    else:
        ids = [s["step_attempt_id"] for r in runs for s in db.list_step_attempts(r["run_id"])
               if s["state"] == expected]
        move = db.transition_step_attempt
    open(out + ".ready", "w").close()
    wait_for(go)
    attempt_all(ids, lambda entity_id: move(entity_id, target, expected=expected,
                                            **({"exit_code": 0} if target in (
                                                "succeeded", "failed") else {})), out)


def cancel_pending(db_path: str, go: str, out: str) -> None:
    """Cancel every run with compare-and-set from pending, oldest first, racing claimers."""
    from uet.state import Database
    db = Database(db_path)
    run_ids = [r["run_id"] for r in reversed(db.list_runs(limit=None))]
    open(out + ".ready", "w").close()
    wait_for(go)
    attempt_all(run_ids, lambda run_id: db.transition_run(run_id, "canceled",
                                                          expected="pending"), out)


def append(db_path: str, run_id: str, count: str, go: str, ready: str = "") -> None:
    """Append `count` events to a run as fast as possible once `go` exists (having made
    `ready` once the ledger is open, when given)."""
    from uet.state import Database
    db = Database(db_path)
    db.schema_version()
    if ready:
        open(ready, "w").close()
    wait_for(go)
    for i in range(int(count)):
        db.create_event({"run_id": run_id, "event_type": "append", "data": {"pid": os.getpid(),
                                                                              "i": i}})


def open_ledger(db_path: str, go: str) -> None:
    """Open (and so create or migrate) a ledger; print its schema version."""
    from uet.state import Database
    wait_for(go)
    with Database(db_path) as db:
        print(db.schema_version())


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
    open(out + ".ready", "w").close()
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


def hold_atomic(db_path: str, run_id: str, steps: str, ready: str) -> None:
    """Inside one atomic() block: move run_id on and record `steps` step attempts, a
    patch and a gate, then write `ready` and wait to be killed (never committing)."""
    from uet.state import Database, GateLedger, PatchLedger
    db = Database(db_path)
    with db.atomic():
        db.transition_run(run_id, "running")
        for sequence in range(1, int(steps) + 1):
            db.create_step_attempt({"run_id": run_id, "sequence": sequence, "tool_id": "t"})
            db.create_event({"run_id": run_id, "event_type": "note"})
        PatchLedger(db).record_patch("--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n",
                                     run_id=run_id)
        GateLedger(db).define_gate("UNIT", "ph", "pytest", run_id=run_id)
        open(ready, "w").close()
        time.sleep(600)


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"race": race, "append": append, "open": open_ledger, "patch_race": patch_race,
     "claim": claim, "cancel_pending": cancel_pending, "try_write": try_write,
     "hold_atomic": hold_atomic}[command](*args)


# -- a fresh machine's environment, for the demo -----------------------------------------

GIT_LOCATION = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY",
                "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_COMMON_DIR", "GIT_NAMESPACE",
                "GIT_CEILING_DIRECTORIES")


def fresh_machine_environment(home: Path) -> dict[str, str]:
    """This environment, with no ledger chosen, no git configuration beyond the repository's
    own (a fresh machine: no user.name) and no git variables pointing elsewhere."""
    env = {k: v for k, v in os.environ.items()
           if k not in GIT_LOCATION and k != "UET_DATABASE"}
    env.update(HOME=str(home), GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1",
               PYTHONDONTWRITEBYTECODE="1")
    if shutil.which("python3", path=env.get("PATH")) is None:
        # the demo's tool and gates run `python3`: the README expects one on PATH
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env

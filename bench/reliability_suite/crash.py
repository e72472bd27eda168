"""Check 1: writers killed with SIGKILL at random instants lose nothing they acknowledged
and leave no state change without its event."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

from reliability_suite.common import (Mode, Result, acked_lines, connect_raw, integrity_ok,
                                      ledger_on, spawn, trail_violations)

RUN_ORDER = {"pending": 0, "running": 1, "succeeded": 2, "failed": 2}
STEP_ORDER = {"running": 0, "succeeded": 1, "failed": 1}
ENTRY_ORDER = {"created": 0, "validated": 1}


def missing_acknowledged(path: str, acked: list[list[str]]) -> list[str]:
    """Acknowledged writes that are not (or no longer at least as far as acked) in the file."""
    conn = connect_raw(path)
    try:
        runs = dict(conn.execute("SELECT run_id, state FROM runs"))
        steps = dict(conn.execute("SELECT step_attempt_id, state FROM step_attempts"))
        entries = dict(conn.execute("SELECT ledger_id, state FROM patch_ledger_entries"))
        events = {r[0] for r in conn.execute("SELECT event_id FROM run_events")}
    finally:
        conn.close()

    def reached(found, acked_state, order):
        # as far as acknowledged, or further; a terminal state exactly as acknowledged
        return found is not None and order[found] >= order[acked_state] and (
            order[acked_state] < max(order.values()) or found == acked_state)

    missing = []
    for kind, entity_id, *state in acked:
        if kind == "run":
            ok = reached(runs.get(entity_id), state[0], RUN_ORDER)
        elif kind == "step":
            ok = reached(steps.get(entity_id), state[0], STEP_ORDER)
        elif kind == "entry":
            ok = reached(entries.get(entity_id), state[0], ENTRY_ORDER)
        elif kind == "event":
            ok = entity_id in events
        else:
            continue  # "error" lines: counted apart
        if not ok:
            missing.append(" ".join([kind, entity_id, *state]))
    return missing


def run(mode: Mode, workdir: Path, mutant: str | None, rng: random.Random,
        engine: str = "sqlite") -> Result:
    with ledger_on(engine, workdir, "crash") as path:
        return _run(mode, workdir, mutant, rng, path,
                    Result("crash" if engine == "sqlite" else "crash_pg"))


def _run(mode: Mode, workdir: Path, mutant: str | None, rng: random.Random, path: str,
         result: Result) -> Result:
    from uet.state import init_db
    init_db(path).close()
    logs = [workdir / f"acks-{i}.log" for i in range(mode.crash_writers)]
    corrupt = 0
    lost: set[str] = set()            # distinct writes, however many rounds saw them missing
    missing_events: set[str] = set()  # distinct records
    died_otherwise = 0
    for _ in range(mode.crash_rounds):
        starts = [len(acked_lines(log)) for log in logs]
        writers = [spawn("writer", path, str(log), str(rng.randrange(2**31)), mutant=mutant)
                   for log in logs]
        try:
            # let each round's writers get going, then kill each at its own random instant
            deadline = time.monotonic() + 20
            while (sum(len(acked_lines(log)) for log in logs) < sum(starts) + 20
                   and time.monotonic() < deadline):
                time.sleep(0.005)
            kill_at = sorted(rng.uniform(0.0, 0.25) for _ in writers)
            began = time.monotonic()
            for at, writer in zip(kill_at, writers):
                time.sleep(max(0.0, began + at - time.monotonic()))
                writer.send_signal(signal.SIGKILL)
        finally:
            for writer in writers:
                writer.kill()
                # a writer must die by our SIGKILL, never on its own
                died_otherwise += writer.wait(timeout=60) != -signal.SIGKILL
        if not integrity_ok(path):
            corrupt += 1
            continue
        acked = [line for log in logs for line in acked_lines(log)]
        lost.update(missing_acknowledged(path, acked))
        missing_events.update(v.split(":")[0] for v in trail_violations(path))
    errors = [" ".join(line[2:]) for log in logs for line in acked_lines(log)
              if line[0] == "error"]
    busy = sum("DatabaseBusyError" in e or "locked" in e for e in errors)
    result.details = errors[:10]
    # the ledger opens (and stays usable) after all that
    with init_db(path) as db:
        db.create_run({"project_id": "after", "phase_id": "ph"})
    result.add("rounds of SIGKILL", mode.crash_rounds, zero=False,
               note=f"{mode.crash_writers} writers each")
    result.add("acknowledged writes", sum(len(acked_lines(log)) for log in logs), zero=False,
               note="every one re-checked after each later round")
    result.add("corrupted ledgers", corrupt, "corrupt")
    result.add("acknowledged but missing", len(lost), "lost")
    result.add("state changes without event", len(missing_events), "missing_events")
    result.add("'database is locked' surfaced", busy, "locked")
    result.add("other errors, or writers dying on their own", len(errors) - busy
               + died_otherwise, "untyped")
    return result

"""Check 1: writers killed with SIGKILL at random instants lose nothing they acknowledged
and leave no state change without its event."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

from reliability_suite.common import (Mode, Result, acked_lines, connect_raw, integrity_ok,
                                      spawn, trail_violations)

RUN_ORDER = {"pending": 0, "running": 1, "succeeded": 2, "failed": 2}
STEP_ORDER = {"running": 0, "succeeded": 1, "failed": 1}
ENTRY_ORDER = {"created": 0, "validated": 1}


def missing_acknowledged(path: str, acked: list[list[str]]) -> list[str]:
    """Acknowledged writes that are not (or no longer at least as far as acked) in the file."""
    conn = connect_raw(path)
    try:
        def state_of(sql, key):
            row = conn.execute(sql, (key,)).fetchone()
            return None if row is None else row[0]
        missing = []
        for kind, entity_id, *state in acked:
            if kind == "run":
                found = state_of("SELECT state FROM runs WHERE run_id = ?", entity_id)
                ok = found is not None and RUN_ORDER[found] >= RUN_ORDER[state[0]] and (
                    RUN_ORDER[state[0]] < 2 or found == state[0])
            elif kind == "step":
                found = state_of("SELECT state FROM step_attempts WHERE step_attempt_id = ?",
                                 entity_id)
                ok = found is not None and STEP_ORDER[found] >= STEP_ORDER[state[0]] and (
                    STEP_ORDER[state[0]] < 1 or found == state[0])
            elif kind == "entry":
                found = state_of("SELECT state FROM patch_ledger_entries WHERE ledger_id = ?",
                                 entity_id)
                ok = found is not None and ENTRY_ORDER[found] >= ENTRY_ORDER[state[0]]
            elif kind == "event":
                ok = state_of("SELECT 1 FROM run_events WHERE event_id = ?", entity_id) == 1
            else:
                continue  # "busy" lines: counted apart
            if not ok:
                missing.append(" ".join([kind, entity_id, *state]))
        return missing
    finally:
        conn.close()


def run(mode: Mode, workdir: Path, mutant: str | None, rng: random.Random) -> Result:
    from uet.state import init_db
    result = Result("crash")
    path = str(workdir / "crash.db")
    init_db(path).close()
    logs = [workdir / f"acks-{i}.log" for i in range(mode.crash_writers)]
    corrupt = lost = missing_events = busy = acked_total = 0
    for round_no in range(mode.crash_rounds):
        starts = [len(acked_lines(log)) for log in logs]
        writers = [spawn("writer", path, str(log), str(rng.randrange(2**31)), mutant=mutant)
                   for log in logs]
        # let each round's writers get going, then kill each at its own random instant
        deadline = time.monotonic() + 20
        while (sum(len(acked_lines(log)) for log in logs) < sum(starts) + 20
               and time.monotonic() < deadline):
            time.sleep(0.005)
        kill_at = sorted((rng.uniform(0.0, 0.25), w) for w in writers)
        began = time.monotonic()
        for at, writer in kill_at:
            time.sleep(max(0.0, began + at - time.monotonic()))
            writer.send_signal(signal.SIGKILL)
        for writer in writers:
            writer.wait(timeout=60)
        if not integrity_ok(path):
            corrupt += 1
            continue
        acked = [line for log in logs for line in acked_lines(log)]
        busy += sum(1 for line in acked if line[0] == "busy")
        acked_total += len(acked)
        lost += len(missing_acknowledged(path, acked))
        missing_events += len(trail_violations(path))
    # the ledger opens (and stays usable) after all that
    with init_db(path) as db:
        db.create_run({"project_id": "after", "phase_id": "ph"})
    result.add("rounds of SIGKILL", mode.crash_rounds, zero=False,
               note=f"{mode.crash_writers} writers each")
    result.add("acknowledged writes checked", acked_total, zero=False)
    result.add("corrupted ledgers", corrupt, "corrupt")
    result.add("acknowledged but missing", lost, "lost")
    result.add("state changes without event", missing_events, "missing_events")
    result.add("'database is locked' surfaced", busy, "locked")
    return result

"""Check 2: processes race to transition the same runs (pending → running) and the same
patch entries (compare-and-set on their version): exactly one winner each, nothing lost,
no error but the documented ConcurrentUpdateError, and no "database is locked"."""

from __future__ import annotations

import os
import random
from collections import Counter
from pathlib import Path

from reliability_suite.common import (Mode, Result, connect_raw, json_text, ledger_on,
                                      spawn, trail_violations, wait_for)

DIFF = "--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n+{}\n"


def _prepare(path: str, runs: int, entries: int) -> tuple[list[str], list[str]]:
    from uet.state import PatchLedger, init_db
    with init_db(path) as db:
        run_ids = [db.create_run({"project_id": "race", "phase_id": "ph"})
                   for _ in range(runs)]
        ledger = PatchLedger(db)
        entry_ids = [ledger.create_entry(ledger.record_patch(DIFF.format(i)), "ph").ledger_id
                     for i in range(entries)]
    return run_ids, entry_ids


def _race(path: str, ids: list[str], kind: str, workdir: Path, processes: int,
          mutant: str | None, rng: random.Random) -> list[list[str]]:
    ids_file = workdir / f"{kind}.ids"
    ids_file.write_text("\n".join(ids))
    go = str(workdir / f"{kind}.go")
    outs = [str(workdir / f"{kind}-{i}.out") for i in range(processes)]
    racers = [spawn("racer", path, str(ids_file), go, out, kind, str(rng.randrange(2**31)),
                    mutant=mutant) for out in outs]
    try:
        wait_for(lambda: all(os.path.exists(o + ".ready") for o in outs), 120, "racers ready")
        open(go, "w").close()
        for racer in racers:
            racer.wait(timeout=600)
    finally:
        for racer in racers:
            racer.kill()
            racer.wait()
    return [line.split(" ", 2) for out in outs if os.path.exists(out)
            for line in Path(out).read_text().splitlines()]


def _judge(outcomes: list[list[str]], ids: list[str], changes: Counter,
           final_ok: dict[str, bool], result_counts: Counter) -> None:
    wins = Counter(o[1] for o in outcomes if o[0] == "won")
    for entity_id in ids:
        # one caller told "you won", one state change recorded, and the row moved
        if wins[entity_id] > 1 or changes[entity_id] > 1:
            result_counts["double"] += 1
        if wins[entity_id] == 0 or changes[entity_id] == 0 or not final_ok[entity_id]:
            result_counts["lost"] += 1
    for outcome in outcomes:
        if outcome[0] == "error":
            result_counts["errors"] += 1
            if "locked" in outcome[2] or "DatabaseBusyError" in outcome[2]:
                result_counts["locked"] += 1


def run(mode: Mode, workdir: Path, mutant: str | None, rng: random.Random,
        engine: str = "sqlite") -> Result:
    with ledger_on(engine, workdir, "race") as path:
        return _run(mode, workdir, mutant, rng, path,
                    Result("races" if engine == "sqlite" else "races_pg"))


def _run(mode: Mode, workdir: Path, mutant: str | None, rng: random.Random, path: str,
         result: Result) -> Result:
    run_ids, entry_ids = _prepare(path, mode.race_runs, mode.race_entries)
    counts: Counter = Counter()
    outcomes = _race(path, run_ids, "runs", workdir, mode.race_processes, mutant, rng)
    conn = connect_raw(path)
    changes = Counter(r[0] for r in conn.execute(
        "SELECT run_id FROM run_events WHERE event_type = 'run.state_changed' "
        f"AND {json_text(path, 'data', 'to')} = 'running'"))
    final = {r[0]: r[1] == "running" for r in conn.execute("SELECT run_id, state FROM runs")}
    conn.close()
    _judge(outcomes, run_ids, changes, final, counts)
    outcomes_entries = _race(path, entry_ids, "entries", workdir, mode.race_processes,
                             mutant, rng)
    conn = connect_raw(path)
    changes = Counter(r[0] for r in conn.execute(
        f"SELECT {json_text(path, 'data', 'ledger_id')} FROM run_events "
        "WHERE event_type = 'patch_entry.state_changed'"))
    final = {r[0]: r[1] == "validated" and r[2] == 2 and r[3] == 2 for r in conn.execute(
        "SELECT ledger_id, state, version, json_array_length(state_history) "
        "FROM patch_ledger_entries")}
    conn.close()
    _judge(outcomes_entries, entry_ids, changes, final, counts)
    attempts = len(outcomes) + len(outcomes_entries)
    result.add("racing processes", mode.race_processes, zero=False,
               note=f"{len(run_ids):,} runs, {len(entry_ids):,} patch entries")
    result.add("transition attempts", attempts, zero=False)
    result.add("attempts that lost the race (documented)", sum(
        o[0] == "lost" for o in outcomes + outcomes_entries), zero=False)
    result.add("double transitions", counts["double"], "double")
    result.add("lost updates", counts["lost"], "lost")
    result.add("unexpected errors", counts["errors"] - counts["locked"], "untyped")
    result.add("'database is locked' surfaced", counts["locked"], "locked")
    violations = trail_violations(path)
    result.add("state changes without (or with extra) events", len(violations),
               "missing_events")
    result.details = violations[:10]
    expected = mode.race_processes * (len(run_ids) + len(entry_ids))
    result.add("racers that did not finish", expected - attempts, "untyped")
    return result

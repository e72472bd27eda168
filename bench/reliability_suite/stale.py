"""Check 5: workers killed while BUSY. A reaper polling `reap_stale` must fail the runs and
step attempts they held (with a reason) soon after they stop heartbeating, and never touch a
worker that is alive."""

from __future__ import annotations

import os
import random
import signal
import time
from datetime import datetime
from pathlib import Path

from reliability_suite.common import Mode, Result, connect_raw, spawn, wait_for


def _wall(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _round(mode: Mode, workdir: Path, mutant: str | None, rng: random.Random,
           number: int) -> dict:
    from uet.state import Database, WorkerLifecycle, init_db
    h = mode.heartbeat_s
    path = str(workdir / f"stale-{number}.db")
    count = mode.stale_workers + 1  # the last one stays alive throughout
    with init_db(path) as db:
        runs = [db.create_run({"run_id": f"run-{i}", "project_id": "stale", "phase_id": "ph"})
                for i in range(count)]
    procs = []
    for i, run_id in enumerate(runs):
        ready = str(workdir / f"ready-{number}-{i}")
        procs.append((spawn("busy_worker", path, f"w-{i}", run_id, str(h), ready,
                            mutant=mutant), ready))
    wait_for(lambda: all(os.path.exists(r) for _, r in procs), 120, "busy workers")
    began = time.monotonic()
    kill_at = {i: began + rng.uniform(0.2, 1.5) * h for i in range(count - 1)}
    killed: dict[int, float] = {}
    first_miss: dict[int, float] = {}
    recovered: dict[int, float] = {}
    reasons_missing = 0
    db = Database(path)
    reaper = WorkerLifecycle(db)
    deadline = began + 2 * h + 12 * h
    try:
        while time.monotonic() < deadline and len(recovered) < count - 1:
            now = time.monotonic()
            for i, at in kill_at.items():
                if i not in killed and now >= at:
                    procs[i][0].send_signal(signal.SIGKILL)
                    procs[i][0].wait()
                    killed[i] = time.time()
                    # the last sign of life: a live worker would have beaten again by then
                    conn = connect_raw(path)
                    last = conn.execute("SELECT last_heartbeat FROM workers WHERE "
                                        "worker_id = ?", (f"w-{i}",)).fetchone()[0]
                    conn.close()
                    first_miss[i] = _wall(last) + h
            reaper.reap_stale(h)
            conn = connect_raw(path)
            for i in killed:
                if i in recovered:
                    continue
                run_state, message = conn.execute(
                    "SELECT state, error_message FROM runs WHERE run_id = ?",
                    (f"run-{i}",)).fetchone()
                steps = conn.execute("SELECT state, error_log FROM step_attempts "
                                     "WHERE run_id = ?", (f"run-{i}",)).fetchall()
                if run_state == "failed" and all(s == "failed" for s, _ in steps):
                    recovered[i] = time.time()
                    reasons_missing += (not message) + sum(not log for _, log in steps)
            conn.close()
            time.sleep(h / 20)
        conn = connect_raw(path)
        alive_run = conn.execute("SELECT state FROM runs WHERE run_id = ?",
                                 (f"run-{count - 1}",)).fetchone()[0]
        alive_worker = conn.execute("SELECT state FROM workers WHERE worker_id = ?",
                                    (f"w-{count - 1}",)).fetchone()[0]
        conn.close()
    finally:
        db.close()
        for proc, _ in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
    return {
        "killed": len(killed),
        "latency_miss": [(recovered[i] - first_miss[i]) / h for i in recovered],
        "latency_kill": [(recovered[i] - killed[i]) / h for i in recovered],
        "late": sum(1 for i in recovered if recovered[i] - first_miss[i] > 2 * h),
        "never": len(killed) - len(recovered),
        "reasons_missing": reasons_missing,
        "live_reaped": int(alive_run != "running" or alive_worker != "BUSY"),
    }


def run(mode: Mode, workdir: Path, mutant: str | None, rng: random.Random) -> Result:
    result = Result("stale")
    rounds = [_round(mode, workdir, mutant, rng, n) for n in range(mode.stale_rounds)]
    miss = [x for r in rounds for x in r["latency_miss"]]
    kill = [x for r in rounds for x in r["latency_kill"]]
    result.add("busy workers killed", sum(r["killed"] for r in rounds), zero=False,
               note=f"heartbeat interval {mode.heartbeat_s:g} s")
    result.add("max latency after the first missed beat", round(max(miss, default=0), 2),
               zero=False, note="intervals; target <= 2")
    result.add("max latency after the kill", round(max(kill, default=0), 2), zero=False,
               note="intervals")
    result.add("work recovered later than 2 intervals", sum(r["late"] for r in rounds),
               "stranded")
    result.add("work left running forever", sum(r["never"] for r in rounds), "stranded")
    result.add("recovered without a reason", sum(r["reasons_missing"] for r in rounds),
               "stranded")
    result.add("live workers reaped", sum(r["live_reaped"] for r in rounds))
    return result

"""Check 5: workers killed while BUSY. A reaper polling `reap_stale` must fail the runs and
step attempts they held (with a reason) on its first pass after they missed two heartbeat
intervals, and never touch a worker that is alive (one that heartbeat within two intervals
of the reaping pass's clock; a live worker the machine starved for longer is stale).

Pass or fail does not hang on timing: each reaper pass is judged against the dead worker's
last heartbeat and the `now` the pass used. The latency from the kill is measured and
shown."""

from __future__ import annotations

import os
import random
import signal
import time
from datetime import datetime, timezone
from pathlib import Path

from reliability_suite.common import Mode, Result, connect_raw, spawn, wait_for


def _wall(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


# Staleness is "missed two consecutive heartbeat intervals" (SPEC); the reaper polls every
# 1/20 interval. Work must be failed within two intervals of the kill plus that allowance.
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
    killed: dict[int, float] = {}     # wall-clock instant of each kill
    last_beat: dict[int, float] = {}  # the dead worker's last heartbeat
    passed_over: set[int] = set()     # stale by then, yet a reaper pass left its work
    recovered: dict[int, float] = {}  # when the reaper failed the work (the run's ended_at)
    reasons_missing = 0
    live_starved: bool | None = None  # None: the live worker was never reaped
    db = Database(path)
    reaper = WorkerLifecycle(db)
    try:
        for i, run_id in enumerate(runs):
            ready = str(workdir / f"ready-{number}-{i}")
            procs.append((spawn("busy_worker", path, f"w-{i}", run_id, str(h), ready,
                                mutant=mutant), ready))
        wait_for(lambda: all(os.path.exists(r) for _, r in procs), 120, "busy workers")
        began = time.monotonic()
        kill_at = {i: began + rng.uniform(0.2, 1.5) * h for i in range(count - 1)}
        deadline = began + 14 * h
        while time.monotonic() < deadline and len(recovered) < count - 1:
            now = time.monotonic()
            for i, at in kill_at.items():
                if i not in killed and now >= at:
                    procs[i][0].send_signal(signal.SIGKILL)
                    killed[i] = time.time()
                    procs[i][0].wait()
                    conn = connect_raw(path)
                    last_beat[i] = _wall(conn.execute(
                        "SELECT last_heartbeat FROM workers WHERE worker_id = ?",
                        (f"w-{i}",)).fetchone()[0])
                    conn.close()
            conn = connect_raw(path)
            live_beat = _wall(conn.execute(  # the live worker's heartbeat before this pass
                "SELECT last_heartbeat FROM workers WHERE worker_id = ?",
                (f"w-{count - 1}",)).fetchone()[0])
            conn.close()
            moment = datetime.now(timezone.utc)
            reaped = reaper.reap_stale(h, now=moment)
            if f"w-{count - 1}" in reaped and live_starved is None:
                # judged by the pass's own clock: a worker the machine starved of CPU for two
                # whole intervals is stale, and reaping it is right; one that had beaten
                # within two intervals of `now` was alive, and reaping it is the bug
                live_starved = moment.timestamp() - live_beat > 2 * h
            conn = connect_raw(path)
            for i in killed:
                if i in recovered:
                    continue
                # two whole intervals without a heartbeat by the pass's own clock: stale
                stale = moment.timestamp() - last_beat[i] > 2 * h + 0.001
                run_state, message, ended = conn.execute(
                    "SELECT state, error_message, ended_at FROM runs WHERE run_id = ?",
                    (f"run-{i}",)).fetchone()
                steps = conn.execute("SELECT state, error_log FROM step_attempts "
                                     "WHERE run_id = ?", (f"run-{i}",)).fetchall()
                if run_state == "failed" and all(s == "failed" for s, _ in steps):
                    recovered[i] = _wall(ended)
                    reasons_missing += (not message) + sum(not log for _, log in steps)
                elif stale:
                    passed_over.add(i)
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
            proc.kill()
            proc.wait()
    latency = [(recovered[i] - killed[i]) / h for i in recovered]
    return {
        "killed": len(killed),
        "latency": latency,
        "passed_over": len(passed_over),
        "never": len(killed) - len(recovered),
        "reasons_missing": reasons_missing,
        # reaped although it had beaten within two intervals of the reaping pass's `now`,
        # or its run or state changed some other way
        "live_reaped": int(live_starved is False or (
            live_starved is None and (alive_run != "running" or alive_worker != "BUSY"))),
        "live_starved": int(bool(live_starved)),
    }


def run(mode: Mode, workdir: Path, mutant: str | None, rng: random.Random) -> Result:
    result = Result("stale")
    rounds = [_round(mode, workdir, mutant, rng, n) for n in range(mode.stale_rounds)]
    latency = [x for r in rounds for x in r["latency"]]
    result.add("busy workers killed", sum(r["killed"] for r in rounds), zero=False,
               note=f"heartbeat interval {mode.heartbeat_s:g} s")
    result.add("max latency, kill to work failed", round(max(latency, default=0), 2),
               zero=False, note="intervals; stale after 2, reaper polls every 1/20")
    result.add("stale work a reaper pass left running", sum(r["passed_over"] for r in rounds),
               "stranded")
    result.add("work left running forever", sum(r["never"] for r in rounds), "stranded")
    result.add("recovered without a reason", sum(r["reasons_missing"] for r in rounds),
               "stranded")
    # a live worker's run failed under it: the work may end up done twice
    result.add("live workers reaped", sum(r["live_reaped"] for r in rounds), "double")
    result.add("live workers starved for two intervals (rightly reaped)",
               sum(r["live_starved"] for r in rounds), zero=False,
               note="the machine, not uet: a heavily loaded host")
    return result

"""Speed of the ledger against raw sqlite3, side by side in one process.

    .venv/bin/python bench/bench_state.py [--quick]

1. create_event: uet's call (validation, id and timestamp, BEGIN IMMEDIATE, seq, COMMIT) vs raw
   sqlite3 doing the same INSERT + COMMIT into an identical ledger file, same journal mode
   (WAL) and synchronous setting, in alternating blocks so that machine noise hits both.
2. list_runs filtered by project and state, limit 100: time at 100,000 runs vs 1,000 runs.
Prints the ratios; the targets are >= 50 % and <= 3x.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time

from uet.state import init_db
from uet.state.ids import new_ulid, utc_now

RAW_INSERT = ("INSERT INTO run_events (event_id, run_id, timestamp, event_type, data, seq) "
              "VALUES (?, ?, ?, ?, ?, ?)")


def bench_create_event(folder: str, durability: str, blocks: int, per_block: int) -> tuple:
    uet_db = init_db(os.path.join(folder, f"uet-{durability}.db"), durability=durability)
    run_id = uet_db.create_run({"project_id": "bench", "phase_id": "ph"})
    raw_path = os.path.join(folder, f"raw-{durability}.db")
    init_db(raw_path).close()  # the same schema, indices and foreign keys
    raw = sqlite3.connect(raw_path)
    raw.execute("PRAGMA journal_mode=WAL")
    raw.execute(f"PRAGMA synchronous={'FULL' if durability == 'full' else 'NORMAL'}")
    raw.execute("PRAGMA foreign_keys=ON")
    raw.execute("INSERT INTO runs (run_id, project_id, phase_id, created_at) "
                "VALUES (?, 'bench', 'ph', ?)", (run_id, utc_now()))
    raw.commit()
    seq = 0
    uet_rates, raw_rates = [], []
    for _ in range(blocks):
        start = time.perf_counter()
        for i in range(per_block):
            uet_db.create_event({"run_id": run_id, "event_type": "tick", "data": {"i": i}})
        uet_rates.append(per_block / (time.perf_counter() - start))
        start = time.perf_counter()
        for i in range(per_block):
            seq += 1
            raw.execute(RAW_INSERT, (new_ulid(), run_id, utc_now(), "tick", f'{{"i": {i}}}', seq))
            raw.commit()
        raw_rates.append(per_block / (time.perf_counter() - start))
    uet_db.close()
    raw.close()
    return statistics.median(uet_rates), statistics.median(raw_rates)


def make_runs(path: str, count: int) -> None:
    """A ledger of `count` runs over 4 projects and 2 states (bulk-loaded through SQL)."""
    init_db(path).close()
    conn = sqlite3.connect(path)
    states = ("succeeded", "running")
    rows = ((f"run-{i:08d}", f"project-{i % 4}", "ph", f"2026-01-01T00:00:00.{i:06d}Z",
             states[(i // 4) % 2]) for i in range(count))
    conn.executemany("INSERT INTO runs (run_id, project_id, phase_id, created_at, state) "
                     "VALUES (?, ?, ?, ?, ?)", rows)
    conn.commit()
    conn.execute("ANALYZE")
    conn.commit()
    conn.close()


def time_list_runs(path: str, repeats: int) -> float:
    with init_db(path) as db:
        filters = {"project_id": "project-3", "state": "running"}
        assert len(db.list_runs(filters, limit=100)) == 100
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            db.list_runs(filters, limit=100)
            samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    args = parser.parse_args()
    blocks, per_block, repeats = (3, 300, 50) if args.quick else (9, 2000, 300)
    print(f"sqlite {sqlite3.sqlite_version}, python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as folder:
        for durability in ("normal", "full"):
            n = per_block if durability == "normal" else max(50, per_block // 10)
            uet_rate, raw_rate = bench_create_event(folder, durability, blocks, n)
            print(f"create_event ({durability:>6}): uet {uet_rate:9,.0f}/s   raw sqlite3 "
                  f"{raw_rate:9,.0f}/s   ratio {uet_rate / raw_rate:6.1%}   (target >= 50%)")
        small, large = os.path.join(folder, "1k.db"), os.path.join(folder, "100k.db")
        make_runs(small, 1_000)
        make_runs(large, 100_000)
        t_small, t_large = time_list_runs(small, repeats), time_list_runs(large, repeats)
        print(f"list_runs(project+state, limit 100): 1,000 runs {t_small * 1e3:.3f} ms   "
              f"100,000 runs {t_large * 1e3:.3f} ms   ratio {t_large / t_small:.2f}x "
              "(target <= 3x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

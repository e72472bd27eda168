"""Speed of `uet usage` (uet.state.usage.usage_rollup) at 1,000,000 step attempts, against
the same GROUP BY run directly with sqlite3, side by side on one ledger file.

    .venv/bin/python bench/bench_usage.py [--attempts N] [--repeats N] [--tail-bytes N]
        [--index "CREATE INDEX ..."] [--keep PATH]

Builds a SQLite ledger (uet.state.init_db, then raw executemany inserts in one transaction)
of N step attempts (default 1,000,000; 10 per run, so N/10 runs) that all reported usage:
runs over 20 projects, 5 phases, 50 workstreams, created over the last 100 days; 8 tools,
6 models, 10 tasks per workstream (500 task ids). Then times, as the median of --repeats
alternating rounds, each rollup through uet and the plain query through sqlite3: no
filter, --project, --workstream, --since 1 day; --by tool / model / task. Prints the
timings, the ratio uet / raw, the rows each returned and uet's query plan. `--tail-bytes`
puts output tails of that size in each attempt's metadata (as `uet run` and the
orchestrator keep them: wide rows make a full scan read more); `--index` times everything
again after creating a candidate index.

uet's query differs from the plain one in two ways, both on purpose: it groups by
(key, model) so that each row can list its models, and it sums tokens as two 32-bit
halves, so that a sum past 2**63-1 (a tool may report that much per attempt) is exact
instead of an "integer overflow" error.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone

from uet.state import init_db
from uet.state.usage import rollup_sql, usage_rollup

TOOLS = ("aider", "codex", "claude", "ruff", "pytest", "mypy", "editor", "reviewer")
MODELS = ("gpt-4.1", "gpt-4.1-mini", "o3", "claude-sonnet", "claude-haiku", "llama-70b")
PROJECTS, PHASES, WORKSTREAMS, TASKS_PER_WORKSTREAM, STEPS_PER_RUN = 20, 5, 50, 10, 10
DAYS = 100
STAMP = "%Y-%m-%dT%H:%M:%S.%fZ"

REPORTED = ("(s.model IS NOT NULL OR s.input_tokens IS NOT NULL"
            " OR s.output_tokens IS NOT NULL OR s.cost_usd IS NOT NULL)")
SUMS = "COUNT(*), SUM(s.input_tokens), SUM(s.output_tokens), SUM(s.cost_usd)"


def build(path: str, attempts: int, tail_bytes: int) -> None:
    """The ledger: schema by init_db, rows by raw executemany in one transaction."""
    init_db(path).close()
    runs = attempts // STEPS_PER_RUN
    now = datetime.now(timezone.utc)
    first = now - timedelta(days=DAYS)
    span = (now - first).total_seconds() - 3600
    # what `uet run` and the orchestrator keep in each attempt's metadata: output tails
    metadata = json.dumps({"command": ["aider", "--yes"], "duration_sec": 12.5,
                           "stdout_tail": "x" * tail_bytes}) if tail_bytes else None
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA foreign_keys=ON")
    started = time.perf_counter()
    with conn:
        def run_rows():
            for i in range(runs):
                created = first + timedelta(seconds=span * i / runs)
                ws = i % WORKSTREAMS
                yield (f"run-{i:08d}", f"project-{i % PROJECTS:02d}", f"PH-{ws % PHASES}",
                       f"WS-{ws:03d}", created.strftime(STAMP), "succeeded")
        conn.executemany("INSERT INTO runs (run_id, project_id, phase_id, workstream_id, "
                         "created_at, state) VALUES (?, ?, ?, ?, ?, ?)", run_rows())

        def step_rows():
            for i in range(runs):
                created = first + timedelta(seconds=span * i / runs)
                ws = i % WORKSTREAMS
                for sequence in range(1, STEPS_PER_RUN + 1):
                    n = i * STEPS_PER_RUN + sequence
                    begun = created + timedelta(seconds=sequence * 30)
                    tokens_in, tokens_out = 500 + n % 9000, 100 + n % 2000
                    yield (f"sa-{n:09d}", f"run-{i:08d}", sequence, TOOLS[n % len(TOOLS)],
                           begun.strftime(STAMP), (begun + timedelta(seconds=20)).strftime(STAMP),
                           "succeeded", 0,
                           f"TSK-{ws:03d}-{(sequence - 1) % TASKS_PER_WORKSTREAM + 1:02d}",
                           MODELS[(n // 3) % len(MODELS)], tokens_in, tokens_out,
                           tokens_in * 3e-6 + tokens_out * 15e-6, metadata)
        conn.executemany("INSERT INTO step_attempts (step_attempt_id, run_id, sequence, tool_id, "
                         "started_at, ended_at, state, exit_code, task_id, model, input_tokens, "
                         "output_tokens, cost_usd, metadata) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         step_rows())
    conn.execute("ANALYZE")
    conn.commit()
    conn.close()
    print(f"built {runs:,} runs, {attempts:,} step attempts in "
          f"{time.perf_counter() - started:.1f} s ({os.path.getsize(path) / 1e6:,.0f} MB)")


def raw_query(by: str, run_filter: str | None, since: bool) -> str:
    """The plain GROUP BY a person would write for the same rollup."""
    column = {"tool": "s.tool_id", "model": "s.model", "task": "s.task_id"}[by]
    join = " JOIN runs r ON r.run_id = s.run_id" if run_filter else ""
    where = [REPORTED] + ([f"r.{run_filter} = ?"] if run_filter else []) + (
        ["s.started_at >= ?"] if since else [])
    return (f"SELECT {column}, {SUMS} FROM step_attempts s{join} WHERE {' AND '.join(where)}"
            f" GROUP BY {column}")


CASES = [  # (label, by, the run column filtered on, since filter)
    ("no filter, by tool", "tool", None, False),
    ("--project, by tool", "tool", "project_id", False),
    ("--since 1d, by tool", "tool", None, True),
    ("no filter, by model", "model", None, False),
    ("no filter, by task", "task", None, False),
    ("--project, by task", "task", "project_id", False),
    ("--since 1d, by model", "model", None, True),
    ("--since 1d, by task", "task", None, True),
    ("--workstream, by tool", "tool", "workstream_id", False),
]
FILTER_VALUES = {"project_id": "project-07", "workstream_id": "WS-007"}


def time_cases(path: str, repeats: int) -> None:
    """Each case through uet and through sqlite3, alternating; one line each."""
    since = (datetime.now(timezone.utc) - timedelta(days=1)).strftime(STAMP)
    db = init_db(path)
    raw = sqlite3.connect(path)
    print(f"{'case':<22} {'uet ms':>9} {'raw ms':>9} {'ratio':>6} {'rows':>5}  uet plan")
    for label, by, run_filter, with_since in CASES:
        options = {"by": by, "since": since if with_since else None}
        params = [since] if with_since else []
        if run_filter:
            options[run_filter] = FILTER_VALUES[run_filter]
            params.insert(0, FILTER_VALUES[run_filter])
        sql = raw_query(by, run_filter, with_since)
        rows = usage_rollup(db, **options)
        raw_rows = raw.execute(sql, params).fetchall()
        assert len(rows) == len(raw_rows), (label, len(rows), len(raw_rows))
        assert sum(r["attempts"] for r in rows) == sum(r[1] for r in raw_rows)
        assert sum(r["input_tokens"] for r in rows) == sum(r[2] for r in raw_rows)
        uet_times, raw_times = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            usage_rollup(db, **options)
            uet_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            raw.execute(sql, params).fetchall()
            raw_times.append(time.perf_counter() - start)
        t_uet, t_raw = statistics.median(uet_times), statistics.median(raw_times)
        uet_sql = rollup_sql(by, (run_filter,) if run_filter else (), since=with_since)
        plan = "; ".join(row[3] for row in raw.execute(f"EXPLAIN QUERY PLAN {uet_sql}",
                                                        params))
        print(f"{label:<22} {t_uet * 1e3:9.1f} {t_raw * 1e3:9.1f} {t_uet / t_raw:6.2f} "
              f"{len(rows):5}  {plan}", flush=True)
    db.close()
    raw.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attempts", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tail-bytes", type=int, default=0,
                        help="bytes of output tail in each attempt's metadata (default 0)")
    parser.add_argument("--index", action="append", default=[], metavar="SQL",
                        help="a CREATE INDEX statement to time again with (repeatable)")
    parser.add_argument("--keep", help="build (or reuse) the ledger at this path")
    args = parser.parse_args()
    print(f"sqlite {sqlite3.sqlite_version}, python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as folder:
        path = args.keep or os.path.join(folder, "usage.db")
        if not os.path.exists(path):
            build(path, args.attempts, args.tail_bytes)
        time_cases(path, args.repeats)
        if args.index:
            conn = sqlite3.connect(path)
            started = time.perf_counter()
            for statement in args.index:
                conn.execute(statement)
            conn.execute("ANALYZE")
            conn.commit()
            conn.close()
            print(f"\nwith {'; '.join(args.index)} (built in "
                  f"{time.perf_counter() - started:.1f} s, file now "
                  f"{os.path.getsize(path) / 1e6:,.0f} MB):")
            time_cases(path, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

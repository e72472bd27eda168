"""The orchestrator's recording pattern (a 10-step run in 12 transactions) timed against DBOS
Transact and raw sqlite3 side by side in one process; create_event vs raw, and its profile."""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import os
import pstats
import random
import re
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_state import bench_create_event  # noqa: E402
from uet.state import Database  # noqa: E402
from uet.state.ids import new_ulid, utc_now  # noqa: E402

USAGE = """\
    .venv/bin/python bench/bench_peers.py [--quick] [--dir DIR]

DBOS Transact is measured only where it is installed, into this virtualenv and for this
benchmark only (it is not a dependency of uet):  .venv/bin/pip install dbos

1. The pattern: create a run; start it and its step 1; per step one transaction that
   finishes step k and starts step k+1 (uet: `with db.atomic():`); finish step 10 and the
   run: 12 transactions. Per step = time of N runs / (N * 10). Contenders: uet at
   durability full and normal; raw sqlite3 running the same statements (checked against
   a trace of uet's connection) in one BEGIN IMMEDIATE ... COMMIT per group on the same
   schema, WAL + synchronous FULL / NORMAL; DBOS Transact, a workflow of 10 trivial
   @DBOS.step()s on its SQLite system database with its default settings. One
   measurement at full (uet, raw, DBOS), then one at normal (uet, raw): rounds, each
   contender once a round in a new order, so that machine noise hits all; medians.
   Targets: uet at full >= 10x faster per step than DBOS; uet within 1.5x of raw.
2. create_event at WAL + NORMAL vs raw sqlite3's INSERT + COMMIT (bench_state's
   measurement; target >= 0.65), then a cProfile of 20,000 create_event calls: where the
   time goes beyond the SQL.
"""

STEPS = 10
TOOL = "bench-tool"

# What uet runs for the pattern, copied from its named queries (src/uet/state/sql/) and the
# UPDATEs it assembles from column names (in table order); `check_statements` compares them
# with a trace of uet's own connection and prints any difference.
INSERT_RUN = """\
INSERT INTO runs (run_id, project_id, phase_id, workstream_id, execution_request_id,
                  created_at, started_at, ended_at, state, exit_code, error_message, metadata)
VALUES (:run_id, :project_id, :phase_id, :workstream_id, :execution_request_id,
        :created_at, :started_at, :ended_at, :state, :exit_code, :error_message, :metadata)"""
INSERT_STEP = """\
INSERT INTO step_attempts (step_attempt_id, run_id, sequence, tool_id, tool_run_id,
                           execution_request_id, prompt_id, started_at, ended_at, state,
                           exit_code, input_prompt, output_patch_id, error_log, metadata,
                           attempt, worker_id)
VALUES (:step_attempt_id, :run_id, :sequence, :tool_id, :tool_run_id,
        :execution_request_id, :prompt_id, :started_at, :ended_at, :state,
        :exit_code, :input_prompt, :output_patch_id, :error_log, :metadata,
        coalesce(:attempt, (SELECT coalesce(max(attempt), 0) + 1 FROM step_attempts
                             WHERE run_id = :run_id AND sequence = :sequence)),
        coalesce(:worker_id, (SELECT worker_id FROM runs WHERE run_id = :run_id)))
RETURNING attempt"""
INSERT_EVENT = """\
INSERT INTO run_events (event_id, run_id, timestamp, event_type, data, seq)
VALUES (:event_id, :run_id, :timestamp, :event_type, :data,
        1 + max(coalesce((SELECT max(seq) FROM run_events), 0),
                (SELECT value FROM ledger_counters WHERE name = 'deleted_event_seq')))"""
LOCK_RUN = "SELECT * FROM runs WHERE run_id = ?"
LOCK_STEP = "SELECT * FROM step_attempts WHERE step_attempt_id = ?"
START_RUN = "UPDATE runs SET started_at = ?, state = ? WHERE run_id = ? RETURNING *"
END_RUN = ("UPDATE runs SET ended_at = ?, state = ?, exit_code = ? WHERE run_id = ? "
           "RETURNING *")
END_STEP = ("UPDATE step_attempts SET ended_at = ?, state = ?, exit_code = ? "
            "WHERE step_attempt_id = ? RETURNING *")
SYNCHRONOUS = {"full": "PRAGMA synchronous=FULL", "normal": "PRAGMA synchronous=NORMAL"}
EXIT_0_CHANGED = {"exit_code": {"from": None, "to": 0}}  # what uet's events record


def uet_record_run(db: Database) -> None:
    """One 10-step run recorded as an orchestrator does: 12 transactions with atomic()."""
    run_id = db.create_run({"project_id": "bench", "phase_id": "ph"})
    with db.atomic():
        db.transition_run(run_id, "running", expected="pending")
        step = db.create_step_attempt({"run_id": run_id, "sequence": 1, "tool_id": TOOL})
    for k in range(2, STEPS + 1):
        with db.atomic():
            db.transition_step_attempt(step, "succeeded", exit_code=0)
            step = db.create_step_attempt({"run_id": run_id, "sequence": k, "tool_id": TOOL})
    with db.atomic():
        db.transition_step_attempt(step, "succeeded", exit_code=0)
        db.transition_run(run_id, "succeeded", exit_code=0)


def raw_connection(path: str, durability: str) -> sqlite3.Connection:
    """sqlite3 on a fresh ledger file: uet's schema, indices and foreign keys, WAL."""
    Database(path).close()
    conn = sqlite3.connect(path, isolation_level=None, cached_statements=256)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(SYNCHRONOUS[durability])
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def raw_record_run(conn: sqlite3.Connection) -> None:
    """The pattern in raw sqlite3: uet's statements, one BEGIN IMMEDIATE ... COMMIT a group."""
    execute = conn.execute

    def event(run_id: str, event_type: str, data: dict) -> None:
        execute(INSERT_EVENT, {"event_id": new_ulid(), "run_id": run_id,
                               "timestamp": utc_now(), "event_type": event_type,
                               "data": json.dumps(data)})

    def start_step(run_id: str, sequence: int) -> str:
        step_id = new_ulid()
        attempt = execute(INSERT_STEP, {
            "step_attempt_id": step_id, "run_id": run_id, "sequence": sequence,
            "tool_id": TOOL, "tool_run_id": None, "execution_request_id": None,
            "prompt_id": None, "started_at": utc_now(), "ended_at": None, "state": "running",
            "exit_code": None, "input_prompt": None, "output_patch_id": None,
            "error_log": None, "metadata": None, "attempt": None,
            "worker_id": None}).fetchone()[0]
        event(run_id, "step_attempt.created", {
            "step_attempt_id": step_id, "sequence": sequence, "attempt": attempt,
            "tool_id": TOOL, "state": "running"})
        return step_id

    def end_step(run_id: str, step_id: str) -> None:
        execute(LOCK_STEP, (step_id,)).fetchall()
        execute(END_STEP, (utc_now(), "succeeded", 0, step_id)).fetchall()
        event(run_id, "step_attempt.state_changed", {
            "step_attempt_id": step_id, "from": "running", "to": "succeeded", "exit_code": 0,
            "changed": EXIT_0_CHANGED})

    run_id = new_ulid()
    execute("BEGIN IMMEDIATE")
    execute(INSERT_RUN, {"run_id": run_id, "project_id": "bench", "phase_id": "ph",
                         "workstream_id": None, "execution_request_id": None,
                         "created_at": utc_now(), "started_at": None, "ended_at": None,
                         "state": "pending", "exit_code": None, "error_message": None,
                         "metadata": None})
    event(run_id, "run.created", {"state": "pending"})
    execute("COMMIT")
    execute("BEGIN IMMEDIATE")
    execute(LOCK_RUN, (run_id,)).fetchall()
    execute(START_RUN, (utc_now(), "running", run_id)).fetchall()
    event(run_id, "run.state_changed", {"from": "pending", "to": "running"})
    step_id = start_step(run_id, 1)
    execute("COMMIT")
    for k in range(2, STEPS + 1):
        execute("BEGIN IMMEDIATE")
        end_step(run_id, step_id)
        step_id = start_step(run_id, k)
        execute("COMMIT")
    execute("BEGIN IMMEDIATE")
    end_step(run_id, step_id)
    execute(LOCK_RUN, (run_id,)).fetchall()
    execute(END_RUN, (utc_now(), "succeeded", 0, run_id)).fetchall()
    event(run_id, "run.state_changed", {"from": "running", "to": "succeeded", "exit_code": 0,
                                        "changed": EXIT_0_CHANGED})
    execute("COMMIT")


# -- the statements each side runs ----------------------------------------------------------

_LITERAL = re.compile(r"'(?:[^']|'')*'|\b\d+(?:\.\d+)?\b|\bNULL\b")


def _shape(statement: str) -> str:
    """A traced statement (parameters expanded) with its values as ? and its spaces folded."""
    return " ".join(_LITERAL.sub("?", statement).split()).rstrip(";").rstrip()


def _traced(conn: sqlite3.Connection, action: Callable[[], None]) -> Counter:
    seen: list[str] = []
    conn.set_trace_callback(seen.append)
    try:
        action()
    finally:
        conn.set_trace_callback(None)
    return Counter(_shape(s) for s in seen if not s.lstrip().startswith("--"))


def check_statements(db: Database, raw: sqlite3.Connection) -> tuple[str, int | None]:
    """Trace one run of each side; a line saying whether they ran the same statements, and
    uet's transactions per run (None where uet's connection cannot be reached)."""
    locked = getattr(getattr(db, "backend", None), "locked_connection", None)
    raw_seen = _traced(raw, lambda: raw_record_run(raw))
    raw_text = (f"raw {raw_seen['BEGIN IMMEDIATE']} transactions, "
                f"{sum(raw_seen.values())} statements")
    if locked is None:
        uet_record_run(db)
        return f"statements per run: {raw_text}; uet's not traced (no backend connection)", None
    with locked() as conn:
        pass  # the connection outlives the block: trace it while uet uses it
    uet_seen = _traced(conn, lambda: uet_record_run(db))
    line = (f"statements per run: uet {uet_seen['BEGIN IMMEDIATE']} transactions, "
            f"{sum(uet_seen.values())} statements; {raw_text}")
    extra, missing = uet_seen - raw_seen, raw_seen - uet_seen
    if not extra and not missing:
        return line + ": the same statements", uet_seen["BEGIN IMMEDIATE"]
    for label, diff in (("uet runs besides", extra), ("raw runs besides", missing)):
        if diff:
            line += f"\n  {label}: " + "; ".join(
                f"{n}x {s[:70]}{'...' if len(s) > 70 else ''}" for s, n in diff.most_common())
    return line, uet_seen["BEGIN IMMEDIATE"]


# -- DBOS Transact --------------------------------------------------------------------------

def start_dbos(folder: str) -> tuple[Callable[[], int] | None, str]:
    """Launch DBOS on a SQLite system database in `folder` (its default settings otherwise);
    its 10-step workflow and a description, or None and why not."""
    try:
        from dbos import DBOS
    except ImportError as exc:
        return None, (f"DBOS Transact is not installed ({exc}); to compare with it, install it "
                      "into this virtualenv for the benchmark only: .venv/bin/pip install dbos")
    from importlib.metadata import version

    @DBOS.step()
    def trivial_step(i: int) -> int:
        return i

    @DBOS.workflow()
    def ten_steps() -> int:
        return sum(trivial_step(i) for i in range(STEPS))

    path = os.path.join(folder, "dbos.sqlite")
    try:
        DBOS(config={"name": "uet-bench-peers", "system_database_url": f"sqlite:///{path}",
                     "log_level": "WARNING"})
        DBOS.launch()
        if ten_steps() != sum(range(STEPS)):
            raise RuntimeError("the DBOS workflow returned a wrong result")
    except Exception as exc:  # noqa: BLE001 - DBOS's and SQLAlchemy's errors vary by version
        stop_dbos()
        return None, f"DBOS Transact could not be launched: {type(exc).__name__}: {exc}"
    probe = sqlite3.connect(path)  # DBOS sets neither: a new connection shows what it uses
    journal, sync = (probe.execute(f"PRAGMA {p}").fetchone()[0]
                     for p in ("journal_mode", "synchronous"))
    probe.close()
    sync_name = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(sync, sync)
    return ten_steps, (f"DBOS Transact {version('dbos')}, SQLite system database with its "
                       f"defaults (journal_mode={journal}, synchronous={sync_name})")


def stop_dbos() -> None:
    with contextlib.suppress(ImportError):
        from dbos import DBOS
        DBOS.destroy(destroy_registry=True)


# -- measuring -------------------------------------------------------------------------------

def per_step_us(record: Callable[[], object], runs: int) -> Callable[[], float]:
    """A timed batch: `runs` runs (or workflows), microseconds per step."""
    def batch() -> float:
        start = time.perf_counter()
        for _ in range(runs):
            record()
        return (time.perf_counter() - start) / (runs * STEPS) * 1e6
    return batch


def alternate(batches: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Each contender's batch once a round, in a new order every round; medians.

    Shuffled, not rotated: a rotation keeps each contender behind the same one, and a batch
    can leave work to the next (dirty pages that the next fsync must write first)."""
    order = list(batches)
    shuffle = random.Random(0).shuffle
    samples: dict[str, list[float]] = {name: [] for name in order}
    for _ in range(rounds):
        shuffle(order)
        for name in order:
            samples[name].append(batches[name]())
    return {name: statistics.median(values) for name, values in samples.items()}


def profile_create_event(folder: str, calls: int, blocks: int) -> None:
    """cProfile of `calls` create_event calls on a file ledger (WAL + NORMAL), and uet's call
    timed against raw sqlite3 running uet's own INSERT (seq subquery, BEGIN IMMEDIATE)."""
    db = Database(os.path.join(folder, "profile.db"))
    raw = raw_connection(os.path.join(folder, "profile-raw.db"), "normal")
    run_id = db.create_run({"project_id": "bench", "phase_id": "ph"})
    raw.execute(INSERT_RUN, {"run_id": run_id, "project_id": "bench", "phase_id": "ph",
                             "workstream_id": None, "execution_request_id": None,
                             "created_at": utc_now(), "started_at": None, "ended_at": None,
                             "state": "pending", "exit_code": None, "error_message": None,
                             "metadata": None})

    def uet_event(i: int) -> None:
        db.create_event({"run_id": run_id, "event_type": "tick", "data": {"i": i}})

    def raw_event(i: int) -> None:
        raw.execute("BEGIN IMMEDIATE")
        raw.execute(INSERT_EVENT, {"event_id": new_ulid(), "run_id": run_id,
                                   "timestamp": utc_now(), "event_type": "tick",
                                   "data": json.dumps({"i": i})})
        raw.execute("COMMIT")

    def per_call_us(call: Callable[[int], None], n: int) -> Callable[[], float]:
        def batch() -> float:
            start = time.perf_counter()
            for i in range(n):
                call(i)
            return (time.perf_counter() - start) / n * 1e6
        return batch

    n = max(100, calls // blocks)
    timed = alternate({"uet": per_call_us(uet_event, n), "raw": per_call_us(raw_event, n)},
                      blocks)
    profiler = cProfile.Profile()
    profiler.enable()
    for i in range(calls):
        uet_event(i)
    profiler.disable()
    db.close()
    raw.close()
    stats = pstats.Stats(profiler).stats  # {(file, line, name): (cc, calls, own, cum, _)}
    total = sum(entry[2] for entry in stats.values())

    def label(key: tuple) -> str:
        file, line, name = key
        return name if file == "~" else f"{os.path.basename(file)}:{line} {name}"

    print(f"\ncreate_event, WAL + NORMAL, {n:,} calls a block x {blocks}, medians: uet "
          f"{timed['uet']:.1f} us/call, raw sqlite3 running uet's INSERT (seq subquery, "
          f"BEGIN IMMEDIATE) {timed['raw']:.1f} us/call: uet at {timed['raw'] / timed['uet']:.0%} "
          f"of it; uet's layer above that SQL {timed['uet'] - timed['raw']:.1f} us/call")
    print(f"cProfile of {calls:,} create_event calls: {total:.2f} s profiled "
          f"({total / calls * 1e6:.1f} us/call under the profiler)")
    print(f"  {'own time, top 14':<62} {'share':>6} {'us/call':>8} {'calls/event':>12}")
    for key, entry in sorted(stats.items(), key=lambda kv: -kv[1][2])[:14]:
        print(f"  {label(key)[:62]:<62} {entry[2] / total:6.1%} "
              f"{entry[2] / calls * 1e6:8.2f} {entry[1] / calls:12.1f}")
    print(f"  {'uet functions, cumulative (own + callees), top 10':<62} {'share':>6} "
          f"{'us/call':>8}")
    ours = [(key, entry) for key, entry in stats.items()
            if f"{os.sep}uet{os.sep}" in key[0]]
    for key, entry in sorted(ours, key=lambda kv: -kv[1][3])[:10]:
        print(f"  {label(key)[:62]:<62} {entry[3] / total:6.1%} {entry[3] / calls * 1e6:8.2f}")


def filesystem_of(folder: str) -> str:
    """The type of the file system holding `folder` (from /proc/mounts), or '?'."""
    path, best, kind = os.path.realpath(folder), "", "?"
    with contextlib.suppress(OSError):
        with open("/proc/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) < 3 or len(fields[1]) <= len(best):
                    continue
                if path == fields[1] or path.startswith(fields[1].rstrip("/") + "/"):
                    best, kind = fields[1], fields[2]
    return kind


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog=USAGE,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    parser.add_argument("--dir", help="folder for the ledgers (default: a temporary folder); "
                        "what a commit at durability full costs depends on its file system")
    args = parser.parse_args()
    if args.quick:
        rounds, runs_full, runs_normal, workflows = 5, 4, 10, 2
        blocks, per_block, profile_calls = 3, 300, 2_000
    else:
        rounds, runs_full, runs_normal, workflows = 15, 15, 40, 6
        blocks, per_block, profile_calls = 9, 2_000, 20_000
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        print(f"sqlite {sqlite3.sqlite_version}, python {sys.version.split()[0]}, "
              f"{os.cpu_count()} cpus, ledgers in {folder} ({filesystem_of(folder)})")
        dbs = {d: Database(os.path.join(folder, f"pattern-uet-{d}.db"), durability=d)
               for d in ("full", "normal")}
        raws = {d: raw_connection(os.path.join(folder, f"pattern-raw-{d}.db"), d)
                for d in ("full", "normal")}
        checked, transactions = check_statements(dbs["normal"], raws["normal"])
        print(checked)
        batches = {}
        for durability, runs in (("full", runs_full), ("normal", runs_normal)):
            db, raw = dbs[durability], raws[durability]
            uet_record_run(db)  # warm: statements prepared, pages cached
            raw_record_run(raw)
            batches[durability] = {
                f"uet {durability}": per_step_us(lambda db=db: uet_record_run(db), runs),
                f"raw {durability}": per_step_us(lambda raw=raw: raw_record_run(raw), runs)}
        workflow, dbos_text = start_dbos(folder)
        try:
            if workflow is not None:
                batches["full"]["dbos"] = per_step_us(workflow, workflows)
            # one measurement a mode: the commits at normal leave dirty pages that would
            # make whichever fsync comes next pay for them
            figures = {**alternate(batches["full"], rounds),
                       **alternate(batches["normal"], rounds)}
        finally:
            if workflow is not None:
                stop_dbos()
        for db in dbs.values():
            db.close()
        for raw in raws.values():
            raw.close()
        dbos = figures.get("dbos")
        with_dbos = f" and {workflows} DBOS workflows" if dbos else ""
        print(f"\n10-step run, {transactions or '?'} transactions a run for uet, 12 for raw; "
              f"per step = time of N runs / (N x {STEPS}); medians of {rounds} rounds at "
              f"full ({runs_full} runs{with_dbos} a round), then at normal ({runs_normal})")
        print(f"  {'mode':<24} {'uet us':>9} {'raw us':>9} {'uet/raw':>8} {'DBOS us':>9} "
              f"{'DBOS/uet':>9} {'DBOS/raw':>9}")
        for durability, mode in (("full", "WAL + synchronous FULL"),
                                 ("normal", "WAL + synchronous NORMAL")):
            uet, raw = figures[f"uet {durability}"], figures[f"raw {durability}"]
            print(f"  {mode:<24} {uet:9.1f} {raw:9.1f} {uet / raw:7.2f}x " + (
                f"{dbos:9.1f} {dbos / uet:8.1f}x {dbos / raw:8.1f}x" if dbos else
                f"{'-':>9} {'-':>9} {'-':>9}"))
        print("  targets: uet/raw <= 1.5x; DBOS/uet >= 10x at full (DBOS/raw: the most that "
              "fewer Python costs could give with these commits)")
        print(f"  DBOS: {dbos_text}")
        os.mkdir(os.path.join(folder, "create_event"))
        uet_rate, raw_rate = bench_create_event(os.path.join(folder, "create_event"),
                                                "normal", blocks, per_block)
        print(f"create_event (WAL + NORMAL, bench_state's measurement): uet {uet_rate:,.0f}/s, "
              f"raw sqlite3 INSERT + COMMIT {raw_rate:,.0f}/s = {uet_rate / raw_rate:.0%} "
              "(target >= 65%)")
        profile_create_event(folder, profile_calls, blocks)
        print()
        print(f"peers: uet_transactions_per_run={transactions or 'unknown'} "
              "raw_transactions_per_run=12")
        for durability in ("full", "normal"):
            uet = figures[f"uet {durability}"]
            if dbos:
                print(f"peers: uet_{durability}_per_step_us={uet:.1f} "
                      f"dbos_per_step_us={dbos:.1f} ratio={dbos / uet:.2f} ratio_is=dbos/uet"
                      + (" target_min=10" if durability == "full" else ""))
            raw = figures[f"raw {durability}"]
            print(f"peers: uet_{durability}_per_step_us={uet:.1f} "
                  f"raw_{durability}_per_step_us={raw:.1f} ratio={uet / raw:.2f} "
                  "ratio_is=uet/raw target_max=1.5")
        if dbos:
            raw = figures["raw full"]
            print(f"peers: raw_full_per_step_us={raw:.1f} dbos_per_step_us={dbos:.1f} "
                  f"ratio={dbos / raw:.2f} ratio_is=dbos/raw")
        else:
            print("peers: dbos_per_step_us=unavailable (see above)")
        print(f"peers: uet_create_event_per_s={uet_rate:.0f} "
              f"raw_create_event_per_s={raw_rate:.0f} ratio={uet_rate / raw_rate:.3f} "
              "ratio_is=uet/raw target_min=0.65")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`uet gc`, driven as a user drives it (the real console script, in subprocesses), on a SQLite
file and on PostgreSQL: its output, its refusals, and gc on a big ledger while four other
processes keep writing, killed at a seeded random moment and run again.

The writers are `bench/bench_gc.py write` processes (an orchestrator's six calls per run,
each its own transaction, with the default busy timeout); the big ledgers are built by
`bench/build_ledger.py` with the records `bench_gc.add_records` adds beside them (a patch,
an entry and a gate per step attempt, two gates of each run).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import bench_gc
from build_ledger import build
from uet.cli.retention import SHOWN_TABLES
from uet.cli.retention import gc as gc_command
from uet.state import Database, GateLedger, PatchLedger
from uet.state.ids import normalize_timestamp
from uet.state.retention import DEFAULT_BATCH_SIZE, TABLES

UET = shutil.which("uet", path=os.path.dirname(sys.executable))
SEED = int(os.environ.get("UET_TEST_SEED", "18"))
NOW = datetime.now(timezone.utc)
DIFF = "--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-a = 1\n+a = {n}\n"
# the rows of a ledger, table by table, in key order (what "the same end state" compares)
KEYS = {"runs": "run_id", "step_attempts": "step_attempt_id", "run_events": "event_id",
        "patches": "patch_id", "patch_ledger_entries": "ledger_id", "test_gates": "gate_id",
        "gate_dependencies": "gate_id, depends_on", "workers": "worker_id",
        "ledger_counters": "name"}


def ago(days: float) -> str:
    return normalize_timestamp(NOW - timedelta(days=days), "t")


def uet(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "UET_DATABASE"}
    return subprocess.run([UET, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def make_run(db, project: str, created: float, state: str = "succeeded") -> str:
    run_id = db.create_run({"project_id": project, "phase_id": "PH", "created_at": ago(created)})
    if state == "pending":
        return run_id
    db.update_run(run_id, {"state": "running", "started_at": ago(created)})
    step = db.create_step_attempt({"run_id": run_id, "sequence": 1, "tool_id": "t",
                                   "started_at": ago(created)})
    patch = PatchLedger(db).record_patch(DIFF.format(n=run_id), step_attempt_id=step)
    entry = PatchLedger(db).create_entry(patch, "PH")
    GateLedger(db).define_gate("LINT", "PH", "ruff", run_id=run_id)
    GateLedger(db).define_gate("UNIT", "PH", "pytest", run_id=run_id, depends_on=["LINT"])
    GateLedger(db).define_gate("UNIT", "PH", "pytest", ledger_id=entry.ledger_id)
    if state != "running":
        db.update_run(run_id, {"state": state, "ended_at": ago(created - 0.01)})
    return run_id


def rows(db) -> dict[str, list]:
    return {t: db.backend.query(f"SELECT * FROM {t} ORDER BY {k}") for t, k in KEYS.items()}


@pytest.fixture
def small(ledger):
    """A ledger (SQLite file, then PostgreSQL) with old and new runs of two projects."""
    with Database(ledger) as db:
        runs = {"a-old": [make_run(db, "a", 40 + i) for i in range(3)],
                "a-failed": [make_run(db, "a", 45, "failed")],
                "b-old": [make_run(db, "b", 50)],
                "a-new": [make_run(db, "a", 2)],
                "open": [make_run(db, "a", 60, "running"), make_run(db, "b", 60, "pending")]}
    return ledger, runs


# -- output ----------------------------------------------------------------------------------

def test_dry_run_counts_then_gc_removes_and_says_what(small, tmp_path):
    ledger, runs = small
    with Database(ledger) as db:
        before = rows(db)
    dry = uet("gc", "--db", ledger, "--older-than", "30d", "--dry-run", "--json", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    counted = json.loads(dry.stdout)
    assert counted["dry_run"] and counted["deleted"] == {
        "gate_dependencies": 5, "test_gates": 15, "patch_ledger_entries": 5, "patches": 5,
        "run_events": counted["deleted"]["run_events"], "step_attempts": 5, "runs": 5}
    with Database(ledger) as db:
        assert rows(db) == before

    done = uet("gc", "--db", ledger, "--older-than", "30d", "--json", cwd=tmp_path)
    assert done.returncode == 0 and done.stderr == ""  # no terminal: no progress bar
    removed = json.loads(done.stdout)
    assert removed["deleted"] == counted["deleted"] and not removed["dry_run"]
    assert removed["states"] == ["succeeded", "failed", "quarantined", "canceled"]
    with Database(ledger) as db:
        left = {r["run_id"] for r in db.list_runs(limit=None)}
    assert left == {*runs["a-new"], *runs["open"]}

    again = uet("gc", "--db", ledger, "--older-than", "30d", cwd=tmp_path)
    assert again.returncode == 0
    lines = again.stdout.splitlines()
    assert lines[0].startswith("removed 0 succeeded, failed, quarantined, canceled runs that "
                               "ended before ")
    assert [line.split()[0] for line in lines[3:10]] == list(SHOWN_TABLES)


def test_the_table_and_the_filters(small, tmp_path):
    ledger, runs = small
    result = uet("gc", "--db", ledger, "--older-than", ago(30), "--state", "succeeded",
                 "--project", "a", "--keep-last", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # a's succeeded runs by age: a-new, a-old[0], a-old[1], a-old[2]: the newest two stay
    assert out.startswith("removed 2 succeeded runs of project a that ended before ")
    assert re.search(r"^runs +2 *$", out, re.MULTILINE)
    # examined: a's three old succeeded runs; the newest of them is kept (a-new is the other
    # of the newest two, and younger than the cutoff)
    assert "kept 1 of the newest runs (--keep-last 2)" in out
    with Database(ledger) as db:
        assert db.get_run(runs["a-old"][0]) and db.get_run(runs["a-failed"][0])
        assert not db.get_run(runs["a-old"][1]) and not db.get_run(runs["a-old"][2])
        assert db.get_run(runs["b-old"][0])


def test_vacuum_is_explained_for_each_engine(small, tmp_path):
    ledger, _ = small
    result = uet("gc", "--db", ledger, "--older-than", "30d", "--vacuum", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    last = result.stdout.splitlines()[-1]
    if ledger.startswith("postgresql"):
        assert last == "space: PostgreSQL's autovacuum reclaims it (uet runs no VACUUM there)"
    else:
        assert last.startswith("space: the file went from ") and last.endswith("(full vacuum)")


def test_what_the_command_spells_out_agrees_with_the_library():
    """uet.cli.retention spells these out so that `uet --help` does not load uet.state."""
    assert sorted(SHOWN_TABLES) == sorted(TABLES) and SHOWN_TABLES[0] == "runs"
    batch = next(p for p in gc_command.params if p.name == "batch_size")
    assert batch.default == DEFAULT_BATCH_SIZE


def test_a_progress_bar_on_a_terminal_only(tmp_path):
    import pty
    path = str(tmp_path / "ledger.db")
    build(path, 3_000, days=365)
    master, slave = pty.openpty()
    try:
        proc = subprocess.run([UET, "gc", "--db", path, "--older-than", "30d", "--json",
                               "--batch", "100"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=slave, timeout=120, text=True)
        os.close(slave)
        shown = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the terminal's other end is closed: all read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(master)
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["deleted"]["runs"] > 2_000
    assert b"gc: " in shown and b"runs deleted" in shown


# -- refusals ----------------------------------------------------------------------------------

REFUSED = [
    (["--older-than", "-5d"], "Invalid value for --older-than: older_than must not be negative"),
    (["--older-than", "soon"], "Invalid value for --older-than: older_than 'soon' is neither"),
    (["--older-than", "2999-01-01"], "is in the future"),
    (["--older-than", "1d", "--state", "running"],
     "Invalid value for --state: gc never deletes running runs"),
    (["--older-than", "1d", "--state", "succeeded,pendin"], "unknown run state 'pendin'"),
    (["--older-than", "1d", "--keep-last", "-1"], "Invalid value for --keep-last"),
    (["--older-than", "1d", "--keep-last", "many"], "'many' is not a valid integer"),
    (["--older-than", "1d", "--batch", "0"], "Invalid value for --batch"),
    ([], "Missing option '--older-than'"),
]


def test_bad_options_exit_2_and_change_nothing(small, tmp_path):
    ledger, _ = small
    with Database(ledger) as db:
        before = rows(db)
    for args, message in REFUSED:
        result = uet("gc", "--db", ledger, *args, cwd=tmp_path)
        assert result.returncode == 2 and result.stdout == "", args
        assert result.stderr.startswith("uet: error: ") and message in result.stderr, args
        assert len(result.stderr.splitlines()) == 1
    with Database(ledger) as db:
        assert rows(db) == before


def test_no_ledger_is_an_error_and_creates_nothing(tmp_path):
    path = tmp_path / "none" / "framework.db"
    result = uet("gc", "--db", str(path), "--older-than", "30d", cwd=tmp_path)
    assert result.returncode == 1 and "no ledger at" in result.stderr
    assert not path.parent.exists()


# -- under load, killed, resumed ----------------------------------------------------------------

def qualifying(runs: list[tuple], cutoff: str) -> set[str]:
    """The runs gc must remove: finished, ended (or without an end, created) before cutoff."""
    return {run_id for run_id, state, created, ended in runs
            if state not in ("pending", "running") and created < cutoff
            and (ended or created) < cutoff}


class Rows(dict):
    """Every row of every table of a SQLite ledger as tuples, in key order, but those of the
    writers' runs (project writer-*); `column(table, name)` is a column's place in them."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.names: dict[str, list[str]] = {}
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            writer_runs = {r[0] for r in conn.execute(
                "SELECT run_id FROM runs WHERE project_id LIKE 'writer-%'")}
            for table, key in KEYS.items():
                cursor = conn.execute(f"SELECT * FROM {table} ORDER BY {key}")
                self.names[table] = [d[0] for d in cursor.description]
                where = (self.column(table, "run_id")
                         if "run_id" in self.names[table] else None)
                self[table] = [row for row in cursor
                               if where is None or row[where] not in writer_runs]
        finally:
            conn.close()

    def column(self, table: str, name: str) -> int:
        return self.names[table].index(name)


def expected_rows(before: Rows, removed: set[str]) -> dict[str, list[tuple]]:
    """`before` without the rows of the removed runs, the deleted-seq mark raised past their
    events. Every row here names its run, or its patch entry (the bench's records)."""
    col = before.column
    patch_run = {p[0]: p[col("patches", "run_id")] for p in before["patches"]}
    entry_run = {e[0]: patch_run[e[col("patch_ledger_entries", "patch_id")]]
                 for e in before["patch_ledger_entries"]}
    gate_run = {g[0]: g[col("test_gates", "run_id")]
                or entry_run.get(g[col("test_gates", "ledger_id")])
                for g in before["test_gates"]}
    owner = {"runs": lambda r: r[0], "step_attempts": lambda r: r[1],
             "run_events": lambda r: r[1],
             "patches": lambda r: r[col("patches", "run_id")],
             "patch_ledger_entries": lambda r: entry_run[r[0]],
             "test_gates": lambda r: gate_run[r[0]],
             "gate_dependencies": lambda r: gate_run[r[0]]}
    after = {table: [row for row in table_rows
                     if table not in owner or owner[table](row) not in removed]
             for table, table_rows in before.items()}
    seq = col("run_events", "seq")
    deleted_seq = max([e[seq] for e in before["run_events"] if e[1] in removed], default=0)
    after["ledger_counters"] = [(name, max(value, deleted_seq)) if name == "deleted_event_seq"
                                else (name, value) for name, value in before["ledger_counters"]]
    return after


def start_writers(ledger: str, folder: Path) -> bench_gc.Writers:
    crew = bench_gc.Writers(ledger, 4, str(folder), "t")
    crew.start()
    return crew


def wait_for_progress(count, goal: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until count() <= goal (gc has deleted that far), the process still running."""
    deadline = time.monotonic() + timeout
    while count() > goal:
        assert proc.poll() is None, f"gc ended before the kill: {proc.communicate()}"
        assert time.monotonic() < deadline, "gc made no progress"
        time.sleep(0.02)


def check_writers(report: dict, ledger_rows) -> None:
    assert report["busy"] == 0, "a writer waited past its busy timeout"
    assert report["errors"] == [] and len(report["runs"]) > 20
    runs = ledger_rows(report["runs"])
    assert len(runs) == len(report["runs"]) and {r[1] for r in runs} == {"succeeded"}
    assert {r[2] for r in runs} == {6}  # every writer run still has all its events


def test_gc_of_a_big_sqlite_ledger_under_four_writers_killed_and_resumed(tmp_path):
    rng = random.Random(SEED)
    original = str(tmp_path / "original.db")
    build(original, 20_000, seed=SEED, days=365)
    bench_gc.add_records(original)
    cutoff = ago(30)
    before = Rows(original)
    runs = [tuple(r[before.column("runs", name)]
                  for name in ("run_id", "state", "created_at", "ended_at"))
            for r in before["runs"]]
    removed = qualifying(runs, cutoff)
    assert 15_000 < len(removed) < 20_000
    expected = expected_rows(before, removed)
    clean, live = (bench_gc.copy_ledger(original, str(tmp_path / name))
                   for name in ("clean.db", "live.db"))

    result = uet("gc", "--db", clean, "--older-than", cutoff, "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert Rows(clean) == expected  # a clean gc, no writers, never killed

    crew = start_writers(live, tmp_path)
    try:
        gc = subprocess.Popen([UET, "gc", "--db", live, "--older-than", cutoff, "--json"],
                              cwd=tmp_path, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            def count() -> int:
                conn = sqlite3.connect(f"file:{live}?mode=ro", uri=True, timeout=30)
                try:
                    return conn.execute("SELECT count(*) FROM runs WHERE project_id NOT "
                                        "LIKE 'writer-%'").fetchone()[0]
                finally:
                    conn.close()
            # once gc has deleted 2,000 runs, a seeded random moment later: SIGKILL
            wait_for_progress(count, 20_000 - 2_000, gc)
            time.sleep(rng.uniform(0.0, 1.0))  # the seeded kill moment, by design
            gc.kill()
        finally:
            gc.communicate(timeout=60)
        assert gc.returncode == -9
        left = count()
        assert 20_000 - len(removed) < left < 20_000 - 2_000, "not killed half way"

        again = uet("gc", "--db", live, "--older-than", cutoff, "--json", cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        second = json.loads(again.stdout)
        assert second["deleted"]["runs"] == left - (20_000 - len(removed))
    finally:
        report = crew.stop()

    def writer_runs(run_ids: list[str]) -> list[tuple]:
        conn = sqlite3.connect(live)
        try:
            return [conn.execute("SELECT run_id, state, (SELECT count(*) FROM run_events AS e "
                                 "WHERE e.run_id = r.run_id) FROM runs AS r WHERE run_id = ?",
                                 (run_id,)).fetchone() for run_id in run_ids]
        finally:
            conn.close()

    check_writers(report, writer_runs)
    assert Rows(live) == expected == Rows(clean)
    conn = sqlite3.connect(live)
    try:
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        # the writers' events all came after every seq the build handed out
        first = conn.execute("SELECT min(seq) FROM run_events AS e JOIN runs AS r ON "
                             "r.run_id = e.run_id WHERE r.project_id LIKE 'writer-%'")
        assert first.fetchone()[0] > max(e[-1] for e in before["run_events"])
    finally:
        conn.close()


def test_gc_of_a_postgresql_ledger_under_four_writers_killed_and_resumed(postgres_url,
                                                                         tmp_path):
    import psycopg
    rng = random.Random(SEED)
    source = str(tmp_path / "source.db")
    build(source, 4_000, seed=SEED, days=365)
    bench_gc.add_records(source)
    bench_gc.copy_to_postgres(source, postgres_url)
    cutoff = ago(30)
    with Database(postgres_url) as db:
        before = rows(db)
    removed = {r["run_id"] for r in before["runs"] if r["state"] not in ("pending", "running")
               and (r["ended_at"] or r["created_at"]) < cutoff and r["created_at"] < cutoff}
    assert 3_000 < len(removed) < 4_000

    def count() -> int:
        with psycopg.connect(postgres_url) as conn:
            return conn.execute("SELECT count(*) FROM runs WHERE project_id NOT LIKE "
                                "'writer-%'").fetchone()[0]

    crew = start_writers(postgres_url, tmp_path)
    try:
        gc = subprocess.Popen([UET, "gc", "--db", postgres_url, "--older-than", cutoff,
                               "--batch", "50", "--json"], cwd=tmp_path,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
        try:
            wait_for_progress(count, 4_000 - 300, gc)
            time.sleep(rng.uniform(0.0, 0.3))  # the seeded kill moment, by design
            gc.kill()
        finally:
            gc.communicate(timeout=60)
        assert gc.returncode == -9
        left = count()
        assert 4_000 - len(removed) < left < 4_000 - 300, "not killed half way"
        again = uet("gc", "--db", postgres_url, "--older-than", cutoff, "--json", cwd=tmp_path)
        assert again.returncode == 0, again.stderr
    finally:
        report = crew.stop()

    with Database(postgres_url) as db:
        after = rows(db)

        def writer_runs(run_ids: list[str]) -> list[tuple]:
            return [(run_id, db.get_run(run_id)["state"], len(db.list_events(run_id)))
                    for run_id in run_ids]

        check_writers(report, writer_runs)
        orphans = db.backend.query(
            "SELECT (SELECT count(*) FROM step_attempts AS s WHERE NOT EXISTS (SELECT 1 FROM "
            "runs AS r WHERE r.run_id = s.run_id)) + (SELECT count(*) FROM run_events AS e "
            "WHERE NOT EXISTS (SELECT 1 FROM runs AS r WHERE r.run_id = e.run_id)) AS n")
        assert orphans == [{"n": 0}]
    writers = {r["run_id"] for r in after["runs"] if r["project_id"].startswith("writer-")}
    assert writers == set(report["runs"])
    # every row but the writers' is what the rules leave of the ledger before gc
    patch_run = {p["patch_id"]: p["run_id"] for p in before["patches"]}
    entry_run = {e["ledger_id"]: patch_run[e["patch_id"]] for e in before["patch_ledger_entries"]}
    gate_run = {g["gate_id"]: g["run_id"] or entry_run.get(g["ledger_id"])
                for g in before["test_gates"]}
    owner = {"runs": lambda r: r["run_id"], "step_attempts": lambda r: r["run_id"],
             "run_events": lambda r: r["run_id"], "patches": lambda r: r["run_id"],
             "patch_ledger_entries": lambda r: entry_run[r["ledger_id"]],
             "test_gates": lambda r: gate_run[r["gate_id"]],
             "gate_dependencies": lambda r: gate_run[r["gate_id"]]}
    for table, of in owner.items():
        assert [r for r in after[table] if of(r) not in writers] == [
            r for r in before[table] if of(r) not in removed], table

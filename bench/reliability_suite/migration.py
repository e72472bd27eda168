"""Check 4: upgrades cut short. Ledgers at each older schema version (the seed's original,
version-less one included), full of rows, are upgraded by a process killed with SIGKILL at
a random instant; reopened, each must be wholly at one schema version with every row."""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from reliability_suite.common import (Mode, Result, connect_raw, copy_ledger, integrity_ok,
                                      logical_snapshot, spawn)

# The seed's original implementation created exactly this (no version table).
SEED_DDL = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    phase_id TEXT NOT NULL,
    workstream_id TEXT,
    execution_request_id TEXT,
    created_at TEXT NOT NULL,
    started_at TEXT,
    ended_at TEXT,
    state TEXT NOT NULL CHECK(state IN (
        'pending', 'running', 'succeeded', 'failed',
        'quarantined', 'canceled'
    )),
    exit_code INTEGER,
    error_message TEXT,
    metadata TEXT
);
CREATE TABLE IF NOT EXISTS step_attempts (
    step_attempt_id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    tool_id TEXT NOT NULL,
    tool_run_id TEXT,
    execution_request_id TEXT,
    prompt_id TEXT,
    started_at TEXT NOT NULL,
    ended_at TEXT,
    state TEXT NOT NULL CHECK(state IN (
        'running', 'succeeded', 'failed', 'canceled'
    )),
    exit_code INTEGER,
    input_prompt TEXT,
    output_patch_id TEXT,
    error_log TEXT,
    metadata TEXT,
    FOREIGN KEY(run_id) REFERENCES runs(run_id)
);
CREATE TABLE IF NOT EXISTS run_events (
    event_id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    event_type TEXT NOT NULL,
    data TEXT,
    FOREIGN KEY(run_id) REFERENCES runs(run_id)
);
CREATE INDEX IF NOT EXISTS idx_runs_project ON runs(project_id);
CREATE INDEX IF NOT EXISTS idx_runs_state ON runs(state);
CREATE INDEX IF NOT EXISTS idx_steps_run ON step_attempts(run_id);
CREATE INDEX IF NOT EXISTS idx_events_run ON run_events(run_id);
"""

def fill_seed(conn: sqlite3.Connection, runs: int) -> None:
    """Rows as the seed wrote them: naive timestamps, text metadata that is not JSON, and
    steps and events of runs that do not exist (the seed never enforced foreign keys)."""
    for i in range(runs):
        run_id = f"seed-run-{i:06d}"
        conn.execute("INSERT INTO runs (run_id, project_id, phase_id, created_at, state, "
                     "metadata) VALUES (?, 'p', 'ph', ?, ?, ?)",
                     (run_id, f"2025-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}",
                      ("pending", "running", "succeeded", "failed")[i % 4],
                      json.dumps({"i": i}) if i % 3 else "plain text, not JSON"))
        for seq in (1, 2):
            conn.execute("INSERT INTO step_attempts (step_attempt_id, run_id, sequence, "
                         "tool_id, started_at, state) VALUES (?, ?, ?, 'aider', ?, 'running')",
                         (f"{run_id}-s{seq}", run_id if i % 50 else f"gone-{i}", seq,
                          "2025-01-01 00:00:00"))
        for n in range(3):
            conn.execute("INSERT INTO run_events (event_id, run_id, timestamp, event_type, "
                         "data) VALUES (?, ?, ?, 'note', ?)",
                         (f"{run_id}-e{n}", run_id if i % 40 else f"gone-{i}",
                          "2025-01-01T00:00:00+00:00", json.dumps({"n": n})))


def make_ledger_at(path: str, version: int, runs: int) -> None:
    """A ledger at an older schema `version` (>= 1), built by that version's migrations,
    with rows."""
    from uet.state.backends.sqlite_schema import MIGRATIONS
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    for migration in MIGRATIONS[:version]:
        for statement in migration.statements():
            conn.execute(statement)
        conn.execute("INSERT INTO schema_migrations VALUES (?, ?, '2025-01-01T00:00:00Z')",
                     (migration.version, migration.name))
    seq = 0
    for i in range(runs):
        run_id = f"v{version}-run-{i:06d}"
        conn.execute("INSERT INTO runs (run_id, project_id, phase_id, created_at, state, "
                     "metadata) VALUES (?, 'p', 'ph', '2025-01-01T00:00:00.000000Z', ?, ?)",
                     (run_id, ("pending", "running", "succeeded", "failed")[i % 4],
                      json.dumps({"i": i})))
        for n in (1, 2):
            conn.execute("INSERT INTO step_attempts (step_attempt_id, run_id, sequence, "
                         "tool_id, started_at, state) VALUES (?, ?, ?, 't', "
                         "'2025-01-01T00:00:00.000000Z', 'running')",
                         (f"{run_id}-s{n}", run_id, n))
        for n in range(3):
            seq += 1
            conn.execute("INSERT INTO run_events (event_id, run_id, timestamp, event_type, "
                         "data, seq) VALUES (?, ?, '2025-01-01T00:00:00.000000Z', 'note', ?, ?)",
                         (f"{run_id}-e{n}", run_id, json.dumps({"n": n}), seq))
    conn.execute("COMMIT")
    conn.close()


def make_seed_ledger(path: str, runs: int = 0) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(SEED_DDL)
    fill_seed(conn, runs)
    conn.commit()
    conn.close()


def schema_of(path: str) -> str:
    """Every schema object's definition, with the recorded versions."""
    conn = connect_raw(path)
    try:
        objects = conn.execute("SELECT type, name, sql FROM sqlite_master "
                               "ORDER BY type, name").fetchall()
        versions = []
        if any(name == "schema_migrations" for _, name, _ in objects):
            versions = [r[0] for r in conn.execute(
                "SELECT version FROM schema_migrations ORDER BY version")]
        return json.dumps([objects, versions])
    finally:
        conn.close()


def upgraded_to(template: str, version: int, target: str) -> None:
    """`template` upgraded to exactly `version`, in this process (a reference)."""
    from uet.state import Database
    from uet.state.backends import sqlite_schema as sqlite_migrations
    copy_ledger(template, target)
    everything = sqlite_migrations.MIGRATIONS
    sqlite_migrations.MIGRATIONS = everything[:version]
    try:
        Database(target).close()
    finally:
        sqlite_migrations.MIGRATIONS = everything


def _timed_upgrade(template: str, victim: str) -> float:
    """Seconds from "go" to the end of an upgrade in a child process, undisturbed."""
    copy_ledger(template, victim)
    with spawn("migrate", victim, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
               text=True) as child:
        child.stdout.readline()
        began = time.monotonic()
        child.stdin.write("go\n")
        child.stdin.flush()
        child.stdout.readline()
        return time.monotonic() - began


def run(mode: Mode, workdir: Path, mutant: str | None, rng: random.Random) -> Result:
    from uet.state import Database
    from uet.state.backends.sqlite_schema import LATEST_VERSION
    result = Result("migration")
    kills = cut_short = half = lost = corrupt = 0
    for start in range(LATEST_VERSION):
        template = str(workdir / f"at-{start}.db")
        if start == 0:
            make_seed_ledger(template, runs=3000)
        else:
            make_ledger_at(template, start, runs=3000)
        # what the file may look like: untouched, or upgraded to any later version
        allowed = {schema_of(template)}
        for version in range(start + 1, LATEST_VERSION + 1):
            reference = str(workdir / f"reference-{start}-{version}.db")
            upgraded_to(template, version, reference)
            allowed.add(schema_of(reference))
        final_schema, final_rows = schema_of(reference), logical_snapshot(reference)
        victim = str(workdir / "victim.db")
        window = _timed_upgrade(template, victim)
        for _ in range(mode.migration_kills):
            copy_ledger(template, victim)
            with spawn("migrate", victim, mutant=mutant, stdin=subprocess.PIPE,
                       stdout=subprocess.PIPE, text=True) as child:
                if child.stdout.readline() != "ready\n":
                    raise RuntimeError("the upgrading process did not start")
                child.stdin.write("go\n")
                child.stdin.flush()
                time.sleep(rng.uniform(0.0, window))
                child.send_signal(signal.SIGKILL)
                child.stdout.read()
            kills += 1
            if not integrity_ok(victim):
                corrupt += 1
                continue
            found = schema_of(victim)
            cut_short += found != final_schema
            broken = found not in allowed
            try:
                Database(victim).close()  # reopening finishes the upgrade
            except Exception as exc:  # counted: a killed upgrade must never block a reopen
                broken = True
                result.details.append(f"from version {start}: reopen failed: {exc}")
            else:
                broken = broken or schema_of(victim) != final_schema
                # every row, as an undisturbed upgrade leaves it
                if logical_snapshot(victim) != final_rows:
                    lost += 1
                    result.details.append(f"from version {start}: rows differ from an "
                                          "undisturbed upgrade")
            half += broken
    result.add("upgrades killed at a random instant", kills, zero=False,
               note=f"from versions 0..{LATEST_VERSION - 1}, 3,000 runs each")
    result.add("killed while the upgrade was under way", cut_short, zero=False,
               note="left below the latest version")
    result.add("half-migrated ledgers", half, "half_migrated")
    result.add("ledgers with rows lost or changed", lost, "lost")
    result.add("corrupted ledgers", corrupt, "corrupt")
    return result

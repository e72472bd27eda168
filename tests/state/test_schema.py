"""The schema itself: seed tables and columns, CHECK constraints, foreign keys, indices, pragmas."""

from __future__ import annotations

import re
import sqlite3

import pytest

from uet.state import init_db
from uet.state.backends.sqlite import QUERIES
from uet.state.backends.sqlite_schema import SEED_COLUMNS


@pytest.fixture
def raw(file_db):
    """A plain sqlite3 connection to a fresh ledger file, foreign keys on."""
    conn = sqlite3.connect(file_db.db_path)
    conn.execute("PRAGMA foreign_keys=ON")
    yield conn
    conn.close()


def columns(conn, table):
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def test_seed_tables_keep_every_seed_column_in_order(raw):
    for table, seed in SEED_COLUMNS.items():
        assert columns(raw, table)[:len(seed)] == list(seed)
    assert len(SEED_COLUMNS["runs"]) == 12 and len(SEED_COLUMNS["step_attempts"]) == 15
    assert len(SEED_COLUMNS["run_events"]) == 5
    assert columns(raw, "runs")[12:] == ["worker_id", "priority", "recoveries"]
    assert columns(raw, "step_attempts")[15:] == ["attempt", "worker_id", "task_id", "model",
                                                   "input_tokens", "output_tokens", "cost_usd"]
    assert columns(raw, "run_events")[5:] == ["seq"]


def test_named_indices_exist(raw):
    names = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"idx_runs_project", "idx_runs_state", "idx_steps_run", "idx_events_run"} <= names


def _check(expression: str) -> str:
    """SQLite's words for an unnamed CHECK that refused a write: its expression as written
    (line breaks included)."""
    return "^CHECK constraint failed: " + r"\s+".join(re.escape(w) for w in expression.split())


RUN_STATE = _check("state IN ( 'pending', 'running',")
FOREIGN_KEY = "^FOREIGN KEY constraint failed$"


@pytest.mark.parametrize("sql, constraint", [
    ("INSERT INTO runs (run_id, project_id, phase_id, created_at, state) "
     "VALUES ('r', 'p', 'ph', 't', 'finished')", RUN_STATE),
    ("INSERT INTO runs (run_id, project_id, phase_id, created_at, state, metadata) "
     "VALUES ('r', 'p', 'ph', 't', 'pending', 'not json')",
     _check("metadata IS NULL OR json_valid(metadata)")),
    ("INSERT INTO runs (run_id, project_id, phase_id, created_at) VALUES ('r', NULL, 'ph', 't')",
     r"^NOT NULL constraint failed: runs\.project_id$"),
    ("INSERT INTO step_attempts (step_attempt_id, run_id, sequence, tool_id, started_at, state) "
     "VALUES ('s', 'r0', 1, 't', 'x', 'paused')", _check("state IN ( 'running', 'succeeded',")),
    ("INSERT INTO step_attempts (step_attempt_id, run_id, sequence, tool_id, started_at, "
     "attempt) VALUES ('s', 'r0', 1, 't', 'x', 0)", _check("attempt >= 1")),
    ("INSERT INTO step_attempts (step_attempt_id, run_id, sequence, tool_id, started_at) "
     "VALUES ('s', 'ghost', 1, 't', 'x')", FOREIGN_KEY),
    ("INSERT INTO run_events (event_id, run_id, timestamp, event_type, seq) "
     "VALUES ('e', 'ghost', 't', 'x', 99)", FOREIGN_KEY),
    ("INSERT INTO run_events (event_id, run_id, timestamp, event_type, data, seq) "
     "VALUES ('e', 'r0', 't', 'x', '{', 99)", _check("data IS NULL OR json_valid(data)")),
    ("UPDATE runs SET state = 'done' WHERE run_id = 'r0'", RUN_STATE),
])
def test_constraints_hold_at_the_sql_level(raw, sql, constraint):
    raw.execute("INSERT INTO runs (run_id, project_id, phase_id, created_at) "
                "VALUES ('r0', 'p', 'ph', 't')")
    with pytest.raises(sqlite3.IntegrityError, match=constraint):
        raw.execute(sql)


def test_foreign_keys_cascade_on_delete(raw):
    raw.execute("INSERT INTO runs (run_id, project_id, phase_id, created_at) "
                "VALUES ('r0', 'p', 'ph', 't')")
    raw.execute("INSERT INTO step_attempts (step_attempt_id, run_id, sequence, tool_id, "
                "started_at) VALUES ('s', 'r0', 1, 't', 'x')")
    raw.execute("INSERT INTO run_events (event_id, run_id, timestamp, event_type, seq) "
                "VALUES ('e', 'r0', 't', 'x', 1)")
    raw.execute("DELETE FROM runs WHERE run_id = 'r0'")
    assert raw.execute("SELECT count(*) FROM step_attempts").fetchone()[0] == 0
    assert raw.execute("SELECT count(*) FROM run_events").fetchone()[0] == 0


def test_every_connection_has_wal_foreign_keys_and_busy_timeout(file_db):
    conn = file_db._backend.connect()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 10_000


def test_full_durability_sets_synchronous_full(db_path):
    with init_db(db_path, durability="full", busy_timeout=2.5) as db:
        conn = db._backend.connect()
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 2500
        db.create_run({"project_id": "p", "phase_id": "ph"})


def test_in_memory_ledger_enforces_foreign_keys(in_memory_db):
    conn = in_memory_db._backend.connect()
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1


@pytest.mark.parametrize("sql, params, index", [
    ("SELECT * FROM runs WHERE project_id = ? AND state = ? "
     "ORDER BY created_at DESC, run_id DESC LIMIT 100", ("p", "pending"), "idx_runs_project_state"),
    ("SELECT * FROM runs WHERE project_id = ? ORDER BY created_at DESC, run_id DESC LIMIT 100",
     ("p",), "idx_runs_project"),
    ("SELECT * FROM runs WHERE state = ? ORDER BY created_at DESC, run_id DESC LIMIT 100",
     ("running",), "idx_runs_state"),
    ("SELECT * FROM runs ORDER BY created_at DESC, run_id DESC LIMIT 100", (),
     "idx_runs_created"),
    # the dashboard's filters, keyset pages and capped counts
    ("SELECT * FROM runs WHERE phase_id = ? ORDER BY created_at DESC, run_id DESC LIMIT 51",
     ("PH",), "idx_runs_phase"),
    ("SELECT * FROM runs WHERE workstream_id = ? AND (created_at, run_id) < (?, ?) "
     "ORDER BY created_at DESC, run_id DESC LIMIT 51", ("WS", "t", "r"), "idx_runs_workstream"),
    ("SELECT * FROM runs WHERE workstream_id = ? AND state = ? "
     "ORDER BY created_at DESC, run_id DESC LIMIT 51", ("WS", "failed"),
     "idx_runs_workstream_state"),
    ("SELECT count(*) AS n FROM (SELECT 1 FROM runs WHERE phase_id = ? AND state = ? "
     "AND created_at >= ? LIMIT ?) AS capped", ("PH", "failed", "t", 10_000),
     "idx_runs_phase_state"),
    ("SELECT * FROM runs WHERE (created_at, run_id) < (?, ?) "
     "ORDER BY created_at DESC, run_id DESC LIMIT 51", ("t", "r"), "idx_runs_created"),
    (QUERIES["list_events"], ("r",), "idx_events_run"),
    (QUERIES["events_since"], (0, 10), "idx_events_seq"),
    (QUERIES["events_since_run"], ("r", 0, 10), "idx_events_run"),
    (QUERIES["list_step_attempts"], ("r",), "idx_steps_run"),
    (QUERIES["oldest_pending_run"], (), "idx_runs_state"),
    (QUERIES["workers_by_state"], ("IDLE",), "idx_workers_state"),
    (QUERIES["idle_workers_of_type"], ("testing",), "idx_workers_type"),
    (QUERIES["patch_entries_by_state"], ("created",), "idx_patch_entries_state"),
    (QUERIES["patch_entries_by_state_and_phase"], ("created", "PH"), "idx_patch_entries_phase"),
])
def test_api_queries_use_an_index_and_never_sort_or_scan(raw, sql, params, index):
    plan = " | ".join(r[3] for r in raw.execute("EXPLAIN QUERY PLAN " + sql, params))
    assert index in plan, plan
    assert "TEMP B-TREE" not in plan and not plan.startswith("SCAN runs |"), plan


def test_list_runs_queries_are_the_ones_checked_above(file_db):
    from uet.state.statements import count_runs_sql, list_runs_sql as _list_runs_sql
    assert _list_runs_sql((("project_id", False), ("state", False)), False, "?") == (
        "SELECT * FROM runs WHERE project_id = ? AND state = ? "
        "ORDER BY created_at DESC, run_id DESC LIMIT ?")
    assert _list_runs_sql((("workstream_id", False),), False, "?", True) == (
        "SELECT * FROM runs WHERE workstream_id = ? AND (created_at, run_id) < (?, ?) "
        "ORDER BY created_at DESC, run_id DESC LIMIT ?")
    assert count_runs_sql((("phase_id", False), ("state", False)), True, "?") == (
        "SELECT count(*) AS n FROM (SELECT 1 FROM runs WHERE phase_id = ? AND state = ? "
        "AND created_at >= ? LIMIT ?) AS capped")

"""Schema versions: fresh creation, adoption of the seed's ledger, refusal of what is not ours."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from reliability_suite.migration import SEED_DDL, make_seed_ledger
from uet.errors import MigrationError, NotALedgerError, SchemaVersionError
from uet.state import LATEST_VERSION, Database, init_db
from uet.state.sqlfiles import load_migrations, load_queries, split_statements

HELPERS = str(Path(__file__).parent.parent / "helpers.py")


def schema_of(path: str) -> list[tuple]:
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master "
                        "ORDER BY type, name").fetchall()
    conn.close()
    return rows


def digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fill_seed_ledger(path: str) -> dict:
    """Rows as the seed's original code wrote them (naive timestamps, JSON text)."""
    conn = sqlite3.connect(path)
    runs = [("run-a", "P1", "PH1", "WS1", "ER1", "2025-11-23T11:38:49.896000", None, None,
             "pending", None, None, json.dumps({"k": 1})),
            ("run-b", "P1", "PH2", None, None, "2025-11-23T11:40:00", "2025-11-23T11:40:01",
             "2025-11-23T11:41:00", "failed", 2, "boom", json.dumps({})),
            ("run-c", "P2", "PH1", None, None, "2025-11-23T12:00:00", None, None, "running",
             None, None, None)]
    conn.executemany("INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", runs)
    steps = [("s1", "run-b", 1, "aider", "TR1", "ER1", "P1", "2025-11-23T11:40:02",
              "2025-11-23T11:40:30", "failed", 1, "prompt", None, "log", json.dumps({"a": 1})),
             ("s2", "run-b", 1, "aider", None, None, None, "2025-11-23T11:40:31", None,
              "succeeded", 0, None, "patch-1", None, json.dumps({})),
             ("s3", "run-c", 1, "pytest", None, None, None, "2025-11-23T12:00:01", None,
              "running", None, None, None, None, None)]
    conn.executemany("INSERT INTO step_attempts VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", steps)
    events = [("e3", "run-b", "2025-11-23T11:40:05", "later", json.dumps({"n": 3})),
              ("e1", "run-b", "2025-11-23T11:40:01", "started", json.dumps({"n": 1})),
              ("e2", "run-b", "2025-11-23T11:40:01", "same-time", json.dumps({"n": 2})),
              ("e4", "run-a", "2025-11-23T11:38:50", "created", None)]
    conn.executemany("INSERT INTO run_events VALUES (?,?,?,?,?)", events)
    conn.commit()
    conn.close()
    return {"runs": runs, "steps": steps, "events": events}


def test_fresh_ledger_is_at_the_latest_version(file_db, in_memory_db):
    assert file_db.schema_version() == LATEST_VERSION == in_memory_db.schema_version()
    conn = sqlite3.connect(file_db.db_path)
    rows = conn.execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall()
    conn.close()
    assert rows == [(m.version, m.name) for m in load_migrations("sqlite")]


def test_reopening_applies_nothing_twice(db_path):  # PostgreSQL: tests/state/test_postgres.py
    init_db(db_path).close()
    before = schema_of(db_path)
    with init_db(db_path) as db:
        assert db.migrate() == (LATEST_VERSION, LATEST_VERSION)
    assert schema_of(db_path) == before


def test_seed_ledger_is_adopted_with_every_row(db_path):
    Path(db_path).parent.mkdir(parents=True)
    make_seed_ledger(db_path)
    rows = fill_seed_ledger(db_path)
    with Database(db_path) as db:
        assert db.schema_version() == LATEST_VERSION
        a = db.get_run("run-a")
        # timestamps move to the ledger's one format (the seed wrote naive local ISO text)
        assert a["metadata"] == {"k": 1} and a["created_at"] == "2025-11-23T11:38:49.896000Z"
        b = db.get_run("run-b")
        assert (b["state"], b["exit_code"], b["error_message"], b["ended_at"]) == (
            "failed", 2, "boom", "2025-11-23T11:41:00.000000Z")
        assert db.get_run("run-c")["metadata"] == {}
        assert len(db.list_runs(limit=None)) == len(rows["runs"])
        steps = db.list_step_attempts("run-b")
        assert [(s["step_attempt_id"], s["attempt"]) for s in steps] == [("s1", 1), ("s2", 2)]
        assert steps[0]["input_prompt"] == "prompt" and steps[1]["output_patch_id"] == "patch-1"
        assert [e["event_id"] for e in db.list_events("run-b")] == ["e1", "e2", "e3"]
        assert [e["seq"] for e in db.events_since(0)] == [1, 2, 3, 4]
        # the adopted ledger works like any other, machine included
        assert db.transition_run("run-b", "quarantined")["state"] == "quarantined"
        new = db.create_event({"run_id": "run-a", "event_type": "after"})
        assert db.list_events("run-a")[-1]["event_id"] == new
        db.delete_run("run-b")
        assert db.get_step_attempt("s1") is None
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    conn.close()


def test_adopted_seed_ledger_has_the_schema_of_a_fresh_one(tmp_path):
    fresh, adopted = str(tmp_path / "fresh.db"), str(tmp_path / "adopted.db")
    init_db(fresh).close()
    make_seed_ledger(adopted)
    fill_seed_ledger(adopted)
    init_db(adopted).close()
    assert schema_of(adopted) == schema_of(fresh)
    assert not [r for r in schema_of(adopted) if "_uet_seed" in (r[1] + (r[3] or ""))]


def test_empty_seed_ledger_is_adopted_too(db_path):
    Path(db_path).parent.mkdir(parents=True)
    make_seed_ledger(db_path)
    with Database(db_path) as db:
        assert db.schema_version() == LATEST_VERSION and db.list_runs() == []


def test_seed_rows_of_missing_runs_are_kept_beside_the_ledger(db_path):
    """The seed never enforced foreign keys; such rows are kept, outside the checked tables."""
    Path(db_path).parent.mkdir(parents=True)
    make_seed_ledger(db_path)
    fill_seed_ledger(db_path)
    conn = sqlite3.connect(db_path)
    conn.execute("INSERT INTO run_events VALUES ('orphan', 'no-such-run', 't', 'x', NULL)")
    conn.execute("INSERT INTO step_attempts (step_attempt_id, run_id, sequence, tool_id, "
                 "started_at, state) VALUES ('lost', 'gone', 1, 't', 'x', 'running')")
    conn.commit()
    conn.close()
    with Database(db_path) as db:
        assert len(db.events_since(0)) == 4 and db.get_step_attempt("lost") is None
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT event_id, run_id FROM seed_orphan_run_events").fetchall() == [
        ("orphan", "no-such-run")]
    assert conn.execute("SELECT step_attempt_id FROM seed_orphan_step_attempts").fetchall() == [
        ("lost",)]
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    conn.close()


def test_seed_text_that_is_not_json_is_kept_inside_json(db_path):
    Path(db_path).parent.mkdir(parents=True)
    make_seed_ledger(db_path)
    conn = sqlite3.connect(db_path)
    conn.execute("INSERT INTO runs (run_id, project_id, phase_id, created_at, state, metadata) "
                 "VALUES ('r', 'p', 'ph', 'not a time', 'pending', 'plain words')")
    conn.commit()
    conn.close()
    with Database(db_path) as db:
        run = db.get_run("r")
        assert run["metadata"] == {"seed_text": "plain words"}
        assert run["created_at"] == "not a time"  # kept as it was when it is no timestamp


def test_failed_adoption_leaves_the_file_exactly_as_it_was(db_path):
    Path(db_path).parent.mkdir(parents=True)
    make_seed_ledger(db_path)
    fill_seed_ledger(db_path)
    conn = sqlite3.connect(db_path)
    # SQLite lets a TEXT PRIMARY KEY be NULL; the ledger does not
    conn.execute("INSERT INTO runs (run_id, project_id, phase_id, created_at, state) "
                 "VALUES (NULL, 'p', 'ph', 't', 'pending')")
    conn.commit()
    conn.close()
    before = digest(db_path)
    with pytest.raises(MigrationError, match=f"^could not apply migration 0001_initial to "
                                             f"{re.escape(db_path)}: NOT NULL constraint failed: "
                                             r"runs\.run_id; the ledger was left as it was$"):
        Database(db_path)
    assert digest(db_path) == before
    assert sorted(p.name for p in Path(db_path).parent.iterdir()) == ["framework.db"]


def test_newer_schema_is_refused_and_left_untouched(db_path):
    init_db(db_path).close()
    conn = sqlite3.connect(db_path)
    conn.execute("INSERT INTO schema_migrations VALUES (?, 'from_the_future', 'now')",
                 (LATEST_VERSION + 1,))
    conn.commit()
    conn.close()
    before = digest(db_path)
    with pytest.raises(SchemaVersionError, match=f"^ledger {re.escape(db_path)} has schema "
                                                 f"version {LATEST_VERSION + 1}, newer than this "
                                                 f"uet understands .*; upgrade uet to open it"):
        Database(db_path)
    assert digest(db_path) == before


def test_file_that_is_not_sqlite_is_refused_untouched(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("this is not a database\n" * 100)
    before = digest(str(path))
    with pytest.raises(NotALedgerError,
                       match=f"^{re.escape(str(path))} is not a SQLite database, so not a uet "):
        Database(str(path))
    assert digest(str(path)) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_sqlite_file_of_another_application_is_refused_untouched(tmp_path):
    path = str(tmp_path / "other.db")
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.commit()
    conn.close()
    before = digest(path)
    with pytest.raises(NotALedgerError, match=rf"^{re.escape(path)} is a SQLite database but "
                                              r"not a uet ledger \(it holds: table customers\)"):
        Database(path)
    assert digest(path) == before
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()


def test_another_applications_migration_table_is_not_taken_for_ours(tmp_path):
    path = str(tmp_path / "other.db")
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, dirty BOOL)")
    conn.execute("INSERT INTO schema_migrations VALUES (1, 0)")
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()
    before = digest(path)
    with pytest.raises(NotALedgerError, match=rf"^{re.escape(path)} has a schema_migrations "
                                              r"table but is not a uet ledger \(its tables: "
                                              r"schema_migrations, users\)"):
        Database(path)
    assert digest(path) == before


def test_database_of_views_only_is_not_empty(tmp_path):
    path = str(tmp_path / "views.db")
    conn = sqlite3.connect(path)
    conn.execute("CREATE VIEW answer AS SELECT 42")
    conn.commit()
    conn.close()
    before = digest(path)
    with pytest.raises(NotALedgerError, match=rf"^{re.escape(path)} is a SQLite database but "
                                              r"not a uet ledger \(it holds: view answer\)"):
        Database(path)
    assert digest(path) == before


def test_table_named_like_ours_with_other_columns_is_refused(tmp_path):
    path = str(tmp_path / "odd.db")
    conn = sqlite3.connect(path)
    conn.executescript(SEED_DDL.replace("error_message TEXT,", "error_text TEXT,"))
    conn.close()
    with pytest.raises(NotALedgerError, match=rf"^{re.escape(path)} has a runs table whose "
                                              r"columns \(.*error_text.*\) are not those of a "
                                              "uet ledger"):
        Database(path)


def test_concurrent_openers_of_a_new_ledger_migrate_once(ledger, tmp_path):
    """Six processes open one new ledger at once (on PostgreSQL the ledger's advisory lock
    serialises them): each migration is applied once."""
    go = str(tmp_path / "go")
    procs = [subprocess.Popen([sys.executable, HELPERS, "open", ledger, go],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(6)]
    Path(go).touch()
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, outputs
    assert [out.strip() for out, _ in outputs] == [str(LATEST_VERSION)] * 6
    with Database(ledger) as db:
        assert db._backend.query_value("SELECT count(*) FROM schema_migrations") == \
            LATEST_VERSION


def test_concurrent_openers_of_a_seed_ledger_adopt_it_once(db_path, tmp_path):
    Path(db_path).parent.mkdir(parents=True)
    make_seed_ledger(db_path)
    fill_seed_ledger(db_path)
    go = str(tmp_path / "go")
    procs = [subprocess.Popen([sys.executable, HELPERS, "open", db_path, go],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    Path(go).touch()
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outputs
    with Database(db_path) as db:
        assert len(db.list_runs(limit=None)) == 3 and len(db.events_since(0)) == 4


def test_split_statements_keeps_semicolons_inside_literals_and_triggers():
    script = """
    -- a comment; with a semicolon
    CREATE TABLE t (x TEXT DEFAULT ';');
    CREATE TRIGGER tr AFTER INSERT ON t BEGIN
        UPDATE t SET x = 'a;b';
    END;
    INSERT INTO t VALUES ('--not a comment');
    """
    statements = split_statements(script)
    assert len(statements) == 3
    assert statements[1].rstrip().endswith("END;")
    with pytest.raises(RuntimeError, match="^incomplete SQL statement at the end of a script: "
                                           r"'CREATE TABLE t \(x'$"):
        split_statements("CREATE TABLE t (x")


def test_migrations_and_queries_load():
    migrations = load_migrations("sqlite")
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    queries = load_queries("sqlite")
    assert {"insert_run", "insert_event", "events_since"} <= set(queries)
    assert all(sqlite3.complete_statement(q) and split_statements(q) == [q]
               for q in queries.values())


def test_both_engines_have_the_same_migrations_and_queries():
    """PostgreSQL's migrations carry the same numbers and names as SQLite's (so a version
    means the same schema on both), and every named query exists on both."""
    assert ([(m.version, m.name) for m in load_migrations("postgresql")]
            == [(m.version, m.name) for m in load_migrations("sqlite")])
    assert set(load_queries("postgresql")) == set(load_queries("sqlite"))


def make_v1_ledger(path: str) -> None:
    """A ledger exactly as version 1 left it (the core tables only), with rows."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    for statement in load_migrations("sqlite")[0].statements():
        conn.execute(statement)
    conn.execute("INSERT INTO schema_migrations VALUES (1, 'initial', '2026-01-01T00:00:00Z')")
    conn.execute("INSERT INTO runs (run_id, project_id, phase_id, created_at, state, metadata) "
                 "VALUES ('r1', 'P', 'PH', '2026-01-01T00:00:00.000000Z', 'running', '{\"a\":1}')")
    conn.execute("INSERT INTO step_attempts (step_attempt_id, run_id, sequence, tool_id, "
                 "started_at) VALUES ('s1', 'r1', 1, 'aider', '2026-01-01T00:00:01.000000Z')")
    conn.execute("INSERT INTO run_events (event_id, run_id, timestamp, event_type, data, seq) "
                 "VALUES ('e1', 'r1', '2026-01-01T00:00:02.000000Z', 'note', '{}', 1)")
    conn.execute("COMMIT")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()


def test_version_1_ledger_is_upgraded_with_its_rows(db_path):
    Path(db_path).parent.mkdir(parents=True)
    make_v1_ledger(db_path)
    with Database(db_path) as db:
        assert db.schema_version() == LATEST_VERSION == 6
        run = db.get_run("r1")
        assert (run["state"], run["metadata"], run["worker_id"]) == ("running", {"a": 1}, None)
        assert db.get_step_attempt("s1")["worker_id"] is None
        assert [e["event_id"] for e in db.events_since(0)] == ["e1"]
        assert db.create_event({"run_id": "r1", "event_type": "after"})
        assert db.events_since(0)[-1]["seq"] == 2
    fresh = str(Path(db_path).parent / "fresh.db")
    init_db(fresh).close()
    assert schema_of(db_path) == schema_of(fresh)

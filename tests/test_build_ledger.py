"""bench/build_ledger.py builds ledgers that uet accepts as its own: the right counts, a clean
doctor, no foreign key violation, and rows the API reads back in order."""

from __future__ import annotations

import re
import sqlite3

import pytest

from build_ledger import build  # bench/ is on sys.path (conftest.py)
from uet.state import Database
from uet.state.health import problems
from uet.state.machines import RUN, STEP_ATTEMPT

ULID = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")
STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
RUNS = 2_000


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("built") / "ledger.db")
    return path, build(path, RUNS, steps_per_run=3, events_per_run=4, seed=7)


def test_counts_match_the_file(built):
    path, counts = built
    assert counts["runs"] == RUNS
    with sqlite3.connect(path) as conn:
        for table in ("runs", "step_attempts", "run_events"):
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == counts[table]
        assert counts["step_attempts"] >= RUNS  # most runs got at least one attempt
        # every run has its run.created event, and no more than 4 events
        per_run = dict(conn.execute("SELECT run_id, count(*) FROM run_events GROUP BY run_id"))
        assert len(per_run) == RUNS and max(per_run.values()) <= 4
        assert conn.execute("SELECT count(*) FROM run_events WHERE event_type = 'run.created'"
                            ).fetchone()[0] == RUNS
        # seq is 1..N without gaps, and in timestamp order
        seqs = [r[0] for r in conn.execute("SELECT seq FROM run_events ORDER BY seq")]
        assert seqs == list(range(1, counts["run_events"] + 1))
        stamps = [r[0] for r in conn.execute("SELECT timestamp FROM run_events ORDER BY seq")]
        assert stamps == sorted(stamps)
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        states = dict(conn.execute("SELECT state, count(*) FROM runs GROUP BY state"))
        assert set(states) <= set(RUN.states)
        assert states["succeeded"] > states["failed"] > 0
        assert conn.execute("SELECT count(*) FROM step_attempts WHERE attempt = 2"
                            ).fetchone()[0] > 0


def test_uet_reads_it(built):
    path, counts = built
    with Database(path, read_only=True) as db:
        facts = db.doctor()
        assert problems(facts) == []
        assert facts["foreign_key_violations"] == 0
        assert facts["row_counts"]["runs"] == RUNS
        newest = db.list_runs(limit=5)
        assert len(newest) == 5
        keys = [(r["created_at"], r["run_id"]) for r in newest]
        assert keys == sorted(keys, reverse=True)
        assert all(ULID.fullmatch(r["run_id"]) and STAMP.fullmatch(r["created_at"])
                   for r in newest)
        page = db.list_runs(limit=50, before=keys[-1])
        assert page and (page[0]["created_at"], page[0]["run_id"]) < keys[-1]
        run = next(r for r in db.list_runs({"state": "succeeded"}, limit=200)
                   if len(db.list_step_attempts(r["run_id"])) > 0)
        assert isinstance(run["metadata"], dict) and run["metadata"]["branch"].endswith(
            run["run_id"])
        steps = db.list_step_attempts(run["run_id"])
        assert steps and all(s["state"] in STEP_ATTEMPT.states for s in steps)
        assert [s["sequence"] for s in steps] == sorted(s["sequence"] for s in steps)
        events = db.list_events(run["run_id"])
        assert events[0]["event_type"] == "run.created"
        assert events[-1]["event_type"] == "run.state_changed"
        assert events[-1]["data"] == {"from": "running", "to": "succeeded", "exit_code": 0}


def test_a_built_ledger_takes_writes(tmp_path):
    path = tmp_path / "ledger.db"
    counts = build(path, 200, events_per_run=None)
    with Database(path) as db:
        run_id = db.create_run({"project_id": "billing", "phase_id": "PH-01-design",
                                "state": "running"})
        db.create_step_attempt({"run_id": run_id, "sequence": 1, "tool_id": "aider"})
        events = db.list_events(run_id)
        assert [e["seq"] for e in events] == [counts["run_events"] + 1,
                                              counts["run_events"] + 2]
        assert db.list_runs(limit=1)[0]["run_id"] == run_id


def test_refuses_an_existing_file(tmp_path):
    path = tmp_path / "there.db"
    path.write_bytes(b"")
    with pytest.raises(FileExistsError):
        build(path, 10)

"""uet.compat: code written for the framework's original `core/state/db.py` runs with only its
import line changed — its own events by position, `.conn` for its SELECTs (read-only), whole
rows written back — on a memory ledger, a file ledger and PostgreSQL (but `.conn`)."""

from __future__ import annotations

import copy
import json
import os
import sqlite3
import sys
import threading
import types
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import uet.compat as compat
import uet.state
from uet.compat import ConnUnavailableError, ReadOnlyConnectionError
from uet.errors import NotFoundError, StorageError, UetError, ValidationError
from uet.state.events import RESERVED_EVENT_TYPES

from helpers import emptied_postgres_ledger


def _ledger_name(request, tmp_path, kind: str) -> str:
    if kind == "postgres":
        return emptied_postgres_ledger(request.getfixturevalue("_reused_postgres_ledger"))
    return ":memory:" if kind == "memory" else str(tmp_path / "ledger" / "framework.db")


@pytest.fixture(params=["memory", "file", "postgres"])
def cdb(request, tmp_path):
    """A compat Database on each backend."""
    database = compat.init_db(_ledger_name(request, tmp_path, request.param))
    yield database
    database.close()


@pytest.fixture(params=["memory", "file"])
def sqlite_cdb(request, tmp_path):
    """A compat Database on each SQLite ledger (where `.conn` exists)."""
    database = compat.init_db(_ledger_name(request, tmp_path, request.param))
    yield database
    database.close()


# -- code written for the original state layer ---------------------------------------------------

# A module as the framework's engine code was written against core/state/db.py (explicit ids and
# timestamps, state strings, its own run_created/run_started... events read back by position,
# whole rows written back, its own SQL through db.conn). It is run below with its import line,
# and only that line, changed.
ORIGINAL_MODULE = '''\
"""Orchestrator glue written for core/state/db.py."""
import uuid
from datetime import datetime, timezone

from core.state.db import Database, get_db, init_db


def now():
    return datetime.now(timezone.utc).isoformat()


def new_id(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class Orchestrator:
    def __init__(self, db=None):
        self.db = db or get_db()

    def emit(self, run_id, event_type, **data):
        self.db.create_event({"event_id": new_id("evt"), "run_id": run_id,
                              "timestamp": now(), "event_type": event_type, "data": data})

    def start_run(self, project_id, phase_id, workstream_id=None, **metadata):
        run_id = new_id("run")
        self.db.create_run({"run_id": run_id, "project_id": project_id, "phase_id": phase_id,
                            "workstream_id": workstream_id, "execution_request_id": new_id("er"),
                            "created_at": now(), "state": "pending", "metadata": metadata})
        self.emit(run_id, "run_created", project_id=project_id)
        self.db.update_run(run_id, {"state": "running", "started_at": now()})
        self.emit(run_id, "run_started")
        return run_id

    def run_step(self, run_id, sequence, tool_id, prompt, exit_code, patch_id=None):
        step_id = new_id("step")
        self.db.create_step_attempt({"step_attempt_id": step_id, "run_id": run_id,
                                     "sequence": sequence, "tool_id": tool_id,
                                     "started_at": now(), "state": "running",
                                     "input_prompt": prompt, "metadata": {"try": 1}})
        self.emit(run_id, "step_started", step_attempt_id=step_id, tool_id=tool_id)
        ok = exit_code == 0
        self.db.update_step_attempt(step_id, {
            "state": "succeeded" if ok else "failed", "ended_at": now(),
            "exit_code": exit_code, "output_patch_id": patch_id,
            "error_log": None if ok else f"{tool_id} exited with {exit_code}"})
        self.emit(run_id, "step_completed" if ok else "step_failed",
                  step_attempt_id=step_id, exit_code=exit_code)
        return step_id

    def review_step(self, step_id, reviewer):
        step = self.db.get_step_attempt(step_id)       # the whole row, written back
        step["metadata"]["reviewed_by"] = reviewer
        self.db.update_step_attempt(step_id, step)

    def finish_run(self, run_id):
        steps = self.db.list_step_attempts(run_id)
        failed = [s for s in steps if s["state"] == "failed"]
        run = self.db.get_run(run_id)                   # the whole row, written back
        run["state"] = "failed" if failed else "succeeded"
        run["ended_at"] = now()
        run["exit_code"] = failed[-1]["exit_code"] if failed else 0
        if failed:
            run["error_message"] = f"{len(failed)} step(s) failed"
        run["metadata"]["steps"] = len(steps)
        self.db.update_run(run_id, run)
        self.emit(run_id, "run_completed", state=run["state"])
        return run["state"]

    def history(self, run_id):
        return [event["event_type"] for event in self.db.list_events(run_id)]

    def failed_runs(self, project_id):
        return [r["run_id"] for r in self.db.list_runs({"project_id": project_id,
                                                         "state": "failed"})]

    # reports with its own SQL, through the sqlite3 connection the original exposed
    def run_states(self, project_id):
        rows = self.db.conn.execute(
            "SELECT run_id, state FROM runs WHERE project_id = ? ORDER BY created_at",
            (project_id,)).fetchall()
        return {row["run_id"]: row["state"] for row in rows}

    def step_table(self, run_id):
        cursor = self.db.conn.cursor()
        cursor.execute("SELECT sequence, tool_id, state, exit_code FROM step_attempts "
                       "WHERE run_id = ? ORDER BY sequence", (run_id,))
        return [tuple(row) for row in cursor.fetchall()]

    def tool_counts(self):
        return {row[0]: row[1] for row in self.db.conn.execute(
            "SELECT tool_id, COUNT(*) FROM step_attempts GROUP BY tool_id ORDER BY tool_id")}
'''

ORIGINAL_IMPORT = "from core.state.db import Database, get_db, init_db"
COMPAT_IMPORT = "from uet.compat import Database, get_db, init_db"


def load_original_module() -> types.ModuleType:
    """The original-style module with its import line, and nothing else, changed."""
    source = ORIGINAL_MODULE.replace(ORIGINAL_IMPORT, COMPAT_IMPORT)
    changed = [(a, b) for a, b in zip(ORIGINAL_MODULE.splitlines(), source.splitlines())
               if a != b]
    assert changed == [(ORIGINAL_IMPORT, COMPAT_IMPORT)]
    module = types.ModuleType("orchestrator_glue")
    exec(compile(source, "orchestrator_glue.py", "exec"), module.__dict__)
    return module


@pytest.mark.parametrize("kind", ["memory", "file", "postgres"])
def test_original_style_code_runs_with_only_its_import_changed(kind, request, tmp_path,
                                                              monkeypatch):
    glue = load_original_module()
    if kind == "file":  # the original's default: .ledger/framework.db under the cwd
        monkeypatch.chdir(tmp_path)
        monkeypatch.delenv("UET_DATABASE", raising=False)
    else:
        monkeypatch.setenv("UET_DATABASE", _ledger_name(request, tmp_path, kind))
    orchestrator = glue.Orchestrator()                  # get_db(): the process-wide ledger
    db = orchestrator.db
    assert isinstance(db, compat.Database) and glue.get_db() is db
    assert isinstance(db, uet.state.Database)
    if kind == "file":
        assert (tmp_path / ".ledger" / "framework.db").is_file()

    good = orchestrator.start_run("PRJ", "PH-1", "WS-1", requested_by="ci")
    step1 = orchestrator.run_step(good, 1, "aider", "write the tests", 0, patch_id="patch-1")
    orchestrator.run_step(good, 2, "pytest", "run them", 0)
    orchestrator.review_step(step1, "alice")
    assert orchestrator.finish_run(good) == "succeeded"

    bad = orchestrator.start_run("PRJ", "PH-1")
    orchestrator.run_step(bad, 1, "aider", "fix it", 0)
    orchestrator.run_step(bad, 2, "ruff", "lint it", 1)
    assert orchestrator.finish_run(bad) == "failed"

    # its own events, by position, exactly as it wrote them
    events = db.list_events(good)
    assert events[0]["event_type"] == "run_created"
    assert events[0]["data"] == {"project_id": "PRJ"}
    assert events[1]["event_type"] == "run_started"
    assert events[-1]["event_type"] == "run_completed"
    assert events[-1]["data"] == {"state": "succeeded"}
    assert orchestrator.history(good) == [
        "run_created", "run_started", "step_started", "step_completed", "step_started",
        "step_completed", "run_completed"]
    assert orchestrator.history(bad)[-2:] == ["step_failed", "run_completed"]
    # ... while the trail keeps the ledger's own record of every change
    trail = [e["event_type"] for e in db.events_since(0, run_id=good)]
    assert trail[0] == "run.created" and "run.state_changed" in trail
    assert "step_attempt.updated" in trail  # the review's write-back

    # the rows, as the original's readers expect them
    run = db.get_run(good)
    assert run["state"] == "succeeded" and run["exit_code"] == 0
    assert run["metadata"] == {"requested_by": "ci", "steps": 2}
    assert run["started_at"] <= run["ended_at"]
    failed = db.get_run(bad)
    assert (failed["state"], failed["exit_code"]) == ("failed", 1)
    assert failed["error_message"] == "1 step(s) failed"
    assert db.get_step_attempt(step1)["metadata"] == {"try": 1, "reviewed_by": "alice"}
    assert [s["sequence"] for s in db.list_step_attempts(good)] == [1, 2]
    assert orchestrator.failed_runs("PRJ") == [bad]
    assert [r["run_id"] for r in db.list_runs({"project_id": "PRJ"})] == [bad, good]
    assert db.list_runs({"project_id": "PRJ", "state": "succeeded"}, limit=1)[0]["run_id"] == good

    if kind == "postgres":
        with pytest.raises(ConnUnavailableError):
            orchestrator.run_states("PRJ")
        return
    assert orchestrator.run_states("PRJ") == {good: "succeeded", bad: "failed"}
    assert orchestrator.step_table(bad) == [(1, "aider", "succeeded", 0),
                                            (2, "ruff", "failed", 1)]
    assert orchestrator.tool_counts() == {"aider": 2, "pytest": 1, "ruff": 1}


def test_original_style_code_can_be_handed_a_fresh_ledger(tmp_path):
    glue = load_original_module()
    first = glue.init_db(str(tmp_path / "a.db"))
    second = glue.init_db(str(tmp_path / "a.db"))
    try:
        assert first is not second and isinstance(first, glue.Database)
        run_id = glue.Orchestrator(first).start_run("PRJ", "PH-1")
        assert glue.Orchestrator(second).history(run_id) == ["run_created", "run_started"]
    finally:
        first.close()
        second.close()


# -- list_events: the caller's own events ---------------------------------------------------------

def test_list_events_leaves_out_exactly_the_reserved_types(cdb):
    from uet.state import GateLedger, PatchLedger

    run_id = cdb.create_run({"project_id": "P", "phase_id": "PH"})
    written = []

    def emit(event_type: str) -> None:
        written.append(cdb.create_event({"run_id": run_id, "event_type": event_type,
                                         "data": {"n": len(written)}}))

    # names that look like the ledger's own, but are not among them, are the caller's
    emit("run_created")
    cdb.update_run(run_id, {"state": "running"})                      # run.state_changed
    emit("run.started")
    cdb.update_run(run_id, {"error_message": "slow"})                 # run.updated
    step = cdb.create_step_attempt({"run_id": run_id, "sequence": 1, "tool_id": "t"})
    emit("Run.Created")
    cdb.update_step_attempt(step, {"error_log": "x"})                 # step_attempt.updated
    cdb.transition_step_attempt(step, "succeeded", exit_code=0)
    emit("run.created.v2")
    patches, gates = PatchLedger(cdb), GateLedger(cdb)
    artifact = patches.record_patch("--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n",
                                    step_attempt_id=step)
    entry = patches.create_entry(artifact, "PH", "WS")
    patches.set_validation(entry.ledger_id, format=True)
    patches.transition_state(entry.ledger_id, "validated", reason="ok")
    gate = gates.define_gate("LINT", "PH", "ruff check .", run_id=run_id)
    gates.transition_state(gate["gate_id"], "RUNNING")
    emit("step_attempt")
    cdb.transition_run(run_id, "succeeded", exit_code=0)
    emit(" run.updated")

    trail = cdb.events_since(0, run_id=run_id)
    own = cdb.list_events(run_id)
    assert [e["event_id"] for e in own] == written
    assert [e["data"]["n"] for e in own] == list(range(len(written)))
    assert own == [e for e in trail if e["event_type"] not in RESERVED_EVENT_TYPES]
    lifecycle = {e["event_type"] for e in trail} - {e["event_type"] for e in own}
    assert lifecycle <= RESERVED_EVENT_TYPES
    assert lifecycle >= {"run.created", "run.state_changed", "run.updated",
                         "step_attempt.created", "step_attempt.updated",
                         "step_attempt.state_changed", "patch.recorded", "patch_entry.created",
                         "patch_entry.validation_set", "patch_entry.state_changed",
                         "gate.defined", "gate.state_changed"}
    # the same run read through uet.state: the whole trail
    assert uet.state.Database.list_events(cdb, run_id) == trail


_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                min_size=1, max_size=12)
_reserved_lookalikes = st.sampled_from(sorted(
    {t.replace(".", "_") for t in RESERVED_EVENT_TYPES}
    | {t.upper() for t in RESERVED_EVENT_TYPES} | {t + "s" for t in RESERVED_EVENT_TYPES}
    | {"run_started", "run_completed", "step_started", "step_failed"}))
_event_types = _reserved_lookalikes | _text.filter(lambda t: t not in RESERVED_EVENT_TYPES)
_operations = st.lists(st.one_of(
    st.tuples(st.just("event"), _event_types),
    st.tuples(st.just("update"), _text),
    st.tuples(st.just("step"), st.integers(1, 3)),
    st.tuples(st.just("state"), st.sampled_from(["running", "succeeded"]))), max_size=14)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=_operations)
def test_list_events_is_what_the_caller_wrote_among_any_lifecycle(cdb, operations):
    run_id = cdb.create_run({"project_id": "P", "phase_id": "PH"})
    written = []
    next_state = {"pending": "running", "running": "succeeded"}
    for kind, value in operations:
        if kind == "event":
            written.append((cdb.create_event({"run_id": run_id, "event_type": value}), value))
        elif kind == "update":
            cdb.update_run(run_id, {"error_message": value})
        elif kind == "step":
            step = cdb.create_step_attempt({"run_id": run_id, "sequence": value,
                                            "tool_id": "t"})
            cdb.transition_step_attempt(step, "failed", exit_code=value)
        elif next_state.get(cdb.get_run(run_id)["state"]) == value:
            cdb.update_run(run_id, {"state": value})
    own = cdb.list_events(run_id)
    assert [(e["event_id"], e["event_type"]) for e in own] == written
    trail = cdb.events_since(0, run_id=run_id)
    assert [e["event_id"] for e in trail if e["event_type"] not in RESERVED_EVENT_TYPES] == [
        event_id for event_id, _ in written]
    assert trail[0]["event_type"] == "run.created"  # the lifecycle stays in the trail


def test_reserved_event_types_are_refused_as_by_uet_state(cdb):
    run_id = cdb.create_run({"project_id": "P", "phase_id": "PH"})
    with pytest.raises(ValidationError) as refused:
        cdb.create_event({"run_id": run_id, "event_type": "run.created"})
    assert refused.value.field == "event_type"
    assert cdb.list_events(run_id) == []


def test_list_events_of_an_unknown_run_is_empty_and_a_bad_id_is_refused(cdb):
    assert cdb.list_events("no-such-run") == []
    with pytest.raises(ValidationError):
        cdb.list_events("")


# -- .conn: a read-only connection (SQLite) ---------------------------------------------------

def _seed(db) -> str:
    run_id = db.create_run({"run_id": "run-1", "project_id": "P", "phase_id": "PH",
                            "metadata": {"k": [1, 2]}})
    db.create_step_attempt({"step_attempt_id": "step-1", "run_id": run_id, "sequence": 1,
                            "tool_id": "aider"})
    db.create_event({"event_id": "evt-1", "run_id": run_id, "event_type": "run_created"})
    return run_id


def test_conn_rows_behave_like_the_originals(sqlite_cdb):
    run_id = _seed(sqlite_cdb)
    conn = sqlite_cdb.conn
    assert sqlite_cdb.conn is conn
    row = conn.execute("SELECT run_id, state, metadata FROM runs WHERE run_id = ?",
                       (run_id,)).fetchone()
    assert isinstance(row, sqlite3.Row)
    assert row[0] == row["run_id"] == run_id and row["STATE"] == "pending"
    assert json.loads(row["metadata"]) == {"k": [1, 2]}       # raw JSON text, as stored
    assert dict(row) == {"run_id": run_id, "state": "pending", "metadata": '{"k": [1, 2]}'}
    cursor = conn.cursor()
    assert cursor.execute("SELECT count(*) AS n FROM step_attempts").fetchone()["n"] == 1
    assert [d[0] for d in cursor.execute("SELECT * FROM run_events").description][:4] == [
        "event_id", "run_id", "timestamp", "event_type"]
    # the raw table is the whole trail, the ledger's own events included
    assert [r["event_type"] for r in conn.execute(
        "SELECT event_type FROM run_events WHERE run_id = ? ORDER BY seq", (run_id,))] == [
        "run.created", "step_attempt.created", "run_created"]
    named = conn.execute("SELECT :id AS id", {"id": 7})
    assert [tuple(r) for r in named.fetchall()] == [(7,)] and named.fetchone() is None
    many = conn.execute("SELECT value FROM json_each('[1,2,3,4,5]')")
    assert [r[0] for r in many.fetchmany(2)] == [1, 2]
    assert [r[0] for r in many] == [3, 4, 5]
    conn.row_factory = None
    assert conn.execute("SELECT 1, 'a'").fetchone() == (1, "a")
    with conn:  # as a sqlite3 connection's context manager
        assert conn.execute("PRAGMA table_info(runs)").fetchone()[1] == "run_id"
    conn.commit()
    conn.rollback()
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        conn.execute("SELECT * FROM no_such_table")  # a mistake in the caller's SQL


WRITES = [
    "INSERT INTO runs (run_id, project_id, phase_id, created_at, state) "
    "VALUES ('x', 'P', 'PH', '2026-01-01T00:00:00.000000Z', 'pending')",
    "UPDATE runs SET state = 'succeeded'",
    "DELETE FROM run_events",
    "DELETE FROM runs",
    "CREATE TABLE mine (a)",
    "CREATE TEMP TABLE mine (a)",
    "DROP TABLE run_events",
    "CREATE INDEX idx_mine ON runs (phase_id)",
    "PRAGMA foreign_keys = OFF",
    "PRAGMA query_only = OFF",
    "PRAGMA user_version = 99",
    "ATTACH DATABASE ':memory:' AS other",
]


@pytest.mark.parametrize("statement", WRITES)
def test_conn_refuses_writes_with_a_clear_error(sqlite_cdb, statement):
    run_id = _seed(sqlite_cdb)
    before = (sqlite_cdb.get_run(run_id), sqlite_cdb.events_since(0))
    with pytest.raises(ReadOnlyConnectionError) as refused:
        sqlite_cdb.conn.execute(statement)
    error = refused.value
    assert isinstance(error, sqlite3.OperationalError) and isinstance(error, StorageError)
    assert error.sqlite_errorname == "SQLITE_READONLY"
    assert "read-only" in str(error) and "written through the API" in str(error)
    assert "update_run" in str(error)
    assert (sqlite_cdb.get_run(run_id), sqlite_cdb.events_since(0)) == before
    # the connection and the ledger go on working: reads through conn, writes through the API
    assert sqlite_cdb.conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
    sqlite_cdb.update_run(run_id, {"state": "running"})
    assert sqlite_cdb.doctor()["foreign_keys"] is True


def test_conn_refuses_writes_by_every_route(sqlite_cdb):
    run_id = _seed(sqlite_cdb)
    insert = "INSERT INTO run_events (event_id, run_id, timestamp, event_type) VALUES (?, ?, ?, ?)"
    rows = [("e1", run_id, "2026-01-01T00:00:00.000000Z", "x")]
    conn = sqlite_cdb.conn
    for attempt in (lambda: conn.executemany(insert, rows),
                    lambda: conn.cursor().execute(insert, rows[0]),
                    lambda: conn.cursor().executemany(insert, rows),
                    lambda: conn.executescript("SELECT 1; DELETE FROM runs;"),
                    lambda: conn.backup(conn)):
        with pytest.raises(ReadOnlyConnectionError):
            attempt()
    assert [e["event_id"] for e in sqlite_cdb.list_events(run_id)] == ["evt-1"]
    assert sqlite_cdb.conn.executescript("SELECT 1; SELECT 2;") is not None
    with pytest.raises(AttributeError, match="read-only view"):
        conn.create_function  # noqa: B018 - nothing that would let SQL write is offered


def test_conn_of_a_memory_ledger_runs_no_transaction_of_its_own(tmp_path):
    db = compat.init_db(":memory:")
    try:
        _seed(db)
        for statement in ("BEGIN", "BEGIN IMMEDIATE", "SAVEPOINT s", "COMMIT"):
            with pytest.raises(ReadOnlyConnectionError, match="shares the ledger's own"):
                db.conn.execute(statement)
        # the ledger's connection was left as it was: the API still writes, in transactions
        db.create_run({"project_id": "P", "phase_id": "PH"})
        assert db.doctor()["foreign_keys"] is True
        assert db.conn.in_transaction is False
    finally:
        db.close()


def test_conn_of_a_file_ledger_may_hold_a_snapshot(tmp_path):
    path = str(tmp_path / "framework.db")
    db = compat.init_db(path)
    writer = uet.state.init_db(path)
    try:
        _seed(db)
        conn = db.conn
        conn.execute("BEGIN")
        assert conn.in_transaction
        assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 1  # takes it
        writer.create_run({"project_id": "P", "phase_id": "PH"})
        assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 1  # the snapshot
        conn.commit()
        assert not conn.in_transaction
        assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 2
    finally:
        writer.close()
        db.close()


def test_conn_of_a_file_ledger_sees_what_other_writers_committed(tmp_path):
    path = str(tmp_path / "framework.db")
    db = compat.init_db(path)
    other = uet.state.init_db(path)  # another instance, as another process would be
    try:
        conn = db.conn
        assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 0
        run_id = other.create_run({"project_id": "P", "phase_id": "PH"})
        assert [tuple(r) for r in conn.execute("SELECT run_id FROM runs")] == [(run_id,)]
        db.update_run(run_id, {"state": "running"})  # and this instance's own writes
        assert conn.execute("SELECT state FROM runs").fetchone()["state"] == "running"
    finally:
        other.close()
        db.close()


def test_conn_of_a_memory_ledger_keeps_the_api_writable_across_threads():
    db = compat.init_db(":memory:")
    try:
        stop = threading.Event()

        def read() -> list[int]:
            seen = []
            while not stop.is_set():
                seen.append(db.conn.execute("SELECT count(*) FROM runs").fetchone()[0])
                with pytest.raises(ReadOnlyConnectionError):
                    db.conn.execute("DELETE FROM runs")
            return seen

        with ThreadPoolExecutor(max_workers=2) as pool:
            readers = [pool.submit(read) for _ in range(2)]
            for i in range(60):
                run_id = db.create_run({"project_id": "P", "phase_id": f"PH-{i}"})
                db.update_run(run_id, {"state": "running"})
            stop.set()
            for reader in readers:
                seen = reader.result()
                assert seen == sorted(seen)  # each read saw every earlier commit
        assert len(db.list_runs(limit=None)) == 60
        assert db.conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 60
    finally:
        db.close()


def test_conn_dump_and_backup_read_the_ledger(sqlite_cdb):
    run_id = _seed(sqlite_cdb)
    dump = list(sqlite_cdb.conn.iterdump())
    assert any("CREATE TABLE" in line and "runs" in line for line in dump)
    target = sqlite3.connect(":memory:")
    try:
        sqlite_cdb.conn.backup(target)
        assert target.execute("SELECT run_id FROM runs").fetchall() == [(run_id,)]
    finally:
        target.close()


def test_conn_is_closed_with_the_ledger_and_reopened_after_connect(tmp_path):
    db = compat.init_db(str(tmp_path / "framework.db"))
    _seed(db)
    conn = db.conn
    db.close()
    assert conn.closed
    with pytest.raises(StorageError, match="closed"):
        db.conn  # noqa: B018
    with pytest.raises(StorageError, match="closed"):
        conn.execute("SELECT 1")
    db.connect()
    try:
        assert db.conn is not conn
        assert db.conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
        again = db.conn
        again.close()  # closes that connection only, not the ledger
        assert db.get_run("run-1") is not None
        assert db.conn is not again and db.conn.execute("SELECT 1").fetchone()[0] == 1
    finally:
        db.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_conn_in_a_forked_child_opens_its_own(tmp_path):
    db = compat.init_db(str(tmp_path / "framework.db"))
    try:
        _seed(db)
        inherited = db.conn
        assert inherited.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
        pid = os.fork()
        if pid == 0:  # the child: a connection of its own, the inherited one refused
            code = 1
            try:
                fresh = db.conn
                counted = fresh.execute("SELECT count(*) FROM runs").fetchone()[0]
                try:
                    inherited.execute("SELECT 1")
                except StorageError:
                    code = 0 if fresh is not inherited and counted == 1 else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert inherited.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
    finally:
        db.close()


def test_conn_on_postgresql_says_it_exists_only_for_sqlite(request, tmp_path):
    db = compat.init_db(_ledger_name(request, tmp_path, "postgres"))
    try:
        with pytest.raises(ConnUnavailableError) as refused:
            db.conn  # noqa: B018
        message = str(refused.value)
        assert "only for SQLite" in message and "postgresql" in message
        assert "list_runs" in message and "events_since" in message
        assert isinstance(refused.value, UetError) and isinstance(refused.value, AttributeError)
        assert not hasattr(db, "conn") and getattr(db, "conn", None) is None
        db.create_run({"project_id": "P", "phase_id": "PH"})  # the rest works
    finally:
        db.close()


# -- whole-row write-back --------------------------------------------------------------------

def test_a_run_row_written_back_whole_changes_only_what_changed(cdb):
    run_id = cdb.create_run({"run_id": "run-1", "project_id": "P", "phase_id": "PH",
                             "created_at": "2026-01-31T12:00:00+01:00",
                             "metadata": {"b": 1, "a": [1, 2]}})
    seq = cdb.events_since(0)[-1]["seq"]
    row = cdb.get_run(run_id)
    row["error_message"] = "x"
    assert cdb.update_run(run_id, row)["error_message"] == "x"
    assert cdb.get_run(run_id) == row
    [event] = cdb.events_since(seq)
    assert event["event_type"] == "run.updated"
    assert event["data"] == {"changed": {"error_message": {"from": None, "to": "x"}}}

    # unchanged: state, ids, timestamps in any spelling, JSON in any key order
    seq = event["seq"]
    same = dict(row, created_at="2026-01-31T11:00:00Z", metadata={"a": [1, 2], "b": 1})
    assert cdb.update_run(run_id, same) == row
    assert cdb.update_run(run_id, dict(row)) == row
    assert cdb.events_since(seq) == []

    # the state: a change is a transition (checked, stamped, recorded)
    row["state"] = "running"
    after = cdb.update_run(run_id, row)
    assert after["state"] == "running" and after["started_at"] is not None
    assert cdb.events_since(seq)[0]["event_type"] == "run.state_changed"
    row = cdb.get_run(run_id)
    row["state"] = "pending"
    with pytest.raises(ValueError, match="cannot go from running to pending"):
        cdb.update_run(run_id, row)


@pytest.mark.parametrize("field, value", [
    ("created_at", "2020-01-01T00:00:00.000000Z"),
    ("run_id", "run-2"),
    ("worker_id", "w-1"),
])
def test_a_changed_read_only_run_field_is_still_refused(cdb, field, value):
    run_id = cdb.create_run({"run_id": "run-1", "project_id": "P", "phase_id": "PH"})
    row = cdb.get_run(run_id)
    row["error_message"] = "would change"
    row[field] = value
    with pytest.raises(ValidationError) as refused:
        cdb.update_run(run_id, row)
    assert refused.value.field == field
    assert cdb.get_run(run_id)["error_message"] is None  # nothing was written


def test_a_step_attempt_row_written_back_whole_changes_only_what_changed(cdb):
    run_id = cdb.create_run({"project_id": "P", "phase_id": "PH"})
    step = cdb.create_step_attempt({"run_id": run_id, "sequence": 1, "tool_id": "aider",
                                    "metadata": {"x": 1}})
    row = cdb.get_step_attempt(step)
    seq = cdb.events_since(0)[-1]["seq"]
    row.update(state="succeeded", exit_code=0, output_patch_id="patch-1")
    after = cdb.update_step_attempt(step, row)
    assert after["state"] == "succeeded" and after["ended_at"] is not None
    [event] = cdb.events_since(seq)
    assert event["event_type"] == "step_attempt.state_changed"
    assert set(event["data"]["changed"]) == {"exit_code", "output_patch_id"}
    row = cdb.get_step_attempt(step)
    row["metadata"] = {"x": 1}
    assert cdb.update_step_attempt(step, row) == row           # nothing changed
    row["metadata"]["y"] = 2
    assert cdb.update_step_attempt(step, row)["metadata"] == {"x": 1, "y": 2}
    for field, value in (("run_id", "another-run"), ("step_attempt_id", "other"),
                         ("worker_id", "w-1")):
        with pytest.raises(ValidationError) as refused:
            cdb.update_step_attempt(step, dict(row, **{field: value}))
        assert refused.value.field == field
    row["state"] = "failed"  # terminal: still refused
    with pytest.raises(ValueError, match="succeeded"):
        cdb.update_step_attempt(step, row)


def test_write_back_keeps_uet_states_errors(cdb):
    run_id = cdb.create_run({"project_id": "P", "phase_id": "PH"})
    with pytest.raises(NotFoundError):
        cdb.update_run("no-such-run", {"error_message": "x"})
    with pytest.raises(NotFoundError):
        cdb.update_step_attempt("no-such-step", {"error_log": "x"})
    with pytest.raises(ValidationError, match="unknown run field"):
        cdb.update_run(run_id, {"nonsense": 1})
    with pytest.raises(ValidationError, match="must be a dict"):
        cdb.update_run(run_id, ["state", "running"])
    with pytest.raises(ValidationError):
        cdb.update_run("", {"state": "running"})
    with pytest.raises(ValidationError, match="must be an integer"):
        cdb.update_run(run_id, {"exit_code": True})  # True is not the exit code 1
    row = cdb.get_run(run_id)
    row["exit_code"] = 1.0
    with pytest.raises(ValidationError, match="must be an integer"):
        cdb.update_run(run_id, row)


@pytest.mark.parametrize("current, given, same", [
    ({"a": 1, "b": [1, {"c": None}]}, {"b": [1, {"c": None}], "a": 1}, True),
    ({"a": 1}, {"a": 1.0}, False),
    ({"a": 1}, {"a": True}, False),
    ({"a": [1, 2]}, {"a": (1, 2)}, True),
    ({}, None, False),
    ({"a": 1}, {"a": object()}, False),
    (1, True, False),
    (0, 0, True),
    (None, None, True),
    ("x", "x", True),
])
def test_same_value_compares_json_as_values(current, given, same):
    assert compat.same_value("metadata", current, given) is same


@pytest.mark.parametrize("given, same", [
    ("2026-01-31T12:00:00.000000Z", True),
    ("2026-01-31T12:00:00Z", True),
    ("2026-01-31T13:00:00+01:00", True),
    ("2026-01-31T12:00:00", True),                 # naive is UTC, as the ledger takes it
    ("2026-01-31T12:00:00.000001Z", False),
    ("not a time", False),
    ("0001-01-01T00:00:00+01:00", False),
    (None, False),
])
def test_same_value_compares_timestamps_as_instants(given, same):
    assert compat.same_value("created_at", "2026-01-31T12:00:00.000000Z", given) is same
    assert compat.same_value("created_at", "2026-01-31T12:00:00.000000Z",
                             datetime(2026, 1, 31, 12, tzinfo=timezone.utc)) is True
    # only columns named *_at are timestamps: other text is compared as text
    assert compat.same_value("error_message", "2026-01-31T12:00:00.000000Z",
                             "2026-01-31T12:00:00Z") is False


# property: any subset of fields changed in a row written back --------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 53), 2 ** 53) | _text,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_text, children,
                                                                      max_size=3),
    max_leaves=8)
_metadata = st.dictionaries(_text, _json, min_size=1, max_size=4)
_timestamps = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)).map(
    lambda moment: moment.isoformat(timespec="microseconds") + "Z")
_exit_codes = st.integers(-(2 ** 31), 2 ** 32 - 1)

RUN_FIELDS = {
    "project_id": _text, "phase_id": _text, "workstream_id": _text,
    "execution_request_id": _text, "error_message": _text, "exit_code": _exit_codes,
    "metadata": _metadata, "started_at": _timestamps, "ended_at": _timestamps,
    "state": st.sampled_from(["running", "canceled"]),
}
STEP_FIELDS = {
    "sequence": st.integers(1, 10 ** 6), "tool_id": _text, "tool_run_id": _text,
    "execution_request_id": _text, "prompt_id": _text, "input_prompt": _text,
    "output_patch_id": _text, "error_log": _text, "exit_code": _exit_codes,
    "metadata": _metadata, "started_at": _timestamps, "ended_at": _timestamps,
    "state": st.sampled_from(["succeeded", "failed", "canceled"]),
}
_FULL = {"workstream_id": "WS", "execution_request_id": "ER", "error_message": "e",
         "exit_code": 7, "metadata": {"m": 1}, "started_at": "2001-01-01T00:00:00.000000Z",
         "ended_at": "2001-01-01T00:00:01.000000Z"}


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True)


def _draw_changes(data, fields: dict, before: dict) -> dict:
    names = data.draw(st.sets(st.sampled_from(sorted(fields))), label="changed fields")
    return {name: data.draw(fields[name].filter(
        lambda value, old=before[name]: _canonical(value) != _canonical(old)), label=name)
        for name in sorted(names)}


def _check_write_back(db, entity: str, entity_id: str, before: dict, changes: dict,
                      after: dict, events: list[dict]) -> None:
    stored = db.get_run(entity_id) if entity == "run" else db.get_step_attempt(entity_id)
    assert stored == after
    for name, old in before.items():  # exactly the changed fields changed
        expected = changes.get(name, old)
        assert _canonical(stored[name]) == _canonical(expected), name
    if not changes:
        assert events == []
        return
    [event] = events
    changed_state = "state" in changes
    assert event["event_type"] == f"{entity}.{'state_changed' if changed_state else 'updated'}"
    assert set(event["data"].get("changed", {})) == set(changes) - {"state"}


_property = settings(max_examples=40, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])


@_property
@given(data=st.data())
def test_property_run_write_back_changes_exactly_the_changed_fields(cdb, data):
    # every field filled (timestamps too, so that no state entered stamps one)
    run_id = cdb.create_run({"project_id": "P", "phase_id": "PH", **_FULL})
    before = cdb.get_run(run_id)
    changes = _draw_changes(data, RUN_FIELDS, before)
    seq = cdb.events_since(0)[-1]["seq"]
    row = copy.deepcopy(before)
    row.update(copy.deepcopy(changes))
    after = cdb.update_run(run_id, row)
    _check_write_back(cdb, "run", run_id, before, changes, after, cdb.events_since(seq))


@_property
@given(data=st.data())
def test_property_step_write_back_changes_exactly_the_changed_fields(cdb, data):
    run_id = cdb.create_run({"project_id": "P", "phase_id": "PH"})
    step = cdb.create_step_attempt({
        "run_id": run_id, "sequence": 1, "tool_id": "t", "tool_run_id": "TR",
        "execution_request_id": "ER", "prompt_id": "PR", "input_prompt": "do it",
        "output_patch_id": "patch", "error_log": "log", "exit_code": 3,
        "metadata": {"m": [1]}, "started_at": "2001-01-01T00:00:00.000000Z",
        "ended_at": "2001-01-01T00:00:01.000000Z"})
    before = cdb.get_step_attempt(step)
    changes = _draw_changes(data, STEP_FIELDS, before)
    seq = cdb.events_since(0)[-1]["seq"]
    row = copy.deepcopy(before)
    row.update(copy.deepcopy(changes))
    after = cdb.update_step_attempt(step, row)
    _check_write_back(cdb, "step_attempt", step, before, changes, after,
                      cdb.events_since(seq))


@_property
@given(field=st.sampled_from(["created_at", "run_id"]), data=st.data())
def test_property_a_changed_read_only_field_refuses_the_whole_row(cdb, field, data):
    run_id = cdb.create_run({"project_id": "P", "phase_id": "PH", **_FULL})
    before = cdb.get_run(run_id)
    changes = _draw_changes(data, RUN_FIELDS, before)
    row = dict(before, **changes)
    row[field] = data.draw(_timestamps if field == "created_at" else _text, label=field)
    if row[field] == before[field]:
        return
    seq = cdb.events_since(0)[-1]["seq"]
    with pytest.raises(ValidationError):
        cdb.update_run(run_id, row)
    assert cdb.get_run(run_id) == before and cdb.events_since(seq) == []


# -- get_db / init_db --------------------------------------------------------------------------

def test_get_db_is_one_compat_instance_per_ledger(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = str(tmp_path / "a.db")
    with ThreadPoolExecutor(max_workers=8) as pool:
        instances = list(pool.map(lambda _: compat.get_db(path), range(32)))
    assert all(db is instances[0] for db in instances)
    db = instances[0]
    assert type(db) is compat.Database
    assert compat.get_db("a.db") is db                    # the same file, spelled otherwise
    assert compat.get_db(tmp_path / "a.db") is db         # a PathLike
    other = compat.get_db(str(tmp_path / "b.db"))
    assert other is not db and other.db_path.endswith("b.db")
    assert compat.get_db(":memory:") is compat.get_db(":memory:")
    # uet.state's own instance is another object on the same ledger
    state_db = uet.state.get_db(path)
    assert state_db is not db and type(state_db) is uet.state.Database
    run_id = state_db.create_run({"project_id": "P", "phase_id": "PH"})
    assert db.get_run(run_id)["project_id"] == "P"
    assert db.conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 1


def test_get_db_defaults_and_options_as_uet_state(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("UET_DATABASE", raising=False)
    db = compat.get_db()
    assert os.path.realpath(db.db_path) == os.path.realpath(".ledger/framework.db")
    assert compat.get_db(".ledger/framework.db") is db
    monkeypatch.setenv("UET_DATABASE", str(tmp_path / "env.db"))
    assert compat.get_db().db_path == str(tmp_path / "env.db")
    with pytest.raises(ValidationError, match="busy_timeout"):
        compat.get_db(busy_timeout=1.5)
    assert compat.get_db(busy_timeout=compat.get_db().busy_timeout) is compat.get_db()
    db.close()
    reopened = compat.get_db(".ledger/framework.db")
    assert reopened is not db and not reopened.closed
    for bad in ("", 42, "a\x00b"):
        with pytest.raises(ValidationError):
            compat.get_db(bad)


def test_init_db_is_a_new_compat_instance_every_time(tmp_path):
    first = compat.init_db(str(tmp_path / "a.db"), durability="full", busy_timeout=2)
    second = compat.init_db(str(tmp_path / "a.db"))
    try:
        assert first is not second and type(first) is compat.Database
        assert (first.durability, first.busy_timeout) == ("full", 2.0)
        with uet.state.init_db(":memory:") as plain:
            assert second.busy_timeout == plain.busy_timeout
        with pytest.raises(ValidationError, match="durability"):
            compat.init_db(":memory:", durability="sometimes")
    finally:
        first.close()
        second.close()


def test_compat_is_exported_only_from_its_own_module():
    assert "compat" not in uet.state.__all__
    assert set(compat.__all__) >= {"Database", "get_db", "init_db"}
    assert compat.Database.__mro__[1] is uet.state.Database
    assert sys.modules["uet.compat"] is compat


def test_a_ledger_the_original_wrote_is_used_by_its_code_as_before(tmp_path):
    from reliability_suite.migration import SEED_DDL

    path = str(tmp_path / "framework.db")
    seed = sqlite3.connect(path)
    seed.executescript(SEED_DDL)
    seed.executemany(
        "INSERT INTO runs (run_id, project_id, phase_id, created_at, started_at, state, "
        "metadata) VALUES (?, 'PRJ', 'PH-1', ?, ?, ?, ?)",
        [("run-a", "2025-01-01T00:00:00", "2025-01-01T00:00:01", "running", "[1, 2]"),
         ("run-b", "yesterday", None, "pending", "5")])
    seed.execute("INSERT INTO step_attempts (step_attempt_id, run_id, sequence, tool_id, "
                 "started_at, state, metadata) VALUES ('step-a', 'run-a', 1, 'aider', "
                 "'2025-01-01T00:00:02', 'running', 'null')")
    seed.executemany("INSERT INTO run_events VALUES (?, 'run-a', ?, ?, '{}')",
                     [("e2", "2025-01-01T00:00:01", "run_started"),
                      ("e1", "2025-01-01T00:00:00", "run_created")])
    seed.commit()
    seed.close()

    db = compat.init_db(path)  # adopted in place
    try:
        events = db.list_events("run-a")
        assert events[0]["event_type"] == "run_created"
        assert [e["event_type"] for e in events] == ["run_created", "run_started"]
        # rows keep what the original stored, and can be written back whole
        run = db.get_run("run-a")
        assert run["metadata"] == [1, 2]
        run.update(state="succeeded", exit_code=0)
        assert db.update_run("run-a", run)["state"] == "succeeded"
        other = db.get_run("run-b")
        assert (other["created_at"], other["metadata"]) == ("yesterday", 5)
        other["error_message"] = "never started"
        assert db.update_run("run-b", other)["error_message"] == "never started"
        step = db.get_step_attempt("step-a")
        assert step["metadata"] is None
        step.update(state="failed", exit_code=2)
        assert db.update_step_attempt("step-a", step)["state"] == "failed"
        assert [e["event_type"] for e in db.list_events("run-a")] == [
            "run_created", "run_started"]
        assert [tuple(r) for r in db.conn.execute(
            "SELECT run_id, state FROM runs ORDER BY run_id")] == [
            ("run-a", "succeeded"), ("run-b", "pending")]
    finally:
        db.close()

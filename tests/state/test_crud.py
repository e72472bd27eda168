"""Every seed call round-trips: create, get, list, update, delete of runs, steps and events."""

from __future__ import annotations

import re

import pytest

from uet.errors import AlreadyExistsError, NotFoundError, ValidationError

ULID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
STAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")


def test_create_and_get_run_returns_every_column(db, sample_run_data):
    assert db.create_run(sample_run_data) == "run-0001"
    run = db.get_run("run-0001")
    assert run == {
        "run_id": "run-0001", "project_id": "PRJ-uet", "phase_id": "PH-001",
        "workstream_id": "WS-001", "execution_request_id": "ER-001",
        "created_at": "2026-01-31T12:00:00.000000Z", "started_at": None, "ended_at": None,
        "state": "pending", "exit_code": None, "error_message": None,
        "metadata": sample_run_data["metadata"], "worker_id": None, "priority": None,
        "recoveries": 0,
    }


def test_get_missing_run_is_none(db):
    assert db.get_run("nope") is None
    assert db.get_step_attempt("nope") is None


def test_ids_and_timestamps_are_generated_when_omitted(db):
    run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
    assert ULID.match(run_id)
    run = db.get_run(run_id)
    assert STAMP.match(run["created_at"])
    assert run["metadata"] == {}
    step_id = db.create_step_attempt({"run_id": run_id, "sequence": 1, "tool_id": "t"})
    assert ULID.match(step_id)
    assert STAMP.match(db.get_step_attempt(step_id)["started_at"])
    event_id = db.create_event({"run_id": run_id, "event_type": "note"})
    assert ULID.match(event_id)
    event = db.list_events(run_id)[-1]
    assert STAMP.match(event["timestamp"]) and event["data"] == {}


def test_generated_ids_sort_in_creation_order(db):
    ids = [db.create_run({"project_id": "p", "phase_id": "ph"}) for _ in range(50)]
    assert ids == sorted(ids) and len(set(ids)) == 50


@pytest.mark.parametrize("given, stored", [
    ("2026-01-31T12:00:00", "2026-01-31T12:00:00.000000Z"),
    ("2026-01-31T12:00:00.5Z", "2026-01-31T12:00:00.500000Z"),
    ("2026-01-31T14:00:00+02:00", "2026-01-31T12:00:00.000000Z"),
    ("0999-01-01T00:00:00Z", "0999-01-01T00:00:00.000000Z"),
])
def test_timestamps_are_stored_in_one_utc_format(db, given, stored):
    run_id = db.create_run({"project_id": "p", "phase_id": "ph", "created_at": given})
    assert db.get_run(run_id)["created_at"] == stored


def test_datetime_objects_are_accepted(db):
    from datetime import datetime, timezone
    run_id = db.create_run({"project_id": "p", "phase_id": "ph",
                            "created_at": datetime(2026, 5, 1, 8, 30, tzinfo=timezone.utc)})
    assert db.get_run(run_id)["created_at"] == "2026-05-01T08:30:00.000000Z"


def test_duplicate_run_id_is_refused(db, sample_run_data):
    db.create_run(sample_run_data)
    with pytest.raises(AlreadyExistsError, match="^run 'run-0001' already exists$"):
        db.create_run(sample_run_data)
    assert len(db.list_runs()) == 1


def test_update_run_changes_known_columns_and_returns_the_row(db, sample_run_data):
    db.create_run(sample_run_data)
    row = db.update_run("run-0001", {"error_message": "hm", "metadata": {"k": [1, 2]},
                                     "workstream_id": None})
    assert row["error_message"] == "hm" and row["metadata"] == {"k": [1, 2]}
    assert row["workstream_id"] is None
    assert db.get_run("run-0001") == row


def test_update_run_accepts_an_unchanged_run_id_but_never_a_new_one(db, sample_run_data):
    db.create_run(sample_run_data)
    db.update_run("run-0001", {"run_id": "run-0001", "exit_code": 3})
    with pytest.raises(ValidationError, match="^run field 'run_id' can never change$"):
        db.update_run("run-0001", {"run_id": "other"})
    assert db.get_run("run-0001")["exit_code"] == 3
    assert db.get_run("other") is None


def test_update_missing_run_is_not_found(db):
    with pytest.raises(NotFoundError, match="^run 'ghost' not found$"):
        db.update_run("ghost", {"exit_code": 1})
    with pytest.raises(NotFoundError, match="^step_attempt 'ghost' not found$"):
        db.update_step_attempt("ghost", {"exit_code": 1})


def test_list_runs_newest_first_with_limit(db):
    for day in range(1, 6):
        db.create_run({"run_id": f"r{day}", "project_id": "p", "phase_id": "ph",
                       "created_at": f"2026-01-0{day}T00:00:00Z"})
    assert [r["run_id"] for r in db.list_runs()] == ["r5", "r4", "r3", "r2", "r1"]
    assert [r["run_id"] for r in db.list_runs(limit=2)] == ["r5", "r4"]
    assert len(db.list_runs(limit=None)) == 5


def test_list_runs_equal_timestamps_have_a_stable_order(db):
    for name in ("b", "a", "c"):
        db.create_run({"run_id": name, "project_id": "p", "phase_id": "ph",
                       "created_at": "2026-01-01T00:00:00Z"})
    assert [r["run_id"] for r in db.list_runs()] == ["c", "b", "a"]


def test_list_runs_filters(db):
    db.create_run({"run_id": "a", "project_id": "p1", "phase_id": "x", "workstream_id": "w"})
    db.create_run({"run_id": "b", "project_id": "p1", "phase_id": "y"})
    db.create_run({"run_id": "c", "project_id": "p2", "phase_id": "x"})
    db.transition_run("b", "running")
    ids = lambda runs: sorted(r["run_id"] for r in runs)  # noqa: E731
    assert ids(db.list_runs({"project_id": "p1"})) == ["a", "b"]
    assert ids(db.list_runs({"project_id": "p1", "state": "pending"})) == ["a"]
    assert ids(db.list_runs({"phase_id": "x"})) == ["a", "c"]
    assert ids(db.list_runs({"workstream_id": None})) == ["b", "c"]
    assert ids(db.list_runs({"state": "running"})) == ["b"]
    assert db.list_runs({"project_id": "nobody"}) == []
    assert ids(db.list_runs({})) == ["a", "b", "c"]


@pytest.mark.parametrize("limit", [0, -1, "10", 1.5, True])
def test_list_runs_bad_limit(db, limit):
    with pytest.raises(ValidationError, match=f"^limit must be an integer from 1 to "
                                              f"{2**63 - 1}, got {re.escape(repr(limit))}$"):
        db.list_runs(limit=limit)


def test_step_attempt_crud(db, sample_run_data, sample_step_data):
    db.create_run(sample_run_data)
    assert db.create_step_attempt(sample_step_data) == "step-0001"
    step = db.get_step_attempt("step-0001")
    assert step["state"] == "running" and step["attempt"] == 1
    assert step["metadata"] == {"model": "gpt", "tokens": 1234}
    assert step["input_prompt"] == "fix the failing test"
    row = db.update_step_attempt("step-0001", {"output_patch_id": "patch-1",
                                               "error_log": "warn", "tool_run_id": "TR-2"})
    assert (row["output_patch_id"], row["error_log"], row["tool_run_id"]) == (
        "patch-1", "warn", "TR-2")
    assert db.get_step_attempt("step-0001") == row


def test_list_step_attempts_by_sequence_then_attempt(db, sample_run_data):
    run_id = db.create_run(sample_run_data)
    for seq, tool in [(3, "c"), (1, "a"), (2, "b"), (1, "a-retry")]:
        db.create_step_attempt({"run_id": run_id, "sequence": seq, "tool_id": tool})
    steps = db.list_step_attempts(run_id)
    assert [(s["sequence"], s["attempt"], s["tool_id"]) for s in steps] == [
        (1, 1, "a"), (1, 2, "a-retry"), (2, 1, "b"), (3, 1, "c")]
    assert db.list_step_attempts("other-run") == []


def test_explicit_attempt_numbers_must_be_unique_per_sequence(db, sample_run_data):
    run_id = db.create_run(sample_run_data)
    db.create_step_attempt({"run_id": run_id, "sequence": 1, "tool_id": "t", "attempt": 4})
    with pytest.raises(ValidationError, match=f"^run '{run_id}' already has attempt 4 of step "
                                              "sequence 1; omit attempt"):
        db.create_step_attempt({"run_id": run_id, "sequence": 1, "tool_id": "t", "attempt": 4})
    nxt = db.create_step_attempt({"run_id": run_id, "sequence": 1, "tool_id": "t"})
    assert db.get_step_attempt(nxt)["attempt"] == 5


def test_step_attempt_for_missing_run_is_a_dangling_reference(db):
    with pytest.raises(ValidationError, match="^step_attempt '[0-9A-Z]{26}' refers to run "
                                              "'ghost', which does not exist$"):
        db.create_step_attempt({"run_id": "ghost", "sequence": 1, "tool_id": "t"})
    with pytest.raises(ValidationError, match="^event '[0-9A-Z]{26}' refers to run 'ghost', "
                                              "which does not exist$"):
        db.create_event({"run_id": "ghost", "event_type": "x"})
    assert db.events_since(0) == []


def test_create_event_and_list(db, sample_run_data, sample_event_data):
    db.create_run(sample_run_data)
    assert db.create_event(sample_event_data) == "event-0001"
    events = [e for e in db.list_events("run-0001") if e["event_type"] == "tool.output"]
    assert events == [{"event_id": "event-0001", "run_id": "run-0001",
                       "timestamp": "2026-01-31T12:00:02.000000Z", "event_type": "tool.output",
                       "data": {"line": "ok", "n": 1}, "seq": events[0]["seq"]}]
    with pytest.raises(AlreadyExistsError, match="^event 'event-0001' already exists$"):
        db.create_event(sample_event_data)


def test_delete_run_removes_steps_and_events(db, sample_run_data, sample_step_data,
                                             sample_event_data):
    db.create_run(sample_run_data)
    db.create_run({"run_id": "keep", "project_id": "p", "phase_id": "ph"})
    db.create_step_attempt(sample_step_data)
    db.create_event(sample_event_data)
    db.delete_run("run-0001")
    assert db.get_run("run-0001") is None
    assert db.get_step_attempt("step-0001") is None
    assert db.list_events("run-0001") == []
    assert db.list_step_attempts("run-0001") == []
    assert [e["run_id"] for e in db.events_since(0)] == ["keep"]
    with pytest.raises(NotFoundError, match="^run 'run-0001' not found$"):
        db.delete_run("run-0001")


def test_json_round_trip_keeps_types(db):
    metadata = {"s": "é ✓ \u0001 \U0001F600", "i": 2**62, "f": 1.5, "b": True, "n": None,
                "l": [1, "two", {"three": 3}], "d": {"deep": {"deeper": []}}}
    run_id = db.create_run({"project_id": "p", "phase_id": "ph", "metadata": metadata})
    assert db.get_run(run_id)["metadata"] == metadata
    assert db.list_runs()[0]["metadata"] == metadata
    db.create_event({"run_id": run_id, "event_type": "x", "data": metadata})
    assert db.list_events(run_id)[-1]["data"] == metadata


def test_context_manager_closes(tmp_path):
    from uet.errors import StorageError
    from uet.state import init_db
    with init_db(str(tmp_path / "x.db")) as db:
        db.create_run({"project_id": "p", "phase_id": "ph"})
    assert db.closed
    with pytest.raises(StorageError, match=f"^ledger {re.escape(db.db_path)} is closed$"):
        db.list_runs()
    db.connect()  # the seed's reopen
    assert len(db.list_runs()) == 1
    db.close()

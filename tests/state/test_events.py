"""The audit trail: total order by seq, tailing from a cursor, atomic with state changes."""

from __future__ import annotations

import sqlite3

import pytest

from uet.errors import UetError
from uet.state import init_db


def test_events_with_identical_timestamps_keep_recording_order(db):
    run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
    same = "2026-01-01T00:00:00.000000Z"
    # ids chosen to sort against recording order: order must come from seq alone
    for i, event_id in enumerate(["z", "m", "a", "q", "b"]):
        db.create_event({"event_id": event_id, "run_id": run_id, "timestamp": same,
                         "event_type": "tick", "data": {"i": i}})
    ticks = [e for e in db.list_events(run_id) if e["event_type"] == "tick"]
    assert [e["data"]["i"] for e in ticks] == [0, 1, 2, 3, 4]
    assert [e["event_id"] for e in ticks] == ["z", "m", "a", "q", "b"]
    since = [e for e in db.events_since(0, run_id=run_id) if e["event_type"] == "tick"]
    assert since == ticks


def test_list_events_does_not_follow_timestamps_given_out_of_order(db):
    run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
    db.create_event({"run_id": run_id, "event_type": "late", "timestamp": "2030-01-01T00:00:00Z"})
    db.create_event({"run_id": run_id, "event_type": "early",
                     "timestamp": "2020-01-01T00:00:00Z"})
    assert [e["event_type"] for e in db.list_events(run_id)] == ["run.created", "late", "early"]


def test_seq_is_strictly_increasing_across_runs(db):
    a = db.create_run({"project_id": "p", "phase_id": "ph"})
    b = db.create_run({"project_id": "p", "phase_id": "ph"})
    for i in range(10):
        db.create_event({"run_id": a if i % 2 else b, "event_type": "e", "data": {"i": i}})
    seqs = [e["seq"] for e in db.events_since(0)]
    assert seqs == list(range(1, 13))


def test_events_since_pages_through_the_trail(db):
    run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
    for i in range(25):
        db.create_event({"run_id": run_id, "event_type": "e", "data": {"i": i}})
    seen, cursor = [], 0
    while page := db.events_since(cursor, limit=7):
        seen.extend(page)
        cursor = page[-1]["seq"]
    assert len(seen) == 26 and [e["seq"] for e in seen] == sorted(e["seq"] for e in seen)
    assert db.events_since(cursor) == []


def test_events_since_filters_by_run(db):
    a = db.create_run({"project_id": "p", "phase_id": "ph"})
    b = db.create_run({"project_id": "p", "phase_id": "ph"})
    db.create_event({"run_id": a, "event_type": "only-a"})
    db.create_event({"run_id": b, "event_type": "only-b"})
    assert [e["event_type"] for e in db.events_since(0, run_id=b)] == ["run.created", "only-b"]
    first_of_b = db.events_since(0, run_id=b)[0]["seq"]
    assert [e["event_type"] for e in db.events_since(first_of_b, run_id=b)] == ["only-b"]


def test_seq_is_never_reused_after_the_newest_events_are_deleted(db):
    keep = db.create_run({"project_id": "p", "phase_id": "ph"})
    gone = db.create_run({"project_id": "p", "phase_id": "ph"})
    for _ in range(3):
        db.create_event({"run_id": gone, "event_type": "e"})
    cursor = db.events_since(0)[-1]["seq"]  # a follower has seen everything
    db.delete_run(gone)
    db.create_event({"run_id": keep, "event_type": "after-delete"})
    assert [e["event_type"] for e in db.events_since(cursor)] == ["after-delete"]


def test_a_failing_event_write_rolls_back_the_state_change(tmp_path):
    """The state change and its event commit together or not at all."""
    path = str(tmp_path / "l.db")
    db = init_db(path)
    run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
    step_id = db.create_step_attempt({"run_id": run_id, "sequence": 1, "tool_id": "t"})
    raw = sqlite3.connect(path)
    raw.execute("CREATE TRIGGER no_events BEFORE INSERT ON run_events "
                "WHEN NEW.event_type LIKE '%state_changed' "
                "BEGIN SELECT RAISE(ABORT, 'event store unavailable'); END")
    raw.commit()
    before = db.events_since(0)
    with pytest.raises(UetError, match="event store unavailable"):
        db.transition_run(run_id, "running")
    with pytest.raises(UetError, match="event store unavailable"):
        db.update_step_attempt(step_id, {"state": "failed", "exit_code": 1})
    assert db.get_run(run_id)["state"] == "pending"
    assert db.get_run(run_id)["started_at"] is None
    step = db.get_step_attempt(step_id)
    assert (step["state"], step["exit_code"], step["ended_at"]) == ("running", None, None)
    assert db.events_since(0) == before
    raw.execute("DROP TRIGGER no_events")
    raw.commit()
    raw.close()
    assert db.transition_run(run_id, "running")["state"] == "running"
    db.close()


def test_a_failing_created_event_rolls_back_the_creation(tmp_path):
    path = str(tmp_path / "l.db")
    db = init_db(path)
    run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
    raw = sqlite3.connect(path)
    raw.execute("CREATE TRIGGER no_events BEFORE INSERT ON run_events "
                "WHEN NEW.event_type LIKE '%.created' "
                "BEGIN SELECT RAISE(ABORT, 'event store unavailable'); END")
    raw.commit()
    raw.close()
    before = db.events_since(0)
    with pytest.raises(UetError, match="event store unavailable"):
        db.create_run({"run_id": "never", "project_id": "p", "phase_id": "ph"})
    with pytest.raises(UetError, match="event store unavailable"):
        db.create_step_attempt({"step_attempt_id": "never", "run_id": run_id, "sequence": 1,
                                "tool_id": "t"})
    assert db.get_run("never") is None and db.get_step_attempt("never") is None
    assert db.events_since(0) == before
    db.close()


def test_every_state_change_has_its_event(in_memory_db):
    db = in_memory_db
    run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
    db.transition_run(run_id, "running")
    s1 = db.create_step_attempt({"run_id": run_id, "sequence": 1, "tool_id": "a"})
    db.transition_step_attempt(s1, "failed", exit_code=1)
    s2 = db.create_step_attempt({"run_id": run_id, "sequence": 1, "tool_id": "a"})
    db.update_step_attempt(s2, {"state": "succeeded", "exit_code": 0})
    db.update_run(run_id, {"state": "succeeded", "exit_code": 0})
    assert [(e["event_type"], e["data"].get("to")) for e in db.list_events(run_id)] == [
        ("run.created", None), ("run.state_changed", "running"),
        ("step_attempt.created", None), ("step_attempt.state_changed", "failed"),
        ("step_attempt.created", None), ("step_attempt.state_changed", "succeeded"),
        ("run.state_changed", "succeeded")]
    created = db.list_events(run_id)[4]["data"]
    assert created == {"step_attempt_id": s2, "sequence": 1, "attempt": 2, "tool_id": "a",
                       "state": "running"}


def test_non_state_updates_write_no_event(in_memory_db):
    db = in_memory_db
    run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
    n = len(db.list_events(run_id))
    db.update_run(run_id, {"metadata": {"note": "x"}, "error_message": "y"})
    assert len(db.list_events(run_id)) == n

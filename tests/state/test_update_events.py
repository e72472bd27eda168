"""No history is rewritten silently: every update_run / update_step_attempt (and transition)
call that changes a row records what it changed, old and new, in an event of the same
transaction; a call that changes nothing writes nothing; created_at and the ids never
change."""

from __future__ import annotations

import re

import pytest

from helpers import allow_event_inserts, raw_execute, refuse_event_inserts
from uet.errors import UetError, ValidationError
from uet.state import init_db


@pytest.fixture
def run_id(db):
    return db.create_run({"run_id": "r", "project_id": "p", "phase_id": "ph"})


@pytest.fixture
def step_id(db, run_id):
    return db.create_step_attempt({"step_attempt_id": "s", "run_id": run_id, "sequence": 1,
                                   "tool_id": "t"})


def _new_events(db, cursor: int) -> list[tuple[str, dict]]:
    return [(e["event_type"], e["data"]) for e in db.events_since(cursor)]


def _cursor(db) -> int:
    return db.events_since(0)[-1]["seq"]


def test_an_update_records_each_field_it_changed_from_and_to(db, run_id):
    cursor = _cursor(db)
    row = db.update_run(run_id, {"exit_code": 3, "error_message": "boom",
                                 "metadata": {"k": [1, 2]}, "workstream_id": None})
    assert (row["exit_code"], row["error_message"], row["metadata"]) == (3, "boom",
                                                                         {"k": [1, 2]})
    db.update_run(run_id, {"error_message": "bang", "exit_code": 3})
    assert _new_events(db, cursor) == [
        ("run.updated", {"changed": {"exit_code": {"from": None, "to": 3},
                                     "error_message": {"from": None, "to": "boom"},
                                     "metadata": {"from": {}, "to": {"k": [1, 2]}}}}),
        ("run.updated", {"changed": {"error_message": {"from": "boom", "to": "bang"}}})]
    assert db.list_events(run_id)[-1]["event_type"] == "run.updated"  # in the run's trail


def test_a_step_attempt_update_names_the_step_attempt(db, step_id):
    cursor = _cursor(db)
    db.update_step_attempt(step_id, {"tool_run_id": "TR-1", "ended_at": "2026-01-31T12:00:00Z"})
    assert _new_events(db, cursor) == [("step_attempt.updated", {
        "step_attempt_id": step_id,
        "changed": {"tool_run_id": {"from": None, "to": "TR-1"},
                    "ended_at": {"from": None, "to": "2026-01-31T12:00:00.000000Z"}}})]


def test_an_update_that_changes_nothing_writes_nothing(db, run_id, step_id):
    db.update_run(run_id, {"exit_code": 1, "error_message": "e",
                           "metadata": {"a": 1, "b": {"c": [1.5, None]}}})
    db.update_step_attempt(step_id, {"metadata": {"x": True}, "error_log": "log"})
    cursor, run, step = _cursor(db), db.get_run(run_id), db.get_step_attempt(step_id)
    # the same values (a JSON value with its keys in another order is the same value)
    assert db.update_run(run_id, {"run_id": run_id, "exit_code": 1, "error_message": "e",
                                  "metadata": {"b": {"c": [1.5, None]}, "a": 1},
                                  "workstream_id": run["workstream_id"]}) == run
    assert db.update_step_attempt(step_id, {"metadata": {"x": True}, "error_log": "log",
                                            "step_attempt_id": step_id}) == step
    assert db.update_run(run_id, {}) == run
    assert _new_events(db, cursor) == []
    assert (db.get_run(run_id), db.get_step_attempt(step_id)) == (run, step)
    # only what differs is listed
    db.update_run(run_id, {"exit_code": 1, "error_message": "f"})
    assert _new_events(db, cursor) == [
        ("run.updated", {"changed": {"error_message": {"from": "e", "to": "f"}}})]


def test_an_empty_json_value_is_the_same_as_none(db, run_id):
    """A JSON field reads as {} when empty, so None and {} are the same value to a reader."""
    cursor = _cursor(db)
    db.update_run(run_id, {"metadata": {}})
    db.update_run(run_id, {"metadata": None})
    assert _new_events(db, cursor) == [] and db.get_run(run_id)["metadata"] == {}


@pytest.mark.parametrize("old, new", [({"a": 1}, {"a": 1.0}), ({"a": 1}, {"a": True}),
                                      ({"a": 0}, {"a": False}), ({"a": [1]}, {"a": [1, 1]})],
                         ids=["int-float", "int-bool", "zero-false", "list"])
def test_json_values_that_read_back_differently_are_a_change(db, run_id, old, new):
    db.update_run(run_id, {"metadata": old})
    cursor = _cursor(db)
    assert db.update_run(run_id, {"metadata": new})["metadata"] == new
    assert _new_events(db, cursor) == [
        ("run.updated", {"changed": {"metadata": {"from": old, "to": new}}})]


def test_long_values_are_abbreviated_in_the_event_and_whole_in_the_row(db, run_id):
    message, blob = "é" * 5000, {"blob": "x" * 1000}
    db.update_run(run_id, {"error_message": message, "metadata": blob})
    changed = db.list_events(run_id)[-1]["data"]["changed"]
    assert changed["error_message"] == {
        "from": None, "to": "é" * 200 + "... [5,000 characters in all]"}
    assert changed["metadata"] == {
        "from": {}, "to": '{"blob":"' + "x" * 191 + "... [1,011 characters in all]"}
    assert db.get_run(run_id)["error_message"] == message
    assert db.get_run(run_id)["metadata"] == blob
    db.update_run(run_id, {"error_message": "short"})
    assert db.list_events(run_id)[-1]["data"]["changed"] == {"error_message": {
        "from": "é" * 200 + "... [5,000 characters in all]", "to": "short"}}


def test_a_state_change_lists_the_other_fields_the_call_changed(db, run_id, step_id):
    """One call, one event: a call that changes the state writes its state_changed event
    with `changed`; the timestamp it stamps for the state entered is not listed."""
    db.transition_run(run_id, "running")
    cursor = _cursor(db)
    db.update_step_attempt(step_id, {"state": "failed", "exit_code": 2, "error_log": "x"})
    db.transition_run(run_id, "failed", exit_code=2, error_message="step 1 failed")
    db.update_run(run_id, {"state": "quarantined", "error_message": "step 1 failed"})
    assert _new_events(db, cursor) == [
        ("step_attempt.state_changed", {
            "step_attempt_id": step_id, "from": "running", "to": "failed", "exit_code": 2,
            "changed": {"exit_code": {"from": None, "to": 2},
                        "error_log": {"from": None, "to": "x"}}}),
        ("run.state_changed", {
            "from": "running", "to": "failed", "exit_code": 2,
            "changed": {"exit_code": {"from": None, "to": 2},
                        "error_message": {"from": None, "to": "step 1 failed"}}}),
        ("run.state_changed", {"from": "failed", "to": "quarantined", "exit_code": 2})]


def test_a_caller_given_timestamp_with_a_state_is_listed(db, run_id):
    cursor = _cursor(db)
    db.update_run(run_id, {"state": "running", "started_at": "2026-01-01T00:00:00Z"})
    assert _new_events(db, cursor) == [("run.state_changed", {
        "from": "pending", "to": "running",
        "changed": {"started_at": {"from": None, "to": "2026-01-01T00:00:00.000000Z"}}})]


@pytest.mark.parametrize("call, updates, message", [
    ("update_run", {"created_at": "2020-01-01T00:00:00Z"}, "run field 'created_at'"),
    ("update_run", {"run_id": "other"}, "run field 'run_id'"),
    ("update_step_attempt", {"step_attempt_id": "other"}, "step_attempt field "
                                                           "'step_attempt_id'"),
    ("update_step_attempt", {"run_id": "other"}, "step_attempt field 'run_id'"),
])
def test_created_at_and_the_ids_never_change(db, step_id, call, updates, message):
    before = (db.get_run("r"), db.get_step_attempt(step_id), db.events_since(0))
    target = "r" if call == "update_run" else step_id
    with pytest.raises(ValidationError, match=f"^{re.escape(message)} can never change$"):
        getattr(db, call)(target, {"error_message" if call == "update_run" else "error_log":
                                   "x", **updates})
    assert (db.get_run("r"), db.get_step_attempt(step_id), db.events_since(0)) == before


@pytest.mark.parametrize("event_type", ["run.updated", "step_attempt.updated"])
def test_update_events_cannot_be_forged(db, run_id, event_type):
    before = db.events_since(0)
    with pytest.raises(ValidationError, match=f"^event type '{re.escape(event_type)}' is "
                                              "written by the ledger itself"):
        db.create_event({"run_id": run_id, "event_type": event_type})
    assert db.events_since(0) == before


def test_an_update_and_its_event_commit_together_or_not_at_all(ledger):
    db = init_db(ledger)
    run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
    step_id = db.create_step_attempt({"run_id": run_id, "sequence": 1, "tool_id": "t"})
    refuse_event_inserts(db, "%.updated")
    before = (db.get_run(run_id), db.get_step_attempt(step_id), db.events_since(0))
    # an outage of the event store is each engine's own error type (see test_events.py)
    with pytest.raises(UetError, match="event store unavailable"):
        db.update_run(run_id, {"error_message": "x", "metadata": {"a": 1}})
    with pytest.raises(UetError, match="event store unavailable"):
        db.update_step_attempt(step_id, {"exit_code": 1})
    assert (db.get_run(run_id), db.get_step_attempt(step_id), db.events_since(0)) == before
    allow_event_inserts(db)
    assert db.update_run(run_id, {"error_message": "x"})["error_message"] == "x"
    db.close()


def test_a_value_stored_before_the_text_rule_is_shown_escaped(db, run_id):
    """A row written by an older version may hold text the rule now refuses (here a NUL in
    JSON, which both engines' json columns hold); updating it works, and the event shows
    the old value escaped."""
    raw_execute(db, "UPDATE runs SET metadata = ? WHERE run_id = ?",
                ('{"a": "x\\u0000", "\\u0000": 1}', run_id))
    assert db.get_run(run_id)["metadata"] == {"a": "x\x00", "\x00": 1}
    db.update_run(run_id, {"metadata": {"a": "x"}})
    assert db.list_events(run_id)[-1]["data"] == {"changed": {"metadata": {
        "from": '{"a":"x\\u0000","\\u0000":1}', "to": {"a": "x"}}}}

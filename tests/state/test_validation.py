"""Bad input gets a typed error naming the problem, and the ledger is left exactly as it was."""

from __future__ import annotations

import re

import pytest

from uet.errors import StorageError, ValidationError
from uet.state.events import RESERVED_EVENT_TYPES

INJECTIONS = [
    "state = 'running'; DROP TABLE runs; --",
    "run_id) VALUES ('x'); --",
    "1=1 OR state",
    "metadata\" = 1 --",
    "",
    "RUN_ID",
]


def snapshot(db) -> tuple:
    runs = db.list_runs(limit=None)
    steps = [db.list_step_attempts(r["run_id"]) for r in runs]
    return runs, steps, db.events_since(0, limit=10**6)


@pytest.fixture
def seeded(db, sample_run_data, sample_step_data, sample_event_data):
    db.create_run(sample_run_data)
    db.create_step_attempt(sample_step_data)
    db.create_event(sample_event_data)
    return db


@pytest.mark.parametrize("key", INJECTIONS + [1, None, ("run_id",)])
def test_unknown_update_keys_are_refused(seeded, key):
    before = snapshot(seeded)
    named = re.escape(repr(key))
    with pytest.raises(ValidationError,
                       match=rf"^unknown run field in update_run: {named}; known fields: "):
        seeded.update_run("run-0001", {"exit_code": 1, key: "x"})
    with pytest.raises(ValidationError, match=rf"^unknown step_attempt field in "
                                              rf"update_step_attempt: {named}; known fields: "):
        seeded.update_step_attempt("step-0001", {key: "x"})
    assert snapshot(seeded) == before


@pytest.mark.parametrize("key", INJECTIONS + [3])
def test_unknown_filter_keys_are_refused(seeded, key):
    with pytest.raises(ValidationError, match=rf"^unknown run field in filters: "
                                              rf"{re.escape(repr(key))}; known fields: ") as info:
        seeded.list_runs({key: "x"})
    assert info.value.field == str(key)
    assert "known fields: run_id" in str(info.value)


@pytest.mark.parametrize("value", INJECTIONS)
def test_injection_strings_as_values_are_just_data(seeded, value):
    seeded.update_run("run-0001", {"error_message": value})
    assert seeded.get_run("run-0001")["error_message"] == value
    assert seeded.list_runs({"error_message": value})[0]["run_id"] == "run-0001"
    assert seeded.list_runs({"project_id": value}) == []
    run_id = seeded.create_run({"project_id": value or "p", "phase_id": "ph"})
    assert seeded.get_run(run_id)["project_id"] == (value or "p")
    assert len(seeded.list_runs(limit=None)) == 2


@pytest.mark.parametrize("call, data, field", [
    ("create_run", {"project_id": "p"}, "phase_id"),
    ("create_run", {"phase_id": "ph"}, "project_id"),
    ("create_run", {"project_id": None, "phase_id": "ph"}, "project_id"),
    ("create_step_attempt", {"run_id": "run-0001", "sequence": 1}, "tool_id"),
    ("create_step_attempt", {"run_id": "run-0001", "tool_id": "t"}, "sequence"),
    ("create_step_attempt", {"sequence": 1, "tool_id": "t"}, "run_id"),
    ("create_event", {"run_id": "run-0001"}, "event_type"),
    ("create_event", {"event_type": "x"}, "run_id"),
])
def test_missing_required_fields(seeded, call, data, field):
    before = snapshot(seeded)
    entity = {"create_run": "run", "create_step_attempt": "step_attempt",
              "create_event": "event"}[call]
    with pytest.raises(ValidationError,
                       match=f"^missing required {entity} field '{field}'$") as info:
        getattr(seeded, call)(data)
    assert info.value.field == field and field in str(info.value)
    assert snapshot(seeded) == before


@pytest.mark.parametrize("call, data, field, message", [
    ("create_run", {"project_id": 1, "phase_id": "ph"}, "project_id",
     "run field 'project_id' must be a string, got int"),
    ("create_run", {"project_id": "p", "phase_id": "ph", "exit_code": "0"}, "exit_code",
     "run field 'exit_code' must be an integer, got str"),
    ("create_run", {"project_id": "p", "phase_id": "ph", "exit_code": True}, "exit_code",
     "run field 'exit_code' must be an integer, got bool"),
    ("create_run", {"project_id": "p", "phase_id": "ph", "exit_code": 2**63}, "exit_code",
     "run field 'exit_code' is out of the 64-bit integer range"),
    ("create_run", {"project_id": "p", "phase_id": "ph", "created_at": "yesterday"},
     "created_at", "run field created_at must be an ISO-8601 timestamp such as "
                   "'2026-01-31T12:00:00.000000Z', got 'yesterday'"),
    ("create_run", {"project_id": "p", "phase_id": "ph", "created_at": 1700000000},
     "created_at", "run field created_at must be an ISO-8601 string or a datetime, got int"),
    ("create_run", {"project_id": "p", "phase_id": "ph", "metadata": "{}"}, "metadata",
     "run field 'metadata' must be a dict, got str"),
    ("create_run", {"project_id": "p", "phase_id": "ph", "metadata": {"x": object()}},
     "metadata", "run field 'metadata' must be JSON-serialisable: Object of type object "),
    ("create_run", {"project_id": "p", "phase_id": "ph", "metadata": {"x": float("nan")}},
     "metadata", "run field 'metadata' must be JSON-serialisable: Out of range float "),
    ("create_run", {"project_id": "p", "phase_id": "ph", "metadata": {(1, 2): "tuple key"}},
     "metadata", "run field 'metadata' must be JSON-serialisable: keys must be str"),
    ("create_run", {"project_id": "p", "phase_id": "ph", "state": "done"}, "state",
     "unknown run state 'done'; known states: pending, running, "),
    ("create_run", {"project_id": "\ud800", "phase_id": "ph"}, "project_id",
     "run field 'project_id' is not valid Unicode text (it contains a lone surrogate)"),
    ("create_run", {"run_id": "", "project_id": "p", "phase_id": "ph"}, "run_id",
     "run field 'run_id' cannot be empty"),
    ("create_step_attempt", {"run_id": "run-0001", "sequence": "1", "tool_id": "t"},
     "sequence", "step_attempt field 'sequence' must be an integer, got str"),
    ("create_step_attempt", {"run_id": "run-0001", "sequence": 1, "tool_id": "t",
                             "attempt": 0}, "attempt",
     "step_attempt field 'attempt' must be at least 1, got 0"),
    ("create_event", {"run_id": "run-0001", "event_type": "x", "data": [1, 2]}, "data",
     "event field 'data' must be a dict, got list"),
    ("create_event", {"run_id": "run-0001", "event_type": 5}, "event_type",
     "event field 'event_type' must be a string, got int"),
])
def test_wrong_types_are_refused(seeded, call, data, field, message):
    before = snapshot(seeded)
    with pytest.raises(ValidationError, match="^" + re.escape(message)) as info:
        getattr(seeded, call)(data)
    assert info.value.field == field
    assert snapshot(seeded) == before


def test_non_json_metadata_in_update_writes_nothing(seeded):
    before = snapshot(seeded)
    circular: dict = {}
    circular["self"] = circular
    for bad in ({"x": {1, 2}}, circular, {"x": b"bytes"}):
        with pytest.raises(ValidationError,
                           match=r"^run field 'metadata' must be JSON-serialisable: "):
            seeded.update_run("run-0001", {"error_message": "changed", "metadata": bad})
    assert snapshot(seeded) == before


def _nested(depth: int) -> dict:
    deep: dict = {}
    node = deep
    for _ in range(depth - 1):
        node["x"] = {}
        node = node["x"]
    return deep


@pytest.mark.parametrize("depth", [201, 990, 100_000])
def test_deeply_nested_json_is_a_validation_error(seeded, depth):
    before = snapshot(seeded)
    # too deep for the limit, or (deeper still) for the JSON encoder itself
    too_deep = (r"(is nested deeper than 200 levels"
                r"|must be JSON-serialisable: maximum recursion depth exceeded)")
    with pytest.raises(ValidationError, match=rf"^run field 'metadata' {too_deep}"):
        seeded.create_run({"project_id": "p", "phase_id": "ph", "metadata": _nested(depth)})
    with pytest.raises(ValidationError, match=rf"^event field 'data' {too_deep}"):
        seeded.create_event({"run_id": "run-0001", "event_type": "e", "data": _nested(depth)})
    assert snapshot(seeded) == before


def test_json_nested_to_the_limit_is_stored_and_read_back(seeded):
    deep = _nested(200)
    seeded.create_event({"run_id": "run-0001", "event_type": "deep", "data": deep})
    assert seeded.list_events("run-0001")[-1]["data"] == deep
    assert seeded.events_since(0)[-1]["data"] == deep
    wide_and_deep = {"l": [[[[[[1]]]]]] * 100, "s": "y" * 1000}
    run_id = seeded.create_run({"project_id": "p", "phase_id": "ph", "metadata": wide_and_deep})
    assert seeded.transition_run(run_id, "running")["metadata"] == wide_and_deep


@pytest.mark.parametrize("stamp", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_timestamps_outside_the_utc_calendar_are_refused(seeded, stamp):
    message = (f"^run field created_at {re.escape(repr(stamp))} is outside the years 1 to 9999 "
               "in UTC$")
    with pytest.raises(ValidationError, match=message):
        seeded.create_run({"project_id": "p", "phase_id": "ph", "created_at": stamp})
    with pytest.raises(ValidationError, match=message):
        seeded.list_runs({"created_at": stamp})


@pytest.mark.parametrize("data", [None, [("project_id", "p")], "run", 42])
def test_create_needs_a_dict(db, data):
    kind = type(data).__name__
    with pytest.raises(ValidationError, match=f"^run data must be a dict, got {kind}$"):
        db.create_run(data)
    with pytest.raises(ValidationError, match=f"^event data must be a dict, got {kind}$"):
        db.create_event(data)


def test_unknown_create_fields_name_the_field(db):
    with pytest.raises(ValidationError,
                       match="^unknown run field in create_run: 'colour'; ") as info:
        db.create_run({"project_id": "p", "phase_id": "ph", "colour": "red"})
    assert info.value.field == "colour"
    with pytest.raises(ValidationError, match="^unknown event field in create_event: 'seq'; "):
        db.create_event({"run_id": "x", "event_type": "t", "seq": 1})
    assert db.list_runs() == []


@pytest.mark.parametrize("bad_id", [None, 1, "", b"run"])
def test_ids_must_be_non_empty_strings(seeded, bad_id):
    for call, field in ((seeded.get_run, "run_id"), (seeded.get_step_attempt, "step_attempt_id"),
                        (seeded.list_events, "run_id"), (seeded.list_step_attempts, "run_id"),
                        (seeded.delete_run, "run_id")):
        with pytest.raises(ValidationError, match=f"^{field} must be a non-empty string, got "
                                                  f"{re.escape(repr(bad_id))}$"):
            call(bad_id)


def test_required_fields_cannot_be_emptied_by_update(seeded):
    before = snapshot(seeded)
    for bad, why in ((None, "cannot be empty"), (0, "must be at least 1, got 0"),
                     (-1, "must be at least 1, got -1")):
        with pytest.raises(ValidationError, match=f"^step_attempt field 'attempt' {why}$"):
            seeded.update_step_attempt("step-0001", {"attempt": bad})
    with pytest.raises(ValidationError, match="^run field 'project_id' cannot be empty$"):
        seeded.update_run("run-0001", {"project_id": None})
    with pytest.raises(ValidationError,
                       match="^step_attempt field 'run_id' can never change$"):
        seeded.update_step_attempt("step-0001", {"run_id": "other"})
    assert snapshot(seeded) == before


@pytest.mark.parametrize("event_type", sorted(RESERVED_EVENT_TYPES))
def test_ledger_event_types_cannot_be_forged(seeded, event_type):
    with pytest.raises(ValidationError, match=f"^event type {re.escape(repr(event_type))} is "
                                              "written by the ledger itself"):
        seeded.create_event({"run_id": "run-0001", "event_type": event_type})


def test_json_filters_are_refused(seeded):
    with pytest.raises(ValidationError, match="^cannot filter on JSON field 'metadata'$"):
        seeded.list_runs({"metadata": {"tool": "aider"}})


def test_filter_values_are_type_checked(seeded):
    with pytest.raises(ValidationError, match="^unknown run state 'finished'; known states: "):
        seeded.list_runs({"state": "finished"})
    with pytest.raises(ValidationError,
                       match="^run field 'exit_code' must be an integer, got str$"):
        seeded.list_runs({"exit_code": "0"})
    with pytest.raises(ValidationError, match="^filters must be a dict, got list$"):
        seeded.list_runs([("state", "pending")])


@pytest.mark.parametrize("cursor, limit, refused", [
    (-1, 10, "cursor must be an integer from 0 to 9223372036854775807, got -1"),
    ("0", 10, "cursor must be an integer from 0 to 9223372036854775807, got '0'"),
    (0, 0, "limit must be an integer from 1 to 9223372036854775807, got 0"),
    (0, None, "limit must be an integer from 1 to 9223372036854775807, got None"),
    (None, 5, "cursor must be an integer from 0 to 9223372036854775807, got None"),
])
def test_events_since_arguments(seeded, cursor, limit, refused):
    with pytest.raises(ValidationError, match=f"^{re.escape(refused)}$") as info:
        seeded.events_since(cursor, limit=limit)
    assert info.value.field == refused.split()[0]


def test_database_options_are_checked(tmp_path):
    from uet.state import Database
    with pytest.raises(ValidationError,
                       match="^durability must be one of normal, full, got 'paranoid'$"):
        Database(str(tmp_path / "a.db"), durability="paranoid")
    with pytest.raises(ValidationError,
                       match=r"^durability must be one of normal, full, got \['full'\]$"):
        Database(str(tmp_path / "a.db"), durability=["full"])
    nul_path = str(tmp_path / "a\x00.db")
    with pytest.raises(ValidationError, match="^a database must be named by a non-empty path, "
                                              f"got {re.escape(repr(nul_path))}$"):
        Database(nul_path)
    with pytest.raises(ValidationError,
                       match="^busy_timeout must be a number of seconds >= 0, got -1$"):
        Database(str(tmp_path / "a.db"), busy_timeout=-1)
    with pytest.raises(ValidationError,
                       match="^busy_timeout must be a number of seconds >= 0, got '10'$"):
        Database(str(tmp_path / "a.db"), busy_timeout="10")
    with pytest.raises(ValidationError,
                       match="^a database must be named by a non-empty path, got ''$"):
        Database("")
    # a PostgreSQL server that is not there: one line that says so, without the password
    with pytest.raises(StorageError, match=r"^cannot reach the PostgreSQL server of ledger "
                                           r"postgresql://uet:\*\*\*@127\.0\.0\.1:1/uet ") as info:
        Database("postgresql://uet:s3cret@127.0.0.1:1/uet")
    assert "s3cret" not in str(info.value) and "uet:***@127.0.0.1:1" in str(info.value)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "a.db").exists()


def test_text_with_a_nul_character_is_refused_on_every_engine(db):
    """PostgreSQL's text cannot hold NUL; SQLite could, but both engines must accept the
    same values: refused up front, typed, with nothing written."""
    nul = r"contains a NUL character \(\\x00\), which a ledger cannot store"
    with pytest.raises(ValidationError, match=f"^run field 'project_id' {nul}") as info:
        db.create_run({"project_id": "a\x00b", "phase_id": "ph"})
    assert info.value.field == "project_id"
    with pytest.raises(ValidationError, match=f"^run_id {nul}"):
        db.get_run("r\x00")
    with pytest.raises(ValidationError, match=r"^run field 'metadata' at "
                                              rf'metadata\["inside JSON"\] {nul}') as info:
        db.create_run({"project_id": "p", "phase_id": "ph",
                       "metadata": {"inside JSON": "a\x00b"}})
    assert info.value.field == 'metadata["inside JSON"]'
    assert db.events_since(0) == []

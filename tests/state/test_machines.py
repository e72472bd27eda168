"""The run and step attempt machines, through every call that can change a state."""

from __future__ import annotations

import re

import pytest

from uet.errors import ConcurrentUpdateError, InvalidTransitionError, ValidationError
from uet.state.machines import RUN, STEP_ATTEMPT

RUN_LEGAL = sorted((a, b) for a in RUN.states for b in RUN.states if RUN.can(a, b))
RUN_ILLEGAL = sorted((a, b) for a in RUN.states for b in RUN.states if not RUN.can(a, b))
STEP_LEGAL = sorted((a, b) for a in STEP_ATTEMPT.states for b in STEP_ATTEMPT.states
                    if STEP_ATTEMPT.can(a, b))
STEP_ILLEGAL = sorted((a, b) for a in STEP_ATTEMPT.states for b in STEP_ATTEMPT.states
                      if not STEP_ATTEMPT.can(a, b))

# The tables of ../shared/SPEC.md §4, written out once more so a slip in machines.py shows.
SPEC_RUN = {("pending", "running"), ("pending", "canceled"), ("running", "succeeded"),
            ("running", "failed"), ("running", "quarantined"), ("running", "canceled"),
            ("failed", "quarantined")}
SPEC_STEP = {("running", "succeeded"), ("running", "failed"), ("running", "canceled")}

# A shortest path from creation to each run state.
RUN_PATH = {"pending": [], "running": ["running"], "succeeded": ["running", "succeeded"],
            "failed": ["running", "failed"], "quarantined": ["running", "quarantined"],
            "canceled": ["canceled"]}


def test_machines_match_the_spec():
    assert set(RUN_LEGAL) == SPEC_RUN
    assert set(STEP_LEGAL) == SPEC_STEP
    assert RUN.terminal == {"succeeded", "quarantined", "canceled"}
    assert STEP_ATTEMPT.terminal == {"succeeded", "failed", "canceled"}


def _run_in(db, state: str) -> str:
    run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
    for step in RUN_PATH[state]:
        db.transition_run(run_id, step)
    assert db.get_run(run_id)["state"] == state
    return run_id


def _step_in(db, state: str) -> str:
    run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
    step_id = db.create_step_attempt({"run_id": run_id, "sequence": 1, "tool_id": "t"})
    if state != "running":
        db.transition_step_attempt(step_id, state)
    return step_id


def _state_events(db, run_id: str, event_type: str) -> list[dict]:
    return [e for e in db.list_events(run_id) if e["event_type"] == event_type]


@pytest.mark.parametrize("via", ["transition", "update"])
@pytest.mark.parametrize("current, target", RUN_LEGAL)
def test_legal_run_transition_changes_state_and_writes_one_event(db, via,
                                                                 current, target):
    db = db
    run_id = _run_in(db, current)
    before = len(_state_events(db, run_id, "run.state_changed"))
    if via == "transition":
        row = db.transition_run(run_id, target)
    else:
        row = db.update_run(run_id, {"state": target})
    assert row["state"] == target == db.get_run(run_id)["state"]
    events = _state_events(db, run_id, "run.state_changed")
    assert len(events) == before + 1
    assert events[-1]["data"] == {"from": current, "to": target}


@pytest.mark.parametrize("via", ["transition", "update"])
@pytest.mark.parametrize("current, target", RUN_ILLEGAL)
def test_illegal_run_transition_is_refused_and_changes_nothing(db, via,
                                                               current, target):
    db = db
    run_id = _run_in(db, current)
    before_row, before_events = db.get_run(run_id), db.events_since(0)
    with pytest.raises(InvalidTransitionError,
                       match=f"^Invalid transition: run '{run_id}' cannot go from {current} to {target}: ") as info:
        if via == "transition":
            db.transition_run(run_id, target)
        else:
            db.update_run(run_id, {"state": target, "error_message": "x"})
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert run_id in message and current in message and target in message
    assert (info.value.current, info.value.requested) == (current, target)
    assert db.get_run(run_id) == before_row
    assert db.events_since(0) == before_events


@pytest.mark.parametrize("via", ["transition", "update"])
@pytest.mark.parametrize("current, target", STEP_LEGAL)
def test_legal_step_transition(db, via, current, target):
    db = db
    step_id = _step_in(db, current)
    if via == "transition":
        row = db.transition_step_attempt(step_id, target, exit_code=7, error_log="log",
                                         output_patch_id="patch-9")
        assert (row["exit_code"], row["error_log"], row["output_patch_id"]) == (
            7, "log", "patch-9")
    else:
        row = db.update_step_attempt(step_id, {"state": target})
    assert row["state"] == target and row["ended_at"] is not None
    events = _state_events(db, row["run_id"], "step_attempt.state_changed")
    assert len(events) == 1
    assert events[0]["data"]["from"] == current and events[0]["data"]["to"] == target
    assert events[0]["data"]["step_attempt_id"] == step_id


@pytest.mark.parametrize("via", ["transition", "update"])
@pytest.mark.parametrize("current, target", STEP_ILLEGAL)
def test_illegal_step_transition(db, via, current, target):
    db = db
    step_id = _step_in(db, current)
    before = db.get_step_attempt(step_id)
    before_events = db.events_since(0)
    with pytest.raises(InvalidTransitionError, match=f"^Invalid transition: step_attempt '{step_id}' cannot go "
                                                     f"from {current} to {target}: "):
        if via == "transition":
            db.transition_step_attempt(step_id, target)
        else:
            db.update_step_attempt(step_id, {"state": target})
    assert db.get_step_attempt(step_id) == before
    assert db.events_since(0) == before_events


def test_same_state_is_refused_and_writes_no_event(db):
    db = db
    run_id = _run_in(db, "running")
    n = len(db.list_events(run_id))
    with pytest.raises(InvalidTransitionError, match=f"^Invalid transition: run '{run_id}' cannot go from running "
                                                     "to running: it is already running$"):
        db.transition_run(run_id, "running")
    assert len(db.list_events(run_id)) == n


def test_entering_running_and_terminal_states_stamps_times(db):
    db = db
    run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
    assert db.get_run(run_id)["started_at"] is None
    running = db.transition_run(run_id, "running")
    assert running["started_at"] and running["ended_at"] is None
    failed = db.transition_run(run_id, "failed", exit_code=2, error_message="boom")
    assert failed["ended_at"] >= failed["started_at"]
    assert (failed["exit_code"], failed["error_message"]) == (2, "boom")
    quarantined = db.transition_run(run_id, "quarantined")
    assert quarantined["ended_at"] == failed["ended_at"]  # the run ended when it failed
    assert _state_events(db, run_id, "run.state_changed")[1]["data"]["exit_code"] == 2


def test_caller_given_timestamps_win(db):
    db = db
    run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
    row = db.update_run(run_id, {"state": "running", "started_at": "2026-01-01T00:00:00Z"})
    assert row["started_at"] == "2026-01-01T00:00:00.000000Z"
    row = db.update_run(run_id, {"state": "succeeded", "ended_at": "2026-01-01T01:00:00Z"})
    assert row["ended_at"] == "2026-01-01T01:00:00.000000Z"


def test_run_may_be_created_running_with_started_at(db):
    db = db
    run_id = db.create_run({"project_id": "p", "phase_id": "ph", "state": "running"})
    run = db.get_run(run_id)
    assert run["state"] == "running" and run["started_at"] is not None
    assert db.list_events(run_id)[0]["data"] == {"state": "running"}


@pytest.mark.parametrize("state", ["succeeded", "failed", "canceled", "quarantined"])
def test_run_cannot_be_created_in_a_later_state(db, state):
    with pytest.raises(ValidationError, match=f"^a run is created pending or running, not "
                                              f"{state}; create it pending"):
        db.create_run({"project_id": "p", "phase_id": "ph", "state": state})
    assert db.list_runs() == []


def test_step_cannot_be_created_finished(db):
    db = db
    run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
    with pytest.raises(ValidationError,
                       match="^a step attempt is created running, not succeeded; "):
        db.create_step_attempt({"run_id": run_id, "sequence": 1, "tool_id": "t",
                                "state": "succeeded"})
    assert db.list_step_attempts(run_id) == []


def test_compare_and_set_wins_when_expected_matches(db):
    db = db
    run_id = _run_in(db, "pending")
    assert db.transition_run(run_id, "running", expected="pending")["state"] == "running"


def test_compare_and_set_fails_when_another_writer_moved_first(db):
    db = db
    run_id = _run_in(db, "running")
    n = len(db.events_since(0))
    with pytest.raises(ConcurrentUpdateError, match=f"^run '{run_id}' was expected to be "
                                                    "pending but is running: "):
        db.transition_run(run_id, "canceled", expected="pending")
    assert db.get_run(run_id)["state"] == "running"
    assert len(db.events_since(0)) == n
    step_id = _step_in(db, "failed")
    with pytest.raises(ConcurrentUpdateError, match=f"^step_attempt '{step_id}' was expected "
                                                    "to be running but is failed: "):
        db.transition_step_attempt(step_id, "canceled", expected="running")
    assert db.get_step_attempt(step_id)["state"] == "failed"


def test_expected_must_be_a_known_state(db):
    run_id = _run_in(db, "pending")
    with pytest.raises(ValidationError,
                       match="^unknown run expected 'waiting'; known states: pending, "):
        db.transition_run(run_id, "running", expected="waiting")


@pytest.mark.parametrize("state", ["done", "RUNNING", "", None, 3])
def test_unknown_target_state_is_a_validation_error(db, state):
    run_id = _run_in(db, "pending")
    refused = ("^run field 'state' cannot be empty$" if state is None else
               f"^unknown run state {re.escape(repr(state))}; known states: pending, ")
    with pytest.raises(ValidationError, match=refused):
        db.transition_run(run_id, state)
    assert db.get_run(run_id)["state"] == "pending"


def test_transition_of_missing_rows_is_not_found(db):
    from uet.errors import NotFoundError
    with pytest.raises(NotFoundError, match="^run 'ghost' not found$"):
        db.transition_run("ghost", "running")
    with pytest.raises(NotFoundError, match="^step_attempt 'ghost' not found$"):
        db.transition_step_attempt("ghost", "failed")

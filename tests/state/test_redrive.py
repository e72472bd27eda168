"""Re-drive: a failed or canceled run (an explicit resume), or a running one whose owner is
gone (recovery), goes back to pending under its own id; only `redrive_run` makes that move."""

from __future__ import annotations

import pytest

from uet.errors import (ConcurrentUpdateError, InvalidTransitionError, NotFoundError,
                        ValidationError)
from uet.state import RUN, WorkerLifecycle


def _run_in(db, state: str) -> str:
    run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
    path = {"pending": [], "running": ["running"], "succeeded": ["running", "succeeded"],
            "failed": ["running", "failed"], "canceled": ["canceled"],
            "quarantined": ["running", "failed", "quarantined"]}[state]
    for step in path:
        db.transition_run(run_id, step, **({"exit_code": 3, "error_message": "boom"}
                                           if step in ("failed", "succeeded") else {}))
    return run_id


@pytest.mark.parametrize("state", ["running", "failed", "canceled"])
def test_a_redrivable_run_goes_back_to_pending_and_keeps_what_it_cleared(db, state):
    run_id = _run_in(db, state)
    before = db.get_run(run_id)
    run = db.redrive_run(run_id, "resumed by test")
    assert run["state"] == "pending" and run["run_id"] == run_id
    assert (run["ended_at"], run["exit_code"], run["error_message"], run["worker_id"]) == \
        (None, None, None, None)
    assert run["started_at"] == before["started_at"]  # the first start stays
    event = db.list_events(run_id)[-1]
    assert event["event_type"] == "run.state_changed"
    assert event["data"]["from"] == state and event["data"]["to"] == "pending"
    assert event["data"]["redrive"] is True and event["data"]["reason"] == "resumed by test"
    expected_cleared = {name: before[name] for name in RUN.redrive_clears
                        if before[name] is not None}
    assert event["data"]["cleared"] == expected_cleared


@pytest.mark.parametrize("state", ["pending", "succeeded", "quarantined"])
def test_other_runs_are_never_redriven_and_nothing_changes(db, state):
    run_id = _run_in(db, state)
    before, trail = db.get_run(run_id), db.list_events(run_id)
    with pytest.raises(InvalidTransitionError, match="can be re-driven to pending"):
        db.redrive_run(run_id, "no")
    assert db.get_run(run_id) == before and db.list_events(run_id) == trail


@pytest.mark.parametrize("state", ["running", "failed", "canceled"])
def test_no_ordinary_transition_makes_a_redrive(db, state):
    run_id = _run_in(db, state)
    with pytest.raises(InvalidTransitionError):
        db.transition_run(run_id, "pending")
    with pytest.raises(InvalidTransitionError):
        db.update_run(run_id, {"state": "pending"})
    assert db.get_run(run_id)["state"] == state


def test_a_redriven_run_runs_again_and_ends_again(db):
    run_id = _run_in(db, "failed")
    first_start = db.get_run(run_id)["started_at"]
    db.redrive_run(run_id, "resume")
    db.transition_run(run_id, "running", expected="pending")
    run = db.transition_run(run_id, "succeeded", exit_code=0)
    assert run["started_at"] == first_start and run["ended_at"] is not None
    assert [e["data"].get("to") for e in db.list_events(run_id)
            if e["event_type"] == "run.state_changed"] == \
        ["running", "failed", "pending", "running", "succeeded"]


def test_a_requeued_run_can_be_claimed_by_another_worker(db):
    workers = WorkerLifecycle(db)
    for worker in ("w1", "w2"):
        workers.spawn_worker(worker, "cli")
        workers.transition_state(worker, "IDLE")
    run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
    assert workers.claim_run("w1")["run_id"] == run_id
    run = db.redrive_run(run_id, "owner w1 lost", expected="running")
    assert run["worker_id"] is None
    claimed = workers.claim_run("w2")
    assert claimed["run_id"] == run_id and claimed["worker_id"] == "w2"


def test_attempts_still_running_are_failed_as_interrupted(db):
    run_id = _run_in(db, "running")
    done = db.create_step_attempt({"run_id": run_id, "sequence": 1, "tool_id": "t"})
    db.transition_step_attempt(done, "succeeded", exit_code=0)
    live = db.create_step_attempt({"run_id": run_id, "sequence": 2, "tool_id": "t"})
    db.redrive_run(run_id, "owner lost")
    assert db.get_step_attempt(done)["state"] == "succeeded"
    step = db.get_step_attempt(live)
    assert step["state"] == "failed" and step["error_log"] == "interrupted: owner lost"
    assert step["ended_at"] is not None


def test_redrive_is_compare_and_set(db):
    run_id = _run_in(db, "failed")
    with pytest.raises(ConcurrentUpdateError):
        db.redrive_run(run_id, "resume", expected="canceled")
    assert db.get_run(run_id)["state"] == "failed"


@pytest.mark.parametrize("run_id, reason, error", [
    ("nope", "resume", NotFoundError), ("", "resume", ValidationError),
    ("R", "", ValidationError), ("R", None, ValidationError), ("R", "a\x00b", ValidationError),
])
def test_bad_input_is_refused(db, run_id, reason, error):
    real = _run_in(db, "failed")
    with pytest.raises(error):
        db.redrive_run(real if run_id == "R" else run_id, reason)
    assert db.get_run(real)["state"] == "failed"


def test_a_redrive_inside_an_atomic_block_rolls_back_with_it(db):
    run_id = _run_in(db, "failed")

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with db.atomic():
            db.redrive_run(run_id, "resume")
            assert db.get_run(run_id)["state"] == "pending"
            raise Boom()
    assert db.get_run(run_id)["state"] == "failed"
    assert db.get_run(run_id)["exit_code"] == 3

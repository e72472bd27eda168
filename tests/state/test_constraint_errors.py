"""Constraint failures are told apart by the engine's diagnostics (kind, table, columns,
constraint name), translated at the backend boundary the same way on both engines; the
facade reads those fields, never the message text."""

from __future__ import annotations

import pytest

from uet.errors import AlreadyExistsError, ConstraintViolation, ValidationError
from uet.state import tables
from uet.state.db import Database

RUN = {"run_id": "r1", "project_id": "p", "phase_id": "ph", "workstream_id": None,
       "execution_request_id": None, "created_at": "2026-01-01T00:00:00.000000Z",
       "started_at": None, "ended_at": None, "state": "pending", "exit_code": None,
       "error_message": None, "metadata": "{}", "priority": None}
STEP = {"step_attempt_id": "s1", "run_id": "r1", "sequence": 1, "tool_id": "t",
        "tool_run_id": None, "execution_request_id": None, "prompt_id": None,
        "started_at": "2026-01-01T00:00:00.000000Z", "ended_at": None, "state": "running",
        "exit_code": None, "input_prompt": None, "output_patch_id": None, "error_log": None,
        "metadata": "{}", "attempt": 1, "worker_id": None, "task_id": None,
        "model": None, "input_tokens": None, "output_tokens": None, "cost_usd": None}


def _violation(db, *statements) -> ConstraintViolation:
    """The error of running the named inserts in one transaction (the last one fails)."""
    with pytest.raises(ConstraintViolation) as caught:
        with db.backend.transaction() as tx:
            for name, row in statements:
                tx.run(name, row)
    return caught.value


def test_a_duplicate_key_names_its_table_and_column(db):
    error = _violation(db, ("insert_run", RUN), ("insert_run", RUN))
    assert (error.kind, error.table, error.columns) == ("unique", "runs", ("run_id",))


def test_a_duplicate_of_a_composite_key_names_every_column(db):
    error = _violation(db, ("insert_run", RUN), ("insert_step_attempt", STEP),
                       ("insert_step_attempt", {**STEP, "step_attempt_id": "s2"}))
    assert (error.kind, error.table) == ("unique", "step_attempts")
    assert error.columns == ("run_id", "sequence", "attempt")


def test_a_dangling_reference_is_a_foreign_key_failure(db):
    error = _violation(db, ("insert_step_attempt", STEP))
    assert error.kind == "foreign_key"


def test_a_missing_required_value_names_its_column(db):
    error = _violation(db, ("insert_run", {**RUN, "project_id": None}))
    assert (error.kind, error.table, error.columns) == ("not_null", "runs", ("project_id",))


def test_a_state_outside_the_machine_is_a_check_failure_with_the_constraint(db):
    error = _violation(db, ("insert_run", {**RUN, "state": "bogus"}))
    assert error.kind == "check" and error.constraint


def test_both_engines_translate_alike(ledger, tmp_path):
    """The fields are the same whichever engine raised them."""
    found = []
    for name in (str(tmp_path / "other.db"), ledger):
        with Database(name) as db:
            found.append([(e.kind, e.table, e.columns) for e in (
                _violation(db, ("insert_run", RUN), ("insert_run", RUN)),
                _violation(db, ("insert_run", {**RUN, "phase_id": None})))])
    assert found[0] == found[1]


@pytest.mark.parametrize("message", ["", "UNIQUE constraint failed: runs.project_id",
                                     "something else entirely"])
def test_the_facade_reads_the_fields_not_the_message(message):
    """Whatever the text, a unique failure on the run key is an AlreadyExistsError, and one
    on other columns is not."""
    on_key = ConstraintViolation(message, kind="unique", table="runs", columns=("run_id",))
    elsewhere = ConstraintViolation(message, kind="unique", table="runs",
                                    columns=("project_id",))
    assert isinstance(Database._explain(on_key, tables.RUNS, RUN), AlreadyExistsError)
    explained = Database._explain(elsewhere, tables.RUNS, RUN)
    assert isinstance(explained, ValidationError)
    assert not isinstance(explained, AlreadyExistsError)


def test_a_duplicate_run_id_through_the_api_is_already_exists(db):
    db.create_run({"run_id": "r1", "project_id": "p", "phase_id": "ph"})
    with pytest.raises(AlreadyExistsError):
        db.create_run({"run_id": "r1", "project_id": "p", "phase_id": "ph"})

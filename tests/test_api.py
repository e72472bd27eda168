"""The public surface: what `uet` and `uet.state` export, and the error hierarchy."""

from __future__ import annotations

import pytest

import uet
from uet import errors


def test_seed_api_is_importable_from_both_places():
    from uet.state import Database, get_db, init_db
    assert (uet.Database, uet.get_db, uet.init_db) == (Database, get_db, init_db)


@pytest.mark.parametrize("error, bases", [
    (errors.NotFoundError, (errors.UetError, LookupError)),
    (errors.ValidationError, (errors.UetError, ValueError)),
    (errors.AlreadyExistsError, (errors.ValidationError,)),
    (errors.InvalidTransitionError, (errors.UetError, ValueError)),
    (errors.ConcurrentUpdateError, (errors.UetError,)),
    (errors.SchemaVersionError, (errors.UetError,)),
    (errors.NotALedgerError, (errors.UetError,)),
    (errors.MigrationError, (errors.UetError,)),
    (errors.DatabaseBusyError, (errors.UetError,)),
    (errors.StorageError, (errors.UetError,)),
])
def test_error_hierarchy(error, bases):
    assert issubclass(error, bases)


def test_init_db_returns_a_fresh_instance_every_call():
    a, b = uet.init_db(":memory:"), uet.init_db(":memory:")
    a.create_run({"run_id": "r", "project_id": "p", "phase_id": "ph"})
    assert a is not b and b.get_run("r") is None
    a.close()
    b.close()


def test_seed_style_usage_keeps_working(tmp_path):
    """The seed's own call pattern: Database(path), connect(), dict rows, close()."""
    db = uet.Database(str(tmp_path / "seed-style.db"))
    db.connect()
    db.create_run({"run_id": "RUN-1", "project_id": "P", "phase_id": "PH",
                   "created_at": "2025-11-23T11:38:49.896Z", "state": "pending"})
    db.update_run("RUN-1", {"state": "running", "started_at": "2025-11-23T11:39:00Z"})
    db.create_step_attempt({"step_attempt_id": "S-1", "run_id": "RUN-1", "sequence": 1,
                            "tool_id": "aider", "started_at": "2025-11-23T11:39:01Z"})
    db.update_step_attempt("S-1", {"state": "succeeded", "exit_code": 0,
                                   "ended_at": "2025-11-23T11:40:00Z"})
    db.create_event({"event_id": "E-1", "run_id": "RUN-1",
                     "timestamp": "2025-11-23T11:40:00Z", "event_type": "step_done",
                     "data": {"step": "S-1"}})
    assert db.get_run("RUN-1")["state"] == "running"
    assert db.list_step_attempts("RUN-1")[0]["ended_at"] == "2025-11-23T11:40:00.000000Z"
    assert db.list_events("RUN-1")[-1]["data"] == {"step": "S-1"}
    db.close()
    db.connect()
    assert db.list_runs({"project_id": "P"})[0]["run_id"] == "RUN-1"
    db.close()


def test_pathlike_paths_are_accepted(tmp_path):
    with uet.init_db(tmp_path / "p.db") as db:
        assert db.db_path == str(tmp_path / "p.db")

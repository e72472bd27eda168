"""Fixtures shared by the whole suite: fresh ledgers (in memory and on disk) and sample rows."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from uet.state import Database, init_db

sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers.py for subprocess scripts
sys.path.insert(0, str(Path(__file__).parent.parent / "bench"))  # the reliability suite


@pytest.fixture(autouse=True)
def _forget_process_wide_instances():
    """Each test starts without get_db instances from earlier tests, and leaves none."""
    yield
    from uet.state import db as db_module
    with db_module._instances_lock:
        leftovers = list(db_module._instances.values())
        db_module._instances.clear()
    for database in leftovers:
        database.close()


@pytest.fixture
def in_memory_db():
    """A fresh ledger in memory."""
    db = init_db(":memory:")
    yield db
    db.close()


@pytest.fixture
def db_path(tmp_path) -> str:
    """The path of a ledger file that does not exist yet, in a fresh folder."""
    return str(tmp_path / "ledger" / "framework.db")


@pytest.fixture
def file_db(db_path):
    """A fresh ledger in a real SQLite file (WAL)."""
    db = init_db(db_path)
    yield db
    db.close()


@pytest.fixture(params=["memory", "file"])
def db(request, tmp_path):
    """Each test that takes `db` runs against an in-memory ledger and a file ledger."""
    path = ":memory:" if request.param == "memory" else str(tmp_path / "framework.db")
    database = Database(path)
    yield database
    database.close()


@pytest.fixture
def sample_run_data() -> dict:
    return {
        "run_id": "run-0001",
        "project_id": "PRJ-uet",
        "phase_id": "PH-001",
        "workstream_id": "WS-001",
        "execution_request_id": "ER-001",
        "created_at": "2026-01-31T12:00:00.000000Z",
        "metadata": {"tool": "aider", "attempts": 2, "tags": ["a", "b"], "nested": {"x": None}},
    }


@pytest.fixture
def sample_step_data(sample_run_data) -> dict:
    return {
        "step_attempt_id": "step-0001",
        "run_id": sample_run_data["run_id"],
        "sequence": 1,
        "tool_id": "aider",
        "tool_run_id": "TR-1",
        "execution_request_id": "ER-001",
        "prompt_id": "P-1",
        "started_at": "2026-01-31T12:00:01.000000Z",
        "input_prompt": "fix the failing test",
        "metadata": {"model": "gpt", "tokens": 1234},
    }


@pytest.fixture
def sample_event_data(sample_run_data) -> dict:
    return {
        "event_id": "event-0001",
        "run_id": sample_run_data["run_id"],
        "timestamp": "2026-01-31T12:00:02.000000Z",
        "event_type": "tool.output",
        "data": {"line": "ok", "n": 1},
    }

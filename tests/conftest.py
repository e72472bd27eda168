"""Fixtures shared by the whole suite: fresh ledgers (in memory and on disk) and sample rows."""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

import pytest

from uet.state import Database, init_db

sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers.py for subprocess scripts
sys.path.insert(0, str(Path(__file__).parent.parent / "bench"))  # the reliability suite

from helpers import emptied_postgres_ledger  # noqa: E402


@pytest.fixture(autouse=True)
def _forget_process_wide_instances():
    """Each test starts without get_db instances from earlier tests, and leaves none."""
    yield
    from uet.state import instances as db_module
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


@pytest.fixture(scope="session")
def postgres_server():
    """The URL of a PostgreSQL server for the whole run: $UET_TEST_POSTGRES_URL, else a
    private throwaway server started here (and stopped at the end, however the run ends).
    Tests that need it are skipped, with the reason, only when no PostgreSQL server program
    exists at all — and in CI (`CI=true`) even that is a failure: CI must test both
    engines."""
    import pgserver
    url = os.environ.get(pgserver.ENV_VAR)
    if url:
        yield url
        return
    try:
        server = pgserver.Server()
    except pgserver.Unavailable as exc:
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(f"CI=true and no PostgreSQL server can be had: {exc}")
        pytest.skip(f"PostgreSQL tests need a server: {exc}")
    try:
        yield server.start()
    finally:
        server.stop()


_schemas = itertools.count(1)


@pytest.fixture
def postgres_url(postgres_server):
    """The URL of a fresh, empty ledger: its own schema on the test server, dropped after."""
    import pgserver
    with pgserver.schema(postgres_server, f"uet_test_{os.getpid()}_{next(_schemas)}") as url:
        yield url


@pytest.fixture(scope="session")
def _reused_postgres_ledger(postgres_server):
    """One migrated PostgreSQL ledger for the whole run, emptied before each test that takes
    `db` (creating a schema and running the migrations for each of hundreds of tests would
    take most of the run)."""
    import pgserver
    with pgserver.schema(postgres_server, f"uet_test_{os.getpid()}_reused") as url:
        init_db(url).close()
        yield url


@pytest.fixture(params=["file", "postgres"])
def ledger(request, tmp_path):
    """The name of a new ledger (not created yet) on each persistent backend: a SQLite file
    path, then a PostgreSQL URL. For tests that open it by name (other processes, CLI)."""
    if request.param == "file":
        return str(tmp_path / "ledger" / "framework.db")
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def shared_db(ledger):
    """A ledger other processes can open too (by `shared_db.db_path`), on each persistent
    backend: a SQLite file, then PostgreSQL."""
    database = Database(ledger)
    yield database
    database.close()


@pytest.fixture(params=["memory", "file", "postgres"])
def db(request, tmp_path):
    """Each test that takes `db` runs against an in-memory ledger, a file ledger and a
    PostgreSQL ledger."""
    if request.param == "postgres":
        path = emptied_postgres_ledger(request.getfixturevalue("_reused_postgres_ledger"))
    else:
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

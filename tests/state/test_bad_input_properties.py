"""Property-based: whatever a caller passes, a public call either succeeds or raises a
UetError, and a call that raised has changed nothing — on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import EMPTY_POSTGRES_LEDGER
from uet.errors import UetError
from uet.state import init_db
from uet.state.records import RUNS, STEP_ATTEMPTS

NAMES = st.sampled_from(list(RUNS.names) + list(STEP_ATTEMPTS.names) + [
    "seq", "1; DROP TABLE runs", "state = 'x' --", "", "RUN_ID", "metadata)"])
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.text(max_size=5), children, max_size=3), max_leaves=8)
VALUES = (st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
          | st.floats(allow_nan=True) | st.text(max_size=30)
          | st.sampled_from(["pending", "running", "succeeded", "failed", "canceled",
                             "quarantined", "2026-01-01T00:00:00Z", "run-1", "\ud800", "x" * 5000])
          | st.binary(max_size=5) | JSONISH | st.builds(object))
DICTS = st.dictionaries(NAMES, VALUES, max_size=6)

# the `engine` fixture below only names an engine: the same for every example
SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])

_ENGINE = {"name": "memory", "postgres": None}


@pytest.fixture(autouse=True, params=["memory", "postgres"])
def engine(request):
    """Every property runs on a private in-memory SQLite ledger per example, then on one
    PostgreSQL ledger emptied and seeded again per example."""
    _ENGINE["name"] = request.param
    if request.param == "postgres":
        _ENGINE["postgres"] = init_db(request.getfixturevalue("_reused_postgres_ledger"))
    yield request.param
    if _ENGINE["postgres"] is not None:
        _ENGINE["postgres"].close()
    _ENGINE.update(name="memory", postgres=None)


@contextmanager
def _fresh():
    """A ledger holding run-1 with its step-1, and nothing else."""
    if _ENGINE["name"] == "postgres":
        db = _ENGINE["postgres"]
        with db._backend._connection() as conn:  # its own connection: no reconnecting
            conn.execute(EMPTY_POSTGRES_LEDGER)
    else:
        db = init_db(":memory:")
    try:
        db.create_run({"run_id": "run-1", "project_id": "p", "phase_id": "ph"})
        db.create_step_attempt({"step_attempt_id": "step-1", "run_id": "run-1",
                                "sequence": 1, "tool_id": "t"})
        yield db
    finally:
        if db is not _ENGINE["postgres"]:
            db.close()


def _snapshot(db) -> str:
    runs = db.list_runs(limit=None)
    steps = [db.list_step_attempts(r["run_id"]) for r in runs]
    return json.dumps([runs, steps, db.events_since(0, limit=10**6)], sort_keys=True)


def _check(call, *args):
    with _fresh() as db:
        before = _snapshot(db)
        try:
            getattr(db, call)(*args)
        except UetError:
            assert _snapshot(db) == before


@SETTINGS
@given(DICTS)
def test_create_run(data):
    _check("create_run", data)


@SETTINGS
@given(DICTS)
def test_create_step_attempt(data):
    _check("create_step_attempt", data)


@SETTINGS
@given(DICTS)
def test_create_event(data):
    _check("create_event", data)


@SETTINGS
@given(VALUES, DICTS)
def test_update_run(run_id, data):
    _check("update_run", run_id, data)
    _check("update_run", "run-1", data)


@SETTINGS
@given(DICTS)
def test_update_step_attempt(data):
    _check("update_step_attempt", "step-1", data)


@SETTINGS
@given(DICTS, VALUES)
def test_list_runs(filters, limit):
    _check("list_runs", filters, limit)


@SETTINGS
@given(VALUES, VALUES, VALUES, VALUES)
def test_transitions(entity_id, state, expected, exit_code):
    _check("transition_run", entity_id, state)
    _check("transition_run", "run-1", state)
    with _fresh() as db:
        try:
            db.transition_run("run-1", "running", expected=expected, exit_code=exit_code)
        except UetError:
            pass
    _check("transition_step_attempt", "step-1", state)


@SETTINGS
@given(VALUES, VALUES, VALUES)
def test_reads(value, cursor, limit):
    for call in ("get_run", "get_step_attempt", "list_step_attempts", "list_events",
                 "delete_run"):
        _check(call, value)
    with _fresh() as db:
        try:
            db.events_since(cursor, run_id=None, limit=limit)
        except UetError:
            pass


# -- workers, patches and gates ------------------------------------------------------------

from uet.state import GateLedger, PatchLedger, WorkerLifecycle  # noqa: E402

ARGS = VALUES | st.lists(st.text(max_size=8), max_size=3) | st.sampled_from([
    "IDLE", "BUSY", "TERMINATED", "created", "validated", "quarantined", "PENDING", "RUNNING",
    "PASSED", "FAILED", "LINT", "UNIT", "w1", "PH-1"])
DIFF = "--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-a\n+b\n"


def _check_v2(pick, args):
    with _fresh() as db:
        workers, patches, gates = WorkerLifecycle(db), PatchLedger(db), GateLedger(db)
        workers.spawn_worker("w1", "testing", {})
        workers.transition_state("w1", "IDLE")
        ledger_id = patches.create_entry(patches.record_patch(DIFF, step_attempt_id="step-1"),
                                         "PH-1").ledger_id
        gate_id = gates.define_gate("LINT", "PH-1", "ruff", run_id="run-1")["gate_id"]
        owner, method = pick
        target = {"workers": workers, "patches": patches, "gates": gates}[owner]
        args = [ledger_id if a == "$ledger" else gate_id if a == "$gate" else a for a in args]
        before = _snapshot(db)
        try:
            getattr(target, method)(*args)
        except UetError:
            assert _snapshot(db) == before


CALLS = st.sampled_from([
    ("workers", "spawn_worker"), ("workers", "transition_state"), ("workers", "heartbeat"),
    ("workers", "terminate_worker"), ("workers", "claim_run"), ("workers", "release"),
    ("workers", "find_stale"), ("workers", "reap_stale"), ("workers", "get_worker"),
    ("workers", "get_workers_by_state"), ("workers", "get_idle_workers"),
    ("patches", "record_patch"), ("patches", "create_entry"), ("patches", "transition_state"),
    ("patches", "quarantine"), ("patches", "get_entry"), ("patches", "get_patches_by_state"),
    ("patches", "history_of_run"), ("gates", "define_gate"), ("gates", "transition_state"),
    ("gates", "get_gate"), ("gates", "list_gates"), ("gates", "expire_timeouts"),
])
ARG = ARGS | st.sampled_from(["$ledger", "$gate"])
OWNERS = {"workers": WorkerLifecycle, "patches": PatchLedger, "gates": GateLedger}


def _arity(pick) -> tuple[int, int]:
    """How many positional arguments the method takes: (required, all)."""
    import inspect
    params = [p for p in inspect.signature(getattr(OWNERS[pick[0]], pick[1])).parameters.values()
              if p.name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD]
    return sum(p.default is p.empty for p in params), len(params)


@st.composite
def calls(draw):
    pick = draw(CALLS)
    required, total = _arity(pick)
    return pick, draw(st.lists(ARG, min_size=required, max_size=total))


@SETTINGS
@given(calls())
def test_v2_calls_raise_only_typed_errors_and_change_nothing_when_they_do(call):
    _check_v2(*call)

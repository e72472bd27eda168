"""Property-based: whatever a caller passes, a public call either succeeds or raises a
UetError, and a call that raised has changed nothing (no row of any table of the ledger) —
on SQLite and on PostgreSQL."""

from __future__ import annotations

import inspect
import re
from contextlib import contextmanager
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import EMPTY_POSTGRES_LEDGER
from uet.errors import UetError
from uet.state import GATE, PATCH, WORKER, ValidationResult, init_db
from uet.state.tables import RUNS, STEP_ATTEMPTS
from uet.state.sqlfiles import load_migrations

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


def _quoted(table: str) -> str:
    return '"' + table.replace('"', '""') + '"'  # a name from the catalog, as an identifier


def _snapshot(db) -> list:
    """Every row of every table of the ledger, tables listed from the catalog (so that a table
    added later is covered too) and read with plain SQL through the ledger's own connection
    (no API call, no decoding in between), in a fixed order: [(table, sorted rows), ...]."""
    if db.engine == "postgresql":
        with db._backend._connection() as conn:  # its own connection, as _fresh uses
            tables = [r[0] for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = "
                "current_schema() AND table_type = 'BASE TABLE' ORDER BY table_name")]
            # one round trip for all of them: each row as its text form (NULL and '' differ)
            found = conn.execute(" UNION ALL ".join(
                f"SELECT {i}, (SELECT array_agg(r::text ORDER BY r::text) FROM {_quoted(t)} "
                "AS r)" for i, t in enumerate(tables)) + " ORDER BY 1").fetchall()
            return [(table, rows or []) for table, (_, rows) in zip(tables, found)]
    conn = db._backend.connect()  # uet's own: the only connection an in-memory ledger has
    tables = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%' "
        "ORDER BY name")]
    return [(t, sorted(conn.execute(f"SELECT * FROM {_quoted(t)}").fetchall(), key=repr))
            for t in tables]


def _changes(before: list, db) -> dict:
    """What differs from the snapshot `before` now: {table: {"gone": rows, "new": rows}}."""
    then, now = dict(before), dict(_snapshot(db))
    return {table: {"gone": [r for r in then.get(table, []) if r not in now.get(table, [])],
                    "new": [r for r in now.get(table, []) if r not in then.get(table, [])]}
            for table in sorted(then.keys() | now.keys()) if then.get(table) != now.get(table)}


def test_the_snapshot_holds_every_table_of_the_ledger():
    """Every table the migrations create, and its rows, are in the snapshot."""
    engine = "postgresql" if _ENGINE["name"] == "postgres" else "sqlite"
    created = {name for m in load_migrations(engine)
               for name in re.findall(r"CREATE TABLE (\w+)", m.sql)}
    with _fresh() as db:
        snapshot = dict(_snapshot(db))
        assert set(snapshot) == created
        assert len(snapshot["runs"]) == len(snapshot["step_attempts"]) == 1
        assert len(snapshot["run_events"]) == 2 and len(snapshot["ledger_counters"]) == 1
        assert len(snapshot["schema_migrations"]) == len(load_migrations(engine))


def _check(call, *args):
    with _fresh() as db:
        before = _snapshot(db)
        try:
            getattr(db, call)(*args)
        except UetError:
            assert _changes(before, db) == {}


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
    "PASSED", "FAILED", "LINT", "UNIT", "w1", "PH-1", "$ledger", "$lint"])
DIFF = "--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-a\n+b\n"
OWNERS = {"workers": WorkerLifecycle, "patches": PatchLedger, "gates": GateLedger}
MACHINES = {"workers": WORKER, "patches": PATCH, "gates": GATE}
# every public method of the three: a method added later is exercised too
PICKS = sorted((owner, name) for owner, cls in OWNERS.items()
               for name, _ in inspect.getmembers(cls, inspect.isfunction)
               if not name.startswith("_"))
# the ones that may write (a read cannot change a table, refused or not)
WRITES = [pick for pick in PICKS if not pick[1].startswith(("get_", "list_", "find_",
                                                             "history_"))]
# Per parameter: what a real caller passes (the records _v2_records made, "$" marking their
# generated ids; ids of nothing come from the hostile values), so that calls get past the
# argument checks to the writes; a state parameter takes the states of its owner's machine.
PLAUSIBLE: dict[str, list] = {
    "worker_id": ["w1"], "worker_type": ["testing"], "affinity": [{}, {"lang": "py"}],
    "run_id": ["run-1"], "step_attempt_id": ["step-1"],
    "diff": [DIFF, DIFF.replace("+b", "+c")], "patch": ["$patch"], "patch_id": ["$patch"],
    "ledger_id": ["$ledger"], "phase_id": ["PH-1", "PH-2"], "workstream_id": ["WS-1"],
    "reason": ["why", ""], "expected_version": [1, 2], "format": [True, False],
    "scope": [True, False], "constraints": [True, False], "tests": [True, False],
    "gate_id": ["$lint", "$unit"], "gate_type": ["LINT", "UNIT"], "name": ["LINT", "UNIT"],
    "command": ["ruff"], "depends_on": [["LINT"], ["UNIT"], []], "timeout_sec": [60, 0.001],
    "exit_code": [0, 1], "stdout": ["out"], "stderr": ["err"],
    "heartbeat_interval_s": [30, 0.001], "now": [datetime(2100, 1, 1, tzinfo=timezone.utc)],
    "last_heartbeat": [None, "2026-01-01T00:00:00.000000Z"],
    "incarnation": [None, "inc-1"], "queued": [False, True],
    # PatchLedger.validate: a verdict given, or a validator (the contract's PatchValidator)
    "result": [None, ValidationResult(format_ok=True, scope_ok=True, constraints_ok=True),
               ValidationResult(validation_errors=["bad"])],
    "validator": [None, lambda patch: ValidationResult(format_ok=True, scope_ok=True,
                                                       constraints_ok=True)],
}
# a legal move from where _v2_records leaves each record (w1 IDLE, entry created, LINT PENDING)
LEGAL_MOVE = {"workers": "BUSY", "patches": "validated", "gates": "RUNNING"}


def _params(pick) -> list[inspect.Parameter]:
    owner, method = pick
    return [p for p in inspect.signature(getattr(OWNERS[owner], method)).parameters.values()
            if p.name != "self"]


def test_every_v2_parameter_has_plausible_values():
    """A parameter added later gets values that reach past the checks, not only hostile
    ones."""
    for pick in PICKS:
        for param in _params(pick):
            assert param.name in PLAUSIBLE or param.name in ("state", "new_state"), (pick, param)


@st.composite
def calls(draw):
    """One call, mostly of a method that writes: (owner, method, keyword arguments); an
    argument with a default may be left out, and each one given is plausible or hostile."""
    pick = draw(st.sampled_from(WRITES if draw(st.integers(0, 3)) else PICKS))
    kwargs = {}
    for param in _params(pick):
        if param.default is not param.empty and draw(st.booleans()):
            continue
        plausible = (MACHINES[pick[0]].states if param.name in ("state", "new_state")
                     else PLAUSIBLE.get(param.name, []))
        hostile = not plausible or draw(st.integers(0, 3)) == 0
        kwargs[param.name] = draw(ARGS) if hostile else draw(st.sampled_from(plausible))
    return (*pick, kwargs)


def _v2_records(db) -> tuple[dict, dict]:
    """Beside run-1 and step-1: worker w1 (IDLE), a patch of step-1 with an entry (created),
    gates LINT and UNIT (depends on LINT) of run-1 (PENDING). The three APIs, and the ids the
    ledger generated by their placeholders."""
    workers, patches, gates = WorkerLifecycle(db), PatchLedger(db), GateLedger(db)
    workers.spawn_worker("w1", "testing", {})
    workers.transition_state("w1", "IDLE")
    patch = patches.record_patch(DIFF, step_attempt_id="step-1")
    entry = patches.create_entry(patch, "PH-1")
    lint = gates.define_gate("LINT", "PH-1", "ruff", run_id="run-1")
    unit = gates.define_gate("UNIT", "PH-1", "pytest", depends_on=["LINT"], run_id="run-1")
    return ({"workers": workers, "patches": patches, "gates": gates},
            {"$patch": patch.patch_id, "$ledger": entry.ledger_id, "$lint": lint["gate_id"],
             "$unit": unit["gate_id"]})


def _real(value, ids: dict):
    """A placeholder ("$lint") as the id the ledger generated; anything else as it is."""
    return ids.get(value, value) if isinstance(value, str) else value


def _one_wrong_argument():
    """Each method that writes, with plausible arguments but one: that one hostile (an
    object), or, for a state, each state of the machine in turn (the refused transitions)."""
    for owner, method in WRITES:
        for param in _params((owner, method)):
            states = param.name in ("state", "new_state")
            for value in MACHINES[owner].states if states else [object()]:
                yield pytest.param(owner, method, param.name, value,
                                   id=f"{owner}.{method}-{param.name}-{value if states else '?'}")


@pytest.mark.parametrize("owner, method, name, value", list(_one_wrong_argument()))
def test_each_refused_v2_argument_changes_nothing(owner, method, name, value):
    """The property below, made certain for the simplest cases: every argument of every
    write refused in turn (random search finds a call that must get all but one argument
    right only now and then)."""
    with _fresh() as db:
        owners, ids = _v2_records(db)
        right = {"new_state": LEGAL_MOVE[owner], **{n: v[0] for n, v in PLAUSIBLE.items()}}
        kwargs = {p.name: _real(right[p.name], ids) for p in _params((owner, method))
                  if p.default is p.empty}
        kwargs[name] = value
        before = _snapshot(db)
        try:
            getattr(owners[owner], method)(**kwargs)
        except UetError:
            assert _changes(before, db) == {}, kwargs


@SETTINGS
@given(st.lists(calls(), min_size=1, max_size=3))
def test_v2_calls_raise_only_typed_errors_and_change_nothing_when_they_do(sequence):
    """A few calls in a row (so that later ones meet records earlier ones moved on: a BUSY
    worker, a RUNNING gate, a validated entry); each that raises leaves every table as it
    was."""
    with _fresh() as db:
        owners, ids = _v2_records(db)
        for owner, method, kwargs in sequence:
            kwargs = {k: _real(v, ids) for k, v in kwargs.items()}
            before = _snapshot(db)
            try:
                getattr(owners[owner], method)(**kwargs)
            except UetError:
                assert _changes(before, db) == {}, (owner, method, kwargs)

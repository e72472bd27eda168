"""Test gates: the machine, required exit codes, timeouts, and the blocking cascade."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest

from uet.errors import InvalidTransitionError, NotFoundError, ValidationError
from helpers import REFUSED, raw_execute, refused_by
from uet.state import GATE, GateLedger, GateState, GateType

LEGAL = sorted((a, b) for a in GATE.states for b in GATE.states if GATE.can(a, b))
ILLEGAL = sorted((a, b) for a in GATE.states for b in GATE.states if not GATE.can(a, b))
SPEC = {("PENDING", "RUNNING"), ("PENDING", "BLOCKED"), ("RUNNING", "PASSED"),
        ("RUNNING", "FAILED"), ("BLOCKED", "PENDING")}
PATH = {"PENDING": [], "RUNNING": ["RUNNING"], "PASSED": ["RUNNING", "PASSED"],
        "FAILED": ["RUNNING", "FAILED"], "BLOCKED": ["BLOCKED"]}


@pytest.fixture
def gates(db):
    return GateLedger(db)


def _gate_in(gates, state, **kwargs):
    gate = gates.define_gate(kwargs.pop("gate_type", "UNIT"), "PH-1", "pytest -q", **kwargs)
    for target in PATH[state]:
        gates.transition_state(gate["gate_id"], target,
                               exit_code=0 if target in ("PASSED", "FAILED") else None)
    return gate["gate_id"]


def _states(gates) -> dict[str, str]:
    latest = {}
    for gate in gates.list_gates("PH-1"):
        latest[gate["name"]] = gate["state"]
    return latest


def test_machine_matches_the_spec():
    assert set(LEGAL) == SPEC and GATE.terminal == {"PASSED", "FAILED"}


def test_define_gate(gates, db):
    run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
    gate = gates.define_gate(GateType.LINT, "PH-1", "ruff check .", timeout_sec=30,
                             run_id=run_id)
    assert (gate["state"], gate["gate_type"], gate["name"], gate["timeout_sec"]) == (
        "PENDING", "LINT", "LINT", 30.0)
    assert gates.get_gate(gate["gate_id"]) == gate
    assert db.list_events(run_id)[-1]["event_type"] == "gate.defined"
    assert gates.get_gate("ghost") is None


GATE_TYPES = "; known: LINT, UNIT, INTEGRATION, SECURITY"


@pytest.mark.parametrize("kwargs, field, message", [
    ({"gate_type": "SMOKE"}, "gate_type", "unknown gate_type 'SMOKE'" + GATE_TYPES),
    ({"command": ""}, "command", "command must be a non-empty string, got ''"),
    ({"phase_id": None}, "phase_id", "phase_id must be a non-empty string, got None"),
    ({"timeout_sec": 0}, "timeout_sec", "timeout_sec must be a number of seconds > 0, got 0"),
    ({"timeout_sec": "5"}, "timeout_sec",
     "timeout_sec must be a number of seconds > 0, got '5'"),
    ({"depends_on": "LINT"}, "depends_on", "depends_on must be a list of gate names, got 'LINT'"),
    ({"depends_on": None}, "depends_on", "depends_on must be a list of gate names, got None"),
    ({"depends_on": 3}, "depends_on", "depends_on must be a list of gate names, got 3"),
    ({"gate_type": ["UNIT"]}, "gate_type", "unknown gate_type ['UNIT']" + GATE_TYPES),
    ({"gate_type": {}}, "gate_type", "unknown gate_type {}" + GATE_TYPES),
    ({"depends_on": ["NOPE"]}, "depends_on",
     "depends_on names gate 'NOPE', which is not defined in this phase/run/patch scope"),
    ({"run_id": "ghost"}, "run_id", "gate refers to a run or patch entry that does not exist "
                                    "(run_id='ghost', ledger_id=None)"),
    ({"ledger_id": "ghost"}, "ledger_id", "gate refers to a run or patch entry that does not "
                                          "exist (run_id=None, ledger_id='ghost')"),
])
def test_bad_definitions_are_refused_and_write_nothing(gates, db, kwargs, field, message):
    args = {"gate_type": "UNIT", "phase_id": "PH-1", "command": "pytest", **kwargs}
    with pytest.raises(ValidationError, match=f"^{re.escape(message)}$") as info:
        gates.define_gate(args.pop("gate_type"), args.pop("phase_id"), args.pop("command"),
                          **args)
    assert info.value.field == field
    assert gates.list_gates() == [] and db.events_since(0) == []


@pytest.mark.parametrize("current, target", LEGAL)
def test_legal_transitions(gates, db, current, target):
    gate_id = _gate_in(gates, current)
    row = gates.transition_state(gate_id, GateState(target),
                                 exit_code=3 if target in ("PASSED", "FAILED") else None,
                                 stdout="out", stderr="err")
    assert row["state"] == target
    if target in ("PASSED", "FAILED"):
        assert row["exit_code"] == 3 and row["completed_at"] and row["duration_sec"] >= 0
        assert (row["stdout"], row["stderr"]) == ("out", "err")
    if target == "RUNNING":
        assert row["started_at"] is not None
    event = [e for e in db.events_since(0) if e["data"].get("gate_id") == gate_id][-1]
    assert (event["data"]["from"], event["data"]["to"]) == (current, target)


@pytest.mark.parametrize("current, target", ILLEGAL)
def test_illegal_transitions_change_nothing(gates, db, current, target):
    gate_id = _gate_in(gates, current)
    before, events = gates.get_gate(gate_id), db.events_since(0)
    with pytest.raises(InvalidTransitionError, match=f"^Invalid transition: gate '{gate_id}' cannot go from "
                                                     f"{current} to {target}: "):
        gates.transition_state(gate_id, target, exit_code=0)
    assert gates.get_gate(gate_id) == before and db.events_since(0) == events


@pytest.mark.parametrize("target", ["PASSED", "FAILED"])
def test_completion_needs_an_exit_code(gates, target):
    gate_id = _gate_in(gates, "RUNNING")
    with pytest.raises(ValidationError, match=f"^a gate that {target} needs its exit_code$"):
        gates.transition_state(gate_id, target)
    assert gates.get_gate(gate_id)["state"] == "RUNNING"
    with pytest.raises(NotFoundError, match="^gate 'ghost' not found$"):
        gates.transition_state("ghost", "RUNNING")


def test_a_failure_blocks_dependents_transitively_in_one_transaction(gates, db):
    lint = _gate_in(gates, "PENDING", gate_type="LINT")
    _gate_in(gates, "PENDING", gate_type="UNIT", depends_on=["LINT"])
    _gate_in(gates, "PENDING", gate_type="INTEGRATION", depends_on=["UNIT"])
    _gate_in(gates, "PENDING", gate_type="SECURITY")  # independent
    gates.transition_state(lint, "RUNNING")
    gates.transition_state(lint, "FAILED", exit_code=1)
    assert _states(gates) == {"LINT": "FAILED", "UNIT": "BLOCKED", "INTEGRATION": "BLOCKED",
                              "SECURITY": "PENDING"}
    blocked = {g["name"]: g["blocked_by"] for g in gates.list_gates(state="BLOCKED")}
    assert blocked == {"UNIT": "LINT", "INTEGRATION": "UNIT"}


def test_a_passing_rerun_unblocks_what_the_failure_blocked(gates):
    lint = _gate_in(gates, "PENDING", gate_type="LINT")
    _gate_in(gates, "PENDING", gate_type="UNIT", depends_on=["LINT"])
    _gate_in(gates, "PENDING", gate_type="INTEGRATION", depends_on=["UNIT"])
    gates.transition_state(lint, "RUNNING")
    gates.transition_state(lint, "FAILED", exit_code=1)
    rerun = gates.define_gate("LINT", "PH-1", "ruff check .")
    assert _states(gates)["UNIT"] == "BLOCKED"  # defining the re-run unblocks nothing
    gates.transition_state(rerun["gate_id"], "RUNNING")
    gates.transition_state(rerun["gate_id"], "PASSED", exit_code=0)
    assert _states(gates) == {"LINT": "PASSED", "UNIT": "PENDING", "INTEGRATION": "PENDING"}


def test_a_gate_with_another_failed_dependency_stays_blocked(gates):
    lint = _gate_in(gates, "PENDING", gate_type="LINT")
    sec = _gate_in(gates, "PENDING", gate_type="SECURITY")
    _gate_in(gates, "PENDING", gate_type="UNIT", depends_on=["LINT", "SECURITY"])
    for gate_id in (lint, sec):
        gates.transition_state(gate_id, "RUNNING")
        gates.transition_state(gate_id, "FAILED", exit_code=1)
    rerun = gates.define_gate("LINT", "PH-1", "ruff")
    gates.transition_state(rerun["gate_id"], "RUNNING")
    gates.transition_state(rerun["gate_id"], "PASSED", exit_code=0)
    unit = [g for g in gates.list_gates("PH-1") if g["name"] == "UNIT"][0]
    assert (unit["state"], unit["blocked_by"]) == ("BLOCKED", "SECURITY")
    rerun_sec = gates.define_gate("SECURITY", "PH-1", "bandit")
    gates.transition_state(rerun_sec["gate_id"], "RUNNING")
    gates.transition_state(rerun_sec["gate_id"], "PASSED", exit_code=0)
    assert _states(gates)["UNIT"] == "PENDING"


def test_a_gate_defined_after_its_dependency_failed_starts_blocked(gates):
    lint = _gate_in(gates, "FAILED", gate_type="LINT")
    unit = gates.define_gate("UNIT", "PH-1", "pytest", depends_on=["LINT"])
    assert (unit["state"], unit["blocked_by"]) == ("BLOCKED", "LINT")
    assert gates.get_gate(lint)["state"] == "FAILED"


def test_dependencies_are_scoped(gates, db):
    run_a = db.create_run({"project_id": "p", "phase_id": "ph"})
    run_b = db.create_run({"project_id": "p", "phase_id": "ph"})
    lint_a = gates.define_gate("LINT", "PH-1", "ruff", run_id=run_a)
    gates.define_gate("UNIT", "PH-1", "pytest", depends_on=["LINT"], run_id=run_a)
    gates.define_gate("LINT", "PH-1", "ruff", run_id=run_b)
    unit_b = gates.define_gate("UNIT", "PH-1", "pytest", depends_on=["LINT"], run_id=run_b)
    gates.transition_state(lint_a["gate_id"], "RUNNING")
    gates.transition_state(lint_a["gate_id"], "FAILED", exit_code=1)
    assert gates.get_gate(unit_b["gate_id"])["state"] == "PENDING"
    assert [g["state"] for g in gates.list_gates(run_id=run_a)] == ["FAILED", "BLOCKED"]
    with pytest.raises(ValidationError, match="^depends_on names gate 'LINT', which is not "
                                              "defined in this phase/run/patch scope$"):
        gates.define_gate("UNIT", "PH-2", "pytest", depends_on=["LINT"], run_id=run_a)


def test_dependency_cycles_are_refused(gates):
    gates.define_gate("LINT", "PH-1", "ruff")
    gates.define_gate("UNIT", "PH-1", "pytest", depends_on=["LINT"])
    with pytest.raises(ValidationError, match="^gate 'LINT' would depend on itself through "
                                              "UNIT: dependency cycles are refused$"):
        gates.define_gate("LINT", "PH-1", "ruff", depends_on=["UNIT"])
    with pytest.raises(ValidationError, match="^gate 'UNIT' would depend on itself through "
                                              "UNIT: dependency cycles are refused$"):
        gates.define_gate("UNIT", "PH-1", "pytest", depends_on=["UNIT"])
    assert len(gates.list_gates()) == 2


def test_expire_timeouts_fails_gates_past_their_timeout(gates, db):
    slow = _gate_in(gates, "RUNNING", gate_type="INTEGRATION", timeout_sec=60)
    quick = _gate_in(gates, "RUNNING", gate_type="UNIT", timeout_sec=600)
    _gate_in(gates, "RUNNING", gate_type="LINT")  # no timeout
    _gate_in(gates, "PENDING", gate_type="SECURITY", timeout_sec=1, depends_on=["INTEGRATION"])
    started = datetime.fromisoformat(gates.get_gate(slow)["started_at"])
    assert gates.expire_timeouts(now=started + timedelta(seconds=59)) == []
    assert gates.expire_timeouts(now=started + timedelta(seconds=61)) == [slow]
    gate = gates.get_gate(slow)
    assert (gate["state"], gate["exit_code"]) == ("FAILED", 124)
    assert "timeout" in gate["stderr"] and 60 <= gate["duration_sec"] < 62
    assert gates.get_gate(quick)["state"] == "RUNNING"
    assert _states(gates)["SECURITY"] == "BLOCKED"
    with pytest.raises(ValidationError, match=r"^now must be an aware datetime \(e\.g\. "
                                              r"datetime\.now\(timezone\.utc\)\), got "
                                              r"datetime\.datetime\(2030, 1, 1, 0, 0\)$"):
        gates.expire_timeouts(now=datetime(2030, 1, 1))
    assert gates.expire_timeouts(now=datetime.now(timezone.utc)) == []


def test_list_gates_filters(gates, db):
    run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
    a = _gate_in(gates, "PASSED", gate_type="LINT", run_id=run_id)
    gates.define_gate("UNIT", "PH-2", "pytest")
    assert [g["gate_id"] for g in gates.list_gates(run_id=run_id)] == [a]
    assert [g["name"] for g in gates.list_gates(phase_id="PH-2")] == ["UNIT"]
    assert [g["gate_id"] for g in gates.list_gates(state=GateState.PASSED)] == [a]
    assert len(gates.list_gates()) == 2
    with pytest.raises(ValidationError,
                       match="^unknown gate state 'DONE'; known states: PENDING, "):
        gates.list_gates(state="DONE")


def test_sql_level_invariants(gates, db):
    gate_id = _gate_in(gates, "RUNNING")
    done = "'2026-01-01T00:00:00.000000Z'"
    for sql, constraint in [
        # a well-formed completed_at, so that only the missing exit code is wrong
        (f"UPDATE test_gates SET state = 'PASSED', completed_at = {done}",
         refused_by("state NOT IN ('PASSED', 'FAILED') OR exit_code IS NOT NULL",
                "test_gates_check")),
        ("UPDATE test_gates SET state = 'FAILED', exit_code = 1",
         refused_by("(state IN ('PASSED', 'FAILED')) = (completed_at IS NOT NULL)",
                "test_gates_check1")),
        # (PostgreSQL checks the timestamp format with a domain of its own)
        ("UPDATE test_gates SET started_at = 'x'",
         refused_by("started_at GLOB '[0-9]", "uet_timestamp_check")),
        ("UPDATE test_gates SET gate_type = 'SMOKE'",
         refused_by("gate_type IN ('LINT',", "test_gates_gate_type_check")),
        ("UPDATE test_gates SET state = 'DONE'",
         refused_by("state IN ( 'PENDING',", "test_gates_state_check")),
        ("UPDATE test_gates SET timeout_sec = 0",
         refused_by("timeout_sec IS NULL OR (typeof(timeout_sec) = 'real'",
                "test_gates_timeout_sec_check"))]:
        with pytest.raises(REFUSED, match=constraint):
            raw_execute(db, sql)
    assert gates.get_gate(gate_id)["state"] == "RUNNING"


def test_a_gate_starts_only_after_its_dependencies_passed(gates):
    lint = _gate_in(gates, "PENDING", gate_type="LINT")
    unit = _gate_in(gates, "PENDING", gate_type="UNIT", depends_on=["LINT"])
    not_passed = (f"^Invalid transition: gate '{unit}' cannot go from PENDING to RUNNING: its dependency LINT has "
                  "not passed")
    with pytest.raises(InvalidTransitionError, match=not_passed + r" \(it is PENDING\)$"):
        gates.transition_state(unit, "RUNNING")
    gates.transition_state(lint, "RUNNING")
    with pytest.raises(InvalidTransitionError, match=not_passed + r" \(it is RUNNING\)$"):
        gates.transition_state(unit, "RUNNING")
    gates.transition_state(lint, "PASSED", exit_code=0)
    assert gates.transition_state(unit, "RUNNING")["state"] == "RUNNING"


def test_a_blocked_gate_cannot_be_released_while_its_dependency_is_failed(gates):
    lint = _gate_in(gates, "PENDING", gate_type="LINT")
    unit = _gate_in(gates, "PENDING", gate_type="UNIT", depends_on=["LINT"])
    gates.transition_state(lint, "RUNNING")
    gates.transition_state(lint, "FAILED", exit_code=2)
    with pytest.raises(InvalidTransitionError, match=f"^Invalid transition: gate '{unit}' cannot go from BLOCKED to "
                                                     "PENDING: its dependency LINT is FAILED$"):
        gates.transition_state(unit, "PENDING")
    assert gates.get_gate(unit)["state"] == "BLOCKED"


def test_a_late_failure_of_an_older_run_does_not_block_again(gates):
    first = _gate_in(gates, "RUNNING", gate_type="LINT")
    unit = _gate_in(gates, "PENDING", gate_type="UNIT", depends_on=["LINT"])
    rerun = gates.define_gate("LINT", "PH-1", "ruff")
    gates.transition_state(rerun["gate_id"], "RUNNING")
    gates.transition_state(rerun["gate_id"], "PASSED", exit_code=0)
    gates.transition_state(first, "FAILED", exit_code=1)  # the old row finishes late
    assert gates.get_gate(unit)["state"] == "PENDING"
    assert gates.transition_state(unit, "RUNNING")["state"] == "RUNNING"


def test_a_failure_reaches_through_a_running_dependent(gates):
    lint = _gate_in(gates, "PASSED", gate_type="LINT")
    unit = _gate_in(gates, "PENDING", gate_type="UNIT", depends_on=["LINT"])
    integ = _gate_in(gates, "PENDING", gate_type="INTEGRATION", depends_on=["UNIT"])
    gates.transition_state(unit, "RUNNING")
    rerun = gates.define_gate("LINT", "PH-1", "ruff")
    gates.transition_state(rerun["gate_id"], "RUNNING")
    gates.transition_state(rerun["gate_id"], "FAILED", exit_code=1)
    assert gates.get_gate(unit)["state"] == "RUNNING"  # cannot be blocked mid-run
    blocked = gates.get_gate(integ)
    assert (blocked["state"], blocked["blocked_by"]) == ("BLOCKED", "UNIT")
    assert gates.get_gate(lint)["state"] == "PASSED"


def test_diamond_blocks_once_and_unblocks(gates, db):
    lint = _gate_in(gates, "PENDING", gate_type="LINT")
    _gate_in(gates, "PENDING", gate_type="UNIT", depends_on=["LINT"])
    _gate_in(gates, "PENDING", gate_type="SECURITY", depends_on=["LINT"])
    top = _gate_in(gates, "PENDING", gate_type="INTEGRATION", depends_on=["UNIT", "SECURITY"])
    gates.transition_state(lint, "RUNNING")
    gates.transition_state(lint, "FAILED", exit_code=1)
    assert set(_states(gates).values()) == {"FAILED", "BLOCKED"}
    blocked_events = [e for e in db.events_since(0) if e["data"].get("gate_id") == top
                      and e["data"].get("to") == "BLOCKED"]
    assert len(blocked_events) == 1
    rerun = gates.define_gate("LINT", "PH-1", "ruff")
    gates.transition_state(rerun["gate_id"], "RUNNING")
    gates.transition_state(rerun["gate_id"], "PASSED", exit_code=0)
    assert _states(gates) == {"LINT": "PASSED", "UNIT": "PENDING", "SECURITY": "PENDING",
                              "INTEGRATION": "PENDING"}


def test_bad_now_values_are_typed_errors(gates):
    from datetime import timezone as tz
    with pytest.raises(ValidationError, match="^now is outside the years 1 to 9999 in UTC: "):
        gates.expire_timeouts(now=datetime(9999, 12, 31, 23, tzinfo=tz(timedelta(hours=-5))))
    with pytest.raises(ValidationError,
                       match="^now must be an aware datetime .*, got '2026-01-01'$"):
        gates.expire_timeouts(now="2026-01-01")

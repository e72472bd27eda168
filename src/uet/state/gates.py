"""Test gates: the quality checks (lint, unit, integration, security) that judge a run or a
patch, with dependencies between them.

A gate that fails blocks the gates that depend on it, transitively and in the same
transaction; when a re-run of the failed gate (a new row with the same name in the same
scope) passes, the gates it blocked return to PENDING.
"""

from __future__ import annotations

import enum
import json
from typing import Any, Iterable

from uet.errors import (ConstraintViolation, InvalidTransitionError, NotFoundError,
                        ValidationError)
from uet.state.backends import Backend, Transaction
from uet.state.db import Database
from uet.state.transitions import record_event
from uet.state.events import GATE_DEFINED, GATE_STATE_CHANGED
from uet.state.ids import new_ulid, utc_now
from uet.state.machines import GATE
from uet.state.contracts import (GateType, moment, output, parse_stamp, positive_seconds,
                              seconds_between, state_value, stamp)
from uet.state.tables import EXIT_CODE_MAX, EXIT_CODE_MIN, text

TIMEOUT_EXIT_CODE = 124  # what timeout(1) exits with

_FILTERS = ("phase_id", "state", "run_id")


class GateLedger:
    """Test gates of one ledger (machine: PENDING → RUNNING | BLOCKED; RUNNING → PASSED |
    FAILED; BLOCKED → PENDING). Gates are returned as dicts with their `depends_on` names."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @property
    def _backend(self) -> Backend:
        return self._db.backend

    def define_gate(self, gate_type: object, phase_id: str, command: str, *,
                    name: str | None = None, depends_on: Iterable[str] = (),
                    timeout_sec: float | None = None, run_id: str | None = None,
                    ledger_id: str | None = None) -> dict[str, Any]:
        """Define a gate (PENDING) in the scope (phase_id, run_id, ledger_id).

        `name` defaults to the gate type; `depends_on` names gates already defined in the
        same scope (a cycle is refused). A gate whose dependency has already failed starts
        BLOCKED.
        """
        kind = gate_type.value if isinstance(gate_type, enum.Enum) else gate_type
        if not isinstance(kind, str) or kind not in {t.value for t in GateType}:
            raise ValidationError(f"unknown gate_type {gate_type!r}; known: "
                                  f"{', '.join(t.value for t in GateType)}", field="gate_type")
        scope = {"phase_id": text(phase_id, "phase_id"),
                 "run_id": text(run_id, "run_id", required=False),
                 "ledger_id": text(ledger_id, "ledger_id", required=False)}
        command = text(command, "command")
        name = kind if name is None else text(name, "name")
        if not isinstance(depends_on, (list, tuple, set, frozenset)):
            raise ValidationError(f"depends_on must be a list of gate names, got "
                                  f"{depends_on!r}", field="depends_on")
        deps = list(dict.fromkeys(text(d, "depends_on") for d in depends_on))
        timeout = positive_seconds(timeout_sec, "timeout_sec", required=False)
        gate_id = new_ulid()
        try:
            with self._backend.transaction() as tx:
                blocked_by = None
                for dep in deps:
                    latest = tx.rows("latest_gate_named", {**scope, "name": dep})
                    if not latest:
                        raise ValidationError(f"depends_on names gate {dep!r}, which is not "
                                              "defined in this phase/run/patch scope",
                                              field="depends_on")
                    if blocked_by is None and latest[0]["state"] in ("FAILED", "BLOCKED"):
                        blocked_by = dep
                self._refuse_cycle(tx, scope, name, deps)
                gate = tx.rows("insert_gate", (
                    gate_id, kind, name, scope["phase_id"], command, timeout,
                    scope["run_id"], scope["ledger_id"], utc_now()))[0]
                for dep in deps:
                    tx.run("insert_gate_dependency", (gate_id, dep))
                record_event(tx, scope["run_id"], GATE_DEFINED, {
                    "gate_id": gate_id, "gate_type": kind, "name": name,
                    "phase_id": scope["phase_id"], "ledger_id": scope["ledger_id"],
                    "depends_on": deps, "state": "PENDING"})
                if blocked_by is not None:
                    gate = self._set_state(tx, gate, "BLOCKED", blocked_by=blocked_by)
        except ConstraintViolation as exc:
            if exc.kind == "foreign_key":
                raise ValidationError(f"gate refers to a run or patch entry that does not "
                                      f"exist (run_id={run_id!r}, ledger_id={ledger_id!r})",
                                      field="run_id" if run_id else "ledger_id") from None
            raise  # pragma: no cover - every other constraint is checked above
        return self._with_deps(gate, deps)

    def transition_state(self, gate_id: str, new_state: object, *, exit_code: int | None = None,
                         stdout: str | None = None, stderr: str | None = None) -> dict[str, Any]:
        """Move a gate under its machine; returns it.

        PASSED and FAILED need an exit_code; they stamp completed_at and duration_sec. A
        FAILED gate blocks its dependents; a PASSED one unblocks what its name's failure had
        blocked.
        """
        gate_id = text(gate_id, "gate_id")
        target = state_value(GATE, new_state, "new_state")
        if exit_code is not None and (not isinstance(exit_code, int) or isinstance(exit_code, bool)
                                      or not EXIT_CODE_MIN <= exit_code <= EXIT_CODE_MAX):
            raise ValidationError(f"exit_code must be an integer from {EXIT_CODE_MIN} to "
                                  f"{EXIT_CODE_MAX}, got {exit_code!r}", field="exit_code")
        if target in ("PASSED", "FAILED") and exit_code is None:
            raise ValidationError(f"a gate that {target} needs its exit_code", field="exit_code")
        stdout = output(stdout, "stdout")
        stderr = output(stderr, "stderr")
        with self._backend.transaction() as tx:
            gate = self._fetch(tx, gate_id)
            gate = self._set_state(tx, gate, target, exit_code=exit_code, stdout=stdout,
                                   stderr=stderr)
            return self._with_deps(gate, self._deps(tx, gate_id))

    def expire_timeouts(self, now: object = None) -> list[str]:
        """Fail every RUNNING gate past its timeout (exit code 124, stderr says timeout);
        returns their ids. `now` is an aware UTC datetime (default the clock)."""
        when = moment(now)
        expired: list[str] = []
        with self._backend.transaction() as tx:
            for gate in tx.rows("running_gates_with_timeout"):
                started = gate["started_at"]
                if started is None or (when - parse_stamp(started)).total_seconds() <= \
                        gate["timeout_sec"]:
                    continue
                note = f"timeout: gate ran longer than {gate['timeout_sec']:g} s"
                stderr = f"{gate['stderr']}\n{note}" if gate["stderr"] else note
                self._set_state(tx, gate, "FAILED", exit_code=TIMEOUT_EXIT_CODE,
                                stderr=stderr, at=stamp(when))
                expired.append(gate["gate_id"])
        return expired

    def get_gate(self, gate_id: str) -> dict[str, Any] | None:
        """The gate with its `depends_on` names, or None."""
        gate_id = text(gate_id, "gate_id")
        rows = self._backend.read("get_gate", (gate_id,))
        if not rows:
            return None
        deps = [r["depends_on"] for r in
                self._backend.read("gate_dependencies", (gate_id,))]
        return self._with_deps(rows[0], deps)

    def list_gates(self, phase_id: str | None = None, state: object = None,
                   run_id: str | None = None) -> list[dict[str, Any]]:
        """Gates matching every given filter, oldest first."""
        values = {"phase_id": text(phase_id, "phase_id", required=False),
                  "state": None if state is None else state_value(GATE, state),
                  "run_id": text(run_id, "run_id", required=False)}
        given = tuple(f for f in _FILTERS if values[f] is not None)
        # column names come from _FILTERS, never from the caller
        mark = self._backend.placeholder
        where = " AND ".join(f"{f} = {mark}" for f in given)
        sql = (self._backend.queries["gates_with_dependencies"].rstrip(";")
               + (f" WHERE {where}" if where else "") + " ORDER BY created_at, gate_id")
        rows = self._backend.query(sql, [values[f] for f in given])
        return [{**r, "depends_on": sorted(json.loads(r["depends_on"]))} for r in rows]

    # -- internals -----------------------------------------------------------------------

    @staticmethod
    def _with_deps(gate: dict[str, Any], deps: list[str]) -> dict[str, Any]:
        return {**gate, "depends_on": sorted(deps)}

    @staticmethod
    def _deps(tx: Transaction, gate_id: str) -> list[str]:
        return [r[0] for r in tx.run("gate_dependencies", (gate_id,))]

    @staticmethod
    def _fetch(tx: Transaction, gate_id: str) -> dict[str, Any]:
        rows = tx.rows("lock_gate", (gate_id,))
        if not rows:
            raise NotFoundError("gate", gate_id)
        return rows[0]

    @staticmethod
    def _scope(gate: dict[str, Any]) -> dict[str, Any]:
        return {"phase_id": gate["phase_id"], "run_id": gate["run_id"],
                "ledger_id": gate["ledger_id"]}

    @staticmethod
    def _refuse_cycle(tx: Transaction, scope: dict[str, Any], name: str,
                      deps: list[str]) -> None:
        edges: dict[str, set[str]] = {}
        for gate_name, dep in tx.run("scope_dependency_edges", scope):
            edges.setdefault(gate_name, set()).add(dep)
        edges.setdefault(name, set()).update(deps)
        stack, seen = list(deps), set()
        while stack:
            node = stack.pop()
            if node == name:
                raise ValidationError(f"gate {name!r} would depend on itself through "
                                      f"{', '.join(deps)}: dependency cycles are refused",
                                      field="depends_on")
            if node not in seen:
                seen.add(node)
                stack.extend(edges.get(node, ()))

    def _set_state(self, tx: Transaction, gate: dict[str, Any], target: str, *,
                   exit_code: int | None = None, stdout: str | None = None,
                   stderr: str | None = None, blocked_by: str | None = None,
                   at: str | None = None) -> dict[str, Any]:
        GATE.check_transition(gate["gate_id"], gate["state"], target)
        if target in ("RUNNING", "PENDING") and gate["state"] in ("PENDING", "BLOCKED"):
            self._check_dependencies(tx, gate, target)
        now = at or utc_now()
        stamps = {"started_at": None, "completed_at": None,
                  **GATE.stamps_entering(target, gate, {}, now)}
        duration = None
        if stamps["completed_at"] and gate["started_at"]:
            duration = seconds_between(gate["started_at"], now)
        row = tx.rows("set_gate_state", {
            "state": target, "exit_code": exit_code, "stdout": stdout, "stderr": stderr,
            **stamps, "duration_sec": duration,
            "blocked_by": blocked_by if target == "BLOCKED" else None,
            "gate_id": gate["gate_id"]})[0]
        data: dict[str, Any] = {"gate_id": gate["gate_id"], "name": gate["name"],
                                "from": gate["state"], "to": target}
        if exit_code is not None:
            data["exit_code"] = exit_code
        if blocked_by is not None:
            data["blocked_by"] = blocked_by
        record_event(tx, gate["run_id"], GATE_STATE_CHANGED, data)
        # Only the newest gate of a name speaks for it: a late result of an older row
        # neither blocks nor unblocks anything.
        if target in ("FAILED", "PASSED") and self._is_latest(tx, row):
            if target == "FAILED":
                self._block_dependents(tx, row)
            else:
                self._unblock(tx, row)
        return row

    def _is_latest(self, tx: Transaction, gate: dict[str, Any]) -> bool:
        latest = tx.rows("latest_gate_named", {**self._scope(gate), "name": gate["name"]})
        is_latest: bool = latest[0]["gate_id"] == gate["gate_id"]
        return is_latest

    def _check_dependencies(self, tx: Transaction, gate: dict[str, Any], target: str) -> None:
        """A gate may start only once every dependency passed, and leave BLOCKED only once
        none has failed (its latest run, by name, in the gate's scope)."""
        scope = self._scope(gate)
        for dep in self._deps(tx, gate["gate_id"]):
            latest = tx.rows("latest_gate_named", {**scope, "name": dep})
            state = latest[0]["state"] if latest else "missing"
            if target == "RUNNING" and state != "PASSED":
                reason = f"its dependency {dep} has not passed (it is {state})"
            elif target == "PENDING" and state in ("FAILED", "BLOCKED"):
                reason = f"its dependency {dep} is {state}"
            else:
                continue
            raise InvalidTransitionError("gate", gate["gate_id"], gate["state"], target,
                                         reason=reason)

    def _block_dependents(self, tx: Transaction, failed: dict[str, Any]) -> None:
        # Breadth-first over names: PENDING dependents become BLOCKED; the failure also
        # reaches through dependents already RUNNING to the gates that wait on them.
        scope = self._scope(failed)
        queue, seen = [failed["name"]], {failed["name"]}
        while queue:
            name = queue.pop(0)
            for gate in tx.rows("open_dependents", {**scope, "name": name}):
                if gate["state"] == "PENDING":
                    self._set_state(tx, gate, "BLOCKED", blocked_by=name)
                if gate["name"] not in seen:
                    seen.add(gate["name"])
                    queue.append(gate["name"])

    def _unblock(self, tx: Transaction, passed: dict[str, Any]) -> None:
        scope = self._scope(passed)
        queue = [passed["name"]]
        while queue:
            name = queue.pop(0)
            for gate in tx.rows("gates_blocked_by", {**scope, "name": name}):
                still = self._failed_dependency(tx, scope, gate)
                if still is not None:  # another dependency is still failed: blocked by it now
                    tx.run("set_gate_blocked_by", (still, gate["gate_id"]))
                    continue
                self._set_state(tx, gate, "PENDING")
                queue.append(gate["name"])

    def _failed_dependency(self, tx: Transaction, scope: dict[str, Any],
                           gate: dict[str, Any]) -> str | None:
        for dep in self._deps(tx, gate["gate_id"]):
            latest = tx.rows("latest_gate_named", {**scope, "name": dep})
            if latest and latest[0]["state"] in ("FAILED", "BLOCKED"):
                return dep
        return None


__all__ = ["GateLedger", "GATE_DEFINED", "GATE_STATE_CHANGED", "TIMEOUT_EXIT_CODE"]

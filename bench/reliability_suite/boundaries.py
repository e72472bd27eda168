"""Check 7: kill a writer just before each SQL statement of each public write call in turn
(and just after the call returned). SQLite's trace callback says where the writer is.

After every kill the file must hold either everything the call does or nothing of it, its
integrity must be ok, and the event trail must explain every state.
"""

from __future__ import annotations

import os
import random
import signal
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

from reliability_suite.common import (DIFF, Mode, Result, copy_ledger, integrity_ok,
                                      logical_snapshot, on_new_connections, populate,
                                      trail_violations)

LATER = datetime.now(timezone.utc) + timedelta(days=1)


@dataclass
class Scenario:
    name: str
    setup: Callable[[Any], None]          # prepares the template ledger (a Database)
    call: Callable[[str], None]           # the write call, given the ledger's path
    visible: bool = True                  # the call changes what logical_snapshot shows
    trail: bool = True                    # every record's state is explained by events
    upgrade: bool = False                 # an upgrade: each whole version in between is fine


def _finished(db) -> None:
    """The base, with the busy worker's run finished (so it may be released)."""
    populate(db)
    db.transition_run("run-w", "succeeded", exit_code=0)


def _with(action: Callable[[Any], None]) -> Callable[[str], None]:
    def call(path: str) -> None:
        from uet.state import Database
        db = Database(path)
        try:
            action(db)
        finally:
            db.close()
    return call


def _patches(db):
    from uet.state import PatchLedger
    return PatchLedger(db)


def _workers(db):
    from uet.state import WorkerLifecycle
    return WorkerLifecycle(db)


def _gates(db):
    from uet.state import GateLedger
    return GateLedger(db)


def _ids(db) -> dict:
    """Ids made during set-up, read back from the ledger (they are generated)."""
    entry = _patches(db).list_entries()[0]
    gate = next(g for g in _gates(db).list_gates() if g["name"] == "LINT")
    return {"entry": entry.ledger_id, "patch": entry.patch_id, "lint": gate["gate_id"]}


def _make_seed(path: str) -> None:
    import sqlite3
    from reliability_suite.migration import SEED_DDL, fill_seed
    conn = sqlite3.connect(path)
    conn.executescript(SEED_DDL)
    fill_seed(conn, runs=20)
    conn.commit()
    conn.close()


def _make_v1(path: str) -> None:
    from reliability_suite.migration import make_ledger_at
    make_ledger_at(path, 1, runs=20)


SCENARIOS = [
    Scenario("create_run", populate, _with(lambda db: db.create_run(
        {"run_id": "run-new", "project_id": "p", "phase_id": "ph", "metadata": {"k": 1}}))),
    Scenario("update_run", populate, _with(lambda db: db.update_run(
        "run-r", {"metadata": {"k": 2}, "state": "succeeded", "exit_code": 0}))),
    Scenario("transition_run (claim)", populate, _with(lambda db: db.transition_run(
        "run-p", "running", expected="pending"))),
    Scenario("transition_run (finish)", populate, _with(lambda db: db.transition_run(
        "run-r", "failed", exit_code=1, error_message="boom"))),
    Scenario("delete_run", populate, _with(lambda db: db.delete_run("run-p"))),
    Scenario("create_step_attempt", populate, _with(lambda db: db.create_step_attempt(
        {"step_attempt_id": "step-new", "run_id": "run-r", "sequence": 1, "tool_id": "t"}))),
    Scenario("update_step_attempt", populate, _with(lambda db: db.update_step_attempt(
        "step-r", {"state": "succeeded", "exit_code": 0, "output_patch_id": "x"}))),
    Scenario("transition_step_attempt", populate, _with(lambda db: db.transition_step_attempt(
        "step-r", "failed", exit_code=2, error_log="bad"))),
    Scenario("create_event", populate, _with(lambda db: db.create_event(
        {"event_id": "ev-new", "run_id": "run-r", "event_type": "note", "data": {"a": 1}}))),
    Scenario("spawn_worker", populate, _with(lambda db: _workers(db).spawn_worker(
        "w-2", "t", {"gpu": True}))),
    Scenario("worker transition_state", populate, _with(lambda db: _workers(db).transition_state(
        "w-new", "IDLE"))),
    Scenario("terminate_worker (drain)", populate, _with(
        lambda db: _workers(db).terminate_worker("w-busy"))),
    Scenario("worker TERMINATED (fails held work)", populate, _with(
        lambda db: _workers(db).transition_state("w-busy", "TERMINATED"))),
    Scenario("heartbeat", populate, _with(lambda db: _workers(db).heartbeat("w-idle")),
             visible=False),
    Scenario("claim_run", populate, _with(lambda db: _workers(db).claim_run("w-idle"))),
    Scenario("release", _finished, _with(lambda db: _workers(db).release("w-busy"))),
    Scenario("reap_stale", populate, _with(lambda db: _workers(db).reap_stale(1, now=LATER))),
    Scenario("record_patch", populate, _with(lambda db: _patches(db).record_patch(
        DIFF + "+more\n", run_id="run-r"))),
    Scenario("create_entry", populate, _with(lambda db: _patches(db).create_entry(
        _ids(db)["patch"], "ph", "ws"))),
    Scenario("patch transition_state", populate, _with(lambda db: _patches(db).transition_state(
        _ids(db)["entry"], "validated", "ok", expected_version=1))),
    Scenario("quarantine", populate, _with(lambda db: _patches(db).quarantine(
        _ids(db)["entry"], "scope violation"))),
    Scenario("set_validation", populate, _with(lambda db: _patches(db).set_validation(
        _ids(db)["entry"], format=True, tests=False))),
    Scenario("define_gate", populate, _with(lambda db: _gates(db).define_gate(
        "SECURITY", "ph", "bandit", depends_on=["LINT", "UNIT"]))),
    Scenario("gate FAILED (blocks dependents)", populate, _with(
        lambda db: _gates(db).transition_state(_ids(db)["lint"], "FAILED", exit_code=1))),
    Scenario("expire_timeouts", populate, _with(lambda db: _gates(db).expire_timeouts(now=LATER))),
    # opening an older ledger upgrades it; its old rows predate the event trail
    Scenario("migrate seed ledger", None, _with(lambda db: None), trail=False,
             upgrade=True),
    Scenario("migrate version 1", None, _with(lambda db: None), trail=False,
             upgrade=True),
]
_MAKERS = {"migrate seed ledger": _make_seed, "migrate version 1": _make_v1}


class _Tracer:
    """Counts statements on every connection uet opens; kills this process before statement
    number `kill_at` when armed."""

    def __init__(self) -> None:
        self.armed = False
        self.kill_at: int | None = None
        self.statements: list[str] = []

    def __call__(self, statement: str) -> None:
        if not self.armed:
            return
        if self.kill_at is not None and len(self.statements) == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        self.statements.append(statement)


def _install(tracer: _Tracer):
    """Route every new uet connection's statements through `tracer`; returns an undo."""
    return on_new_connections(lambda conn: conn.set_trace_callback(tracer))


def _template(scenario: Scenario, path: str) -> None:
    from uet.state import init_db
    if scenario.setup is None:
        _MAKERS[scenario.name](path)
        return
    with init_db(path) as db:
        scenario.setup(db)


def _victim(scenario: Scenario, path: str, kill_at: int | None, ack_fd: int) -> None:
    """In a forked child: run the call, killed before statement `kill_at`; after it
    returns, acknowledge and die by SIGKILL as well."""
    try:
        tracer = _Tracer()
        tracer.kill_at = kill_at
        _install(tracer)
        tracer.armed = True
        scenario.call(path)
        tracer.armed = False
        os.write(ack_fd, b"returned\n")
        os.fsync(ack_fd)
    except BaseException as exc:  # reported to the parent, which counts it
        os.write(ack_fd, f"error {type(exc).__name__}: {exc}\n".encode())
    os.kill(os.getpid(), signal.SIGKILL)


def run(mode: Mode, workdir: Path, mutant: str | None, rng: random.Random) -> Result:
    result = Result("boundaries")
    total = covered = corrupt = partial = lost = missing_events = errors = 0
    details: list[str] = []
    for number, scenario in enumerate(SCENARIOS):
        template = str(workdir / f"template-{number}.db")
        _template(scenario, template)
        before = logical_snapshot(template)
        # the reference: the call once, untouched, counting its statements
        reference = str(workdir / f"reference-{number}.db")
        copy_ledger(template, reference)
        tracer = _Tracer()
        undo = _install(tracer)
        try:
            tracer.armed = True
            scenario.call(reference)
        except Exception as exc:  # counted: the call must work on its prepared ledger
            errors += 1
            details.append(f"{scenario.name}: {type(exc).__name__}: {exc}")
            continue
        finally:
            tracer.armed = False
            undo()
        after = logical_snapshot(reference)
        whole = {before, after}
        if scenario.upgrade:  # one transaction per migration: any version is whole
            from reliability_suite.migration import upgraded_to
            from uet.state.backends.sqlite_schema import LATEST_VERSION
            for version in range(1, LATEST_VERSION):
                stage = str(workdir / f"stage-{number}-{version}.db")
                upgraded_to(template, version, stage)
                whole.add(logical_snapshot(stage))
        if scenario.visible and after == before:
            lost += 1  # the call returned but its write is not in the file
            details.append(f"{scenario.name}: returned, but nothing reached the file")
        boundaries = len(tracer.statements)
        for kill_at in [*range(boundaries), None]:
            victim = str(workdir / f"victim-{number}.db")
            copy_ledger(template, victim)
            ack_path = str(workdir / "ack")
            fd = os.open(ack_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child never returns
                _victim(scenario, victim, kill_at, fd)
            os.close(fd)
            _, status = os.waitpid(pid, 0)
            said = Path(ack_path).read_text()
            returned = said.startswith("returned")
            if said.startswith("error"):
                errors += 1
                details.append(f"{scenario.name} @ {kill_at}: {said.strip()}")
            if kill_at is not None:
                total += 1
                killed_there = os.WIFSIGNALED(status) and not said
                covered += killed_there
            if not integrity_ok(victim):
                corrupt += 1
                continue
            found = logical_snapshot(victim)
            if found not in whole:
                partial += 1
                details.append(f"{scenario.name}: killed before statement {kill_at} "
                               f"({tracer.statements[kill_at] if kill_at is not None else 'end'})"
                               " left part of the call")
            if returned and scenario.visible and found != after:
                lost += 1
            if scenario.trail and trail_violations(victim):
                missing_events += 1
                details.append(f"{scenario.name}: killed before statement {kill_at}: "
                               f"{trail_violations(victim)[0]}")
    result.add("write calls", len(SCENARIOS), zero=False)
    result.add("statement boundaries", total, zero=False)
    result.add("boundaries covered (%)", round(100.0 * covered / max(total, 1), 1), zero=False)
    # a boundary never killed at could hide a call left half done
    result.add("boundaries not reached", total - covered, "partial")
    result.add("corrupted ledgers", corrupt, "corrupt")
    result.add("calls left half done", partial, "partial")
    result.add("acknowledged but missing", lost, "lost")
    result.add("state changes without event", missing_events, "missing_events")
    result.add("calls that raised", errors, "untyped")
    result.details = details
    return result

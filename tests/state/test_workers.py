"""Worker lifecycle: the machine, heartbeats, claiming, draining and reaping of stale workers."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from uet.errors import (AlreadyExistsError, ConcurrentUpdateError, DuplicateTransitionError,
                        InvalidTransitionError, NotFoundError, ValidationError)
from helpers import REFUSED, raw_execute, refused_by
from uet.state import WORKER, WorkerLifecycle, WorkerRecord, WorkerState

LEGAL = sorted((a, b) for a in WORKER.states for b in WORKER.states if WORKER.can(a, b))
ILLEGAL = sorted((a, b) for a in WORKER.states for b in WORKER.states if not WORKER.can(a, b))
PATH = {"SPAWNING": [], "IDLE": ["IDLE"], "BUSY": ["IDLE", "BUSY"],
        "DRAINING": ["IDLE", "BUSY", "DRAINING"], "TERMINATED": ["TERMINATED"]}
SPEC = {("SPAWNING", "IDLE"), ("SPAWNING", "TERMINATED"), ("IDLE", "BUSY"),
        ("IDLE", "TERMINATED"), ("BUSY", "IDLE"), ("BUSY", "DRAINING"), ("BUSY", "TERMINATED"),
        ("DRAINING", "TERMINATED")}
LATER = datetime.now(timezone.utc) + timedelta(days=1)


@pytest.fixture
def workers(db):
    return WorkerLifecycle(db)


def _worker_in(workers, state, worker_id="w1", worker_type="code_edit"):
    workers.spawn_worker(worker_id, worker_type, {"language": "python", "tool": "aider"})
    for step in PATH[state]:
        workers.transition_state(worker_id, step)
    assert workers.get_worker(worker_id).state == state
    return worker_id


def test_machine_matches_the_spec():
    assert set(LEGAL) == SPEC and WORKER.terminal == {"TERMINATED"}


def test_spawn_returns_a_record_in_spawning(workers):
    record = workers.spawn_worker("w1", "testing", {"language": "python"})
    assert isinstance(record, WorkerRecord)
    assert (record.state, record.affinity, record.terminated_at) == (
        WorkerState.SPAWNING, {"language": "python"}, None)
    assert workers.get_worker("w1") == record
    assert workers.get_worker("nobody") is None


def test_spawning_an_existing_worker_is_refused(workers, db):
    workers.spawn_worker("w1", "testing", {})
    before = db.events_since(0)
    with pytest.raises(ValidationError, match="already exists"):
        workers.spawn_worker("w1", "linting", {})
    with pytest.raises(AlreadyExistsError, match="worker 'w1' already exists"):
        workers.spawn_worker("w1", "linting", {})
    assert workers.get_worker("w1").worker_type == "testing" and db.events_since(0) == before


@pytest.mark.parametrize("current, target", LEGAL)
def test_legal_transitions(workers, db, current, target):
    worker_id = _worker_in(workers, current)
    n = len(db.events_since(0))
    assert workers.transition_state(worker_id, WorkerState(target)) is True
    record = workers.get_worker(worker_id)
    assert record.state == target
    assert (record.terminated_at is not None) == (target == "TERMINATED")
    events = db.events_since(0)[n:]
    assert [(e["event_type"], e["run_id"], e["data"]["from"], e["data"]["to"])
            for e in events] == [("worker.state_changed", None, current, target)]


@pytest.mark.parametrize("current, target", ILLEGAL)
def test_illegal_transitions_change_nothing(workers, db, current, target):
    worker_id = _worker_in(workers, current)
    before, events = workers.get_worker(worker_id), db.events_since(0)
    with pytest.raises(InvalidTransitionError, match=f"{worker_id}.*{current}.*{target}"):
        workers.transition_state(worker_id, target)
    assert workers.get_worker(worker_id) == before and db.events_since(0) == events


def test_states_are_accepted_as_enum_or_string_and_checked(workers):
    _worker_in(workers, "SPAWNING")
    workers.transition_state("w1", "IDLE")
    assert workers.get_workers_by_state(WorkerState.IDLE)[0].worker_id == "w1"
    assert workers.get_workers_by_state("IDLE")[0].worker_id == "w1"
    with pytest.raises(ValidationError, match="unknown worker"):
        workers.transition_state("w1", "idle")
    with pytest.raises(NotFoundError, match="worker 'ghost' not found"):
        workers.transition_state("ghost", "IDLE")


def test_idle_workers_by_type(workers):
    _worker_in(workers, "IDLE", "a", "testing")
    _worker_in(workers, "IDLE", "b", "linting")
    _worker_in(workers, "BUSY", "c", "testing")
    assert [w.worker_id for w in workers.get_idle_workers()] == ["a", "b"]
    assert [w.worker_id for w in workers.get_idle_workers("testing")] == ["a"]


def test_heartbeat_updates_the_row_only(workers, db):
    _worker_in(workers, "IDLE")
    n = len(db.events_since(0))
    workers.heartbeat("w1")
    first = workers.get_worker("w1").last_heartbeat
    workers.heartbeat("w1")
    assert workers.get_worker("w1").last_heartbeat >= first is not None
    assert len(db.events_since(0)) == n
    with pytest.raises(NotFoundError, match="worker 'ghost' not found"):
        workers.heartbeat("ghost")


def test_a_terminated_worker_is_told_to_stop_when_it_heartbeats(workers):
    _worker_in(workers, "TERMINATED")
    with pytest.raises(ValidationError, match="TERMINATED"):
        workers.heartbeat("w1")


def test_terminate_drains_a_busy_worker_and_stops_others(workers, db):
    _worker_in(workers, "BUSY", "busy")
    _worker_in(workers, "IDLE", "idle")
    assert workers.terminate_worker("busy").state == "DRAINING"
    assert workers.terminate_worker("idle").state == "TERMINATED"
    assert workers.terminate_worker("busy").state == "TERMINATED"
    with pytest.raises(DuplicateTransitionError, match="'busy' .* already TERMINATED"):
        workers.terminate_worker("busy")


def test_claim_takes_the_oldest_pending_run_and_makes_the_worker_busy(workers, db):
    first = db.create_run({"project_id": "p", "phase_id": "ph",
                           "created_at": "2026-01-01T00:00:00Z"})
    db.create_run({"project_id": "p", "phase_id": "ph", "created_at": "2026-01-02T00:00:00Z"})
    _worker_in(workers, "IDLE")
    run = workers.claim_run("w1")
    assert (run["run_id"], run["state"], run["worker_id"]) == (first, "running", "w1")
    assert run["started_at"] is not None
    worker = workers.get_worker("w1")
    assert (worker.state, worker.current_run_id) == ("BUSY", first)
    change = db.list_events(first)[-1]
    assert change["data"] == {"from": "pending", "to": "running", "worker_id": "w1"}
    step = db.create_step_attempt({"run_id": first, "sequence": 1, "tool_id": "aider"})
    assert db.get_step_attempt(step)["worker_id"] == "w1"  # inherited from the run


@pytest.mark.parametrize("older_state", ["running", "canceled", "succeeded", "failed"])
def test_claim_passes_over_older_runs_that_are_not_pending(workers, db, older_state):
    """The oldest run is not pending: the claim must take the newer pending one, not fail
    on (or take) the older one."""
    path = {"running": ["running"], "canceled": ["canceled"],
            "succeeded": ["running", "succeeded"], "failed": ["running", "failed"]}
    older = db.create_run({"project_id": "p", "phase_id": "ph",
                           "created_at": "2026-01-01T00:00:00Z"})
    for state in path[older_state]:
        db.transition_run(older, state, **({"exit_code": 0} if state in ("succeeded", "failed")
                                           else {}))
    newer = db.create_run({"project_id": "p", "phase_id": "ph",
                           "created_at": "2026-01-02T00:00:00Z"})
    _worker_in(workers, "IDLE")
    assert workers.claim_run("w1")["run_id"] == newer
    assert db.get_run(older)["state"] == older_state and db.get_run(older)["worker_id"] is None
    db.transition_run(newer, "succeeded", exit_code=0)
    workers.release("w1")
    assert workers.claim_run("w1") is None  # only non-pending runs are left
    assert workers.get_worker("w1").state == "IDLE"


def test_claim_with_nothing_pending_returns_none_and_changes_nothing(workers, db):
    _worker_in(workers, "IDLE")
    n = len(db.events_since(0))
    assert workers.claim_run("w1") is None
    assert workers.get_worker("w1").state == "IDLE" and len(db.events_since(0)) == n


def test_claim_of_a_given_run_that_is_gone_is_a_concurrent_update(workers, db):
    run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
    _worker_in(workers, "IDLE", "a")
    _worker_in(workers, "IDLE", "b")
    assert workers.claim_run("a", run_id)["worker_id"] == "a"
    with pytest.raises(ConcurrentUpdateError,
                       match=f"run '{run_id}' was expected to be pending but is running"):
        workers.claim_run("b", run_id)
    assert workers.get_worker("b").state == "IDLE"
    assert db.get_run(run_id)["worker_id"] == "a"
    with pytest.raises(NotFoundError, match="run 'ghost' not found"):
        workers.claim_run("b", "ghost")


def test_only_an_idle_worker_can_claim(workers, db):
    db.create_run({"project_id": "p", "phase_id": "ph"})
    _worker_in(workers, "SPAWNING")
    with pytest.raises(InvalidTransitionError, match="'w1' cannot go from SPAWNING to BUSY"):
        workers.claim_run("w1")
    assert db.list_runs()[0]["state"] == "pending"


def test_worker_id_on_runs_is_managed_by_claim(workers, db):
    _worker_in(workers, "IDLE")
    with pytest.raises(ValidationError, match="claim_run"):
        db.create_run({"project_id": "p", "phase_id": "ph", "worker_id": "w1"})
    run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
    with pytest.raises(ValidationError, match="claim_run"):
        db.update_run(run_id, {"worker_id": "w1"})


def test_release_needs_the_run_to_be_finished(workers, db):
    run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
    _worker_in(workers, "IDLE")
    workers.claim_run("w1")
    with pytest.raises(ValidationError, match="still holds running run"):
        workers.release("w1")
    db.transition_run(run_id, "succeeded", exit_code=0)
    released = workers.release("w1")
    assert (released.state, released.current_run_id) == ("IDLE", None)


def test_affinity_is_fixed_after_spawning_at_the_sql_level(workers, db):
    _worker_in(workers, "IDLE")
    with pytest.raises(REFUSED, match="worker affinity cannot change after SPAWNING"):
        raw_execute(db, "UPDATE workers SET affinity = '{}' WHERE worker_id = 'w1'")
    workers.spawn_worker("w2", "t", {"a": 1})
    raw_execute(db, "UPDATE workers SET affinity = '{\"a\": 2}' WHERE worker_id = 'w2'")
    assert workers.get_worker("w2").affinity == {"a": 2}
    # while SPAWNING it may change, but only to a JSON object
    for bad in ("not json", "[1, 2]"):
        with pytest.raises(REFUSED, match=refused_by(
                "json_valid(affinity) AND json_type(affinity) = 'object'",
                "workers_affinity_check") + "|^invalid input syntax for type json"):
            raw_execute(db, "UPDATE workers SET affinity = ? WHERE worker_id = 'w2'",
                        (bad,))


def test_find_stale_uses_two_missed_intervals(workers):
    _worker_in(workers, "IDLE", "fresh")
    _worker_in(workers, "BUSY", "old")
    _worker_in(workers, "SPAWNING", "starting")
    _worker_in(workers, "DRAINING", "draining")
    workers.heartbeat("fresh")
    beat = datetime.fromisoformat(workers.get_worker("fresh").last_heartbeat)
    assert workers.find_stale(10, now=beat + timedelta(seconds=19)) == []
    stale = workers.find_stale(10, now=beat + timedelta(seconds=21))
    # IDLE, BUSY and DRAINING (it still holds work); a SPAWNING worker is not judged yet
    assert sorted(w.worker_id for w in stale) == ["draining", "fresh", "old"]
    with pytest.raises(ValidationError, match="aware"):
        workers.find_stale(10, now=datetime(2030, 1, 1))
    with pytest.raises(ValidationError, match="heartbeat_interval_s"):
        workers.find_stale(0)
    with pytest.raises(ValidationError, match="now"):
        workers.find_stale(1, now=datetime.min.replace(tzinfo=timezone.utc))


def test_reap_stale_fails_the_work_held_in_one_go(workers, db):
    run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
    other = db.create_run({"project_id": "p", "phase_id": "ph"})
    _worker_in(workers, "IDLE", "lost")
    _worker_in(workers, "IDLE", "alive")
    workers.claim_run("lost", run_id)
    step = db.create_step_attempt({"run_id": run_id, "sequence": 1, "tool_id": "aider"})
    done = db.create_step_attempt({"run_id": run_id, "sequence": 2, "tool_id": "lint"})
    db.transition_step_attempt(done, "succeeded", exit_code=0)
    later = datetime.now(timezone.utc) + timedelta(seconds=30)
    workers.heartbeat("alive")
    assert workers.reap_stale(5, now=later) == ["lost", "alive"]  # oldest first
    lost = workers.get_worker("lost")
    assert lost.state == "TERMINATED" and lost.terminated_at is not None
    run = db.get_run(run_id)
    assert run["state"] == "failed" and "lost" in run["error_message"]
    failed_step = db.get_step_attempt(step)
    assert failed_step["state"] == "failed" and "lost" in failed_step["error_log"]
    assert db.get_step_attempt(done)["state"] == "succeeded"
    assert db.get_run(other)["state"] == "pending"
    types = [e["event_type"] for e in db.list_events(run_id)]
    assert types[-2:] == ["step_attempt.state_changed", "run.state_changed"]
    assert workers.reap_stale(5, now=later) == []


def test_a_draining_worker_that_dies_does_not_keep_its_run_forever(workers, db):
    run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
    _worker_in(workers, "IDLE")
    workers.claim_run("w1")
    assert workers.terminate_worker("w1").state == "DRAINING"
    workers.heartbeat("w1")  # a draining worker still heartbeats
    assert workers.reap_stale(1, now=LATER) == ["w1"]
    assert db.get_run(run_id)["state"] == "failed"


def test_entering_idle_counts_as_a_heartbeat(workers):
    workers.spawn_worker("w1", "t", {})
    spawned = datetime.fromisoformat(workers.get_worker("w1").created_at)
    workers.transition_state("w1", "IDLE")  # long after spawning, say
    record = workers.get_worker("w1")
    assert record.last_heartbeat is not None and record.last_heartbeat >= record.created_at
    assert workers.find_stale(1, now=datetime.fromisoformat(record.last_heartbeat)
                              + timedelta(seconds=1)) == []
    assert spawned <= datetime.fromisoformat(record.last_heartbeat)


def test_reaping_picks_only_the_stale(workers, db):
    _worker_in(workers, "IDLE", "a")
    _worker_in(workers, "IDLE", "b")
    workers.heartbeat("a")
    beat = datetime.fromisoformat(workers.get_worker("a").last_heartbeat)
    created_b = datetime.fromisoformat(workers.get_worker("b").created_at)
    # b never beat: it is judged from its registration
    now = max(beat, created_b) + timedelta(seconds=3)
    assert workers.reap_stale(1, now=now) == ["a", "b"]
    assert workers.reap_stale(1, now=now) == []


def test_terminating_a_worker_that_holds_a_run_fails_the_run(workers, db):
    run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
    _worker_in(workers, "IDLE")
    workers.claim_run("w1")
    workers.transition_state("w1", "TERMINATED")
    run = db.get_run(run_id)
    assert run["state"] == "failed" and "w1" in run["error_message"]


def test_terminated_at_is_set_exactly_when_terminated_at_the_sql_level(workers, db):
    _worker_in(workers, "IDLE", "idle")
    _worker_in(workers, "TERMINATED", "gone")
    exactly_when = refused_by("(state = 'TERMINATED') = (terminated_at IS NOT NULL)",
                              "workers_check")
    for sql, constraint in [
            ("UPDATE workers SET terminated_at = '2026-01-01' WHERE worker_id = 'idle'",
             exactly_when),
            ("UPDATE workers SET state = 'TERMINATED' WHERE worker_id = 'idle'", exactly_when),
            ("UPDATE workers SET terminated_at = NULL WHERE worker_id = 'gone'", exactly_when),
            ("UPDATE workers SET state = 'ASLEEP' WHERE worker_id = 'idle'",
             refused_by("state IN (", "workers_state_check")),
            # (PostgreSQL checks the timestamp format with a domain of its own)
            ("UPDATE workers SET last_heartbeat = 'yesterday' WHERE worker_id = 'idle'",
             refused_by("last_heartbeat GLOB", "uet_timestamp_check"))]:
        with pytest.raises(REFUSED, match=constraint):
            raw_execute(db, sql)
    assert workers.get_worker("idle").state == "IDLE"


def test_events_of_workers_are_in_the_run_independent_stream(workers, db):
    _worker_in(workers, "IDLE")
    events = db.events_since(0)
    assert [(e["event_type"], e["run_id"]) for e in events] == [
        ("worker.spawned", None), ("worker.state_changed", None)]
    assert [e["seq"] for e in events] == [1, 2]


def test_processes_claiming_at_once_never_get_the_same_run(shared_db, tmp_path):
    """8 workers in 8 processes claim from 1,000 pending runs: each run exactly once."""
    import subprocess
    import sys
    from collections import Counter
    from pathlib import Path

    from helpers import start_when_ready
    helpers = str(Path(__file__).parent.parent / "helpers.py")
    run_ids = {shared_db.create_run({"project_id": "p", "phase_id": "ph"}) for _ in range(1000)}
    go = str(tmp_path / "go")
    outs = [str(tmp_path / f"out{i}") for i in range(8)]
    procs = [subprocess.Popen([sys.executable, helpers, "claim", shared_db.db_path, f"w{i}",
                               go, out]) for i, out in enumerate(outs)]
    start_when_ready(outs, go)
    assert [p.wait(timeout=300) for p in procs] == [0] * 8
    claims = Counter(line for out in outs for line in Path(out).read_text().split())
    assert set(claims) == run_ids and set(claims.values()) == {1}
    workers = WorkerLifecycle(shared_db)
    names = {f"w{i}" for i in range(8)}
    assert {w.worker_id for w in workers.get_idle_workers()} == names
    for run in shared_db.list_runs(limit=None):
        assert run["state"] == "succeeded" and run["worker_id"] in names
    claimed = [e for e in shared_db.events_since(0, limit=100_000)
               if e["event_type"] == "run.state_changed" and e["data"]["to"] == "running"]
    assert len(claimed) == 1000  # one claim event per run, no second claim rolled back late


def test_a_step_attempt_names_a_live_worker(workers, db):
    run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
    with pytest.raises(ValidationError, match="'ghost' does not exist") as info:
        db.create_step_attempt({"run_id": run_id, "sequence": 1, "tool_id": "t",
                                "worker_id": "ghost"})
    assert info.value.field == "worker_id"
    _worker_in(workers, "TERMINATED")
    with pytest.raises(ValidationError, match="TERMINATED"):
        db.create_step_attempt({"run_id": run_id, "sequence": 1, "tool_id": "t",
                                "worker_id": "w1"})
    _worker_in(workers, "IDLE", "w2")
    step = db.create_step_attempt({"run_id": run_id, "sequence": 1, "tool_id": "t",
                                   "worker_id": "w2"})
    assert db.get_step_attempt(step)["worker_id"] == "w2"
    assert db.list_step_attempts(run_id) == [db.get_step_attempt(step)]


def test_a_busy_worker_claiming_again_is_a_duplicate_transition(workers, db):
    db.create_run({"project_id": "p", "phase_id": "ph"})
    db.create_run({"project_id": "p", "phase_id": "ph"})
    _worker_in(workers, "IDLE")
    workers.claim_run("w1")
    with pytest.raises(DuplicateTransitionError, match="already BUSY"):
        workers.claim_run("w1")
    assert [r["state"] for r in db.list_runs()].count("pending") == 1

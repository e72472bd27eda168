"""Fencing of worker incarnations and the work queue, in the ledger itself (both engines):
a stale incarnation's heartbeat, claim, release, state change and every fenced write are
refused and change nothing; a TERMINATED id is taken by a new incarnation; a lost owner's
queued run is re-queued within its budget and failed past it."""

from __future__ import annotations

import random
import threading

import pytest

from uet.errors import AlreadyExistsError, StaleWorkerError, ValidationError
from uet.state import WorkerLifecycle
from uet.state.workers import requeue_verdict


def _snapshot(db):
    """Everything a refused write must leave as it was: runs, attempts, workers, events."""
    workers = [(w.worker_id, w.state, w.incarnation, w.current_run_id)
               for w in WorkerLifecycle(db).list_workers()]
    runs = [(r["run_id"], r["state"], r["worker_id"], r["recoveries"])
            for r in db.list_runs(limit=None)]
    steps = [(s["step_attempt_id"], s["state"]) for r in runs
             for s in db.list_step_attempts(r[0])]
    return workers, runs, steps, db.latest_event_seq()


def _registered(workers, worker_id="w", incarnation="A"):
    workers.spawn_worker(worker_id, "worker", {"pid": 1}, incarnation=incarnation)
    workers.transition_state(worker_id, "IDLE", incarnation=incarnation)


def _queued(db, priority=0, **meta):
    return db.create_run({"project_id": "p", "phase_id": "ph", "priority": priority,
                          "metadata": {"queue": meta} if meta else {}})


def test_a_stale_incarnation_is_refused_everywhere_and_changes_nothing(db):
    workers = WorkerLifecycle(db)
    _registered(workers, "w", "A")
    run_id = _queued(db)
    workers.terminate_lost("w", "reaped by the test")  # A is gone ...
    _registered(workers, "w", "B")                     # ... and B holds the id now
    assert workers.get_worker("w").incarnation == "B"
    before = _snapshot(db)
    calls = [lambda: workers.heartbeat("w", incarnation="A"),
             lambda: workers.claim_run("w", incarnation="A", queued=True),
             lambda: workers.claim_run("w", run_id, incarnation="A"),
             lambda: workers.release("w", incarnation="A"),
             lambda: workers.transition_state("w", "TERMINATED", incarnation="A"),
             lambda: workers.terminate_worker("w", incarnation="A")]
    for call in calls:
        with pytest.raises(StaleWorkerError) as refused:
            call()
        assert "incarnation B" in str(refused.value) and refused.value.worker_id == "w"
        assert isinstance(refused.value, ValidationError)  # as any TERMINATED write is
    assert _snapshot(db) == before
    # B, the live incarnation, works
    workers.heartbeat("w", incarnation="B")
    assert workers.claim_run("w", incarnation="B", queued=True)["run_id"] == run_id


def test_a_terminated_incarnation_is_refused_even_without_a_successor(db):
    workers = WorkerLifecycle(db)
    _registered(workers, "w", "A")
    workers.terminate_lost("w", "reaped")
    with pytest.raises(StaleWorkerError, match="TERMINATED"):
        workers.heartbeat("w", incarnation="A")
    with pytest.raises(StaleWorkerError, match="TERMINATED"):
        workers.heartbeat("w")  # without an incarnation too (a ValidationError, as before)


def test_a_terminated_id_is_respawned_by_a_new_incarnation_only(db):
    workers = WorkerLifecycle(db)
    _registered(workers, "w", "A")
    with pytest.raises(AlreadyExistsError):  # a live id is never taken
        workers.spawn_worker("w", "worker", incarnation="B")
    workers.transition_state("w", "TERMINATED", incarnation="A")
    with pytest.raises(AlreadyExistsError):  # the same incarnation cannot come back
        workers.spawn_worker("w", "worker", incarnation="A")
    with pytest.raises(AlreadyExistsError):  # nor can a registration without one
        workers.spawn_worker("w", "worker")
    cursor = db.latest_event_seq()
    record = workers.spawn_worker("w", "testing", {"pid": 2}, incarnation="B")
    assert (record.state, record.incarnation, record.affinity, record.terminated_at,
            record.worker_type) == ("SPAWNING", "B", {"pid": 2}, None, "testing")
    spawned = [e for e in db.events_since(cursor) if e["event_type"] == "worker.spawned"]
    assert [(e["data"]["respawn"], e["data"]["previous_incarnation"]) for e in spawned] == [
        (True, "A")]


def test_fenced_writes_of_a_reaped_incarnation_are_refused_and_roll_back(db):
    workers = WorkerLifecycle(db)
    _registered(workers, "w", "A")
    run_id = _queued(db)
    workers.claim_run("w", incarnation="A", queued=True)
    with db.fenced("w", "A"):
        step = db.create_step_attempt({"run_id": run_id, "sequence": 1, "tool_id": "t"})
    workers.terminate_lost("w", "reaped by the test")  # requeued; the attempt interrupted
    before = _snapshot(db)
    writes = [lambda: db.create_step_attempt({"run_id": run_id, "sequence": 2,
                                              "tool_id": "t"}),
              lambda: db.update_step_attempt(step, {"metadata": {"late": True}}),
              lambda: db.create_event({"run_id": run_id, "event_type": "late.note"}),
              lambda: db.transition_run(run_id, "running")]
    with db.fenced("w", "A"):
        for write in writes:
            with pytest.raises(StaleWorkerError):
                write()
        with pytest.raises(StaleWorkerError):
            with db.atomic():
                db.create_event({"run_id": run_id, "event_type": "late.note"})
    assert _snapshot(db) == before
    # outside the block (and in other threads) writes are not fenced
    db.create_event({"run_id": run_id, "event_type": "unfenced.note"})
    assert db.list_events(run_id)[-1]["event_type"] == "unfenced.note"


def test_a_fence_belongs_to_the_thread_that_entered_it(db):
    workers = WorkerLifecycle(db)
    _registered(workers, "w", "A")
    run_id = _queued(db)
    workers.terminate_lost("w", "reaped")
    other: list[object] = []

    def write_elsewhere() -> None:
        other.append(db.create_event({"run_id": run_id, "event_type": "other.thread"}))

    with db.fenced("w", "A"):
        thread = threading.Thread(target=write_elsewhere)
        thread.start()
        thread.join()
        with pytest.raises(StaleWorkerError):
            db.create_event({"run_id": run_id, "event_type": "this.thread"})
    assert len(other) == 1 and isinstance(other[0], str)


def test_the_reaper_requeues_a_queued_run_within_its_budget_then_fails_it(db):
    workers = WorkerLifecycle(db)
    run_id = _queued(db, resume="auto", max_recoveries=2)
    for round_ in (1, 2, 3):
        _registered(workers, f"w{round_}", f"I{round_}")
        workers.claim_run(f"w{round_}", incarnation=f"I{round_}", queued=True)
        with db.fenced(f"w{round_}", f"I{round_}"):
            db.create_step_attempt({"run_id": run_id, "sequence": 1, "tool_id": "t"})
        workers.terminate_lost(f"w{round_}", f"owner w{round_} is gone")
        run = db.get_run(run_id)
        if round_ <= 2:
            assert (run["state"], run["recoveries"], run["worker_id"]) == (
                "pending", round_, None)
        else:
            assert (run["state"], run["recoveries"]) == ("failed", 2)
            assert "max_recoveries 2" in run["error_message"]
    states = [s["state"] for s in db.list_step_attempts(run_id)]
    assert states == ["failed"] * 3  # every interrupted attempt failed, none left running
    requeues = [e for e in db.list_events(run_id) if e["data"].get("requeued")]
    assert [e["data"]["recoveries"] for e in requeues] == [1, 2]
    assert all(e["data"]["from"] == "running" and e["data"]["to"] == "pending"
               for e in requeues)


@pytest.mark.parametrize("queue, priority, why", [
    ({"resume": "manual"}, 0, "resume: manual"),
    ({"max_recoveries": 0}, 0, "max_recoveries 0"),
    ({}, None, None),  # not a queued run: failed as any run of a lost owner always was
])
def test_runs_the_pool_does_not_requeue_are_failed(db, queue, priority, why):
    workers = WorkerLifecycle(db)
    run_id = db.create_run({"project_id": "p", "phase_id": "ph", "priority": priority,
                            "metadata": {"queue": queue}})
    _registered(workers)
    workers.claim_run("w", run_id, incarnation="A")
    workers.terminate_lost("w", "owner w is gone")
    run = db.get_run(run_id)
    assert (run["state"], run["recoveries"]) == ("failed", 0)
    assert run["error_message"].startswith("owner w is gone")
    assert (why in run["error_message"]) if why else run["error_message"] == "owner w is gone"


@pytest.mark.parametrize("meta", [None, "text", {"queue": "x"}, {"queue": {"resume": 3}},
                                  {"queue": {"max_recoveries": True}},
                                  {"queue": {"max_recoveries": -1}}])
def test_odd_queue_metadata_falls_back_to_the_defaults(meta):
    run = {"priority": 0, "recoveries": 0, "metadata": meta}
    assert requeue_verdict(run) == (True, None)
    assert requeue_verdict({**run, "recoveries": 3})[0] is False


def test_the_queue_is_claimed_by_priority_then_age_and_never_twice(db):
    workers = WorkerLifecycle(db)
    rng = random.Random(15)
    made = []
    for k in range(30):
        priority = rng.choice([-5, 0, 0, 3, 10])
        made.append((priority, k, _queued(db, priority)))
    unqueued = db.create_run({"project_id": "p", "phase_id": "ph"})  # never taken
    _registered(workers)
    taken = []
    while True:
        run = workers.claim_run("w", incarnation="A", queued=True)
        if run is None:
            break
        taken.append(run["run_id"])
        db.transition_run(run["run_id"], "succeeded")
        workers.release("w", incarnation="A")
    assert taken == [run_id for _, _, run_id in sorted(made, key=lambda m: (-m[0], m[1]))]
    assert db.get_run(unqueued)["state"] == "pending"


def test_concurrent_claimers_never_take_a_run_twice(ledger):
    """Threads with their own connections (processes' worth on PostgreSQL) drain one queue."""
    from uet.state import Database
    path = ledger
    with Database(path) as db:
        run_ids = {_queued(db) for _ in range(40)}
    taken: dict[str, list[str]] = {}
    errors: list[BaseException] = []

    def claimer(k: int) -> None:
        try:
            with Database(path) as db:
                workers = WorkerLifecycle(db)
                _registered(workers, f"c{k}", f"I{k}")
                mine = taken.setdefault(f"c{k}", [])
                while (run := workers.claim_run(f"c{k}", incarnation=f"I{k}",
                                                queued=True)) is not None:
                    mine.append(run["run_id"])
                    db.transition_run(run["run_id"], "succeeded")
                    workers.release(f"c{k}", incarnation=f"I{k}")
        except BaseException as exc:  # reported below, with the thread's error
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    every = [run_id for runs in taken.values() for run_id in runs]
    assert sorted(every) == sorted(run_ids)  # each exactly once


def test_run_news_tells_an_owner_of_a_cancel_and_of_its_run_taken_once_each(db):
    from uet.state.recovery import request_cancel, run_news
    workers = WorkerLifecycle(db)
    _registered(workers)
    run_id = _queued(db)
    workers.claim_run("w", run_id, incarnation="A")
    news = run_news(db, run_id)
    assert (news.canceled_by, news.taken) == (None, None)  # created, then claimed: ours
    with db.fenced("w", "A"):  # a live owner: the cancel is asked, not done
        request_cancel(db, run_id, by="a test")
    news = run_news(db, run_id, news.after)
    assert (news.canceled_by, news.taken) == ("requested by a test", None)
    assert run_news(db, run_id, news.after) == (None, None, news.after)  # read once
    workers.terminate_lost("w", "reaped by the test")  # re-queued: no longer the owner's
    taken = run_news(db, run_id, news.after)
    assert taken.canceled_by is None and "running -> pending" in taken.taken
    assert "reaped by the test" in taken.taken

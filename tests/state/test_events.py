"""The audit trail: total order by seq, tailing from a cursor, atomic with state changes."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers import allow_event_inserts, refuse_event_inserts
from uet.errors import UetError, ValidationError
from uet.state import Database, init_db
from uet.state.transitions import record_event

HELPERS = str(Path(__file__).parent.parent / "helpers.py")


def test_events_with_identical_timestamps_keep_recording_order(db):
    run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
    same = "2026-01-01T00:00:00.000000Z"
    # ids chosen to sort against recording order: order must come from seq alone
    for i, event_id in enumerate(["z", "m", "a", "q", "b"]):
        db.create_event({"event_id": event_id, "run_id": run_id, "timestamp": same,
                         "event_type": "tick", "data": {"i": i}})
    ticks = [e for e in db.list_events(run_id) if e["event_type"] == "tick"]
    assert [e["data"]["i"] for e in ticks] == [0, 1, 2, 3, 4]
    assert [e["event_id"] for e in ticks] == ["z", "m", "a", "q", "b"]
    since = [e for e in db.events_since(0, run_id=run_id) if e["event_type"] == "tick"]
    assert since == ticks


def test_list_events_does_not_follow_timestamps_given_out_of_order(db):
    run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
    db.create_event({"run_id": run_id, "event_type": "late", "timestamp": "2030-01-01T00:00:00Z"})
    db.create_event({"run_id": run_id, "event_type": "early",
                     "timestamp": "2020-01-01T00:00:00Z"})
    assert [e["event_type"] for e in db.list_events(run_id)] == ["run.created", "late", "early"]


def test_seq_is_strictly_increasing_across_runs(db):
    a = db.create_run({"project_id": "p", "phase_id": "ph"})
    b = db.create_run({"project_id": "p", "phase_id": "ph"})
    for i in range(10):
        db.create_event({"run_id": a if i % 2 else b, "event_type": "e", "data": {"i": i}})
    seqs = [e["seq"] for e in db.events_since(0)]
    assert seqs == list(range(1, 13))


def test_events_since_pages_through_the_trail(db):
    run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
    for i in range(25):
        db.create_event({"run_id": run_id, "event_type": "e", "data": {"i": i}})
    seen, cursor = [], 0
    while page := db.events_since(cursor, limit=7):
        seen.extend(page)
        cursor = page[-1]["seq"]
    assert len(seen) == 26 and [e["seq"] for e in seen] == sorted(e["seq"] for e in seen)
    assert db.events_since(cursor) == []


def test_events_since_filters_by_run(db):
    a = db.create_run({"project_id": "p", "phase_id": "ph"})
    b = db.create_run({"project_id": "p", "phase_id": "ph"})
    db.create_event({"run_id": a, "event_type": "only-a"})
    db.create_event({"run_id": b, "event_type": "only-b"})
    assert [e["event_type"] for e in db.events_since(0, run_id=b)] == ["run.created", "only-b"]
    first_of_b = db.events_since(0, run_id=b)[0]["seq"]
    assert [e["event_type"] for e in db.events_since(first_of_b, run_id=b)] == ["only-b"]


def test_seq_is_never_reused_after_the_newest_events_are_deleted(db):
    keep = db.create_run({"project_id": "p", "phase_id": "ph"})
    gone = db.create_run({"project_id": "p", "phase_id": "ph"})
    for _ in range(3):
        db.create_event({"run_id": gone, "event_type": "e"})
    cursor = db.events_since(0)[-1]["seq"]  # a follower has seen everything
    db.delete_run(gone)
    db.create_event({"run_id": keep, "event_type": "after-delete"})
    assert [e["event_type"] for e in db.events_since(cursor)] == ["after-delete"]


def test_a_failing_event_write_rolls_back_the_state_change(ledger):
    """The state change and its event commit together or not at all."""
    db = init_db(ledger)
    run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
    step_id = db.create_step_attempt({"run_id": run_id, "sequence": 1, "tool_id": "t"})
    refuse_event_inserts(db, "%state_changed")
    before = db.events_since(0)
    # an outage of the event store is no rule of uet's: each engine reports it as its own
    # error type, and only the trigger's own words (matched) prove it is this failure
    with pytest.raises(UetError, match="event store unavailable"):
        db.transition_run(run_id, "running")
    with pytest.raises(UetError, match="event store unavailable"):
        db.update_step_attempt(step_id, {"state": "failed", "exit_code": 1})
    assert db.get_run(run_id)["state"] == "pending"
    assert db.get_run(run_id)["started_at"] is None
    step = db.get_step_attempt(step_id)
    assert (step["state"], step["exit_code"], step["ended_at"]) == ("running", None, None)
    assert db.events_since(0) == before
    allow_event_inserts(db)
    assert db.transition_run(run_id, "running")["state"] == "running"
    db.close()


def test_a_failing_created_event_rolls_back_the_creation(ledger):
    db = init_db(ledger)
    run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
    refuse_event_inserts(db, "%.created")
    before = db.events_since(0)
    with pytest.raises(UetError, match="event store unavailable"):
        db.create_run({"run_id": "never", "project_id": "p", "phase_id": "ph"})
    with pytest.raises(UetError, match="event store unavailable"):
        db.create_step_attempt({"step_attempt_id": "never", "run_id": run_id, "sequence": 1,
                                "tool_id": "t"})
    assert db.get_run("never") is None and db.get_step_attempt("never") is None
    assert db.events_since(0) == before
    db.close()


def test_every_state_change_has_its_event(db):
    db = db
    run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
    db.transition_run(run_id, "running")
    s1 = db.create_step_attempt({"run_id": run_id, "sequence": 1, "tool_id": "a"})
    db.transition_step_attempt(s1, "failed", exit_code=1)
    s2 = db.create_step_attempt({"run_id": run_id, "sequence": 1, "tool_id": "a"})
    db.update_step_attempt(s2, {"state": "succeeded", "exit_code": 0})
    db.update_run(run_id, {"state": "succeeded", "exit_code": 0})
    assert [(e["event_type"], e["data"].get("to")) for e in db.list_events(run_id)] == [
        ("run.created", None), ("run.state_changed", "running"),
        ("step_attempt.created", None), ("step_attempt.state_changed", "failed"),
        ("step_attempt.created", None), ("step_attempt.state_changed", "succeeded"),
        ("run.state_changed", "succeeded")]
    created = db.list_events(run_id)[4]["data"]
    assert created == {"step_attempt_id": s2, "sequence": 1, "attempt": 2, "tool_id": "a",
                       "state": "running"}


def test_non_state_updates_write_one_updated_event(db):
    run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
    n = len(db.list_events(run_id))
    db.update_run(run_id, {"metadata": {"note": "x"}, "error_message": "y"})
    assert [(e["event_type"], e["data"]) for e in db.list_events(run_id)[n:]] == [
        ("run.updated", {"changed": {"error_message": {"from": None, "to": "y"},
                                     "metadata": {"from": {}, "to": {"note": "x"}}}})]


class _Bounded:
    """A follower whose next events are first looked for in the trail: a follower waits for
    ever by design, so an event that was never written must fail the test, not hang it."""

    def __init__(self, db, follower, cursor: int = 0):
        self.db, self.follower, self.cursor = db, follower, cursor

    def take(self, count: int = 1) -> list[dict]:
        ahead = self.db.events_since(self.cursor, limit=count)
        assert len(ahead) == count, (
            f"the trail holds {len(ahead)} of {count} events after seq {self.cursor}")
        events = [next(self.follower) for _ in range(count)]
        self.cursor = events[-1]["seq"]
        return events


def test_follow_events_gives_the_trail_then_each_new_event(db):
    run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
    follower = db.follow_events(0, poll_interval=0.01, batch=2)
    trail = _Bounded(db, follower)
    try:
        assert trail.take()[0]["event_type"] == "run.created"
        for i in range(3):
            db.create_event({"run_id": run_id, "event_type": "tick", "data": {"i": i}})
        assert [e["data"]["i"] for e in trail.take(3)] == [0, 1, 2]
        db.transition_run(run_id, "running")
        assert trail.take()[0]["event_type"] == "run.state_changed"
    finally:
        follower.close()
    with contextlib.closing(db.follow_events(2, run_id=run_id, poll_interval=0.01)) as mine:
        assert [e["seq"] for e in _Bounded(db, mine, 2).take(3)] == [3, 4, 5]
    for bad, field in (({"poll_interval": 0}, "poll_interval"),
                       ({"poll_interval": float("nan")}, "poll_interval"),
                       ({"batch": 0}, "batch"), ({"cursor": -1}, "cursor")):
        with pytest.raises(ValidationError, match=f"^{field} must be") as info:
            db.follow_events(**bad)
        assert info.value.field == field


def _follow_in_thread(db, count: int, seen: list) -> threading.Thread:
    def follow():
        with contextlib.closing(db.follow_events(0, poll_interval=0.05)) as trail:
            for event in trail:
                seen.append(event)
                if len(seen) >= count:
                    return
    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    return thread


def test_a_follower_racing_writer_processes_sees_every_event_once_in_order(shared_db,
                                                                           tmp_path):
    """Four processes append while a follower reads the trail by cursor as it grows: it
    must get every event exactly once, in seq order (a transaction that commits late may
    never hold a seq lower than one the follower has already passed)."""
    run_id = shared_db.create_run({"project_id": "p", "phase_id": "ph"})
    go = str(tmp_path / "go")
    writers = [subprocess.Popen([sys.executable, HELPERS, "append", shared_db.db_path, run_id,
                                 "250", go]) for _ in range(4)]
    seen: list = []
    follower = _follow_in_thread(shared_db, 1001, seen)
    Path(go).touch()
    assert [w.wait(timeout=120) for w in writers] == [0] * 4
    follower.join(timeout=60)
    assert not follower.is_alive(), f"the follower saw {len(seen)} of 1001 events"
    seqs = [e["seq"] for e in seen]
    assert seqs == sorted(set(seqs)) and len(seqs) == 1001
    assert [e["event_id"] for e in seen] == [
        e["event_id"] for e in shared_db.events_since(0, limit=10_000)]


def _when_blocked(other: Database, holder: Database):
    """A function that returns (True) once `other` has begun a write transaction that waits
    for the write lock `holder` holds, or False after a minute. SQLite: its BEGIN IMMEDIATE
    has started (it cannot finish while the lock is held). PostgreSQL: a session of the
    server waits on a lock."""
    if other.engine == "sqlite":
        started = threading.Event()
        other._backend.connect().set_trace_callback(
            lambda sql: started.set() if sql.startswith("BEGIN IMMEDIATE") else None)
        return lambda: started.wait(60)

    def waiting() -> bool:
        import psycopg
        with psycopg.connect(holder.db_path, autocommit=True) as conn:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if conn.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type "
                                "= 'Lock' AND datname = current_database()").fetchone()[0]:
                    return True
                time.sleep(0.01)
        return False
    return waiting


def test_an_event_that_commits_late_is_never_passed_by_followers(shared_db):
    run_id = shared_db.create_run({"project_id": "p", "phase_id": "ph"})
    other, observer = Database(shared_db.db_path), Database(shared_db.db_path)
    inside, later_done = threading.Event(), threading.Event()
    later_seq: list = []

    def later_writer():
        inside.wait(10)
        event_id = other.create_event({"run_id": run_id, "event_type": "later"})
        later_seq.append(next(e["seq"] for e in other.list_events(run_id)
                              if e["event_id"] == event_id))
        later_done.set()

    other.schema_version()  # its connection is open
    began = _when_blocked(other, shared_db) if shared_db.engine == "sqlite" else None
    thread = threading.Thread(target=later_writer)
    thread.start()
    try:
        with shared_db._backend.transaction() as tx:
            record_event(tx, run_id, "earlier", {})
            inside.set()
            if began is not None:
                # SQLite: the later writer has started its write and waits for ours to end
                # (a handshake, so a slow machine cannot let this commit before the race)
                assert began(), "the later writer never started its transaction"
                assert not later_done.is_set()
            else:
                # PostgreSQL: writers do not wait for each other; the later one commits
                # first, but followers are not given its event while ours, handed an
                # earlier seq, is in flight
                assert later_done.wait(60), "the later writer waited for the earlier one"
                assert later_seq == [3]
                assert observer.latest_event_seq() == 1
            assert [e["event_type"] for e in observer.events_since(1)] == []
        thread.join(timeout=60)
        assert not thread.is_alive()
    finally:
        other.close()
        observer.close()
    trail = [(e["event_type"], e["seq"]) for e in shared_db.events_since(1)]
    assert trail == [("earlier", 2), ("later", 3)] and later_seq == [3]


def test_a_postgresql_follower_wakes_on_notify_not_on_its_poll_interval(postgres_url):
    """LISTEN/NOTIFY: with an hour-long poll interval the follower still sees a new event at once
    (the bound below is far under the interval, so only a notification can meet it)."""
    db = Database(postgres_url)
    run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
    seen: list = []
    try:
        with contextlib.closing(db.follow_events(0, poll_interval=3600)) as trail:
            got = threading.Event()

            def follow():
                for event in trail:
                    seen.append(event)
                    if len(seen) == 2:
                        got.set()
                        return
            thread = threading.Thread(target=follow, daemon=True)
            thread.start()
            # once the follower has the run's creation it has read the trail: from then on
            # only a notification (or the hour-long poll) can show it the next event
            deadline = time.monotonic() + 60
            while not seen:
                assert time.monotonic() < deadline, "the follower never read the trail"
                time.sleep(0.01)
            with Database(postgres_url) as writer:
                writer.create_event({"run_id": run_id, "event_type": "wake"})
            assert got.wait(120), "the follower was not woken by the commit"
            thread.join(5)
    finally:
        db.close()
    assert [e["event_type"] for e in seen] == ["run.created", "wake"]


def test_ledger_events_belong_to_no_run_and_land_together(db):
    run_id = db.create_run({"project_id": "P", "phase_id": "PH"})
    ids = db.create_ledger_events([("plan.patch_applied", {"patch_id": "006", "n": 1}),
                                   ("plan.patch_applied", {"patch_id": "007"})])
    trail = db.events_since(0)
    mine = [e for e in trail if e["event_id"] in ids]
    assert [e["data"]["patch_id"] for e in mine] == ["006", "007"]
    assert all(e["run_id"] is None for e in mine)
    assert mine[0]["seq"] + 1 == mine[1]["seq"]
    assert db.list_events(run_id)[-1]["event_type"] == "run.created"
    assert not [e for e in db.events_since(0, run_id=run_id) if e["event_id"] in ids]


@pytest.mark.parametrize("events", [
    [("plan.patch_applied", {"ok": 1}), ("run.created", {})],       # the ledger's own
    [("plan.patch_applied", {"ok": 1}), ("", {})],                   # no type
    [("plan.patch_applied", {"ok": 1}), ("x", {"v": object()})],     # not JSON
    [("plan.patch_applied", {"ok": 1}), ("x", ["not", "a", "dict"])],
])
def test_a_bad_ledger_event_refuses_them_all(db, events):
    before = db.events_since(0)
    with pytest.raises(ValidationError):
        db.create_ledger_events(events)
    assert db.events_since(0) == before

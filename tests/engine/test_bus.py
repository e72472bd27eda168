"""The event bus: engine events join the trail in the caller's transaction; subscribers get
every committed event once, in order, after commit — never one that was rolled back."""

from __future__ import annotations

import pytest

from uet.errors import ValidationError
from uet.engine.bus import EventBus
from uet.state import Database, PatchLedger

DIFF = "--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n"


class Boom(Exception):
    pass


def _run(db) -> str:
    return db.create_run({"project_id": "p", "phase_id": "ph"})


def test_subscribers_get_events_committed_after_the_bus_was_made(db):
    old_run = _run(db)
    bus = EventBus(db)
    seen = []
    bus.subscribe("*", seen.append)
    run_id = _run(db)
    bus.publish("task.started", {"task_id": "T1"}, run_id=run_id)
    assert [(e["event_type"], e["run_id"]) for e in seen] == [
        ("run.created", run_id), ("task.started", run_id)]
    assert old_run not in {e["run_id"] for e in seen}
    assert seen[-1]["data"] == {"task_id": "T1"} and bus.cursor == seen[-1]["seq"]


def test_delivery_waits_for_the_commit_and_skips_what_rolled_back(db):
    bus = EventBus(db)
    seen = []
    bus.subscribe("task.*", lambda e: seen.append(e["data"]["n"]))
    run_id = _run(db)
    with db.atomic():
        bus.publish("task.started", {"n": 1}, run_id=run_id)
        assert seen == []  # not committed yet
        with pytest.raises(Boom):
            with db.atomic():
                bus.publish("task.started", {"n": 2}, run_id=run_id)
                raise Boom()
        bus.publish("task.finished", {"n": 3}, run_id=run_id)
    assert seen == [1, 3]
    with pytest.raises(Boom):
        with db.atomic():
            bus.publish("task.started", {"n": 4}, run_id=run_id)
            raise Boom()
    bus.dispatch()
    assert seen == [1, 3]


def test_patterns_select_event_types_including_the_ledgers_own(db):
    bus = EventBus(db)
    patches, tasks = [], []
    bus.subscribe("patch_entry.*", patches.append)
    bus.subscribe("task.*", tasks.append)
    run_id = _run(db)
    ledger = PatchLedger(db)
    with db.atomic():
        entry = ledger.create_entry(ledger.record_patch(DIFF, run_id=run_id), "ph")
        bus.publish("task.finished", {"ledger_id": entry.ledger_id}, run_id=run_id)
    assert patches and all(e["event_type"].startswith("patch_entry.") for e in patches)
    assert [e["event_type"] for e in tasks] == ["task.finished"]


def test_a_failing_subscriber_stops_neither_the_others_nor_the_publisher(db, caplog):
    bus = EventBus(db)
    seen = []

    def broken(event):
        raise RuntimeError("subscriber bug")

    bus.subscribe("*", broken)
    bus.subscribe("*", seen.append)
    run_id = _run(db)
    bus.publish("task.started", run_id=run_id)
    assert [e["event_type"] for e in seen] == ["run.created", "task.started"]
    assert "subscriber bug" in caplog.text


def test_unsubscribe_stops_delivery(db):
    bus = EventBus(db)
    seen = []
    run_id = _run(db)
    unsubscribe = bus.subscribe("*", seen.append)
    bus.publish("engine.note", run_id=run_id)
    unsubscribe()
    unsubscribe()  # twice is harmless
    bus.publish("engine.note", run_id=run_id)
    assert [e["event_type"] for e in seen] == ["run.created", "engine.note"]


def test_events_of_other_processes_arrive_on_dispatch_in_order(ledger):
    with Database(ledger) as db, Database(ledger) as other:
        bus = EventBus(db)
        seen = []
        bus.subscribe("*", lambda e: seen.append(e["seq"]))
        for _ in range(3):
            _run(other)
        assert seen == []
        assert bus.dispatch() == 3
        assert seen == sorted(seen) and len(seen) == 3
        assert bus.dispatch() == 0


@pytest.mark.parametrize("pattern, handler", [("", print), (None, print), ("*", "x")])
def test_bad_subscriptions_are_refused(db, pattern, handler):
    with pytest.raises(ValidationError):
        EventBus(db).subscribe(pattern, handler)


def test_the_ledgers_own_event_types_cannot_be_published(db):
    with pytest.raises(ValidationError):
        EventBus(db).publish("run.created", run_id=_run(db))

"""`Database.atomic()`: the calls of one thread inside the block commit together or not at
all, on every engine; nested blocks (and every call inside a block) are savepoints."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from uet.errors import (ConcurrentUpdateError, InvalidTransitionError, NotFoundError,
                        ValidationError)
from uet.state import Database, GateLedger, PatchLedger, WorkerLifecycle, init_db

from helpers import wait_for

HELPERS = str(Path(__file__).parent.parent / "helpers.py")

DIFF = "--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-a\n+b\n"


class Boom(Exception):
    pass


def _counts(db) -> dict[str, int]:
    """Rows per table (the catalog's list, so every table counts)."""
    return {t: n for t, n in db.doctor()["row_counts"].items() if t != "schema_migrations"}


def _trail(db) -> list[tuple[str | None, str]]:
    return [(e["run_id"], e["event_type"]) for e in db.events_since(0, limit=100_000)]


def _run(db, run_id: str, **extra) -> str:
    return db.create_run({"run_id": run_id, "project_id": "p", "phase_id": "ph", **extra})


def test_a_block_commits_every_call_together(db):
    with db.atomic() as same:
        assert same is db and db.in_atomic
        _run(db, "r1")
        db.transition_run("r1", "running")
        step = db.create_step_attempt({"run_id": "r1", "sequence": 1, "tool_id": "t"})
        db.create_event({"run_id": "r1", "event_type": "note"})
        # the block reads what it wrote
        assert db.get_run("r1")["state"] == "running"
        assert [s["step_attempt_id"] for s in db.list_step_attempts("r1")] == [step]
    assert not db.in_atomic
    assert db.get_run("r1")["state"] == "running"
    assert [t for _, t in _trail(db)] == ["run.created", "run.state_changed",
                                         "step_attempt.created", "note"]


def test_an_exception_undoes_the_whole_block_events_included(db):
    _run(db, "kept")
    before, trail = _counts(db), _trail(db)
    with pytest.raises(Boom):
        with db.atomic():
            _run(db, "r1")
            db.transition_run("kept", "running")
            db.create_step_attempt({"run_id": "r1", "sequence": 1, "tool_id": "t"})
            db.create_event({"run_id": "kept", "event_type": "note"})
            raise Boom()
    assert _counts(db) == before and _trail(db) == trail
    assert db.get_run("r1") is None and db.get_run("kept")["state"] == "pending"
    assert not db.in_atomic


def test_a_keyboard_interrupt_undoes_the_block_too(db):
    before = _counts(db)
    with pytest.raises(KeyboardInterrupt):
        with db.atomic():
            _run(db, "r1")
            raise KeyboardInterrupt
    assert _counts(db) == before
    _run(db, "r2")  # the ledger is usable afterwards
    assert db.get_run("r2") is not None


def test_the_v2_classes_join_the_block(db):
    workers, patches, gates = WorkerLifecycle(db), PatchLedger(db), GateLedger(db)
    _run(db, "r1")
    before, trail = _counts(db), _trail(db)
    with pytest.raises(Boom):
        with db.atomic():
            workers.spawn_worker("w1", "cli")
            patch = patches.record_patch(DIFF, run_id="r1")
            entry = patches.create_entry(patch, "ph")
            gates.define_gate("UNIT", "ph", "pytest", run_id="r1")
            assert workers.get_worker("w1") is not None
            assert patches.get_entry(entry.ledger_id) is not None
            raise Boom()
    assert _counts(db) == before and _trail(db) == trail
    assert workers.get_worker("w1") is None
    with db.atomic():
        workers.spawn_worker("w1", "cli")
        patch = patches.record_patch(DIFF, run_id="r1")
        gates.define_gate("UNIT", "ph", "pytest", run_id="r1")
    assert workers.get_worker("w1") is not None and patches.get_patch(patch.patch_id)


def test_finish_a_step_and_start_the_next_in_one_commit(db):
    """The orchestrator's pattern: step k ends and step k+1 starts together."""
    _run(db, "r1")
    db.transition_run("r1", "running")
    step = db.create_step_attempt({"run_id": "r1", "sequence": 1, "tool_id": "t"})
    for k in range(2, 5):
        with db.atomic():
            db.transition_step_attempt(step, "succeeded", exit_code=0)
            step = db.create_step_attempt({"run_id": "r1", "sequence": k, "tool_id": "t"})
    states = [(s["sequence"], s["state"]) for s in db.list_step_attempts("r1")]
    assert states == [(1, "succeeded"), (2, "succeeded"), (3, "succeeded"), (4, "running")]


def test_a_nested_block_that_fails_undoes_only_itself(db):
    with db.atomic():
        _run(db, "outer")
        with pytest.raises(Boom):
            with db.atomic():
                _run(db, "inner")
                db.transition_run("outer", "running")
                raise Boom()
        assert db.get_run("inner") is None and db.get_run("outer")["state"] == "pending"
        _run(db, "after")
    assert db.get_run("outer")["state"] == "pending"
    assert db.get_run("inner") is None and db.get_run("after") is not None
    assert [r for r, _ in _trail(db)] == ["outer", "after"]


def test_an_outer_failure_undoes_the_nested_blocks_that_succeeded(db):
    with pytest.raises(Boom):
        with db.atomic():
            with db.atomic():
                _run(db, "inner")
            raise Boom()
    assert db.get_run("inner") is None and _trail(db) == []


@pytest.mark.parametrize("failing", ["refused transition", "compare-and-set", "not found",
                                     "duplicate id", "bad input", "foreign key"])
def test_a_refused_call_inside_a_block_leaves_nothing_and_the_block_goes_on(db, failing):
    _run(db, "r1")
    with db.atomic():
        db.create_event({"run_id": "r1", "event_type": "before"})
        error = {"refused transition": InvalidTransitionError,
                 "compare-and-set": ConcurrentUpdateError, "not found": NotFoundError,
                 "duplicate id": ValidationError, "bad input": ValidationError,
                 "foreign key": ValidationError}[failing]
        with pytest.raises(error):
            if failing == "refused transition":
                db.transition_run("r1", "succeeded")
            elif failing == "compare-and-set":
                db.transition_run("r1", "running", expected="running")
            elif failing == "not found":
                db.transition_run("nope", "running")
            elif failing == "duplicate id":
                _run(db, "r1")
            elif failing == "bad input":
                db.create_run({"project_id": "p"})
            else:
                db.create_step_attempt({"run_id": "nope", "sequence": 1, "tool_id": "t"})
        db.create_event({"run_id": "r1", "event_type": "after"})
    assert [t for _, t in _trail(db)] == ["run.created", "before", "after"]
    assert db.get_run("r1")["state"] == "pending"


def test_another_thread_waits_for_the_block_and_then_writes(db):
    _run(db, "r1")
    entered, done, errors = threading.Event(), threading.Event(), []

    def other_writer():
        try:
            entered.wait(10)
            _run(db, "from-thread")
        except Exception as exc:  # reported to the test below
            errors.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=other_writer)
    thread.start()
    with db.atomic():
        _run(db, "in-block")
        entered.set()
        if db.engine == "sqlite":
            # the other thread cannot commit while the block holds the write lock
            assert not done.wait(0.3)
            assert db.get_run("from-thread") is None
        else:  # PostgreSQL: writers of other records do not wait for the block
            assert done.wait(20)
    thread.join(20)
    assert not errors and done.is_set()
    assert db.get_run("from-thread") is not None and db.get_run("in-block") is not None
    assert not db.in_atomic  # the block is this thread's alone


def test_calls_of_another_thread_do_not_join_the_block(db):
    """A thread's writes are its own transaction even while another thread's block is
    open: when the block fails, they stay."""
    results: list[object] = []
    started = threading.Event()

    def other():
        started.set()
        results.append(_run(db, "other"))

    with pytest.raises(Boom):
        with db.atomic():
            _run(db, "mine")
            thread = threading.Thread(target=other)
            thread.start()
            started.wait(10)
            raise Boom()
    thread.join(20)
    assert results == ["other"]
    assert db.get_run("other") is not None and db.get_run("mine") is None


def test_another_connection_sees_nothing_until_the_block_commits(ledger):
    with Database(ledger) as db, Database(ledger) as reader:
        with db.atomic():
            _run(db, "r1")
            db.create_event({"run_id": "r1", "event_type": "note"})
            assert reader.get_run("r1") is None
            assert reader.events_since(0) == []
        assert reader.get_run("r1") is not None
        assert [e["event_type"] for e in reader.events_since(0)] == ["run.created", "note"]


def test_a_follower_never_sees_events_of_a_rolled_back_block(ledger):
    with Database(ledger) as db, Database(ledger) as reader:
        with pytest.raises(Boom):
            with db.atomic():
                _run(db, "gone")
                raise Boom()
        _run(db, "kept")
        assert [e["run_id"] for e in reader.events_since(0)] == ["kept"]
        seqs = [e["seq"] for e in reader.events_since(0)]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_a_read_only_ledger_refuses_a_block_that_writes(ledger):
    Database(ledger).close()
    with Database(ledger, read_only=True) as db:
        with pytest.raises(Exception) as caught:
            with db.atomic():
                _run(db, "r1")
        assert caught.type.__module__ == "uet.errors"


@pytest.mark.parametrize("steps", [1, 5])
def test_a_block_killed_before_it_ends_leaves_nothing(shared_db, tmp_path, steps):
    """kill -9 of a process inside its block: none of the block's writes (run change, step
    attempts, events, patch, gate) is ever seen, and the ledger takes writes at once."""
    _run(shared_db, "r1")
    before, trail = _counts(shared_db), _trail(shared_db)
    ready = str(tmp_path / "ready")
    holder = subprocess.Popen([sys.executable, HELPERS, "hold_atomic", shared_db.db_path,
                               "r1", str(steps), ready])
    try:
        wait_for(ready, 60)
        assert shared_db.get_run("r1")["state"] == "pending"  # not committed yet
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    assert _counts(shared_db) == before and _trail(shared_db) == trail
    shared_db.transition_run("r1", "running")  # the write lock went with the process
    assert shared_db.get_run("r1")["state"] == "running"


# -- any tree of blocks, any of them failing ---------------------------------------------

_blocks = st.recursive(
    st.builds(lambda n: ("run", n), st.integers(0, 3)),
    lambda inner: st.tuples(st.just("block"), st.booleans(), st.lists(inner, max_size=4)),
    max_leaves=12)


def _play(db, node, enclosing_fail, expected, counter):
    """Run the tree; `expected` gets (run_id, whether any enclosing block fails)."""
    if node[0] == "run":
        counter[0] += 1
        _run(db, f"r{counter[0]}")
        expected.append((f"r{counter[0]}", enclosing_fail))
        return
    _, fails, children = node
    try:
        with db.atomic():
            for child in children:
                _play(db, child, enclosing_fail or fails, expected, counter)
            if fails:
                raise Boom()
    except Boom:
        pass


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=st.lists(_blocks, max_size=4))
def test_any_tree_of_blocks_keeps_exactly_the_calls_no_failing_block_encloses(tree):
    with init_db(":memory:") as db:
        expected: list = []
        counter = [0]
        for node in tree:
            _play(db, node, False, expected, counter)
        kept = {run_id for run_id, failed in expected if not failed}
        assert {r["run_id"] for r in db.list_runs(limit=None)} == kept
        assert {e["run_id"] for e in db.events_since(0, limit=100_000)} == kept
        assert not db.in_atomic


# -- after-commit work ---------------------------------------------------------------------

def test_on_commit_outside_a_block_runs_at_once(db):
    seen = []
    db.on_commit(lambda: seen.append("now"))
    assert seen == ["now"]


def test_on_commit_runs_after_the_outermost_block_commits_in_order(db):
    seen = []
    with db.atomic():
        _run(db, "r1")
        db.on_commit(lambda: seen.append(("first", db.in_atomic)))
        with db.atomic():
            db.on_commit(lambda: seen.append(("nested", db.in_atomic)))
        assert seen == []  # a nested block's release is no commit
        db.on_commit(lambda: seen.append(("last", db.get_run("r1") is not None)))
    assert seen == [("first", False), ("nested", False), ("last", True)]


def test_on_commit_of_a_rolled_back_block_never_runs(db):
    seen = []
    with db.atomic():
        db.on_commit(lambda: seen.append("kept"))
        with pytest.raises(Boom):
            with db.atomic():
                db.on_commit(lambda: seen.append("undone"))
                raise Boom()
    with pytest.raises(Boom):
        with db.atomic():
            db.on_commit(lambda: seen.append("outer undone"))
            raise Boom()
    assert seen == ["kept"]


def test_a_callback_may_write_to_the_ledger(db):
    with db.atomic():
        _run(db, "r1")
        db.on_commit(lambda: _run(db, "from-callback"))
    assert db.get_run("from-callback") is not None and not db.in_atomic


def test_on_commit_needs_a_callable(db):
    with pytest.raises(ValidationError):
        db.on_commit("not callable")

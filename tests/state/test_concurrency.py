"""Many threads and many processes on one ledger: no lost write, no double transition."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from helpers import race_outcomes, start_when_ready, wait_for
from uet.errors import DatabaseBusyError, ValidationError
from uet.state import Database, get_db, init_db

HELPERS = str(Path(__file__).parent.parent / "helpers.py")
# the reliability suite's processes (hold_lock: a slow writer in another process)
PROGRAMS = str(Path(__file__).parent.parent.parent / "bench" / "reliability_suite" / "programs.py")


def test_get_db_under_16_threads_creates_one_instance(tmp_path):
    path = str(tmp_path / "single.db")
    barrier = threading.Barrier(16)
    results, errors = [], []

    def call():
        try:
            barrier.wait()
            results.append(get_db(path))
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(results) == 16 and len({id(r) for r in results}) == 1
    results[0].close()


def test_get_db_is_keyed_by_database(tmp_path, monkeypatch):
    a, b = str(tmp_path / "a.db"), str(tmp_path / "b.db")
    db_a, db_b = get_db(a), get_db(b)
    assert db_a is not db_b
    assert get_db(a) is db_a and get_db(b) is db_b
    monkeypatch.chdir(tmp_path)
    assert get_db("a.db") is db_a  # the same file by another name
    db_a.create_run({"run_id": "only-in-a", "project_id": "p", "phase_id": "ph"})
    assert db_b.get_run("only-in-a") is None
    assert get_db(":memory:") is get_db(":memory:")
    assert get_db(":memory:") is not init_db(":memory:")
    with pytest.raises(ValidationError, match="durability"):
        get_db(a, durability="full")
    db_a.close()
    assert get_db(a) is not db_a and not get_db(a).closed  # a closed instance is replaced
    get_db(a).close()
    db_b.close()


def test_get_db_default_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("UET_DATABASE", raising=False)
    default = get_db()
    assert Path(default.db_path) == Path(".ledger/framework.db")
    assert (tmp_path / ".ledger" / "framework.db").exists()
    monkeypatch.setenv("UET_DATABASE", str(tmp_path / "env.db"))
    from_env = get_db()
    assert from_env is not default and from_env.db_path == str(tmp_path / "env.db")
    explicit = get_db(str(tmp_path / "explicit.db"))
    assert explicit not in (default, from_env)
    for db in (default, from_env, explicit):
        db.close()


def test_in_memory_ledger_is_shared_by_every_thread(in_memory_db):
    db = in_memory_db
    run_id = db.create_run({"project_id": "p", "phase_id": "ph"})

    def work(n):
        for i in range(50):
            db.create_event({"run_id": run_id, "event_type": "t", "data": {"n": n, "i": i}})

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seqs = [e["seq"] for e in db.events_since(0, limit=10_000)]
    assert seqs == list(range(1, 402))


def test_threads_racing_on_one_instance_get_one_winner_each(shared_db):
    """Half the threads want each pending run running, half want it canceled: both moves
    are legal from pending and running → canceled is legal too, so only compare-and-set
    can stop a second winner."""
    from uet.errors import ConcurrentUpdateError
    db = shared_db
    run_ids = [db.create_run({"project_id": "p", "phase_id": "ph"}) for _ in range(100)]
    wins: Counter = Counter()
    barrier = threading.Barrier(8)
    errors: list = []

    def race(target):
        barrier.wait()
        for run_id in run_ids:
            try:
                db.transition_run(run_id, target, expected="pending")
                wins[run_id] += 1
            except ConcurrentUpdateError:
                pass
            except Exception as exc:  # asserted below
                errors.append(exc)

    threads = [threading.Thread(target=race, args=(("running", "canceled")[n % 2],))
               for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and set(wins.values()) == {1} and len(wins) == 100
    for run_id in run_ids:
        changes = [e for e in db.list_events(run_id) if e["event_type"] == "run.state_changed"]
        assert len(changes) == 1 and changes[0]["data"]["to"] == db.get_run(run_id)["state"]


def _race_processes(db, tmp_path, targets: list[tuple[str, ...]]) -> tuple[Counter, Counter]:
    """One racer process per entry of `targets` (helpers.py race arguments: target,
    expected, kind), all let go at once; returns race_outcomes."""
    go = str(tmp_path / "go")
    outs = [str(tmp_path / f"out{i}") for i in range(len(targets))]
    procs = [subprocess.Popen([sys.executable, HELPERS, "race", db.db_path, go, out, *args])
             for out, args in zip(outs, targets)]
    start_when_ready(outs, go)
    assert [p.wait(timeout=300) for p in procs] == [0] * len(procs)
    return race_outcomes(outs)


def _one_change_each(db, run_id: str, event_type: str, entity: str, since: str) -> dict:
    """The data of the one state-change event of `entity` out of state `since`."""
    changes = [e["data"] for e in db.list_events(run_id) if e["event_type"] == event_type
               and e["data"]["from"] == since]
    assert len(changes) == 1, (entity, changes)
    return changes[0]


def test_processes_wanting_different_states_for_the_same_runs_get_one_winner(shared_db,
                                                                             tmp_path):
    """Running vs canceled from pending: every racer's move is legal from pending, and
    canceled is legal from running too — so a second winner is stopped only by
    compare-and-set, never by the rule against moving to the state a run is in."""
    db = shared_db
    run_ids = {db.create_run({"project_id": "race", "phase_id": "ph"}) for _ in range(300)}
    kinds, won = _race_processes(db, tmp_path, [("running",), ("canceled",)] * 4)
    assert set(won) == run_ids and set(won.values()) == {1}
    assert kinds == {"won": 300, "lost": 2100}
    for run_id in run_ids:
        change = _one_change_each(db, run_id, "run.state_changed", run_id, "pending")
        assert change["to"] == db.get_run(run_id)["state"]


def test_processes_finishing_the_same_runs_differently_get_one_winner(shared_db, tmp_path):
    """Succeeded vs failed from running, for runs and for step attempts: the loser must be
    told it lost (ConcurrentUpdateError), not left with a second end or a refused move."""
    db = shared_db
    run_ids = set()
    for _ in range(150):
        run_id = db.create_run({"project_id": "race", "phase_id": "ph"})
        db.transition_run(run_id, "running", expected="pending")
        db.create_step_attempt({"run_id": run_id, "sequence": 1, "tool_id": "t"})
        run_ids.add(run_id)
    kinds, won = _race_processes(db, tmp_path, [
        (target, "running", kind) for kind in ("run", "step")
        for target in ("succeeded", "failed", "succeeded", "failed")])
    assert set(won.values()) == {1} and len(won) == 300
    assert kinds == {"won": 300, "lost": 900}
    for run_id in run_ids:
        run = db.get_run(run_id)
        change = _one_change_each(db, run_id, "run.state_changed", run_id, "running")
        assert (change["to"], change["exit_code"]) == (run["state"], 0)
        (step,) = db.list_step_attempts(run_id)
        change = _one_change_each(db, run_id, "step_attempt.state_changed",
                                  step["step_attempt_id"], "running")
        assert change["to"] == step["state"]


def test_claimers_and_cancelers_racing_never_both_win_a_run(shared_db, tmp_path):
    """Four workers claim pending runs while four processes cancel them: each run ends
    either claimed by exactly one worker or canceled by exactly one canceler."""
    db = shared_db
    run_ids = {db.create_run({"project_id": "race", "phase_id": "ph"}) for _ in range(200)}
    go = str(tmp_path / "go")
    claim_outs = [str(tmp_path / f"claim{i}") for i in range(4)]
    cancel_outs = [str(tmp_path / f"cancel{i}") for i in range(4)]
    procs = [subprocess.Popen([sys.executable, HELPERS, "claim", db.db_path, f"w{i}", go, out])
             for i, out in enumerate(claim_outs)]
    procs += [subprocess.Popen([sys.executable, HELPERS, "cancel_pending", db.db_path, go, out])
              for out in cancel_outs]
    start_when_ready(claim_outs + cancel_outs, go)
    assert [p.wait(timeout=300) for p in procs] == [0] * 8
    claimed = Counter(line for out in claim_outs for line in Path(out).read_text().split())
    kinds, canceled = race_outcomes(cancel_outs)
    assert set(claimed.values()) <= {1} and set(canceled.values()) <= {1}
    assert set(claimed) | set(canceled) == run_ids and not set(claimed) & set(canceled)
    assert kinds["won"] == len(canceled) and kinds["lost"] == 4 * 200 - len(canceled)
    for run in db.list_runs(limit=None):
        changes = [e["data"]["to"] for e in db.list_events(run["run_id"])
                   if e["event_type"] == "run.state_changed"]
        if run["run_id"] in claimed:
            assert run["state"] == "succeeded" and run["worker_id"] is not None
            assert changes == ["running", "succeeded"]
        else:
            assert run["state"] == "canceled" and run["worker_id"] is None
            assert changes == ["canceled"]


def test_processes_racing_for_the_same_runs_get_exactly_one_winner(shared_db, tmp_path):
    db = shared_db
    run_ids = {db.create_run({"project_id": "race", "phase_id": "ph"}) for _ in range(500)}
    kinds, won = _race_processes(db, tmp_path, [()] * 8)
    assert set(won) == run_ids and set(won.values()) == {1}
    assert kinds == {"won": 500, "lost": 3500}
    for run_id in run_ids:
        changes = [e for e in db.list_events(run_id) if e["event_type"] == "run.state_changed"]
        assert len(changes) == 1 and db.get_run(run_id)["state"] == "running"


def test_processes_appending_at_once_lose_nothing(shared_db, tmp_path):
    db = shared_db
    run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
    go = str(tmp_path / "go")
    outs = [str(tmp_path / f"out{i}") for i in range(4)]
    procs = [subprocess.Popen([sys.executable, HELPERS, "append", db.db_path, run_id, "300", go,
                               out + ".ready"]) for out in outs]
    start_when_ready(outs, go)  # all four are writing at once, however slow they start
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    events = db.events_since(0, limit=10_000)
    assert [e["seq"] for e in events] == list(range(1, 1202))
    per_pid = Counter(e["data"]["pid"] for e in events if e["event_type"] == "append")
    assert sorted(per_pid.values()) == [300] * 4
    for pid in per_pid:  # each process's own events keep its order
        mine = [e["data"]["i"] for e in events if e["data"].get("pid") == pid]
        assert mine == list(range(300))


def test_forked_child_writes_survive_the_parent_closing_the_ledger(shared_db):
    """A child must not inherit the parent's connection: SQLite would think the parent's
    locks were the child's, and the parent's close would delete the WAL under it; on
    PostgreSQL both would talk over one socket, and the parent's close would end the
    child's session."""
    db = shared_db
    run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
    to_parent, from_child = os.pipe()
    to_child, from_parent = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: keeps writing after the parent has closed its connection
        code = 1
        try:
            os.close(to_parent)
            os.close(from_parent)
            for i in range(100):
                db.create_event({"run_id": run_id, "event_type": "child", "data": {"i": i}})
                if i == 10:  # half-way: wait until the parent has written and closed
                    os.write(from_child, b"x")
                    if os.read(to_child, 1) != b"c":
                        break
            else:
                code = 0
        finally:
            os._exit(code)
    os.close(from_child)
    os.close(to_child)
    assert os.read(to_parent, 1) == b"x"
    db.create_event({"run_id": run_id, "event_type": "parent"})
    db.close()  # the parent is done while the child still writes
    os.write(from_parent, b"c")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    os.close(to_parent)
    os.close(from_parent)
    with init_db(db.db_path) as fresh:
        kinds = Counter(e["event_type"] for e in fresh.list_events(run_id))
        assert kinds["child"] == 100 and kinds["parent"] == 1


def test_forked_children_and_parent_write_at_once(shared_db):
    db = shared_db
    run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
    pids = []
    for n in range(3):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for i in range(50):
                    db.create_event({"run_id": run_id, "event_type": f"child{n}"})
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    for i in range(50):
        db.create_event({"run_id": run_id, "event_type": "parent"})
    assert [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids] == [0, 0, 0]
    kinds = Counter(e["event_type"] for e in db.list_events(run_id))
    assert [kinds[k] for k in ("child0", "child1", "child2", "parent")] == [50] * 4
    assert db.events_since(0, limit=1000)[-1]["seq"] == 201


def test_in_memory_ledger_is_the_childs_own_copy_after_fork(in_memory_db):
    db = in_memory_db
    run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
    pid = os.fork()
    if pid == 0:
        ok = db.get_run(run_id) is not None
        db.create_event({"run_id": run_id, "event_type": "child-only"})
        os._exit(0 if ok else 1)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert [e["event_type"] for e in db.list_events(run_id)] == ["run.created"]


def test_a_relative_path_keeps_naming_the_same_file_after_chdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    db = init_db("here.db")
    db.create_run({"run_id": "r", "project_id": "p", "phase_id": "ph"})
    db.close()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    db.connect()
    assert db.get_run("r") is not None
    db.close()
    assert list(elsewhere.iterdir()) == []


def test_writer_waits_for_a_lock_held_shorter_than_the_busy_timeout(file_db, tmp_path):
    db = file_db  # busy timeout 10 s: twenty times the hold
    ready = str(tmp_path / "ready")
    holder = subprocess.Popen([sys.executable, PROGRAMS, "hold_lock", db.db_path, "0.5", ready])
    wait_for(ready)
    run_id = db.create_run({"project_id": "p", "phase_id": "ph"})  # waits, then succeeds
    assert holder.wait(timeout=30) == 0
    assert db.get_run(run_id) is not None
    conn = sqlite3.connect(db.db_path)
    # our write could only commit after the holder's transaction did
    assert conn.execute("SELECT value FROM ledger_counters WHERE name = 'lock_holder'"
                        ).fetchone() == (1,)
    conn.close()


def test_writer_past_the_busy_timeout_gets_a_typed_error_and_writes_nothing(db_path, tmp_path):
    init_db(db_path).close()
    db = Database(db_path, busy_timeout=0.2)
    ready, release = str(tmp_path / "ready"), str(tmp_path / "release")
    # held until released below: no machine is slow enough to let the write find it free
    holder = subprocess.Popen([sys.executable, PROGRAMS, "hold_lock", db_path, "120", ready,
                               "IMMEDIATE", release])
    try:
        wait_for(ready)
        with pytest.raises(DatabaseBusyError, match="locked by another writer for more than "
                                                    "0.2 s"):
            db.create_run({"run_id": "late", "project_id": "p", "phase_id": "ph"})
    finally:
        Path(release).touch()
        assert holder.wait(timeout=60) == 0
    assert db.get_run("late") is None
    db.create_run({"run_id": "late", "project_id": "p", "phase_id": "ph"})  # usable again
    db.close()


def test_reads_are_not_blocked_by_another_process_holding_an_exclusive_lock(db_path, tmp_path):
    """In WAL mode a reader never waits for a writer, even one in BEGIN EXCLUSIVE (which
    would lock readers out of a rollback-journal database)."""
    with init_db(db_path) as db:
        db.create_run({"run_id": "r", "project_id": "p", "phase_id": "ph"})
    reader = Database(db_path, busy_timeout=0)  # any wait would be a DatabaseBusyError
    ready, release = str(tmp_path / "ready"), str(tmp_path / "release")
    holder = subprocess.Popen([sys.executable, PROGRAMS, "hold_lock", db_path, "120", ready,
                               "EXCLUSIVE", release])  # held until released below
    try:
        wait_for(ready)
        assert reader.get_run("r")["run_id"] == "r"
        assert [r["run_id"] for r in reader.list_runs()] == ["r"]
        with pytest.raises(DatabaseBusyError, match="locked by another writer"):
            reader.create_run({"project_id": "p", "phase_id": "ph"})
    finally:
        Path(release).touch()
        assert holder.wait(timeout=60) == 0
        reader.close()


def test_raw_connection_sees_committed_writes_at_once(file_db):
    run_id = file_db.create_run({"project_id": "p", "phase_id": "ph"})
    conn = sqlite3.connect(file_db.db_path)
    assert conn.execute("SELECT state FROM runs WHERE run_id = ?", (run_id,)).fetchone() == (
        "pending",)
    conn.close()

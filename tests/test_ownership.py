"""Ownership and recovery: every running run has a live owner, or it does not stay running.

`uet run` owns its run through a worker record; killed outright, its command dies with it
and the next reaper pass fails the run; SIGHUP/SIGQUIT cancel like SIGTERM; a cancel request
through the ledger stops the owner's command. On SQLite and PostgreSQL, with real processes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from helpers import raw_execute, wait_for
from test_cli import UET, gone, readline, run_until, uet_env
from uet.errors import InvalidTransitionError
from uet.state import Database, WorkerLifecycle, init_db
from uet.state.recovery import (RUN_CANCEL_REQUESTED, Owner, identity, process_start, recover,
                                request_cancel)

# the reliability suite's processes (hold_lock: a writer holding the ledger's lock)
PROGRAMS = str(Path(__file__).parent.parent / "bench" / "reliability_suite" / "programs.py")

# prints its pid, starts a grandchild in its process group that writes its own pid, waits
COMMAND = ("import os, subprocess, sys, time\n"
           "child = subprocess.Popen(['sleep', '300'])\n"
           "open('grandchild.pid', 'w').write(str(child.pid))\n"
           "print(os.getpid(), flush=True)\n"
           "time.sleep(300)\n")


def _start(ledger: str, cwd, *extra: str) -> tuple[subprocess.Popen, int]:
    """`uet run` of COMMAND with no terminal on stdin (its own process group); returns it
    and the command's pid, once the command runs."""
    proc = subprocess.Popen([UET, "run", "--db", ledger, *extra, "--", sys.executable, "-c",
                             COMMAND], cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=uet_env())
    return proc, int(readline(proc))


def _kill_if_alive(pid: int) -> bool:
    """Whether `pid` was still alive (it is killed then, leaving nothing behind)."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def test_uet_run_owns_its_run_and_retires_its_worker(ledger, tmp_path):
    done = subprocess.run([UET, "run", "--db", ledger, "--", sys.executable, "-c", "pass"],
                          cwd=tmp_path, capture_output=True, text=True, env=uet_env(),
                          stdin=subprocess.DEVNULL, timeout=120)
    assert done.returncode == 0, done.stderr
    with Database(ledger) as db:
        run = db.list_runs()[0]
        (worker,) = WorkerLifecycle(db).list_workers()
        assert run["worker_id"] == worker.worker_id and worker.worker_type == "cli"
        assert worker.state == "TERMINATED" and worker.current_run_id is None
        affinity = worker.affinity
        assert (affinity["host"], affinity["heartbeat_s"]) == (socket.gethostname(), 10.0)
        assert isinstance(affinity["pid"], int) and affinity["pid"] != os.getpid()
        assert affinity["incarnation"] in worker.worker_id and affinity["started"]
        assert db.list_step_attempts(run["run_id"])[0]["worker_id"] == worker.worker_id
        moves = [(e["data"]["from"], e["data"]["to"]) for e in db.events_since(0)
                 if e["event_type"] == "worker.state_changed"]
        assert moves == [("SPAWNING", "IDLE"), ("IDLE", "BUSY"), ("BUSY", "IDLE"),
                         ("IDLE", "TERMINATED")]


def test_sigkill_of_uet_stops_the_command_and_the_reaper_fails_the_run(ledger, tmp_path):
    proc, command = _start(ledger, tmp_path)
    grandchild = int((tmp_path / "grandchild.pid").read_text())
    proc.kill()
    proc.communicate(timeout=60)
    # the command dies with its owner (parent-death signal), at once
    assert gone(command, timeout=30), "the command outlived uet"
    with Database(ledger) as db:
        run = db.list_runs()[0]
        assert run["state"] == "running"  # nobody has looked yet
        (found,) = recover(db)
        assert found.runs == [run["run_id"]] and found.worker_id == run["worker_id"]
        run = db.get_run(run["run_id"])
        assert run["state"] == "failed"
        assert run["error_message"] == (
            f"owner {found.worker_id} (cli process {proc.pid} on {socket.gethostname()}) is "
            f"gone: process {proc.pid} on host {socket.gethostname()} has ended")
        step = db.list_step_attempts(run["run_id"])[0]
        assert (step["state"], step["error_log"]) == ("failed", run["error_message"])
        assert WorkerLifecycle(db).get_worker(found.worker_id).state == "TERMINATED"
        assert recover(db) == []  # once only
    # what the command left in its process group is stopped by the reaper
    survived = not gone(grandchild, timeout=30)
    assert not (survived and _kill_if_alive(grandchild)), "the command's group outlived it"


def test_the_next_uet_run_recovers_a_run_whose_owner_died(tmp_path):
    ledger = str(tmp_path / "framework.db")
    proc, command = _start(ledger, tmp_path)
    proc.kill()
    proc.communicate(timeout=60)
    done = subprocess.run([UET, "run", "--db", ledger, "--", "true"], cwd=tmp_path,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert done.returncode == 0, done.stderr
    with Database(ledger) as db:
        assert [r["state"] for r in db.list_runs()] == ["succeeded", "failed"]
    assert gone(command, timeout=30)


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGQUIT, signal.SIGTERM])
def test_hang_up_and_quit_cancel_the_run_as_sigterm_does(tmp_path, signum):
    ledger = str(tmp_path / "framework.db")
    proc, command = _start(ledger, tmp_path)
    grandchild = int((tmp_path / "grandchild.pid").read_text())
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum and "Traceback" not in err
    assert gone(command, timeout=30) and gone(grandchild, timeout=30)
    with Database(ledger) as db:
        run = db.list_runs()[0]
        assert run["state"] == "canceled"
        assert run["error_message"].startswith(f"canceled by {signal.Signals(signum).name}: ")
        assert WorkerLifecycle(db).get_worker(run["worker_id"]).state == "TERMINATED"


def test_a_cancel_request_through_the_ledger_stops_the_owners_command(ledger, tmp_path):
    proc, command = _start(ledger, tmp_path)
    with Database(ledger) as db:
        run_id = db.list_runs()[0]["run_id"]
        asked = request_cancel(db, run_id, by="a test")
        assert asked["state"] == "running"  # asked, not done: its owner is alive
        assert [e["event_type"] for e in db.list_events(run_id)][-1] == RUN_CANCEL_REQUESTED
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 143, err
        run = db.get_run(run_id)
        assert run["state"] == "canceled"
        assert run["error_message"].startswith("canceled (requested by a test): ")
        assert db.list_step_attempts(run_id)[0]["state"] == "canceled"
    assert gone(command, timeout=30)


def _owner_record(workers: WorkerLifecycle, worker_id: str, **affinity) -> None:
    base = {**identity(), "incarnation": worker_id, "heartbeat_s": 10.0}
    workers.spawn_worker(worker_id, "cli", {**base, **affinity})
    workers.transition_state(worker_id, "IDLE")


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_recover_judges_each_owner_by_its_process_and_its_heartbeats(db):
    workers = WorkerLifecycle(db)
    host = socket.gethostname()
    me = os.getpid()
    _owner_record(workers, "alive")                      # this very process
    _owner_record(workers, "ended", pid=_dead_pid())     # its process is gone
    _owner_record(workers, "reused", started="1")        # our pid, another process's start
    _owner_record(workers, "far", host="elsewhere", pid=1)  # heartbeats only
    _owner_record(workers, "far-silent", host="elsewhere", pid=1)
    workers.spawn_worker("plain", "t", {"pid": _dead_pid()})  # not an owner: no interval
    workers.transition_state("plain", "IDLE")
    runs = {}
    for worker_id in ("alive", "ended", "reused", "far", "far-silent"):
        runs[worker_id] = db.create_run({"project_id": "p", "phase_id": "ph"})
        workers.claim_run(worker_id, runs[worker_id])
        db.create_step_attempt({"run_id": runs[worker_id], "sequence": 1, "tool_id": "t"})
    beat = datetime.fromisoformat(workers.get_worker("far").last_heartbeat)
    now = beat + timedelta(seconds=15)  # 1.5 intervals after: none is stale yet
    assert {r.worker_id for r in recover(db, now=now)} == {"ended", "reused"}
    # "far-silent" last beat 25 s before "far" did: 2.5 intervals
    raw_execute(db, "UPDATE workers SET last_heartbeat = ? WHERE worker_id = 'far-silent'",
                ((beat - timedelta(seconds=25)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),))
    (silent,) = recover(db, now=now)
    assert silent.worker_id == "far-silent" and silent.runs == [runs["far-silent"]]
    assert silent.reason.endswith("two heartbeat intervals (10 s each) missed")
    reasons = {w: db.get_run(r)["error_message"] for w, r in runs.items()}
    assert reasons["ended"].endswith("has ended") and f"on host {host}" in reasons["ended"]
    assert reasons["reused"].endswith(
        f"process {me} on host {host} has ended (its pid now belongs to another process)")
    states = {w: db.get_run(r)["state"] for w, r in runs.items()}
    assert states == {"alive": "running", "ended": "failed", "reused": "failed",
                      "far": "running", "far-silent": "failed"}
    for worker_id in ("ended", "reused", "far-silent"):
        (step,) = db.list_step_attempts(runs[worker_id])
        assert step["state"] == "failed" and worker_id in step["error_log"]
    assert workers.get_worker("plain").state == "IDLE"  # judged by reap_stale, not here
    assert process_start(me) == identity()["started"]


def test_an_owner_that_heartbeat_after_being_judged_is_not_terminated(db):
    workers = WorkerLifecycle(db)
    _owner_record(workers, "w", host="elsewhere", pid=1)
    judged = workers.get_worker("w").last_heartbeat
    workers.heartbeat("w")  # it came back between the reaper's read and its write
    assert workers.terminate_lost("w", "lost", last_heartbeat=judged) is False
    assert workers.get_worker("w").state == "IDLE"
    assert workers.terminate_lost("w", "lost") is True
    assert workers.terminate_lost("w", "lost") is False  # already TERMINATED


def test_cancel_of_pending_finished_and_ownerless_runs(db):
    pending = db.create_run({"project_id": "p", "phase_id": "ph"})
    assert request_cancel(db, pending)["error_message"] == "canceled by uet cancel before it " \
                                                            "started"
    done = db.create_run({"project_id": "p", "phase_id": "ph"})
    db.transition_run(done, "running")
    db.transition_run(done, "succeeded", exit_code=0)
    with pytest.raises(InvalidTransitionError, match=f"Invalid transition: run '{done}' cannot go from succeeded "
                                                     "to canceled"):
        request_cancel(db, done)
    workers = WorkerLifecycle(db)
    _owner_record(workers, "dead", pid=_dead_pid())
    orphan = db.create_run({"project_id": "p", "phase_id": "ph"})
    workers.claim_run("dead", orphan)
    step = db.create_step_attempt({"run_id": orphan, "sequence": 1, "tool_id": "t"})
    run = request_cancel(db, orphan)  # its owner is gone: canceled at once, with its step
    assert run["state"] == "canceled" and run["error_message"].startswith(
        "canceled by uet cancel: process ")
    assert db.get_step_attempt(step)["state"] == "canceled"
    unowned = db.create_run({"project_id": "p", "phase_id": "ph"})
    db.transition_run(unowned, "running")  # moved by hand: nobody owns it
    assert request_cancel(db, unowned)["error_message"] == "canceled by uet cancel: it has " \
                                                            "no owner"


def test_an_owner_heartbeats_and_learns_when_it_was_reaped(tmp_path):
    db = init_db(str(tmp_path / "framework.db"))
    owner = Owner(db, "cli", heartbeat_s=0.05)
    owner.register()
    first = WorkerLifecycle(db).get_worker(owner.worker_id).last_heartbeat
    owner.start_heartbeat()
    workers = WorkerLifecycle(db)
    deadline = datetime.now(timezone.utc) + timedelta(seconds=60)
    while workers.get_worker(owner.worker_id).last_heartbeat == first:
        assert datetime.now(timezone.utc) < deadline, "no heartbeat"
        time.sleep(0.01)
    workers.terminate_lost(owner.worker_id, "reaped by a test")
    while owner.lost is None:
        assert datetime.now(timezone.utc) < deadline, "the owner never learnt it was reaped"
        time.sleep(0.01)
    assert "TERMINATED" in owner.lost
    owner.close()
    db.close()


def _uet(*args: str, cwd, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([UET, *args], cwd=cwd, capture_output=True, text=True,
                          env=uet_env(), stdin=subprocess.DEVNULL, timeout=timeout)


def test_inspection_shows_a_lost_owner_and_uet_recover_fails_its_run(ledger, tmp_path):
    proc, command = _start(ledger, tmp_path)
    proc.kill()
    proc.communicate(timeout=60)
    with Database(ledger) as db:
        run_id = db.list_runs()[0]["run_id"]
    table = _uet("runs", "--db", ledger, cwd=tmp_path)
    assert table.returncode == 0 and "running (owner lost)" in table.stdout
    shown = _uet("show", "--db", ledger, cwd=tmp_path)
    assert f"running (owner lost: process {proc.pid} on host" in shown.stdout
    listed = json.loads(_uet("runs", "--db", ledger, "--json", cwd=tmp_path).stdout)
    assert listed[0]["state"] == "running"  # inspection wrote nothing
    recovered = _uet("recover", "--db", ledger, "--json", cwd=tmp_path)
    assert recovered.returncode == 0, recovered.stderr
    (found,) = json.loads(recovered.stdout)
    assert found["runs"] == [run_id] and "has ended" in found["reason"]
    again = _uet("recover", "--db", ledger, cwd=tmp_path)
    assert again.stdout == "nothing to recover: every running run has a live owner\n"
    with Database(ledger) as db:
        assert db.get_run(run_id)["state"] == "failed"
    assert gone(command, timeout=30)


def test_uet_cancel_stops_a_run_from_another_shell(ledger, tmp_path):
    proc, command = _start(ledger, tmp_path)
    with Database(ledger) as db:
        run_id = db.list_runs()[0]["run_id"]
    canceled = _uet("cancel", "--db", ledger, run_id[:16], "--wait", "60", cwd=tmp_path)
    assert canceled.returncode == 0, canceled.stderr
    assert canceled.stdout.startswith(f"run {run_id} canceled: canceled (requested by uet "
                                      "cancel): ")
    assert proc.wait(timeout=60) == 143 and gone(command, timeout=30)
    proc.communicate()
    finished = _uet("cancel", "--db", ledger, run_id, cwd=tmp_path)
    assert finished.returncode == 1
    assert finished.stderr == (f"uet: error: Invalid transition: run '{run_id}' cannot go from canceled to "
                               "canceled: it is already canceled\n")


def test_uet_run_says_in_one_line_when_it_cannot_close_its_run(tmp_path):
    """The ledger stays locked by another process past --finish-timeout: one line says the
    run could not be closed, and the reaper closes it once the owner is gone."""
    ledger = str(tmp_path / "framework.db")
    init_db(ledger).close()
    ready, release = str(tmp_path / "held"), str(tmp_path / "release")
    go = tmp_path / "go"
    proc = run_until(go, "--db", ledger, "--finish-timeout", "1", cwd=tmp_path)
    holder = subprocess.Popen([sys.executable, PROGRAMS, "hold_lock", ledger, "300", ready,
                               "IMMEDIATE", release])
    try:
        wait_for(ready)
        go.touch()  # the command ends while the ledger cannot be written
        _, err = proc.communicate(timeout=120)
    finally:
        Path(release).touch()
        assert holder.wait(timeout=60) == 0
    assert proc.returncode == 1
    assert err.startswith("uet: error: run ") and err.count("\n") == 1, err
    assert "could not be closed (succeeded) within 1 s" in err and "uet recover" in err
    with Database(ledger) as db:
        (found,) = recover(db)  # its owner has exited: the run is failed, not left running
        run = db.get_run(found.runs[0])
        assert run["state"] == "failed" and "has ended" in run["error_message"]


def test_a_postgresql_server_gone_during_a_run_gets_one_line_and_the_run_is_recovered(
        tmp_path):
    """The server goes away while the command runs: uet retries its final write for
    --finish-timeout, then says in one line that the run could not be closed (no pool log
    noise); once the server is back, a reaper pass fails the run (its owner has exited)."""
    import pgserver
    server = pgserver.Server()  # a private one: this test stops it
    try:
        url = server.start(durable=True)  # the halt below must not lose what was committed
        init_db(url).close()
        go = tmp_path / "go"
        proc = run_until(go, "--db", url, "--finish-timeout", "2", cwd=tmp_path)
        server.halt()
        go.touch()
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 1
        assert err.count("\n") == 1 and err.startswith("uet: error: run "), err
        assert "could not be closed (succeeded) within 2 s" in err
        server.resume()
        with Database(url) as db:
            (found,) = recover(db)
            run = db.get_run(found.runs[0])
            assert run["state"] == "failed" and f"process {proc.pid}" in run["error_message"]
    finally:
        server.stop()

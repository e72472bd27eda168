"""The work queue and the worker pool end to end: `uet submit` queues workstreams, `uet worker`
processes claim, run and release them — with real processes, real git repositories and
real ledgers (SQLite files; PostgreSQL where both engines matter).

What a pool must never do is tested by doing it to the pool: workers killed (SIGKILL),
paused past their lease (SIGSTOP, then SIGCONT), drained and canceled (SIGTERM, twice), and
a poison run that kills every worker that takes it. Nothing here waits a fixed time: each
test waits for the condition it needs, with generous deadlines.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from uet.engine.pool import submit
from uet.engine.resume import judged
from uet.engine.workstream import load_workstream
from uet.errors import StaleWorkerError
from uet.state import Database, WorkerLifecycle, init_db
from uet.state.recovery import Owner

PY = sys.executable
UET = shutil.which("uet", path=os.path.dirname(sys.executable))
HERE = Path(__file__).resolve().parent
EDITOR = str(HERE.parents[1] / "examples" / "tools" / "stand_in_editor.py")
POOL_TOOL = str(HERE / "pool_tool.py")
DEADLINE = 90.0  # seconds: far beyond what any condition needs on a loaded 2-core machine
# how many submitted workstreams 4 workers run (the figure; override to try others)
MANY_RUNS = int(os.environ.get("UET_TEST_POOL_RUNS", "100"))
SHARED_REPO_RUNS = int(os.environ.get("UET_TEST_POOL_SHARED_RUNS", "100"))
NEVER_IN_OUTPUT = ("database is locked", "DatabaseBusyError", "Traceback")


# -- helpers ----------------------------------------------------------------------------------

def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path) -> Path:
    path = tmp_path / "project"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "Test")
    git(path, "config", "user.email", "test@example.invalid")
    (path / "app.txt").write_text("app\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path


@pytest.fixture
def marks(tmp_path) -> Path:
    """Where the tools say that they started and finished (see pool_tool.py)."""
    path = tmp_path / "marks"
    path.mkdir()
    return path


def editor() -> dict:
    return {"command": [PY, EDITOR, "{prompt_file}", "{feedback_file}"],
            "timeout_seconds": 120}


def slow(marks: Path, seconds: float) -> dict:
    """A tool that marks its start, sleeps, adds `<task> done` to notes/<task>.txt, marks its
    end."""
    return {"command": [PY, POOL_TOOL, "--mark", str(marks), "--name", "{task_id}-{attempt}",
                        "--sleep", str(seconds), "--append", "notes/{task_id}.txt",
                        "{task_id} done"], "timeout_seconds": 300}


def workstream(tmp_path: Path, repo: Path, tasks: list[dict], tools: dict | None = None,
               name: str = "ws.json", **extra) -> Path:
    data = {"workstream_id": "WS-POOL", "project_id": "PRJ", "phase_id": "PH-1",
            "repo": str(repo), "files_scope": {"modify": ["**"], "create": ["**"]},
            "tools": tools or {"editor": editor()}, "tasks": tasks, **extra}
    path = tmp_path / name
    path.write_text(json.dumps(data, indent=1))
    return path


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "UET_DATABASE"}


def uet(*args: str, cwd: Path, timeout: float = DEADLINE) -> subprocess.CompletedProcess:
    return subprocess.run([UET, *args], cwd=cwd, env=env(), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


class Procs:
    """The worker processes a test starts: their stderr goes to a file each; whatever is
    still alive at the end of the test is killed (stopped ones continued first)."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.started = folder, []

    def worker(self, ledger: str, *options: str) -> subprocess.Popen:
        log = self.folder / f"worker-{len(self.started) + 1}.log"
        with open(log, "w") as err:
            proc = subprocess.Popen([UET, "worker", "--db", ledger, *options],
                                    cwd=self.folder, env=env(), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err)
        proc.log = log
        self.started.append(proc)
        return proc

    def end(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                for sig in (signal.SIGCONT, signal.SIGKILL):
                    try:
                        proc.send_signal(sig)
                    except ProcessLookupError:
                        pass
                proc.wait(30)


@pytest.fixture
def procs(tmp_path, marks):
    started = Procs(tmp_path)
    yield started
    started.end()
    for mark in marks.glob("*.started"):  # tools a failed test left running
        pid = int(mark.read_text())
        try:
            if "pool_tool.py" in Path(f"/proc/{pid}/cmdline").read_text():
                os.killpg(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass


def log_of(proc: subprocess.Popen) -> str:
    return Path(proc.log).read_text()


def wait_until(condition, what: str, timeout: float = DEADLINE):
    """The first true value of `condition()`, or a failure naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def tool_started(marks: Path, run_id: str, name: str) -> int:
    """Wait until the run's pool_tool `name` ({task_id}-{attempt}) runs; its pid."""
    mark = marks / f"{run_id}-{name}.started"
    wait_until(mark.exists, f"tool {name} of run {run_id} to start")
    return int(mark.read_text())


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def worker_of(db: Database, proc: subprocess.Popen):
    """The worker record of a `uet worker --concurrency 1` process, once it registered."""
    found = [w for w in WorkerLifecycle(db).list_workers() if w.affinity.get("pid") == proc.pid]
    assert len(found) <= 1, found
    return found[0] if found else None


def ready(db: Database, proc: subprocess.Popen):
    """Wait until the worker process is registered and IDLE; its record."""
    def idle():
        assert proc.poll() is None, log_of(proc)
        worker = worker_of(db, proc)
        return worker if worker is not None and worker.state == "IDLE" else None
    return wait_until(idle, f"worker process {proc.pid} to be IDLE")


def run_ended(db: Database, run_id: str, states=("succeeded", "failed", "canceled")):
    return wait_until(lambda: (lambda r: r if r["state"] in states else None)(
        db.get_run(run_id)), f"run {run_id} to reach one of {states}")


def commits(repo: Path, run: dict) -> list[tuple[str, str]]:
    """(sha, Uet-Entry trailer) of each commit on the run's branch since its base."""
    meta = run["metadata"]
    out = git(repo, "log", "--format=%H %(trailers:key=Uet-Entry,valueonly)",
              f"{meta['base']}..{meta['branch']}")
    return [tuple(line.split()) for line in out.splitlines() if line.strip()]


def steps(db: Database, run_id: str) -> list[tuple[int, int, str]]:
    return [(s["sequence"], s["attempt"], s["state"]) for s in db.list_step_attempts(run_id)]


def claims(db: Database, run_id: str) -> list[dict]:
    """The run's pending → running moves (each one a claim)."""
    return [e for e in db.list_events(run_id) if e["event_type"] == "run.state_changed"
            and (e["data"]["from"], e["data"]["to"]) == ("pending", "running")]


# -- 1. submit --------------------------------------------------------------------------------

@pytest.mark.parametrize("content, problem", [
    ('{"workstream_id": "WS-1", "tools": {"ed": {"command": ["true"]}}, '
     '"tasks": [{"task_id": "T1", "tool": "nope", "prompt": "x"}]}', "'nope' is not a tool"),
    ('{"workstream_id": ', "not valid JSON"),
])
def test_submit_refuses_a_bad_workstream_in_one_line_and_queues_nothing(tmp_path, repo,
                                                                         content, problem):
    ledger = str(tmp_path / "framework.db")
    init_db(ledger).close()
    path = tmp_path / "bad.json"
    path.write_text(content)
    done = uet("submit", "--db", ledger, str(path), "--repo", str(repo), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and problem in done.stderr, done.stderr
    with Database(ledger) as db:
        assert db.list_runs(limit=None) == [] and db.latest_event_seq() == 0


def test_submit_queues_the_file_as_it_is_now_and_the_worker_runs_exactly_that(tmp_path, repo):
    ledger = str(tmp_path / "framework.db")
    path = workstream(tmp_path, repo, [
        {"task_id": "T1", "tool": "editor", "prompt": "write notes/a.txt\noriginal"}])
    original = path.read_bytes()
    base = git(repo, "rev-parse", "HEAD")
    done = uet("submit", "--db", ledger, str(path), "--priority", "7", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.strip()
    assert done.stdout == run_id + "\n" and len(run_id) == 26
    with Database(ledger) as db:
        run = db.get_run(run_id)
    assert (run["state"], run["priority"], run["recoveries"], run["worker_id"]) == (
        "pending", 7, 0, None)
    assert (run["workstream_id"], run["project_id"], run["phase_id"]) == (
        "WS-POOL", "PRJ", "PH-1")
    spec = run["metadata"]["workstream"]
    assert spec["content"].encode("utf-8") == original
    assert spec["sha256"] == hashlib.sha256(original).hexdigest()
    assert run["metadata"]["base"] == base
    assert run["metadata"]["queue"]["resume"] == "auto"
    # the file is edited and the target moves on after the submit: the queued run is the same
    path.write_text(path.read_text().replace("original", "edited"))
    (repo / "app.txt").write_text("moved on\n")
    git(repo, "commit", "-q", "-am", "a later commit")
    once = uet("worker", "--db", ledger, "--once", "--heartbeat", "0.5", cwd=tmp_path)
    assert once.returncode == 0, once.stderr
    with Database(ledger) as db:
        run = db.get_run(run_id)
    assert run["state"] == "succeeded", run["error_message"]
    assert run["metadata"]["workstream"]["content"].encode("utf-8") == original
    branch = run["metadata"]["branch"]
    assert git(repo, "show", f"{branch}:notes/a.txt") == "original"
    assert git(repo, "rev-parse", f"{branch}~1") == base
    assert git(repo, "show", f"{branch}:app.txt") == "app"


def test_workers_take_the_highest_priority_first_then_the_oldest_and_only_queued_runs(
        tmp_path, repo):
    ledger = str(tmp_path / "framework.db")
    with Database(ledger) as db:  # pending, but not queued: `uet run`'s and the API's runs
        plain = db.create_run({"project_id": "PRJ", "phase_id": "PH-1"})
    queued = {}
    for name, priority in (("A", "0"), ("B", "5"), ("C", "5"), ("D", "-1")):
        path = workstream(tmp_path, repo, [
            {"task_id": "T1", "tool": "editor", "prompt": f"write notes/{name}.txt\n{name}"}],
            name=f"{name}.json")
        done = uet("submit", "--db", ledger, str(path), "--priority", priority, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        queued[done.stdout.strip()] = name
    taken = []
    for _ in range(len(queued)):
        once = uet("worker", "--db", ledger, "--once", "--heartbeat", "0.5", cwd=tmp_path)
        assert once.returncode == 0, once.stderr
        with Database(ledger) as db:
            done = [r["run_id"] for r in db.list_runs({"state": "succeeded"}, limit=None)]
        (new,) = set(done) - {run_id for run_id, _ in taken}
        taken.append((new, queued[new]))
    assert [name for _, name in taken] == ["B", "C", "A", "D"]
    idle = uet("worker", "--db", ledger, "--once", "--heartbeat", "0.5", cwd=tmp_path)
    assert idle.returncode == 0 and "no queued run" in idle.stderr, idle.stderr
    with Database(ledger) as db:
        assert db.get_run(plain)["state"] == "pending"
        assert claims(db, plain) == []


# -- 2. --once and --wait ---------------------------------------------------------------------

def test_worker_once_exits_with_the_runs_outcome(tmp_path, repo):
    ledger = str(tmp_path / "framework.db")
    init_db(ledger).close()
    # nothing queued: it exits at once (without --once a worker would wait for work, and
    # this call would time out)
    idle = uet("worker", "--db", ledger, "--once", cwd=tmp_path)
    assert idle.returncode == 0 and "no queued run" in idle.stderr, idle.stderr
    path = workstream(tmp_path, repo, [
        {"task_id": "T1", "tool": "editor", "prompt": "fail the model gave up"}])
    with Database(ledger) as db:
        run_id = submit(db, load_workstream(path))["run_id"]
    once = uet("worker", "--db", ledger, "--once", "--heartbeat", "0.5", cwd=tmp_path)
    assert once.returncode == 1, once.stderr
    with Database(ledger) as db:
        run = db.get_run(run_id)
        assert run["state"] == "failed" and "T1" in run["error_message"]
        assert steps(db, run_id) == [(1, 1, "failed")]


def test_submit_wait_follows_the_run_to_its_end_with_a_worker_running(tmp_path, repo, procs):
    ledger = str(tmp_path / "framework.db")
    init_db(ledger).close()
    worker = procs.worker(ledger, "--heartbeat", "0.5", "--poll", "0.1")
    good = workstream(tmp_path, repo, [
        {"task_id": "T1", "tool": "editor", "prompt": "write notes/w.txt\nwaited"}],
        name="good.json")
    done = uet("submit", "--db", ledger, str(good), "--wait", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.strip()
    assert done.stdout == run_id + "\n"
    bad = workstream(tmp_path, repo, [{"task_id": "T1", "tool": "editor", "prompt": "fail no"}],
                     name="bad.json")
    failed = uet("submit", "--db", ledger, str(bad), "--wait", cwd=tmp_path)
    assert failed.returncode == 1, failed.stderr
    with Database(ledger) as db:
        assert db.get_run(run_id)["state"] == "succeeded"
        assert db.get_run(failed.stdout.strip())["state"] == "failed"
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(DEADLINE) == 0, log_of(worker)


# -- 3. many workers, one ledger --------------------------------------------------------------

def _pool_runs(ledger: str, procs: Procs, submissions: list) -> list[dict]:
    """Start 4 workers, submit each workstream while they work, wait for every run to end,
    stop the workers with SIGTERM; the runs as they ended. Checks what must hold whatever
    the runs do: each run claimed once, every worker exits 0 with nothing alarming in its
    output, and `uet workers` shows them TERMINATED."""
    # heartbeats at a normal pace: this is about contention, not about recovery
    workers = [procs.worker(ledger, "--heartbeat", "2", "--poll", "0.1") for _ in range(4)]
    with Database(ledger) as db:
        for proc in workers:
            ready(db, proc)
        run_ids = [submit(db, ws)["run_id"] for ws in submissions]  # while they work
        wait_until(lambda: all(db.get_run(r)["state"] in ("succeeded", "failed", "canceled")
                               for r in run_ids), f"{len(run_ids)} runs to end")
        runs = [db.get_run(r) for r in run_ids]
        claimed = {r: len(claims(db, r)) for r in run_ids}
    for proc in workers:
        proc.send_signal(signal.SIGTERM)
    codes = [proc.wait(DEADLINE) for proc in workers]
    logs = [log_of(proc) for proc in workers]
    assert codes == [0, 0, 0, 0], logs
    for text in logs:
        for bad in NEVER_IN_OUTPUT:
            assert bad not in text, text
    assert set(claimed.values()) == {1}, {r: n for r, n in claimed.items() if n != 1}
    assert sum(text.count(" took run ") for text in logs) == len(run_ids)
    assert all(r["recoveries"] == 0 for r in runs)
    listed = uet("workers", "--db", ledger, "--json", cwd=procs.folder)
    assert listed.returncode == 0, listed.stderr
    states = {w["pid"]: w["state"] for w in json.loads(listed.stdout)}
    assert {proc.pid: states.get(proc.pid) for proc in workers} == {
        proc.pid: "TERMINATED" for proc in workers}
    return runs


def test_four_workers_run_every_submitted_run_once_on_one_ledger(ledger, tmp_path, repo,
                                                                  procs):
    """The issue's figure: 4 workers, 100 small workstreams, one ledger (each workstream on
    its own repository here: the ledger is what is measured; one repository shared by all
    is the next test)."""
    init_db(ledger).close()
    path = workstream(tmp_path, repo, [
        {"task_id": "T1", "tool": "editor", "prompt": "write notes/{run_id}.txt\nrun {run_id}"}])
    repos = []
    for k in range(MANY_RUNS):
        repos.append(tmp_path / f"project-{k}")
        shutil.copytree(repo, repos[-1], symlinks=True)
    runs = _pool_runs(ledger, procs, [load_workstream(path, repo=r) for r in repos])
    failed = [(r["run_id"], r["state"], r["error_message"]) for r in runs
              if r["state"] != "succeeded"]
    assert failed == [], f"{len(failed)} of {len(runs)} runs did not succeed: {failed}"
    for run, where in zip(runs, repos):
        assert run["metadata"]["repo"] == str(where)
        assert git(where, "show", f"{run['metadata']['branch']}:notes/{run['run_id']}.txt") \
            == f"run {run['run_id']}"


def test_four_workers_share_one_repository_and_no_run_fails_for_it(tmp_path, repo, procs):
    """Teams run many workstreams on one repository: the workers' git worktrees come and go
    there at once, and no run may fail because another run's worktree was half made."""
    ledger = str(tmp_path / "framework.db")
    init_db(ledger).close()
    path = workstream(tmp_path, repo, [
        {"task_id": "T1", "tool": "editor", "prompt": "write notes/{run_id}.txt\nrun {run_id}"}])
    ws = load_workstream(path)
    runs = _pool_runs(ledger, procs, [ws] * SHARED_REPO_RUNS)
    failed = [(r["run_id"], r["error_message"]) for r in runs if r["state"] != "succeeded"]
    assert failed == [], f"{len(failed)} of {len(runs)} runs did not succeed: {failed}"
    assert all(len(commits(repo, run)) == 1 for run in runs)


# -- 4. workers killed mid-run ----------------------------------------------------------------

def test_runs_of_killed_workers_are_resumed_by_others_and_each_task_committed_once(
        tmp_path, repo, marks, procs):
    """A worker is SIGKILLed while T1's tool runs, the worker that resumes the run is
    SIGKILLed while T2's runs: a third finishes it. The reaper of a running worker re-queues
    each time; T1, committed before the second kill, is not done again."""
    ledger = str(tmp_path / "framework.db")
    init_db(ledger).close()
    path = workstream(tmp_path, repo, [
        {"task_id": "T1", "tool": "slow", "prompt": "go"},
        {"task_id": "T2", "tool": "slow", "prompt": "go", "depends_on": ["T1"]}],
        tools={"slow": slow(marks, 3)})
    first = procs.worker(ledger, "--heartbeat", "0.3", "--poll", "0.1")
    with Database(ledger) as db:
        ready(db, first)
        run_id = submit(db, load_workstream(path))["run_id"]
        killed_tools, lost = [], []
        victim = first
        for tool in ("T1-1", "T2-1"):  # the attempt each victim is running when killed
            killed_tools.append(tool_started(marks, run_id, tool))
            lost.append(worker_of(db, victim))
            assert db.get_run(run_id)["worker_id"] == lost[-1].worker_id
            successor = procs.worker(ledger, "--heartbeat", "0.3", "--poll", "0.1")
            ready(db, successor)  # running (and reaping) before the kill
            victim.kill()
            victim.wait(DEADLINE)
            victim = successor
        run = run_ended(db, run_id)
        assert run["state"] == "succeeded", run["error_message"]
        assert (run["recoveries"], run["worker_id"]) == (2, worker_of(db, victim).worker_id)
        attempts = db.list_step_attempts(run_id)
        assert [(s["sequence"], s["attempt"], s["state"]) for s in attempts] == [
            (1, 1, "failed"), (1, 2, "succeeded"), (2, 1, "failed"), (2, 2, "succeeded")]
        for killed, worker in zip((attempts[0], attempts[2]), lost):
            assert worker.worker_id in killed["error_log"] and "gone" in killed["error_log"]
            assert not judged(killed)  # interrupted: it did not use up the task's attempt
        requeued = [e["data"] for e in db.list_events(run_id)
                    if e["event_type"] == "run.state_changed" and e["data"].get("redrive")]
        assert [(d["worker_id"], d["requeued"], d["recoveries"]) for d in requeued] == [
            (lost[0].worker_id, True, 1), (lost[1].worker_id, True, 2)]
        assert [c["data"]["worker_id"] for c in claims(db, run_id)][:2] == [
            w.worker_id for w in lost]
        assert len(claims(db, run_id)) == 3
    # the lost workers' tools were stopped by the reaper, never finished
    for pid in killed_tools:
        wait_until(lambda: not alive(pid), f"the killed worker's tool {pid} to be stopped")
    assert sorted(p.name for p in marks.glob("*.finished")) == sorted(
        f"{run_id}-{name}.finished" for name in ("T1-2", "T2-2"))
    # T1 ran twice (killed once), never again once committed; each task is on the branch once
    assert sorted(p.name for p in marks.glob("*.started")) == sorted(
        f"{run_id}-{name}.started" for name in ("T1-1", "T1-2", "T2-1", "T2-2"))
    entries = commits(repo, run)
    assert len(entries) == 2 and len({entry for _, entry in entries}) == 2, entries
    branch = run["metadata"]["branch"]
    assert git(repo, "show", f"{branch}:notes/T1.txt") == "T1 done"
    assert git(repo, "show", f"{branch}:notes/T2.txt") == "T2 done"
    victim.send_signal(signal.SIGTERM)
    assert victim.wait(DEADLINE) == 0, log_of(victim)
    for bad in NEVER_IN_OUTPUT:
        assert bad not in log_of(victim)


# -- 5. fencing -------------------------------------------------------------------------------

def test_a_paused_worker_reaped_then_continued_stops_without_writing(tmp_path, repo, marks,
                                                                     procs):
    ledger = str(tmp_path / "framework.db")
    init_db(ledger).close()
    path = workstream(tmp_path, repo, [{"task_id": "T1", "tool": "slow", "prompt": "go"}],
                      tools={"slow": slow(marks, 2)})
    paused = procs.worker(ledger, "--heartbeat", "0.3", "--poll", "0.1")
    with Database(ledger) as db:
        ready(db, paused)
        run_id = submit(db, load_workstream(path))["run_id"]
        tool_started(marks, run_id, "T1-1")
        stale = worker_of(db, paused)
        other = procs.worker(ledger, "--heartbeat", "0.5", "--poll", "0.1")
        taker = ready(db, other)
        paused.send_signal(signal.SIGSTOP)
        run = run_ended(db, run_id)
        assert run["state"] == "succeeded", run["error_message"]
        assert (run["recoveries"], run["worker_id"]) == (1, taker.worker_id)
        ready(db, other)  # released: it writes nothing more until new work comes
        reaped = [e["seq"] for e in db.events_since(0, limit=100_000)
                  if e["event_type"] == "worker.state_changed"
                  and e["data"]["worker_id"] == stale.worker_id
                  and e["data"]["to"] == "TERMINATED"]
        assert len(reaped) == 1
        cursor = db.latest_event_seq()
        before = (db.get_run(run_id), db.list_step_attempts(run_id))
        head = git(repo, "rev-parse", run["metadata"]["branch"])
        paused.send_signal(signal.SIGCONT)
        assert paused.wait(DEADLINE) == 3, log_of(paused)
        assert "fenced off" in log_of(paused)
        assert db.events_since(cursor, limit=100_000) == []
        assert (db.get_run(run_id), db.list_step_attempts(run_id)) == before
        after_reap = [e for e in db.events_since(reaped[0], limit=100_000)
                      if isinstance(e["data"], dict)
                      and e["data"].get("worker_id") == stale.worker_id]
        assert after_reap == []
        assert WorkerLifecycle(db).get_worker(stale.worker_id).state == "TERMINATED"
    assert git(repo, "rev-parse", run["metadata"]["branch"]) == head
    assert len(commits(repo, run)) == 1
    # its tool was stopped by the reaper while it was paused: it never finished
    assert not (marks / f"{run_id}-T1-1.finished").exists()
    assert (marks / f"{run_id}-T1-2.finished").exists()
    other.send_signal(signal.SIGTERM)
    assert other.wait(DEADLINE) == 0, log_of(other)


def test_a_stale_incarnation_of_a_worker_id_is_fenced_off_and_changes_nothing(ledger, tmp_path):
    db = Database(ledger)
    workers = WorkerLifecycle(db)
    old = Owner(db, "worker", heartbeat_s=0.5, worker_id="w")
    old.register()
    assert workers.terminate_lost("w", "lost in a test")
    new = Owner(db, "worker", heartbeat_s=0.5, worker_id="w")
    new.register()
    new.start_heartbeat()
    try:
        record = workers.get_worker("w")
        assert (record.state, record.incarnation) == ("IDLE", new.incarnation)
        assert new.incarnation != old.incarnation
        run_id = db.create_run({"project_id": "PRJ", "phase_id": "PH-1", "priority": 0})

        def snapshot():
            w = workers.get_worker("w")
            return (w.state, w.incarnation, w.current_run_id, db.list_runs(limit=None),
                    db.latest_event_seq())
        before = snapshot()
        with pytest.raises(StaleWorkerError):
            workers.heartbeat("w", incarnation=old.incarnation)
        with pytest.raises(StaleWorkerError):
            workers.claim_run("w", incarnation=old.incarnation, queued=True)
        with pytest.raises(StaleWorkerError):
            with db.fenced("w", old.incarnation):
                db.create_run({"project_id": "PRJ", "phase_id": "PH-1"})
        with pytest.raises(StaleWorkerError):
            with db.fenced("w", old.incarnation):
                db.transition_run(run_id, "canceled")
        assert snapshot() == before
        # the old incarnation's heartbeat thread learns it is fenced off (and stops beating)
        old.start_heartbeat()
        wait_until(lambda: old.lost, "the stale heartbeat to be refused")
        assert "fenced off" in old.lost and snapshot() == before
        # the live incarnation works on
        assert workers.claim_run("w", incarnation=new.incarnation, queued=True)[
            "run_id"] == run_id
        # and keeps its id: another process cannot take it while it lives
        script = ("import sys\nfrom uet.state import Database\nfrom uet.state.recovery "
                  "import Owner\ntry:\n    Owner(Database(sys.argv[1]), 'worker', "
                  "worker_id='w').register()\nexcept Exception as exc:\n"
                  "    print(type(exc).__name__, exc)\nelse:\n    print('registered')\n")
        other = subprocess.run([PY, "-c", script, ledger], capture_output=True, text=True,
                               timeout=DEADLINE, env=env())
        assert other.stdout.startswith("ValidationError ") and "already running" in \
            other.stdout, other.stdout + other.stderr
        assert workers.get_worker("w").incarnation == new.incarnation
        # so does `uet worker --id`: refused, and said in one line; not a clean exit 0
        refused = uet("worker", "--db", ledger, "--id", "w", "--once", cwd=tmp_path)
        assert "already running" in refused.stderr, refused.stderr
        assert refused.returncode != 0, refused.stderr
        assert "WorkerState." not in refused.stderr, refused.stderr  # "BUSY", as elsewhere
    finally:
        new.close()
        db.close()


# -- 6. drain and cancel ----------------------------------------------------------------------

def test_sigterm_drains_the_current_task_and_hands_the_run_back(tmp_path, repo, marks, procs):
    ledger = str(tmp_path / "framework.db")
    init_db(ledger).close()
    path = workstream(tmp_path, repo, [
        {"task_id": "T1", "tool": "slow", "prompt": "go"},
        {"task_id": "T2", "tool": "editor", "prompt": "write notes/T2.txt\nsecond",
         "depends_on": ["T1"]}], tools={"slow": slow(marks, 2), "editor": editor()})
    draining = procs.worker(ledger, "--heartbeat", "0.3", "--poll", "0.1")
    with Database(ledger) as db:
        ready(db, draining)
        run_id = submit(db, load_workstream(path))["run_id"]
        tool_started(marks, run_id, "T1-1")
        draining.send_signal(signal.SIGTERM)
        assert draining.wait(DEADLINE) == 0, log_of(draining)
        run = db.get_run(run_id)
        assert (run["state"], run["worker_id"]) == ("pending", None), run
        assert steps(db, run_id) == [(1, 1, "succeeded")]
        back = [e["data"] for e in db.list_events(run_id)
                if e["event_type"] == "run.state_changed" and e["data"]["to"] == "pending"]
        assert len(back) == 1 and "handed back" in back[0]["reason"], back
        assert "draining" in back[0]["reason"]
        assert worker_of(db, draining).state == "TERMINATED"
    assert (marks / f"{run_id}-T1-1.finished").exists()  # T1's tool was let finish
    assert len(commits(repo, run)) == 1
    once = uet("worker", "--db", ledger, "--once", "--heartbeat", "0.5", cwd=tmp_path)
    assert once.returncode == 0, once.stderr
    with Database(ledger) as db:
        run = db.get_run(run_id)
        assert run["state"] == "succeeded", run["error_message"]
        assert steps(db, run_id) == [(1, 1, "succeeded"), (2, 1, "succeeded")]
        assert len(claims(db, run_id)) == 2
    assert sorted(p.name for p in marks.glob("*.started")) == [f"{run_id}-T1-1.started"]
    assert len(commits(repo, run)) == 2
    branch = run["metadata"]["branch"]
    assert git(repo, "show", f"{branch}:notes/T1.txt") == "T1 done"
    assert git(repo, "show", f"{branch}:notes/T2.txt") == "second"


def test_a_second_sigterm_stops_the_tool_and_cancels_the_run(tmp_path, repo, marks, procs):
    ledger = str(tmp_path / "framework.db")
    init_db(ledger).close()
    path = workstream(tmp_path, repo, [{"task_id": "T1", "tool": "slow", "prompt": "go"}],
                      tools={"slow": slow(marks, 120)})
    with Database(ledger) as db:
        run_id = submit(db, load_workstream(path))["run_id"]
        worker = procs.worker(ledger, "--once", "--heartbeat", "0.3")
        tool = tool_started(marks, run_id, "T1-1")
        worker.send_signal(signal.SIGTERM)
        # the first one was handled (the slot shows DRAINING) before the second is sent
        wait_until(lambda: worker_of(db, worker).state == "DRAINING", "the worker to drain")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(DEADLINE) == 130, log_of(worker)
        run = db.get_run(run_id)
        assert run["state"] == "canceled" and "second SIGTERM" in run["error_message"], run
        assert steps(db, run_id) == [(1, 1, "canceled")]
        assert worker_of(db, worker).state == "TERMINATED"
    assert not alive(tool)
    assert not (marks / f"{run_id}-T1-1.finished").exists()
    assert commits(repo, run) == []


# -- 7. a poison run --------------------------------------------------------------------------

@pytest.mark.parametrize("resume, max_recoveries", [("auto", 1), ("manual", 3)])
def test_a_run_that_kills_its_workers_is_requeued_within_its_budget_then_failed(
        tmp_path, repo, marks, procs, resume, max_recoveries):
    ledger = str(tmp_path / "framework.db")
    init_db(ledger).close()
    # the tool's parent is the worker process (run_process starts it with Popen, no shell
    # in between): it notes that parent, then kills it outright
    killer = {"command": ["sh", "-c", f'echo $PPID > "{marks}/$UET_RUN_ID-{{attempt}}.ppid"; '
                          "kill -9 $PPID"], "timeout_seconds": 60}
    path = workstream(tmp_path, repo, [{"task_id": "T1", "tool": "killer", "prompt": "die"}],
                      tools={"killer": killer}, resume=resume, max_recoveries=max_recoveries)
    with Database(ledger) as db:
        run_id = submit(db, load_workstream(path))["run_id"]
    died = []
    expected_deaths = 2 if resume == "auto" else 1  # the first take, and one per recovery
    for attempt in range(1, expected_deaths + 1):
        proc = procs.worker(ledger, "--once", "--heartbeat", "0.5")
        died.append(proc.wait(DEADLINE))
        assert int((marks / f"{run_id}-{attempt}.ppid").read_text()) == proc.pid
    assert died == [-signal.SIGKILL] * expected_deaths
    last = uet("worker", "--db", ledger, "--once", "--heartbeat", "0.5", cwd=tmp_path)
    assert last.returncode == 0 and "no queued run" in last.stderr, last.stderr
    with Database(ledger) as db:
        run = db.get_run(run_id)
        assert run["state"] == "failed", run
        if resume == "auto":
            assert run["recoveries"] == 1
            assert "max_recoveries 1" in run["error_message"], run["error_message"]
        else:
            assert run["recoveries"] == 0
            assert "resume: manual" in run["error_message"], run["error_message"]
        assert len(claims(db, run_id)) == expected_deaths
        assert [s for _, _, s in steps(db, run_id)] == ["failed"] * expected_deaths
    assert len(list(marks.glob("*.ppid"))) == expected_deaths
    again = uet("worker", "--db", ledger, "--once", "--heartbeat", "0.5", cwd=tmp_path)
    assert again.returncode == 0 and "no queued run" in again.stderr, again.stderr
    with Database(ledger) as db:
        assert db.get_run(run_id)["state"] == "failed"
        assert len(claims(db, run_id)) == expected_deaths


# -- 8. the queue's order, property-style -----------------------------------------------------

BASE_TIME = datetime(2026, 1, 31, 12, 0, tzinfo=timezone.utc)
QUEUE = st.lists(st.tuples(st.one_of(st.none(), st.integers(-3, 3)),  # priority
                           st.integers(0, 4),                           # created_at, s
                           st.sampled_from(["pending", "pending", "pending", "canceled"])),
                 min_size=0, max_size=14)


@pytest.mark.parametrize("where", ["memory", "file"])
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(runs=QUEUE, order=st.randoms(use_true_random=False))
def test_claims_follow_priority_then_age_then_id_and_take_each_run_once(where, runs, order):
    with tempfile.TemporaryDirectory(prefix="uet-queue-") as folder:
        db = init_db(":memory:" if where == "memory" else os.path.join(folder, "f.db"))
        try:
            names = [f"run-{k:02d}" for k in range(len(runs))]
            order.shuffle(names)  # ids and creation order independent of time and priority
            rows = []
            for name, (priority, second, state) in zip(names, runs):
                created = (BASE_TIME + timedelta(seconds=second)).strftime(
                    "%Y-%m-%dT%H:%M:%S.%fZ")
                record = {"run_id": name, "project_id": "P", "phase_id": "PH",
                          "created_at": created}
                if priority is not None:
                    record["priority"] = priority
                db.create_run(record)
                if state == "canceled":
                    db.transition_run(name, "canceled")
                rows.append((name, priority, created, state))
            workers = WorkerLifecycle(db)
            workers.spawn_worker("w", "worker", {})
            workers.transition_state("w", "IDLE")
            taken = []
            while (run := workers.claim_run("w", queued=True)) is not None:
                taken.append(run["run_id"])
                db.transition_run(run["run_id"], "succeeded", exit_code=0)
                workers.release("w")
            expected = [name for name, priority, created, state in sorted(
                rows, key=lambda r: (-(r[1] or 0), r[2], r[0]))
                if priority is not None and state == "pending"]
            assert taken == expected
            left = {r["run_id"]: r["state"] for r in db.list_runs(limit=None)}
            for name, priority, _, state in rows:
                assert left[name] == ("succeeded" if priority is not None
                                      and state == "pending" else state)
        finally:
            db.close()


def test_a_worker_waits_out_a_busy_ledger_instead_of_giving_up(tmp_path, repo):
    """Another process holds SQLite's write lock past the worker's busy timeout: the idle
    worker says so, tries again, and runs the queued run once the lock is free."""
    import sqlite3
    import threading
    from uet.engine.pool import WorkerPool
    ledger = str(tmp_path / "framework.db")
    path = workstream(tmp_path, repo, [
        {"task_id": "T1", "tool": "editor", "prompt": "append app.txt\nmore"}])
    with Database(ledger) as db:
        run_id = submit(db, load_workstream(path))["run_id"]
    holder = sqlite3.connect(ledger, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # the write lock, held by another connection
    lines: list[str] = []
    release = threading.Timer(2.5, lambda: holder.execute("COMMIT"))
    release.start()
    try:
        report = WorkerPool(ledger, once=True, busy_timeout=0.2, heartbeat_s=5,
                            out=lines.append).run(handle_signals=False)
    finally:
        release.join()
        holder.close()
    assert any("busy or out of reach" in line for line in lines), lines
    assert [r.run_id for r in report.results] == [run_id]
    assert report.exit_code(once=True) == 0 and report.error is None
    with Database(ledger) as db:
        assert db.get_run(run_id)["state"] == "succeeded"

"""The orchestrator end to end on real git repositories and real subprocesses: every change a
patch that is validated, applied, judged by the gates and only then committed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from uet.engine.orchestrator import run_workstream
from uet.engine.workstream import load_workstream
from uet.state import GateLedger, PatchLedger, init_db
from uet.state.recovery import request_cancel

EDITOR = str(Path(__file__).resolve().parents[2] / "examples" / "tools" / "stand_in_editor.py")
LINT = ("import pathlib, sys; bad = [str(p) for p in pathlib.Path('.').rglob('*.py') "
        "if 'TODO' in p.read_text()]; print('lint:', bad or 'clean'); sys.exit(1 if bad else 0)")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path) -> Path:
    """A small project: src/app.py and a test script the unit gate runs."""
    path = tmp_path / "project"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "Test")
    git(path, "config", "user.email", "test@example.invalid")
    (path / "src").mkdir()
    (path / "src" / "app.py").write_text("VALUE = 1\n")
    (path / "check.py").write_text(
        "import pathlib, sys\n"
        "text = pathlib.Path('src/app.py').read_text()\n"
        "print('app:', text.strip())\n"
        "sys.exit(0 if 'BROKEN' not in text else 3)\n")
    (path / "docs").mkdir()
    (path / "docs" / "guide.md").write_text("guide\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path


def snapshot(repo: Path) -> tuple:
    """What the target's own checkout looks like: HEAD, index, status, branches but uet's."""
    branches = [b for b in git(repo, "branch", "--format=%(refname:short)").splitlines()
                if not b.startswith("uet/")]
    return (git(repo, "rev-parse", "HEAD"), git(repo, "status", "--porcelain"),
            git(repo, "ls-files", "-s"), branches)


def workstream(tmp_path: Path, repo: Path, tasks: list[dict], **extra) -> Path:
    data = {
        "workstream_id": "WS-TEST", "project_id": "PRJ", "phase_id": "PH-1",
        "repo": str(repo),
        "files_scope": {"modify": ["src/**"], "create": ["src/**", "tests/**"],
                        "read_only": ["docs/**"]},
        "tools": {"editor": {"command": [sys.executable, EDITOR, "{prompt_file}",
                                         "{feedback_file}"], "timeout_seconds": 60}},
        "tasks": tasks,
        "gates": [{"name": "lint", "type": "LINT", "command": [sys.executable, "-c", LINT]},
                  {"name": "unit", "type": "UNIT", "command": [sys.executable, "check.py"],
                   "depends_on": ["lint"]}],
        **extra}
    path = tmp_path / "ws.json"
    path.write_text(json.dumps(data))
    return path


def run(db, path: Path, **options):
    return run_workstream(db, load_workstream(path), handle_signals=False, **options)


@pytest.fixture
def db():
    database = init_db(":memory:")
    yield database
    database.close()


def test_every_task_is_committed_on_the_runs_branch_and_nothing_else_changes(db, tmp_path,
                                                                            repo):
    before = snapshot(repo)
    path = workstream(tmp_path, repo, [
        {"task_id": "T1", "tool": "editor", "prompt": "write src/app.py\nVALUE = 2"},
        {"task_id": "T2", "tool": "editor", "prompt": "write tests/test_app.py\nassert True",
         "depends_on": ["T1"]}])
    result = run(db, path)
    assert result.state == "succeeded", result.error
    assert [result.tasks[t].outcome for t in ("T1", "T2")] == ["committed", "committed"]
    assert snapshot(repo) == before  # the target's checkout, index and branches
    log = [line for line in git(repo, "log", "--format=%H %(trailers:key=Uet-Entry,valueonly)",
                                f"{result.base}..{result.branch}").splitlines() if line]
    assert len(log) == 2
    assert git(repo, "show", f"{result.branch}:src/app.py") == "VALUE = 2"
    run_row = db.get_run(result.run_id)
    assert run_row["state"] == "succeeded" and run_row["workstream_id"] == "WS-TEST"
    steps = db.list_step_attempts(result.run_id)
    assert [(s["sequence"], s["attempt"], s["state"]) for s in steps] == [
        (1, 1, "succeeded"), (2, 1, "succeeded")]
    entries = PatchLedger(db).list_entries()
    assert sorted(e.state.value for e in entries) == ["committed", "committed"]
    assert {e.ledger_id for e in entries} == {line.split()[1] for line in log}
    gates = GateLedger(db).list_gates(run_id=result.run_id)
    assert len(gates) == 4 and {g["state"] for g in gates} == {"PASSED"}
    types = [e["event_type"] for e in db.events_since(0, run_id=result.run_id, limit=10_000)]
    for expected in ("task.started", "patch.captured", "gate.finished", "task.finished"):
        assert expected in types
    assert not [w for w in git(repo, "worktree", "list", "--porcelain").splitlines()
                if w.startswith("worktree ") and "uet-worktrees" in w]


def test_a_failing_gate_quarantines_the_patch_and_the_retry_gets_its_output(db, tmp_path,
                                                                           repo):
    prompt = ("first write src/app.py\nVALUE = 'BROKEN'\n%%\n"
              "retry write src/app.py\nVALUE = 3")
    path = workstream(tmp_path, repo, [{"task_id": "T1", "tool": "editor", "prompt": prompt,
                                        "max_attempts": 2}])
    result = run(db, path)
    assert result.state == "succeeded", result.error
    assert result.tasks["T1"].attempts == 2
    steps = db.list_step_attempts(result.run_id)
    assert [(s["attempt"], s["state"]) for s in steps] == [(1, "failed"), (2, "succeeded")]
    assert steps[0]["error_log"] == "gate unit failed (exit 3)"
    entries = sorted(PatchLedger(db).list_entries(), key=lambda e: e.created_at)
    assert [e.state.value for e in entries] == ["quarantined", "committed"]
    assert entries[0].quarantine_reason == "gate unit failed (exit 3)"
    assert git(repo, "show", f"{result.branch}:src/app.py") == "VALUE = 3"
    assert len(git(repo, "log", "--format=%H", f"{result.base}..{result.branch}")
               .splitlines()) == 1


@pytest.mark.parametrize("prompt, reason", [
    ("write docs/guide.md\nchanged", "docs/guide.md"),
    ("write config/settings.py\nX = 1", "config/settings.py"),
])
def test_a_change_outside_the_scope_is_quarantined_and_dependents_are_skipped(
        db, tmp_path, repo, prompt, reason):
    path = workstream(tmp_path, repo, [
        {"task_id": "T1", "tool": "editor", "prompt": prompt},
        {"task_id": "T2", "tool": "editor", "prompt": "write src/b.py\nB = 1",
         "depends_on": ["T1"]}])
    result = run(db, path)
    assert result.state == "failed"
    assert result.tasks["T1"].outcome == "failed" and reason in result.tasks["T1"].reason
    assert result.tasks["T2"].outcome == "skipped"
    assert "T1" in result.error and "T2" in result.error
    entry = PatchLedger(db).list_entries()[0]
    assert entry.state.value == "quarantined" and reason in entry.quarantine_reason
    assert result.head == result.base  # nothing committed
    assert db.get_run(result.run_id)["state"] == "failed"


def test_policy_limits_quarantine_the_patch(db, tmp_path, repo):
    path = workstream(tmp_path, repo, [{"task_id": "T1", "tool": "editor",
                                        "prompt": "write src/big.py\n" + "x = 1\n" * 20}],
                      policy={"max_lines_changed": 5})
    result = run(db, path)
    assert result.state == "failed"
    assert "max_lines_changed" in PatchLedger(db).list_entries()[0].quarantine_reason


@pytest.mark.parametrize("allow_empty, state", [(False, "failed"), (True, "succeeded")])
def test_an_empty_change_fails_unless_the_task_allows_it(db, tmp_path, repo, allow_empty,
                                                         state):
    path = workstream(tmp_path, repo, [{"task_id": "T1", "tool": "editor", "prompt": "",
                                        "allow_empty": allow_empty}])
    result = run(db, path)
    assert result.state == state
    assert PatchLedger(db).list_entries() == []


def test_a_tool_that_fails_or_times_out_fails_its_attempt(db, tmp_path, repo):
    path = workstream(tmp_path, repo, [
        {"task_id": "T1", "tool": "editor", "prompt": "fail cannot do it"},
        {"task_id": "T2", "tool": "slow", "prompt": "x"}],
        tools={"editor": {"command": [sys.executable, EDITOR, "{prompt_file}"]},
               "slow": {"command": [sys.executable, "-c", "import time; time.sleep(60)"],
                        "timeout_seconds": 0.5}})
    result = run(db, path)
    steps = {s["sequence"]: s for s in db.list_step_attempts(result.run_id)}
    assert steps[1]["state"] == "failed" and steps[1]["exit_code"] == 1
    assert "cannot do it" in steps[1]["metadata"]["stderr_tail"]
    assert steps[2]["state"] == "failed" and steps[2]["exit_code"] == 124
    assert "timed out" in steps[2]["error_log"]
    assert result.state == "failed"


def test_parallel_tasks_whose_patches_conflict_are_retried_on_the_new_head(db, tmp_path,
                                                                          repo):
    path = workstream(tmp_path, repo, [
        {"task_id": f"T{i}", "tool": "editor", "max_attempts": 2,
         "prompt": f"first write src/app.py\nVALUE = {10 + i}\n%%\n"
                   f"retry append src/app.py\nOTHER_{i} = {i}"} for i in (1, 2)])
    result = run(db, path, parallel=2)
    assert result.state == "succeeded", result.error
    attempts = sorted(result.tasks[t].attempts for t in ("T1", "T2"))
    assert attempts == [1, 2]  # the second to merge saw a conflict and was retried
    entries = PatchLedger(db).list_entries()
    assert sorted(e.state.value for e in entries) == ["committed", "committed", "quarantined"]
    quarantined = [e for e in entries if e.state.value == "quarantined"][0]
    assert "conflict" in quarantined.quarantine_reason or "apply" in \
        quarantined.quarantine_reason
    assert len(git(repo, "log", "--format=%H", f"{result.base}..{result.branch}")
               .splitlines()) == 2


def test_a_cancel_request_stops_the_tool_and_ends_the_run_canceled(db, tmp_path, repo):
    path = workstream(tmp_path, repo, [{"task_id": "T1", "tool": "slow", "prompt": "x"}],
                      tools={"slow": {"command": [sys.executable, "-c",
                                                  "import time; time.sleep(120)"]}})
    results = []
    thread = threading.Thread(target=lambda: results.append(run(db, path)))
    thread.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        runs = db.list_runs({"workstream_id": "WS-TEST"})
        if runs and db.list_step_attempts(runs[0]["run_id"]):
            break
        time.sleep(0.05)
    request_cancel(db, runs[0]["run_id"], by="test")
    thread.join(60)
    assert results and results[0].state == "canceled"
    assert db.get_run(results[0].run_id)["state"] == "canceled"
    assert db.list_step_attempts(results[0].run_id)[0]["state"] == "canceled"


def test_the_ledger_can_be_a_shared_file_or_postgresql(ledger, tmp_path, repo):
    with init_db(ledger) as shared:
        path = workstream(tmp_path, repo, [
            {"task_id": "T1", "tool": "editor", "prompt": "write src/app.py\nVALUE = 9"}])
        result = run(shared, path)
        assert result.state == "succeeded", result.error
        assert shared.get_run(result.run_id)["state"] == "succeeded"
        assert os.path.isdir(repo)


def _uet(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "UET_DATABASE"}
    return subprocess.run([sys.executable, "-m", "uet", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_uet_run_with_a_workstream_file_runs_it_and_exits_with_its_outcome(tmp_path, repo):
    good = workstream(tmp_path, repo, [
        {"task_id": "T1", "tool": "editor", "prompt": "write src/app.py\nVALUE = 5"}])
    good_text = good.read_text()
    ledger = str(tmp_path / "ledger.db")
    done = _uet("run", "--db", ledger, "--json", str(good), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["state"] == "succeeded" and report["tasks"]["T1"]["outcome"] == "committed"
    assert "task T1 committed" in done.stderr
    bad = workstream(tmp_path, repo, [
        {"task_id": "T1", "tool": "editor", "prompt": "write docs/guide.md\nno"}])
    failed = _uet("run", "--db", ledger, str(bad), cwd=tmp_path)
    assert failed.returncode == 1 and "docs/guide.md" in failed.stderr
    shown = _uet("show", "--db", ledger, report["run_id"], cwd=tmp_path)
    assert shown.returncode == 0 and "succeeded" in shown.stdout
    # the workstream file the run keeps (for resume) is named, not printed, in the table
    assert "the workstream file," in shown.stdout and "files_scope" not in shown.stdout
    whole = json.loads(_uet("show", "--db", ledger, "--json", report["run_id"],
                            cwd=tmp_path).stdout)
    assert whole["run"]["metadata"]["workstream"]["content"] == good_text


def test_an_invalid_workstream_file_records_nothing(tmp_path, repo):
    path = tmp_path / "broken.yaml"
    path.write_text("workstream_id: W\ntools: {editor: {command: [x]}}\n"
                    "tasks: [{task_id: T, tool: edtor}]\n")
    ledger = tmp_path / "ledger.db"
    done = _uet("run", "--db", str(ledger), str(path), cwd=tmp_path)
    assert done.returncode == 2 and "edtor" in done.stderr
    assert not ledger.exists()


def test_uet_run_still_records_a_command(tmp_path):
    done = _uet("run", "--db", str(tmp_path / "l.db"), "--", sys.executable, "-c",
                "print('hi')", cwd=tmp_path)
    assert done.returncode == 0 and "hi" in done.stdout


# -- crash and resume ----------------------------------------------------------------------

def _three_tasks(tmp_path: Path, repo: Path) -> Path:
    return workstream(tmp_path, repo, [
        {"task_id": "T1", "tool": "editor", "prompt": "write src/one.py\nONE = 1"},
        {"task_id": "T2", "tool": "editor", "prompt": "write src/two.py\nTWO = 2",
         "depends_on": ["T1"], "max_attempts": 3},
        {"task_id": "T3", "tool": "editor", "prompt": "write tests/test_three.py\nX = 3",
         "max_attempts": 3}])


def _entry_commits(repo: Path, base: str, branch: str) -> list[str]:
    out = git(repo, "log", "--format=%(trailers:key=Uet-Entry,valueonly)", f"{base}..{branch}")
    return [line for line in out.splitlines() if line]


@pytest.mark.parametrize("seed", range(6))
def test_a_run_killed_at_any_instant_resumes_without_doing_anything_twice(tmp_path, repo,
                                                                          seed):
    import random
    path = _three_tasks(tmp_path, repo)
    ledger = str(tmp_path / "ledger.db")
    env = {k: v for k, v in os.environ.items() if k != "UET_DATABASE"}
    proc = subprocess.Popen([sys.executable, "-m", "uet", "run", "--db", ledger, str(path)],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(random.Random(seed).uniform(0.3, 2.5))  # a seeded instant of the run
    proc.kill()
    proc.wait()
    with init_db(ledger) as db:
        runs = db.list_runs()
        if not runs:
            return  # killed before the run was recorded: nothing to resume
        run_id = runs[0]["run_id"]
        finished_before = db.get_run(run_id)["state"] == "succeeded"
    if not finished_before:
        done = _uet("resume", "--db", ledger, "--json", run_id, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["state"] == "succeeded"
    with init_db(ledger) as db:
        run = db.get_run(run_id)
        assert run["state"] == "succeeded"
        committed = [e for e in PatchLedger(db).list_entries() if e.state.value == "committed"]
        trailers = _entry_commits(repo, run["metadata"]["base"], run["metadata"]["branch"])
        assert sorted(trailers) == sorted(e.ledger_id for e in committed)  # git == ledger
        assert len(trailers) == len(set(trailers)) == 3  # every task once, none twice
        assert not [s for s in db.list_step_attempts(run_id) if s["state"] == "running"]


def test_resume_takes_the_commit_a_crash_left_unrecorded_and_does_not_redo_it(db, tmp_path,
                                                                             repo):
    """A crash between the git commit and the ledger write: resume finds the commit on the
    branch by its trailer, settles the entry as committed and runs the task no more."""
    from uet.engine import orchestrator as orchestrator_module
    path = _three_tasks(tmp_path, repo)
    original = orchestrator_module.PatchLedger.transition_state

    def crash_when_committing(self, ledger_id, new_state, reason="", **kw):
        if new_state == "committed":
            raise KeyboardInterrupt("killed between commit and ledger")
        return original(self, ledger_id, new_state, reason, **kw)

    orchestrator_module.PatchLedger.transition_state = crash_when_committing
    try:
        with pytest.raises(KeyboardInterrupt):
            run(db, path)
    finally:
        orchestrator_module.PatchLedger.transition_state = original
    run_id = db.list_runs()[0]["run_id"]
    assert db.get_run(run_id)["state"] == "failed"  # the owner's exit failed its run
    from uet.engine.resume import resume_run
    result = resume_run(db, run_id)
    assert result.state == "succeeded", result.error
    meta = db.get_run(run_id)["metadata"]
    trailers = _entry_commits(repo, meta["base"], meta["branch"])
    assert len(trailers) == len(set(trailers)) == 3
    first = [e for e in PatchLedger(db).list_entries() if e.ledger_id == trailers[-1]][0]
    assert first.state.value == "committed"
    assert "found on the branch" in first.state_history[-1]["reason"]
    assert [s["sequence"] for s in db.list_step_attempts(run_id)].count(1) == 1


def test_a_run_whose_branch_with_commits_is_gone_is_not_resumed(db, tmp_path, repo):
    path = workstream(tmp_path, repo, [
        {"task_id": "T1", "tool": "editor", "prompt": "write src/app.py\nVALUE = 7"},
        {"task_id": "T2", "tool": "editor", "prompt": "fail no"}])
    result = run(db, path)
    assert result.state == "failed" and result.tasks["T1"].outcome == "committed"
    git(repo, "branch", "-D", result.branch)
    from uet.engine.resume import ResumeError, resume_run
    with pytest.raises(ResumeError, match="branch .* is gone"):
        resume_run(db, result.run_id)
    assert db.get_run(result.run_id)["state"] == "failed"


def test_a_branch_never_made_is_made_on_resume(db, tmp_path, repo):
    """Stopped before its branch existed: nothing was committed, so resuming makes the
    branch from the run's base (here the task has no attempts left: it stays failed)."""
    path = workstream(tmp_path, repo, [
        {"task_id": "T1", "tool": "editor", "prompt": "fail once", "max_attempts": 2}])
    result = run(db, path)
    git(repo, "branch", "-D", result.branch)  # as if the run had stopped before making it
    from uet.engine.resume import resume_run
    again = resume_run(db, result.run_id)
    assert again.state == "failed" and again.tasks["T1"].attempts == 2
    assert git(repo, "rev-parse", again.branch) == result.base


def test_only_failed_or_canceled_workstream_runs_are_resumed(db, tmp_path, repo):
    from uet.engine.resume import ResumeError, resume_run
    path = workstream(tmp_path, repo, [{"task_id": "T1", "tool": "editor",
                                        "prompt": "write src/app.py\nVALUE = 4"}])
    result = run(db, path)
    with pytest.raises(ResumeError, match="succeeded"):
        resume_run(db, result.run_id)
    plain = db.create_run({"project_id": "p", "phase_id": "ph"})
    db.transition_run(plain, "canceled")
    with pytest.raises(ResumeError, match="not a workstream run"):
        resume_run(db, plain)


def test_in_process_subscribers_follow_the_run(db, tmp_path, repo):
    from uet.engine.bus import EventBus
    bus = EventBus(db)
    seen = []
    bus.subscribe("task.*", lambda e: seen.append((e["event_type"], e["data"]["task_id"])))
    committed = []
    bus.subscribe("patch_entry.state_changed",
                  lambda e: e["data"]["to"] == "committed" and committed.append(e))
    path = workstream(tmp_path, repo, [
        {"task_id": "T1", "tool": "editor", "prompt": "write src/app.py\nVALUE = 8"}])
    result = run_workstream(db, load_workstream(path), bus=bus, handle_signals=False)
    assert result.state == "succeeded"
    assert seen == [("task.started", "T1"), ("task.finished", "T1")]
    assert len(committed) == 1


def test_sigint_cancels_a_workstream_run_and_removes_its_worktrees(tmp_path, repo):
    import signal as signals
    path = workstream(tmp_path, repo, [{"task_id": "T1", "tool": "slow", "prompt": "x"}],
                      tools={"slow": {"command": [sys.executable, "-c",
                                                  "import time; time.sleep(120)"]}})
    ledger = str(tmp_path / "ledger.db")
    env = {k: v for k, v in os.environ.items() if k != "UET_DATABASE"}
    proc = subprocess.Popen([sys.executable, "-m", "uet", "run", "--db", ledger, str(path)],
                            cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    line = ""
    while "attempt 1" not in line:
        line = proc.stderr.readline()
        assert line, "uet run ended before the tool started"
    proc.send_signal(signals.SIGINT)
    assert proc.wait(60) == 130
    proc.stderr.close()
    with init_db(ledger) as db:
        run_row = db.list_runs()[0]
        assert run_row["state"] == "canceled" and "SIGINT" in run_row["error_message"]
    assert "uet-worktrees" not in git(repo, "worktree", "list")


def test_refs_a_tool_makes_in_the_target_are_reported(db, tmp_path, repo):
    """A tool shares the target's branches through its worktree; what it does to them is
    recorded on its attempt (uet never undoes it: the user may be working there too)."""
    script = "import subprocess; subprocess.run(['git', 'branch', 'tool-made'], check=True);" \
             "open('src/app.py', 'w').write('VALUE = 6\\n')"
    path = workstream(tmp_path, repo, [{"task_id": "T1", "tool": "brancher", "prompt": "x"}],
                      tools={"brancher": {"command": [sys.executable, "-c", script]}})
    result = run(db, path)
    assert result.state == "succeeded", result.error
    step = db.list_step_attempts(result.run_id)[0]
    assert step["metadata"]["refs_changed_by_tool"] == [
        f"refs/heads/tool-made: made at {result.base[:12]}"]
    assert "tool.refs_changed" in [e["event_type"] for e in
                                   db.events_since(0, run_id=result.run_id, limit=1000)]


def test_an_interrupted_attempt_does_not_use_up_the_tasks_attempts(db, tmp_path, repo):
    """max_attempts 1, canceled while its tool runs: resuming runs the task again (attempt
    2 in the ledger), since the first attempt got no verdict."""
    flag = tmp_path / "go"
    script = (f"import os, time\nwhile not os.path.exists({str(flag)!r}): time.sleep(0.05)\n"
              "open('src/app.py', 'w').write('VALUE = 12\\n')")
    path = workstream(tmp_path, repo, [{"task_id": "T1", "tool": "waiter", "prompt": "x"}],
                      tools={"waiter": {"command": [sys.executable, "-c", script]}})
    results = []
    thread = threading.Thread(target=lambda: results.append(run(db, path)))
    thread.start()
    deadline = time.monotonic() + 30
    while not (db.list_runs() and db.list_step_attempts(db.list_runs()[0]["run_id"])):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    request_cancel(db, db.list_runs()[0]["run_id"], by="test")
    thread.join(60)
    assert results[0].state == "canceled"
    flag.write_text("")
    from uet.engine.resume import resume_run
    again = resume_run(db, results[0].run_id)
    assert again.state == "succeeded", again.error
    steps = db.list_step_attempts(again.run_id)
    assert [(s["attempt"], s["state"]) for s in steps] == [(1, "canceled"), (2, "succeeded")]


@pytest.mark.parametrize("stop_at", ["commit", "applied"])
def test_a_stop_after_the_gates_or_the_apply_is_settled_by_resume(db, tmp_path, repo, stop_at):
    """Killed after the gates passed but before the git commit: resume commits the verified
    patch once, without running the task again. Killed after the apply: the entry is
    quarantined as interrupted and the task runs again."""
    from uet.engine import orchestrator as orchestrator_module
    from uet.engine.resume import resume_run
    path = _three_tasks(tmp_path, repo)
    target = {"commit": (orchestrator_module.git, "commit_index"),
              "applied": (orchestrator_module.Orchestrator, "_judge")}[stop_at]
    original = getattr(*target)

    def stop(*args, **kwargs):
        raise KeyboardInterrupt(f"killed at {stop_at}")

    setattr(*target, stop)
    try:
        with pytest.raises(KeyboardInterrupt):
            run(db, path)
    finally:
        setattr(*target, original)
    run_id = db.list_runs()[0]["run_id"]
    result = resume_run(db, run_id)
    assert result.state == "succeeded", result.error
    meta = db.get_run(run_id)["metadata"]
    trailers = _entry_commits(repo, meta["base"], meta["branch"])
    assert len(trailers) == len(set(trailers)) == 3
    first_task_steps = [s for s in db.list_step_attempts(run_id) if s["sequence"] == 1]
    states = sorted(e.state.value for e in PatchLedger(db).list_entries())
    if stop_at == "commit":
        assert len(first_task_steps) == 1 and states == ["committed"] * 3
    else:
        assert len(first_task_steps) == 2 and states == ["committed"] * 3 + ["quarantined"]


@pytest.mark.parametrize("left", ["tool", "gate"])
def test_what_a_killed_orchestrator_left_running_is_stopped_by_the_reaper(tmp_path, repo,
                                                                          left):
    from uet.state.recovery import recover
    marker = tmp_path / "process.pid"
    script = (f"import os, time\nopen({str(marker)!r}, 'w').write(str(os.getpid()))\n"
              "time.sleep(600)")
    if left == "tool":
        path = workstream(tmp_path, repo, [{"task_id": "T1", "tool": "sleeper",
                                            "prompt": "x"}],
                          tools={"sleeper": {"command": [sys.executable, "-c", script]}})
    else:
        path = workstream(tmp_path, repo, [{"task_id": "T1", "tool": "editor",
                                            "prompt": "write src/app.py\nVALUE = 13"}],
                          gates=[{"name": "slow", "type": "UNIT",
                                  "command": [sys.executable, "-c", script]}])
    ledger = str(tmp_path / "ledger.db")
    env = {k: v for k, v in os.environ.items() if k != "UET_DATABASE"}
    proc = subprocess.Popen([sys.executable, "-m", "uet", "run", "--db", ledger, str(path)],
                            cwd=tmp_path, env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not marker.exists() or not marker.read_text():
        assert time.monotonic() < deadline, f"the {left} never started"
        time.sleep(0.05)
    tool_pid = int(marker.read_text())
    with init_db(ledger) as db:  # the group is recorded before the process gets to run long
        while db.list_step_attempts(db.list_runs()[0]["run_id"])[0]["metadata"].get(
                "pgid") != tool_pid:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.kill()
        proc.wait()
        assert os.path.exists(f"/proc/{tool_pid}")  # orphaned, still running
        recover(db)
        run_row = db.list_runs()[0]
        assert run_row["state"] == "failed"
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{tool_pid}"):
        with open(f"/proc/{tool_pid}/stat") as f:
            if f.read().split(") ")[-1].startswith("Z"):
                break  # a zombie: dead, waiting for its (gone) parent to be reaped
        assert time.monotonic() < deadline, f"the {left} outlived the reaper pass"
        time.sleep(0.05)


# -- usage, task ids and fencing (issue 15) -----------------------------------------------

USAGE_TOOL = ("import json, os, pathlib, sys; "
              "pathlib.Path('src/app.py').write_text('VALUE = 2\\n'); "
              "usage = sys.argv[1]; "
              "open(os.environ['UET_USAGE_FILE'], 'w').write(usage)")


@pytest.mark.parametrize("usage, stored, problem", [
    ('{"model": "m-1", "input_tokens": 120, "output_tokens": 30, "cost_usd": 0.25}',
     ("m-1", 120, 30, 0.25), None),
    ('{"input_tokens": 7}', (None, 7, None, None), None),
    ('{"model": "m", "input_tokens": -1, "cost_usd": "free"}', ("m", None, None, None),
     "input_tokens"),
    ("not json", (None, None, None, None), "JSON"),
])
def test_a_tools_reported_usage_is_stored_on_its_attempt(tmp_path, repo, usage, stored,
                                                          problem):
    path = workstream(tmp_path, repo, [{"task_id": "T1", "tool": "writer", "prompt": "x"}],
                      gates=[])
    data = json.loads(path.read_text())
    escaped = usage.replace("{", "{{").replace("}", "}}")  # literal braces in a template
    data["tools"]["writer"] = {"command": [sys.executable, "-c", USAGE_TOOL, escaped]}
    path.write_text(json.dumps(data))
    with init_db(str(tmp_path / "ledger.db")) as db:
        result = run(db, path)
        assert result.state == "succeeded"
        (step,) = db.list_step_attempts(result.run_id)
        assert (step["model"], step["input_tokens"], step["output_tokens"],
                step["cost_usd"]) == stored
        assert step["task_id"] == "T1"
        if problem is None:
            assert "usage_error" not in step["metadata"]
        else:
            assert problem in step["metadata"]["usage_error"]


def test_an_orchestrator_reaped_mid_run_stops_and_writes_nothing_more(tmp_path, repo):
    """Its owner is reaped while the tool runs (as when the process was paused past its
    lease): it stops the tool, records nothing after the reap, and never moves the branch."""
    gate = tmp_path / "gate-started"
    path = workstream(tmp_path, repo, [
        {"task_id": "T1", "tool": "editor", "prompt": "append src/app.py\nFIRST = 1"},
        {"task_id": "T2", "tool": "editor", "prompt": "append src/app.py\nSECOND = 2",
         "depends_on": ["T1"]}],
        gates=[{"name": "slow", "type": "UNIT", "command": [
            sys.executable, "-c", f"import pathlib, time; pathlib.Path({str(gate)!r})"
            ".touch(); time.sleep(60)"]}])
    with init_db(str(tmp_path / "ledger.db")) as db:
        from uet.state import WorkerLifecycle
        outcome = {}
        thread = threading.Thread(target=lambda: outcome.update(result=run(db, path)))
        thread.start()
        deadline = time.monotonic() + 60
        while not gate.exists():
            assert time.monotonic() < deadline, "the gate never started"
            time.sleep(0.05)
        run_row = db.list_runs({"state": "running"})[0]
        WorkerLifecycle(db).terminate_lost(run_row["worker_id"], "reaped by the test")
        cursor = db.latest_event_seq()
        thread.join(60)
        assert not thread.is_alive()
        result = outcome["result"]
        assert "reaped by the test" in result.fenced_off or "fenced off" in result.fenced_off
        assert result.state == "failed"  # as the reaper left it
        after = db.events_since(cursor, limit=10_000)
        assert after == []  # not one write after the reap
        run_row = db.get_run(run_row["run_id"])
        assert run_row["state"] == "failed" and "reaped by the test" in run_row["error_message"]
        # the gate's patch was never committed: the branch is still at its base
        assert git(repo, "rev-parse", result.branch) == result.base


# -- gates that judge only some tasks' patches ----------------------------------------------

def exists_gate(name: str, relative: str, *, tasks: list[str], **fields) -> dict:
    """A gate that passes only once the repository holds `relative` (a file some task
    creates), judging only `tasks`' patches."""
    check = f"import os, sys; sys.exit(0 if os.path.exists({relative!r}) else 1)"
    return {"name": name, "type": "UNIT", "command": [sys.executable, "-c", check],
            "tasks": tasks, **fields}


def gates_by_entry(db, run_id: str) -> dict[str, dict[str, str]]:
    """ledger_id -> {gate name: state} of a run's gates."""
    found: dict[str, dict[str, str]] = {}
    for row in GateLedger(db).list_gates(run_id=run_id):
        found.setdefault(row["ledger_id"], {})[row["name"]] = row["state"]
    return found


def _two_tasks_b_second(tmp_path: Path, repo: Path, gates: list[dict]) -> Path:
    """T1 writes src/a.py, then T2 (after it) writes src/b.py; `gates` after lint and
    unit."""
    path = workstream(tmp_path, repo, [
        {"task_id": "T1", "tool": "editor", "prompt": "write src/a.py\nA = 1"},
        {"task_id": "T2", "tool": "editor", "prompt": "write src/b.py\nB = 2",
         "depends_on": ["T1"]}])
    data = json.loads(path.read_text())
    data["gates"] += gates
    path.write_text(json.dumps(data))
    return path


def test_a_gate_limited_to_a_task_judges_only_that_tasks_patch(db, tmp_path, repo):
    """T2's acceptance check (src/b.py exists) would fail T1's patch, made before T2 ran:
    limited to T2 it is never defined for T1's entry, and it passes for T2's."""
    path = _two_tasks_b_second(tmp_path, repo, [
        exists_gate("b-exists", "src/b.py", tasks=["T2"], depends_on=["unit"])])
    result = run(db, path)
    assert result.state == "succeeded", result.error
    assert [result.tasks[t].outcome for t in ("T1", "T2")] == ["committed", "committed"]
    gates = gates_by_entry(db, result.run_id)
    assert gates[result.tasks["T1"].ledger_id] == {"lint": "PASSED", "unit": "PASSED"}
    assert gates[result.tasks["T2"].ledger_id] == {"lint": "PASSED", "unit": "PASSED",
                                                   "b-exists": "PASSED"}
    assert len(git(repo, "log", "--format=%H", f"{result.base}..{result.branch}")
               .splitlines()) == 2


def test_a_limited_gate_that_fails_fails_only_its_task(db, tmp_path, repo):
    """The same kind of check, failing (nothing creates src/c.py), limited to T2 and the
    only gate: T1, which no gate judges, is committed as in a workstream without gates;
    T2's patch is quarantined by the gate and the run fails."""
    path = _two_tasks_b_second(tmp_path, repo, [])
    data = json.loads(path.read_text())
    data["gates"] = [exists_gate("c-exists", "src/c.py", tasks=["T2"])]
    path.write_text(json.dumps(data))
    result = run(db, path)
    assert result.state == "failed"
    t1, t2 = result.tasks["T1"], result.tasks["T2"]
    assert t1.outcome == "committed" and git(repo, "show", f"{result.branch}:src/a.py") == \
        "A = 1"
    assert t2.outcome == "failed" and t2.reason == "gate c-exists failed (exit 1)"
    assert result.head == t1.commit  # T2's patch never reached the branch
    gates = gates_by_entry(db, result.run_id)
    assert result.tasks["T1"].ledger_id not in gates  # no gate was defined for it
    assert gates[t2.ledger_id] == {"c-exists": "FAILED"}
    entries = {e.ledger_id: e for e in PatchLedger(db).list_entries()}
    assert entries[t2.ledger_id].state.value == "quarantined"
    assert entries[t2.ledger_id].quarantine_reason == "gate c-exists failed (exit 1)"
    # T1's entry went the way every entry goes when no gate judges it
    history = entries[t1.ledger_id].state_history
    assert [h["state"] for h in history][-2:] == ["verified", "committed"]


def test_a_stop_before_the_commit_resumes_with_each_tasks_own_gates(db, tmp_path, repo):
    """Killed after T1's gates passed but before its commit: resuming commits T1's verified
    patch (its gates are not looked up again) and judges T2 by the gates that judge it."""
    from uet.engine import orchestrator as orchestrator_module
    from uet.engine.resume import resume_run
    path = _two_tasks_b_second(tmp_path, repo, [
        exists_gate("b-exists", "src/b.py", tasks=["T2"], depends_on=["unit"])])
    original = orchestrator_module.git.commit_index

    def stop(*args, **kwargs):
        raise KeyboardInterrupt("killed at the commit")

    orchestrator_module.git.commit_index = stop
    try:
        with pytest.raises(KeyboardInterrupt):
            run(db, path)
    finally:
        orchestrator_module.git.commit_index = original
    run_id = db.list_runs()[0]["run_id"]
    result = resume_run(db, run_id)
    assert result.state == "succeeded", result.error
    assert [s["sequence"] for s in db.list_step_attempts(run_id)] == [1, 2]  # T1 ran once
    gates = gates_by_entry(db, run_id)
    assert gates[result.tasks["T1"].ledger_id] == {"lint": "PASSED", "unit": "PASSED"}
    assert gates[result.tasks["T2"].ledger_id] == {"lint": "PASSED", "unit": "PASSED",
                                                   "b-exists": "PASSED"}

"""The orchestrator: runs a workstream end to end — each task's tool in its own git worktree,
every change a patch that is recorded, validated, applied to the run's branch, judged by the
gates and only then committed — recording every step in the ledger.

The patch-first flow (SPEC §9), per task attempt:
1. a step attempt is recorded and the tool runs in a detached worktree at the branch head;
2. its change (commits it made included) is captured as one diff and recorded as a patch
   with a ledger entry; an empty change fails the attempt unless the task allows it;
3. the entry is validated (every path inside the task's files_scope; the project's policy;
   the diff applies to the branch head) or quarantined with the reason;
4. it is applied to the integration worktree (three-way) — the same apply that checked the
   format in step 3, since one patch at a time meets a clean worktree at the branch head;
5. the gates that judge the task (every gate, unless a gate names the `tasks` it judges)
   run there in dependency order; all pass → one commit on the branch (its `Uet-Entry`
   trailer names the entry) → committed; a gate fails → the worktree is reset, the entry
   quarantined, and the task retried with the gate's output as feedback. A task no gate
   judges is committed once validated and applied, as in a workstream without gates.
Steps 3-5 take one patch at a time (the merge lock), so the gates always judge exactly the
tree that gets committed; with `parallel` > 1 independent tasks' tools run at once and their
patches queue for the lock in the order their tools finish.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import tempfile
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, TypeVar

from uet.engine import git
from uet.engine.bus import EventBus
from uet.engine.policy import judge_change
from uet.engine.usage import read_usage
from uet.engine.workstream import Gate, Task, Workstream, render_template
from uet.errors import NotFoundError, StaleWorkerError, UetError, ValidationError
from uet.state.db import Database
from uet.state.gates import GateLedger
from uet.state.ids import new_ulid
from uet.state.patches import PatchLedger
from uet.state.recovery import DEFAULT_HEARTBEAT_S, Owner, process_start, recover, run_news

TAIL_CHARS = 4000          # of a tool's or gate's output kept in the ledger
EXIT_TIMEOUT, EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND = 124, 126, 127
STOP_GRACE_S = 3.0         # between SIGTERM and SIGKILL of a stopped tool or gate
POLL_S = 0.05              # how often a running process is checked
CANCEL_POLL_S = 1.0        # how often the ledger is asked whether the run was canceled


# -- results ---------------------------------------------------------------------------------

@dataclass
class TaskOutcome:
    """How one task ended: `outcome` committed (its patch is on the branch), empty (allowed
    to change nothing), failed, skipped (a dependency did not succeed) or canceled —
    the task's, not a ledger state (its attempts and patches have those)."""
    task_id: str
    outcome: str = "pending"
    attempts: int = 0       # attempts that got a verdict (what max_attempts counts)
    last_attempt: int = 0   # the highest attempt number recorded (interrupted ones too)
    reason: str | None = None
    commit: str | None = None
    ledger_id: str | None = None
    patch_id: str | None = None  # of a verified patch a crash left uncommitted (resume)

    @property
    def done(self) -> bool:
        """Whether the task succeeded: committed, or empty (allowed to change nothing)."""
        return self.outcome in ("committed", "empty")


@dataclass
class WorkstreamResult:
    """How a workstream run ended."""
    run_id: str
    state: str
    branch: str
    base: str
    head: str | None
    tasks: dict[str, TaskOutcome] = field(default_factory=dict)
    error: str | None = None
    # why this process stopped without finishing: it no longer owned the run (reaped while
    # paused, or replaced); `state` is then the run's state as another process left it
    fenced_off: str | None = None


@dataclass
class _Process:
    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool = False
    canceled: bool = False
    error: str | None = None

    def output(self) -> str:
        return "\n".join(part for part in (self.stdout, self.stderr, self.error) if part)


class _Canceled(Exception):
    """The run was asked to stop (a signal, or `uet cancel`)."""


class _HandBack(Exception):
    """The owner drains: the tasks that had started are done, the rest is handed back."""


# -- processes ---------------------------------------------------------------------------------

def _tail(path: str) -> str:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - TAIL_CHARS * 4))
        data = f.read()
    # text the ledger can store: invalid UTF-8 and NUL replaced
    return data.decode("utf-8", "replace").replace("\x00", "\ufffd")[-TAIL_CHARS:]


def run_process(argv: list[str], *, cwd: str, env: Mapping[str, str], timeout: float | None,
                stopped: Callable[[], bool],
                started: Callable[[int], None] | None = None) -> _Process:
    """Run `argv` (never through a shell) in its own process group with a timeout; stop it
    (SIGTERM, then SIGKILL) when `stopped()` turns true. Output goes to files (no pipe can
    fill up) of which the tails are kept. `started(pid)` is called once it runs (its pid is
    its process group's id)."""
    with tempfile.TemporaryDirectory(prefix="uet-proc-") as scratch:
        out_path, err_path = os.path.join(scratch, "out"), os.path.join(scratch, "err")
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            try:
                child = subprocess.Popen(argv, cwd=cwd, env=dict(env), stdout=out, stderr=err,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
            except FileNotFoundError:
                return _Process(EXIT_NOT_FOUND, "", "", error=f"command not found: {argv[0]}")
            except OSError as exc:
                return _Process(EXIT_CANNOT_EXECUTE, "", "",
                                error=f"cannot execute {argv[0]}: {exc.strerror or exc}")
            if started is not None:
                try:
                    started(child.pid)
                except BaseException:
                    _stop_group(child)
                    raise
            deadline = None if timeout is None else time.monotonic() + timeout
            timed_out = canceled = False
            while True:
                try:  # returns as soon as the child exits: a quick tool costs no poll period
                    child.wait(POLL_S)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if deadline is not None and time.monotonic() >= deadline:
                    timed_out = True
                elif stopped():
                    canceled = True
                if timed_out or canceled:
                    _stop_group(child)
                    break
            code = child.wait()
        result = _Process(code if code >= 0 else 128 - code, _tail(out_path), _tail(err_path),
                          timed_out=timed_out, canceled=canceled)
    if timed_out:
        result.exit_code = EXIT_TIMEOUT
        result.error = f"timed out after {timeout:g} s"
    return result


def _stop_group(child: subprocess.Popen[bytes]) -> None:
    for sig, grace in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(child.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            child.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


# -- the run ------------------------------------------------------------------------------------

def run_record(ws: Workstream, run_id: str, repo: git.Repository, base: str,
               **metadata: Any) -> dict[str, Any]:
    """The run of `ws` as `create_run` records it: its metadata keeps what a later session
    (`uet resume`, a `uet worker`) needs to go on — the exact workstream file (content and
    hash: later edits of the file change nothing), the repository, base commit and
    branch — and `metadata`'s other keys."""
    return {"run_id": run_id, "project_id": ws.project_id, "phase_id": ws.phase_id,
            "workstream_id": ws.workstream_id,
            "metadata": {"workstream": {"id": ws.workstream_id, "sha256": ws.sha256,
                                        "source": ws.source, "format": ws.format,
                                        "content": ws.content.decode("utf-8")},
                         "repo": str(repo.toplevel), "base": base,
                         "branch": ws.branch_name(run_id), **metadata}}


class Orchestrator:
    """Runs one workstream as one run of the ledger. Use `run()` once."""

    def __init__(self, db: Database, workstream: Workstream, *, parallel: int = 1,
                 keep_failed: bool = False, heartbeat_s: float = DEFAULT_HEARTBEAT_S,
                 bus: EventBus | None = None, out: Callable[[str], None] | None = None,
                 owner: Owner | None = None) -> None:
        if not isinstance(parallel, int) or isinstance(parallel, bool) or parallel < 1:
            raise ValidationError(f"parallel must be an integer >= 1, got {parallel!r}",
                                  field="parallel")
        self.db, self.ws, self.parallel, self.keep_failed = db, workstream, parallel, keep_failed
        self.patches, self.gates = PatchLedger(db), GateLedger(db)
        self.bus = bus if bus is not None else EventBus(db)
        # a given owner (a `uet worker` slot) is registered, heartbeating and closed by its
        # pool; otherwise this orchestrator owns the run through an owner of its own
        self._own_owner = owner is None
        self.owner = owner or Owner(db, "orchestrator", heartbeat_s=heartbeat_s)
        self._draining = threading.Event()
        self._lost: str | None = None  # why this owner was fenced off, once it was
        self.out = out or (lambda line: None)
        self.repo = git.open_repository(workstream.repo)
        self.outcomes = {t.task_id: TaskOutcome(t.task_id) for t in workstream.tasks}
        self._merge_lock = threading.Lock()
        self._stop = threading.Event()
        self._stop_reason: str | None = None
        self._cancel_cursor = 0
        self._cancel_checked = 0.0
        self.run_id = ""
        self._resuming = False
        self._head: str | None = None  # the run's branch head, and its tree
        self._head_tree: str | None = None
        self.branch = ""
        self.base = ""
        self.integration: git.Worktree | None = None
        self.scratch = ""

    # -- life cycle ---------------------------------------------------------------------

    def stop(self, reason: str) -> None:
        """Ask the run to stop: tools and gates are stopped, the run ends canceled."""
        self._stop_reason = self._stop_reason or reason
        self._stop.set()

    def drain(self) -> None:
        """Finish the tasks that have started, start no other, and hand the run back to the
        queue (pending, resumable by any worker) when tasks are left."""
        self._draining.set()

    def _fenced_off(self, why: str) -> None:
        """This owner was reaped or replaced: stop everything and write nothing more."""
        self._lost = self._lost or why
        self._stop.set()

    def _stopped(self) -> bool:
        if self._stop.is_set():
            return True
        if self.owner.lost is not None:  # the heartbeat learnt the ledger reaped us
            self._fenced_off(self.owner.lost)
            return True
        now = time.monotonic()
        if self.run_id and now - self._cancel_checked >= CANCEL_POLL_S:
            self._cancel_checked = now
            try:
                who, taken, self._cancel_cursor = run_news(self.db, self.run_id,
                                                           self._cancel_cursor)
            except UetError:
                who = taken = None  # the ledger is out of reach for a moment: look later
            if taken:
                self._fenced_off(f"{taken} (this process is fenced off)")
            elif who:
                self.stop(f"canceled ({who})")
        return self._stop.is_set()

    def run(self) -> WorkstreamResult:
        """Run every task; returns how the run ended (the run's state is in the ledger)."""
        ws = self.ws
        self.base = self.repo.resolve_commit(ws.base)
        recover(self.db)
        self.owner.register()
        try:
            run_id = new_ulid()
            self.branch = ws.branch_name(run_id)
            self.run_id = self.db.create_run(run_record(
                ws, run_id, self.repo, self.base, uet_owner=self.owner.worker_id))
            self.owner.claim(self.run_id)
            self.owner.start_heartbeat()
            self.out(f"run {self.run_id}: workstream {ws.workstream_id}, branch {self.branch}")
            return self._fenced_drive()
        finally:
            self._close_owner()

    def resume(self, run_id: str, base: str, branch: str, done: Mapping[str, TaskOutcome],
               reason: str) -> WorkstreamResult:
        """Go on with a failed or canceled run (see `uet.engine.resume`): it is re-driven
        (`reason`) and owned by this process; the tasks in `done` keep their outcome and
        attempt count, the others run with the attempts they have left, on the branch as
        it is."""
        self.run_id, self.base, self.branch, self._resuming = run_id, base, branch, True
        for task_id, outcome in done.items():
            self.outcomes[task_id] = outcome
        self.owner.register()
        try:
            with self.db.atomic():  # never pending under a dead owner's name (the reaper
                run = self.db.redrive_run(run_id, reason)  # would cancel it)
                self.db.update_run(run_id, {"metadata": {
                    **run["metadata"], "uet_owner": self.owner.worker_id}})
            self.owner.claim(run_id)
            # what happened to the run before this session (its re-drive, a cancel asked
            # of an earlier session) is not for this session to act on
            self._cancel_cursor = self.db.latest_event_seq()
            self.owner.start_heartbeat()
            self.out(f"run {run_id} resumed: branch {branch}")
            return self._fenced_drive()
        finally:
            self._close_owner()

    def run_claimed(self, run: Mapping[str, Any], done: Mapping[str, TaskOutcome]) -> \
            WorkstreamResult:
        """Run (or go on with) a run of the work queue that this orchestrator's owner — a
        `uet worker` slot, registered and heartbeating — has just claimed; `done` are the
        outcomes `uet.engine.resume.reconcile` found for a run that ran before."""
        meta = run["metadata"]
        self.run_id, self.base, self.branch = run["run_id"], meta["base"], meta["branch"]
        self._resuming = bool(done) or self.repo.branch_head(self.branch) is not None
        self._cancel_cursor = self.db.latest_event_seq()
        for task_id, outcome in done.items():
            self.outcomes[task_id] = outcome
        self.out(f"run {self.run_id}: workstream {self.ws.workstream_id}, branch "
                 f"{self.branch}" + (" (resumed)" if self._resuming else ""))
        return self._fenced_drive()

    def _close_owner(self) -> None:
        if not self._own_owner:
            return
        try:
            self.owner.close()
        except UetError:
            pass  # out of reach: the reaper retires the worker later

    def _fenced_drive(self) -> WorkstreamResult:
        """`_drive`, every write of it fenced by the owner's incarnation."""
        with self.db.fenced(self.owner.worker_id, self.owner.incarnation):
            return self._drive()

    def _drive(self) -> WorkstreamResult:
        self.scratch = tempfile.mkdtemp(prefix=f"uet-{self.run_id}-")
        error = None
        try:
            # the branch moves only by this run's commits (one at a time): its head is
            # tracked here rather than read back from git before every attempt
            self._head = self.repo.create_branch(self.branch, self.base, resume=self._resuming)
            self._head_tree = self.repo.resolve_tree(self._head)
            # an earlier owner's worktrees go (a crashed one's, or a paused one's that was
            # reaped: it finds them gone, and its ledger writes are fenced off); ours are
            # named by our incarnation, so that one never touches another's
            self.repo.remove_worktrees_named(f"{self.run_id}-")
            self.integration = self.repo.add_integration_worktree(
                self._worktree_name("integration"), self.branch, replace=True)
            self._commit_verified()
            self._schedule()
        except (_Canceled, _HandBack):
            pass
        except StaleWorkerError as exc:
            self._fenced_off(str(exc))
        except UetError as exc:
            error = f"{type(exc).__name__}: {exc}"
        finally:
            if self.integration is not None:
                self._quietly(self.repo.remove_worktree, self.integration.path)
            _remove_tree(self.scratch)
        return self._finish(error)

    def _run_row(self) -> dict[str, Any]:
        """The run as the ledger has it now: there as long as this process drives it
        (NotFoundError should someone delete it meanwhile)."""
        run = self.db.get_run(self.run_id)
        if run is None:
            raise NotFoundError("run", self.run_id)
        return run

    def _worktree_name(self, what: str) -> str:
        return f"{self.run_id}-{self.owner.incarnation[-6:].lower()}-{what}"

    def _finish(self, error: str | None) -> WorkstreamResult:
        if self._lost is not None:  # fenced off: whatever is written now is the new owner's
            self.out(f"run {self.run_id}: this process no longer owns it ({self._lost}); "
                     "stopped without writing")
            run = self.db.get_run(self.run_id)  # a read: reads are never fenced
            return WorkstreamResult(self.run_id, run["state"] if run else "unknown",
                                    self.branch, self.base, None, self.outcomes, self._lost,
                                    fenced_off=self._lost)
        failed = [o for o in self.outcomes.values() if not o.done]
        unstarted = [o for o in self.outcomes.values() if o.outcome == "pending"]
        if self._draining.is_set() and unstarted and not self._stop.is_set() \
                and error is None:
            return self._hand_back(unstarted)
        if self._stop.is_set():
            state, error = "canceled", self._stop_reason
        elif error is None and not failed:
            state = "succeeded"
        else:
            state = "failed"
            error = error or "; ".join(
                f"task {o.task_id} {o.outcome}" + (f": {o.reason}" if o.reason else "")
                for o in failed)
        for outcome in self.outcomes.values():
            if outcome.outcome == "pending":
                outcome.outcome = "canceled" if state == "canceled" else "skipped"
        run = self._run_row()
        if run["state"] == "running" and run["worker_id"] == self.owner.worker_id:
            try:
                self.db.transition_run(self.run_id, state, exit_code=0 if state == "succeeded"
                                       else 1, error_message=error)
            except StaleWorkerError as exc:
                self._fenced_off(str(exc))
                return self._finish(None)
        else:  # the reaper or a cancel got there first
            state, error = run["state"], run["error_message"]
        head = self.repo.branch_head(self.branch) if self.branch else None
        self.out(f"run {self.run_id} {state}" + (f": {error}" if error else ""))
        return WorkstreamResult(self.run_id, state, self.branch, self.base, head,
                                self.outcomes, error)

    def _hand_back(self, unstarted: list[TaskOutcome]) -> WorkstreamResult:
        """Draining: the run goes back to the queue (pending, its committed tasks kept) for
        any worker to resume."""
        reason = (f"handed back by {self.owner.worker_id} (draining); "
                  f"{len(unstarted)} task(s) not started")
        try:
            self.db.redrive_run(self.run_id, reason, expected="running")
        except StaleWorkerError as exc:
            self._fenced_off(str(exc))
            return self._finish(None)
        self.out(f"run {self.run_id} handed back to the queue: {len(unstarted)} task(s) left")
        return WorkstreamResult(self.run_id, "pending", self.branch, self.base,
                                self.repo.branch_head(self.branch), self.outcomes, reason)

    def _commit_verified(self) -> None:
        """Resuming: commit the patches whose gates passed before a crash stopped their
        commit. They were judged on the branch head, which nothing but their own commit
        could have moved (one patch at a time), so they are applied there again and
        committed — never judged or committed twice (reconcile looked for their commits)."""
        integration = self.integration
        assert integration is not None
        for outcome in self.outcomes.values():
            if outcome.outcome != "verified":
                continue
            # reconcile gives a verified task the entry and the patch it found verified
            patch_id, ledger_id = outcome.patch_id, outcome.ledger_id
            assert patch_id is not None and ledger_id is not None, outcome
            patch = self.patches.get_patch(patch_id)
            if patch is None:
                raise NotFoundError("patch", patch_id)
            task = self.ws.task(outcome.task_id)
            git.apply_patch(integration.path, patch.diff)
            sha, tree = git.commit_index(
                integration.path, f"{task.name or task.task_id}\n\nuet: workstream "
                f"{self.ws.workstream_id}, task {task.task_id}, run {self.run_id} (committed "
                "when the run was resumed)", ledger_id, parent=self._head,
                parent_tree=self._head_tree, move=False)
            with self.db.atomic():  # fenced: a reaped owner never moves the branch
                self._advance(integration, sha, tree, ledger_id)
                self.patches.transition_state(ledger_id, "committed",
                                              f"commit {sha} (when the run was resumed)")
                self.bus.publish("task.finished", {
                    "task_id": task.task_id, "outcome": "committed", "commit": sha,
                    "ledger_id": ledger_id}, run_id=self.run_id)
            outcome.outcome, outcome.commit = "committed", sha
            self.out(f"task {task.task_id} committed {sha[:12]} (verified before the stop)")

    def _advance(self, integration: git.Worktree, sha: str, tree: str, ledger_id: str) -> None:
        """Move the run's branch to its new commit `sha` — inside the caller's ledger
        transaction, whose fence check at its start holds this owner's worker row: an owner
        that was reaped (a paused process that woke up) cannot move the branch its
        successor now works on. Compare-and-set on git's side too."""
        assert self._head is not None
        git.advance_branch(integration.path, sha, self._head, ledger_id)
        self._head, self._head_tree = sha, tree

    # -- scheduling -----------------------------------------------------------------------

    def _schedule(self) -> None:
        """Start each task once its dependencies are done, up to `parallel` at once; a task
        whose dependency did not succeed is skipped."""
        waiting = [t for t in self.ws.ordered_tasks()
                   if self.outcomes[t.task_id].outcome == "pending"]
        running: dict[Future[None], Task] = {}
        with ThreadPoolExecutor(max_workers=self.parallel,
                                thread_name_prefix="uet-task") as pool:
            while waiting or running:
                for task in list(waiting):
                    deps = [self.outcomes[d] for d in task.depends_on]
                    if any(d.outcome in ("failed", "skipped", "canceled") for d in deps):
                        waiting.remove(task)
                        self._skip(task, [d.task_id for d in deps if not d.done])
                    elif all(d.done for d in deps) and len(running) < self.parallel \
                            and not self._stopped() and not self._draining.is_set():
                        waiting.remove(task)
                        running[pool.submit(self._run_fenced_task, task)] = task
                if not running:
                    if waiting and self._stopped():
                        raise _Canceled()
                    if waiting and self._draining.is_set():
                        raise _HandBack()
                    continue
                finished, _ = wait(running, timeout=CANCEL_POLL_S,
                                   return_when=FIRST_COMPLETED)
                for future in finished:
                    running.pop(future)
                    try:
                        future.result()  # a UetError of a task ends the run (failed)
                    except StaleWorkerError as exc:
                        self._fenced_off(str(exc))  # the other tasks' tools stop too
                        raise
                if self._stopped() and not running:
                    raise _Canceled()

    def _skip(self, task: Task, blocking: list[str]) -> None:
        outcome = self.outcomes[task.task_id]
        outcome.outcome = "skipped"
        outcome.reason = f"dependency {', '.join(blocking)} did not succeed"
        self.bus.publish("task.skipped", {"task_id": task.task_id, "reason": outcome.reason},
                         run_id=self.run_id)
        self.out(f"task {task.task_id} skipped: {outcome.reason}")

    # -- one task -------------------------------------------------------------------------

    def _run_fenced_task(self, task: Task) -> None:
        with self.db.fenced(self.owner.worker_id, self.owner.incarnation):
            self._run_task(task)

    def _run_task(self, task: Task) -> None:
        outcome = self.outcomes[task.task_id]
        feedback = ""
        while outcome.attempts < task.max_attempts:
            if self._stopped():
                outcome.outcome = "canceled"
                return
            outcome.attempts += 1
            outcome.last_attempt += 1
            ok, feedback = self._attempt(task, outcome, feedback)
            if ok:
                return
        outcome.outcome = "canceled" if self._stop.is_set() else "failed"

    def _attempt(self, task: Task, outcome: TaskOutcome, feedback: str) -> tuple[bool, str]:
        """One attempt; (whether the task is done, the feedback for the next attempt)."""
        attempt = outcome.last_attempt
        files = self._attempt_files(task, attempt, feedback)
        head = self._head
        assert head is not None
        worktree = self.repo.add_attempt_worktree(
            self._worktree_name(f"{task.task_id}-{attempt}"), head, replace=True)
        values = {"task_id": task.task_id, "run_id": self.run_id, "attempt": str(attempt),
                  "feedback_file": files["feedback"], "worktree": str(worktree.path)}
        failed = True
        try:
            prompt = render_template(task.prompt, values)
            with self.db.atomic():
                step_id = self.db.create_step_attempt({
                    "run_id": self.run_id, "sequence": task.index + 1, "attempt": attempt,
                    "tool_id": task.tool, "input_prompt": prompt, "task_id": task.task_id,
                    "metadata": {"task_id": task.task_id, "start": head}})
                self.bus.publish("task.started", {
                    "task_id": task.task_id, "attempt": attempt, "step_attempt_id": step_id},
                    run_id=self.run_id)
            self.out(f"task {task.task_id} attempt {attempt}: {task.tool}")
            with open(files["prompt"], "w", encoding="utf-8") as f:
                f.write(prompt)
            values.update(prompt=prompt, prompt_file=files["prompt"])
            done, feedback, failed = self._work(task, outcome, step_id, worktree, values,
                                                files)
            return done, feedback
        finally:
            if not (failed and self.keep_failed):
                self._quietly(self.repo.remove_worktree, worktree.path)

    def _attempt_files(self, task: Task, attempt: int, feedback: str) -> dict[str, str]:
        # outside the worktree: nothing uet writes for the tool is captured as its change
        folder = os.path.join(self.scratch, f"{task.task_id}-{attempt}")
        os.makedirs(folder, exist_ok=True)
        files = {name: os.path.join(folder, name) for name in ("prompt", "feedback", "usage")}
        with open(files["feedback"], "w", encoding="utf-8") as f:
            f.write(feedback)
        return files

    def _work(self, task: Task, outcome: TaskOutcome, step_id: str, worktree: git.Worktree,
              values: dict[str, str], files: dict[str, str]) -> tuple[bool, str, bool]:
        """Run the tool and take its change through the flow; (done, feedback, failed)."""
        tool = self.ws.tools[task.tool]
        argv = [render_template(arg, values) for arg in tool.command]
        env = git.without_repository_variables(os.environ)
        env.update(tool.env)
        env.update(UET_RUN_ID=self.run_id, UET_STEP_ATTEMPT_ID=step_id,
                   UET_USAGE_FILE=files["usage"])
        refs = self.repo.refs()
        started = time.monotonic()

        result = run_process(argv, cwd=str(worktree.path), env=env,
                             timeout=task.timeout_seconds, stopped=self._stopped,
                             started=self._group_recorder(step_id, task, argv))
        duration = round(time.monotonic() - started, 3)
        meta = {"task_id": task.task_id, "command": argv, "duration_sec": duration,
                "stdout_tail": result.stdout, "stderr_tail": result.stderr}
        # what the tool says it used ($UET_USAGE_FILE) goes with the attempt's end
        usage, problem = read_usage(files["usage"])
        if problem:
            meta["usage_error"] = problem

        def end_step(*args: Any, **kwargs: Any) -> None:
            self._end_step(*args, usage=usage, **kwargs)

        # the tool shares the target's branches and tags through its worktree: what it did
        # to them is said (the run's own branch moves with merges meanwhile, not by it)
        touched = self.repo.changed_refs(refs, ignore=[git.branch_ref(self.branch)])
        if touched:
            meta["refs_changed_by_tool"] = touched
            self.bus.publish("tool.refs_changed", {"task_id": task.task_id, "refs": touched},
                             run_id=self.run_id)
            self.out(f"task {task.task_id}: the tool changed the repository's refs: "
                     + "; ".join(touched))
        if result.canceled:
            end_step(step_id, "canceled", result.exit_code, "canceled", meta)
            return False, "", True
        if result.exit_code != 0 or result.error:
            why = result.error or f"the tool exited with {result.exit_code}"
            end_step(step_id, "failed", result.exit_code, why, meta)
            self.out(f"task {task.task_id}: {why}")
            outcome.reason = why
            return False, result.output(), True
        assert worktree.head is not None  # an attempt's worktree is made at a commit
        change = git.capture_change(worktree.path, worktree.head)
        if change.is_empty:
            if task.allow_empty:
                end_step(step_id, "succeeded", 0, None, meta)
                outcome.outcome, outcome.reason = "empty", None
                self.bus.publish("task.finished", {"task_id": task.task_id, "outcome": "empty"},
                                 run_id=self.run_id)
                return True, "", False
            why = "the tool changed nothing (the task does not allow_empty)"
            end_step(step_id, "failed", 0, why, meta)
            outcome.reason = why
            return False, why, True
        with self.db.atomic():
            patch = self.patches.record_patch(change.diff, run_id=self.run_id,
                                              step_attempt_id=step_id)
            entry = self.patches.create_entry(patch, self.ws.phase_id, self.ws.workstream_id)
            self.bus.publish("patch.captured", {
                "task_id": task.task_id, "ledger_id": entry.ledger_id,
                "patch_id": patch.patch_id, "files": len(change.files),
                "lines": change.stat.lines_added + change.stat.lines_removed},
                run_id=self.run_id)
        outcome.ledger_id = entry.ledger_id
        with self._merge_lock:
            ok, why, feedback, (sha, tree) = self._merge(task, step_id, entry.ledger_id,
                                                         change, values)
            if ok:  # the branch moves with the ledger's record of it, fenced
                assert self.integration is not None  # _merge needed it too
                with self.db.atomic():
                    self._advance(self.integration, sha, tree, entry.ledger_id)
                    self.patches.transition_state(entry.ledger_id, "committed",
                                                  f"commit {sha}")
                    end_step(step_id, "succeeded", 0, None, meta,
                                   output_patch_id=patch.patch_id)
                    self.bus.publish("task.finished", {
                        "task_id": task.task_id, "outcome": "committed", "commit": sha,
                        "ledger_id": entry.ledger_id}, run_id=self.run_id)
        if ok:
            outcome.outcome, outcome.commit, outcome.reason = "committed", sha, None
            self.out(f"task {task.task_id} committed {sha[:12]}")
            return True, "", False
        end_step(step_id, "failed", 0, why, meta, output_patch_id=patch.patch_id)
        outcome.reason = why
        self.out(f"task {task.task_id}: {why}")
        return False, feedback, True

    def _group_recorder(self, step_id: str, task: Task,
                        argv: list[str]) -> Callable[[int], None]:
        """What records a process the attempt runs (its tool, then its gates) on the
        attempt, while it runs: should this process die outright, the next reaper pass
        stops that process group (as for `uet run -- CMD`)."""
        def record(pid: int) -> None:
            self.db.update_step_attempt(step_id, {"metadata": {
                "task_id": task.task_id, "command": argv, "pid": pid,
                "pid_started": process_start(pid), "pgid": pid}})
        return record

    def _end_step(self, step_id: str, state: str, exit_code: int | None, why: str | None,
                  meta: dict[str, Any], *, output_patch_id: str | None = None,
                  usage: Mapping[str, Any] | None = None) -> None:
        changes: dict[str, Any] = {"state": state, "exit_code": exit_code, "metadata": meta,
                                   **(usage or {})}
        if why:
            changes["error_log"] = why
        if output_patch_id:
            changes["output_patch_id"] = output_patch_id
        self.db.update_step_attempt(step_id, changes)

    # -- validation, apply, gates, commit (one patch at a time) ---------------------------

    def _merge(self, task: Task, step_id: str, ledger_id: str, change: git.CapturedChange,
               values: dict[str, str]) -> tuple[bool, str, str, tuple[str, str]]:
        """Steps 3-5 for one entry, up to the commit (made, the branch not yet moved):
        (True, "", "", (the commit's sha, its tree)), or (False, why not, feedback, ("", ""))."""
        integration = self.integration
        assert integration is not None
        verdict = judge_change(change.files, task.files_scope, self.ws.policy)
        if not verdict.ok:  # judged before anything touches the integration worktree
            with self.db.atomic():
                self.patches.set_validation(ledger_id, scope=False, constraints=False)
                self._quarantine(ledger_id, verdict.reason)
            return False, verdict.reason, verdict.reason, ("", "")
        # The format check is the apply itself: under the merge lock the integration
        # worktree is clean at the branch head, so `git apply --3way --index` there applies
        # exactly when `git apply --check` against the head would, and a failure is undone
        # (the worktree reset) with the conflicting paths named — one git call, not three.
        try:
            git.apply_patch(integration.path, change.diff)
        except git.ApplyConflictError as exc:
            why = ("the patch does not apply to the branch head"
                   + (f" ({', '.join(exc.paths)})" if exc.paths else ""))
            with self.db.atomic():
                self.patches.set_validation(ledger_id, format=False, scope=True,
                                            constraints=True)
                self._quarantine(ledger_id, why)
            return False, why, f"{why}\n{exc.stderr}", ("", "")
        with self.db.atomic():
            self.patches.set_validation(ledger_id, format=True, scope=True, constraints=True)
            self.patches.transition_state(ledger_id, "validated", "format, scope and policy")
            self.patches.transition_state(ledger_id, "queued")
            self.patches.transition_state(ledger_id, "applied")
            gate_ids = self._define_gates(task, ledger_id)
        failed = self._judge(task, step_id, ledger_id, gate_ids, values)
        if failed is not None:
            git.reset_worktree(integration.path)
            name, code, output = failed
            why = f"gate {name} failed (exit {code})"
            self._quarantine(ledger_id, why)
            return False, why, f"{why}\n{output}", ("", "")
        message = (f"{task.name or task.task_id}\n\nuet: workstream {self.ws.workstream_id}, "
                   f"task {task.task_id}, attempt {values['attempt']}, run {self.run_id}")
        sha, tree = git.commit_index(integration.path, message, ledger_id, parent=self._head,
                                     parent_tree=self._head_tree, move=False)
        return True, "", "", (sha, tree)

    def _quarantine(self, ledger_id: str, why: str) -> None:
        self.patches.quarantine(ledger_id, why)
        self.bus.publish("patch.quarantined", {"ledger_id": ledger_id, "reason": why},
                         run_id=self.run_id)

    def _define_gates(self, task: Task, ledger_id: str) -> dict[str, str]:
        """The gates that judge `task` defined for its entry (PENDING), in dependency order;
        their ids by name. Only those: a gate limited to other tasks is no part of this
        entry's record (validation made every dependency of these gates one of them).
        Called inside the caller's transaction."""
        return {gate.name: self.gates.define_gate(
            gate.type, self.ws.phase_id, shlex.join(gate.command), name=gate.name,
            depends_on=gate.depends_on, timeout_sec=gate.timeout_seconds, run_id=self.run_id,
            ledger_id=ledger_id)["gate_id"] for gate in self.ws.gates_for(task.task_id)}

    def _judge(self, task: Task, step_id: str, ledger_id: str, ids: Mapping[str, str],
               values: dict[str, str]) -> tuple[str, int, str] | None:
        """Run the entry's gates (`ids`, by name: those that judge `task`) in dependency
        order; the first failure (name, exit code, output) or None when all passed (or
        none judges the task) — then the entry is verified.
        A passed gate's result is written with the next write (the next gate's RUNNING, or
        the entry's verdict): one transaction less per gate, and nothing decides on it in
        between (only a failure blocks other gates, and a failure is written at once)."""
        integration = self.integration
        assert integration is not None
        gate_values = {**values, "worktree": str(integration.path)}
        first_failure = None
        passed: list[tuple[Gate, str, _Process]] = []
        for gate in self.ws.gates_for(task.task_id):
            gate_id = ids[gate.name]
            row = self.gates.get_gate(gate_id)
            if row is None:  # defined by this attempt: gone only with a deleted run
                raise NotFoundError("gate", gate_id)
            if row["state"] != "PENDING":
                continue  # BLOCKED by a dependency that failed
            with self.db.atomic():
                self._record_gates(passed)
                self.gates.transition_state(gate_id, "RUNNING")
            result = self._run_gate(gate, gate_values, integration,
                                    lambda argv: self._group_recorder(step_id, task, argv))
            if result.canceled:
                with self.db.atomic():
                    self._record_gates([(gate, gate_id, result)])
                raise _Canceled()
            if result.exit_code == 0 and not result.error:
                passed.append((gate, gate_id, result))
                continue
            with self.db.atomic():
                self._record_gates(passed)
                self._record_gates([(gate, gate_id, result)])
            if first_failure is None:
                first_failure = (gate.name, result.exit_code or 1, result.output())
        with self.db.atomic():
            self._record_gates(passed)
            if first_failure is None:
                self.patches.transition_state(ledger_id, "verified", "every gate passed")
        return first_failure

    def _run_gate(self, gate: Gate, values: dict[str, str], integration: git.Worktree,
                  recorder: Callable[[list[str]], Callable[[int], None]]) -> _Process:
        argv = [render_template(arg, values) for arg in gate.command]
        env = git.without_repository_variables(os.environ)
        env.update(UET_RUN_ID=self.run_id)
        # the gate runs while its attempt is still running: recorded there for the reaper
        return run_process(argv, cwd=str(integration.path), env=env,
                           timeout=gate.timeout_seconds, stopped=self._stopped,
                           started=recorder(argv))

    def _record_gates(self, results: list[tuple[Gate, str, _Process]]) -> None:
        """Write gates' results (inside the caller's transaction) and empty the list."""
        for gate, gate_id, result in results:
            state = "PASSED" if result.exit_code == 0 and not result.error else "FAILED"
            stderr = "canceled" if result.canceled else "\n".join(
                p for p in (result.stderr, result.error) if p)
            self.gates.transition_state(gate_id, state, exit_code=result.exit_code,
                                        stdout=result.stdout, stderr=stderr)
            self.bus.publish("gate.finished", {
                "gate": gate.name, "gate_id": gate_id, "state": state,
                "exit_code": result.exit_code, "output_tail": result.output()[-500:]},
                run_id=self.run_id)
            self.out(f"gate {gate.name} {state.lower()}")
        results.clear()

    @staticmethod
    def _quietly(action: Callable[..., Any], *args: Any) -> None:
        try:
            action(*args)
        except UetError:
            pass  # clean-up only: a worktree left behind is pruned by the next run


def _remove_tree(path: str) -> None:
    if path:
        import shutil  # only at the end of a run
        shutil.rmtree(path, ignore_errors=True)


def run_workstream(db: Database, workstream: Workstream, *, parallel: int = 1,
                   keep_failed: bool = False, heartbeat_s: float = DEFAULT_HEARTBEAT_S,
                   out: Callable[[str], None] | None = None, bus: EventBus | None = None,
                   handle_signals: bool = True) -> WorkstreamResult:
    """Run `workstream` as one run of the ledger (see the module's docstring); returns how
    it ended. `out` gets one line per thing that happens (for a terminal); `bus` (default:
    a new one) is where the engine's events are published, for in-process subscribers.
    SIGINT and SIGTERM (when `handle_signals` and called from the main thread) stop the
    tools and gates and end the run canceled, as a `uet cancel` of the run does."""
    orchestrator = Orchestrator(db, workstream, parallel=parallel, keep_failed=keep_failed,
                                heartbeat_s=heartbeat_s, bus=bus, out=out)
    if not handle_signals:
        return orchestrator.run()
    return with_stop_signals(
        lambda name: orchestrator.stop(f"canceled by {name}"), orchestrator.run)


T = TypeVar("T")


def with_stop_signals(on_signal: Callable[[str], None], body: Callable[[], T]) -> T:
    """`body()` with SIGINT and SIGTERM handled by `on_signal(signal name)` (then the
    previous handlers restored); called from another thread than the main one, where
    Python cannot install handlers, just `body()`."""
    if threading.current_thread() is not threading.main_thread():
        return body()
    previous = {}

    def handler(signum: int, frame: object) -> None:
        on_signal(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    try:
        return body()
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)

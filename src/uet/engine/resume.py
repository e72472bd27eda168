"""Resuming a workstream run after a crash or a failure (`uet resume RUN`): git and the ledger
are reconciled so that no task is done twice and no patch is ever committed twice, then the
run goes on under its own id with the attempts its tasks have left.

What is true is read from the branch, not only from the ledger: a patch whose commit is on
the branch is committed, whatever its ledger entry says (a crash between the commit and the
ledger write leaves exactly that), and its task is done. Attempts that were in flight are
failed as interrupted (the re-drive does it) and do not count against the task's
max_attempts (they got no verdict), entries left half way are quarantined, and the
integration worktree is rebuilt from the branch.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from uet.engine import git
from uet.engine.orchestrator import Orchestrator, TaskOutcome, WorkstreamResult
from uet.engine.workstream import Workstream, parse_workstream
from uet.errors import NotFoundError, UetError, ValidationError
from uet.state.db import Database
from uet.state.patches import PatchLedger
from uet.state.recovery import DEFAULT_HEARTBEAT_S, Owner, recover

# how an entry a crash left half way is quarantined as interrupted, along its machine
# (a verified entry is not among them: the gates that judge its task passed, so resuming
# commits it)
_INTERRUPTED_PATHS = {"created": ("quarantined",), "validated": ("quarantined",),
                      "queued": ("apply_failed", "quarantined"),
                      "applied": ("quarantined",)}
INTERRUPTED = "interrupted: the run stopped before this patch was committed"


class ResumeError(UetError):
    """The run cannot be resumed (not a workstream run, finished, still owned, or its
    repository or branch is gone); the message says why."""


def resume_run(db: Database, run_id: str, *, parallel: int = 1, keep_failed: bool = False,
               heartbeat_s: float = DEFAULT_HEARTBEAT_S,
               out: Callable[[str], None] | None = None) -> WorkstreamResult:
    """Resume the workstream run `run_id` (a failed or canceled one, or one whose owner is
    gone: the reaper fails it first); returns how it ended this time."""
    say = out or (lambda line: None)
    recover(db)  # a run whose owner died is failed now, with its attempts
    run = db.get_run(run_id)
    if run is None:
        raise NotFoundError("run", run_id)
    if _recorded_spec(run) is None:
        raise ResumeError(f"run {run_id} is not a workstream run (it records no workstream "
                          "file); only `uet run WORKSTREAM.yaml` runs can be resumed")
    if run["state"] not in ("failed", "canceled"):
        raise ResumeError(f"run {run_id} is {run['state']}: only a failed or canceled run "
                          "is resumed (a running one whose owner is gone is failed by the "
                          "reaper first; `uet recover`)")
    # reconciled before the re-drive, so that a refusal leaves the run as it was
    ws, branch, base, done = _reconciled(db, run)
    for outcome in done.values():
        if outcome.outcome == "committed" and outcome.commit is not None:  # always has one
            say(f"task {outcome.task_id} already committed ({outcome.commit[:12]})")
    orchestrator = Orchestrator(db, ws, parallel=parallel, keep_failed=keep_failed,
                                heartbeat_s=heartbeat_s, out=out)
    return orchestrator.resume(run_id, base, branch, done, "resumed by uet resume")


def _recorded_spec(run: dict[str, Any]) -> dict[str, Any] | None:
    """The workstream file a run recorded (`metadata.workstream`), or None."""
    meta = run["metadata"] if isinstance(run["metadata"], dict) else {}
    spec = meta.get("workstream")
    return spec if isinstance(spec, dict) and isinstance(spec.get("content"), str) else None


def _reconciled(db: Database, run: dict[str, Any]) -> \
        tuple[Workstream, str, str, dict[str, TaskOutcome]]:
    """The run's recorded workstream, branch and base, and the outcomes of its tasks once
    the ledger agrees with the branch (`reconcile`); ResumeError when it cannot go on."""
    run_id, meta, spec = run["run_id"], run["metadata"], _recorded_spec(run)
    assert spec is not None
    ws = parse_workstream(spec["content"], format=spec.get("format", "yaml"),
                          repo=meta.get("repo"), source=spec.get("source"))
    branch, base = meta.get("branch"), meta.get("base")
    committed = [entry for patch in PatchLedger(db).history_of_run(run_id)
                 for entry in patch["entries"] if entry["state"] == "committed"]
    repo = _usable_repository(run_id, meta, branch, base, bool(committed))
    return ws, branch, base, reconcile(db, run_id, ws, repo, branch, base)


def run_queued(db: Database, run: dict[str, Any], owner: Owner, *, parallel: int = 1,
               keep_failed: bool = False, out: Callable[[str], None] | None = None,
               started: Callable[[Orchestrator], None] | None = None) -> WorkstreamResult:
    """Run a queued run that `owner` (a `uet worker` slot) has just claimed: from its start,
    or — one that ran before (re-queued after its owner was lost, or handed back by a
    draining worker) — reconciled as `uet resume` does, so that no committed task is done
    again and no patch is committed twice. `started(orchestrator)` is called once it runs
    (to drain or stop it). A run that cannot run (its workstream or repository is unusable)
    is failed with the reason."""
    run_id = run["run_id"]
    meta = run["metadata"] if isinstance(run["metadata"], dict) else {}
    try:
        if _recorded_spec(run) is None:
            raise ResumeError(f"run {run_id} carries no workstream file; submit runs with "
                              "`uet submit WORKSTREAM.yaml`")
        ws, _, _, done = _reconciled(db, run)
        orchestrator = Orchestrator(db, ws, parallel=parallel, keep_failed=keep_failed,
                                    out=out, owner=owner)
    except UetError as exc:
        why = f"{type(exc).__name__}: {exc}"
        with db.fenced(owner.worker_id, owner.incarnation):
            failed = db.transition_run(run_id, "failed", expected="running", exit_code=1,
                                       error_message=why)
        (out or (lambda line: None))(f"run {run_id} failed: {why}")
        return WorkstreamResult(run_id, failed["state"], str(meta.get("branch") or ""),
                                str(meta.get("base") or ""), None, {}, why)
    if started is not None:
        started(orchestrator)
    return orchestrator.run_claimed(run, done)


def _usable_repository(run_id: str, meta: dict[str, Any], branch: Any, base: Any,
                       committed: bool) -> git.Repository:
    """The run's repository, if it can go on there: its branch still starts at the run's
    base; a branch that is missing is made again only when nothing was ever committed on it
    (the run stopped before it made it), never when the ledger says patches are there."""
    problem = None
    repo = None
    if not isinstance(branch, str) or not isinstance(base, str):
        problem = "it records no branch or base"
    else:
        try:
            repo = git.open_repository(meta.get("repo") or os.curdir)
        except git.GitError as exc:
            problem = f"its repository is gone or unusable ({exc})"
        else:
            if repo.branch_head(branch) is None and committed:
                problem = f"its branch {branch} is gone"
            elif repo.branch_head(branch) is None:
                pass  # never made: the orchestrator creates it from the base
            elif not repo.is_ancestor(base, branch):
                problem = f"its branch {branch} no longer starts at {base[:12]}"
    if problem is not None:
        raise ResumeError(f"run {run_id} cannot be resumed: {problem}")
    assert repo is not None
    return repo


def reconcile(db: Database, run_id: str, ws: Workstream, repo: git.Repository, branch: str,
              base: str) -> dict[str, TaskOutcome]:
    """Make the ledger agree with the branch; the outcomes of the tasks that are done (or
    out of attempts), with the attempts each task has used."""
    patches = PatchLedger(db)
    on_branch = (repo.entry_commits(branch, since=base)
                 if repo.branch_head(branch) is not None else {})
    duplicated = {entry: shas for entry, shas in on_branch.items() if len(shas) > 1}
    if duplicated:  # never made by uet (commits are compare-and-set); say so, do not guess
        raise ResumeError(f"run {run_id} cannot be resumed: its branch has patches committed "
                          f"twice ({', '.join(sorted(duplicated))})")
    by_sequence = {task.index + 1: task for task in ws.tasks}
    outcomes = {task.task_id: TaskOutcome(task.task_id) for task in ws.tasks}
    for step in db.list_step_attempts(run_id):
        task = by_sequence.get(step["sequence"])
        if task is not None:
            outcome = outcomes[task.task_id]
            outcome.last_attempt = max(outcome.last_attempt, step["attempt"])
            if judged(step):
                outcome.attempts += 1
            if step["state"] == "succeeded" and step["output_patch_id"] is None \
                    and task.allow_empty:
                outcome.outcome = "empty"
    for patch in patches.history_of_run(run_id):
        task = by_sequence.get(patch["sequence"])
        for entry in patch["entries"]:
            shas = on_branch.get(entry["ledger_id"])
            sha = shas[0] if shas else None
            if sha is not None:
                if entry["state"] != "committed":
                    _settle_committed(patches, entry["ledger_id"], entry["state"], sha)
                if task is not None:
                    outcome = outcomes[task.task_id]
                    outcome.outcome, outcome.commit = "committed", sha
                    outcome.ledger_id = entry["ledger_id"]
            elif entry["state"] in _INTERRUPTED_PATHS:
                for target in _INTERRUPTED_PATHS[entry["state"]]:
                    patches.transition_state(entry["ledger_id"], target, INTERRUPTED)
            elif entry["state"] == "verified" and task is not None:
                # its gates (those that judge its task: the entry's state says they all
                # passed, so no gate list is consulted here) passed on the branch head, which
                # only its own commit would have moved: resuming applies it again there and
                # commits it (see Orchestrator)
                outcome = outcomes[task.task_id]
                outcome.outcome, outcome.ledger_id = "verified", entry["ledger_id"]
                outcome.patch_id = patch["patch_id"]
    for task in ws.tasks:
        outcome = outcomes[task.task_id]
        if outcome.outcome == "pending" and outcome.attempts >= task.max_attempts:
            outcome.outcome = "failed"
            outcome.reason = f"no attempts left ({task.max_attempts} used)"
    return {t: o for t, o in outcomes.items() if o.outcome != "pending" or o.last_attempt}


def judged(step: dict[str, Any]) -> bool:
    """Whether an attempt got a verdict (succeeded, or failed by its tool, its change or a
    gate): the orchestrator records the duration of every attempt it ends itself. One a crash,
    the reaper or a cancel ended was interrupted: it does not count against max_attempts."""
    meta = step["metadata"] if isinstance(step["metadata"], dict) else {}
    return step["state"] in ("succeeded", "failed") and "duration_sec" in meta


def _settle_committed(patches: PatchLedger, ledger_id: str, state: str, sha: str) -> None:
    """An entry whose commit is on the branch, moved to committed along its machine."""
    path = {"applied": ("verified", "committed"), "verified": ("committed",)}.get(state)
    if path is None:
        raise ValidationError(f"patch entry {ledger_id} is {state} but its commit {sha} is on "
                              "the branch; the ledger and git disagree in a way uet never "
                              "leaves: inspect it by hand", field="ledger_id")
    for target in path:
        patches.transition_state(ledger_id, target, f"commit {sha} found on the branch "
                                 "when the run was resumed")

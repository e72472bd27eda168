"""`uet submit` and `uet worker`: queueing workstreams as runs for a pool of worker processes,
and being one of those processes (the work is uet.engine.pool's)."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

import click

from uet.cli.common import Context, command, finite
from uet.cli.output import emit_json, one_line

if TYPE_CHECKING:  # not loaded by `uet --help`
    from uet.state.db import Database

EXIT_FAILED, EXIT_CANCELED = 1, 130


def _say(line: str) -> None:
    click.echo(one_line(f"uet: {line}"), err=True)


@command("submit", epilog="\b\nExamples:\n  uet submit workstream.yaml\n  uet submit ws.yaml "
                          "--repo ../api --priority 10\n  uet submit ws.yaml --wait   # exits "
                          "with the run's outcome\n\nPrints the run id on stdout (`RUN=$(uet "
                          "submit ws.yaml)`).")
@click.argument("workstream_file", type=click.Path(dir_okay=False))
@click.option("--repo", default=None, type=click.Path(file_okay=False),
              help="The target git repository (default: the file's repo).")
@click.option("--priority", type=click.IntRange(-1_000_000, 1_000_000), default=0,
              show_default=True, help="Higher runs are claimed first; equal ones oldest "
                                      "first.")
@click.option("--project", default=None,
              help="Project id, when the file has none (default: the configuration file's).")
@click.option("--phase", default=None,
              help="Phase id, when the file has none (default: the configuration file's).")
@click.option("--wait", is_flag=True,
              help="Follow the run until it ends and exit with its outcome (0 succeeded, 1 "
                   "failed, 130 canceled).")
def submit(ctx: Context, workstream_file: str, repo: str | None, priority: int,
           project: str | None, phase: str | None, wait: bool) -> None:
    """Queue a workstream as a pending run for `uet worker` processes. The file is
    validated now and the run keeps its exact content (later edits change nothing), the
    repository and the base commit as they are now."""
    from uet.engine.pool import submit as queue
    from uet.engine.workstream import load_workstream
    ws = load_workstream(workstream_file, project_id=ctx.default("project", project),
                         phase_id=ctx.default("phase", phase),
                         repo=os.path.abspath(repo) if repo else None)
    with ctx.open(create=True) as db:
        run = queue(db, ws, priority=priority)
        run_id = run["run_id"]
        if ctx.as_json and not wait:
            emit_json(run)
        elif not wait:
            click.echo(run_id)
        if not wait:
            _say(f"run {run_id} queued (workstream {ws.workstream_id}, priority {priority}); "
                 f"`uet worker` runs it, `uet show {run_id}` shows it")
            return
        _say(f"run {run_id} queued; waiting for a worker (Ctrl-C stops waiting, not the run)")
        final = _follow(db, run_id)
    if ctx.as_json:
        emit_json(final)
    else:
        click.echo(run_id)
    sys.exit({"succeeded": 0, "canceled": EXIT_CANCELED}.get(final["state"], EXIT_FAILED))


def _follow(db: Database, run_id: str) -> dict[str, Any]:
    """Print the run's progress until it ends; the run as it ended."""
    from uet.engine.pool import FINISHED
    try:
        for event in db.follow_events(0, run_id=run_id, poll_interval=0.2):
            data = event["data"] if isinstance(event["data"], dict) else {}
            kind = event["event_type"]
            if kind == "run.state_changed":
                why = data.get("reason") or data.get("changed", {}).get(
                    "error_message", {}).get("to")
                _say(f"run {data.get('from')} -> {data.get('to')}"
                     + (f" ({data['worker_id']})" if data.get("worker_id") else "")
                     + (f": {why}" if why else ""))
                if data.get("to") in FINISHED:
                    break
            elif kind in ("task.started", "task.finished", "task.skipped",
                          "patch.quarantined"):
                _say(f"{kind} {data.get('task_id') or data.get('ledger_id')}"
                     + (f" {data['outcome']}" if data.get("outcome") else "")
                     + (f": {data['reason']}" if data.get("reason") else ""))
    except KeyboardInterrupt:
        _say(f"stopped waiting; run {run_id} stays queued")
        sys.exit(EXIT_CANCELED)
    run = db.get_run(run_id)
    assert run is not None
    return run


@command("worker", epilog="\b\nExamples:\n  uet worker --concurrency 2\n  uet worker --once    "
                          "        # one queued run, then exit with its outcome (CI)\n  uet "
                          "worker --id ci-1      # a restart takes over a dead ci-1's id\n\n"
                          "SIGTERM (or Ctrl-C) drains: no new runs, the current tasks finish, "
                          "a run with tasks left goes back to the queue; a second one cancels "
                          "the runs. Exit codes: 0; with --once the run's outcome (1 failed, "
                          "130 canceled); 3 when this process was fenced off (paused past its "
                          "lease and reaped, or replaced under its id); 2 when its --id is "
                          "held by a live worker; 1 when a worker stopped on an error.")
@click.option("--type", "worker_type", default="worker", show_default=True,
              help="The worker type recorded for this process's workers.")
@click.option("--id", "worker_id", default=None,
              help="A worker id kept across restarts (a new process takes over the id of "
                   "one that is gone; refused while it lives). Default: a fresh id.")
@click.option("--concurrency", type=click.IntRange(1, 64), default=1, show_default=True,
              help="How many runs this process runs at once (one worker record each).")
@click.option("--heartbeat", type=click.FloatRange(min=0.05, max=3600), default=10.0,
              show_default=True, callback=finite,
              help="The heartbeat interval (a worker beats twice per interval); a worker "
                   "two intervals without a beat is lost, and the reaper (every worker runs "
                   "it each interval) re-queues or fails its run.")
@click.option("--poll", type=click.FloatRange(min=0.01, max=60), default=0.5,
              show_default=True, callback=finite,
              help="Seconds between looks for work while idle (PostgreSQL also wakes on new "
                   "events).")
@click.option("--parallel", type=click.IntRange(min=1, max=64), default=1, show_default=True,
              help="How many independent tasks of a run have their tools run at once.")
@click.option("--keep-failed", is_flag=True,
              help="Keep the worktrees of failed attempts for inspection.")
@click.option("--once", is_flag=True,
              help="Run one queued run (none: exit at once) and exit with its outcome.")
def worker(ctx: Context, worker_type: str, worker_id: str | None, concurrency: int,
           heartbeat: float, poll: float, parallel: int, keep_failed: bool,
           once: bool) -> None:
    """Be a worker of the pool: claim queued runs (highest priority, then oldest), run each
    with the orchestrator, and release them, until stopped."""
    from uet.engine.pool import WorkerPool
    path = ctx.path()
    with ctx.open(create=True):
        pass  # created or upgraded once, before the slots open it
    pool = WorkerPool(path, worker_type=worker_type, worker_id=worker_id,
                      concurrency=1 if once else concurrency, heartbeat_s=heartbeat,
                      once=once, poll_s=poll, parallel=parallel, keep_failed=keep_failed,
                      out=_say)
    report = pool.run()
    if ctx.as_json:
        emit_json({"results": [{"run_id": r.run_id, "state": r.state, "error": r.error,
                                "branch": r.branch, "head": r.head} for r in report.results],
                   "lost": report.lost, "stopped_by": report.stopped_by,
                   "error": None if report.error is None else str(report.error)})
    sys.exit(report.exit_code(once))


COMMANDS = (submit, worker)

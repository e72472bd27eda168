"""`uet run`, `uet resume`, `uet cancel`, `uet recover`: running a command or a workstream as
a recorded run, resuming one, stopping a run, and failing the runs whose owner is gone (the
work is uet.engine's and uet.state's)."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import click

from uet.cli.common import Context, command, finite, reap
from uet.cli.output import emit_json, emit_table, joined, one_line
from uet.errors import NotFoundError, UetError


@command("run",
         context_settings={"allow_interspersed_args": False},
         epilog="\b\nExamples:\n  uet run -- pytest -q\n  uet run --project api --phase PH-2 "
                "--tool aider --timeout 600 -- aider --yes\n\nExits with the command's "
                "own exit code; 124 on timeout, 126/127 when it cannot be started, 128+N when "
                "canceled by signal N (130 SIGINT, 143 SIGTERM, 129 SIGHUP, 131 SIGQUIT), 143 "
                "when canceled by `uet cancel`.")
@click.option("--project", default=None,
              help="Project id (default: the configuration file's, else 'default').")
@click.option("--phase", default=None,
              help="Phase id (default: the configuration file's, else 'default').")
@click.option("--workstream", default=None,
              help="Workstream id (default: the configuration file's, else none).")
@click.option("--tool", default=None, help="Tool id (default: the command's name).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True, max=31_536_000),
              default=None, callback=finite,
              help="Seconds after which the command is killed and the run failed.")
@click.option("--heartbeat", type=click.FloatRange(min=0.05, max=3600), default=10.0,
              show_default=True, callback=finite,
              help="The heartbeat interval of this process, the run's owner (it beats "
                   "twice per interval); a reaper fails the run once two intervals pass "
                   "without a beat.")
@click.option("--finish-timeout", type=click.FloatRange(min=0, max=86_400), default=60.0,
              show_default=True, callback=finite,
              help="Seconds the run's end is retried while the ledger is out of reach.")
@click.option("--repo", default=None, type=click.Path(file_okay=False),
              help="Workstream runs: the target git repository (default: the file's repo).")
@click.option("--parallel", type=click.IntRange(min=1, max=64), default=1, show_default=True,
              help="Workstream runs: how many independent tasks' tools run at once.")
@click.option("--keep-failed", is_flag=True,
              help="Workstream runs: keep the worktrees of failed attempts for inspection.")
@click.option("--plan", "plan_file", default=None, type=click.Path(dir_okay=False),
              metavar="PLAN.json",
              help="Run the workstream WS-ID of this master plan (its tasks' executors, file "
                   "scopes, runtimes and dependencies; acceptance tests become gates).")
@click.option("--skip-test", "skip_tests", multiple=True, metavar="NAME",
              help="With --plan: leave out the acceptance tests of this name (repeatable).")
@click.option("--ignore-dependencies", is_flag=True,
              help="With --plan: run even if a workstream it depends on has no succeeded run "
                   "in the ledger.")
@click.argument("command_argv", nargs=-1, required=True, type=click.UNPROCESSED,
                metavar="WORKSTREAM.yaml | --plan PLAN.json WS-ID | -- CMD [ARGS]...")
def run(ctx: Context, project: str | None, phase: str | None, workstream: str | None,
        tool: str | None,
        timeout: float | None, heartbeat: float, finish_timeout: float, repo: str | None,
        parallel: int, keep_failed: bool, plan_file: str | None, skip_tests: tuple[str, ...],
        ignore_dependencies: bool, command_argv: tuple[str, ...]) -> None:
    """Run a workstream (a first argument naming an existing .yaml/.yml/.json file, or
    `--plan PLAN.json WS-ID`: a workstream of the master plan): every task's tool in its own
    git worktree, every change a patch that is validated, judged by the gates and only then
    committed on the run's branch. Or run CMD and record it as a run with one step attempt
    (exit code, duration, the tail of its output); its output passes through live; Ctrl-C
    cancels it."""
    if plan_file is not None:
        if len(command_argv) != 1:
            later = " (options go before it: uet run --plan PLAN.json --repo PATH WS-ID)" \
                if any(a.startswith("-") for a in command_argv[1:]) else ""
            raise click.UsageError(f"--plan takes one workstream id: uet run --plan PLAN.json "
                                   f"WS-ID{later}")
        _run_plan_workstream(ctx, plan_file, command_argv[0], project, repo, parallel,
                             keep_failed, heartbeat, skip_tests, ignore_dependencies)
        return
    if skip_tests or ignore_dependencies:
        raise click.UsageError("--skip-test and --ignore-dependencies go with --plan")
    if _is_workstream(command_argv):
        _run_workstream(ctx, command_argv[0], project, phase, repo, parallel, keep_failed,
                        heartbeat)
        return
    from uet.engine import run_command
    # --json: stdout holds the one JSON document, so the command's output goes to stderr
    output = {"stdout": _binary(sys.stderr)} if ctx.as_json else {}
    with ctx.open(create=True) as db:
        result = run_command(db, list(command_argv),
                             project_id=ctx.default("project", project, "default"),
                             phase_id=ctx.default("phase", phase, "default"),
                             workstream_id=ctx.default("workstream", workstream),
                             tool_id=tool, timeout=timeout,
                             heartbeat_s=heartbeat, finish_timeout=finish_timeout, **output)
    why = f": {result.error}" if result.error and result.state != "succeeded" else ""
    # the error quotes the command line: escaped like everything else uet prints
    click.echo(one_line(f"uet: run {result.run_id} {result.state} (exit {result.exit_code}, "
                        f"{result.duration_sec:.2f} s){why}"), err=True)
    if ctx.as_json:
        emit_json(result)
    sys.exit(result.exit_code)


WORKSTREAM_SUFFIXES = (".yaml", ".yml", ".json")
EXIT_FAILED, EXIT_CANCELED, EXIT_LOST = 1, 130, 3


def _is_workstream(argv: tuple[str, ...]) -> bool:
    return (len(argv) >= 1 and argv[0].lower().endswith(WORKSTREAM_SUFFIXES)
            and os.path.isfile(argv[0]))


def _run_plan_workstream(ctx: Context, plan_file: str, workstream_id: str,
                         project: str | None,
                         repo: str | None, parallel: int, keep_failed: bool, heartbeat: float,
                         skip_tests: tuple[str, ...], ignore_dependencies: bool) -> None:
    from uet.engine.orchestrator import run_workstream
    from uet.plan import load_plan
    from uet.plan.workstreams import plan_workstream
    mapped = plan_workstream(load_plan(plan_file), workstream_id, plan_path=plan_file,
                             project_id=project,
                             default_project=ctx.default("project", None),
                             repo=repo, skip_tests=skip_tests)
    ws = mapped.workstream
    with ctx.open(create=True) as db:
        if mapped.requires and not ignore_dependencies:
            missing = [w for w in mapped.requires
                       if not db.list_runs({"workstream_id": w, "project_id": ws.project_id,
                                            "state": "succeeded"}, limit=1)]
            if missing:
                raise UetError(
                    f"{workstream_id} depends on {', '.join(missing)}, which "
                    f"{'has' if len(missing) == 1 else 'have'} no succeeded run in project "
                    f"{ws.project_id}: run {'it' if len(missing) == 1 else 'them'} first "
                    "(or pass --ignore-dependencies)")
        result = run_workstream(db, ws, parallel=parallel, keep_failed=keep_failed,
                                heartbeat_s=heartbeat,
                                out=lambda line: click.echo(one_line(f"uet: {line}"),
                                                            err=True))
    _report(ctx, result)


def _run_workstream(ctx: Context, path: str, project: str | None, phase: str | None,
                    repo: str | None,
                    parallel: int, keep_failed: bool, heartbeat: float) -> None:
    from uet.engine.orchestrator import run_workstream
    from uet.engine.workstream import load_workstream
    # --project/--phase (else the configuration file's) fill in what the file leaves out;
    # --repo replaces the file's
    ws = load_workstream(path, project_id=ctx.default("project", project),
                         phase_id=ctx.default("phase", phase),
                         # --repo is a path the user typed: relative to where they are
                         repo=os.path.abspath(repo) if repo else None)
    with ctx.open(create=True) as db:
        result = run_workstream(db, ws, parallel=parallel, keep_failed=keep_failed,
                                heartbeat_s=heartbeat,
                                out=lambda line: click.echo(one_line(f"uet: {line}"),
                                                            err=True))
    _report(ctx, result)


@command("resume", epilog="\b\nExamples:\n  uet resume 01HX\n  uet resume 01HX --parallel 2")
@click.argument("run_id")
@click.option("--parallel", type=click.IntRange(min=1, max=64), default=1, show_default=True,
              help="How many independent tasks' tools run at once.")
@click.option("--keep-failed", is_flag=True,
              help="Keep the worktrees of failed attempts for inspection.")
@click.option("--heartbeat", type=click.FloatRange(min=0.05, max=3600), default=10.0,
              show_default=True, callback=finite,
              help="The heartbeat interval of this process, the run's owner (it beats "
                   "twice per interval).")
def resume(ctx: Context, run_id: str, parallel: int, keep_failed: bool,
           heartbeat: float) -> None:
    """Resume a failed or canceled workstream run (or one whose owner died): tasks whose
    patches are on the run's branch are not run again, interrupted attempts are retried
    while attempts remain, and no patch is ever committed twice."""
    from uet.engine.resume import resume_run
    with ctx.open(write=True) as db:
        run_id = db.resolve_run_id(run_id)
        result = resume_run(db, run_id, parallel=parallel, keep_failed=keep_failed,
                            heartbeat_s=heartbeat,
                            out=lambda line: click.echo(one_line(f"uet: {line}"), err=True))
    _report(ctx, result)


def _report(ctx: Context, result: Any) -> None:
    """A workstream run's outcome: JSON on --json; the exit code says how it ended."""
    if ctx.as_json:
        emit_json({"run_id": result.run_id, "state": result.state, "branch": result.branch,
                   "base": result.base, "head": result.head, "error": result.error,
                   "fenced_off": result.fenced_off,
                   "tasks": {t: vars(o) for t, o in result.tasks.items()}})
    if result.fenced_off is not None:  # reaped while paused: the run is not ours to report
        sys.exit(EXIT_LOST)
    sys.exit({"succeeded": 0, "canceled": EXIT_CANCELED}.get(result.state, EXIT_FAILED))


class _TextSink:
    """A binary sink that writes into a text stream (one without a `buffer`)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, data: bytes) -> None:
        self.stream.write(data.decode("utf-8", "replace"))

    def flush(self) -> None:
        self.stream.flush()


def _binary(stream: Any) -> Any:
    """The binary side of a text stream (for copying a command's output into it)."""
    return getattr(stream, "buffer", None) or _TextSink(stream)


@command("cancel", epilog="\b\nExamples:\n  uet cancel 01HX\n  uet cancel 01HX --wait 30")
@click.argument("run_id")
@click.option("--wait", type=click.FloatRange(min=0, max=3600), default=10.0,
              show_default=True, help="Seconds to wait for the run's owner to stop it.")
def cancel(ctx: Context, run_id: str, wait: float) -> None:
    """Cancel a run: a pending one, or one whose owner is gone, at once; a running one by
    asking its owner (through the ledger), which stops the command and records canceled."""
    from uet.state.recovery import request_cancel
    with ctx.open(write=True) as db:
        run_id = db.resolve_run_id(run_id)
        run = request_cancel(db, run_id)
        deadline = time.monotonic() + wait
        while run["state"] == "running" and time.monotonic() < deadline:
            time.sleep(0.1)
            found = db.get_run(run_id)
            if found is None:  # deleted meanwhile (through the API)
                raise NotFoundError("run", run_id)
            run = found
    if ctx.as_json:
        emit_json(run)
    if run["state"] == "running":
        raise UetError(f"run {run_id}: cancel requested, but its owner has not stopped it "
                       f"within {wait:g} s; it will when it next looks (every half second), "
                       "or `uet recover` fails the run once its owner is gone")
    if not ctx.as_json:
        click.echo(f"run {run_id} {run['state']}: {run['error_message'] or ''}")


@command("recover", epilog="\b\nExample:\n  uet recover --db /srv/ledger/framework.db")
def recover_command(ctx: Context) -> None:
    """Fail the runs whose owner is gone (its process ended, or it missed two heartbeats),
    with their running step attempts — or, for queued runs (`uet submit`) within their
    max_recoveries, re-queue them for the worker pool — and stop what their commands left
    running on this host; prints what it recovered. Every `uet run` does this once on its
    own, every `uet worker` each heartbeat interval."""
    with ctx.open(write=True) as db:
        found = reap(db)
    if ctx.as_json:
        emit_json([{"worker_id": r.worker_id, "reason": r.reason, "runs": r.runs}
                   for r in found])
    elif not found:
        click.echo("nothing to recover: every running run has a live owner")
    else:
        emit_table(None, ["worker_id", "runs", "reason"],
                   ([r.worker_id, joined(r.runs), r.reason] for r in found), state_column=None)


COMMANDS = (run, resume, cancel, recover_command)

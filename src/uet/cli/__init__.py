"""The `uet` command line: a thin layer over `uet.state` and `uet.engine` — parse, call the
library, format. No SQL here.

Exit codes: 0 ok; 1 an error (unknown run, not a ledger, storage trouble, doctor found a
problem); 2 a usage error (bad option or value); `uet run` exits with the recorded command's
own code (124 timeout, 126 cannot execute, 127 not found, 128+N stopped by signal N).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import signal
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import click

from uet import __version__
from uet.cli.output import (FIELD_LIMIT, cell, emit_fields, emit_json, emit_json_line,
                            emit_table, log_text, one_line, progress, shown)
from uet.errors import UetError, ValidationError
from uet.state.locations import check_location

EXIT_ERROR, EXIT_USAGE = 1, 2
DB_HELP = ("Ledger: a SQLite file, or a postgresql:// URL (default: $UET_DATABASE, else "
           ".ledger/framework.db).")


class Context:
    def __init__(self, db_path: str | None, as_json: bool, debug: bool) -> None:
        self.db_path, self.as_json, self.debug = db_path, as_json, debug

    def path(self) -> str:
        """The ledger the command means, checked before anything is opened or created: a
        SQLite file path or a PostgreSQL URL."""
        from uet.state.db import ENV_VAR, resolve_path
        path = resolve_path(self.db_path)
        source = ("--db" if self.db_path is not None
                  else f"${ENV_VAR}" if os.environ.get(ENV_VAR) else "the default ledger")
        check_location(path, source)
        return path

    def open(self, *, create: bool = False, write: bool = False):
        """The ledger: created or upgraded for commands that record; opened for writing, but
        never created, for commands that change what exists (`write`); opened read-only for
        inspection, which never creates, migrates or otherwise changes a ledger. An open
        that fails leaves no folder it created behind."""
        from uet.errors import NotALedgerError
        from uet.state import Database
        from uet.state.db import MEMORY, is_postgres_url
        path = self.path()
        if create:
            return Database(path)  # a failed open leaves no folder it created behind
        if path != MEMORY and not is_postgres_url(path) and not os.path.exists(path):
            raise NotALedgerError(f"no ledger at {path}; create one with `uet init` (or name "
                                  "another with --db)")
        return Database(path, read_only=not write)


def _fail(message: str, code: int) -> None:
    # the message may quote the caller's input or the ledger: one line, no control codes
    click.echo(f"uet: error: {one_line(message)}", err=True)
    sys.exit(code)


def command(group: click.Group, name: str, *, epilog: str = "", json_option: bool = True,
            **settings: Any) -> Callable:
    """A subcommand with the options every command has (--db, --json, --debug) and one
    error policy: one line a person can act on, never a traceback (unless --debug)."""
    def decorate(func: Callable) -> Callable:
        @functools.wraps(func)
        def wrapper(db: str | None, debug: bool, as_json: bool = False, **kwargs: Any):
            ctx = Context(db, as_json, debug)
            try:
                return func(ctx, **kwargs)
            except UetError as exc:
                if debug:
                    import traceback
                    traceback.print_exc()
                _fail(str(exc), EXIT_USAGE if isinstance(exc, ValidationError) else EXIT_ERROR)
        params = [click.option("--db", metavar="PATH", default=None, help=DB_HELP),
                  click.option("--debug", is_flag=True, help="Show tracebacks of errors.")]
        if json_option:
            params.append(click.option("--json", "as_json", is_flag=True,
                                       help="Machine-readable JSON output."))
        for param in params:
            wrapper = param(wrapper)
        return group.command(name, epilog=epilog, **settings)(wrapper)
    return decorate


@click.group(name="uet", context_settings={"help_option_names": ["-h", "--help"]},
             epilog="Examples:\n\n\b\n  uet run --project demo -- pytest -q\n  uet runs --state "
                    "failed --since 1d\n  uet show 01HX\n  uet events --follow")
@click.version_option(__version__, prog_name="uet", message="%(prog)s %(version)s")
def cli() -> None:
    """uet: the run ledger of AI coding pipelines — record commands as runs and see
    everything in the ledger."""


def main(argv: list[str] | None = None) -> None:
    """The console script: click parses; every error, usage errors included, is one line."""
    # the PostgreSQL pool's own log lines (reconnect attempts ...) are not for the user:
    # uet says in one line what went wrong
    pool_log = logging.getLogger("psycopg")
    pool_log.addHandler(logging.NullHandler())
    pool_log.propagate = False
    for stream in (sys.stdout, sys.stderr):  # a character the stream cannot encode is
        with contextlib.suppress(AttributeError, ValueError):  # escaped, not a crash
            stream.reconfigure(errors="backslashreplace")
    try:
        code = cli.main(args=argv, prog_name="uet", standalone_mode=False)
    except getattr(click.exceptions, "NoArgsIsHelpError", ()) as exc:
        click.echo(exc.ctx.get_help())  # bare `uet`: the help, not an error
        sys.exit(0)
    except click.UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        _fail(f"{exc.format_message()}{hint}", EXIT_USAGE)
    except click.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code)
    except click.Abort:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


# -- set-up ----------------------------------------------------------------------------

@command(cli, "init", epilog="\b\nExample:\n  uet init --db /srv/ledger/framework.db")
def init(ctx: Context) -> None:
    """Create the ledger (or bring an existing one up to date)."""
    from uet.state.db import display_name
    with ctx.open(create=True) as db:
        facts = {"database": display_name(db.db_path), "schema_version": db.schema_version()}
        _reap(db)
    if ctx.as_json:
        emit_json(facts)
    else:
        click.echo(f"ledger {shown(facts['database'], FIELD_LIMIT)} at schema version "
                   f"{facts['schema_version']}")


@command(cli, "migrate", epilog="\b\nExample:\n  uet migrate --db old-ledger.db")
def migrate(ctx: Context) -> None:
    """Upgrade the ledger's schema; prints the version before and after."""
    from uet.state.db import display_name, peek_version
    path = ctx.path()
    before = peek_version(path)
    path = display_name(path)  # a URL's password is never printed
    if not ctx.as_json:
        click.echo(f"{shown(path, FIELD_LIMIT)}: schema version {_version_text(before)}; "
                   "migrating ...", err=True)
    with progress(f"migrating {path}"), ctx.open(create=True) as db:
        after = db.schema_version()
        _reap(db)
    if ctx.as_json:
        emit_json({"database": path, "before": before, "after": after})
    else:
        click.echo(f"{shown(path, FIELD_LIMIT)}: schema version {_version_text(before)} -> "
                   f"{after}")


def _version_text(version: int | None) -> str:
    return {None: "none (new ledger)", 0: "0 (seed ledger)"}.get(version, str(version))


@command(cli, "doctor", epilog="\b\nExample:\n  uet doctor --json")
def doctor(ctx: Context) -> None:
    """Check the ledger: file, schema version, pragmas, integrity, row counts.
    Exits 1 when something is wrong."""
    from uet.state.db import display_name
    path = ctx.path()  # a --db that cannot name a ledger is an error, not a finding
    try:
        with ctx.open() as db:
            facts = db.doctor()
    except ValidationError:
        raise  # a usage error, not a finding
    except UetError as exc:  # no ledger, a corrupt or unreadable file, server unreachable
        facts = {"database": display_name(path), "problems": [str(exc)]}
    else:
        facts["problems"] = _problems(facts)
    problems = facts["problems"]
    if ctx.as_json:
        emit_json(facts)
    else:
        emit_fields("ledger", [(k, v) for k, v in facts.items() if k != "row_counts"])
        if "row_counts" in facts:
            emit_table("rows", ["table", "rows"], sorted(facts["row_counts"].items()),
                       state_column=None)
        click.echo("ok" if not problems else "problems found")
    if problems:
        sys.exit(EXIT_ERROR)


def _problems(facts: dict[str, Any]) -> list[str]:
    problems = []
    if facts["integrity_check"] != ["ok"]:
        problems.append("integrity_check: "
                        + "; ".join(map(str, facts["integrity_check"][:5])))
    if facts["foreign_key_violations"]:
        problems.append(f"{facts['foreign_key_violations']} foreign key violations")
    if facts["journal_mode"] not in ("wal", "memory"):
        problems.append(f"journal_mode is {facts['journal_mode']}, not wal")
    if not facts["foreign_keys"]:
        problems.append("foreign keys are not enforced")
    return problems


# -- recording -------------------------------------------------------------------------

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


def _reap(db) -> list:
    """The reaper pass every uet process that writes to a ledger makes once: runs whose
    owner is gone are failed (uet.state.recovery)."""
    from uet.state.recovery import recover
    return recover(db)


@command(cli, "recover", epilog="\b\nExample:\n  uet recover --db /srv/ledger/framework.db")
def recover_command(ctx: Context) -> None:
    """Fail the runs whose owner is gone (its process ended, or it missed two heartbeats),
    with their running step attempts, and stop what their commands left running on this
    host; prints what it recovered. Every `uet run` does this once on its own."""
    with ctx.open(write=True) as db:
        found = _reap(db)
    if ctx.as_json:
        emit_json([{"worker_id": r.worker_id, "reason": r.reason, "runs": r.runs}
                   for r in found])
    elif not found:
        click.echo("nothing to recover: every running run has a live owner")
    else:
        emit_table(None, ["worker_id", "runs", "reason"],
                   ([r.worker_id, _joined(r.runs), r.reason] for r in found), state_column=None)


@command(cli, "cancel", epilog="\b\nExamples:\n  uet cancel 01HX\n  uet cancel 01HX --wait 30")
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
            run = db.get_run(run_id)
    if ctx.as_json:
        emit_json(run)
    if run["state"] == "running":
        raise UetError(f"run {run_id}: cancel requested, but its owner has not stopped it "
                       f"within {wait:g} s; it will when it next looks (every half second), "
                       "or `uet recover` fails the run once its owner is gone")
    if not ctx.as_json:
        click.echo(f"run {run_id} {run['state']}: {run['error_message'] or ''}")


def _owner_lost(db, rows: list) -> dict[str, str]:
    """{run_id: why} of the running runs among `rows` whose owner is gone (nothing written:
    the next reaper pass fails them)."""
    from uet.state import WorkerLifecycle
    from uet.state.recovery import owner_lost
    workers = WorkerLifecycle(db)
    lost = {}
    for row in rows:
        if row["state"] == "running" and row.get("worker_id"):
            worker = workers.get_worker(row["worker_id"])
            why = owner_lost(worker) if worker is not None else "its owner is not recorded"
            if why:
                lost[row["run_id"]] = why
    return lost


def _finite(_ctx, param, value):
    if value is not None and value != value:  # NaN passes every range check
        raise click.BadParameter("must be a number", param=param)
    return value


@command(cli, "run",
         context_settings={"allow_interspersed_args": False},
         epilog="\b\nExamples:\n  uet run -- pytest -q\n  uet run --project api --phase PH-2 "
                "--tool aider --timeout 600 -- aider --yes\n\nExits with the command's "
                "own exit code; 124 on timeout, 126/127 when it cannot be started, 128+N when "
                "canceled by signal N (130 SIGINT, 143 SIGTERM, 129 SIGHUP, 131 SIGQUIT), 143 "
                "when canceled by `uet cancel`.")
@click.option("--project", default="default", show_default=True, help="Project id.")
@click.option("--phase", default="default", show_default=True, help="Phase id.")
@click.option("--workstream", default=None, help="Workstream id.")
@click.option("--tool", default=None, help="Tool id (default: the command's name).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True, max=31_536_000),
              default=None, callback=_finite,
              help="Seconds after which the command is killed and the run failed.")
@click.option("--heartbeat", type=click.FloatRange(min=0.05, max=3600), default=10.0,
              show_default=True, callback=_finite,
              help="Seconds between the heartbeats of this process, the run's owner; a "
                   "reaper fails the run once two are missed.")
@click.option("--finish-timeout", type=click.FloatRange(min=0, max=86_400), default=60.0,
              show_default=True, callback=_finite,
              help="Seconds the run's end is retried while the ledger is out of reach.")
@click.argument("command_argv", nargs=-1, required=True, type=click.UNPROCESSED,
                metavar="-- CMD [ARGS]...")
def run(ctx: Context, project: str, phase: str, workstream: str | None, tool: str | None,
        timeout: float | None, heartbeat: float, finish_timeout: float,
        command_argv: tuple[str, ...]) -> None:
    """Run CMD and record it as a run with one step attempt (exit code, duration, the tail
    of its output). Its output passes through live; Ctrl-C cancels it."""
    from uet.engine import run_command
    # --json: stdout holds the one JSON document, so the command's output goes to stderr
    output = {"stdout": _binary(sys.stderr)} if ctx.as_json else {}
    with ctx.open(create=True) as db:
        result = run_command(db, list(command_argv), project_id=project, phase_id=phase,
                             workstream_id=workstream, tool_id=tool, timeout=timeout,
                             heartbeat_s=heartbeat, finish_timeout=finish_timeout, **output)
    why = f": {result.error}" if result.error and result.state != "succeeded" else ""
    # the error quotes the command line: escaped like everything else uet prints
    click.echo(one_line(f"uet: run {result.run_id} {result.state} (exit {result.exit_code}, "
                        f"{result.duration_sec:.2f} s){why}"), err=True)
    if ctx.as_json:
        emit_json(result)
    sys.exit(result.exit_code)


# -- inspection ------------------------------------------------------------------------

RUN_COLUMNS = ["run_id", "project_id", "phase_id", "workstream_id", "state", "exit_code",
               "created_at", "duration"]
_SINCE = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(value: str | None) -> str | None:
    """`--since`: an ISO timestamp, or an age like 30m, 2h, 7d (seconds to weeks)."""
    if value is None:
        return None
    match = _SINCE.match(value.strip())
    if match:
        try:
            then = datetime.now(timezone.utc) - timedelta(**{_UNITS[match[2]]: int(match[1])})
        except OverflowError:
            raise ValidationError(f"--since {value} reaches before the year 1",
                                  field="since") from None
        return then.isoformat()
    from uet.state.ids import normalize_timestamp
    try:
        return normalize_timestamp(value, "created_at")
    except ValueError:
        raise ValidationError(
            f"--since {value!r} is neither an age (a number and a unit: 30s, 15m, 2h, 7d, "
            "1w) nor an ISO timestamp (2026-01-31, 2026-01-31T12:00:00Z); it selects the "
            "runs created_at or after it", field="since") from None


def duration(row: dict[str, Any]) -> str | None:
    if not row.get("started_at") or not row.get("ended_at"):
        return None
    try:  # a stored value may be anything (raw SQL): no duration then, not a crash
        seconds = (datetime.fromisoformat(row["ended_at"])
                   - datetime.fromisoformat(row["started_at"])).total_seconds()
    except (TypeError, ValueError, OverflowError):
        return None
    return f"{seconds:.2f}s"


@command(cli, "runs", epilog="\b\nExamples:\n  uet runs --project api --state failed\n"
                              "  uet runs --since 2h --limit 20 --json")
@click.option("--project", help="Only runs of this project.")
@click.option("--phase", help="Only runs of this phase.")
@click.option("--workstream", help="Only runs of this workstream.")
@click.option("--state", help="Only runs in this state (pending, running, succeeded, failed, "
                              "quarantined, canceled).")
@click.option("--since", help="Only runs created since: an ISO timestamp or an age (30m, 2h, "
                              "7d).")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
def runs(ctx: Context, project, phase, workstream, state, since, limit) -> None:
    """List runs, newest first."""
    filters = {k: v for k, v in (("project_id", project), ("phase_id", phase),
                                 ("workstream_id", workstream), ("state", state)) if v}
    with ctx.open() as db:
        rows = db.list_runs(filters, limit, since=parse_since(since))
        lost = {} if ctx.as_json else _owner_lost(db, rows)
    if ctx.as_json:
        emit_json(rows)
    else:
        shown_rows = [{**r, "state": "running (owner lost)"} if r["run_id"] in lost else r
                      for r in rows]
        emit_table(None, RUN_COLUMNS, ([*(r[c] for c in RUN_COLUMNS[:-1]), duration(r)]
                                       for r in shown_rows))


@command(cli, "show", epilog="\b\nExamples:\n  uet show            # the newest run\n"
                              "  uet show 01HX --json")
@click.argument("run_id", required=False)
def show(ctx: Context, run_id: str | None) -> None:
    """Show a run (a unique prefix of its id will do; none: the newest run): its step
    attempts with durations, its events, patches and gates."""
    from uet.state import GateLedger, PatchLedger
    with ctx.open() as db:
        run_id = _run_or_newest(db, run_id)
        document = {"run": db.get_run(run_id), "step_attempts": db.list_step_attempts(run_id),
                    "events": db.list_events(run_id),
                    "patches": PatchLedger(db).history_of_run(run_id),
                    "gates": GateLedger(db).list_gates(run_id=run_id)}
        lost = {} if ctx.as_json else _owner_lost(db, [document["run"]])
    if ctx.as_json:
        emit_json(document)
        return
    run_row = document["run"]
    if run_id in lost:  # shown, not written: the next reaper pass fails it
        run_row = {**run_row, "state": f"running (owner lost: {lost[run_id]})"}
    emit_fields(f"run {run_id}", [(k, v) for k, v in run_row.items() if k != "run_id"]
                + [("duration", duration(run_row))])
    emit_table("step attempts", ["sequence", "attempt", "step_attempt_id", "tool_id", "state",
                                 "exit_code", "duration"],
               ([s["sequence"], s["attempt"], s["step_attempt_id"], s["tool_id"], s["state"],
                 s["exit_code"], duration(s)] for s in document["step_attempts"]))
    if any(_tail(s, "stdout_tail") or _tail(s, "stderr_tail")
           for s in document["step_attempts"]):
        click.echo(f"\nkept output: uet logs {run_id} (stdout), uet logs {run_id} --stderr "
                   "(add --step N for one step)")
    if document["patches"]:
        emit_table("patches", ["patch_id", "step_attempt_id", "files", "entries"],
                   ([p["patch_id"], p["step_attempt_id"], _joined(p["files"]),
                     _joined(f"{e['ledger_id']}:{e['state']}" for e in p["entries"])]
                    for p in document["patches"]), state_column=None)
    if document["gates"]:
        emit_table("gates", ["gate_id", "name", "gate_type", "state", "exit_code",
                             "duration_sec"],
                   ([g["gate_id"], g["name"], g["gate_type"], g["state"], g["exit_code"],
                     g["duration_sec"]] for g in document["gates"]))
    emit_table("events", ["seq", "timestamp", "event_type", "data"],
               ([e["seq"], e["timestamp"], e["event_type"], e["data"]]
                for e in document["events"]), state_column=None)


@command(cli, "logs", epilog="\b\nExamples:\n  uet logs            # the newest run's output\n"
                              "  uet logs 01HX --step 2 --stderr")
@click.argument("run_id", required=False)
@click.option("--step", type=click.IntRange(min=1), default=None,
              help="Only the step attempts of this sequence number.")
@click.option("--stderr", "which", flag_value="stderr", default="stdout",
              help="The tail of stderr instead of stdout.")
def logs(ctx: Context, run_id: str | None, step: int | None, which: str) -> None:
    """Print the kept output (the last 8 KB of stdout, or of stderr) of a run's step
    attempts (a unique prefix of its id will do; none: the newest run), whole."""
    with ctx.open() as db:
        run_id = _run_or_newest(db, run_id)
        steps = [s for s in db.list_step_attempts(run_id)
                 if step is None or s["sequence"] == step]
    if step is not None and not steps:
        raise UetError(f"run {run_id} has no step attempt with sequence {step}")
    tails = [{"step_attempt_id": s["step_attempt_id"], "sequence": s["sequence"],
              "attempt": s["attempt"], "tool_id": s["tool_id"],
              "stdout_tail": _tail(s, "stdout_tail"), "stderr_tail": _tail(s, "stderr_tail")}
             for s in steps]
    if ctx.as_json:
        emit_json(tails)
        return
    for tail in tails:
        if len(tails) > 1:  # which step each part is from (on stderr: stdout stays the log)
            click.echo(f"== step {tail['sequence']}.{tail['attempt']} "
                       f"{shown(tail['tool_id'])} ({which}) ==", err=True)
        text = tail[f"{which}_tail"] or ""
        click.echo(log_text(text), nl=bool(text) and not text.endswith("\n"))


def _tail(step: dict[str, Any], key: str) -> str | None:
    meta = step["metadata"] if isinstance(step["metadata"], dict) else {}
    value = meta.get(key)
    return value if isinstance(value, str) else None


def _run_or_newest(db, run_id: str | None) -> str:
    """The run named by a unique id prefix, or the newest run."""
    from uet.state.db import display_name
    if run_id is None:
        newest = db.list_runs(limit=1)
        if not newest:
            raise UetError(f"the ledger {display_name(db.db_path)} has no runs yet; "
                           "record one with `uet run -- CMD`")
        return newest[0]["run_id"]
    return db.resolve_run_id(run_id)


@command(cli, "events", epilog="\b\nExamples:\n  uet events 01HX\n"
                                "  uet events --follow --json | jq .event_type")
@click.argument("run_id", required=False)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events as other "
                                                   "processes write them: of one run until "
                                                   "it is finished, of the whole ledger "
                                                   "until Ctrl-C.")
@click.option("--since-seq", type=click.IntRange(min=0), default=0,
              help="Start after this event sequence number.")
@click.option("--interval", type=click.FloatRange(min=0.01, max=60), default=0.2,
              show_default=True, callback=_finite,
              help="Seconds between reads when following (on PostgreSQL new events wake the "
                   "follower at once; this is then only the longest wait).")
def events(ctx: Context, run_id: str | None, follow: bool, since_seq: int,
           interval: float) -> None:
    """Print the event trail (of one run, or of the whole ledger) in order."""
    lines = follow  # --follow prints JSON lines, one per event, however it ends
    with ctx.open() as db:
        if run_id is not None:
            run_id = db.resolve_run_id(run_id)
            follow = follow and db.get_run(run_id)["state"] not in FINISHED
        if follow:
            # Ctrl-C (SIGINT) ends following, even when the shell that started uet in the
            # background set SIGINT to be ignored (Python then never raises
            # KeyboardInterrupt)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            # contextlib.closing: the follower's connection (LISTEN on PostgreSQL) is
            # released when the command stops
            with contextlib.closing(db.follow_events(since_seq, run_id=run_id,
                                                     poll_interval=interval)) as trail:
                try:
                    for event in trail:
                        _print_event(ctx, event)
                        since_seq = event["seq"]
                        if run_id is not None and _finishes(event):
                            break  # the rest of what is there now, then done
                    else:
                        return
                except KeyboardInterrupt:
                    return
        cursor = since_seq
        rows = []
        while True:
            batch = db.events_since(cursor, run_id=run_id, limit=10_000)
            if not batch:
                break
            cursor = batch[-1]["seq"]
            if ctx.as_json and not lines:
                rows.extend(batch)
            else:
                for event in batch:
                    _print_event(ctx, event)
        if ctx.as_json and not lines:
            emit_json(rows)


FINISHED = ("succeeded", "failed", "canceled", "quarantined")


def _finishes(event: dict[str, Any]) -> bool:
    """Whether the event is its run's move into a finished state."""
    data = event["data"] if isinstance(event["data"], dict) else {}
    return event["event_type"] == "run.state_changed" and data.get("to") in FINISHED


def _print_event(ctx: Context, event: dict[str, Any]) -> None:
    if ctx.as_json:
        emit_json_line(event)
    else:
        click.echo(f"{cell(event['seq']):>8}  {cell(event['timestamp'])}  "
                   f"{cell(event['run_id']):26}  {cell(event['event_type']):<28} "
                   f"{cell(event['data'], FIELD_LIMIT)}")
        sys.stdout.flush()


def _joined(values: Any) -> str:
    """A list of stored texts as one cell's text (anything else as its JSON)."""
    if not isinstance(values, list) and not hasattr(values, "__next__"):
        return values
    return ", ".join(v if isinstance(v, str) else cell(v) for v in values)


@command(cli, "workers", epilog="\b\nExample:\n  uet workers --state BUSY")
@click.option("--state", help="Only workers in this state (SPAWNING, IDLE, BUSY, DRAINING, "
                              "TERMINATED).")
def workers(ctx: Context, state: str | None) -> None:
    """List workers."""
    from uet.state import WorkerLifecycle
    with ctx.open() as db:
        rows = WorkerLifecycle(db).list_workers(state)
    if ctx.as_json:
        emit_json(rows)
    else:
        emit_table(None, ["worker_id", "worker_type", "state", "current_run_id",
                          "last_heartbeat", "affinity"],
                   ([w.worker_id, w.worker_type, w.state, w.current_run_id, w.last_heartbeat,
                     w.affinity] for w in rows))


@command(cli, "patches", epilog="\b\nExample:\n  uet patches --state quarantined")
@click.option("--state", help="Only entries in this state.")
@click.option("--phase", help="Only entries of this phase.")
def patches(ctx: Context, state: str | None, phase: str | None) -> None:
    """List patch ledger entries."""
    from uet.state import PatchLedger
    with ctx.open() as db:
        rows = PatchLedger(db).list_entries(state, phase)
    if ctx.as_json:
        emit_json(rows)
    else:
        emit_table(None, ["ledger_id", "patch_id", "phase_id", "state", "quarantine_reason",
                          "updated_at"],
                   ([e.ledger_id, e.patch_id, e.phase_id, e.state, e.quarantine_reason,
                     e.updated_at] for e in rows))


@command(cli, "gates", epilog="\b\nExample:\n  uet gates --phase PH-1 --state FAILED")
@click.option("--phase", help="Only gates of this phase.")
@click.option("--state", help="Only gates in this state.")
@click.option("--run", "run_id", help="Only gates of this run (a unique id prefix will do).")
def gates(ctx: Context, phase: str | None, state: str | None, run_id: str | None) -> None:
    """List test gates."""
    from uet.state import GateLedger
    with ctx.open() as db:
        if run_id is not None:
            run_id = db.resolve_run_id(run_id)
        rows = GateLedger(db).list_gates(phase, state, run_id)
    if ctx.as_json:
        emit_json(rows)
    else:
        emit_table(None, ["gate_id", "name", "gate_type", "phase_id", "state", "exit_code",
                          "depends_on", "blocked_by"],
                   ([g["gate_id"], g["name"], g["gate_type"], g["phase_id"], g["state"],
                     g["exit_code"], _joined(g["depends_on"]), g["blocked_by"]]
                    for g in rows))

"""`uet runs`, `show`, `logs`, `events`, `workers`, `patches`, `gates`: reading the ledger.
They open it read-only, so inspecting never creates, migrates or changes a ledger."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Generator
from typing import Any, TypeGuard, cast

import click

from uet.cli.common import Context, command, display_name, finite
from uet.cli.output import (FIELD_LIMIT, cell, emit_fields, emit_json, emit_json_line,
                            emit_table, joined, log_text, shown)
from uet.text import usage_line
from uet.errors import UetError

RUN_COLUMNS = ["run_id", "project_id", "phase_id", "workstream_id", "state", "exit_code",
               "created_at", "duration"]
# the states in which a run's work is over: following one run ends when it enters one
# (`failed` may still become quarantined, but nothing runs any more)
FINISHED = ("succeeded", "failed", "canceled", "quarantined")


# -- runs ------------------------------------------------------------------------------

@command("runs", epilog="\b\nExamples:\n  uet runs --project api --state failed\n"
                         "  uet runs --since 2h --limit 20 --json")
@click.option("--project", help="Only runs of this project.")
@click.option("--phase", help="Only runs of this phase.")
@click.option("--workstream", help="Only runs of this workstream.")
@click.option("--state", help="Only runs in this state (pending, running, succeeded, failed, "
                              "quarantined, canceled).")
@click.option("--since", help="Only runs created since: an ISO timestamp or an age (30m, 2h, "
                              "7d).")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
def runs(ctx: Context, project: str | None, phase: str | None, workstream: str | None,
         state: str | None, since: str | None, limit: int) -> None:
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


def parse_since(value: str | None, *,
                selects: str = "the runs created_at or after it") -> str | None:
    """`--since`: see `uet.state.views.since_timestamp`."""
    from uet.state.views import since_timestamp
    return since_timestamp(value, selects=selects)


def duration(row: dict[str, Any]) -> str | None:
    """A run's or step attempt's duration as text (None until it has ended)."""
    from uet.state.views import seconds_between
    if not row.get("started_at") or not row.get("ended_at"):
        return None
    seconds = seconds_between(row["started_at"], row["ended_at"])
    return None if seconds is None else f"{seconds:.2f}s"


def _owner_lost(db: Any, rows: list[dict[str, Any]]) -> dict[str, str]:
    from uet.state.views import owners_lost
    return owners_lost(db, rows)


# -- one run ---------------------------------------------------------------------------

@command("show", epilog="\b\nExamples:\n  uet show            # the newest run\n"
                         "  uet show 01HX --json")
@click.argument("run_id", required=False)
def show(ctx: Context, run_id: str | None) -> None:
    """Show a run (a unique prefix of its id will do; none: the newest run): its step
    attempts with durations, its events, patches and gates, and the usage (tokens, cost)
    its tools reported."""
    from uet.state.views import run_document
    with ctx.open() as db:
        run_id = _run_or_newest(db, run_id)
        document = run_document(db, run_id)
        lost = {} if ctx.as_json else _owner_lost(db, [document["run"]])
    usage = document.get("usage")
    if ctx.as_json:
        emit_json(document)
        return
    run_row = _summarised(document["run"])
    if run_id in lost:  # shown, not written: the next reaper pass fails it
        run_row = {**run_row, "state": f"running (owner lost: {lost[run_id]})"}
    emit_fields(f"run {run_id}", [(k, v) for k, v in run_row.items()
                                  if k != "run_id" and not _queue_default(k, v)]
                + [("duration", duration(run_row))]
                + ([("usage", usage_line(usage))] if usage else [])
                + git_fields(document["run"].get("metadata")))
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
                   ([p["patch_id"], p["step_attempt_id"], joined(p["files"]),
                     joined(f"{e['ledger_id']}:{e['state']}" for e in p["entries"])]
                    for p in document["patches"]), state_column=None)
    if document["gates"]:
        emit_table("gates", ["gate_id", "name", "gate_type", "state", "exit_code",
                             "duration_sec"],
                   ([g["gate_id"], g["name"], g["gate_type"], g["state"], g["exit_code"],
                     g["duration_sec"]] for g in document["gates"]))
    emit_table("events", ["seq", "timestamp", "event_type", "data"],
               ([e["seq"], e["timestamp"], e["event_type"], e["data"]]
                for e in document["events"]), state_column=None)


def _queue_default(name: str, value: object) -> bool:
    """Queue fields of a run that was never queued: not worth a line."""
    return (name == "priority" and value is None) or (name == "recoveries" and value == 0)


def _summarised(run: dict[str, Any]) -> dict[str, Any]:
    """The run as `uet show` prints it: a workstream run's metadata keeps the workstream
    file it ran (for `uet resume`); the table names its size, `--json` has it whole. The
    git context of `uet run -- CMD` is shown on lines of its own (`git_fields`)."""
    meta = run.get("metadata")
    if not isinstance(meta, dict):
        return run
    if isinstance(meta.get("git"), dict):
        meta = {**meta, "git": "<the git lines below: uet show --json>"}
    spec = meta.get("workstream")
    if isinstance(spec, dict) and isinstance(spec.get("content"), str):
        size = len(spec["content"].encode("utf-8", "surrogatepass"))
        meta = {**meta, "workstream": {
            **spec, "content": f"<the workstream file, {size:,} bytes: uet show --json>"}}
    return {**run, "metadata": meta}


GIT_PATHS_SHOWN = 10  # changed paths `uet show` lists (--json has every one recorded)


def git_fields(metadata: object) -> list[tuple[str, str]]:
    """The git context a run recorded (`metadata.git`, see uet.engine.git.CommandGitContext)
    as `uet show` fields: one line

        git  main @ 1a2b3c4 (dirty before: no, after: yes) — 3 files changed, +10 -2

    then the first changed paths, one per line (`M  src/app.py  +8 -2`), and git's error
    when there was one. Nothing when the run recorded none; whatever a ledger holds (the
    record may be damaged or hand-written) is shown, never a reason to fail."""
    git = metadata.get("git") if isinstance(metadata, dict) else None
    if not isinstance(git, dict):
        return []
    fields: list[tuple[str, str]] = []
    if any(key in git for key in ("commit", "branch", "dirty_before")):
        fields.append(("git", _git_line(git)))
        changed = git.get("changed")
        listed = changed.get("paths") if isinstance(changed, dict) else None
        paths = [p for p in listed if isinstance(p, dict)] if isinstance(listed, list) else []
        fields += [("", _path_line(p)) for p in paths[:GIT_PATHS_SHOWN]]
        files = changed.get("files") if isinstance(changed, dict) else None
        total = files if _count(files) else len(paths)
        more = total - len(paths[:GIT_PATHS_SHOWN])
        if more > 0:
            where = "uet show --json" if len(paths) >= total else \
                f"uet show --json lists the first {len(paths):,}"
            fields.append(("", f"… and {more:,} more ({where})"))
    if git.get("error") is not None:
        fields.append(("" if fields else "git", f"error: {git['error']}"))
    warnings = git.get("warnings")
    fields += [("", f"warning: {w}") for w in (warnings if isinstance(warnings, list) else [])]
    return fields


def _count(value: object) -> TypeGuard[int]:
    """Whether `value` is a count (a whole number >= 0, not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _short(sha: object) -> str:
    return sha[:7] if isinstance(sha, str) and sha else "(no commit yet)"


def _yes_no(value: object) -> str:
    return "yes" if value is True else "no" if value is False else "?"


def _git_line(git: dict[str, Any]) -> str:
    """`main @ 1a2b3c4 (dirty before: no, after: yes) — 3 files changed, +10 -2`; a HEAD
    the command moved shows both commits (`@ 1a2b3c4 → 9f8e7d6`), a detached one
    `detached HEAD`, an unborn branch `(no commit yet)`."""
    branch = git.get("branch")
    where = branch if isinstance(branch, str) and branch else "detached HEAD"
    if "branch_after" in git:
        after = git["branch_after"]
        where += f" → {after if isinstance(after, str) and after else 'detached HEAD'}"
    where += f" @ {_short(git.get('commit'))}"
    if "commit_after" in git:
        where += f" → {_short(git['commit_after'])}"
    line = (f"{where} (dirty before: {_yes_no(git.get('dirty_before'))}, after: "
            f"{_yes_no(git.get('dirty_after'))})")
    changed = git.get("changed")
    if isinstance(changed, dict):
        files = changed.get("files")
        files = files if _count(files) else 0
        line += (f" — {files:,} file{'' if files == 1 else 's'} changed, "
                 f"+{_number(changed.get('insertions'))} -{_number(changed.get('deletions'))}")
    return line


def _number(value: object) -> str:
    return f"{value:,}" if _count(value) else "?"


def _path_line(entry: dict[str, Any]) -> str:
    """One changed path: `M   src/app.py  +8 -2`, `R   new.py (from old.py)  +0 -0`,
    `??  data.bin  binary`."""
    status = entry.get("status")
    path = entry.get("path")
    line = (f"{status if isinstance(status, str) else '?':<3} "
            f"{path if isinstance(path, str) else '?'}")
    old = entry.get("old_path")
    if isinstance(old, str):
        line += f" (from {old})"
    if entry.get("binary") is True:
        return f"{line}  binary"
    return f"{line}  +{_number(entry.get('insertions'))} -{_number(entry.get('deletions'))}"


@command("logs", epilog="\b\nExamples:\n  uet logs            # the newest run's output\n"
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


def _run_or_newest(db: Any, run_id: str | None) -> str:
    """The run named by a unique id prefix, or the newest run."""
    if run_id is None:
        newest = db.list_runs(limit=1)
        if not newest:
            raise UetError(f"the ledger {display_name(db.db_path)} has no runs yet; "
                           "record one with `uet run -- CMD`")
        return str(newest[0]["run_id"])
    return str(db.resolve_run_id(run_id))


# -- the event trail -------------------------------------------------------------------

@command("events", epilog="\b\nExamples:\n  uet events 01HX\n"
                           "  uet events --follow --json | jq .event_type")
@click.argument("run_id", required=False)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events as other "
                                                   "processes write them: of one run until "
                                                   "it is finished, of the whole ledger "
                                                   "until Ctrl-C.")
@click.option("--since-seq", type=click.IntRange(min=0), default=0,
              help="Start after this event sequence number.")
@click.option("--interval", type=click.FloatRange(min=0.01, max=60), default=0.2,
              show_default=True, callback=finite,
              help="Seconds between reads when following (on PostgreSQL new events wake the "
                   "follower at once; this is then only the longest wait).")
def events(ctx: Context, run_id: str | None, follow: bool, since_seq: int,
           interval: float) -> None:
    """Print the event trail (of one run, or of the whole ledger) in order."""
    lines = follow  # --follow prints JSON lines, one per event, however it ends
    with ctx.open() as db:
        if run_id is not None:
            run_id = db.resolve_run_id(run_id)
            run = db.get_run(run_id)
            follow = follow and run is not None and run["state"] not in FINISHED
        if follow:
            # Ctrl-C (SIGINT) ends following, even when the shell that started uet in the
            # background set SIGINT to be ignored (Python then never raises
            # KeyboardInterrupt)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            # contextlib.closing: the follower's connection (LISTEN on PostgreSQL) is
            # released when the command stops
            following = cast("Generator[dict[str, Any], None, None]", db.follow_events(
                since_seq, run_id=run_id, poll_interval=interval))  # a generator: closable
            with contextlib.closing(following) as trail:
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


# -- the V2 records: workers, patches, gates -------------------------------------------

@command("workers", epilog="\b\nExample:\n  uet workers --state BUSY\n\nheartbeat_age: "
                          "seconds since its last heartbeat (or since it registered); "
                          "stale: yes when its process is gone or it missed two heartbeat "
                          "intervals (the next reaper pass retires it), - when it declared "
                          "no interval.")
@click.option("--state", help="Only workers in this state (SPAWNING, IDLE, BUSY, DRAINING, "
                              "TERMINATED).")
def workers(ctx: Context, state: str | None) -> None:
    """List workers: host, pid, state, current run, heartbeat age, and whether each is
    stale."""
    from uet.state.views import workers_document
    with ctx.open() as db:
        shown_rows = workers_document(db, state)
    if ctx.as_json:
        emit_json(shown_rows)
    else:
        emit_table(None, ["worker_id", "worker_type", "state", "host", "pid", "current_run_id",
                          "heartbeat_age", "stale"],
                   ([w["worker_id"], w["worker_type"], w["state"], w["host"], w["pid"],
                     w["current_run_id"], _age_text(w["heartbeat_age_s"]),
                     {True: "yes", False: "no", None: None}[w["stale"]]]
                    for w in shown_rows))


def _age_text(seconds: float | None) -> str | None:
    return None if seconds is None else f"{seconds:,.1f}s"


@command("patches", epilog="\b\nExample:\n  uet patches --state quarantined")
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


@command("gates", epilog="\b\nExample:\n  uet gates --phase PH-1 --state FAILED")
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
                     g["exit_code"], joined(g["depends_on"]), g["blocked_by"]]
                    for g in rows))


COMMANDS = (runs, show, logs, events, workers, patches, gates)

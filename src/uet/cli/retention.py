"""`uet gc`: deleting finished runs, with everything that belongs to them, in short batches
(the work is uet.state.retention's, through `Database.gc`; here it is only shown)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Callable

import click

from uet.cli.common import Context, command
from uet.cli.output import emit_json, emit_table, one_line

if TYPE_CHECKING:  # not loaded by `uet --help`
    from rich.progress import Progress, TaskID

    from uet.state.retention import GcResult

# uet.state.retention.TABLES, in the order a person reads them (the run first); spelled out
# so that `uet --help` does not load the state package (tests/test_cli_gc.py checks them)
SHOWN_TABLES = ("runs", "step_attempts", "run_events", "patches", "patch_ledger_entries",
                "test_gates", "gate_dependencies")

# the API's field names (ValidationError.field) as this command's options
OPTIONS = {"older_than": "--older-than", "states": "--state", "project_id": "--project",
           "keep_last": "--keep-last", "batch_size": "--batch"}


@command("gc", epilog="\b\nExamples:\n  uet gc --older-than 30d --dry-run\n"
                      "  uet gc --older-than 30d\n"
                      "  uet gc --older-than 7d --state succeeded,canceled --keep-last 20\n"
                      "  uet gc --older-than 2026-01-01 --project api --vacuum\n\n"
                      "A run goes when it is finished (succeeded, failed, quarantined, "
                      "canceled; --state narrows) and ended before the cutoff; pending and "
                      "running runs never do, nor a run a worker still holds. With it go its "
                      "step attempts, events, patches, their ledger entries, its gates and "
                      "their dependencies. Each batch is one short write transaction, so "
                      "writers running meanwhile are never held up for long; killed, gc "
                      "leaves whole batches done or not at all, and running it again goes "
                      "on. Event seqs are never handed out again. SQLite keeps the freed "
                      "pages in the file for new records; --vacuum shrinks the file (a full "
                      "VACUUM: writers wait until it ends). On PostgreSQL autovacuum reclaims "
                      "the space.")
@click.option("--older-than", "older_than", required=True, metavar="AGE|TIMESTAMP",
              help="Delete runs that ended before this: an age (30d, 12h, 2w) or an ISO "
                   "timestamp.")
@click.option("--state", "states", multiple=True, metavar="STATES",
              help="Only runs in these finished states, comma-separated (default: "
                   "succeeded, failed, quarantined, canceled).")
@click.option("--project", help="Only runs of this project.")
@click.option("--keep-last", "keep_last", type=int, default=None, metavar="N",
              help="Keep the newest N runs (by creation) of the chosen states of each "
                   "project (of --project), whatever their age.")
@click.option("--dry-run", "dry_run", is_flag=True,
              help="Count what would be deleted; change nothing.")
@click.option("--batch", "batch_size", type=int, default=200, show_default=True,
              metavar="N", help="Runs per batch at most (each batch one write transaction; "
                                "smaller while batches take over 50 ms).")
@click.option("--vacuum", is_flag=True,
              help="SQLite: then shrink the file with a full VACUUM, which blocks writers "
                   "while it runs (a ledger in auto_vacuum=INCREMENTAL mode is shrunk in "
                   "small steps without it).")
def gc(ctx: Context, older_than: str, states: tuple[str, ...], project: str | None,
       keep_last: int | None, dry_run: bool, batch_size: int, vacuum: bool) -> None:
    """Delete finished runs older than a cutoff, with all their records, in short batches
    (--dry-run counts only)."""
    from uet.errors import ValidationError
    chosen = ",".join(states) if states else None
    with ctx.open(write=not dry_run) as db, _bar() as progress:
        try:
            result = db.gc(older_than, states=chosen, project_id=project,
                           keep_last=keep_last, dry_run=dry_run, batch_size=batch_size,
                           vacuum=vacuum, progress=progress)
        except ValidationError as exc:
            if exc.field not in OPTIONS:
                raise
            raise click.BadParameter(str(exc), param_hint=OPTIONS[exc.field]) from None
    if ctx.as_json:
        emit_json(result.as_dict())
        return
    _report(result)


class _bar:
    """A progress bar on stderr while gc runs, when stderr is a terminal (else the context
    yields None: no callback, and gc does not count what it will examine)."""

    _progress: Progress | None
    _task: TaskID

    def __enter__(self) -> Callable[[GcResult], None] | None:
        if not sys.stderr.isatty():
            self._progress = None
            return None
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeRemainingColumn)
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                  MofNCompleteColumn(), TimeRemainingColumn(),
                                  console=Console(stderr=True), transient=True)
        self._progress.start()
        self._task = self._progress.add_task("gc: examining runs", total=None)
        return self.update

    def update(self, result: GcResult) -> None:
        assert self._progress is not None  # handed out only with a bar
        verb = "counted" if result.dry_run else "deleted"
        self._progress.update(self._task, total=result.to_examine,
                              completed=result.examined,
                              description=f"gc: {result.runs:,} runs {verb}")

    def __exit__(self, *exc_info: object) -> None:
        if self._progress is not None:
            self._progress.stop()


def _report(result: GcResult) -> None:
    verb = "would remove" if result.dry_run else "removed"
    states = ", ".join(result.states)
    project = f" of project {result.project_id}" if result.project_id else ""
    click.echo(one_line(
        f"{verb} {result.runs:,} {states} run{'s' if result.runs != 1 else ''}{project} "
        f"that ended before {result.cutoff}, in {result.batches:,} "
        f"batch{'es' if result.batches != 1 else ''} (longest write transaction "
        f"{result.longest_batch_seconds * 1000:,.0f} ms, {result.seconds:,.1f} s in all)"
        + (": nothing was changed (dry run)" if result.dry_run else "")))
    emit_table(None, ["table", "rows"],
               ([table, f"{result.deleted[table]:,}"] for table in SHOWN_TABLES),
               state_column=None)
    if result.kept:
        click.echo(f"kept {result.kept:,} of the newest runs (--keep-last "
                   f"{result.keep_last})")
    if result.skipped:
        click.echo(f"left {result.skipped:,} run{'s' if result.skipped != 1 else ''} that "
                   "ended after the cutoff, a worker still holds, or another writer changed "
                   "meanwhile")
    vacuum = result.vacuum
    if vacuum is None:
        return
    if vacuum.get("mode") == "autovacuum":
        click.echo("space: PostgreSQL's autovacuum reclaims it (uet runs no VACUUM there)")
    elif vacuum.get("mode") in ("full", "incremental"):
        click.echo(f"space: the file went from {_mb(vacuum['file_bytes'])} to "
                   f"{_mb(vacuum['file_bytes_after'])} ({vacuum['mode']} vacuum)")
    elif vacuum.get("free_bytes") == 0:
        click.echo("space: the file has no free pages (nothing to reclaim)")
    elif "free_bytes" in vacuum:
        click.echo(f"space: {_mb(vacuum['free_bytes'])} of the file's "
                   f"{_mb(vacuum['file_bytes'])} are free pages, which new records reuse; "
                   "--vacuum shrinks the file (writers wait while it runs)")


def _mb(count: int) -> str:
    return f"{count / 1e6:,.1f} MB"


COMMANDS = (gc,)

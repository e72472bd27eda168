"""`uet backup`, `uet export` and `uet import`: a ledger carried elsewhere — a consistent copy
of a live ledger, every record as JSON lines (or OpenTelemetry traces), and such a file
loaded into another ledger (the work is uet.state.portable's and uet.otel's; here it is only
printed)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import sys
import tempfile
import time
from typing import Any, Iterator

import click

from uet.cli.common import Context, command, display_name, peek_version
from uet.cli.inspection import parse_since
from uet.cli.output import FIELD_LIMIT, emit_json, one_line, progress, shown
from uet.errors import StorageError, ValidationError

OTEL_HINT = "--format otlp needs the otel extra: pip install 'uet[otel]'"
EXIT_PIPE = 141  # 128 + SIGPIPE, as a shell reports a writer whose reader went away


def _say(line: str) -> None:
    click.echo(one_line(f"uet: {line}"), err=True)


def _size(count: int) -> str:
    return f"{count / 1e6:,.1f} MB" if count >= 100_000 else f"{count:,} bytes"


def _counted(counts: dict[str, int]) -> str:
    shown_counts = [f"{n:,} {kind.replace('_', ' ')}{'' if n == 1 else 's'}"
                    for kind, n in counts.items() if n]
    return ", ".join(shown_counts) or "no records"


# -- backup ----------------------------------------------------------------------------

@command("backup", epilog="\b\nExamples:\n  uet backup /backups/ledger-$(date +%F).db\n"
                          "  uet backup copy.db --force --json\n\n"
                          "SQLite: the copy is taken with SQLite's online backup API in one "
                          "read transaction (writers go on meanwhile), written beside DEST "
                          "and renamed once `PRAGMA integrity_check` and `foreign_key_check` "
                          "passed on it: never a half copy at DEST. PostgreSQL: uet prints "
                          "the pg_dump command that copies the ledger's schema (without the "
                          "password: pg_dump reads $PGPASSWORD or ~/.pgpass, or asks).")
@click.argument("dest")
@click.option("--force", is_flag=True, help="Replace DEST if it exists.")
def backup(ctx: Context, dest: str, force: bool) -> None:
    """Copy the ledger consistently while it is being written, and check the copy."""
    with progress(f"backing up to {dest}"), ctx.open() as db:
        report = db.backup(dest, force=force)
    if ctx.as_json:
        emit_json(report)
    elif report["engine"] == "postgresql":
        click.echo(f"uet does not copy a PostgreSQL ledger itself: this pg_dump command "
                   f"copies the ledger's schema {shown(report['schema'])!s} (one consistent "
                   "snapshot, while writers go on):\n")
        click.echo("  " + shown(shlex.join(report["dump"]), FIELD_LIMIT) + "\n")
        click.echo("pg_dump takes the password from $PGPASSWORD or ~/.pgpass, or asks for it "
                   "(uet never prints it). To restore it into an empty database:\n")
        click.echo("  " + shown(shlex.join(report["restore"]), FIELD_LIMIT))
    else:
        click.echo(f"backed up {shown(report['ledger'], FIELD_LIMIT)} to "
                   f"{shown(report['destination'], FIELD_LIMIT)}: {_size(report['bytes'])}, "
                   f"{report['runs']:,} run{'' if report['runs'] == 1 else 's'}, "
                   f"{report['seconds']:.2f} s (integrity_check ok, no foreign-key "
                   "violations)")


# -- export ----------------------------------------------------------------------------

@contextlib.contextmanager
def _output(path: str | None, force: bool) -> Iterator[Any]:
    """Where the export goes: stdout, or FILE written beside itself and renamed once
    complete (never a half file at FILE; an existing FILE only with --force)."""
    if path is None:
        yield sys.stdout
        return
    target = os.path.abspath(path)
    if os.path.isdir(target):
        raise ValidationError(f"{path} is a folder; name the file to write", field="output")
    if os.path.lexists(target) and not force:
        raise ValidationError(f"{path} exists; pass --force to replace it", field="output")
    folder = os.path.dirname(target)
    temporary = os.path.join(folder, f".{os.path.basename(target)}.uet-export-"
                                     f"{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        f = open(temporary, "w", encoding="utf-8", newline="\n")
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if not force and os.path.lexists(target):
            raise ValidationError(f"{path} exists (it appeared during the export); pass "
                                  "--force to replace it", field="output")
        os.replace(temporary, target)
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temporary)


@command("export", epilog="\b\nExamples:\n  uet export -o ledger.jsonl\n"
                          "  uet export --since 7d --project api | jq -c 'select(.type == "
                          "\"run\") | .row'\n"
                          "  uet export --format otlp -o traces.jsonl\n"
                          "  uet export --format otlp --endpoint http://127.0.0.1:4318\n\n"
                          "jsonl: a header line (format, schema version, uet version), then "
                          "one line per record — workers, runs, step attempts, patches, "
                          "patch entries, gates (with their dependencies), events in seq "
                          "order — each {\"type\": ..., \"row\": {column: value}} with the "
                          "values as stored (JSON columns as their JSON text), then an end "
                          "line with the counts. `uet import` loads it. A selection (--since, "
                          "--project) picks runs and what belongs to them, and every worker; "
                          "records of no run come only with a full export.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "otlp"]), default="jsonl",
              show_default=True, help="JSON lines of every record, or OpenTelemetry traces "
                                      "(a run is a trace, a step attempt a span).")
@click.option("--since", help="Only runs created since: an ISO timestamp or an age (30m, "
                              "2h, 7d), with what belongs to them.")
@click.option("--project", help="Only the runs of this project, with what belongs to them.")
@click.option("-o", "--output", metavar="FILE", default=None,
              help="Write to FILE (complete or not at all) instead of stdout.")
@click.option("--endpoint", metavar="URL", default=None,
              help="With --format otlp: send the traces to this OTLP/HTTP collector.")
@click.option("--force", is_flag=True, help="Replace FILE if it exists.")
def export(ctx: Context, fmt: str, since: str | None, project: str | None,
           output: str | None, endpoint: str | None, force: bool) -> None:
    """Export the ledger's records as JSON lines (for `uet import`, jq, spreadsheets) or
    as OpenTelemetry traces, streamed from one consistent snapshot."""
    if endpoint is not None and fmt != "otlp":
        raise click.UsageError("--endpoint goes with --format otlp")
    if endpoint is not None and output is not None:
        raise click.UsageError("give --endpoint or -o/--output, not both")
    since_value = parse_since(since)
    started = time.perf_counter()
    try:
        with ctx.open() as db:
            if fmt == "otlp":
                report = _export_otlp(db, output, endpoint, force, since_value, project)
            else:
                with progress("exporting"), _output(output, force) as out:
                    report = db.export_jsonl(out, since=since_value, project_id=project)
    except BrokenPipeError:  # `uet export | head`: the reader has what it wanted
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(EXIT_PIPE)
    seconds = time.perf_counter() - started
    to_stdout = output is None and endpoint is None
    if ctx.as_json:
        document = {"format": fmt, "output": output, "endpoint": endpoint, **report}
        if to_stdout:
            from uet.text import to_json
            click.echo(to_json(document), err=True)
        else:
            emit_json(document)
        return
    if fmt == "otlp":
        what = ", ".join(f"{k} {v:,}" for k, v in report.items() if isinstance(v, int))
    else:
        what = f"{_counted(report['records'])} ({_size(report['bytes'])})"
    where = "stdout" if to_stdout else shown(output or endpoint or "", FIELD_LIMIT)
    line = f"exported {what} to {where} in {seconds:.2f} s"
    if to_stdout:
        _say(line)
    else:
        click.echo(line)


def _export_otlp(db: Any, output: str | None, endpoint: str | None, force: bool,
                 since: str | None, project: str | None) -> dict[str, Any]:
    try:
        from uet.otel import export_otlp
    except ImportError:
        raise StorageError(OTEL_HINT) from None
    if endpoint is not None:
        with progress(f"sending traces to {endpoint}"):
            return export_otlp(db, out=None, endpoint=endpoint, since=since,
                               project_id=project)
    with progress("exporting traces"), _output(output, force) as out:
        return export_otlp(db, out=out, endpoint=None, since=since, project_id=project)


# -- import ----------------------------------------------------------------------------

@command("import", epilog="\b\nExamples:\n  uet import ledger.jsonl --db new-ledger.db\n"
                          "  uet export --db old.db | uet import - --db postgresql://…\n"
                          "  uet import ledger.jsonl --skip-existing\n\n"
                          "The whole file is checked first (a bad line: an error naming it, "
                          "nothing imported; so is a record whose id the ledger holds, unless "
                          "--skip-existing). Then it is written in short transactions, so "
                          "other writers go on; should the ledger refuse a record even so, the "
                          "lines before its batch stay imported and running the import again "
                          "with --skip-existing goes on from there. Events keep their seq "
                          "where it is above every seq of the ledger (a fresh ledger: all), "
                          "else are renumbered after them, in order.")
@click.argument("file")
@click.option("--skip-existing", is_flag=True,
              help="Skip the records whose id the ledger already holds (leaving them as "
                   "they are) instead of refusing the import.")
def import_ledger(ctx: Context, file: str, skip_existing: bool) -> None:
    """Load a file written by `uet export` (FILE, or - for stdin) into the ledger, ids
    kept; the ledger is created if it does not exist."""
    from uet.state import portable
    from uet.state.names import is_postgres_url
    path = ctx.path()
    name = "<stdin>" if file == "-" else file
    with _readable(file) as source:
        if peek_version(path) is None:  # a new ledger: not created for a file that is bad
            with progress(f"checking {name}"):
                portable.check_jsonl(source, name=name, engine="postgresql"
                                     if is_postgres_url(path) else "sqlite")
        with progress(f"importing {name}"), ctx.open(create=True) as db:
            report = db.import_jsonl(source, skip_existing=skip_existing, name=name)
            ledger = display_name(db.db_path)
    if ctx.as_json:
        emit_json({"file": file, "ledger": ledger, **report})
        return
    skipped = sum(report["skipped"].values())
    events = report["events"]
    click.echo(f"imported {_counted(report['imported'])} into {shown(ledger, FIELD_LIMIT)} "
               f"in {report['seconds']:.2f} s"
               + (f"; skipped {_counted(report['skipped'])} already there" if skipped else ""))
    if events["renumbered"]:
        click.echo(f"{events['renumbered']:,} event{'' if events['renumbered'] == 1 else 's'} "
                   "renumbered after the ledger's own (seq order kept)"
                   + (f", {events['kept_seq']:,} kept their seq" if events["kept_seq"] else ""))
    if report["workers_without_their_run"]:
        click.echo(f"{report['workers_without_their_run']:,} worker(s) left without their "
                   "current run, which is not in the file")


@contextlib.contextmanager
def _readable(file: str) -> Iterator[Any]:
    """FILE as the importer reads it (twice): a path, or stdin copied to a temporary file."""
    if file != "-":
        yield file
        return
    with tempfile.TemporaryFile(prefix="uet-import-") as spool:
        try:
            while True:
                chunk = sys.stdin.buffer.read(1 << 20)
                if not chunk:
                    break
                spool.write(chunk)
        except OSError as exc:
            raise StorageError(f"cannot copy stdin to a temporary file: {exc}") from None
        spool.seek(0)
        yield spool


COMMANDS = (backup, export, import_ledger)

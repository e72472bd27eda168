"""`uet init`, `uet migrate`, `uet doctor`: creating a ledger, upgrading its schema and
checking its health (the judgement is uet.state.health's; here it is only printed)."""

from __future__ import annotations

import sys

import click

from uet.cli.common import (EXIT_ERROR, Context, command, display_name, peek_version,
                            reap)
from uet.cli.output import FIELD_LIMIT, emit_fields, emit_json, emit_table, progress, shown
from uet.errors import UetError, ValidationError


@command("init", epilog="\b\nExample:\n  uet init --db /srv/ledger/framework.db")
def init(ctx: Context) -> None:
    """Create the ledger (or bring an existing one up to date)."""
    with ctx.open(create=True) as db:
        facts = {"database": display_name(db.db_path), "schema_version": db.schema_version()}
        reap(db)
    if ctx.as_json:
        emit_json(facts)
    else:
        click.echo(f"ledger {shown(facts['database'], FIELD_LIMIT)} at schema version "
                   f"{facts['schema_version']}")


@command("migrate", epilog="\b\nExample:\n  uet migrate --db old-ledger.db")
def migrate(ctx: Context) -> None:
    """Upgrade the ledger's schema; prints the version before and after."""
    path = ctx.path()
    before = peek_version(path)
    path = display_name(path)  # a URL's password is never printed
    if not ctx.as_json:
        click.echo(f"{shown(path, FIELD_LIMIT)}: schema version {_version_text(before)}; "
                   "migrating ...", err=True)
    with progress(f"migrating {path}"), ctx.open(create=True) as db:
        after = db.schema_version()
        reap(db)
    if ctx.as_json:
        emit_json({"database": path, "before": before, "after": after})
    else:
        click.echo(f"{shown(path, FIELD_LIMIT)}: schema version {_version_text(before)} -> "
                   f"{after}")


def _version_text(version: int | None) -> str:
    return {None: "none (new ledger)", 0: "0 (seed ledger)"}.get(version, str(version))


@command("doctor", epilog="\b\nExample:\n  uet doctor --json")
def doctor(ctx: Context) -> None:
    """Check the ledger: file, schema version, pragmas, integrity, row counts.
    Exits 1 when something is wrong."""
    from uet.state import health
    path = ctx.path()  # a --db that cannot name a ledger is an error, not a finding
    try:
        with ctx.open() as db:
            facts = db.doctor()
    except ValidationError:
        raise  # a usage error, not a finding
    except UetError as exc:  # no ledger, a corrupt or unreadable file, server unreachable
        report = health.unopened_report(display_name(path), exc)
    else:
        report = health.report(facts)
    config = ctx.config()
    report["config"] = {"file": config.source, "values": dict(config.values)}
    if ctx.as_json:
        emit_json(report)
    else:
        emit_fields("ledger", [(k, v) for k, v in report.items()
                               if k not in ("row_counts", "config")])
        emit_fields("configuration", [("file", config.source or "none found (uet.toml or "
                                               "[tool.uet] in pyproject.toml)")]
                    + sorted(config.values.items()))
        if "row_counts" in report:
            emit_table("rows", ["table", "rows"], sorted(report["row_counts"].items()),
                       state_column=None)
        click.echo("ok" if not report["problems"] else "problems found")
    if report["problems"]:
        sys.exit(EXIT_ERROR)


COMMANDS = (init, migrate, doctor)

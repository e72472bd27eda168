"""`uet usage`: what the step attempts' tools reported they used (model, tokens, cost), rolled
up per tool, model, task, run or project (the query is uet.state.usage's; here it is only
printed)."""

from __future__ import annotations

from typing import Any

import click

from uet.cli.common import Context, command
from uet.cli.inspection import parse_since
from uet.cli.output import emit_json, emit_table, joined
from uet.text import dollars, tokens

# uet.state.usage.BY_CHOICES, spelled out so that `uet --help` does not load the state
# package (tests/test_usage.py checks that the two agree)
BY_CHOICES = ("tool", "model", "task", "run", "project")


@command("usage", epilog="\b\nExamples:\n  uet usage --since 7d\n"
                          "  uet usage --project api --by model --json\n\n"
                          "A tool reports its usage by writing JSON such as {\"model\": "
                          "\"gpt-4.1\", \"input_tokens\": 1234, \"output_tokens\": 567, "
                          "\"cost_usd\": 0.0123} (any of these four keys) to the file named "
                          "by $UET_USAGE_FILE.")
@click.option("--project", help="Only step attempts of this project's runs.")
@click.option("--phase", help="Only step attempts of this phase's runs.")
@click.option("--workstream", help="Only step attempts of this workstream's runs.")
@click.option("--since", help="Only step attempts started since: an ISO timestamp or an age "
                              "(30m, 2h, 7d).")
@click.option("--by", "by", type=click.Choice(BY_CHOICES), default="tool", show_default=True,
              help="What each row sums.")
def usage(ctx: Context, project: str | None, phase: str | None, workstream: str | None,
          since: str | None, by: str) -> None:
    """Sum the tokens and cost the tools reported, over the step attempts that reported
    any, with a total; the most expensive first."""
    from uet.state.usage import usage_rollup, usage_totals
    since_value = parse_since(since, selects="the step attempts started_at or after it")
    with ctx.open() as db:
        rows = usage_rollup(db, project_id=project, phase_id=phase, workstream_id=workstream,
                            since=since_value, by=by)
    total = usage_totals(rows)
    if ctx.as_json:
        emit_json({"by": by, "rows": rows, "total": total})
        return
    if not rows:
        click.echo("no step attempt reported usage"
                   + (" among those selected" if project or phase or workstream or since
                      else "") + " (a tool reports it in $UET_USAGE_FILE)")
        return
    columns = [by, "attempts", "input_tokens", "output_tokens", "cost_usd"]
    if by != "model":
        columns.append("models")
    emit_table(None, columns,
               [*([*_cells(row), *([joined(row["models"])] if by != "model" else [])]
                  for row in rows),
                [*_cells({**total, "key": "TOTAL"}),
                 *([joined(total["models"])] if by != "model" else [])]],
               state_column=None)


def _cells(row: dict[str, Any]) -> list[str | None]:
    return [row["key"], f"{row['attempts']:,}", tokens(row["input_tokens"]),
            tokens(row["output_tokens"]), dollars(row["cost_usd"])]


COMMANDS = (usage,)

"""`uet validate`: checking a workstream file (YAML or JSON) without running it — every problem
listed with its path; the rules are uet.engine.workstream's, here they are only printed."""

from __future__ import annotations

import sys

import click

from uet.cli.common import EXIT_USAGE
from uet.cli.output import FIELD_LIMIT, emit_json, one_line, shown


@click.command("validate",
               epilog="\b\nExamples:\n  uet validate workstream.yaml\n  uet validate ws.json "
                      "--json\n\nExits 0 when the file is a valid workstream, 2 when it is "
                      "not (every problem is listed, one per line: `path: message`).")
@click.argument("file", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
def validate(file: str, as_json: bool) -> None:
    """Check a workstream file (.yaml, .yml or .json) against its schema and rules, without
    running it or opening a ledger."""
    # imported here: `uet --help` must not load the engine, jsonschema or PyYAML
    from uet.engine.workstream import WorkstreamError, load_workstream
    try:
        workstream = load_workstream(file)
    except WorkstreamError as exc:
        problems = exc.problems
        if as_json:
            emit_json({"file": file, "valid": False,
                       "problems": [{"path": p.path, "message": p.message} for p in problems]})
        else:
            count = len(problems)
            click.echo(f"{shown(file, FIELD_LIMIT)}: not a valid workstream ({count} "
                       f"problem{'s' if count != 1 else ''})")
            for problem in problems:
                click.echo(one_line(str(problem)))
        sys.exit(EXIT_USAGE)  # the input is wrong: a usage-type error, as click's own
    if as_json:
        emit_json({"file": file, "valid": True, "workstream_id": workstream.workstream_id,
                   "tasks": len(workstream.tasks), "gates": len(workstream.gates),
                   "task_order": list(workstream.task_order),
                   "gate_order": list(workstream.gate_order),
                   "sha256": workstream.sha256, "problems": []})
    else:
        tasks, gates = len(workstream.tasks), len(workstream.gates)
        click.echo(f"{shown(file, FIELD_LIMIT)}: valid workstream "
                   f"{shown(workstream.workstream_id)} ({tasks} task{'s' if tasks != 1 else ''}"
                   f", {gates} gate{'s' if gates != 1 else ''})")


COMMANDS = (validate,)

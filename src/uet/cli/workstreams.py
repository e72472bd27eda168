"""`uet validate`: checking a workstream file (YAML or JSON) without running it — every problem
listed with its path; the rules are uet.engine.workstream's, here they are only printed."""

from __future__ import annotations

import sys

import click

from uet.cli.common import EXIT_USAGE
from uet.cli.output import FIELD_LIMIT, emit_invalid, emit_json, shown


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
        emit_invalid(file, "workstream", exc.problems, as_json)
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

"""`uet plan apply|validate|show`: the framework's master plan — patched safely (all or nothing,
each patch once, recorded in the ledger), checked, drawn as a tree. The rules are uet.plan's;
here they are only called and printed. (`uet run --plan PLAN WS-ID` is in uet.cli.execute.)
"""

from __future__ import annotations

import difflib
import os
import sys
from typing import TYPE_CHECKING, Any, Iterable, NoReturn, Sequence

import click

from uet.cli.common import EXIT_USAGE, Context, command, display_name
from uet.cli.output import FIELD_LIMIT, emit_invalid, emit_json, one_line, shown
from uet.errors import NotALedgerError

if TYPE_CHECKING:  # loaded by the commands that need them, never by `uet --help`
    from uet.engine.workstream_rules import Problem
    from uet.plan import PatchOutcome, PlanError


@click.group("plan", epilog="\b\nExamples:\n  uet plan validate plan.json\n  uet plan apply "
                            "plan.json patches/006-core-state.json -o plan.json\n  uet plan "
                            "apply plan.json patches/*.json --dry-run\n  uet plan show "
                            "plan.json --phase PH-000")
def plan() -> None:
    """The master plan: one JSON document (phases -> workstreams -> tasks) changed only by
    RFC 6902 patch files."""


@command("apply", epilog="\b\nExamples:\n  uet plan apply plan.json 006-core-state.json -o "
                         "plan.json\n  uet plan apply base.json patches/*.json -o master.json"
                         "\n  uet plan apply plan.json 007.json --dry-run\n\nExits 0 when "
                         "every patch was applied or was already, 2 when one is refused "
                         "(nothing is written then), 1 when the ledger cannot record it.")
@click.argument("plan_file", metavar="PLAN.json", type=click.Path(dir_okay=False))
@click.argument("patch_files", metavar="PATCH.json...", nargs=-1, required=True,
                type=click.Path(dir_okay=False))
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False),
              help="Write the patched plan here, atomically (it may be PLAN.json itself). "
                   "Default: print it.")
@click.option("--dry-run", is_flag=True,
              help="Check every patch and print the change as a diff of the plan; write "
                   "and record nothing.")
def apply(ctx: Context, plan_file: str, patch_files: tuple[str, ...], output: str | None,
          dry_run: bool) -> None:
    """Apply PATCH files (RFC 6902 JSON Patch) to PLAN, in order, all or nothing: every
    patch is checked before anything is written; targets must exist, an `add` never
    overwrites (a patch says `replace`), patch metadata is merged into
    /meta/patch_metadata, a patch is applied once (its id and content hash are recorded; the
    same patch again does nothing), and the result must be a plan with no new problem.
    Each applied patch is an event (plan.patch_applied) in the ledger."""
    from uet.plan import (PATCH_APPLIED, PlanError, apply_patches, dump_plan, load_patch,
                          load_plan)
    from uet.plan.document import write_atomically
    if ctx.as_json and output is None and not dry_run:
        raise click.UsageError("--json needs -o/--output (without it stdout holds the plan)")
    try:
        plan_doc = load_plan(plan_file)
        patches = [load_patch(path) for path in patch_files]
        result = apply_patches(plan_doc, patches)
    except PlanError as exc:
        _refuse(ctx, exc, plan_file)
    before, after = dump_plan(plan_doc), dump_plan(result.plan)
    summary = [{"patch_id": o.patch.patch_id, "file": o.patch.source, "status": o.status,
                "operations": o.operations, "sha256": o.patch.sha256,
                "recorded_at": o.recorded_at} for o in result.outcomes]
    if dry_run:
        diff = "".join(difflib.unified_diff(
            before.splitlines(keepends=True), after.splitlines(keepends=True),
            fromfile=plan_file, tofile=f"{plan_file} (patched)", n=2))
        if ctx.as_json:
            emit_json({"plan": plan_file, "dry_run": True, "patches": summary, "diff": diff,
                       "remaining_problems": _problems(result.remaining_problems)})
            return
        _say_outcomes(result.outcomes, dry_run=True)
        sys.stdout.write(diff)
        _warn_remaining(result.remaining_problems)
        return
    applied = result.applied
    target = os.path.abspath(output) if output else None
    ledger = ctx.open(create=True) if applied else None   # can it record? before writing
    wrote = False
    try:
        if target is not None:
            if not _same_file(target, after):
                write_atomically(target, after)
                wrote = True
        else:
            sys.stdout.write(after)
            sys.stdout.flush()
        events = []
        if ledger is not None:
            plan_id = result.plan.get("meta", {}).get("plan_id")
            events = ledger.create_ledger_events([
                (PATCH_APPLIED, {"patch_id": o.patch.patch_id, "sha256": o.patch.sha256,
                                 "plan_file": target or "-",
                                 "input_file": os.path.abspath(plan_file),
                                 "patch_file": os.path.abspath(o.patch.source)
                                 if o.patch.source else None,
                                 "operations": o.operations, "plan_id": plan_id})
                for o in applied])
    finally:
        if ledger is not None:
            ledger.close()
    if ctx.as_json:
        emit_json({"plan": plan_file, "output": output, "dry_run": False, "patches": summary,
                   "events": events,
                   "remaining_problems": _problems(result.remaining_problems)})
        return
    _say_outcomes(result.outcomes, dry_run=False)
    if output:
        click.echo(one_line(f"uet: {'wrote' if wrote else 'unchanged:'} {output}"), err=True)
    _warn_remaining(result.remaining_problems)


def _refuse(ctx: Context, exc: PlanError, plan_file: str) -> NoReturn:
    """A refused plan or patch: every problem, one per line (or the JSON document); exit 2,
    nothing written or recorded."""
    if ctx.as_json:
        emit_json({"plan": plan_file, "applied": False, "refused": exc.source,
                   "problems": _problems(exc.problems)})
    else:
        count = len(exc.problems)
        click.echo(one_line(f"uet: error: {exc.source}: {count} problem"
                            f"{'s' if count != 1 else ''}; nothing was written"), err=True)
        for problem in exc.problems:
            click.echo(one_line(f"  {problem}"), err=True)
    sys.exit(EXIT_USAGE)


def _same_file(path: str, text: str) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read() == text
    except (OSError, UnicodeDecodeError):
        return False


def _say_outcomes(outcomes: Iterable[PatchOutcome], *, dry_run: bool) -> None:
    for o in outcomes:
        if o.status == "applied":
            verb = "would apply" if dry_run else "applied"
            line = (f"uet: {verb} {o.patch.patch_id} ({o.operations} operation"
                    f"{'s' if o.operations != 1 else ''}, sha256 {o.patch.sha256[:12]}…)")
        else:
            line = (f"uet: {o.patch.patch_id} is already applied (recorded at "
                    f"{o.recorded_at}, same content): nothing to do")
        click.echo(one_line(line), err=True)


def _warn_remaining(problems: Sequence[Problem]) -> None:
    if problems:
        count = len(problems)
        click.echo(f"uet: warning: the plan has {count} problem{'s' if count != 1 else ''} "
                   "it had before these patches (`uet plan validate` lists them)", err=True)


def _problems(problems: Iterable[Problem]) -> list[dict[str, str]]:
    return [{"path": p.path, "message": p.message} for p in problems]


@click.command("validate", epilog="\b\nExamples:\n  uet plan validate plan.json\n  uet plan "
                                  "validate plan.json --json\n\nExits 0 when the plan is "
                                  "valid, 2 when it is not (every problem is listed, one per "
                                  "line: `/json/pointer: message`).")
@click.argument("plan_file", metavar="PLAN.json", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
def validate(plan_file: str, as_json: bool) -> None:
    """Check a plan: its JSON Schema, ids equal to their keys and of their form (PH-…, WS-…,
    TSK-…), every *_ulid a well-formed ULID used once, every workstream's phase present,
    dependencies present and without cycles, durations that add up."""
    from uet.plan import PlanError, load_plan, nodes, plan_problems
    from uet.plan.document import ulids
    plan_doc: dict[str, Any] | None
    try:
        plan_doc = load_plan(plan_file)
        problems = plan_problems(plan_doc)
    except PlanError as exc:
        plan_doc, problems = None, exc.problems
    if problems or plan_doc is None:
        emit_invalid(plan_file, "plan", problems, as_json)
        sys.exit(EXIT_USAGE)
    counts = {"phases": 0, "workstreams": 0, "tasks": 0}
    for node in nodes(plan_doc):
        counts[f"{node.kind}s"] += 1
    meta = plan_doc.get("meta", {})
    figures = {**counts, "ulids": sum(1 for _ in ulids(plan_doc)),
               "patches": len(meta.get("patch_metadata") or {})}
    if as_json:
        emit_json({"file": plan_file, "valid": True, "plan_id": meta.get("plan_id"),
                   **figures, "problems": []})
        return
    singular = {"phases": "phase", "workstreams": "workstream", "tasks": "task",
                "patches": "patch"}
    listed = ", ".join(f"{n} {singular[name] if n == 1 else name}"
                       for name, n in figures.items() if name != "ulids")
    plan_id = meta.get("plan_id") or meta.get("plan_name")
    click.echo(one_line(f"{shown(plan_file, FIELD_LIMIT)}: valid plan"
                        f"{' ' + str(plan_id) if plan_id else ''} ({listed}; "
                        f"{figures['ulids']} ULIDs, each well formed and unique)"))


@command("show", epilog="\b\nExamples:\n  uet plan show plan.json\n  uet plan show plan.json "
                        "--phase PH-000 --json")
@click.argument("plan_file", metavar="PLAN.json", type=click.Path(dir_okay=False))
@click.option("--phase", default=None, help="Only this phase.")
def show(ctx: Context, plan_file: str, phase: str | None) -> None:
    """Draw the plan as a tree: phases -> workstreams -> tasks, with their estimated hours,
    their status in the plan and, when the ledger has run a workstream, its latest run."""
    from uet.plan import load_plan
    plan_doc = load_plan(plan_file)
    document = _tree_document(plan_doc, phase)
    _add_runs(ctx, document)
    if ctx.as_json:
        emit_json(document)
        return
    _print_tree(document, plan_file)


def _tree_document(plan_doc: dict[str, Any], only_phase: str | None) -> dict[str, Any]:
    from uet.errors import ValidationError
    from uet.plan import nodes
    from uet.plan.document import HOURS, dependencies
    meta_value = plan_doc.get("meta")
    meta: dict[str, Any] = meta_value if isinstance(meta_value, dict) else {}
    phases: dict[str, dict[str, Any]] = {}
    workstreams: dict[str, dict[str, Any]] = {}

    def text(value: Any) -> str | None:
        return value if isinstance(value, str) else None

    def hours(value: dict[str, Any]) -> float | None:
        h = value.get(HOURS)
        return h if isinstance(h, (int, float)) and not isinstance(h, bool) else None

    for node in nodes(plan_doc):
        v = node.value
        if node.kind == "phase":
            phases[node.key] = {"phase_id": node.key, "name": text(v.get("name")),
                                "hours": hours(v), "status": text(v.get("status")),
                                "depends_on": dependencies(v), "workstreams": []}
        elif node.kind == "workstream":
            holder = node.parent or text(v.get("phase_id"))
            ws = {"workstream_id": node.key, "name": text(v.get("name")), "hours": hours(v),
                  "status": text(v.get("status")), "depends_on": dependencies(v),
                  "last_run": None, "tasks": []}
            workstreams[node.key] = ws
            if holder in phases:
                phases[holder]["workstreams"].append(ws)
        elif node.parent in workstreams:
            workstreams[node.parent]["tasks"].append({
                "task_id": node.key, "name": text(v.get("name")), "hours": hours(v),
                "executor": text(v.get("executor")), "depends_on": dependencies(v)})
    if only_phase is not None and only_phase not in phases:
        raise ValidationError(f"the plan has no phase {only_phase!r} (known: "
                              f"{', '.join(phases) or 'none'})", field="phase")
    chosen = [p for key, p in phases.items() if only_phase in (None, key)]
    return {"plan_id": text(meta.get("plan_id")), "plan_name": text(meta.get("plan_name")),
            "version": text(meta.get("version")), "hours": hours(meta),
            "patches": list((meta.get("patch_metadata") or {}).keys())
            if isinstance(meta.get("patch_metadata"), dict) else [],
            "phases": chosen}


def _add_runs(ctx: Context, document: dict[str, Any]) -> None:
    """Each workstream's latest run, from the ledger when there is one (the default ledger
    missing is no error: the plan is shown without runs)."""
    try:
        db = ctx.open()
    except NotALedgerError:
        if ctx.db_path is not None:
            raise
        document["ledger"] = None
        return
    with db:
        document["ledger"] = display_name(ctx.path())
        for phase in document["phases"]:
            for ws in phase["workstreams"]:
                runs = db.list_runs({"workstream_id": ws["workstream_id"]}, limit=1)
                if runs:
                    run = runs[0]
                    ws["last_run"] = {"run_id": run["run_id"], "state": run["state"],
                                      "created_at": run["created_at"]}


def _print_tree(document: dict[str, Any], plan_file: str) -> None:
    from rich.text import Text
    from rich.tree import Tree

    from uet.cli.output import STATE_STYLES, emit_renderable

    def label(*parts: tuple[str | None, str]) -> Text:
        out = Text()
        for value, style in parts:
            if value:
                if out:
                    out.append("  ")
                out.append(shown(value), style=style)
        return out

    def h(value: float | None) -> str | None:
        return None if value is None else f"{value:g} h"

    title = document["plan_id"] or document["plan_name"] or plan_file
    root = Tree(label((title, "bold"), (document["version"] and f"v{document['version']}", ""),
                      (h(document["hours"]), "cyan"),
                      (f"{len(document['patches'])} patch"
                       f"{'es' if len(document['patches']) != 1 else ''} applied"
                       if document["patches"] else None, "dim")))
    for phase in document["phases"]:
        branch = root.add(label((phase["phase_id"], "bold"), (phase["name"], ""),
                                (h(phase["hours"]), "cyan"), (phase["status"], "dim")))
        for ws in phase["workstreams"]:
            run = ws["last_run"]
            state = (f"last run {run['state']} {run['run_id']}" if run else None)
            node = branch.add(label(
                (ws["workstream_id"], "bold"), (ws["name"], ""), (h(ws["hours"]), "cyan"),
                (ws["status"], "dim"),
                (f"after {', '.join(ws['depends_on'])}" if ws["depends_on"] else None, "dim"),
                (state, STATE_STYLES.get(run["state"], "") if run else "")))
            for task in ws["tasks"]:
                node.add(label((task["task_id"], ""), (task["name"], ""),
                               (h(task["hours"]), "cyan"), (task["executor"], "dim")))
    emit_renderable(root)


plan.add_command(apply)
plan.add_command(validate)
plan.add_command(show)

COMMANDS = (plan,)

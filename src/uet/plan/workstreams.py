"""A workstream of the master plan as a workstream file the orchestrator runs (`uet run
--plan PLAN WS-ID`).

The plan's fields map onto the workstream format (uet.engine.workstream):

    plan                                   workstream file
    /meta/tools, the workstream's tools    tools (the workstream's win)
    task executor                          task tool (a key of those tools)
    task prompt (else name, description,   task prompt
      objective and lists such as
      test_requirements, written out)
    task depends_on / dependencies         task depends_on (tasks of this workstream)
    task max_runtime_seconds, max_attempts task timeout_seconds, max_attempts
    task file_scope {create, modify,       task files_scope
      read_only}
    task acceptance_tests {name: test}     gates "<task id>/<name>" judging that task's
                                           patches only (`tasks: [id]`)
    workstream acceptance_tests            gates judging every task's patches
    /meta/constraints                      policy (max_lines_changed_per_patch,
      max_files_changed_per_patch)
    /meta/project/project_id, else         project_id (--project wins)
      /meta/plan_id
    the workstream's phase                 phase_id
    /meta/repo (relative to the plan)      repo (--repo wins; default: the current folder)

A test is a command line (split as a shell would, never run through one), a list of
arguments, null (no test), or {"command": …, "timeout_seconds": …, "type": LINT|UNIT|…}; a
test named `powershell` or `pwsh` runs its line with PowerShell (`pwsh -Command`). What cannot
be mapped is a PlanError naming the plan's field. Workstreams this one depends on (its own
dependencies, and the workstreams of tasks of other workstreams its tasks depend on) are
returned for the caller to check in the ledger.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from dataclasses import dataclass
from typing import Any, Iterable

from uet.engine.workstream import Workstream, WorkstreamError, parse_workstream
from uet.engine.workstream_rules import Problem
from uet.plan.document import (
    Node, PlanError, dependencies, kind_of, nodes, plan_problems, pointer)

FILE_SCOPE_KINDS = ("create", "modify", "read_only")
POWERSHELL_TESTS = ("powershell", "pwsh")
GATE_TYPE_WORDS = (("LINT", ("lint", "ruff", "flake8", "pylint", "mypy", "pyright", "black",
                             "format", "style", "typecheck")),
                   ("SECURITY", ("security", "bandit", "audit", "secret", "safety")),
                   ("INTEGRATION", ("integration", "e2e", "end_to_end", "smoke")))
PROMPT_TEXT_FIELDS = ("description", "objective", "instructions")


@dataclass(frozen=True)
class PlanWorkstream:
    """A workstream of the plan ready to run: the Workstream, the document it was made from
    (what the run records), and the workstreams it needs to have succeeded first."""
    workstream: Workstream
    document: dict[str, Any]
    requires: tuple[str, ...]
    path: str   # the workstream's place in the plan (a JSON Pointer)


def plan_workstream(plan: dict[str, Any], workstream_id: str, *, plan_path: str,
                    project_id: str | None = None, repo: str | None = None,
                    skip_tests: Iterable[str] = (),
                    default_project: str | None = None) -> PlanWorkstream:
    """The plan's workstream `workstream_id` as a runnable Workstream (see the module's
    docstring); `default_project` is the project when neither `project_id` nor the plan
    names one (else "default"). Raises PlanError when the plan has problems, has no such workstream, or a
    field cannot be mapped — each problem at its place in the plan."""
    source = os.fspath(plan_path)
    problems = plan_problems(plan)
    if problems:
        raise PlanError(problems, source=f"{source} (fix the plan first: `uet plan validate`)")
    all_nodes = list(nodes(plan))
    found = [n for n in all_nodes if n.kind == "workstream" and n.key == workstream_id]
    if not found:
        known = [n.key for n in all_nodes if n.kind == "workstream"]
        listed = ", ".join(known[:12]) + (", …" if len(known) > 12 else "")
        raise PlanError([Problem("", f"the plan has no workstream {workstream_id} "
                                     f"({'known: ' + listed if known else 'it has none'})")],
                        source=source)
    node = found[0]
    ws, meta = node.value, plan.get("meta", {})
    builder = _Builder(node.path, set(skip_tests))
    phase_id = node.parent or ws.get("phase_id")
    tools = builder.tools(meta.get("tools"), ws.get("tools"))
    task_nodes = [n for n in all_nodes if n.kind == "task" and n.parent == node.key
                  and n.path.startswith(node.path + "/")]
    owner = {n.key: n.parent for n in all_nodes if n.kind == "task"}
    requires = list(dependencies(ws))
    if not task_nodes:
        builder.problem(f"{node.path}/tasks", "the workstream has no tasks to run")
    tasks, gates = [], []
    for task_node in task_nodes:
        task, task_gates, other = builder.task(task_node, tools, owner)
        tasks.append(task)
        gates += task_gates
        requires += [w for w in other if w not in requires]
    gates = builder.workstream_gates(ws.get("acceptance_tests"), f"{node.path}/acceptance_tests",
                                     None) + gates
    doc: dict[str, Any] = {"workstream_id": node.key, "phase_id": phase_id,
                           "project_id": project_id or _project(meta, default_project),
                           "tools": tools, "tasks": tasks}
    if isinstance(ws.get("name"), str):
        doc["name"] = ws["name"]
    if gates:
        doc["gates"] = gates
    policy = _policy(meta.get("constraints"), ws.get("policy"))
    if policy:
        doc["policy"] = policy
    for key in ("base", "branch", "resume", "max_recoveries"):
        if key in ws:
            doc[key] = ws[key]
    base_dir = os.getcwd()
    if repo is not None:
        doc["repo"] = os.path.abspath(repo)
    elif isinstance(meta.get("repo"), str):
        doc["repo"] = meta["repo"]
        base_dir = os.path.dirname(os.path.abspath(source))
    else:
        doc["repo"] = base_dir
    builder.raise_problems(source)
    content = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    try:
        workstream = parse_workstream(content, format="json", base_dir=base_dir,
                                      source=f"{source}#{node.path}")
    except WorkstreamError as exc:
        raise PlanError([builder.translate(p) for p in exc.problems],
                        source=f"{source}#{node.path}") from None
    return PlanWorkstream(workstream, doc, tuple(w for w in requires if w != node.key),
                          node.path)


def _project(meta: dict[str, Any], default: str | None) -> str:
    project = meta.get("project")
    if isinstance(project, dict) and isinstance(project.get("project_id"), str):
        project_id: str = project["project_id"]
        return project_id
    plan_id = meta.get("plan_id")
    if isinstance(plan_id, str):
        return plan_id
    return default or "default"


def _policy(constraints: Any, own: Any) -> dict[str, Any]:
    policy: dict[str, Any] = {}
    if isinstance(constraints, dict):
        for plan_key, key in (("max_lines_changed_per_patch", "max_lines_changed"),
                              ("max_files_changed_per_patch", "max_files_changed")):
            if plan_key in constraints:
                policy[key] = constraints[plan_key]
    if isinstance(own, dict):
        policy.update(own)
    return policy


class _Builder:
    """Collects the mapped parts and every problem, with where each generated part came
    from (so that the workstream loader's complaints name the plan's fields)."""

    def __init__(self, ws_path: str, skip_tests: set[str]) -> None:
        self.ws_path, self.skip = ws_path, skip_tests
        self.problems: list[Problem] = []
        self.origins: dict[str, str] = {}   # generated doc path prefix -> plan path
        self.task_count = self.gate_count = 0

    def problem(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message))

    def raise_problems(self, source: str) -> None:
        if self.problems:
            raise PlanError(self.problems, source=source)

    def translate(self, problem: Problem) -> Problem:
        """A problem of the generated workstream at the plan's field it came from."""
        match = re.match(r'^(tasks\[\d+\]|gates\[\d+\]|tools\["[^"]*"\]|tools\.[^.\[]+)(.*)$',
                         problem.path)
        if match and match.group(1) in self.origins:
            rest = match.group(2)
            what = f"{rest.lstrip('.')}: " if rest else ""
            return Problem(self.origins[match.group(1)], f"{what}{problem.message}")
        return Problem(self.ws_path, f"as a workstream, {problem}")

    def tools(self, shared: Any, own: Any) -> dict[str, Any]:
        tools: dict[str, Any] = {}
        for where, value in (("/meta/tools", shared), (f"{self.ws_path}/tools", own)):
            if value is None:
                continue
            for tool_id, spec in value.items():
                tools[tool_id] = spec
                self.origins[f"tools.{tool_id}"] = f"{where}{pointer(tool_id)}"
                self.origins[f'tools["{tool_id}"]'] = f"{where}{pointer(tool_id)}"
        return tools

    def task(self, node: Node, tools: dict[str, Any], owner: dict[str, str | None]
             ) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
        task, path = node.value, node.path
        self.origins[f"tasks[{self.task_count}]"] = path
        self.task_count += 1
        out: dict[str, Any] = {"task_id": node.key}
        executor = task.get("executor", task.get("tool"))
        if executor is None:
            self.problem(f"{path}/executor", "required to run the task: the tool that does it "
                                             "(a key of /meta/tools or of the workstream's "
                                             "tools)")
        elif not isinstance(executor, str) or executor not in tools:
            known = ", ".join(tools) or "none are defined"
            self.problem(f"{path}/executor", f"names the tool {json.dumps(executor)}, which is "
                                             f"not defined under /meta/tools or the "
                                             f"workstream's tools ({known})")
        else:
            out["tool"] = executor
        if isinstance(task.get("name"), str):
            out["name"] = task["name"]
        out["prompt"] = task["prompt"] if isinstance(task.get("prompt"), str) \
            else _prompt(task)
        same: list[str] = []
        other: list[str] = []
        for dep in dependencies(task):
            holder = owner.get(dep)
            if holder == node.parent:
                same.append(dep)
            elif holder is not None:
                other.append(holder)
        if same:
            out["depends_on"] = same
        if "max_runtime_seconds" in task:
            out["timeout_seconds"] = task["max_runtime_seconds"]
        if "max_attempts" in task:
            out["max_attempts"] = task["max_attempts"]
        scope = task.get("file_scope")
        if isinstance(scope, dict):
            unknown = [k for k in scope if k not in FILE_SCOPE_KINDS]
            for key in unknown:
                self.problem(f"{path}/file_scope/{key}", "uet's file scopes know create, "
                                                         "modify and read_only only")
            out["files_scope"] = {k: scope[k] for k in FILE_SCOPE_KINDS if k in scope}
        gates = self.workstream_gates(task.get("acceptance_tests"), f"{path}/acceptance_tests",
                                      node.key, task.get("max_runtime_seconds"))
        return out, gates, other

    def workstream_gates(self, tests: Any, path: str, task_id: str | None,
                         timeout: Any = None) -> list[dict[str, Any]]:
        if tests is None:
            return []
        if not isinstance(tests, dict):
            self.problem(path, f"acceptance tests are an object (name -> test), not "
                               f"{kind_of(tests)}")
            return []
        gates = []
        for name, spec in tests.items():
            if spec is None or name in self.skip:
                continue
            here = f"{path}{pointer(name)}"
            gate = self._gate(name, spec, here, timeout)
            if gate is None:
                continue
            gate["name"] = f"{task_id}/{name}" if task_id else name
            if task_id:
                gate["tasks"] = [task_id]
            self.origins[f"gates[{self.gate_count}]"] = here
            self.gate_count += 1
            gates.append(gate)
        return gates

    def _gate(self, name: str, spec: Any, here: str, timeout: Any) -> dict[str, Any] | None:
        gate: dict[str, Any] = {"type": _gate_type(name)}
        if isinstance(spec, dict):
            if "type" in spec:
                gate["type"] = spec["type"]
            if "timeout_seconds" in spec:
                timeout = spec["timeout_seconds"]
            command = spec.get("command")
            here = f"{here}/command"
        else:
            command = spec
        if timeout is not None:
            gate["timeout_seconds"] = timeout
        if isinstance(command, str):
            if name in POWERSHELL_TESTS:
                if shutil.which("pwsh") is None:
                    self.problem(here, "a PowerShell test, and PowerShell (pwsh) is not on "
                                       f"PATH: install it, or leave the test out with "
                                       f"--skip-test {name}")
                    return None
                argv = ["pwsh", "-NoProfile", "-NonInteractive", "-Command", command]
            else:
                try:
                    argv = shlex.split(command)
                except ValueError as exc:
                    self.problem(here, f"not a command line ({exc})")
                    return None
        elif isinstance(command, list) and all(isinstance(a, str) for a in command):
            argv = list(command)
        else:
            self.problem(here, "a test is a command line, a list of arguments, null or "
                               f"{{\"command\": …}}, not {kind_of(command)}")
            return None
        if not argv:
            self.problem(here, "an empty command: give the test's command, or null for none")
            return None
        gate["command"] = argv
        return gate


def _gate_type(name: str) -> str:
    lowered = name.lower()
    for kind, words in GATE_TYPE_WORDS:
        if any(word in lowered for word in words):
            return kind
    return "UNIT"


def _prompt(task: dict[str, Any]) -> str:
    """A prompt written out from a task that has none: its name, description, objective and
    every list of strings it carries (test_requirements, …), and its file scope."""
    parts = [task["name"]] if isinstance(task.get("name"), str) else []
    for key in PROMPT_TEXT_FIELDS:
        if isinstance(task.get(key), str):
            parts.append(task[key])
    for key, value in task.items():
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value) \
                and key not in ("depends_on", "dependencies"):
            title = key.replace("_", " ").capitalize()
            parts.append(f"{title}:\n" + "\n".join(f"- {v}" for v in value))
    scope = task.get("file_scope")
    if isinstance(scope, dict):
        lines = [f"- {kind.replace('_', ' ')}: {', '.join(scope[kind])}"
                 for kind in FILE_SCOPE_KINDS
                 if isinstance(scope.get(kind), list) and scope[kind]
                 and all(isinstance(v, str) for v in scope[kind])]
        if lines:
            parts.append("Files:\n" + "\n".join(lines))
    return "\n\n".join(parts) + "\n" if parts else ""

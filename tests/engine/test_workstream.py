"""Workstream files (SPEC §9): the example loads with every default, each rule of the schema and
each rule beyond it is reported at its path, hostile files are refused cleanly, and random
valid workstreams survive YAML and JSON alike."""

from __future__ import annotations

import hashlib
import json
import os
import string
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from uet.engine.workstream import (
    BRANCH_PLACEHOLDERS, MAX_FILE_BYTES, TOOL_PLACEHOLDERS, FileScope, Gate, Policy, Problem,
    Task, Tool, Workstream, WorkstreamError, dependency_order, glob_problem, load_workstream,
    parse_workstream, ref_name_problem, render_template, template_problems, workstream_schema)
from uet.errors import ValidationError
from uet.state.contracts import GateType

SPEC_EXAMPLE = """\
workstream_id: WS-000-010            # required; also the run's workstream_id
project_id: PRJ                      # default: --project, else "default"
phase_id: PH-000                     # default: --phase, else "default"
name: Core state database tests      # optional
repo: .                              # target git repository, relative to this file (--repo wins)
base: HEAD                           # ref to start from; resolved to a commit once, at run start
branch: uet/{run_id}                 # where committed patches land (created from base)
files_scope:                         # globs relative to the repository root
  modify: ["src/**"]                 # existing files a task may change
  create: ["tests/**"]               # new files a task may add
  read_only: ["docs/**"]             # may be read, never changed
policy: {max_lines_changed: 300, max_files_changed: 10, forbid_binary: true,
         forbid_paths: [".github/**"]}
tools:                               # tool id -> how to invoke it
  editor:
    command: ["python3", "tools/edit.py", "--prompt-file", "{prompt_file}"]
    timeout_seconds: 300
    env: {EDITOR_MODE: "fast"}       # added to the environment
tasks:
  - task_id: TSK-000-010-001
    name: Create the tests
    tool: editor
    prompt: "Create tests/test_db.py covering create_run …"
    depends_on: []                   # task ids of this workstream
    max_attempts: 2                  # default 1
    timeout_seconds: 120             # default: the tool's
    files_scope: {create: ["tests/core/**"]}   # optional; replaces the workstream's
    allow_empty: false
gates:                               # judge every patch on the integration branch
  - {name: lint, type: LINT, command: ["ruff", "check", "."], timeout_seconds: 120}
  - {name: unit, type: UNIT, command: ["pytest", "-q"], depends_on: [lint]}
"""


def minimal(**top) -> dict:
    """The smallest valid workstream, with top-level keys replaced or added."""
    document = {"workstream_id": "WS-1", "tools": {"editor": {"command": ["ed", "{prompt}"]}},
                "tasks": [{"task_id": "T1", "tool": "editor"}]}
    document.update(top)
    return document


def problems_of(document, fmt="json") -> list[Problem]:
    text = json.dumps(document) if fmt == "json" and not isinstance(document, str) else document
    with pytest.raises(WorkstreamError) as caught:
        parse_workstream(text, format=fmt)
    return caught.value.problems


def paths_of(document, fmt="json") -> list[str]:
    return [p.path for p in problems_of(document, fmt)]


def the_problem(document, fmt="json") -> Problem:
    problems = problems_of(document, fmt)
    assert len(problems) == 1, problems
    return problems[0]


# -- the example and the defaults -------------------------------------------------------------

def test_the_spec_example_loads_with_every_default(tmp_path):
    path = tmp_path / "ws.yaml"
    path.write_text(SPEC_EXAMPLE, encoding="utf-8")
    ws = load_workstream(path)
    editor = Tool("editor", ("python3", "tools/edit.py", "--prompt-file", "{prompt_file}"),
                  300.0, {"EDITOR_MODE": "fast"})
    assert ws == Workstream(
        workstream_id="WS-000-010", project_id="PRJ", phase_id="PH-000", repo=str(tmp_path),
        tools={"editor": editor},
        tasks=(Task("TSK-000-010-001", "editor", 0, name="Create the tests",
                    prompt="Create tests/test_db.py covering create_run …", depends_on=(),
                    max_attempts=2, timeout_seconds=120.0,
                    files_scope=FileScope(create=("tests/core/**",)), allow_empty=False),),
        gates=(Gate("lint", GateType.LINT, ("ruff", "check", "."), 0, 120.0),
               Gate("unit", GateType.UNIT, ("pytest", "-q"), 1, None, ("lint",))),
        name="Core state database tests", base="HEAD", branch="uet/{run_id}",
        files_scope=FileScope(("src/**",), ("tests/**",), ("docs/**",)),
        policy=Policy(300, 10, True, (".github/**",)), resume="auto", max_recoveries=3,
        task_order=("TSK-000-010-001",), gate_order=("lint", "unit"))
    assert ws.content == SPEC_EXAMPLE.encode("utf-8")
    assert ws.sha256 == hashlib.sha256(ws.content).hexdigest()
    assert (ws.format, ws.source) == ("yaml", str(path))
    assert ws.branch_name("01ABC") == "uet/01ABC"
    assert [t.task_id for t in ws.ordered_tasks()] == ["TSK-000-010-001"]
    assert [g.name for g in ws.ordered_gates()] == ["lint", "unit"]


def test_omitted_fields_take_their_defaults(tmp_path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "ws.json"
    path.write_text(json.dumps(minimal(files_scope={"modify": ["src/**"]})))
    ws = load_workstream(path)
    assert (ws.project_id, ws.phase_id, ws.name) == ("default", "default", None)
    assert ws.repo == str(tmp_path / "sub")  # relative to the file's folder, not the cwd
    assert (ws.base, ws.branch, ws.resume, ws.max_recoveries) == ("HEAD", "uet/{run_id}",
                                                                   "auto", 3)
    assert ws.policy == Policy(None, None, False, ())
    assert ws.gates == () and ws.gate_order == ()
    task = ws.tasks[0]
    assert (task.name, task.prompt, task.depends_on, task.max_attempts, task.timeout_seconds,
            task.allow_empty) == (None, "", (), 1, None, False)
    assert task.files_scope == FileScope(modify=("src/**",))  # the workstream's
    assert ws.tools["editor"].env == {} and ws.tools["editor"].timeout_seconds is None


def test_without_any_files_scope_a_tasks_scope_is_none_not_empty():
    # None: the scope restricts nothing (uet.engine.policy's judge_change takes None so);
    # an empty list, given, allows nothing of its kind
    ws = parse_workstream(json.dumps(minimal(tasks=[task(), task(task_id="T2", files_scope={
        "create": []})])), format="json")
    assert ws.files_scope is None and ws.tasks[0].files_scope is None
    assert ws.tasks[1].files_scope == FileScope()


def test_the_callers_project_and_phase_are_defaults_the_file_overrides(tmp_path):
    path = tmp_path / "ws.json"
    path.write_text(json.dumps(minimal()))
    ws = load_workstream(path, project_id="api", phase_id="PH-2")
    assert (ws.project_id, ws.phase_id) == ("api", "PH-2")
    path.write_text(json.dumps(minimal(project_id="PRJ", phase_id="PH-0")))
    ws = load_workstream(path, project_id="api", phase_id="PH-2")
    assert (ws.project_id, ws.phase_id) == ("PRJ", "PH-0")


def test_the_callers_repo_wins_and_the_files_repo_is_relative_to_its_folder(tmp_path):
    path = tmp_path / "ws.json"
    path.write_text(json.dumps(minimal(repo="../target")))
    assert load_workstream(path).repo == str(tmp_path.parent / "target")
    assert load_workstream(path, base_dir="/srv/ws").repo == "/srv/target"
    assert load_workstream(path, repo="/elsewhere").repo == "/elsewhere"


def test_a_callers_invalid_project_id_is_a_problem():
    with pytest.raises(WorkstreamError) as caught:
        parse_workstream(json.dumps(minimal()), format="json", project_id="a\nb")
    assert [p.path for p in caught.value.problems] == ["project_id"]


def test_a_task_timeout_defaults_to_its_tools_and_its_files_scope_replaces_the_workstreams():
    ws = parse_workstream(json.dumps(minimal(
        tools={"a": {"command": ["a"], "timeout_seconds": 30}, "b": {"command": ["b"]}},
        files_scope={"modify": ["src/**"], "read_only": ["docs/**"]},
        tasks=[{"task_id": "T1", "tool": "a"},
               {"task_id": "T2", "tool": "a", "timeout_seconds": 5,
                "files_scope": {"create": ["new/**"]}},
               {"task_id": "T3", "tool": "b"}])), format="json")
    assert [t.timeout_seconds for t in ws.tasks] == [30.0, 5.0, None]
    assert ws.tasks[0].files_scope == FileScope(modify=("src/**",), read_only=("docs/**",))
    assert ws.tasks[1].files_scope == FileScope(create=("new/**",))  # replaced, not merged
    assert [t.index for t in ws.tasks] == [0, 1, 2]


def test_integral_numbers_written_as_floats_are_integers():
    ws = parse_workstream(json.dumps(minimal(max_recoveries=2.0, tasks=[
        {"task_id": "T", "tool": "editor", "max_attempts": 3.0}])), format="json")
    assert ws.max_recoveries == 2 and type(ws.max_recoveries) is int
    assert ws.tasks[0].max_attempts == 3 and type(ws.tasks[0].max_attempts) is int


def test_the_records_are_frozen():
    ws = parse_workstream(json.dumps(minimal()), format="json")
    with pytest.raises(AttributeError):
        ws.workstream_id = "other"
    with pytest.raises(TypeError):
        ws.tools["x"] = ws.tools["editor"]
    with pytest.raises(TypeError):
        ws.tools["editor"].env["X"] = "1"


def test_yaml_and_json_of_the_same_content_give_equal_workstreams():
    document = yaml.safe_load(SPEC_EXAMPLE)
    from_yaml = parse_workstream(SPEC_EXAMPLE, format="yaml", base_dir="/r")
    from_json = parse_workstream(json.dumps(document), format="json", base_dir="/r")
    assert from_yaml == from_json
    assert from_yaml.sha256 != from_json.sha256 and from_json.format == "json"


def test_the_schema_is_a_valid_draft_2020_12_schema_and_knows_every_gate_type():
    schema = workstream_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$defs"]["gate"]["properties"]["type"]["enum"] == [t.value for t in GateType]


def test_the_schema_accepts_the_spec_example_by_itself():
    assert not list(Draft202012Validator(workstream_schema()).iter_errors(
        yaml.safe_load(SPEC_EXAMPLE)))


# -- the schema's rules, each at its path ---------------------------------------------------

def task(**fields) -> dict:
    return {"task_id": "T1", "tool": "editor", **fields}


SCHEMA_CASES = [
    # (what, document, path, words in the message)
    ("workstream_id required", {k: v for k, v in minimal().items() if k != "workstream_id"},
     "workstream_id", "required"),
    ("tools required", {k: v for k, v in minimal().items() if k != "tools"}, "tools",
     "required"),
    ("tasks required", {k: v for k, v in minimal().items() if k != "tasks"}, "tasks",
     "required"),
    ("unknown top-level key", minimal(workstreem="x"), "workstreem", "unknown key"),
    ("empty workstream_id", minimal(workstream_id=""), "workstream_id", "must not be empty"),
    ("workstream_id a number", minimal(workstream_id=7), "workstream_id",
     "must be a string, not an integer"),
    ("control character in an id", minimal(workstream_id="WS\x1b[31m"), "workstream_id",
     "control characters"),
    ("C1 control in an id", minimal(phase_id="P\x85"), "phase_id", "control characters"),
    ("newline at the end of an id", minimal(project_id="P\n"), "project_id",
     "control characters"),
    ("name not a string", minimal(name=["x"]), "name", "must be a string, not a list"),
    ("empty repo", minimal(repo=""), "repo", "must not be empty"),
    ("resume unknown", minimal(resume="sometimes"), "resume", "must be one of auto, manual"),
    ("max_recoveries negative", minimal(max_recoveries=-1), "max_recoveries", "at least 0"),
    ("max_recoveries a boolean", minimal(max_recoveries=True), "max_recoveries",
     "must be an integer, not a boolean"),
    ("max_recoveries fractional", minimal(max_recoveries=1.5), "max_recoveries",
     "must be an integer"),
    ("files_scope unknown key", minimal(files_scope={"modfy": ["a"]}), "files_scope.modfy",
     "did you mean 'modify'"),
    ("files_scope not a list", minimal(files_scope={"modify": "src/**"}),
     "files_scope.modify", "must be a list"),
    ("empty glob", minimal(files_scope={"create": [""]}), "files_scope.create[0]",
     "must not be empty"),
    ("policy unknown key", minimal(policy={"max_lines": 3}), "policy.max_lines",
     "unknown key"),
    ("policy limit zero", minimal(policy={"max_files_changed": 0}), "policy.max_files_changed",
     "at least 1"),
    ("forbid_binary not a boolean", minimal(policy={"forbid_binary": "yes"}),
     "policy.forbid_binary", "must be true or false"),
    ("no tools", minimal(tools={}), "tools", "must not be empty"),
    ("no tasks", minimal(tasks=[]), "tasks", "must not be empty"),
    ("tool without command", minimal(tools={"editor": {}}), "tools.editor.command",
     "required"),
    ("tool unknown key", minimal(tools={"editor": {"command": ["x"], "timeout": 3}}),
     "tools.editor.timeout", "did you mean 'timeout_seconds'"),
    ("empty command", minimal(tools={"editor": {"command": []}}), "tools.editor.command",
     "must not be empty"),
    ("empty program", minimal(tools={"editor": {"command": ["", "x"]}}),
     "tools.editor.command[0]", "must not be empty"),
    ("argument not a string", minimal(tools={"editor": {"command": ["x", 3]}}),
     "tools.editor.command[1]", "must be a string, not an integer"),
    ("command a string", minimal(tools={"editor": {"command": "ed {prompt}"}}),
     "tools.editor.command", "must be a list"),
    ("tool timeout zero", minimal(tools={"editor": {"command": ["x"], "timeout_seconds": 0}}),
     "tools.editor.timeout_seconds", "greater than 0"),
    ("tool timeout huge", minimal(tools={"editor": {"command": ["x"],
                                                    "timeout_seconds": 10 ** 12}}),
     "tools.editor.timeout_seconds", "at most 2,592,000"),
    ("env value not a string", minimal(tools={"editor": {"command": ["x"], "env": {"A": 1}}}),
     "tools.editor.env.A", "must be a string, not an integer"),
    ("env name invalid", minimal(tools={"editor": {"command": ["x"], "env": {"A-B": "1"}}}),
     'tools.editor.env["A-B"]', "letters, digits and '_'"),
    ("env name with a newline", minimal(tools={"editor": {"command": ["x"],
                                                          "env": {"A\n": "1"}}}),
     'tools.editor.env["A\\n"]', "control characters"),
    ("empty tool id", minimal(tools={"": {"command": ["x"]}, "editor": {"command": ["x"]}}),
     'tools[""]', "as a tool id, this key must not be empty"),
    ("tool id with a tab", minimal(tools={"a\tb": {"command": ["x"]},
                                          "editor": {"command": ["x"]}}),
     'tools["a\\tb"]', "control characters"),
    ("tasks not a list", minimal(tasks={"task_id": "T1"}), "tasks", "must be a list"),
    ("task not a mapping", minimal(tasks=["T1"]), "tasks[0]", "must be a mapping"),
    ("task without task_id", minimal(tasks=[{"tool": "editor"}]), "tasks[0].task_id",
     "required"),
    ("task without tool", minimal(tasks=[{"task_id": "T1"}]), "tasks[0].tool", "required"),
    ("task unknown key", minimal(tasks=[task(tol="editor")]), "tasks[0].tol",
     "did you mean 'tool'"),
    ("max_attempts zero", minimal(tasks=[task(max_attempts=0)]), "tasks[0].max_attempts",
     "at least 1"),
    ("max_attempts huge", minimal(tasks=[task(max_attempts=10 ** 6)]),
     "tasks[0].max_attempts", "at most 100"),
    ("task timeout negative", minimal(tasks=[task(timeout_seconds=-1)]),
     "tasks[0].timeout_seconds", "greater than 0"),
    ("timeout a string", minimal(tasks=[task(timeout_seconds="60")]),
     "tasks[0].timeout_seconds", "must be a number, not a string"),
    ("depends_on a string", minimal(tasks=[task(depends_on="T0")]), "tasks[0].depends_on",
     "must be a list"),
    ("depends_on repeats", minimal(tasks=[task(task_id="T0"), task(depends_on=["T0", "T0"])]),
     "tasks[1].depends_on", "more than once"),
    ("allow_empty not a boolean", minimal(tasks=[task(allow_empty=1)]),
     "tasks[0].allow_empty", "true or false"),
    ("prompt not a string", minimal(tasks=[task(prompt=None)]), "tasks[0].prompt",
     "must be a string, not null"),
    ("task files_scope unknown key", minimal(tasks=[task(files_scope={"readonly": []})]),
     "tasks[0].files_scope.readonly", "did you mean 'read_only'"),
    ("gates not a list", minimal(gates={"name": "g"}), "gates", "must be a list"),
    ("gate without type", minimal(gates=[{"name": "g", "command": ["x"]}]), "gates[0].type",
     "required"),
    ("gate type unknown", minimal(gates=[{"name": "g", "type": "lint", "command": ["x"]}]),
     "gates[0].type", "LINT, UNIT, INTEGRATION, SECURITY"),
    ("gate without command", minimal(gates=[{"name": "g", "type": "UNIT"}]),
     "gates[0].command", "required"),
    ("gate unknown key", minimal(gates=[{"name": "g", "type": "UNIT", "command": ["x"],
                                         "depend_on": []}]), "gates[0].depend_on",
     "did you mean 'depends_on'"),
    ("gate timeout zero", minimal(gates=[{"name": "g", "type": "UNIT", "command": ["x"],
                                          "timeout_seconds": 0}]), "gates[0].timeout_seconds",
     "greater than 0"),
    # an empty list would read as "judges no task": absent is every task, so [] is refused
    ("gate tasks empty", minimal(gates=[{"name": "g", "type": "UNIT", "command": ["x"],
                                         "tasks": []}]), "gates[0].tasks", "must not be empty"),
    ("gate tasks a string", minimal(gates=[{"name": "g", "type": "UNIT", "command": ["x"],
                                            "tasks": "T1"}]), "gates[0].tasks",
     "must be a list"),
    ("gate task not a string", minimal(gates=[{"name": "g", "type": "UNIT", "command": ["x"],
                                               "tasks": [1]}]), "gates[0].tasks[0]",
     "must be a string, not an integer"),
    ("gate task empty", minimal(gates=[{"name": "g", "type": "UNIT", "command": ["x"],
                                        "tasks": [""]}]), "gates[0].tasks[0]",
     "must not be empty"),
    ("gate tasks repeat", minimal(gates=[{"name": "g", "type": "UNIT", "command": ["x"],
                                          "tasks": ["T1", "T1"]}]), "gates[0].tasks",
     "lists 'T1' more than once"),
]


@pytest.mark.parametrize("what,document,path,words", SCHEMA_CASES,
                         ids=[case[0] for case in SCHEMA_CASES])
def test_each_schema_rule_is_reported_at_its_path(what, document, path, words):
    problem = the_problem(document)
    assert problem.path == path and words in problem.message, problem


# -- the rules beyond the schema -------------------------------------------------------------

def gate(name, *depends_on, command=("x",), **fields) -> dict:
    return {"name": name, "type": "UNIT", "command": list(command), "depends_on": list(depends_on),
            **fields}


THREE_TASKS = [task(), task(task_id="T2"), task(task_id="T3")]


CROSS_FIELD_CASES = [
    ("undefined tool", minimal(tools={"editor": {"command": ["e"]}, "linter": {"command": ["l"]}},
                               tasks=[task(task_id="A"), task(task_id="B"),
                                      task(task_id="C", tool="edtor")]),
     "tasks[2].tool",
     "'edtor' is not a tool defined in tools (editor, linter); did you mean 'editor'?"),
    ("depends_on an unknown task", minimal(tasks=[task(depends_on=["T9"])]),
     "tasks[0].depends_on[0]", "'T9' is not a task of this workstream (tasks: T1)"),
    ("depends_on itself", minimal(tasks=[task(depends_on=["T1"])]), "tasks[0].depends_on[0]",
     "a task cannot depend on itself"),
    ("task cycle", minimal(tasks=[task(task_id="A", depends_on=["C"]),
                                  task(task_id="B", depends_on=["A"]),
                                  task(task_id="C", depends_on=["B"])]),
     "tasks[0].depends_on", "dependency cycle: A -> C -> B -> A"),
    ("duplicate task_id", minimal(tasks=[task(), task()]), "tasks[1].task_id",
     "duplicate task_id 'T1' (also tasks[0])"),
    ("duplicate gate name", minimal(gates=[gate("g"), gate("g")]), "gates[1].name",
     "duplicate name 'g' (also gates[0])"),
    ("gate depends_on an unknown gate", minimal(gates=[gate("g", "lint")]),
     "gates[0].depends_on[0]", "'lint' is not a gate of this workstream (gates: g)"),
    ("gate depends_on a task", minimal(gates=[gate("g", "T1")]), "gates[0].depends_on[0]",
     "'T1' is not a gate"),
    ("gate cycle", minimal(gates=[gate("a", "b"), gate("b", "a")]), "gates[0].depends_on",
     "dependency cycle: a -> b -> a"),
    ("unknown placeholder in a tool", minimal(tools={"editor": {"command": ["ed", "{promt}"]}}),
     "tools.editor.command[1]", "unknown placeholder {promt}; did you mean {prompt}?"),
    ("placeholder with a format spec", minimal(tools={"editor": {"command": ["{attempt:03}"]}}),
     "tools.editor.command[0]", "is not a placeholder"),
    ("attribute access", minimal(tools={"editor": {"command": ["{prompt.__class__}"]}}),
     "tools.editor.command[0]", "is not a placeholder"),
    ("unmatched brace", minimal(tools={"editor": {"command": ["ed", "a{b"]}}),
     "tools.editor.command[1]", "unmatched '{' at character 2"),
    ("unmatched closing brace", minimal(tools={"editor": {"command": ["ed", "a}"]}}),
     "tools.editor.command[1]", "unmatched '}'"),
    ("prompt placeholder in a prompt", minimal(tasks=[task(prompt="do {prompt}")]),
     "tasks[0].prompt", "unknown placeholder {prompt}"),
    ("feedback in a gate", minimal(gates=[gate("g", command=("x", "{feedback_file}"))]),
     "gates[0].command[1]", "unknown placeholder {feedback_file}"),
    ("branch placeholder", minimal(branch="uet/{task_id}"), "branch",
     "unknown placeholder {task_id}"),
    ("branch not a git name", minimal(branch="uet/{run_id} x"), "branch",
     "not a valid git branch name"),
    ("branch from a workstream_id with a space", minimal(workstream_id="WS 1",
                                                         branch="ws/{workstream_id}"),
     "branch", "contains ' '"),
    ("branch ending in .lock", minimal(branch="uet/{run_id}.lock"), "branch", ".lock"),
    ("base an option", minimal(base="--upload-pack=evil"), "base", "must not start with '-'"),
    ("reserved env", minimal(tools={"editor": {"command": ["x"], "env": {"UET_RUN_ID": "1"}}}),
     "tools.editor.env.UET_RUN_ID", "set by uet"),
    ("absolute glob", minimal(files_scope={"modify": ["/etc/**"]}), "files_scope.modify[0]",
     "not an absolute path"),
    ("home glob", minimal(files_scope={"modify": ["~/x"]}), "files_scope.modify[0]",
     "not an absolute path"),
    ("drive glob", minimal(files_scope={"modify": ["C:/x"]}), "files_scope.modify[0]",
     "not an absolute path"),
    ("escaping glob", minimal(files_scope={"create": ["src/../../x"]}), "files_scope.create[0]",
     "'..'"),
    ("dot glob", minimal(files_scope={"read_only": ["./docs/**"]}),
     "files_scope.read_only[0]", "'.' step"),
    ("backslash glob", minimal(policy={"forbid_paths": ["src\\x"]}), "policy.forbid_paths[0]",
     "'/'"),
    ("negated glob", minimal(policy={"forbid_paths": ["!src/**"]}), "policy.forbid_paths[0]",
     "'!'"),
    ("empty folder glob", minimal(files_scope={"modify": ["src//x"]}), "files_scope.modify[0]",
     "'//'"),
    ("brace expansion glob", minimal(files_scope={"modify": ["src/{a,b}/**"]}),
     "files_scope.modify[0]", "brace expansion ({a,b}) is not supported"),
    ("task glob", minimal(tasks=[task(files_scope={"modify": ["../x"]})]),
     "tasks[0].files_scope.modify[0]", "'..'"),
    ("gate judges an unknown task", minimal(tasks=THREE_TASKS,
                                            gates=[gate("g", tasks=["T2", "T9"])]),
     "gates[0].tasks[1]", "'T9' is not a task of this workstream (tasks: T1, T2, T3)"),
    ("gate judges a gate", minimal(gates=[gate("g"), gate("h", tasks=["g"])]),
     "gates[1].tasks[0]", "'g' is not a task"),
    ("every-task gate depends on a limited one",
     minimal(tasks=THREE_TASKS, gates=[gate("db", tasks=["T2"]), gate("unit", "db")]),
     "gates[1].depends_on[0]", "'db' does not judge every task this gate judges (not T1, T3)"),
    ("limited gate depends on one limited to fewer tasks",
     minimal(tasks=THREE_TASKS, gates=[gate("lint"), gate("a", tasks=["T3", "T1"]),
                                       gate("b", "lint", "a", tasks=["T1", "T2"])]),
     "gates[2].depends_on[1]", "'a' does not judge every task this gate judges (not T2)"),
    ("limited gates of other tasks",
     minimal(tasks=THREE_TASKS, gates=[gate("a", tasks=["T1"]), gate("b", "a", tasks=["T2"])]),
     "gates[1].depends_on[0]", "(not T2)"),
]


@pytest.mark.parametrize("what,document,path,words", CROSS_FIELD_CASES,
                         ids=[case[0] for case in CROSS_FIELD_CASES])
def test_each_rule_beyond_the_schema_is_reported_at_its_path(what, document, path, words):
    problem = the_problem(document)
    assert problem.path == path and words in problem.message, problem


def test_every_cycle_is_named_once_with_its_members():
    problems = problems_of(minimal(tasks=[
        task(task_id="A", depends_on=["B"]), task(task_id="B", depends_on=["A"]),
        task(task_id="C"), task(task_id="D", depends_on=["E", "C"]),
        task(task_id="E", depends_on=["D"])]))
    assert [(p.path, p.message) for p in problems] == [
        ("tasks[0].depends_on", "dependency cycle: A -> B -> A"),
        ("tasks[3].depends_on", "dependency cycle: D -> E -> D")]


def test_a_valid_file_has_no_problem_from_braces_it_escapes():
    ws = parse_workstream(json.dumps(minimal(
        tools={"editor": {"command": ["sh", "-c", "echo {{literal}} {prompt}"]}},
        tasks=[task(prompt="write {{'a': 1}} in {worktree}")])), format="json")
    assert render_template(ws.tools["editor"].command[2], {"prompt": "hi"}) == \
        "echo {literal} hi"
    assert render_template(ws.tasks[0].prompt, {"worktree": "/w"}) == "write {'a': 1} in /w"


# -- gates that judge only some tasks' patches ---------------------------------------------

LIMITED = """\
workstream_id: WS-LIMITED
tools: {editor: {command: ["ed", "{prompt_file}"]}}
tasks:
  - {task_id: T1, tool: editor}
  - {task_id: T2, tool: editor, depends_on: [T1]}
  - {task_id: T3, tool: editor}
gates:
  - {name: db, type: UNIT, command: [pytest, tests/test_db.py], tasks: [T2], depends_on: [lint]}
  - {name: lint, type: LINT, command: [ruff, check, .]}
  - {name: smoke, type: INTEGRATION, command: [./smoke], tasks: [T3, T2]}
  - {name: deep, type: UNIT, command: [./deep], tasks: [T2], depends_on: [smoke, db]}
"""


def names(gates) -> list[str]:
    return [g.name for g in gates]


def test_a_gate_judges_only_the_tasks_it_lists_the_same_from_yaml_and_json():
    from_yaml = parse_workstream(LIMITED, format="yaml", base_dir="/r")
    from_json = parse_workstream(json.dumps(yaml.safe_load(LIMITED)), format="json",
                                 base_dir="/r")
    assert from_yaml == from_json
    assert [(g.name, g.tasks) for g in from_yaml.gates] == [
        ("db", ("T2",)), ("lint", ()), ("smoke", ("T3", "T2")), ("deep", ("T2",))]
    assert from_yaml.gate("db") == Gate("db", GateType.UNIT, ("pytest", "tests/test_db.py"), 0,
                                        None, ("lint",), ("T2",))
    assert from_yaml.gate_order == ("lint", "db", "smoke", "deep")
    # each task's gates, in the dependency order of them all
    assert names(from_yaml.gates_for("T1")) == ["lint"]
    assert names(from_yaml.gates_for("T2")) == ["lint", "db", "smoke", "deep"]
    assert names(from_yaml.gates_for("T3")) == ["lint", "smoke"]
    assert [from_yaml.gate("smoke").judges(t) for t in ("T1", "T2", "T3")] == [
        False, True, True]
    assert all(from_yaml.gate("lint").judges(t) for t in ("T1", "T2", "T3"))
    with pytest.raises(KeyError):
        from_yaml.gates_for("T9")  # not "the gates of every task": no such task


def test_a_gate_limited_to_tasks_differs_from_the_same_gate_for_every_task():
    document = minimal(tasks=THREE_TASKS, gates=[gate("g")])
    every = parse_workstream(json.dumps(document), format="json")
    document["gates"][0]["tasks"] = ["T1", "T2", "T3"]
    listed = parse_workstream(json.dumps(document), format="json")
    document["gates"][0]["tasks"] = ["T1"]
    limited = parse_workstream(json.dumps(document), format="json")
    assert every.gates[0].tasks == () and limited.gates[0].tasks == ("T1",)
    assert every != limited and len({every.gates[0], limited.gates[0]}) == 2  # hashable
    # listing every task judges the same patches as listing none
    assert [names(every.gates_for(t)) for t in ("T1", "T2", "T3")] == \
        [names(listed.gates_for(t)) for t in ("T1", "T2", "T3")] == [["g"], ["g"], ["g"]]
    assert [names(limited.gates_for(t)) for t in ("T1", "T2", "T3")] == [["g"], [], []]


@pytest.mark.parametrize("gates", [
    [gate("lint"), gate("db", "lint", tasks=["T2"])],                     # on an every-task gate
    [gate("a", tasks=["T1", "T2"]), gate("b", "a", tasks=["T2"])],        # on a wider one
    [gate("a", tasks=["T2", "T1"]), gate("b", "a", tasks=["T1", "T2"])],  # the same, reordered
    [gate("a", tasks=["T1", "T2", "T3"]), gate("b", "a")],                # every task, listed
], ids=["every-task", "wider", "same", "all-listed"])
def test_a_gate_may_depend_on_gates_that_judge_every_task_it_judges(gates):
    ws = parse_workstream(json.dumps(minimal(tasks=THREE_TASKS, gates=gates)), format="json")
    for task_id in ("T1", "T2", "T3"):
        judging = ws.gates_for(task_id)
        for position, judge in enumerate(judging):  # what each waits on runs before it
            assert set(judge.depends_on) <= set(names(judging[:position]))


def test_a_gate_naming_an_unknown_task_is_not_also_judged_on_its_dependencies():
    # what the list meant is unknown: its problem is reported once, at the unknown id
    problems = problems_of(minimal(tasks=THREE_TASKS, gates=[
        gate("a", tasks=["T1", "T9"]), gate("b", "a", tasks=["T1"]),
        gate("c", "b", tasks=["T7"])]))
    assert [(p.path, p.message) for p in problems] == [
        ("gates[0].tasks[1]", "'T9' is not a task of this workstream (tasks: T1, T2, T3)"),
        ("gates[2].tasks[0]", "'T7' is not a task of this workstream (tasks: T1, T2, T3)")]


# -- many problems at once -------------------------------------------------------------------

def test_every_problem_of_a_file_is_listed_sorted_by_path():
    document = minimal(
        workstreem="typo", resume="never",
        tools={"editor": {"command": ["ed", "{promt}"], "timeout_seconds": -5}},
        tasks=[task(task_id="T1"), task(task_id="T2", tool="edtor", depends_on=["T9"]),
               task(task_id="T3", max_attempts=0)] + [task(task_id=f"X{i}") for i in range(8)]
        + [task(task_id="T1", tol="x")],
        gates=[gate("g", "h")])
    problems = problems_of(document)
    assert [p.path for p in problems] == [
        "gates[0].depends_on[0]", "resume", "tasks[1].depends_on[0]", "tasks[1].tool",
        "tasks[2].max_attempts", "tasks[11].task_id", "tasks[11].tol",
        "tools.editor.command[1]", "tools.editor.timeout_seconds", "workstreem"]
    with pytest.raises(WorkstreamError) as caught:
        parse_workstream(json.dumps(document), format="json", source="ws.json")
    error = caught.value
    assert isinstance(error, ValidationError)  # the CLI's usage-type errors
    assert str(error).startswith("ws.json: 10 problems: gates[0].depends_on[0]: ")
    assert all(str(p) in str(error) for p in problems)


def test_a_schema_problem_and_a_cross_field_problem_are_both_listed():
    assert paths_of(minimal(tasks=[task(max_attempts="2", tool="nope")])) == [
        "tasks[0].max_attempts", "tasks[0].tool"]


# -- reading files ---------------------------------------------------------------------------

def error_of(path, **kwargs) -> WorkstreamError:
    with pytest.raises(WorkstreamError) as caught:
        load_workstream(path, **kwargs)
    return caught.value


def test_a_missing_file_a_folder_and_an_unknown_extension_are_one_clear_problem(tmp_path):
    assert error_of(tmp_path / "nope.yaml").problems == [Problem("", "no such file")]
    (tmp_path / "dir.yaml").mkdir()
    assert error_of(tmp_path / "dir.yaml").problems == [
        Problem("", "is a folder, not a workstream file")]
    (tmp_path / "ws.toml").write_text("x = 1")
    assert ".yaml, .yml or .json" in error_of(tmp_path / "ws.toml").problems[0].message
    assert str(tmp_path / "ws.toml") in str(error_of(tmp_path / "ws.toml"))


def test_a_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "ws.yaml")
    assert error_of(tmp_path / "ws.yaml").problems == [Problem("", "is not a regular file")]


def test_an_unreadable_file_is_one_clear_problem(tmp_path):
    """A file this user may not read (chmod 0), and a name the system cannot resolve (a
    symbolic link loop, which even root cannot read through), are one problem each."""
    path = tmp_path / "ws.yaml"
    path.write_text(json.dumps(minimal()))
    path.chmod(0)
    try:
        if not os.access(path, os.R_OK):  # root reads every file: only the loop below then
            assert error_of(path).problems[0].message.startswith("cannot read it: ")
    finally:
        path.chmod(0o600)
    loop = tmp_path / "loop.yaml"
    os.symlink(loop, loop)
    assert error_of(loop).problems == [
        Problem("", "cannot read it: Too many levels of symbolic links")]


def test_a_file_over_the_size_limit_is_refused_before_it_is_parsed(tmp_path):
    path = tmp_path / "ws.yaml"
    # not YAML at all: parsed, it would be a syntax problem; refused first, it is one
    path.write_bytes(b"{[: " * (MAX_FILE_BYTES // 4 + 1))
    problem, = error_of(path).problems
    assert "larger than 1,048,576 bytes" in problem.message
    with pytest.raises(WorkstreamError, match="larger than"):
        parse_workstream(b"x" * (MAX_FILE_BYTES + 1), format="yaml")


def test_a_file_of_the_size_limit_is_read(tmp_path):
    text = json.dumps(minimal())
    path = tmp_path / "ws.json"
    path.write_text(text + " " * (MAX_FILE_BYTES - len(text)))
    assert load_workstream(path).workstream_id == "WS-1"


def test_a_file_that_is_not_utf8_is_refused_with_the_offset(tmp_path):
    path = tmp_path / "ws.yaml"
    path.write_bytes(b"workstream_id: W\xe9\n")
    assert error_of(path).problems == [
        Problem("", "the file is not UTF-8 text (byte 0xe9 at offset 16)")]
    path.write_bytes(b"\xff\xfe" + "workstream_id: W\n".encode("utf-16-le"))
    assert "not UTF-8" in error_of(path).problems[0].message


def test_a_utf8_byte_order_mark_is_accepted_and_kept_in_the_content():
    for fmt, text in (("yaml", yaml.safe_dump(minimal())), ("json", json.dumps(minimal()))):
        content = b"\xef\xbb\xbf" + text.encode()
        ws = parse_workstream(content, format=fmt)
        assert ws.content == content and ws.sha256 == hashlib.sha256(content).hexdigest()


@pytest.mark.parametrize("fmt,text,words", [
    ("yaml", "workstream_id: W\ntools: [\n", "not valid YAML: "),
    ("yaml", "workstream_id: W\n  tools: x\n", "line 2, column"),
    ("yaml", "a: 1\n---\nb: 2\n", "another document"),
    ("yaml", "workstream_id: W\n\tname: x\n", "line 2, column 1"),
    ("json", '{"workstream_id": "W",\n "tools": }', "not valid JSON: Expecting value at "
                                                   "line 2, column 11"),
    ("json", "{'workstream_id': 'W'}", "not valid JSON: "),
])
def test_malformed_text_is_one_problem_with_line_and_column(fmt, text, words):
    problem = the_problem(text, fmt)
    assert problem.path == "" and words in problem.message, problem


@pytest.mark.parametrize("fmt,text,words", [
    ("yaml", "", "the file is empty"),
    ("yaml", "# only a comment\n", "the file is empty"),
    ("yaml", "- a\n", "must be a mapping"),
    ("yaml", "just text\n", "must be a mapping"),
    ("json", "[]", "must be a mapping"),
    ("json", "null", "the file is empty"),
])
def test_a_document_that_is_not_a_mapping_is_one_problem(fmt, text, words):
    problem = the_problem(text, fmt)
    assert problem.path == "" and words in problem.message


# -- hostile documents ------------------------------------------------------------------------

BASE_YAML = "workstream_id: W\ntools: {e: {command: [x]}}\ntasks: [{task_id: A, tool: e}]\n"


def billion_laughs(levels: int = 9) -> str:
    text = 'a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for i in range(1, levels + 1):
        text += f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]\n"
    return text


def test_a_billion_laughs_is_refused_quickly():
    # PyYAML's safe_load builds aliases as shared objects, cheaply; what would explode is
    # walking them: the copy stops at MAX_VALUES
    problem = the_problem(billion_laughs() + "workstream_id: *a9\n", "yaml")
    assert "more than 100,000 values" in problem.message  # stopped at the limit


def test_aliases_within_the_limit_are_expanded_into_independent_values():
    ws = parse_workstream(
        "workstream_id: W\nfiles_scope: &scope {modify: ['src/**']}\n"
        "tools: {e: &tool {command: [x], timeout_seconds: 5}, f: {<<: *tool, "
        "timeout_seconds: 9}}\n"
        "tasks: [{task_id: A, tool: f, files_scope: *scope}]\n", format="yaml")
    assert ws.tools["f"] == Tool("f", ("x",), 9.0)  # a merge key, overridden: no duplicate
    assert ws.tasks[0].files_scope == ws.files_scope == FileScope(modify=("src/**",))


@pytest.mark.parametrize("tag", ["!!python/object/apply:os.system ['touch /tmp/pwned']",
                                 "!!python/object:collections.OrderedDict {}",
                                 "!!python/name:os.system", "!custom x"])
def test_python_and_custom_tags_are_refused_never_constructed(tag, tmp_path):
    problem = the_problem(BASE_YAML + f"name: {tag}\n", "yaml")
    assert problem.path == "" and "could not determine a constructor" in problem.message
    assert "line 4" in problem.message


@pytest.mark.parametrize("value,path,words", [
    ("2024-01-01", "name", "date (YAML reads it as one: quote it"),
    ("!!binary aGVsbG8=", "name", "binary data"),
    ("!!set {a, b}", "name", "a YAML set"),
    ('"W\\0"', "name", "NUL"),
    (".nan", "name", "not a finite number"),
])
def test_values_json_cannot_hold_are_refused_at_their_path(value, path, words):
    problem = the_problem(BASE_YAML + f"name: {value}\n", "yaml")
    assert problem.path == path and words in problem.message


def test_an_infinite_timeout_is_refused():
    problem = the_problem(BASE_YAML.replace("[x]}", "[x], timeout_seconds: .inf}"), "yaml")
    assert problem == Problem("tools.e.timeout_seconds", "inf is not a finite number")
    problem = the_problem('{"workstream_id": "W", "max_recoveries": NaN, "tools": {"e": '
                          '{"command": ["x"]}}, "tasks": [{"task_id": "A", "tool": "e"}]}')
    assert problem == Problem("max_recoveries", "nan is not a finite number")


@pytest.mark.parametrize("key,words", [("yes", "a boolean, not text (YAML reads yes/no"),
                                       ("1", "an integer, not text"), ("~", "null, not text"),
                                       ("2024-01-01", "a date, not text")])
def test_keys_that_are_not_text_are_refused(key, words):
    problem = the_problem(BASE_YAML.replace("tools: {", f"tools: {{{key}: {{command: [y]}}, "),
                          "yaml")
    assert problem.path == "tools" and words in problem.message, problem


def test_duplicate_keys_are_refused_with_their_lines():
    assert the_problem(BASE_YAML + "workstream_id: W2\n", "yaml") == Problem(
        "workstream_id", "duplicate key (line 4; first at line 1): give it once")
    assert the_problem(BASE_YAML.replace("tool: e}", "tool: e, tool: e}"), "yaml").path == \
        "tasks[0].tool"
    assert the_problem('{"workstream_id": "W", "workstream_id": "X", "tools": {"e": '
                       '{"command": ["x"]}}, "tasks": [{"task_id": "A", "tool": "e"}]}') == \
        Problem("workstream_id", "duplicate key: give it once")


def test_a_lone_surrogate_in_json_is_refused_at_its_path():
    document = minimal(tasks=[task(prompt="\ud800")])
    text = json.dumps(document)  # ASCII: the surrogate as a \\ud800 escape
    assert the_problem(text) == Problem(
        "tasks[0].prompt", "the text contains a lone surrogate (it is not valid Unicode)")
    with pytest.raises(WorkstreamError, match="not valid Unicode"):
        parse_workstream(json.dumps(document, ensure_ascii=False), format="json")


@pytest.mark.parametrize("fmt,depth", [("yaml", 40), ("yaml", 100_000), ("json", 40),
                                       ("json", 100_000)])
def test_deep_nesting_is_refused_without_exhausting_the_stack(fmt, depth):
    if fmt == "yaml":
        text = BASE_YAML + "name: " + "[" * depth + "]" * depth + "\n"
    else:
        text = '{"name": ' + "[" * depth + "]" * depth + "}"
    problem = the_problem(text, fmt)
    assert "deep" in problem.message or "nesting" in problem.message, problem


def test_integers_of_thousands_of_digits_are_refused():
    assert "not valid YAML" in the_problem(BASE_YAML + "max_recoveries: " + "9" * 5000,
                                           "yaml").message
    assert "not valid JSON" in the_problem('{"max_recoveries": ' + "9" * 5000 + "}").message


# -- templates, globs, branch names, order ------------------------------------------------------

def test_render_template_substitutes_names_and_escapes_only():
    assert render_template("{{x}} {prompt}{attempt}", {"prompt": "p", "attempt": 2}) == "{x} p2"
    with pytest.raises(ValueError):
        render_template("{prompt.__class__}", {"prompt": "p"})
    with pytest.raises(ValueError):
        render_template("{other}", {"prompt": "p"})
    # a value is inserted as text: its own braces are not read again
    assert render_template("{prompt}", {"prompt": "{run_id}"}) == "{run_id}"


def test_template_problems_names_each_problem():
    assert template_problems("{a}{b}", ("a",)) == [
        "unknown placeholder {b} (known here: {a})"]
    assert template_problems("{{}}{{", TOOL_PLACEHOLDERS) == []
    assert template_problems("}{", BRANCH_PLACEHOLDERS) == [
        "unmatched '}' at character 1 (write '}}' for a literal brace)",
        "unmatched '{' at character 2 (write '{{' for a literal brace)"]


@pytest.mark.parametrize("pattern", ["src/**", "**/*.py", "tests/core/**", ".github/**",
                                     "docs/", "docs/[a-z]*", "README.md", "a{b}c"])
def test_ordinary_globs_are_fine(pattern):
    assert glob_problem(pattern) is None


@pytest.mark.parametrize("name", ["uet/01HX", "ws/WS-000-010/run-1", "a.b/c_d"])
def test_ordinary_branch_names_are_fine(name):
    assert ref_name_problem(name) is None


@pytest.mark.parametrize("name", ["a b", "a~1", "a^", "a:b", "a?", "a*", "a[", "a\\b", "-a",
                                  "HEAD", "@", "/a", "a/", "a//b", "a..b", "a@{1}", "a.",
                                  ".a", "a/.b", "a.lock", "a/b.lock/c", "a\x7f"])
def test_branch_names_git_refuses_are_refused(name):
    assert ref_name_problem(name) is not None


def test_dependency_order_keeps_file_order_among_ready_items():
    assert dependency_order([("c", ("b",)), ("a", ()), ("b", ()), ("d", ("a",))]) == (
        "a", "b", "c", "d")
    assert dependency_order([("x", ("z",)), ("y", ()), ("z", ())]) == ("y", "z", "x")
    with pytest.raises(ValueError):
        dependency_order([("a", ("b",)), ("b", ("a",))])


def test_the_task_and_gate_orders_follow_dependencies():
    ws = parse_workstream(json.dumps(minimal(
        tasks=[task(task_id="C", depends_on=["A", "B"]), task(task_id="B", depends_on=["A"]),
               task(task_id="A"), task(task_id="D")],
        gates=[gate("unit", "lint"), gate("lint"), gate("security")])), format="json")
    assert ws.task_order == ("A", "B", "C", "D")
    assert ws.gate_order == ("lint", "unit", "security")
    assert [t.index for t in ws.ordered_tasks()] == [2, 1, 0, 3]


# -- properties: random valid workstreams ------------------------------------------------------

ID_CHARS = string.ascii_letters + string.digits + "-_.é/"
ids = st.text(ID_CHARS, min_size=1, max_size=12)
# text as files hold it: any character but controls, surrogates and braces, plus newlines
# and tabs; braces come only as escapes or known placeholders
plain_text = st.text(st.characters(exclude_categories=("Cs", "Cc"), exclude_characters="{}")
                     | st.sampled_from("\n\t"), max_size=30)
globs = st.lists(st.sampled_from(["src/**", "tests/**", "**/*.py", "docs/*.md", "lib/",
                                  "README.md"]), max_size=3, unique=True)
timeouts = st.one_of(st.none(), st.integers(1, 86_400),
                     st.floats(0.5, 86_400, allow_nan=False, allow_infinity=False))


def template(placeholders) -> st.SearchStrategy[str]:
    piece = plain_text | st.sampled_from([f"{{{name}}}" for name in placeholders]) | \
        st.just("{{x}}")
    return st.lists(piece, max_size=4).map("".join)


def optional(**fields) -> st.SearchStrategy[dict]:
    """A dict holding a random subset of the given fields."""
    return st.fixed_dictionaries({}, optional=fields)


@st.composite
def dags(draw, names: list[str]) -> dict[str, list[str]]:
    """Random dependencies among `names` without a cycle: edges follow a random ranking that
    differs from the file order."""
    ranking = draw(st.permutations(names))
    rank = {name: i for i, name in enumerate(ranking)}
    return {name: draw(st.lists(st.sampled_from([n for n in names if rank[n] < rank[name]]),
                                unique=True, max_size=3))
            if rank[name] else [] for name in names}


@st.composite
def workstream_documents(draw) -> dict:
    tool_ids = draw(st.lists(ids, min_size=1, max_size=3, unique=True))
    tools = {}
    for tool_id in tool_ids:
        tool = {"command": draw(st.lists(template(TOOL_PLACEHOLDERS), max_size=4).map(
            lambda args: ["prog", *args]))}
        tool.update(draw(optional(
            timeout_seconds=timeouts.filter(bool),
            env=st.dictionaries(st.from_regex(r"[A-Z_][A-Z0-9_]{0,8}", fullmatch=True).filter(
                lambda n: not n.startswith("UET_")), plain_text, max_size=3))))
        tools[tool_id] = tool
    task_ids = draw(st.lists(ids, min_size=1, max_size=8, unique=True))
    dependencies = draw(dags(task_ids))
    tasks = []
    for task_id in task_ids:
        spec = {"task_id": task_id, "tool": draw(st.sampled_from(tool_ids))}
        spec.update(draw(optional(
            name=plain_text, prompt=template(("worktree", "task_id", "run_id", "attempt",
                                              "feedback_file")),
            depends_on=st.just(dependencies[task_id]), max_attempts=st.integers(1, 100),
            timeout_seconds=timeouts.filter(bool), allow_empty=st.booleans(),
            files_scope=optional(modify=globs, create=globs, read_only=globs))))
        tasks.append(spec)
    gate_names = draw(st.lists(ids, max_size=5, unique=True))
    gate_dependencies = draw(dags(gate_names)) if gate_names else {}
    # the tasks each gate judges (None: every task); a dependency on a gate that does not
    # judge all of them is dropped (the edges left are still without a cycle)
    judged = {name: draw(st.none() | st.lists(st.sampled_from(task_ids), min_size=1,
                                              unique=True)) for name in gate_names}

    def covers(dependency: str, name: str) -> bool:
        return judged[dependency] is None or (
            judged[name] is not None and set(judged[name]) <= set(judged[dependency]))
    gates = []
    for name in gate_names:
        spec = {"name": name, "type": draw(st.sampled_from([t.value for t in GateType])),
                "command": ["check", *draw(st.lists(template(("worktree", "run_id")),
                                                    max_size=2))]}
        depends_on = [d for d in gate_dependencies[name] if covers(d, name)]
        spec.update(draw(optional(timeout_seconds=timeouts.filter(bool),
                                  depends_on=st.just(depends_on))))
        if judged[name] is not None:
            spec["tasks"] = judged[name]
        gates.append(spec)
    document = {"workstream_id": draw(ids), "tools": tools, "tasks": tasks}
    document.update(draw(optional(
        project_id=ids, phase_id=ids, name=plain_text, repo=st.sampled_from([".", "repo", ".."]),
        base=st.sampled_from(["HEAD", "main", "v1.0"]), branch=st.sampled_from(
            ["uet/{run_id}", "work/{run_id}-x", "r{run_id}"]),
        files_scope=optional(modify=globs, create=globs, read_only=globs),
        policy=optional(max_lines_changed=st.integers(1, 10_000),
                        max_files_changed=st.integers(1, 100), forbid_binary=st.booleans(),
                        forbid_paths=globs),
        gates=st.just(gates), resume=st.sampled_from(["auto", "manual"]),
        max_recoveries=st.integers(0, 100))))
    return document


def expected_workstream(document: dict, base_dir: str) -> Workstream:
    """What loading `document` must give, written out from the SPEC's defaults."""
    def scope(spec):
        if spec is None:
            return None
        return FileScope(tuple(spec.get("modify", ())), tuple(spec.get("create", ())),
                          tuple(spec.get("read_only", ())))
    def seconds(value):
        return None if value is None else float(value)
    tools = {tid: Tool(tid, tuple(t["command"]), seconds(t.get("timeout_seconds")),
                       dict(t.get("env", {}))) for tid, t in document["tools"].items()}
    top_scope = scope(document.get("files_scope"))
    tasks = tuple(Task(
        t["task_id"], t["tool"], i, t.get("name"), t.get("prompt", ""),
        tuple(t.get("depends_on", ())), t.get("max_attempts", 1),
        seconds(t.get("timeout_seconds", tools[t["tool"]].timeout_seconds)),
        scope(t["files_scope"]) if "files_scope" in t else top_scope,
        t.get("allow_empty", False)) for i, t in enumerate(document["tasks"]))
    gates = tuple(Gate(g["name"], GateType(g["type"]), tuple(g["command"]), i,
                       seconds(g.get("timeout_seconds")), tuple(g.get("depends_on", ())),
                       tuple(g.get("tasks", ())))
                  for i, g in enumerate(document.get("gates", ())))
    policy = document.get("policy", {})
    return Workstream(
        workstream_id=document["workstream_id"],
        project_id=document.get("project_id", "default"),
        phase_id=document.get("phase_id", "default"),
        repo=os.path.normpath(os.path.join(base_dir, document.get("repo", "."))),
        tools=tools, tasks=tasks, gates=gates, name=document.get("name"),
        base=document.get("base", "HEAD"), branch=document.get("branch", "uet/{run_id}"),
        files_scope=top_scope,
        policy=Policy(policy.get("max_lines_changed"), policy.get("max_files_changed"),
                      policy.get("forbid_binary", False), tuple(policy.get("forbid_paths", ()))),
        resume=document.get("resume", "auto"),
        max_recoveries=document.get("max_recoveries", 3),
        task_order=reference_order([(t.task_id, t.depends_on) for t in tasks]),
        gate_order=reference_order([(g.name, g.depends_on) for g in gates]))


def reference_order(items) -> tuple[str, ...]:
    """The rule, the slow way: repeatedly take the first item (in file order) whose
    dependencies are all placed."""
    placed: list[str] = []
    while len(placed) < len(items):
        placed.append(next(i for i, deps in items
                           if i not in placed and all(d in placed for d in deps)))
    return tuple(placed)


PROPERTY_SETTINGS = settings(max_examples=150, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow,
                                                    HealthCheck.data_too_large])


@PROPERTY_SETTINGS
@given(workstream_documents())
def test_random_valid_workstreams_load_the_same_from_yaml_and_json(document):
    expected = expected_workstream(document, "/base")
    as_yaml = yaml.safe_dump(document, allow_unicode=True, sort_keys=False)
    as_json = json.dumps(document, ensure_ascii=False, indent=1)
    from_yaml = parse_workstream(as_yaml, format="yaml", base_dir="/base")
    from_json = parse_workstream(as_json, format="json", base_dir="/base")
    assert from_yaml == expected
    assert from_json == expected
    assert from_yaml.content == as_yaml.encode("utf-8")


@PROPERTY_SETTINGS
@given(workstream_documents())
def test_each_tasks_gates_are_those_that_judge_it_in_an_order_that_runs(document):
    ws = parse_workstream(json.dumps(document), format="json")
    for task_id in (t["task_id"] for t in document["tasks"]):
        judging = ws.gates_for(task_id)
        assert list(judging) == [g for g in ws.ordered_gates()
                                 if g.tasks == () or task_id in g.tasks]
        # every gate's dependencies judge the task too, and come before it
        for position, judge in enumerate(judging):
            assert set(judge.depends_on) <= {g.name for g in judging[:position]}


def _mutations(document: dict) -> list[tuple[str, object]]:
    """(the path that must be reported, a function making that one field invalid)."""
    tasks, tools = document["tasks"], document["tools"]
    task_ids = [t["task_id"] for t in tasks]
    tool_id = next(iter(tools))
    mutations = []
    for i, spec in enumerate(tasks):
        mutations += [
            (f"tasks[{i}].tool", lambda d, i=i: d["tasks"][i].__setitem__("tool", "\x00no")),
            (f"tasks[{i}].tool", lambda d, i=i: d["tasks"][i].__setitem__("tool", "nosuch~")),
            (f"tasks[{i}].max_attempts",
             lambda d, i=i: d["tasks"][i].__setitem__("max_attempts", 0)),
            (f"tasks[{i}].timeout_seconds",
             lambda d, i=i: d["tasks"][i].__setitem__("timeout_seconds", -1)),
            (f"tasks[{i}].prompt",
             lambda d, i=i: d["tasks"][i].__setitem__("prompt", "{prompt_file}")),
            (f"tasks[{i}].allow_empty",
             lambda d, i=i: d["tasks"][i].__setitem__("allow_empty", "no")),
            (f"tasks[{i}].extra", lambda d, i=i: d["tasks"][i].__setitem__("extra", 1)),
            (f"tasks[{i}].depends_on[0]",
             lambda d, i=i: d["tasks"][i].__setitem__("depends_on", ["nosuch~"])),
            (f"tasks[{i}].files_scope.modify[0]",
             lambda d, i=i: d["tasks"][i].__setitem__("files_scope", {"modify": ["/abs"]})),
        ]
        if i > 0:  # a later task named like the first one
            mutations.append((f"tasks[{i}].task_id",
                              lambda d, i=i: d["tasks"][i].__setitem__("task_id", task_ids[0])
                              or _rename_dependencies(d, task_ids[i], task_ids[0])))
    for j, spec in enumerate(document.get("gates", ())):
        listed = spec.get("tasks", [])
        mutations.append((f"gates[{j}].tasks[{len(listed)}]",
                          lambda d, j=j, listed=listed: d["gates"][j].__setitem__(
                              "tasks", [*listed, "nosuch~"])))
    mutations += [
        ("workstream_id", lambda d: d.__setitem__("workstream_id", "")),
        ("resume", lambda d: d.__setitem__("resume", "always")),
        ("max_recoveries", lambda d: d.__setitem__("max_recoveries", -1)),
        ("branch", lambda d: d.__setitem__("branch", "{task_id}")),
        ("files_scope.create[0]", lambda d: d.__setitem__("files_scope", {"create": ["a/.."]})),
        ("policy.max_lines_changed", lambda d: d.__setitem__("policy",
                                                             {"max_lines_changed": 0})),
        ("tools", lambda d: d["tools"].__setitem__(3, {"command": ["x"]})),
        (f"{_tool_path(tool_id)}.command", lambda d: d["tools"][tool_id].__setitem__(
            "command", [])),
        (f"{_tool_path(tool_id)}.command[1]", lambda d: d["tools"][tool_id].__setitem__(
            "command", ["x", "{nosuch}"])),
        (f"{_tool_path(tool_id)}.env.A", lambda d: d["tools"][tool_id].__setitem__(
            "env", {"A": 1})),
    ]
    return mutations


def _tool_path(tool_id: str) -> str:
    from uet.state.tables import json_path
    return json_path("tools", [tool_id])


def _rename_dependencies(document: dict, old: str, new: str) -> None:
    # the renamed task's dependents now name the task it collides with: still valid
    # references, and no cycle, since that one comes first in the ranking or not at all
    for spec in document["tasks"]:
        if old in spec.get("depends_on", ()):
            spec["depends_on"] = [new if d == old else d for d in spec["depends_on"]]
    # and the gates that judged it judge the task it collides with (once): a gate that
    # judged a subset of another's still does
    for spec in document.get("gates", ()):
        if old in spec.get("tasks", ()):
            spec["tasks"] = list(dict.fromkeys(new if t == old else t for t in spec["tasks"]))


@PROPERTY_SETTINGS
@given(workstream_documents(), st.data())
def test_one_invalid_field_is_reported_at_exactly_its_path(document, data):
    path, mutate = data.draw(st.sampled_from(_mutations(document)), label="mutation")
    broken = json.loads(json.dumps(document))
    mutate(broken)
    if path.endswith(".task_id"):
        # the collision may create a cycle or a duplicate dependency; only the plain case
        assume(not problems_from_references(broken))
    if path == "tools":  # a key that is not text: YAML only
        text, fmt = yaml.safe_dump(broken, allow_unicode=True), "yaml"
    else:
        text, fmt = json.dumps(broken), "json"
    with pytest.raises(WorkstreamError) as caught:
        parse_workstream(text, format=fmt)
    assert {p.path for p in caught.value.problems} == {path}, caught.value.problems


def problems_from_references(document: dict) -> bool:
    """Whether merging two task ids made a dependency list repeat a name or a cycle."""
    seen_cycle = False
    for spec in document["tasks"]:
        deps = spec.get("depends_on", [])
        if len(deps) != len(set(deps)) or spec["task_id"] in deps:
            return True
    try:
        firsts = {}
        for spec in document["tasks"]:
            firsts.setdefault(spec["task_id"], tuple(spec.get("depends_on", ())))
        dependency_order(list(firsts.items()))
    except (ValueError, KeyError):
        seen_cycle = True
    return seen_cycle


def test_the_package_ships_the_schema_file():
    import uet.engine
    path = Path(uet.engine.__file__).parent / "schemas" / "workstream.schema.json"
    assert json.loads(path.read_text(encoding="utf-8")) == workstream_schema()

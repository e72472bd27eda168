"""Workstream files: the YAML or JSON file that says what a run does (tools, tasks in dependency
order, gates), checked against its JSON Schema and the rules a schema cannot express.

`load_workstream(path)` (or `parse_workstream(content, format=...)` for content kept in the
ledger) returns a frozen `Workstream` with every default applied, or raises one
`WorkstreamError` listing every problem of the file as `path: message` (`tasks[2].tool:
'edtor' is not a tool defined in tools (editor, linter)`). `render_template` substitutes
placeholders by the same rules the checks apply, so what validates is what runs.
"""

from __future__ import annotations

import difflib
import hashlib
import heapq
import json
import math
import os
import re
import stat
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Literal, Mapping

from uet.engine.policy import FileScope, Policy
from uet.errors import ValidationError
from uet.state.contracts import GateType
from uet.engine.workstream_rules import (  # noqa: F401 - names of the workstream module too
    BRANCH_PLACEHOLDERS, DEFAULT_BRANCH, GATE_PLACEHOLDERS, PROMPT_PLACEHOLDERS, RESERVED_ENV,
    TOOL_PLACEHOLDERS, Problem, cross_field_problems, doc_path, glob_problem, quoted,
    ref_name_problem, render_template, template_problems)

if TYPE_CHECKING:  # imported where used: loading jsonschema takes a while
    from jsonschema import Draft202012Validator

MAX_FILE_BYTES = 1 << 20   # 1 MiB: a workstream is a few kilobytes; more is a mistake or an attack
MAX_VALUES = 100_000       # values after YAML aliases are expanded (a "billion laughs" stops here)
MAX_DEPTH = 32             # the format needs 6 levels; deeper is not a workstream
FORMATS: dict[str, Format] = {".yaml": "yaml", ".yml": "yaml", ".json": "json"}

DEFAULT_ID = "default"
DEFAULT_BASE = "HEAD"


# -- the records --------------------------------------------------------------------------

@dataclass(frozen=True)
class Tool:
    """How to invoke a tool: `command` (program and arguments, placeholders inside each
    argument), its default timeout (None: none given) and what it adds to the environment."""
    tool_id: str
    command: tuple[str, ...]
    timeout_seconds: float | None = None
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class Task:
    """One task, defaults applied: `timeout_seconds` is the tool's when the task gives none
    (None: neither gives one), `files_scope` the workstream's when the task has none (None:
    neither has one — the scope restricts nothing; an empty list allows nothing of its
    kind); `index` is its position in the file (the step attempts' sequence)."""
    task_id: str
    tool: str
    index: int
    name: str | None = None
    prompt: str = ""
    depends_on: tuple[str, ...] = ()
    max_attempts: int = 1
    timeout_seconds: float | None = None
    files_scope: FileScope | None = None
    allow_empty: bool = False


@dataclass(frozen=True)
class Gate:
    """A check a patch must pass on the integration branch, in dependency order: every
    task's patch, or — `tasks` given — only those tasks' (in file order; () is every task,
    which a file says by leaving `tasks` out: an empty list is refused, never "none")."""
    name: str
    type: GateType
    command: tuple[str, ...]
    index: int
    timeout_seconds: float | None = None
    depends_on: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ()

    def judges(self, task_id: str) -> bool:
        """Whether this gate judges the patches of the task `task_id`."""
        return not self.tasks or task_id in self.tasks


@dataclass(frozen=True)
class Workstream:
    """A loaded, valid workstream with every default applied. `repo` is an absolute path;
    `branch` is the template (`branch_name(run_id)` fills it in); `task_order` and
    `gate_order` are dependency orders, ties kept in file order; `files_scope` is None when
    the file has none at the top level. `content` (the exact bytes
    read), `sha256`, `format` and `source` describe where it came from and take no part in
    equality: the same workstream in YAML and in JSON is equal."""
    workstream_id: str
    project_id: str
    phase_id: str
    repo: str
    tools: Mapping[str, Tool]
    tasks: tuple[Task, ...]
    gates: tuple[Gate, ...] = ()
    name: str | None = None
    base: str = DEFAULT_BASE
    branch: str = DEFAULT_BRANCH
    files_scope: FileScope | None = None
    policy: Policy = Policy()
    resume: Literal["auto", "manual"] = "auto"
    max_recoveries: int = 3
    task_order: tuple[str, ...] = ()
    gate_order: tuple[str, ...] = ()
    content: bytes = field(default=b"", compare=False, repr=False)
    sha256: str = field(default="", compare=False)
    format: str = field(default="yaml", compare=False)
    source: str | None = field(default=None, compare=False)

    def task(self, task_id: str) -> Task:
        """The task with this id (KeyError if none)."""
        for task in self.tasks:
            if task.task_id == task_id:
                return task
        raise KeyError(task_id)

    def gate(self, name: str) -> Gate:
        """The gate with this name (KeyError if none)."""
        for gate in self.gates:
            if gate.name == name:
                return gate
        raise KeyError(name)

    def ordered_tasks(self) -> tuple[Task, ...]:
        """The tasks in dependency order (ties in file order)."""
        return tuple(self.task(task_id) for task_id in self.task_order)

    def ordered_gates(self) -> tuple[Gate, ...]:
        """The gates in dependency order (ties in file order)."""
        return tuple(self.gate(name) for name in self.gate_order)

    def gates_for(self, task_id: str) -> tuple[Gate, ...]:
        """The gates that judge the patches of the task `task_id`, in dependency order
        (KeyError if no such task). Validation made each one's dependencies judge that
        task too, so this is a dependency order of its own; () — no gate judges the task —
        means its patch is committed once validated and applied, as in a workstream
        without gates."""
        self.task(task_id)  # an unknown id is a mistake, not "only the unrestricted gates"
        return tuple(gate for gate in self.ordered_gates() if gate.judges(task_id))

    def branch_name(self, run_id: str) -> str:
        """The run's branch: the template with {run_id} and {workstream_id} filled in."""
        return render_template(self.branch, {"run_id": run_id,
                                             "workstream_id": self.workstream_id})


# -- the error ----------------------------------------------------------------------------

class WorkstreamError(ValidationError):
    """A workstream file that cannot be used: `problems` lists every problem found (sorted
    by path), `source` names the file. Nothing was run or recorded."""

    def __init__(self, problems: Iterable[Problem], *, source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        what = source or "workstream"
        count = len(self.problems)
        listed = "; ".join(str(p) for p in self.problems)
        first = self.problems[0].path if self.problems else ""
        super().__init__(f"{what}: {count} problem{'s' if count != 1 else ''}: {listed}",
                         field=first or None)


# -- loading ------------------------------------------------------------------------------

Format = Literal["yaml", "json"]


def load_workstream(path: str | os.PathLike[str], *, project_id: str | None = None,
                    phase_id: str | None = None, repo: str | os.PathLike[str] | None = None,
                    base_dir: str | os.PathLike[str] | None = None) -> Workstream:
    """The workstream in the file at `path` (.yaml/.yml or .json), validated, defaults
    applied. `project_id` / `phase_id` (the CLI's --project / --phase) are used when the
    file names none; `repo` (--repo) replaces the file's; the file's `repo` is relative to
    `base_dir`, by default the file's folder. Raises WorkstreamError listing every problem
    (a missing, unreadable, non-UTF-8 or oversized file is one problem)."""
    source = os.fspath(path)
    fmt = FORMATS.get(os.path.splitext(source)[1].lower())
    if fmt is None:
        raise WorkstreamError([Problem("", "a workstream file's name ends in .yaml, .yml "
                                           "or .json (it says which format it is in)")],
                              source=source)
    content = _read_file(source)
    if base_dir is None:
        base_dir = os.path.dirname(os.path.abspath(source))
    return parse_workstream(content, format=fmt, project_id=project_id, phase_id=phase_id,
                            repo=repo, base_dir=base_dir, source=source)


def parse_workstream(content: bytes | str, *, format: Format, project_id: str | None = None,
                     phase_id: str | None = None, repo: str | os.PathLike[str] | None = None,
                     base_dir: str | os.PathLike[str] | None = None,
                     source: str | None = None) -> Workstream:
    """The workstream in `content` (a file's bytes, or its text), in `format` ("yaml" or
    "json"): as load_workstream, with `base_dir` (default: the current folder) the folder
    the file's `repo` is relative to and `source` the name used in messages."""
    if format not in ("yaml", "json"):
        raise ValueError(f"format must be 'yaml' or 'json', not {format!r}")
    if isinstance(content, str):
        try:
            content = content.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise WorkstreamError([Problem("", f"the text is not valid Unicode ({exc.reason} "
                                               f"at character {exc.start + 1})")],
                                  source=source) from None
    if len(content) > MAX_FILE_BYTES:
        raise WorkstreamError([_too_big(len(content))], source=source)
    try:
        # a UTF-8 byte order mark (some editors write one) is not part of the document
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise WorkstreamError([Problem("", f"the file is not UTF-8 text (byte "
                                           f"0x{content[exc.start]:02x} at offset {exc.start})")],
                              source=source) from None
    data, problems = _parse_yaml(text) if format == "yaml" else _parse_json(text)
    if not problems:
        data, problems, checkable = _plain(data)
        if checkable:
            # what the copy could not hold is already a problem at its path: the schema's
            # complaint about the stand-in there would only repeat it
            known = {p.path for p in problems}
            problems += [p for p in _schema_problems(data) + cross_field_problems(data)
                         if p.path not in known]
        problems += _caller_problems(project_id=project_id, phase_id=phase_id)
    if problems:
        raise WorkstreamError(_sorted(problems), source=source)
    return _build(data, content=content, fmt=format, source=source,
                  project_id=project_id, phase_id=phase_id, repo=repo,
                  base_dir=os.getcwd() if base_dir is None else os.fspath(base_dir))


def _too_big(size: int) -> Problem:
    return Problem("", f"the file is larger than {MAX_FILE_BYTES:,} bytes ({size:,} bytes or "
                       "more): not a workstream")


def _read_file(source: str) -> bytes:
    def refuse(message: str) -> WorkstreamError:
        return WorkstreamError([Problem("", message)], source=source)
    try:
        info = os.stat(source)
    except FileNotFoundError:
        raise refuse("no such file") from None
    except OSError as exc:
        raise refuse(f"cannot read it: {exc.strerror or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise refuse("is a folder, not a workstream file")
    if not stat.S_ISREG(info.st_mode):
        # a FIFO or a device would block or never end
        raise refuse("is not a regular file")
    try:
        with open(source, "rb") as handle:
            content = handle.read(MAX_FILE_BYTES + 1)  # never more, whatever the file says
    except OSError as exc:
        raise refuse(f"cannot read it: {exc.strerror or exc}") from None
    if len(content) > MAX_FILE_BYTES:
        raise WorkstreamError([_too_big(len(content))], source=source)
    return content


class _Mapping(dict[str, Any]):
    """A parsed mapping that remembers its duplicate keys (the parsers keep the last value
    silently; a repeated key is almost always a mistake, so it is a problem here)."""
    duplicates: list[tuple[str, str]]  # (key, where)


def _parse_json(text: str) -> tuple[Any, list[Problem]]:
    def pairs(items: list[tuple[str, Any]]) -> _Mapping:
        mapping = _Mapping()
        mapping.duplicates = []
        for key, value in items:
            if key in mapping:
                mapping.duplicates.append((key, ""))
            mapping[key] = value
        return mapping
    try:
        return json.loads(text, object_pairs_hook=pairs), []
    except json.JSONDecodeError as exc:
        return None, [Problem("", f"not valid JSON: {exc.msg} at line {exc.lineno}, "
                                  f"column {exc.colno}")]
    except RecursionError:
        return None, [Problem("", "not valid JSON: nested too deeply")]
    except ValueError as exc:  # an integer of thousands of digits
        return None, [Problem("", f"not valid JSON: {_short(exc)}")]


@lru_cache(maxsize=1)
def _yaml_loader() -> type:
    """A SafeLoader (libyaml's where available: five times faster, and it limits nesting
    itself) whose mappings remember their duplicate keys. Only the safe constructors exist:
    a `!!python/...` tag is an error, never an object."""
    import yaml
    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    merge_tag = "tag:yaml.org,2002:merge"

    class Loader(base):  # type: ignore[misc, valid-type]
        def construct_checked_map(self, node: yaml.MappingNode) -> Iterator[_Mapping]:
            mapping = _Mapping()
            mapping.duplicates = []
            yield mapping
            first_line: dict[tuple[str, str], int] = {}
            for key_node, _value in node.value:
                # before the merge keys (<<) are flattened in: a key that overrides a merged
                # one is what merging is for
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != merge_tag:
                    key = (key_node.tag, key_node.value)
                    line = key_node.start_mark.line + 1
                    if key in first_line:
                        mapping.duplicates.append(
                            (key_node.value, f"line {line}; first at line {first_line[key]}"))
                    else:
                        first_line[key] = line
            mapping.update(self.construct_mapping(node))

    Loader.add_constructor("tag:yaml.org,2002:map", Loader.construct_checked_map)
    return Loader


def _parse_yaml(text: str) -> tuple[Any, list[Problem]]:
    import yaml
    loader = _yaml_loader()(text)
    try:
        return loader.get_single_data(), []
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = exc.problem or exc.context or "syntax error"
        return None, [Problem("", f"not valid YAML: {what}{where}")]
    except yaml.YAMLError as exc:
        return None, [Problem("", f"not valid YAML: {_short(exc)}")]
    except RecursionError:
        return None, [Problem("", "not valid YAML: nested too deeply")]
    except ValueError as exc:  # an impossible date, an integer of thousands of digits
        return None, [Problem("", f"not valid YAML: {_short(exc)}")]
    finally:
        loader.dispose()


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


# -- plain data: what JSON can hold, with every string valid text ---------------------------

def _kind(value: Any) -> str:
    """What a value is, in the words of the file formats."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    import datetime
    if isinstance(value, (datetime.date, datetime.datetime)):
        return "a date"
    if isinstance(value, bytes):
        return "binary data"
    return f"a YAML {type(value).__name__}"


def _text_fault(text: str) -> str | None:
    """Why a string cannot be used (the ledger's text rule): a lone surrogate or a NUL."""
    if "\x00" in text:
        return "contains a NUL character (\\x00)"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "contains a lone surrogate (it is not valid Unicode)"
    return None


def _plain(data: Any) -> tuple[Any, list[Problem], bool]:
    """A copy of the parsed document made of dict, list, str, int, float, bool and None only,
    aliases expanded (within MAX_VALUES) and nesting within MAX_DEPTH, with the problems of
    what is not: keys that are not text, dates, binary, sets, non-finite numbers, NUL, lone
    surrogates, duplicate keys. Iterative, so no document can exhaust the stack. The flag
    says whether the copy can still be checked further (False: not a workstream at all)."""
    if not isinstance(data, dict):
        if data is None:
            message = ("the file is empty: a workstream is a mapping with workstream_id, "
                       "tools and tasks")
        else:
            message = ("the document must be a mapping (of workstream_id, tools, tasks ...), "
                       f"not {_kind(data)}")
        return None, [Problem("", message)], False
    problems: list[Problem] = []
    holder: dict[str, Any] = {}
    # (value, its path, the container its copy goes into, the key or index there)
    stack: list[tuple[Any, tuple[str | int, ...], Any, Any]] = [(data, (), holder, "root")]
    count = 0
    while stack:
        value, path, parent, slot = stack.pop()
        count += 1
        if count > MAX_VALUES:
            return None, [Problem("", f"the document holds more than {MAX_VALUES:,} values "
                                      "(YAML aliases expanding?): not a workstream")], False
        if len(path) > MAX_DEPTH:
            return None, [Problem(doc_path(path[:MAX_DEPTH]), f"nested deeper than {MAX_DEPTH} "
                                                           "levels: not a workstream")], False
        if isinstance(value, dict):
            copy: Any = {}
            for key, where in getattr(value, "duplicates", ()):
                where = f" ({where})" if where else ""
                problems.append(Problem(doc_path((*path, key)),
                                        f"duplicate key{where}: give it once"))
            # pushed last to first, so that they are copied (and keep their order) first
            # to last
            for key, child in reversed(list(value.items())):
                if not isinstance(key, str):
                    hint = (" (YAML reads yes/no/on/off/true/false as booleans: quote it)"
                            if isinstance(key, bool) else "")
                    problems.append(Problem(doc_path(path), f"the key {quoted(key)} is "
                                                         f"{_kind(key)}, not text{hint}"))
                elif fault := _text_fault(key):
                    problems.append(Problem(doc_path((*path, key)), f"this key {fault}"))
                else:
                    stack.append((child, (*path, key), copy, key))
        elif isinstance(value, list):
            copy = [None] * len(value)
            stack.extend((value[i], (*path, i), copy, i) for i in reversed(range(len(value))))
        else:
            copy = value
            if isinstance(value, str):
                if fault := _text_fault(value):
                    problems.append(Problem(doc_path(path), f"the text {fault}"))
            elif isinstance(value, float):
                if not math.isfinite(value):
                    problems.append(Problem(doc_path(path), f"{value} is not a finite number"))
            elif not (value is None or isinstance(value, (bool, int))):
                hint = " (YAML reads it as one: quote it to make it text)" \
                    if _kind(value) == "a date" else ""
                problems.append(Problem(doc_path(path), f"is {_kind(value)}{hint}, which a "
                                                     "workstream cannot hold"))
                copy = None
        parent[slot] = copy
    return holder["root"], problems, True


def _sorted(problems: Iterable[Problem]) -> list[Problem]:
    """Unique problems in path order, `tasks[10]` after `tasks[2]`."""
    def key(problem: Problem) -> tuple[list[tuple[int, int, str]], str]:
        steps = re.findall(r"\[(\d+)\]|\[(\"(?:[^\"\\]|\\.)*\")\]|([^.\[\]]+)", problem.path)
        return ([(0, int(n), "") if n else (1, 0, q or name) for n, q, name in steps],
                problem.message)
    return sorted(set(problems), key=key)


# -- the schema ---------------------------------------------------------------------------

@lru_cache(maxsize=1)
def workstream_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a workstream file, as shipped in the package."""
    text = resources.files("uet.engine").joinpath("schemas/workstream.schema.json").read_text(
        encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@lru_cache(maxsize=1)
def _validator() -> Draft202012Validator:
    from jsonschema import Draft202012Validator
    return Draft202012Validator(workstream_schema())


_TYPE_WORDS = {"string": "a string", "integer": "an integer", "number": "a number",
               "boolean": "true or false", "array": "a list", "object": "a mapping",
               "null": "null"}
_PATTERN_WORDS = {"^[A-Za-z_][A-Za-z0-9_]*$": "must be a name of letters, digits and '_', "
                                              "not starting with a digit"}


def _schema_problems(data: dict[str, Any]) -> list[Problem]:
    """Every problem the JSON Schema finds, in words a person can act on, each at the path
    of what is wrong (a missing or unknown key at the key's own path)."""
    problems = []
    for error in _validator().iter_errors(data):
        path = list(error.absolute_path)
        schema_path = list(error.relative_schema_path)
        value, rule, expected = error.instance, error.validator, error.validator_value
        if "propertyNames" in schema_path:  # the key itself is wrong: report it there
            what = "a tool id" if path == ["tools"] else "an environment variable name"
            path.append(value)
            message = _rule_message(rule, expected, value, error.schema)
            problems.append(Problem(doc_path(path), f"as {what}, this key {message}"))
        elif rule == "required":
            for key in expected:
                if isinstance(value, dict) and key not in value:
                    problems.append(Problem(doc_path([*path, key]), "required, but missing"))
        elif rule == "additionalProperties" and isinstance(value, dict):
            allowed = sorted(error.schema.get("properties", {}))
            for key in value:
                if key not in allowed:
                    problems.append(Problem(doc_path([*path, key]), _unknown_key(key, allowed)))
        else:
            problems.append(Problem(doc_path(path),
                                    _rule_message(rule, expected, value, error.schema)))
    return problems


def _unknown_key(key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown key{hint} (allowed here: {', '.join(allowed)})"


def _rule_message(rule: str, expected: Any, value: Any, schema: Mapping[str, Any] | bool) -> str:
    if rule == "type":
        return f"must be {_TYPE_WORDS.get(expected, expected)}, not {_kind(value)}"
    if rule in ("minLength", "minItems", "minProperties") and expected == 1:
        return "must not be empty"
    if rule == "minItems":
        return f"must have at least {expected} items"
    if rule == "exclusiveMinimum":
        return f"must be greater than {expected} (got {quoted(value)})"
    if rule == "minimum":
        return f"must be at least {expected} (got {quoted(value)})"
    if rule == "maximum":
        return f"must be at most {expected:,} (got {quoted(value)})"
    if rule == "enum":
        return f"must be one of {', '.join(map(str, expected))} (got {quoted(value)})"
    if rule == "uniqueItems" and isinstance(value, list):
        repeated = sorted({quoted(v) for v in value if value.count(v) > 1})
        return f"lists {', '.join(repeated)} more than once"
    if rule == "not" and "pattern" in expected:
        found = re.search(expected["pattern"], value) if isinstance(value, str) else None
        shown = f" ({found.group()!r} at character {found.start() + 1})" if found else ""
        return f"must not contain control characters{shown}"
    if rule == "pattern":
        return _PATTERN_WORDS.get(expected, f"must match {expected}") + f" (got {quoted(value)})"
    return f"{rule}: {expected!r} (got {quoted(value)})"


def _caller_problems(**given: str | None) -> list[Problem]:
    """The caller's --project / --phase follow the file's rules for ids."""
    problems = []
    for key, value in given.items():
        if value is None:
            continue
        fault = (_text_fault(value) if isinstance(value, str) else "is not a string")
        if fault is None and (not value or re.search(r"[\x00-\x1f\x7f-\x9f]", value)):
            fault = "must be a non-empty string without control characters"
        if fault:
            problems.append(Problem(key, f"the value given by the caller {fault}"))
    return problems


# -- building the records -----------------------------------------------------------------

def _scope(value: dict[str, Any] | None) -> FileScope | None:
    if value is None:
        return None  # no files_scope at all: not the same as one with empty lists
    return FileScope(modify=tuple(value.get("modify", ())),
                      create=tuple(value.get("create", ())),
                      read_only=tuple(value.get("read_only", ())))


def _seconds(value: Any) -> float | None:
    return None if value is None else float(value)


def dependency_order(items: list[tuple[str, tuple[str, ...]]]) -> tuple[str, ...]:
    """The ids of (id, depends_on) items, each after what it depends on; among those ready
    at the same time, the one that comes first in the list goes first."""
    position = {ident: i for i, (ident, _deps) in enumerate(items)}
    waiting = {ident: len(deps) for ident, deps in items}
    dependents: dict[str, list[str]] = {ident: [] for ident, _deps in items}
    for ident, deps in items:
        for dep in deps:
            dependents[dep].append(ident)
    ready = [position[ident] for ident, deps in items if not deps]
    heapq.heapify(ready)
    order = []
    while ready:
        ident = items[heapq.heappop(ready)][0]
        order.append(ident)
        for dependent in dependents[ident]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                heapq.heappush(ready, position[dependent])
    if len(order) != len(items):
        raise ValueError("the dependencies have a cycle")  # validation refuses those first
    return tuple(order)


def _build(data: dict[str, Any], *, content: bytes, fmt: str, source: str | None,
           project_id: str | None, phase_id: str | None, repo: Any,
           base_dir: str) -> Workstream:
    tools = {}
    for tool_id, spec in data["tools"].items():
        tools[tool_id] = Tool(tool_id=tool_id, command=tuple(spec["command"]),
                              timeout_seconds=_seconds(spec.get("timeout_seconds")),
                              env=MappingProxyType(dict(spec.get("env", {}))))
    scope = _scope(data.get("files_scope"))
    tasks = []
    for index, spec in enumerate(data["tasks"]):
        timeout = spec.get("timeout_seconds", tools[spec["tool"]].timeout_seconds)
        tasks.append(Task(
            task_id=spec["task_id"], tool=spec["tool"], index=index, name=spec.get("name"),
            prompt=spec.get("prompt", ""), depends_on=tuple(spec.get("depends_on", ())),
            max_attempts=int(spec.get("max_attempts", 1)), timeout_seconds=_seconds(timeout),
            files_scope=_scope(spec["files_scope"]) if "files_scope" in spec else scope,
            allow_empty=spec.get("allow_empty", False)))
    gates = tuple(
        Gate(name=spec["name"], type=GateType(spec["type"]), command=tuple(spec["command"]),
             index=index, timeout_seconds=_seconds(spec.get("timeout_seconds")),
             depends_on=tuple(spec.get("depends_on", ())),
             tasks=tuple(spec.get("tasks", ())))
        for index, spec in enumerate(data.get("gates", ())))
    policy_spec = data.get("policy", {})
    policy = Policy(
        max_lines_changed=_integer(policy_spec.get("max_lines_changed")),
        max_files_changed=_integer(policy_spec.get("max_files_changed")),
        forbid_binary=policy_spec.get("forbid_binary", False),
        forbid_paths=tuple(policy_spec.get("forbid_paths", ())))
    target = os.fspath(repo) if repo is not None else data.get("repo", ".")
    return Workstream(
        workstream_id=data["workstream_id"],
        project_id=data.get("project_id", project_id or DEFAULT_ID),
        phase_id=data.get("phase_id", phase_id or DEFAULT_ID),
        repo=os.path.normpath(os.path.join(os.path.abspath(base_dir), target)),
        tools=MappingProxyType(tools), tasks=tuple(tasks), gates=gates,
        name=data.get("name"), base=data.get("base", DEFAULT_BASE),
        branch=data.get("branch", DEFAULT_BRANCH), files_scope=scope, policy=policy,
        resume=data.get("resume", "auto"), max_recoveries=int(data.get("max_recoveries", 3)),
        task_order=dependency_order([(t.task_id, t.depends_on) for t in tasks]),
        gate_order=dependency_order([(g.name, g.depends_on) for g in gates]),
        content=content, sha256=hashlib.sha256(content).hexdigest(), format=fmt,
        source=source)


def _integer(value: Any) -> int | None:
    return None if value is None else int(value)


__all__ = [
    "Workstream", "Tool", "Task", "Gate", "FileScope", "Policy", "Problem",
    "WorkstreamError", "load_workstream", "parse_workstream", "workstream_schema",
    "render_template", "template_problems", "glob_problem", "ref_name_problem",
    "dependency_order", "MAX_FILE_BYTES", "TOOL_PLACEHOLDERS",
    "PROMPT_PLACEHOLDERS", "GATE_PLACEHOLDERS", "BRANCH_PLACEHOLDERS", "RESERVED_ENV",
]

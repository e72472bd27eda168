"""The master plan as a document: reading it (strict JSON), checking it, writing it.

`load_plan(path)` returns the plan (a dict, key order kept) or raises PlanError; a plan that
parses is then judged by `plan_problems(plan)`: its JSON Schema (shipped in the package,
`plan_schema()`), then the rules a schema cannot express — every phase, workstream and task
keyed by its own id and the id of its form (`PH-…`, `WS-…`, `TSK-…`), each id once in the
plan, every `*_ulid` a well-formed ULID used once, every workstream's phase present, every
dependency present and free of cycles, and estimated durations that add up where the plan
states a total. Each problem names its place as a JSON Pointer (`/phases/PH-000/…`).
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Any, Iterable, Iterator, TypeGuard

from uet.engine.workstream_rules import Problem
from uet.errors import ValidationError

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator

MAX_PLAN_BYTES = 64 << 20   # the framework's full plan is ~130 KB; 64 MiB is not a plan
# Crockford base 32 without I, L, O, U; the first character holds the top 3 of 48 time bits
ULID_RE = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$")
ID_RE = {"phase": re.compile(r"^PH-[A-Z0-9]+(?:-[A-Z0-9]+)*$"),
         "workstream": re.compile(r"^WS-[A-Z0-9]+(?:-[A-Z0-9]+)*$"),
         "task": re.compile(r"^TSK-[A-Z0-9]+(?:-[A-Z0-9]+)*$")}
ID_FORM = {"phase": "PH-000", "workstream": "WS-000-001", "task": "TSK-000-001-001"}
DEPENDENCY_KEYS = ("depends_on", "dependencies")   # the name and the framework's
HOURS = "estimated_duration_hours"
HOURS_TOLERANCE = 1e-6


class PlanError(ValidationError):
    """A plan or patch that cannot be used: `problems` lists every problem found (each with
    its place), `source` names the file. No file was written and nothing recorded."""

    def __init__(self, problems: Iterable[Problem], *, source: str | None = None,
                 what: str = "plan") -> None:
        self.problems = list(problems)
        self.source = source
        count = len(self.problems)
        listed = "; ".join(str(p) for p in self.problems)
        super().__init__(f"{source or what}: {count} problem{'s' if count != 1 else ''}: "
                         f"{listed}", field=self.problems[0].path or None if count else None)


# -- reading and writing ------------------------------------------------------------------

def read_json(path: str | os.PathLike[str], *, what: str) -> Any:
    """The JSON document in the file at `path`, strictly: UTF-8, no duplicate keys (JSON
    allows them and keeps the last, which hides an edit), no NaN or Infinity (not JSON),
    bounded in size and depth. Raises PlanError with one problem otherwise."""
    source = os.fspath(path)

    def refuse(message: str) -> PlanError:
        return PlanError([Problem("", message)], source=source, what=what)

    try:
        with open(source, "rb") as f:
            content = f.read(MAX_PLAN_BYTES + 1)
    except FileNotFoundError:
        raise refuse("no such file") from None
    except IsADirectoryError:
        raise refuse("a folder, not a file") from None
    except OSError as exc:
        raise refuse(f"cannot be read ({exc.strerror or exc})") from None
    if len(content) > MAX_PLAN_BYTES:
        raise refuse(f"larger than {MAX_PLAN_BYTES:,} bytes: not a {what}")
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise refuse(f"not UTF-8 text (byte 0x{content[exc.start]:02x} at offset "
                     f"{exc.start})") from None
    return parse_json(text, source=source, what=what)


def parse_json(text: str, *, source: str | None = None, what: str = "plan") -> Any:
    """`text` parsed as strict JSON (see read_json)."""
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in items:
            if key in result:
                raise _Duplicate(key)
            result[key] = value
        return result

    def constant(name: str) -> Any:
        raise _NotJson(name)

    def refuse(message: str) -> PlanError:
        return PlanError([Problem("", message)], source=source, what=what)

    try:
        return json.loads(text, object_pairs_hook=pairs, parse_constant=constant)
    except _Duplicate as exc:
        raise refuse(f"the key {json.dumps(exc.args[0])} appears twice in one object "
                     "(JSON keeps only the last: say it once)") from None
    except _NotJson as exc:
        raise refuse(f"{exc.args[0]} is not a JSON value") from None
    except json.JSONDecodeError as exc:
        raise refuse(f"not valid JSON: {exc.msg} (line {exc.lineno}, column "
                     f"{exc.colno})") from None
    except RecursionError:
        raise refuse("nested too deeply to be a plan") from None


class _Duplicate(ValueError):
    pass


class _NotJson(ValueError):
    pass


def load_plan(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The plan in the JSON file at `path` (an object; key order kept). Only reading: the
    plan's problems are `plan_problems`'."""
    plan = read_json(path, what="plan")
    if not isinstance(plan, dict):
        raise PlanError([Problem("", f"a plan is a JSON object, not {kind_of(plan)}")],
                        source=os.fspath(path))
    return plan


def dump_plan(plan: Any) -> str:
    """The plan as written to a file: two-space indent, key order kept, UTF-8 as is."""
    return json.dumps(plan, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def write_atomically(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` to `path` so that a reader (or a crash) sees the old file or the new one,
    never a part: a temporary file beside it, flushed to disk, renamed over it. An existing
    file's permissions are kept."""
    target = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(target)
    fd, temp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp",
                                dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.chmod(temp, os.stat(target).st_mode & 0o7777)
        except FileNotFoundError:
            os.chmod(temp, 0o666 & ~_umask())
        os.replace(temp, target)
    except BaseException:
        if os.path.exists(temp):
            os.remove(temp)
        raise
    try:  # the rename itself survives a crash once the folder is flushed
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass  # some file systems cannot flush a folder; the rename is still atomic
    finally:
        os.close(dir_fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- pointers -----------------------------------------------------------------------------

def pointer(*steps: str | int) -> str:
    """The JSON Pointer (RFC 6901) of a place: `pointer("phases", "PH-0")` = /phases/PH-0."""
    return "".join("/" + str(s).replace("~", "~0").replace("/", "~1") for s in steps)


def kind_of(value: Any) -> str:
    """A JSON value's kind in words: 'an object', 'a list', 'a string' ..."""
    return {dict: "an object", list: "a list", str: "a string", bool: "true or false",
            type(None): "null", int: "a number", float: "a number"}.get(type(value),
                                                                        type(value).__name__)


# -- the plan's parts ---------------------------------------------------------------------

@dataclass(frozen=True)
class Node:
    """A phase, workstream or task of the plan: its kind, the key it is stored under, where
    (a JSON Pointer), its object, and for workstreams/tasks the phase/workstream holding it."""
    kind: str
    key: str
    path: str
    value: dict[str, Any]
    parent: str | None = None   # the holding phase's (or workstream's) key; None: top level


def nodes(plan: dict[str, Any]) -> Iterator[Node]:
    """Every phase, workstream (in its phase, or in the top-level `workstreams` map) and task
    of the plan, in document order; entries that are not objects are skipped (the schema
    reports them)."""
    phases = plan.get("phases")
    if isinstance(phases, dict):
        for ph_key, phase in phases.items():
            if not isinstance(phase, dict):
                continue
            ph_path = pointer("phases", ph_key)
            yield Node("phase", ph_key, ph_path, phase)
            yield from _workstreams(phase.get("workstreams"), ph_path, ph_key)
    yield from _workstreams(plan.get("workstreams"), "", None)


def _workstreams(value: Any, base: str, phase_key: str | None) -> Iterator[Node]:
    if not isinstance(value, dict):
        return
    for ws_key, ws in value.items():
        if not isinstance(ws, dict):
            continue
        ws_path = f"{base}{pointer('workstreams', ws_key)}"
        yield Node("workstream", ws_key, ws_path, ws, phase_key)
        tasks = ws.get("tasks")
        if isinstance(tasks, dict):
            for task_key, task in tasks.items():
                if isinstance(task, dict):
                    yield Node("task", task_key, f"{ws_path}{pointer('tasks', task_key)}",
                               task, ws_key)


def dependencies(value: dict[str, Any]) -> list[str]:
    """The ids a phase, workstream or task depends on (`depends_on` and `dependencies`, the
    framework's name, together; strings only — the schema reports the rest)."""
    found: list[str] = []
    for key in DEPENDENCY_KEYS:
        ids = value.get(key)
        if isinstance(ids, list):
            found += [i for i in ids if isinstance(i, str) and i not in found]
    return found


# -- the checks ---------------------------------------------------------------------------

@lru_cache(maxsize=1)
def plan_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a plan, as shipped in the package."""
    text = resources.files("uet.plan").joinpath("schemas/plan.schema.json").read_text(
        encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@lru_cache(maxsize=1)
def _validator() -> Draft202012Validator:
    from jsonschema import Draft202012Validator
    return Draft202012Validator(plan_schema())


def plan_problems(plan: Any) -> list[Problem]:
    """Every problem of the plan, sorted by place (empty: a valid plan)."""
    if not isinstance(plan, dict):
        return [Problem("", f"a plan is a JSON object, not {kind_of(plan)}")]
    problems = _schema_problems(plan)
    all_nodes = list(nodes(plan))
    problems += _id_problems(all_nodes)
    problems += _ulid_problems(plan)
    problems += _reference_problems(all_nodes)
    problems += _duration_problems(plan, all_nodes)
    return sorted(dict.fromkeys(problems), key=lambda p: (p.path, p.message))


def _schema_problems(plan: dict[str, Any]) -> list[Problem]:
    problems = []
    for error in _validator().iter_errors(plan):
        path = list(error.absolute_path)
        if error.validator == "required":
            for key in error.validator_value:
                if isinstance(error.instance, dict) and key not in error.instance:
                    problems.append(Problem(pointer(*path, key), "required, but missing"))
        elif error.validator == "type":
            expected = error.validator_value
            names = [expected] if isinstance(expected, str) else list(expected)
            words = " or ".join(_TYPE_WORDS.get(n, n) for n in names)
            problems.append(Problem(pointer(*path),
                                    f"must be {words}, not {kind_of(error.instance)}"))
        elif error.validator in ("minimum", "exclusiveMinimum", "maximum"):
            bound = {"minimum": "at least", "exclusiveMinimum": "more than",
                     "maximum": "at most"}[error.validator]
            problems.append(Problem(pointer(*path), f"must be {bound} "
                                                    f"{error.validator_value}, not "
                                                    f"{error.instance!r}"))
        else:
            problems.append(Problem(pointer(*path), error.message))
    return problems


_TYPE_WORDS = {"string": "a string", "integer": "a whole number", "number": "a number",
               "boolean": "true or false", "array": "a list", "object": "an object",
               "null": "null"}


def _id_problems(all_nodes: list[Node]) -> list[Problem]:
    problems = []
    seen: dict[tuple[str, str], str] = {}
    for node in all_nodes:
        id_key = f"{node.kind}_id"
        own = node.value.get(id_key)
        if isinstance(own, str) and own != node.key:
            problems.append(Problem(f"{node.path}/{id_key}", f"is {json.dumps(own)}, but the "
                                    f"{node.kind} is stored under the key "
                                    f"{json.dumps(node.key)}: they must be the same"))
        if not ID_RE[node.kind].match(node.key):
            problems.append(Problem(node.path, f"{json.dumps(node.key)} is not a {node.kind} "
                                    f"id (the form is {ID_FORM[node.kind]}: capital letters "
                                    "and digits in dash-separated parts)"))
        first = seen.setdefault((node.kind, node.key), node.path)
        if first != node.path:
            problems.append(Problem(node.path, f"the {node.kind} id {node.key} is also used "
                                    f"at {first}: an id names one {node.kind}"))
        if node.kind == "workstream":
            phase_id = node.value.get("phase_id")
            if node.parent is not None and isinstance(phase_id, str) \
                    and phase_id != node.parent:
                problems.append(Problem(f"{node.path}/phase_id", f"is {json.dumps(phase_id)}, "
                                        f"but the workstream is inside phase {node.parent}"))
        if node.kind == "task":
            ws_id = node.value.get("workstream_id")
            if isinstance(ws_id, str) and ws_id != node.parent:
                problems.append(Problem(f"{node.path}/workstream_id", f"is "
                                        f"{json.dumps(ws_id)}, but the task is inside "
                                        f"workstream {node.parent}"))
    return problems


def ulids(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(place, value) of every `*_ulid` key in the document, in document order."""
    if isinstance(value, dict):
        for key, item in value.items():
            here = path + pointer(key)
            if isinstance(key, str) and key.endswith("_ulid"):
                yield here, item
            yield from ulids(item, here)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from ulids(item, path + pointer(index))


def _ulid_problems(plan: dict[str, Any]) -> list[Problem]:
    problems = []
    first: dict[str, str] = {}
    for where, value in ulids(plan):
        if not isinstance(value, str):
            problems.append(Problem(where, f"a ULID is a string of 26 characters, not "
                                    f"{kind_of(value)}"))
            continue
        if not ULID_RE.match(value):
            problems.append(Problem(where, f"{json.dumps(value)} is not a ULID "
                                    f"({_ulid_fault(value)})"))
        seen = first.setdefault(value.upper(), where)
        if seen != where:
            problems.append(Problem(where, f"the ULID {value} is also used at {seen}: a "
                                    "ULID names one thing"))
    return problems


def _ulid_fault(value: str) -> str:
    if len(value) != 26:
        return f"{len(value)} characters, not 26"
    bad = sorted({c for c in value.upper() if c not in "0123456789ABCDEFGHJKMNPQRSTVWXYZ"})
    if bad:
        return (f"{', '.join(repr(c) for c in bad)} cannot be in a ULID: Crockford base 32 has "
                "no I, L, O, U")
    if value != value.upper():
        return "written in capitals"
    return "its first character is at most 7: its time would not fit in 48 bits"


def _reference_problems(all_nodes: list[Node]) -> list[Problem]:
    problems = []
    by_kind: dict[str, dict[str, Node]] = {"phase": {}, "workstream": {}, "task": {}}
    for node in all_nodes:
        by_kind[node.kind].setdefault(node.key, node)
    phases = by_kind["phase"]
    for node in all_nodes:
        if node.kind == "workstream" and node.parent is None:
            phase_id = node.value.get("phase_id")
            if not isinstance(phase_id, str):
                problems.append(Problem(f"{node.path}/phase_id", "required for a workstream "
                                        "outside the phases: it names its phase"))
            elif phase_id not in phases:
                problems.append(Problem(f"{node.path}/phase_id", f"names phase {phase_id}, "
                                        f"which is not in the plan ({_known(phases)})"))
        known = by_kind[node.kind]
        for key in DEPENDENCY_KEYS:
            ids = node.value.get(key)
            if not isinstance(ids, list):
                continue
            for index, dep in enumerate(ids):
                if isinstance(dep, str) and dep not in known:
                    problems.append(Problem(f"{node.path}/{key}/{index}", f"{node.kind} {dep} "
                                            f"is not in the plan ({_known(known)})"))
                elif dep == node.key:
                    problems.append(Problem(f"{node.path}/{key}/{index}", f"a {node.kind} "
                                            "cannot depend on itself"))
    for kind, known in by_kind.items():
        cycle = find_cycle({key: [d for d in dependencies(node.value) if d in known
                                  and d != key] for key, node in known.items()})
        if cycle:
            node = known[cycle[0]]
            problems.append(Problem(node.path, f"the {kind}s' dependencies go round in a "
                                    f"circle: {' -> '.join(cycle + [cycle[0]])}"))
    return problems


def _known(known: dict[str, Node], limit: int = 8) -> str:
    if not known:
        return "there are none"
    names = list(known)
    more = f", … {len(names) - limit} more" if len(names) > limit else ""
    return "known: " + ", ".join(names[:limit]) + more


def find_cycle(graph: dict[str, list[str]]) -> list[str]:
    """One cycle of the graph (node -> the nodes it depends on) as a list of its nodes, or
    [] when there is none. Iterative: a plan's chains may be long."""
    state: dict[str, int] = {}   # 1 on the current path, 2 done
    for start in graph:
        if state.get(start):
            continue
        path: list[str] = []
        stack: list[tuple[str, Iterator[str]]] = [(start, iter(graph.get(start, ())))]
        state[start] = 1
        path.append(start)
        while stack:
            node, deps = stack[-1]
            for dep in deps:
                if state.get(dep) == 1:
                    return path[path.index(dep):]
                if not state.get(dep):
                    state[dep] = 1
                    path.append(dep)
                    stack.append((dep, iter(graph.get(dep, ()))))
                    break
            else:
                state[node] = 2
                path.pop()
                stack.pop()
    return []


def _duration_problems(plan: dict[str, Any], all_nodes: list[Node]) -> list[Problem]:
    """A total stated beside parts that all state theirs must be their sum: a phase's hours
    and its workstreams', a workstream's and its tasks', the plan's (/meta) and its phases'."""
    problems = []
    children: dict[str, list[Node]] = {}
    for node in all_nodes:
        if node.kind == "workstream" and node.parent is not None:
            children.setdefault(pointer("phases", node.parent), []).append(node)
        elif node.kind == "task":
            holder = node.path.rsplit("/tasks/", 1)[0]
            children.setdefault(holder, []).append(node)
    meta = plan.get("meta")
    if isinstance(meta, dict):
        phase_nodes = [n for n in all_nodes if n.kind == "phase"]
        problems += _sum_problem("/meta", meta, phase_nodes, "phases")
    for node in all_nodes:
        if node.kind in ("phase", "workstream"):
            parts = children.get(node.path, [])
            problems += _sum_problem(node.path, node.value, parts,
                                     "workstreams" if node.kind == "phase" else "tasks")
    return problems


def _sum_problem(path: str, holder: dict[str, Any], parts: list[Node],
                 what: str) -> list[Problem]:
    total = holder.get(HOURS)
    if not parts or not _hours(total):
        return []
    hours = [h for h in (part.value.get(HOURS) for part in parts) if _hours(h)]
    if len(hours) != len(parts):
        return []
    added = math.fsum(hours)
    if abs(added - total) <= HOURS_TOLERANCE * max(1.0, abs(total)):
        return []
    listed = ", ".join(f"{part.key} {h:g}" for part, h in zip(parts, hours))
    return [Problem(f"{path}/{HOURS}", f"is {total:g}, but its {what} add up to {added:g} "
                                       f"({listed})")]


def _hours(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)

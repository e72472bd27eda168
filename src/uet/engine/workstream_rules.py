"""The rules of a workstream file that its JSON Schema cannot express (references between
tasks, tools and gates, dependency cycles, which tasks' patches a gate judges, globs, branch
names) and the templates its commands and prompts use; `uet.engine.workstream` applies them
while loading a file."""

from __future__ import annotations

import difflib
import re
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple

from uet.state.tables import json_path

# Which placeholders each kind of template may use. The orchestrator supplies the values
# through render_template; a name outside its set is a problem of the file, never a runtime
# surprise.
TOOL_PLACEHOLDERS = ("prompt", "prompt_file", "worktree", "task_id", "run_id", "attempt",
                     "feedback_file")
PROMPT_PLACEHOLDERS = ("worktree", "task_id", "run_id", "attempt", "feedback_file")
GATE_PLACEHOLDERS = ("worktree", "task_id", "run_id", "attempt")
BRANCH_PLACEHOLDERS = ("run_id", "workstream_id")
# set by uet in every tool's environment: a file may not set them (they would be overwritten)
RESERVED_ENV = ("UET_RUN_ID", "UET_STEP_ATTEMPT_ID", "UET_USAGE_FILE")
DEFAULT_BRANCH = "uet/{run_id}"
SAMPLE_RUN_ID = "01HZZZZZZZZZZZZZZZZZZZZZZZ"  # a ULID, to check what a branch template makes


class Problem(NamedTuple):
    """One problem of a file: where (`tasks[2].tool`; "" for the file as a whole) and what."""
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


# where a problem is, as steps into the document (("tasks", 2, "tool")), and what
Steps = tuple[str | int, ...]
AddProblem = Callable[[Steps, str], None]


def doc_path(steps: Iterable[str | int]) -> str:
    """A place in the document as people write it: `tasks[2].tool`, `tools["my tool"]`."""
    text = json_path("", list(steps))
    return text[1:] if text.startswith(".") else text


def quoted(value: Any, limit: int = 60) -> str:
    """A value quoted for a message (repr, so control characters show as escapes), cut."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...'"


# -- templates ----------------------------------------------------------------------------

_TEMPLATE_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_PLACEHOLDER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _template_parts(template: str) -> Iterator[tuple[str, str | None, int]]:
    """(literal text, placeholder name or None, offset) pieces of a template; a name of ""
    marks a malformed brace (its literal text is the offending piece)."""
    position = 0
    for match in _TEMPLATE_TOKEN.finditer(template):
        if match.start() > position:
            yield template[position:match.start()], None, position
        token = match.group()
        if token in ("{{", "}}"):
            yield token[0], None, match.start()
        elif match.group(1) is not None and _PLACEHOLDER_NAME.fullmatch(match.group(1)):
            yield "", match.group(1), match.start()
        else:
            yield token, "", match.start()
        position = match.end()
    if position < len(template):
        yield template[position:], None, position


def template_problems(template: str, allowed: Iterable[str]) -> list[str]:
    """What is wrong with a template's placeholders (empty: nothing)."""
    allowed = tuple(allowed)
    problems = []
    for text, name, offset in _template_parts(template):
        if name == "":
            if text in ("{", "}"):
                problems.append(f"unmatched {text!r} at character {offset + 1} (write "
                                f"'{text * 2}' for a literal brace)")
            else:
                problems.append(f"{quoted(text)} is not a placeholder (placeholders are "
                                "{name}; write '{{' and '}}' for literal braces)")
        elif name is not None and name not in allowed:
            known = ", ".join(f"{{{n}}}" for n in allowed) or "none"
            close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
            hint = f"; did you mean {{{close[0]}}}?" if close else ""
            problems.append(f"unknown placeholder {{{name}}}{hint} (known here: {known})")
    return problems


def render_template(template: str, values: Mapping[str, str]) -> str:
    """`template` with each {name} replaced by values[name] and '{{'/'}}' by one brace;
    ValueError on a malformed template or a name without a value. Never str.format: a
    template cannot reach attributes or indexes of the values."""
    pieces = []
    for text, name, _offset in _template_parts(template):
        if name == "":
            raise ValueError(f"malformed template {template!r}: {text!r}")
        if name is None:
            pieces.append(text)
        elif name in values:
            pieces.append(str(values[name]))
        else:
            raise ValueError(f"no value for placeholder {{{name}}} of {template!r}")
    return "".join(pieces)


# -- the rules a schema cannot express -----------------------------------------------------

def cross_field_problems(data: dict[str, Any]) -> list[Problem]:
    """References, uniqueness, cycles, the tasks gates judge, placeholders, globs, the
    branch name. Written to work on a document the schema refused too, so that every
    problem is listed at once."""
    problems: list[Problem] = []

    def add(path: Steps, message: str) -> None:
        problems.append(Problem(doc_path(path), message))

    tools_value = data.get("tools")
    tools: dict[str, Any] = tools_value if isinstance(tools_value, dict) else {}
    tasks = _items(data.get("tasks"))
    gates = _items(data.get("gates"))

    for tool_id, tool in tools.items():
        if isinstance(tool, dict):
            _check_command(tool.get("command"), ("tools", tool_id, "command"),
                           TOOL_PLACEHOLDERS, add)
            env = tool.get("env")
            if isinstance(env, dict):
                for name in env:
                    if name in RESERVED_ENV:
                        add(("tools", tool_id, "env", name),
                            "is set by uet for every tool run; a tool cannot set it")

    task_ids = _unique_ids(tasks, "task_id", "tasks", add)
    gate_names = _unique_ids(gates, "name", "gates", add)
    defined_tools = ", ".join(tools)
    for index, task in tasks:
        tool = task.get("tool")
        # without any tool defined, `tools` itself is the problem (reported there)
        if isinstance(tool, str) and tool and tools and tool not in tools:
            close = difflib.get_close_matches(tool, list(tools), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            add(("tasks", index, "tool"),
                f"{quoted(tool)} is not a tool defined in tools ({defined_tools}){hint}")
        prompt = task.get("prompt")
        if isinstance(prompt, str):
            for message in template_problems(prompt, PROMPT_PLACEHOLDERS):
                add(("tasks", index, "prompt"), message)
        _check_scope(task.get("files_scope"), ("tasks", index, "files_scope"), add)
    for index, gate in gates:
        _check_command(gate.get("command"), ("gates", index, "command"), GATE_PLACEHOLDERS,
                       add)

    _check_dependencies(tasks, "task_id", "tasks", task_ids, "task", add)
    _check_dependencies(gates, "name", "gates", gate_names, "gate", add)
    _check_gate_tasks(gates, task_ids, gate_names, add)
    _check_scope(data.get("files_scope"), ("files_scope",), add)
    policy = data.get("policy")
    if isinstance(policy, dict):
        _check_globs(policy.get("forbid_paths"), ("policy", "forbid_paths"), add)
    _check_branch(data, add)
    base = data.get("base")
    if isinstance(base, str) and base.startswith("-"):
        add(("base",), "must not start with '-' (git would read it as an option)")
    return problems


def _items(value: Any) -> list[tuple[int, dict[str, Any]]]:
    """(index, item) of the mappings of a list (anything else: the schema reports it)."""
    if not isinstance(value, list):
        return []
    return [(i, item) for i, item in enumerate(value) if isinstance(item, dict)]


def _unique_ids(items: list[tuple[int, dict[str, Any]]], key: str, where: str,
                add: AddProblem) -> dict[str, int]:
    """id -> index of its first item; a repeated id is a problem at the repeat."""
    first: dict[str, int] = {}
    for index, item in items:
        ident = item.get(key)
        if not isinstance(ident, str) or not ident:
            continue
        if ident in first:
            add((where, index, key),
                f"duplicate {key} {quoted(ident)} (also {where}[{first[ident]}])")
        else:
            first[ident] = index
    return first


def _check_command(command: Any, path: Steps, allowed: tuple[str, ...],
                   add: AddProblem) -> None:
    if isinstance(command, list):
        for position, argument in enumerate(command):
            if isinstance(argument, str):
                for message in template_problems(argument, allowed):
                    add((*path, position), message)


def _check_dependencies(items: list[tuple[int, dict[str, Any]]], key: str, where: str,
                        known: dict[str, int], noun: str, add: AddProblem) -> None:
    """depends_on names items of the same list, and the dependencies have no cycle."""
    graph: dict[str, list[str]] = {}
    for index, item in items:
        ident = item.get(key)
        depends_on = item.get("depends_on")
        depends_on = depends_on if isinstance(depends_on, list) else []
        names = []
        for position, name in enumerate(depends_on):
            if not isinstance(name, str) or not name:
                continue
            if name not in known:
                listed = ", ".join(known) or "none"
                add((where, index, "depends_on", position),
                    f"{quoted(name)} is not a {noun} of this workstream ({noun}s: {listed})")
            elif name == ident:
                add((where, index, "depends_on", position), f"a {noun} cannot depend on itself")
            else:
                names.append(name)
        if isinstance(ident, str) and known.get(ident) == index:
            graph[ident] = names
    for cycle in _cycles(graph, known):
        add((where, known[cycle[0]], "depends_on"),
            f"dependency cycle: {' -> '.join(cycle + [cycle[0]])}")


def _check_gate_tasks(gates: list[tuple[int, dict[str, Any]]], task_ids: dict[str, int],
                      gate_names: dict[str, int], add: AddProblem) -> None:
    """A gate's `tasks` are tasks of this workstream, and a gate depends only on gates that
    judge every task it judges. The orchestrator defines for a patch only the gates that
    judge its task, and a gate runs only once its dependencies passed on that same patch: a
    dependency that does not judge the task would never be there to pass."""
    listed = ", ".join(task_ids) or "none"
    # gate index -> the task ids it judges (None: every task's), for the gates whose list
    # can be judged: a list the schema refuses, or one naming an unknown task, has its
    # problem reported already, and guessing what it meant would only add noise
    judged: dict[int, frozenset[str] | None] = {}
    for index, gate in gates:
        if "tasks" not in gate:
            judged[index] = None
            continue
        names = gate["tasks"]
        if not isinstance(names, list) or not names:
            continue  # the schema's problem
        usable = True
        for position, task_id in enumerate(names):
            if not isinstance(task_id, str) or not task_id:
                usable = False  # the schema's problem
            elif task_id not in task_ids:
                add(("gates", index, "tasks", position),
                    f"{quoted(task_id)} is not a task of this workstream (tasks: {listed})")
                usable = False
        if usable:
            judged[index] = frozenset(names)
    for index, gate in gates:
        if index not in judged:
            continue
        mine = judged[index]
        depends_on = gate.get("depends_on")
        for position, name in enumerate(depends_on if isinstance(depends_on, list) else []):
            # an unknown name or the gate itself is _check_dependencies' problem
            dependency = gate_names.get(name) if isinstance(name, str) else None
            if dependency is None or name == gate.get("name") or dependency not in judged:
                continue
            theirs = judged[dependency]
            if theirs is None:
                continue  # judges every task
            missing = [t for t in task_ids if (mine is None or t in mine) and t not in theirs]
            if missing:
                add(("gates", index, "depends_on", position),
                    f"{quoted(name)} does not judge every task this gate judges (not "
                    f"{', '.join(missing)}): a gate runs only once its dependencies passed "
                    f"on the same patch; list those tasks in {quoted(name)}'s tasks too, "
                    "or drop the dependency")


def _cycles(graph: dict[str, list[str]], order: dict[str, int]) -> list[list[str]]:
    """One cycle of each strongly connected component that has one (Tarjan, iterative),
    starting at its member that comes first in the file."""
    index_of: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[set[str]] = []
    counter = 0
    # every node of the graph is a known id, so has its place in `order`
    for start in sorted(graph, key=order.__getitem__):
        if start in index_of:
            continue
        work = [(start, iter(graph[start]))]
        index_of[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in graph:
                    continue
                if child not in index_of:
                    index_of[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index_of[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index_of[node]:
                    members = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        members.append(member)
                        if member == node:
                            break
                    if len(members) > 1:
                        components.append(set(members))
    cycles = []
    for component in components:
        first = min(component, key=order.__getitem__)
        cycles.append(_cycle_through(first, component, graph, order))
    return sorted(cycles, key=lambda c: order[c[0]])


def _cycle_through(start: str, component: set[str], graph: dict[str, list[str]],
                   order: dict[str, int]) -> list[str]:
    """A shortest cycle from `start` back to itself inside its component (breadth first)."""
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node], key=order.__getitem__):
                if child not in component:
                    continue
                if child == start:
                    cycle = [node]
                    while cycle[-1] != start:
                        cycle.append(came_from[cycle[-1]])
                    return cycle[::-1]
                if child not in came_from:
                    came_from[child] = node
                    following.append(child)
        frontier = following
    return [start]  # not reached: a component of two or more members has a cycle


def _check_scope(scope: Any, path: Steps, add: AddProblem) -> None:
    if isinstance(scope, dict):
        for kind in ("modify", "create", "read_only"):
            _check_globs(scope.get(kind), (*path, kind), add)


def _check_globs(globs: Any, path: Steps, add: AddProblem) -> None:
    if not isinstance(globs, list):
        return
    for position, pattern in enumerate(globs):
        if isinstance(pattern, str) and pattern:
            problem = glob_problem(pattern)
            if problem:
                add((*path, position), problem)


_DRIVE = re.compile(r"[A-Za-z]:")
_BRACES = re.compile(r"\{[^{}]*,[^{}]*\}")


def glob_problem(pattern: str) -> str | None:
    """Why a files_scope or forbid_paths glob cannot match paths of the repository the way
    it is meant to (None: it is fine). Patterns match paths as git writes them: relative to
    the repository root, '/' between folders, no '.' or '..' steps; their meaning (`*`, `?`,
    `[...]`, `**`) is uet.engine.policy's, which has no brace expansion and no negation."""
    if pattern.startswith(("/", "~")) or _DRIVE.match(pattern) or pattern.startswith("\\"):
        return "must be relative to the repository root, not an absolute path"
    if "\\" in pattern:
        return "must use '/' between folders ('\\' escapes the next character in a glob)"
    if pattern.startswith("!"):
        return ("a leading '!' (an exclusion) is not supported: list the paths in read_only "
                "or policy.forbid_paths instead")
    segments = pattern.split("/")
    if ".." in segments:
        return "must not contain a '..' step: patterns match paths inside the repository"
    if "." in segments:
        return "must not contain a '.' step (write 'src/**', not './src/**')"
    # one trailing '/' names a folder (uet.engine.policy reads `docs/` as `docs/**`)
    if "" in segments[:-1]:
        return "must not contain '//' (an empty folder name)"
    if _BRACES.search(pattern):
        return ("brace expansion ({a,b}) is not supported (braces are literal): write one "
                "pattern per alternative")
    return None


_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")


def ref_name_problem(name: str) -> str | None:
    """Why `name` cannot be a git branch name (git check-ref-format's rules, and `git
    branch`'s: not '-…', not 'HEAD'), or None."""
    bad = _REF_FORBIDDEN.search(name)
    if bad:
        return f"contains {bad.group()!r}, which git does not allow in a branch name"
    if name.startswith("-"):
        return "starts with '-'"
    if name == "HEAD" or name == "@":
        return f"is {name!r}"
    if name.startswith("/") or name.endswith("/") or "//" in name:
        return "has an empty folder part (a leading, trailing or double '/')"
    if ".." in name or "@{" in name:
        return "contains '..' or '@{'"
    if name.endswith("."):
        return "ends with '.'"
    for part in name.split("/"):
        if part.startswith(".") or part.endswith(".lock"):
            return f"has a part {part!r} that starts with '.' or ends with '.lock'"
    return None


def _check_branch(data: dict[str, Any], add: AddProblem) -> None:
    branch = data.get("branch", DEFAULT_BRANCH)
    if not isinstance(branch, str) or not branch:
        return
    messages = template_problems(branch, BRANCH_PLACEHOLDERS)
    for message in messages:
        add(("branch",), message)
    workstream_id = data.get("workstream_id")
    if messages or not isinstance(workstream_id, str) or not workstream_id \
            or re.search(r"[\x00-\x1f\x7f-\x9f]", workstream_id):
        return  # the workstream_id's own problem is reported at its path
    name = render_template(branch, {"run_id": SAMPLE_RUN_ID, "workstream_id": workstream_id})
    fault = ref_name_problem(name)
    if fault:
        add(("branch",), f"makes branch names like {quoted(name)}, which is not a valid git "
                         f"branch name: it {fault}")

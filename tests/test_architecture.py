"""The architecture's rules, proved on the source and on live ledgers: no import cycles, the
drivers only in the backends, no module reaching into another module's private names, and
state machines that agree with the schema, the contracts' enums, the CLI and the queries.

The source is read from wherever `uet` is imported from, so the checks can be run against a
copy (`PYTHONPATH=/tmp/copy/src`) with a violation injected, to see each of them fail.
"""

from __future__ import annotations

import ast
import functools
import importlib
import os
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest

import uet
from uet.state.machines import MACHINES, Machine

PACKAGE_DIR = Path(uet.__file__).resolve().parent  # .../src/uet
SOURCE_ROOT = PACKAGE_DIR.parent


# -- the package's modules -----------------------------------------------------------------

def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()  # a package is its __init__
    return ".".join(parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


@functools.lru_cache(maxsize=None)
def _tree(module: str) -> ast.Module:
    path = MODULES[module]
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _where(module: str, line: int) -> str:
    return f"{MODULES[module].relative_to(SOURCE_ROOT)}:{line}"


# -- imports -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImportSite:
    importer: str
    target: str   # the absolute dotted name of the module it loads (ours or not)
    line: int
    how: str      # "at import time", "inside a function", "dynamically"


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _absolute(module: str, level: int, name: str | None) -> str:
    """The absolute name of `from <level dots><name> import ...` written in `module`."""
    if level == 0:
        return name or ""
    package = module.split(".") if _is_package(module) else module.split(".")[:-1]
    base = package[:len(package) - (level - 1)]
    return ".".join(base + ([name] if name else []))


_IMPORT_FUNCTIONS = {"import_module", "__import__"}


def _calls_import_function(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    return name in _IMPORT_FUNCTIONS


@functools.lru_cache(maxsize=None)
def imports_of(module: str) -> tuple[ImportSite, ...]:
    """Every import `module` makes: at top level, inside functions (the imports that hide a
    cycle), under `if TYPE_CHECKING` (a dependency all the same), and dynamic ones —
    `importlib.import_module("x")`, and in a module that imports by name (PEP 562 lazy
    exports) every string that names one of our modules."""
    tree = _tree(module)
    in_function: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            in_function.update(id(child) for child in ast.walk(node) if child is not node)
    sites = []

    def add(target: str, node: ast.AST, how: str | None = None) -> None:
        how = how or ("inside a function" if id(node) in in_function else "at import time")
        sites.append(ImportSite(module, target, node.lineno, how))

    imports_by_name = False
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, node.level, node.module)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                # `from uet.state import db` loads the module db; `from uet.state import
                # Database` loads the package uet.state (its __init__)
                add(submodule if submodule in MODULES else base, node)
        elif _calls_import_function(node):
            imports_by_name = True
            if node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str):
                add(node.args[0].value, node, "dynamically")
    if imports_by_name:
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in MODULES and node.value != module:
                add(node.value, node, "dynamically (a lazy import by name)")
    return tuple(sorted(set(sites), key=lambda s: (s.line, s.target)))


def _our_module(target: str) -> str | None:
    """The module of ours that importing `target` runs (None: not ours, or gone)."""
    while target:
        if target in MODULES:
            return target
        target = target.rpartition(".")[0]
    return None


def import_graph() -> dict[str, dict[str, ImportSite]]:
    """importer -> {imported module of ours -> the first place it is imported}."""
    graph: dict[str, dict[str, ImportSite]] = {m: {} for m in MODULES}
    for module in MODULES:
        for site in imports_of(module):
            target = _our_module(site.target) if site.target.split(".")[0] == "uet" else None
            if target is not None and target != module:
                graph[module].setdefault(target, site)
    return graph


def elementary_cycles(graph: dict[str, dict[str, ImportSite]]) -> list[list[str]]:
    """Every cycle of the graph once, each starting at its smallest module (a -> b -> a)."""
    order = sorted(graph)
    rank = {m: i for i, m in enumerate(order)}
    cycles = []
    for start in order:
        path, on_path = [start], {start}
        stack = [iter(sorted(graph[start]))]
        while stack:
            for following in stack[-1]:
                if following == start:
                    cycles.append([*path, start])
                elif rank[following] > rank[start] and following not in on_path:
                    path.append(following)
                    on_path.add(following)
                    stack.append(iter(sorted(graph[following])))
                    break
            else:
                stack.pop()
                on_path.discard(path.pop())
    return cycles


def test_the_package_has_no_import_cycles():
    graph = import_graph()
    cycles = sorted(elementary_cycles(graph), key=lambda c: (len(c), c))  # shortest first
    described = []
    for cycle in cycles:
        lines = [" -> ".join(cycle)]
        for importer, imported in zip(cycle, cycle[1:]):
            site = graph[importer][imported]
            lines.append(f"    {_where(importer, site.line)} imports {imported} ({site.how})")
        described.append("\n".join(lines))
    assert not cycles, f"{len(cycles)} import cycle(s):\n" + "\n".join(described)


DRIVERS = ("sqlite3", "_sqlite3", "psycopg", "psycopg_pool", "psycopg_c", "psycopg_binary",
           "psycopg2")
BACKENDS = "uet.state.backends"

# Modules outside the backends that may import a driver, and why: none of them touches the
# ledger's data through it.
DRIVER_IMPORT_EXCEPTIONS = {
    "uet.state.sqlfiles": "splits migration scripts into statements with "
                          "sqlite3.complete_statement, a function of SQL text: it opens no "
                          "connection and reads no ledger",
    "uet.compat": "the drop-in for the seed's original API, which handed callers a sqlite3 "
                  "connection: its read-only stand-in is one (rows are sqlite3.Row) and its "
                  "errors are sqlite3.OperationalError, as the seed's callers catch them",
}


def _driver_imports(module: str) -> list[ImportSite]:
    return [s for s in imports_of(module) if s.target.split(".")[0] in DRIVERS]


def test_only_the_backends_import_a_database_driver():
    offenders = [
        f"{_where(module, site.line)} imports {site.target} ({site.how})"
        for module in MODULES
        if not (module == BACKENDS or module.startswith(BACKENDS + "."))
        and module not in DRIVER_IMPORT_EXCEPTIONS
        for site in _driver_imports(module)]
    assert not offenders, (
        f"only {BACKENDS}.* may import a database driver (nothing above the backends sees "
        "sqlite3 or psycopg):\n" + "\n".join(offenders))


def test_every_driver_import_exception_is_still_needed():
    stale = [f"{module} ({reason})" for module, reason in DRIVER_IMPORT_EXCEPTIONS.items()
             if module not in MODULES or not _driver_imports(module)]
    assert not stale, ("these modules no longer import a driver; remove them from "
                       "DRIVER_IMPORT_EXCEPTIONS:\n" + "\n".join(stale))


# -- private names -------------------------------------------------------------------------

def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


# Public API whose names start with "_" only to stay clear of field names: namedtuple's
# (urllib.parse's results are namedtuples: `parts._replace(netloc=...)`).
PUBLIC_UNDERSCORE_API = {"_replace", "_asdict", "_fields", "_make", "_field_defaults"}

# Private-looking names of the standard library that are documented for use; judged
# acceptable. Anything else private of another library is flagged.
STDLIB_PRIVATE_ALLOWED = {
    ("os", "_exit"): "documented: leave a forked child without running the parent's cleanup",
    ("sys", "_getframe"): "documented (CPython): the caller's frame, for diagnostics",
}


def _annotation_names(annotation: ast.AST | None) -> set[str]:
    if annotation is None:
        return set()
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        try:
            annotation = ast.parse(annotation.value, mode="eval").body
        except SyntaxError:
            return set()
    return {n.id for n in ast.walk(annotation) if isinstance(n, ast.Name)}


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _value_type(value: ast.AST | None, params: dict[str, set[str]]) -> set[str]:
    """What a simple assignment tells of a name's type: `x = SomeClass(...)`, `x = param`."""
    if isinstance(value, ast.Call):
        dotted = _dotted(value.func)  # SomeClass(...), threading.RLock(...)
        return {dotted} if dotted else set()
    if isinstance(value, ast.Name):
        return set(params.get(value.id, ()))
    return set()


def _parameters(function: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
                ) -> dict[str, set[str]]:
    args = function.args
    every = [*args.posonlyargs, *args.args, *args.kwonlyargs,
             *[a for a in (args.vararg, args.kwarg) if a is not None]]
    return {a.arg: _annotation_names(getattr(a, "annotation", None)) for a in every}


def _walk_scope(scope: ast.AST):
    """The nodes of one scope (a module or a function), not those of the functions, lambdas
    and classes defined in it."""
    pending = list(ast.iter_child_nodes(scope))
    while pending:
        node = pending.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda,
                                 ast.ClassDef)):
            pending.extend(ast.iter_child_nodes(node))


def _local_types(scope: ast.AST, params: dict[str, set[str]]) -> dict[str, set[str]]:
    """The names bound in a function (or module) with what their binding tells of their
    type (an empty set: bound, type unknown)."""
    names = dict(params)
    for node in _walk_scope(scope):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.setdefault(node.id, set())
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    names[target.id] = names.get(target.id, set()) | _value_type(node.value,
                                                                                   params)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = _annotation_names(node.annotation)
    return names


class _PrivateAccessFinder(ast.NodeVisitor):
    """Finds `x._name` where `_name` belongs to another module.

    Allowed: `self._x`, `cls._x`, `super()._x`, `OwnClass._x` (a class of this module), and
    `x._x` where x is known (by annotation or assignment) to be of a class of this module.
    Flagged: x of a class (or a module) imported from another of our modules — e.g.
    `self._db._backend` where `self._db = db` and `db: Database` — and private names of
    other libraries except the judged ones above. When x's type is unknown (a loop variable),
    it is allowed only if a class of this module declares `_name` (a module's functions
    working on its own class, like fork hooks), else flagged.
    """

    def __init__(self, module: str) -> None:
        self.module = module
        tree = _tree(module)
        self.own_classes = {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
        self.imported: dict[str, tuple[str, bool]] = {}  # local name -> (origin, ours?)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    origin = alias.name if alias.asname else alias.name.split(".")[0]
                    self.imported[alias.asname or origin] = (origin,
                                                             origin.split(".")[0] == "uet")
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(module, node.level, node.module)
                for alias in node.names:
                    self.imported[alias.asname or alias.name] = (
                        f"{base}.{alias.name}", base.split(".")[0] == "uet")
        self.declared: set[str] = set()  # private members the classes of this module declare
        self.attribute_types: dict[tuple[str, str], set[str]] = {}  # (class, attr) -> type
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
            self._read_class(cls)
        self.scopes: list[dict[str, set[str]]] = [_local_types(tree, {})]
        self.classes: list[str] = []
        self.found: list[str] = []

    def _read_class(self, cls: ast.ClassDef) -> None:
        for item in cls.body:
            if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if _private(item.name):
                    self.declared.add(item.name)
            elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                self.declared.update({item.target.id} if _private(item.target.id) else ())
                self.attribute_types[(cls.name, item.target.id)] = _annotation_names(
                    item.annotation)
            elif isinstance(item, ast.Assign):
                self.declared.update(t.id for t in item.targets
                                     if isinstance(t, ast.Name) and _private(t.id))
        for method in cls.body:
            if not isinstance(method, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            params = _parameters(method)
            for node in ast.walk(method):
                targets: list[tuple[ast.AST, set[str]]] = []
                if isinstance(node, ast.Assign):
                    targets = [(t, _value_type(node.value, params)) for t in node.targets]
                elif isinstance(node, ast.AnnAssign):
                    targets = [(node.target, _annotation_names(node.annotation))]
                for target, types in targets:
                    if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) \
                            and target.value.id in ("self", "cls"):
                        if _private(target.attr):
                            self.declared.add(target.attr)
                        known = self.attribute_types.setdefault((cls.name, target.attr), set())
                        known.update(types)

    # scopes

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.classes.append(node.name)
        self.generic_visit(node)
        self.classes.pop()

    def _visit_function(self, node) -> None:
        self.scopes.append(_local_types(node, _parameters(node)))
        self.generic_visit(node)
        self.scopes.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _visit_function

    # the rule

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = _absolute(self.module, node.level, node.module)
        if base.split(".")[0] == "uet" and base != self.module:
            for alias in node.names:
                if _private(alias.name) and f"{base}.{alias.name}" not in MODULES:
                    self.found.append(f"{_where(self.module, node.lineno)}: imports "
                                      f"{alias.name}, private to {base}")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self.generic_visit(node)
        if _private(node.attr):
            owner = self._foreign_owner(node.value, node.attr)
            if owner is not None:
                self.found.append(f"{_where(self.module, node.lineno)}: "
                                  f"{ast.unparse(node)} — {node.attr} is private to {owner}")

    def _type_of(self, expr: ast.AST) -> set[str] | None:
        """What is known of the type of `expr` (None: it is not a bound local name or an
        attribute of self)."""
        if isinstance(expr, ast.Name):
            for scope in reversed(self.scopes):
                if expr.id in scope:
                    return scope[expr.id]
            return None
        if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name) \
                and expr.value.id in ("self", "cls") and self.classes:
            return self.attribute_types.get((self.classes[-1], expr.attr), set())
        return None

    def _foreign_owner(self, receiver: ast.AST, attr: str) -> str | None:
        """The other module (or class of it) `receiver.attr` reaches into; None if allowed."""
        if attr in PUBLIC_UNDERSCORE_API:
            return None
        if isinstance(receiver, ast.Name) and receiver.id in ("self", "cls"):
            return None
        if isinstance(receiver, ast.Call) and isinstance(receiver.func, ast.Name) \
                and receiver.func.id == "super":
            return None
        types = self._type_of(receiver)
        if types is None:  # a class of this module, or a module or a name imported
            origin = self._origin(_dotted(receiver) or "")
            if origin is not None:
                kind, qualified = origin
                if kind == "own" or (kind == "library"
                                     and (qualified, attr) in STDLIB_PRIVATE_ALLOWED):
                    return None
                return qualified
        origins = [self._origin(name) for name in sorted(types or ())]
        for kind, qualified in filter(None, origins):
            if kind == "ours":
                return qualified  # an instance of a class of another of our modules
        if any(kind == "own" for kind, _ in filter(None, origins)):
            return None
        if attr in self.declared:
            return None
        for _, qualified in filter(None, origins):  # an instance of a library's class
            return None if (qualified, attr) in STDLIB_PRIVATE_ALLOWED else qualified
        return f"another module (no class of {self.module} declares it)"

    def _origin(self, type_name: str) -> tuple[str, str] | None:
        """Where a type named in this module comes from: ("own", ...) a class of this
        module, ("ours", ...) one of another of our modules, ("library", ...) any other."""
        root, _, rest = type_name.partition(".")
        if not rest and root in self.own_classes:
            return "own", f"{self.module}.{root}"
        if root in self.imported:
            origin, ours = self.imported[root]
            return ("ours" if ours else "library", f"{origin}.{rest}" if rest else origin)
        return None


def private_accesses(module: str) -> list[str]:
    finder = _PrivateAccessFinder(module)
    finder.visit(_tree(module))
    return finder.found


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_uses_a_private_name_of_another_module(module):
    found = private_accesses(module)
    assert not found, (f"{module} reaches into private names of other modules (use their "
                       "public API, or make the name public):\n" + "\n".join(found))


# -- the machines and the schema -------------------------------------------------------------

# Which table's `state` column each machine governs (from the migrations,
# sql/*/migrations/: 0001 runs and step_attempts, 0002 the V2 tables).
MACHINE_TABLES = {
    "run": "runs",
    "step_attempt": "step_attempts",
    "worker": "workers",
    "patch_entry": "patch_ledger_entries",
    "gate": "test_gates",
}
TABLE_MACHINES = {table: entity for entity, table in MACHINE_TABLES.items()}
STATE_COLUMN = "state"

machine_params = [pytest.param(m, id=entity) for entity, m in MACHINES.items()]

_STRING = r"'(?:[^']|'')*'"
# `state = 'x'`, `g.state != 'x'`, `state IN ('a', 'b')`, `NEW.state <> 'x'`, and
# PostgreSQL's `state = ANY (ARRAY['a'::text, ...])` as pg_get_constraintdef writes it
_STATE_COMPARISON = re.compile(
    r"(?<![\w.])(?:(?P<qualifier>\w+)\.)?state\b\s*"
    r"(?P<op>=|!=|<>|NOT\s+IN\b|IN\b)\s*"
    r"(?P<rhs>(?:ANY|ALL)\s*\(\s*ARRAY\s*\[[^\]]*\]\s*\)|\([^()]*\)|" + _STRING + ")",
    re.IGNORECASE)
_SQLITE_STATE_DOMAIN = re.compile(r"CHECK\s*\(\s*state\s+IN\s*\((?P<list>[^()]*)\)\s*\)",
                                  re.IGNORECASE)
_POSTGRES_STATE_DOMAIN = re.compile(r"^CHECK \(\(state = ANY \(ARRAY\[(?P<list>[^\]]*)\]\)\)\)$")


def _literals(text: str) -> list[str]:
    return [s[1:-1].replace("''", "'") for s in re.findall(_STRING, text)]


def _without_comments(sql: str) -> str:
    return re.sub(r"--[^\n]*", "", sql)


@dataclass
class LiveSchema:
    """What a freshly migrated ledger says about states, read from the engine's catalog."""
    engine: str
    columns: dict[str, list[str]]
    state_domains: dict[str, list[list[str]]]  # table -> the states each CHECK on state allows
    # table -> (where, literal) for every state literal in its other CHECKs and its triggers
    state_literals: dict[str, list[tuple[str, str]]]


def _comparisons(text: str, table: str, where: str, into: dict, skip=()) -> None:
    for match in _STATE_COMPARISON.finditer(text):
        if any(start <= match.start() < end for start, end in skip):
            continue
        for literal in _literals(match.group("rhs")):
            into.setdefault(table, []).append((f"{where}: {match.group(0)}", literal))


def _sqlite_schema(path: str) -> LiveSchema:
    conn = sqlite3.connect(path)
    try:
        tables = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table' "
                              "AND name NOT LIKE 'sqlite_%'").fetchall()
        triggers = conn.execute("SELECT tbl_name, name, sql FROM sqlite_master "
                                "WHERE type = 'trigger'").fetchall()
        columns = {name: [r[1] for r in conn.execute(f'PRAGMA table_info("{name}")')]
                   for name, _ in tables}
    finally:
        conn.close()
    domains: dict[str, list[list[str]]] = {}
    literals: dict[str, list[tuple[str, str]]] = {}
    for name, sql in tables:
        sql = _without_comments(sql)
        spans = []
        for match in _SQLITE_STATE_DOMAIN.finditer(sql):
            domains.setdefault(name, []).append(_literals(match.group("list")))
            spans.append(match.span())
        _comparisons(sql, name, f"a CHECK of {name}", literals, spans)
    for table, name, sql in triggers:
        _comparisons(_without_comments(sql), table, f"trigger {name}", literals)
    return LiveSchema("sqlite", columns, domains, literals)


def _postgres_schema(url: str) -> LiveSchema:
    import psycopg
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
        ).fetchall()
        checks = conn.execute(
            "SELECT c.relname, con.conname, pg_get_constraintdef(con.oid), "
            "       array(SELECT a.attname::text FROM pg_attribute AS a "
            "             WHERE a.attrelid = con.conrelid AND a.attnum = ANY (con.conkey)) "
            "  FROM pg_constraint AS con JOIN pg_class AS c ON c.oid = con.conrelid "
            " WHERE c.relnamespace = current_schema()::regnamespace AND con.contype = 'c'"
        ).fetchall()
        triggers = conn.execute(
            "SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid), p.prosrc "
            "  FROM pg_trigger AS t JOIN pg_class AS c ON c.oid = t.tgrelid "
            "  JOIN pg_proc AS p ON p.oid = t.tgfoid "
            " WHERE NOT t.tgisinternal AND c.relnamespace = current_schema()::regnamespace"
        ).fetchall()
    columns: dict[str, list[str]] = {}
    for table, column in rows:
        columns.setdefault(table, []).append(column)
    domains: dict[str, list[list[str]]] = {}
    literals: dict[str, list[tuple[str, str]]] = {}
    for table, name, definition, constrained in checks:
        if constrained == [STATE_COLUMN]:  # a CHECK of the state column alone: its domain
            match = _POSTGRES_STATE_DOMAIN.match(definition)
            assert match, f"CHECK {name} of {table}.state has an unexpected form: {definition}"
            domains.setdefault(table, []).append(_literals(match.group("list")))
        else:
            _comparisons(definition, table, f"CHECK {name}", literals)
    for table, name, definition, source in triggers:
        _comparisons(f"{definition}\n{_without_comments(source)}", table,
                     f"trigger {name}", literals)
    return LiveSchema("postgresql", columns, domains, literals)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def live_schema(request, tmp_path_factory) -> LiveSchema:
    """The catalog of a ledger just created by `init_db` (every migration applied), on each
    engine."""
    from uet.state import init_db
    if request.param == "sqlite":
        path = str(tmp_path_factory.mktemp("architecture") / "framework.db")
        init_db(path).close()
        yield _sqlite_schema(path)
        return
    import pgserver
    server = request.getfixturevalue("postgres_server")
    with pgserver.schema(server, f"uet_architecture_{os.getpid()}") as url:
        init_db(url).close()
        yield _postgres_schema(url)


def _names(states) -> str:
    return ", ".join(sorted(states))


def test_every_machine_governs_a_table():
    machines, mapped = set(MACHINES), set(MACHINE_TABLES)
    assert machines == mapped, (
        f"machines without a table in MACHINE_TABLES: {_names(machines - mapped)}; "
        f"MACHINE_TABLES entries of machines that no longer exist: {_names(mapped - machines)}")


def test_every_state_column_belongs_to_a_machine(live_schema):
    stateful = {t for t, columns in live_schema.columns.items() if STATE_COLUMN in columns}
    assert stateful == set(TABLE_MACHINES), (
        f"{live_schema.engine}: tables with a state column but no machine: "
        f"{_names(stateful - set(TABLE_MACHINES))}; machine tables without a state column: "
        f"{_names(set(TABLE_MACHINES) - stateful)}")


@pytest.mark.parametrize("machine", machine_params)
def test_the_state_check_allows_exactly_the_machine_states(live_schema, machine: Machine):
    table = MACHINE_TABLES[machine.entity]
    domains = live_schema.state_domains.get(table, [])
    assert len(domains) == 1, (
        f"{live_schema.engine}: {table}.state should have exactly one CHECK (state IN (...)) "
        f"listing the {machine.entity} states; found {len(domains)}: {domains}")
    allowed, states = set(domains[0]), set(machine.states)
    assert allowed == states, (
        f"{live_schema.engine}: the CHECK of {table}.state and machine {machine.entity} "
        f"disagree. Only in the CHECK: {_names(allowed - states) or '-'}; "
        f"only in the machine: {_names(states - allowed) or '-'}")


@pytest.mark.parametrize("machine", machine_params)
def test_state_literals_of_other_checks_and_triggers_are_machine_states(live_schema,
                                                                        machine: Machine):
    table = MACHINE_TABLES[machine.entity]
    unknown = [f"{where}: {literal!r}" for where, literal in
               live_schema.state_literals.get(table, []) if literal not in machine.states]
    assert not unknown, (
        f"{live_schema.engine}: {table} compares state with names that are not "
        f"{machine.entity} states ({', '.join(machine.states)}):\n" + "\n".join(unknown))


@pytest.mark.parametrize("machine", machine_params)
def test_the_timestamps_a_machine_stamps_are_columns_of_its_table(live_schema,
                                                                  machine: Machine):
    table = MACHINE_TABLES[machine.entity]
    missing = {column for column in machine.stamps.values()
               if column not in live_schema.columns.get(table, [])}
    assert not missing, (f"{live_schema.engine}: machine {machine.entity} stamps columns that "
                         f"{table} does not have: {_names(missing)}")


# -- the machines and the code ---------------------------------------------------------------

CONTRACT_ENUMS = [
    pytest.param("WorkerState", "worker", id="WorkerState"),
    pytest.param("PatchState", "patch_entry", id="PatchState"),
    pytest.param("GateState", "gate", id="GateState"),
]


@pytest.mark.parametrize("enum_name, entity", CONTRACT_ENUMS)
def test_contract_enums_list_the_machine_states_in_order(enum_name, entity):
    contracts = importlib.import_module("uet.state.contracts")
    values = [member.value for member in getattr(contracts, enum_name)]
    assert values == list(MACHINES[entity].states), (
        f"uet.state.contracts.{enum_name} lists {values}; machine {entity} has "
        f"{list(MACHINES[entity].states)}")


ALL_STATES = frozenset(s for m in MACHINES.values() for s in m.states)


def _string_values(node: ast.AST) -> list[ast.Constant]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [e for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return []


def _is_state(node: ast.AST) -> bool:
    """`row["state"]`, `worker.state`, `row["step_state"]` ... (a bare name `state` is not
    enough: recovery reads a process's state from /proc)."""
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
        key = node.slice.value
        return isinstance(key, str) and (key == STATE_COLUMN or key.endswith("_state"))
    return isinstance(node, ast.Attribute) and (node.attr == STATE_COLUMN
                                                or node.attr.endswith("_state"))


def _state_comparisons(module: str) -> list[ast.Constant]:
    """String literals compared with a record's state in `module`."""
    found = []
    for node in ast.walk(_tree(module)):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(_is_state(side) for side in sides):
                found += [c for side in sides for c in _string_values(side)]
    return found


CLI_OUTPUT = "uet.cli.output"


def test_the_state_names_of_the_cli_output_are_machine_states():
    assert CLI_OUTPUT in MODULES, f"{CLI_OUTPUT} has moved: point CLI_OUTPUT at its new name"
    literals = _state_comparisons(CLI_OUTPUT)
    for node in ast.walk(_tree(CLI_OUTPUT)):  # tables keyed by state: STATE_STYLES ...
        targets = (node.targets if isinstance(node, ast.Assign)
                   else [node.target] if isinstance(node, ast.AnnAssign) else [])
        if any(isinstance(t, ast.Name) and "STATE" in t.id.upper() for t in targets) \
                and isinstance(node.value, ast.Dict):
            literals += [k for k in node.value.keys if k is not None
                         for k in _string_values(k)]
    assert literals, (f"no state names found in {CLI_OUTPUT} (no STATE... table, no state "
                      "comparison): has the state colouring moved? Update this test")
    unknown = [f"{_where(CLI_OUTPUT, c.lineno)}: {c.value!r}" for c in literals
               if c.value not in ALL_STATES]
    assert not unknown, ("not a state of any machine:\n" + "\n".join(unknown)
                         + f"\nknown states: {_names(ALL_STATES)}")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_states_compared_in_the_code_are_machine_states(module):
    unknown = [f"{_where(module, c.lineno)}: {c.value!r}" for c in _state_comparisons(module)
               if c.value not in ALL_STATES]
    assert not unknown, ("compared with a record's state, but not a state of any machine:\n"
                         + "\n".join(unknown) + f"\nknown states: {_names(ALL_STATES)}")


# -- the machines and the named queries ------------------------------------------------------

_SQL_KEYWORDS = {"where", "set", "on", "join", "left", "right", "inner", "outer", "cross",
                 "full", "natural", "order", "group", "limit", "values", "using", "returning",
                 "default", "select", "as", "and", "or", "for", "union", "having", "window",
                 "offset", "skip", "nowait", "of"}
_TABLE_BINDING = re.compile(r"\b(?:FROM|JOIN|UPDATE|INTO)\s+(\w+)(?:\s+(?:AS\s+)?(\w+))?",
                            re.IGNORECASE)
_INSERT = re.compile(r"INSERT\s+INTO\s+(\w+)\s*\(([^)]*)\)\s*VALUES\s*\(", re.IGNORECASE)


def _parentheses(sql: str) -> list[tuple[int, int]]:
    pairs, opened, quoted = [], [], False
    for i, ch in enumerate(sql):
        if ch == "'":
            quoted = not quoted
        elif not quoted and ch == "(":
            opened.append(i)
        elif not quoted and ch == ")" and opened:
            pairs.append((opened.pop(), i))
    return pairs


def _enclosing(position: int, pairs: list[tuple[int, int]]) -> list[tuple[int, int] | None]:
    """The parenthesised scopes around `position`, innermost first, then the statement."""
    around = [p for p in pairs if p[0] < position < p[1]]
    return [*sorted(around, key=lambda p: p[0], reverse=True), None]


def _split_values(sql: str, start: int) -> list[str]:
    """The top-level comma-separated items of the parenthesised list opening before `start`."""
    items, depth, quoted, current = [], 0, False, ""
    for ch in sql[start:]:
        if ch == "'":
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            if depth == 0:
                break
            depth -= 1
        elif not quoted and ch == "," and depth == 0:
            items.append(current.strip())
            current = ""
            continue
        current += ch
    return [*items, current.strip()]


def state_literals_of_query(sql: str) -> list[tuple[str, str | None, str, str]]:
    """(the SQL it is in, the table whose state it is — None when that cannot be told —,
    the literal, the kind: 'compared' or 'inserted') for each state literal of one query."""
    sql = _without_comments(sql)
    pairs = _parentheses(sql)
    bindings: dict[tuple[int, int] | None, list[tuple[str, str | None]]] = {}
    for match in _TABLE_BINDING.finditer(sql):
        alias = match.group(2)
        alias = None if alias is None or alias.lower() in _SQL_KEYWORDS else alias
        bindings.setdefault(_enclosing(match.start(), pairs)[0], []).append(
            (match.group(1), alias))

    def table_of(position: int, qualifier: str | None) -> str | None:
        for scope in _enclosing(position, pairs):
            entries = bindings.get(scope, [])
            if qualifier:
                named = [t for t, a in entries if a == qualifier or (a is None and t == qualifier)]
                if named:
                    return named[0]
            else:
                stateful = {t for t, _ in entries if t in TABLE_MACHINES}
                if stateful:
                    return stateful.pop() if len(stateful) == 1 else None
        return None

    found = []
    for match in _STATE_COMPARISON.finditer(sql):
        table = table_of(match.start(), match.group("qualifier"))
        for literal in _literals(match.group("rhs")):
            found.append((match.group(0), table, literal, "compared"))
    for match in _INSERT.finditer(sql):
        columns = [c.strip() for c in match.group(2).split(",")]
        values = _split_values(sql, match.end())
        if STATE_COLUMN in columns and len(values) == len(columns):
            value = values[columns.index(STATE_COLUMN)]
            if re.fullmatch(_STRING, value):
                found.append((f"INSERT INTO {match.group(1)} (... state ...) VALUES "
                              f"(... {value} ...)", match.group(1), _literals(value)[0],
                              "inserted"))
    return found


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_state_literals_of_the_named_queries_are_states_of_their_table(engine):
    from uet.state.sqlfiles import load_queries
    problems = []
    for name, sql in load_queries(engine).items():
        for text, table, literal, kind in state_literals_of_query(sql):
            machine = MACHINES.get(TABLE_MACHINES.get(table, ""))
            if machine is None:
                problems.append(f"query {name}: cannot tell which machine's state "
                                f"`{text}` is (table {table}): qualify the column")
            elif literal not in machine.states:
                problems.append(f"query {name}: `{text}`: {literal!r} is not a state of "
                                f"{machine.entity} ({table}); its states: "
                                f"{', '.join(machine.states)}")
            elif kind == "inserted" and literal not in machine.initial:
                problems.append(f"query {name}: creates {table} rows in {literal!r}, not an "
                                f"initial {machine.entity} state ({', '.join(machine.initial)})")
    assert not problems, f"{engine} queries:\n" + "\n".join(problems)


def test_the_query_reader_finds_state_literals():
    """The parser behind the query test, on the shapes the queries use."""
    assert state_literals_of_query(
        "SELECT g.* FROM test_gates AS g JOIN gate_dependencies AS d ON d.gate_id = g.gate_id"
        " WHERE g.state IN ('PENDING', 'RUNNING')") == [
        ("g.state IN ('PENDING', 'RUNNING')", "test_gates", "PENDING", "compared"),
        ("g.state IN ('PENDING', 'RUNNING')", "test_gates", "RUNNING", "compared")]
    assert [(t, lit) for _, t, lit, _ in state_literals_of_query(
        "SELECT step_attempt_id FROM step_attempts WHERE state = 'running' AND "
        "(run_id IN (SELECT run_id FROM runs WHERE state = 'pending'))")] == [
        ("step_attempts", "running"), ("runs", "pending")]
    assert state_literals_of_query(
        "INSERT INTO workers (worker_id, state, affinity) VALUES (?, 'SPAWNING', coalesce(?, '{}'))"
    )[0][1:] == ("workers", "SPAWNING", "inserted")
    assert state_literals_of_query("UPDATE workers SET last_heartbeat = ? WHERE state != "
                                   "'TERMINATED' -- not 'IDLE'")[0][1:3] == ("workers",
                                                                          "TERMINATED")

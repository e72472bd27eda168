"""Create the demo repository that examples/demo/workstream.yaml works on.

Usage: python3 examples/demo/make_repo.py DEST

DEST (a scratch folder; it must not exist or be empty) becomes a git repository with one
commit on `main`: `calc`, a tiny Python package (calc/ops.py: add), its tests
(tests/test_ops.py), the two checks the workstream's gates run (checks/lint.py,
checks/run_tests.py; Python's standard library only) and a copy of uet's stand-in editor
(tools/stand_in_editor.py), the workstream's "AI tool". The copy lives in the repository
because a tool runs in its attempt's own worktree (a checkout of the run's branch) with that
worktree as its current folder: `python3 tools/stand_in_editor.py` then names the same
script in every attempt, wherever DEST and the uet clone are.

A local user.name / user.email is set, so that the commit works on a machine without any
git configuration; commit signing and hooks are off for it. The commit's dates are fixed,
so the base commit is the same on every machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

STAND_IN = Path(__file__).resolve().parents[1] / "tools" / "stand_in_editor.py"
DATE = "2026-01-01T00:00:00Z"
# variables that would point git at another repository than DEST
GIT_LOCATION = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY",
                "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_COMMON_DIR", "GIT_NAMESPACE",
                "GIT_PREFIX", "GIT_CEILING_DIRECTORIES")

FILES = {
    ".gitignore": "__pycache__/\n*.pyc\n",
    "README.md": """\
# calc — uet's demo repository

A tiny calculator package. uet's demo workstream (examples/demo/workstream.yaml in the uet
clone) adds subtract, multiply and divide to it, one task each, through the stand-in
editor in tools/.

Operations:

- `add(a, b)`: the sum of a and b
""",
    "calc/__init__.py": '"""A tiny calculator: the target of uet\'s demo workstream."""\n',
    "calc/ops.py": '''\
"""Arithmetic on two numbers."""


def add(a, b):
    """The sum of a and b."""
    return a + b
''',
    "tests/test_ops.py": '''\
"""Tests of calc.ops: checks/run_tests.py runs every test_* function."""

from calc import ops


def test_add():
    assert ops.add(2, 3) == 5
''',
    "checks/lint.py": '''\
"""A lint-like check of the package and its tests (the standard library only).

Every .py file under calc/ and tests/ must parse, keep its lines within 79 characters,
have no tabs or trailing whitespace, and give every function a docstring (tests aside).
Prints each problem as PATH:LINE: message; exits 1 when there is one.
"""

import ast
import pathlib
import sys

MAX_LINE = 79


def problems(path):
    text = path.read_text(encoding="utf-8")
    try:
        tree = ast.parse(text, filename=str(path))
    except SyntaxError as exc:
        yield exc.lineno or 0, f"syntax error: {exc.msg}"
        return
    for number, line in enumerate(text.splitlines(), 1):
        if len(line) > MAX_LINE:
            yield number, f"line too long ({len(line)} > {MAX_LINE})"
        if "\\t" in line:
            yield number, "tab character"
        if line != line.rstrip():
            yield number, "trailing whitespace"
    if path.parts[0] == "tests":
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and ast.get_docstring(node) is None:
            yield node.lineno, f"function {node.name} has no docstring"


def main():
    files = sorted(p for folder in ("calc", "tests")
                   for p in pathlib.Path(folder).rglob("*.py"))
    found = [f"{path}:{line}: {message}"
             for path in files for line, message in problems(path)]
    for line in found:
        print(line)
    print(f"lint: {len(files)} files, {len(found)} problems")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
''',
    "checks/run_tests.py": '''\
"""A minimal test runner (the standard library only): imports every tests/test_*.py and
calls each of its test_* functions. Prints PASS or FAIL (with the failing line) per test;
exits 1 when one fails.
"""

import importlib.util
import os
import pathlib
import sys
import traceback

sys.dont_write_bytecode = True
sys.path.insert(0, os.getcwd())


def run(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    failed = 0
    for name, test in vars(module).items():
        if not (name.startswith("test_") and callable(test)):
            continue
        try:
            test()
        except Exception as exc:  # a test that raises anything has failed
            failed += 1
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            where = f"{pathlib.Path(frame.filename).name}:{frame.lineno}"
            detail = f" ({type(exc).__name__}: {exc})" if str(exc) else ""
            print(f"FAIL {name} ({where}): {frame.line}{detail}")
        else:
            print(f"PASS {name}")
    return failed


def main():
    failed = sum(run(path) for path in sorted(pathlib.Path("tests").glob("test_*.py")))
    print(f"tests: {failed} failed" if failed else "tests: all passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
''',
}


def git(dest: Path, *args: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in GIT_LOCATION}
    env.update(GIT_AUTHOR_DATE=DATE, GIT_COMMITTER_DATE=DATE)
    subprocess.run(["git", *args], cwd=dest, env=env, check=True, stdout=subprocess.DEVNULL)


def make_repo(dest: Path) -> None:
    """Create the demo repository in `dest` (which must not exist, or be an empty folder)."""
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise SystemExit(f"make_repo.py: {dest} exists and is not an empty folder; "
                         "give a new one (or remove it first)")
    dest.mkdir(parents=True, exist_ok=True)
    for name, text in FILES.items():
        path = dest / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    (dest / "tools").mkdir()
    shutil.copyfile(STAND_IN, dest / "tools" / "stand_in_editor.py")
    git(dest, "init", "--quiet")
    git(dest, "symbolic-ref", "HEAD", "refs/heads/main")  # whatever init.defaultBranch says
    for key, value in (("user.name", "uet demo"), ("user.email", "demo@example.invalid"),
                       ("commit.gpgsign", "false"), ("core.autocrlf", "false")):
        git(dest, "config", key, value)
    git(dest, "add", "--all")
    git(dest, "commit", "--quiet", "--no-verify", "-m", "calc: add")


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1].startswith("-"):
        print(__doc__.strip(), file=sys.stderr)
        return 0 if len(argv) == 2 and argv[1] in ("-h", "--help") else 2
    dest = Path(argv[1])
    make_repo(dest)
    print(f"demo repository {dest}: calc/ops.py (add), tests/, checks/lint.py, "
          "checks/run_tests.py, tools/stand_in_editor.py; 1 commit on main")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

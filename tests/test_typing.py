"""uet is a typed library (PEP 561): it ships `py.typed`, and `mypy` (strict, configured in
pyproject.toml's [tool.mypy]) finds no error in src/uet. This runs the type checker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_package_ships_its_py_typed_marker():
    import uet
    assert (Path(uet.__file__).parent / "py.typed").is_file()


def test_mypy_strict_finds_nothing(tmp_path):
    # a cache of its own: a clean run, whatever an earlier mypy left in the checkout
    result = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("Success: no issues found"), result.stdout


def test_mypy_would_see_a_type_error(tmp_path):
    """The check is live: the same configuration finds a wrong type in a module of the
    package's kind (strict: an untyped function is an error too)."""
    probe = tmp_path / "probe.py"
    probe.write_text("def add(a: int, b: int) -> int:\n    return a + b\n\n"
                     "add('1', 2)\n\ndef untyped(x):\n    return x\n")
    result = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--cache-dir",
                             str(tmp_path / "cache"), str(probe)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "arg-type" in result.stdout and "no-untyped-def" in result.stdout

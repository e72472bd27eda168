"""The API reference: every public name has a docstring (what the reference is made of), and
`docs/build_api.py` — the README's command — builds it with pdoc."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs"))

import build_api  # noqa: E402 - docs/ is not a package


def undocumented(module_name: str) -> list[str]:
    """The public names of a module without a docstring: the module itself, its classes and
    functions (those of `__all__` when it has one), and their public methods and
    properties. A dataclass's generated `Name(field, …)` text is no docstring."""
    module = importlib.import_module(module_name)
    missing = [] if inspect.getdoc(module) else [module_name]
    listed = getattr(module, "__all__", None)
    for name, obj in vars(module).items():
        if name.startswith("_") or (listed is not None and name not in listed):
            continue
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if getattr(obj, "__module__", None) != module_name:
            continue   # imported from elsewhere: documented there
        if not _has_doc(obj):
            missing.append(f"{module_name}.{name}")
        if inspect.isclass(obj):
            for member_name, member in vars(obj).items():
                if member_name.startswith("_"):
                    continue
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                if isinstance(member, property):
                    member = member.fget
                if inspect.isfunction(member) and not member.__doc__:
                    missing.append(f"{module_name}.{name}.{member_name}")
    return missing


def _has_doc(obj: object) -> bool:
    doc = obj.__doc__
    if not doc or not doc.strip():
        return False
    if inspect.isclass(obj) and dataclasses.is_dataclass(obj) \
            and doc.startswith(f"{obj.__name__}("):
        return False
    if inspect.isclass(obj) and issubclass(obj, BaseException) and doc == BaseException.__doc__:
        return False
    return True


MODULES = build_api.public_modules()


def test_the_public_modules_are_found():
    for name in ("uet", "uet.state", "uet.state.db", "uet.state.patches", "uet.engine",
                 "uet.plan", "uet.config", "uet.compat", "uet.errors", "uet.cli"):
        assert name in MODULES
    assert not [m for m in MODULES if "._" in m]


@pytest.mark.parametrize("module_name", MODULES)
def test_every_public_name_has_a_docstring(module_name):
    assert undocumented(module_name) == []


def test_the_checker_sees_a_missing_docstring(tmp_path, monkeypatch):
    (tmp_path / "uet_doc_probe.py").write_text(
        '"""A module."""\nimport dataclasses\n\n'
        'def documented():\n    """Yes."""\n\n'
        'def bare():\n    pass\n\n'
        '@dataclasses.dataclass\nclass Record:\n    x: int\n\n'
        '    @property\n    def twice(self):\n        return 2 * self.x\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    assert undocumented("uet_doc_probe") == ["uet_doc_probe.bare", "uet_doc_probe.Record",
                                             "uet_doc_probe.Record.twice"]


def test_the_readme_command_builds_the_reference(tmp_path):
    index = build_api.build(tmp_path / "api")
    assert index.is_file()
    patches = (tmp_path / "api" / "uet" / "state" / "patches.html").read_text()
    assert "PatchLedger" in patches and "ValidationResult" in patches
    for page in ("uet/state/db.html", "uet/plan.html", "uet/config.html",
                 "uet/engine/orchestrator.html"):
        assert (tmp_path / "api" / page).is_file(), page
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert ".venv/bin/python docs/build_api.py" in readme

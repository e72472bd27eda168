"""The reliability suite (bench/reliability.py) in its quick mode: every check finds nothing
wrong with uet, and every check does find the bugs of the deliberately broken builds aimed
at it — a zero from a check never seen failing would prove nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from reliability_suite.common import POSTGRES_VAR, SUMMARY_KEYS
from reliability_suite.mutants import CAUGHT_BY
from reliability_suite.suite import CHECKS, run_check, run_isolated

SEED = 20261129
SCRIPT = str(Path(__file__).parent.parent / "bench" / "reliability.py")


@pytest.fixture(autouse=True)
def _postgresql_checks_use_the_test_server(request, monkeypatch):
    """The _pg checks (and their child processes) use the suite's PostgreSQL server."""
    check = request.node.callspec.params.get("check", "") if hasattr(request.node,
                                                                     "callspec") else ""
    if check.endswith("_pg"):
        monkeypatch.setenv(POSTGRES_VAR, request.getfixturevalue("postgres_server"))


@pytest.mark.parametrize("check", list(CHECKS))
def test_quick_check_finds_nothing_wrong(check):
    result = run_check(check, "quick", SEED)
    assert result.figures, "a check must measure something"
    bad = {f.name: f.value for f in result.figures if f.bad}
    assert bad == {}, result.details[:10]


@pytest.mark.parametrize("mutant,check", [(m, c) for m, checks in CAUGHT_BY.items()
                                          for c in checks])
def test_check_catches_its_broken_build(mutant, check):
    result = run_isolated(check, "quick", SEED, mutant)
    assert not any(f.name == "check crashed" for f in result.figures), result.figures
    assert any(f.bad for f in result.figures), (
        f"{check} reported nothing wrong with the {mutant} mutant: {result.figures}")


def test_every_check_has_a_mutant_aimed_at_it():
    aimed = {check for checks in CAUGHT_BY.values() for check in checks}
    assert aimed == set(CHECKS)


def test_the_command_prints_the_table_and_the_reliability_line():
    done = subprocess.run([sys.executable, SCRIPT, "--check", "disk", "--check", "stale"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert "6. disk trouble" in done.stdout and "5. stale work" in done.stdout
    assert lines[-1] == ("RELIABILITY " + " ".join(f"{k}=0" for k in SUMMARY_KEYS)
                         + " cases=0")


def test_the_command_exits_non_zero_when_a_figure_is_not_zero():
    done = subprocess.run([sys.executable, SCRIPT, "--check", "disk", "--mutant",
                           "raw_errors"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "<-- must be 0" in done.stdout
    last = done.stdout.splitlines()[-1]
    assert last.startswith("RELIABILITY ") and " untyped=0 " not in last

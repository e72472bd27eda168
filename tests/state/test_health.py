"""`uet doctor`'s verdict (uet.state.health): which facts of `Database.doctor()` are problems."""

from __future__ import annotations

import pytest

from uet.state import health

HEALTHY = {"integrity_check": ["ok"], "foreign_key_violations": 0, "journal_mode": "wal",
           "foreign_keys": True}


@pytest.mark.parametrize("journal_mode", ["wal", "memory"])
def test_a_healthy_ledger_has_no_problems(journal_mode):
    assert health.problems({**HEALTHY, "journal_mode": journal_mode}) == []


@pytest.mark.parametrize("change, says", [
    ({"integrity_check": ["row 3 missing from index x"]}, "integrity_check: row 3 missing"),
    ({"foreign_key_violations": 2}, "2 foreign key violations"),
    ({"journal_mode": "delete"}, "journal_mode is delete, not wal"),
    ({"foreign_keys": False}, "foreign keys are not enforced"),
])
def test_each_unhealthy_fact_is_one_problem(change, says):
    found = health.problems({**HEALTHY, **change})
    assert len(found) == 1 and found[0].startswith(says)


def test_a_long_integrity_report_is_cut_to_its_first_lines():
    lines = [f"problem {i}" for i in range(1000)]
    found = health.problems({**HEALTHY, "integrity_check": lines})
    assert found == ["integrity_check: " + "; ".join(lines[:5])]


def test_the_report_adds_the_verdict_to_the_facts(db):
    report = health.report(db.doctor())
    assert report["problems"] == [] and report["schema_version"] == db.schema_version()


def test_a_ledger_that_could_not_be_opened_is_its_one_problem():
    report = health.unopened_report("x.db", OSError("no such file"))
    assert report == {"database": "x.db", "problems": ["no such file"]}

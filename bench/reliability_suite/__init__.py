"""The reliability suite: checks that kill, race, fuzz, starve and interrupt a uet ledger and
count what went wrong. `python bench/reliability.py` runs it; tests/test_reliability.py runs
the quick mode of every check in the normal test suite.

Each check returns figures; every figure marked `zero` must be 0. `mutants.py` holds
deliberately broken builds of uet, and `--self-test` shows each check reporting non-zero
against the mutants aimed at it.
"""

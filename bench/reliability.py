"""The reliability suite: crash, race, fuzz, migration-interruption, stale-work, disk,
statement-boundary and lock-waiting checks of a uet ledger, with figures.

    python bench/reliability.py             # quick mode (what CI runs, about a minute)
    python bench/reliability.py --soak      # the long mode; figures for the README
    python bench/reliability.py --self-test # each check against deliberately broken builds

Ends with one line: RELIABILITY corrupt=0 lost=0 ... cases=N. Exits 1 if any figure that
must be 0 is not.
"""

import sys
from pathlib import Path

# this script's folder holds the suite's package
sys.path[0] = str(Path(__file__).resolve().parent)

from reliability_suite.suite import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

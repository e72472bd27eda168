"""Speed of the `uet` command line, measured as a user meets it: whole processes.

    .venv/bin/python bench/bench_cli.py [--quick]

1. `uet run -- true` against running `true` directly, alternating, median of N each: the
   overhead of recording a command (target: no more than 150 ms).
2. `uet runs` (newest 50, and filtered by project and state) on a ledger of 100,000 runs,
   median of N (target: well under a second).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_state import make_runs  # noqa: E402

UET = shutil.which("uet", path=os.path.dirname(sys.executable)) or "uet"


def wall(argv: list[str], cwd: str) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    # An editable install runs uet from its sources: compile them once, as pip does for an
    # installed package, so that no run pays for compiling (PYTHONDONTWRITEBYTECODE may be set).
    import compileall
    import uet
    compileall.compile_dir(os.path.dirname(uet.__file__), quiet=1)
    repeats = 5 if args.quick else 21
    true = shutil.which("true") or "true"
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run([UET, "init"], cwd=folder, check=True, stdout=subprocess.DEVNULL)
        direct, recorded = [], []
        for _ in range(repeats):
            direct.append(wall([true], folder))
            recorded.append(wall([UET, "run", "--", true], folder))
        d, r = statistics.median(direct), statistics.median(recorded)
        print(f"uet run -- true: {r * 1e3:.1f} ms   true: {d * 1e3:.1f} ms   "
              f"overhead {(r - d) * 1e3:.1f} ms (target <= 150 ms)")
        big = os.path.join(folder, "100k.db")
        make_runs(big, 100_000)
        newest = statistics.median(wall([UET, "runs", "--db", big, "--json"], folder)
                                   for _ in range(repeats))
        filtered = statistics.median(
            wall([UET, "runs", "--db", big, "--project", "project-3", "--state", "running"],
                 folder) for _ in range(repeats))
        print(f"uet runs on 100,000 runs: newest 50 as JSON {newest * 1e3:.0f} ms, filtered by "
              f"project and state as a table {filtered * 1e3:.0f} ms (target well under 1 s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

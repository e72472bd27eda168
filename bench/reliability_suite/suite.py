"""Running the checks and reporting: the table of figures and the RELIABILITY line."""

from __future__ import annotations

import argparse
import importlib
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from reliability_suite import mutants
from reliability_suite.common import MODES, SUMMARY_KEYS, Result, child_env

# check name -> module with run(mode, workdir, mutant, rng), in the order; the _pg
# checks run the same module on a PostgreSQL ledger (run(..., engine="postgresql"))
CHECKS = {
    "crash": "reliability_suite.crash",
    "races": "reliability_suite.races",
    "bad_input": "reliability_suite.bad_input",
    "migration": "reliability_suite.migration",
    "stale": "reliability_suite.stale",
    "disk": "reliability_suite.disk",
    "boundaries": "reliability_suite.boundaries",
    "waiting": "reliability_suite.waiting",
    "owners": "reliability_suite.owners",
    "crash_pg": "reliability_suite.crash",
    "races_pg": "reliability_suite.races",
    "owners_pg": "reliability_suite.owners",
    "engine": "reliability_suite.engine",
    "pool": "reliability_suite.pool",
}
TITLES = {
    "crash": "1. crash safety (random SIGKILL)",
    "races": "2. races (8 processes)",
    "bad_input": "3. bad input (property-based)",
    "migration": "4. interrupted migration",
    "stale": "5. stale work",
    "disk": "6. disk trouble",
    "boundaries": "7. every statement boundary",
    "waiting": "8. waiting, not failing",
    "owners": "9. owners killed (uet run)",
    "crash_pg": "1. crash safety on PostgreSQL (random SIGKILL of clients)",
    "races_pg": "2. races on PostgreSQL (8 processes)",
    "owners_pg": "9. owners through a PostgreSQL outage",
    "engine": "10. workstream runs killed and resumed (uet run, uet resume)",
    "pool": "11. worker pool killed and replaced (uet submit, uet worker)",
}


def run_check(name: str, mode_name: str, seed: int, mutant: str | None = None) -> Result:
    """One check in this process (with `mutant` applied here and in its children)."""
    module = importlib.import_module(CHECKS[name])
    rng = random.Random(f"{seed}-{name}")
    began = time.monotonic()
    engine = {"engine": "postgresql"} if name.endswith("_pg") else {}
    with tempfile.TemporaryDirectory(prefix=f"uet-reliability-{name}-") as workdir:
        result = module.run(MODES[mode_name], Path(workdir), mutant, rng, **engine)
    result.seconds = round(time.monotonic() - began, 1)
    return result


def run_isolated(name: str, mode_name: str, seed: int, mutant: str | None) -> Result:
    """One check in a fresh process, so that a mutant cannot leak into anything else."""
    script = Path(__file__).resolve().parent.parent / "reliability.py"
    command = [sys.executable, str(script), "--check", name, "--seed", str(seed), "--json",
               "--mode", mode_name]
    if mutant:
        command += ["--mutant", mutant]
    # the mutant is applied by the child itself, from --mutant
    done = subprocess.run(command, capture_output=True, text=True, env=child_env(None),
                          timeout=1800)
    try:
        return Result.from_json(json.loads(done.stdout.splitlines()[-1])[0])
    except (IndexError, ValueError, KeyError):
        # a check that crashed outright has certainly noticed something
        failed = Result(name)
        failed.add("check crashed", 1, "untyped", note=done.stderr.strip()[-300:])
        return failed


def summary(results: list[Result], cases: int) -> str:
    totals = dict.fromkeys(SUMMARY_KEYS, 0)
    for result in results:
        for figure in result.figures:
            if figure.key is not None:
                totals[figure.key] += int(figure.value)
    return ("RELIABILITY " + " ".join(f"{k}={v}" for k, v in totals.items())
            + f" cases={cases}")


def _fmt(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else f"{value:,}"


def table(results: list[Result]) -> str:
    lines = []
    width = 44
    for result in results:
        status = "FAIL" if result.failed else "ok"
        lines.append(f"{TITLES.get(result.check, result.check)}  [{status}, "
                     f"{result.seconds:g} s]")
        for f in result.figures:
            mark = "  <-- must be 0" if f.bad else ""
            note = f"  ({f.note})" if f.note else ""
            lines.append(f"    {f.name:<{width}} {_fmt(f.value):>10}{note}{mark}")
        for detail in result.details[:5]:
            lines.append(f"      ! {detail}")
    return "\n".join(lines)


def self_test(mode_name: str, seed: int, only: list[str]) -> int:
    """Run each mutant against the checks aimed at it; each must report non-zero."""
    print(f"self-test: {len(mutants.MUTANTS)} broken builds of uet, each against the checks "
          "that must catch it\n")
    missed = 0
    for name, caught_by in mutants.CAUGHT_BY.items():
        for check in caught_by:
            if only and check not in only:
                continue
            result = run_isolated(check, mode_name, seed, name)
            bad = [f"{f.name}={_fmt(f.value)}" for f in result.figures if f.bad]
            crashed = any(f.name == "check crashed" for f in result.figures)
            missed += crashed or not bad
            verdict = "CRASHED" if crashed else "caught" if bad else "MISSED"
            print(f"  {name:<22} vs {check:<11} {verdict:<7} {', '.join(bad)[:90]}",
                  flush=True)
    print(f"\nSELF-TEST mutants_missed={missed}")
    return 1 if missed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/reliability.py",
        description="Kill, race, fuzz and interrupt a uet ledger and count what went wrong.")
    parser.add_argument("--soak", action="store_true", help="the long mode (many rounds)")
    parser.add_argument("--mode", choices=sorted(MODES), help=argparse.SUPPRESS)
    parser.add_argument("--check", action="append", choices=list(CHECKS),
                        help="run only this check (repeatable)")
    parser.add_argument("--self-test", action="store_true",
                        help="run the checks against deliberately broken builds of uet")
    parser.add_argument("--mutant", choices=sorted(mutants.MUTANTS),
                        help="run against one broken build (what --self-test does)")
    parser.add_argument("--seed", type=int, default=20261129)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    mode_name = args.mode or ("soak" if args.soak else "quick")
    if args.self_test:
        return self_test(mode_name, args.seed, args.check or [])
    if args.mutant:
        mutants.apply(args.mutant)
    names = args.check or list(CHECKS)
    results = []
    for name in names:
        if not args.json:
            print(f"running {name} ({mode_name}) ...", file=sys.stderr, flush=True)
        results.append(run_check(name, mode_name, args.seed, args.mutant))
    if args.json:
        print(json.dumps([r.to_json() for r in results]))
        return 0
    cases = sum(int(f.value) for r in results for f in r.figures
                if f.name == "cases tried")
    print(table(results))
    print(summary(results, cases))
    return 1 if any(r.failed for r in results) else 0

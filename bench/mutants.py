"""Mutation smoke test of the ledger: does the test suite notice a one-line bug?

Run by hand from the repository root (never part of the test suite):

    .venv/bin/python bench/mutants.py                 # every mutant, targeted tests
    .venv/bin/python bench/mutants.py --baseline      # first prove the selection passes
    .venv/bin/python bench/mutants.py --only lone_surrogate claim_non_pending
    .venv/bin/python bench/mutants.py --full          # the whole suite per mutant (slow)
    .venv/bin/python bench/mutants.py --list          # the mutants, their edits and tests

For each mutant below, `src/` is copied to a temporary folder and one line of it is edited
(one line per engine's SQL file when the bug lives in SQL); pytest then runs on that copy
with PYTHONPATH=<copy>/src, which a first `import uet` in the same environment proves wins
over the editable install. The mutant is CAUGHT when pytest fails a test (exit code 1; a
test that hangs fails through pytest-timeout, and a run that outlives the wall-clock limit
counts as a hang too), MISSED when every test passes, and ERROR when the tool itself broke
(pytest exit codes 2-5, an edit whose original text is not in its file exactly once, the
copy not being the code imported). Exit status 1 unless every mutant was caught.

What it proves: each of these bugs makes at least one named test of today's suite fail,
so that test really guards the behaviour. A MISSED mutant is a hole in the suite. With
`--baseline` the same selection first has to pass on an unmutated copy, so that a failure
really comes from the bug and not from the tests or the machine.

The mutants edit source text in a copy; bench/reliability_suite/mutants.py is a separate
tool that patches code in-process for the reliability checks.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
STATE = "uet/state"  # the edits' paths are relative to src/

MACHINES = "tests/state/test_machines.py"
EVENTS = "tests/state/test_events.py"
CRUD = "tests/state/test_crud.py"
VALIDATION = "tests/state/test_validation.py"
WORKERS = "tests/state/test_workers.py"
CONCURRENCY = "tests/state/test_concurrency.py"
BAD_INPUT = "tests/state/test_bad_input_properties.py"
CLI = "tests/test_cli.py"
# check 11 of the reliability suite (bench/reliability_suite/pool.py) in its quick mode
POOL_CHECK = "tests/test_reliability.py::test_quick_check_finds_nothing_wrong[pool]"
LATE_COMMITS = "tests/state/test_late_commits.py"
WEB = "tests/web/test_web.py"

TEST_TIMEOUT_S = 120  # pytest-timeout, per test (setup, call and teardown together)
WALL_CLOCK_S = 900  # one mutant's whole pytest run, targeted selection
FULL_WALL_CLOCK_S = 3600  # the same with --full
INTERRUPT_GRACE_S = 60  # after SIGINT, time for pytest's teardown (it stops its PostgreSQL)


class EditDrift(Exception):
    """A mutant's original text is not in its file exactly once: the code moved."""


@dataclass(frozen=True)
class Edit:
    """Replace `old` by `new` in `path` (relative to src/). `old` may carry context lines
    to be unique; exactly one line differs between `old` and `new`."""

    path: str
    old: str
    new: str

    def __post_init__(self) -> None:
        old_lines, new_lines = self.old.split("\n"), self.new.split("\n")
        changed = [i for i, (a, b) in enumerate(zip(old_lines, new_lines)) if a != b]
        assert len(old_lines) == len(new_lines) and len(changed) == 1, (
            f"an edit of {self.path} must change exactly one line")

    @property
    def changed_line(self) -> tuple[str, str]:
        """The one line as it was and as the mutant has it."""
        for a, b in zip(self.old.split("\n"), self.new.split("\n")):
            if a != b:
                return a, b
        raise AssertionError("unreachable: checked in __post_init__")

    def mutate(self, text: str) -> str:
        """The file's text with the bug in; EditDrift unless `old` occurs exactly once."""
        count = text.count(self.old)
        if count != 1:
            raise EditDrift(f"{self.path}: the text to mutate occurs {count} times, not once "
                            f"(the code moved?): {self.changed_line[0].strip()!r}")
        return text.replace(self.old, self.new)

    def apply(self, src_root: Path) -> None:
        """Edit the file under `src_root` (EditDrift when the code moved)."""
        target = src_root / self.path
        target.write_text(self.mutate(target.read_text(encoding="utf-8")), encoding="utf-8")


@dataclass(frozen=True)
class Mutant:
    """One plausible bug: a short title (the table), what it breaks (--list), its edits
    (one logical bug) and the test files most likely to catch it, likeliest first."""

    name: str
    title: str
    bug: str
    edits: tuple[Edit, ...]
    tests: tuple[str, ...]


MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        "drop_event_insert",
        "run transition writes no run.state_changed",
        "A run's state changes but its `run.state_changed` event is never written (the "
        "state change and its event are no longer one write); step attempt events still are.",
        (Edit(f"{STATE}/transitions.py",
              "    if new_state is not None:\n"
              "        data: dict[str, Any] = {**named, \"from\": old_state, \"to\": new_state}",
              "    if new_state is not None and table is not RUNS:\n"
              "        data: dict[str, Any] = {**named, \"from\": old_state, \"to\": new_state}"),),
        (MACHINES, EVENTS, CRUD),
    ),
    Mutant(
        "skip_compare_and_set",
        "transition ignores expected= (no CAS)",
        "transition_run(..., expected=...) (and transition_step_attempt) no longer compare "
        "the stored state with `expected`: a caller that lost a race overwrites the winner. "
        "An unknown `expected` is still refused and a move to the current state too.",
        (Edit(f"{STATE}/transitions.py",
              "    if expected is not None and current[\"state\"] != expected:",
              "    if False:  # mutant: the compare-and-set check is gone"),),
        (MACHINES, CONCURRENCY, WORKERS, EVENTS),
    ),
    Mutant(
        "allow_self_transition",
        "a record may 'move' to its own state",
        "Every state machine accepts a transition to the state the record is already in "
        "(running -> running ...), the sign of two workers doing the same work, and "
        "writes a state_changed event for it.",
        (Edit(f"{STATE}/machines.py",
              "            raise DuplicateTransitionError(self.entity, entity_id, current)",
              "            return  # mutant: a move to the current state is allowed"),),
        (MACHINES, CONCURRENCY, WORKERS),
    ),
    Mutant(
        "claim_non_pending",
        "claim query picks runs in any state",
        "WorkerLifecycle.claim_run without a run_id takes the oldest run whatever its state "
        "(the claim query lost `state = 'pending'`, on both engines). The compare-and-set in "
        "change_row still refuses to move that run, so claiming raises instead of taking "
        "the oldest pending run or returning None.",
        (Edit(f"{STATE}/sql/queries.sql",  # the shared text, SQLite's (PostgreSQL overrides it)
              "-- name: oldest_pending_run\n"
              "SELECT run_id FROM runs WHERE state = 'pending' ORDER BY created_at, run_id "
              "LIMIT 1;",
              "-- name: oldest_pending_run\n"
              "SELECT run_id FROM runs ORDER BY created_at, run_id LIMIT 1;"),
         Edit(f"{STATE}/sql/postgresql/queries.sql",
              "SELECT run_id FROM runs WHERE state = 'pending' ORDER BY created_at, run_id "
              "LIMIT 1\n   FOR NO KEY UPDATE SKIP LOCKED;",
              "SELECT run_id FROM runs ORDER BY created_at, run_id LIMIT 1\n"
              "   FOR NO KEY UPDATE SKIP LOCKED;")),
        (WORKERS, CONCURRENCY),
    ),
    Mutant(
        "events_left_on_delete",
        "delete_run leaves the run's events behind",
        "delete_run removes the run and its step attempts but not its events: they go by "
        "the foreign key's ON DELETE CASCADE, which the migration (both engines) turned "
        "into SET NULL, so the events stay in the trail as orphans.",
        (Edit(f"{STATE}/sql/sqlite/migrations/0001_initial.sql",
              "    run_id      TEXT REFERENCES runs (run_id) ON DELETE CASCADE,",
              "    run_id      TEXT REFERENCES runs (run_id) ON DELETE SET NULL,"),
         Edit(f"{STATE}/sql/postgresql/migrations/0001_initial.sql",
              "    run_id      text COLLATE \"C\" REFERENCES runs (run_id) ON DELETE CASCADE,",
              "    run_id      text COLLATE \"C\" REFERENCES runs (run_id) ON DELETE SET NULL,")),
        (CRUD, EVENTS),
    ),
    Mutant(
        "lone_surrogate",
        "text with a lone surrogate is accepted",
        "Text validation measures values with the 'surrogatepass' error handler, so a "
        "value holding a lone surrogate (\"\\ud800\") is accepted instead of refused with "
        "a ValidationError; the driver then fails on it, or stores text no reader can "
        "encode.",
        (Edit(f"{STATE}/tables.py",
              "        size = len(value.encode(\"utf-8\"))",
              "        size = len(value.encode(\"utf-8\", \"surrogatepass\"))"),),
        (VALIDATION, BAD_INPUT, CRUD),
    ),
    Mutant(
        "leftover_survives",
        "uet run leaves the command's leftovers running",
        "When the command ends, `uet run` no longer stops what it left behind in its "
        "process group (a `sleep &` of a shell script keeps running, holding the output "
        "pipe).",
        (Edit("uet/engine/executor.py",
              "    if own_group:  # what the command left behind in its group goes with it",
              "    if False:  # mutant: what the command left behind keeps running"),),
        (CLI,),
    ),
    Mutant(
        "reaper_fails_queued",
        "the reaper fails queued runs instead of re-queueing them",
        "When a worker of the pool dies, the reaper fails the queued run it held even though "
        "its workstream says `resume: auto` and recoveries are left: no other worker "
        "resumes it.",
        (Edit(f"{STATE}/workers.py",
              "            if requeue:\n"
              "                redrive_run_row(tx, held_run, f\"re-queued: {reason}\",",
              "            if False:  # mutant: never re-queued\n"
              "                redrive_run_row(tx, held_run, f\"re-queued: {reason}\","),),
        (POOL_CHECK,),
    ),
    Mutant(
        "requeue_ignores_cap",
        "max_recoveries is ignored: a poison run loops",
        "`requeue_verdict` no longer compares a run's recoveries with its workstream's "
        "`max_recoveries`: a run whose tool kills every worker that takes it is re-queued "
        "forever instead of failed.",
        (Edit(f"{STATE}/workers.py",
              "    if run[\"recoveries\"] >= settings[\"max_recoveries\"]:",
              "    if False:  # mutant: max_recoveries is ignored"),),
        (POOL_CHECK,),
    ),
    Mutant(
        "pg_unmarked_seq",
        "a PostgreSQL event's seq is not marked in flight",
        "A writer takes its event's seq from the ledger's sequence but no longer marks it in "
        "flight until its transaction ends: a follower's horizon passes an event that "
        "commits late, and that event is never delivered.",
        (Edit(f"{STATE}/sql/postgresql/migrations/0004_concurrent_writers.sql",
              "        IF coalesce(current_setting('uet.in_flight', true), '') = '' THEN",
              "        IF false THEN  -- mutant: seqs are never marked in flight"),),
        (LATE_COMMITS,),
    ),
    Mutant(
        "web_no_autoescape",
        "the dashboard's templates stop escaping",
        "uet web renders ledger values into its pages without HTML escaping: a stored "
        "`<script>` or `onerror=` becomes markup on every page that shows it.",
        (Edit("uet/web/app.py", "loader=FileSystemLoader(str(HERE / \"templates\")), autoescape=True,",
              "loader=FileSystemLoader(str(HERE / \"templates\")), autoescape=False,"),),
        (WEB,),
    ),
    Mutant(
        "web_any_host",
        "the dashboard answers any Host header",
        "uet web no longer checks the Host header: a page of another site whose name was "
        "rebound to 127.0.0.1 (DNS rebinding) can read the ledger.",
        (Edit("uet/web/guard.py", "        if host is None or not (host in self.hosts",
              "        if False and not (host in self.hosts"),),
        (WEB,),
    ),
    Mutant(
        "plan_add_overwrites",
        "a plan patch's add replaces what exists",
        "uet plan apply lets an `add` silently overwrite an existing phase or workstream, as "
        "the framework's own script did.",
        (Edit("uet/plan/patching.py",
              "        if key in parent and not (name == \"move\" and op[\"from\"] == path):",
              "        if False:"),),
        ("tests/test_plan.py",),
    ),
)
BY_NAME = {m.name: m for m in MUTANTS}


@dataclass
class Outcome:
    """What one pytest run on one copy came to."""

    status: str  # "passed", "failed" (a test failed or hung), "error" (the tool broke)
    detail: str  # failing test id, or what broke
    tests_run: int | None = None
    seconds: float = 0.0
    reason: str = ""  # pytest's one-line reason for the first failure
    log_tail: str = ""


# -- running pytest on a copy ------------------------------------------------------------------

_SUMMARY = re.compile(r"^(FAILED|ERROR) (tests/.+?)(?: - (.*))?$", re.MULTILINE)
_SUMMARY_HEADER = "short test summary info"
_ERROR_LINE = re.compile(r"^E {3,}(\S.*)$", re.MULTILINE)  # pytest's first failure reason
_COUNT = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed)\b")
_FINAL = re.compile(r"^=*\s*.*\bin [\d.]+s\b.*$", re.MULTILINE)


def copy_src(source: Path, destination: Path) -> Path:
    """A copy of a src/ tree (without byte code); returns the new src folder."""
    shutil.copytree(source, destination, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return destination


def child_env(src_root: Path) -> dict[str, str]:
    """This process's environment with PYTHONPATH naming only the copy."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(src_root)
    return env


def imported_from(src_root: Path) -> str | None:
    """None when `import uet` in the child environment loads the copy, else why not."""
    try:
        result = subprocess.run([sys.executable, "-c", "import uet; print(uet.__file__)"],
                                cwd=ROOT, env=child_env(src_root), capture_output=True,
                                text=True, timeout=120, check=False)
    except subprocess.TimeoutExpired:
        return "`import uet` in the copy's environment took over 120 s"
    if result.returncode != 0:
        return f"`import uet` failed: {result.stderr.strip().splitlines()[-1:]}"
    loaded = Path(result.stdout.strip()).resolve()
    if not loaded.is_relative_to(src_root.resolve()):
        return f"PYTHONPATH lost: uet was imported from {loaded}, not from the copy"
    return None


def _interrupt(process: subprocess.Popen[bytes]) -> None:
    """Stop a pytest run we started (its own process group): SIGINT first, so that its
    teardown stops the PostgreSQL server it started, then SIGKILL to the group."""
    try:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=INTERRUPT_GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the leader still runs: the group is ours
        process.wait()
    except ProcessLookupError:
        process.wait()


def run_pytest(src_root: Path, tests: Sequence[str], log: Path, *, test_timeout: int,
               wall_clock: float) -> Outcome:
    """Run pytest on `tests` (paths under the repository) against the code in `src_root`."""
    started = time.monotonic()
    problem = imported_from(src_root)
    if problem:
        return Outcome("error", problem, seconds=time.monotonic() - started)
    command = [sys.executable, "-m", "pytest", *tests, "--no-cov", "-x", "-q",
               "-p", "no:cacheprovider", f"--timeout={test_timeout}", "-rfE"]
    hung = False
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=child_env(src_root), stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
        try:
            code = process.wait(timeout=wall_clock)
        except subprocess.TimeoutExpired:
            hung = True
            _interrupt(process)
            code = process.returncode
        except KeyboardInterrupt:
            _interrupt(process)
            raise
    seconds = time.monotonic() - started
    output = log.read_text(encoding="utf-8", errors="replace")
    tail = "\n".join(output.splitlines()[-40:])
    tests_run = _count(output)
    if hung:
        return Outcome("failed", f"hang (over the {wall_clock:.0f} s wall-clock limit)",
                       tests_run, seconds, log_tail=tail)
    if code == 0:
        return Outcome("passed", "", tests_run, seconds)
    if code == 1:
        found = _SUMMARY.search(output, max(output.rfind(_SUMMARY_HEADER), 0))
        if found:
            reason = found.group(3) or next(iter(_ERROR_LINE.findall(output)), "")
            return Outcome("failed", found.group(2).strip(), tests_run, seconds,
                           reason=reason.strip(), log_tail=tail)
        return Outcome("failed", "exit code 1 (no failing test id in the output)",
                       tests_run, seconds, log_tail=tail)
    what = {2: "interrupted or collection error", 3: "internal error", 4: "usage error",
            5: "no tests collected"}.get(code, "killed" if code < 0 else "unexpected")
    return Outcome("error", f"pytest exit code {code} ({what})", tests_run, seconds,
                   log_tail=tail)


def _count(output: str) -> int | None:
    """How many tests ran, from pytest's final line (None when it printed none)."""
    finals = _FINAL.findall(output)
    if not finals:
        return None
    return sum(int(n) for n, _ in _COUNT.findall(finals[-1]))


# -- the tool ----------------------------------------------------------------------------------

def selection(mutants: Iterable[Mutant], full: bool) -> list[str]:
    """The test paths for these mutants together (in first-seen order), or the suite."""
    if full:
        return ["tests"]
    chosen: list[str] = []
    for mutant in mutants:
        for test in mutant.tests:
            if test not in chosen:
                chosen.append(test)
    return chosen


def run_mutant(mutant: Mutant, pristine: Path, work: Path, args: argparse.Namespace,
               wall_clock: float) -> Outcome:
    src_root = copy_src(pristine, work / mutant.name / "src")
    try:
        for edit in mutant.edits:
            edit.apply(src_root)
    except EditDrift as exc:
        return Outcome("error", f"edit: {exc}")
    outcome = run_pytest(src_root, selection([mutant], args.full), work / f"{mutant.name}.log",
                         test_timeout=args.timeout, wall_clock=wall_clock)
    if not args.keep:
        shutil.rmtree(work / mutant.name, ignore_errors=True)
    return outcome


def result_text(outcome: Outcome) -> str:
    if outcome.status == "failed":
        return f"caught by {outcome.detail}"
    if outcome.status == "passed":
        return "MISSED"
    return f"ERROR: {outcome.detail}"


def print_table(rows: list[tuple[str, str, str, str, str]]) -> None:
    header = ("mutant", "description", "tests run", "result", "seconds")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        cells = [row[i].ljust(widths[i]) if i in (0, 1, 3) else row[i].rjust(widths[i])
                 for i in range(5)]
        print("  ".join(cells).rstrip(), flush=True)


def list_mutants(mutants: Sequence[Mutant]) -> None:
    """Each mutant, its edits (checked against today's src/) and its test selection."""
    for mutant in mutants:
        print(f"{mutant.name}: {mutant.title}")
        print(f"    {mutant.bug}")
        for edit in mutant.edits:
            try:
                edit.mutate((SRC / edit.path).read_text(encoding="utf-8"))
                state = "applies"
            except EditDrift as exc:
                state = f"DRIFT: {exc}"
            before, after = edit.changed_line
            print(f"    {edit.path} [{state}]\n      - {before.strip()}\n      + {after.strip()}")
        print(f"    tests: {' '.join(mutant.tests)}\n")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Mutation smoke test: apply one-line bugs to a copy of src/ and check "
                    "that the tests catch each one.")
    parser.add_argument("--full", action="store_true",
                        help="run the whole test suite per mutant (slow)")
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=list(BY_NAME),
                        help="run only these mutants")
    parser.add_argument("--list", action="store_true",
                        help="show the mutants, their edits and test selections, then stop")
    parser.add_argument("--baseline", action="store_true",
                        help="first require the same selection to pass on an unmutated copy")
    parser.add_argument("--timeout", type=int, default=TEST_TIMEOUT_S, metavar="S",
                        help=f"pytest-timeout per test (default {TEST_TIMEOUT_S})")
    parser.add_argument("--wall-clock", type=float, default=None, metavar="S",
                        help=f"limit of one pytest run (default {WALL_CLOCK_S}, "
                             f"{FULL_WALL_CLOCK_S} with --full)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary copies and pytest logs (path printed)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    mutants = [BY_NAME[name] for name in dict.fromkeys(args.only)] if args.only else MUTANTS
    if args.list:
        list_mutants(mutants)
        return 0
    wall_clock = args.wall_clock or (FULL_WALL_CLOCK_S if args.full else WALL_CLOCK_S)
    work = Path(tempfile.mkdtemp(prefix="uet-mutants-"))
    try:
        # one snapshot of src/ for the whole run: others may be editing the real one
        pristine = copy_src(SRC, work / "pristine" / "src")
        if args.baseline:
            tests = selection(mutants, args.full)
            print(f"baseline: {' '.join(tests)} on an unmutated copy ...", flush=True)
            base = run_pytest(pristine, tests, work / "baseline.log", test_timeout=args.timeout,
                              wall_clock=wall_clock)
            if base.status != "passed":
                print(f"BASELINE FAILED ({base.status}): {base.detail} {base.reason}")
                print(base.log_tail)
                print("no mutant was run: each counts as an error")
                print(f"MUTANTS caught=0 missed=0 errors={len(mutants)}")
                return 1
            print(f"baseline: passed, {base.tests_run} tests, {base.seconds:.1f} s", flush=True)
        rows: list[tuple[str, str, str, str, str]] = []
        outcomes: list[tuple[Mutant, Outcome]] = []
        for mutant in mutants:
            print(f"{mutant.name} ...", flush=True)
            outcome = run_mutant(mutant, pristine, work, args, wall_clock)
            outcomes.append((mutant, outcome))
            rows.append((mutant.name, mutant.title,
                         "-" if outcome.tests_run is None else str(outcome.tests_run),
                         result_text(outcome), f"{outcome.seconds:.1f}"))
        print()
        print_table(rows)
        for mutant, outcome in outcomes:
            if outcome.status == "failed" and outcome.reason:
                print(f"{mutant.name}: {outcome.reason[:200]}")
            elif outcome.status == "error" and outcome.log_tail:
                print(f"{mutant.name}: pytest output ends with\n{outcome.log_tail}")
        caught = sum(o.status == "failed" for _, o in outcomes)
        missed = sum(o.status == "passed" for _, o in outcomes)
        errors = sum(o.status == "error" for _, o in outcomes)
        if args.keep:
            print(f"copies and logs kept in {work}")
        print(f"MUTANTS caught={caught} missed={missed} errors={errors}")
        return 0 if missed == errors == 0 else 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

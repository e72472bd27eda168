"""The orchestrator's own cost per task: a chain of 20 tasks run by `run_workstream` against a
plain shell script doing the same git operations, side by side; ledger and git shares."""

from __future__ import annotations

import argparse
import collections
import cProfile
import io
import json
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from uet.engine import git as uet_git
from uet.engine import orchestrator as uet_orchestrator
from uet.engine.bus import EventBus
from uet.engine.orchestrator import Orchestrator, run_workstream
from uet.engine.workstream import Workstream, load_workstream
from uet.state import GateLedger, PatchLedger, init_db
from uet.state import db as uet_db
from uet.state.recovery import Owner

USAGE = """\
    .venv/bin/python bench/bench_engine.py [--quick] [--tasks N] [--rounds N] [--profile]

The workstream: TASKS tasks in a chain (task k depends on task k-1, so the order is fixed
and every attempt starts from the head its predecessor committed), each task's tool
`sh -c 'echo x > f_<task_id>'` (one new one-line file), two gates `true` -> `true` (the
second depends on the first; the absolute path of `true`, so that the shell runs the same
program and not its builtin). uet: `run_workstream` on a fresh repository and a fresh
ledger file (durability normal), parallel 1, timed from the call to its return. Shell: one
`sh` script on a fresh repository of its own doing, per task, what the flow does in git:
rev-parse of the branch head, `worktree add --detach` at it, the same tool command in it,
`git add -A` + `git diff --cached --binary`, `git apply --check` then
`git apply --3way --index` in an integration worktree on a branch, the same two gates
there, `git commit`, `worktree remove`; plus the branch and the integration worktree made
once and removed at the end, as uet does. Per task = time of the whole run / TASKS.
Rounds alternate which contender goes first; medians. Target: uet/shell <= 1.5x.

Then one more uet run, instrumented (not in the medians): wall time inside the ledger
(every public method of Database, PatchLedger, GateLedger, EventBus and Owner, the
atomic() blocks' BEGIN/COMMIT, recover and cancel_requested; outermost call only), inside
git calls (`uet.engine.git.run_git`), inside tool and gate processes
(`uet.engine.orchestrator.run_process`), and the rest (the orchestrator's own Python),
each as a share of that run's time; git calls per task by subcommand. And the price of one
process: `run_process(["true"])` vs `subprocess.run(["true"])`. With --profile, or when the
ratio misses its target, a cProfile of one more run across its threads.
"""

TASKS = 20
TARGET = 1.5
IDENTITY = ("-c", "user.name=bench", "-c", "user.email=bench@localhost")

SHELL_FLOW = r"""
set -eu
repo=$1; tasks=$2; gate=$3
root=$repo/.git/bench-worktrees
integration=$root/integration
mkdir -p "$root"
git -C "$repo" branch bench HEAD
git -C "$repo" worktree add --quiet "$integration" bench
i=0
while [ "$i" -lt "$tasks" ]; do
  task=T$(printf %03d "$i")
  head=$(git -C "$repo" rev-parse --verify refs/heads/bench)
  attempt=$root/attempt-$task
  git -C "$repo" worktree add --detach --quiet "$attempt" "$head"
  cd "$attempt"
  sh -c "echo x > f_$task"
  git add -A
  git diff --cached --binary "$head" > "$root/patch"
  cd "$integration"
  git apply --check "$root/patch"
  git apply --3way --index "$root/patch"
  "$gate"
  "$gate"
  git commit --quiet --no-verify -m "task $task"
  cd "$repo"
  git worktree remove --force "$attempt"
  i=$((i + 1))
done
git worktree remove --force "$integration"
"""


# -- the two contenders -------------------------------------------------------------------

def make_repo(path: str) -> str:
    """A fresh repository with one commit on main and an identity for `git commit`."""
    os.makedirs(path)
    for args in (["init", "--quiet", "-b", "main"],
                 ["config", "user.name", "bench"], ["config", "user.email", "bench@localhost"]):
        subprocess.run(["git", "-C", path, *args], check=True, capture_output=True)
    with open(os.path.join(path, "README"), "w", encoding="utf-8") as f:
        f.write("bench\n")
    subprocess.run(["git", "-C", path, "add", "-A"], check=True, capture_output=True)
    subprocess.run(["git", "-C", path, *IDENTITY, "commit", "--quiet", "-m", "initial"],
                   check=True, capture_output=True)
    return path


def commits_on(repo: str, branch: str) -> int:
    out = subprocess.run(["git", "-C", repo, "rev-list", "--count", f"main..{branch}"],
                         check=True, capture_output=True, text=True).stdout
    return int(out)


def workstream_for(repo: str, folder: str, tasks: int, true: str) -> Workstream:
    data = {
        "workstream_id": "WS-BENCH", "project_id": "bench", "phase_id": "PH-1", "repo": repo,
        "tools": {"writer": {"command": ["sh", "-c", "echo x > f_{task_id}"]}},
        "tasks": [{"task_id": f"T{i:03d}", "tool": "writer",
                   **({"depends_on": [f"T{i - 1:03d}"]} if i else {})} for i in range(tasks)],
        "gates": [{"name": "lint", "type": "LINT", "command": [true]},
                  {"name": "unit", "type": "UNIT", "command": [true], "depends_on": ["lint"]}]}
    path = os.path.join(folder, "workstream.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)
    return load_workstream(path)


class Arena:
    """Fresh repositories and ledgers in one folder, one per run of a contender."""

    def __init__(self, folder: str, tasks: int) -> None:
        self.folder, self.tasks, self.count = folder, tasks, 0
        self.true = shutil.which("true") or "/bin/true"
        self.script = os.path.join(folder, "flow.sh")
        with open(self.script, "w", encoding="utf-8") as f:
            f.write(SHELL_FLOW)

    def _fresh(self, kind: str) -> str:
        self.count += 1
        run_folder = os.path.join(self.folder, f"{self.count:03d}-{kind}")
        os.makedirs(run_folder)
        return run_folder

    def uet(self) -> float:
        """One run of the workstream by uet; seconds per task."""
        folder = self._fresh("uet")
        repo = make_repo(os.path.join(folder, "repo"))
        workstream = workstream_for(repo, folder, self.tasks, self.true)
        db = init_db(os.path.join(folder, "ledger.db"))
        try:
            start = time.perf_counter()
            result = run_workstream(db, workstream, handle_signals=False)
            elapsed = time.perf_counter() - start
        finally:
            db.close()
        if result.state != "succeeded" or commits_on(repo, result.branch) != self.tasks:
            raise SystemExit(f"uet's run did not commit every task: {result.state} "
                             f"{result.error}")
        shutil.rmtree(folder)
        return elapsed / self.tasks

    def shell(self) -> float:
        """One run of the shell script; seconds per task."""
        folder = self._fresh("shell")
        repo = make_repo(os.path.join(folder, "repo"))
        start = time.perf_counter()
        done = subprocess.run(["sh", self.script, repo, str(self.tasks), self.true],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        elapsed = time.perf_counter() - start
        if done.returncode != 0 or commits_on(repo, "bench") != self.tasks:
            raise SystemExit(f"the shell flow failed ({done.returncode}): "
                             f"{done.stderr.decode(errors='replace')[-500:]}")
        shutil.rmtree(folder)
        return elapsed / self.tasks


def alternate(arena: Arena, rounds: int) -> tuple[float, float, list[float]]:
    """Median seconds per task of uet and of the shell, and each round's ratio."""
    uet, shell, ratios = [], [], []
    for i in range(rounds):
        if i % 2:
            s = arena.shell()
            u = arena.uet()
        else:
            u = arena.uet()
            s = arena.shell()
        uet.append(u)
        shell.append(s)
        ratios.append(u / s)
    return statistics.median(uet), statistics.median(shell), ratios


# -- where uet's time goes ----------------------------------------------------------------

class Meter:
    """Wall time and calls per category, counting only the outermost metered call of a
    thread (a ledger method calling another is counted once)."""

    def __init__(self) -> None:
        self.seconds: collections.Counter[str] = collections.Counter()
        self.calls: collections.Counter[str] = collections.Counter()
        self.git_args: collections.Counter[str] = collections.Counter()
        self.git_setup = 0          # git calls outside the tasks' threads (run set-up, end)
        self._local = threading.local()
        self._lock = threading.Lock()

    def wrap(self, category: str, function: Callable[..., Any]) -> Callable[..., Any]:
        meter = self

        def metered(*args: Any, **kwargs: Any) -> Any:
            local = meter._local
            if getattr(local, "busy", False):
                return function(*args, **kwargs)
            local.busy = True
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                local.busy = False
                with meter._lock:
                    meter.seconds[category] += elapsed
                    meter.calls[category] += 1
                    if category == "git":
                        meter._count_git(args, kwargs)
        metered.__wrapped__ = function  # type: ignore[attr-defined]
        return metered

    def _count_git(self, args: tuple, kwargs: dict) -> None:
        if not threading.current_thread().name.startswith("uet-task"):
            self.git_setup += 1
            return
        git_args = list(args[1] if len(args) > 1 else kwargs.get("args", ()))
        name = " ".join(git_args[:2] if git_args[:1] == ["worktree"] else git_args[:1])
        self.git_args[name] += 1


LEDGER_CLASSES = (uet_db.Database, PatchLedger, GateLedger, EventBus, Owner)


@contextmanager
def metered(meter: Meter) -> Iterator[None]:
    """Patch the ledger's, git's and the processes' entry points with meters; restore."""
    saved: list[tuple[object, str, Any]] = []

    def patch(owner: object, name: str, category: str) -> None:
        original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        saved.append((owner, name, original))
        setattr(owner, name, meter.wrap(category, original))

    for cls in LEDGER_CLASSES:
        for name, value in list(vars(cls).items()):
            if callable(value) and not name.startswith("_") and not isinstance(
                    value, (staticmethod, classmethod, type)):
                patch(cls, name, "ledger")
    patch(uet_db._Atomic, "__enter__", "ledger")
    patch(uet_db._Atomic, "__exit__", "ledger")
    patch(uet_orchestrator, "recover", "ledger")
    patch(uet_orchestrator, "cancel_requested", "ledger")
    patch(uet_git, "run_git", "git")
    patch(uet_orchestrator, "run_process", "processes")
    try:
        yield
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)


def breakdown(arena: Arena) -> tuple[float, Meter]:
    meter = Meter()
    with metered(meter):
        per_task = arena.uet()
    return per_task, meter


def process_price(repeats: int) -> tuple[float, float, int]:
    """Mean seconds of one `true` through uet's run_process and through subprocess.run, and
    how many of the run_process calls took over 25 ms (a `true` that is still running at
    the first check waits a whole poll interval: the figure is bimodal, hence the mean)."""
    true = shutil.which("true") or "/bin/true"
    env = dict(os.environ)
    cwd = tempfile.gettempdir()
    uet, plain = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        uet_orchestrator.run_process([true], cwd=cwd, env=env, timeout=60,
                                     stopped=lambda: False)
        uet.append(time.perf_counter() - start)
        start = time.perf_counter()
        subprocess.run([true], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        plain.append(time.perf_counter() - start)
    return statistics.mean(uet), statistics.mean(plain), sum(t > 0.025 for t in uet)


def profile(arena: Arena, top: int) -> str:
    """cProfile of one uet run: every task's thread, merged (the main thread only sets the
    run up, waits for the tasks and ends it: its wait would count the tasks' time twice)."""
    profiles: list[cProfile.Profile] = []
    original = Orchestrator._run_task

    def profiled_task(self: Orchestrator, task: Any) -> None:
        profiler = cProfile.Profile()
        profiles.append(profiler)
        profiler.enable()
        try:
            original(self, task)
        finally:
            profiler.disable()

    Orchestrator._run_task = profiled_task  # type: ignore[method-assign]
    try:
        arena.uet()
    finally:
        Orchestrator._run_task = original  # type: ignore[method-assign]
    text = io.StringIO()
    stats = pstats.Stats(profiles[0], stream=text)
    for other in profiles[1:]:
        stats.add(other)
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    # the same, by cumulative time, uet's own functions only: which step pays for the above
    stats.sort_stats("cumulative").print_stats(r"orchestrator\.py|git\.py|db\.py|patches\.py|"
                                               r"gates\.py|bus\.py", top)
    return text.getvalue()


# -- the report -----------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog=USAGE,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5 tasks, 3 rounds (a smoke run)")
    parser.add_argument("--tasks", type=int, help=f"tasks in the chain (default {TASKS})")
    parser.add_argument("--rounds", type=int, help="rounds (default 9; --quick 3)")
    parser.add_argument("--profile", action="store_true",
                        help="print the cProfile even when the ratio meets its target")
    args = parser.parse_args()
    tasks = args.tasks or (5 if args.quick else TASKS)
    rounds = args.rounds or (3 if args.quick else 9)
    git_version = subprocess.run(["git", "--version"], capture_output=True,
                                 text=True).stdout.split()[-1]
    print(f"python {sys.version.split()[0]}, git {git_version}, {os.cpu_count()} cpus; "
          f"{tasks} tasks in a chain, tool sh -c 'echo x > f_<task>', gates true -> true")
    with tempfile.TemporaryDirectory(prefix="uet-bench-engine-") as folder:
        arena = Arena(folder, tasks)
        arena.uet()     # warm: imports, the schema's statements, git's and sh's pages
        arena.shell()
        uet, shell, ratios = alternate(arena, rounds)
        ratio = uet / shell
        print(f"engine: uet_per_task_ms={uet * 1e3:.1f} shell_per_task_ms={shell * 1e3:.1f} "
              f"ratio={ratio:.2f}x (rounds {min(ratios):.2f}-{max(ratios):.2f}x; median of "
              f"{rounds}; target <= {TARGET}x)")

        per_task, meter = breakdown(arena)
        total = per_task * tasks
        rest = total - sum(meter.seconds.values())
        shares = {name: meter.seconds[name] for name in ("ledger", "git", "processes")}
        print(f"\none instrumented uet run: {per_task * 1e3:.1f} ms a task, of which")
        for name, what in (("ledger", "the ledger (SQLite, its Python)"),
                           ("git", "git calls (run_git)"),
                           ("processes", "the tool and gate processes (run_process)")):
            print(f"  {what:<44} {shares[name] / tasks * 1e3:7.1f} ms "
                  f"{shares[name] / total:6.1%}  ({meter.calls[name] / tasks:.2f} calls a task)")
        print(f"  {'the rest (the orchestrator itself)':<44} {rest / tasks * 1e3:7.1f} ms "
              f"{rest / total:6.1%}")
        print(f"engine-shares: ledger={shares['ledger'] / total:.1%} "
              f"git={shares['git'] / total:.1%} processes={shares['processes'] / total:.1%} "
              f"rest={rest / total:.1%}")
        in_tasks = sum(meter.git_args.values())
        print(f"git calls: {in_tasks / tasks:.2f} a task (the shell makes 8) + "
              f"{meter.git_setup} for the run; a task's by subcommand: " + ", ".join(
                  f"{name} {count / tasks:.2f}" for name, count in meter.git_args.most_common()))
        repeats = 10 if args.quick else 40
        with_uet, plain, slow = process_price(repeats)
        print(f"one process (`true`), mean of {repeats}: run_process {with_uet * 1e3:.1f} ms "
              f"({slow} over 25 ms) vs subprocess.run {plain * 1e3:.1f} ms (uet runs 3 a "
              "task: the tool and two gates)")
        if args.profile or ratio > TARGET:
            print((f"\nratio above {TARGET}x: " if ratio > TARGET else "\n")
                  + "cProfile of one more uet run (its tasks' threads), by own time")
            print(profile(arena, 18 if not args.quick else 10))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

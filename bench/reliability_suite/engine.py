"""Check 10: a workstream run killed at any instant, and resumed (killed again, resumed
again) until it ends, does nothing twice and loses nothing.

Each scenario runs a workstream of six tasks in a fresh git repository with
`python -m uet run --db LEDGER WS.json` (a real subprocess): a chain T1 → T2 → T3, three
independent tasks, one of which (T5) fails gate `unit` on its first attempt and succeeds on
the retry that gets the gate's output; two gates, `unit` depending on `lint`. The tool is
examples/tools/stand_in_editor.py. Every task *appends* to its own file, so a task run again
on a branch that already holds its commit makes a new, non-empty change that the gates pass:
work done twice shows up as a second commit, never hides as an empty change.

The process is SIGKILLed at a seeded instant, then `python -m uet resume --db LEDGER RUN` —
itself killed at another instant, up to a few times — until a resume is let finish. Instants
are aimed so that every phase is hit: any instant of the run (its start included), just
after the run row appears (before its branch exists), during a tool, during a gate, and
between the git commit and the ledger write. To widen windows the tool and the gates sleep a
little, and `git` is a wrapper (first on PATH) that sleeps after the `update-ref` that moves
the branch to a new commit, before uet can record it. What was under way at the kill is read
afterwards from the ledger and the branch (the phases hit).

Figures that must be 0, per scenario once the last resume ended:
- dup_commits: commits of the branch that repeat an earlier one — the same `Uet-Entry`
  trailer, or the same task (each task touches only its own file);
- tasks_lost: tasks without a commit on the branch (every task can succeed: each has more
  attempts than crashes can take), and runs that did not end succeeded;
- not_terminal: runs left pending or running after the last resume, and step attempts or
  patch entries it left in flight;
- ledger_git_mismatch: entries the ledger calls committed versus the trailers on the branch
  (each one on one side only), and commits without a trailer;
- uet commands that ended with a traceback.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from reliability_suite.common import PROGRAMS, Mode, Result, child_env, connect_raw

REPO_ROOT = Path(__file__).resolve().parents[2]
EDITOR = str(REPO_ROOT / "examples" / "tools" / "stand_in_editor.py")

# per mode: scenarios (fresh repository and ledger each), crashes planned per scenario
PARAMS = {"quick": {"scenarios": 6, "crashes": (2, 3)},
          "soak": {"scenarios": 80, "crashes": (2, 5)}}
TOOL_SLEEP_S, GATE_SLEEP_S, COMMIT_SLEEP_S, GIT_SLEEP_S = 0.12, 0.06, 0.15, 0.03
PROCESS_TIMEOUT_S = 180

TASKS = (  # task id, the one file it touches, prompt, depends_on
    ("T1", "src/one.py", "append src/one.py\nONE = 1", ()),
    ("T2", "src/two.py", "append src/two.py\nTWO = 2", ("T1",)),
    ("T3", "src/three.py", "append src/three.py\nTHREE = 3", ("T2",)),
    ("T4", "src/four.py", "append src/four.py\nFOUR = 4", ()),
    ("T5", "src/five.py", "first append src/five.py\nFIVE = 'BROKEN'\n%%\n"
                          "retry append src/five.py\nFIVE = 5", ()),
    ("T6", "src/six.py", "append src/six.py\nSIX = 6", ()),
)
TASK_OF_FILE = {path: task for task, path, _, _ in TASKS}
TERMINAL = ("succeeded", "failed", "canceled")
IN_FLIGHT_ENTRY = ("created", "validated", "queued", "applied", "verified")

# what was under way when the process was killed, read afterwards from the ledger and git
PHASES = ("before the run existed", "starting the run (no task begun)",
          "resume, before the re-drive", "during a tool (or capturing its change)",
          "validating or applying a patch", "during a gate",
          "between the gates and the git commit", "between the git commit and the ledger write",
          "between tasks", "after the run ended")

# the tool and the gates: log their start and end (with the pid of the uet process that
# started them), sleep a little, then do their work
ACTOR = '''\
import importlib.util, os, pathlib, sys, time
events, kind, name, delay, *rest = sys.argv[1:]
def log(what):
    with open(events, "a") as f:
        f.write(f"{kind}-{what} {os.getppid()} {name}\\n")
log("start")
time.sleep(float(delay))
if kind == "tool":
    spec = importlib.util.spec_from_file_location("stand_in_editor", rest[0])
    editor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(editor)
    code = editor.main(rest)
else:
    word = {"lint": "TODO", "unit": "BROKEN"}[name]
    bad = [str(p) for p in pathlib.Path("src").rglob("*.py") if word in p.read_text()]
    print(name + ":", bad or "clean")
    code = 3 if bad else 0
log("end")
sys.exit(code)
'''

# git, first on uet's PATH: it logs and sleeps a little before `git apply` (validation and
# apply) and `git commit-tree` (the entry verified, the branch not yet moved), and after the
# update-ref that moves the run's branch to a new commit (before uet can record it)
GIT_WRAPPER = '''\
#!/bin/sh
case " $* " in
  *" update-ref -m uet: commit "*)
    "{git}" "$@"
    code=$?
    if [ $code -eq 0 ]; then
      echo "commit-start $PPID -" >> "{events}"
      sleep {commit}
    fi
    exit $code ;;
  *" commit-tree "*) echo "precommit-start $PPID -" >> "{events}"; sleep {short} ;;
  *" apply "*) echo "apply-start $PPID -" >> "{events}"; sleep {short} ;;
esac
exec "{git}" "$@"
'''


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout


def _setup(workdir: Path, number: int) -> tuple[Path, Path, Path, Path]:
    """A fresh repository, the workstream file, the ledger's path and the events log."""
    base = workdir / f"s{number}"
    repo = base / "repo"
    (repo / "src").mkdir(parents=True)
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "config", "user.name", "Reliability")
    _git(repo, "config", "user.email", "reliability@example.invalid")
    (repo / "src" / "app.py").write_text("VALUE = 1\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "initial")
    events = base / "events.log"
    events.touch()
    actor = base / "actor.py"
    actor.write_text(ACTOR)

    def act(kind: str, name: str, delay: float, *rest: str) -> list[str]:
        return [sys.executable, str(actor), str(events), kind, name, f"{delay:g}", *rest]

    ws = {
        "workstream_id": "WS-RELIABILITY", "project_id": "reliability", "phase_id": "PH",
        "repo": str(repo),
        "files_scope": {"modify": ["src/**"], "create": ["src/**"]},
        "tools": {"editor": {"command": act("tool", "{task_id}", TOOL_SLEEP_S, EDITOR,
                                            "{prompt_file}", "{feedback_file}"),
                             "timeout_seconds": 60}},
        # more attempts than crashes can take (and T5's gate failure): every task can succeed
        "tasks": [{"task_id": task, "tool": "editor", "prompt": prompt,
                   "depends_on": list(deps), "max_attempts": 12}
                  for task, _, prompt, deps in TASKS],
        "gates": [{"name": "lint", "type": "LINT", "command": act("gate", "lint", GATE_SLEEP_S)},
                  {"name": "unit", "type": "UNIT", "command": act("gate", "unit", GATE_SLEEP_S),
                   "depends_on": ["lint"]}],
    }
    path = base / "ws.json"
    path.write_text(json.dumps(ws))
    bin_dir = base / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "git"
    wrapper.write_text(GIT_WRAPPER.format(git=shutil.which("git"), events=events,
                                          commit=f"{COMMIT_SLEEP_S:g}",
                                          short=f"{GIT_SLEEP_S:g}"))
    wrapper.chmod(0o755)
    return repo, path, base / "ledger.db", events


# -- reading the ledger and the branch ------------------------------------------------------

def _query(ledger: Path, sql: str, params: tuple = ()) -> list[tuple]:
    if not ledger.exists():
        return []
    conn = connect_raw(str(ledger))
    try:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'runs'").fetchone() is None:
            return []
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def _run_row(ledger: Path) -> tuple[str, str, dict] | None:
    rows = _query(ledger, "SELECT run_id, state, metadata FROM runs ORDER BY created_at")
    if not rows:
        return None
    run_id, state, meta = rows[-1]
    return run_id, state, json.loads(meta or "{}")


def _branch_commits(repo: Path, base: str, branch: str) -> list[tuple[str, list[str], set]]:
    """(sha, Uet-Entry trailers, files touched) of each commit of the branch after base,
    oldest first."""
    if subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "-q",
                       f"refs/heads/{branch}"], capture_output=True).returncode != 0:
        return []
    out = _git(repo, "log", "--reverse", "--name-only",
               "--format=%x1e%H%x1f%(trailers:key=Uet-Entry,valueonly,separator=%x1f)",
               f"{base}..refs/heads/{branch}", "--")
    commits = []
    for record in filter(None, out.split("\x1e")):
        head, _, files = record.partition("\n")
        sha, *trailers = head.split("\x1f")
        commits.append((sha, [t.strip() for t in trailers if t.strip()],
                        {f for f in files.split("\n") if f.strip()}))
    return commits


def _entries(ledger: Path, run_id: str) -> dict[str, tuple[str, str | None]]:
    """{ledger id: (state, step attempt)} of the run's patch entries."""
    rows = _query(ledger, "SELECT e.ledger_id, e.state, p.step_attempt_id "
                  "FROM patch_ledger_entries AS e JOIN patches AS p USING (patch_id) "
                  "WHERE p.run_id = ?", (run_id,))
    return {ledger_id: (state, step) for ledger_id, state, step in rows}


def _phase(ledger: Path, repo: Path, before: tuple | None) -> str:
    """What the killed process was doing, read from the ledger and the branch."""
    found = _run_row(ledger)
    if found is None:
        return PHASES[0]
    run_id, state, meta = found
    if before is not None and _changes(ledger, run_id) == before:
        return PHASES[2]  # a resume killed before it re-drove the run
    if state in TERMINAL:
        return PHASES[9]
    branch, base = meta.get("branch"), meta.get("base")
    if not branch or not base or not _branch_commits_possible(repo, branch) or not _query(
            ledger, "SELECT 1 FROM step_attempts WHERE run_id = ?", (run_id,)):
        return PHASES[1]
    entries = _entries(ledger, run_id)
    for _, trailers, _ in _branch_commits(repo, base, branch):
        if any(entries.get(t, ("?",))[0] != "committed" for t in trailers):
            return PHASES[7]
    if _query(ledger, "SELECT 1 FROM test_gates WHERE run_id = ? AND state = 'RUNNING'",
              (run_id,)):
        return PHASES[5]
    running = {row[0] for row in _query(
        ledger, "SELECT step_attempt_id FROM step_attempts WHERE run_id = ? AND "
        "state = 'running'", (run_id,))}
    states = {s for s, step in entries.values() if step in running}
    if "verified" in states:
        return PHASES[6]
    if states & {"created", "validated", "queued", "applied"}:
        return PHASES[4]
    if running:
        return PHASES[3]
    return PHASES[8]


def _branch_commits_possible(repo: Path, branch: str) -> bool:
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "-q",
                           f"refs/heads/{branch}"], capture_output=True).returncode == 0


def _changes(ledger: Path, run_id: str) -> tuple:
    """The run's state and its number of state changes: a resume that changed neither never
    re-drove it."""
    state = _query(ledger, "SELECT state FROM runs WHERE run_id = ?", (run_id,))
    count = _query(ledger, "SELECT count(*) FROM run_events WHERE run_id = ? AND "
                   "event_type = 'run.state_changed'", (run_id,))
    return (state[0][0] if state else None, count[0][0] if count else 0)


# -- one process, killed at its instant (or not) ----------------------------------------------

class _Events:
    """What the tool, the gates and the git wrapper logged, counted per uet process."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, path.stat().st_size
        self.seen: dict[int, dict[str, int]] = {}

    def count(self, pid: int) -> dict[str, int]:
        """{"tool-start": n, "gate-end": n, "gate-end:unit": n, ...} of process `pid`."""
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        cut = data.rfind(b"\n") + 1
        self.offset += cut
        for line in data[:cut].decode().splitlines():
            kind, owner, name = line.split(" ", 2)
            if owner.isdigit():
                seen = self.seen.setdefault(int(owner), {})
                for key in (kind, f"{kind}:{name}"):
                    seen[key] = seen.get(key, 0) + 1
        return self.seen.get(pid, {})


def _aim(rng: random.Random, kind: str, remaining: int) -> tuple:
    """The instant to kill at: (what to wait for, how many of it, then how long)."""
    remaining = max(1, remaining)
    if kind == "any":  # anywhere in a whole run (about 3 s undisturbed), its start included
        return ("spawn", 1, rng.uniform(0.0, 3.0))
    if kind == "start":  # the first half second: imports, ledger, run row, branch
        return ("spawn", 1, rng.uniform(0.0, 0.8))
    if kind == "first":  # uet run starting: imports, opening the ledger
        return ("spawn", 1, rng.uniform(0.0, 0.45))
    if kind == "run_row":  # just after the run row appears: before its branch is recorded
        return ("run_row", 1, rng.uniform(0.0, 0.03))
    if kind == "tool":  # the tool runs
        return ("tool-start", rng.randint(1, remaining), rng.uniform(0.0, TOOL_SLEEP_S))
    if kind == "after_tool":  # its change captured and recorded
        return ("tool-end", rng.randint(1, remaining), rng.uniform(0.03, 0.15))
    if kind == "apply":  # the patch validated (git apply --check) and applied
        return ("apply-start", rng.randint(1, 2 * remaining), rng.uniform(0.0, GIT_SLEEP_S))
    if kind == "gate":
        return ("gate-start", rng.randint(1, 2 * remaining), rng.uniform(0, GATE_SLEEP_S))
    if kind == "after_gates":  # every gate passed, the entry verified, no commit yet
        return ("precommit-start", rng.randint(1, remaining), rng.uniform(0.0, GIT_SLEEP_S))
    if kind == "commit":  # the branch moved, the ledger not yet told
        return ("commit-start", rng.randint(1, remaining),
                rng.uniform(0.0, COMMIT_SLEEP_S * 0.8))
    # the ledger told of the commit, the next task being scheduled
    return ("commit-start", rng.randint(1, remaining), COMMIT_SLEEP_S + rng.uniform(0, 0.05))


def _launch(argv: list[str], base: Path, env: dict, events: _Events, ledger: Path,
            aim: tuple | None) -> tuple[bool, int | None, str]:
    """Run one uet process; kill it at `aim` (None: let it finish). (killed, exit code,
    stderr)."""
    err_path = base / "stderr.txt"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(argv, cwd=base, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err)
    started = time.monotonic()
    killed = False
    try:
        if aim is not None:
            what, nth, delay = aim
            reached_at = started if what == "spawn" else None
            while proc.poll() is None and time.monotonic() - started < PROCESS_TIMEOUT_S:
                if reached_at is None:
                    if what == "run_row":
                        reached = _run_row(ledger) is not None
                    else:
                        reached = events.count(proc.pid).get(what, 0) >= nth
                    if reached:
                        reached_at = time.monotonic()
                if reached_at is not None and time.monotonic() >= reached_at + delay:
                    proc.send_signal(signal.SIGKILL)
                    killed = True
                    break
                time.sleep(0.002)
        code = proc.wait(timeout=PROCESS_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    killed = killed and code == -signal.SIGKILL
    return killed, None if killed else code, err_path.read_text(errors="replace")


# -- one scenario ------------------------------------------------------------------------------

def _scenario(workdir: Path, number: int, mutant: str | None, rng: random.Random,
              crashes: int, aims: list[str]) -> dict:
    repo, ws_path, ledger, events_path = _setup(workdir, number)
    base = ws_path.parent
    env = child_env(mutant)
    env.pop("UET_DATABASE", None)
    env["PATH"] = f"{base / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    # `python -m uet`; with a broken build, the same command line with the mutant applied
    uet = [sys.executable, "-m", "uet"] if mutant is None else [sys.executable, PROGRAMS, "uet"]
    events = _Events(events_path)
    out = {"crashes": 0, "resumes": 0, "phases": [], "tracebacks": 0, "details": [],
           "dup": 0, "lost": 0, "not_terminal": 0, "mismatch": 0, "processes": 0}
    run_id = None
    while True:
        committed = 0
        found = _run_row(ledger)
        if found is not None and found[2].get("branch") and found[2].get("base"):
            committed = len(_branch_commits(repo, found[2]["base"], found[2]["branch"]))
        kill = out["crashes"] < crashes
        aim = _aim(rng, aims.pop(0), len(TASKS) - committed) if kill else None
        if run_id is None:
            argv = uet + ["run", "--db", str(ledger), "--parallel", str(rng.choice((1, 2))),
                          str(ws_path)]
            before = None
        else:
            argv = uet + ["resume", "--db", str(ledger), "--parallel",
                          str(rng.choice((1, 2))), run_id]
            before = _changes(ledger, run_id)
            out["resumes"] += 1
        if aim is not None and aim[0] == "run_row" and run_id is not None:
            aim = ("spawn", 1, rng.uniform(0.0, 0.8))  # the run exists: aim at the resume's start
        killed, code, stderr = _launch(argv, base, env, events, ledger, aim)
        out["processes"] += 1
        if "Traceback" in stderr:
            out["tracebacks"] += 1
            out["details"].append(f"scenario {number}: traceback: {stderr.strip()[-300:]}")
        if killed:
            out["crashes"] += 1
            out["phases"].append(_phase(ledger, repo, before))
            found = _run_row(ledger)
            if found is None:
                continue  # killed before its run was recorded: a new run
            run_id = found[0]
            if found[1] != "succeeded":
                continue  # resumed next
            break  # killed once the run had succeeded: nothing left to resume
        if run_id is None:
            run_id = _run_row(ledger)[0] if _run_row(ledger) is not None else None
        if code not in (0, 1):
            out["details"].append(f"scenario {number}: {argv[len(uet)]} exited {code}: "
                                  f"{stderr.strip()[-300:]}")
        break
    _verify(out, number, ledger, repo, run_id)
    return out


def _verify(out: dict, number: int, ledger: Path, repo: Path, run_id: str | None) -> None:
    """The figures of one scenario, once its last resume ended."""
    found = _run_row(ledger)
    if run_id is None or found is None:
        out["lost"] += len(TASKS)
        out["details"].append(f"scenario {number}: no run recorded")
        return
    _, state, meta = found
    if state not in TERMINAL:
        out["not_terminal"] += 1
        out["details"].append(f"scenario {number}: run {run_id} left {state}")
    in_flight = _query(ledger, "SELECT count(*) FROM step_attempts WHERE run_id = ? AND "
                       "state IN ('pending', 'running')", (run_id,))[0][0]
    entries = _entries(ledger, run_id)
    in_flight += sum(s in IN_FLIGHT_ENTRY for s, _ in entries.values())
    if in_flight:
        out["not_terminal"] += in_flight
        out["details"].append(f"scenario {number}: {in_flight} step attempts or patch "
                              "entries left in flight")
    branch, base = meta.get("branch"), meta.get("base")
    commits = _branch_commits(repo, base, branch) if branch and base else []
    trailers_seen: set[str] = set()
    tasks_seen: set[str] = set()
    untrailed = 0
    for sha, trailers, files in commits:
        tasks = {TASK_OF_FILE.get(f, f) for f in files}
        if not trailers:
            untrailed += 1
        if trailers_seen & set(trailers) or tasks_seen & tasks:
            out["dup"] += 1
            out["details"].append(f"scenario {number}: commit {sha[:12]} repeats "
                                  f"{sorted(trailers_seen & set(trailers)) or sorted(tasks)}")
        trailers_seen.update(trailers)
        tasks_seen.update(tasks)
    missing = [task for task, *_ in TASKS if task not in tasks_seen]
    out["lost"] += len(missing) + (state != "succeeded" and not missing)
    if missing or state != "succeeded":
        error = _query(ledger, "SELECT error_message FROM runs WHERE run_id = ?", (run_id,))
        out["details"].append(f"scenario {number}: run {run_id} {state} "
                              f"({error[0][0] if error else None}), tasks without a "
                              f"commit: {missing}")
    committed = {e for e, (s, _) in entries.items() if s == "committed"}
    mismatch = len(committed ^ trailers_seen) + untrailed
    if mismatch:
        out["mismatch"] += mismatch
        out["details"].append(f"scenario {number}: ledger committed {sorted(committed)} but "
                              f"the branch has {sorted(trailers_seen)} ({untrailed} commits "
                              "without a trailer)")


def run(mode: Mode, workdir: Path, mutant: str | None, rng: random.Random) -> Result:
    params = PARAMS[mode.name]
    # aim at every phase in turn: the gates passed (no commit yet), the commit (the ledger
    # not yet told), a tool, git apply, a gate, any instant, a resume's start, after the
    # ledger recorded a commit, what follows a tool
    kinds = ["after_gates", "commit", "tool", "apply", "gate", "any", "after_gates", "commit",
             "start", "after_commit", "after_tool", "gate", "apply", "any", "tool"]
    results = []
    turn = 0
    for number in range(params["scenarios"]):
        crashes = rng.randint(*params["crashes"])
        # the first process of every third run: just after its run row appears (before any
        # task), of the next: before the run row (imports, opening the ledger)
        first = {1: ["run_row"], 2: ["first"]}.get(number % 3, [])
        aims = first + [kinds[(turn + i) % len(kinds)] for i in range(crashes - len(first))]
        turn += crashes - len(first)
        results.append(_scenario(workdir, number, mutant, rng, crashes, aims))
    result = Result("engine")
    phases = [p for r in results for p in r["phases"]]
    result.details = [d for r in results for d in r["details"]]
    result.add("workstream runs (6 tasks, 2 gates)", len(results), zero=False,
               note="T1→T2→T3, T4, T5 (gate fails, retried), T6")
    result.add("crashes injected (SIGKILL)", len(phases), zero=False)
    result.add("resumes", sum(r["resumes"] for r in results), zero=False)
    hit = sorted({p for p in phases}, key=PHASES.index)
    result.add("phases hit", len(hit), zero=False, note=f"of {len(PHASES)}: " + "; ".join(
        f"{p} {phases.count(p)}" for p in hit))
    result.add("dup_commits", sum(r["dup"] for r in results), "dup_commits",
               note="a trailer or a task on two commits")
    result.add("tasks_lost", sum(r["lost"] for r in results), "lost",
               note="no commit, or the run did not end succeeded")
    result.add("not_terminal", sum(r["not_terminal"] for r in results), "stuck",
               note="runs, attempts or entries left in flight")
    result.add("ledger_git_mismatch", sum(r["mismatch"] for r in results), "partial",
               note="committed entries vs trailers on the branch")
    result.add("uet commands ending in a traceback", sum(r["tracebacks"] for r in results),
               "untyped")
    return result

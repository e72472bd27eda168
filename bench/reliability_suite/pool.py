"""Check 11: a pool of `uet worker` processes, SIGKILLed one at a time at seeded instants and
replaced, still runs every submitted run to its end exactly once.

One scenario: a fresh git repository and SQLite ledger; M runs of check 10's workstream (six
tasks, each appending to its own file, so that a task done twice shows as a second commit;
two gates; the tool and the gates sleep a little, `git` is check 10's wrapper that widens
the window between the commit and the ledger write) are queued with `python -m uet submit`,
plus a poison run (its one tool kills the worker that runs it: `kill -9 $PPID`; its
workstream says `max_recoveries: 1`). Then 2-3 `python -m uet worker --heartbeat 0.3`
processes (real subprocesses, each in a process group of its own; one runs two slots, one
keeps its id across restarts so that its successor takes the dead one's id over) work the
queue. At seeded instants — aimed at a tool, a gate, `git apply`, the gates passed before
the commit, the commit before the ledger write, any instant, a worker's first moments —
one worker is SIGKILLed with its process group and a fresh one started, several times,
until every run has ended; then the workers are drained with SIGTERM and `uet recover`
runs once.

Figures that must be 0:
- dup_commits: commits of a run's branch that repeat an earlier one (the same `Uet-Entry`
  trailer, or the same task), as check 10 counts them;
- requeue_lost: runs that did not end succeeded (or were left pending or running), runs
  whose owner died that were neither re-queued nor claimed again afterwards, and a poison
  run that did not end failed naming max_recoveries after exactly 1 + max_recoveries
  claims (one that loops counts too);
- claimed_twice: from the event trail, a run claimed (pending → running with a worker_id)
  while the previous claim was still live (no re-queue or hand-back in between); from the
  tools' own log, a worker process running a run's tool after another process took the
  run over (A, then B, then A again);
- tasks_lost, not_terminal, ledger_git_mismatch: as check 10, per run; worker records not
  TERMINATED at the end count as not_terminal;
- state changes the trail does not explain; uet commands ending in a traceback; workers that
  ended unasked (neither killed by the check nor by the poison run, nor drained) or did not
  drain.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from reliability_suite.common import (PROGRAMS, Mode, Result, child_env, connect_raw,
                                      trail_violations)
from reliability_suite.engine import (COMMIT_SLEEP_S, GATE_SLEEP_S, GIT_SLEEP_S, IN_FLIGHT_ENTRY,
                                      TASK_OF_FILE, TASKS, TOOL_SLEEP_S, _branch_commits,
                                      _entries, _Events, _query, _setup)

# per mode: runs queued, worker processes, SIGKILLs planned, poison runs, time limit
PARAMS = {"quick": {"runs": 6, "workers": 3, "kills": 6, "poison": 1, "limit_s": 150},
          "soak": {"runs": 40, "workers": 3, "kills": 36, "poison": 2, "limit_s": 1500}}
HEARTBEAT_S = "0.3"
POLL_S = "0.1"
POISON_MAX_RECOVERIES = 1
DRAIN_TIMEOUT_S = 60
EXIT_FENCED = 3  # `uet worker` fenced off: its record was reaped (a late heartbeat)
AIM_TIMEOUT_S = 3.0  # a victim that does not reach its aim by then is killed anyway
FINISHED = ("succeeded", "failed", "canceled", "quarantined")
# what a kill is aimed at: the event (logged by the tool, the gates or the git wrapper with
# the pid of the worker that started them) and the delay after it
AIMS = {"tool": ("tool-start", 0.0, TOOL_SLEEP_S),
        "after_tool": ("tool-end", 0.03, 0.15),
        "apply": ("apply-start", 0.0, GIT_SLEEP_S),
        "gate": ("gate-start", 0.0, GATE_SLEEP_S),
        "after_gates": ("precommit-start", 0.0, GIT_SLEEP_S),
        "commit": ("commit-start", 0.0, COMMIT_SLEEP_S * 0.8),
        "after_commit": ("commit-start", COMMIT_SLEEP_S, COMMIT_SLEEP_S + 0.05),
        "any": (None, 0.0, 1.5)}
POISON_TOOL = ["sh", "-c", "kill -9 $PPID; sleep 2"]  # the tool's parent is the worker


@dataclass
class Worker:
    """One `uet worker` process of the pool."""
    slot: int
    proc: subprocess.Popen
    started: float
    stderr: Path
    killed: bool = False     # by the check
    drained: bool = False    # sent SIGTERM at the end
    code: int | None = None


@dataclass
class Pool:
    """The worker processes, alive and gone, and how to start one."""
    argv: list[str]
    base: Path
    env: dict[str, str]
    slots: list[dict]
    workers: list[Worker] = field(default_factory=list)
    live: dict[int, Worker] = field(default_factory=dict)  # slot -> its live worker

    def start(self, slot: int) -> Worker:
        spec = self.slots[slot]
        argv = self.argv + ["--concurrency", str(spec["concurrency"])]
        if spec["id"]:
            argv += ["--id", spec["id"]]
        err = self.base / f"worker-{len(self.workers)}.err"
        with open(err, "wb") as out:
            proc = subprocess.Popen(argv, cwd=self.base, env=self.env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=out,
                                    start_new_session=True)
        worker = Worker(slot, proc, time.monotonic(), err)
        self.workers.append(worker)
        self.live[slot] = worker
        return worker

    def kill(self, worker: Worker) -> None:
        """SIGKILL the worker and everything in its process group."""
        worker.killed = True
        try:
            os.killpg(worker.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        worker.code = worker.proc.wait()
        self.live.pop(worker.slot, None)

    def reap_exited(self) -> list[Worker]:
        """Workers that ended by themselves (the poison run killed them, or a bug)."""
        gone = []
        for slot, worker in list(self.live.items()):
            code = worker.proc.poll()
            if code is not None:
                worker.code = code
                del self.live[slot]
                gone.append(worker)
        return gone


def _run_states(ledger: Path) -> dict[str, str]:
    return dict(_query(ledger, "SELECT run_id, state FROM runs"))


def _submit(uet: list[str], ledger: Path, ws_path: Path, base: Path, env: dict,
            out: dict) -> str | None:
    done = subprocess.run(uet + ["submit", "--db", str(ledger), str(ws_path)], cwd=base,
                          env=env, capture_output=True, text=True, timeout=120)
    out["processes"] += 1
    if "Traceback" in done.stderr:
        out["tracebacks"] += 1
        out["details"].append(f"uet submit: traceback: {done.stderr.strip()[-300:]}")
    if done.returncode != 0 or not done.stdout.strip():
        out["details"].append(f"uet submit exited {done.returncode}: "
                              f"{done.stderr.strip()[-300:]}")
        return None
    return done.stdout.split()[-1]


def _setup_pool(workdir: Path) -> tuple[Path, Path, Path, Path, Path]:
    """Check 10's repository, workstream and git wrapper, the workstream made a queued one
    (recovered by the pool, up to 100 times) whose tool logs the run id too; and the poison
    workstream."""
    repo, ws_path, ledger, events = _setup(workdir, 0)
    ws = json.loads(ws_path.read_text())
    ws.update(workstream_id="WS-POOL", resume="auto", max_recoveries=100)
    command = ws["tools"]["editor"]["command"]
    command[command.index("{task_id}")] = "{run_id}:{task_id}"
    ws_path.write_text(json.dumps(ws))
    poison = {"workstream_id": "WS-POISON", "project_id": "reliability", "phase_id": "PH",
              "repo": str(repo), "files_scope": {"modify": ["src/**"], "create": ["src/**"]},
              "resume": "auto", "max_recoveries": POISON_MAX_RECOVERIES,
              "tools": {"poison": {"command": POISON_TOOL, "timeout_seconds": 30}},
              "tasks": [{"task_id": "P1", "tool": "poison", "allow_empty": True}]}
    poison_path = ws_path.parent / "poison.json"
    poison_path.write_text(json.dumps(poison))
    return repo, ws_path, poison_path, ledger, events


def _scenario(workdir: Path, mode: Mode, mutant: str | None, rng: random.Random) -> dict:
    params = PARAMS[mode.name]
    repo, ws_path, poison_path, ledger, events_path = _setup_pool(workdir)
    base = ws_path.parent
    env = child_env(mutant)
    env.pop("UET_DATABASE", None)
    env["PATH"] = f"{base / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    uet = [sys.executable, "-m", "uet"] if mutant is None else [sys.executable, PROGRAMS, "uet"]
    out = {"processes": 0, "tracebacks": 0, "details": [], "kills": [], "aims": {},
           "unasked": 0, "not_drained": 0, "poison_deaths": 0, "fenced": 0, "main": [],
           "poison": [], "seconds": 0.0, "timed_out": False}
    # the poison runs sit in the middle of the queue, so that they strike mid-flow
    poison_at = sorted(rng.sample(range(1, params["runs"]), params["poison"]))
    for k in range(params["runs"]):
        for _ in range(poison_at.count(k)):
            run_id = _submit(uet, ledger, poison_path, base, env, out)
            if run_id:
                out["poison"].append(run_id)
        run_id = _submit(uet, ledger, ws_path, base, env, out)
        if run_id:
            out["main"].append(run_id)
    # slot 0 runs two runs at once; slot 1 keeps its id across restarts (takeover)
    slots = [{"concurrency": 2 if s == 0 else 1, "id": "pool-kept" if s == 1 else None}
             for s in range(params["workers"])]
    pool = Pool(uet + ["worker", "--db", str(ledger), "--heartbeat", HEARTBEAT_S,
                       "--poll", POLL_S], base, env, slots)
    events = _Events(events_path)
    began = time.monotonic()
    try:
        for slot in range(len(slots)):
            pool.start(slot)
        _drive(pool, ledger, events, params, rng, out, began)
        out["seconds"] = time.monotonic() - began
        _drain(pool, ledger, out)
        recover = subprocess.run(uet + ["recover", "--db", str(ledger)], cwd=base, env=env,
                                 capture_output=True, text=True, timeout=120)
        out["processes"] += 1
        if "Traceback" in recover.stderr:
            out["tracebacks"] += 1
            out["details"].append(f"uet recover: traceback: {recover.stderr.strip()[-300:]}")
    finally:
        for worker in list(pool.live.values()):
            pool.kill(worker)
    out["workers"] = len(pool.workers)
    for worker in pool.workers:
        out["processes"] += 1
        stderr = worker.stderr.read_text(errors="replace")
        if "Traceback" in stderr:
            out["tracebacks"] += 1
            out["details"].append(f"worker {worker.proc.pid}: traceback: "
                                  f"{stderr.strip()[-400:]}")
    _verify(out, pool, ledger, repo, events_path)
    return out


def _drive(pool: Pool, ledger: Path, events: _Events, params: dict, rng: random.Random,
           out: dict, began: float) -> None:
    """Kill and replace workers at seeded instants until every run has ended."""
    expected = len(out["main"]) + len(out["poison"])
    kills_left = params["kills"]
    next_kill_at = time.monotonic() + rng.uniform(0.3, 1.5)
    aim = None  # (victim, event kind, count before, set at, delay, aim name)
    restart_at: dict[int, float] = {}
    checked_at = 0.0
    while True:
        now = time.monotonic()
        if now - began > params["limit_s"]:
            out["timed_out"] = True
            out["details"].append(f"the runs had not all ended after {params['limit_s']} s")
            return
        if now - checked_at > 0.1:
            checked_at = now
            states = _run_states(ledger)
            if len(states) >= expected and all(s in FINISHED for s in states.values()):
                return
            if _poison_looping(ledger, out):
                main_open = [r for r in out["main"] if states.get(r) not in FINISHED]
                if not main_open:
                    return  # the poison run loops: nothing else left to wait for
        for worker in pool.reap_exited():
            # judged in _verify: the poison run's kill (-9), or fenced off (3) after it was
            # reaped while alive, are expected; anything else is not
            restart_at[worker.slot] = now
            if aim is not None and aim[0] is worker:
                aim = None
        for slot, when in list(restart_at.items()):
            if now >= when:
                del restart_at[slot]
                fresh = pool.start(slot)
                if kills_left and rng.random() < 0.2 and aim is None:
                    # its first moments: registering, reaping, claiming, reconciling
                    aim = (fresh, None, 0, now, rng.uniform(0.05, 0.7), "start")
        if aim is None and kills_left and now >= next_kill_at and pool.live:
            victim = pool.live[rng.choice(sorted(pool.live))]
            name = rng.choice(sorted(AIMS))
            kind, low, high = AIMS[name]
            count = events.count(victim.proc.pid).get(kind, 0) if kind else 0
            aim = (victim, kind, count, now, rng.uniform(low, high), name)
        if aim is not None:
            victim, kind, count, set_at, delay, name = aim
            if kind is not None and events.count(victim.proc.pid).get(kind, 0) > count:
                aim = (victim, None, 0, now, delay, name)  # reached: wait the delay
            elif kind is not None and now - set_at > AIM_TIMEOUT_S:
                aim = (victim, None, 0, now, 0.0, name + " (not reached)")
            elif kind is None and now >= set_at + delay:
                if victim.proc.poll() is None:
                    pool.kill(victim)
                    kills_left -= 1
                    out["kills"].append((victim.proc.pid, time.time(), name))
                    out["aims"][name] = out["aims"].get(name, 0) + 1
                    restart_at[victim.slot] = now + rng.choice((0.0, 0.0, rng.uniform(0, 1)))
                aim = None
                next_kill_at = now + rng.uniform(0.3, 2.0)
        time.sleep(0.005)


def _poison_looping(ledger: Path, out: dict) -> bool:
    """Whether a poison run was claimed more often than its cap allows."""
    for run_id in out["poison"]:
        claims = _query(ledger, "SELECT count(*) FROM run_events WHERE run_id = ? AND "
                        "event_type = 'run.state_changed' AND "
                        "json_extract(data, '$.to') = 'running'", (run_id,))
        if claims and claims[0][0] > POISON_MAX_RECOVERIES + 1:
            return True
    return False


def _drain(pool: Pool, ledger: Path, out: dict) -> None:
    """SIGTERM each live worker (the first: drain) and wait for it to end with 0. A worker
    started a moment ago is first given the time to register (until then it has not set up
    its signal handlers, and SIGTERM simply ends it: it holds nothing yet)."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        registered = {pid for (pid,) in _query(
            ledger, "SELECT json_extract(affinity, '$.pid') FROM workers")}
        if all(w.proc.pid in registered or w.proc.poll() is not None
               for w in pool.live.values()):
            break
        time.sleep(0.05)
    for worker in pool.live.values():
        worker.drained = True
        worker.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    for slot, worker in list(pool.live.items()):
        try:
            worker.code = worker.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            out["not_drained"] += 1
            out["details"].append(f"worker {worker.proc.pid} did not end within "
                                  f"{DRAIN_TIMEOUT_S} s of SIGTERM")
            pool.kill(worker)
            continue
        del pool.live[slot]
        if worker.code not in (0, EXIT_FENCED):  # 3: reaped while alive (judged later)
            out["not_drained"] += 1
            out["details"].append(f"worker {worker.proc.pid} drained with exit code "
                                  f"{worker.code}")


# -- what the ledger, the trail, the branches and the tools' log say -------------------------

def _trail(ledger: Path) -> list[tuple[str | None, str, dict]]:
    conn = connect_raw(str(ledger))
    try:
        return [(run_id, kind, json.loads(data) if data else {}) for run_id, kind, data in
                conn.execute("SELECT run_id, event_type, data FROM run_events ORDER BY seq")]
    finally:
        conn.close()


def _walk(trail: list, dead: set[int], out: dict, lost: dict[str, str]) -> dict:
    """Claims, re-queues and owners' deaths, in trail order."""
    pid_of: dict[str, int | None] = {}     # worker id -> pid of its current incarnation
    holder: dict[str, tuple[str, int | None]] = {}  # run -> (worker id, pid) of its claim
    claims: dict[str, list[tuple[str, int | None]]] = {}
    requeued_at: dict[str, int] = {}       # run -> its claims when last re-queued
    counts = {"claimed_twice": 0, "requeues": 0, "live_requeued": 0, "reclaimed": 0,
              "reaper_forgot": 0, "reaped_pids": set(), "failed_dead": []}
    for run_id, kind, data in trail:
        if kind == "worker.spawned":
            pid = data.get("affinity", {}).get("pid")
            pid_of[data.get("worker_id")] = pid if isinstance(pid, int) else None
        elif kind == "worker.state_changed" and data.get("to") == "TERMINATED":
            worker_id = data.get("worker_id")
            if data.get("reason"):  # reaped (or taken over), not retired by its process
                counts["reaped_pids"].add(pid_of.get(worker_id))
            for run, (held_by, pid) in holder.items():
                if held_by == worker_id and pid == pid_of.get(worker_id):
                    counts["reaper_forgot"] += 1
                    lost.setdefault(run, f"still running under {worker_id} (pid {pid}) "
                                    "when the worker was terminated")
        elif kind == "run.state_changed" and run_id is not None:
            source, target = data.get("from"), data.get("to")
            if source == "pending" and target == "running" and data.get("worker_id"):
                worker_id = data["worker_id"]
                if run_id in holder:
                    counts["claimed_twice"] += 1
                    out["details"].append(f"run {run_id} claimed by {worker_id} while "
                                          f"{holder[run_id][0]} still held it")
                holder[run_id] = (worker_id, pid_of.get(worker_id))
                claims.setdefault(run_id, []).append(holder[run_id])
                if run_id in requeued_at:
                    counts["reclaimed"] += 1
                    requeued_at.pop(run_id)
            elif source == "running":
                held = holder.pop(run_id, None)
                if target == "pending" and data.get("requeued"):
                    counts["requeues"] += 1
                    requeued_at[run_id] = len(claims.get(run_id, []))
                    if held is not None and held[1] not in dead:
                        counts["live_requeued"] += 1  # reaped while alive (a late beat)
                elif held is not None and held[1] in dead and target != "succeeded" and \
                        data.get("worker_id"):
                    # failed for its dead owner instead of re-queued (the poison run's last
                    # death is judged in _verify)
                    counts["failed_dead"].append(run_id)
    for run_id in requeued_at:
        lost.setdefault(run_id, "re-queued after its owner died, never claimed again")
    counts["claims"] = claims
    return counts


def _tool_takeovers(events_path: Path, excused: set) -> int:
    """Runs whose tools a worker process ran again after another process took the run
    over: A, then B, then A (a claim that stayed live). A process reaped while alive (a late
    heartbeat) is excused: a tool it had started may still log its start after the takeover
    (its writes are fenced off; a commit it made twice would show as a dup_commit)."""
    seen: dict[str, list[int]] = {}
    for line in events_path.read_text(errors="replace").splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[0] == "tool-start" and ":" in parts[2]:
            run_id = parts[2].split(":", 1)[0]
            pids = seen.setdefault(run_id, [])
            if int(parts[1]) not in excused and (not pids or pids[-1] != int(parts[1])):
                pids.append(int(parts[1]))
    return sum(len(pids) != len(set(pids)) for pids in seen.values())


def _verify(out: dict, pool: Pool, ledger: Path, repo: Path, events_path: Path) -> None:
    dead = {w.proc.pid for w in pool.workers if w.killed or w.code == -signal.SIGKILL}
    lost: dict[str, str] = {}
    walk = _walk(_trail(ledger), dead, out, lost)
    out["walk"] = walk
    rows = {r[0]: r[1:] for r in _query(
        ledger, "SELECT run_id, state, error_message, recoveries, metadata FROM runs")}
    for worker in pool.workers:
        if worker.killed or worker.drained and worker.code == 0:
            continue
        if worker.code == -signal.SIGKILL:
            out["poison_deaths"] += 1  # not the check's kill: the poison run's tool
        elif worker.code == EXIT_FENCED and worker.proc.pid in walk["reaped_pids"]:
            out["fenced"] += 1  # reaped while alive (a late heartbeat), then stopped itself
        elif worker.drained:
            if worker.code == EXIT_FENCED:  # fenced off, yet no one reaped it
                out["not_drained"] += 1
                out["details"].append(f"worker {worker.proc.pid} exited 3 (fenced off) on "
                                      "SIGTERM, but its record was never reaped")
        else:
            out["unasked"] += 1
            out["details"].append(f"worker {worker.proc.pid} exited {worker.code} unasked")
    for run_id in walk["failed_dead"]:
        if run_id not in out["poison"]:
            lost.setdefault(run_id, "failed when its owner died instead of being re-queued")
    out.update(dup=0, tasks_lost=0, not_terminal=0, mismatch=0)
    for run_id in out["main"]:
        state, error, _, meta = rows.get(run_id, (None, None, None, "{}"))
        if state != "succeeded":
            lost.setdefault(run_id, f"ended {state}: {error}")
        _verify_branch(out, ledger, repo, run_id, json.loads(meta or "{}"))
    for run_id in out["poison"]:
        state, error, recoveries, _ = rows.get(run_id, (None, None, None, "{}"))
        claims = len(walk["claims"].get(run_id, []))
        if (state != "failed" or "max_recoveries" not in (error or "")
                or claims != POISON_MAX_RECOVERIES + 1
                or recoveries != POISON_MAX_RECOVERIES):
            lost[run_id] = (f"poison run {state} after {claims} claims, {recoveries} "
                            f"recoveries: {error}")
    workers_open = _query(ledger, "SELECT count(*) FROM workers WHERE state != 'TERMINATED'")
    if workers_open and workers_open[0][0]:
        out["not_terminal"] += workers_open[0][0]
        out["details"].append(f"{workers_open[0][0]} worker records not TERMINATED after "
                              "the drain and `uet recover`")
    for run_id, why in lost.items():
        out["details"].append(f"run {run_id} lost: {why}")
    out["requeue_lost"] = len(lost)
    out["claimed_twice"] = walk["claimed_twice"] + _tool_takeovers(
        events_path, walk["reaped_pids"] - dead)
    out["trail"] = trail_violations(str(ledger))
    out["details"] += out["trail"][:5]


def _verify_branch(out: dict, ledger: Path, repo: Path, run_id: str, meta: dict) -> None:
    """Check 10's figures for one run: duplicate commits, tasks without one, in-flight work,
    ledger entries versus the branch's trailers."""
    branch, base = meta.get("branch"), meta.get("base")
    commits = _branch_commits(repo, base, branch) if branch and base else []
    trailers_seen: set[str] = set()
    tasks_seen: set[str] = set()
    untrailed = 0
    for sha, trailers, files in commits:
        tasks = {TASK_OF_FILE.get(f, f) for f in files}
        untrailed += not trailers
        if trailers_seen & set(trailers) or tasks_seen & tasks:
            out["dup"] += 1
            out["details"].append(f"run {run_id}: commit {sha[:12]} repeats "
                                  f"{sorted(trailers_seen & set(trailers)) or sorted(tasks)}")
        trailers_seen.update(trailers)
        tasks_seen.update(tasks)
    missing = [task for task, *_ in TASKS if task not in tasks_seen]
    if missing:
        out["tasks_lost"] += len(missing)
        out["details"].append(f"run {run_id}: tasks without a commit: {missing}")
    in_flight = _query(ledger, "SELECT count(*) FROM step_attempts WHERE run_id = ? AND "
                       "state = 'running'", (run_id,))[0][0]
    entries = _entries(ledger, run_id)
    in_flight += sum(s in IN_FLIGHT_ENTRY for s, _ in entries.values())
    if in_flight:
        out["not_terminal"] += in_flight
        out["details"].append(f"run {run_id}: {in_flight} step attempts or patch entries "
                              "left in flight")
    committed = {e for e, (s, _) in entries.items() if s == "committed"}
    mismatch = len(committed ^ trailers_seen) + untrailed
    if mismatch:
        out["mismatch"] += mismatch
        out["details"].append(f"run {run_id}: ledger committed {sorted(committed)}, branch "
                              f"has {sorted(trailers_seen)} ({untrailed} without a trailer)")


def run(mode: Mode, workdir: Path, mutant: str | None, rng: random.Random) -> Result:
    out = _scenario(workdir, mode, mutant, rng)
    walk = out["walk"]
    result = Result("pool")
    result.details = out["details"]
    result.add("runs queued (uet submit)", len(out["main"]), zero=False,
               note=f"6 tasks, 2 gates each; + {len(out['poison'])} poison "
                    f"(max_recoveries {POISON_MAX_RECOVERIES})")
    result.add("worker processes", out["workers"], zero=False,
               note=f"{PARAMS[mode.name]['workers']} at a time, heartbeat {HEARTBEAT_S} s")
    result.add("workers SIGKILLed by the check", len(out["kills"]), zero=False,
               note=", ".join(f"{k} {v}" for k, v in sorted(out["aims"].items())))
    result.add("workers killed by the poison run", out["poison_deaths"], zero=False)
    result.add("runs re-queued by the reaper", walk["requeues"], zero=False,
               note=f"claimed again {walk['reclaimed']}; of a live owner (late heartbeat) "
                    f"{walk['live_requeued']}")
    result.add("live workers reaped, fenced off (exit 3)", out["fenced"], zero=False,
               note="a heartbeat later than two intervals")
    result.add("seconds until every run ended", round(out["seconds"], 1), zero=False)
    result.add("dup_commits", out["dup"], "dup_commits",
               note="a trailer or a task on two commits of a run's branch")
    result.add("requeue_lost", out["requeue_lost"], "requeue_lost",
               note="runs not succeeded, owner died and not re-queued, poison not capped")
    result.add("claimed_twice", out["claimed_twice"], "claimed_twice",
               note="a claim while another was live (trail), a tool after a takeover")
    result.add("tasks_lost", out["tasks_lost"], "lost", note="tasks without a commit")
    result.add("not_terminal", out["not_terminal"], "stuck",
               note="attempts, entries, worker records left in flight")
    result.add("ledger_git_mismatch", out["mismatch"], "partial",
               note="committed entries vs trailers on the branches")
    result.add("state changes the trail does not explain", len(out["trail"]),
               "missing_events")
    result.add("uet commands ending in a traceback", out["tracebacks"], "untyped")
    result.add("workers ending unasked or not draining", out["unasked"] + out["not_drained"],
               note="SIGTERM at the end must drain each one with exit code 0")
    return result

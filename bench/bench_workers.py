"""Throughput of the worker pool: runs per second through 1, 2 and 4 `uet worker` processes,
and the claim latency, on SQLite and on PostgreSQL side by side.

    .venv/bin/python bench/bench_workers.py [--runs 40] [--workers 1 2 4] [--rounds 3]
                                            [--engine sqlite postgresql] [--url postgresql://…]

Each configuration gets a fresh git repository and a fresh ledger (a SQLite file, or a new
schema on the PostgreSQL server). The workstream is one task whose tool does nothing
(`true`, `allow_empty: true`) and no gates: what is measured is the pool's own cost per run
(claim, branch and worktrees, step attempt, release), not a tool's.

1. Throughput: `--runs` runs are submitted (through the API, before any worker runs), then
   N `uet worker` processes are started with their default settings (`--poll 0.5`,
   `--heartbeat 10`); measured from the moment the workers are started (their own start-up
   included) to the `ended_at` of the last run.
2. Claim latency: with the same workers up and idle, `--latency-runs` runs are submitted one
   at a time, each once the one before it has ended and after a random pause (so that
   submissions fall anywhere in the workers' poll interval); the latency of a run is the
   time from its `run.created` event to its `run.state_changed` pending → running event
   (event timestamps). An idle SQLite worker looks for work every poll interval; on
   PostgreSQL it is also woken by the new run's event (LISTEN/NOTIFY).

Every run must end succeeded and be claimed exactly once; the workers are then drained
with SIGTERM. Without --url (or $UET_TEST_POSTGRES_URL) a private PostgreSQL server is
started with the server's default durability (fsync on, synchronous commit), as a real
ledger runs, and stopped at the end. Prints a table and a one-line summary; it measures,
it asserts nothing (exit 1 only when a run did not succeed or was claimed twice). The
configurations are measured in turn, round after round, so that noise from the machine hits
them all alike; throughput is the median of the rounds, latencies are pooled.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Iterator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pgserver  # noqa: E402
from uet.engine.pool import submit  # noqa: E402
from uet.engine.workstream import load_workstream  # noqa: E402
from uet.state import Database  # noqa: E402

FINISHED = ("succeeded", "failed", "canceled", "quarantined")
WAIT_LIMIT_S = 600  # a configuration that takes longer is broken: stop it


@dataclass
class Figures:
    """One configuration, over its rounds: the throughput of each, every probe's claim
    latency, and what went wrong."""
    engine: str
    workers: int
    runs: int = 0
    seconds: list[float] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Runs per second, the median of the rounds."""
        return statistics.median(self.runs / s for s in self.seconds) if self.seconds else 0.0


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def _workstream(folder: Path) -> Path:
    """A git repository with one commit, and the no-op workstream aimed at it."""
    repo = folder / "repo"
    repo.mkdir(parents=True)
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "config", "user.name", "Bench")
    _git(repo, "config", "user.email", "bench@example.invalid")
    (repo / "README").write_text("bench\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "initial")
    path = folder / "noop.json"
    path.write_text(json.dumps({
        "workstream_id": "WS-BENCH", "project_id": "bench", "phase_id": "PH",
        "repo": "repo", "tools": {"noop": {"command": ["true"], "timeout_seconds": 60}},
        "tasks": [{"task_id": "T1", "tool": "noop", "allow_empty": True}]}))
    return path


def _moment(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


@contextmanager
def _ledger(engine: str, folder: Path, server_url: str | None, tag: str) -> Iterator[str]:
    if engine == "sqlite":
        yield str(folder / "ledger.db")
        return
    assert server_url is not None
    with pgserver.schema(server_url, f"bench_workers_{tag}_{uuid.uuid4().hex[:8]}") as url:
        yield url


def _start_workers(ledger: str, count: int, folder: Path) -> list[subprocess.Popen]:
    env = dict(os.environ)
    env.pop("UET_DATABASE", None)
    procs = []
    for k in range(count):
        with open(folder / f"worker-{k}.err", "wb") as err:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "uet", "worker", "--db", ledger], cwd=folder, env=env,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                start_new_session=True))
    return procs


def _wait_ended(db: Database, run_ids: list[str], began: float, what: str) -> list[dict]:
    """The runs, once every one has ended (polled by one indexed read)."""
    wanted = set(run_ids)
    while True:
        runs = [r for r in db.list_runs({"workstream_id": "WS-BENCH"}, limit=None)
                if r["run_id"] in wanted]
        if len(runs) == len(wanted) and all(r["state"] in FINISHED for r in runs):
            return runs
        if time.monotonic() - began > WAIT_LIMIT_S:
            raise RuntimeError(f"{what}: the runs had not ended after {WAIT_LIMIT_S} s")
        time.sleep(0.02)


def _stop(procs: list[subprocess.Popen], figures: Figures, folder: Path) -> None:
    """Drain the workers (SIGTERM) and note any that did not end well."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for k, proc in enumerate(procs):
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
        err = (folder / f"worker-{k}.err").read_text(errors="replace")
        if code != 0 or "Traceback" in err or "database is locked" in err:
            figures.problems.append(f"worker {k} exited {code}: {err.strip()[-300:]}")


def measure(figures: Figures, latency_runs: int, server_url: str | None,
            rng: random.Random) -> None:
    """One round of one configuration, added to `figures`."""
    engine, workers, runs = figures.engine, figures.workers, figures.runs
    with tempfile.TemporaryDirectory(prefix="uet-bench-workers-") as tmp:
        folder = Path(tmp)
        ws = load_workstream(_workstream(folder))
        with _ledger(engine, folder, server_url, f"{workers}") as ledger, \
                Database(ledger) as db:
            queued = [submit(db, ws)["run_id"] for _ in range(runs)]
            started_at = time.time()
            began = time.monotonic()
            procs = _start_workers(ledger, workers, folder)
            try:
                ended = _wait_ended(db, queued, began, f"{engine} x{workers}")
                figures.seconds.append(max(_moment(r["ended_at"]) for r in ended)
                                       - started_at)
                probes = []
                for _ in range(latency_runs):
                    time.sleep(rng.uniform(0.05, 0.6))
                    probes.append(submit(db, ws)["run_id"])
                    ended += _wait_ended(db, probes[-1:], time.monotonic(), "latency probe")
                for run_id in probes:
                    events = db.list_events(run_id)
                    created = next(e for e in events if e["event_type"] == "run.created")
                    claim = next(e for e in events if e["event_type"] == "run.state_changed"
                                 and e["data"].get("to") == "running")
                    figures.latencies_ms.append(
                        1000 * (_moment(claim["timestamp"]) - _moment(created["timestamp"])))
            finally:
                _stop(procs, figures, folder)
            for run in ended:
                claims = [e for e in db.list_events(run["run_id"])
                          if e["event_type"] == "run.state_changed"
                          and e["data"].get("to") == "running"]
                if run["state"] != "succeeded" or len(claims) != 1:
                    figures.problems.append(f"run {run['run_id']} {run['state']}, claimed "
                                            f"{len(claims)} times: {run['error_message']}")


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40, help="runs per configuration")
    parser.add_argument("--latency-runs", type=int, default=12,
                        help="runs submitted one at a time to idle workers, per configuration")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--engine", nargs="+", choices=("sqlite", "postgresql"),
                        default=["sqlite", "postgresql"])
    parser.add_argument("--url", default=os.environ.get(pgserver.ENV_VAR),
                        help="a PostgreSQL server to use instead of a private one")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds over every configuration (medians of the rounds)")
    parser.add_argument("--seed", type=int, default=20261130)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    server = None
    url = args.url
    if "postgresql" in args.engine and not url:
        try:
            server = pgserver.Server()
            url = server.start(durable=True)
        except pgserver.Unavailable as exc:
            print(f"postgresql skipped: {exc}")
            args.engine = [e for e in args.engine if e != "postgresql"]
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, python "
          f"{sys.version.split()[0]}; no-op workstream (1 task, tool `true`, no gates); "
          f"{args.runs} runs queued per configuration, then {args.latency_runs} submitted one "
          f"at a time; workers with default settings (--poll 0.5, --heartbeat 10); "
          f"{args.rounds} rounds over the configurations, medians", flush=True)
    results = [Figures(engine, workers, args.runs) for engine in args.engine
               for workers in args.workers]
    try:
        for k in range(args.rounds):
            for figures in results:
                print(f"  round {k + 1}: {figures.engine} x{figures.workers} ...",
                      file=sys.stderr, flush=True)
                measure(figures, args.latency_runs, url, rng)
    finally:
        if server is not None:
            server.stop()
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    header = (f"{'engine':<11} {'workers':>7} {'runs':>5} {'seconds':>8} {'runs/s':>7}   "
              f"{'claim latency ms: median':>24} {'p90':>6} {'max':>6}")
    print(header)
    print("-" * len(header))
    for f in results:
        lat = f.latencies_ms or [float("nan")]
        print(f"{f.engine:<11} {f.workers:>7} {f.runs:>5} "
              f"{statistics.median(f.seconds or [0]):>8.2f} {f.rate:>7.2f}   "
              f"{statistics.median(lat):>24.0f} {_percentile(lat, 0.9):>6.0f} "
              f"{max(lat):>6.0f}")
    problems = [f"{f.engine} x{f.workers}: {p}" for f in results for p in f.problems]
    for problem in problems[:20]:
        print(f"  ! {problem}")
    summary = "; ".join(
        f"{engine} " + "/".join(f"{f.rate:.1f}" for f in results if f.engine == engine)
        + " runs/s, claim median "
        + "/".join(f"{statistics.median(f.latencies_ms or [0]):.0f}" for f in results
                   if f.engine == engine) + " ms"
        for engine in args.engine)
    print(f"WORKERS {'/'.join(map(str, args.workers))} workers: {summary}; "
          f"problems={len(problems)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

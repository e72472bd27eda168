"""Build a large, valid uet ledger fast: N runs with their step attempts and event trail.

    .venv/bin/python bench/build_ledger.py PATH --runs N [--steps-per-run 3]
        [--events-per-run 4] [--seed 0] [--days 365] [--analyze]

or, from another bench or a test (the bench folder on sys.path):

    from build_ledger import build
    counts = build(path, 1_000_000)   # {"runs": ..., "step_attempts": ..., "run_events": ...}

The schema is uet's own: `Database(path).close()` creates the ledger at the current schema
version; the rows are then inserted with plain sqlite3 `executemany`, in big transactions,
with the journal off and synchronous OFF while building (a build that dies leaves a file to
delete, not a ledger to trust); at the end the file is put back in WAL, as uet keeps it
(synchronous is per connection: uet sets its own on every open).

Every row is one uet itself could have written, so that the ledger opens read-only, passes
`uet doctor`, `PRAGMA integrity_check` and `PRAGMA foreign_key_check`, and reads like a real
one:

- runs over 5 projects, 4 phases and 3 workstreams per project, created at increasing times
  spread over the last `days` days (ending an hour ago); ids are ULIDs whose time part is
  the record's own timestamp; every timestamp is in uet's one format
  (`2026-01-31T12:00:00.000000Z`);
- states: about 70 % succeeded, 20 % failed, 4 % canceled (most before they started),
  3 % quarantined; the newest few runs are still running or pending; each field follows the
  run machine (started_at once running, ended_at and exit_code once ended, an error message
  on failures);
- `steps_per_run` step sequences per run that got that far, each attempt 1, about one in
  eight retried (attempt 1 failed, attempt 2); AI tools (aider, codex, claude) report model,
  tokens and cost, checks (ruff, pytest) report none;
- the event trail of each run is the one uet writes (`run.created`, `run.state_changed`,
  `step_attempt.created`, `step_attempt.state_changed`, same data), cut to at most
  `events_per_run` events: the first ones and, for an ended run, its final state change
  (None keeps every event). A run's whole life fits before the next run is created, so
  the trail's `seq` order is also its timestamp order, as on a ledger written live.

Patches, gates and workers are left empty. `uet` never runs ANALYZE on a ledger, so neither
does the builder unless asked (`--analyze`): the query plans are those of a real ledger.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import sys
import time
from datetime import datetime, timedelta, timezone
from hashlib import sha256
from typing import Any

from uet.state import Database

PROJECTS = ("billing", "search", "mobile-app", "infra", "docs-site")
PHASES = ("PH-01-design", "PH-02-build", "PH-03-harden", "PH-04-release")
WORKSTREAMS_PER_PROJECT = 3
# (tool, model choices or () for a check that reports no usage, typical seconds)
TOOLS = (("aider", ("gpt-4.1", "gpt-4.1-mini", "o3"), 90.0),
         ("codex", ("gpt-4.1", "o3"), 120.0),
         ("claude", ("claude-sonnet", "claude-haiku"), 75.0),
         ("ruff", (), 3.0),
         ("pytest", (), 25.0))
# (state, share) of the runs that ended; the newest NEWEST_OPEN runs are still open
ENDINGS = (("succeeded", 0.70), ("failed", 0.20), ("canceled", 0.04), ("quarantined", 0.03))
RETRY_SHARE = 0.125          # step sequences whose attempt 1 failed and that were retried
CANCELED_BEFORE_START = 0.75  # canceled runs that never started (pending -> canceled)
NEWEST_OPEN = 12             # at most this many newest runs are running or pending
CHUNK_RUNS = 20_000          # runs generated and inserted per executemany batch
RUNS_PER_TRANSACTION = 200_000

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = tuple(_CROCKFORD[i >> 5] + _CROCKFORD[i & 31] for i in range(1024))

INSERT_RUN = ("INSERT INTO runs (run_id, project_id, phase_id, workstream_id, created_at, "
              "started_at, ended_at, state, exit_code, error_message, metadata) "
              "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
INSERT_STEP = ("INSERT INTO step_attempts (step_attempt_id, run_id, sequence, attempt, tool_id, "
               "task_id, input_prompt, started_at, ended_at, state, exit_code, error_log, "
               "model, input_tokens, output_tokens, cost_usd, metadata) "
               "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
INSERT_EVENT = ("INSERT INTO run_events (event_id, run_id, timestamp, event_type, data, seq) "
                "VALUES (?, ?, ?, ?, ?, ?)")


class _Clock:
    """Microseconds since the epoch -> uet's timestamp text, and -> a ULID's time part;
    both cached (a ledger's timestamps cluster), neither through datetime."""

    def __init__(self) -> None:
        self._days: dict[int, str] = {}
        self._ms, self._ms_text = -1, ""

    def stamp(self, us: int) -> str:
        seconds, micros = divmod(us, 1_000_000)
        day, second = divmod(seconds, 86_400)
        prefix = self._days.get(day)
        if prefix is None:
            prefix = time.strftime("%Y-%m-%dT", time.gmtime(day * 86_400))
            self._days[day] = prefix
        hours, rest = divmod(second, 3600)
        return f"{prefix}{hours:02d}:{rest // 60:02d}:{rest % 60:02d}.{micros:06d}Z"

    def ulid(self, us: int, rand80: int) -> str:
        """A ULID (26 Crockford base-32 characters) for the millisecond of `us`."""
        ms = us // 1000
        if ms != self._ms:
            self._ms = ms
            self._ms_text = "".join([_PAIRS[(ms >> shift) & 1023]
                                     for shift in (40, 30, 20, 10, 0)])
        return self._ms_text + "".join([_PAIRS[(rand80 >> shift) & 1023]
                                        for shift in (70, 60, 50, 40, 30, 20, 10, 0)])


def _workstreams() -> list[tuple[str, str, str, str]]:
    """(project, phase, workstream id, run metadata text without the per-run part)."""
    found = []
    for p, project in enumerate(PROJECTS):
        for w in range(WORKSTREAMS_PER_PROJECT):
            ws_id = f"WS-{project}-{w + 1:02d}"
            source = f"workstreams/{ws_id}.yaml"
            workstream = {"id": ws_id, "sha256": sha256(source.encode()).hexdigest(),
                          "source": source, "format": "yaml"}
            found.append((project, PHASES[(p + w) % len(PHASES)], ws_id,
                          json.dumps({"workstream": workstream, "repo": f"repos/{project}"})))
    return found


def _ending(rng: random.Random) -> str:
    draw = rng.random() * sum(share for _, share in ENDINGS)
    for state, share in ENDINGS:
        draw -= share
        if draw < 0:
            return state
    return ENDINGS[0][0]


def _plan_steps(rng: random.Random, state: str, steps: int) -> list[tuple[int, int, str]]:
    """The attempts a run of this final state made: (sequence, attempt, state)."""
    if steps == 0 or state == "pending" or (state == "canceled"
                                            and rng.random() < CANCELED_BEFORE_START):
        return []
    plan: list[tuple[int, int, str]] = []
    # the sequence where a run that did not succeed stopped
    stop = rng.randint(1, steps) if state != "succeeded" else steps
    for sequence in range(1, stop + 1):
        last = sequence == stop and state != "succeeded"
        retried = rng.random() < RETRY_SHARE
        if last:
            final = {"failed": "failed", "quarantined": "failed", "canceled": "canceled",
                     "running": "running"}[state]
        else:
            final = "succeeded"
        if retried:
            plan.append((sequence, 1, "failed"))
            plan.append((sequence, 2, final))
        else:
            plan.append((sequence, 1, final))
    return plan


def _rows(rng: random.Random, clock: _Clock, first: int, count: int, total: int,
          start_us: int, gap_us: int, steps_per_run: int, events_per_run: int | None,
          seq: int, workstreams: list) -> tuple[list, list, list, int]:
    """The rows of runs first .. first+count-1: (runs, steps, events, last seq)."""
    runs: list[tuple] = []
    steps: list[tuple] = []
    events: list[tuple] = []
    stamp, ulid, bits = clock.stamp, clock.ulid, rng.getrandbits
    open_from = total - min(NEWEST_OPEN, max(0, total // 100))
    budget = max(gap_us * 8 // 10, 4_000)  # a run's whole life, inside its gap
    for i in range(first, first + count):
        project, phase, ws_id, meta_text = workstreams[i % len(workstreams)]
        created = start_us + i * gap_us + bits(20) % max(1, gap_us // 20)
        run_id = ulid(created, bits(80))
        if i >= open_from:
            state = "running" if (total - i) % 3 else "pending"
        else:
            state = _ending(rng)
        plan = _plan_steps(rng, state, steps_per_run)
        started = state != "pending" and not (state == "canceled" and not plan)
        # durations: typical ones, squeezed into the budget when the gap is short
        tools = [TOOLS[(i + sequence) % len(TOOLS)] for sequence, _, _ in plan]
        wanted = [typical * (0.3 + 1.4 * rng.random()) * 1e6 for _, _, typical in tools]
        queue = 2e6 * rng.random()
        scale = max(0.0, min(1.0, (budget - 2_000 * (len(plan) + 3))
                             / (queue + sum(wanted) + 1.0)))
        moment = created + 1_000 + int(queue * scale)
        trail: list[tuple[int, str, str]] = [(created, "run.created", '{"state": "pending"}')]
        started_at = None
        if started:
            started_at = stamp(moment)
            trail.append((moment, "run.state_changed", '{"from": "pending", "to": "running"}'))
        for (sequence, attempt, step_state), (tool, models, _), seconds in zip(plan, tools,
                                                                               wanted):
            moment += 1_000
            begun = moment
            moment += 1_000 + int(seconds * scale)
            step_id = ulid(begun, bits(80))
            task_id = f"T{sequence}"
            if models:
                model = models[bits(8) % len(models)]
                tokens_in, tokens_out = 800 + bits(14), 50 + bits(11)
                cost = round(tokens_in * 3e-6 + tokens_out * 15e-6, 6)
            else:
                model = tokens_in = tokens_out = cost = None
            code = {"succeeded": 0, "failed": 1, "running": None, "canceled": None}[step_state]
            ended = None if step_state == "running" else moment
            error = (f"{tool} exited 1: gate unit failed (exit 1)" if step_state == "failed"
                     else "canceled" if step_state == "canceled" else None)
            steps.append((
                step_id, run_id, sequence, attempt, tool, task_id,
                f"Task {task_id} of {ws_id}, attempt {attempt}: make the change and its tests",
                stamp(begun), None if ended is None else stamp(ended), step_state, code, error,
                model, tokens_in, tokens_out, cost,
                f'{{"task_id": "{task_id}", "command": ["{tool}"]}}'))
            trail.append((begun, "step_attempt.created",
                          f'{{"step_attempt_id": "{step_id}", "sequence": {sequence}, '
                          f'"attempt": {attempt}, "tool_id": "{tool}", "state": "running"}}'))
            if ended is not None:
                exit_part = "" if code is None else f', "exit_code": {code}'
                trail.append((ended, "step_attempt.state_changed",
                              f'{{"step_attempt_id": "{step_id}", "from": "running", '
                              f'"to": "{step_state}"{exit_part}}}'))
        exit_code = error_message = ended_at = None
        if state not in ("running", "pending"):
            moment += 1_000
            ended_at = stamp(moment)
            exit_code = {"succeeded": 0, "failed": 1, "quarantined": 1}.get(state)
            task = f"task T{plan[-1][0]}" if plan else "the run"
            if state == "failed":
                error_message = f"{task} failed after {plan[-1][1] if plan else 0} attempt(s)"
            elif state == "quarantined":
                error_message = f"{task}: patch quarantined (outside its files_scope)"
            elif state == "canceled":
                error_message = "canceled by request"
            before = "running" if started else "pending"
            exit_part = "" if exit_code is None else f', "exit_code": {exit_code}'
            trail.append((moment, "run.state_changed",
                          f'{{"from": "{before}", "to": "{state}"{exit_part}}}'))
            if events_per_run is not None and len(trail) > events_per_run:
                trail = trail[:events_per_run - 1] + trail[-1:]
        elif events_per_run is not None:
            trail = trail[:events_per_run]
        runs.append((run_id, project, phase, ws_id, stamp(created), started_at, ended_at,
                     state, exit_code, error_message,
                     f'{meta_text[:-1]}, "base": "{bits(160):040x}", '
                     f'"branch": "uet/{run_id}"}}'))
        for moment, event_type, data in trail:
            seq += 1
            events.append((ulid(moment, bits(80)), run_id, stamp(moment), event_type, data,
                           seq))
    return runs, steps, events, seq


def build(path: str | os.PathLike, runs: int, *, steps_per_run: int = 3,
          events_per_run: int | None = 4, seed: int = 0, days: float = 365.0,
          end: datetime | None = None, analyze: bool = False,
          progress: bool = False) -> dict[str, Any]:
    """Create a ledger of `runs` runs at `path` (which must not exist yet).

    Returns the row counts of runs, step_attempts and run_events, and the build's seconds.
    `end` (default: now) is an hour after the newest run; the runs are spread over the
    `days` before it. The same arguments (and `end`) build the same rows.
    """
    path = os.fspath(path)
    if runs < 0 or steps_per_run < 0:
        raise ValueError("runs and steps_per_run must be >= 0")
    if events_per_run is not None and events_per_run < 1:
        raise ValueError("events_per_run must be >= 1 (every run has its run.created)")
    if os.path.exists(path):
        raise FileExistsError(f"{path} exists: build_ledger writes a new ledger only")
    began = time.perf_counter()
    Database(path).close()  # the schema, at the current version, in WAL
    rng = random.Random(seed)
    clock = _Clock()
    end = end or datetime.now(timezone.utc)
    end_us = int((end - timedelta(hours=1)).timestamp() * 1_000_000)
    span_us = int(days * 86_400 * 1_000_000)
    gap_us = max(1, span_us // max(1, runs))
    start_us = end_us - gap_us * runs
    workstreams = _workstreams()
    counts = {"runs": 0, "step_attempts": 0, "run_events": 0}
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        seq = conn.execute("SELECT coalesce(max(seq), 0) FROM run_events").fetchone()[0]
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA cache_size=-512000")  # 512 MB: index pages stay in memory
        conn.execute("PRAGMA temp_store=MEMORY")
        conn.execute("BEGIN")
        in_transaction = 0
        for first in range(0, runs, CHUNK_RUNS):
            count = min(CHUNK_RUNS, runs - first)
            run_rows, step_rows, event_rows, seq = _rows(
                rng, clock, first, count, runs, start_us, gap_us, steps_per_run,
                events_per_run, seq, workstreams)
            conn.executemany(INSERT_RUN, run_rows)
            conn.executemany(INSERT_STEP, step_rows)
            conn.executemany(INSERT_EVENT, event_rows)
            counts["runs"] += len(run_rows)
            counts["step_attempts"] += len(step_rows)
            counts["run_events"] += len(event_rows)
            in_transaction += count
            if in_transaction >= RUNS_PER_TRANSACTION:
                conn.execute("COMMIT")
                conn.execute("BEGIN")
                in_transaction = 0
            if progress:
                print(f"  {counts['runs']:,} runs ({time.perf_counter() - began:.0f} s)",
                      file=sys.stderr, flush=True)
        conn.execute("COMMIT")
        if analyze:
            conn.execute("ANALYZE")
        conn.execute("PRAGMA journal_mode=WAL")  # as uet keeps a ledger
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    finally:
        conn.close()
    counts["seconds"] = time.perf_counter() - began
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="the ledger file to create (must not exist)")
    parser.add_argument("--runs", type=int, required=True)
    parser.add_argument("--steps-per-run", type=int, default=3)
    parser.add_argument("--events-per-run", type=int, default=4,
                        help="at most this many events per run (0: the whole trail)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--days", type=float, default=365.0,
                        help="the runs are spread over this many days, ending an hour ago")
    parser.add_argument("--analyze", action="store_true",
                        help="run ANALYZE at the end (uet never does)")
    parser.add_argument("--check", action="store_true",
                        help="then open it read-only and run uet's doctor on it")
    args = parser.parse_args()
    counts = build(args.path, args.runs, steps_per_run=args.steps_per_run,
                   events_per_run=args.events_per_run or None, seed=args.seed,
                   days=args.days, analyze=args.analyze, progress=True)
    print(f"built {counts['runs']:,} runs, {counts['step_attempts']:,} step attempts, "
          f"{counts['run_events']:,} events in {counts['seconds']:.1f} s "
          f"({os.path.getsize(args.path) / 1e6:,.0f} MB)")
    if args.check:
        from uet.state.health import problems
        started = time.perf_counter()
        with Database(args.path, read_only=True) as db:
            found = problems(db.doctor())
        print(f"doctor: {'; '.join(found) if found else 'ok'} "
              f"({time.perf_counter() - started:.1f} s)")
        return 1 if found else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

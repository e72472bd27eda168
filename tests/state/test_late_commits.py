"""Followers of the event trail against writers that commit late (issue 16's guard).

Writer processes append events at once: "late" writers insert inside an `atomic()` block and
then sleep before the block commits (some blocks raise and roll back, some roll back only a
nested block), while "plain" writers (`create_event`) and "block" writers (`atomic()` blocks
of several events) commit around them. Three kinds of followers read the trail from the
start while this goes on: a loop over `events_since(cursor)` advancing its cursor to the last
seq it saw, `follow_events(cursor)` generators (LISTEN/NOTIFY on PostgreSQL), and a
`uet events --follow --json` process. Each must receive every committed event exactly once,
in strictly increasing seq, and never an event of a block that rolled back.

Today every write holds the ledger-wide write lock until COMMIT, so the other writers queue
behind a late block; a design that lets them commit around it must still hand out `seq` so
that no follower passes the late block's events. Public API only; random timing is seeded
(UET_LATE_COMMITS_SEED), process scheduling is not.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from uet.state import Database

UET = shutil.which("uet", path=os.path.dirname(sys.executable))
SEED = int(os.environ.get("UET_LATE_COMMITS_SEED", "1616"))
RUNS = 3            # events go to runs chosen at random (different runs, and the same one)
SENTINEL = "late-commits-sentinel"  # written once every writer has ended: followers stop on it
WAIT = 120.0        # generous deadline for anything to happen (a failure, never a time bound)

# role -> (processes, rounds each)
WRITERS = {"late": (3, 30), "plain": (2, 50), "block": (1, 25)}

# One writer process: opens the ledger, says it is ready, waits for the start signal, then
# writes its rounds; at the end writes what it committed and what it rolled back (JSON).
WRITER = r'''
import json, os, random, sys, time
from uet.state import Database

ledger, runs, role, seed, rounds, go, out = sys.argv[1:]
runs, seed, rounds = runs.split(","), int(seed), int(rounds)
rng = random.Random(seed)
db = Database(ledger)
db.schema_version()  # connected and migrated before the start
open(out + ".ready", "w").close()
deadline = time.monotonic() + 120
while not os.path.exists(go):
    if time.monotonic() > deadline:
        sys.exit("no start signal within 120 s")
    time.sleep(0.002)


class Abort(Exception):
    pass


def event(event_id):
    return {"event_id": event_id, "run_id": rng.choice(runs), "event_type": role,
            "data": {"writer": f"{role}{seed}", "pid": os.getpid()}}


committed, aborted = [], []
for r in range(rounds):
    name = f"{role}{seed}-{r}"
    if role == "late":
        # insert, then sleep before COMMIT (sometimes between inserts too); a quarter of the
        # blocks raise after sleeping and roll back, some roll back a nested block only
        ids = [f"{name}-{k}" for k in range(rng.choice((1, 1, 1, 2, 3)))]
        abort, nested = rng.random() < 0.25, rng.random() < 0.2
        inner = [f"{name}-inner"] if nested else []
        try:
            with db.atomic():
                for event_id in ids:
                    db.create_event(event(event_id))
                    time.sleep(rng.uniform(0.0, 0.015))
                if nested:
                    try:
                        with db.atomic():
                            db.create_event(event(inner[0]))
                            time.sleep(rng.uniform(0.0, 0.01))
                            raise Abort()
                    except Abort:
                        pass
                time.sleep(rng.uniform(0.01, 0.05))  # the late part: inserted, not committed
                if abort:
                    raise Abort()
        except Abort:
            aborted += ids + inner
        else:
            committed += ids
            aborted += inner
    elif role == "plain":
        db.create_event(event(name))
        committed.append(name)
    else:  # "block": several events committed together, promptly
        ids = [f"{name}-{k}" for k in range(rng.randint(2, 5))]
        with db.atomic():
            for event_id in ids:
                db.create_event(event(event_id))
        committed += ids
    time.sleep(rng.uniform(0.0, 0.02))
db.close()
with open(out + ".tmp", "w") as f:
    json.dump({"committed": committed, "aborted": aborted}, f)
os.replace(out + ".tmp", out)
'''


class Follower:
    """What one follower received, in order, as (seq, event_id); done once it has the
    sentinel. `error` holds what made it stop early, if anything."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.received: list[tuple[int, str]] = []
        self.reads = 0  # reads that returned events (the events_since loop only)
        self.done = threading.Event()
        self.error: BaseException | str | None = None
        self.stop = threading.Event()

    def take(self, event: dict) -> None:
        self.received.append((event["seq"], event["event_id"]))
        if event["event_id"] == SENTINEL:
            self.done.set()


def _poll_events_since(ledger: str, follower: Follower, rng: random.Random) -> None:
    """(a): events_since(cursor) in a loop, the cursor advanced to the last seq seen; random
    page sizes (a page of 1 ends at every event) and pauses."""
    try:
        with Database(ledger) as db:
            cursor = 0
            while not follower.done.is_set() and not follower.stop.is_set():
                batch = db.events_since(cursor, limit=rng.choice((1, 2, 3, 7, 1000)))
                if batch:
                    follower.reads += 1
                for event in batch:
                    follower.take(event)
                    cursor = event["seq"]
                time.sleep(rng.uniform(0.0, 0.01))
    except BaseException as exc:  # reported by the test
        follower.error = exc
        follower.done.set()


def _follow_events(ledger: str, follower: Follower, batch: int, poll_interval: float) -> None:
    """(b): the follow_events generator (on PostgreSQL woken by LISTEN/NOTIFY)."""
    try:
        with Database(ledger) as db:
            with contextlib.closing(db.follow_events(0, poll_interval=poll_interval,
                                                     batch=batch)) as trail:
                for event in trail:
                    follower.take(event)
                    if follower.done.is_set() or follower.stop.is_set():
                        return
    except BaseException as exc:  # reported by the test
        follower.error = exc
        follower.done.set()


def _read_cli(proc: subprocess.Popen, follower: Follower) -> None:
    """(c): the JSON lines a `uet events --follow --json` process prints."""
    try:
        for line in proc.stdout:
            follower.take(json.loads(line))
            if follower.done.is_set():
                return
        follower.error = f"its output ended (exit status {proc.wait()}) before the sentinel"
    except BaseException as exc:  # reported by the test
        follower.error = exc
    follower.done.set()


def _raw_trail(ledger: str) -> list[tuple[int, str]]:
    """Every row of the event table, read with the driver itself (past uet)."""
    sql = "SELECT seq, event_id FROM run_events ORDER BY seq"
    if ledger.startswith("postgresql://"):
        import psycopg
        with psycopg.connect(ledger, autocommit=True) as conn:
            return [tuple(row) for row in conn.execute(sql)]
    conn = sqlite3.connect(ledger)
    try:
        return [tuple(row) for row in conn.execute(sql)]
    finally:
        conn.close()


def _trail(db: Database) -> list[tuple[int, str]]:
    """The whole trail through the public API, page by page."""
    trail: list[tuple[int, str]] = []
    while batch := db.events_since(cursor := trail[-1][0] if trail else 0, limit=500):
        assert batch[0]["seq"] > cursor, f"events_since({cursor}) began at {batch[0]['seq']}"
        trail += [(e["seq"], e["event_id"]) for e in batch]
    return trail


def _differences(received: list[tuple[int, str]], trail: list[tuple[int, str]]) -> str:
    """What is wrong with what a follower received, against the committed trail."""
    counts = Counter(received)
    expected = set(trail)
    missing = [e for e in trail if e not in counts]
    repeated = sorted(e for e, n in counts.items() if n > 1)
    foreign = [e for e in received if e not in expected]
    backwards = [(a, b) for a, b in zip(received, received[1:]) if b[0] <= a[0]]
    return (f"received {len(received)} of {len(trail)} events; skipped {missing[:10]} "
            f"({len(missing)}), repeated {repeated[:10]} ({len(repeated)}), not in the trail "
            f"{foreign[:10]} ({len(foreign)}), seq not increasing at {backwards[:5]} "
            f"({len(backwards)})")


def _wait_for(condition, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout:g} s"
        time.sleep(0.005)


def test_followers_never_skip_or_repeat_events_of_late_commits(ledger, tmp_path):
    db = Database(ledger)
    run_ids = [db.create_run({"project_id": "p", "phase_id": f"ph{i}"}) for i in range(RUNS)]
    postgres = db.engine == "postgresql"
    rng = random.Random(SEED)
    go = str(tmp_path / "go")
    env = {k: v for k, v in os.environ.items() if k != "UET_DATABASE"}

    followers = [Follower("events_since"), Follower("follow_events"),
                 Follower("follow_events batch=3"), Follower("uet events --follow")]
    poll = 1.0 if postgres else 0.02  # PostgreSQL: mostly woken by NOTIFY, not by polling
    threads = [
        threading.Thread(target=_poll_events_since,
                         args=(ledger, followers[0], random.Random(SEED + 1)), daemon=True),
        threading.Thread(target=_follow_events, args=(ledger, followers[1], 1000, poll),
                         daemon=True),
        threading.Thread(target=_follow_events, args=(ledger, followers[2], 3, poll),
                         daemon=True),
    ]
    cli = subprocess.Popen([UET, "events", "--follow", "--json", "--interval",
                            "1" if postgres else "0.02", "--db", ledger],
                           cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=env)
    threads.append(threading.Thread(target=_read_cli, args=(cli, followers[3]), daemon=True))
    writers: list[subprocess.Popen] = []
    outs: list[str] = []
    try:
        for thread in threads:
            thread.start()
        # every follower is reading the trail (it has the runs' creations) before the race
        _wait_for(lambda: all(len(f.received) >= RUNS or f.error for f in followers),
                  "the followers did not all read the trail's first events")
        for role, (count, rounds) in WRITERS.items():
            for _ in range(count):
                out = str(tmp_path / f"writer{len(outs)}.json")
                writers.append(subprocess.Popen(
                    [sys.executable, "-c", WRITER, ledger, ",".join(run_ids), role,
                     str(rng.randrange(1, 1_000_000)), str(rounds), go, out],
                    cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, text=True))
                outs.append(out)
        _wait_for(lambda: all(os.path.exists(o + ".ready") or w.poll() is not None
                              for o, w in zip(outs, writers)),
                  "the writers did not all get ready")
        Path(go).touch()
        for writer in writers:
            name = f"{writer.args[5]} (seed {writer.args[6]})"
            try:
                _, err = writer.communicate(timeout=WAIT)
            except subprocess.TimeoutExpired:
                pytest.fail(f"writer {name} did not finish within {WAIT:g} s")
            assert writer.returncode == 0, f"writer {name} failed:\n{err}"
        db.create_event({"event_id": SENTINEL, "run_id": run_ids[0], "event_type": "end"})
        for follower in followers:
            assert follower.done.wait(WAIT), (
                f"follower {follower.name} did not receive the last event within {WAIT:g} s: "
                f"{_differences(follower.received, _trail(db))}")
            assert follower.error is None, f"follower {follower.name} failed: {follower.error!r}"
        cli.send_signal(signal.SIGINT)
        _, err = cli.communicate(timeout=60)
        assert cli.returncode == 0, f"uet events --follow ended with {cli.returncode}:\n{err}"
        trail = _trail(db)
        created = [e["event_id"] for run_id in run_ids for e in db.list_events(run_id)
                   if e["event_type"] == "run.created"]
    finally:
        for follower in followers:
            follower.stop.set()
        for proc in [*writers, cli]:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        for thread in threads:
            thread.join(10)
        db.close()

    # the trail: what the API gives is what the table holds, in strictly increasing seq
    assert trail == _raw_trail(ledger), "events_since(0) differs from the table's rows"
    seqs = [seq for seq, _ in trail]
    assert all(a < b for a, b in zip(seqs, seqs[1:])), f"seqs not increasing: {seqs}"
    assert trail[-1][1] == SENTINEL
    trail_ids = Counter(event_id for _, event_id in trail)
    assert max(trail_ids.values()) == 1, "an event_id appears twice in the trail"

    # what the writers committed is in the trail (with the runs' creations and the sentinel,
    # nothing else); what they rolled back is not, nor did any follower receive it
    reports = [json.loads(Path(out).read_text()) for out in outs]
    committed = [i for r in reports for i in r["committed"]]
    aborted = {i for r in reports for i in r["aborted"]}
    assert sorted(committed + created + [SENTINEL]) == sorted(trail_ids), (
        "the trail is not what the writers committed: missing "
        f"{sorted(set(committed) - set(trail_ids))[:10]}, unexpected "
        f"{sorted(set(trail_ids) - set(committed) - set(created) - {SENTINEL})[:10]}")
    assert aborted.isdisjoint(trail_ids), f"rolled back yet committed: {aborted & set(trail_ids)}"

    # the race happened: late blocks committed and rolled back, nested blocks rolled back,
    # and the writers' events are interleaved in the trail, not one writer after another
    mine = set(committed)
    order = [event_id.split("-")[0] for _, event_id in trail if event_id in mine]
    switches = sum(a != b for a, b in zip(order, order[1:]))
    assert switches >= 2 * len(writers), f"writers barely interleaved ({switches} switches)"
    late = [r for r, w in zip(reports, writers) if w.args[5] == "late"]
    assert all(r["committed"] for r in late) and sum(len(r["aborted"]) for r in late) >= 3
    assert any(i.endswith("-inner") for r in late for i in r["aborted"])

    # every follower received every committed event once, in seq order, nothing else
    wrong = [f"follower {f.name} (seed {SEED}): {_differences(f.received, trail)}"
             for f in followers if f.received != trail]
    assert not wrong, "\n".join(wrong)
    # the events_since loop read while the writers wrote, not everything at the end
    assert followers[0].reads > len(writers), (
        f"the events_since follower found events in only {followers[0].reads} reads")

"""Check 9: no run is left open, no command outlives its owner. `uet run` processes are
killed with SIGKILL, SIGHUP or SIGTERM at random instants of their life (before, while and
after their command starts); a reaper polls `recover` every 1/20 heartbeat interval, as any
uet process that writes does once.

Every signal is used in turn; half the processes die once their command runs, half at any
instant from their start.

- A run whose owner was canceled by a signal must be closed by the owner itself.
- A run whose owner was killed outright must be closed by the first reaper pass whose clock
  is past the death (on the owner's own host its dead pid tells at once).
- Two heartbeat intervals after the last death, no run may be left pending or running, and
  no process the commands started (the command, and a child it put in its process group)
  may be alive.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from reliability_suite.common import Mode, Result, connect_raw, spawn

# writes its own pid, starts a child in its process group that writes its pid, then waits
COMMAND = ("import os, subprocess, sys, time\n"
           "out = sys.argv[1]\n"
           "child = subprocess.Popen(['sleep', '600'])\n"
           "open(out + '.child', 'w').write(str(child.pid))\n"
           "open(out + '.command', 'w').write(str(os.getpid()))\n"
           "time.sleep(600)\n")
SIGNALS = (signal.SIGKILL, signal.SIGHUP, signal.SIGTERM)
TERMINAL = ("succeeded", "failed", "canceled", "quarantined")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _runs(path: str) -> dict[str, tuple[str, str]]:
    """{tag of the command: (state, run_id)} of every run in the ledger."""
    import json
    conn = connect_raw(path)
    try:
        rows = conn.execute("SELECT run_id, state, metadata FROM runs").fetchall()
    finally:
        conn.close()
    found = {}
    for run_id, state, metadata in rows:
        command = json.loads(metadata or "{}").get("command") or []
        if command:
            found[command[-1]] = (state, run_id)
    return found


def _round(mode: Mode, workdir: Path, mutant: str | None, rng: random.Random,
           number: int) -> dict:
    from datetime import datetime, timezone

    from uet.state import Database, init_db
    from uet.state.recovery import recover
    h = mode.owner_heartbeat_s
    path = str(workdir / f"owners-{number}.db")
    init_db(path).close()
    tags = [str(workdir / f"cmd-{number}-{i}") for i in range(mode.owner_processes)]
    # every signal in turn; even-numbered processes die once their command runs (so that
    # it has something to leave behind), odd-numbered ones at any instant from their start
    plan = {tag: (rng.uniform(0.0, 0.5) if i % 2 == 0 else rng.uniform(0.0, 1.5),
                  SIGNALS[i % len(SIGNALS)]) for i, tag in enumerate(tags)}
    after_command = {tag for i, tag in enumerate(tags) if i % 2 == 0}
    command_seen: dict[str, float] = {}
    procs = {}
    began = time.monotonic()
    for tag in tags:
        procs[tag] = spawn("uet", "run", "--db", path, "--heartbeat", f"{h:g}", "--",
                           sys.executable, "-c", COMMAND, tag, mutant=mutant,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
    killed: dict[str, tuple[float, int]] = {}  # tag: (wall clock of the death, signal)
    closed_late: set[str] = set()  # still open after a reaper pass that began past the death
    db = Database(path)
    try:
        deadline = began + 60 + 14 * h
        last_death = None
        while time.monotonic() < deadline:
            now = time.monotonic()
            for tag, (after, signum) in plan.items():
                if tag in after_command and tag not in command_seen:
                    if not os.path.exists(tag + ".command"):
                        continue
                    command_seen[tag] = now
                start = command_seen.get(tag, began)
                if tag not in killed and now - start >= after:
                    procs[tag].send_signal(signum)
                    procs[tag].wait(timeout=120)  # dead (or done cleaning up) from here on
                    killed[tag] = (time.time(), signum)
                    last_death = time.monotonic()
            moment = datetime.now(timezone.utc)
            recover(db, now=moment)
            runs = _runs(path)
            for tag, (death, signum) in killed.items():
                state = runs.get(tag, ("none", None))[0]
                # canceled by a signal: the owner itself closed it before it exited
                if state not in TERMINAL and state != "none" and moment.timestamp() > death:
                    closed_late.add(tag)
            if len(killed) == len(tags) and time.monotonic() - last_death > 2 * h:
                break
            time.sleep(h / 20)
        runs = _runs(path)
        open_runs = [tag for tag in tags if runs.get(tag, ("none",))[0] not in
                     (*TERMINAL, "none")]
        orphans = []
        for tag in tags:
            for suffix in (".command", ".child"):
                pid_file = Path(tag + suffix)
                if pid_file.exists():
                    pid = int(pid_file.read_text() or 0)
                    if pid and _alive(pid):
                        orphans.append(f"{suffix[1:]} of {Path(tag).name} "
                                       f"({signal.Signals(plan[tag][1]).name})")
                        os.kill(pid, signal.SIGKILL)
        latency = []
        conn = connect_raw(path)
        try:
            for tag, (death, _) in killed.items():
                run_id = runs.get(tag, (None, None))[1]
                if run_id is None:
                    continue
                ended = conn.execute("SELECT ended_at FROM runs WHERE run_id = ?",
                                     (run_id,)).fetchone()[0]
                if ended:
                    stamp = datetime.fromisoformat(ended.replace("Z", "+00:00")).timestamp()
                    latency.append(max(0.0, stamp - death) / h)
        finally:
            conn.close()
    finally:
        db.close()
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
    return {"killed": len(killed), "by": [s for _, s in killed.values()],
            "no_run": sum(1 for tag in tags if tag not in runs),
            "late": len(closed_late), "open": len(open_runs), "orphans": orphans,
            "latency": latency}


# ends by itself after the given seconds (argv: seconds, tag)
FINITE = ("import os, sys, time\n"
          "open(sys.argv[2] + '.command', 'w').write(str(os.getpid()))\n"
          "time.sleep(float(sys.argv[1]))\n")


def _outage_round(mode: Mode, workdir: Path, mutant: str | None, rng: random.Random,
                  number: int, server) -> dict:
    """`uet run` processes on a PostgreSQL ledger whose server goes away for a while in
    the middle; some of them are killed meanwhile. Once the server is back, every run must
    be closed (by its owner, or by the reaper) within two heartbeat intervals of the last
    owner's end, and no command may be alive."""
    from datetime import datetime, timezone

    import pgserver

    from uet.errors import UetError
    from uet.state import Database, init_db
    from uet.state.recovery import recover
    h = mode.owner_heartbeat_s
    with pgserver.schema(server.url(), f"owners_{number}") as url:
        init_db(url).close()
        tags = [str(workdir / f"pg-{number}-{i}") for i in range(mode.owner_processes)]
        # a third of the owners die while the ledger is unreachable, by each signal in turn
        # (their commands outlast the outage); the others' commands end by themselves,
        # before, during or after it
        doomed = {tag: SIGNALS[(i // 3) % len(SIGNALS)] for i, tag in enumerate(tags)
                  if i % 3 == 0}
        procs = {tag: spawn("uet", "run", "--db", url, "--heartbeat", f"{h:g}",
                            "--finish-timeout", f"{rng.choice([0.5, 3.0, 30.0]):g}", "--",
                            sys.executable, "-c", FINITE,
                            "60" if tag in doomed else f"{rng.uniform(0.2, 2.5):.2f}", tag,
                            mutant=mutant, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                 for tag in tags}
        # the outage starts at a random instant once the commands run (each has its run)
        deadline = time.monotonic() + 120
        while (not all(os.path.exists(tag + ".command") for tag in tags)
               and time.monotonic() < deadline):
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.5))
        server.halt()
        down = rng.uniform(0.5, 4.0)
        kill_at = {tag: time.monotonic() + rng.uniform(0.0, down * 0.8) for tag in doomed}
        outage_end = time.monotonic() + down
        while time.monotonic() < outage_end:
            for tag, signum in list(doomed.items()):
                if time.monotonic() >= kill_at[tag]:
                    if procs[tag].poll() is None:
                        procs[tag].send_signal(signum)
                    del doomed[tag]
            time.sleep(0.02)
        server.resume()
        for proc in procs.values():  # each owner closes its run, or gives up and says so
            proc.communicate(timeout=180)
        ended = time.monotonic()
        db = Database(url)
        left_open = None  # what the first reaper pass after every owner ended left open
        try:
            while True:
                try:
                    recover(db, now=datetime.now(timezone.utc))
                except UetError:
                    time.sleep(h / 20)
                    continue  # the pool is still reconnecting: not a pass
                runs = _runs(url)
                open_runs = [t for t in tags if runs.get(t, ("none",))[0] not in
                             (*TERMINAL, "none")]
                if left_open is None:  # every owner has ended, on this host: all closed
                    left_open = len(open_runs)
                if not open_runs or time.monotonic() - ended > 2 * h:
                    break
                time.sleep(h / 20)
        finally:
            db.close()
        orphans = []
        for tag in tags:
            pid_file = Path(tag + ".command")
            if pid_file.exists() and pid_file.read_text() and _alive(int(pid_file.read_text())):
                orphans.append(f"command of {Path(tag).name}")
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
        conn = connect_raw(url)
        try:  # how the runs were closed: by their owner, or failed by a reaper pass
            reaped = sum(1 for (message,) in conn.execute("SELECT error_message FROM runs")
                         if re.match(r"owner \S+ \(.*\) is gone: ", message or ""))
        finally:
            conn.close()
        return {"processes": len(tags), "open": len(open_runs), "orphans": orphans,
                "reaped": reaped,
                "down": down, "late": left_open or 0,
                "no_run": sum(1 for t in tags if t not in runs)}


def run_outage(mode: Mode, workdir: Path, mutant: str | None, rng: random.Random) -> Result:
    """Check 9 on PostgreSQL: the server goes away in the middle of the runs."""
    import pgserver
    result = Result("owners_pg")
    server = pgserver.Server()
    try:
        server.start(durable=True)  # an outage must not lose what was committed
        rounds = [_outage_round(mode, workdir, mutant, rng, n, server)
                  for n in range(max(1, mode.owner_rounds // 4))]
    finally:
        server.stop()
    result.add("uet run processes through an outage", sum(r["processes"] for r in rounds),
               zero=False, note=f"{len(rounds)} outages of "
                                f"{min(r['down'] for r in rounds):.1f}-"
                                f"{max(r['down'] for r in rounds):.1f} s, a third of the "
                                "owners killed during them")
    result.add("owners that never got to create their run", sum(r["no_run"] for r in rounds),
               zero=False)
    result.add("runs failed by the reaper (owner gone)", sum(r["reaped"] for r in rounds),
               zero=False, note="the rest were closed by their owners")
    _add_outcomes(result, rounds, "the first reaper pass after the owners ended",
                  "the last owner ended")
    return result


def run(mode: Mode, workdir: Path, mutant: str | None, rng: random.Random,
        engine: str = "sqlite") -> Result:
    if engine == "postgresql":
        return run_outage(mode, workdir, mutant, rng)
    result = Result("owners")
    rounds = [_round(mode, workdir, mutant, rng, n) for n in range(mode.owner_rounds)]
    by = [s for r in rounds for s in r["by"]]
    result.add("uet run processes killed", sum(r["killed"] for r in rounds), zero=False,
               note=", ".join(f"{signal.Signals(s).name} {by.count(s)}" for s in SIGNALS))
    result.add("killed before their run existed", sum(r["no_run"] for r in rounds),
               zero=False)
    result.add("max latency, death to run closed",
               round(max((x for r in rounds for x in r["latency"]), default=0), 2),
               zero=False, note=f"heartbeat intervals of {mode.owner_heartbeat_s:g} s")
    _add_outcomes(result, rounds, "a reaper pass after the death", "the last death")
    return result


def _add_outcomes(result: Result, rounds: list[dict], first_pass: str, last_end: str) -> None:
    """The figures both checks must keep at 0: runs left open, processes left alive."""
    result.add(f"runs {first_pass} left open", sum(r["late"] for r in rounds), "stuck")
    result.add(f"runs open two intervals after {last_end}", sum(r["open"] for r in rounds),
               "stuck")
    orphans = [o for r in rounds for o in r["orphans"]]
    result.add("processes alive after their owner", len(orphans), "orphans")
    result.details = orphans

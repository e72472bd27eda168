"""Check 6: trouble under the ledger. The disk fills up (a file-size limit stands in for a
full disk), or the files become read-only (immutable) while a writer is writing: calls fail
with uet's typed StorageError and a readable message, a failed call leaves nothing behind,
and once space or permission returns the ledger is intact and usable."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import time
from pathlib import Path

from reliability_suite.common import (Mode, Result, acked_lines, connect_raw, integrity_ok,
                                      spawn, wait_for)

TYPED = "uet.errors.StorageError"
HINTS = ("free space", "permissions", "file-size limits")


def _judge(path: str, lines: list[list[str]], counts: dict) -> None:
    conn = connect_raw(path)
    try:
        present = {r[0] for r in conn.execute("SELECT event_id FROM run_events")}
    finally:
        conn.close()
    for line in lines:
        if line[0] == "event":
            counts["acked"] += 1
            counts["lost"] += line[1] not in present
        elif line[0] == "error":
            counts["errors"] += 1
            kind, _, message = " ".join(line[2:]).partition(":")
            counts["untyped"] += kind != TYPED
            # a message a person can act on: what happened and what to check
            counts["unclear"] += not any(hint in message for hint in HINTS)
            counts["partial"] += line[1] in present  # the failed call left its row
    counts["corrupt"] += not integrity_ok(path)
    counts["silent"] += not any(line[0] == "error" for line in lines)


def _fill(workdir: Path, mutant: str | None, counts: dict) -> None:
    from uet.state import init_db
    path = str(workdir / "full.db")
    init_db(path).close()
    log = workdir / "full.log"
    child = spawn("fill_disk", path, str(log), mutant=mutant)
    child.wait(timeout=300)
    lines = acked_lines(log)
    counts["recovered"] += child.returncode == 0 and any(
        line[:2] == ["event", "after-2"] for line in lines)
    counts["runs"] += 1
    _judge(path, lines, counts)


def _chattr(flag: str, paths: list[str]) -> bool:
    if os.geteuid() != 0 or shutil.which("chattr") is None:
        return False
    return subprocess.run(["chattr", flag, *paths], capture_output=True).returncode == 0


def _read_only(workdir: Path, mutant: str | None, counts: dict) -> bool:
    """Make the ledger and its WAL immutable under a running writer, then writable again.
    (Not the -shm: SQLite maps it into memory, and a mapping that can no longer be written
    kills the process with SIGBUS, which no library can turn into an error.)"""
    from uet.state import init_db
    path = str(workdir / "ro.db")
    with init_db(path) as db:
        db.create_run({"run_id": "ro-run", "project_id": "ro", "phase_id": "ph"})
    log, stop = workdir / "ro.log", str(workdir / "ro.stop")
    child = spawn("steady_writer", path, str(log), stop, mutant=mutant)
    try:
        wait_for(lambda: len(acked_lines(log)) >= 20, 60, "the writer")
        files = [path, path + "-wal"]
        if not _chattr("+i", files):
            return False
        try:
            deadline = time.monotonic() + 10
            while (sum(line[0] == "error" for line in acked_lines(log)) < 5
                   and time.monotonic() < deadline and child.poll() is None):
                time.sleep(0.01)
        finally:
            _chattr("-i", files)
        writes_before = len(acked_lines(log))
        deadline = time.monotonic() + 10
        while (len(acked_lines(log)) < writes_before + 20 and time.monotonic() < deadline
               and child.poll() is None):
            time.sleep(0.01)
        counts["recovered"] += any(line[0] == "event" for line in
                                   acked_lines(log)[writes_before:])
        counts["runs"] += 1
    finally:
        open(stop, "w").close()
        child.wait(timeout=60)
    _judge(path, acked_lines(log), counts)
    counts["died"] += child.returncode != 0
    return True


def run(mode: Mode, workdir: Path, mutant: str | None, rng: random.Random) -> Result:
    result = Result("disk")
    counts = dict.fromkeys(("acked", "lost", "errors", "untyped", "partial", "corrupt",
                            "recovered", "runs", "died", "silent", "unclear"), 0)
    _fill(workdir, mutant, counts)
    read_only_ran = _read_only(workdir, mutant, counts)
    result.add("writers cut off", counts["runs"], zero=False,
               note="full disk" + (", read-only files" if read_only_ran
                                   else "; read-only files need root and chattr: not run"))
    result.add("failed calls seen", counts["errors"], zero=False)
    result.add("errors not StorageError", counts["untyped"], "untyped")
    result.add("errors without advice (space, permissions)", counts["unclear"], "untyped")
    result.add("failed calls that left rows", counts["partial"], "partial")
    result.add("acknowledged but missing", counts["lost"], "lost")
    result.add("corrupted ledgers", counts["corrupt"], "corrupt")
    result.add("not usable once space returned", counts["runs"] - counts["recovered"]
               + counts["died"], "corrupt")
    # a write that "succeeded" on a full disk would mean an error was swallowed
    result.add("writers that never felt the trouble", counts["silent"], "untyped")
    return result

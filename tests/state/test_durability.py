"""A writer killed with SIGKILL at random instants loses no acknowledged write and leaves no
state change without its event."""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from uet.state import init_db

HELPERS = str(Path(__file__).parent.parent / "helpers.py")
RUN_ORDER = {"pending": 0, "running": 1, "succeeded": 2}


def acked_lines(path: Path) -> list[list[str]]:
    # the last line may be torn by the kill; only whole lines were acknowledged
    text = path.read_text() if path.exists() else ""
    return [line.split() for line in text.split("\n")[:-1]]


def test_kill_9_loses_no_acknowledged_write(tmp_path):
    path = str(tmp_path / "crash.db")
    init_db(path).close()
    acklog = tmp_path / "acks.log"
    rng = random.Random(20261129)
    for _ in range(3):
        start = len(acked_lines(acklog))
        writer = subprocess.Popen([sys.executable, HELPERS, "writer", path, str(acklog)])
        deadline = time.monotonic() + 30
        # kill only once this round's writer is well into its work
        while len(acked_lines(acklog)) < start + 30 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        writer.send_signal(signal.SIGKILL)
        assert writer.wait(timeout=30) == -signal.SIGKILL

        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        conn.close()
        with init_db(path) as db:
            acked = acked_lines(acklog)
            assert len(acked) >= start + 30
            for kind, entity_id, *state in acked:
                if kind == "run":
                    run = db.get_run(entity_id)
                    assert run is not None, entity_id
                    assert RUN_ORDER[run["state"]] >= RUN_ORDER[state[0]]
                elif kind == "step":
                    step = db.get_step_attempt(entity_id)
                    assert step is not None and (state[0] == "running"
                                                 or step["state"] == state[0])
                else:
                    assert any(e["event_id"] == entity_id for e in db.events_since(0, limit=10**6))
            # no state change without its event, acknowledged or not
            for run in db.list_runs({"project_id": "crash"}, limit=None):
                events = Counter(e["event_type"] for e in db.list_events(run["run_id"]))
                assert events["run.created"] == 1
                assert events["run.state_changed"] == RUN_ORDER[run["state"]]
                steps = db.list_step_attempts(run["run_id"])
                assert events["step_attempt.created"] == len(steps)
                assert events["step_attempt.state_changed"] == sum(
                    s["state"] != "running" for s in steps)

"""A damaged ledger file gives one line from every command, and `uet doctor` reports it as
a failed check (issue 12, part 2). Many seeded random corruptions, not one."""

from __future__ import annotations

import json
import random
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from test_cli import UET, uet_env
from uet.state import GateLedger, PatchLedger, WorkerLifecycle, init_db

SEED = 20260131
LEDGERS = 30
# every inspection command and doctor; text and JSON forms alternate between ledgers
COMMANDS = ["runs", "show", "events", "workers", "patches", "gates", "doctor"]
# what a damaged file may be said to be: every message names the file and its state
VERDICTS = re.compile(r"is corrupt \(|is not a SQLite database|not a uet ledger|"
                      r"schema version|Could not decode")


def make_ledger(path: str) -> None:
    """A ledger of a few pages of each kind of record."""
    diff = "--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-a\n+b\n"
    with init_db(path) as db:
        for i in range(40):
            run = db.create_run({"project_id": f"p{i}", "phase_id": "ph",
                                 "metadata": {"i": i, "text": "x" * 200}})
            step = db.create_step_attempt({"run_id": run, "sequence": 1, "tool_id": "t"})
            db.transition_run(run, "running")
            db.create_event({"run_id": run, "event_type": "tick", "data": {"i": i}})
        WorkerLifecycle(db).spawn_worker("w1", "testing", {"language": "python"})
        patches = PatchLedger(db)
        patches.create_entry(patches.record_patch(diff, step_attempt_id=step), "PH-1")
        GateLedger(db).define_gate("UNIT", "PH-1", "pytest", run_id=run)


def corrupt(data: bytes, rng: random.Random) -> bytes:
    """`data` with one to three byte ranges overwritten with random bytes, in the middle of
    the file or (half of them) inside the text of its schema: bit rot where it hurts."""
    damaged = bytearray(data)
    schema = [m.start() for m in re.finditer(rb"CREATE ", data)]
    for _ in range(rng.randint(1, 3)):
        if rng.random() < 0.5:
            start = rng.randrange(len(data) // 8, len(data) * 7 // 8)
        else:
            start = rng.choice(schema) + rng.randrange(300)
        size = min(rng.randint(1, 256), len(data) - start)
        damaged[start:start + size] = rng.randbytes(size)
    return bytes(damaged)


def run_uet(args: list[str], cwd: Path) -> tuple[list[str], subprocess.CompletedProcess]:
    return args, subprocess.run([UET, *args], cwd=cwd, env=uet_env(), capture_output=True,
                                timeout=120, stdin=subprocess.DEVNULL)


def test_every_command_on_randomly_corrupted_ledgers_exits_with_one_line(tmp_path):
    # once: a UnicodeDecodeError traceback from every command, doctor included (SQLite's
    # message quoted the damaged schema's bytes, which are not UTF-8)
    make_ledger(str(tmp_path / "good.db"))
    data = (tmp_path / "good.db").read_bytes()
    rng = random.Random(SEED)
    calls = []
    for n in range(LEDGERS):
        path = tmp_path / f"damaged-{n}.db"
        path.write_bytes(corrupt(data, rng))
        form = ["--json"] if n % 2 else []
        calls += [[name, "--db", str(path), *form] for name in COMMANDS]
    verdicts = doctor_failures = 0
    with ThreadPoolExecutor(2) as pool:
        for args, result in pool.map(lambda args: run_uet(args, tmp_path), calls):
            out = result.stdout.decode("utf-8")
            err = result.stderr.decode("utf-8")
            assert result.returncode in (0, 1), (args, result.returncode, err[-3000:])
            assert "Traceback" not in err, (args, err[-3000:])
            if err:
                assert err.startswith("uet: error: ") and err.count("\n") == 1, (args, err)
                verdicts += bool(VERDICTS.search(err))
            if "--json" in args and result.returncode == 0 or args[0] == "doctor":
                assert err == "", (args, err)  # doctor reports, on stdout
                document = json.loads(out) if "--json" in args else None
            if args[0] == "doctor" and result.returncode == 1:
                doctor_failures += 1
                if document is not None:
                    assert document["problems"], (args, document)
                else:
                    assert out.rstrip().endswith("problems found"), (args, out)
    # the damage was found, and by doctor too: not a run of intact copies
    assert verdicts >= LEDGERS // 3 and doctor_failures >= LEDGERS // 3


@pytest.mark.parametrize("command", COMMANDS)
def test_a_schema_that_is_not_utf8_is_a_corrupt_ledger(tmp_path, command):
    # a column name in one table's definition damaged: SQLite's error quotes its bytes
    path = tmp_path / "ledger.db"
    make_ledger(str(path))
    data = bytearray(path.read_bytes())
    at = data.index(b"tool_id", data.index(b"CREATE TABLE step_attempts"))
    data[at:at + 7] = b"4\xff\xfe\xca\x80id"
    path.write_bytes(bytes(data))
    args, result = run_uet([command, "--db", str(path)], tmp_path)
    _, as_json = run_uet([command, "--db", str(path), "--json"], tmp_path)
    assert result.returncode == as_json.returncode == 1
    message = f"ledger {path} is corrupt ("
    if command == "doctor":  # a failed check, reported on stdout
        assert result.stderr == as_json.stderr == b""
        assert result.stdout.decode("utf-8").rstrip().endswith("problems found")
        [problem] = json.loads(as_json.stdout)["problems"]
        assert problem.startswith(message) and "\ufffd" in problem
    else:
        err = result.stderr.decode("utf-8")
        assert err.startswith(f"uet: error: {message}") and err.count("\n") == 1
        assert "\ufffd" in err and "restore it from a backup" in err

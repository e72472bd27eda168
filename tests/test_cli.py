"""The `uet` console script and `python -m uet`, run as a user would: in subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from uet import __version__


def uet(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "UET_DATABASE"}
    return subprocess.run([sys.executable, "-m", "uet", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def test_console_script_is_installed_and_prints_its_version(tmp_path):
    exe = shutil.which("uet", path=os.path.dirname(sys.executable))
    assert exe, "the uet console script is not installed next to this Python"
    result = subprocess.run([exe, "--version"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"uet {__version__}"


def test_no_command_prints_usage(tmp_path):
    result = uet(cwd=tmp_path)
    assert result.returncode == 0 and "usage: uet" in result.stdout


def test_demo_records_a_run_with_two_steps_in_the_default_ledger(tmp_path):
    result = uet("demo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert (tmp_path / ".ledger" / "framework.db").exists()
    assert shown["run"]["state"] == "succeeded"
    assert [s["tool_id"] for s in shown["step_attempts"]] == ["ruff", "pytest"]
    assert [e["seq"] for e in shown["events"]] == sorted(e["seq"] for e in shown["events"])
    from uet.state import init_db
    with init_db(str(tmp_path / ".ledger" / "framework.db")) as db:
        assert db.get_run(shown["run"]["run_id"]) == shown["run"]


def test_demo_against_a_file_that_is_not_a_ledger_fails_in_one_line(tmp_path):
    (tmp_path / "x.db").write_text("hello")
    result = uet("--db", "x.db", "demo", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("uet: error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
    assert (tmp_path / "x.db").read_text() == "hello"

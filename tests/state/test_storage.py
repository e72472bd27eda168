"""Trouble under the ledger: a full disk, a read-only file, a path that cannot be a ledger."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from uet.errors import StorageError
from uet.state import Database, init_db

HELPERS = str(Path(__file__).parent.parent / "helpers.py")


def test_full_disk_is_a_typed_error_and_the_ledger_survives(db_path, tmp_path):
    init_db(db_path).close()
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, HELPERS, "fill_disk", db_path, str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    kind, message, acked, acked_present, usable_after = out.read_text().splitlines()
    assert kind == "StorageError"
    assert "check free space" in message or "disk is full" in message, message
    assert int(acked) > 0 and acked_present == "1" and usable_after == "1"
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


def _make_read_only(paths: list[str]) -> None:
    """Make files unwritable even for root (which ignores permission bits): immutable."""
    for path in paths:
        os.chmod(path, 0o444)
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", *paths], check=True)


def _make_writable(paths: list[str]) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", *paths], check=True)
    for path in paths:
        os.chmod(path, 0o644)


def test_read_only_ledger_refuses_writes_typed_and_stays_intact(db_path):
    with init_db(db_path) as db:
        db.create_run({"run_id": "r", "project_id": "p", "phase_id": "ph"})
    files = [str(p) for p in Path(db_path).parent.iterdir()]
    _make_read_only(files)
    try:
        before = Path(db_path).read_bytes()
        with pytest.raises(StorageError, match="cannot be written|cannot open"):
            with Database(db_path) as db:
                db.create_run({"project_id": "p", "phase_id": "ph"})
        assert Path(db_path).read_bytes() == before
        result = subprocess.run([sys.executable, HELPERS, "try_write", db_path],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and result.stdout.startswith("StorageError: "), (
            result.stdout + result.stderr)
    finally:
        _make_writable(files)
    with Database(db_path) as db:
        db.create_run({"run_id": "after", "project_id": "p", "phase_id": "ph"})
        assert {r["run_id"] for r in db.list_runs()} == {"r", "after"}


def test_a_folder_cannot_be_a_ledger(tmp_path):
    folder = tmp_path / "ledger.db"
    folder.mkdir()
    with pytest.raises(StorageError, match="cannot open ledger"):
        Database(str(folder))


def test_a_file_where_the_folder_should_be(tmp_path):
    (tmp_path / "blocker").write_text("")
    with pytest.raises(StorageError, match="cannot create the folder"):
        Database(str(tmp_path / "blocker" / "sub" / "framework.db"))

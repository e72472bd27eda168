"""Trouble under the ledger: a read-only file, a path that cannot be a ledger. (A full disk and
files turning read-only under a running writer: bench/reliability_suite/disk.py, run by
tests/test_reliability.py.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from uet.errors import StorageError, ValidationError
from uet.state import Database, init_db

HELPERS = str(Path(__file__).parent.parent / "helpers.py")


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
        path = re.escape(db_path)
        with pytest.raises(StorageError, match=rf"^ledger {path} cannot be written \(attempt to "
                                               rf"write a readonly database\)|^cannot open "
                                               rf"ledger {path} "):
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
    with pytest.raises(StorageError, match=f"^cannot open ledger {re.escape(str(folder))}: it is "
                                           "a folder, not a file$"):
        Database(str(folder))


def test_a_file_where_the_folder_should_be(tmp_path):
    (tmp_path / "blocker").write_text("")
    path = tmp_path / "blocker" / "sub" / "framework.db"
    with pytest.raises(StorageError, match=f"^cannot open ledger {re.escape(str(path))}: "
                                           f"{re.escape(str(tmp_path / 'blocker'))} is a "
                                           "file, not a folder; move it away"):
        Database(str(path))


@pytest.mark.parametrize("name, error, message", [
    ("sqlite:///x.db", ValidationError, "sqlite:// URLs are not supported"),
    ("mysql://host/db", ValidationError, "mysql:// URLs are not supported"),
    ("/dev/null", StorageError, "it is a character device, not a regular file"),
])
def test_the_library_refuses_names_that_could_only_go_wrong(tmp_path, monkeypatch, name,
                                                          error, message):
    """As `--db` does: another database's URL, a device; nothing is created."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match=re.escape(message)):
        Database(name)
    assert os.listdir(tmp_path) == [] and not os.path.exists("/dev/null-journal")


def test_a_failed_open_removes_the_folders_it_created(tmp_path):
    """The open fails after creating the ledger's folders (SQLite cannot open a file name
    that is too long): those folders are gone again."""
    path = tmp_path / "a" / "b" / ("x" * 300 + ".db")
    with pytest.raises(StorageError, match="^cannot open ledger"):
        Database(str(path))
    assert os.listdir(tmp_path) == []

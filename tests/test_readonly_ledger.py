"""Inspection of a ledger this user may read but not write: a folder it cannot write (a
read-only mount, another user's folder) works; where SQLite truly cannot read, the error
names the file that blocks it. As root, "cannot write" is made with the immutable flag
(chattr), which binds root too; otherwise with the permission bits."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

from test_cli import uet
from uet.state import Database, init_db


@contextmanager
def unwritable(path: Path):
    """`path` (a folder or file) not writable by this process while the block runs."""
    if os.geteuid() == 0:
        assert shutil.which("chattr"), "tests run as root need chattr (e2fsprogs)"
        subprocess.run(["chattr", "+i", str(path)], check=True, capture_output=True)
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True, capture_output=True)
    else:
        mode = path.stat().st_mode
        path.chmod(mode & ~0o222)
        try:
            yield
        finally:
            path.chmod(mode)


@pytest.fixture
def ledger_in_folder(tmp_path) -> Path:
    path = tmp_path / "ledger" / "framework.db"
    with init_db(str(path)) as db:
        db.create_run({"run_id": "r", "project_id": "p", "phase_id": "ph"})
    # closed: no WAL left (beside the .gitignore uet puts in a folder it creates)
    assert sorted(os.listdir(path.parent)) == [".gitignore", "framework.db"]
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_ledger_in_a_folder_nobody_can_write_is_read_as_it_is(ledger_in_folder, tmp_path):
    before = _digest(ledger_in_folder)
    with unwritable(ledger_in_folder.parent):
        with Database(str(ledger_in_folder), read_only=True) as db:
            assert [r["run_id"] for r in db.list_runs()] == ["r"]
        for args in (["runs", "--json"], ["show", "r"], ["events", "r"], ["doctor"]):
            result = uet(*args, "--db", str(ledger_in_folder), cwd=tmp_path)
            assert result.returncode == 0, (args, result.stderr)
            assert "r" in result.stdout and result.stderr == "", (args, result.stderr)
    assert sorted(os.listdir(ledger_in_folder.parent)) == [".gitignore", "framework.db"]
    assert _digest(ledger_in_folder) == before


def test_a_ledger_being_written_in_an_unwritable_folder_is_read_live(ledger_in_folder,
                                                                      tmp_path):
    writer = Database(str(ledger_in_folder))
    try:
        writer.create_run({"run_id": "live", "project_id": "p", "phase_id": "ph"})
        assert os.path.exists(str(ledger_in_folder) + "-shm")  # a writer has it open
        with unwritable(ledger_in_folder.parent):
            with Database(str(ledger_in_folder), read_only=True) as reader:
                assert {r["run_id"] for r in reader.list_runs()} == {"r", "live"}
                writer.create_run({"run_id": "later", "project_id": "p", "phase_id": "ph"})
                assert reader.get_run("later") is not None  # not a frozen copy
    finally:
        writer.close()


def test_a_shared_memory_file_this_user_cannot_write_still_allows_reading(ledger_in_folder,
                                                                         tmp_path):
    """SQLite reads a ledger being written with its -shm file read-only (another user's
    ledger, a read-only mount under a live writer)."""
    holder = Database(str(ledger_in_folder))  # keeps the -shm and -wal files in place
    try:
        holder.get_run("r")
        shm = Path(str(ledger_in_folder) + "-shm")
        with unwritable(ledger_in_folder.parent), unwritable(shm):
            with Database(str(ledger_in_folder), read_only=True) as reader:
                assert [r["run_id"] for r in reader.list_runs()] == ["r"]
            result = uet("runs", "--db", str(ledger_in_folder), "--json", cwd=tmp_path)
            assert result.returncode == 0 and '"run_id": "r"' in result.stdout, result.stderr
    finally:
        holder.close()


def test_a_write_ahead_log_without_its_shared_memory_file_names_what_blocks(
        ledger_in_folder, tmp_path):
    """A ledger left with a -wal file (its writer died) but no -shm, in a folder this user
    cannot write: SQLite cannot read it without creating the -shm, and the error says so."""
    import sqlite3
    copy = tmp_path / "copy"
    copy.mkdir()
    conn = sqlite3.connect(str(ledger_in_folder))
    conn.execute("PRAGMA wal_autocheckpoint=0")  # the change stays in the -wal file
    conn.execute("INSERT INTO ledger_counters (name, value) VALUES ('x', 1)")
    conn.commit()
    for suffix in ("", "-wal"):
        shutil.copy(str(ledger_in_folder) + suffix, copy / ("framework.db" + suffix))
    conn.close()
    path = copy / "framework.db"
    with unwritable(copy):
        result = uet("runs", "--db", str(path), cwd=tmp_path)
        assert result.returncode == 1
        assert result.stderr == (
            f"uet: error: cannot read ledger {path}: SQLite must create {path}-shm to read a "
            f"ledger being written, and the folder {copy} is not writable by this user (or is "
            "on a read-only file system); read a copy, or ask its owner\n")
    assert sorted(os.listdir(copy)) == ["framework.db", "framework.db-wal"]

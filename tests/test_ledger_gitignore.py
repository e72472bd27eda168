"""The ledger folder keeps itself out of git: a `.gitignore` inside it, written when uet
creates the folder (or finds its default `.ledger` without one), so that `git status` of the
repository around it never lists the ledger as untracked."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from helpers import fresh_machine_environment
from uet.state import Database
from uet.state.locations import GITIGNORE

UET = shutil.which("uet", path=os.path.dirname(sys.executable))


def git(repo: Path, *args: str, env: dict) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, env=env, timeout=60).stdout


def test_a_ledger_in_a_repository_never_shows_as_untracked(tmp_path):
    env = fresh_machine_environment(tmp_path / "home")
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", env=env)
    env = {**env, "PATH": os.environ["PATH"]}
    env.pop("UET_DATABASE", None)
    out = subprocess.run([UET, "run", "--", "true"], cwd=repo, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert (repo / ".ledger" / "framework.db").exists()
    assert (repo / ".ledger" / ".gitignore").read_text() == GITIGNORE
    assert git(repo, "status", "--porcelain", "--untracked-files=all", env=env) == ""


def test_which_folders_get_one(tmp_path):
    # a folder uet creates, however deep
    Database(str(tmp_path / "a" / "b" / "l.db")).close()
    assert (tmp_path / "a" / "b" / ".gitignore").read_text() == GITIGNORE
    assert not (tmp_path / "a" / ".gitignore").exists()
    # a folder of the user's: left alone
    (tmp_path / "mine").mkdir()
    Database(str(tmp_path / "mine" / "l.db")).close()
    assert not (tmp_path / "mine" / ".gitignore").exists()
    # the default .ledger made by an earlier uet without one: gets it on a write open, not
    # on a read-only one
    (tmp_path / "old" / ".ledger").mkdir(parents=True)
    Database(str(tmp_path / "old" / ".ledger" / "framework.db")).close()
    (tmp_path / "old" / ".ledger" / ".gitignore").unlink()
    Database(str(tmp_path / "old" / ".ledger" / "framework.db"), read_only=True).close()
    assert not (tmp_path / "old" / ".ledger" / ".gitignore").exists()
    Database(str(tmp_path / "old" / ".ledger" / "framework.db")).close()
    assert (tmp_path / "old" / ".ledger" / ".gitignore").exists()
    # one the user wrote is kept as it is
    (tmp_path / "old" / ".ledger" / ".gitignore").write_text("framework.db\n")
    Database(str(tmp_path / "old" / ".ledger" / "framework.db")).close()
    assert (tmp_path / "old" / ".ledger" / ".gitignore").read_text() == "framework.db\n"

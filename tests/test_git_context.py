"""The git context of `uet run -- CMD` (`metadata.git` of the run): real repositories in
temporary folders, the real `uet` console script in subprocesses, git without any user
configuration (tests/helpers.py `fresh_machine_environment`)."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import fresh_machine_environment

UET = shutil.which("uet", path=os.path.dirname(sys.executable))
REAL_GIT = shutil.which("git")
IDENTITY = {"GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "test@example.com",
            "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "test@example.com"}

pytestmark = pytest.mark.skipif(REAL_GIT is None, reason="git is not installed")


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    """A fresh machine's environment (no git configuration but the repository's), with a
    commit identity for the commands the tests run, no ledger chosen."""
    home = tmp_path / "home"
    home.mkdir()
    environment = fresh_machine_environment(home)
    environment.update(IDENTITY, GIT_OPTIONAL_LOCKS="0")  # the tests' own `git status`
    environment.pop("UET_GIT_CONTEXT_TIMEOUT", None)
    return environment


def git(repo: Path, *args: str, env: dict[str, str]) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], env=env, capture_output=True,
                          check=True)
    return done.stdout.decode("utf-8", "surrogateescape").strip()


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def lines(prefix: str, count: int) -> str:
    return "".join(f"{prefix} line {i}\n" for i in range(count))


def make_repo(path: Path, env: dict[str, str], *, commit: bool = True) -> Path:
    """main: a.txt (3 lines), b.txt (4), c.txt (2), docs/d.txt (5), .gitignore (*.log)."""
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], env=env, check=True)
    write(path / "a.txt", lines("a", 3))
    write(path / "b.txt", lines("b", 4))
    write(path / "c.txt", lines("c", 2))
    write(path / "docs" / "d.txt", lines("d", 5))
    write(path / ".gitignore", "*.log\n")
    if commit:
        git(path, "add", "-A", env=env)
        git(path, "commit", "-q", "-m", "initial", env=env)
    return path


@pytest.fixture
def repo(tmp_path, env) -> Path:
    return make_repo(tmp_path / "repo", env)


@pytest.fixture
def ledger(tmp_path) -> Path:
    """A ledger outside the repository (the default one, inside it, has its own test)."""
    return tmp_path / "ledger" / "framework.db"


def py(code: str) -> list[str]:
    """A command: Python running `code` (in the command's working directory)."""
    return [sys.executable, "-c", code]


def uet_run(cwd: Path, env: dict[str, str], command: list[str], *options: str,
            ledger: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    db = ["--db", str(ledger)] if ledger is not None else []
    return subprocess.run([UET, "run", *db, *options, "--", *command], cwd=cwd, env=env,
                          capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)


def show(cwd: Path, env: dict[str, str], ledger: Path | None, *args: str) -> str:
    db = ["--db", str(ledger)] if ledger is not None else []
    done = subprocess.run([UET, "show", *db, *args], cwd=cwd, env=env, capture_output=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    return done.stdout.decode("utf-8")


def run_document(cwd: Path, env: dict[str, str], ledger: Path | None) -> dict:
    return json.loads(show(cwd, env, ledger, "--json"))


def git_record(cwd: Path, env: dict[str, str], ledger: Path | None) -> dict | None:
    return run_document(cwd, env, ledger)["run"]["metadata"].get("git")


def untouched_state(repo: Path, env: dict[str, str]) -> dict:
    """What uet must never change: the index (bytes), the stash, the refs, the objects."""
    git_dir = repo / ".git"
    return {"index": (git_dir / "index").read_bytes() if (git_dir / "index").exists()
            else None,
            "stash": git(repo, "stash", "list", env=env),
            "refs": git(repo, "for-each-ref", env=env),
            "objects": sorted(str(p.relative_to(git_dir)) for p in
                              (git_dir / "objects").rglob("*") if p.is_file())}


# -- what a command changed ------------------------------------------------------------------

def test_edit_create_delete_on_a_clean_tree(repo, env, ledger):
    head = git(repo, "rev-parse", "HEAD", env=env)
    before = untouched_state(repo, env)
    result = uet_run(repo, env, py(
        "import os\n"
        "open('a.txt', 'a').write('a more 1\\na more 2\\n')\n"
        "open('new.txt', 'w').write('n1\\nn2\\nn3\\n')\n"
        "os.remove('b.txt')\n"
        "open('build.log', 'w').write('ignored\\n')\n"), ledger=ledger)
    assert result.returncode == 0, result.stderr
    assert untouched_state(repo, env) == before
    record = git_record(repo, env, ledger)
    assert record == {
        "root": str(repo.resolve()), "commit": head, "branch": "main",
        "dirty_before": False, "dirty_after": True,
        "changed": {"files": 3, "insertions": 5, "deletions": 4, "paths": [
            {"path": "a.txt", "status": "M", "insertions": 2, "deletions": 0},
            {"path": "b.txt", "status": "D", "insertions": 0, "deletions": 4},
            {"path": "new.txt", "status": "??", "insertions": 3, "deletions": 0}]}}
    text = show(repo, env, ledger)
    assert re.search(rf"^ *git +main @ {head[:7]} \(dirty before: no, after: yes\) — "
                     r"3 files changed, \+5 -4 *$", text, re.M), text
    for line in (r"M +a\.txt +\+2 -0", r"D +b\.txt +\+0 -4", r"\?\? +new\.txt +\+3 -0"):
        assert re.search(rf"^ +{line} *$", text, re.M), (line, text)


def test_pre_existing_dirt_is_not_the_commands(repo, env, ledger):
    # a stash, a staged change, an unstaged change and an untracked file, all before
    write(repo / "c.txt", "stashed\n")
    git(repo, "stash", "-q", env=env)
    write(repo / "b.txt", lines("b", 4) + "staged\n")
    git(repo, "add", "b.txt", env=env)
    write(repo / "c.txt", lines("c", 2) + "dirty\n")
    write(repo / "pre.txt", "untracked before\n")
    status_before = _porcelain(repo, env)
    before = untouched_state(repo, env)
    result = uet_run(repo, env, py("open('a.txt', 'w').write('replaced\\n')"), ledger=ledger)
    assert result.returncode == 0, result.stderr
    assert untouched_state(repo, env) == before   # index, stash, refs, objects
    record = git_record(repo, env, ledger)
    assert record["dirty_before"] is True and record["dirty_after"] is True
    assert record["changed"] == {"files": 1, "insertions": 1, "deletions": 3, "paths": [
        {"path": "a.txt", "status": "M", "insertions": 1, "deletions": 3}]}
    assert status_before == {"b.txt": "M ", "c.txt": " M", "pre.txt": "??"}
    assert _porcelain(repo, env) == {**status_before, "a.txt": " M"}
    assert (repo / "b.txt").read_text().endswith("staged\n")      # the work tree as it was
    assert git(repo, "diff", "--cached", "--name-only", env=env) == "b.txt"


def test_a_command_that_commits(repo, env, ledger):
    head = git(repo, "rev-parse", "HEAD", env=env)
    result = uet_run(repo, env, py(
        "import subprocess\n"
        "open('a.txt', 'a').write('committed\\n')\n"
        "open('added.txt', 'w').write('x\\ny\\n')\n"
        "subprocess.run(['git', 'add', 'a.txt', 'added.txt'], check=True)\n"
        "subprocess.run(['git', 'commit', '-q', '-m', 'by the command'], check=True)\n"
        "open('later.txt', 'w').write('not committed\\n')\n"), ledger=ledger)
    assert result.returncode == 0, result.stderr
    record = git_record(repo, env, ledger)
    new_head = git(repo, "rev-parse", "HEAD", env=env)
    assert new_head != head
    assert (record["commit"], record["commit_after"], record["branch"]) == (head, new_head,
                                                                           "main")
    assert "branch_after" not in record
    assert (record["dirty_before"], record["dirty_after"]) == (False, True)
    assert record["changed"]["paths"] == [
        {"path": "a.txt", "status": "M", "insertions": 1, "deletions": 0},
        {"path": "added.txt", "status": "A", "insertions": 2, "deletions": 0},
        {"path": "later.txt", "status": "??", "insertions": 1, "deletions": 0}]
    text = show(repo, env, ledger)
    assert f"main @ {head[:7]} → {new_head[:7]} (dirty before: no, after: yes) — 3 files " \
           "changed, +4 -0" in text


def test_a_command_that_commits_everything_leaves_a_clean_tree(repo, env, ledger):
    result = uet_run(repo, env, py(
        "import subprocess\n"
        "open('c.txt', 'w').write('c\\n')\n"
        "subprocess.run(['git', 'commit', '-q', '-am', 'c'], check=True)\n"), ledger=ledger)
    assert result.returncode == 0, result.stderr
    record = git_record(repo, env, ledger)
    assert (record["dirty_before"], record["dirty_after"]) == (False, False)
    assert record["commit_after"] == git(repo, "rev-parse", "HEAD", env=env)
    assert record["changed"]["paths"] == [
        {"path": "c.txt", "status": "M", "insertions": 1, "deletions": 2}]


def test_rename_binary_and_mode_change(repo, env, ledger):
    result = uet_run(repo, env, py(
        "import os\n"
        "os.rename('docs/d.txt', 'docs/renamed.txt')\n"
        "open('blob.bin', 'wb').write(bytes(range(256)))\n"
        "os.chmod('c.txt', 0o755)\n"), ledger=ledger)
    assert result.returncode == 0, result.stderr
    assert git_record(repo, env, ledger)["changed"] == {
        "files": 3, "insertions": 0, "deletions": 0, "paths": [
            {"path": "blob.bin", "status": "??", "insertions": 0, "deletions": 0,
             "binary": True},
            {"path": "c.txt", "status": "M", "insertions": 0, "deletions": 0},
            {"path": "docs/renamed.txt", "status": "R", "insertions": 0, "deletions": 0,
             "old_path": "docs/d.txt"}]}
    text = show(repo, env, ledger)
    assert re.search(r"^ +R +docs/renamed\.txt \(from docs/d\.txt\) +\+0 -0 *$", text, re.M)
    assert re.search(r"^ +\?\? +blob\.bin +binary *$", text, re.M)


def test_many_changed_files_are_counted_and_the_list_cut(repo, env, ledger):
    result = uet_run(repo, env, py(
        "import os\nos.mkdir('many')\n"
        "for i in range(60): open(f'many/f{i:02}.txt', 'w').write('x\\n')\n"),
        ledger=ledger)
    assert result.returncode == 0, result.stderr
    changed = git_record(repo, env, ledger)["changed"]
    assert (changed["files"], changed["insertions"], changed["truncated"]) == (60, 60, True)
    assert [p["path"] for p in changed["paths"]] == [f"many/f{i:02}.txt" for i in range(50)]
    text = show(repo, env, ledger)
    assert "60 files changed, +60 -0" in text
    assert "… and 50 more (uet show --json lists the first 50)" in text
    assert "many/f09.txt" in text and "many/f10.txt" not in text


def test_from_a_subfolder_of_a_linked_worktree(repo, env, ledger, tmp_path):
    worktree = tmp_path / "wt"
    git(repo, "worktree", "add", "-q", "-b", "side", str(worktree), env=env)
    before = untouched_state(repo, env)
    wt_index = Path(git(worktree, "rev-parse", "--path-format=absolute", "--git-path",
                        "index", env=env))
    wt_index_bytes = wt_index.read_bytes()
    result = uet_run(worktree / "docs", env, py(
        "open('../a.txt', 'a').write('from the worktree\\n')\n"
        "open('here.txt', 'w').write('h\\n')\n"), ledger=ledger)
    assert result.returncode == 0, result.stderr
    assert untouched_state(repo, env) == before and wt_index.read_bytes() == wt_index_bytes
    record = git_record(worktree, env, ledger)
    assert (record["root"], record["branch"]) == (str(worktree.resolve()), "side")
    assert [(p["path"], p["status"]) for p in record["changed"]["paths"]] == [
        ("a.txt", "M"), ("docs/here.txt", "??")]
    assert git(repo, "status", "--porcelain", env=env) == ""   # the main checkout: as it was


def test_the_default_ledger_in_the_work_tree_is_not_a_change(repo, env):
    """uet writes its ledger (.ledger/framework.db, -wal, -shm) in the working directory
    while the command runs: not the command's work, and not dirt either."""
    result = uet_run(repo, env, py("open('a.txt', 'a').write('x\\n')"))
    assert result.returncode == 0, result.stderr
    assert (repo / ".ledger" / "framework.db").exists()
    record = git_record(repo, env, None)
    assert record["dirty_before"] is False
    assert [p["path"] for p in record["changed"]["paths"]] == ["a.txt"]


# -- HEAD in its other states ------------------------------------------------------------------

def test_detached_head(repo, env, ledger):
    git(repo, "checkout", "-q", "--detach", env=env)
    head = git(repo, "rev-parse", "HEAD", env=env)
    result = uet_run(repo, env, py("pass"), ledger=ledger)
    assert result.returncode == 0, result.stderr
    assert git_record(repo, env, ledger) == {
        "root": str(repo.resolve()), "commit": head, "branch": None, "dirty_before": False,
        "dirty_after": False, "changed": {"files": 0, "insertions": 0, "deletions": 0,
                                          "paths": []}}
    assert f"detached HEAD @ {head[:7]} (dirty before: no, after: no) — 0 files changed, " \
           "+0 -0" in show(repo, env, ledger)


def test_a_command_that_checks_out_another_branch(repo, env, ledger):
    git(repo, "branch", "other", env=env)
    result = uet_run(repo, env, ["git", "checkout", "-q", "other"], ledger=ledger)
    assert result.returncode == 0, result.stderr
    record = git_record(repo, env, ledger)
    assert (record["branch"], record["branch_after"]) == ("main", "other")
    assert "commit_after" not in record and record["changed"]["files"] == 0


@pytest.mark.parametrize("with_files", [False, True])
def test_unborn_branch(tmp_path, env, ledger, with_files):
    repo = make_repo(tmp_path / "repo", env, commit=False)
    if not with_files:
        for name in ("a.txt", "b.txt", "c.txt", "docs/d.txt", ".gitignore"):
            (repo / name).unlink()
    result = uet_run(repo, env, py("open('first.txt', 'w').write('1\\n')"), ledger=ledger)
    assert result.returncode == 0, result.stderr
    record = git_record(repo, env, ledger)
    assert (record["commit"], record["branch"]) == (None, "main")
    assert (record["dirty_before"], record["dirty_after"]) == (with_files, True)
    assert record["changed"]["paths"] == [
        {"path": "first.txt", "status": "??", "insertions": 1, "deletions": 0}]
    assert "main @ (no commit yet) (dirty before: " in show(repo, env, ledger)


# -- no repository, and git failing -----------------------------------------------------------

@pytest.mark.parametrize("git_on_path", [True, False])
def test_not_in_a_repository_records_no_git(tmp_path, env, ledger, git_on_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    assert subprocess.run(["git", "-C", str(plain), "rev-parse"], env=env,
                          capture_output=True).returncode != 0
    run_env = env if git_on_path else {**env, "PATH": str(plain)}   # no git at all
    result = uet_run(plain, run_env, py("open('x', 'w').write('x')"), ledger=ledger)
    assert result.returncode == 0, result.stderr
    document = run_document(plain, env, ledger)
    assert "git" not in document["run"]["metadata"]
    assert not re.search(r"^ *git ", show(plain, env, ledger), re.M)


def test_turned_off_or_misconfigured(repo, env, ledger):
    off = uet_run(repo, {**env, "UET_GIT_CONTEXT_TIMEOUT": "0"}, py("pass"), ledger=ledger)
    assert off.returncode == 0, off.stderr
    assert git_record(repo, env, ledger) is None
    bad = uet_run(repo, {**env, "UET_GIT_CONTEXT_TIMEOUT": "soon"}, py("pass"), ledger=ledger)
    assert bad.returncode == 0, bad.stderr
    assert "UET_GIT_CONTEXT_TIMEOUT" in git_record(repo, env, ledger)["error"]


def test_no_git_on_path(repo, env, ledger, tmp_path):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    result = uet_run(repo, {**env, "PATH": str(empty)}, py("import sys; sys.exit(3)"),
                     ledger=ledger)
    assert result.returncode == 3, result.stderr
    document = run_document(repo, env, ledger)
    assert (document["run"]["state"], document["run"]["exit_code"]) == ("failed", 3)
    record = document["run"]["metadata"]["git"]
    assert list(record) == ["error"] and "cannot run 'git'" in record["error"]
    assert re.search(r"^ *git +error: cannot run 'git'", show(repo, env, ledger), re.M)


def test_a_corrupt_repository(repo, env, ledger):
    (repo / ".git" / "HEAD").write_text("garbage\n")
    result = uet_run(repo, env, py("import sys; open('a.txt', 'a').write('x'); sys.exit(5)"),
                     ledger=ledger)
    assert result.returncode == 5, result.stderr
    document = run_document(repo, env, ledger)
    assert (document["run"]["state"], document["run"]["exit_code"]) == ("failed", 5)
    record = document["run"]["metadata"]["git"]
    assert list(record) == ["error"] and "git cannot read the repository" in record["error"]


def test_a_corrupt_index(repo, env, ledger):
    index = repo / ".git" / "index"
    index.write_bytes(b"DIRC" + b"\xff" * 40)
    corrupt = index.read_bytes()
    result = uet_run(repo, env, py("pass"), ledger=ledger)
    assert result.returncode == 0, result.stderr
    record = git_record(repo, env, ledger)
    assert record["root"] == str(repo.resolve()) and "index" in record["error"]
    assert "changed" not in record and index.read_bytes() == corrupt


def test_a_git_call_past_its_time_budget(repo, env, ledger, tmp_path):
    """A hung git (here: `git add` never ends) costs the run the budget, not the run."""
    fake = tmp_path / "fake-bin"
    fake.mkdir()
    script = fake / "git"
    script.write_text(f'#!/bin/sh\nfor a in "$@"; do [ "$a" = add ] && exec sleep 60; done\n'
                      f'exec {REAL_GIT} "$@"\n')
    script.chmod(0o755)
    fake_env = {**env, "PATH": f"{fake}{os.pathsep}{env['PATH']}",
                "UET_GIT_CONTEXT_TIMEOUT": "1"}
    started = time.monotonic()
    result = uet_run(repo, fake_env, py("pass"), ledger=ledger)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 30
    record = git_record(repo, env, ledger)
    assert "took longer than" in record["error"] and "changed" not in record


# -- however the command ends --------------------------------------------------------------

def test_a_failing_command(repo, env, ledger):
    result = uet_run(repo, env, py("import sys; open('a.txt', 'a').write('x\\n'); "
                                   "sys.exit(7)"), ledger=ledger)
    assert result.returncode == 7
    document = run_document(repo, env, ledger)
    assert document["run"]["state"] == "failed"
    assert [p["path"] for p in document["run"]["metadata"]["git"]["changed"]["paths"]] == \
        ["a.txt"]


def test_a_command_that_times_out(repo, env, ledger):
    result = uet_run(repo, env, py("import time; open('a.txt', 'a').write('x\\n'); "
                                   "open('partial.txt', 'w').write('p\\n'); time.sleep(60)"),
                     "--timeout", "2", ledger=ledger)
    assert result.returncode == 124, result.stderr
    document = run_document(repo, env, ledger)
    assert document["run"]["state"] == "failed"
    record = document["run"]["metadata"]["git"]
    assert [p["path"] for p in record["changed"]["paths"]] == ["a.txt", "partial.txt"]
    assert record["dirty_after"] is True


def test_a_canceled_command(repo, env, ledger):
    proc = subprocess.Popen(
        [UET, "run", "--db", str(ledger), "--", *py(
            "import time\nopen('a.txt', 'a').write('x\\n')\nprint('started', flush=True)\n"
            "time.sleep(60)\n")],
        cwd=repo, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"started\n"
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143
    document = run_document(repo, env, ledger)
    assert document["run"]["state"] == "canceled"
    assert [p["path"] for p in document["run"]["metadata"]["git"]["changed"]["paths"]] == \
        ["a.txt"]


# -- generated: random file operations against what `git status` says ------------------------

def _porcelain(repo: Path, env: dict[str, str]) -> dict[str, str]:
    """{path: XY} of `git status --porcelain -uall --no-renames` (quoting off)."""
    data = subprocess.run(["git", "-C", str(repo), "status", "--porcelain=v1", "-z", "-uall",
                           "--no-renames"], env=env, capture_output=True,
                          check=True).stdout.decode()
    return {entry[3:]: entry[:2] for entry in data.split("\0") if entry}


def _text(rng: random.Random, tag: str) -> str:
    """Unique lines (no two files alike: renames are only what the command renamed)."""
    return "".join(f"{tag} {rng.getrandbits(64):x}\n" for _ in range(rng.randint(1, 8)))


def _operations(rng: random.Random, tracked: list[str]) -> str:
    """The Python code of a command that does a random mix of edits, truncations,
    deletions, renames, mode and type changes (on some of the `tracked` files), new files
    (in new folders too), ignored files, and a file made and removed again."""
    code = ["import os"]
    targets = rng.sample(tracked, k=rng.randint(0, len(tracked)))
    for number, path in enumerate(targets):
        kind = rng.choice(["append", "rewrite", "truncate", "delete", "rename", "chmod",
                           "symlink"])
        if kind == "append":
            code.append(f"open({path!r}, 'a').write({_text(rng, 'more')!r})")
        elif kind == "rewrite":
            code.append(f"open({path!r}, 'w').write({_text(rng, 'new')!r})")
        elif kind == "truncate":
            code.append(f"open({path!r}, 'w').close()")
        elif kind == "delete":
            code.append(f"os.remove({path!r})")
        elif kind == "rename":
            new = f"moved{number}/{os.path.basename(path)}"
            code.append(f"os.makedirs('moved{number}', exist_ok=True)")
            code.append(f"os.rename({path!r}, {new!r})")
        elif kind == "chmod":
            code.append(f"os.chmod({path!r}, 0o755)")
        else:
            code.append(f"os.remove({path!r}); os.symlink('target-{number}', {path!r})")
    for number in range(rng.randint(0, 6)):
        folder = rng.choice(["", "docs/", f"fresh{number}/", f"fresh{number}/deep/"])
        name = f"{folder}created{number}.txt"
        code.append(f"os.makedirs(os.path.dirname({name!r}) or '.', exist_ok=True)")
        code.append(f"open({name!r}, 'w').write({_text(rng, 'created')!r})")
    if rng.random() < 0.5:
        code.append("open('noise.log', 'w').write('ignored\\n')")
    if rng.random() < 0.5:
        code.append("open('blink.txt', 'w').write('gone\\n'); os.remove('blink.txt')")
    return "\n".join(code) + "\n"


_EXPECTED = {"M": " M", "D": " D", "T": " T", "??": "??"}


@pytest.mark.parametrize("seed", range(12))
def test_random_operations_agree_with_git_status(tmp_path, env, ledger, seed):
    rng = random.Random(seed)
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], env=env, check=True)
    tracked = [f"{rng.choice(['', 'src/', 'src/pkg/', 'docs/'])}file{i}.txt"
               for i in range(rng.randint(3, 12))]
    for path in tracked:
        write(repo / path, _text(rng, path))
    write(repo / ".gitignore", "*.log\n")
    git(repo, "add", "-A", env=env)
    git(repo, "commit", "-q", "-m", "initial", env=env)
    # dirt before the command, on files it leaves alone
    dirt = rng.sample(tracked, k=rng.randint(0, len(tracked) // 2))
    for path in dirt:
        with open(repo / path, "a") as f:
            f.write(_text(rng, "dirt"))
    if rng.random() < 0.5:
        write(repo / "untracked-before.txt", "before\n")
    code = _operations(rng, [p for p in tracked if p not in dirt])

    status_before = _porcelain(repo, env)
    index_before = (repo / ".git" / "index").read_bytes()
    result = uet_run(repo, env, py(code), ledger=ledger)
    assert result.returncode == 0, (code, result.stderr)
    assert (repo / ".git" / "index").read_bytes() == index_before
    status_after = _porcelain(repo, env)
    record = git_record(repo, env, ledger)

    assert record["dirty_before"] == bool(status_before)
    assert record["dirty_after"] == bool(status_after)
    expected = {p: status_after.get(p) for p in set(status_before) | set(status_after)
                if status_before.get(p) != status_after.get(p)}
    changed = record["changed"]
    assert changed["files"] == len(changed["paths"]) and "truncated" not in changed
    seen: dict[str, str | None] = {}
    for entry in changed["paths"]:
        if entry["status"] == "R":       # git status (no renames) sees a deletion and a new file
            seen[entry["old_path"]] = " D"
            seen[entry["path"]] = "??"
        else:
            seen[entry["path"]] = _EXPECTED[entry["status"]]
    assert seen == expected, code
    # the counts: what git itself counts for each file
    for entry in changed["paths"]:
        path = repo / entry["path"]
        if entry["status"] == "M":
            numstat = git(repo, "diff", "--numstat", "--", entry["path"], env=env)
            assert numstat.split("\t")[:2] == [str(entry["insertions"]),
                                                str(entry["deletions"])], entry
        elif entry["status"] == "??":
            assert (entry["insertions"], entry["deletions"]) == (
                len(path.read_text().splitlines()), 0), entry
        elif entry["status"] == "D":
            assert (entry["insertions"], entry["deletions"]) == (0, len(git(
                repo, "show", f"HEAD:{entry['path']}", env=env).splitlines())), entry
    assert changed["insertions"] == sum(p["insertions"] for p in changed["paths"])
    assert changed["deletions"] == sum(p["deletions"] for p in changed["paths"])


def test_the_snapshot_leaves_no_temporary_files(repo, env, ledger, tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    result = uet_run(repo, {**env, "TMPDIR": str(scratch)}, py("pass"), ledger=ledger)
    assert result.returncode == 0, result.stderr
    assert git_record(repo, env, ledger)["changed"]["files"] == 0
    assert list(scratch.iterdir()) == []        # its temporary index and objects: gone
    assert not list((repo / ".git").glob("*uet*"))


def test_show_survives_a_damaged_record(tmp_path, env, ledger):
    """A ledger may hold anything (raw SQL, another version): `uet show` shows what it can."""
    from uet.state import init_db
    with init_db(str(ledger)) as db:
        db.create_run({"project_id": "p", "phase_id": "ph", "metadata": {"git": {
            "branch": 5, "commit": ["x"], "dirty_before": "yes", "changed": {
                "files": "many", "paths": ["M x", {"path": 3, "status": None},
                                           {"path": "\x1b[31mred", "status": "M",
                                            "insertions": -1}]},
            "warnings": "not a list", "error": {"nested": True}}}})
    text = show(tmp_path, env, ledger)
    assert re.search(r"^ *git +detached HEAD @ \(no commit yet\) \(dirty before: \?, "
                     r"after: \?\) — 0 files changed, \+\? -\? *$", text, re.M), text
    assert "\\x1b[31mred  +? -?" in text and "\x1b" not in text
    assert 'error: {\'nested\': True}' in text

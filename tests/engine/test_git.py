"""Tests of uet.engine.git on real repositories in temporary folders: worktrees, the run's
branch, capturing a tool's change, applying and committing it, and the target left alone."""

from __future__ import annotations

import itertools
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from uet.engine import git as g
from uet.errors import UetError, ValidationError

IDENTITY = {"GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "test@example.com",
            "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "test@example.com"}


def sh(cwd, *args: str, input: bytes | None = None) -> str:
    """Run git as a test (or a tool) would, independent of the module under test. Like
    a tool the engine runs, it gets no variable that points git at another repository."""
    env = g.without_repository_variables(os.environ)
    done = subprocess.run(["git", "-c", "commit.gpgsign=false", "-C", str(cwd), *args],
                          input=input, capture_output=True, check=True,
                          env={**env, **IDENTITY, "LC_ALL": "C"})
    return done.stdout.decode("utf-8", "surrogateescape").strip()


def write(path: Path, data: bytes | str, mode: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    if mode is not None:
        path.chmod(mode)


def make_repo(path: Path) -> Path:
    """A small repository: text, binary, executable and ignored files, two commits."""
    sh(path.parent, "init", "-q", "-b", "main", str(path))
    write(path / ".gitignore", "*.log\nbuild/\n")
    write(path / "README.md", "# demo\n\nline 3\nline 4\nline 5\n")
    write(path / "src/app.py", "".join(f"print({i})\n" for i in range(30)))
    write(path / "data.bin", bytes(range(256)) * 4)
    write(path / "run.sh", "#!/bin/sh\necho hi\n", mode=0o755)
    sh(path, "add", "-A")
    sh(path, "commit", "-q", "-m", "initial")
    write(path / "README.md", "# demo\n\nline 3\nline 4 changed\nline 5\n")
    sh(path, "commit", "-q", "-am", "second")
    return path


@pytest.fixture
def repo(tmp_path) -> g.Repository:
    return g.open_repository(make_repo(tmp_path / "target"))


_names = itertools.count()


def fresh_name(prefix: str = "wt") -> str:
    return f"{prefix}-{next(_names)}"


def snapshot(path: Path, run_branch_prefix: str = "refs/heads/uet/") -> dict:
    """Everything of the target that uet must leave alone: HEAD, index bytes, refs other
    than the run's, config, working files and their status."""
    def q(*args):
        return subprocess.run(["git", "--no-optional-locks", "-C", str(path), *args],
                              capture_output=True, check=False).stdout
    files = {}
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path)
        if rel.parts[0] != ".git" and (p.is_file() or p.is_symlink()):
            files[str(rel)] = (p.read_bytes(), p.stat().st_mode)
    refs = [line for line in q("for-each-ref", "--format=%(refname) %(objectname)")
            .splitlines() if not line.decode().startswith(run_branch_prefix)]
    return {"head": q("symbolic-ref", "-q", "HEAD"), "sha": q("rev-parse", "HEAD"),
            "index": (path / ".git" / "index").read_bytes(),
            "config": (path / ".git" / "config").read_bytes(), "refs": refs,
            "status": q("status", "--porcelain=v2", "-z", "--untracked-files=all",
                        "--ignored"),
            "stash": q("stash", "list"), "files": files}


def tree_of(worktree: Path) -> str:
    return sh(worktree, "write-tree")


def assert_round_trip(repo: g.Repository, change: g.CapturedChange, attempt: Path) -> None:
    """The captured diff, applied to a fresh worktree at the start commit, gives exactly
    the tree the tool left (contents, names, modes)."""
    fresh = repo.add_attempt_worktree(fresh_name("verify"), change.start)
    try:
        g.apply_patch(fresh.path, change.diff)
        assert tree_of(fresh.path) == tree_of(attempt)
    finally:
        repo.remove_worktree(fresh.path)


# -- opening a repository ----------------------------------------------------------------

def test_open_repository_finds_the_top_level_from_a_subfolder(repo):
    again = g.open_repository(repo.toplevel / "src")
    assert again == repo
    assert repo.git_dir == repo.common_dir == repo.toplevel / ".git"
    assert repo.worktree_root == repo.toplevel / ".git" / "uet-worktrees"


def test_a_folder_outside_any_repository_is_refused_with_advice(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    (tmp_path / "plain").mkdir()
    with pytest.raises(g.NotARepositoryError, match="not inside a git repository.*git init"):
        g.open_repository(tmp_path / "plain")


def test_a_missing_folder_is_refused(tmp_path):
    with pytest.raises(g.NotARepositoryError, match="is not a folder"):
        g.open_repository(tmp_path / "nowhere")


def test_a_bare_repository_is_refused(tmp_path):
    sh(tmp_path, "init", "-q", "--bare", str(tmp_path / "bare.git"))
    with pytest.raises(g.BareRepositoryError, match="bare repository.*clone"):
        g.open_repository(tmp_path / "bare.git")


def test_the_git_directory_itself_is_refused(repo):
    with pytest.raises(g.NotARepositoryError, match="inside the git directory"):
        g.open_repository(repo.git_dir)


def test_a_missing_git_executable_is_a_typed_error(repo, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(g.GitUnavailableError, match="not installed or not on PATH") as err:
        g.open_repository(repo.toplevel)
    assert isinstance(err.value, g.GitError) and isinstance(err.value, UetError)


def test_a_failing_git_call_carries_command_exit_code_and_stderr(repo):
    with pytest.raises(g.GitError) as err:
        repo.git(["cat-file", "-p", "0" * 40])
    assert err.value.command[-3:] == ("cat-file", "-p", "0" * 40)
    assert err.value.returncode == 128
    assert "0000000000000000000000000000000000000000" in err.value.stderr
    assert str(err.value.returncode) in str(err.value)


def test_the_scrubbed_variables_are_gits_own_list():
    listed = sh(".", "rev-parse", "--local-env-vars").split()
    assert sorted(listed) == sorted(g.LOCAL_ENV_VARS)


# -- commits and the run's branch --------------------------------------------------------

def test_resolve_commit_returns_the_full_sha(repo):
    head = sh(repo.toplevel, "rev-parse", "HEAD")
    assert repo.resolve_commit("HEAD") == head == repo.resolve_commit("main")
    assert repo.resolve_commit("HEAD~1") == sh(repo.toplevel, "rev-parse", "HEAD~1")
    assert repo.resolve_commit(head[:10]) == head


@pytest.mark.parametrize("ref", ["nope", "HEAD~9", "--all", "main:README.md"])
def test_resolve_commit_refuses_what_is_not_a_commit(repo, ref):
    with pytest.raises(g.GitError, match="does not name a commit"):
        repo.resolve_commit(ref)


def test_create_branch_at_the_base_and_again_is_idempotent(repo):
    base = repo.resolve_commit("HEAD~1")
    assert repo.create_branch("uet/run-1", base) == base
    assert repo.branch_head("uet/run-1") == base
    assert repo.create_branch("uet/run-1", base) == base


def test_create_branch_refuses_a_branch_that_points_elsewhere(repo):
    with pytest.raises(g.BranchConflictError, match="already exists"):
        repo.create_branch("main", "HEAD~1")
    assert repo.branch_head("main") == repo.resolve_commit("HEAD")


def test_create_branch_on_resume_accepts_the_runs_own_commits_since_the_base(repo):
    base = repo.resolve_commit("HEAD~1")
    assert repo.create_branch("main", base, resume=True) == repo.resolve_commit("HEAD")
    sh(repo.toplevel, "branch", "other", "HEAD~1")
    unrelated = sh(repo.toplevel, "commit-tree", "HEAD^{tree}", "-m", "orphan")
    sh(repo.toplevel, "update-ref", "refs/heads/elsewhere", unrelated)
    with pytest.raises(g.BranchConflictError):
        repo.create_branch("elsewhere", base, resume=True)


@pytest.mark.parametrize("name", ["", "-x", "a..b", "a b", "x.lock", "a~1", "a:b"])
def test_an_invalid_branch_name_is_refused(repo, name):
    with pytest.raises(ValidationError):
        repo.create_branch(name, "HEAD")


def test_delete_branch(repo):
    repo.create_branch("uet/gone", "HEAD")
    assert repo.delete_branch("uet/gone") is True
    assert repo.branch_head("uet/gone") is None
    assert repo.delete_branch("uet/gone") is False


def test_a_branch_checked_out_in_the_integration_worktree_is_not_deleted(repo):
    repo.create_branch("uet/busy", "HEAD")
    repo.add_integration_worktree("integration", "uet/busy")
    with pytest.raises(g.GitError):
        repo.delete_branch("uet/busy")
    assert repo.branch_head("uet/busy") is not None


def test_is_ancestor(repo):
    assert repo.is_ancestor("HEAD~1", "HEAD")
    assert repo.is_ancestor("HEAD", "HEAD")
    assert not repo.is_ancestor("HEAD", "HEAD~1")


def test_diff_stat_between_commits(repo):
    stat_ = repo.diff_stat("HEAD~1", "HEAD")
    assert [(f.status, f.path, f.lines_added, f.lines_removed) for f in stat_.files] == [
        (g.MODIFIED, "README.md", 1, 1)]
    assert (stat_.lines_added, stat_.lines_removed, stat_.binary) == (1, 1, False)


# -- worktrees ---------------------------------------------------------------------------

def test_an_attempt_worktree_is_detached_at_the_commit_under_the_git_dir(repo):
    base = repo.resolve_commit("HEAD~1")
    wt = repo.add_attempt_worktree("attempt-1", base)
    assert wt.path == repo.worktree_root / "attempt-1" and wt.branch is None
    assert sh(wt.path, "rev-parse", "HEAD") == base
    assert subprocess.run(["git", "-C", str(wt.path), "symbolic-ref", "-q", "HEAD"],
                          capture_output=True).returncode == 1      # detached
    assert "line 4\n" in (wt.path / "README.md").read_text()
    assert sh(repo.toplevel, "status", "--porcelain", "--untracked-files=all") == ""


def test_the_integration_worktree_is_on_the_branch(repo):
    repo.create_branch("uet/r", "HEAD")
    wt = repo.add_integration_worktree("integration", "uet/r")
    assert wt.branch == "refs/heads/uet/r" and wt.head == repo.resolve_commit("HEAD")
    assert sh(wt.path, "symbolic-ref", "HEAD") == "refs/heads/uet/r"


def test_uet_worktrees_lists_only_uets_own(repo, tmp_path):
    sh(repo.toplevel, "worktree", "add", "-q", "--detach", str(tmp_path / "users-own"))
    a = repo.add_attempt_worktree("a", "HEAD")
    assert [w.path for w in repo.uet_worktrees()] == [a.path]
    assert len(repo.worktrees()) == 3


def test_adding_a_worktree_twice_is_refused_unless_replacing(repo):
    first = repo.add_attempt_worktree("same", "HEAD")
    write(first.path / "left-over.txt", "x")
    with pytest.raises(g.GitError, match="already exists"):
        repo.add_attempt_worktree("same", "HEAD")
    again = repo.add_attempt_worktree("same", "HEAD~1", replace=True)
    assert not (again.path / "left-over.txt").exists()
    assert sh(again.path, "rev-parse", "HEAD") == repo.resolve_commit("HEAD~1")


@pytest.mark.parametrize("name", ["", "../escape", "a/b", ".hidden", "-x", "x" * 101])
def test_a_worktree_name_must_be_a_plain_name(repo, name):
    with pytest.raises(ValidationError):
        repo.add_attempt_worktree(name, "HEAD")


def test_remove_worktree_removes_a_dirty_worktree_and_is_idempotent(repo):
    wt = repo.add_attempt_worktree("dirty", "HEAD")
    write(wt.path / "new.txt", "x")
    write(wt.path / "README.md", "changed")
    repo.remove_worktree(wt.path)
    assert not wt.path.exists() and repo.uet_worktrees() == []
    repo.remove_worktree(wt.path)
    repo.remove_worktree("dirty")


def test_remove_worktree_after_a_crash_left_it_half_gone(repo):
    gone = repo.add_attempt_worktree("gone", "HEAD")
    shutil.rmtree(gone.path)                        # a cleaner removed the folder
    broken = repo.add_attempt_worktree("broken", "HEAD")
    (broken.path / ".git").write_text("gitdir: /nowhere\n")   # a half-written .git file
    assert {w.path: w.prunable for w in repo.uet_worktrees()} == {gone.path: True,
                                                                  broken.path: False}
    repo.remove_worktree(broken.path)
    assert not broken.path.exists()
    assert repo.prune_worktrees() == [gone.path]
    assert repo.uet_worktrees() == []
    assert repo.add_attempt_worktree("gone", "HEAD").path.is_dir()   # the name is free again


def test_prune_leaves_the_users_own_missing_worktrees_alone(repo, tmp_path):
    sh(repo.toplevel, "worktree", "add", "-q", "--detach", str(tmp_path / "usb" / "wt"))
    shutil.rmtree(tmp_path / "usb")                 # say, an unmounted drive
    repo.prune_worktrees()
    assert any(w.prunable and w.path == tmp_path / "usb" / "wt" for w in repo.worktrees())


def test_remove_worktree_refuses_anything_but_uets_own(repo, tmp_path):
    with pytest.raises(ValidationError, match="not one of uet's worktrees"):
        repo.remove_worktree(repo.toplevel)
    with pytest.raises(ValidationError):
        repo.remove_worktree(repo.worktree_root / ".." / "..")
    assert (repo.toplevel / "README.md").exists()


# -- capturing a tool's change -----------------------------------------------------------

def _edit(wt: Path):
    write(wt / "src/app.py", (wt / "src/app.py").read_text().replace("print(7)", "print(70)"))


def _new_file(wt: Path):
    write(wt / "tests/test_new.py", "def test():\n    assert True\n")


def _delete(wt: Path):
    (wt / "run.sh").unlink()


def _rename(wt: Path):
    os.rename(wt / "src/app.py", wt / "src/main.py")


def _binary(wt: Path):
    write(wt / "data.bin", bytes(reversed(range(256))) * 4)
    write(wt / "new.png", b"\x89PNG\r\n\x1a\n\0\0\0" + os.urandom(64))


def _mode(wt: Path):
    (wt / "run.sh").chmod(0o644)
    (wt / "README.md").chmod(0o755)


def _odd_names(wt: Path):
    for name in ("with space.txt", "new\nline.txt", "ünïcødé ✓.txt", "tab\there", '"q"',
                 "back\\slash", "-dash", ":colon", "star*[x]"):
        write(wt / "odd" / name, f"{name!r}\n")


def _commits_itself(wt: Path):
    write(wt / "README.md", "rewritten by the tool\n")
    sh(wt, "commit", "-q", "-am", "tool commit 1")
    write(wt / "later.txt", "after the commit\n")
    sh(wt, "add", "later.txt")
    sh(wt, "commit", "-q", "-m", "tool commit 2")
    write(wt / "uncommitted.txt", "left in the tree\n")


def _symlink(wt: Path):
    os.symlink("README.md", wt / "link")
    (wt / "run.sh").unlink()
    os.symlink("src/app.py", wt / "run.sh")          # a file becomes a symlink


def _latin1(wt: Path):
    write(wt / "legacy.txt", "caf\xe9 na\xefve\n".encode("latin-1"))
    write(wt / "README.md", (wt / "README.md").read_bytes() + b"\xff\xfe odd\n")
    write(wt / "late-nul.txt", b"a" * 9000 + b"\0\n")    # text to git, NUL too late


CHANGES = {
    "edit": (_edit, {("modified", "src/app.py", None, 1, 1, False)}),
    "new file": (_new_file, {("added", "tests/test_new.py", None, 2, 0, False)}),
    "delete": (_delete, {("deleted", "run.sh", None, 0, 2, False)}),
    "rename": (_rename, {("renamed", "src/main.py", "src/app.py", 0, 0, False)}),
    "binary": (_binary, {("modified", "data.bin", None, 0, 0, True),
                         ("added", "new.png", None, 0, 0, True)}),
    "mode": (_mode, {("modified", "run.sh", None, 0, 0, False),
                     ("modified", "README.md", None, 0, 0, False)}),
    "tool commits": (_commits_itself, {("modified", "README.md", None, 1, 5, False),
                                       ("added", "later.txt", None, 1, 0, False),
                                       ("added", "uncommitted.txt", None, 1, 0, False)}),
    "symlink": (_symlink, {("added", "link", None, 1, 0, False),
                           ("type_changed", "run.sh", None, 1, 2, False)}),
    "not utf-8": (_latin1, {("added", "legacy.txt", None, 0, 0, True),
                            ("modified", "README.md", None, 0, 0, True),
                            ("added", "late-nul.txt", None, 0, 0, True)}),
}


@pytest.mark.parametrize("kind", CHANGES)
def test_capture_each_kind_of_change_and_its_diff_round_trips(repo, kind):
    make_change, expected = CHANGES[kind]
    start = repo.resolve_commit("HEAD")
    wt = repo.add_attempt_worktree(fresh_name(), start)
    make_change(wt.path)
    change = g.capture_change(wt.path, start)
    assert not change.is_empty and change.start == start
    assert {(f.status, f.path, f.old_path, f.lines_added, f.lines_removed, f.binary)
            for f in change.files} == expected
    change.diff.encode("utf-8")                  # text the ledger can store
    assert "\0" not in change.diff
    assert_round_trip(repo, change, wt.path)


def test_capture_records_modes(repo):
    wt = repo.add_attempt_worktree("modes", "HEAD")
    _mode(wt.path)
    change = g.capture_change(wt.path, repo.resolve_commit("HEAD"))
    modes = {f.path: (f.old_mode, f.new_mode, f.mode_changed) for f in change.files}
    assert modes == {"run.sh": ("100755", "100644", True),
                     "README.md": ("100644", "100755", True)}


def test_capture_keeps_odd_file_names_exactly(repo):
    wt = repo.add_attempt_worktree("odd", "HEAD")
    _odd_names(wt.path)
    change = g.capture_change(wt.path, repo.resolve_commit("HEAD"))
    assert sorted(f.path for f in change.files) == sorted(
        f"odd/{p.name}" for p in (wt.path / "odd").iterdir())
    assert all(f.status == g.ADDED and f.lines_added == 1 for f in change.files)
    assert_round_trip(repo, change, wt.path)


def test_ignored_files_are_not_captured(repo):
    wt = repo.add_attempt_worktree("ignored", "HEAD")
    write(wt.path / "tool.log", "noise")
    write(wt.path / "build" / "out.o", b"\0\1")
    write(wt.path / "kept.txt", "kept\n")
    change = g.capture_change(wt.path, repo.resolve_commit("HEAD"))
    assert [f.path for f in change.files] == ["kept.txt"]
    assert "tool.log" not in change.diff and "build/" not in change.diff


def test_an_empty_change_is_recognisable(repo):
    wt = repo.add_attempt_worktree("empty", "HEAD")
    write(wt.path / "ignored.log", "only ignored")
    change = g.capture_change(wt.path, repo.resolve_commit("HEAD"))
    assert change.is_empty and change.diff == "" and change.files == ()


def test_a_tool_that_commits_and_reverts_leaves_an_empty_change(repo):
    wt = repo.add_attempt_worktree("revert", "HEAD")
    write(wt.path / "README.md", "temporary\n")
    sh(wt.path, "commit", "-q", "-am", "oops")
    sh(wt.path, "revert", "--no-edit", "HEAD")
    assert g.capture_change(wt.path, repo.resolve_commit("HEAD")).is_empty


def test_a_tool_commit_does_not_move_any_branch(repo):
    refs = sh(repo.toplevel, "for-each-ref")
    wt = repo.add_attempt_worktree("commits", "HEAD")
    _commits_itself(wt.path)
    g.capture_change(wt.path, repo.resolve_commit("HEAD"))
    assert sh(repo.toplevel, "for-each-ref") == refs


PATHS = ["a.txt", "dir/b.txt", "x", "x/y", "sp ace.txt", "new\nline", "ünï ✓", "d/e/f.py",
         "-dash", "bin.dat", "ignored.log"]
contents = st.one_of(st.binary(max_size=120),
                     st.text(max_size=120).map(lambda t: t.encode("utf-8", "surrogatepass")),
                     st.lists(st.sampled_from(["a\n", "b\n", "c\r\n", "\n", "é\n"]),
                              max_size=30).map(lambda ls: "".join(ls).encode()))
operations = st.lists(st.one_of(
    st.tuples(st.just("write"), st.sampled_from(PATHS), contents),
    st.tuples(st.just("delete"), st.sampled_from(PATHS)),
    st.tuples(st.just("rename"), st.sampled_from(PATHS), st.sampled_from(PATHS)),
    st.tuples(st.just("chmod"), st.sampled_from(PATHS)),
    st.tuples(st.just("commit"))), max_size=8)


def _perform(wt: Path, operation: tuple) -> None:
    kind, *args = operation
    try:
        if kind == "write":
            write(wt / args[0], args[1])
        elif kind == "delete":
            (wt / args[0]).unlink()
        elif kind == "rename":
            if not (wt / args[1]).exists():
                (wt / args[1]).parent.mkdir(parents=True, exist_ok=True)
                os.rename(wt / args[0], wt / args[1])
        elif kind == "chmod":
            path = wt / args[0]
            path.chmod(path.stat().st_mode ^ stat.S_IXUSR)
        else:
            sh(wt, "add", "-A")
            sh(wt, "commit", "-q", "--allow-empty", "-m", "tool")
    except OSError:
        pass     # impossible on this tree (a file where a folder is, a folder into itself)


@pytest.fixture(scope="module")
def shared_repo(tmp_path_factory) -> g.Repository:
    path = make_repo(tmp_path_factory.mktemp("prop") / "target")
    for name in ("a.txt", "dir/b.txt", "x", "d/e/f.py", "sp ace.txt"):
        write(path / name, f"{name}\n1\n2\n3\n")
    write(path / "bin.dat", bytes(range(200)))
    sh(path, "add", "-A")
    sh(path, "commit", "-q", "-m", "files for the property test")
    return g.open_repository(path)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations)
def test_property_the_captured_diff_reproduces_the_tools_tree(shared_repo, ops):
    start = shared_repo.resolve_commit("HEAD")
    wt = shared_repo.add_attempt_worktree(fresh_name("prop"), start)
    try:
        for operation in ops:
            _perform(wt.path, operation)
        change = g.capture_change(wt.path, start)
        assert change.is_empty == (tree_of(wt.path) == sh(wt.path, "rev-parse",
                                                          f"{start}^{{tree}}"))
        change.diff.encode("utf-8")
        assert "\0" not in change.diff
        for f in change.files:      # --hypothesis-show-statistics: what the examples covered
            event(f"{f.status}{' binary' if f.binary else ''}"
                  f"{' mode' if f.mode_changed else ''}")
        assert_round_trip(shared_repo, change, wt.path)
    finally:
        shared_repo.remove_worktree(wt.path)


# -- checking, applying, resetting -------------------------------------------------------

@pytest.fixture
def integration(repo) -> g.Worktree:
    repo.create_branch("uet/run", "HEAD")
    return repo.add_integration_worktree("integration", "uet/run")


def captured(repo: g.Repository, make_change, start: str = "HEAD") -> g.CapturedChange:
    start = repo.resolve_commit(start)
    wt = repo.add_attempt_worktree(fresh_name(), start)
    make_change(wt.path)
    change = g.capture_change(wt.path, start)
    repo.remove_worktree(wt.path)
    return change


def commit_in(worktree: Path, path: str, content: str) -> None:
    write(worktree / path, content)
    sh(worktree, "commit", "-q", "-am", f"change {path}")


def assert_clean(worktree: Path, head: str) -> None:
    assert sh(worktree, "rev-parse", "HEAD") == head
    assert sh(worktree, "status", "--porcelain", "--untracked-files=all") == ""
    assert sh(worktree, "ls-files", "-u") == ""


def test_check_patch_says_yes_and_touches_nothing(repo, integration):
    change = captured(repo, _new_file)
    check = g.check_patch(integration.path, change.diff)
    assert check.applies and check.conflicts == ()
    assert_clean(integration.path, integration.head)


def test_check_patch_names_the_conflicting_paths_and_touches_nothing(repo, integration):
    change = captured(repo, _edit)
    commit_in(integration.path, "src/app.py",
              (integration.path / "src/app.py").read_text().replace("print(7)", "print(77)"))
    head = sh(integration.path, "rev-parse", "HEAD")
    check = g.check_patch(integration.path, change.diff)
    assert not check.applies and check.conflicts == ("src/app.py",)
    assert_clean(integration.path, head)


def test_check_patch_accepts_a_three_way_merge_where_the_context_moved(repo, integration):
    change = captured(repo, _edit)
    commit_in(integration.path, "src/app.py",
              (integration.path / "src/app.py").read_text().replace("print(9)", "print(99)"))
    assert g.check_patch(integration.path, change.diff).applies


def test_check_patch_on_an_empty_diff(integration):
    assert g.check_patch(integration.path, "").applies


def test_apply_patch_changes_files_and_index(repo, integration):
    change = captured(repo, _rename)
    g.apply_patch(integration.path, change.diff)
    assert (integration.path / "src/main.py").exists()
    assert not (integration.path / "src/app.py").exists()
    assert sh(integration.path, "diff", "--cached", "--name-status", "-M") == (
        "R100\tsrc/app.py\tsrc/main.py")


def test_apply_patch_merges_three_way_where_the_context_moved(repo, integration):
    change = captured(repo, _edit)
    commit_in(integration.path, "src/app.py",
              (integration.path / "src/app.py").read_text().replace("print(9)", "print(99)"))
    g.apply_patch(integration.path, change.diff)
    text = (integration.path / "src/app.py").read_text()
    assert "print(70)" in text and "print(99)" in text


def test_a_conflict_names_the_paths_and_leaves_the_worktree_clean(repo, integration):
    change = captured(repo, lambda wt: (_edit(wt), _new_file(wt)))
    commit_in(integration.path, "src/app.py",
              (integration.path / "src/app.py").read_text().replace("print(7)", "print(77)"))
    head = sh(integration.path, "rev-parse", "HEAD")
    with pytest.raises(g.ApplyConflictError) as err:
        g.apply_patch(integration.path, change.diff)
    assert err.value.paths == ("src/app.py",) and "src/app.py" in str(err.value)
    assert isinstance(err.value, g.GitError)
    assert_clean(integration.path, head)


def test_a_patch_git_refuses_outright_names_its_file_and_leaves_the_worktree_clean(
        repo, integration):
    change = captured(repo, _delete)
    (integration.path / "run.sh").unlink()
    sh(integration.path, "commit", "-q", "-am", "run.sh gone already")
    with pytest.raises(g.ApplyConflictError) as err:
        g.apply_patch(integration.path, change.diff)
    assert err.value.paths == ("run.sh",)
    assert_clean(integration.path, sh(integration.path, "rev-parse", "HEAD"))
    check = g.check_patch(integration.path, change.diff)
    assert not check.applies and check.conflicts == ("run.sh",)


def test_a_corrupt_patch_is_refused_cleanly(integration):
    with pytest.raises(g.ApplyConflictError) as err:
        g.apply_patch(integration.path, "diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ garbage\n")
    assert err.value.paths == ("x",)         # the file its header names
    assert_clean(integration.path, integration.head)
    assert not g.check_patch(integration.path, "not a patch at all\n").applies


def test_reset_worktree_after_a_failed_gate(repo, integration):
    g.apply_patch(integration.path, captured(repo, lambda wt: (_edit(wt), _binary(wt))).diff)
    write(integration.path / "gate-output.txt", "stray")     # a gate left a file
    write(integration.path / "cache.log", "ignored")          # and an ignored cache
    g.reset_worktree(integration.path)
    assert_clean(integration.path, integration.head)
    assert (integration.path / "cache.log").exists()


# -- committing, and finding the commit of an entry ---------------------------------------

def test_commit_change_advances_the_branch_with_the_trailer(repo, integration):
    g.apply_patch(integration.path, captured(repo, _new_file).diff)
    sha = g.commit_change(integration.path, "WS-1 TSK-1 attempt 1\n\nbody", "ENTRY-1")
    assert repo.branch_head("uet/run") == sha
    assert sh(repo.toplevel, "rev-parse", f"{sha}^") == integration.head
    assert sh(repo.toplevel, "log", "-1", "--format=%B", sha) == (
        "WS-1 TSK-1 attempt 1\n\nbody\n\nUet-Entry: ENTRY-1")
    assert sh(repo.toplevel, "log", "-1", "--format=%an <%ae>|%cn", sha) == (
        "uet <uet@localhost>|uet")
    assert_clean(integration.path, sha)
    assert sh(repo.toplevel, "show", f"{sha}:tests/test_new.py").startswith("def test")


def test_commit_change_ignores_identity_from_the_environment(repo, integration, monkeypatch):
    monkeypatch.setenv("GIT_AUTHOR_NAME", "Someone Else")
    monkeypatch.setenv("GIT_COMMITTER_DATE", "2001-01-01T00:00:00")
    g.apply_patch(integration.path, captured(repo, _new_file).diff)
    sha = g.commit_change(integration.path, "m", "E", identity=("Bot", "bot@example.com"))
    assert sh(repo.toplevel, "log", "-1", "--format=%an %ae %cn", sha) == (
        "Bot bot@example.com Bot")
    assert not sh(repo.toplevel, "log", "-1", "--format=%cI", sha).startswith("2001")


def test_commit_change_refuses_an_empty_commit_unless_allowed(integration):
    with pytest.raises(g.GitError, match="nothing to commit"):
        g.commit_change(integration.path, "m", "E-empty")
    sha = g.commit_change(integration.path, "m", "E-empty", allow_empty=True)
    assert sh(integration.path, "rev-parse", "HEAD^") == integration.head != sha


def test_commit_change_is_a_compare_and_set_on_the_branch_head(repo, integration):
    g.apply_patch(integration.path, captured(repo, _new_file).diff)
    with pytest.raises(g.GitError):
        g.commit_change(integration.path, "m", "E-stale", parent=repo.resolve_commit("HEAD~1"))
    assert repo.branch_head("uet/run") == integration.head


@pytest.mark.parametrize("bad", ["", " E", "E\nF", "E\0"])
def test_commit_change_refuses_an_entry_id_that_is_not_one_line(integration, bad):
    with pytest.raises(ValidationError):
        g.commit_change(integration.path, "m", bad, allow_empty=True)


def test_find_entry_commit_matches_exactly(repo, integration):
    shas = {}
    for entry in ("E1", "E10", "XE1", "E1-retry"):
        shas[entry] = g.commit_change(integration.path, f"task {entry}", entry,
                                      allow_empty=True)
    # a message that mentions an entry outside its trailer block is not that entry's commit
    g.commit_change(integration.path, "see\n\nUet-Entry: E2\n\nnot a trailer", "E3",
                    allow_empty=True)
    for entry, sha in shas.items():
        assert repo.find_entry_commit("uet/run", entry, since=integration.head) == sha
    assert repo.find_entry_commit("uet/run", "E", since=integration.head) is None
    assert repo.find_entry_commit("uet/run", "E2", since=integration.head) is None
    assert repo.find_entry_commit("uet/run", "E10", since=shas["E10"]) is None  # since
    assert repo.find_entry_commit("uet/run", "E1") == shas["E1"]                # all history


def test_entry_commits_shows_a_patch_committed_twice(repo, integration):
    first = g.commit_change(integration.path, "one", "E-dup", allow_empty=True)
    g.commit_change(integration.path, "other", "E-ok", allow_empty=True)
    second = g.commit_change(integration.path, "two", "E-dup", allow_empty=True)
    found = repo.entry_commits("uet/run", since=integration.head)
    assert found == {"E-dup": [second, first], "E-ok": [found["E-ok"][0]]}


# -- the target repository is left alone -------------------------------------------------

def test_the_targets_checkout_index_head_and_branches_are_untouched(repo, tmp_path,
                                                                    monkeypatch):
    write(repo.toplevel / "src/app.py", "uncommitted work of the user\n")
    write(repo.toplevel / "notes.txt", "untracked work of the user\n")
    write(repo.toplevel / "README.md", "staged work\n")
    sh(repo.toplevel, "add", "README.md")
    sh(repo.toplevel, "branch", "feature", "HEAD~1")
    before = snapshot(repo.toplevel)
    # inherited from a hook that runs uet: would point git at the target's own index
    monkeypatch.setenv("GIT_DIR", str(repo.git_dir))
    monkeypatch.setenv("GIT_INDEX_FILE", str(repo.git_dir / "index"))
    monkeypatch.setenv("GIT_WORK_TREE", str(repo.toplevel))

    base = repo.resolve_commit("HEAD")
    repo.create_branch("uet/run-9", base)
    integ = repo.add_integration_worktree("integration-9", "uet/run-9")
    for n, change in enumerate((_edit, _binary, _rename, _commits_itself)):
        attempt = repo.add_attempt_worktree(f"attempt-{n}", repo.branch_head("uet/run-9"))
        change(attempt.path)
        patch = g.capture_change(attempt.path, attempt.head)
        assert g.check_patch(integ.path, patch.diff).applies
        g.apply_patch(integ.path, patch.diff)
        if n == 1:
            g.reset_worktree(integ.path)        # a gate failed
        else:
            g.commit_change(integ.path, f"task {n}", f"E{n}")
        repo.remove_worktree(attempt.path)
    repo.find_entry_commit("uet/run-9", "E0", since=base)
    repo.diff_stat(base, "uet/run-9")
    repo.remove_worktree(integ.path)
    repo.prune_worktrees()
    repo.delete_branch("uet/run-9")

    monkeypatch.delenv("GIT_DIR")
    monkeypatch.delenv("GIT_INDEX_FILE")
    monkeypatch.delenv("GIT_WORK_TREE")
    assert snapshot(repo.toplevel) == before
    assert repo.uet_worktrees() == []


def test_repository_settings_do_not_change_what_uet_does(repo):
    hooks = repo.toplevel / "hooks"
    for hook in ("post-checkout", "pre-commit", "post-commit", "reference-transaction"):
        write(hooks / hook, f"#!/bin/sh\necho {hook} >> {repo.toplevel}/HOOK-RAN\n",
              mode=0o755)
    for setting in ("core.hooksPath hooks", "diff.noprefix true", "diff.mnemonicPrefix true",
                    "color.ui always", "commit.gpgsign true", "diff.external false",
                    "apply.whitespace error", "core.autocrlf true", "diff.renames false"):
        sh(repo.toplevel, "config", *setting.split())
    repo.create_branch("uet/cfg", "HEAD")
    integ = repo.add_integration_worktree("cfg", "uet/cfg")
    change = captured(repo, lambda wt: (_rename(wt), write(wt / "ws.txt", "trailing  \n")))
    assert change.diff.startswith("diff --git a/") and "\x1b[" not in change.diff
    assert any(f.status == g.RENAMED for f in change.files)
    g.apply_patch(integ.path, change.diff)
    g.commit_change(integ.path, "m", "E-cfg")
    assert not (repo.toplevel / "HOOK-RAN").exists()


def test_a_tool_that_breaks_its_worktree_gets_an_error_not_the_target(repo):
    before = snapshot(repo.toplevel)
    wt = repo.add_attempt_worktree("broken-tool", "HEAD")
    write(wt.path / "README.md", "edited\n")
    (wt.path / ".git").unlink()       # git would now find the target's .git further up
    with pytest.raises(g.GitError, match="work tree"):
        g.capture_change(wt.path, repo.resolve_commit("HEAD"))
    repo.remove_worktree(wt.path)
    assert snapshot(repo.toplevel) == before and repo.uet_worktrees() == []


@pytest.mark.parametrize("call", [
    lambda repo: repo.diff_stat("--output=/tmp/uet-pwned", "HEAD"),
    lambda repo: repo.is_ancestor("--all", "HEAD"),
    lambda repo: repo.entry_commits("main", since="--all"),
    lambda repo: g.capture_change(repo.toplevel, "--output=x"),
    lambda repo: g.check_patch(repo.toplevel, "diff", onto="-u"),
])
def test_a_revision_that_looks_like_an_option_is_refused(repo, call):
    with pytest.raises(ValidationError):
        call(repo)


def test_check_patch_onto_another_commit(repo, integration):
    change = captured(repo, _edit, start="HEAD~1")
    assert g.check_patch(integration.path, change.diff, onto=change.start).applies


def test_without_repository_variables():
    env = {"GIT_DIR": "/x", "GIT_INDEX_FILE": "/y", "GIT_AUTHOR_NAME": "a", "PATH": "/bin"}
    assert g.without_repository_variables(env) == {"GIT_AUTHOR_NAME": "a", "PATH": "/bin"}


def test_refs_read_from_files_equal_what_git_lists(tmp_path):
    """refs() reads git's ref files (packed and loose) for speed: it must say exactly what
    `git for-each-ref` says, for packed, loose, nested, annotated and overriding refs."""
    from uet.engine import git as gitmod
    path = tmp_path / "r"
    path.mkdir()
    env = {**os.environ, "GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@b",
           "GIT_COMMITTER_NAME": "a", "GIT_COMMITTER_EMAIL": "a@b"}

    def run(*args):
        return subprocess.run(["git", "-C", str(path), *args], check=True, env=env,
                              capture_output=True, text=True).stdout

    run("init", "-q", "-b", "main")
    run("commit", "-q", "--allow-empty", "-m", "one")
    run("branch", "feature/deep/name")
    run("tag", "light")
    run("tag", "-a", "annotated", "-m", "an annotated tag")
    run("pack-refs", "--all")
    run("commit", "-q", "--allow-empty", "-m", "two")   # main loose, overriding packed
    run("branch", "loose-only")
    run("tag", "-a", "loose-annotated", "-m", "x")
    repo = gitmod.open_repository(path)
    listed = dict(line.split(" ", 1)[::-1] for line in run(
        "for-each-ref", "--format=%(objectname) %(refname)", "refs/heads", "refs/tags")
        .splitlines())
    assert repo._ref_files() == listed
    assert repo.refs() == listed
    run("branch", "-D", "feature/deep/name")   # deleted from packed-refs
    listed.pop("refs/heads/feature/deep/name")
    assert repo.refs() == listed

"""The patch validator's scope and policy rules (uet.engine.policy), one test per rule, with the
exact messages a quarantined entry records, the glob semantics as a table, properties, and a
change captured from a real repository by uet.engine.git, judged."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uet.engine import git as g
from uet.engine.git import FileChange
from uet.engine.policy import (
    VIOLATION_KINDS,
    FileScope,
    Policy,
    Verdict,
    Violation,
    judge_change,
    matching_globs,
    unsafe_path_reason,
)
from uet.errors import ValidationError

# the workstream of SPEC §9, narrowed a little so that every rule has something to refuse
SCOPE = FileScope(modify=["src/**"], create=["tests/**"], read_only=["src/vendor/**"])
POLICY = Policy(max_lines_changed=300, max_files_changed=10, forbid_binary=True,
                forbid_paths=[".github/**"])


# the modes git records: a regular file, an executable, a symlink, and none (absent)
FILE, EXECUTABLE, SYMLINK, ABSENT = "100644", "100755", "120000", FileChange.ABSENT_MODE


def change(path: str, status: str, old_path: str | None = None, added: int = 0,
           removed: int = 0, binary: bool = False, *,
           modes: tuple[str, str] | None = None) -> FileChange:
    """git's record of one changed file, as `capture_change` makes it; the modes are a
    regular file's unless given, absent on the side where the status says the file is."""
    if modes is None:
        modes = {"added": (ABSENT, FILE), "deleted": (FILE, ABSENT)}.get(status, (FILE, FILE))
    return FileChange(status, path, old_path, added, removed, binary, *modes)


def modified(path: str, added: int = 1, removed: int = 0, **kw) -> FileChange:
    return change(path, "modified", added=added, removed=removed, **kw)


def added(path: str, lines: int = 1, **kw) -> FileChange:
    return change(path, "added", added=lines, **kw)


def deleted(path: str, lines: int = 1, **kw) -> FileChange:
    return change(path, "deleted", removed=lines, **kw)


def renamed(old: str, new: str, **kw) -> FileChange:
    return change(new, "renamed", old_path=old, **kw)


def copied(old: str, new: str) -> FileChange:
    return change(new, "copied", old_path=old, added=1)


def chmodded(path: str, lines: int = 0) -> FileChange:
    """`chmod +x`: git reports a modification whose modes differ (`mode_changed`)."""
    return change(path, "modified", added=lines, modes=(FILE, EXECUTABLE))


def type_changed(path: str, lines: int = 0) -> FileChange:
    """A file that becomes a symlink: git's `T`, its mode going to 120000."""
    return change(path, "type_changed", added=lines, removed=lines, modes=(FILE, SYMLINK))


# what the old `mode` status of the policy's own record was: a change of the mode of an
# existing file, judged as needing modify (git: modified with mode_changed, or type_changed)
MODE_CHANGES = [chmodded, type_changed]


def messages(verdict: Verdict) -> list[str]:
    return [v.message for v in verdict.violations]


def only(verdict: Verdict) -> Violation:
    assert len(verdict.violations) == 1, verdict.violations
    return verdict.violations[0]


# -- the inputs' contract ------------------------------------------------------------------------

# a valid record of a modified file, each case below breaks one field of it
VALID = {"status": "modified", "path": "a", "old_path": None, "lines_added": 0,
         "lines_removed": 0, "binary": False, "old_mode": FILE, "new_mode": FILE}


@pytest.mark.parametrize("kwargs, field", [
    ({"path": "a", "status": "changed"}, "status"),
    ({"path": "a", "status": "M"}, "status"),
    ({"path": "a", "status": "mode"}, "status"),  # git's modified with its modes instead
    ({"path": b"a", "status": "modified"}, "path"),
    ({"path": "a", "status": "renamed"}, "old_path"),
    ({"path": "a", "status": "copied", "old_path": None}, "old_path"),
    ({"path": "a", "status": "modified", "old_path": "b"}, "old_path"),
    ({"path": "a", "status": "added", "old_path": "b"}, "old_path"),
    ({"path": "a", "status": "modified", "lines_added": -1}, "lines_added"),
    ({"path": "a", "status": "modified", "lines_removed": 1.5}, "lines_removed"),
    ({"path": "a", "status": "modified", "lines_added": True}, "lines_added"),
    ({"path": "a", "status": "modified", "binary": 1}, "binary"),
    # numstat has no lines for a binary file: git records 0, so the policy counts none
    ({"path": "a", "status": "modified", "binary": True, "lines_added": 999}, "lines_added"),
    ({"path": "a", "status": "modified", "binary": True, "lines_removed": 1},
     "lines_added"),
    ({"path": "a", "status": "modified", "old_mode": "644"}, "old_mode"),
    ({"path": "a", "status": "modified", "new_mode": 0o100644}, "new_mode"),
    ({"path": "a", "status": "added"}, "old_mode"),      # an added file had no mode before
    ({"path": "a", "status": "deleted"}, "new_mode"),    # a deleted file has none after
    ({"path": "a", "status": "modified", "new_mode": ABSENT}, "new_mode"),
    ({"path": "a", "status": "renamed", "old_path": "b", "similarity": 101}, "similarity"),
    ({"path": "a", "status": "modified", "similarity": 100}, "similarity"),
])
def test_a_file_change_outside_the_contract_is_refused(kwargs, field):
    with pytest.raises(ValidationError) as caught:
        FileChange(**{**VALID, **kwargs})
    assert caught.value.field == field


@pytest.mark.parametrize("status", FileChange.STATUSES)
def test_every_status_of_the_contract_is_accepted(status):
    old = "a.txt" if status in ("renamed", "copied") else None
    assert change("b.txt", status, old_path=old).status == status


def test_a_scope_keeps_its_globs_as_tuples_in_the_authors_words():
    scope = FileScope(modify=["src/**", "lib/"], create=("tests/**",))
    assert scope == FileScope(("src/**", "lib/"), ("tests/**",), ())
    assert hash(scope) == hash(FileScope(("src/**", "lib/"), ("tests/**",)))
    assert Policy(forbid_paths=[".github/**"]).forbid_paths == (".github/**",)


@pytest.mark.parametrize("make, field", [
    # a lone string would otherwise be iterated into one-character globs
    (lambda: FileScope(modify="src/**"), "files_scope.modify"),
    (lambda: FileScope(create=[3]), "files_scope.create"),
    (lambda: FileScope(read_only=[""]), "files_scope.read_only"),
    (lambda: FileScope(read_only=["/"]), "files_scope.read_only"),
    (lambda: Policy(forbid_paths=".github/**"), "policy.forbid_paths"),
    (lambda: Policy(max_lines_changed=-1), "policy.max_lines_changed"),
    (lambda: Policy(max_files_changed="10"), "policy.max_files_changed"),
    (lambda: Policy(max_files_changed=True), "policy.max_files_changed"),
    (lambda: Policy(forbid_binary="yes"), "policy.forbid_binary"),
])
def test_a_malformed_scope_or_policy_is_refused(make, field):
    with pytest.raises(ValidationError) as caught:
        make()
    assert caught.value.field == field


def test_a_violation_of_an_unknown_kind_is_refused():
    with pytest.raises(ValidationError):
        Violation("too_big", None, "?")


def test_judge_change_takes_only_file_changes():
    with pytest.raises(ValidationError):
        judge_change([("src/a.py", "modified")], SCOPE)


# -- glob semantics ------------------------------------------------------------------------------

@pytest.mark.parametrize("pattern, path, matches", [
    # `**` crosses folders, at any depth, zero folders included
    ("src/**", "src/app.py", True),
    ("src/**", "src/a/b/c.py", True),
    ("src/**", "srcx/app.py", False),
    ("src/**", "lib/src/app.py", False),
    ("**/test_*.py", "test_a.py", True),
    ("**/test_*.py", "tests/unit/test_a.py", True),
    ("**/test_*.py", "tests/unit/a_test.py", False),
    ("src/**/test_*.py", "src/test_a.py", True),
    ("src/**/test_*.py", "src/x/y/test_a.py", True),
    ("**", "any/path/at/all.txt", True),
    # `*` and `?` do not cross `/`
    ("src/*", "src/app.py", True),
    ("src/*", "src/a/app.py", False),
    ("src/*.py", "src/app.py", True),
    ("src/*.py", "src/app.pyc", False),
    ("src/?.py", "src/a.py", True),
    ("src/?.py", "src/ab.py", False),
    ("a?b", "a/b", False),
    # anchored at the root: no basename matching, a bare name is one file
    ("*.py", "setup.py", True),
    ("*.py", "src/app.py", False),
    ("app.py", "src/app.py", False),
    ("docs", "docs/index.md", False),
    # gitignore's conveniences: a trailing `/` is the folder's contents, a leading `/` anchors
    ("docs/", "docs/index.md", True),
    ("docs/", "docs/a/b.md", True),
    ("docs/", "docsx/index.md", False),
    ("/src/**", "src/app.py", True),
    # character classes
    ("[ab].py", "a.py", True),
    ("[ab].py", "c.py", False),
    ("[!ab].py", "c.py", True),
    ("[a-c]x", "bx", True),
    ("[a-c]x", "dx", False),
    # dotfiles are files like any other (DOTGLOB)
    ("src/**", "src/.env", True),
    ("src/**", "src/.cache/data", True),
    ("src/*", "src/.env", True),
    ("**/*.pem", ".secrets/key.pem", True),
    ("*", ".gitignore", True),
    # case-sensitive
    ("src/**", "SRC/app.py", False),
    ("README.md", "readme.md", False),
    # literal: no braces, no negation; a backslash escapes
    ("{a,b}.py", "a.py", False),
    ("{a,b}.py", "{a,b}.py", True),
    ("!src/**", "src/app.py", False),
    ("src/a\\*.py", "src/a*.py", True),
    ("src/a\\*.py", "src/ab.py", False),
])
def test_glob_semantics(pattern, path, matches):
    assert matching_globs(path, [pattern]) == ((pattern,) if matches else ())


def test_matching_globs_names_every_glob_that_matches_in_order():
    assert matching_globs("src/a/test_x.py", ["**/test_*.py", "lib/**", "src/**"]) == (
        "**/test_*.py", "src/**")


# -- scope: modify for existing files, create for new ones ------------------------------------

def test_a_change_inside_the_scope_passes():
    verdict = judge_change([modified("src/app.py", 10, 2), added("tests/test_app.py", 30),
                            deleted("src/old.py", 5), chmodded("src/run.sh"),
                            renamed("src/a.py", "tests/a.py"),
                            copied("src/b.py", "tests/b.py")], SCOPE, POLICY)
    assert verdict.ok and verdict.violations == () and verdict.reason == ""
    assert (verdict.files_changed, verdict.lines_changed) == (6, 48)


def test_a_modified_file_outside_modify_is_outside_scope():
    scope = FileScope(modify=["tests/**"], create=["tests/**"])
    violation = only(judge_change([modified("src/app.py")], scope))
    assert violation == Violation(
        "outside_scope", "src/app.py",
        "src/app.py is outside the task's files_scope.modify (tests/**)")


@pytest.mark.parametrize("mode_change", MODE_CHANGES)
def test_a_mode_change_needs_modify(mode_change):
    violation = only(judge_change([mode_change("tools/run.sh")], SCOPE))
    assert violation == Violation(
        "outside_scope", "tools/run.sh",
        "tools/run.sh has its mode changed but is outside the task's files_scope.modify "
        "(src/**)")


def test_deleting_a_file_needs_modify_even_where_create_allows():
    violation = only(judge_change([deleted("tests/test_old.py")], SCOPE))
    assert violation == Violation(
        "outside_scope", "tests/test_old.py",
        "tests/test_old.py is deleted but is outside the task's files_scope.modify (src/**); "
        "deleting a file needs modify")


def test_deleting_a_file_under_modify_passes():
    assert judge_change([deleted("src/old.py")], SCOPE).ok


def test_a_new_file_needs_create_even_where_modify_allows():
    violation = only(judge_change([added("src/new.py")], SCOPE))
    assert violation == Violation(
        "not_creatable", "src/new.py",
        "src/new.py is a new file outside the task's files_scope.create (tests/**)")


def test_a_modified_file_under_create_only_is_outside_scope():
    # create lets a task add tests/**; an existing test file is not its to edit
    assert only(judge_change([modified("tests/test_a.py")], SCOPE)).kind == "outside_scope"


@pytest.mark.parametrize("mode_change", MODE_CHANGES)
def test_a_mode_change_under_modify_passes(mode_change):
    assert judge_change([mode_change("src/run.sh", lines=1)], SCOPE, POLICY).ok


def test_an_empty_list_allows_nothing_of_its_kind():
    scope = FileScope(modify=["src/**"])  # a task's `files_scope: {modify: [...]}`
    verdict = judge_change([modified("src/a.py"), added("src/b.py")], scope)
    assert messages(verdict) == [
        "src/b.py is a new file outside the task's files_scope.create, which is empty"]
    verdict = judge_change([modified("src/a.py")], FileScope(create=["src/**"]))
    assert messages(verdict) == [
        "src/a.py is outside the task's files_scope.modify, which is empty"]


def test_an_empty_scope_allows_no_change_at_all():
    verdict = judge_change([modified("a"), added("b"), deleted("c")], FileScope())
    assert [v.kind for v in verdict.violations] == ["outside_scope", "outside_scope",
                                                    "not_creatable"]


def test_without_a_files_scope_everything_but_forbidden_and_unsafe_paths_is_allowed():
    changes = [modified("src/app.py"), added("anything/new.txt"), deleted("docs/x.md"),
               renamed("a.py", "b/a.py"), chmodded("run.sh"), type_changed("link")]
    assert judge_change(changes, None).ok
    verdict = judge_change(changes + [modified(".github/ci.yml"), modified("/etc/passwd")],
                           None, POLICY)
    assert [(v.kind, v.path) for v in verdict.violations] == [
        ("unsafe_path", "/etc/passwd"), ("forbidden", ".github/ci.yml")]


def test_a_long_glob_list_is_shortened_in_the_message():
    scope = FileScope(modify=[f"pkg{i}/**" for i in range(8)])
    assert only(judge_change([modified("src/a.py")], scope)).message == (
        "src/a.py is outside the task's files_scope.modify "
        "(pkg0/**, pkg1/**, pkg2/**, pkg3/**, pkg4/** and 3 more)")


# -- renames and copies --------------------------------------------------------------------------

def test_a_rename_needs_modify_on_its_old_path():
    violation = only(judge_change([renamed("lib/util.py", "tests/util.py")], SCOPE))
    assert violation == Violation(
        "outside_scope", "lib/util.py",
        "lib/util.py is renamed to tests/util.py but is outside the task's files_scope.modify "
        "(src/**); renaming a file away needs modify on its old path")


def test_a_rename_needs_create_on_its_new_path():
    violation = only(judge_change([renamed("src/util.py", "src/helpers.py")], SCOPE))
    assert violation == Violation(
        "not_creatable", "src/helpers.py",
        "src/helpers.py is a new file (renamed from src/util.py) outside the task's "
        "files_scope.create (tests/**)")


def test_a_rename_wrong_at_both_ends_gives_both_violations():
    verdict = judge_change([renamed("lib/a.py", "lib/b.py")], SCOPE)
    assert [(v.kind, v.path) for v in verdict.violations] == [
        ("outside_scope", "lib/a.py"), ("not_creatable", "lib/b.py")]
    assert verdict.files_changed == 1


def test_a_rename_out_of_a_read_only_or_forbidden_path_is_refused():
    verdict = judge_change([renamed("src/vendor/x.py", "tests/x.py"),
                            renamed(".github/ci.yml", "tests/ci.yml")], SCOPE, POLICY)
    assert [(v.kind, v.path) for v in verdict.violations] == [
        ("forbidden", ".github/ci.yml"), ("read_only", "src/vendor/x.py")]


def test_a_copy_only_reads_its_source():
    # the source may be read-only, forbidden or outside the scope: it is not changed
    verdict = judge_change([copied("src/vendor/x.py", "tests/x.py"),
                            copied(".github/ci.yml", "tests/ci.yml"),
                            copied("lib/a.py", "tests/a.py")], SCOPE, POLICY)
    assert verdict.ok


def test_a_copy_needs_create_on_its_new_path():
    violation = only(judge_change([copied("src/a.py", "src/b.py")], SCOPE))
    assert violation == Violation(
        "not_creatable", "src/b.py",
        "src/b.py is a new file (copied from src/a.py) outside the task's files_scope.create "
        "(tests/**)")


# -- precedence: forbid over read_only over modify/create -------------------------------------

def test_read_only_wins_over_modify_and_create():
    scope = FileScope(modify=["**"], create=["**"], read_only=["docs/**"])
    verdict = judge_change([modified("docs/guide.md"), added("docs/new.md"),
                            deleted("docs/old.md")], scope)
    assert messages(verdict) == [
        "docs/guide.md is read-only for this task (files_scope.read_only docs/**)",
        "docs/new.md is read-only for this task (files_scope.read_only docs/**)",
        "docs/old.md is read-only for this task (files_scope.read_only docs/**)"]


def test_forbid_wins_over_read_only_modify_and_create():
    scope = FileScope(modify=["**"], create=["**"], read_only=[".github/**"])
    policy = Policy(forbid_paths=[".github/**", "**/*.yml"])
    violation = only(judge_change([modified(".github/workflows/ci.yml")], scope, policy))
    assert violation == Violation(
        "forbidden", ".github/workflows/ci.yml",
        ".github/workflows/ci.yml is forbidden by policy.forbid_paths (.github/**, **/*.yml)")


def test_a_forbidden_path_outside_the_scope_is_reported_once_as_forbidden():
    violation = only(judge_change([added(".github/new.yml")], SCOPE, POLICY))
    assert violation.kind == "forbidden"


# -- unsafe paths --------------------------------------------------------------------------------

@pytest.mark.parametrize("path, message", [
    ("/etc/passwd",
     "/etc/passwd is an absolute path; a change may only touch paths inside the repository"),
    ("../outside.py",
     "../outside.py climbs out of its folder with '..'; a change may only touch paths "
     "inside the repository"),
    ("src/../../x", "src/../../x climbs out of its folder with '..'; a change may only touch "
                    "paths inside the repository"),
    (".git/config", ".git/config points into .git/, which a tool must never touch"),
    (".git/hooks/pre-commit",
     ".git/hooks/pre-commit points into .git/, which a tool must never touch"),
    ("vendor/lib/.git/HEAD", "vendor/lib/.git/HEAD points into .git/, which a tool must "
                             "never touch"),
    (".git", ".git points into .git/, which a tool must never touch"),
    (".GIT/config", ".GIT/config points into .git/, which a tool must never touch"),
    ("./src/app.py",
     "./src/app.py is not a normalised relative path (an empty or '.' segment)"),
    ("src//app.py",
     "src//app.py is not a normalised relative path (an empty or '.' segment)"),
    ("src/", "src/ is not a normalised relative path (an empty or '.' segment)"),
    ("", "'' is an empty path"),
    ("src/a\0b", "'src/a\\x00b' contains a NUL character"),
])
def test_an_unsafe_path_is_refused_whatever_the_scope(path, message):
    everything = FileScope(modify=["**"], create=["**"])
    for scope in (everything, None, SCOPE):
        violation = only(judge_change([modified(path)], scope))
        assert violation == Violation("unsafe_path", path, message)


@pytest.mark.parametrize("path", [".gitignore", ".github/ci.yml", "src/.gitkeep",
                                  "a/b.git/c", "git/config", "src/..foo", "src/a\\b.py"])
def test_paths_that_only_look_unsafe_are_safe(path):
    assert unsafe_path_reason(path) is None


def test_an_unsafe_old_path_of_a_rename_or_copy_is_refused():
    verdict = judge_change([renamed(".git/config", "tests/config"),
                            copied("../secret", "tests/secret")], SCOPE)
    assert [(v.kind, v.path) for v in verdict.violations] == [
        ("unsafe_path", "../secret"), ("unsafe_path", ".git/config")]


def test_a_path_with_a_newline_is_quoted_so_the_reason_stays_one_line():
    verdict = judge_change([modified("lib/a\nb.py")], SCOPE)
    assert verdict.reason == (
        "'lib/a\\nb.py' is outside the task's files_scope.modify (src/**)")
    assert "\n" not in verdict.reason


# -- policy: binary files, files and lines -------------------------------------------------------

def test_a_binary_file_is_refused_when_the_policy_forbids_binary():
    violation = only(judge_change([added("tests/logo.png", 0, binary=True)], SCOPE, POLICY))
    assert violation == Violation(
        "binary", "tests/logo.png",
        "tests/logo.png is a binary file; policy.forbid_binary refuses binary changes")


@pytest.mark.parametrize("change", [
    modified("src/blob.bin", 0, 0, binary=True),
    deleted("src/blob.bin", 0, binary=True),
    renamed("src/blob.bin", "tests/blob.bin", binary=True),
    change("src/blob.bin", "modified", binary=True, modes=(FILE, EXECUTABLE)),
    change("src/blob", "type_changed", binary=True, modes=(FILE, SYMLINK)),
])
def test_every_binary_change_is_refused_whatever_its_status(change):
    assert only(judge_change([change], SCOPE, POLICY)).kind == "binary"


def test_a_binary_file_is_allowed_when_the_policy_does_not_forbid_it():
    assert judge_change([added("tests/logo.png", 0, binary=True)], SCOPE, Policy()).ok


def test_a_binary_file_counts_no_lines_but_counts_as_a_file():
    policy = Policy(max_lines_changed=5, max_files_changed=1)
    # git records no lines for a binary file (a record with some is refused, see the
    # contract's tests above)
    verdict = judge_change([added("tests/a.png", 0, binary=True),
                            added("tests/b.txt", 5)], SCOPE, policy)
    assert (verdict.files_changed, verdict.lines_changed) == (2, 5)
    assert messages(verdict) == ["2 files changed, more than policy.max_files_changed 1"]


def test_too_many_lines():
    verdict = judge_change([modified("src/app.py", 400, 12)], SCOPE, POLICY)
    assert only(verdict) == Violation(
        "too_many_lines", None, "412 lines changed, more than policy.max_lines_changed 300")


def test_too_many_files():
    changes = [modified(f"src/m{i}.py") for i in range(12)]
    assert only(judge_change(changes, SCOPE, POLICY)) == Violation(
        "too_many_files", None, "12 files changed, more than policy.max_files_changed 10")


def test_a_limit_of_zero_refuses_any_change_in_the_singular():
    verdict = judge_change([modified("src/a.py", 1, 0)], SCOPE,
                           Policy(max_lines_changed=0, max_files_changed=0))
    assert messages(verdict) == ["1 file changed, more than policy.max_files_changed 0",
                                 "1 line changed, more than policy.max_lines_changed 0"]


def test_no_limits_by_default():
    changes = [modified("src/m0.bin", 0, 0, binary=True)] + [
        modified(f"src/m{i}.py", 10_000, 10_000) for i in range(1, 500)]
    assert judge_change(changes, SCOPE).ok


def test_unsafe_and_out_of_scope_paths_still_count_towards_the_limits():
    verdict = judge_change([modified("lib/a.py", 3), modified("/abs", 3)], SCOPE,
                           Policy(max_lines_changed=5, max_files_changed=1))
    assert [v.kind for v in verdict.violations] == [
        "unsafe_path", "outside_scope", "too_many_files", "too_many_lines"]


# -- the verdict and its one-line reason --------------------------------------------------------

def test_every_kind_at_once_most_serious_first():
    scope = FileScope(modify=["src/**"], create=["tests/**"], read_only=["docs/**"])
    policy = Policy(max_lines_changed=10, max_files_changed=5, forbid_binary=True,
                    forbid_paths=[".github/**"])
    changes = [modified("docs/a.md", 5), added("src/new.py", 5), modified("lib/x.py", 5),
               modified(".github/ci.yml"), modified(".git/config"),
               added("tests/logo.png", 0, binary=True)]
    verdict = judge_change(changes, scope, policy)
    assert not verdict.ok
    assert tuple(v.kind for v in verdict.violations) == VIOLATION_KINDS
    assert messages(verdict) == [
        ".git/config points into .git/, which a tool must never touch",
        ".github/ci.yml is forbidden by policy.forbid_paths (.github/**)",
        "docs/a.md is read-only for this task (files_scope.read_only docs/**)",
        "lib/x.py is outside the task's files_scope.modify (src/**)",
        "src/new.py is a new file outside the task's files_scope.create (tests/**)",
        "tests/logo.png is a binary file; policy.forbid_binary refuses binary changes",
        "6 files changed, more than policy.max_files_changed 5",
        "17 lines changed, more than policy.max_lines_changed 10",
    ]
    assert verdict.reason == (
        ".git/config points into .git/, which a tool must never touch; "
        ".github/ci.yml is forbidden by policy.forbid_paths (.github/**); "
        "docs/a.md is read-only for this task (files_scope.read_only docs/**); "
        "and 5 more violations")


@pytest.mark.parametrize("count, tail", [(1, ""), (3, ""), (4, "; and 1 more violation"),
                                         (5, "; and 2 more violations")])
def test_the_reason_quotes_the_first_three_messages_and_counts_the_rest(count, tail):
    changes = [modified(f"lib/m{i}.py") for i in range(count)]
    verdict = judge_change(changes, SCOPE)
    quoted = "; ".join(f"lib/m{i}.py is outside the task's files_scope.modify (src/**)"
                       for i in range(min(count, 3)))
    assert verdict.reason == quoted + tail


def test_a_path_listed_twice_is_reported_once():
    verdict = judge_change([modified("lib/a.py"), modified("lib/a.py")], SCOPE)
    assert messages(verdict) == ["lib/a.py is outside the task's files_scope.modify (src/**)"]


def test_an_empty_change_passes_with_zero_totals():
    assert judge_change([], SCOPE, POLICY) == Verdict((), files_changed=0, lines_changed=0)


# -- properties ----------------------------------------------------------------------------------

# a scope and a policy whose allowed, read-only and forbidden paths the strategies below build
P_SCOPE = FileScope(modify=["src/**", "lib/*.py", "**/conftest.py"],
                    create=["tests/**", "docs/*.md"],
                    read_only=["src/vendor/**", "lib/frozen_*.py"])
P_POLICY = Policy(forbid_paths=[".github/**", "**/*.pem", "src/**/secrets.*"])

NAME = st.text(st.sampled_from("abcxyz019_-.+ @"), min_size=1, max_size=8).filter(
    lambda name: name not in (".", "..") and name.casefold() != ".git")
FOLDERS = st.lists(NAME, max_size=3).map(lambda names: "".join(n + "/" for n in names))


def _clear_of(*globs: str):
    everything = P_POLICY.forbid_paths + P_SCOPE.read_only + globs
    return lambda path: not matching_globs(path, everything)


MODIFIABLE = st.one_of(
    st.builds(lambda d, n: f"src/{d}{n}", FOLDERS, NAME),
    st.builds(lambda n: f"lib/{n}.py", NAME),
    st.builds(lambda d: f"{d}conftest.py", FOLDERS),
).filter(_clear_of())
CREATABLE = st.one_of(
    st.builds(lambda d, n: f"tests/{d}{n}", FOLDERS, NAME),
    st.builds(lambda n: f"docs/{n}.md", NAME),
).filter(_clear_of())
READ_ONLY = st.one_of(
    st.builds(lambda d, n: f"src/vendor/{d}{n}", FOLDERS, NAME),
    st.builds(lambda n: f"lib/frozen_{n}.py", NAME),
).filter(lambda path: not matching_globs(path, P_POLICY.forbid_paths))
# anywhere, under the read-only or the allowed paths too: forbid wins over them all
FORBIDDEN = st.one_of(
    st.builds(lambda d, n: f".github/{d}{n}", FOLDERS, NAME),
    st.builds(lambda d, n: f"{d}{n}.pem", FOLDERS, NAME),
    st.builds(lambda d, n: f"src/{d}secrets.{n}", FOLDERS, NAME),
    st.builds(lambda d, n: f"src/vendor/{d}{n}.pem", FOLDERS, NAME),
)
LINES = st.integers(min_value=0, max_value=500)


# every status git reports, and "chmod": a modification of the mode (git's modified with
# mode_changed), which the policy judges apart from a modification of the content
KINDS = (*FileChange.STATUSES, "chmod")


def of_kind(kind: str, path: str, old_path: str | None = None, added: int = 0,
            removed: int = 0, binary: bool = False) -> FileChange:
    modes = {"chmod": (FILE, EXECUTABLE), "type_changed": (FILE, SYMLINK)}.get(kind)
    status = "modified" if kind == "chmod" else kind
    return change(path, status, old_path, added, removed, binary, modes=modes)


@st.composite
def allowed_changes(draw):
    """A change every path of which the scope and the policy allow, of every status."""
    kind = draw(st.sampled_from(KINDS))
    added_, removed_ = draw(LINES), draw(LINES)
    if kind in ("modified", "deleted", "chmod", "type_changed"):
        return of_kind(kind, draw(MODIFIABLE), added=added_, removed=removed_)
    if kind == "added":
        return of_kind(kind, draw(CREATABLE), added=added_, removed=removed_)
    if kind == "renamed":
        return of_kind(kind, draw(CREATABLE), old_path=draw(MODIFIABLE),
                       added=added_, removed=removed_)
    # the source of a copy is only read: anything safe will do
    source = draw(MODIFIABLE | CREATABLE | READ_ONLY | FORBIDDEN)
    return of_kind(kind, draw(CREATABLE), old_path=source, added=added_, removed=removed_)


ALLOWED = st.lists(allowed_changes(), max_size=12)
PROPERTIES = settings(max_examples=200, deadline=None)


@PROPERTIES
@given(ALLOWED)
def test_property_a_change_of_allowed_paths_passes(changes):
    verdict = judge_change(changes, P_SCOPE, P_POLICY)
    assert verdict.ok, verdict.violations


@PROPERTIES
@given(ALLOWED, st.sampled_from(["forbidden", "read_only"]), st.data())
def test_property_one_refused_path_adds_exactly_its_violation(changes, kind, data):
    path = data.draw(FORBIDDEN if kind == "forbidden" else READ_ONLY)
    change_kind = data.draw(st.sampled_from(["modified", "added", "deleted", "chmod",
                                             "type_changed"]))
    others = [c for c in changes if path not in (c.path, c.old_path)]
    verdict = judge_change(others + [of_kind(change_kind, path)], P_SCOPE, P_POLICY)
    assert [(v.kind, v.path) for v in verdict.violations] == [(kind, path)]


# any change at all, unsafe paths and the scope's own boundaries included
ANY_PATH = st.one_of(MODIFIABLE, CREATABLE, READ_ONLY, FORBIDDEN, st.builds(
    lambda d, n: d + n, FOLDERS, NAME), st.sampled_from(
    ["/abs/x", "../up", ".git/config", "a//b", "", "x\ny"]))


@st.composite
def any_changes(draw):
    kind = draw(st.sampled_from(KINDS))
    old = draw(ANY_PATH) if kind in ("renamed", "copied") else None
    path, binary = draw(ANY_PATH), draw(st.booleans())
    # a binary file has no lines (git's numstat prints `-`)
    lines = (0, 0) if binary else (draw(LINES), draw(LINES))
    return of_kind(kind, path, old, *lines, binary=binary)


@PROPERTIES
@given(st.lists(any_changes(), max_size=10).flatmap(
    lambda changes: st.tuples(st.just(changes), st.permutations(changes))),
    st.sampled_from([P_SCOPE, None, FileScope()]),
    st.builds(Policy, st.none() | LINES, st.none() | st.integers(0, 10), st.booleans(),
              st.just(P_POLICY.forbid_paths)))
def test_property_the_verdict_does_not_depend_on_the_order_of_changes(pair, scope, policy):
    changes, shuffled = pair
    assert judge_change(changes, scope, policy) == judge_change(shuffled, scope, policy)


@PROPERTIES
@given(ALLOWED.filter(bool), st.integers(min_value=0, max_value=3))
def test_property_a_limit_exactly_reached_passes_and_one_less_fails(changes, slack):
    lines = sum(c.lines_added + c.lines_removed for c in changes)
    files = len(changes)
    assert judge_change(changes, P_SCOPE, Policy(max_lines_changed=lines + slack,
                                                 max_files_changed=files + slack)).ok
    too_few = judge_change(changes, P_SCOPE, Policy(max_files_changed=files - 1))
    assert only(too_few) == Violation(
        "too_many_files", None,
        f"{files} file{'s' if files != 1 else ''} changed, more than "
        f"policy.max_files_changed {files - 1}")
    if lines:
        too_short = judge_change(changes, P_SCOPE, Policy(max_lines_changed=lines - 1))
        assert only(too_short) == Violation(
            "too_many_lines", None,
            f"{lines} line{'s' if lines != 1 else ''} changed, more than "
            f"policy.max_lines_changed {lines - 1}")


# -- a change captured by uet.engine.git, judged -------------------------------------------------

GIT_IDENTITY = {"GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "test@example.com",
                "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "test@example.com"}


def git_cli(cwd: Path, *args: str) -> None:
    """git as a user or a tool runs it, independent of the module that captures."""
    env = {**g.without_repository_variables(os.environ), **GIT_IDENTITY, "LC_ALL": "C"}
    subprocess.run(["git", "-c", "commit.gpgsign=false", "-C", str(cwd), *args],
                   capture_output=True, check=True, env=env)


def write(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(mode)


@pytest.fixture
def captured(tmp_path) -> Iterator[g.CapturedChange]:
    """A tool's change of every kind, made in an attempt worktree of a real repository and
    captured by `capture_change`: what the orchestrator hands to `judge_change`."""
    target = tmp_path / "target"
    git_cli(tmp_path, "init", "-q", "-b", "main", str(target))
    write(target / "src/app.py", "".join(f"print({i})\n" for i in range(30)))
    write(target / "src/old.py", "a = 1\nb = 2\nc = 3\n")
    write(target / "src/run.sh", "#!/bin/sh\necho run\n")
    write(target / "src/config.txt", "debug = false\n")
    write(target / "src/blob.bin", bytes(range(256)) * 4)
    write(target / "lib/util.py", "def util():\n    return 'a helper to move'\n")
    write(target / "tools/deploy.sh", "#!/bin/sh\necho deploy\n")
    git_cli(target, "add", "-A")
    git_cli(target, "commit", "-q", "-m", "initial")
    repo = g.open_repository(target)
    start = repo.resolve_commit("HEAD")
    attempt = repo.add_attempt_worktree("policy", start)
    wt = attempt.path
    try:
        write(wt / "src/app.py", (wt / "src/app.py").read_text().replace("print(7)", "print(70)"))
        write(wt / "tests/test_new.py", "def test():\n    assert True\n")
        (wt / "src/old.py").unlink()
        os.rename(wt / "lib/util.py", wt / "tests/util.py")
        (wt / "src/run.sh").chmod(0o755)
        (wt / "tools/deploy.sh").chmod(0o755)
        (wt / "src/config.txt").unlink()
        os.symlink("app.py", wt / "src/config.txt")
        write(wt / "src/blob.bin", bytes(reversed(range(256))) * 4)
        write(wt / "tests/logo.png", b"\x89PNG\r\n\x1a\n\0\0\0" + bytes(range(64)))
        yield g.capture_change(wt, start)
    finally:
        repo.remove_worktree(wt)


def test_a_captured_change_comes_out_as_the_policy_expects(captured):
    assert {(f.status, f.path, f.old_path, f.binary, f.mode_changed)
            for f in captured.files} == {
        ("modified", "src/app.py", None, False, False),
        ("added", "tests/test_new.py", None, False, False),
        ("deleted", "src/old.py", None, False, False),
        ("renamed", "tests/util.py", "lib/util.py", False, False),
        ("modified", "src/run.sh", None, False, True),
        ("modified", "tools/deploy.sh", None, False, True),
        ("type_changed", "src/config.txt", None, False, False),
        ("modified", "src/blob.bin", None, True, False),
        ("added", "tests/logo.png", None, True, False),
    }
    # the orchestrator's call: the rename wrong at its old path, a mode change outside
    # modify, and both binary files
    verdict = judge_change(captured.files, SCOPE, POLICY)
    assert verdict.violations == (
        Violation("outside_scope", "lib/util.py",
                  "lib/util.py is renamed to tests/util.py but is outside the task's "
                  "files_scope.modify (src/**); renaming a file away needs modify on its "
                  "old path"),
        Violation("outside_scope", "tools/deploy.sh",
                  "tools/deploy.sh has its mode changed but is outside the task's "
                  "files_scope.modify (src/**)"),
        Violation("binary", "src/blob.bin",
                  "src/blob.bin is a binary file; policy.forbid_binary refuses binary changes"),
        Violation("binary", "tests/logo.png",
                  "tests/logo.png is a binary file; policy.forbid_binary refuses binary "
                  "changes"),
    )
    # src/app.py 1+1, tests/test_new.py 2, src/old.py 3, the symlink 1+1; binaries none
    assert (verdict.files_changed, verdict.lines_changed) == (9, 9)


def test_a_captured_change_judged_with_no_modify_names_each_existing_file_by_status(captured):
    verdict = judge_change(captured.files, FileScope(create=["tests/**"]), Policy())
    where = "outside the task's files_scope.modify, which is empty"
    assert messages(verdict) == [
        f"lib/util.py is renamed to tests/util.py but is {where}; renaming a file away "
        f"needs modify on its old path",
        f"src/app.py is {where}",
        f"src/blob.bin is {where}",
        f"src/config.txt has its mode changed but is {where}",
        f"src/old.py is deleted but is {where}; deleting a file needs modify",
        f"src/run.sh has its mode changed but is {where}",
        f"tools/deploy.sh has its mode changed but is {where}",
    ]


def test_a_captured_change_inside_a_wide_enough_scope_passes(captured):
    scope = FileScope(modify=["src/**", "lib/**", "tools/**"], create=["tests/**"])
    assert judge_change(captured.files, scope, Policy(max_files_changed=9)).ok

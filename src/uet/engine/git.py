"""The git operations of the patch-first flow: uet's worktrees and run branch in a target
repository, a tool's change captured as one diff, applied, and committed with its trailer."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uet.errors import UetError, ValidationError

# Everything goes through the `git` command line (argument lists, never a shell) with a
# fixed environment and the settings that change what git produces pinned on every call,
# so that a user's configuration cannot alter a diff, a commit or a worktree. The target's
# own checkout, index, HEAD and branches other than the run's are never written: every
# command that writes runs in a worktree uet created, or moves the run's branch. Where
# uet's worktrees live, and why: Repository.worktree_root.

GIT = "git"
WORKTREE_DIR = "uet-worktrees"
ENTRY_TRAILER = "Uet-Entry"
DEFAULT_IDENTITY = ("uet", "uet@localhost")
# A git call that takes longer is broken (a lock held by a dead process, a hung filter):
# fail it rather than hang the run. Generous, since a checkout of a big tree is slow.
GIT_TIMEOUT_S = 600.0

# Variables that point git at another repository, index or object store (exactly what
# `git rev-parse --local-env-vars` prints; a test keeps the two equal). Inherited from a
# hook or a script that runs uet, they would make `git add` in an attempt worktree write
# the target's own index. GIT_CONFIG_COUNT also disables inherited GIT_CONFIG_KEY_n pairs.
LOCAL_ENV_VARS = (
    "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_CONFIG", "GIT_CONFIG_PARAMETERS",
    "GIT_CONFIG_COUNT", "GIT_OBJECT_DIRECTORY", "GIT_DIR", "GIT_WORK_TREE",
    "GIT_IMPLICIT_WORK_TREE", "GIT_GRAFT_FILE", "GIT_INDEX_FILE", "GIT_NO_REPLACE_OBJECTS",
    "GIT_REPLACE_REF_BASE", "GIT_PREFIX", "GIT_INTERNAL_SUPER_PREFIX", "GIT_SHALLOW_FILE",
    "GIT_COMMON_DIR",
)
# Identity and dates come from the commit call alone, never from the caller's environment.
IDENTITY_ENV_VARS = ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_AUTHOR_DATE",
                     "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL", "GIT_COMMITTER_DATE")

# Settings pinned on every call. The user's and the repository's configuration still
# apply otherwise (safe.directory, LFS filters, ignore files): only what would change the
# bytes of a diff, how a patch applies, or run code behind uet's back is overridden.
PINNED_CONFIG = (
    "core.autocrlf=false", "core.safecrlf=false",
    "core.quotePath=true",            # patch headers stay ASCII whatever the file names
    "core.fsmonitor=false",           # no daemon started per worktree and left running
    # hooks are user code: a post-checkout hook could touch the target's checkout, a
    # pre-commit hook change the tree after the gates judged it
    "core.hooksPath=/dev/null",
    "commit.gpgsign=false", "log.showSignature=false",
    "color.ui=false", "diff.noprefix=false", "diff.mnemonicPrefix=false",
    "diff.relative=false", "diff.suppressBlankEmpty=false",
    "apply.whitespace=nowarn", "apply.ignoreWhitespace=no",
    "i18n.commitEncoding=UTF-8", "i18n.logOutputEncoding=UTF-8",
    # no background gc forked by a commit to outlive uet or hold locks during the next call
    "gc.auto=0", "maintenance.auto=false",
    "advice.detachedHead=false",
)
# The options of every diff uet reads: fixed prefixes and order, no external or textconv
# driver, renames detected.
DIFF_OPTIONS = ("--no-color", "--no-ext-diff", "--no-textconv", "-M", "-O/dev/null",
                "--src-prefix=a/", "--dst-prefix=b/")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


# -- errors --------------------------------------------------------------------------------

class GitError(UetError):
    """A git command failed: `command` (the argument list), `returncode` (None when git
    never ran or no git call is at fault) and git's `stderr`."""

    def __init__(self, message: str, *, command: Sequence[str] = (),
                 returncode: int | None = None, stderr: str = "") -> None:
        self.command = tuple(command)
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(message)


class GitUnavailableError(GitError):
    """The git executable could not be run."""


class NotARepositoryError(GitError):
    """The folder is not inside the working tree of a git repository."""


class BareRepositoryError(NotARepositoryError):
    """The repository has no working tree to check out from."""


class BranchConflictError(GitError):
    """The run's branch already exists and points at a commit the run did not start from."""


class ApplyConflictError(GitError):
    """A patch did not apply; `paths` names the files that conflicted (or, when git refused
    the patch outright, the files it named). The worktree was reset: nothing of it stays."""

    def __init__(self, message: str, *, paths: Sequence[str], command: Sequence[str] = (),
                 returncode: int | None = None, stderr: str = "") -> None:
        self.paths = tuple(paths)
        super().__init__(message, command=command, returncode=returncode, stderr=stderr)


# -- running git -----------------------------------------------------------------------------

def git_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every git call uet makes: the caller's, without the variables
    that redirect git to another repository or set a commit identity, with messages in C,
    no prompt, no pager, no editor."""
    env = {k: v for k, v in without_repository_variables(os.environ).items()
           if k not in IDENTITY_ENV_VARS}
    env.update(LC_ALL="C", LANGUAGE="", GIT_TERMINAL_PROMPT="0", GIT_PAGER="cat",
               PAGER="cat", GIT_EDITOR="true", GIT_SEQUENCE_EDITOR="true",
               GIT_MERGE_AUTOEDIT="no",
               # uet's reads (status, diff) must not rewrite an index as a side effect
               GIT_OPTIONAL_LOCKS="0")
    if extra:
        env.update(extra)
    return env


def without_repository_variables(env: Mapping[str, str]) -> dict[str, str]:
    """`env` without the variables that point git at another repository (LOCAL_ENV_VARS).
    A tool run in an attempt worktree must get its environment through this: inherited,
    a GIT_DIR or GIT_INDEX_FILE would make the tool's own `git commit` write the target."""
    return {k: v for k, v in env.items() if k not in LOCAL_ENV_VARS}


def _config_args(extra: Sequence[str] = ()) -> list[str]:
    return [arg for setting in (*PINNED_CONFIG, *extra) for arg in ("-c", setting)]


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace").strip()


def run_git(cwd: str | os.PathLike[str], args: Sequence[str], *, input: bytes | None = None,
            env: Mapping[str, str] | None = None, config: Sequence[str] = (),
            ok_codes: Sequence[int] = (0,),
            timeout: float | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run `git -C cwd <pinned settings> args` and return the finished process (stdout and
    stderr as bytes). An exit code outside `ok_codes` raises GitError with the command,
    the code and git's stderr; no git on PATH raises GitUnavailableError; a call still
    running after `timeout` seconds (default GIT_TIMEOUT_S) is killed and raises GitError."""
    limit = GIT_TIMEOUT_S if timeout is None else timeout
    command = [GIT, "--no-pager", "-C", os.fspath(cwd), *_config_args(config), *args]
    try:
        process = subprocess.Popen(
            command, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=git_environment(env))
    except FileNotFoundError:
        raise GitUnavailableError(
            f"cannot run {GIT!r}: git is not installed or not on PATH; install git (2.31 "
            "or newer) and run uet again", command=command) from None
    except PermissionError as exc:
        raise GitUnavailableError(f"cannot run {GIT!r}: {exc}", command=command) from None
    # A timer thread rather than communicate(timeout=...): with a timeout, the standard
    # library polls the child with growing sleeps, which added ~0.8 ms to every git call
    # (the flow makes a dozen per task, and is benchmarked against a shell script).
    expired = threading.Event()

    def stop() -> None:
        expired.set()
        process.kill()

    timer = threading.Timer(limit, stop)
    timer.daemon = True
    timer.start()
    try:
        stdout, stderr_bytes = process.communicate(input)
    finally:
        timer.cancel()
        if process.poll() is None:      # interrupted (KeyboardInterrupt): no orphan git
            process.kill()
            process.wait()
    if expired.is_set():
        raise GitError(f"git {args[0] if args else ''} took longer than {limit:g} s "
                       f"in {cwd}: {' '.join(command)}", command=command)
    done = subprocess.CompletedProcess(command, process.returncode, stdout, stderr_bytes)
    if done.returncode not in ok_codes:
        stderr = _text(done.stderr) or _text(done.stdout)
        raise GitError(f"git {' '.join(args[:2])} failed in {cwd} (exit {done.returncode}): "
                       f"{stderr or 'no message'}", command=command,
                       returncode=done.returncode, stderr=stderr)
    return done


def _out(cwd: str | os.PathLike[str], args: Sequence[str], **kwargs: Any) -> str:
    return run_git(cwd, args, **kwargs).stdout.decode("utf-8", "surrogateescape").strip()


def _paths(data: bytes) -> list[str]:
    """NUL-separated file names, as git prints them with -z (bytes kept through fsdecode)."""
    return [os.fsdecode(p) for p in data.split(b"\0") if p]


def _check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValidationError(f"{what} {name!r} must be 1-100 letters, digits, '.', '_' or "
                              "'-', starting with a letter or digit", field=what)
    return name


def _rev(value: str, what: str = "revision") -> str:
    """A revision given to git as an argument: never one it could take for an option."""
    if not isinstance(value, str) or not value or value.startswith("-") or "\0" in value:
        raise ValidationError(f"invalid {what} {value!r}", field=what)
    return value


@functools.lru_cache(maxsize=256)
def branch_ref(branch: str) -> str:
    """`refs/heads/<branch>`, once git agrees it is a valid branch name."""
    if not isinstance(branch, str) or not branch or branch.startswith("-") \
            or run_git(os.sep, ["check-ref-format", f"refs/heads/{branch}"],
                       ok_codes=(0, 1)).returncode != 0:
        raise ValidationError(f"invalid branch name {branch!r} (see git check-ref-format)",
                              field="branch")
    return f"refs/heads/{branch}"


# -- what changed ------------------------------------------------------------------------------

ADDED, MODIFIED, DELETED, RENAMED, COPIED, TYPE_CHANGED = (
    "added", "modified", "deleted", "renamed", "copied", "type_changed")
_STATUS = {"A": ADDED, "M": MODIFIED, "D": DELETED, "R": RENAMED, "C": COPIED,
           "T": TYPE_CHANGED}


@dataclass(frozen=True)
class FileChange:
    """One file of a diff: `status` (added, modified, deleted, renamed, copied,
    type_changed), `path` (the new path; the old one for a deletion), `old_path` (renames
    and copies), lines added and removed (0 for binary files), `binary`, the modes
    (`"100644"`, `"100755"`, `"120000"` a symlink; `"000000"` where the file is absent).

    The record uet.engine.policy judges. Paths are POSIX, relative to the repository root,
    unquoted, and not judged here: an unsafe one (absolute, `..`, inside `.git/`) is
    accepted so that the policy can report it as a violation."""
    status: str
    path: str
    old_path: str | None
    lines_added: int
    lines_removed: int
    binary: bool
    old_mode: str
    new_mode: str
    similarity: int | None = None   # percent, renames and copies

    # every status, in git's --name-status order (A, M, D, R, C, T)
    STATUSES = tuple(_STATUS.values())
    ABSENT_MODE = "000000"

    def __post_init__(self) -> None:
        # a record built by hand (a test, a replayed ledger entry) must be one git could
        # have printed, or the policy would judge a change that cannot exist
        if self.status not in self.STATUSES:
            raise ValidationError(f"FileChange.status {self.status!r} is not one of "
                                  f"{', '.join(self.STATUSES)}", field="status")
        if not isinstance(self.path, str):
            raise ValidationError(f"FileChange.path must be a string, not {self.path!r}",
                                  field="path")
        if self.status in (RENAMED, COPIED):
            if not isinstance(self.old_path, str):
                raise ValidationError(
                    f"a {self.status} change of {self.path!r} needs its old_path (a "
                    f"string), not {self.old_path!r}", field="old_path")
        elif self.old_path is not None:
            raise ValidationError(
                f"a {self.status} change of {self.path!r} has no old_path (only renamed "
                f"and copied do), got {self.old_path!r}", field="old_path")
        for name in ("lines_added", "lines_removed"):
            value = getattr(self, name)
            # bool is an int to Python, but True lines is a caller's mistake
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValidationError(f"FileChange.{name} must be a whole number >= 0, "
                                      f"not {value!r}", field=name)
        if not isinstance(self.binary, bool):
            raise ValidationError(f"FileChange.binary must be True or False, not "
                                  f"{self.binary!r}", field="binary")
        if self.binary and (self.lines_added or self.lines_removed):
            # numstat prints `-` for a binary file: it has no lines to count
            raise ValidationError(
                f"binary file {self.path!r} cannot have lines added or removed "
                f"({self.lines_added}, {self.lines_removed})", field="lines_added")
        for name, absent in (("old_mode", self.status == ADDED),
                             ("new_mode", self.status == DELETED)):
            value = getattr(self, name)
            if not isinstance(value, str) or not re.fullmatch(r"[0-7]{6}", value):
                raise ValidationError(f"FileChange.{name} must be six octal digits such "
                                      f"as '100644', not {value!r}", field=name)
            if (value == self.ABSENT_MODE) != absent:
                raise ValidationError(
                    f"FileChange.{name} of a {self.status} file must "
                    f"{'' if absent else 'not '}be {self.ABSENT_MODE} (the file is "
                    f"{'absent' if absent else 'present'} on that side), not {value!r}",
                    field=name)
        if self.similarity is not None and (
                self.status not in (RENAMED, COPIED) or isinstance(self.similarity, bool)
                or not isinstance(self.similarity, int) or not 0 <= self.similarity <= 100):
            raise ValidationError(f"FileChange.similarity must be None, or a percentage "
                                  f"0-100 for a rename or a copy, not {self.similarity!r}",
                                  field="similarity")

    @property
    def mode_changed(self) -> bool:
        """Whether a modified or renamed file's mode changed (made executable, say)."""
        return self.status in (MODIFIED, RENAMED) and self.old_mode != self.new_mode


@dataclass(frozen=True)
class DiffStat:
    """The files of a diff and its totals."""
    files: tuple[FileChange, ...] = ()

    @property
    def lines_added(self) -> int:
        """Lines added, in all files."""
        return sum(f.lines_added for f in self.files)

    @property
    def lines_removed(self) -> int:
        """Lines removed, in all files."""
        return sum(f.lines_removed for f in self.files)

    @property
    def paths(self) -> tuple[str, ...]:
        """Every path touched, old paths of renames included, in diff order."""
        seen = dict.fromkeys(p for f in self.files for p in (f.old_path, f.path) if p)
        return tuple(seen)

    @property
    def binary(self) -> bool:
        """Whether any of the files is binary."""
        return any(f.binary for f in self.files)


@dataclass(frozen=True)
class CapturedChange:
    """What a tool changed in its worktree since `start`, as one git diff (`diff`: UTF-8
    text without NUL, binary files as git binary patches; "" when nothing changed) and the
    `stat` of its files."""
    start: str
    diff: str
    stat: DiffStat = field(default_factory=DiffStat)

    @property
    def is_empty(self) -> bool:
        """Whether the tool changed nothing."""
        return not self.stat.files

    @property
    def files(self) -> tuple[FileChange, ...]:
        """The changed files (`stat.files`)."""
        return self.stat.files


def _parse_raw_numstat(data: bytes) -> tuple[tuple[FileChange, ...], bytes]:
    """Parse `git diff --raw --numstat -z [-p]`: every raw entry, then one numstat entry
    per raw entry in the same order, then (after a NUL) the patch if one was asked for.
    Returns the files and the patch. Positional, so a file named ':x' or '1<TAB>2' is safe."""
    pos = 0

    def next_field() -> bytes:
        nonlocal pos
        end = data.find(b"\0", pos)
        if end < 0:
            raise GitError(f"unexpected output of git diff --raw --numstat -z at byte {pos}")
        value, pos = data[pos:end], end + 1
        return value

    raw = []
    while data.startswith(b":", pos):
        old_mode, new_mode, _old_sha, _new_sha, status = next_field()[1:].decode().split(" ")
        names = [os.fsdecode(next_field()) for _ in range(2 if status[0] in "RC" else 1)]
        raw.append((status, old_mode, new_mode, names))
    files = []
    for status, old_mode, new_mode, names in raw:
        added, removed, name = next_field().split(b"\t", 2)
        if not name:            # a rename's numstat names come as two more fields
            next_field(), next_field()
        binary = added == b"-"
        kind = _STATUS.get(status[0])
        if kind is None:        # U (unmerged) or X: not a change uet can capture
            raise GitError(f"git diff reports {names[-1]!r} as {status!r}")
        files.append(FileChange(
            status=kind, path=names[-1], old_path=names[0] if len(names) == 2 else None,
            lines_added=0 if binary else int(added), lines_removed=0 if binary else int(removed),
            binary=binary, old_mode=old_mode, new_mode=new_mode,
            similarity=int(status[1:]) if kind in (RENAMED, COPIED) and status[1:] else None))
    patch = data[pos:]
    return tuple(files), patch[1:] if patch.startswith(b"\0") else patch


def _sections(patch: bytes) -> list[bytes]:
    """A git patch split per `diff --git` header (content lines never start with one)."""
    return [s for s in re.split(rb"(?m)^(?=diff --git )", patch) if s]


def _attribute_pattern(path: str) -> bytes:
    """A gitattributes pattern matching exactly `path` from the root (whitespace and
    control characters become '?', which may match a sibling too: harmless here)."""
    out = bytearray(b"/")
    for byte in os.fsencode(path):
        ch = bytes([byte])
        if ch in b"*?[]\\":
            out += b"\\" + ch
        elif byte <= 0x20 or byte == 0x7F or ch == b'"':
            out += b"?"
        else:
            out += ch
    return bytes(out)


def _diff_against(worktree: str | os.PathLike[str], start: str, *,
                  config: Sequence[str] = ()) -> tuple[tuple[FileChange, ...], bytes]:
    # one call for the file list and the patch: the same diff, so the same order
    return _parse_raw_numstat(run_git(
        worktree, ["diff", "--cached", "--raw", "--numstat", "-z", "--no-abbrev", "--patch",
                   "--binary", *DIFF_OPTIONS, start, "--"], config=config).stdout)


def _unrepresentable(files: tuple[FileChange, ...], patch: bytes) -> list[str]:
    """Paths whose text diff is not UTF-8 without NUL (the ledger stores diffs as text)."""
    owners = [f for f in files for _ in range(2 if f.status == TYPE_CHANGED else 1)]
    sections = _sections(patch)
    if len(sections) != len(owners):
        raise GitError(f"git diff printed {len(sections)} file sections for {len(owners)} "
                       "changed files; cannot tell which file a section belongs to")
    bad = []
    for owner, section in zip(owners, sections):
        try:
            section.decode("utf-8")
        except UnicodeDecodeError:
            bad.append(owner.path)
            continue
        if b"\0" in section:
            bad.append(owner.path)
    return list(dict.fromkeys(bad))


def capture_change(worktree: str | os.PathLike[str], start: str) -> CapturedChange:
    """Capture everything a tool changed in its attempt worktree since commit `start` as
    one diff: edits, new files (not ignored ones), deletions, renames, binary files, mode
    changes and the commits the tool made itself (the diff is taken from `start`, not from
    the worktree's HEAD).

    Stages everything in that worktree (`git add -A`: it is the attempt's own index). A
    text file whose diff would not be UTF-8 (say Latin-1 source) is captured as a binary
    patch so that the diff is valid text and still applies byte for byte.
    """
    _rev(start, "start")
    run_git(worktree, ["add", "-A", "--", "."])
    files, patch = _diff_against(worktree, start)
    bad = _unrepresentable(files, patch) if patch else []
    if bad:
        with tempfile.TemporaryDirectory(prefix="uet-attr-") as tmp:
            attributes = Path(tmp, "attributes")
            attributes.write_bytes(b"".join(_attribute_pattern(p) + b" -diff\n" for p in bad))
            # core.attributesFile ranks below the repository's own .gitattributes: only a
            # file that forces `diff` on these very paths can still defeat it (caught below)
            files, patch = _diff_against(worktree, start,
                                         config=[f"core.attributesFile={attributes}"])
        still = _unrepresentable(files, patch)
        if still:
            raise GitError(f"the change to {', '.join(still)} cannot be stored as a text "
                           "diff (not UTF-8, or contains NUL) and the repository's "
                           ".gitattributes forces a text diff for it")
    return CapturedChange(start=start, diff=patch.decode("utf-8"), stat=DiffStat(files))


# -- applying and committing in the integration worktree ------------------------------------

@dataclass(frozen=True)
class PatchCheck:
    """Whether a patch applies (three-way where needed) on a commit: `applies`, the
    `conflicts` (paths) when it does not, and git's `message`."""
    applies: bool
    conflicts: tuple[str, ...] = ()
    message: str = ""


def _patch_bytes(diff: str | bytes) -> bytes:
    return diff.encode("utf-8") if isinstance(diff, str) else diff


def _patch_paths(cwd: str | os.PathLike[str], patch: bytes) -> list[str]:
    """The files a patch names (`git apply --numstat -z`, which applies nothing)."""
    try:
        data = run_git(cwd, ["apply", "--numstat", "-z", "-"], input=patch).stdout
    except GitError:
        return []   # a corrupt patch names no files
    names = []
    tokens = iter(data.split(b"\0"))
    for token in tokens:
        if not token:
            continue
        name = token.split(b"\t", 2)[2]
        names += [name] if name else [next(tokens, b""), next(tokens, b"")]
    return [os.fsdecode(n) for n in names if n]


def _failed_paths(cwd: str | os.PathLike[str], patch: bytes, stderr: str,
                  unmerged: list[str]) -> list[str]:
    if unmerged:
        return list(dict.fromkeys(unmerged))
    # git refused the patch before any merge (a file missing or already there): the
    # structured list of the patch's files, narrowed to those git's message names
    named = _patch_paths(cwd, patch)
    return [p for p in named if p in stderr] or named


def check_patch(worktree: str | os.PathLike[str], diff: str | bytes, *,
                onto: str = "HEAD") -> PatchCheck:
    """Would `diff` apply to commit `onto` (default: the worktree's HEAD), three-way
    where the context moved? The worktree is not touched: the apply runs on a throwaway
    index built from `onto` (`git apply --check` alone would say yes to a three-way
    apply that then conflicts). An empty diff applies."""
    patch = _patch_bytes(diff)
    if not patch.strip():
        return PatchCheck(applies=True)
    with tempfile.TemporaryDirectory(prefix="uet-index-") as tmp:
        index = {"GIT_INDEX_FILE": os.path.join(tmp, "index")}
        run_git(worktree, ["read-tree", _rev(onto, "onto")], env=index)
        done = run_git(worktree, ["apply", "--cached", "--3way", "-"], input=patch,
                       env=index, ok_codes=range(256))
        if done.returncode == 0:
            return PatchCheck(applies=True, message=_text(done.stderr))
        unmerged = [line.split("\t", 1)[1] for line in _paths(run_git(
            worktree, ["ls-files", "-u", "-z"], env=index).stdout)]
    stderr = _text(done.stderr)
    return PatchCheck(applies=False, conflicts=tuple(
        _failed_paths(worktree, patch, stderr, unmerged)), message=stderr)


def reset_worktree(worktree: str | os.PathLike[str]) -> None:
    """Put a worktree back to its HEAD (for the integration worktree: its branch's head):
    index and files reset, untracked files removed. Ignored files (build caches a gate
    made) stay, as they are not part of any patch."""
    run_git(worktree, ["reset", "--hard", "--quiet", "HEAD"])
    run_git(worktree, ["clean", "-f", "-d", "--quiet"])


def apply_patch(worktree: str | os.PathLike[str], diff: str | bytes) -> None:
    """Apply `diff` to the worktree's files and index, three-way where the context moved
    (`git apply --3way --index`). On any failure the worktree is reset to its HEAD and
    ApplyConflictError names the conflicting paths. An empty diff changes nothing."""
    patch = _patch_bytes(diff)
    if not patch.strip():
        return
    args = ["apply", "--3way", "--index", "-"]
    done = run_git(worktree, args, input=patch, ok_codes=range(256))
    if done.returncode == 0:
        return
    stderr = _text(done.stderr)
    try:
        unmerged = [line.split("\t", 1)[1] for line in _paths(run_git(
            worktree, ["ls-files", "-u", "-z"]).stdout)]
        paths = _failed_paths(worktree, patch, stderr, unmerged)
    finally:
        reset_worktree(worktree)
    raise ApplyConflictError(
        f"the patch does not apply in {worktree}"
        + (f": conflicts in {', '.join(paths)}" if paths else "") + f" ({stderr})",
        paths=paths, command=[GIT, *args], returncode=done.returncode, stderr=stderr)


def _trailer_value(value: str) -> str:
    if not isinstance(value, str) or not value or value != value.strip() \
            or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValidationError(f"a trailer value must be non-empty text on one line without "
                              f"surrounding spaces, got {value!r}", field="entry_id")
    return value


def commit_change(worktree: str | os.PathLike[str], message: str, entry_id: str, *,
                  parent: str | None = None, identity: tuple[str, str] = DEFAULT_IDENTITY,
                  allow_empty: bool = False) -> str:
    """Commit the worktree's index on its branch with `message` and the trailer
    `Uet-Entry: <entry_id>`; return the new commit's sha.

    Plumbing (write-tree, commit-tree, update-ref) rather than `git commit`: no hook,
    template or cleanup setting can change the tree or the message, and the branch moves
    only if its head is still `parent` (default: the head now) — a compare-and-set, so a
    stale writer cannot commit over a newer head. Refuses a commit that changes nothing
    unless `allow_empty`.
    """
    return commit_index(worktree, message, entry_id, parent=parent, identity=identity,
                        allow_empty=allow_empty)[0]


def commit_index(worktree: str | os.PathLike[str], message: str, entry_id: str, *,
                 parent: str | None = None, parent_tree: str | None = None,
                 identity: tuple[str, str] = DEFAULT_IDENTITY,
                 allow_empty: bool = False, move: bool = True) -> tuple[str, str]:
    """`commit_change`, returning (the commit's sha, its tree's sha); a caller that knows
    `parent` and its tree (`parent_tree`: the tree this function returned for it) saves
    the git call that reads them. With `move` False the commit is made but the branch is
    left where it is: `advance_branch` moves it (e.g. inside a ledger transaction)."""
    if not isinstance(message, str) or not message.strip():
        raise ValidationError("a commit message must be non-empty text", field="message")
    _trailer_value(entry_id)
    for value, what in ((parent, "parent"), (parent_tree, "parent_tree")):
        if value is not None and not _SHA.fullmatch(value):
            raise ValidationError(f"{what} must be a full sha, got {value!r}", field=what)
    if parent is not None and parent_tree is not None:
        head, head_tree = parent, parent_tree
    else:
        rev = parent or "HEAD"
        head, head_tree = _out(worktree, ["rev-parse", f"{rev}^{{commit}}",
                                          f"{rev}^{{tree}}"]).split()
    tree = _out(worktree, ["write-tree"])
    if tree == head_tree and not allow_empty:
        raise GitError(f"nothing to commit in {worktree}: the index equals {head[:12]}")
    name, email = identity
    ident = {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email,
             "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email}
    text = f"{message.strip()}\n\n{ENTRY_TRAILER}: {entry_id}\n"
    sha = _out(worktree, ["commit-tree", tree, "-p", head, "-F", "-"],
               input=text.encode("utf-8"), env=ident)
    if move:
        advance_branch(worktree, sha, head, entry_id)
    return sha, tree


def advance_branch(worktree: str | os.PathLike[str], sha: str, head: str,
                   entry_id: str) -> None:
    """Move the branch checked out in `worktree` from `head` to its child commit `sha`
    (made by `commit_index(move=False)`): compare-and-set, it fails (GitError) and nothing
    moves unless the branch is still at `head`."""
    # HEAD is the branch (symbolic) in the integration worktree, so this moves the branch
    run_git(worktree, ["update-ref", "-m", f"uet: commit {ENTRY_TRAILER} {entry_id}",
                       "HEAD", sha, head])


# -- the repository ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Worktree:
    """A worktree of the repository: its `path`, the commit checked out (`head`), the
    `branch` (full ref) it is on, or None when detached, and whether git found its folder
    gone (`prunable`)."""
    path: Path
    head: str | None
    branch: str | None
    prunable: bool = False


@dataclass(frozen=True)
class Repository:
    """A non-bare git repository: its working tree's top level, its git dir and the
    common git dir shared by its worktrees. Made by `open_repository`."""
    toplevel: Path
    git_dir: Path
    common_dir: Path

    @property
    def worktree_root(self) -> Path:
        """Where uet's worktrees live: `<common git dir>/uet-worktrees/`. Inside the git
        dir, the target's `git status` and its editors never see them (a folder in the
        checkout would show up as untracked); on the repository's own filesystem, not a
        possibly small tmpfs, and out of reach of /tmp cleaners (a worktree kept for
        inspection stays); deleted with the repository; and found again after a crash
        from the repository alone, without any record of where they were put."""
        return self.common_dir / WORKTREE_DIR

    def git(self, args: Sequence[str],
            **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        """Run git in the repository's top level (see `run_git`)."""
        return run_git(self.toplevel, args, **kwargs)

    # -- commits and refs

    def resolve_commit(self, ref: str) -> str:
        """The full sha of the commit `ref` names (a branch, tag, sha, `HEAD~2` ...)."""
        done = self.git(["rev-parse", "--verify", "--quiet", "--end-of-options",
                         f"{ref}^{{commit}}"], ok_codes=(0, 1, 128))
        if done.returncode != 0:
            raise GitError(f"{ref!r} does not name a commit in {self.toplevel} (an unborn "
                           "branch has none: commit something first)",
                           command=["rev-parse", ref], returncode=done.returncode,
                           stderr=_text(done.stderr))
        return done.stdout.decode().strip()

    def resolve_tree(self, commit: str) -> str:
        """The full sha of the tree of commit `commit`."""
        return _out(self.toplevel, ["rev-parse", "--verify", "--end-of-options",
                                    f"{_rev(commit)}^{{tree}}"])

    def branch_head(self, branch: str) -> str | None:
        """The sha at the tip of local branch `branch`, or None when it does not exist."""
        done = self.git(["rev-parse", "--verify", "--quiet", "--end-of-options",
                         f"{branch_ref(branch)}^{{commit}}"], ok_codes=(0, 1))
        if done.returncode != 0:
            return None
        return done.stdout.decode().strip()

    def refs(self) -> dict[str, str]:
        """Every branch and tag of the repository: full ref name -> the sha it points at.

        Read from git's ref files (`packed-refs`, then the loose files under `refs/`, which
        win) when the repository keeps its refs in files, as git does by default: it is
        taken before and after every tool, and a git process costs more than the reading.
        Anything else (the reftable format, a file being rewritten) is asked of git."""
        try:
            found = self._ref_files()
        except (OSError, ValueError):
            found = None
        if found is not None:
            return found
        data = self.git(["for-each-ref", "--format=%(refname)%00%(objectname)",
                         "refs/heads", "refs/tags"]).stdout.decode("utf-8", "surrogateescape")
        return dict(line.split("\x00", 1) for line in data.splitlines() if "\x00" in line)

    def _ref_files(self) -> dict[str, str] | None:
        """The branches and tags from the files-backend ref store, or None when the
        repository uses another store or a ref file is not a plain sha (read by git)."""
        common = self.common_dir
        if (common / "reftable").exists():
            return None
        refs: dict[str, str] = {}
        packed = common / "packed-refs"
        if packed.exists():
            for line in packed.read_text("utf-8", "surrogateescape").splitlines():
                if not line or line[0] in "#^":
                    continue  # the header, and the peeled object of the tag above
                sha, _, name = line.partition(" ")
                if name.startswith(("refs/heads/", "refs/tags/")):
                    refs[name] = sha
        for kind in ("heads", "tags"):
            top = common / "refs" / kind
            for folder, _, files in os.walk(top):
                for name in files:
                    if name.endswith(".lock"):
                        continue  # a ref being written: its old value stays in force
                    path = Path(folder) / name
                    sha = path.read_text("utf-8", "surrogateescape").strip()
                    if not _SHA.fullmatch(sha):
                        return None  # symbolic or odd: let git say what it is
                    refs[path.relative_to(common).as_posix()] = sha
        return refs

    def changed_refs(self, before: Mapping[str, str], *,
                     ignore: Sequence[str] = ()) -> list[str]:
        """What changed in the branches and tags since `before` (a `refs()` snapshot), one
        line each (`refs/heads/x: made at 1a2b3c4d5e6f`), refs in `ignore` (full names) left
        out. A tool works in a worktree of the target, whose branches and tags it shares: this
        is how uet sees what a tool did to them. It reports, never undoes: the user may be
        committing in the same repository meanwhile."""
        now = self.refs()
        found = []
        for ref in sorted(set(before) | set(now)):
            old, new = before.get(ref), now.get(ref)
            if ref in ignore or old == new:
                continue
            if old is None:
                found.append(f"{ref}: made at {(new or '')[:12]}")
            elif new is None:
                found.append(f"{ref}: deleted (was {old[:12]})")
            else:
                found.append(f"{ref}: moved from {old[:12]} to {new[:12]}")
        return found

    def is_ancestor(self, commit: str, of: str) -> bool:
        """Whether `commit` is in the history of `of` (a commit is its own ancestor)."""
        return self.git(["merge-base", "--is-ancestor", _rev(commit), _rev(of)],
                        ok_codes=(0, 1)).returncode == 0

    def create_branch(self, branch: str, base: str, *, resume: bool = False) -> str:
        """Create local branch `branch` at commit `base` and return its head.

        Already there at `base`: nothing to do. Already there elsewhere:
        BranchConflictError, unless `resume` and `base` is in its history (the run's own
        commits since). Created atomically (`update-ref` expecting no ref), so two runs
        cannot both create it. A resume that must not recreate a vanished branch checks
        `branch_head` first."""
        ref = branch_ref(branch)
        base = self.resolve_commit(base)
        head = self.branch_head(branch)
        if head is None:
            self.git(["update-ref", "-m", f"uet: create {branch} at {base}", ref, base, ""])
            return base
        if head == base or (resume and self.is_ancestor(base, head)):
            return head
        raise BranchConflictError(
            f"branch {branch!r} already exists at {head[:12]}, not at the run's base "
            f"{base[:12]}" + ("" if resume else " (resume the run that made it, or choose "
                              "another branch name)"))

    def delete_branch(self, branch: str) -> bool:
        """Delete local branch `branch` (refused by git while a worktree has it checked
        out); False when it did not exist."""
        ref = branch_ref(branch)
        if self.branch_head(branch) is None:
            return False
        self.git(["branch", "-D", ref.removeprefix("refs/heads/")])
        return True

    def entry_commits(self, branch: str, *, since: str | None = None,
                      key: str = ENTRY_TRAILER) -> dict[str, list[str]]:
        """Every value of trailer `key` on the commits of `branch` after `since` (all of
        its history when None), each with the shas carrying it, newest first. More than
        one sha for a value is a patch committed twice."""
        ref = branch_ref(branch)
        if not re.fullmatch(r"[A-Za-z0-9-]+", key):
            raise ValidationError(f"invalid trailer key {key!r}", field="key")
        found: dict[str, list[str]] = {}
        commits = f"{_rev(since, 'since')}..{ref}" if since else ref
        data = self.git(["log", "-z", f"--format=%H%x1f%(trailers:key={key},valueonly,"
                         "unfold,separator=%x1f)", commits, "--"]).stdout.decode("utf-8",
                                                                                "replace")
        for record in filter(None, data.split("\0")):
            sha, *values = record.strip("\n").split("\x1f")
            for value in values:
                if value.strip():
                    found.setdefault(value.strip(), []).append(sha)
        return found

    def find_entry_commit(self, branch: str, entry_id: str, *,
                          since: str | None = None) -> str | None:
        """The newest commit of `branch` after `since` whose `Uet-Entry` trailer is exactly
        `entry_id` (not a prefix or substring of another id), or None: the check that keeps
        a crash between commit and ledger from committing a patch twice."""
        shas = self.entry_commits(branch, since=since).get(_trailer_value(entry_id))
        return shas[0] if shas else None

    def diff_stat(self, old: str, new: str) -> DiffStat:
        """The files changed between commits `old` and `new` (renames detected), with
        lines added and removed."""
        return DiffStat(_parse_raw_numstat(self.git(
            ["diff", "--raw", "--numstat", "-z", "--no-abbrev", *DIFF_OPTIONS, _rev(old),
             _rev(new), "--"]).stdout)[0])

    # -- worktrees

    def _worktree_path(self, name: str) -> Path:
        return self.worktree_root / _check_name(name, "worktree name")

    def add_attempt_worktree(self, name: str, commit: str, *,
                             replace: bool = False) -> Worktree:
        """Check out `commit` (detached) in a new worktree `<worktree_root>/<name>`, for a
        tool to work in. An existing one is an error unless `replace` (it is removed
        first: a leftover of a crash)."""
        if not _SHA.fullmatch(commit):      # a full sha is used as is: one git call less
            commit = self.resolve_commit(commit)
        path = self._new_worktree_path(name, replace)
        with self.worktree_lock():
            self.git(["worktree", "add", "--detach", "--quiet", os.fspath(path), commit])
        return Worktree(path=path, head=commit, branch=None)

    def add_integration_worktree(self, name: str, branch: str, *,
                                 replace: bool = False) -> Worktree:
        """Check out the run's branch in a new worktree `<worktree_root>/<name>` where
        patches are applied, judged and committed (commits there advance the branch).
        `replace` removes a leftover of a crash first, so it is rebuilt from the branch."""
        ref = branch_ref(branch)
        path = self._new_worktree_path(name, replace)
        with self.worktree_lock():
            self.git(["worktree", "add", "--quiet", os.fspath(path), branch])
        return Worktree(path=path, head=self.branch_head(branch), branch=ref)

    @contextlib.contextmanager
    def worktree_lock(self) -> Iterator[None]:
        """Held while uet adds, removes or lists worktrees: git's own bookkeeping of
        worktrees is not safe against a concurrent add or remove (`git worktree list` fails
        reading a record another process is writing), and several `uet worker` processes
        (or threads) run in one repository. An advisory lock on a file of the common git
        dir, for processes and threads alike."""
        with open(self.common_dir / "uet-worktrees.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _new_worktree_path(self, name: str, replace: bool) -> Path:
        path = self._worktree_path(name)
        if replace and (path.exists() or self._registered(path)):
            self.remove_worktree(path)  # a leftover (two git calls): only when there is one
        # otherwise git itself refuses a folder that exists or is still registered
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _registered(self, path: Path) -> bool:
        """Whether git still records a worktree at `path` (its folder may be gone): read
        from git's own records (`<common dir>/worktrees/*/gitdir`), not with a git call."""
        records = self.common_dir / "worktrees"
        wanted = os.fspath(path / ".git")
        try:
            entries = list(records.iterdir())
        except OSError:
            return False
        for entry in entries:
            try:
                if (entry / "gitdir").read_text(encoding="utf-8", errors="replace").strip() \
                        == wanted:
                    return True
            except OSError:
                continue
        return False

    def remove_worktree(self, worktree: str | os.PathLike[str]) -> None:
        """Remove one of uet's worktrees (a name, or a path in `worktree_root`), changes
        and all, and git's record of it, also when a crash left it half gone (folder
        missing, or its .git file broken). Doing it twice is harmless. Any other path is
        refused: the target's own worktrees are never removed."""
        path = Path(worktree)
        if not path.is_absolute() and len(path.parts) == 1:
            path = self._worktree_path(path.name)
        root = self.worktree_root.resolve()
        path = path.resolve()
        if path.parent != root:
            raise ValidationError(f"{path} is not one of uet's worktrees (they live in "
                                  f"{root})", field="worktree")
        # twice --force: also when dirty or locked; it also forgets a registered worktree
        # whose folder is already gone
        command = ["worktree", "remove", "--force", "--force", os.fspath(path)]
        with self.worktree_lock():
            if self.git(command, ok_codes=range(256)).returncode != 0:
                # not registered, or not removable by git (a broken .git file): it is
                # still uet's own folder, so its files go, then git's record of it, if any
                shutil.rmtree(path, ignore_errors=True)
                self.git(command, ok_codes=range(256))
        if path.exists():
            raise GitError(f"could not remove worktree folder {path}")

    def prune_worktrees(self) -> list[Path]:
        """Forget uet's worktrees whose folder is gone (a crash, a cleaner) and return
        their paths. Only uet's: a plain `git worktree prune` would also forget the user's
        own worktrees whose folder is missing for a while (an unmounted drive)."""
        gone = [w.path for w in self.uet_worktrees() if w.prunable]
        for path in gone:
            with self.worktree_lock():
                self.git(["worktree", "remove", "--force", "--force", os.fspath(path)])
        return gone

    def worktrees(self) -> list[Worktree]:
        """Every worktree git knows for this repository, the main one first."""
        with self.worktree_lock():
            data = self.git(["worktree", "list", "--porcelain", "-z"]).stdout
        found, current = [], {}
        for token in data.split(b"\0") + [b""]:
            if token:
                key, _, value = token.partition(b" ")
                current[key.decode()] = os.fsdecode(value)
                continue
            if "worktree" in current:
                found.append(Worktree(path=Path(current["worktree"]),
                                      head=current.get("HEAD"), branch=current.get("branch"),
                                      prunable="prunable" in current))
            current = {}
        return found

    def remove_worktrees_named(self, prefix: str, *, keep: tuple[str, ...] = ()) -> list[Path]:
        """Remove uet's worktrees whose name starts with `prefix` (a run's leftovers of
        earlier sessions: a crashed or replaced owner's), but those named in `keep`."""
        removed = []
        for worktree in self.uet_worktrees():
            name = worktree.path.name
            if name.startswith(prefix) and name not in keep:
                self.remove_worktree(worktree.path)
                removed.append(worktree.path)
        return removed

    def uet_worktrees(self) -> list[Worktree]:
        """The worktrees uet made (those under `worktree_root`), including ones whose
        folder a crash or a cleaner removed (`prunable`)."""
        root = self.worktree_root.resolve()
        return [w for w in self.worktrees() if w.path.resolve().parent == root]


def open_repository(path: str | os.PathLike[str]) -> Repository:
    """The repository whose working tree contains `path` (any folder inside it).

    Raises NotARepositoryError when `path` is not in a working tree (with git's own
    words, which name e.g. a `safe.directory` refusal), BareRepositoryError for a bare
    repository, GitUnavailableError when git cannot be run."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise NotARepositoryError(f"{folder} is not a folder: point uet at a git "
                                  "repository's working tree (--repo PATH)")
    folder = folder.resolve()
    done = run_git(folder, ["rev-parse", "--path-format=absolute", "--git-common-dir",
                            "--git-dir", "--is-bare-repository", "--is-inside-work-tree"],
                   ok_codes=range(256))
    lines = done.stdout.decode("utf-8", "surrogateescape").splitlines()
    if done.returncode != 0 or len(lines) != 4:
        raise NotARepositoryError(
            f"{folder} is not inside a git repository ({_text(done.stderr)}); run "
            "`git init` there, or pass the repository's folder", returncode=done.returncode,
            stderr=_text(done.stderr), command=["rev-parse"])
    common_dir, git_dir, bare, inside = lines
    if bare == "true":
        raise BareRepositoryError(
            f"{folder} is a bare repository: it has no working tree to start from; clone "
            "it (git clone) and point uet at the clone")
    if inside != "true":
        raise NotARepositoryError(
            f"{folder} is inside the git directory {git_dir}, not in a working tree; point "
            "uet at the repository's top folder")
    toplevel = _out(folder, ["rev-parse", "--show-toplevel"])
    return Repository(toplevel=Path(toplevel), git_dir=Path(git_dir),
                      common_dir=Path(common_dir))



# -- what a command changed in the work tree it ran in --------------------------------------

# `uet run -- CMD` records the git context of the folder it runs in: where HEAD was, whether
# the work tree was dirty, and what the command changed in it. Each side is a snapshot of
# the work tree as a tree object: every file git does not ignore, tracked or not, as
# `git add -A` stages it. It is built in a temporary index (a copy of the user's, whose
# stat data spares rehashing unchanged files), and the objects it writes go to a temporary
# object directory that has the repository's own as an alternate: the user's index, stash,
# refs, work tree and object store are never written. What the command changed is the diff
# between the two trees, so what was dirty before it ran is not attributed to it.

# The most one step of it (a snapshot; the diff of two) may take, all its git calls
# together: a huge work tree, or a hung filter, costs the run this much, never more.
GIT_CONTEXT_TIMEOUT_S = 60.0
CHANGED_PATHS_LIMIT = 50      # paths listed in a record of changes ("truncated" beyond)
UNTRACKED = "??"              # the status of an added file the user's index does not have
# the empty tree of each object format, by the length of its id (dirty on an unborn branch
# is: the work tree has files)
_EMPTY_TREES = {40: "4b825dc642cb6eb9a060e54bf8d69288fbee4904",
                64: "6ef19b41225c5369f1c104d45d8d85efa9b057b53b14b4b9b939dd74decc5321"}
_LETTERS = {ADDED: "A", MODIFIED: "M", DELETED: "D", RENAMED: "R", COPIED: "C",
            TYPE_CHANGED: "T"}
# The snapshot's own settings: the whole index in the temporary file (a split index would
# write its shared part into the git dir); no advice about an embedded repository.
SNAPSHOT_CONFIG = ("core.splitIndex=false", "advice.addEmbeddedRepo=false")
# Pathspecs mean what uet writes, whatever the caller's environment says.
_PATHSPEC_ENV = {"GIT_LITERAL_PATHSPECS": "0", "GIT_GLOB_PATHSPECS": "0",
                 "GIT_NOGLOB_PATHSPECS": "0", "GIT_ICASE_PATHSPECS": "0"}


class _Deadline:
    """A time budget shared by several git calls."""

    def __init__(self, seconds: float, what: str) -> None:
        self.seconds, self.what = seconds, what
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise GitError(f"{self.what} took longer than {self.seconds:g} s")
        return left


def display_text(value: str | os.PathLike[str]) -> str:
    """A path or a name from git as text a ledger can store (bytes that are not UTF-8,
    kept by fsdecode as lone surrogates, become U+FFFD)."""
    return os.fsencode(value).decode("utf-8", "replace")


@dataclass(frozen=True)
class WorkTreeLocation:
    """A git work tree: its top level (`root`), its index file and its object directory."""
    root: Path
    index: Path
    objects: Path


def _dot_git_above(folder: Path) -> Path | None:
    """The `.git` (folder or file) of `folder` or of its nearest parent that has one."""
    for candidate in (folder, *folder.parents):
        if os.path.lexists(candidate / ".git"):
            return candidate / ".git"
    return None


def locate_work_tree(folder: str | os.PathLike[str], *,
                     timeout: float = GIT_CONTEXT_TIMEOUT_S) -> WorkTreeLocation | None:
    """The git work tree `folder` is in, or None when it is in none (no repository, a bare
    one, inside a `.git` folder). GitError when it looks like one (a `.git` in it or in a
    parent) that git cannot read: no git, a corrupt repository, a safe.directory refusal."""
    path = Path(folder).absolute()
    try:
        done = run_git(path, ["rev-parse", "--is-inside-work-tree", "--path-format=absolute",
                              "--git-path", "index", "--git-path", "objects",
                              "--show-toplevel"], ok_codes=range(256), timeout=timeout)
    except GitError:
        if _dot_git_above(path) is None:
            return None     # no git, and nothing that looks like a repository either
        raise
    lines = done.stdout.decode("utf-8", "surrogateescape").splitlines()
    if done.returncode == 0 and len(lines) == 4 and lines[0] == "true":
        return WorkTreeLocation(root=Path(lines[3]), index=Path(lines[1]),
                                objects=Path(lines[2]))
    if lines[:1] == ["false"]:
        return None         # in a git dir, or a bare repository: no work tree
    dot_git = _dot_git_above(path)
    if dot_git is None:
        return None
    stderr = _text(done.stderr)
    raise GitError(f"git cannot read the repository of {dot_git} (exit {done.returncode}): "
                   f"{stderr or 'no message'}", command=["rev-parse"],
                   returncode=done.returncode, stderr=stderr)


@dataclass(frozen=True)
class WorkTreeSnapshot:
    """A work tree at one moment: HEAD's `commit` (None on an unborn branch) and its
    tree, the `branch` HEAD names (short; None when detached), and `tree`, the work tree's
    files (all that git does not ignore) as a tree. `warnings`: files git could not read
    (left out of the tree)."""
    commit: str | None
    branch: str | None
    head_tree: str | None
    tree: str
    warnings: tuple[str, ...] = ()

    @property
    def dirty(self) -> bool:
        """Whether the files differ from HEAD's (on an unborn branch: whether there are
        any)."""
        return self.tree != (self.head_tree or _EMPTY_TREES.get(len(self.tree)))


def _alternate(path: Path) -> str:
    """`path` as one entry of GIT_ALTERNATE_OBJECT_DIRECTORIES (C-quoted when it holds the
    separator or a quote, which git unquotes)."""
    text = os.fspath(path)
    if os.pathsep in text or '"' in text or "\\" in text:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


class WorkTreeRecorder:
    """Snapshots of one work tree and the changes between them, made in a private temporary
    folder (the snapshots' index files and the objects they write) that `close()` removes.
    `exclude`: paths (relative to the root, POSIX) never snapshotted, e.g. a ledger file
    that uet itself writes in the work tree meanwhile."""

    def __init__(self, location: WorkTreeLocation, *, exclude: Sequence[str] = (),
                 timeout: float = GIT_CONTEXT_TIMEOUT_S) -> None:
        self.location = location
        self.exclude = tuple(exclude)
        self.timeout = timeout
        self._scratch = Path(tempfile.mkdtemp(prefix="uet-git-"))
        objects = self._scratch / "objects"
        for sub in ("pack", "info"):
            (objects / sub).mkdir(parents=True)
        self._env = {**_PATHSPEC_ENV, "GIT_OBJECT_DIRECTORY": os.fspath(objects),
                     "GIT_ALTERNATE_OBJECT_DIRECTORIES": _alternate(location.objects)}
        self._count = 0

    def __enter__(self) -> "WorkTreeRecorder":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove the temporary folder (the snapshots' trees cannot be read after)."""
        shutil.rmtree(self._scratch, ignore_errors=True)

    def _git(self, args: Sequence[str], deadline: _Deadline, *, input: bytes | None = None,
             env: Mapping[str, str] | None = None,
             ok_codes: Sequence[int] = (0,)) -> subprocess.CompletedProcess[bytes]:
        return run_git(self.location.root, args, input=input, env={**self._env, **(env or {})},
                       config=SNAPSHOT_CONFIG, ok_codes=ok_codes, timeout=deadline.left())

    def snapshot(self) -> WorkTreeSnapshot:
        """The work tree now (see WorkTreeSnapshot)."""
        deadline = _Deadline(self.timeout, f"the git snapshot of {self.location.root}")
        head = self._git(["cat-file", "--batch-check=%(objectname) %(objecttype)"], deadline,
                         input=b"HEAD\nHEAD^{tree}\n").stdout.decode().split("\n")
        commit = head[0].split(" ")[0] if head[0].endswith(" commit") else None
        head_tree = head[1].split(" ")[0] if commit and len(head) > 1 \
            and head[1].endswith(" tree") else None
        ref = self._git(["symbolic-ref", "-q", "HEAD"], deadline, ok_codes=(0, 1))
        name = ref.stdout.decode("utf-8", "surrogateescape").strip()
        branch = (name.removeprefix("refs/heads/") or None) if ref.returncode == 0 else None
        self._count += 1
        index = self._scratch / f"index-{self._count}"
        try:
            # copy2 keeps the modification time, by which git tells the entries it must
            # look at again (written in the index's last second) from those it may trust
            shutil.copy2(self.location.index, index)
        except FileNotFoundError:
            pass        # no index yet (a new repository): git starts an empty one
        except OSError as exc:
            raise GitError(f"cannot read the index {self.location.index}: "
                           f"{exc.strerror or exc}") from None
        with_index = {"GIT_INDEX_FILE": os.fspath(index)}
        # --ignore-errors: a file git cannot add (unreadable; an embedded repository
        # without a commit) is left out and named, not the end of the snapshot
        added = self._git(["add", "-A", "--ignore-errors", "--", ".",
                           *(f":(exclude,literal){p}" for p in self.exclude)],
                          deadline, env=with_index, ok_codes=(0, 1))
        warnings = tuple(dict.fromkeys(
            line for line in _text(added.stderr).splitlines()
            if line.startswith(("error:", "fatal:")))) if added.returncode else ()
        tree = self._git(["write-tree"], deadline, env=with_index).stdout.decode().strip()
        return WorkTreeSnapshot(commit=commit, branch=display_text(branch) if branch else None,
                                head_tree=head_tree, tree=tree, warnings=warnings)

    def changes(self, before: WorkTreeSnapshot, after: WorkTreeSnapshot, *,
                limit: int = CHANGED_PATHS_LIMIT) -> dict[str, Any]:
        """What changed in the work tree from `before` to `after`, as `git diff --stat`
        counts it (renames detected): {"files", "insertions", "deletions", "paths": the
        first `limit` files as {"path", "status", "insertions", "deletions"} (with
        "old_path" for a rename or a copy, "binary" for a binary file), and "truncated":
        true when there were more}. The status is a letter of `git diff --name-status`
        (A M D R C T), or "??" for an added file the user's index does not have
        (untracked)."""
        deadline = _Deadline(self.timeout, f"the git diff of {self.location.root}")
        files: tuple[FileChange, ...] = ()
        if before.tree != after.tree:
            files = _parse_raw_numstat(self._git(
                ["diff", "--raw", "--numstat", "-z", "--no-abbrev", *DIFF_OPTIONS,
                 before.tree, after.tree, "--"], deadline).stdout)[0]
        listed = files[:limit]
        added = [f.path for f in listed if f.status == ADDED]
        tracked: set[str] = set()
        if added:       # the user's own index says which of them it tracks
            tracked = set(_paths(self._git(["ls-files", "-z", "--cached", "--full-name", "--",
                                            *added], deadline,
                                           env={"GIT_LITERAL_PATHSPECS": "1"}).stdout))
        paths: list[dict[str, Any]] = []
        for change in listed:
            entry: dict[str, Any] = {
                "path": display_text(change.path),
                "status": UNTRACKED if change.status == ADDED and change.path not in tracked
                else _LETTERS[change.status],
                "insertions": change.lines_added, "deletions": change.lines_removed}
            if change.old_path is not None:
                entry["old_path"] = display_text(change.old_path)
            if change.binary:
                entry["binary"] = True
            paths.append(entry)
        record: dict[str, Any] = {
            "files": len(files), "insertions": sum(f.lines_added for f in files),
            "deletions": sum(f.lines_removed for f in files), "paths": paths}
        if len(files) > limit:
            record["truncated"] = True
        return record


def _why(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, UetError) else f"{type(exc).__name__}: {exc}"
    return display_text(text) or type(exc).__name__


def _relative_inside(root: Path, paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Those of `paths` inside `root`, relative to it (POSIX); the others are left out."""
    top = os.path.realpath(root)
    inside = []
    for path in paths:
        real = os.path.realpath(path)
        if os.path.commonpath([top, real]) == top and real != top:
            inside.append(Path(os.path.relpath(real, top)).as_posix())
    return inside


class CommandGitContext:
    """The git context of a command run in a folder inside a git work tree: `start()`
    before the command runs, `finish()` once it has ended (however it ended) returns the
    record stored as a run's `metadata.git`:

        {"root", "commit" (None: unborn branch), "branch" (None: detached HEAD),
         "dirty_before", "dirty_after", "changed": WorkTreeRecorder.changes(),
         "commit_after" / "branch_after" (only when HEAD moved / another branch is out),
         "warnings" (files git could not read, when there were)}

    Never raises: whatever goes wrong with git (none installed, a corrupt repository, a
    call past its time budget) becomes {"error": "..."} in the record, next to what was
    learnt before it."""

    def __init__(self, record: dict[str, Any], recorder: WorkTreeRecorder | None = None,
                 before: WorkTreeSnapshot | None = None) -> None:
        self._record = record
        self._recorder = recorder
        self._before = before

    @classmethod
    def start(cls, folder: str | os.PathLike[str], *,
              exclude: Sequence[str | os.PathLike[str]] = (),
              timeout: float = GIT_CONTEXT_TIMEOUT_S) -> "CommandGitContext | None":
        """The snapshot before the command: None when `folder` is in no git work tree.
        `exclude`: files (any path) that are not the command's work, left out wherever
        they are in the work tree."""
        record: dict[str, Any] = {}
        recorder = None
        try:
            location = locate_work_tree(folder, timeout=timeout)
            if location is None:
                return None
            record["root"] = display_text(location.root)
            recorder = WorkTreeRecorder(location, timeout=timeout,
                                        exclude=_relative_inside(location.root, exclude))
            before = recorder.snapshot()
        except Exception as exc:  # git must never fail the run
            if recorder is not None:
                recorder.close()
            return cls({**record, "error": _why(exc)})
        record.update(commit=before.commit, branch=before.branch, dirty_before=before.dirty)
        return cls(record, recorder, before)

    @property
    def record(self) -> dict[str, Any]:
        """What is known so far (before `finish()`: the side before the command)."""
        return dict(self._record)

    def finish(self) -> dict[str, Any]:
        """The snapshot after the command and the record (see the class); a second call
        returns the same record."""
        recorder, before = self._recorder, self._before
        if recorder is None or before is None:
            return self.record
        self._recorder = None
        record = self._record
        try:
            after = recorder.snapshot()
            record["dirty_after"] = after.dirty
            if after.commit != before.commit:
                record["commit_after"] = after.commit
            if after.branch != before.branch:
                record["branch_after"] = after.branch
            record["changed"] = recorder.changes(before, after)
            warnings = list(dict.fromkeys((*before.warnings, *after.warnings)))
            if warnings:
                record["warnings"] = [display_text(w) for w in warnings[:10]]
        except Exception as exc:  # git must never fail the run
            record["error"] = _why(exc)
        finally:
            recorder.close()
        return self.record

    def close(self) -> None:
        """Drop the snapshot's temporary files without finishing (nothing is recorded)."""
        if self._recorder is not None:
            self._recorder.close()
            self._recorder = None


__all__ = [
    "GitError", "GitUnavailableError", "NotARepositoryError", "BareRepositoryError",
    "BranchConflictError", "ApplyConflictError",
    "ADDED", "MODIFIED", "DELETED", "RENAMED", "COPIED", "TYPE_CHANGED",
    "FileChange", "DiffStat", "CapturedChange", "PatchCheck", "Worktree", "Repository",
    "ENTRY_TRAILER", "LOCAL_ENV_VARS", "open_repository", "run_git", "git_environment",
    "without_repository_variables", "branch_ref",
    "capture_change", "check_patch", "apply_patch", "reset_worktree", "commit_change",
    "GIT_CONTEXT_TIMEOUT_S", "CHANGED_PATHS_LIMIT", "UNTRACKED", "WorkTreeLocation",
    "WorkTreeSnapshot", "WorkTreeRecorder", "CommandGitContext", "locate_work_tree",
    "display_text",
]

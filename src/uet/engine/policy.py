"""Judging a captured change against a task's file scope and the project's policy: pure
functions over git's FileChange records, glob lists and limits, giving every violation.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

from wcmatch import glob

# only the record of a changed file: judging runs no git command and reads no ledger
from uet.engine.git import ADDED, COPIED, DELETED, RENAMED, TYPE_CHANGED, FileChange
from uet.errors import ValidationError

__all__ = [
    "VIOLATION_KINDS",
    "FileScope",
    "Policy",
    "Verdict",
    "Violation",
    "judge_change",
    "matching_globs",
    "unsafe_path_reason",
]


# -- the scope and the policy --------------------------------------------------------------------

def _require_count(value: object, name: str) -> None:
    # bool is an int to Python, but True lines or True files is a caller's mistake
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValidationError(f"{name} must be a whole number >= 0, not {value!r}", field=name)


def _glob_tuple(value: object, name: str) -> tuple[str, ...]:
    # a lone string is iterable too: `modify: "src/**"` would otherwise become the globs
    # "s", "r", "c", ... and quietly allow almost nothing
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ValidationError(f"{name} must be a list of globs, not {value!r}", field=name)
    globs = tuple(value)
    for pattern in globs:
        if not isinstance(pattern, str) or not pattern.strip("/"):
            raise ValidationError(f"{name} has {pattern!r}, which is not a glob", field=name)
    return globs


@dataclass(frozen=True)
class FileScope:
    """The paths a task may touch: globs relative to the repository root (see `matching_globs`).

    - `modify`: existing files the task may change, change the mode of, delete, or rename
      away. Deleting needs `modify` (not `create`): it changes a file that exists, and a
      scope that lets a task edit `src/**` is the one a reader expects to govern removals.
    - `create`: new files the task may add, including the new path of a rename or a copy.
    - `read_only`: files that must not change, whatever `modify`/`create` say.

    An empty list allows nothing of its kind; a list the workstream file leaves out is empty
    too (a task's `files_scope: {create: [...]}` may modify nothing). A workstream without
    any `files_scope` is a different thing: pass None as the scope to `judge_change`.
    Lists are kept as tuples, in the author's words, so that messages quote them.
    """

    modify: tuple[str, ...] = ()
    create: tuple[str, ...] = ()
    read_only: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("modify", "create", "read_only"):
            object.__setattr__(self, name,
                               _glob_tuple(getattr(self, name), f"files_scope.{name}"))


@dataclass(frozen=True)
class Policy:
    """The project's limits on one patch. None (or False, or empty) means no limit.

    - `max_lines_changed`: added + removed lines over every text file (binary files: 0).
    - `max_files_changed`: changed paths; a rename or a copy is one.
    - `forbid_binary`: no change of a file git sees as binary (added, modified, deleted...).
    - `forbid_paths`: globs no change may touch; they win over every `files_scope` list.
    """

    max_lines_changed: int | None = None
    max_files_changed: int | None = None
    forbid_binary: bool = False
    forbid_paths: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("max_lines_changed", "max_files_changed"):
            value = getattr(self, name)
            if value is not None:
                _require_count(value, f"policy.{name}")
        if not isinstance(self.forbid_binary, bool):
            raise ValidationError(f"policy.forbid_binary must be true or false, not "
                                  f"{self.forbid_binary!r}", field="policy.forbid_binary")
        object.__setattr__(self, "forbid_paths",
                           _glob_tuple(self.forbid_paths, "policy.forbid_paths"))


# -- the verdict ---------------------------------------------------------------------------------

#: Every kind of violation, most serious first; a path gets at most one of the first five.
VIOLATION_KINDS = (
    "unsafe_path",     # absolute, `..`, `.git`: refused whatever the scope says
    "forbidden",       # matches policy.forbid_paths
    "read_only",       # matches files_scope.read_only
    "outside_scope",   # an existing file changed/deleted/renamed away, not under modify
    "not_creatable",   # a new file (added, or the target of a rename/copy), not under create
    "binary",          # a binary file while policy.forbid_binary
    "too_many_files",  # more than policy.max_files_changed
    "too_many_lines",  # more than policy.max_lines_changed
)
_KIND_RANK = {kind: rank for rank, kind in enumerate(VIOLATION_KINDS)}


@dataclass(frozen=True)
class Violation:
    """One rule a change breaks: its `kind` (one of `VIOLATION_KINDS`), the `path` it is
    about (None for the limits over the whole change) and a `message` a person can act on."""

    kind: str
    path: str | None
    message: str

    def __post_init__(self) -> None:
        if self.kind not in _KIND_RANK:
            raise ValidationError(f"violation kind {self.kind!r} is not one of "
                                  f"{', '.join(VIOLATION_KINDS)}", field="kind")

    def _sort_key(self) -> tuple[int, str, str]:
        # the most serious kind first, so that the few messages the one-line reason quotes
        # are the ones that matter most; within a kind, by path
        return (_KIND_RANK[self.kind], self.path or "", self.message)


# how many messages the one-line reason quotes before "and N more"
REASON_MESSAGES = 3


@dataclass(frozen=True)
class Verdict:
    """The judgement of one change: every violation, in a fixed order (the most serious kind
    first — see `VIOLATION_KINDS` — then by path) that does not depend on the order of the
    changes; and the totals the limits were compared with."""

    violations: tuple[Violation, ...] = ()
    files_changed: int = 0
    lines_changed: int = 0

    @property
    def ok(self) -> bool:
        """No violation: the change may go on to be applied."""
        return not self.violations

    @property
    def reason(self) -> str:
        """One line for the ledger entry's quarantine reason: the first few messages and how
        many more there are; empty when the change is ok."""
        shown = [v.message for v in self.violations[:REASON_MESSAGES]]
        more = len(self.violations) - len(shown)
        if more:
            shown.append(f"and {more} more violation{'s' if more > 1 else ''}")
        return "; ".join(shown)


# -- paths and globs -----------------------------------------------------------------------------

def unsafe_path_reason(path: str) -> str | None:
    """Why a changed path must be refused whatever the scope says, or None if it is safe.

    A path is unsafe when it is empty, absolute, not normalised (an empty or `.` segment:
    git never prints one, so something else made it), climbs out with a `..` segment,
    contains a NUL, or is or lies inside a `.git` directory at any depth (compared
    case-insensitively, as git itself refuses `.GIT` for the sake of case-insensitive file
    systems). A backslash is an ordinary character in a POSIX path.
    """
    if path == "":
        return "is an empty path"
    if "\0" in path:
        return "contains a NUL character"
    if path.startswith("/"):
        return "is an absolute path; a change may only touch paths inside the repository"
    segments = path.split("/")
    if ".." in segments:
        return "climbs out of its folder with '..'; a change may only touch paths inside " \
               "the repository"
    if any(segment.casefold() == ".git" for segment in segments):
        return "points into .git/, which a tool must never touch"
    if any(segment in ("", ".") for segment in segments):
        return "is not a normalised relative path (an empty or '.' segment)"
    return None


# `*`, `?` and `[...]` never match `/`; `**` as a whole segment matches any number of them
# (zero included). DOTGLOB because a dotfile is as much a file as any other, and without it a
# guard such as `forbid_paths: ["**/*.pem"]` would let `.secrets/key.pem` through. FORCEUNIX
# so `/` is the only separator and matching is case-sensitive on every platform. No BRACE,
# EXTGLOB, NEGATE or MATCHBASE: `{`, `(`, `!` are literal, and patterns are anchored at the
# repository root.
_GLOB_FLAGS = glob.GLOBSTAR | glob.DOTGLOB | glob.FORCEUNIX


@functools.lru_cache(maxsize=1024)
def _matcher(pattern: str) -> glob.WcMatcher[str]:
    # gitignore's two conveniences: a leading `/` anchors (ours all are anchored anyway) and a
    # trailing `/` names a folder, meaning everything under it
    normalised = pattern.lstrip("/")
    if normalised.endswith("/"):
        normalised += "**"
    return glob.compile(normalised, flags=_GLOB_FLAGS)


def matching_globs(path: str, globs: Iterable[str]) -> tuple[str, ...]:
    """The globs of `globs` that match `path` (a POSIX path relative to the repository root).

    The semantics (gitignore-like, but always anchored at the root and matched against the
    whole path):

    - `*` matches any run of characters except `/`; `?` one character except `/`;
      `[abc]`, `[a-z]`, `[!abc]` one character of (or not of) the set;
    - `**` as a whole segment matches any number of folders, zero included: `src/**` is
      everything under src/, `**/test_*.py` a test_*.py file at any depth (the root too);
    - `*`, `?` and `**` match names starting with a dot (`src/**` covers `src/.env`);
    - `docs/` (a trailing slash) means `docs/**`; a leading `/` is ignored;
    - `*.py` matches only at the root (no basename matching: write `**/*.py`), and `docs`
      matches only a file named docs, not what is under a folder of that name;
    - case-sensitive; no brace expansion (`{a,b}` is literal), no `!` negation, no extglob;
      a backslash escapes the next character (`\\*` is a literal star).
    """
    return tuple(pattern for pattern in globs if _matcher(pattern).match(path))


def _show(text: str) -> str:
    # a path may hold a newline or a tab (git quotes them, the capture unquotes them): quote
    # such a path so that the reason stays on one line and says exactly what the path is
    return text if text and text.isprintable() else repr(text)


# how many globs a message lists before "and N more"
_GLOBS_SHOWN = 5


def _show_globs(globs: tuple[str, ...]) -> str:
    shown = ", ".join(_show(pattern) for pattern in globs[:_GLOBS_SHOWN])
    more = len(globs) - _GLOBS_SHOWN
    return f"{shown} and {more} more" if more > 0 else shown


# -- judging -------------------------------------------------------------------------------------

# the role a path plays in its change decides which scope list must allow it
_EXISTING = "existing"   # the file exists before the change and is changed or removed: modify
_NEW = "new"             # the file exists only after the change: create
_SOURCE = "source"       # the source of a copy: only read, so only its safety is judged


def _old_path(change: FileChange) -> str:
    # a renamed or copied FileChange has its old path: the record refuses to exist without one
    assert change.old_path is not None, change
    return change.old_path


def _roles(change: FileChange) -> list[tuple[str, str]]:
    if change.status == RENAMED:
        # a rename deletes its old path and creates its new one
        return [(_old_path(change), _EXISTING), (change.path, _NEW)]
    if change.status == COPIED:
        return [(_old_path(change), _SOURCE), (change.path, _NEW)]
    if change.status == ADDED:
        return [(change.path, _NEW)]
    return [(change.path, _EXISTING)]  # modified (content or mode), deleted, type_changed


def _mode_changed(change: FileChange) -> bool:
    # chmod +x shows as a modification whose modes differ; a file that becomes a symlink (or
    # the reverse) as type_changed, its mode going to or from 120000
    return change.mode_changed or change.status == TYPE_CHANGED


def _outside_scope_message(path: str, change: FileChange, modify: tuple[str, ...]) -> str:
    where = (f"outside the task's files_scope.modify ({_show_globs(modify)})" if modify
             else "outside the task's files_scope.modify, which is empty")
    if change.status == DELETED:
        return f"{_show(path)} is deleted but is {where}; deleting a file needs modify"
    if change.status == RENAMED:
        return (f"{_show(path)} is renamed to {_show(change.path)} but is {where}; "
                f"renaming a file away needs modify on its old path")
    if _mode_changed(change):
        return f"{_show(path)} has its mode changed but is {where}"
    return f"{_show(path)} is {where}"


def _not_creatable_message(path: str, change: FileChange, create: tuple[str, ...]) -> str:
    where = (f"outside the task's files_scope.create ({_show_globs(create)})" if create
             else "outside the task's files_scope.create, which is empty")
    if change.status == RENAMED:
        return f"{_show(path)} is a new file (renamed from {_show(_old_path(change))}) {where}"
    if change.status == COPIED:
        return f"{_show(path)} is a new file (copied from {_show(_old_path(change))}) {where}"
    return f"{_show(path)} is a new file {where}"


def _judge_path(path: str, role: str, change: FileChange, scope: FileScope | None,
                policy: Policy) -> Violation | None:
    """The one violation of a path, the most serious only: a path that must never be touched
    is not also reported as outside the scope, since widening the scope would not help."""
    unsafe = unsafe_path_reason(path)
    if unsafe:
        return Violation("unsafe_path", path, f"{_show(path)} {unsafe}")
    if role == _SOURCE:
        return None
    forbidden = matching_globs(path, policy.forbid_paths)
    if forbidden:
        return Violation("forbidden", path, f"{_show(path)} is forbidden by "
                                            f"policy.forbid_paths ({_show_globs(forbidden)})")
    if scope is None:
        # no files_scope at all: the workstream restricts nothing but the policy does
        return None
    read_only = matching_globs(path, scope.read_only)
    if read_only:
        return Violation("read_only", path, f"{_show(path)} is read-only for this task "
                                            f"(files_scope.read_only {_show_globs(read_only)})")
    if role == _EXISTING and not matching_globs(path, scope.modify):
        return Violation("outside_scope", path,
                         _outside_scope_message(path, change, scope.modify))
    if role == _NEW and not matching_globs(path, scope.create):
        return Violation("not_creatable", path,
                         _not_creatable_message(path, change, scope.create))
    return None


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def judge_change(changes: Iterable[FileChange], scope: FileScope | None,
                 policy: Policy = Policy()) -> Verdict:
    """Judge a captured change: every violation of the task's file scope and the project's
    policy, each naming its path or limit.

    `changes`: git's records of the change's files (`capture_change(...).files`, see
    `uet.engine.git.FileChange`); any order, the verdict is the same. `scope`: the task's
    `files_scope`, or None when the workstream has none — then every path is allowed except
    the unsafe and `policy.forbid_paths` ones (there is no read_only list either).
    `policy`: the project's limits (`Policy()`: none).

    The rules, per path: an unsafe path (`unsafe_path_reason`) is refused whatever the
    scope; then `policy.forbid_paths` wins over everything, then `files_scope.read_only`
    over `modify`/`create`; an existing file that is modified, has its mode changed (chmod,
    or type_changed: a file becoming a symlink or the reverse), is deleted, or is renamed
    away needs `modify`; a new file (added, or the target of a rename
    or copy) needs `create`; the source of a copy is only read. A path gets at most one of
    these violations, the most serious. Then, per change, a binary file while
    `policy.forbid_binary`; and over the whole change, the files and lines limits (a limit
    exactly reached passes). Unsafe and out-of-scope paths still count towards the limits.
    """
    changes = list(changes)
    violations: set[Violation] = set()
    for change in changes:
        if not isinstance(change, FileChange):
            raise ValidationError(f"judge_change takes FileChange objects, not {change!r}",
                                  field="changes")
        for path, role in _roles(change):
            violation = _judge_path(path, role, change, scope, policy)
            if violation is not None:
                violations.add(violation)
        if policy.forbid_binary and change.binary:
            violations.add(Violation("binary", change.path,
                                     f"{_show(change.path)} is a binary file; "
                                     f"policy.forbid_binary refuses binary changes"))
    files_changed = len(changes)
    # a binary file counts no lines: git's FileChange holds 0 for it (numstat prints `-`)
    lines_changed = sum(change.lines_added + change.lines_removed for change in changes)
    if policy.max_files_changed is not None and files_changed > policy.max_files_changed:
        violations.add(Violation("too_many_files", None,
                                 f"{_plural(files_changed, 'file')} changed, more than "
                                 f"policy.max_files_changed {policy.max_files_changed}"))
    if policy.max_lines_changed is not None and lines_changed > policy.max_lines_changed:
        violations.add(Violation("too_many_lines", None,
                                 f"{_plural(lines_changed, 'line')} changed, more than "
                                 f"policy.max_lines_changed {policy.max_lines_changed}"))
    # a set, then sorted: the same change in any order, or with a path listed twice, gives
    # the same verdict
    ordered = tuple(sorted(violations, key=Violation._sort_key))
    return Verdict(ordered, files_changed=files_changed, lines_changed=lines_changed)

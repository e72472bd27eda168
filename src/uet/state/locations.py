"""Where a SQLite ledger may live: names that could only go wrong are refused before
anything is created (a URL of another database, a path through a file, a device or pipe),
and the folders an open creates are known, so that a failed open can remove them."""

from __future__ import annotations

import os
import re
import stat

from uet.errors import StorageError, ValidationError
from uet.state.names import MEMORY, is_postgres_url

_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_FILE_KINDS = {stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
               stat.S_IFIFO: "a named pipe", stat.S_IFSOCK: "a socket"}


def check_location(path: str, source: str = "ledger") -> None:
    """Refuse a ledger name that could only go wrong: a URL of another database, a path
    through a file, something that is not a regular file (a device, a pipe)."""
    if path == MEMORY or is_postgres_url(path):
        return
    scheme = _URL_SCHEME.match(path)
    if scheme:
        raise ValidationError(
            f"{source} {path}: {scheme[1]}:// URLs are not supported; a ledger is a SQLite "
            "file path (e.g. ledger.db) or a postgresql:// (postgres://) URL", field="db")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(f"{source} {path}: the path is not valid UTF-8, which SQLite "
                              "needs; rename the file or folder", field="db") from None
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise StorageError(f"cannot open ledger {path}: {folder} is a file, not a folder; "
                           "move it away or name another ledger")
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # not there (yet), or not ours to look at: opening says what is wrong
    kind = _FILE_KINDS.get(stat.S_IFMT(mode))
    if kind:
        raise StorageError(f"cannot open ledger {path}: it is {kind}, not a regular file; "
                           "name a file")


def missing_folders(path: str) -> list[str]:
    """The folders `path` needs that do not exist yet, deepest first."""
    missing = []
    folder = os.path.dirname(os.path.abspath(path))
    while folder and not os.path.lexists(folder):
        missing.append(folder)
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return missing




LEDGER_FOLDER = ".ledger"
GITIGNORE = ("# uet's ledger folder: its files are never committed (written by uet)\n"
             "*\n")


def keep_out_of_git(path: str, created: list[str]) -> None:
    """Give the folder of a SQLite ledger a `.gitignore` that ignores everything in it, so
    that the ledger never shows as untracked in the repository around it: when this open
    created the folder (`created`: missing_folders' list), or the folder is uet's default
    `.ledger`. An existing `.gitignore` is left as it is; one that cannot be written is no
    error (the ledger works without it)."""
    folder = os.path.dirname(os.path.abspath(path))
    if folder not in created and os.path.basename(folder) != LEDGER_FOLDER:
        return
    target = os.path.join(folder, ".gitignore")
    if os.path.lexists(target):
        return
    try:
        with open(target, "x", encoding="utf-8") as f:
            f.write(GITIGNORE)
    except OSError:
        pass


def remove_folders(folders: list[str]) -> None:
    """Remove folders an open created (deepest first), those that are still empty."""
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:
            pass

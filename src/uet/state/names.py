"""Ledger names: which ledger a call means (argument, $UET_DATABASE, the default file), which
engine a name selects, and how a name is shown to people (a URL without its password).

Usable without the PostgreSQL driver: this module only looks at names.
"""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit, urlunsplit

from uet.errors import ValidationError

DEFAULT_PATH = os.path.join(".ledger", "framework.db")
ENV_VAR = "UET_DATABASE"
MEMORY = ":memory:"

INSTALL_HINT = "pip install 'uet[postgres]'"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(db_path: str) -> bool:
    """Whether a resolved database name selects the PostgreSQL backend."""
    return db_path.startswith(POSTGRES_SCHEMES)


# a password given as a query parameter (?password=..., &sslpassword=...)
_PASSWORD_PARAMETER = re.compile(r"(?i)([?&](?:ssl)?password=)[^&#]*")


def redact(url: str) -> str:
    """The URL with its passwords replaced by '***' (for messages, repr and `uet doctor`)."""
    url = _PASSWORD_PARAMETER.sub(r"\1***", url)
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{parts.username or ''}:***@{host}"
        if parts.port is not None:
            netloc += f":{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:  # a malformed URL: show no part of what follows the scheme's user
        return url.split("@", 1)[-1] if "@" in url else url


def resolve_path(db_path: object) -> str:
    """The database a call means: the argument, else $UET_DATABASE, else the default file."""
    if db_path is None:
        db_path = os.environ.get(ENV_VAR) or DEFAULT_PATH
    if isinstance(db_path, os.PathLike):
        db_path = os.fspath(db_path)
    if not isinstance(db_path, str) or not db_path or "\x00" in db_path:
        raise ValidationError(f"a database must be named by a non-empty path, got {db_path!r}")
    return db_path


def display_name(db_path: str) -> str:
    """The database's name as shown to people: a URL without its password."""
    return redact(db_path) if is_postgres_url(db_path) else db_path

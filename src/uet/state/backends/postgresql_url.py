"""PostgreSQL database names (URLs), usable without the driver installed.

The backend itself (uet.state.backends.postgresql) imports psycopg; this module only looks at URLs,
so that the SQLite core and its error messages never need the optional extra.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

from uet.errors import StorageError

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


def backend_class():
    """The PostgreSQL backend class, or StorageError saying how to install its driver."""
    try:
        from uet.state.backends.postgresql import PostgresBackend
    except ImportError as exc:
        raise StorageError(f"the PostgreSQL backend needs psycopg 3 and psycopg_pool "
                           f"({exc}); install them with {INSTALL_HINT}") from None
    return PostgresBackend

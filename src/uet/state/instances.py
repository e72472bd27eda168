"""The process-wide ledger instances behind `get_db`: one instance per ledger class and
ledger, safe from many threads and after fork."""

from __future__ import annotations

import os
import threading
from typing import Any, Protocol, TypedDict, TypeVar

from uet.errors import ValidationError
from uet.state.names import MEMORY, display_name, is_postgres_url, resolve_path

class Closable(Protocol):
    """What the cache needs of a ledger class: made from a ledger's name and the options
    below, an instance tells whether it was closed."""

    def __init__(self, db_path: str, *, durability: str = ...,
                 busy_timeout: float = ...) -> None: ...

    @property
    def closed(self) -> bool:
        """Whether the instance was closed (the cache then makes a new one)."""


class _Options(TypedDict, total=False):
    """The options a caller of `process_instance` gave (the others keep their defaults)."""

    durability: str
    busy_timeout: float


# (class, ledger) -> its instance: uet.compat's Database gets its own, on the same ledgers
_instances: dict[tuple[type, str], Any] = {}
_instances_lock = threading.Lock()
D = TypeVar("D", bound="Closable")  # a ledger class: uet.state.Database or a subclass


def _reset_lock_in_child() -> None:
    global _instances_lock
    _instances_lock = threading.Lock()  # another thread may have held it at fork time


os.register_at_fork(after_in_child=_reset_lock_in_child)


def _instance_key(path: str) -> str:
    return path if path == MEMORY or is_postgres_url(path) else os.path.realpath(path)


def process_instance(cls: type[D], db_path: str | os.PathLike[str] | None = None, *,
                     durability: str | None = None, busy_timeout: float | None = None) -> D:
    """The process-wide instance of `cls` (Database or a subclass) for `db_path`, created on
    first use (a closed one is replaced); safe to call from many threads. Options apply on
    creation; asking for different ones later raises ValidationError."""
    path = resolve_path(db_path)
    key = (cls, _instance_key(path))
    options: _Options = {}
    if durability is not None:
        options["durability"] = durability
    if busy_timeout is not None:
        options["busy_timeout"] = busy_timeout
    with _instances_lock:
        db = _instances.get(key)
        if db is None or db.closed:
            db = cls(path, **options)
            _instances[key] = db
        else:
            differing = [name for name, value in options.items()
                         if getattr(db, name, object()) != value]
            if differing:
                raise ValidationError(
                    f"get_db({display_name(path)!r}) already returned an instance with other "
                    f"{', '.join(differing)}; use init_db for a separate instance")
        return db

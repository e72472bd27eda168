"""Identifiers and timestamps: ULIDs for ids, one UTC text format for every timestamp.

The timestamp format (ISO-8601, microseconds, `Z`) is fixed so that text order is time order.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime, timezone

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_RANDOM_BITS = 80
_RANDOM_MAX = (1 << _RANDOM_BITS) - 1

_ulid_lock = threading.Lock()
_last_ms = -1
_last_random = 0


def _after_fork_in_child() -> None:
    # A child must not continue its parent's monotonic sequence: both would mint the same ids.
    global _ulid_lock, _last_ms
    _ulid_lock = threading.Lock()
    _last_ms = -1


os.register_at_fork(after_in_child=_after_fork_in_child)


# two base-32 characters per 10 bits: the 80 random bits are 8 lookups
_PAIRS = tuple(_CROCKFORD[i >> 5] + _CROCKFORD[i & 31] for i in range(1024))
_PAIR_SHIFTS = tuple(range(70, -10, -10))
_time_part_cache = (-1, "")


def _time_part(ms: int) -> str:
    """The 10 characters (50 bits) that encode a millisecond timestamp, cached per ms."""
    global _time_part_cache
    cached_ms, text = _time_part_cache
    if cached_ms != ms:
        text = "".join(_CROCKFORD[(ms >> shift) & 31] for shift in range(45, -5, -5))
        _time_part_cache = (ms, text)
    return text


def new_ulid() -> str:
    """Return a new ULID: 26 Crockford base-32 characters, sortable by creation time.

    Within one millisecond of one process the random part is incremented, so ids minted by
    one process sort in the order they were minted.
    """
    global _last_ms, _last_random
    ms = time.time_ns() // 1_000_000
    with _ulid_lock:
        if ms <= _last_ms:
            ms = _last_ms
            rand = _last_random + 1
            if rand > _RANDOM_MAX:  # 2**80 ids in one millisecond: borrow the next one
                ms += 1
                rand = int.from_bytes(os.urandom(10), "big")
        else:
            rand = int.from_bytes(os.urandom(10), "big")
        _last_ms, _last_random = ms, rand
    return _time_part(ms) + "".join([_PAIRS[(rand >> shift) & 1023] for shift in _PAIR_SHIFTS])


def _format(moment: datetime) -> str:
    # isoformat pads the year to four digits (strftime's %Y does not on every platform).
    return moment.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


_second_cache = (-1, "")


def utc_now() -> str:
    """The current time in the ledger's one timestamp format, e.g. 2026-01-31T12:00:00.000000Z."""
    global _second_cache
    seconds, micros = divmod(time.time_ns() // 1000, 1_000_000)
    cached_second, prefix = _second_cache
    if cached_second != seconds:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _second_cache = (seconds, prefix)
    return f"{prefix}.{micros:06d}Z"


def normalize_timestamp(value: object, field: str) -> str:
    """Turn a caller's timestamp (ISO-8601 text or `datetime`) into the ledger's format.

    Naive values are taken as UTC; aware values are converted to UTC. Raises ValueError
    with a readable message for anything else (the caller wraps it in ValidationError).
    """
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(
                f"{field} must be an ISO-8601 timestamp such as "
                f"'2026-01-31T12:00:00.000000Z', got {value!r}") from None
    else:
        raise ValueError(
            f"{field} must be an ISO-8601 string or a datetime, got {type(value).__name__}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    else:
        try:
            moment = moment.astimezone(timezone.utc)
        except OverflowError:
            raise ValueError(f"{field} {value!r} is outside the years 1 to 9999 in UTC") from None
    return _format(moment)

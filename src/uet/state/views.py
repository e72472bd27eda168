"""The documents that people and programs read about a ledger — one builder each, shared
by the command line's `--json` (`uet show`, `uet workers`, `uet runs`) and the dashboard's
pages and `/api/…` mirrors (`uet.web`), so that both always say the same thing.

Every builder only reads. Values are returned as stored (a value written by raw SQL may be
anything); what is judged from them (an owner lost, a worker stale, an age) is None when a
stored value cannot be judged, never an exception.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import datetime, timedelta, timezone
from typing import Any

from uet.errors import ValidationError
from uet.state.gates import GateLedger
from uet.state.ids import normalize_timestamp
from uet.state.patches import PatchLedger
from uet.state.recovery import is_owner, owner_lost
from uet.state.usage import usage_of_run
from uet.state.workers import WorkerLifecycle

_SINCE = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def since_timestamp(value: str | None, *, selects: str = "the runs created_at or after it",
                    option: str = "--since") -> str | None:
    """A `since` filter (`--since`, the dashboard's `since`): an ISO timestamp, or an age
    like 30m, 2h, 7d (seconds to weeks); None when not given. `selects` says, in the error
    about a bad value, what the filter keeps, and `option` how it was named."""
    if value is None:
        return None
    match = _SINCE.match(value.strip())
    if match:
        try:
            then = datetime.now(timezone.utc) - timedelta(**{_UNITS[match[2]]: int(match[1])})
        except OverflowError:
            raise ValidationError(f"{option} {value} reaches before the year 1",
                                  field="since") from None
        return then.isoformat()
    try:
        return normalize_timestamp(value, "created_at")
    except ValueError:
        raise ValidationError(
            f"{option} {value!r} is neither an age (a number and a unit: 30s, 15m, 2h, 7d, "
            f"1w) nor an ISO timestamp (2026-01-31, 2026-01-31T12:00:00Z); it selects {selects}",
            field="since") from None


def run_document(db: Any, run_id: str) -> dict[str, Any]:
    """Everything about one run (`uet show --json`): the run, its step attempts, events,
    patches (with their ledger entries) and gates, and `usage` — the totals its tools
    reported — when any did."""
    document = {"run": db.get_run(run_id), "step_attempts": db.list_step_attempts(run_id),
                "events": db.list_events(run_id),
                "patches": PatchLedger(db).history_of_run(run_id),
                "gates": GateLedger(db).list_gates(run_id=run_id)}
    usage = usage_of_run(db, run_id)
    if usage["attempts"]:
        document["usage"] = usage
    return document


def owners_lost(db: Any, runs: list[dict[str, Any]]) -> dict[str, str]:
    """{run_id: why} of the running runs among `runs` whose owner is gone (nothing written:
    the next reaper pass fails them)."""
    workers = WorkerLifecycle(db)
    lost = {}
    for row in runs:
        if row["state"] == "running" and row.get("worker_id"):
            worker = workers.get_worker(row["worker_id"])
            try:  # a stored value may be anything (raw SQL): then it cannot be judged
                why = (owner_lost(worker) if worker is not None
                       else "its owner is not recorded")
            except (TypeError, ValueError, AttributeError, OverflowError):
                why = None
            if why:
                lost[row["run_id"]] = why
    return lost


def worker_view(worker: Any, now: datetime | None = None) -> dict[str, Any]:
    """A worker record as `uet workers` shows it: its fields, plus `host` and `pid` (from
    its affinity), `heartbeat_age_s` (seconds since its last heartbeat, or since it
    registered), `stale` (True when its owner is lost — `uet.state.recovery.owner_lost` —,
    False when not, None when it cannot be judged: a worker that declared no heartbeat
    interval) and `stale_reason`."""
    now = now or datetime.now(timezone.utc)
    view = {f.name: getattr(worker, f.name) for f in dataclasses.fields(worker)}
    view["state"] = getattr(worker.state, "value", worker.state)
    affinity = worker.affinity if isinstance(worker.affinity, dict) else {}
    view["host"] = affinity.get("host") if isinstance(affinity.get("host"), str) else None
    pid = affinity.get("pid")
    view["pid"] = pid if isinstance(pid, int) and not isinstance(pid, bool) else None
    view["heartbeat_age_s"] = age_seconds(worker.last_heartbeat or worker.created_at, now)
    reason = None
    try:  # a stored value may be anything (raw SQL): then it cannot be judged
        reason = owner_lost(worker, now)
        judged = view["state"] == "TERMINATED" or is_owner(affinity)
    except (TypeError, ValueError, AttributeError, OverflowError):
        judged = False
    view["stale"] = (reason is not None) if judged else None
    view["stale_reason"] = reason
    return view


def workers_document(db: Any, state: object = None) -> list[dict[str, Any]]:
    """Every worker (or those in `state`) as `worker_view`s, oldest first (`uet workers
    --json`)."""
    now = datetime.now(timezone.utc)
    return [worker_view(w, now) for w in WorkerLifecycle(db).list_workers(state)]


def age_seconds(stamp: Any, now: datetime) -> float | None:
    """Seconds from a stored timestamp to `now` (None when it is not one)."""
    try:
        then = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        if then.tzinfo is None:
            then = then.replace(tzinfo=timezone.utc)
        return round((now - then).total_seconds(), 3)
    except (TypeError, ValueError, AttributeError, OverflowError):
        return None


def seconds_between(started: Any, ended: Any) -> float | None:
    """Seconds from one stored timestamp to another (None unless both are timestamps)."""
    try:
        return (datetime.fromisoformat(ended) - datetime.fromisoformat(started)).total_seconds()
    except (TypeError, ValueError, OverflowError):
        return None

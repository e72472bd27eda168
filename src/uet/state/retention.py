"""Retention: deleting finished runs, with everything that belongs to them, in short batches
(`Database.gc`, `uet gc`).

What goes:
- runs in a finished state — one that stamps `ended_at` on entry: succeeded, failed,
  quarantined, canceled (`states` narrows them; pending and running are never deleted, and
  asking for them is refused) — that ended before the cutoff (a run without `ended_at`, as a
  seed ledger may hold, by its `created_at`);
- with them, following the foreign keys that cascade from a run: its step attempts, its
  events, its patches (by run or by step attempt), their ledger entries, its gates and
  those of those entries, and the gates' dependencies.

What stays:
- with `keep_last` N, the newest N runs (by `created_at`, the order `uet runs` shows) of the
  selected states of each project, whatever their age (of the one project, with
  `project_id`);
- a run a worker still names as its current run (`workers.current_run_id`: a BUSY or
  DRAINING worker that has not released it yet); the next gc takes it;
- rows of runs kept, run-independent events (workers, and patches or gates of no run),
  workers. The event trail's `seq` is never handed out again: the ledger's
  `deleted_event_seq` mark is raised past every deleted event in the same transaction
  (SQLite takes the next seq above it; PostgreSQL's sequence never goes back anyway).

How: the runs are found by reads that take no lock (oldest first, one index range per
state, never read twice in one call), then deleted in batches, each one write transaction
that confirms its runs still qualify (PostgreSQL locks them, passing over any that another
writer holds) and deletes them with their records, children first, counting each table. A batch
that held the write lock longer than `BATCH_SECONDS` halves the next one (down to a
sixteenth of `batch_size`); quick ones let it grow back to `batch_size`. On SQLite, whose
write lock is the whole file's, gc then pauses `YIELD_RATIO` times as long as the batch
took, so writers of other processes (whose busy handler polls for the lock) find it free at
least half the time, and at least `CONTENDED_PAUSE` (100 ms) when gc had to wait for the
lock itself (writers are busy: each of them waiting looks for the lock at least once in
that time; without it, four writers saturating the lock saw a rare call wait past the 10 s
busy timeout during a 9-minute gc of 1,000,000 runs). Before the pause it copies the
write-ahead log back into the file and starts the log over (a RESTART checkpoint, waiting at
most `CHECKPOINT_WAIT` for the log's readers), which SQLite would otherwise try inside the
next commit that fills the log — and, with other processes writing, never finish: the log
would grow for as long as gc runs (see `_checkpoints_between_batches`). On PostgreSQL there
is no ledger-wide lock: a writer waits for gc only if it touches one of the old runs a batch
is deleting, so gc does not pause there.
Killed at any moment, a call leaves whole batches deleted or not at all, and nothing else
(no side table, no mark): the next call goes on from what is left.

Space: SQLite keeps freed pages inside the file and reuses them for new rows; the file does
not shrink by itself. If the ledger is in `auto_vacuum=INCREMENTAL` mode (uet does not
create ledgers so; switching an existing file needs a full VACUUM), gc gives the free pages
back in small steps of `VACUUM_STEP_PAGES`, each a short write transaction. Otherwise
`vacuum=True` runs a full `VACUUM`, which rewrites the file and holds the write lock until
it ends (writers wait, up to their busy timeout: run it when the ledger is quiet). On
PostgreSQL, reclaiming the space of deleted rows is autovacuum's job: uet runs no VACUUM.
"""

from __future__ import annotations

import json
import re
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Iterator, Protocol

from uet.errors import UetError, ValidationError
from uet.state import tables
from uet.state.backends import Backend
from uet.state.ids import normalize_timestamp
from uet.state.machines import RUN

# finished: the states whose entry stamps ended_at (pending and running do not)
FINISHED_STATES: tuple[str, ...] = tuple(s for s in RUN.states
                                         if RUN.stamps.get(s) == "ended_at")
# The tables a run's records live in, in the order they are deleted (children first).
TABLES: tuple[str, ...] = ("gate_dependencies", "test_gates", "patch_ledger_entries",
                           "patches", "run_events", "step_attempts", "runs")
_DELETES = {"gate_dependencies": "gc_delete_gate_dependencies",
            "test_gates": "gc_delete_gates", "patch_ledger_entries": "gc_delete_patch_entries",
            "patches": "gc_delete_patches", "run_events": "gc_delete_events",
            "step_attempts": "gc_delete_steps", "runs": "gc_delete_runs"}

DEFAULT_BATCH_SIZE = 200      # runs per batch at most (about 20-40 ms here; see bench_gc)
MAX_BATCH_SIZE = 10_000
MAX_KEEP_LAST = 1_000_000_000
BATCH_SECONDS = 0.05          # a batch that held the write lock longer halves the next one
# SQLite: after each batch gc leaves the write lock free this many times as long as the
# batch held it (writers of other processes poll for it in their busy handler)
YIELD_RATIO = 1.0
# ... and when gc itself waited for the lock (other writers are busy), at least this long:
# SQLite's busy handler sleeps up to 100 ms between looks, so every writer waiting then
# looks at least once while the lock is free
CONTENDED_WAIT = 0.001
CONTENDED_PAUSE = 0.1
# SQLite: how long gc's RESTART checkpoint between batches may wait for the write lock (it
# competes with the writers for it, as a batch does) and then for the readers of the
# write-ahead log to move on, before it gives up until the next pause
CHECKPOINT_WAIT = 2.0
# ... which it runs once the log is longer than this many pages (64 MB at 4 KiB): alone,
# gc's log starts over after each PASSIVE checkpoint and holds one batch, far less
RESTART_FRAMES = 16384
VACUUM_STEP_PAGES = 1_000     # pages per incremental-vacuum transaction (4 MB at 4 KiB)

_AGE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_AGE_FORMS = "an age (a number and a unit: 30s, 15m, 12h, 30d, 2w), a timedelta"


@dataclass
class GcResult:
    """What a gc did (or, with `dry_run`, would do).

    `deleted` counts the rows removed per table (TABLES order). `examined` is how many runs
    of the selected states created before the cutoff were looked at (`to_examine` of them
    were there when the call began: filled in when a progress callback is given), `kept`
    how many of them `keep_last` kept, `skipped` how many stayed for another reason (ended
    after the cutoff, held by a worker, or changed by another writer meanwhile).
    `longest_batch_seconds` is the longest time one batch held its write transaction,
    `last_batch_seconds` the last one's (for a dry run: the time its reads took),
    `last_lock_wait_seconds` how long the last batch waited for the write lock.
    """

    cutoff: str
    states: tuple[str, ...]
    project_id: str | None
    keep_last: int | None
    dry_run: bool
    batch_size: int
    deleted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    examined: int = 0
    to_examine: int | None = None
    kept: int = 0
    skipped: int = 0
    batches: int = 0
    longest_batch_seconds: float = 0.0
    last_batch_seconds: float = 0.0
    last_lock_wait_seconds: float = 0.0
    seconds: float = 0.0
    vacuum: dict[str, Any] | None = None

    @property
    def runs(self) -> int:
        """How many runs were (or would be) deleted."""
        return self.deleted["runs"]

    def as_dict(self) -> dict[str, Any]:
        """The result as a JSON-ready dict (`uet gc --json`)."""
        return {"dry_run": self.dry_run, "cutoff": self.cutoff, "states": list(self.states),
                "project_id": self.project_id, "keep_last": self.keep_last,
                "deleted": dict(self.deleted), "examined": self.examined,
                "kept": self.kept, "skipped": self.skipped, "batches": self.batches,
                "batch_size": self.batch_size,
                "longest_batch_seconds": round(self.longest_batch_seconds, 6),
                "seconds": round(self.seconds, 3), "vacuum": self.vacuum}


class Ledger(Protocol):
    """What gc needs of the ledger it cleans: a `uet.state.Database` (which imports this
    module, so it is not named here)."""

    @property
    def backend(self) -> Backend: ...

    @property
    def engine(self) -> str: ...

    @property
    def db_path(self) -> str: ...

    @property
    def in_atomic(self) -> bool: ...


@dataclass(frozen=True)
class _Plan:
    cutoff: str
    states: tuple[str, ...]
    project_id: str | None
    keep_last: int | None
    dry_run: bool
    batch_size: int
    vacuum: bool
    progress: Callable[[GcResult], None] | None


# -- the caller's input ----------------------------------------------------------------

def cutoff_of(older_than: object, *, now: datetime | None = None) -> str:
    """The cutoff timestamp (ledger format) of `older_than`: a timedelta or an age text
    (30d, 12h ...) counted back from now, or a timestamp (datetime or ISO text) at or before
    now. Raises ValidationError (field older_than) for anything else."""
    now = now or datetime.now(timezone.utc)
    if older_than is None:
        raise ValidationError(f"older_than is required: {_AGE_FORMS}, or a timestamp",
                              field="older_than")
    if isinstance(older_than, timedelta):
        if older_than < timedelta(0):
            raise ValidationError(f"older_than must not be negative, got {older_than!r}",
                                  field="older_than")
        return _back_from(now, older_than, older_than)
    if isinstance(older_than, str):
        match = _AGE.match(older_than)
        if match:
            try:
                age = timedelta(**{_UNITS[match[2]]: int(match[1])})
            except OverflowError:
                raise ValidationError(f"older_than {older_than!r} reaches before the year 1",
                                      field="older_than") from None
            return _back_from(now, age, older_than)
        if older_than.strip().startswith("-"):
            raise ValidationError(f"older_than must not be negative, got {older_than!r}",
                                  field="older_than")
    if isinstance(older_than, (str, datetime)):
        try:
            cutoff = normalize_timestamp(older_than, "older_than")
        except ValueError:
            raise ValidationError(
                f"older_than {older_than!r} is neither {_AGE_FORMS} nor a timestamp (ISO "
                "text such as 2026-01-31 or 2026-01-31T12:00:00Z, or a datetime)",
                field="older_than") from None
        if cutoff > normalize_timestamp(now, "now"):
            raise ValidationError(
                f"older_than {older_than!r} is in the future: every finished run ended before "
                "it; give a past moment or an age", field="older_than")
        return cutoff
    raise ValidationError(f"older_than must be {_AGE_FORMS}, or a timestamp, got "
                          f"{type(older_than).__name__} {older_than!r}", field="older_than")


def _back_from(now: datetime, age: timedelta, given: object) -> str:
    try:
        return normalize_timestamp(now - age, "older_than")
    except (OverflowError, ValueError):
        raise ValidationError(f"older_than {given!r} reaches before the year 1",
                              field="older_than") from None


def states_of(states: object) -> tuple[str, ...]:
    """The finished run states selected, in machine order: all of them for None; a
    comma-separated text or an iterable of names narrows them. Unknown names and pending or
    running (never deleted) raise ValidationError (field states)."""
    if states is None:
        return FINISHED_STATES
    if isinstance(states, str):
        names = [s.strip() for s in states.split(",")]
    elif isinstance(states, Iterable) and not isinstance(states, (bytes, dict)):
        names = list(states)
    else:
        raise ValidationError(f"states must be run state names (a list, or one text with "
                              f"commas), got {type(states).__name__}", field="states")
    if not names or all(name == "" for name in names):
        raise ValidationError("states names no state; leave it out for every finished state "
                              f"({', '.join(FINISHED_STATES)})", field="states")
    chosen: set[str] = set()
    for name in names:
        if not isinstance(name, str) or name not in RUN.states:
            raise ValidationError(f"unknown run state {name!r} in states; the finished ones "
                                  f"are {', '.join(FINISHED_STATES)}", field="states")
        if name not in FINISHED_STATES:
            raise ValidationError(
                f"gc never deletes {name} runs (only finished ones: "
                f"{', '.join(FINISHED_STATES)}); cancel or finish them first", field="states")
        chosen.add(name)
    return tuple(s for s in FINISHED_STATES if s in chosen)


def _count(value: object, name: str, minimum: int, maximum: int) -> int:
    if (not isinstance(value, int) or isinstance(value, bool)
            or not minimum <= value <= maximum):
        raise ValidationError(f"{name} must be an integer from {minimum} to {maximum:,}, "
                              f"got {value!r}", field=name)
    return value


def _plan(older_than: object, states: object, project_id: object, keep_last: object,
          dry_run: object, batch_size: object, vacuum: object, progress: object) -> _Plan:
    """Every argument checked (ValidationError naming the first bad one) before anything is
    read or written."""
    cutoff = cutoff_of(older_than)
    chosen = states_of(states)
    project = tables.text(project_id, "project_id", required=False)
    keep = None if keep_last is None else _count(keep_last, "keep_last", 0, MAX_KEEP_LAST)
    for flag, name in ((dry_run, "dry_run"), (vacuum, "vacuum")):
        if not isinstance(flag, bool):
            raise ValidationError(f"{name} must be True or False, got {flag!r}", field=name)
    size = _count(batch_size, "batch_size", 1, MAX_BATCH_SIZE)
    if progress is not None and not callable(progress):
        raise ValidationError(f"progress must be a callable or None, got {progress!r}",
                              field="progress")
    return _Plan(cutoff, chosen, project, keep or None, bool(dry_run), size, bool(vacuum),
                 progress)


# -- the work --------------------------------------------------------------------------

def gc(db: Ledger, older_than: object, *, states: object = None, project_id: object = None,
       keep_last: object = None, dry_run: object = False,
       batch_size: object = DEFAULT_BATCH_SIZE, vacuum: object = False,
       progress: object = None) -> GcResult:
    """Delete the finished runs of `db` that ended before `older_than`, with all that belongs
    to them, in short batches; see the module's docstring and `Database.gc`."""
    plan = _plan(older_than, states, project_id, keep_last, dry_run, batch_size, vacuum,
                 progress)
    if db.in_atomic:
        raise ValidationError("gc runs its own short transactions, one per batch; call it "
                              "outside an atomic() block", field="atomic")
    began = time.perf_counter()
    backend = db.backend
    result = GcResult(plan.cutoff, plan.states, plan.project_id, plan.keep_last,
                      plan.dry_run, plan.batch_size)
    newest = _keep_last_bounds(backend, plan) if plan.keep_last else None
    if plan.progress is not None:
        result.to_examine = sum(_candidate_count(backend, plan, state) for state in plan.states)
        plan.progress(result)
    # SQLite's write lock is the whole file's: leave it to other processes between batches
    yields = db.engine == "sqlite" and db.db_path != ":memory:" and not plan.dry_run
    with _checkpoints_between_batches(backend, yields) as checkpoint:
        _collect(backend, plan, result, newest, yields, checkpoint)
    if not plan.dry_run:
        result.vacuum = _reclaim(db, plan.vacuum)
    elif plan.vacuum:
        result.vacuum = {"mode": "none", "note": "a dry run reclaims nothing"}
    result.seconds = time.perf_counter() - began
    return result


def _collect(backend: Backend, plan: _Plan, result: GcResult,
             newest: dict[str, tuple[Any, Any]] | None, yields: bool,
             checkpoint: Callable[[], None]) -> None:
    """The batches: each state's candidates, oldest first, deleted (or counted)."""
    size = plan.batch_size
    for state in plan.states:
        after = ("", "")
        while True:
            limit = size
            rows = _candidates(backend, plan, state, after, limit)
            if not rows:
                break
            after = (rows[-1]["created_at"], rows[-1]["run_id"])
            result.examined += len(rows)
            chosen: list[str] = []
            for row in rows:
                ended = row["ended_at"] if row["ended_at"] is not None else row["created_at"]
                if _sortable(ended) >= _sortable(plan.cutoff):
                    result.skipped += 1
                elif newest is not None and _kept(row, newest):
                    result.kept += 1
                else:
                    chosen.append(row["run_id"])
            if chosen:
                held = _batch(backend, plan, chosen, result)
                result.batches += 1
                result.last_batch_seconds = held
                result.longest_batch_seconds = max(result.longest_batch_seconds, held)
                size = _next_size(size, held, plan.batch_size)
                if yields:
                    paused = time.perf_counter()
                    pause = held * YIELD_RATIO
                    if result.last_lock_wait_seconds > CONTENDED_WAIT:
                        pause = max(pause, CONTENDED_PAUSE)
                    checkpoint()
                    time.sleep(max(0.0, pause - (time.perf_counter() - paused)))
            if plan.progress is not None:
                plan.progress(result)
            if len(rows) < limit:
                break


@contextmanager
def _checkpoints_between_batches(backend: Backend, enabled: bool) -> Iterator[Callable[[], None]]:
    """SQLite: while gc runs, its connection copies the write-ahead log back into the file
    between batches, and restarts the log from its beginning, instead of leaving that to
    SQLite's automatic checkpoint.

    Why: every batch rewrites many pages (index pages over and over), and the log only
    starts over once a checkpoint has copied all of it while no reader still reads from it.
    A PASSIVE checkpoint (SQLite's automatic one, at the commit that fills the log) never
    gets there while other processes keep writing — there is always a reader in the log —
    so during a gc of 1,000,000 runs with four writers the log grew past 40 GB and filled
    the disk. So after each batch gc makes a PASSIVE checkpoint (no lock; alone, that is
    all it takes), and once the log is longer than `RESTART_FRAMES` a RESTART checkpoint,
    which waits for the readers of the log to move on and then makes the next writer start
    the log over. It holds the write lock while it works, so it waits for readers at most
    `CHECKPOINT_WAIT` (a short busy timeout), in gc's pause: the log then holds a few
    batches, copied in milliseconds, and a checkpoint that cannot finish in time tries
    again after the next batch. At the end a TRUNCATE checkpoint gives the log's space
    back. The
    connection's own settings are restored after. Yields the checkpoint (a no-op when not
    `enabled`)."""
    if not enabled:
        yield lambda: None
        return
    previous = int(backend.query_value(_AUTOCHECKPOINT))
    timeout_ms = int(backend.query_value(_BUSY_TIMEOUT))
    backend.query(_AUTOCHECKPOINT + "=0")

    def checkpoint(final: bool = False) -> None:
        if not final:
            # a PASSIVE checkpoint first: it holds no lock, and when nobody else writes the
            # log starts over by itself after it; its row says how long the log is
            rows = backend.query(_PASSIVE_CHECKPOINT)
            if not rows or (rows[0].get("log") or 0) <= RESTART_FRAMES:
                return
        backend.query(f"{_BUSY_TIMEOUT}={int(CHECKPOINT_WAIT * 1000)}")
        try:
            # busy (readers stayed, another process checkpoints): a row says so, no error
            backend.query(_FINAL_CHECKPOINT if final else _CHECKPOINT)
        finally:
            backend.query(f"{_BUSY_TIMEOUT}={timeout_ms}")

    try:
        yield checkpoint
        checkpoint(final=True)
    finally:
        with suppress(UetError):  # a connection that is gone has lost the setting anyway
            backend.query(f"{_AUTOCHECKPOINT}={previous}")  # an integer SQLite gave


def _candidates(backend: Backend, plan: _Plan, state: str, after: tuple[str, str],
                limit: int) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"state": state, "cutoff": plan.cutoff, "after_created": after[0],
                              "after_run": after[1], "limit": limit}
    if plan.project_id is None:
        return backend.read("gc_candidates", params)
    return backend.read("gc_candidates_of_project", {**params, "project_id": plan.project_id})


def _candidate_count(backend: Backend, plan: _Plan, state: str) -> int:
    params: dict[str, Any] = {"state": state, "cutoff": plan.cutoff}
    if plan.project_id is None:
        rows = backend.read("gc_count_candidates", params)
    else:
        rows = backend.read("gc_count_candidates_of_project",
                            {**params, "project_id": plan.project_id})
    count: int = rows[0]["n"]
    return count


def _keep_last_bounds(backend: Backend, plan: _Plan) -> dict[str, tuple[Any, Any]]:
    """For each project with at least `keep_last` runs in the selected states: the
    (created_at, run_id) of its keep_last-th newest. Runs at or above it are kept; so are
    all runs of a project not in the map (fewer than keep_last runs, or one that appeared
    after this was read)."""
    assert plan.keep_last is not None
    projects = ([plan.project_id] if plan.project_id is not None
                else [r["project_id"] for r in backend.read("gc_projects")])
    bounds: dict[str, tuple[Any, Any]] = {}
    for project in projects:
        newest: list[tuple[Any, Any]] = []
        for state in plan.states:
            found = backend.read("gc_newest_of_project", {
                "project_id": project, "state": state, "limit": plan.keep_last})
            newest += [(_sortable(r["created_at"]), _sortable(r["run_id"])) for r in found]
        if len(newest) >= plan.keep_last:
            newest.sort(reverse=True)
            bounds[project] = newest[plan.keep_last - 1]
    return bounds


def _kept(row: dict[str, Any], newest: dict[str, tuple[Any, Any]]) -> bool:
    bound = newest.get(row["project_id"])
    return bound is None or (_sortable(row["created_at"]), _sortable(row["run_id"])) >= bound


def _sortable(value: object) -> tuple[int, Any]:
    """A stored value as SQLite orders it (NULL, numbers, text, blobs; text by code point,
    as PostgreSQL's COLLATE "C" does): a value stored past uet's checks (raw SQL) is
    compared, never a TypeError."""
    if value is None:
        return (0, 0)
    if isinstance(value, (int, float)):
        return (1, value)
    if isinstance(value, str):
        return (2, value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return (3, bytes(value))
    return (4, repr(value))  # neither engine stores anything else: last, by its text


def _batch(backend: Backend, plan: _Plan, run_ids: list[str], result: GcResult) -> float:
    """Delete (or, dry, count) the runs of `run_ids` that still qualify, with their records,
    in one write transaction; the seconds it held it (for a dry run: the reads took)."""
    params = {"run_ids": json.dumps(run_ids), "states": json.dumps(list(plan.states)),
              "cutoff": plan.cutoff, "project_id": plan.project_id}
    if plan.dry_run:
        started = time.perf_counter()
        confirmed = [r["run_id"] for r in backend.read("gc_select_runs", params)]
        if confirmed:
            counts = backend.read("gc_count_records", {"run_ids": json.dumps(confirmed)})[0]
            for table in TABLES:
                result.deleted[table] += counts[table]
        result.skipped += len(run_ids) - len(confirmed)
        return time.perf_counter() - started
    counts = dict.fromkeys(TABLES, 0)
    asked = time.perf_counter()
    with backend.transaction() as tx:
        started = time.perf_counter()  # the write lock is held from here (SQLite)
        result.last_lock_wait_seconds = started - asked
        confirmed = [r["run_id"] for r in tx.rows("gc_lock_runs", params)]
        if confirmed:
            batch = {"run_ids": json.dumps(confirmed)}
            # first: the trail's seq must never be handed out again (followers' cursors)
            tx.run("gc_raise_deleted_seq", batch)
            for table in TABLES:
                counts[table] = tx.run(_DELETES[table], batch).rowcount
    held = time.perf_counter() - started
    for table in TABLES:  # committed: now they count
        result.deleted[table] += counts[table]
    result.skipped += len(run_ids) - len(confirmed)
    return held


def _next_size(size: int, held: float, most: int) -> int:
    """The next batch's size: halved after a batch that held the lock past BATCH_SECONDS
    (down to a sixteenth of `most`: a cost that does not shrink with the batch, such as a
    slow commit, must not shrink it to one run), grown back (doubling, up to `most`) after
    one that took less than a quarter of it."""
    if held > BATCH_SECONDS:
        return max(1, most // 16, size // 2)
    if held < BATCH_SECONDS / 4:
        return min(most, size * 2)
    return size


# -- space -----------------------------------------------------------------------------

# SQLite's bookkeeping statements, fixed text (no caller input)
_AUTO_VACUUM = "PRAGMA auto_vacuum"
_PAGE_COUNT = "PRAGMA page_count"
_PAGE_SIZE = "PRAGMA page_size"
_FREELIST = "PRAGMA freelist_count"
_INCREMENTAL = f"PRAGMA incremental_vacuum({VACUUM_STEP_PAGES})"
_VACUUM = "VACUUM"
_AUTOCHECKPOINT = "PRAGMA wal_autocheckpoint"
_PASSIVE_CHECKPOINT = "PRAGMA wal_checkpoint(PASSIVE)"
_CHECKPOINT = "PRAGMA wal_checkpoint(RESTART)"
_FINAL_CHECKPOINT = "PRAGMA wal_checkpoint(TRUNCATE)"
_BUSY_TIMEOUT = "PRAGMA busy_timeout"
_AUTO_VACUUM_MODES = {0: "none", 1: "full", 2: "incremental"}


def _reclaim(db: Ledger, vacuum: bool) -> dict[str, Any] | None:
    """Give freed space back where that is gc's job; what was done, or None (nothing to
    report: PostgreSQL or an in-memory ledger without `vacuum`)."""
    backend = db.backend
    if db.engine != "sqlite":
        if not vacuum:
            return None
        return {"mode": "autovacuum", "note": "PostgreSQL's autovacuum reclaims the space of "
                "deleted rows; uet runs no VACUUM on it"}
    if db.db_path == ":memory:":
        return None
    page_size = backend.query_value(_PAGE_SIZE)
    mode = _AUTO_VACUUM_MODES.get(backend.query_value(_AUTO_VACUUM), "none")
    free = backend.query_value(_FREELIST)
    # after the deletes: the file's size, and how much of it is free pages
    report: dict[str, Any] = {"auto_vacuum": mode,
                              "file_bytes": backend.query_value(_PAGE_COUNT) * page_size,
                              "free_bytes": free * page_size}
    if mode == "incremental":
        report["mode"] = "incremental"
        while free > 0:
            with backend.transaction() as tx:
                started = time.perf_counter()
                tx.execute(_INCREMENTAL).fetchall()
            time.sleep(time.perf_counter() - started)  # writers get the lock in between
            left = backend.query_value(_FREELIST)
            if left >= free:
                break
            free = left
    elif vacuum and free == 0:
        report["mode"] = "none"
        report["note"] = "no free pages: the file is as small as it gets; no VACUUM was run"
        return report
    elif vacuum:
        report["mode"] = "full"
        backend.query(_VACUUM)  # holds the write lock until the file is rewritten
    else:
        report["mode"] = "none"
        report["note"] = ("free pages stay in the file and are reused by new records; "
                          "vacuum=True (uet gc --vacuum) shrinks the file with a full VACUUM, "
                          "which blocks writers while it runs")
        return report
    report["file_bytes_after"] = backend.query_value(_PAGE_COUNT) * page_size
    report["free_bytes_after"] = backend.query_value(_FREELIST) * page_size
    return report


__all__ = ["DEFAULT_BATCH_SIZE", "FINISHED_STATES", "GcResult", "TABLES", "cutoff_of", "gc",
           "states_of"]

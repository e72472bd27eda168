"""The `Database` facade: the seed API (dict in, dict out), typed transitions, the event trail.

Every write goes through one transaction helper of the backend; the audit event of a state
change is written inside the same transaction as the change.
"""

from __future__ import annotations

import os
import threading
import weakref
from contextlib import contextmanager
from typing import Any, Callable, ContextManager, Iterable, Iterator, Mapping

from uet.errors import AlreadyExistsError, AmbiguousIdError, NotFoundError, ValidationError
from uet.errors import ConstraintViolation
from uet.state import tables
from uet.state.backends import (DEFAULT_BUSY_TIMEOUT, DURABILITY, MEMORY, Backend,
                                Transaction, open_backend, peek_version)
from uet.state.backends.common import one_row
from uet.state.events import RESERVED_EVENT_TYPES, RUN_CREATED, STEP_ATTEMPT_CREATED
from uet.state.instances import process_instance
from uet.state.locations import check_location
from uet.state.names import (DEFAULT_PATH, ENV_VAR, display_name, is_postgres_url,
                             resolve_path)
from uet.state.retention import DEFAULT_BATCH_SIZE, GcResult, gc as collect_garbage
from uet.state.statements import count_runs_sql, list_runs_sql
from uet.state.tables import RUN_EVENTS, RUNS, STEP_ATTEMPTS, Table
from uet.state.transitions import (change_row, check_incarnation, check_worker_can_work,
                                   record_event, redrive_run_row, stamp)

# names other modules read from here (kept for callers of earlier releases)
__all__ = ["Database", "get_db", "init_db", "DEFAULT_PATH", "ENV_VAR", "MEMORY", "resolve_path", "display_name",
           "peek_version", "is_postgres_url"]


def _check_int(value: object, what: str, minimum: int) -> int:
    if (not isinstance(value, int) or isinstance(value, bool)
            or not minimum <= value <= tables.INT_MAX):
        raise ValidationError(f"{what} must be an integer from {minimum} to "
                              f"{tables.INT_MAX}, got {value!r}", field=what)
    return value


class Database:
    """One uet ledger (SQLite file, ':memory:', or PostgreSQL), safe to share between
    threads.

    Args:
        db_path: file path (its folder is created), ':memory:', a postgresql:// URL (the
            ledger lives in the schema its search_path selects; needs `uet[postgres]`), or
            None for $UET_DATABASE or `.ledger/framework.db`.
        durability: SQLite only: "normal" (WAL + synchronous NORMAL: no committed write is
            lost when the process dies) or "full" (synchronous FULL: also survives power
            loss, slower). On PostgreSQL the server's synchronous_commit decides.
        busy_timeout: seconds a write waits for another writer's lock (another process,
            or on PostgreSQL also another thread or a free pooled connection) before
            raising DatabaseBusyError.
        read_only: open an existing ledger for reading only: nothing is created, migrated
            or switched to WAL, and every write raises StorageError (for inspection).

    Opening brings the ledger's schema up to date (adopting a seed ledger in place); a newer
    schema raises SchemaVersionError and a file that is not a ledger NotALedgerError, both
    without changing the file.
    """

    def __init__(self, db_path: str | os.PathLike[str] | None = None, *,
                 durability: str = "normal",
                 busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
                 read_only: bool = False) -> None:
        if not isinstance(durability, str) or durability not in DURABILITY:
            raise ValidationError(f"durability must be one of {', '.join(DURABILITY)}, "
                                  f"got {durability!r}", field="durability")
        if (not isinstance(busy_timeout, (int, float)) or isinstance(busy_timeout, bool)
                or not busy_timeout >= 0):
            raise ValidationError(f"busy_timeout must be a number of seconds >= 0, "
                                  f"got {busy_timeout!r}", field="busy_timeout")
        self.db_path = resolve_path(db_path)
        check_location(self.db_path)  # another database's URL, a device: refused up front
        # The absolute path, so that a later chdir (or a forked child's) reopens this file.
        self._file = (self.db_path if self.db_path == MEMORY or is_postgres_url(self.db_path)
                      else os.path.abspath(self.db_path))
        self.durability = durability
        self.busy_timeout = float(busy_timeout)
        self.read_only = bool(read_only)
        self._fences = threading.local()  # the fence of each thread (`fenced`)
        self._fenced_blocks = 0  # open `fenced` blocks of all threads (under _fence_lock)
        self._fence_lock = threading.Lock()
        self._on_begin = self._fence_hook()
        self._backend = self._open()

    def _open(self) -> Backend:
        backend = open_backend(self._file, durability=self.durability,
                               busy_timeout=self.busy_timeout, read_only=self.read_only)
        try:
            if self.read_only:
                backend.check_current()
            else:
                backend.migrate()
        except BaseException:
            backend.close()
            raise
        backend.on_begin = self._on_begin if self._fenced_blocks else None
        return backend

    def _fence_hook(self) -> Callable[[Transaction], None]:
        """The backend's `on_begin` while a fence is up. It holds its Database weakly: the
        backend must not keep the Database alive (one dropped without close() is then freed
        at once, its connections and transaction with it)."""
        check = weakref.WeakMethod(self._check_fence)

        def on_begin(tx: Transaction) -> None:
            method = check()
            if method is not None:
                method(tx)
        return on_begin

    @contextmanager
    def fenced(self, worker_id: str, incarnation: str) -> Iterator["Database"]:
        """A block whose writes, made by the calling thread, are writes of `incarnation` of
        worker `worker_id`: each write transaction (every call, every `atomic()` block)
        first locks the worker's row and goes on only while that incarnation holds the id
        and is not TERMINATED, else raises StaleWorkerError and writes nothing. A process
        that was paused past its lease and reaped, or replaced under its id, thus cannot
        change what its successor now owns. Enter it once the worker is registered (and in
        each thread that works for it); other threads are not fenced; reads never are."""
        fence = (tables.text(worker_id, "worker_id"), tables.text(incarnation, "incarnation"))
        previous = getattr(self._fences, "fence", None)
        self._fences.fence = fence
        # the check runs only while some thread is fenced: other writes pay nothing for it
        with self._fence_lock:
            self._fenced_blocks += 1
            self._backend.on_begin = self._on_begin
        try:
            yield self
        finally:
            self._fences.fence = previous
            with self._fence_lock:
                self._fenced_blocks -= 1
                if not self._fenced_blocks:
                    self._backend.on_begin = None

    def _check_fence(self, tx: Transaction) -> None:
        fence = getattr(self._fences, "fence", None)
        if fence is not None:
            found = tx.rows("lock_worker", (fence[0],))
            check_incarnation(found[0] if found else None, *fence)

    @property
    def backend(self) -> Backend:
        """The engine under this ledger (for the ledger's own modules: the V2 classes, the
        recovery and compatibility layers); it implements `uet.state.backends.Backend`."""
        return self._backend

    @property
    def engine(self) -> str:
        """The backend in use: "sqlite" or "postgresql"."""
        return self._backend.engine

    # -- life cycle ----------------------------------------------------------------------

    def connect(self) -> "Database":
        """Reopen a closed instance (the seed's API); a no-op on an open one."""
        if self._backend.closed:
            self._backend = self._open()
        return self

    def close(self) -> None:
        """Close the connection. Later calls raise StorageError until `connect()`."""
        self._backend.close()

    @property
    def closed(self) -> bool:
        """Whether `close()` was called (and `connect()` not since)."""
        return self._backend.closed

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Database({display_name(self.db_path)!r})"

    def atomic(self) -> "ContextManager[Database]":
        """A block whose ledger calls commit together or not at all.

        Every call this thread makes inside the block — on this Database and on the
        `WorkerLifecycle`, `PatchLedger` and `GateLedger` built on it — joins one
        transaction, committed when the outermost block ends. An exception that leaves the
        block rolls all of it back (the events the calls wrote included) and propagates.
        Blocks nest: an inner block is a savepoint, so an exception caught outside it undoes
        only the inner block; each call inside a block is such a savepoint too, so a call
        that raises leaves nothing behind. Other threads and processes wait for the block
        as for any writer (up to `busy_timeout`), so keep it short: no waiting on tools or
        people inside it.

            with db.atomic():
                db.transition_step_attempt(step_k, "succeeded", exit_code=0)
                patches.record_patch(...)
                db.create_step_attempt({"run_id": run_id, "sequence": k + 1, ...})
        """
        return _Atomic(self)

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Call `callback` (no arguments) once the ledger's writes made so far by this thread
        are committed: at the end of the outermost `atomic()` block, or at once outside one.
        A block (or nested block) that rolls back drops the callbacks registered inside it.
        Callbacks run in registration order, after the write lock is released; an exception
        from one propagates to the code that ended the block (the commit stands)."""
        if not callable(callback):
            raise ValidationError(f"on_commit needs a callable, got {callback!r}",
                                  field="callback")
        if self._backend.in_transaction:
            self._backend.after_commit(callback)
        else:
            callback()

    @property
    def in_atomic(self) -> bool:
        """Whether the calling thread is inside an `atomic()` block of this ledger."""
        return self._backend.in_transaction

    def schema_version(self) -> int:
        """The schema version recorded in the ledger."""
        version: int = self._backend.query_value("SELECT max(version) FROM schema_migrations")
        return version

    def migrate(self) -> tuple[int | None, int]:
        """Apply pending migrations; (version before, version after). Opening already does."""
        before = self.schema_version()
        _, after = self._backend.migrate()
        return before, after

    # -- runs ----------------------------------------------------------------------------

    def create_run(self, run_data: Mapping[str, Any]) -> str:
        """Record a new run; returns its run_id.

        Required: project_id, phase_id. Optional: run_id (a ULID is generated), created_at
        (now), workstream_id, execution_request_id, state ('pending', or 'running' for work
        that starts at once), metadata (a JSON-serialisable dict), and the other run columns.
        Writes a `run.created` event in the same transaction.
        """
        row = tables.prepare_insert(RUNS, run_data)
        state = row["state"]
        if state not in RUNS.state_machine.initial:
            raise ValidationError(
                f"a run is created {' or '.join(RUNS.state_machine.initial)}, not {state}; create "
                "it pending and move it on with transition_run", field="state")
        stamp(RUNS, state, row, row)
        try:
            with self._backend.transaction() as tx:
                tx.run("insert_run", row)
                record_event(tx, row["run_id"], RUN_CREATED, {"state": state})
        except ConstraintViolation as exc:
            raise self._explain(exc, RUNS, row) from None
        run_id: str = row["run_id"]
        return run_id

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        """The run as a dict (metadata decoded), or None."""
        rows = self._backend.read("get_run", (tables.text(run_id, "run_id"),))
        return rows[0] if rows else None

    def list_runs(self, filters: Mapping[str, Any] | None = None,
                  limit: int | None = 100, *, since: object = None,
                  before: tuple[str, str] | None = None) -> list[dict[str, Any]]:
        """Runs matching every equality filter (a None value matches NULL), newest first.

        Filters accept run columns only (anything else raises ValidationError naming it);
        `since` (a timestamp) keeps runs created at or after it; `before` (the `created_at`
        and `run_id` of the last run of a page) keeps the runs that come after it in this
        order — the next page, read from an index however deep it is; `limit` None returns
        every match.
        """
        conditions, params = self._run_conditions(filters, since)
        if limit is not None:
            _check_int(limit, "limit", 1)
        if before is not None:
            if (not isinstance(before, (tuple, list)) or len(before) != 2
                    or not all(isinstance(part, str) for part in before)):
                raise ValidationError("before must be the (created_at, run_id) of the last "
                                      "run of the previous page", field="before")
            params += [tables.text(before[0], "before"), tables.text(before[1], "before")]
        sql = list_runs_sql(conditions, since is not None, self._backend.placeholder,
                            before is not None)
        params.append(self._backend.no_limit if limit is None else limit)
        return self._backend.query(sql, params)

    def count_runs(self, filters: Mapping[str, Any] | None = None, *, since: object = None,
                   cap: int = 10_000) -> int:
        """How many runs match (filters and `since` as in `list_runs`), counting no further
        than `cap`: a result equal to `cap` means "cap or more". The cost is at most `cap`
        index entries, however large the ledger."""
        _check_int(cap, "cap", 1)
        conditions, params = self._run_conditions(filters, since)
        sql = count_runs_sql(conditions, since is not None, self._backend.placeholder)
        count: int = self._backend.query(sql, [*params, cap])[0]["n"]
        return count

    def _run_conditions(self, filters: Mapping[str, Any] | None,
                        since: object) -> tuple[tuple[tuple[str, bool], ...], list[Any]]:
        conditions = tables.prepare_filters(RUNS, filters)
        params = [value for _, value in conditions if value is not None]
        if since is not None:
            params.append(tables.encode_value(RUNS, RUNS.by_name["created_at"], since,
                                              filtering=True))
        return tuple((name, value is None) for name, value in conditions), params

    def resolve_run_id(self, prefix: str) -> str:
        """The run id that `prefix` starts (or is); NotFoundError when none does,
        AmbiguousIdError (listing them) when several do."""
        prefix = tables.text(prefix, "run_id")
        # a range over the primary key index: [prefix, prefix + highest code point)
        matches: list[str] = [r["run_id"] for r in self._backend.read(
            "run_ids_with_prefix", (prefix, prefix + "\U0010ffff"))]
        if not matches and prefix != prefix.upper():  # ULIDs are case-insensitive
            return self.resolve_run_id(prefix.upper())
        if prefix in matches:
            return prefix
        if not matches:
            raise NotFoundError("run", prefix)
        if len(matches) > 1:
            raise AmbiguousIdError("run", prefix, matches)
        return matches[0]

    def doctor(self) -> dict[str, Any]:
        """Health facts of the ledger: path, schema version, journal mode, synchronous,
        foreign keys, `PRAGMA integrity_check`, and the row count of every table."""
        return self._backend.diagnostics()

    def update_run(self, run_id: str, updates: Mapping[str, Any]) -> dict[str, Any]:
        """Change run columns; returns the updated run.

        Known columns only; run_id and created_at never change. A `state` change must be a
        legal transition and writes its `run.state_changed` event in the same transaction,
        with the other fields the call changed under `changed`; without one, a call that
        changes fields writes `run.updated` (`{"changed": {field: {"from", "to"}}}`, long
        values abbreviated). Fields given with the value they hold change nothing, and a call
        that changes nothing writes no event.
        """
        run_id = tables.text(run_id, "run_id")
        changes = tables.prepare_update(RUNS, run_id, updates)
        return self._change(RUNS, run_id, changes, expected=None)

    def transition_run(self, run_id: str, to_state: str, *, expected: str | None = None,
                       exit_code: int | None = None,
                       error_message: str | None = None) -> dict[str, Any]:
        """Move a run to `to_state` under its state machine; returns the updated run.

        `expected` is compare-and-set: if the run is no longer in that state the call raises
        ConcurrentUpdateError and changes nothing. started_at/ended_at are stamped on entering
        running/terminal states (unless already set); the event is written atomically.
        """
        run_id = tables.text(run_id, "run_id")
        changes = tables.prepare_update(RUNS, run_id, {"state": to_state, **_given(
            exit_code=exit_code, error_message=error_message)})
        return self._change(RUNS, run_id, changes, expected=expected)

    def redrive_run(self, run_id: str, reason: str, *,
                    expected: str | None = None) -> dict[str, Any]:
        """Send a run back to pending to run again under the same id (a re-drive): a failed
        or canceled run (an explicit resume), or a running one whose owner is gone
        (recovery re-queues it). Returns the run.

        `ended_at`, `exit_code`, `error_message` and `worker_id` are cleared; the
        `run.state_changed` event (with `redrive: true`) keeps their previous values under
        `cleared`, and `reason`. `started_at` keeps the first start. No ordinary transition
        makes these moves; a pending, succeeded or quarantined run raises
        InvalidTransitionError. Step attempts of the run still running are failed as
        interrupted, in the same transaction. `expected` is compare-and-set, as for
        `transition_run`.
        """
        run_id = tables.text(run_id, "run_id")
        reason = tables.text(reason, "reason")
        with self._backend.transaction() as tx:
            return redrive_run_row(tx, run_id, reason, expected=expected)

    def delete_run(self, run_id: str) -> None:
        """Remove the run with its step attempts and events, in one transaction."""
        run_id = tables.text(run_id, "run_id")
        with self._backend.transaction() as tx:
            # keep the trail's seq from ever being handed out again (followers' cursors)
            tx.run("delete_run_floor", (run_id,))
            if tx.run("delete_run", (run_id,)).rowcount == 0:
                raise NotFoundError("run", run_id)

    def gc(self, older_than: object, *, states: object = None, project_id: str | None = None,
           keep_last: int | None = None, dry_run: bool = False,
           batch_size: int = DEFAULT_BATCH_SIZE, vacuum: bool = False,
           progress: Callable[[GcResult], None] | None = None) -> GcResult:
        """Delete finished runs that ended before `older_than`, with everything that belongs
        to them (step attempts, events, patches, their ledger entries, gates and the gates'
        dependencies), in short batches; returns a `GcResult` (rows deleted per table).

        `older_than`: a timedelta, an age text ('30d', '12h', '15m', '2w') or a timestamp (a
        datetime or ISO text, not in the future); a run that ended before it goes (one
        without ended_at, by created_at). `states`: the finished states to delete (names or
        one comma-separated text; default all of them: succeeded, failed, quarantined,
        canceled); pending and running runs are never deleted. `project_id`: only that
        project's runs. `keep_last`: keep the newest N runs (by created_at) of the selected
        states in each project (in `project_id`'s), whatever their age. `dry_run`: count
        only, change nothing (works on a read-only ledger). `batch_size`: runs per batch at
        most, each batch one write transaction (shrunk while batches take over 50 ms).
        `vacuum`: SQLite only, then rewrite the file with VACUUM, which blocks writers while
        it runs (a ledger in auto_vacuum=INCREMENTAL mode gets its free pages back in small
        steps without it). `progress`: called with the result so far after each batch.

        A run a worker still names as its current run is left for a later call. Killed at
        any moment, whole batches are deleted or not at all; a new call goes on. The trail's
        `seq` is never reused. Bad arguments raise ValidationError naming the field, before
        anything is read. See `uet.state.retention`.
        """
        return collect_garbage(self, older_than, states=states, project_id=project_id,
                               keep_last=keep_last, dry_run=dry_run, batch_size=batch_size,
                               vacuum=vacuum, progress=progress)

    # -- step attempts -------------------------------------------------------------------

    def create_step_attempt(self, step_data: Mapping[str, Any]) -> str:
        """Record a step attempt (state running); returns its step_attempt_id.

        Required: run_id (an existing run), sequence, tool_id. Optional: step_attempt_id
        (generated), started_at (now), attempt (numbered 1, 2, ... per sequence when
        omitted), and the other step columns. Writes `step_attempt.created`.
        """
        row = tables.prepare_insert(STEP_ATTEMPTS, step_data)
        if row["state"] not in STEP_ATTEMPTS.state_machine.initial:
            raise ValidationError(
                f"a step attempt is created running, not {row['state']}; move it on with "
                "transition_step_attempt", field="state")
        try:
            with self._backend.transaction() as tx:
                if row["worker_id"] is not None:
                    check_worker_can_work(tx, row["worker_id"])
                # the run's row first: attempts of one run are numbered one at a time
                tx.rows("lock_run", (row["run_id"],))
                attempt = one_row(tx.run("insert_step_attempt", row))[0]
                record_event(tx, row["run_id"], STEP_ATTEMPT_CREATED, {
                    "step_attempt_id": row["step_attempt_id"], "sequence": row["sequence"],
                    "attempt": attempt, "tool_id": row["tool_id"], "state": row["state"]})
        except ConstraintViolation as exc:
            raise self._explain(exc, STEP_ATTEMPTS, row) from None
        step_attempt_id: str = row["step_attempt_id"]
        return step_attempt_id

    def get_step_attempt(self, step_attempt_id: str) -> dict[str, Any] | None:
        """The step attempt as a dict, or None."""
        rows = self._backend.read("get_step_attempt",
                                  (tables.text(step_attempt_id, "step_attempt_id"),))
        return rows[0] if rows else None

    def list_step_attempts(self, run_id: str) -> list[dict[str, Any]]:
        """A run's step attempts by sequence, then attempt number."""
        return self._backend.read("list_step_attempts", (tables.text(run_id, "run_id"),))

    def update_step_attempt(self, step_attempt_id: str,
                            updates: Mapping[str, Any]) -> dict[str, Any]:
        """Change step attempt columns (state, ended_at, exit_code, output_patch_id,
        error_log, ...); a state change must be legal and writes its event atomically.

        What the call changed is recorded as `update_run` records it: under `changed` in the
        `step_attempt.state_changed` event, else in a `step_attempt.updated` event (both
        name the step_attempt_id); a call that changes nothing writes no event.
        """
        step_attempt_id = tables.text(step_attempt_id, "step_attempt_id")
        changes = tables.prepare_update(STEP_ATTEMPTS, step_attempt_id, updates)
        return self._change(STEP_ATTEMPTS, step_attempt_id, changes, expected=None)

    def transition_step_attempt(self, step_attempt_id: str, to_state: str, *,
                                expected: str | None = None, exit_code: int | None = None,
                                error_log: str | None = None,
                                output_patch_id: str | None = None) -> dict[str, Any]:
        """Move a step attempt to `to_state`; returns it. `expected` is compare-and-set."""
        step_attempt_id = tables.text(step_attempt_id, "step_attempt_id")
        changes = tables.prepare_update(STEP_ATTEMPTS, step_attempt_id, {
            "state": to_state, **_given(exit_code=exit_code, error_log=error_log,
                                        output_patch_id=output_patch_id)})
        return self._change(STEP_ATTEMPTS, step_attempt_id, changes, expected=expected)

    # -- events --------------------------------------------------------------------------

    def create_event(self, event_data: Mapping[str, Any]) -> str:
        """Append an event to a run's trail; returns its event_id.

        Required: run_id (an existing run), event_type. Optional: event_id, timestamp (now),
        data (a JSON-serialisable dict). The trail's order is the `seq` the ledger assigns.
        """
        row = tables.prepare_insert(RUN_EVENTS, event_data)
        if row["event_type"] in RESERVED_EVENT_TYPES:
            raise ValidationError(
                f"event type {row['event_type']!r} is written by the ledger itself when the "
                "record changes; change the record instead", field="event_type")
        try:
            with self._backend.transaction() as tx:
                tx.run("insert_event", row)
        except ConstraintViolation as exc:
            raise self._explain(exc, RUN_EVENTS, row) from None
        event_id: str = row["event_id"]
        return event_id

    def create_ledger_events(self, events: Iterable[tuple[str, Mapping[str, Any]]]
                             ) -> list[str]:
        """Append events that belong to no run (the master plan changed, ...) to the trail,
        all in one transaction; returns their event_ids. Each is (event_type, data): the
        type any name but the ledger's own (RESERVED_EVENT_TYPES), the data a
        JSON-serialisable dict. `events_since` and `uet events` show them (run_id None)."""
        rows = []
        for event_type, data in events:
            row = tables.prepare_insert(RUN_EVENTS, {"run_id": "-", "event_type": event_type,
                                                     "data": data})
            if row["event_type"] in RESERVED_EVENT_TYPES:
                raise ValidationError(
                    f"event type {row['event_type']!r} is written by the ledger itself when "
                    "the record changes; change the record instead", field="event_type")
            rows.append({**row, "run_id": None})
        with self._backend.transaction() as tx:
            for row in rows:
                tx.run("insert_event", row)
        return [row["event_id"] for row in rows]

    def list_events(self, run_id: str) -> list[dict[str, Any]]:
        """A run's events in the order they were recorded (by `seq`)."""
        return self._backend.read("list_events", (tables.text(run_id, "run_id"),))

    def events_since(self, cursor: int = 0, *, run_id: str | None = None,
                     limit: int = 1000) -> list[dict[str, Any]]:
        """Events with `seq` greater than `cursor`, in order: pass the last `seq` you saw to
        follow the trail (from any process)."""
        _check_int(cursor, "cursor", 0)
        _check_int(limit, "limit", 1)
        if run_id is None:
            return self._backend.read("events_since", (cursor, limit))
        return self._backend.read("events_since_run",
                                  (tables.text(run_id, "run_id"), cursor, limit))

    def latest_event_seq(self) -> int:
        """The `seq` of the newest event in the trail (0 when empty): the cursor from which
        `events_since` / `follow_events` give only what happens from now on."""
        seq: int = self._backend.read("latest_event_seq")[0]["seq"]
        return seq

    def follow_events(self, cursor: int = 0, *, run_id: str | None = None,
                      poll_interval: float = 0.2, batch: int = 1000) -> Iterator[dict[str, Any]]:
        """Every event after `cursor`, in `seq` order, then each new one as other threads or
        processes commit it, without end (close the generator to stop).

        On PostgreSQL a LISTEN connection wakes the follower as soon as events commit
        (`poll_interval` is then only the longest wait between reads); on SQLite the trail
        is read again every `poll_interval` seconds. Either way the trail itself is read by
        cursor, so no event is ever skipped or repeated.
        """
        _check_int(cursor, "cursor", 0)
        _check_int(batch, "batch", 1)
        if run_id is not None:
            run_id = tables.text(run_id, "run_id")
        if (not isinstance(poll_interval, (int, float)) or isinstance(poll_interval, bool)
                or not 0 < poll_interval <= 3600):
            raise ValidationError(f"poll_interval must be a number of seconds in (0, 3600], "
                                  f"got {poll_interval!r}", field="poll_interval")
        return self._follow(cursor, run_id, float(poll_interval), batch)

    def _follow(self, cursor: int, run_id: str | None, poll_interval: float,
                batch: int) -> Iterator[dict[str, Any]]:
        with self._backend.listen() as wait:  # listening before the first read
            while True:
                events = self.events_since(cursor, run_id=run_id, limit=batch)
                for event in events:
                    cursor = event["seq"]
                    yield event
                if len(events) < batch:
                    wait(poll_interval)

    # -- backup, export, import (uet.state.portable) ------------------------------------

    def backup(self, dest: str | os.PathLike[str], *, force: bool = False) -> dict[str, Any]:
        """A consistent copy of this ledger at `dest` while writers go on. SQLite: copied
        (online backup API, one step), checked (integrity_check, foreign_key_check) and
        renamed into place — never a half copy at `dest`; an existing `dest` is refused
        unless `force`. PostgreSQL: writes nothing and returns the `pg_dump` command that
        copies the ledger's schema (no password in it). Returns what was done."""
        from uet.state import portable
        return portable.backup(self, dest, force=force)

    def export_jsonl(self, out: Any, *, since: object = None,
                     project_id: str | None = None) -> dict[str, Any]:
        """Write the ledger (or the runs created since `since` / of `project_id`, with what
        belongs to them) to the text stream `out` as JSON lines, from one snapshot, in
        constant memory; the format is `uet.state.portable`'s. Returns the counts."""
        from uet.state import portable
        return portable.export_jsonl(self, out, since=since, project_id=project_id)

    def import_jsonl(self, source: Any, *, skip_existing: bool = False,
                     name: str | None = None) -> dict[str, Any]:
        """Load an export file (a path, "-" for stdin, or a binary stream; `name` is what
        messages call it) into this ledger, ids kept: checked whole before anything is
        written, then written in short batches (see `uet.state.portable.import_jsonl`).
        Returns what was imported and skipped."""
        from uet.state import portable
        return portable.import_jsonl(self, source, skip_existing=skip_existing, name=name)

    # -- internals -----------------------------------------------------------------------

    def _change(self, table: Table, entity_id: str, changes: dict[str, Any], *,
                expected: object) -> dict[str, Any]:
        with self._backend.transaction() as tx:
            return change_row(tx, table, entity_id, changes, expected=expected,
                              record_changes=True)

    @staticmethod
    def _explain(exc: ConstraintViolation, table: Table, row: Mapping[str, Any]) -> Exception:
        """Turn a database constraint failure into a message about the caller's input."""
        key_id = row[table.key]
        if exc.kind == "unique" and exc.table == table.name and exc.columns == (table.key,):
            return AlreadyExistsError(table.entity, key_id)
        if exc.kind == "unique" and table is STEP_ATTEMPTS:
            return ValidationError(
                f"run {row['run_id']!r} already has attempt {row['attempt']} of step sequence "
                f"{row['sequence']}; omit attempt to number it automatically", field="attempt")
        if exc.kind == "foreign_key":
            return ValidationError(
                f"{table.entity} {key_id!r} refers to run {row['run_id']!r}, which does not "
                "exist", field="run_id")
        return ValidationError(f"{table.entity} {key_id!r} was refused by the ledger: {exc}")


def get_db(db_path: str | os.PathLike[str] | None = None, *, durability: str | None = None,
           busy_timeout: float | None = None) -> Database:
    """The process-wide Database for `db_path` (default: $UET_DATABASE, else
    `.ledger/framework.db`), created on first use; safe to call from many threads.

    Each database has its own instance: a different path never returns another's. Options
    (durability, busy_timeout) apply on creation; asking for different ones later raises.
    """
    return process_instance(Database, db_path, durability=durability,
                            busy_timeout=busy_timeout)


def init_db(db_path: str | os.PathLike[str] | None = None, *, durability: str = "normal",
            busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> Database:
    """A new Database instance (schema created or upgraded) on every call."""
    return Database(db_path, durability=durability, busy_timeout=busy_timeout)


class _Atomic:
    """The context manager `Database.atomic()` returns: the backend's transaction, entered
    and left as it is, yielding the Database."""

    __slots__ = ("_db", "_transaction")

    def __init__(self, db: Database) -> None:
        self._db = db

    def __enter__(self) -> Database:
        self._transaction = self._db.backend.transaction()
        self._transaction.__enter__()
        return self._db

    def __exit__(self, *exc_info: Any) -> Any:
        return self._transaction.__exit__(*exc_info)


def _given(**values: object) -> dict[str, object]:
    return {name: value for name, value in values.items() if value is not None}

"""Deliberately broken builds of uet, made by patching the real code in one process.

Each mutant is a bug a ledger could plausibly ship with. `--self-test` runs the checks named
in CAUGHT_BY against each one and requires a non-zero figure: a check never seen failing
proves nothing. Child processes apply the mutant named in $UET_RELIABILITY_MUTANT.
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager


def deferred_begin() -> None:
    """Transactions start with a plain BEGIN: the read-then-write upgrade fails with
    "database is locked" under concurrency instead of waiting."""
    from uet.state.backends import sqlite as m

    @contextmanager
    def transaction(self):
        with self._lock:
            conn = self.connect()
            conn.execute("BEGIN")
            try:
                yield m.SQLiteTx(conn)
                conn.execute("COMMIT")
            except BaseException as exc:
                m.rollback(conn)
                if isinstance(exc, sqlite3.Error):
                    raise m.translate_error(exc, self.path, self.busy_timeout) from None
                raise
    m.SQLiteBackend.transaction = transaction


def split_event() -> None:
    """A state change commits in one transaction and its event in a second one."""
    from uet.state import db as m
    from uet.state import transitions
    original = transitions.record_event

    def _change(self, table, entity_id, changes, *, expected):
        pending = []
        transitions.record_event = lambda tx, *args: pending.append(args)
        try:
            with self._backend.transaction() as tx:
                row = transitions.change_row(tx, table, entity_id, changes, expected=expected)
        finally:
            transitions.record_event = original
        with self._backend.transaction() as tx:
            for args in pending:
                original(tx, *args)
        return row
    m.Database._change = _change


def lazy_commit() -> None:
    """A write returns before its COMMIT, which waits for the next write (the classic
    "forgot to commit" of Python's implicit transactions)."""
    from uet.state.backends import sqlite as m

    @contextmanager
    def transaction(self):
        with self._lock:
            conn = self.connect()
            if conn.in_transaction:
                conn.execute("COMMIT")
            conn.execute("BEGIN IMMEDIATE")
            yield m.SQLiteTx(conn)
    m.SQLiteBackend.transaction = transaction


def commit_on_error() -> None:
    """The transaction helper commits in `finally` (also when the block raised), and
    create_event refuses a reserved event type only after inserting it."""
    from uet.errors import ValidationError
    from uet.state import db, tables
    from uet.state.backends import sqlite as m
    from uet.state.events import RESERVED_EVENT_TYPES

    @contextmanager
    def transaction(self):
        with self._lock:
            conn = self.connect()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield m.SQLiteTx(conn)
            finally:
                conn.execute("COMMIT")
    m.SQLiteBackend.transaction = transaction

    def create_event(self, event_data):
        row = tables.prepare_insert(tables.RUN_EVENTS, event_data)
        with self._backend.transaction() as tx:
            tx.run("insert_event", row)
            if row["event_type"] in RESERVED_EVENT_TYPES:
                raise ValidationError(f"event type {row['event_type']!r} is reserved",
                                      field="event_type")
        return row["event_id"]
    db.Database.create_event = create_event


def no_cas() -> None:
    """Transitions check the state they read before the write transaction, then write
    unconditionally: two racers both see `pending` and both win."""
    from uet.errors import ConcurrentUpdateError, NotFoundError
    from uet.state import db as m
    from uet.state.statements import update_sql
    from uet.state.transitions import record_event

    def _change(self, table, entity_id, changes, *, expected):
        found = self._backend.read(f"get_{table.entity}", (entity_id,))
        if not found:
            raise NotFoundError(table.entity, entity_id)
        old = found[0]["state"]
        if expected is not None and old != expected:
            raise ConcurrentUpdateError(table.entity, entity_id, expected, old)
        new = changes.get("state")
        if new is not None:
            table.machine.check_transition(entity_id, old, new)
        columns = tuple(name for name in table.names if name in changes)
        with self._backend.transaction() as tx:
            row = tx.query(update_sql(table, columns, tx.placeholder),
                           [changes[name] for name in columns] + [entity_id])[0]
            if new is not None:
                record_event(tx, row["run_id"], f"{table.entity}.state_changed",
                               {"from": old, "to": new})
        return row
    m.Database._change = _change


def no_whitelist() -> None:
    """create_run passes unknown keys through and builds its INSERT from the caller's keys."""
    from uet.state import db, tables

    def create_run(self, run_data):
        data = dict(run_data) if isinstance(run_data, dict) else run_data
        extra = {k: v for k, v in data.items() if k not in tables.RUNS.by_name} \
            if isinstance(data, dict) else {}
        row = tables.prepare_insert(tables.RUNS, {k: v for k, v in data.items()
                                                    if k not in extra})
        row.update(extra)
        # a known column left out goes by its default (recoveries: 0), as in the real INSERT
        columns = [c for c in row if row[c] is not None or c not in tables.RUNS.by_name]
        # the bug: caller-supplied names in SQL text
        sql = (f"INSERT INTO runs ({', '.join(columns)}) "
               f"VALUES ({', '.join('?' for _ in columns)})")
        with self._backend.transaction() as tx:
            tx.execute(sql, [row[c] for c in columns])
            db.record_event(tx, row["run_id"], "run.created", {"state": row["state"]})
        return row["run_id"]
    db.Database.create_run = create_run


def raw_errors() -> None:
    """Driver exceptions reach the caller untranslated (sqlite3.OperationalError ...)."""
    from uet.state.backends import sqlite as m

    def translate_error(exc, path, busy_timeout):
        return exc
    m.translate_error = translate_error


def _on_every_new_connection(statement: str) -> None:
    """Run `statement` on each connection uet opens, right after uet set it up."""
    from reliability_suite.common import on_new_connections
    on_new_connections(lambda conn: conn.execute(statement))


def no_foreign_keys() -> None:
    """Connections are opened without `PRAGMA foreign_keys=ON`."""
    _on_every_new_connection("PRAGMA foreign_keys=OFF")


def no_busy_timeout() -> None:
    """Connections are opened without a busy timeout: a writer that finds the lock taken
    fails at once with "database is locked"."""
    _on_every_new_connection("PRAGMA busy_timeout=0")


def shared_fork() -> None:
    """No fork handling: a forked child keeps using its parent's open connection."""
    from uet.state.backends import sqlite as m
    m._live_backends.clear()
    m._live_backends.add = lambda backend: None


def migration_autocommit() -> None:
    """Migrations run statement by statement without a transaction around them."""
    from uet.state.backends import sqlite_schema as m

    def _apply(backend, conn, migration, *, adopt_seed):
        if adopt_seed:
            conn.execute("PRAGMA foreign_keys=OFF")
            m._adopt_seed(conn, migration, backend.path)
            conn.execute("PRAGMA foreign_keys=ON")
        else:
            for statement in migration.statements():
                conn.execute(statement)
        conn.execute("INSERT INTO schema_migrations (version, name, applied_at) "
                     "VALUES (?, ?, ?)", (migration.version, migration.name, m.utc_now()))
        return migration.version
    m._apply = _apply


def reaper_forgets_work() -> None:
    """Reaping terminates a stale worker but leaves the runs and steps it held running."""
    from uet.state import workers as m
    m.WorkerLifecycle._fail_held_work = staticmethod(lambda tx, worker_id, reason: None)


def slow_reaper() -> None:
    """Staleness is judged against ten heartbeat intervals instead of two."""
    from uet.state import workers as m
    original = m.WorkerLifecycle._cutoff

    def _cutoff(heartbeat_interval_s, now):
        return original(heartbeat_interval_s * 5, now)
    m.WorkerLifecycle._cutoff = staticmethod(_cutoff)


def pg_unlocked_reads() -> None:
    """On PostgreSQL the compare-and-set reads of runs and patch entries lock no row: with
    no ledger-wide lock (0004), two writers both read the old state and both move it."""
    from uet.state.backends import postgresql as m
    unlocked = {name: m.QUERIES[name].replace(" FOR NO KEY UPDATE OF e", "")
                .replace(" FOR NO KEY UPDATE", "") for name in ("lock_run", "lock_patch_entry")}
    queries = {**m.QUERIES, **unlocked}
    m.QUERIES = m.PostgresTx.queries = m.PostgresBackend.queries = queries


def pg_lazy_commit() -> None:
    """On PostgreSQL a write returns before its COMMIT, which waits for the next write."""
    from uet.state.backends import postgresql as m

    @contextmanager
    def transaction(self):
        conn = self.__dict__.get("_lazy_conn")
        if conn is None:
            conn = self.__dict__["_lazy_conn"] = self._connect()
        if conn.info.transaction_status != m.psycopg.pq.TransactionStatus.IDLE:
            conn.execute("COMMIT")
        conn.execute(self._begin or self._begin_statement(conn))
        yield m.PostgresTx(conn)
    m.PostgresBackend.transaction = transaction
    original_close = m.PostgresBackend.close

    def close(self):
        # the lazy connection goes with its backend (its open transaction rolled back, as a
        # driver does on close), not only once the garbage collector frees the backend: a
        # Database and its backend refer to each other (the fence check), and a transaction
        # left open would hold its locks, so that dropping the check's schema waits forever
        conn = self.__dict__.pop("_lazy_conn", None)
        if conn is not None:
            conn.close()
        original_close(self)
    m.PostgresBackend.close = close


def reaper_ignores_pids() -> None:
    """The reaper never looks at an owner's process: a dead one is noticed only when its
    heartbeats stop, two intervals later."""
    from uet.state import recovery
    recovery.why_gone = lambda affinity: None


def reaper_forgets_groups() -> None:
    """The reaper fails a dead owner's run but leaves what its command started running."""
    from uet.state import recovery
    recovery._stop_group = lambda pgid: None


def resume_ignores_branch() -> None:
    """`uet resume` trusts the ledger alone: a task is done only if its entry says committed.
    A crash between the git commit and the ledger write leaves a commit the ledger does not
    know; the entry is quarantined as interrupted and the task done (and committed) again."""
    from uet.engine import resume
    from uet.state.patches import PatchLedger
    original = resume.reconcile

    class LedgerOnly:
        """The repository, except that the branch holds what the ledger says it holds."""

        def __init__(self, repo, db, run_id, branch):
            self._repo, self._db, self._run_id, self._branch = repo, db, run_id, branch

        def __getattr__(self, name):
            return getattr(self._repo, name)

        def entry_commits(self, branch, **_):
            head = self._repo.branch_head(self._branch)
            return {entry["ledger_id"]: [head]
                    for patch in PatchLedger(self._db).history_of_run(self._run_id)
                    for entry in patch["entries"] if entry["state"] == "committed"}

    def reconcile(db, run_id, ws, repo, branch, base):
        return original(db, run_id, ws, LedgerOnly(repo, db, run_id, branch), branch, base)
    resume.reconcile = reconcile


def reaper_fails_queued() -> None:
    """The reaper fails every run of a lost owner, also a queued one whose workstream says
    `resume: auto`: nothing is re-queued, no other worker resumes it."""
    from uet.state import workers as m
    m.requeue_verdict = lambda run: (False, None)


def requeue_ignores_cap() -> None:
    """Re-queueing ignores `max_recoveries`: a poison run that kills every worker that
    takes it is re-queued forever."""
    from uet.state import workers as m
    original = m.requeue_verdict

    def requeue_verdict(run):
        return original({**run, "recoveries": 0})
    m.requeue_verdict = requeue_verdict


MUTANTS = {
    "deferred_begin": deferred_begin,
    "split_event": split_event,
    "lazy_commit": lazy_commit,
    "commit_on_error": commit_on_error,
    "no_cas": no_cas,
    "no_whitelist": no_whitelist,
    "raw_errors": raw_errors,
    "no_foreign_keys": no_foreign_keys,
    "no_busy_timeout": no_busy_timeout,
    "shared_fork": shared_fork,
    "migration_autocommit": migration_autocommit,
    "reaper_forgets_work": reaper_forgets_work,
    "slow_reaper": slow_reaper,
    "pg_unlocked_reads": pg_unlocked_reads,
    "pg_lazy_commit": pg_lazy_commit,
    "reaper_ignores_pids": reaper_ignores_pids,
    "reaper_forgets_groups": reaper_forgets_groups,
    "resume_ignores_branch": resume_ignores_branch,
    "reaper_fails_queued": reaper_fails_queued,
    "requeue_ignores_cap": requeue_ignores_cap,
}

# Which checks must report a non-zero figure against each mutant.
CAUGHT_BY = {
    "deferred_begin": ("races",),
    "split_event": ("boundaries",),
    "lazy_commit": ("crash", "boundaries"),
    "commit_on_error": ("bad_input",),
    "no_cas": ("races",),
    "no_whitelist": ("bad_input",),
    "raw_errors": ("bad_input", "disk", "waiting"),
    "no_foreign_keys": ("waiting",),
    "no_busy_timeout": ("waiting", "races"),
    "shared_fork": ("waiting",),
    "migration_autocommit": ("migration", "boundaries"),
    "reaper_forgets_work": ("stale", "owners_pg"),
    "slow_reaper": ("stale",),
    "pg_unlocked_reads": ("races_pg",),
    "pg_lazy_commit": ("crash_pg",),
    "reaper_ignores_pids": ("owners",),
    "reaper_forgets_groups": ("owners",),
    "resume_ignores_branch": ("engine",),
    "reaper_fails_queued": ("pool",),
    "requeue_ignores_cap": ("pool",),
}


def apply(name: str | None) -> None:
    if name:
        MUTANTS[name]()

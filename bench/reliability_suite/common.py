"""What every check shares: modes, figures, child processes, and reading a ledger directly
with the driver — sqlite3 for a file, psycopg for a PostgreSQL URL — so that a broken uet
cannot hide its own damage."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROGRAMS = str(HERE / "programs.py")
MUTANT_VAR = "UET_RELIABILITY_MUTANT"

# The keys of the final RELIABILITY line, in order.
SUMMARY_KEYS = ("corrupt", "lost", "missing_events", "double", "locked", "partial", "untyped",
                "half_migrated", "stranded", "stuck", "orphans", "dup_commits",
                "requeue_lost", "claimed_twice")


@dataclass(frozen=True)
class Mode:
    """How hard each check pushes: quick (the test suite, CI) or soak (on demand)."""
    name: str
    crash_rounds: int
    crash_writers: int
    race_processes: int
    race_runs: int
    race_entries: int
    bad_input_cases: int
    migration_kills: int
    stale_workers: int
    stale_rounds: int
    heartbeat_s: float
    lock_hold_s: float
    owner_rounds: int
    owner_processes: int
    owner_heartbeat_s: float


QUICK = Mode("quick", crash_rounds=10, crash_writers=3, race_processes=8, race_runs=1000,
             race_entries=200, bad_input_cases=2400, migration_kills=4, stale_workers=4,
             stale_rounds=1, heartbeat_s=1.0, lock_hold_s=1.0, owner_rounds=1,
             owner_processes=6, owner_heartbeat_s=1.0)
SOAK = Mode("soak", crash_rounds=200, crash_writers=4, race_processes=8, race_runs=1000,
            race_entries=1000, bad_input_cases=52_000, migration_kills=60, stale_workers=6,
            stale_rounds=5, heartbeat_s=0.5, lock_hold_s=2.0, owner_rounds=20,
            owner_processes=8, owner_heartbeat_s=0.5)
MODES = {"quick": QUICK, "soak": SOAK}


@dataclass
class Figure:
    """One measured number. `key` names the RELIABILITY-line count it adds to (None: shown
    in the table only); `zero` says the number must be 0 for the check to pass."""
    name: str
    value: float
    key: str | None = None
    zero: bool = True
    note: str = ""

    @property
    def bad(self) -> bool:
        return self.zero and self.value != 0


@dataclass
class Result:
    check: str
    figures: list[Figure] = field(default_factory=list)
    seconds: float = 0.0
    details: list[str] = field(default_factory=list)  # what went wrong, for the reader

    def add(self, name: str, value: float, key: str | None = None, *, zero: bool = True,
            note: str = "") -> None:
        self.figures.append(Figure(name, value, key, zero, note))

    @property
    def failed(self) -> bool:
        return any(f.bad for f in self.figures)

    def to_json(self) -> dict:
        return {"check": self.check, "seconds": self.seconds,
                "figures": [vars(f) for f in self.figures], "details": self.details}

    @classmethod
    def from_json(cls, data: dict) -> "Result":
        return cls(data["check"], [Figure(**f) for f in data["figures"]], data["seconds"],
                   data.get("details", []))


# -- child processes -----------------------------------------------------------------------

def child_env(mutant: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop(MUTANT_VAR, None)
    if mutant:
        env[MUTANT_VAR] = mutant
    return env


def spawn(command: str, *args: str, mutant: str | None = None, **popen) -> subprocess.Popen:
    """Start `programs.py COMMAND ARGS` in a new Python process (the mutant applied there)."""
    return subprocess.Popen([sys.executable, PROGRAMS, command, *args], env=child_env(mutant),
                            **popen)


def on_new_connections(action):
    """Call action(connection) on each connection uet opens, right after uet set it up
    (this process only); returns a function that undoes it."""
    from uet.state.backends import sqlite as sqlite_backend
    original = sqlite_backend.SQLiteBackend.connect

    def connect(self):
        fresh = self._conn is None
        conn = original(self)
        if fresh:
            action(conn)
        return conn
    sqlite_backend.SQLiteBackend.connect = connect
    return lambda: setattr(sqlite_backend.SQLiteBackend, "connect", original)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.005)


def ack(log, line: str) -> None:
    """Record that a call returned: written and fsynced before the next call starts."""
    log.write(line + "\n")
    log.flush()
    os.fsync(log.fileno())


def attempt_each(ids: list[str], attempt) -> list[str]:
    """Call attempt(id) for each id; one line per call: won / lost (the documented
    ConcurrentUpdateError) / error with the exception's type and message."""
    from uet.errors import ConcurrentUpdateError
    lines = []
    for entity_id in ids:
        try:
            attempt(entity_id)
            lines.append(f"won {entity_id}")
        except ConcurrentUpdateError:
            lines.append(f"lost {entity_id}")
        except Exception as exc:  # the caller counts every one of these
            lines.append(f"error {entity_id} {type(exc).__module__}.{type(exc).__name__}: "
                         f"{exc}")
    return lines


def acked_lines(path: str | Path) -> list[list[str]]:
    """The whole lines of an ack log (the last one may be torn by a kill: not acknowledged)."""
    path = Path(path)
    text = path.read_text() if path.exists() else ""
    return [line.split(" ") for line in text.split("\n")[:-1]]


# -- ledgers to work on -------------------------------------------------------------------

DIFF = "--- a/src/app.py\n+++ b/src/app.py\n@@ -1 +1 @@\n-old\n+new\n"


def populate(db) -> dict[str, str]:
    """A little of everything for calls to hit: runs pending (run-p) and running (run-r,
    run-w), step attempts, workers new / idle / busy (holding run-w), a patch with its
    ledger entry, and gates LINT (running) and UNIT (depending on it). Returns the
    generated ids: patch, entry, lint."""
    from uet.state import GateLedger, PatchLedger, WorkerLifecycle
    db.create_run({"run_id": "run-p", "project_id": "p", "phase_id": "ph"})
    db.create_run({"run_id": "run-r", "project_id": "p", "phase_id": "ph"})
    db.transition_run("run-r", "running")
    db.create_step_attempt({"step_attempt_id": "step-r", "run_id": "run-r", "sequence": 1,
                            "tool_id": "aider"})
    workers = WorkerLifecycle(db)
    workers.spawn_worker("w-new", "t", {"lang": "py"})
    workers.spawn_worker("w-idle", "t", {})
    workers.transition_state("w-idle", "IDLE")
    workers.spawn_worker("w-busy", "t", {})
    workers.transition_state("w-busy", "IDLE")
    db.create_run({"run_id": "run-w", "project_id": "p", "phase_id": "ph"})
    workers.claim_run("w-busy", "run-w")
    db.create_step_attempt({"step_attempt_id": "step-w", "run_id": "run-w", "sequence": 1,
                            "tool_id": "t", "worker_id": "w-busy"})
    patches = PatchLedger(db)
    patch = patches.record_patch(DIFF, step_attempt_id="step-r")
    entry = patches.create_entry(patch, "ph")
    gates = GateLedger(db)
    lint = gates.define_gate("LINT", "ph", "ruff .", timeout_sec=1)
    gates.define_gate("UNIT", "ph", "pytest", depends_on=["LINT"])
    gates.transition_state(lint["gate_id"], "RUNNING")
    return {"patch": patch.patch_id, "entry": entry.ledger_id, "lint": lint["gate_id"]}


# -- reading a ledger file directly ----------------------------------------------------------

# -- ledgers on either engine ----------------------------------------------------------------

POSTGRES_VAR = "UET_TEST_POSTGRES_URL"  # a server to use; else a private one is started


def is_postgres(name: str) -> bool:
    from uet.state.db import is_postgres_url
    return is_postgres_url(name)


def postgres_server_url() -> str:
    """$UET_TEST_POSTGRES_URL, else a private throwaway server started on first use (and
    stopped when this process exits); child processes are given its URL."""
    url = os.environ.get(POSTGRES_VAR)
    if url:
        return url
    import atexit
    import pgserver  # bench/ is on sys.path for the suite and the tests
    server = pgserver.Server()
    url = server.start()
    atexit.register(server.stop)
    os.environ[POSTGRES_VAR] = url
    return url


@contextmanager
def ledger_on(engine: str, workdir: Path, name: str):
    """A check's new ledger on `engine` ("sqlite" or "postgresql"): a file in `workdir`, or
    a fresh schema on the PostgreSQL server, dropped afterwards; yields its name."""
    if engine == "sqlite":
        yield str(workdir / f"{name}.db")
        return
    import uuid

    import pgserver
    with pgserver.schema(postgres_server_url(),
                         f"reliability_{name}_{uuid.uuid4().hex[:12]}") as url:
        yield url


def json_text(name: str, column: str, field: str) -> str:
    """SQL for the text of `column`'s JSON member `field` (constant names only)."""
    if is_postgres(name):
        return f"{column}->>'{field}'"
    return f"json_extract({column}, '$.{field}')"


def connect_raw(path: str):
    """A driver connection to the ledger (autocommit; JSON columns as their text)."""
    if is_postgres(path):
        import psycopg
        from psycopg.types.string import TextLoader
        conn = psycopg.connect(path, autocommit=True)
        conn.adapters.register_loader("json", TextLoader)
        return conn
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    return conn


def _tables(conn, path: str) -> set[str]:
    if is_postgres(path):
        return {r[0] for r in conn.execute("SELECT table_name FROM information_schema.tables "
                                           "WHERE table_schema = current_schema()")}
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


# rows whose parent is gone: what a foreign key check finds (PostgreSQL enforces them; this
# looks anyway, in case a broken build disabled the triggers that do)
_ORPHANS = ("SELECT count(*) FROM step_attempts AS s "
            "WHERE NOT EXISTS (SELECT 1 FROM runs AS r WHERE r.run_id = s.run_id)",
            "SELECT count(*) FROM run_events AS e WHERE e.run_id IS NOT NULL "
            "AND NOT EXISTS (SELECT 1 FROM runs AS r WHERE r.run_id = e.run_id)")


def _postgres_integrity_ok(path: str) -> bool:
    """Every index valid, every constraint validated, every trigger enabled, no orphans."""
    import psycopg
    try:
        conn = connect_raw(path)
    except psycopg.Error:
        return False
    try:
        if "schema_migrations" not in _tables(conn, path):
            return True
        broken = conn.execute(
            "SELECT (SELECT count(*) FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indrelid"
            "         WHERE c.relnamespace = current_schema()::regnamespace AND NOT i.indisvalid)"
            " + (SELECT count(*) FROM pg_constraint WHERE NOT convalidated"
            "         AND connamespace = current_schema()::regnamespace)"
            " + (SELECT count(*) FROM pg_trigger AS t JOIN pg_class AS c ON c.oid = t.tgrelid"
            "         WHERE c.relnamespace = current_schema()::regnamespace"
            "         AND t.tgenabled = 'D')").fetchone()[0]
        return broken == 0 and all(conn.execute(q).fetchone()[0] == 0 for q in _ORPHANS)
    except psycopg.Error:
        return False
    finally:
        conn.close()


def integrity_ok(path: str) -> bool:
    """`PRAGMA integrity_check` is ok and, in a uet ledger, no foreign key dangles (a seed
    ledger not yet upgraded may: the seed never enforced them). On PostgreSQL: the catalog
    says every index, constraint and trigger is in force, and no row lost its parent."""
    if is_postgres(path):
        return _postgres_integrity_ok(path)
    conn = connect_raw(path)
    try:
        if [r[0] for r in conn.execute("PRAGMA integrity_check")] != ["ok"]:
            return False
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'schema_migrations'"
                        ).fetchone() is None:
            return True
        return conn.execute("PRAGMA foreign_key_check").fetchone() is None
    except sqlite3.DatabaseError:
        return False
    finally:
        conn.close()


# Each record whose state the trail must explain: (table, key column, creation event, state
# change event, the event data field holding the key; None: the event's run_id column).
TRAILS = (
    ("runs", "run_id", "run.created", "run.state_changed", None),
    ("step_attempts", "step_attempt_id", "step_attempt.created", "step_attempt.state_changed",
     "step_attempt_id"),
    ("workers", "worker_id", "worker.spawned", "worker.state_changed", "worker_id"),
    ("patch_ledger_entries", "ledger_id", "patch_entry.created", "patch_entry.state_changed",
     "ledger_id"),
    ("test_gates", "gate_id", "gate.defined", "gate.state_changed", "gate_id"),
)


def trail_violations(path: str) -> list[str]:
    """Records whose state the event trail does not explain: each must have exactly one
    creation event, each state change must start where the one before it ended, and the
    record's state must be the `to` of its last change (or the state its creation event
    names, when it never changed). One pass over the trail."""
    conn = connect_raw(path)
    problems = []
    try:
        tables = _tables(conn, path)
        if "schema_migrations" not in tables:
            return []  # not a uet ledger (yet): no trail to check
        kinds = {}
        for table, _, created, changed, data_field in TRAILS:
            kinds[created] = (table, data_field, True)
            kinds[changed] = (table, data_field, False)
        created_count: dict[tuple, int] = {}
        explained: dict[tuple, str] = {}
        for run_id, event_type, data in conn.execute(
                "SELECT run_id, event_type, data FROM run_events ORDER BY seq"):
            if event_type not in kinds:
                continue
            table, data_field, is_creation = kinds[event_type]
            body = json.loads(data) if data else {}
            key = (table, run_id if data_field is None else body.get(data_field))
            if is_creation:
                if body.get("respawn") and explained.get(key) == "TERMINATED":
                    # a new incarnation of a retired worker id: its record starts over
                    explained[key] = body.get("state")
                    continue
                created_count[key] = created_count.get(key, 0) + 1
                explained.setdefault(key, body.get("state"))
            else:
                # each change starts where the trail left the record: none is missing
                if body.get("from") != explained.get(key):
                    problems.append(f"{key[0]} {key[1]}: a change from {body.get('from')} "
                                    f"follows {explained.get(key)} in the trail")
                explained[key] = body.get("to")
        for table, key_column, *_ in TRAILS:
            if table not in tables:
                continue
            # names come from the constant above, never from input
            for entity, state in conn.execute(f"SELECT {key_column}, state FROM {table}"):
                key = (table, entity)
                if created_count.get(key) != 1 or explained.get(key) != state:
                    problems.append(f"{table} {entity}: state {state}, "
                                    f"{created_count.get(key, 0)} creation events, trail "
                                    f"says {explained.get(key)}")
    finally:
        conn.close()
    return problems


_VOLATILE = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+Z$|^[0-9A-HJKMNP-TV-Z]{26}$")
_VOLATILE_COLUMNS = {"seq", "duration_sec"}


def logical_snapshot(path: str) -> str:
    """The ledger's rows, table by table, with what differs between two identical runs of the
    same calls masked (generated ids, timestamps, seq) — to compare outcomes of a call."""
    conn = connect_raw(path)
    try:
        out = {}
        for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND "
                                     "name NOT LIKE 'sqlite_%' ORDER BY name").fetchall():
            cursor = conn.execute(f'SELECT * FROM "{table}"')  # names from sqlite_master
            names = [d[0] for d in cursor.description]
            rows = []
            for row in cursor.fetchall():
                rows.append([_mask(n, v) for n, v in zip(names, row)])
            out[table] = sorted(json.dumps(r, default=repr) for r in rows)
        return json.dumps(out, sort_keys=True)
    finally:
        conn.close()


def _mask(name: str, value: object) -> object:
    if name in _VOLATILE_COLUMNS:
        return "<v>"
    if isinstance(value, str):
        if _VOLATILE.match(value):
            return "<v>"
        if value.startswith(("{", "[")):
            try:
                return json.dumps(_mask_json(json.loads(value)), sort_keys=True)
            except ValueError:
                return value
    return value


def _mask_json(value: object) -> object:
    if isinstance(value, dict):
        return {k: _mask(k, _mask_json(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_json(v) for v in value]
    return _mask("", value)


def copy_ledger(source: str, target: str) -> None:
    """Copy a closed ledger file (its WAL already checkpointed away)."""
    for suffix in ("-wal", "-shm"):
        if os.path.exists(target + suffix):
            os.remove(target + suffix)
    Path(target).write_bytes(Path(source).read_bytes())

"""Promises of the README that no other test checked: SQLite read-only inspection, the
PostgreSQL pool's DatabaseBusyError, code-point ordering whatever the locale, the data of
the patch-entry, gate and worker events, the `postgres://` URL form, and the 1 GB value
limit."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from helpers import allow_event_inserts, raw_execute, refuse_event_inserts
from reliability_suite.migration import make_seed_ledger
from uet.errors import (AmbiguousIdError, ConstraintViolation, DatabaseBusyError,
                        NotALedgerError, SchemaVersionError, StorageError,
                        ValidationError)
from uet.state import Database, GateLedger, PatchLedger, WorkerLifecycle, init_db
from uet.state.backends import peek_version

DIFF = "--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-a\n+b\n"
OTHER_DIFF = "--- a/y.py\n+++ b/y.py\n@@ -1 +1 @@\n-a\n+b\n"
FAR_FUTURE = datetime(2999, 1, 1, tzinfo=timezone.utc)
SAME_MOMENT = "2026-01-01T00:00:00.000000Z"
UET = shutil.which("uet", path=os.path.dirname(sys.executable))


def digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def new_events(db: Database, cursor: int) -> list[tuple]:
    """(event_type, run_id, data) of every event after `cursor`, in order."""
    return [(e["event_type"], e["run_id"], e["data"]) for e in db.events_since(cursor)]


def last_seq(db: Database) -> int:
    events = db.events_since(0, limit=1000)
    return events[-1]["seq"] if events else 0


# -- 1. SQLite read-only inspection -------------------------------------------------------


def test_read_only_open_of_a_missing_ledger_creates_nothing(tmp_path):
    missing_folder = tmp_path / "ledger" / "framework.db"
    with pytest.raises(NotALedgerError, match="no ledger at"):
        Database(str(missing_folder), read_only=True)
    assert not missing_folder.parent.exists()
    missing_file = tmp_path / "framework.db"  # its folder exists
    with pytest.raises(NotALedgerError, match="no ledger at"):
        Database(str(missing_file), read_only=True)
    assert os.listdir(tmp_path) == []


def test_read_only_open_of_an_empty_file_leaves_it_empty(tmp_path):
    empty = tmp_path / "framework.db"
    empty.touch()
    with pytest.raises(NotALedgerError, match="is empty, not a ledger yet"):
        Database(str(empty), read_only=True)
    assert empty.stat().st_size == 0 and peek_version(str(empty)) is None


def test_read_only_open_does_not_migrate_a_seed_ledger(tmp_path):
    seed = str(tmp_path / "seed.db")
    make_seed_ledger(seed, runs=3)
    before = digest(seed)
    with pytest.raises(SchemaVersionError, match="older than this uet .*uet migrate"):
        Database(seed, read_only=True)
    assert digest(seed) == before and peek_version(seed) == 0


@pytest.fixture(scope="module")
def template_ledger(tmp_path_factory) -> tuple[str, dict]:
    """A closed ledger file in which every write call below has something to change."""
    path = str(tmp_path_factory.mktemp("template") / "framework.db")
    with init_db(path) as db:
        db.create_run({"run_id": "r", "project_id": "p", "phase_id": "ph"})
        db.create_step_attempt({"step_attempt_id": "s", "run_id": "r", "sequence": 1,
                                "tool_id": "t"})
        workers = WorkerLifecycle(db)
        workers.spawn_worker("w", "t")
        workers.transition_state("w", "IDLE")
        patches = PatchLedger(db)
        patch = patches.record_patch(DIFF, step_attempt_id="s")
        entry = patches.create_entry(patch, "PH-1")
        gates = GateLedger(db)
        gate = gates.define_gate("LINT", "PH-1", "ruff", run_id="r", timeout_sec=1)
        gates.transition_state(gate["gate_id"], "RUNNING")
        events = len(db.events_since(0))
    return path, {"patch": patch.patch_id, "entry": entry.ledger_id, "gate": gate["gate_id"],
                  "events": events}


# every public write call, with arguments it would succeed with on a writable copy
WRITES = {
    "create_run": lambda db, ids: db.create_run({"project_id": "p", "phase_id": "ph"}),
    "update_run": lambda db, ids: db.update_run("r", {"error_message": "x"}),
    "transition_run": lambda db, ids: db.transition_run("r", "running"),
    "delete_run": lambda db, ids: db.delete_run("r"),
    "create_step_attempt": lambda db, ids: db.create_step_attempt(
        {"run_id": "r", "sequence": 2, "tool_id": "t"}),
    "update_step_attempt": lambda db, ids: db.update_step_attempt("s", {"tool_run_id": "x"}),
    "transition_step_attempt": lambda db, ids: db.transition_step_attempt(
        "s", "failed", exit_code=1),
    "create_event": lambda db, ids: db.create_event({"run_id": "r", "event_type": "note"}),
    "spawn_worker": lambda db, ids: WorkerLifecycle(db).spawn_worker("w2", "t"),
    "worker_transition_state": lambda db, ids: WorkerLifecycle(db).transition_state(
        "w", "TERMINATED"),
    "terminate_worker": lambda db, ids: WorkerLifecycle(db).terminate_worker("w"),
    "heartbeat": lambda db, ids: WorkerLifecycle(db).heartbeat("w"),
    "claim_run": lambda db, ids: WorkerLifecycle(db).claim_run("w"),
    "reap_stale": lambda db, ids: WorkerLifecycle(db).reap_stale(10, now=FAR_FUTURE),
    "record_patch": lambda db, ids: PatchLedger(db).record_patch(OTHER_DIFF, run_id="r"),
    "create_entry": lambda db, ids: PatchLedger(db).create_entry(ids["patch"], "PH-2"),
    "patch_transition_state": lambda db, ids: PatchLedger(db).transition_state(
        ids["entry"], "validated"),
    "quarantine": lambda db, ids: PatchLedger(db).quarantine(ids["entry"], "bad"),
    "set_validation": lambda db, ids: PatchLedger(db).set_validation(ids["entry"],
                                                                     format=True),
    "define_gate": lambda db, ids: GateLedger(db).define_gate("UNIT", "PH-1", "pytest"),
    "gate_transition_state": lambda db, ids: GateLedger(db).transition_state(
        ids["gate"], "PASSED", exit_code=0),
    "expire_timeouts": lambda db, ids: GateLedger(db).expire_timeouts(now=FAR_FUTURE),
}


@pytest.mark.parametrize("write", WRITES)
def test_a_read_only_sqlite_ledger_reads_and_refuses_every_write(template_ledger, tmp_path,
                                                                  write):
    template, ids = template_ledger
    path = str(tmp_path / "framework.db")
    shutil.copyfile(template, path)
    before = digest(path)
    with Database(path, read_only=True) as reader:
        assert [r["run_id"] for r in reader.list_runs()] == ["r"]
        assert reader.get_step_attempt("s")["state"] == "running"
        with pytest.raises(StorageError, match="cannot be written .*readonly database"):
            WRITES[write](reader, ids)
        assert reader.get_run("r")["state"] == "pending"  # still usable for reading
        assert len(reader.events_since(0)) == ids["events"]
    assert digest(path) == before
    wal = Path(path + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0  # nothing written to the WAL either


# -- 2. PostgreSQL: no pooled connection within busy_timeout ------------------------------


def test_an_exhausted_connection_pool_raises_database_busy_and_writes_nothing(postgres_url):
    """Every pooled connection is held by a running call (threads inside the backend's
    connection context); one more call waits busy_timeout for a connection, then fails."""
    from uet.state.backends.postgresql import POOL_MAX_SIZE
    db = init_db(postgres_url, busy_timeout=1.0)
    holding, release = threading.Semaphore(0), threading.Event()

    def hold():
        with db._backend._connection():
            holding.release()
            release.wait(60)

    threads = [threading.Thread(target=hold) for _ in range(POOL_MAX_SIZE)]
    for thread in threads:
        thread.start()
    try:
        for _ in threads:
            assert holding.acquire(timeout=30), "a holder never got its connection"
        started = time.monotonic()
        with pytest.raises(DatabaseBusyError,
                           match=r"no connection to the server could be had within 1 s"):
            db.create_run({"run_id": "starved", "project_id": "p", "phase_id": "ph"})
        waited = time.monotonic() - started
    finally:
        release.set()
        for thread in threads:
            thread.join(30)
    assert 0.9 <= waited < 60, waited  # it waited for busy_timeout, not forever
    assert db.get_run("starved") is None and db.events_since(0) == []
    db.create_run({"run_id": "starved", "project_id": "p", "phase_id": "ph"})  # usable again
    assert [e["event_type"] for e in db.events_since(0)] == ["run.created"]
    db.close()


# -- 3. Code-point order whatever the locale ----------------------------------------------

# case, accents, digits, punctuation, CJK and an astral emoji; "q…" share a prefix
TEXTS = ["B", "a", "Z", "é", "É", "ß", "日本", "😀", "_", "9", "aB", "a_", "ab", "aé", "z",
         "qZ", "q_", "qé", "q日"]


def _assert_code_point_order(db: Database) -> None:
    """Every list call that orders caller-chosen text orders it as Python's sorted() does.

    (Patch entries and gates tie-break on generated ULIDs, which are plain ASCII; gate
    dependency names are covered here through get_gate / list_gates.)"""
    for text in TEXTS:
        db.create_run({"run_id": text, "project_id": text, "phase_id": "ph",
                       "created_at": SAME_MOMENT})
    newest_first = sorted(TEXTS, reverse=True)  # same created_at: run_id DESC breaks the tie
    assert [r["run_id"] for r in db.list_runs(limit=None)] == newest_first
    assert [r["run_id"] for r in db.list_runs({"phase_id": "ph"}, limit=4)] == newest_first[:4]
    for text in TEXTS:  # equality is exact too: no case or accent folding
        assert [r["run_id"] for r in db.list_runs({"project_id": text})] == [text]
    assert db.resolve_run_id("日") == "日本" and db.resolve_run_id("😀") == "😀"
    assert db.resolve_run_id("É") == "É" and db.resolve_run_id("ß") == "ß"
    with pytest.raises(AmbiguousIdError, match="prefix 'q' is ambiguous") as info:
        db.resolve_run_id("q")
    assert info.value.matches == sorted(t for t in TEXTS if t.startswith("q"))

    workers = WorkerLifecycle(db)
    for text in TEXTS:
        workers.spawn_worker(text, "t")
    raw_execute(db, "UPDATE workers SET created_at = ?", (SAME_MOMENT,))  # a tie to break
    assert [w.worker_id for w in workers.list_workers()] == sorted(TEXTS)
    for text in TEXTS:
        workers.transition_state(text, "IDLE")
    assert [w.worker_id for w in workers.get_idle_workers()] == sorted(TEXTS)
    assert [w.worker_id for w in workers.get_workers_by_state("IDLE")] == sorted(TEXTS)
    claimed = []  # claim_run takes the oldest pending run: a tie, broken by run_id
    while (run := workers.claim_run("ß")) is not None:
        claimed.append(run["run_id"])
        db.transition_run(run["run_id"], "succeeded", exit_code=0)
        workers.release("ß")
    assert claimed == sorted(TEXTS)

    gates = GateLedger(db)
    for text in TEXTS:
        gates.define_gate("LINT", "PH-1", "ruff", name=text)
    last = gates.define_gate("UNIT", "PH-1", "pytest", name="all", depends_on=TEXTS)
    assert last["depends_on"] == sorted(TEXTS)
    assert gates.get_gate(last["gate_id"])["depends_on"] == sorted(TEXTS)
    assert gates.list_gates("PH-1")[-1]["depends_on"] == sorted(TEXTS)


def test_text_is_ordered_by_code_point(db):
    _assert_code_point_order(db)


@pytest.fixture
def icu_database_url(postgres_server):
    """A new PostgreSQL database whose default collation is ICU's en-US (not code point):
    the URL of its default schema, dropped after."""
    import psycopg
    name = f"uet_icu_{os.getpid()}"
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' "
                      "LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'")
    try:
        yield postgres_server.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(postgres_server, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_text_is_ordered_by_code_point_in_a_database_with_a_language_collation(
        icu_database_url):
    import psycopg
    with psycopg.connect(icu_database_url) as conn:  # the database itself sorts otherwise
        own = conn.execute("SELECT array_agg(x ORDER BY x) FROM unnest(%s::text[]) AS x",
                           (TEXTS,)).fetchone()[0]
    assert own != sorted(TEXTS)
    with init_db(icu_database_url) as db:
        _assert_code_point_order(db)


# -- 4. The documented events and their data ----------------------------------------------


def test_patch_entry_and_gate_events_carry_their_documented_data(db):
    run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
    step = db.create_step_attempt({"run_id": run_id, "sequence": 1, "tool_id": "aider"})
    patches, gates = PatchLedger(db), GateLedger(db)
    patch = patches.record_patch(DIFF, step_attempt_id=step)

    cursor = last_seq(db)
    entry = patches.create_entry(patch, "PH-1", "WS-1")
    assert new_events(db, cursor) == [("patch_entry.created", run_id, {
        "ledger_id": entry.ledger_id, "patch_id": patch.patch_id, "phase_id": "PH-1",
        "workstream_id": "WS-1", "state": "created"})]

    cursor = last_seq(db)
    patches.set_validation(entry.ledger_id, format=True, scope=False)
    assert new_events(db, cursor) == [("patch_entry.validation_set", run_id, {
        "ledger_id": entry.ledger_id, "format": True, "scope": False})]

    lint = gates.define_gate("LINT", "PH-1", "ruff", run_id=run_id)
    unit = gates.define_gate("UNIT", "PH-1", "pytest", depends_on=["LINT"], run_id=run_id)
    cursor = last_seq(db)
    gates.transition_state(lint["gate_id"], "RUNNING")
    gates.transition_state(lint["gate_id"], "FAILED", exit_code=1)
    assert new_events(db, cursor) == [
        ("gate.state_changed", run_id, {"gate_id": lint["gate_id"], "name": "LINT",
                                        "from": "PENDING", "to": "RUNNING"}),
        ("gate.state_changed", run_id, {"gate_id": lint["gate_id"], "name": "LINT",
                                        "from": "RUNNING", "to": "FAILED", "exit_code": 1}),
        ("gate.state_changed", run_id, {"gate_id": unit["gate_id"], "name": "UNIT",
                                        "from": "PENDING", "to": "BLOCKED",
                                        "blocked_by": "LINT"})]

    unscoped = gates.define_gate("SECURITY", "PH-2", "bandit")  # no run: run_id null
    cursor = last_seq(db)
    gates.transition_state(unscoped["gate_id"], "RUNNING")
    assert new_events(db, cursor) == [("gate.state_changed", None, {
        "gate_id": unscoped["gate_id"], "name": "SECURITY", "from": "PENDING",
        "to": "RUNNING"})]


def test_patch_entry_and_gate_changes_are_undone_when_their_event_cannot_be_written(ledger):
    """Change and event share one transaction: an event store that refuses the event
    leaves the record as it was. (A fresh ledger per engine: the refusal leaves a trigger
    function behind on PostgreSQL.)"""
    db = init_db(ledger)
    refused = StorageError if db.engine == "postgresql" else ConstraintViolation
    run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
    patches, gates = PatchLedger(db), GateLedger(db)
    patch = patches.record_patch(DIFF, run_id=run_id)
    entry = patches.create_entry(patch, "PH-1")
    gate = gates.define_gate("LINT", "PH-1", "ruff", run_id=run_id)
    before = db.events_since(0)
    refuse_event_inserts(db, "%")
    with pytest.raises(refused, match="event store unavailable"):
        patches.create_entry(patch, "PH-2")
    assert patches.list_entries() == [entry]
    with pytest.raises(refused, match="event store unavailable"):
        patches.set_validation(entry.ledger_id, format=True)
    assert patches.get_entry(entry.ledger_id) == entry
    with pytest.raises(refused, match="event store unavailable"):
        gates.transition_state(gate["gate_id"], "RUNNING")
    after = gates.get_gate(gate["gate_id"])
    assert (after["state"], after["started_at"]) == ("PENDING", None)
    allow_event_inserts(db)
    assert db.events_since(0) == before
    db.close()


def _run_and_step_events(db: Database, run_id: str, cursor: int) -> list[tuple]:
    return [(e["event_type"], e["data"]) for e in db.events_since(cursor, run_id=run_id)]


def test_claim_termination_and_reaping_events_name_the_worker(db):
    workers = WorkerLifecycle(db)
    workers.spawn_worker("lost", "t")
    workers.transition_state("lost", "IDLE")
    run_1 = db.create_run({"project_id": "p", "phase_id": "ph"})
    cursor = last_seq(db)
    assert workers.claim_run("lost")["run_id"] == run_1
    assert _run_and_step_events(db, run_1, cursor) == [
        ("run.state_changed", {"from": "pending", "to": "running", "worker_id": "lost"})]
    step_1 = db.create_step_attempt({"run_id": run_1, "sequence": 1, "tool_id": "t"})
    assert db.get_step_attempt(step_1)["worker_id"] == "lost"

    cursor = last_seq(db)
    # its last heartbeat (entering BUSY) is long before this `now`
    assert workers.reap_stale(heartbeat_interval_s=10, now=FAR_FUTURE) == ["lost"]
    assert _run_and_step_events(db, run_1, cursor) == [
        ("step_attempt.state_changed", {"step_attempt_id": step_1, "from": "running",
                                        "to": "failed", "worker_id": "lost"}),
        ("run.state_changed", {"from": "running", "to": "failed", "worker_id": "lost"})]
    assert "worker lost was lost" in db.get_run(run_1)["error_message"]
    assert "worker lost was lost" in db.get_step_attempt(step_1)["error_log"]

    workers.spawn_worker("stopped", "t")
    workers.transition_state("stopped", "IDLE")
    run_2 = db.create_run({"project_id": "p", "phase_id": "ph"})
    workers.claim_run("stopped")
    step_2 = db.create_step_attempt({"run_id": run_2, "sequence": 1, "tool_id": "t"})
    assert workers.terminate_worker("stopped").state.value == "DRAINING"  # drains first
    cursor = last_seq(db)
    workers.transition_state("stopped", "TERMINATED")
    assert _run_and_step_events(db, run_2, cursor) == [
        ("step_attempt.state_changed", {"step_attempt_id": step_2, "from": "running",
                                        "to": "failed", "worker_id": "stopped"}),
        ("run.state_changed", {"from": "running", "to": "failed", "worker_id": "stopped"})]


# -- 5. postgres:// URLs ------------------------------------------------------------------


def test_a_postgres_scheme_url_opens_the_same_ledger_in_the_api_and_the_cli(
        postgres_url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # were the URL taken for a file path, it would land here
    assert postgres_url.startswith("postgresql://")
    short = "postgres://" + postgres_url[len("postgresql://"):]
    with init_db(postgres_url) as long_form:
        long_form.create_run({"run_id": "via-long", "project_id": "p", "phase_id": "ph"})
    with init_db(short) as db:
        assert db.engine == "postgresql"
        assert db.get_run("via-long")["project_id"] == "p"
        db.create_run({"run_id": "via-short", "project_id": "p", "phase_id": "ph"})
    with Database(postgres_url, read_only=True) as long_form:
        assert {r["run_id"] for r in long_form.list_runs()} == {"via-long", "via-short"}

    env = {k: v for k, v in os.environ.items() if k != "UET_DATABASE"}
    listed = subprocess.run([UET, "runs", "--db", short, "--json"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert {r["run_id"] for r in json.loads(listed.stdout)} == {"via-long", "via-short"}

    monkeypatch.setenv("UET_DATABASE", short)
    with Database() as from_env:
        assert from_env.engine == "postgresql" and len(from_env.list_runs()) == 2
    assert os.listdir(tmp_path) == []


# -- 6. The 1 GB value limit --------------------------------------------------------------
# The values are 0.5 GB strings of 1 GB of UTF-8; checking one costs about a second (its
# encoding), so the costlier cases run on the in-memory engine only.

LIMIT = 1_000_000_000


@pytest.fixture(scope="module")
def at_limit() -> str:
    """LIMIT bytes of UTF-8 in LIMIT / 2 characters."""
    return "é" * (LIMIT // 2)


@pytest.fixture(scope="module")
def over_limit(at_limit) -> str:
    """LIMIT + 1 bytes of UTF-8, although its len() is only about half the limit."""
    return at_limit + "x"


def test_text_over_the_limit_is_refused_naming_the_field(db, over_limit):
    """Bytes are counted, not characters, and nothing is written."""
    db.create_run({"run_id": "r", "project_id": "p", "phase_id": "ph"})
    step = db.create_step_attempt({"run_id": "r", "sequence": 1, "tool_id": "t"})
    before = db.events_since(0)
    with pytest.raises(ValidationError,
                       match="run field 'error_message' is larger than 1,000,000,000 bytes"
                       ) as info:
        db.create_run({"run_id": "big", "project_id": "p", "phase_id": "ph",
                       "error_message": over_limit})
    assert info.value.field == "error_message"
    with pytest.raises(ValidationError,
                       match="step_attempt field 'error_log' is larger than 1,000,000,000 "
                             "bytes") as info:
        db.transition_step_attempt(step, "failed", exit_code=1, error_log=over_limit)
    assert info.value.field == "error_log"
    assert db.get_run("big") is None
    assert (db.get_step_attempt(step)["state"], db.get_step_attempt(step)["error_log"]) == (
        "running", None)
    assert db.events_since(0) == before


def test_metadata_whose_json_is_over_the_limit_is_refused(in_memory_db):
    """The stored JSON text counts: control characters are escaped to six bytes each. (On
    one engine: building 1 GB of JSON takes seconds, and the check precedes any SQL.)"""
    db = in_memory_db
    value = "\x01" * (LIMIT // 6 + 1)
    with pytest.raises(ValidationError,
                       match="run field 'metadata' is larger than 1,000,000,000 bytes") as info:
        db.create_run({"run_id": "big", "project_id": "p", "phase_id": "ph",
                       "metadata": {"log": value}})
    assert info.value.field == "metadata"
    assert db.list_runs() == [] and db.events_since(0) == []


def test_a_record_whose_values_together_are_over_the_limit_is_refused(in_memory_db):
    """Each value under the limit, together over it: SQLite stores a row as one record under
    the same limit, so the record is refused whole, as a ValidationError naming its largest
    value, before any SQL. (On one engine: the check precedes any SQL.)"""
    db = in_memory_db
    half = "x" * (LIMIT // 2)
    with pytest.raises(ValidationError, match="run values together are larger than "
                                              "1,000,000,000 bytes") as info:
        db.create_run({"run_id": "big", "project_id": "p", "phase_id": "ph",
                       "error_message": half, "metadata": {"log": half}})
    assert info.value.field == "metadata"  # its JSON text is the larger
    with pytest.raises(ValidationError, match="values together .*largest: 'error_message'"):
        db.update_run("absent", {"error_message": "é" * (LIMIT // 2)})  # alone, at the limit
    assert db.list_runs() == [] and db.events_since(0) == []


def test_a_value_that_would_make_a_stored_record_too_large_is_refused(in_memory_db):
    """A stored value and an update, each under the limit, together over it: SQLite refuses
    the row, and uet says so as a ValidationError; the run is as it was. SQLite's own limit
    is lowered on uet's connection (to 100 kB) so that the real refusal costs no gigabyte."""
    import sqlite3
    db = in_memory_db
    db._backend.connect().setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 100_000)
    db.create_run({"run_id": "r", "project_id": "p", "phase_id": "ph",
                   "metadata": {"log": "m" * 60_000}})
    before = db.get_run("r"), db.events_since(0)
    with pytest.raises(ValidationError, match="larger than 1,000,000,000 bytes, SQLite's "
                                              "limit on one row .*too big"):
        db.update_run("r", {"error_message": "e" * 60_000})
    assert (db.get_run("r"), db.events_since(0)) == before

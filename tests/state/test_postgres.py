"""What only the PostgreSQL backend has to get right (everything else runs on both engines
through the `db`, `ledger` and `shared_db` fixtures): the same records as SQLite, versions,
refusals that change nothing, the write lock's timeout, and the SQLite core without the
driver."""

from __future__ import annotations

import re
import subprocess
import sys
import threading

import psycopg
import pytest

from uet.errors import (DatabaseBusyError, NotALedgerError, SchemaVersionError, StorageError)
from uet.state import (Database, GateLedger, LATEST_VERSION, PatchLedger, WorkerLifecycle,
                       get_db, init_db)

DIFF = "--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-a\n+b\n"
ULID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def _scenario(db: Database) -> list:
    """Every kind of public call, with what each returned (records as dicts)."""
    out: list = []
    for i, project in enumerate(["b", "a", "b", "a"]):
        db.create_run({"run_id": f"run-{i}", "project_id": project, "phase_id": "ph",
                       "created_at": f"2026-01-0{i + 1}T00:00:00.000000Z",
                       "metadata": {"z": 1, "a": [i, None, "é"], "n": {"k": 1.5}}})
    out.append(db.get_run("run-1"))
    out.append(db.list_runs())
    out.append(db.list_runs({"project_id": "a", "state": "pending"}, limit=1))
    out.append(db.list_runs({"workstream_id": None}, since="2026-01-02T00:00:00.000000Z"))
    out.append(db.resolve_run_id("run-3"))
    step = db.create_step_attempt({"step_attempt_id": "s1", "run_id": "run-0", "sequence": 1,
                                   "tool_id": "aider", "metadata": {"m": True}})
    db.create_step_attempt({"step_attempt_id": "s2", "run_id": "run-0", "sequence": 1,
                            "tool_id": "aider"})
    out.append(db.transition_step_attempt(step, "failed", exit_code=2, error_log="boom"))
    out.append(db.list_step_attempts("run-0"))
    out.append(db.transition_run("run-0", "running", expected="pending"))
    out.append(db.update_run("run-0", {"error_message": "x", "metadata": {"b": 2}}))
    db.create_event({"event_id": "e1", "run_id": "run-0", "event_type": "tool.output",
                     "timestamp": "2026-01-01T00:00:00.000000Z", "data": {"line": "ok"}})
    workers = WorkerLifecycle(db)
    out.append(workers.spawn_worker("w1", "python", {"lang": "py"}))
    workers.transition_state("w1", "IDLE")
    out.append(workers.claim_run("w1"))
    out.append(workers.get_idle_workers())
    out.append(workers.list_workers())
    out.append(workers.terminate_worker("w1"))
    patches = PatchLedger(db)
    patch = patches.record_patch(DIFF, step_attempt_id="s1")
    out.append(patch)
    out.append(patches.record_patch(DIFF, step_attempt_id="s1") == patch)
    entry = patches.create_entry(patch, "PH-1", workstream_id="WS")
    out.append(patches.set_validation(entry.ledger_id, format=True, scope=False))
    out.append(patches.transition_state(entry.ledger_id, "validated", "checked"))
    out.append(patches.list_entries())
    out.append(patches.history_of_run("run-0"))
    gates = GateLedger(db)
    lint = gates.define_gate("LINT", "PH-1", "ruff", run_id="run-1")
    gates.define_gate("UNIT", "PH-1", "pytest", depends_on=["LINT"], run_id="run-1",
                      timeout_sec=60)
    gates.transition_state(lint["gate_id"], "RUNNING")
    out.append(gates.transition_state(lint["gate_id"], "FAILED", exit_code=1, stderr="E1"))
    out.append(gates.list_gates("PH-1"))
    out.append(db.list_events("run-0"))
    out.append(db.events_since(0, limit=1000))
    db.delete_run("run-3")
    out.append(db.events_since(0, limit=1000)[-1]["seq"])
    return out


def _masked(value, names: dict):
    """Ids the ledger generated and clock readings replaced by stable placeholders."""
    if isinstance(value, dict):
        return {k: _masked(v, names) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_masked(v, names) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return {"record": type(value).__name__, **_masked(vars(value), names)}
    if isinstance(value, str) and ULID.match(value):
        return names.setdefault(value, f"<id {len(names)}>")
    if isinstance(value, str) and STAMP.match(value) and not value.startswith("2026-01-0"):
        return "<now>"
    if isinstance(value, float) and value < 10:
        return "<duration>" if value != 60.0 else value
    return value


def test_every_public_call_returns_the_same_records_on_both_engines(tmp_path, postgres_url):
    with init_db(str(tmp_path / "l.db")) as lite, init_db(postgres_url) as pg:
        assert _masked(_scenario(pg), {}) == _masked(_scenario(lite), {})
        assert pg.schema_version() == lite.schema_version() == LATEST_VERSION


def test_versions_are_recorded_as_on_sqlite_and_reopening_changes_nothing(postgres_url):
    with init_db(postgres_url) as db:
        assert db.migrate() == (LATEST_VERSION, LATEST_VERSION)
        rows = db._backend.query("SELECT version, name FROM schema_migrations ORDER BY 1")
    with psycopg.connect(postgres_url) as conn:
        assert rows == [{"version": v, "name": n} for v, n in conn.execute(
            "SELECT version, name FROM schema_migrations ORDER BY 1")]
    from uet.state.sqlfiles import load_migrations
    assert [(r["version"], r["name"]) for r in rows] == [
        (m.version, m.name) for m in load_migrations("sqlite")]


def _catalog(url: str) -> list:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = current_schema() ORDER BY 1, 2").fetchall()


def test_a_schema_of_another_application_is_refused_untouched(postgres_url):
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE customers (id integer)")
    before = _catalog(postgres_url)
    with pytest.raises(NotALedgerError, match=r"holds tables that are not a uet ledger "
                                              r"\(customers\); refusing to change them"):
        Database(postgres_url)
    assert _catalog(postgres_url) == before


def test_a_newer_schema_is_refused_untouched(postgres_url):
    init_db(postgres_url).close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (%s, 'from_the_future', 'now')",
                     (LATEST_VERSION + 1,))
    before = _catalog(postgres_url)
    newer = (rf"has schema version {LATEST_VERSION + 1}, newer than this uet understands "
             rf"\(up to {LATEST_VERSION}\); upgrade uet to open it")
    with pytest.raises(SchemaVersionError, match=newer):
        Database(postgres_url)
    with pytest.raises(SchemaVersionError, match=newer):
        Database(postgres_url, read_only=True)
    assert _catalog(postgres_url) == before


def test_read_only_opens_refuse_writes_and_never_create(postgres_url):
    with pytest.raises(NotALedgerError,
                       match="holds no ledger yet; create it with `uet init`$"):
        Database(postgres_url, read_only=True)
    assert _catalog(postgres_url) == []
    with init_db(postgres_url) as db:
        db.create_run({"run_id": "r", "project_id": "p", "phase_id": "ph"})
    with Database(postgres_url, read_only=True) as reader:
        assert reader.get_run("r")["run_id"] == "r"
        read_only = (r"was opened read-only \(or the server is a read-only standby\): "
                     r"cannot execute ")
        with pytest.raises(StorageError, match=read_only + "INSERT in a read-only transaction"):
            reader.create_run({"project_id": "p", "phase_id": "ph"})
        with pytest.raises(StorageError, match=read_only + "SELECT FOR [A-Z ]*UPDATE in a "
                                                           "read-only transaction"):
            reader.transition_run("r", "running")
        assert [r["run_id"] for r in reader.list_runs()] == ["r"]
        assert [e["event_type"] for e in reader.events_since(0)] == ["run.created"]


def test_a_writer_past_the_busy_timeout_gets_a_typed_error_and_writes_nothing(postgres_url):
    holder, writer = init_db(postgres_url), Database(postgres_url, busy_timeout=0.2)
    holder.create_run({"run_id": "r", "project_id": "p", "phase_id": "ph"})
    holding, release = threading.Event(), threading.Event()

    def hold():
        with holder.atomic():  # the run's row, locked by an open block
            holder.update_run("r", {"exit_code": 1})
            holding.set()
            release.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert holding.wait(10)
        with pytest.raises(DatabaseBusyError, match=r"stayed locked by another writer for more "
                                                    r"than 0\.2 s"):
            writer.transition_run("r", "running")
        assert writer.get_run("r")["state"] == "pending"  # reads never wait for the lock
        # a writer of another record does not wait at all
        writer.create_run({"run_id": "other", "project_id": "p", "phase_id": "ph"})
    finally:
        release.set()
        thread.join(30)
    writer.transition_run("r", "running")  # usable again
    assert [e["event_type"] for e in holder.events_since(0)] == [
        "run.created", "run.updated", "run.created", "run.state_changed"]
    holder.close()
    writer.close()


def test_unreachable_and_misnamed_databases_are_typed_errors(postgres_server, postgres_url):
    base = postgres_server.rsplit("/", 1)[0]
    with pytest.raises(StorageError, match='database "no_such_database" does not exist; '
                                           "create the database first"):
        Database(base + "/no_such_database")
    with pytest.raises(StorageError, match=r'the server refused the login \(.*'
                                           r'role "nobody" does not exist\); check the user'):
        Database(base.replace("uet@", "nobody@") + "/postgres")
    with pytest.raises(StorageError, match="its search_path names no schema that exists"):
        Database(postgres_url.replace("uet_test_", "missing_"))


def test_get_db_keys_a_url_and_repr_hides_the_password(postgres_url):
    assert get_db(postgres_url) is get_db(postgres_url)
    url = postgres_url.replace("uet@", "uet:s3cret@")
    with Database(url) as db:  # trust authentication: any password is accepted
        assert "s3cret" not in repr(db) and "uet:***@" in repr(db)
        assert "s3cret" not in str(db.doctor())
        assert db.engine == "postgresql"


def test_doctor_reports_the_server_and_every_table(postgres_url):
    with init_db(postgres_url) as db:
        db.create_run({"project_id": "p", "phase_id": "ph"})
        facts = db.doctor()
    assert facts["integrity_check"] == ["ok"] and facts["foreign_keys"] is True
    assert facts["schema_version"] == LATEST_VERSION and facts["engine"] == "postgresql"
    assert facts["row_counts"]["runs"] == 1 and facts["row_counts"]["run_events"] == 1
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE run_events DISABLE TRIGGER run_events_notify")
    with Database(postgres_url, read_only=True) as db:
        assert db.doctor()["integrity_check"] == ["trigger run_events_notify is disabled"]


def test_the_sqlite_core_works_without_the_postgresql_driver(tmp_path):
    program = (
        "import sys\n"
        "sys.modules['psycopg'] = sys.modules['psycopg_pool'] = None  # not installed\n"
        "import uet.cli, uet.state\n"
        "from uet.errors import StorageError\n"
        "from uet.state import Database\n"
        "with Database(sys.argv[1]) as db:\n"
        "    db.create_run({'project_id': 'p', 'phase_id': 'ph'})\n"
        "    print(len(db.list_runs()))\n"
        "try:\n"
        "    Database('postgresql://127.0.0.1/uet')\n"
        "except StorageError as exc:\n"
        "    print(exc)\n")
    result = subprocess.run([sys.executable, "-c", program, str(tmp_path / "l.db")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    count, message = result.stdout.splitlines()
    assert count == "1" and "pip install 'uet[postgres]'" in message
    imported = subprocess.run(
        [sys.executable, "-c", "import sys, uet.state, uet.cli; print('psycopg' in sys.modules)"],
        capture_output=True, text=True, timeout=60)
    assert imported.stdout.strip() == "False"


def test_a_dropped_session_costs_one_call_not_the_instance(postgres_url):
    """The server ends the session under the instance's connection (a restart, an idle
    timeout): that call fails with StorageError, the next ones work on a new connection."""
    with init_db(postgres_url) as db:
        db.create_run({"run_id": "before", "project_id": "p", "phase_id": "ph"})
        pid = db._backend.query_value("SELECT pg_backend_pid()")
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        # the reason libpq gives for the lost session varies with timing; the rule does not
        with pytest.raises(StorageError, match="^cannot reach the PostgreSQL server of ledger "
                                               f"{re.escape(postgres_url)} "):
            db.create_run({"run_id": "lost", "project_id": "p", "phase_id": "ph"})
        for i in range(3):  # writes only: they must recover by themselves
            db.create_run({"run_id": f"after-{i}", "project_id": "p", "phase_id": "ph"})
        assert {r["run_id"] for r in db.list_runs()} == {"before", "after-0", "after-1",
                                                         "after-2"}


def test_writers_keep_seq_order_under_a_stricter_default_isolation(postgres_url):
    """A server or role defaulting to SERIALIZABLE must not break the trail: uet pins READ
    COMMITTED for its writes."""
    url = postgres_url + "%20-c%20default_transaction_isolation%3Dserializable"
    init_db(url).close()
    errors: list = []

    def append(db, n):
        try:
            for i in range(40):
                db.create_event({"run_id": "r", "event_type": "tick", "data": {"n": n}})
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    dbs = [Database(url) for _ in range(4)]
    dbs[0].create_run({"run_id": "r", "project_id": "p", "phase_id": "ph"})
    assert dbs[0]._backend.query_value("SHOW default_transaction_isolation") == "serializable"
    threads = [threading.Thread(target=append, args=(db, n)) for n, db in enumerate(dbs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [e["seq"] for e in dbs[0].events_since(0, limit=1000)] == list(range(1, 162))
    for db in dbs:
        db.close()


def test_closing_inside_a_transaction_does_not_hang(postgres_url):
    db = init_db(postgres_url)
    with db._backend.transaction() as tx:
        tx.run("insert_run", {
            "run_id": "r", "project_id": "p", "phase_id": "ph", "workstream_id": None,
            "execution_request_id": None, "created_at": "2026-01-01T00:00:00.000000Z",
            "started_at": None, "ended_at": None, "state": "pending", "exit_code": None,
            "error_message": None, "metadata": None, "priority": None})
        db.close()  # returns at once; the running transaction still commits
    assert db.closed
    with init_db(postgres_url) as again:
        assert again.get_run("r")["run_id"] == "r"


def test_urls_never_show_a_password_not_even_a_malformed_one():
    from uet.state.names import redact
    assert redact("postgresql://u:pw@h:5/db?sslpassword=y&password=x&a=1") == (
        "postgresql://u:***@h:5/db?sslpassword=***&password=***&a=1")
    with pytest.raises(StorageError, match=r"^postgresql://u:\*\*\*@127\.0\.0\.1:1/x is not "
                                           "a PostgreSQL URL that libpq accepts") as info:
        Database("postgresql://u:p%zzsecret@127.0.0.1:1/x")
    assert "zzsecret" not in str(info.value)

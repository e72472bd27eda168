"""`Database.gc`: finished runs that ended before the cutoff go with every record that belongs
to them, and nothing else changes — on an in-memory ledger, a file and PostgreSQL.

Every check compares whole tables: a snapshot of every row before, the model's expectation
(the rows of the runs it removes taken out) after. Orphans are looked for by query on both
engines, and with `PRAGMA foreign_key_check` on SQLite.
"""

from __future__ import annotations

import os
import sqlite3
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import emptied_postgres_ledger
from uet.errors import StorageError, ValidationError
from uet.state import Database, GateLedger, PatchLedger, WorkerLifecycle, init_db
from uet.state.ids import normalize_timestamp
from uet.state.retention import FINISHED_STATES, TABLES, cutoff_of

NOW = datetime.now(timezone.utc)
DIFF = "--- a/app.py\n+++ b/app.py\n@@ -1 +1 @@\n-x = {n}\n+x = {m}\n"
# every table of the ledger with its key, for whole-table snapshots
KEYS = {"runs": "run_id", "step_attempts": "step_attempt_id", "run_events": "event_id",
        "patches": "patch_id", "patch_ledger_entries": "ledger_id", "test_gates": "gate_id",
        "gate_dependencies": "gate_id, depends_on", "workers": "worker_id",
        "ledger_counters": "name"}
# rows whose parent is gone, by query (the same on both engines)
ORPHANS = {
    "step_attempts": "SELECT count(*) AS n FROM step_attempts AS c "
                     "WHERE NOT EXISTS (SELECT 1 FROM runs AS p WHERE p.run_id = c.run_id)",
    "run_events": "SELECT count(*) AS n FROM run_events AS c WHERE c.run_id IS NOT NULL "
                  "AND NOT EXISTS (SELECT 1 FROM runs AS p WHERE p.run_id = c.run_id)",
    "patches": "SELECT count(*) AS n FROM patches AS c WHERE (c.run_id IS NOT NULL AND NOT "
               "EXISTS (SELECT 1 FROM runs AS p WHERE p.run_id = c.run_id)) OR "
               "(c.step_attempt_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM step_attempts "
               "AS p WHERE p.step_attempt_id = c.step_attempt_id))",
    "patch_ledger_entries": "SELECT count(*) AS n FROM patch_ledger_entries AS c WHERE NOT "
                            "EXISTS (SELECT 1 FROM patches AS p WHERE p.patch_id = c.patch_id)",
    "test_gates": "SELECT count(*) AS n FROM test_gates AS c WHERE (c.run_id IS NOT NULL AND "
                  "NOT EXISTS (SELECT 1 FROM runs AS p WHERE p.run_id = c.run_id)) OR "
                  "(c.ledger_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM "
                  "patch_ledger_entries AS p WHERE p.ledger_id = c.ledger_id))",
    "gate_dependencies": "SELECT count(*) AS n FROM gate_dependencies AS c WHERE NOT EXISTS "
                         "(SELECT 1 FROM test_gates AS p WHERE p.gate_id = c.gate_id)",
    "workers": "SELECT count(*) AS n FROM workers AS c WHERE c.current_run_id IS NOT NULL "
               "AND NOT EXISTS (SELECT 1 FROM runs AS p WHERE p.run_id = c.current_run_id)",
}


def ago(days: float) -> str:
    return normalize_timestamp(NOW - timedelta(days=days), "t")


def make_run(db, *, project: str = "p1", state: str = "succeeded", created: float = 40.0,
             ended: float | None = None, records: bool = True) -> str:
    """A run created `created` days ago and, when finished, ended `ended` days ago (default:
    a minute after its creation); with `records`, a step attempt, a patch of it with a
    ledger entry, two gates of the run (one depending on the other), a gate of the entry
    and an event of its own."""
    run_id = db.create_run({"project_id": project, "phase_id": "PH",
                            "created_at": ago(created), "metadata": {"n": project}})
    if state == "pending":
        return run_id
    db.update_run(run_id, {"state": "running", "started_at": ago(created)})
    if records:
        step = db.create_step_attempt({"run_id": run_id, "sequence": 1, "tool_id": "aider",
                                       "started_at": ago(created)})
        patches = PatchLedger(db)
        patch = patches.record_patch(DIFF.format(n=1, m=run_id), step_attempt_id=step)
        entry = patches.create_entry(patch, "PH", "WS")
        gates = GateLedger(db)
        gates.define_gate("LINT", "PH", "ruff", run_id=run_id)
        gates.define_gate("UNIT", "PH", "pytest", run_id=run_id, depends_on=["LINT"])
        gates.define_gate("UNIT", "PH", "pytest", ledger_id=entry.ledger_id)
        db.create_event({"run_id": run_id, "event_type": "tool.output", "data": {"x": 1}})
        db.transition_step_attempt(step, "succeeded", exit_code=0)
    if state == "running":
        return run_id
    end = ago(ended if ended is not None else created - 1 / 1440)
    db.update_run(run_id, {"state": state, "ended_at": end})
    return run_id


def snapshot(db) -> dict[str, list[dict]]:
    return {table: db.backend.query(f"SELECT * FROM {table} ORDER BY {key}")
            for table, key in KEYS.items()}


def owners(before: dict[str, list[dict]]) -> dict[str, dict]:
    """For each table, row key -> the run it belongs to (None: no run)."""
    patch_run = {r["patch_id"]: r["run_id"] for r in before["patches"]}
    entry_run = {r["ledger_id"]: patch_run[r["patch_id"]] for r in before["patch_ledger_entries"]}
    gate_runs = {r["gate_id"]: {r["run_id"], entry_run.get(r["ledger_id"])} - {None}
                 for r in before["test_gates"]}
    return {"patch_ledger_entries": entry_run, "test_gates": gate_runs}


def belongs(table: str, row: dict, links: dict, removed: set[str]) -> bool:
    if table in ("runs", "step_attempts", "run_events", "patches"):
        return row["run_id"] in removed
    if table == "patch_ledger_entries":
        return links[table][row["ledger_id"]] in removed
    if table == "test_gates":
        return bool(links[table][row["gate_id"]] & removed)
    if table == "gate_dependencies":
        return bool(links["test_gates"][row["gate_id"]] & removed)
    return False


def expected_after(before: dict[str, list[dict]], removed: set[str]) -> dict[str, list[dict]]:
    """The snapshot once the runs of `removed` are gone with their records; the trail's
    deleted_event_seq mark raised past their events."""
    links = owners(before)
    after = {table: [row for row in rows if not belongs(table, row, links, removed)]
             for table, rows in before.items()}
    seqs = [e["seq"] for e in before["run_events"] if e["run_id"] in removed]
    after["ledger_counters"] = [
        {**row, "value": max([row["value"], *seqs])} if row["name"] == "deleted_event_seq"
        else row for row in before["ledger_counters"]]
    return after


def removed_counts(before, after) -> dict[str, int]:
    return {table: len(before[table]) - len(after[table]) for table in TABLES}


def assert_no_orphans(db) -> None:
    found = {table: db.backend.query(sql)[0]["n"] for table, sql in ORPHANS.items()}
    assert found == dict.fromkeys(ORPHANS, 0)
    if db.engine == "sqlite":
        assert db.backend.query("PRAGMA foreign_key_check") == []


def model_removed(runs: list[dict], cutoff: str, states=FINISHED_STATES, project=None,
                  keep_last=None, held=()) -> set[str]:
    """What gc must remove from runs (rows as get_run returns them), from the rules alone."""
    chosen = [r for r in runs if r["state"] in states
              and (project is None or r["project_id"] == project)]
    kept = set()
    if keep_last:
        for name in {r["project_id"] for r in chosen}:
            mine = sorted((r for r in chosen if r["project_id"] == name),
                          key=lambda r: (r["created_at"], r["run_id"]), reverse=True)
            kept |= {r["run_id"] for r in mine[:keep_last]}
    return {r["run_id"] for r in chosen if r["run_id"] not in kept and r["run_id"] not in held
            and r["created_at"] < cutoff and (r["ended_at"] or r["created_at"]) < cutoff}


def mixed_ledger(db) -> dict[str, str]:
    """Runs of every state, old and recent, in two projects; a worker and its events."""
    runs = {}
    for state in ("succeeded", "failed", "quarantined", "canceled", "pending", "running"):
        runs[f"old-{state}"] = make_run(db, state=state, created=40)
        runs[f"new-{state}"] = make_run(db, state=state, created=5)
    runs["old-p2"] = make_run(db, project="p2", created=50)
    runs["ended-late"] = make_run(db, created=45, ended=2)  # created long ago, ended lately
    runs["bare"] = make_run(db, created=60, records=False)
    workers = WorkerLifecycle(db)
    workers.spawn_worker("w1", "testing", {"tool": "t"})
    workers.transition_state("w1", "IDLE")
    return runs


# -- what goes, what stays -----------------------------------------------------------------

def test_gc_removes_old_finished_runs_with_every_record_and_nothing_else(db):
    runs = mixed_ledger(db)
    before = snapshot(db)
    removed = {runs[k] for k in ("old-succeeded", "old-failed", "old-quarantined",
                                 "old-canceled", "old-p2", "bare")}
    assert model_removed(before["runs"], ago(30)) == removed
    expected = expected_after(before, removed)

    dry = db.gc("30d", dry_run=True)
    assert snapshot(db) == before  # a dry run changes nothing
    result = db.gc("30d")

    assert snapshot(db) == expected
    assert result.deleted == dry.deleted == removed_counts(before, expected)
    assert result.deleted["runs"] == 6 and result.deleted["test_gates"] == 15
    assert result.deleted["gate_dependencies"] == 5 and result.deleted["patches"] == 5
    assert result.states == FINISHED_STATES and not result.dry_run
    assert result.examined == 7 and result.skipped == 1 and result.kept == 0
    assert_no_orphans(db)
    # pending and running runs, however old, and a run that ended lately are all there
    for key in ("old-pending", "old-running", "ended-late"):
        assert db.get_run(runs[key]) is not None
    assert db.gc("30d").deleted == dict.fromkeys(TABLES, 0)  # nothing left to do


def test_states_narrow_and_project_restricts(db):
    runs = mixed_ledger(db)
    before = snapshot(db)
    result = db.gc(timedelta(days=30), states="succeeded, canceled", project_id="p1")
    removed = {runs["old-succeeded"], runs["old-canceled"], runs["bare"]}
    assert model_removed(before["runs"], result.cutoff, ("succeeded", "canceled"),
                         "p1") == removed
    assert snapshot(db) == expected_after(before, removed)
    assert result.states == ("succeeded", "canceled")
    before = snapshot(db)
    result = db.gc("30d", states=["failed"], project_id="p2")
    assert result.runs == 0 and snapshot(db) == before  # p2 has only a succeeded run
    result = db.gc("30d", project_id="p2")
    assert result.runs == 1 and db.get_run(runs["old-p2"]) is None
    assert_no_orphans(db)


def test_keep_last_keeps_the_newest_runs_of_each_project(db):
    made = {p: [make_run(db, project=p, created=100 - i, records=(i < 2)) for i in range(6)]
            for p in ("a", "b")}
    made["c"] = [make_run(db, project="c", created=90)]  # fewer than keep_last: all stay
    make_run(db, project="a", state="running", created=10)  # not counted: not finished
    before = snapshot(db)
    expected = expected_after(before, set(made["a"][:4] + made["b"][:4]))

    result = db.gc("30d", keep_last=2)

    assert snapshot(db) == expected
    assert result.runs == 8 and result.kept == 5
    assert_no_orphans(db)
    # with a project: that project's newest only
    result = db.gc("30d", keep_last=1, project_id="a")
    assert result.runs == 1 and db.get_run(made["a"][4]) is None
    assert db.get_run(made["a"][5]) and db.get_run(made["b"][4]) and db.get_run(made["c"][0])


def test_keep_last_counts_only_the_chosen_states(db):
    failed = [make_run(db, state="failed", created=50 - i, records=False) for i in range(3)]
    succeeded = [make_run(db, created=40 - i, records=False) for i in range(3)]
    result = db.gc("30d", states="failed", keep_last=1)
    assert result.runs == 2
    assert [db.get_run(r) is not None for r in failed + succeeded] == [
        False, False, True, True, True, True]


def test_the_cutoff_is_when_a_run_ended_or_without_an_end_when_it_was_created(db):
    late = make_run(db, created=60, ended=10, records=False)
    early = make_run(db, created=60, ended=40, records=False)
    no_end = make_run(db, created=60, records=False)
    db.update_run(no_end, {"ended_at": None})  # as a seed ledger may hold it
    assert db.get_run(no_end)["ended_at"] is None
    assert db.gc("30d").runs == 2
    assert db.get_run(late) and not db.get_run(early) and not db.get_run(no_end)
    # a timestamp works as well as an age
    assert db.gc(ago(5)).runs == 1 and db.get_run(late) is None


def test_a_run_a_worker_still_holds_stays_until_the_worker_lets_it_go(db):
    workers = WorkerLifecycle(db)
    workers.spawn_worker("w1", "testing", {})
    workers.transition_state("w1", "IDLE")
    run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
    workers.claim_run("w1")
    db.transition_run(run_id, "succeeded", exit_code=0)  # the worker has not released it
    assert workers.get_worker("w1").current_run_id == run_id

    result = db.gc("0s")
    assert result.runs == 0 and result.skipped == 1 and db.get_run(run_id) is not None

    workers.release("w1")
    worker = workers.get_worker("w1")
    assert db.gc("0s").runs == 1 and db.get_run(run_id) is None
    assert workers.get_worker("w1") == worker  # the worker's record is untouched
    assert_no_orphans(db)


def test_the_trail_never_hands_out_a_deleted_seq_again(db):
    for i in range(3):
        make_run(db, created=0.01)  # the newest runs of the ledger
    last = db.latest_event_seq()
    assert last > 0
    assert db.gc("0s").runs == 3  # the newest runs: every event of the trail goes
    assert db.events_since(0) == [] or all(e["run_id"] is None for e in db.events_since(0))
    run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
    event_id = db.create_event({"run_id": run_id, "event_type": "after"})
    seqs = [e["seq"] for e in db.list_events(run_id)]
    assert min(seqs) > last and [e["event_id"] for e in db.events_since(last)][-1] == event_id
    if db.db_path != ":memory:":  # another connection, as another process has
        with Database(db.db_path) as other:
            other_run = other.create_run({"project_id": "p", "phase_id": "ph"})
            assert other.list_events(other_run)[0]["seq"] > max(seqs)


def test_progress_is_called_after_each_batch_and_small_batches_give_the_same_end(db):
    runs = [make_run(db, created=40 + i, records=i % 3 == 0) for i in range(9)]
    make_run(db, created=1)
    before = snapshot(db)
    seen = []
    result = db.gc("30d", batch_size=2, progress=lambda r: seen.append(
        (r.examined, r.runs, r.to_examine)))
    assert snapshot(db) == expected_after(before, set(runs))
    assert result.batches == 5 and result.runs == 9
    assert seen[0] == (0, 0, 9) and seen[-1] == (9, 9, 9)
    assert [s[0] for s in seen] == sorted(s[0] for s in seen)
    assert result.longest_batch_seconds >= result.last_batch_seconds > 0


# -- refusals --------------------------------------------------------------------------------

REFUSED = [
    (dict(older_than=timedelta(days=-1)), "older_than", "must not be negative"),
    (dict(older_than="-3d"), "older_than", "must not be negative"),
    (dict(older_than="3 fortnights"), "older_than", "neither an age"),
    (dict(older_than="99999999999d"), "older_than", "before the year 1"),
    (dict(older_than=normalize_timestamp(NOW + timedelta(days=1), "t")), "older_than",
     "in the future"),
    (dict(older_than=None), "older_than", "is required"),
    (dict(older_than=30), "older_than", "got int 30"),
    (dict(older_than=True), "older_than", "got bool True"),
    (dict(states="running"), "states", "never deletes running runs"),
    (dict(states=["succeeded", "pending"]), "states", "never deletes pending runs"),
    (dict(states="bogus"), "states", "unknown run state 'bogus'"),
    (dict(states=[]), "states", "names no state"),
    (dict(states=""), "states", "names no state"),
    (dict(states=7), "states", "must be run state names"),
    (dict(project_id=""), "project_id", "non-empty string"),
    (dict(project_id="a\x00b"), "project_id", "NUL"),
    (dict(keep_last=-1), "keep_last", "from 0 to"),
    (dict(keep_last="3"), "keep_last", "from 0 to"),
    (dict(keep_last=True), "keep_last", "from 0 to"),
    (dict(batch_size=0), "batch_size", "from 1 to 10,000"),
    (dict(batch_size=10_001), "batch_size", "from 1 to 10,000"),
    (dict(batch_size=2.5), "batch_size", "from 1 to 10,000"),
    (dict(dry_run="yes"), "dry_run", "True or False"),
    (dict(vacuum=1), "vacuum", "True or False"),
    (dict(progress=5), "progress", "callable"),
]


def test_bad_arguments_are_refused_naming_the_field_and_change_nothing(db):
    mixed_ledger(db)
    before = snapshot(db)
    for arguments, field, message in REFUSED:
        arguments = {"older_than": "1d", **arguments}
        with pytest.raises(ValidationError, match=message) as raised:
            db.gc(arguments.pop("older_than"), **arguments)
        assert raised.value.field == field, arguments
    assert snapshot(db) == before


def test_gc_inside_an_atomic_block_is_refused(db):
    make_run(db, records=False)
    before = snapshot(db)
    with db.atomic():
        with pytest.raises(ValidationError, match="outside an atomic"):
            db.gc("30d")
    assert snapshot(db) == before


def test_a_read_only_ledger_counts_but_refuses_to_delete(file_db):
    mixed_ledger(file_db)
    before = snapshot(file_db)
    with Database(file_db.db_path, read_only=True) as reader:
        assert reader.gc("30d", dry_run=True).runs == 6
        with pytest.raises(StorageError):
            reader.gc("30d")
    assert snapshot(file_db) == before


def test_cutoff_of_reads_ages_and_timestamps():
    now = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)
    assert cutoff_of("30d", now=now) == "2026-01-30T12:00:00.000000Z"
    assert cutoff_of(" 2 w ", now=now) == "2026-02-15T12:00:00.000000Z"
    assert cutoff_of("90m", now=now) == "2026-03-01T10:30:00.000000Z"
    assert cutoff_of(timedelta(0), now=now) == "2026-03-01T12:00:00.000000Z"
    assert cutoff_of("2026-01-31", now=now) == "2026-01-31T00:00:00.000000Z"
    assert cutoff_of(datetime(2026, 2, 1, 13, tzinfo=timezone(timedelta(hours=1))),
                     now=now) == "2026-02-01T12:00:00.000000Z"


# -- space -------------------------------------------------------------------------------------

def fill(db, runs: int) -> list[str]:
    with db.atomic():
        return [make_run(db, created=40, records=False) for _ in range(runs)]


def big_metadata(db, run_ids: list[str]) -> None:
    with db.atomic():
        for run_id in run_ids:
            db.update_run(run_id, {"metadata": {"blob": "x" * 4000}})


def test_sqlite_keeps_free_pages_unless_asked_to_vacuum(file_db):
    big_metadata(file_db, fill(file_db, 300))
    result = file_db.gc("30d")
    assert result.runs == 300
    # gc checkpointed the log itself between batches; the connection's own setting is back
    assert file_db.backend.query_value("PRAGMA wal_autocheckpoint") == 1000
    space = result.vacuum
    assert space["mode"] == "none" and space["auto_vacuum"] == "none"
    assert space["free_bytes"] > 1_000_000 and "reused by new records" in space["note"]
    big_metadata(file_db, fill(file_db, 300))  # the free pages are used again
    assert file_db.gc("1000d").vacuum["free_bytes"] < space["free_bytes"] / 4
    result = file_db.gc("30d", vacuum=True)
    space = result.vacuum
    assert space["mode"] == "full" and space["free_bytes_after"] == 0
    assert space["file_bytes_after"] < space["file_bytes"] / 4
    assert file_db.doctor()["integrity_check"] == ["ok"]


def test_an_incremental_auto_vacuum_ledger_is_shrunk_in_small_steps(db_path):
    init_db(db_path).close()
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    conn.execute("VACUUM")  # what switching an existing file takes
    conn.close()
    with Database(db_path) as db:
        big_metadata(db, fill(db, 300))
        space = db.gc("30d").vacuum
        assert space["auto_vacuum"] == space["mode"] == "incremental"
        assert space["free_bytes"] > 1_000_000 and space["free_bytes_after"] == 0
        assert space["file_bytes_after"] <= space["file_bytes"] - space["free_bytes"]
        assert db.doctor()["integrity_check"] == ["ok"]


def test_vacuum_is_autovacuums_job_on_postgresql_and_none_in_memory(db):
    fill(db, 3)
    space = db.gc("30d", vacuum=True).vacuum
    if db.engine == "postgresql":
        assert space["mode"] == "autovacuum" and "autovacuum" in space["note"]
    elif db.db_path == ":memory:":
        assert space is None
    else:  # a full VACUUM when there are free pages to give back, else none
        assert space["mode"] == ("full" if space["free_bytes"] else "none")


# -- the rules, on random ledgers ----------------------------------------------------------------

ages = st.floats(min_value=0.0, max_value=60.0, allow_nan=False)
ledgers = st.lists(st.tuples(st.sampled_from(["a", "b", "c"]),
                             st.sampled_from(["pending", "running", *FINISHED_STATES]),
                             ages, st.floats(min_value=0.0, max_value=1.0)),
                   max_size=14)
calls = st.fixed_dictionaries({
    "cutoff_days": ages,
    "states": st.one_of(st.none(), st.sets(st.sampled_from(FINISHED_STATES), min_size=1)),
    "project_id": st.one_of(st.none(), st.sampled_from(["a", "b", "c"])),
    "keep_last": st.one_of(st.none(), st.integers(min_value=0, max_value=4)),
    "batch_size": st.integers(min_value=1, max_value=5),
})


def check_against_the_model(db, runs, call) -> None:
    for project, state, created, share in runs:
        # ended a share of the way from creation to now (share 1: a minute before now)
        make_run(db, project=project, state=state, created=created,
                 ended=max(created * (1 - share), 1 / 1440), records=False)
    before = snapshot(db)
    cutoff = ago(call["cutoff_days"])
    states = tuple(s for s in FINISHED_STATES if s in (call["states"] or FINISHED_STATES))
    removed = model_removed(before["runs"], cutoff, states, call["project_id"],
                            call["keep_last"])
    expected = expected_after(before, removed)
    arguments = dict(states=call["states"], project_id=call["project_id"],
                     keep_last=call["keep_last"], batch_size=call["batch_size"])
    dry = db.gc(cutoff, dry_run=True, **arguments)
    assert snapshot(db) == before
    result = db.gc(cutoff, **arguments)
    assert snapshot(db) == expected
    assert result.deleted == dry.deleted == removed_counts(before, expected)
    assert_no_orphans(db)


@settings(max_examples=40, deadline=None)
@given(runs=ledgers, call=calls)
def test_gc_removes_exactly_what_the_rules_say_on_random_ledgers(runs, call):
    with init_db(":memory:") as db:
        check_against_the_model(db, runs, call)


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(runs=ledgers, call=calls)
def test_gc_removes_exactly_what_the_rules_say_on_random_postgresql_ledgers(
        _reused_postgres_ledger, runs, call):
    with Database(emptied_postgres_ledger(_reused_postgres_ledger)) as db:
        check_against_the_model(db, runs, call)


@pytest.mark.parametrize("ledger_fixture", ["in_memory_db", "file_db"])
def test_values_stored_past_uets_checks_do_not_break_gc(request, ledger_fixture):
    """SQLite only: PostgreSQL's text columns hold nothing but text."""
    from helpers import raw_execute
    db = request.getfixturevalue(ledger_fixture)
    odd = make_run(db, created=40, records=False)
    plain = make_run(db, created=40, records=False)
    raw_execute(db, "UPDATE runs SET ended_at = x'00ff' WHERE run_id = ?", (odd,))
    result = db.gc("30d", keep_last=1)
    # a blob sorts after every text, as SQLite orders it: it did not end before the cutoff;
    # and of the two, keep_last keeps the newest (by created_at, then run_id): `plain`
    assert result.runs == 0 and db.get_run(odd) and db.get_run(plain)
    assert db.gc("30d").runs == 1 and db.get_run(odd) and not db.get_run(plain)


def test_gc_starts_the_write_ahead_log_over_and_gives_its_space_back(file_db, monkeypatch):
    """While a reader stays in the write-ahead log, no checkpoint can start it over and every
    batch makes it longer (with writers going on that is all the time: a 1,000,000-run gc
    grew it past 40 GB). Once the log is long, gc's RESTART checkpoint starts it over as
    soon as the reader leaves; at the end a TRUNCATE gives the file's space back."""
    from uet.state import retention
    monkeypatch.setattr(retention, "RESTART_FRAMES", 64)
    runs = fill(file_db, 600)
    big_metadata(file_db, runs)
    file_db.backend.query("PRAGMA wal_checkpoint(TRUNCATE)")
    wal = file_db.db_path + "-wal"
    reader = sqlite3.connect(file_db.db_path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM runs").fetchone()   # a snapshot in the log
    sizes = []

    def progress(result):
        if result.batches:
            sizes.append(os.path.getsize(wal))
        if result.batches == 3 and reader.in_transaction:
            reader.execute("COMMIT")                         # the reader leaves

    result = file_db.gc("30d", batch_size=50, progress=progress)
    reader.close()
    assert result.runs == 600 and result.batches > 6
    # the log grew while the reader stayed, and stopped growing once it could start over
    assert max(sizes[:3]) > 0
    assert max(sizes[4:]) <= max(sizes[:4]) * 2
    assert os.path.getsize(wal) == 0                         # its space given back
    assert file_db.backend.query_value("PRAGMA busy_timeout") == 10_000
    assert file_db.backend.query_value("PRAGMA wal_autocheckpoint") == 1000
    assert file_db.doctor()["integrity_check"] == ["ok"]

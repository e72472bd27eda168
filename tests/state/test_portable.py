"""Export, import and backup (issue 18), through the API: export -> import reproduces every
row of every table exactly, on each pair of engines and with hostile values; what the import
refuses it names by line, having changed nothing; the event trail keeps its order and its
never-reused seqs; the export streams in constant memory; a backup is a checked copy."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import time
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from build_ledger import build
from helpers import emptied_postgres_ledger
from test_cli_display import accepted, fill, raw_only, raw_sqlite_values
from test_cli_portable import DATA_TABLES, table_rows
from uet.errors import SchemaVersionError, UetError, ValidationError
from uet.state import Database, GateLedger, PatchLedger, WorkerLifecycle, init_db, portable
from uet.state.portable import LedgerFileError

def next_seq(db: Database) -> tuple[int, int]:
    """(deleted_event_seq, the highest seq ever handed out: the next event gets one more)."""
    return (db.backend.read("deleted_event_seq")[0]["seq"],
            db.backend.read("event_seq_high_water")[0]["seq"])


def export_text(db: Database, **selection) -> str:
    out = io.StringIO()
    db.export_jsonl(out, **selection)
    return out.getvalue()


def import_text(db: Database, text: str, **options) -> dict:
    return db.import_jsonl(io.BytesIO(text.encode("utf-8")), **options)


def lines_of(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def a_full_ledger(db: Database, tag: str = "x") -> dict[str, str]:
    """One of every record, with a worker holding a run, a patch of no run, a gate of a
    patch entry only, a deleted run (its seqs are never handed out again)."""
    workers = WorkerLifecycle(db)
    workers.spawn_worker(f"{tag}-w1", "code_edit", {"language": "python"})
    workers.transition_state(f"{tag}-w1", "IDLE")
    run = db.create_run({"project_id": "alpha", "phase_id": "PH-1", "metadata": {"k": [1, 2.5]},
                         "created_at": "2026-01-10T00:00:00Z"})
    claimed = workers.claim_run(f"{tag}-w1")
    assert claimed["run_id"] == run
    step = db.create_step_attempt({"run_id": run, "sequence": 1, "tool_id": "aider"})
    db.update_step_attempt(step, {"model": "m", "input_tokens": 5, "cost_usd": 0.25})
    patches = PatchLedger(db)
    patch = patches.record_patch("--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n",
                                 step_attempt_id=step)
    entry = patches.create_entry(patch, "PH-1", "WS-1")
    patches.set_validation(entry.ledger_id, format=True, scope=False)
    patches.transition_state(entry.ledger_id, "validated", reason="ok")
    loose = patches.record_patch("--- a/y\n+++ b/y\n@@ -1 +1 @@\n-a\n+c\n")
    patches.create_entry(loose, "PH-9")
    gates = GateLedger(db)
    lint = gates.define_gate("LINT", "PH-1", "ruff .", run_id=run, timeout_sec=30)
    gates.transition_state(lint["gate_id"], "RUNNING")
    gates.transition_state(lint["gate_id"], "FAILED", exit_code=1, stderr="E501")
    gates.define_gate("UNIT", "PH-1", "pytest", run_id=run, depends_on=["LINT"])
    gates.define_gate("SECURITY", "PH-1", "bandit", ledger_id=entry.ledger_id)
    other = db.create_run({"project_id": "beta", "phase_id": "PH-2",
                           "created_at": "2026-03-01T00:00:00Z"})
    db.create_event({"run_id": other, "event_type": "note", "data": {"n": 1}})
    gone = db.create_run({"project_id": "beta", "phase_id": "PH-2"})
    db.create_event({"run_id": gone, "event_type": "note", "data": {}})
    db.delete_run(gone)  # the newest seqs go with it: deleted_event_seq keeps them taken
    return {"run": run, "other": other, "step": step, "entry": entry.ledger_id}


@pytest.fixture
def source(tmp_path) -> Database:
    db = init_db(str(tmp_path / "source.db"))
    yield db
    db.close()


def fresh(tmp_path, name: str = "target.db") -> Database:
    return init_db(str(tmp_path / name))


# -- the format ----------------------------------------------------------------------------

def test_the_records_cover_every_column_of_every_table(tmp_path):
    path = str(tmp_path / "ledger.db")
    init_db(path).close()
    conn = sqlite3.connect(path)
    tables = {r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}
    columns = {t: [r[1] for r in conn.execute(f"PRAGMA table_info({t})")] for t in tables}
    conn.close()
    assert tables - {"schema_migrations", "ledger_counters"} == set(DATA_TABLES)
    for record in portable.RECORDS:  # in the schema's order: the statements list them so
        assert [f.name for f in record.fields] == columns[record.table], record.type
    assert columns["gate_dependencies"] == ["gate_id", "depends_on"]  # inside each gate


def test_the_export_is_a_header_the_records_in_order_and_an_end_line(source):
    a_full_ledger(source)
    text = export_text(source)
    assert text.isascii() and text.endswith("\n")
    lines = lines_of(text)
    header, end = lines[0], lines[-1]
    assert header["type"] == "header" and header["format"] == "uet-jsonl"
    assert header["format_version"] == 1 and header["schema_version"] == \
        source.schema_version()
    assert header["uet_version"] and header["engine"] == "sqlite"
    seqs = header["event_seq"]  # the deleted run had the newest events
    assert seqs["handed_out"] == seqs["deleted"] > source.latest_event_seq() > 0
    kinds = [line["type"] for line in lines[1:-1]]
    order = [r.type for r in portable.RECORDS]
    assert kinds == sorted(kinds, key=order.index)  # workers first, events last
    assert end == {"type": "end", "counts": {k: kinds.count(k) for k in order}}
    seqs = [line["row"]["seq"] for line in lines if line["type"] == "event"]
    assert seqs == sorted(seqs) and len(seqs) == len(source.events_since(0))
    run = next(line["row"] for line in lines if line["type"] == "run")
    assert run["metadata"] == '{"k": [1, 2.5]}'  # the stored JSON text, byte for byte
    step = next(line["row"] for line in lines if line["type"] == "step_attempt")
    assert step["cost_usd"] == 0.25 and step["input_tokens"] == 5
    unit = next(line for line in lines if line["type"] == "gate"
                and line["row"]["gate_type"] == "UNIT")
    assert unit["depends_on"] == ["LINT"]


# -- round trips ---------------------------------------------------------------------------

def test_sqlite_to_sqlite_reproduces_every_row_and_continues_the_trail(tmp_path, source):
    a_full_ledger(source)
    text = export_text(source)
    target = fresh(tmp_path)
    report = import_text(target, text)
    assert report["events"] == {"kept_seq": len(source.events_since(0)), "renumbered": 0}
    assert report["skipped"] == {r.type: 0 for r in portable.RECORDS}
    assert table_rows(target.db_path) == table_rows(source.db_path)
    # the copy continues the source's trail: the same floor, the same next seq
    assert next_seq(target) == next_seq(source)
    # and reads back through the API as the source does
    for run in source.list_runs(limit=None):
        assert target.get_run(run["run_id"]) == run
        assert target.list_events(run["run_id"]) == source.list_events(run["run_id"])
    # exporting the copy gives the same records
    assert lines_of(export_text(target))[1:] == lines_of(text)[1:]


def test_sqlite_to_postgresql_and_back_reproduces_every_row(tmp_path, source, postgres_url):
    a_full_ledger(source)
    fill(source, ["\x1b[2J", "\u202e", "\U0001f600 x", "\u0301", "[bold]"], "\u2028" * 5000,
         150, "h", big_id=False)
    text = export_text(source)
    with init_db(postgres_url) as pg:
        import_text(pg, text)
        assert table_rows(postgres_url) == table_rows(source.db_path)
        assert next_seq(pg) == next_seq(source)
        back = export_text(pg)
    assert lines_of(back)[0]["engine"] == "postgresql"
    assert lines_of(back)[1:] == lines_of(text)[1:]
    target = fresh(tmp_path)
    import_text(target, back)
    assert table_rows(target.db_path) == table_rows(source.db_path)


def legacy_values(path: str, raw: list[str]) -> None:
    """What a SQLite ledger can hold past uet's rules, all of it within the schema's CHECKs:
    lone surrogates and NUL escaped in JSON text (a seed ledger's json.dumps), NUL and
    bytes that are not UTF-8 in plain text, BLOBs where timestamps belong, an infinite
    duration."""
    conn = sqlite3.connect(path)
    try:
        dumps = json.dumps  # ASCII: lone surrogates and NUL as \\u escapes
        conn.execute("UPDATE runs SET metadata = ?", (dumps({raw[0]: [raw[-1], "x"]}),))
        conn.execute("UPDATE run_events SET data = ? WHERE event_type = 'note'",
                     (dumps({"v": raw[-1]}),))
        conn.execute("UPDATE workers SET affinity = ? WHERE state = 'SPAWNING'",
                     (dumps({raw[0]: raw[-1]}),))  # fixed once a worker leaves SPAWNING
        conn.execute("UPDATE step_attempts SET metadata = ?", (dumps({"k": raw[0]}),))
        conn.execute("UPDATE runs SET error_message = ?", ("nul\x00inside\x1b",))
        conn.execute("UPDATE step_attempts SET error_log = CAST(? AS TEXT)",
                     (b"not utf-8 \xff\xfe and a NUL \x00",))
        conn.execute("UPDATE runs SET started_at = ?, ended_at = ?",
                     (b"\x1b[2J\xff", b"2026-01-31T12:00:00.000000Z"))
        conn.execute("UPDATE test_gates SET duration_sec = ? WHERE state = 'FAILED'",
                     (float("inf"),))
        conn.commit()
    finally:
        conn.close()


def test_values_kept_past_the_text_rule_come_back_exactly_into_sqlite(tmp_path, source):
    a_full_ledger(source)
    source.close()
    legacy_values(source.db_path, ["\ud800", "a\udc80b", "x\x00\x1b\ud834"])
    with Database(source.db_path) as db:
        text = export_text(db)
    assert text.isascii()
    lines = lines_of(text)
    run = next(line["row"] for line in lines if line["type"] == "run")
    assert run["error_message"] == {"$text": "bnVsAGluc2lkZRs="}
    assert run["started_at"] == {"$blob": "G1sySv8="}
    assert json.loads(run["metadata"]) == {"\ud800": ["x\x00\x1b\ud834", "x"]}
    gate = next(line["row"] for line in lines if line["type"] == "gate"
                and line["row"]["state"] == "FAILED")
    assert gate["duration_sec"] == {"$real": "Infinity"}
    target = fresh(tmp_path)
    import_text(target, text)
    assert table_rows(target.db_path) == table_rows(source.db_path)
    with sqlite3.connect(target.db_path) as conn:  # types too: text stays text
        assert conn.execute("SELECT typeof(error_log), hex(error_log) FROM step_attempts"
                            ).fetchone() == ("text", b"not utf-8 \xff\xfe and a NUL \x00"
                                             .hex().upper())
        assert conn.execute("SELECT typeof(started_at) FROM runs LIMIT 1").fetchone() == (
            "blob",)


def test_postgresql_refuses_what_it_cannot_store_naming_the_record(tmp_path, source,
                                                                   postgres_url):
    ids = a_full_ledger(source)
    source.close()
    legacy_values(source.db_path, ["\ud800", "\udfff"])
    with Database(source.db_path) as db:
        text = export_text(db)
    with init_db(postgres_url) as pg:
        before = table_rows(postgres_url)
        with pytest.raises(LedgerFileError, match=r"line \d+: run '[0-9A-Z]+': field "
                                                  r"'started_at' holds a BLOB, which a SQLite "
                                                  r"ledger kept past uet's text rule: "
                                                  r"PostgreSQL cannot store it") as caught:
            import_text(pg, text)
        assert caught.value.record == "run" and caught.value.field == "started_at"
        assert lines_of(text)[caught.value.line - 1]["row"]["run_id"] in (ids["run"],
                                                                       ids["other"])
        assert "nothing was imported" in str(caught.value)
        assert table_rows(postgres_url) == before
        fixed = "".join(line for line in text.splitlines(keepends=True)
                        if '"started_at":{"$blob"' not in line)
        with pytest.raises(LedgerFileError, match=r"step_attempt '[0-9A-Z]+': field "
                                                  r"'error_log' holds text that is not valid "
                                                  r"UTF-8 or holds NUL"):
            import_text(pg, fixed, skip_existing=True)


def test_json_that_the_ledger_itself_refuses_is_refused_by_name(tmp_path, source):
    fill(source, ["a", "b"], None, 2, "t", big_id=False)
    source.close()
    raw_sqlite_values(source.db_path, ["\ud800", "\x00"])  # NaN in metadata, past the CHECK
    with Database(source.db_path) as db:
        text = export_text(db)
    target = fresh(tmp_path)
    with pytest.raises(LedgerFileError, match=r"run '[0-9A-Z]+': field 'metadata' is not "
                                              r"valid JSON text \(NaN is not JSON\); nothing "
                                              r"was imported"):
        import_text(target, text)
    assert target.list_runs() == [] and target.events_since(0) == []


_examples = iter(range(10**6))


@settings(max_examples=12, deadline=None, derandomize=True,
          phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(texts=st.lists(accepted, min_size=1, max_size=8), raw=st.lists(raw_only, min_size=1),
       depth=st.integers(0, 198), deleted=st.booleans())
def test_any_ledger_round_trips_exactly(tmp_path, texts, raw, depth, deleted):
    n = next(_examples)
    path = str(tmp_path / f"p{n}.db")
    with init_db(path) as db:
        fill(db, texts, None, depth, "t", big_id=False)
        fill(db, texts[::-1], None, depth // 2, "u", big_id=False)
        if deleted:
            db.delete_run(db.list_runs(limit=1)[0]["run_id"])
    legacy_values(path, raw)
    with Database(path) as db:
        text = export_text(db)
        with init_db(str(tmp_path / f"q{n}.db")) as target:
            import_text(target, text)
            assert table_rows(target.db_path) == table_rows(path)
            assert next_seq(target) == next_seq(db)


@settings(max_examples=5, deadline=None, derandomize=True,
          phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(texts=st.lists(accepted, min_size=1, max_size=8), depth=st.integers(0, 198),
       deleted=st.booleans())
def test_any_ledger_round_trips_exactly_through_postgresql(tmp_path, postgres_url, texts,
                                                            depth, deleted):
    # PostgreSQL's text holds neither lone surrogates nor NUL: everything else goes in
    n = next(_examples)
    path = str(tmp_path / f"p{n}.db")
    with init_db(path) as db:
        fill(db, texts, None, depth, "t", big_id=False)
        if deleted:
            db.delete_run(db.list_runs(limit=1)[0]["run_id"])
        text = export_text(db)
        init_db(postgres_url).close()  # created by the first example, emptied for each
        with init_db(emptied_postgres_ledger(postgres_url)) as pg:
            import_text(pg, text)
            assert table_rows(postgres_url) == table_rows(path)
            assert next_seq(pg) == next_seq(db)
            back = export_text(pg)
        assert lines_of(back)[1:] == lines_of(text)[1:]


# -- a selection ---------------------------------------------------------------------------

def test_a_selection_exports_its_runs_with_all_that_belongs_to_them(tmp_path, source):
    ids = a_full_ledger(source)
    text = export_text(source, project_id="alpha", since="2026-01-01")
    lines = lines_of(text)
    assert lines[0]["selection"] == {"since": "2026-01-01T00:00:00.000000Z",
                                     "project_id": "alpha"}
    rows = {kind: [line["row"] for line in lines if line["type"] == kind]
            for kind in ("worker", "run", "step_attempt", "patch", "patch_entry", "gate",
                         "event")}
    assert [r["run_id"] for r in rows["run"]] == [ids["run"]]
    assert [r["step_attempt_id"] for r in rows["step_attempt"]] == [ids["step"]]
    assert len(rows["patch"]) == 1 and len(rows["patch_entry"]) == 1  # not the loose one
    assert {g["gate_type"] for g in rows["gate"]} == {"LINT", "UNIT", "SECURITY"}
    assert {e["run_id"] for e in rows["event"]} == {ids["run"]}  # no event of no run
    assert len(rows["worker"]) == 1  # every worker
    assert export_text(source, since="2026-02-01").count('"type":"run"') == 1  # only beta
    # the selection imports into a fresh ledger: every reference resolves
    target = fresh(tmp_path)
    report = import_text(target, text)
    assert report["imported"]["run"] == 1 and report["workers_without_their_run"] == 0
    assert target.get_run(ids["run"]) == source.get_run(ids["run"])
    assert target.list_events(ids["run"]) == source.list_events(ids["run"])
    assert WorkerLifecycle(target).get_worker("x-w1").current_run_id == ids["run"]


def test_a_bad_selection_is_refused():
    db = init_db(":memory:")
    with pytest.raises(ValidationError, match="since must be an ISO-8601 timestamp"):
        db.export_jsonl(io.StringIO(), since="yesterday")
    with pytest.raises(ValidationError, match="project_id must be a non-empty string"):
        db.export_jsonl(io.StringIO(), project_id="")


# -- seqs ----------------------------------------------------------------------------------

def test_into_a_ledger_with_a_trail_events_are_renumbered_after_it_in_order(tmp_path, source):
    a_full_ledger(source)
    text = export_text(source)
    target = fresh(tmp_path)
    own = target.create_run({"project_id": "own", "phase_id": "own"})
    for i in range(40):  # the target's trail is past the exported seqs
        target.create_event({"run_id": own, "event_type": "own", "data": {"i": i}})
    report = import_text(target, text)
    exported = [line["row"] for line in lines_of(text) if line["type"] == "event"]
    assert report["events"] == {"kept_seq": 0, "renumbered": len(exported)}
    trail = target.events_since(0, limit=10_000)
    assert [e["event_id"] for e in trail[:41]] == [e["event_id"] for e in
                                                   target.list_events(own)]
    assert [e["event_id"] for e in trail[41:]] == [e["event_id"] for e in exported]
    seqs = [e["seq"] for e in trail]
    assert seqs == sorted(set(seqs)) and seqs[41] == 42  # no seq twice, order kept
    # every other column exactly as exported
    assert [{k: v for k, v in e.items() if k != "seq"} for e in trail[41:]] == [
        {k: v for k, v in e.items() if k != "seq"} for e in source.events_since(0)]


def test_an_exported_seq_above_the_ledgers_is_kept_and_the_rest_renumbered(tmp_path, source):
    run = source.create_run({"project_id": "p", "phase_id": "ph"})
    for i in range(9):
        source.create_event({"run_id": run, "event_type": "e", "data": {"i": i}})
    text = export_text(source)  # seqs 1..10
    target = fresh(tmp_path)
    own = target.create_run({"project_id": "own", "phase_id": "own"})
    for i in range(4):
        target.create_event({"run_id": own, "event_type": "own", "data": {}})
    target.delete_run(own)  # seqs 1..5 were handed out: never again
    import_text(target, text)
    assert [e["seq"] for e in target.events_since(0)] == [6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
    assert [e["event_id"] for e in target.events_since(0)] == [
        e["event_id"] for e in source.events_since(0)]


def test_postgresql_takes_the_seqs_and_the_floor_of_the_source(tmp_path, source, postgres_url):
    a_full_ledger(source)
    text = export_text(source)
    with init_db(postgres_url) as pg:
        import_text(pg, text)
        assert [e["seq"] for e in pg.events_since(0, limit=10_000)] == [
            e["seq"] for e in source.events_since(0, limit=10_000)]
        assert next_seq(pg) == next_seq(source)  # the sequence continues past the floor
        own = pg.create_run({"project_id": "own", "phase_id": "own"})
        assert pg.list_events(own)[0]["seq"] == next_seq(source)[1] + 1


# -- skip, resume --------------------------------------------------------------------------

def test_existing_ids_are_refused_before_anything_is_written(tmp_path, source):
    ids = a_full_ledger(source)
    text = export_text(source)
    target = fresh(tmp_path)
    target.create_run({"run_id": ids["other"], "project_id": "mine", "phase_id": "mine"})
    before = table_rows(target.db_path)
    with pytest.raises(LedgerFileError, match=rf"line \d+: run '{ids['other']}' already exists "
                                              r"in ledger .*nothing was imported\. Import "
                                              r"with --skip-existing") as caught:
        import_text(target, text)
    assert caught.value.record == "run"
    assert table_rows(target.db_path) == before
    report = import_text(target, text, skip_existing=True)
    assert report["skipped"]["run"] == 1 and report["imported"]["run"] == 1
    assert target.get_run(ids["other"])["project_id"] == "mine"  # left as it was
    assert target.get_run(ids["run"]) == source.get_run(ids["run"])


def test_an_import_the_ledger_refuses_midway_goes_on_with_skip_existing(tmp_path, source):
    ids = a_full_ledger(source)
    text = export_text(source)
    lines = text.splitlines(keepends=True)
    # a step attempt whose run is neither in the file nor in the ledger: only the ledger
    # can tell (the check reads the file alone), so the runs before it are in by then
    number = next(i for i, line in enumerate(lines) if '"type":"step_attempt"' in line)
    broken = lines[:]
    broken[number] = broken[number].replace(ids["run"], "no-such-run")
    target = fresh(tmp_path)
    with pytest.raises(LedgerFileError, match=rf"line {number + 1}: step_attempt "
                                              rf"'{ids['step']}' refers to a record that is "
                                              r"neither in the file before it nor in the "
                                              rf"ledger .*the lines before line {number + 1} "
                                              r"were imported \(1 worker, 2 runs\), nothing "
                                              rf"from line {number + 1} on.*--skip-existing"
                       ) as caught:
        import_text(target, "".join(broken))
    assert caught.value.line == number + 1 and caught.value.record == "step_attempt"
    assert len(target.list_runs()) == 2 and target.list_step_attempts(ids["run"]) == []
    # the file fixed, the import goes on from there and the copy is exact
    report = import_text(target, text, skip_existing=True)
    assert report["skipped"]["run"] == 2 and report["imported"]["step_attempt"] == 1
    assert table_rows(target.db_path) == table_rows(source.db_path)
    assert next_seq(target) == next_seq(source)


# -- what an import refuses ------------------------------------------------------------------

def _edited(text: str, kind: str, change) -> str:
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        document = json.loads(line)
        if document["type"] == kind:
            changed = change(document)
            lines[i] = changed if isinstance(changed, str) else json.dumps(document) + "\n"
            break
    return "".join(lines)


def _set(kind: str, field: str, value) -> tuple:
    def change(document):
        document["row"][field] = value
    return kind, change


def _replace_line(kind: str, line: str) -> tuple:
    return kind, lambda document: line


REFUSED = [
    pytest.param(*_replace_line("run", "{not json\n"), r"is not JSON", id="not-json"),
    pytest.param(*_replace_line("run", "\n"), r"is empty", id="empty-line"),
    pytest.param(*_replace_line("run", "[1, 2]\n"), r"is not a record", id="not-an-object"),
    pytest.param(*_replace_line("run", '{"type": "wizard", "row": {}}\n'),
                 r"unknown record type 'wizard'", id="unknown-type"),
    pytest.param(*_set("run", "colour", "red"), r"unknown fields \['colour'\]",
                 id="unknown-field"),
    pytest.param(*_set("run", "exit_code", "3"), r"field 'exit_code' must be a number",
                 id="text-for-integer"),
    pytest.param(*_set("run", "exit_code", 2.5), r"field 'exit_code' must be an integer",
                 id="real-for-integer"),
    pytest.param(*_set("run", "exit_code", 1 << 64), r"out of the 64-bit integer range",
                 id="huge-integer"),
    pytest.param(*_set("run", "project_id", None), r"field 'project_id' cannot be empty",
                 id="null-required"),
    pytest.param(*_set("run", "phase_id", "a\x00b"), r"field 'phase_id' contains a NUL",
                 id="nul-in-text"),
    pytest.param(*_set("run", "phase_id", "a\ud800"), r"field 'phase_id' is not valid "
                                                      r"Unicode text", id="lone-surrogate"),
    pytest.param(*_set("run", "state", "finished"), r"field 'state' is 'finished', not one "
                                                    r"of pending", id="unknown-state"),
    pytest.param(*_set("run", "metadata", '{"a": NaN}'), r"field 'metadata' is not valid "
                                                         r"JSON text", id="nan-json"),
    pytest.param(*_set("run", "metadata", {"a": 1}), r"field 'metadata' holds an object",
                 id="object-not-text"),
    pytest.param(*_set("run", "run_id", ""), r"field 'run_id' cannot be empty text",
                 id="empty-key"),
    pytest.param(*_set("run", "run_id", {"$text": "YQ=="}), r"field 'run_id' holds \$text, "
                                                            r"which only a free text column",
                 id="legacy-key"),
    pytest.param(*_set("run", "error_message", {"$text": "%%%"}), r"not base64",
                 id="bad-base64"),
    pytest.param(*_set("worker", "affinity", "[1]"), r"field 'affinity' must be a JSON object",
                 id="json-shape"),
    pytest.param(*_set("worker", "created_at", "2026-01-01"), r"not a timestamp in the "
                                                              r"ledger's format",
                 id="timestamp-format"),
    pytest.param(*_set("worker", "terminated_at", "2026-01-01T00:00:00.000000Z"),
                 r"terminated_at must be set exactly when the worker is TERMINATED",
                 id="row-check"),
    pytest.param(*_set("step_attempt", "attempt", 0), r"field 'attempt' must be at least 1",
                 id="below-minimum"),
    pytest.param(*_set("step_attempt", "cost_usd", {"$real": "NaN"}), r"NaN, which SQLite "
                                                                      r"cannot store",
                 id="nan-real"),
    pytest.param(*_set("patch", "sha256", "abc"), r"must be 64 characters long",
                 id="sha256"),
    pytest.param("gate", lambda d: d.__setitem__("depends_on", ["A", "A"]) or None,
                 r"depends_on names a gate twice", id="dependency-twice"),
    pytest.param(*_set("event", "seq", 10**6), r"not above the previous event's 1000000",
                 id="seq-order"),
    pytest.param("patch", lambda d: json.dumps({"type": "run", "row": {}}) + "\n",
                 r"run line comes after step_attempt lines", id="out-of-order"),
    pytest.param("end", lambda d: '{"type": "end", "counts": {}}\n',
                 r"counts \{\} records, but the file holds", id="wrong-counts"),
    pytest.param("end", lambda d: "", r"is missing: the file ends without its end line",
                 id="cut-short"),
    pytest.param("header", lambda d: d.__setitem__("format", "csv") or None,
                 r"names the format 'csv'", id="wrong-format"),
    pytest.param("header", lambda d: json.dumps({"type": "run"}) + "\n",
                 r"must be the export's header", id="no-header"),
]


@pytest.mark.parametrize("kind, change, message", REFUSED)
def test_a_file_against_the_rules_is_refused_by_line_and_nothing_is_imported(
        tmp_path, source, kind, change, message):
    ids = a_full_ledger(source)
    text = export_text(source)
    broken = _edited(text, kind, change)
    assert broken != text
    target = fresh(tmp_path)
    target.create_run({"project_id": "mine", "phase_id": "mine"})
    before = table_rows(target.db_path)
    with pytest.raises(LedgerFileError, match=message) as caught:
        import_text(target, broken, skip_existing=True)
    assert "nothing was imported" in str(caught.value)
    assert caught.value.line >= 1 and str(caught.value).startswith(f"<stream> line "
                                                                   f"{caught.value.line}:")
    assert table_rows(target.db_path) == before
    assert ids  # the source had every kind of record to break


def test_a_header_from_a_newer_uet_is_refused(tmp_path, source):
    a_full_ledger(source)
    text = export_text(source)
    target = fresh(tmp_path)
    for key, value, message in [("schema_version", 999, "exported from a ledger at schema "
                                                        "version 999, newer than this uet"),
                                ("format_version", 2, "version 2, newer than this uet reads")]:
        newer = _edited(text, "header", lambda d: d.__setitem__(key, value) or None)
        with pytest.raises(SchemaVersionError, match=message):
            import_text(target, newer)
    assert target.list_runs() == []


def test_an_older_export_without_the_newer_columns_takes_their_defaults(tmp_path, source):
    run = source.create_run({"project_id": "p", "phase_id": "ph"})
    text = export_text(source)
    older = _edited(text, "run", lambda d: [d["row"].pop(k) for k in
                                            ("priority", "recoveries", "worker_id")] and None)
    older = _edited(older, "header", lambda d: d.__setitem__("schema_version", 1) or None)
    target = fresh(tmp_path)
    import_text(target, older)
    assert target.get_run(run) == source.get_run(run)


def test_a_file_is_read_from_a_path_and_from_a_stream_that_cannot_seek(tmp_path, source):
    a_full_ledger(source)
    path = tmp_path / "ledger.jsonl"
    path.write_text(export_text(source))
    first = fresh(tmp_path, "a.db")
    first.import_jsonl(str(path))
    read, write = os.pipe()
    os.write(write, path.read_bytes())
    os.close(write)
    second = fresh(tmp_path, "b.db")
    with os.fdopen(read, "rb") as pipe:
        second.import_jsonl(pipe)
    assert table_rows(first.db_path) == table_rows(second.db_path) == table_rows(
        source.db_path)
    with pytest.raises(ValidationError, match="cannot read .*missing.jsonl"):
        first.import_jsonl(str(tmp_path / "missing.jsonl"))


# -- memory --------------------------------------------------------------------------------

def _peak(action) -> int:
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_export_and_import_stream_in_constant_memory(tmp_path):
    """tracemalloc's peak while exporting, then importing, 300 and then 1,500 runs (each
    with its step attempts and events, ~4,000 and ~20,000 lines): the same, about a MB,
    whatever the size (at 100,000 runs it is about 4 MB)."""
    peaks = {}
    for runs in (20, 300, 1_500):  # the first: modules and statements loaded, untraced
        path = str(tmp_path / f"big{runs}.db")
        build(path, runs)
        out = tmp_path / f"big{runs}.jsonl"
        with Database(path, read_only=True) as db, open(out, "w") as f:
            export_peak = _peak(lambda: db.export_jsonl(f))
        with init_db(str(tmp_path / f"copy{runs}.db")) as target:
            import_peak = _peak(lambda: target.import_jsonl(str(out)))
            assert len(target.list_runs(limit=None)) == runs
        peaks[runs] = (export_peak, import_peak)
    (small_export, small_import), (large_export, large_import) = peaks[300], peaks[1_500]
    assert large_export < 4_000_000 and large_import < 4_000_000, peaks
    assert large_export < small_export * 1.3 + 300_000, peaks  # not growing with the ledger
    assert large_import < small_import * 1.3 + 300_000, peaks


# -- backup --------------------------------------------------------------------------------

def test_a_backup_is_a_checked_copy_renamed_into_place(tmp_path, source):
    a_full_ledger(source)
    dest = tmp_path / "backups" / "copy.db"
    dest.parent.mkdir()
    report = source.backup(dest)
    assert report["written"] and report["engine"] == "sqlite"
    assert (report["runs"], report["integrity_check"], report["foreign_key_violations"]) == (
        2, "ok", 0)
    assert report["bytes"] == dest.stat().st_size and report["seconds"] >= 0
    assert sorted(os.listdir(dest.parent)) == ["copy.db"]  # no temporary file left
    assert table_rows(str(dest)) == table_rows(source.db_path)
    with Database(str(dest), read_only=True) as copy:  # leaves an empty -wal, -shm
        assert copy.doctor()["integrity_check"] == ["ok"]
    with pytest.raises(ValidationError, match="copy.db exists; pass --force"):
        source.backup(dest)
    source.create_run({"project_id": "later", "phase_id": "later"})
    assert source.backup(dest, force=True)["runs"] == 3
    assert [n for n in os.listdir(dest.parent) if not n.startswith("copy.db")] == []
    with Database(str(dest), read_only=True) as copy:
        assert len(copy.list_runs()) == 3


@pytest.mark.parametrize("case, message", [
    ("itself", "is the ledger itself"),
    ("folder", "is a folder; name the backup file"),
    ("no-folder", "the folder of .* does not exist"),
    ("wal-beside", "-wal lies beside .*a ledger in use"),
    ("empty", "a backup needs a destination path"),
])
def test_a_backup_refuses_a_destination_it_must_not_write(tmp_path, source, case, message):
    dest = {"itself": source.db_path, "folder": str(tmp_path),
            "no-folder": str(tmp_path / "nowhere" / "x.db"),
            "wal-beside": str(tmp_path / "live.db"), "empty": ""}[case]
    if case == "wal-beside":
        Path(dest).write_bytes(b"")
        Path(dest + "-wal").write_bytes(b"x")
    with pytest.raises(ValidationError, match=message):
        source.backup(dest, force=True)


def test_an_in_memory_ledger_backs_up_to_a_file(tmp_path):
    with init_db(":memory:") as db:
        db.create_run({"project_id": "p", "phase_id": "ph"})
        report = db.backup(tmp_path / "m.db")
    assert report["runs"] == 1
    with Database(str(tmp_path / "m.db"), read_only=True) as copy:
        assert len(copy.list_runs()) == 1


def test_postgresql_backup_gives_the_pg_dump_command_without_the_password(postgres_url):
    url = postgres_url.replace("postgresql://uet@", "postgresql://uet:s3cret@")
    assert "s3cret" in url
    with init_db(url) as db:
        report = db.backup("ledger.dump")
    assert not report["written"] and report["engine"] == "postgresql"
    schema = postgres_url.rsplit("%3D", 1)[1]
    assert report["schema"] == schema and report["user"] == "uet"
    dump = report["dump"]
    assert dump[0] == "pg_dump" and dump[dump.index("--schema") + 1] == schema
    assert dump[-2:] == ["--file", "ledger.dump"]
    assert "s3cret" not in json.dumps(report)


# -- into a live ledger ----------------------------------------------------------------------

@pytest.mark.parametrize("engine", ["file", "postgres"])
def test_a_follower_of_a_live_ledger_sees_every_imported_and_written_event_once(
        tmp_path, source, engine, request):
    """Importing into a ledger while another thread writes events and a follower follows
    the trail: the follower gets every event exactly once, in seq order — the imported
    ones (renumbered after the ledger's, in their order) and the writer's alike."""
    import threading
    run = source.create_run({"project_id": "p", "phase_id": "ph"})
    for i in range(1_200):  # three batches of events
        source.create_event({"run_id": run, "event_type": "imported", "data": {"i": i}})
    text = export_text(source)
    name = (str(tmp_path / "live.db") if engine == "file"
            else request.getfixturevalue("postgres_url"))
    with init_db(name) as target:
        own = target.create_run({"project_id": "own", "phase_id": "own"})
        seen: list[dict] = []
        stop, done = threading.Event(), threading.Event()
        expected = [0]
        errors: list[UetError] = []

        def follow() -> None:  # as follow_events does: by cursor, from its own connection
            with Database(name) as follower:
                cursor = 0
                while True:
                    events = follower.events_since(cursor, limit=100)
                    seen.extend(events)
                    if events:
                        cursor = events[-1]["seq"]
                    elif done.is_set() and len(seen) >= expected[0]:
                        return
                    else:
                        time.sleep(0.002)

        def write() -> None:
            with Database(name) as writer:
                n = 0
                while not stop.is_set():
                    try:
                        writer.create_event({"run_id": own, "event_type": "live",
                                             "data": {"n": n}})
                    except UetError as exc:  # a seq handed out twice, a timeout ...
                        errors.append(exc)
                        return
                    n += 1

        threads = [threading.Thread(target=follow), threading.Thread(target=write)]
        for thread in threads:
            thread.start()
        try:
            report = import_text(target, text)
        finally:
            stop.set()
            threads[1].join(60)
            expected[0] = len(target.events_since(0, limit=100_000))
            done.set()
            threads[0].join(60)
        assert not any(thread.is_alive() for thread in threads)
        assert errors == [] and report["imported"]["event"] == 1_201
        seqs = [e["seq"] for e in seen]
        assert seqs == sorted(set(seqs)) and len(seen) == expected[0]
        assert [e["event_id"] for e in seen] == [
            e["event_id"] for e in target.events_since(0, limit=100_000)]
        imported = [e["data"].get("i") for e in seen if e["event_type"] == "imported"]
        assert imported == list(range(1_200))  # in their exported order
        assert any(e["event_type"] == "live" for e in seen)

"""`uet backup`, `uet export` and `uet import` (issue 18), driven as a user drives them: the
real console script in subprocesses. A backup taken while other processes keep writing is a
consistent, checked copy holding every run committed before it began; export piped into
import moves a ledger between engines exactly; bad input is one line naming what is wrong,
and changes nothing."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from build_ledger import build
from test_cli import UET, one_line_error, uet, uet_env
from test_cli_display import fill
from uet.state import Database, init_db

# every table that holds records, with the columns that order its rows
DATA_TABLES = {"workers": "worker_id", "runs": "run_id", "step_attempts": "step_attempt_id",
               "patches": "patch_id", "patch_ledger_entries": "ledger_id",
               "test_gates": "gate_id", "gate_dependencies": "gate_id, depends_on",
               "run_events": "event_id"}


def _lenient(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def table_rows(name: str) -> dict[str, list[tuple]]:
    """Every row of every data table of a ledger (file or URL), read with the driver itself,
    each value with its type (1 is not 1.0, a BLOB not a text); JSON columns as their stored
    text."""
    tables: dict[str, list[tuple]] = {}
    if name.startswith("postgresql://"):
        import psycopg
        from psycopg.types.string import TextLoader
        with psycopg.connect(name) as conn:
            conn.adapters.register_loader("json", TextLoader)
            for table, order in DATA_TABLES.items():
                tables[table] = [tuple((type(v).__name__, v) for v in row) for row in
                                 conn.execute(f"SELECT * FROM {table} ORDER BY {order}")]
        return tables
    conn = sqlite3.connect(name)
    conn.text_factory = _lenient
    try:
        for table, order in DATA_TABLES.items():
            tables[table] = [tuple((type(v).__name__, v) for v in row) for row in
                             conn.execute(f"SELECT * FROM {table} ORDER BY {order}")]
    finally:
        conn.close()
    return tables


def piped(export_args: list[str], import_args: list[str], cwd: Path
          ) -> tuple[subprocess.CompletedProcess, bytes]:
    """`uet export ... | uet import - ...`: (the import's result, the export's stderr)."""
    exporter = subprocess.Popen([UET, "export", *export_args], cwd=cwd, env=uet_env(),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    try:
        importer = subprocess.run([UET, "import", "-", *import_args], cwd=cwd, env=uet_env(),
                                  stdin=exporter.stdout, capture_output=True, text=True,
                                  timeout=120)
    finally:
        exporter.stdout.close()
        _, err = exporter.communicate(timeout=120)
    assert exporter.returncode == 0, err
    return importer, err


def a_ledger(db: Database) -> None:
    """3 runs (one of them old) with one of every record, 2 workers, a deleted run."""
    fill(db, ["\x1b[2J", "\u202e", "\U0001f600 x", "\u0301", "[bold]", "plain"], "x" * 3000,
         20, "a", big_id=False)
    fill(db, ["b", "\t"], None, 2, "b", big_id=False)
    db.create_run({"project_id": "old", "phase_id": "ph", "created_at": "2020-01-01"})
    gone = db.create_run({"project_id": "gone", "phase_id": "ph"})
    db.create_event({"run_id": gone, "event_type": "note", "data": {}})
    db.delete_run(gone)


# -- backup while writing ------------------------------------------------------------------

WRITER = """\
import json, os, sys, time
from uet.state import Database
path, stop, ready, out = sys.argv[1:5]
db = Database(path)
worst, n = 0.0, 0
while not os.path.exists(stop):
    began = time.perf_counter()
    run = db.create_run({"project_id": "writer", "phase_id": "w",
                         "metadata": {"pid": os.getpid(), "n": n}})
    db.create_event({"run_id": run, "event_type": "tick", "data": {"n": n}})
    db.transition_run(run, "running")
    worst = max(worst, time.perf_counter() - began)
    n += 1
    if n == 1:
        open(ready, "w").close()
with open(out, "w") as f:
    json.dump({"runs": n, "worst": worst}, f)
"""


def _run_ids(path: str) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {r[0] for r in conn.execute("SELECT run_id FROM runs")}
    finally:
        conn.close()


def test_a_backup_taken_while_three_processes_write_holds_every_run_committed_before(
        tmp_path):
    path = str(tmp_path / "ledger.db")
    build(path, 20_000)
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    stop = tmp_path / "stop"
    writers = [subprocess.Popen([sys.executable, str(script), path, str(stop),
                                 str(tmp_path / f"ready{i}"), str(tmp_path / f"out{i}")],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for i in range(3)]
    try:
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"ready{i}").exists() for i in range(3)):
            assert time.monotonic() < deadline, "the writers never committed a run"
            assert all(w.poll() is None for w in writers), [w.communicate() for w in writers]
            time.sleep(0.01)
        before = _run_ids(path)  # every run committed before the backup starts
        dest = tmp_path / "backups" / "copy.db"
        dest.parent.mkdir()
        result = uet("backup", str(dest), "--json", "--db", path, cwd=tmp_path)
        after = _run_ids(path)
    finally:
        stop.touch()
        outcomes = [w.communicate(timeout=60) for w in writers]
    assert [w.returncode for w in writers] == [0, 0, 0], outcomes
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["integrity_check"], report["foreign_key_violations"]) == ("ok", 0)
    assert os.listdir(dest.parent) == ["copy.db"]  # no half copy, no temporary file
    copied = _run_ids(str(dest))
    assert before <= copied and report["runs"] == len(copied) >= 20_003
    assert len(after) > len(before)  # the writers went on while the backup ran
    conn = sqlite3.connect(str(dest))
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        # a consistent snapshot: each run with the event its own transaction wrote
        assert conn.execute(
            "SELECT count(*) FROM runs AS r WHERE NOT EXISTS (SELECT 1 FROM run_events AS e "
            "WHERE e.run_id = r.run_id AND e.event_type = 'run.created')").fetchone()[0] == 0
    finally:
        conn.close()
    with Database(str(dest), read_only=True) as copy:
        assert copy.doctor()["integrity_check"] == ["ok"]
    # no writer waited long for the backup (a commit takes ms; the busy timeout is 10 s,
    # past which a writer would have failed with DatabaseBusyError)
    stats = [json.loads((tmp_path / f"out{i}").read_text()) for i in range(3)]
    assert all(s["runs"] > 0 and s["worst"] < 5.0 for s in stats), stats


def test_backup_refuses_an_existing_destination_unless_forced(tmp_path):
    path = str(tmp_path / "ledger.db")
    with init_db(path) as db:
        db.create_run({"project_id": "p", "phase_id": "ph"})
    first = uet("backup", "copy.db", "--db", path, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith(f"backed up {path} to copy.db: ")
    assert "1 run, " in first.stdout and "integrity_check ok" in first.stdout
    again = uet("backup", "copy.db", "--db", path, cwd=tmp_path)
    assert again.returncode == 2
    assert "copy.db exists; pass --force" in one_line_error(again)
    forced = uet("backup", "copy.db", "--force", "--db", path, cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    missing = uet("backup", "copy.db", "--db", str(tmp_path / "none.db"), cwd=tmp_path)
    assert missing.returncode == 1 and "no ledger at" in one_line_error(missing)


def test_postgresql_backup_prints_pg_dump_without_the_password_and_it_works(tmp_path,
                                                                           postgres_url):
    url = postgres_url.replace("postgresql://uet@", "postgresql://uet:s3cret@")
    with init_db(url) as db:
        db.create_run({"project_id": "p", "phase_id": "ph"})
    result = uet("backup", str(tmp_path / "ledger.dump"), "--db", url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "s3cret" not in result.stdout + result.stderr
    assert "$PGPASSWORD" in result.stdout and "pg_restore" in result.stdout
    command = next(line.strip() for line in result.stdout.splitlines()
                   if line.strip().startswith("pg_dump "))
    assert not (tmp_path / "ledger.dump").exists()  # uet writes nothing itself
    if shutil.which("pg_dump") is None:
        pytest.skip("no pg_dump here to run the printed command")
    import shlex
    dumped = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PGCONNECT_TIMEOUT": "10"})
    assert dumped.returncode == 0, dumped.stderr
    listed = subprocess.run(["pg_restore", "--list", str(tmp_path / "ledger.dump")],
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and " TABLE " in listed.stdout and " runs " in listed.stdout


# -- export | import -----------------------------------------------------------------------

def test_export_piped_into_import_moves_a_ledger_between_engines_exactly(tmp_path,
                                                                         postgres_url):
    source = str(tmp_path / "source.db")
    with init_db(source) as db:
        a_ledger(db)
    imported, said = piped(["--db", source], ["--db", postgres_url, "--json"], tmp_path)
    assert imported.returncode == 0, imported.stderr
    report = json.loads(imported.stdout)
    assert report["events"]["renumbered"] == 0 and report["imported"]["run"] == 3
    assert b"uet: exported 2 workers, 3 runs" in said  # the summary goes to stderr
    assert table_rows(postgres_url) == table_rows(source)
    back = str(tmp_path / "back.db")
    imported, _ = piped(["--db", postgres_url], ["--db", back], tmp_path)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.startswith("imported 2 workers, 3 runs, ")
    assert table_rows(back) == table_rows(source)


def test_export_to_a_file_is_whole_or_absent_and_a_selection_imports(tmp_path):
    source = str(tmp_path / "source.db")
    with init_db(source) as db:
        a_ledger(db)
        runs = db.list_runs(limit=None)
    out = tmp_path / "runs.jsonl"
    written = uet("export", "-o", str(out), "--project", runs[0]["project_id"], "--since",
                  "1d", "--db", source, cwd=tmp_path)
    assert written.returncode == 0, written.stderr
    assert written.stdout.startswith("exported 2 workers, 1 run, ") and written.stderr == ""
    lines = out.read_text().splitlines()
    assert json.loads(lines[0])["selection"]["project_id"] == runs[0]["project_id"]
    assert json.loads(lines[-1])["counts"]["run"] == 1
    again = uet("export", "-o", str(out), "--db", source, cwd=tmp_path)
    assert again.returncode == 2 and "runs.jsonl exists; pass --force" in one_line_error(again)
    forced = uet("export", "-o", str(out), "--force", "--json", "--db", source, cwd=tmp_path)
    assert forced.returncode == 0 and json.loads(forced.stdout)["records"]["run"] == 3
    assert sorted(os.listdir(tmp_path)) == ["runs.jsonl", "source.db", "source.db-shm",
                                            "source.db-wal"]  # no temporary file left
    target = str(tmp_path / "target.db")
    imported = uet("import", str(out), "--db", target, cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    assert table_rows(target) == table_rows(source)


def test_a_bad_file_is_one_line_naming_it_and_creates_no_ledger(tmp_path):
    source = str(tmp_path / "source.db")
    with init_db(source) as db:
        a_ledger(db)
    good = uet("export", "--db", source, cwd=tmp_path).stdout
    lines = good.splitlines(keepends=True)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(lines[:3] + ['{"type": "run", "row": {"run_id": 5}}\n'] + lines[3:]))
    target = tmp_path / "new" / "target.db"
    result = uet("import", str(bad), "--db", str(target), cwd=tmp_path)
    assert result.returncode == 2
    assert f"{bad} line 4: run: field 'run_id' must be text, got int; nothing was imported" \
        in one_line_error(result)
    assert not target.exists() and not target.parent.exists()
    cut = tmp_path / "cut.jsonl"
    cut.write_text("".join(lines[:-1]))
    result = uet("import", str(cut), "--db", str(target), cwd=tmp_path)
    assert result.returncode == 2 and "cut short" in one_line_error(result)
    newer = tmp_path / "newer.jsonl"
    header = json.loads(lines[0])
    newer.write_text(json.dumps({**header, "schema_version": 99}) + "\n" + "".join(lines[1:]))
    result = uet("import", str(newer), "--db", str(target), cwd=tmp_path)
    assert result.returncode == 1 and "newer than this uet" in one_line_error(result)
    assert not target.exists()
    # into an existing ledger: refused whole, then skipped with --skip-existing
    imported = uet("import", "-", "--db", source, cwd=tmp_path)  # stdin: empty
    assert imported.returncode == 2 and "<stdin> is empty" in one_line_error(imported)
    exists = subprocess.run([UET, "import", "-", "--db", source], input=good, text=True,
                            capture_output=True, cwd=tmp_path, env=uet_env(), timeout=60)
    assert exists.returncode == 2 and "already exists in ledger" in one_line_error(exists)
    skipped = subprocess.run([UET, "import", "-", "--skip-existing", "--db", source],
                             input=good, text=True, capture_output=True, cwd=tmp_path,
                             env=uet_env(), timeout=60)
    assert skipped.returncode == 0 and "imported no records into" in skipped.stdout
    assert "skipped 2 workers, 3 runs" in skipped.stdout


def test_export_options_that_do_not_go_together_are_usage_errors(tmp_path):
    source = str(tmp_path / "source.db")
    init_db(source).close()
    for args, message in [(["--endpoint", "http://127.0.0.1:1"], "--endpoint goes with "
                                                                  "--format otlp"),
                          (["--format", "otlp", "--endpoint", "http://127.0.0.1:1", "-o",
                            "x"], "give --endpoint or -o/--output, not both"),
                          (["--since", "soon"], "--since 'soon' is neither an age")]:
        result = uet("export", *args, "--db", source, cwd=tmp_path)
        assert result.returncode == 2 and message in one_line_error(result), args


def test_otlp_without_the_otel_extra_says_how_to_install_it(tmp_path):
    source = str(tmp_path / "source.db")
    init_db(source).close()
    blocked = ("import sys; sys.modules['uet.otel'] = None; sys.argv[0] = 'uet'; "
               "from uet.cli import main; main()")
    result = subprocess.run([sys.executable, "-c", blocked, "export", "--format", "otlp",
                             "--db", source], capture_output=True, text=True, cwd=tmp_path,
                            env=uet_env(), timeout=60)
    assert result.returncode == 1
    assert one_line_error(result) == ("uet: error: --format otlp needs the otel extra: pip "
                                      "install 'uet[otel]'\n")

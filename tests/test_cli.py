"""The `uet` command line, driven as a user drives it: the real console script in
subprocesses, against temporary ledgers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reliability_suite.migration import make_seed_ledger
from uet import __version__
from uet.state import GateLedger, PatchLedger, WorkerLifecycle, init_db

UET = shutil.which("uet", path=os.path.dirname(sys.executable))
COMMANDS = ["init", "migrate", "doctor", "run", "runs", "show", "events", "workers", "patches",
            "recover", "cancel", "logs",
            "gates"]


# the ledger a test's `uet` commands use when given no --db (see the `ledger` fixture)
DEFAULT_DB_VAR = "UET_TEST_CLI_DATABASE"


def uet_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "UET_DATABASE"}
    if os.environ.get(DEFAULT_DB_VAR):
        env["UET_DATABASE"] = os.environ[DEFAULT_DB_VAR]
    return env


def uet(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    env = uet_env()
    # no terminal on stdin (as in CI): `uet run` gives the command its own process group
    return subprocess.run([UET, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def readline(proc: subprocess.Popen, timeout: float = 120) -> str | bytes:
    """The next line of a running command's stdout, or a failure (and the command killed)
    when none comes within `timeout` seconds: a test must fail, not hang."""
    import threading
    line: list = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if reader.is_alive():
        proc.kill()  # its end of the pipe closes, so the reader returns
        reader.join(30)
        pytest.fail(f"no line from {proc.args!r} within {timeout:g} s")
    return line[0]


def run_until(go: Path, *options: str, cwd: Path) -> subprocess.Popen:
    """`uet run [options]` of a command that runs until the file `go` exists; returned once
    the command runs (it printed "started")."""
    script = ("import os, time\nprint('started', flush=True)\n"
              f"while not os.path.exists({str(go)!r}): time.sleep(0.01)\n")
    proc = subprocess.Popen([UET, "run", *options, "--", sys.executable, "-c", script],
                            cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=uet_env())
    assert readline(proc) == "started\n"
    return proc


def gone(pid: int, timeout: float = 30) -> bool:
    """Whether process `pid` ends within `timeout` seconds (a zombie counts as ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def _survived(pid: int) -> bool:
    """Whether process `pid` is still alive 30 s on; one that is, is killed (a failing
    test leaves nothing running)."""
    if gone(pid):
        return False
    os.kill(pid, signal.SIGKILL)
    return True


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.stderr.startswith("uet: error: "), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    return result.stderr


@pytest.fixture
def sqlite_ledger(tmp_path) -> Path:
    """A created ledger file where `uet` looks by default (.ledger/framework.db)."""
    path = tmp_path / ".ledger" / "framework.db"
    init_db(str(path)).close()
    return path


@pytest.fixture(params=["file", "postgres"])
def ledger(request, tmp_path, monkeypatch):
    """A created ledger that the test's `uet` commands use without --db: the default file
    .ledger/framework.db, then a PostgreSQL ledger (named to them by $UET_DATABASE)."""
    if request.param == "file":
        return request.getfixturevalue("sqlite_ledger")
    url = request.getfixturevalue("postgres_url")
    init_db(url).close()
    monkeypatch.setenv(DEFAULT_DB_VAR, url)
    return url


def test_console_script_prints_its_version(tmp_path):
    assert UET, "the uet console script is not installed next to this Python"
    result = uet("--version", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == f"uet {__version__}"
    module = subprocess.run([sys.executable, "-m", "uet", "--version"], cwd=tmp_path,
                            capture_output=True, text=True)
    assert module.stdout == result.stdout


def test_bare_uet_prints_help_and_usage_errors_are_one_line(tmp_path):
    bare = uet(cwd=tmp_path)
    assert bare.returncode == 0 and "Usage: uet" in bare.stdout and "run" in bare.stdout
    for args in (["nosuch"], ["runs", "--limit", "zero"], ["run", "--projetc", "x", "--", "true"]):
        result = uet(*args, cwd=tmp_path)
        assert result.returncode == 2 and "--help" in one_line_error(result)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help_with_an_example(tmp_path, name):
    result = uet(name, "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "Usage: uet " + name in result.stdout and "Example" in result.stdout
    assert "--db" in result.stdout


def test_run_passes_output_and_exit_code_through_and_records_it(tmp_path, ledger):
    result = uet("run", "--project", "api", "--phase", "PH-2", "--tool", "shell", "--",
                 "sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3", cwd=tmp_path)
    assert result.returncode == 3
    assert "to-stdout" in result.stdout and "to-stderr" in result.stderr
    with init_db(str(ledger)) as db:
        run = db.list_runs()[0]
        assert (run["project_id"], run["phase_id"], run["state"], run["exit_code"]) == (
            "api", "PH-2", "failed", 3)
        step = db.list_step_attempts(run["run_id"])[0]
        assert (step["tool_id"], step["state"], step["exit_code"]) == ("shell", "failed", 3)
        assert step["metadata"]["stdout_tail"] == "to-stdout\n"
        assert "to-stderr" in step["error_log"]
        assert step["metadata"]["duration_sec"] >= 0 and step["ended_at"]


def test_run_of_a_succeeding_command_creates_the_ledger(tmp_path):
    result = uet("run", "--", sys.executable, "-c", "print('fine')", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout == "fine\n"
    with init_db(str(tmp_path / ".ledger" / "framework.db")) as db:
        run = db.list_runs()[0]
        assert (run["state"], run["exit_code"]) == ("succeeded", 0)


@pytest.mark.parametrize("argv, code, message", [
    (["no-such-command-anywhere"], 127, "command not found"),
    (["./not-executable.sh"], 126, "cannot execute"),
])
def test_a_command_that_cannot_start_fails_the_run_cleanly(tmp_path, argv, code, message):
    (tmp_path / "not-executable.sh").write_text("echo hi\n")
    result = uet("run", "--", *argv, cwd=tmp_path)
    assert result.returncode == code and "Traceback" not in result.stderr
    with init_db(str(tmp_path / ".ledger" / "framework.db")) as db:
        run = db.list_runs()[0]
        assert run["state"] == "failed" and message in run["error_message"]


def test_timeout_kills_the_command_and_fails_the_run(tmp_path):
    started = time.monotonic()
    result = uet("run", "--timeout", "0.5", "--", "sleep", "30", cwd=tmp_path)
    assert result.returncode == 124 and time.monotonic() - started < 20
    with init_db(str(tmp_path / ".ledger" / "framework.db")) as db:
        run = db.list_runs()[0]
        assert run["state"] == "failed" and "timed out" in run["error_message"]
        assert db.list_step_attempts(run["run_id"])[0]["state"] == "failed"


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_cancels_the_run_and_stops_the_command(tmp_path, signum, code):
    path = str(tmp_path / ".ledger" / "framework.db")
    command = "import os, time; print(os.getpid(), flush=True); time.sleep(60)"
    proc = subprocess.Popen([UET, "run", "--", sys.executable, "-c", command], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    child = int(readline(proc))  # the command runs, and uet is copying its output
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert gone(child), "the command outlived the cancellation"
    with init_db(path) as db:
        run = db.list_runs()[0]
        assert run["state"] == "canceled"
        assert run["error_message"].startswith(f"canceled by {signal.Signals(signum).name}: ")
        assert db.list_step_attempts(run["run_id"])[0]["state"] == "canceled"


def test_runs_json_matches_the_ledger_and_filters(tmp_path, ledger):
    with init_db(str(ledger)) as db:
        for project in ("a", "b", "a"):
            db.create_run({"project_id": project, "phase_id": "ph"})
        db.transition_run(db.list_runs({"project_id": "b"})[0]["run_id"], "running")
        expected = db.list_runs()
        only_a = db.list_runs({"project_id": "a"})
    assert json.loads(uet("runs", "--json", cwd=tmp_path).stdout) == expected
    assert json.loads(uet("runs", "--json", "--project", "a", cwd=tmp_path).stdout) == only_a
    running = json.loads(uet("runs", "--json", "--state", "running", cwd=tmp_path).stdout)
    assert [r["project_id"] for r in running] == ["b"]
    assert len(json.loads(uet("runs", "--json", "--limit", "1", cwd=tmp_path).stdout)) == 1
    assert json.loads(uet("runs", "--json", "--since", "1h", cwd=tmp_path).stdout) == expected
    assert json.loads(uet("runs", "--json", "--since", "2999-01-01", cwd=tmp_path).stdout) == []
    table = uet("runs", cwd=tmp_path).stdout
    assert all(r["run_id"] in table for r in expected) and "\x1b[" not in table


def test_show_json_has_every_part_and_accepts_a_prefix(tmp_path, ledger):
    diff = "--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-a\n+b\n"
    with init_db(str(ledger)) as db:
        run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
        step = db.create_step_attempt({"run_id": run_id, "sequence": 1, "tool_id": "aider"})
        PatchLedger(db).create_entry(PatchLedger(db).record_patch(diff, step_attempt_id=step),
                                     "PH-1")
        GateLedger(db).define_gate("UNIT", "PH-1", "pytest", run_id=run_id)
        expected = {"run": db.get_run(run_id), "step_attempts": db.list_step_attempts(run_id),
                    "events": db.list_events(run_id),
                    "patches": PatchLedger(db).history_of_run(run_id),
                    "gates": GateLedger(db).list_gates(run_id=run_id)}
    for ident in (run_id, run_id[:20], None):
        args = ["show", "--json"] + ([ident] if ident else [])
        result = uet(*args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == expected
    text = uet("show", run_id[:20], cwd=tmp_path).stdout
    assert "step attempts" in text and "aider" in text and "gate.defined" in text


def test_ambiguous_and_unknown_ids_are_one_line_errors(tmp_path, ledger):
    with init_db(str(ledger)) as db:
        db.create_run({"run_id": "01AAA1", "project_id": "p", "phase_id": "ph"})
        db.create_run({"run_id": "01AAA2", "project_id": "p", "phase_id": "ph"})
    ambiguous = uet("show", "01AAA", cwd=tmp_path)
    assert ambiguous.returncode == 1
    assert "01AAA1" in one_line_error(ambiguous) and "01AAA2" in ambiguous.stderr
    unknown = uet("show", "nope", cwd=tmp_path)
    assert unknown.returncode == 1 and "not found" in one_line_error(unknown)
    assert uet("events", "01AAA", cwd=tmp_path).returncode == 1


def test_bad_filter_value_is_a_usage_error(tmp_path, ledger):
    result = uet("runs", "--state", "finished", cwd=tmp_path)
    assert result.returncode == 2 and "unknown run state 'finished'" in one_line_error(result)
    result = uet("runs", "--since", "last tuesday", cwd=tmp_path)
    assert result.returncode == 2 and "created_at" in one_line_error(result)
    assert uet("runs", "--limit", "0", cwd=tmp_path).returncode == 2


def test_missing_unreadable_and_foreign_databases_are_one_line_errors(tmp_path):
    missing = uet("runs", cwd=tmp_path)
    assert missing.returncode == 1 and "uet init" in missing.stderr
    assert not (tmp_path / ".ledger").exists()
    (tmp_path / "folder.db").mkdir()
    folder = uet("runs", "--db", "folder.db", cwd=tmp_path)
    assert folder.returncode == 1 and "cannot open" in one_line_error(folder)
    (tmp_path / "notes.db").write_text("not a database at all\n" * 20)
    notsql = uet("runs", "--db", "notes.db", cwd=tmp_path)
    assert notsql.returncode == 1 and "not a SQLite database" in one_line_error(notsql)
    conn = sqlite3.connect(tmp_path / "other.db")
    conn.execute("CREATE TABLE customers (id INTEGER)")
    conn.commit()
    conn.close()
    other = uet("runs", "--db", "other.db", cwd=tmp_path)
    assert other.returncode == 1 and "not a uet ledger" in one_line_error(other)
    traced = uet("runs", "--db", "other.db", "--debug", cwd=tmp_path)
    assert "Traceback" in traced.stderr


def test_events_follow_sees_what_another_process_writes(tmp_path, ledger):
    with init_db(str(ledger)) as db:
        run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
    follower = subprocess.Popen([UET, "events", "--follow", "--json", "--interval", "0.05"],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=uet_env())
    try:
        first = json.loads(readline(follower))
        assert (first["event_type"], first["seq"]) == ("run.created", 1)
        writer = subprocess.run([sys.executable, "-c", (
            "import sys; from uet.state import init_db\n"
            "db = init_db(sys.argv[1])\n"
            "for i in range(5): db.create_event({'run_id': sys.argv[2], 'event_type': 'tick', "
            "'data': {'i': i}})\n"), str(ledger), run_id], capture_output=True, text=True)
        assert writer.returncode == 0, writer.stderr
        seen = [json.loads(readline(follower)) for _ in range(5)]
        assert [e["data"]["i"] for e in seen] == [0, 1, 2, 3, 4]
        assert [e["seq"] for e in seen] == [2, 3, 4, 5, 6]
    finally:
        follower.send_signal(signal.SIGINT)
        follower.communicate(timeout=30)
    assert follower.returncode == 0


def test_events_of_one_run_as_json_and_text(tmp_path, ledger):
    with init_db(str(ledger)) as db:
        a = db.create_run({"project_id": "p", "phase_id": "ph"})
        db.create_run({"project_id": "p", "phase_id": "ph"})
        db.transition_run(a, "running")
        expected = db.list_events(a)
        everything = db.events_since(0)
    assert json.loads(uet("events", a, "--json", cwd=tmp_path).stdout) == expected
    assert json.loads(uet("events", "--json", cwd=tmp_path).stdout) == everything
    lines = uet("events", a, cwd=tmp_path).stdout.splitlines()
    assert len(lines) == 2 and "run.state_changed" in lines[1]


def test_workers_patches_and_gates_listings(tmp_path, ledger):
    diff = "--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-a\n+b\n"
    with init_db(str(ledger)) as db:
        WorkerLifecycle(db).spawn_worker("w1", "testing", {"language": "python"})
        entry = PatchLedger(db).create_entry(PatchLedger(db).record_patch(diff), "PH-1")
        PatchLedger(db).quarantine(entry.ledger_id, "too big")
        GateLedger(db).define_gate("LINT", "PH-1", "ruff")
    workers = json.loads(uet("workers", "--json", cwd=tmp_path).stdout)
    assert [(w["worker_id"], w["state"], w["affinity"]) for w in workers] == [
        ("w1", "SPAWNING", {"language": "python"})]
    assert json.loads(uet("workers", "--json", "--state", "IDLE", cwd=tmp_path).stdout) == []
    entries = json.loads(uet("patches", "--json", cwd=tmp_path).stdout)
    assert [(e["state"], e["quarantine_reason"]) for e in entries] == [("quarantined", "too big")]
    gates = json.loads(uet("gates", "--json", "--phase", "PH-1", cwd=tmp_path).stdout)
    assert [(g["name"], g["state"]) for g in gates] == [("LINT", "PENDING")]
    for name in ("workers", "patches", "gates"):
        assert uet(name, cwd=tmp_path).returncode == 0
    bad = uet("workers", "--state", "ASLEEP", cwd=tmp_path)
    assert bad.returncode == 2 and "unknown worker state" in one_line_error(bad)


def test_init_doctor_and_migrate(tmp_path):
    created = uet("init", "--json", cwd=tmp_path)
    assert created.returncode == 0 and json.loads(created.stdout)["schema_version"] >= 2
    report = uet("doctor", "--json", cwd=tmp_path)
    facts = json.loads(report.stdout)
    assert report.returncode == 0 and facts["problems"] == []
    assert (facts["journal_mode"], facts["integrity_check"], facts["foreign_keys"]) == (
        "wal", ["ok"], True)
    assert facts["row_counts"]["runs"] == 0
    seed = tmp_path / "seed.db"
    make_seed_ledger(str(seed))
    migrated = uet("migrate", "--db", "seed.db", cwd=tmp_path)
    assert migrated.returncode == 0 and "0 (seed ledger) -> 6" in migrated.stdout
    again = json.loads(uet("migrate", "--db", "seed.db", "--json", cwd=tmp_path).stdout)
    assert (again["before"], again["after"]) == (6, 6)


def test_doctor_reports_a_ledger_out_of_wal_and_exits_1(tmp_path, sqlite_ledger):
    ledger = sqlite_ledger
    conn = sqlite3.connect(ledger)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute("PRAGMA foreign_keys=OFF")
    conn.execute("INSERT INTO run_events (event_id, run_id, timestamp, event_type, seq) "
                 "VALUES ('e', 'ghost', 't', 'x', 1)")
    conn.commit()
    conn.close()
    report = uet("doctor", "--json", cwd=tmp_path)
    assert report.returncode == 1
    assert json.loads(report.stdout)["problems"] == ["1 foreign key violations",
                                                     "journal_mode is delete, not wal"]
    conn = sqlite3.connect(ledger)  # doctor only looked: the ledger is as it was
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    conn.close()


def test_a_background_process_left_behind_does_not_keep_the_run_open(tmp_path):
    # the timeout below is far under the 300 s the leftover would keep its pipe open
    result = uet("run", "--", "sh", "-c", "echo started; sleep 300 & echo $! > bg.pid",
                 cwd=tmp_path, timeout=120)
    # stopped with the command's process group when the command ended
    assert not _survived(int((tmp_path / "bg.pid").read_text())), "the leftover sleep survived"
    assert result.returncode == 0
    assert "started" in result.stdout
    with init_db(str(tmp_path / ".ledger" / "framework.db")) as db:
        assert db.list_runs()[0]["state"] == "succeeded"


def test_large_and_binary_output_passes_through_and_the_tail_is_kept(tmp_path):
    script = ("import sys; sys.stdout.buffer.write(bytes(range(256)) * 4000); "
              "sys.stdout.buffer.write(b'END-WITHOUT-NEWLINE')")
    proc = subprocess.run([UET, "run", "--", sys.executable, "-c", script], cwd=tmp_path,
                          capture_output=True, timeout=60)
    assert proc.returncode == 0
    assert proc.stdout == bytes(range(256)) * 4000 + b"END-WITHOUT-NEWLINE"
    with init_db(str(tmp_path / ".ledger" / "framework.db")) as db:
        step = db.list_step_attempts(db.list_runs()[0]["run_id"])[0]
        assert step["metadata"]["stdout_tail"].endswith("END-WITHOUT-NEWLINE")
        assert len(step["metadata"]["stdout_tail"].encode("utf-8", "surrogatepass")) >= 8192


def test_inspection_never_changes_a_ledger(tmp_path):
    (tmp_path / "empty.db").write_bytes(b"")
    result = uet("runs", "--db", "empty.db", cwd=tmp_path)
    assert result.returncode == 1 and "uet init" in one_line_error(result)
    assert (tmp_path / "empty.db").read_bytes() == b""
    make_seed_ledger(str(tmp_path / "seed.db"))
    before = (tmp_path / "seed.db").read_bytes()
    result = uet("runs", "--db", "seed.db", cwd=tmp_path)
    assert result.returncode == 1 and "uet migrate" in one_line_error(result)
    assert (tmp_path / "seed.db").read_bytes() == before


def test_a_second_signal_while_stopping_changes_nothing_but_the_kill(tmp_path):
    path = str(tmp_path / ".ledger" / "framework.db")
    # the command shrugs off SIGINT and SIGTERM, saying so (its print is our handshake)
    stubborn = ("import signal, time\n"
                "def shrug(n, f): print('got', signal.Signals(n).name, flush=True)\n"
                "for s in (signal.SIGINT, signal.SIGTERM): signal.signal(s, shrug)\n"
                "print('ready', flush=True)\n"
                "while True: time.sleep(100)\n")
    proc = subprocess.Popen([UET, "run", "--", sys.executable, "-c", stubborn], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert readline(proc) == "ready\n"
    proc.send_signal(signal.SIGINT)
    assert readline(proc) == "got SIGINT\n"  # uet is stopping the command now
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)  # the child is killed after the grace period
    assert proc.returncode == 130 and "Traceback" not in err
    with init_db(path) as db:
        run = db.list_runs()[0]
        assert run["state"] == "canceled"
        assert db.list_step_attempts(run["run_id"])[0]["state"] == "canceled"


def test_timeout_stops_what_the_command_started(tmp_path):
    script = "sleep 100 & echo $! > bg.pid; sleep 100"
    result = uet("run", "--timeout", "1", "--", "sh", "-c", script, cwd=tmp_path)
    assert result.returncode == 124
    # gone with the command's process group
    assert not _survived(int((tmp_path / "bg.pid").read_text())), "the background sleep lives"


def test_a_reader_that_goes_away_stops_the_command(tmp_path):
    proc = subprocess.Popen([UET, "run", "--", "yes"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert readline(proc) == b"y\n"
    proc.stdout.close()  # like `| head -1`
    proc.wait(timeout=30)
    proc.stderr.close()
    assert proc.returncode == 141
    with init_db(str(tmp_path / ".ledger" / "framework.db")) as db:
        run = db.list_runs()[0]
        assert run["state"] == "failed" and "SIGPIPE" in run["error_message"]


def test_run_usage_errors_record_nothing(tmp_path):
    for args in (["--projetc", "x", "--", "true"], ["--", ""], ["--timeout", "nan", "--", "true"]):
        result = uet("run", *args, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
    assert not (tmp_path / ".ledger").exists() or init_db(
        str(tmp_path / ".ledger" / "framework.db")).list_runs() == []


def test_run_json_reports_the_result_and_the_reason_is_printed(tmp_path):
    result = uet("run", "--json", "--", "no-such-command-anywhere", cwd=tmp_path)
    assert result.returncode == 127 and "command not found" in result.stderr
    report = json.loads(result.stdout)
    assert (report["state"], report["exit_code"]) == ("failed", 127)


def test_escape_sequences_from_the_ledger_do_not_reach_the_terminal(tmp_path):
    uet("run", "--", "x\x1b]0;pwned\x07\x1b[2J", cwd=tmp_path)  # recorded in error_message
    shown = uet("show", cwd=tmp_path).stdout + uet("events", cwd=tmp_path).stdout
    assert "\x1b" not in shown and "\\x1b" in shown


@pytest.mark.parametrize("typed", ["a\x0bb", "a\rb", "a\x1b[2Jb", "a\u2028b", "a\x9bb"])
def test_an_error_quoting_the_callers_input_stays_one_clean_line(tmp_path, ledger, typed):
    # found by bench/reliability.py: usage errors echoed arguments with control characters
    for args in (("show", "x", typed), ("show", typed), ("runs", "--state", typed),
                 ("events", "--run", typed)):
        result = uet(*args, cwd=tmp_path)
        message = one_line_error(result)
        assert len(message.splitlines()) == 1
        assert not any(ord(c) < 32 and c != "\n" or 127 <= ord(c) < 160 for c in message)


def test_id_prefixes_are_case_insensitive(tmp_path, ledger):
    with init_db(str(ledger)) as db:
        run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
    result = uet("show", "--json", run_id[:16].lower(), cwd=tmp_path)
    assert result.returncode == 0 and json.loads(result.stdout)["run"]["run_id"] == run_id


def test_init_migrate_doctor_on_postgresql_never_print_the_password(tmp_path, postgres_url):
    url = postgres_url.replace("uet@", "uet:s3cret@")  # trust authentication ignores it
    before = json.loads(uet("migrate", "--db", url, "--json", cwd=tmp_path).stdout)
    assert (before["before"], before["after"]) == (None, 6)
    for args in (["init", "--db", url], ["migrate", "--db", url], ["doctor", "--db", url],
                 ["runs", "--db", url], ["init", "--db", url, "--json"]):
        result = uet(*args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "s3cret" not in result.stdout + result.stderr
    report = json.loads(uet("doctor", "--db", url, "--json", cwd=tmp_path).stdout)
    assert report["problems"] == [] and report["engine"] == "postgresql"
    assert not (tmp_path / ".ledger").exists()  # nothing fell back to the default file
    down = uet("runs", "--db", "postgresql://uet:s3cret@127.0.0.1:1/x", cwd=tmp_path)
    assert down.returncode == 1 and "cannot reach the PostgreSQL server" in one_line_error(down)
    assert "s3cret" not in down.stderr


def test_events_follow_on_postgresql_wakes_on_commit_not_on_its_interval(tmp_path,
                                                                         postgres_url):
    with init_db(postgres_url) as db:
        run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
    follower = subprocess.Popen([UET, "events", "--follow", "--json", "--interval", "60",
                                 "--db", postgres_url], cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=uet_env())
    try:
        # once it printed the run's creation the follower has read the trail (it listens
        # before reading): from then on only a notification, or its next poll 60 s after
        # that read, shows it the next event
        assert json.loads(readline(follower))["event_type"] == "run.created"
        with init_db(postgres_url) as db:
            db.create_event({"run_id": run_id, "event_type": "wake"})
        committed = time.monotonic()
        assert json.loads(readline(follower, timeout=120))["event_type"] == "wake"
        # a time bound, necessarily: polling would take up to 60 s from the read, while a
        # notification takes well under a second; 40 s leaves room for a loaded machine
        assert time.monotonic() - committed < 40
    finally:
        follower.send_signal(signal.SIGINT)
        follower.communicate(timeout=30)
    assert follower.returncode == 0


def test_output_with_nul_bytes_is_recorded_with_replacement_characters(tmp_path):
    script = "import sys; sys.stderr.buffer.write(b'bad\\x00byte'); sys.exit(3)"
    proc = subprocess.run([UET, "run", "--", sys.executable, "-c", script], cwd=tmp_path,
                          capture_output=True, timeout=60)
    assert proc.returncode == 3 and proc.stderr.startswith(b"bad\x00byte")
    with init_db(str(tmp_path / ".ledger" / "framework.db")) as db:
        step = db.list_step_attempts(db.list_runs()[0]["run_id"])[0]
        assert step["error_log"].startswith("bad\ufffdbyte\n") and step["exit_code"] == 3


def test_run_records_into_a_postgresql_ledger(tmp_path, postgres_url):
    result = uet("run", "--db", postgres_url, "--project", "api", "--", sys.executable, "-c",
                 "import sys; print('out'); sys.exit(4)", cwd=tmp_path)
    assert result.returncode == 4 and "out" in result.stdout
    with init_db(postgres_url) as db:
        run = db.list_runs()[0]
        assert (run["project_id"], run["state"], run["exit_code"]) == ("api", "failed", 4)
        step = db.list_step_attempts(run["run_id"])[0]
        assert step["metadata"]["stdout_tail"] == "out\n"
        expected = db.list_events(run["run_id"])
    shown = json.loads(uet("show", "--db", postgres_url, "--json", cwd=tmp_path).stdout)
    assert shown["run"] == run and shown["events"] == expected
    assert not (tmp_path / ".ledger").exists()


def test_logs_prints_the_kept_output_whole_and_escaped(tmp_path, ledger):
    script = "printf 'one\\n\\033[31mred\\033[0m\\tTAB\\n'; printf 'err\\n' >&2; exit 2"
    assert uet("run", "--", "sh", "-c", script, cwd=tmp_path).returncode == 2
    assert uet("run", "--", "sh", "-c", "echo later", cwd=tmp_path).returncode == 0
    with init_db(str(ledger)) as db:
        first = db.list_runs()[1]["run_id"]
    out = uet("logs", first[:14], cwd=tmp_path)
    assert out.returncode == 0 and out.stdout == "one\n\\x1b[31mred\\x1b[0m\tTAB\n"
    assert uet("logs", first, "--stderr", cwd=tmp_path).stdout == "err\n"
    assert uet("logs", cwd=tmp_path).stdout == "later\n"  # the newest run
    (tail,) = json.loads(uet("logs", first, "--json", cwd=tmp_path).stdout)
    assert (tail["sequence"], tail["stdout_tail"], tail["stderr_tail"]) == (
        1, "one\n\x1b[31mred\x1b[0m\tTAB\n", "err\n")
    missing = uet("logs", first, "--step", "2", cwd=tmp_path)
    assert missing.returncode == 1
    assert missing.stderr == f"uet: error: run {first} has no step attempt with sequence 2\n"
    assert f"kept output: uet logs {first}" in uet("show", first, cwd=tmp_path).stdout


def test_events_follow_of_one_run_ends_once_the_run_is_finished(tmp_path, ledger):
    go = tmp_path / "go"
    runner = run_until(go, cwd=tmp_path)
    with init_db(str(ledger)) as db:
        run_id = db.list_runs()[0]["run_id"]
    follower = subprocess.Popen([UET, "events", run_id, "--follow", "--json", "--interval",
                                 "0.05"], cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=uet_env())
    try:
        assert json.loads(readline(follower))["event_type"] == "run.created"
        go.touch()
        assert runner.wait(timeout=60) == 0
        out, err = follower.communicate(timeout=60)  # it ends by itself
    finally:
        for proc in (runner, follower):
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
    assert follower.returncode == 0, err
    last = json.loads(out.splitlines()[-1])
    assert (last["event_type"], last["data"]["to"]) == ("run.state_changed", "succeeded")
    again = uet("events", run_id, "--follow", "--json", cwd=tmp_path, timeout=30)
    assert again.returncode == 0  # a finished run: its trail, then done at once
    with init_db(str(ledger)) as db:
        trail = [e["seq"] for e in db.list_events(run_id)]
    assert [json.loads(line)["seq"] for line in again.stdout.splitlines()] == trail

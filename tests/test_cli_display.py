"""Whatever a ledger holds, `uet` shows it safely (issue 12, part 2): every listing and
`--json` output survives hostile stored values, escapes every control character, clips long
values in tables; and what uet says about the caller's own input names it (issue 12, part
3). Driven as a user drives it: the real `uet` in subprocesses, on both engines."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from itertools import count, cycle
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from test_cli import UET, one_line_error, readline, uet, uet_env
from uet.state import GateLedger, PatchLedger, WorkerLifecycle, init_db

# what must never reach a terminal raw: controls, format characters (bidi, zero width),
# line and paragraph separators, lone surrogates
HIDDEN = {"Cc", "Cf", "Cs", "Zl", "Zp"}
INSPECTIONS = [["runs"], ["runs", "--json"], ["show"], ["show", "--json"], ["events"],
               ["events", "--json"], ["workers"], ["workers", "--json"], ["patches"],
               ["patches", "--json"], ["gates"], ["gates", "--json"]]


def raw_hidden(text: str) -> list[str]:
    """The hidden characters of `text` that are not a line break."""
    return [c for c in text if c != "\n" and unicodedata.category(c) in HIDDEN]


def uet_bytes(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`uet` with its output as bytes: what it writes must be valid UTF-8 by itself."""
    return subprocess.run([UET, *args], cwd=cwd, env=uet_env(), capture_output=True,
                          timeout=120, stdin=subprocess.DEVNULL)


def inspect_everything(db_name: str, cwd: Path) -> dict[str, object]:
    """Every inspection command on the ledger: each exits 0 with nothing on stderr, prints
    valid UTF-8 with no hidden character, valid JSON for --json; the JSON documents."""
    def one(args: list[str]) -> tuple[list[str], subprocess.CompletedProcess]:
        return args, uet_bytes(*args, "--db", db_name, cwd=cwd)
    documents = {}
    with ThreadPoolExecutor(2) as pool:
        for args, result in pool.map(one, INSPECTIONS):
            out, err = result.stdout.decode("utf-8"), result.stderr.decode("utf-8")
            assert (result.returncode, err) == (0, ""), (args, err[-2000:])
            assert raw_hidden(out) == [], (args, raw_hidden(out)[:10])
            if "--json" in args:
                documents[" ".join(args)] = json.loads(out)
            else:  # clipped: a few rows of megabyte values stay a short text
                assert len(out) < 200_000, (args, len(out))
    return documents


def follow_all(db_name: str, cwd: Path, events: int) -> list[dict]:
    """`uet events --follow --json` until it has printed `events` lines (then Ctrl-C)."""
    follower = subprocess.Popen([UET, "events", "--follow", "--json", "--interval", "0.05",
                                 "--db", db_name], cwd=cwd, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=uet_env())
    try:
        lines = [readline(follower) for _ in range(events)]
    finally:
        follower.send_signal(signal.SIGINT)
        _, err = follower.communicate(timeout=60)
    assert (follower.returncode, err) == (0, b""), err[-2000:]
    texts = [line.decode("utf-8") for line in lines]
    assert all(t.endswith("\n") and raw_hidden(t) == [] for t in texts)
    return [json.loads(t) for t in texts]


# -- hostile values --------------------------------------------------------------------

SPECIAL = ["\x1b[2J", "\x1b]0;pwned\x07", "\x9b31m", "\r", "\n", "\t", "\x7f", "\x08",
           "\u202e", "\u2066", "\u200b", "\u200d", "\ufeff", "\u2028", "\u2029", "\xad",
           "\U000e0041", "[/]", "[bold red]", ":smile:", "\\x1b", "\u05d0\u05d1",
           "\u0645\u0631\u062d\u0628\u0627", "\U0001f600", "\u0301"]
# what every write API accepts: valid Unicode without NUL (the text rule); non-blank, and
# never a reserved event type, thanks to the leading letter
accepted = st.builds(lambda parts: "v" + "".join(parts), st.lists(st.one_of(
    st.sampled_from(SPECIAL),
    st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"),
            max_size=8)), max_size=6))
# what only raw SQL can store (SQLite: JSON text escapes of what Python cannot encode)
raw_only = st.sampled_from(["\ud800", "\udfff", "a\udc80b", "\x00", "x\x00\x1b\ud834"])
# (piece, times): a huge value, built in the test (a failing example's report stays short)
huge = st.sampled_from([None, ("x", 1_000_000), ("\x1b[2J", 200_000), ("\u202e", 300_000)])


def built(big: tuple[str, int] | None) -> str | None:
    return None if big is None else big[0] * big[1]


def nested(depth: int, leaf: object) -> object:
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


def fill(db, texts: list[str], big: str | None, depth: int, tag: str, *,
         big_id: bool) -> None:
    """One of each record the ledger keeps, every text field from `texts` (ids prefixed
    with `tag`, so that examples sharing a ledger do not collide); `big` in a metadata value
    and a prompt, and with `big_id` in a project id (PostgreSQL indexes cannot hold it)."""
    t = cycle(texts)
    run = db.create_run({
        "project_id": big if big and big_id else next(t), "phase_id": next(t),
        "workstream_id": next(t), "execution_request_id": next(t),
        "metadata": {next(t): next(t), "big": big, "deep": nested(depth, next(t))}})
    step = db.create_step_attempt({"run_id": run, "sequence": 1, "tool_id": next(t),
                                   "input_prompt": big or next(t), "metadata": {"k": next(t)}})
    db.create_event({"run_id": run, "event_type": next(t), "data": {next(t): [next(t)]}})
    db.transition_run(run, "running")
    db.transition_run(run, "failed", exit_code=3, error_message=next(t))
    WorkerLifecycle(db).spawn_worker(tag + next(t), next(t), {next(t): next(t)})
    patches = PatchLedger(db)
    name = "".join(next(t).splitlines())  # a path: one line
    patch = patches.record_patch(f"--- a/{name}\n+++ b/{name}\n@@ -1 +1 @@\n-{tag}\n+b\n",
                                 step_attempt_id=step)
    patches.quarantine(patches.create_entry(patch, next(t)).ledger_id, next(t))
    gates = GateLedger(db)
    first = gates.define_gate("UNIT", next(t), next(t), name=f"{tag}a{next(t)}", run_id=run)
    gates.define_gate("LINT", first["phase_id"], next(t), name=f"{tag}b{next(t)}", run_id=run,
                      depends_on=[first["name"]])


def raw_sqlite_values(path: str, raw: list[str]) -> None:
    """What only raw SQL can put into a ledger file: lone surrogates and NUL in JSON
    values (as JSON escapes), NUL in plain text, NaN past the JSON checks."""
    r = cycle(raw)
    def json_text(value):
        return json.dumps(value)  # ASCII: lone surrogates and NUL as \\u escapes
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA ignore_check_constraints=ON")  # NaN is not JSON to SQLite
        conn.execute("UPDATE runs SET metadata = ?", (json_text(
            {next(r): next(r), "list": [next(r), {next(r): 1}], "nan": 0.5}).replace(
                "0.5", "NaN"),))
        conn.execute("UPDATE run_events SET data = ? WHERE event_type NOT LIKE 'run.%'",
                     (json_text({next(r): [next(r)]}),))
        conn.execute("UPDATE step_attempts SET metadata = ?", (json_text({"k": next(r)}),))
        conn.execute("UPDATE workers SET affinity = ?", (json_text({next(r): next(r)}),))
        conn.execute("UPDATE runs SET error_message = ?", ("nul\x00inside\x1b",))
        # BLOBs where timestamps belong: no duration can be computed from them
        conn.execute("UPDATE runs SET started_at = ?, ended_at = ?",
                     (b"\x1b[2J\xff", b"2026-01-31T12:00:00.000000Z"))
        conn.execute("UPDATE run_events SET timestamp = ? WHERE event_type NOT LIKE 'run.%'",
                     ("\x1b]0;pwned\x07",))
        conn.commit()
    finally:
        conn.close()


def as_json(value: object) -> object:
    """A stored value as uet's JSON has it: NaN and the infinities (which JSON cannot
    hold) as the strings "NaN", "Infinity", "-Infinity"; a BLOB as its UTF-8 text with
    the bytes that are not UTF-8 as \\xNN."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, float) and value != value:
        return "NaN"
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    return [as_json(v) for v in value] if isinstance(value, list) else value


def check_documents(db, documents: dict, followed: list[dict]) -> None:
    """The JSON outputs are the ledger's values exactly (lone surrogates included)."""
    assert documents["runs --json"] == as_json(db.list_runs())
    assert documents["events --json"] == as_json(db.events_since(0)) == followed
    newest = db.list_runs(limit=1)[0]
    assert documents["show --json"]["run"] == as_json(newest)
    assert documents["show --json"]["step_attempts"] == as_json(db.list_step_attempts(
        newest["run_id"]))


_examples = count()


# no shrinking: each example runs a dozen processes, and the failing one is reported whole
@settings(max_examples=10, deadline=None, derandomize=True,
          phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow, HealthCheck.data_too_large])
@given(texts=st.lists(accepted, min_size=1, max_size=8), raw=st.lists(raw_only, min_size=1),
       big=huge, depth=st.integers(0, 198))
def test_every_inspection_shows_hostile_values_of_a_sqlite_ledger(tmp_path, texts, raw, big,
                                                                   depth):
    path = str(tmp_path / f"hostile-{next(_examples)}.db")
    with init_db(path) as db:
        fill(db, texts, built(big), depth, "t", big_id=True)
    raw_sqlite_values(path, raw)
    documents = inspect_everything(path, tmp_path)
    with init_db(path) as db:
        check_documents(db, documents, follow_all(path, tmp_path, len(db.events_since(0))))


@settings(max_examples=5, deadline=None, derandomize=True,
          phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow, HealthCheck.data_too_large])
@given(texts=st.lists(accepted, min_size=1, max_size=8), big=huge,
       depth=st.integers(0, 198))
def test_every_inspection_shows_hostile_values_of_a_postgresql_ledger(tmp_path, postgres_url,
                                                                       texts, big, depth):
    # PostgreSQL's text holds neither lone surrogates nor NUL: everything else goes in
    with init_db(postgres_url) as db:
        fill(db, texts, built(big), depth, f"t{next(_examples)}", big_id=False)
        documents = inspect_everything(postgres_url, tmp_path)
        check_documents(db, documents,
                        follow_all(postgres_url, tmp_path, len(db.events_since(0))))


def test_the_escaped_characters_are_every_hidden_character_of_unicode():
    from uet.cli.output import UNSAFE
    hidden = [chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) in HIDDEN]
    assert [c for c in hidden if not UNSAFE.match(c)] == []
    assert not UNSAFE.search("plain ascii, accents é, wide 漢字, emoji \U0001f600, rtl \u05d0")


# -- one value at a time: the failures once seen ---------------------------------------

@pytest.fixture
def file_ledger(tmp_path) -> str:
    path = str(tmp_path / "ledger.db")
    init_db(path).close()
    return path


def test_a_lone_surrogate_stored_by_raw_sql_is_shown_escaped(tmp_path, file_ledger):
    # once: UnicodeEncodeError tracebacks from `runs --json`, `show` and `events --follow`
    with init_db(file_ledger) as db:
        run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
        db.create_event({"run_id": run_id, "event_type": "tick", "data": {"i": 1}})
    conn = sqlite3.connect(file_ledger)
    conn.execute("UPDATE runs SET metadata = ?", ('{"a": "\\ud800"}',))
    conn.execute("UPDATE run_events SET data = ? WHERE event_type = 'tick'", ('["\\udfff"]',))
    conn.commit()
    conn.close()
    listed = uet_bytes("runs", "--json", "--db", file_ledger, cwd=tmp_path)
    assert listed.returncode == 0 and b'"a": "\\ud800"' in listed.stdout
    assert json.loads(listed.stdout)[0]["metadata"] == {"a": "\ud800"}  # exactly as stored
    shown = uet_bytes("show", "--db", file_ledger, cwd=tmp_path)
    assert shown.returncode == 0 and b'{"a": "\\ud800"}' in shown.stdout, shown.stderr
    followed = follow_all(file_ledger, tmp_path, 2)
    assert followed[1]["data"] == ["\udfff"]
    text = uet_bytes("events", "--db", file_ledger, cwd=tmp_path)
    assert text.returncode == 0 and b'["\\udfff"]' in text.stdout


def test_tables_clip_long_values_and_json_keeps_them_whole(tmp_path, file_ledger):
    # once: a 1 MB project id wrapped to 1,150 lines; a 10 MB metadata value printed whole
    with init_db(file_ledger) as db:
        db.create_run({"project_id": "p" * 1_000_000, "phase_id": "ph",
                       "metadata": {"log": "m" * 10_000_000}})
    table = uet("runs", "--db", file_ledger, cwd=tmp_path)
    assert table.returncode == 0 and len(table.stdout.splitlines()) < 10
    assert "…(+999,800 chars)" in table.stdout
    shown = uet("show", "--db", file_ledger, cwd=tmp_path)
    assert shown.returncode == 0 and len(shown.stdout) < 20_000
    assert "…(+998,000 chars)" in shown.stdout and "…(+9,998,011 chars)" in shown.stdout
    document = json.loads(uet("show", "--json", "--db", file_ledger, cwd=tmp_path).stdout)
    assert document["run"]["project_id"] == "p" * 1_000_000
    assert document["run"]["metadata"]["log"] == "m" * 10_000_000


def test_json_escapes_c1_controls_and_bidi_characters(tmp_path, file_ledger):
    # json.dumps(ensure_ascii=False) leaves DEL, C1 controls (0x9b: CSI) and bidi raw
    with init_db(file_ledger) as db:
        db.create_run({"project_id": "a\x9b2Jb\x7f", "phase_id": "\u202eevil"})
    result = uet_bytes("runs", "--json", "--db", file_ledger, cwd=tmp_path)
    assert result.returncode == 0 and raw_hidden(result.stdout.decode("utf-8")) == []
    assert b'"a\\u009b2Jb\\u007f"' in result.stdout and b'"\\u202eevil"' in result.stdout
    run = json.loads(result.stdout)[0]
    assert (run["project_id"], run["phase_id"]) == ("a\x9b2Jb\x7f", "\u202eevil")


def test_run_summary_escapes_the_command_line(tmp_path):
    # once: the escape sequences of the command line reached the terminal raw, and a
    # command named only by escapes gave "command not found: " and nothing after it
    db = str(tmp_path / "l.db")
    failed = uet("run", "--db", db, "--", "sh", "-c", "exit 3", "\x1b[2J\x1b]0;x\x07\u202e",
                 cwd=tmp_path)
    assert failed.returncode == 3 and raw_hidden(failed.stderr) == []
    assert "exited with 3: sh -c 'exit 3' '\\x1b[2J\\x1b]0;x\\x07\\u202e'" in failed.stderr
    missing = uet("run", "--db", db, "--", "\x1b[2J", cwd=tmp_path)
    assert missing.returncode == 127 and raw_hidden(missing.stderr) == []
    assert "command not found: \\x1b[2J" in missing.stderr


def test_run_json_writes_one_document_and_the_commands_output_to_stderr(tmp_path):
    # once: the command's "hello" came first on stdout, before the JSON document
    result = uet("run", "--json", "--db", str(tmp_path / "l.db"), "--", "echo", "hello",
                 cwd=tmp_path)
    assert result.returncode == 0
    report = json.loads(result.stdout)
    assert (report["state"], report["exit_code"]) == ("succeeded", 0)
    assert result.stderr.startswith("hello\n")


def test_since_names_the_option_and_its_forms(tmp_path, file_ledger):
    result = uet("runs", "--since", "yesterday", "--db", file_ledger, cwd=tmp_path)
    message = one_line_error(result)
    assert result.returncode == 2 and "--since 'yesterday'" in message
    assert "30s, 15m, 2h, 7d, 1w" in message and "ISO timestamp" in message


def test_show_on_an_empty_ledger_says_there_are_no_runs_yet(tmp_path, file_ledger):
    result = uet("show", "--db", file_ledger, cwd=tmp_path)
    assert result.returncode == 1 and "has no runs yet" in one_line_error(result)
    assert "uet run -- CMD" in result.stderr


@pytest.mark.parametrize("url", ["sqlite:///x.db", "mysql://u@localhost/db", "file:///x.db"])
@pytest.mark.parametrize("command", [["init"], ["runs"], ["run", "--", "true"]])
def test_db_refuses_urls_of_other_databases_and_creates_nothing(tmp_path, url, command):
    # once: `sqlite:///x.db` silently created a folder `sqlite:` holding the ledger
    args = command[:1] + ["--db", url] + command[1:]
    result = uet(*args, cwd=tmp_path)
    message = one_line_error(result)
    assert result.returncode == 2 and f"{url.split(':')[0]}:// URLs are not supported" in message
    assert "postgresql://" in message and list(tmp_path.iterdir()) == []


def test_db_refuses_what_is_not_a_regular_file(tmp_path):
    # once: `--db /dev/null` left /dev/null-journal behind and said "check free space"
    journal_before = os.path.exists("/dev/null-journal")
    for command in (["init"], ["runs"], ["doctor"], ["run", "--", "true"]):
        result = uet(command[0], "--db", "/dev/null", *command[1:], cwd=tmp_path)
        assert result.returncode == 1
        assert "/dev/null: it is a character device, not a regular file" in one_line_error(
            result)
    if not journal_before:
        assert not os.path.exists("/dev/null-journal")


def test_a_file_named_like_the_ledger_folder_is_named_in_the_error(tmp_path):
    (tmp_path / ".ledger").write_text("my notes\n")
    for command in (["init"], ["runs"], ["run", "--", "true"]):
        result = uet(*command, cwd=tmp_path)
        assert result.returncode == 1
        assert f"{tmp_path / '.ledger'} is a file, not a folder" in one_line_error(result)
    assert (tmp_path / ".ledger").read_text() == "my notes\n"


def test_a_failed_open_leaves_no_folder_behind(tmp_path):
    # the folders are made, then SQLite cannot create a file with a name this long
    result = uet("init", "--db", f"new/sub/{'x' * 300}.db", cwd=tmp_path)
    assert result.returncode == 1 and "cannot open ledger" in one_line_error(result)
    assert not (tmp_path / "new").exists()


def test_a_huge_error_stays_one_short_line(tmp_path, file_ledger):
    result = uet("show", "\x1b" * 100_000, "--db", file_ledger, cwd=tmp_path)
    message = one_line_error(result)
    assert result.returncode == 1 and len(message) < 20_000 and "chars left out" in message
    assert raw_hidden(message.rstrip("\n")) == []


def test_text_that_is_not_utf8_is_listed_with_its_bad_bytes_escaped(tmp_path):
    """Bytes that are not UTF-8 in a text column (another program, raw SQL): every listing
    still works, the bad bytes shown as escapes (\\udcff in JSON)."""
    path = tmp_path / "framework.db"
    init_db(str(path)).close()
    conn = sqlite3.connect(str(path))
    conn.execute("INSERT INTO runs (run_id, project_id, phase_id, state, created_at, "
                 "metadata) VALUES ('r', CAST(X'6162FF' AS TEXT), 'ph', 'pending', "
                 "'2026-01-01T00:00:00.000000Z', '{}')")
    conn.commit()
    conn.close()
    listed = uet("runs", "--db", str(path), "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)[0]["project_id"] == "ab\udcff"
    assert '"ab\\udcff"' in listed.stdout
    table = uet("runs", "--db", str(path), cwd=tmp_path)
    assert table.returncode == 0 and "ab\\udcff" in table.stdout
    shown = uet("show", "r", "--db", str(path), cwd=tmp_path)
    assert shown.returncode == 0 and "ab\\udcff" in shown.stdout

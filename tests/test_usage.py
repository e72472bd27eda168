"""Usage and cost (issue 15): what a tool reports in $UET_USAGE_FILE is read safely
(`uet.engine.usage.read_usage`), stored on its step attempt by `uet run`, summed per run by
`uet show` and rolled up by `uet usage` (`uet.state.usage`) on both engines; and `uet
workers` shows each worker's host, pid, heartbeat age and whether it is stale."""

from __future__ import annotations

import io
import json
import math
import os
import socket
import sqlite3
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_cli import one_line_error, uet
from uet.cli.usage import BY_CHOICES as CLI_BY_CHOICES
from uet.engine import run_command
from uet.engine.usage import MAX_USAGE_BYTES, USAGE_FIELDS, read_usage
from uet.errors import ValidationError
from uet.state import WorkerLifecycle, init_db
from uet.state.usage import BY_CHOICES, usage_of_run, usage_rollup, usage_totals

STAND_IN = Path(__file__).resolve().parent.parent / "examples" / "tools" / "stand_in_editor.py"


def write(path: Path, content: str | bytes) -> str:
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return str(path)


# -- read_usage: what a tool wrote ---------------------------------------------------------

def test_a_complete_usage_file_is_read_whole(tmp_path):
    path = write(tmp_path / "u.json", json.dumps(
        {"model": "gpt-4.1", "input_tokens": 1234, "output_tokens": 567, "cost_usd": 0.0123,
         "unknown": {"kept": False}}))
    assert read_usage(path) == ({"model": "gpt-4.1", "input_tokens": 1234,
                                 "output_tokens": 567, "cost_usd": 0.0123}, None)


def test_every_field_is_optional(tmp_path):
    assert read_usage(write(tmp_path / "u.json", '{"cost_usd": 2}')) == ({"cost_usd": 2.0}, None)
    assert read_usage(write(tmp_path / "v.json", "{}")) == ({}, None)
    assert USAGE_FIELDS == ("model", "input_tokens", "output_tokens", "cost_usd")


def test_only_the_four_names_count_not_aliases(tmp_path):
    path = write(tmp_path / "u.json", json.dumps(
        {"prompt_tokens": 5, "completion_tokens": 6, "tokens_in": 7, "cost": 1.0,
         "usage": {"input_tokens": 9}}))
    assert read_usage(path) == ({}, None)


@pytest.mark.parametrize("content", ["", "  \n\t ", b""])
def test_a_missing_or_empty_file_is_no_usage_and_no_problem(tmp_path, content):
    assert read_usage(str(tmp_path / "never-written.json")) == ({}, None)
    assert read_usage(str(tmp_path / "no-folder" / "u.json")) == ({}, None)
    assert read_usage(write(tmp_path / "u.json", content)) == ({}, None)


def test_the_size_limit_is_64_kib(tmp_path):
    document = '{"input_tokens": 7}'
    exactly = write(tmp_path / "max.json", document + " " * (MAX_USAGE_BYTES - len(document)))
    assert MAX_USAGE_BYTES == 65536 and os.path.getsize(exactly) == MAX_USAGE_BYTES
    assert read_usage(exactly) == ({"input_tokens": 7}, None)
    over = write(tmp_path / "big.json", document + " " * (MAX_USAGE_BYTES - len(document) + 1))
    assert read_usage(over) == ({}, "usage file larger than 64 KiB ignored")


@pytest.mark.parametrize("content,problem", [
    (b"model: gpt", "usage file is not JSON"),
    (b'{"model": "gpt"', "usage file is not JSON"),
    (b'{"model": "\xff\xfe"}', "usage file is not UTF-8"),
    (b'["model", "gpt"]', "usage file holds a JSON array, not an object"),
    (b'"gpt"', "usage file holds a JSON string, not an object"),
    (b"12", "usage file holds a JSON number, not an object"),
    (b"null", "usage file holds a JSON null, not an object"),
    (b"[" * 200_000, "usage file larger than 64 KiB ignored"),
    (b"[" * 60_000, "usage file is "),  # too deep to parse: not JSON or too deep, no crash
    (b'{"input_tokens": 1' + b"0" * 5000 + b"}", "usage file is not JSON"),
])
def test_what_is_not_a_usage_object_is_ignored_with_a_problem(tmp_path, content, problem):
    values, said = read_usage(write(tmp_path / "u.json", content))
    assert values == {} and said is not None and said.startswith(problem), said


def test_a_byte_order_mark_is_accepted(tmp_path):
    path = write(tmp_path / "u.json", b'\xef\xbb\xbf{"model": "m"}')
    assert read_usage(path) == ({"model": "m"}, None)


def test_what_is_not_a_regular_file_is_refused_unread_and_never_blocks(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    assert read_usage(str(folder)) == ({}, "usage file is a directory, not a file; ignored")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # no writer: a blocking open would hang here for ever
    values, problem = read_usage(str(fifo))
    assert values == {} and "not a regular file" in problem
    values, problem = read_usage("/dev/zero")  # endless: read whole it would never end
    assert values == {} and "not a regular file" in problem
    loop = tmp_path / "loop"
    os.symlink(loop, loop)
    values, problem = read_usage(str(loop))
    assert values == {} and problem.startswith("usage file cannot be read:")


@pytest.mark.parametrize("field,value,why", [
    ("model", 3, "is not a string (a JSON number)"),
    ("model", "", "is empty"),
    ("model", "   ", "is empty"),
    ("model", "m" * 201, "is longer than 200 characters (201)"),
    ("model", "a\x00b", "contains NUL"),
    ("model", "\ud800", "is not valid Unicode text"),
    ("model", None, "is not a string (a JSON null)"),
    ("input_tokens", -1, "is out of range"),
    ("input_tokens", 2**63, "is out of range"),
    ("input_tokens", 10**400, "is out of range"),
    ("input_tokens", 1.0, "is not an integer (a JSON number)"),
    ("input_tokens", True, "is not an integer (a JSON boolean)"),
    ("output_tokens", "5", "is not an integer (a JSON string)"),
    ("output_tokens", [5], "is not an integer (a JSON array)"),
    ("cost_usd", -0.01, "is negative"),
    ("cost_usd", float("nan"), "is not a finite number"),
    ("cost_usd", float("inf"), "is not a finite number"),
    ("cost_usd", 10**400, "is not a finite number"),
    ("cost_usd", False, "is not a number (a JSON boolean)"),
    ("cost_usd", "0.1", "is not a number (a JSON string)"),
    ("cost_usd", {"usd": 1}, "is not a number (a JSON object)"),
])
def test_a_bad_value_is_dropped_alone_and_named(tmp_path, field, value, why):
    good = {"model": "m", "input_tokens": 1, "output_tokens": 2, "cost_usd": 0.5}
    path = write(tmp_path / "u.json", json.dumps({**good, field: value}))
    values, problem = read_usage(path)
    assert values == {k: v for k, v in good.items() if k != field}
    assert problem.startswith(f"usage file values dropped: {field} ") and why in problem
    assert "\x00" not in problem and problem.encode("utf-8")  # storable as metadata


def test_the_limits_themselves_are_kept(tmp_path):
    document = {"model": "m" * 200, "input_tokens": 0, "output_tokens": 2**63 - 1,
                "cost_usd": 0}
    values, problem = read_usage(write(tmp_path / "u.json", json.dumps(document)))
    assert problem is None and values == {**document, "cost_usd": 0.0}
    assert isinstance(values["cost_usd"], float)


def test_several_bad_values_are_all_named(tmp_path):
    path = write(tmp_path / "u.json", '{"model": 1, "input_tokens": -2, "cost_usd": NaN, '
                                      '"output_tokens": 3}')
    values, problem = read_usage(path)
    assert values == {"output_tokens": 3}
    assert [part.split()[0] for part in problem.split(": ", 1)[1].split("; ")] == [
        "model", "input_tokens", "cost_usd"]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_never_raise(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("usage") / "u.json"
    values, problem = read_usage(write(path, content))
    assert set(values) <= set(USAGE_FIELDS)
    assert problem is None or (isinstance(problem, str) and "\x00" not in problem)


JSON_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(st.characters(exclude_categories=()), max_size=210),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.none(),
                                                         max_size=2))


def expected_valid(name: str, value: object) -> bool:
    """The rules of the issue, spelled out independently of the code under test."""
    if name == "model":
        if not isinstance(value, str) or not value.strip() or len(value) > 200:
            return False
        return "\x00" not in value and not any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, bool):
        return False
    if name == "cost_usd":
        if not isinstance(value, (int, float)):
            return False
        try:
            return math.isfinite(float(value)) and value >= 0
        except OverflowError:  # an integer too large for a float
            return False
    return isinstance(value, int) and 0 <= value <= 2**63 - 1


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=st.dictionaries(st.sampled_from([*USAGE_FIELDS, "other"]), JSON_VALUES),
       ascii_only=st.booleans())
def test_exactly_the_valid_values_are_kept_and_the_ledger_stores_them(
        tmp_path_factory, in_memory_db, document, ascii_only):
    try:
        raw = json.dumps(document, ensure_ascii=ascii_only).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate written raw: not UTF-8
        raw = json.dumps(document, ensure_ascii=False).encode("utf-8", "surrogatepass")
    path = tmp_path_factory.mktemp("usage") / "u.json"
    values, problem = read_usage(write(path, raw))
    if not raw.decode("utf-8", "replace") == raw.decode("utf-8", "surrogateescape"):
        assert values == {} and problem.startswith("usage file is not UTF-8")
        return
    # a cost is stored as a float (REAL): an integer past 2**53 is rounded as float() does
    wanted = {name: float(value) if name == "cost_usd" else value
              for name, value in document.items()
              if name in USAGE_FIELDS and expected_valid(name, value)}
    assert values == wanted
    dropped = [name for name in USAGE_FIELDS if name in document and name not in wanted]
    assert (problem is None) == (not dropped)
    for name in dropped:
        assert f" {name} " in f" {problem.split(': ', 1)[1]}"
    # every kept value is one the ledger accepts as it is
    run_id = in_memory_db.create_run({"project_id": "p", "phase_id": "ph"})
    step = in_memory_db.create_step_attempt({"run_id": run_id, "sequence": 1, "tool_id": "t"})
    stored = in_memory_db.update_step_attempt(step, {**values, "metadata": {
        "usage_error": problem}} if problem else values)
    assert {name: stored[name] for name in values} == values


# -- the rollup, on every engine -----------------------------------------------------------

RUNS = {  # run: (project, phase, workstream)
    "R1": ("alpha", "PH-1", "WS-1"), "R2": ("alpha", "PH-2", "WS-2"),
    "R3": ("beta", "PH-1", "WS-1"), "R4": ("beta", "PH-1", None),
}
# (run, tool, task, model, input tokens, output tokens, cost, day of January 2026)
ATTEMPTS = [
    ("R1", "aider", "T1", "gpt", 100, 10, 0.5, 1),
    ("R1", "aider", "T2", "gpt", 200, 20, 0.25, 2),
    ("R1", "pytest", "T2", None, None, None, None, 2),  # reported nothing: not counted
    ("R2", "aider", "T1", "claude", 1000, 100, 2.0, 3),
    ("R2", "codex", None, "o3", 50, 5, None, 3),
    ("R3", "codex", "T1", "o3", None, None, 1.0, 4),
    ("R3", "aider", "T3", None, 7, None, None, 4),
    ("R4", "claude", "T1", "claude", 300, 30, 0.125, 5),
    ("R4", "claude", "T1", "claude", 1, 1, 0.125, 5),
]
KEY = {"tool": 1, "task": 2, "model": 3}


@pytest.fixture
def usage_ledger(db):
    """`db` holding RUNS and ATTEMPTS."""
    for run_id, (project, phase, workstream) in RUNS.items():
        db.create_run({"run_id": run_id, "project_id": project, "phase_id": phase,
                       "workstream_id": workstream})
    for n, (run_id, tool, task, model, tokens_in, tokens_out, cost, day) in enumerate(
            ATTEMPTS):
        db.create_step_attempt({
            "run_id": run_id, "sequence": n + 1, "tool_id": tool, "task_id": task,
            "model": model, "input_tokens": tokens_in, "output_tokens": tokens_out,
            "cost_usd": cost, "started_at": f"2026-01-{day:02d}T12:00:00Z"})
    return db


def oracle(by: str, project=None, phase=None, workstream=None, since_day=None) -> dict:
    """The rollup computed here from ATTEMPTS: {key: row without key}."""
    rows: dict = {}
    for attempt in ATTEMPTS:
        run_id, _tool, _task, model, tokens_in, tokens_out, cost, day = attempt
        run_project, run_phase, run_workstream = RUNS[run_id]
        if (model, tokens_in, tokens_out, cost) == (None, None, None, None):
            continue
        if ((project and run_project != project) or (phase and run_phase != phase)
                or (workstream and run_workstream != workstream)
                or (since_day and day < since_day)):
            continue
        key = {"run": run_id, "project": run_project}.get(by) or attempt[KEY[by]]
        row = rows.setdefault(key, {"attempts": 0, "input_tokens": None,
                                    "output_tokens": None, "cost_usd": None, "models": []})
        row["attempts"] += 1
        for name, value in (("input_tokens", tokens_in), ("output_tokens", tokens_out),
                            ("cost_usd", cost)):
            if value is not None:
                row[name] = (row[name] or 0) + value
        if model is not None and model not in row["models"]:
            row["models"] = sorted([*row["models"], model])
    return rows


FILTERS = [{}, {"project": "alpha"}, {"project": "beta"}, {"phase": "PH-1"},
           {"workstream": "WS-1"}, {"since_day": 3}, {"project": "beta", "since_day": 5},
           {"project": "alpha", "phase": "PH-2", "workstream": "WS-2"},
           {"project": "nobody"}]


def rollup(db, by: str, filters: dict) -> list[dict]:
    since = filters.get("since_day")
    return usage_rollup(db, by=by, project_id=filters.get("project"),
                        phase_id=filters.get("phase"),
                        workstream_id=filters.get("workstream"),
                        since=None if since is None else f"2026-01-{since:02d}")


@pytest.mark.parametrize("by", BY_CHOICES)
def test_the_rollup_matches_the_attempts_for_every_grouping_and_filter(usage_ledger, by):
    for filters in FILTERS:
        rows = rollup(usage_ledger, by, filters)
        assert {row["key"]: {k: v for k, v in row.items() if k != "key"}
                for row in rows} == oracle(by, **filters), (by, filters)
        assert len({row["key"] for row in rows}) == len(rows)  # one row per group
        costs = [row["cost_usd"] or 0.0 for row in rows]
        assert costs == sorted(costs, reverse=True), (by, filters)  # dearest first


def test_the_groupings_are_exactly_tool_model_task_run_project():
    assert BY_CHOICES == ("tool", "model", "task", "run", "project") == CLI_BY_CHOICES


def test_an_attempt_without_a_task_is_its_own_group(usage_ledger):
    rows = {row["key"]: row for row in usage_rollup(usage_ledger, by="task")}
    assert rows[None]["attempts"] == 1 and rows[None]["models"] == ["o3"]
    assert rows["T1"]["attempts"] == 5 and rows["T1"]["models"] == ["claude", "gpt", "o3"]


def test_totals_and_the_usage_of_one_run(usage_ledger):
    total = usage_totals(usage_rollup(usage_ledger))
    assert total == {"attempts": 8, "input_tokens": 1658, "output_tokens": 166,
                     "cost_usd": 4.0, "models": ["claude", "gpt", "o3"]}
    assert usage_of_run(usage_ledger, "R2") == {
        "attempts": 2, "input_tokens": 1050, "output_tokens": 105, "cost_usd": 2.0,
        "models": ["claude", "o3"]}
    assert usage_of_run(usage_ledger, "R3") == {
        "attempts": 2, "input_tokens": 7, "output_tokens": None, "cost_usd": 1.0,
        "models": ["o3"]}
    nothing = {"attempts": 0, "input_tokens": None, "output_tokens": None,
               "cost_usd": None, "models": []}
    assert usage_of_run(usage_ledger, "no-such-run") == nothing
    usage_ledger.create_run({"run_id": "R5", "project_id": "p", "phase_id": "ph"})
    usage_ledger.create_step_attempt({"run_id": "R5", "sequence": 1, "tool_id": "ruff"})
    assert usage_of_run(usage_ledger, "R5") == nothing


def test_since_takes_timestamps_and_datetimes(usage_ledger):
    as_text = usage_rollup(usage_ledger, since="2026-01-04T12:00:00Z")
    aware = usage_rollup(usage_ledger, since=datetime(2026, 1, 4, 12, tzinfo=timezone.utc))
    naive = usage_rollup(usage_ledger, since=datetime(2026, 1, 4, 12))  # taken as UTC
    assert as_text == aware == naive
    assert sum(row["attempts"] for row in as_text) == 4
    assert usage_rollup(usage_ledger, since="2026-01-04T12:00:00.000001Z", by="run") == [
        row for row in usage_rollup(usage_ledger, by="run") if row["key"] == "R4"]


def test_token_sums_past_64_bits_are_exact(db):
    db.create_run({"run_id": "big", "project_id": "p", "phase_id": "ph"})
    for sequence in (1, 2, 3):
        db.create_step_attempt({"run_id": "big", "sequence": sequence, "tool_id": "t",
                                "input_tokens": 2**63 - 1, "output_tokens": sequence})
    [row] = usage_rollup(db)
    assert (row["input_tokens"], row["output_tokens"]) == (3 * (2**63 - 1), 6)
    assert usage_of_run(db, "big")["input_tokens"] == 3 * (2**63 - 1)


@pytest.mark.parametrize("options,field", [
    ({"by": "tool_id"}, "by"), ({"by": "tool; DROP TABLE runs"}, "by"),
    ({"since": "last tuesday"}, "since"), ({"since": 12}, "since"),
    ({"project_id": ""}, "project_id"), ({"phase_id": 3}, "phase_id"),
    ({"workstream_id": "a\x00b"}, "workstream_id"),
])
def test_bad_arguments_are_validation_errors_naming_the_field(db, options, field):
    with pytest.raises(ValidationError) as info:
        usage_rollup(db, **options)
    assert info.value.field == field
    assert db.list_runs() == [] and db.engine in ("sqlite", "postgresql")


def test_values_only_raw_sql_can_store_are_summed_without_a_crash(tmp_path):
    path = str(tmp_path / "raw.db")
    with init_db(path) as db:
        db.create_run({"run_id": "R", "project_id": "p", "phase_id": "ph"})
        for sequence in (1, 2):
            db.create_step_attempt({"run_id": "R", "sequence": sequence, "tool_id": "t",
                                    "model": "m", "input_tokens": 5})
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA ignore_check_constraints=ON")
    conn.execute("UPDATE step_attempts SET model = ?, input_tokens = 'many', cost_usd = "
                 "'dear' WHERE sequence = 1", (b"\xff\x1b[2J",))
    conn.commit()
    conn.close()
    with init_db(path) as db:
        [row] = usage_rollup(db)
        assert row["attempts"] == 2 and row["input_tokens"] == 5
        assert len(row["models"]) == 2 and "m" in row["models"]
    shown = uet("usage", "--db", path, cwd=tmp_path)
    assert shown.returncode == 0 and "\x1b" not in shown.stdout and "\\x1b" in shown.stdout
    assert uet("show", "--db", path, cwd=tmp_path).returncode == 0


# -- uet run, uet usage, uet show: the command line on both engines ------------------------

REPORT = ('printf \'{"model": "gpt-4.1", "input_tokens": 1234, "output_tokens": 567, '
          '"cost_usd": 0.0123}\' > "$UET_USAGE_FILE"; echo "$UET_USAGE_FILE"')


def test_uet_run_stores_what_the_command_reports(tmp_path, ledger):
    init_db(ledger).close()
    result = uet("run", "--db", ledger, "--project", "api", "--", "sh", "-c", REPORT,
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    usage_file = result.stdout.strip()
    # a fresh file outside the command's folder, gone afterwards
    assert os.path.isabs(usage_file) and not usage_file.startswith(str(tmp_path))
    assert not os.path.exists(usage_file) and not os.path.exists(os.path.dirname(usage_file))
    bad = uet("run", "--db", ledger, "--project", "web", "--", "sh", "-c",
              'echo \'{"model": "o3", "input_tokens": -5, "cost_usd": "free"}\' '
              '> "$UET_USAGE_FILE"', cwd=tmp_path)
    silent = uet("run", "--db", ledger, "--project", "web", "--", "true", cwd=tmp_path)
    assert bad.returncode == silent.returncode == 0
    with init_db(ledger) as db:
        by_project = {run["project_id"]: run for run in db.list_runs()}
        [step] = db.list_step_attempts(by_project["api"]["run_id"])
        assert (step["model"], step["input_tokens"], step["output_tokens"],
                step["cost_usd"]) == ("gpt-4.1", 1234, 567, 0.0123)
        assert "usage_error" not in step["metadata"]
        steps = [s for run in db.list_runs({"project_id": "web"})
                 for s in db.list_step_attempts(run["run_id"])]
    reported = next(s for s in steps if s["tool_id"] == "sh")
    assert (reported["model"], reported["input_tokens"], reported["cost_usd"]) == (
        "o3", None, None)
    assert reported["metadata"]["usage_error"].startswith(
        "usage file values dropped: input_tokens -5 is out of range")
    assert "cost_usd 'free' is not a number" in reported["metadata"]["usage_error"]
    quiet = next(s for s in steps if s["tool_id"] == "true")
    assert quiet["model"] is None and "usage_error" not in quiet["metadata"]


def test_uet_usage_json_table_and_filters(tmp_path, ledger):
    init_db(ledger).close()
    for project, model, tokens in (("api", "gpt", 1000), ("api", "o3", 20),
                                   ("web", "gpt", 3)):
        script = (f'echo \'{{"model": "{model}", "input_tokens": {tokens}, '
                  f'"output_tokens": 1, "cost_usd": {tokens / 1000}}}\' > "$UET_USAGE_FILE"')
        assert uet("run", "--db", ledger, "--project", project, "--tool", f"{model}-tool",
                   "--", "sh", "-c", script, cwd=tmp_path).returncode == 0
    document = json.loads(uet("usage", "--db", ledger, "--json", cwd=tmp_path).stdout)
    assert document["by"] == "tool"
    assert [(r["key"], r["attempts"], r["input_tokens"], r["models"])
            for r in document["rows"]] == [("gpt-tool", 2, 1003, ["gpt"]),
                                           ("o3-tool", 1, 20, ["o3"])]
    assert document["total"] == {"attempts": 3, "input_tokens": 1023, "output_tokens": 3,
                                 "cost_usd": pytest.approx(1.023), "models": ["gpt", "o3"]}
    api = json.loads(uet("usage", "--db", ledger, "--json", "--project", "api", "--by",
                         "model", cwd=tmp_path).stdout)
    assert [(r["key"], r["input_tokens"]) for r in api["rows"]] == [("gpt", 1000), ("o3", 20)]
    recent = json.loads(uet("usage", "--db", ledger, "--json", "--since", "1h",
                            cwd=tmp_path).stdout)
    assert recent["total"]["attempts"] == 3
    future = json.loads(uet("usage", "--db", ledger, "--json", "--since", "2999-01-01",
                            cwd=tmp_path).stdout)
    assert future["rows"] == [] and future["total"]["attempts"] == 0
    table = uet("usage", "--db", ledger, cwd=tmp_path)
    assert table.returncode == 0
    lines = [line.split() for line in table.stdout.splitlines()]
    assert lines[0] == ["tool", "attempts", "input_tokens", "output_tokens", "cost_usd",
                        "models"]
    assert ["gpt-tool", "2", "1,003", "2", "$1.0030", "gpt"] in lines
    assert ["TOTAL", "3", "1,023", "3", "$1.0230", "gpt,", "o3"] in lines
    empty = uet("usage", "--db", ledger, "--workstream", "none", cwd=tmp_path)
    assert empty.returncode == 0 and "no step attempt reported usage" in empty.stdout
    bad = uet("usage", "--db", ledger, "--since", "last week", cwd=tmp_path)
    assert bad.returncode == 2 and "started_at" in one_line_error(bad)
    assert uet("usage", "--db", ledger, "--by", "cost", cwd=tmp_path).returncode == 2


def test_uet_show_sums_the_runs_usage(tmp_path, ledger):
    init_db(ledger).close()
    assert uet("run", "--db", ledger, "--", "sh", "-c", REPORT, cwd=tmp_path).returncode == 0
    shown = uet("show", "--db", ledger, cwd=tmp_path)
    assert shown.returncode == 0
    [line] = [line for line in shown.stdout.splitlines() if line.split()[:1] == ["usage"]]
    assert line.split(None, 1)[1].strip() == (
        "1 attempt, 1,234 in / 567 out tokens, $0.0123, model: gpt-4.1")
    document = json.loads(uet("show", "--db", ledger, "--json", cwd=tmp_path).stdout)
    assert document["usage"] == {"attempts": 1, "input_tokens": 1234, "output_tokens": 567,
                                 "cost_usd": 0.0123, "models": ["gpt-4.1"]}
    assert uet("run", "--db", ledger, "--", "true", cwd=tmp_path).returncode == 0
    plain = uet("show", "--db", ledger, cwd=tmp_path).stdout
    assert not [line for line in plain.splitlines() if line.split()[:1] == ["usage"]]
    # no usage reported: no usage key (the document keeps its earlier form)
    assert "usage" not in json.loads(uet("show", "--db", ledger, "--json",
                                         cwd=tmp_path).stdout)


def test_run_command_replaces_an_inherited_usage_file(in_memory_db, tmp_path, monkeypatch):
    outer = tmp_path / "outer-usage.json"
    monkeypatch.setenv("UET_USAGE_FILE", str(outer))
    result = run_command(in_memory_db, ["sh", "-c", 'echo \'{"output_tokens": 9}\' > '
                                                    '"$UET_USAGE_FILE"'],
                         project_id="p", phase_id="ph", stdout=io.BytesIO(),
                         stderr=io.BytesIO())
    assert result.state == "succeeded" and not outer.exists()
    assert in_memory_db.get_step_attempt(result.step_attempt_id)["output_tokens"] == 9


# -- the example stand-in tool reports usage ------------------------------------------------

def test_the_stand_in_editor_reports_deterministic_usage(tmp_path):
    prompt = tmp_path / "prompt.txt"
    text = "write calc/x.py\nX = 1\n%%\nappend calc/x.py\nY = 2"
    prompt.write_text(text, encoding="utf-8")
    usage_file = tmp_path / "usage.json"
    env = {**os.environ, "UET_USAGE_FILE": str(usage_file)}
    work = tmp_path / "work"
    work.mkdir()
    for _ in range(2):  # the same every time
        done = subprocess.run([sys.executable, str(STAND_IN), str(prompt)], cwd=work,
                              env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        values, problem = read_usage(str(usage_file))
        assert problem is None
        assert values == {"model": "stand-in-editor", "input_tokens": len(text),
                          "output_tokens": len(b"X = 1\nY = 2\n"),
                          "cost_usd": round(len(text) * 3e-6 + 12 * 15e-6, 8)}
    usage_file.unlink()
    del env["UET_USAGE_FILE"]
    assert subprocess.run([sys.executable, str(STAND_IN), str(prompt)], cwd=work, env=env,
                          capture_output=True, timeout=60).returncode == 0
    assert not usage_file.exists()  # no $UET_USAGE_FILE: nothing reported, no error
    assert (work / "calc" / "x.py").read_text() == "X = 1\nY = 2\n"


def test_the_stand_in_editor_reports_usage_through_uet_run(tmp_path, ledger):
    init_db(ledger).close()
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("fail no thanks", encoding="utf-8")
    result = uet("run", "--db", ledger, "--", sys.executable, str(STAND_IN), str(prompt),
                 cwd=tmp_path)
    assert result.returncode == 1  # a tool that gave up still used its prompt
    with init_db(ledger) as db:
        [step] = db.list_step_attempts(db.list_runs()[0]["run_id"])
    assert (step["model"], step["input_tokens"], step["output_tokens"]) == (
        "stand-in-editor", 14, 0)


# -- uet workers ---------------------------------------------------------------------------

def test_uet_workers_shows_host_pid_heartbeat_age_and_staleness(tmp_path, ledger):
    dead = subprocess.Popen(["true"])
    dead.wait()
    with init_db(ledger) as db:
        workers = WorkerLifecycle(db)
        # another host: only heartbeats tell; two intervals of 1 ms are long missed when
        # `uet workers` looks
        workers.spawn_worker("w-stale", "pool", {"host": "elsewhere.invalid", "pid": 4242,
                                                 "heartbeat_s": 0.001})
        workers.spawn_worker("w-live", "pool", {"host": "elsewhere.invalid", "pid": 4243,
                                                "heartbeat_s": 3600})
        workers.spawn_worker("w-gone", "cli", {"host": socket.gethostname(),
                                               "pid": dead.pid, "started": "0",
                                               "heartbeat_s": 3600})
        workers.spawn_worker("w-plain", "testing", {"language": "python"})
        workers.spawn_worker("w-done", "pool", {"host": "elsewhere.invalid", "pid": 1,
                                                "heartbeat_s": 0.001})
        workers.terminate_worker("w-done")
    document = {w["worker_id"]: w for w in json.loads(
        uet("workers", "--db", ledger, "--json", cwd=tmp_path).stdout)}
    assert {k: document["w-stale"][k] for k in ("host", "pid", "stale", "state")} == {
        "host": "elsewhere.invalid", "pid": 4242, "stale": True, "state": "SPAWNING"}
    assert "heartbeat" in document["w-stale"]["stale_reason"]
    assert (document["w-live"]["stale"], document["w-live"]["stale_reason"]) == (False, None)
    assert document["w-gone"]["stale"] is True
    assert f"process {dead.pid}" in document["w-gone"]["stale_reason"]
    assert (document["w-plain"]["stale"], document["w-plain"]["host"]) == (None, None)
    assert document["w-done"]["stale"] is False
    assert document["w-plain"]["affinity"] == {"language": "python"}  # the record, whole
    assert all(w["heartbeat_age_s"] >= 0 for w in document.values())
    table = uet("workers", "--db", ledger, cwd=tmp_path)
    assert table.returncode == 0
    lines = [line.split() for line in table.stdout.splitlines()]
    assert lines[0] == ["worker_id", "worker_type", "state", "host", "pid", "current_run_id",
                        "heartbeat_age", "stale"]
    rows = {line[0]: line for line in lines[2:]}
    assert rows["w-stale"][1:5] == ["pool", "SPAWNING", "elsewhere.invalid", "4242"]
    assert rows["w-stale"][-1] == "yes" and rows["w-live"][-1] == "no"
    assert rows["w-gone"][-1] == "yes" and rows["w-plain"][-1] == "-"
    assert rows["w-live"][-2].endswith("s")

"""`uet validate FILE`, run as a real process (`python -m uet`): exit 0 and one line for a valid
workstream, exit 2 and every problem (one per line) for an invalid one, JSON with --json, and
never a ledger opened or created."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

VALID = """\
workstream_id: WS-7
tools:
  editor: {command: [python3, edit.py, "{prompt_file}"], timeout_seconds: 60}
tasks:
  - {task_id: A, tool: editor, prompt: first}
  - {task_id: B, tool: editor, depends_on: [C]}
  - {task_id: C, tool: editor, depends_on: [A]}
gates:
  - {name: lint, type: LINT, command: [ruff, check, .]}
  - {name: unit, type: UNIT, command: [pytest, -q], depends_on: [lint]}
"""

INVALID = """\
workstream_id: WS-7
tools:
  editor: {command: [python3, edit.py, "{promt}"]}
  linter: {command: [ruff]}
tasks:
  - {task_id: A, tool: editor}
  - {task_id: B, tool: editor, max_attempts: 0}
  - {task_id: C, tool: edtor, tol: 1}
"""


def uet_validate(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), "UET_DATABASE": str(cwd / "ledger.db")}
    return subprocess.run([sys.executable, "-m", "uet", "validate", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60, env=env)


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def test_a_valid_file_prints_one_line_and_exits_0(tmp_path):
    write(tmp_path, "ws.yaml", VALID)
    result = uet_validate("ws.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ws.yaml: valid workstream WS-7 (3 tasks, 2 gates)\n"
    assert result.stderr == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ws.yaml"]  # no ledger created


def test_an_invalid_file_lists_every_problem_and_exits_2(tmp_path):
    write(tmp_path, "ws.yaml", INVALID)
    result = uet_validate("ws.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout.splitlines() == [
        "ws.yaml: not a valid workstream (4 problems)",
        "tasks[1].max_attempts: must be at least 1 (got 0)",
        "tasks[2].tol: unknown key; did you mean 'tool'? (allowed here: allow_empty, "
        "depends_on, files_scope, max_attempts, name, prompt, task_id, timeout_seconds, tool)",
        "tasks[2].tool: 'edtor' is not a tool defined in tools (editor, linter); did you mean "
        "'editor'?",
        "tools.editor.command[2]: unknown placeholder {promt}; did you mean {prompt}? (known "
        "here: {prompt}, {prompt_file}, {worktree}, {task_id}, {run_id}, {attempt}, "
        "{feedback_file})"]
    assert not (tmp_path / "ledger.db").exists()


def test_json_output_of_a_valid_file(tmp_path):
    write(tmp_path, "ws.yaml", VALID)
    result = uet_validate("ws.yaml", "--json", cwd=tmp_path)
    assert result.returncode == 0
    document = json.loads(result.stdout)
    assert document["valid"] is True and document["problems"] == []
    assert (document["workstream_id"], document["tasks"], document["gates"]) == ("WS-7", 3, 2)
    assert document["task_order"] == ["A", "C", "B"]
    assert document["gate_order"] == ["lint", "unit"]
    assert len(document["sha256"]) == 64


def test_json_output_of_an_invalid_file(tmp_path):
    write(tmp_path, "ws.json", json.dumps({"workstream_id": "", "tools": {}, "tasks": []}))
    result = uet_validate("ws.json", "--json", cwd=tmp_path)
    assert result.returncode == 2
    document = json.loads(result.stdout)
    assert document["valid"] is False and document["file"] == "ws.json"
    assert document["problems"] == [
        {"path": "tasks", "message": "must not be empty"},
        {"path": "tools", "message": "must not be empty"},
        {"path": "workstream_id", "message": "must not be empty"}]


@pytest.mark.parametrize("setup,message", [
    (lambda d: None, "no such file"),
    (lambda d: (d / "ws.yaml").mkdir(), "is a folder, not a workstream file"),
    (lambda d: (d / "ws.yaml").write_bytes(b"workstream_id: \xff\n"),
     "the file is not UTF-8 text (byte 0xff at offset 15)"),
    (lambda d: (d / "ws.yaml").write_text("tools: [\n"), "not valid YAML: "),
])
def test_a_file_that_cannot_be_read_or_parsed_exits_2_with_one_problem(tmp_path, setup,
                                                                         message):
    setup(tmp_path)
    result = uet_validate("ws.yaml", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "ws.yaml: not a valid workstream (1 problem)"
    assert len(lines) == 2 and lines[1].startswith(message), lines


def test_hostile_text_in_problems_is_escaped_on_the_terminal(tmp_path):
    write(tmp_path, "ws.json", json.dumps({"workstream_id": "WS\x1b[2J", "tools": {
        "e": {"command": ["x"]}}, "tasks": [{"task_id": "A", "tool": "e\u202eevil"}]}))
    result = uet_validate("ws.json", cwd=tmp_path)
    assert result.returncode == 2
    assert "\x1b" not in result.stdout and "\u202e" not in result.stdout
    assert "\\x1b" in result.stdout and "\\u202e" in result.stdout


def test_a_missing_argument_is_a_usage_error(tmp_path):
    result = uet_validate(cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("uet: error: ") and "--help" in result.stderr


def test_validate_is_listed_by_uet_help(tmp_path):
    result = subprocess.run([sys.executable, "-m", "uet", "--help"], capture_output=True,
                            text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0 and "validate" in result.stdout

"""The README's first command runs the bundled demo end to end, as written: the line is taken
from README.md ("Two commands"), its set-up part (venv, pip install) is left out and
`.venv/bin/` is replaced by the interpreter running the tests; the rest runs through `sh` in
a copy of the clone's examples/, twice, on a machine without any git configuration.

Also: make_repo.py refuses a folder that is not empty, and the ready tool definitions of
examples/tools/ (aider, codex, claude code) are valid `tools` sections of a workstream.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import fresh_machine_environment as environment
from uet.engine.workstream import parse_workstream

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
EXAMPLES = ROOT / "examples"
# the set-up the test leaves out: it runs with the interpreter (and uet) it already has
SETUP = "python3 -m venv .venv && .venv/bin/pip install -q -e . && "
RUN_TIMEOUT_S = 120


def first_command() -> str:
    """The first ```sh block of the README's "Two commands" section: one line."""
    text = README.read_text(encoding="utf-8")
    section = re.search(r"^## Two commands\n(.*?)(?=^## )", text, re.MULTILINE | re.DOTALL)
    assert section, "README.md has no '## Two commands' section"
    block = re.search(r"^```sh[ \t]*\n(.*?)^```", section.group(1), re.MULTILINE | re.DOTALL)
    assert block, "the 'Two commands' section has no ```sh block"
    lines = block.group(1).strip("\n").splitlines()
    assert len(lines) == 1, f"the first command is not one line: {lines}"
    return lines[0]


def runnable(line: str) -> str:
    """The line without its set-up, `.venv/bin/…` replaced by this interpreter."""
    assert line.startswith(SETUP), f"the first command no longer starts with {SETUP!r}"
    rest = line[len(SETUP):]
    venv = re.compile(r"(?<![\w/.])\.venv/bin/(uet|python3?)(?=\s)")
    leftover = venv.sub("", rest)
    assert ".venv" not in leftover, f"a use of .venv the test cannot replace: {rest}"
    python = shlex.quote(sys.executable)
    return venv.sub(lambda m: f"{python} -m uet" if m.group(1) == "uet" else python, rest)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, env=environment(repo.parent)).stdout.strip()


def uet_json(clone: Path, *args: str):
    done = subprocess.run([sys.executable, "-m", "uet", *args, "--json"], cwd=clone,
                          capture_output=True, text=True, env=environment(clone),
                          timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture
def clone(tmp_path) -> Path:
    """What the line needs of a fresh clone: examples/ (copied), and nothing else."""
    path = tmp_path / "clone"
    shutil.copytree(EXAMPLES, path / "examples",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return path


def run_first_command(clone: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(["sh", "-c", runnable(first_command())], cwd=clone,
                          capture_output=True, text=True, env=environment(clone.parent),
                          timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def check_demo_run(clone: Path, done: subprocess.CompletedProcess) -> str:
    """Everything the README says the demo does; returns the run id."""
    shown = uet_json(clone, "show")
    run = shown["run"]
    run_id = run["run_id"]
    assert run["state"] == "succeeded" and run["exit_code"] == 0, run["error_message"]
    assert run["workstream_id"] == "WS-DEMO" and run["project_id"] == "demo"
    branch = run["metadata"]["branch"]
    assert branch == f"uet/{run_id}"

    # the tasks: T1 at once, T2 after a failed gate, T3 after a quarantine for its scope
    steps = shown["step_attempts"]
    assert [(s["sequence"], s["attempt"], s["state"]) for s in steps] == [
        (1, 1, "succeeded"), (2, 1, "failed"), (2, 2, "succeeded"),
        (3, 1, "failed"), (3, 2, "succeeded")]
    assert steps[1]["error_log"] == "gate unit failed (exit 1)"
    assert "README.md" in steps[3]["error_log"] and "outside" in steps[3]["error_log"]
    events = shown["events"]
    finished = {e["data"]["task_id"]: e["data"] for e in events
                if e["event_type"] == "task.finished"}
    assert {t: d["outcome"] for t, d in finished.items()} == {
        "T1": "committed", "T2": "committed", "T3": "committed"}
    failed_gates = [e["data"] for e in events
                    if e["event_type"] == "gate.finished" and e["data"]["state"] != "PASSED"]
    assert [(g["gate"], g["exit_code"]) for g in failed_gates] == [("unit", 1)]
    assert "multiply(3, 4) returned 81" in failed_gates[0]["output_tail"]
    gates = shown["gates"]
    assert len(gates) == 8
    assert sorted(g["state"] for g in gates) == ["FAILED"] + ["PASSED"] * 7

    # the patches: two quarantined (gate, scope), three committed
    patches = shown["patches"]
    assert [(p["sequence"], p["attempt"], [e["state"] for e in p["entries"]])
            for p in patches] == [
        (1, 1, ["committed"]), (2, 1, ["quarantined"]), (2, 2, ["committed"]),
        (3, 1, ["quarantined"]), (3, 2, ["committed"])]
    assert "README.md" in patches[3]["files"]
    reasons = {e["ledger_id"]: e["quarantine_reason"]
               for e in uet_json(clone, "patches", "--state", "quarantined")}
    assert reasons[patches[1]["entries"][0]["ledger_id"]] == "gate unit failed (exit 1)"
    scope_reason = reasons[patches[3]["entries"][0]["ledger_id"]]
    assert scope_reason.startswith("README.md ") and "files_scope" in scope_reason

    # the branch: one commit per task, each the committed entry's; the checkout untouched
    repo = clone / ".demo"
    base = run["metadata"]["base"]
    log = git(repo, "log", "--format=%H%x1f%s%x1f%(trailers:key=Uet-Entry,valueonly)%x1e",
              f"{base}..{branch}")
    commits = [c.strip().split("\x1f") for c in log.split("\x1e") if c.strip()]
    assert [subject for _, subject, _ in commits] == [
        "calc: divide", "calc: multiply", "calc: subtract"]
    assert [sha for sha, _, _ in commits] == [finished[t]["commit"] for t in ("T3", "T2", "T1")]
    assert [entry.strip() for _, _, entry in commits] == [
        finished[t]["ledger_id"] for t in ("T3", "T2", "T1")]
    assert "task T2, attempt 2" in git(repo, "log", "-1", "--format=%B", finished["T2"]["commit"])
    ops = git(repo, "show", f"{branch}:calc/ops.py")
    assert "return a * b" in ops and "a ** b" not in ops and "def divide" in ops
    assert git(repo, "show", f"{branch}:README.md") == git(repo, "show", "main:README.md")
    assert git(repo, "rev-parse", "main") == base
    assert git(repo, "status", "--porcelain") == ""
    assert git(repo, "branch", "--show-current") == "main"

    # what the user sees: uet run's progress, then uet show
    assert f"run {run_id} succeeded" in done.stderr
    assert "task T2: gate unit failed (exit 1)" in done.stderr
    assert "task T3: README.md is outside" in done.stderr
    out = done.stdout
    assert f"run {run_id}" in out and "succeeded" in out
    for word in ("quarantined", "committed", "FAILED", "patch.quarantined", "README.md",
                 "task.finished", finished["T2"]["commit"]):
        assert word in out, f"uet show does not mention {word!r}"
    return run_id


def test_the_readme_first_command_runs_the_demo_and_can_be_run_again(clone):
    first = check_demo_run(clone, run_first_command(clone))
    second = check_demo_run(clone, run_first_command(clone))
    assert second != first
    runs = uet_json(clone, "runs")
    assert [(r["run_id"], r["state"]) for r in runs] == [
        (second, "succeeded"), (first, "succeeded")]
    # the demo repository was made afresh: only the second run's branch is in it
    assert git(clone / ".demo", "branch", "--list", "uet/*",
               "--format=%(refname:short)") == f"uet/{second}"


def test_the_demo_folder_is_git_ignored():
    ignored = (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert ".demo/" in ignored or "/.demo/" in ignored


def test_make_repo_refuses_a_folder_that_is_not_empty(tmp_path):
    script = EXAMPLES / "demo" / "make_repo.py"
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("mine\n")
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "busy")],
                          capture_output=True, text=True, env=environment(tmp_path))
    assert done.returncode != 0 and "not an empty folder" in done.stderr
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["file"]
    (tmp_path / "empty").mkdir()
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "empty")],
                          capture_output=True, text=True, env=environment(tmp_path))
    assert done.returncode == 0, done.stderr
    repo = tmp_path / "empty"
    assert git(repo, "log", "--format=%an <%ae> %s") == "uet demo <demo@example.invalid> calc: add"
    assert (repo / "tools" / "stand_in_editor.py").read_bytes() == (
        EXAMPLES / "tools" / "stand_in_editor.py").read_bytes()
    # the gates pass on the demo repository as it is made
    for check in ("checks/lint.py", "checks/run_tests.py"):
        subprocess.run([sys.executable, "-B", check], cwd=repo, check=True,
                       capture_output=True, env=environment(tmp_path))


@pytest.mark.parametrize("name", ["aider", "codex", "claude"])
def test_ready_tool_definitions_are_valid_tools_sections(name):
    path = EXAMPLES / "tools" / f"{name}.yaml"
    text = path.read_text(encoding="utf-8")
    assert "NOT EXERCISED BY THE TEST SUITE" in text
    assert "Check the flags against your" in text
    assert list(yaml.safe_load(text)) == ["tools"]  # a `tools:` section and nothing else
    workstream = ("workstream_id: WS-TOOLS\n" + text
                  + f"tasks:\n  - {{task_id: T1, tool: {name}, prompt: 'Add a test'}}\n")
    ws = parse_workstream(workstream, format="yaml", source=str(path))
    tool = ws.tools[name]
    assert tool.timeout_seconds
    assert any("{prompt_file}" in arg for arg in tool.command)
    assert any("{feedback_file}" in arg for arg in tool.command)

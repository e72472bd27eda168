"""`uet plan apply|validate|show` and `uet run --plan`, driven as a user drives them (the real
console script, in subprocesses), on the example plan in examples/plan/: the seed's own patch
006 and its "After applying this patch" checklist, every refusal leaving the files as they
were, idempotent re-apply, the ledger's record of each applied patch, and a workstream of the
plan run end to end by the orchestrator."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from uet.plan import load_plan, plan_problems
from uet.state import Database

UET = shutil.which("uet", path=os.path.dirname(sys.executable))
ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "plan"
PLAN = EXAMPLE / "plan.json"
P006 = EXAMPLE / "patches" / "006-core-state-implementation.json"
P007 = EXAMPLE / "patches" / "007-example-followup.json"


def uet(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "UET_DATABASE"}
    return subprocess.run([UET, *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A folder with copies of the example plan and patches (the originals stay pristine)."""
    shutil.copy(PLAN, tmp_path / "plan.json")
    (tmp_path / "patches").mkdir()
    for p in (P006, P007):
        shutil.copy(p, tmp_path / "patches" / p.name)
    return tmp_path


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under the folder (the ledger aside) with its bytes and mtime."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file() and ".ledger" not in p.parts}


def events(folder: Path) -> list[dict]:
    db_path = folder / ".ledger" / "framework.db"
    if not db_path.exists():
        return []
    with Database(str(db_path)) as db:
        return [e for e in db.events_since(0) if e["event_type"] == "plan.patch_applied"]


# -- the seed's patch ------------------------------------------------------------------------

def test_example_plan_is_valid_and_patch_006_does_what_the_seed_says(work):
    assert plan_problems(load_plan(work / "plan.json")) == []
    before = load_plan(work / "plan.json")
    assert len(before["phases"]["PH-000"]["workstreams"]) == 9
    assert before["phases"]["PH-000"]["estimated_duration_hours"] == 9.5
    out = uet("plan", "apply", "plan.json", "patches/006-core-state-implementation.json",
              "-o", "plan.json", cwd=work)
    assert out.returncode == 0, out.stderr
    assert "applied 006-core-state-implementation" in out.stderr
    plan = load_plan(work / "plan.json")
    # the seed's "After applying this patch" list
    core = plan["implementation"]["core_state"]
    assert set(core["schema"]["tables"]) == {"runs", "step_attempts", "run_events"}
    assert core["crud_operations"] and core["integration_points"]
    assert len(plan["phases"]["PH-000"]["workstreams"]) == 10
    assert "WS-000-010" in plan["phases"]["PH-000"]["workstreams"]
    assert plan["phases"]["PH-000"]["estimated_duration_hours"] == 11.5
    assert "core_state_implementation" in plan["validation"]
    record = plan["meta"]["patch_metadata"]["006-core-state-implementation"]
    assert record["applied"] is True and len(record["content_sha256"]) == 64
    assert plan_problems(plan) == []
    # the ledger says when the plan changed
    [event] = events(work)
    assert event["run_id"] is None
    assert event["data"]["patch_id"] == "006-core-state-implementation"
    assert event["data"]["sha256"] == record["content_sha256"]
    assert event["data"]["plan_file"] == str((work / "plan.json").resolve())
    assert event["data"]["operations"] == record["operations_applied"]
    shown = uet("events", "--json", cwd=work)
    assert "plan.patch_applied" in shown.stdout


def test_reapply_is_a_no_op_that_says_so(work):
    first = uet("plan", "apply", "plan.json", "patches/006-core-state-implementation.json",
                "patches/007-example-followup.json", "-o", "plan.json", cwd=work)
    assert first.returncode == 0, first.stderr
    files = snapshot(work)
    again = uet("plan", "apply", "plan.json", "patches/006-core-state-implementation.json",
                "patches/007-example-followup.json", "-o", "plan.json", cwd=work)
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("already applied") == 2
    assert snapshot(work) == files   # not even rewritten
    assert len(events(work)) == 2    # nothing more recorded


def test_order_matters_and_a_refusal_writes_nothing(work):
    files = snapshot(work)
    # 007 tests PH-000's 11.5 hours, which only 006 sets: alone it is refused, and 006 before
    # it in the same call is not written either (all or nothing)
    out = uet("plan", "apply", "plan.json", "patches/007-example-followup.json",
              "-o", "plan.json", cwd=work)
    assert out.returncode == 2
    assert "the test failed" in out.stderr and "nothing was written" in out.stderr
    assert snapshot(work) == files and events(work) == []
    assert not list(work.glob(".plan.json.*"))   # no temporary file left


REFUSED_PATCHES = {
    "overwrite": ([{"op": "add", "path": "/phases/PH-000/workstreams/WS-000-001",
                    "value": {"workstream_id": "WS-000-001", "phase_id": "PH-000"}}],
                  "already exists"),
    "missing": ([{"op": "replace", "path": "/phases/PH-404/name", "value": "x"}],
                "does not exist"),
    "record": ([{"op": "replace", "path": "/meta/patch_metadata", "value": {}}],
               "record of applied patches"),
    "bad_ulid": ([{"op": "add", "path": "/implementation/x",
                   "value": {"thing_ulid": "01JDKCXWQP8PATCH006CORESTAT"}}], "is not a ULID"),
    "cycle": ([{"op": "replace", "path": "/phases/PH-000/workstreams/WS-000-001/dependencies",
                "value": ["WS-000-002"]},
               {"op": "replace", "path": "/phases/PH-000/workstreams/WS-000-002/dependencies",
                "value": ["WS-000-001"]}], "circle"),
    "not_json": ("[{\"op\": \"add\", \"path\": \"/x\", \"value\": NaN}]", "NaN"),
    "duplicate_key": ("[{\"op\": \"add\", \"op\": \"remove\", \"path\": \"/x\"}]",
                      "appears twice"),
    "malformed": ([{"op": "add", "path": "x", "value": 1}], "JSON Pointer"),
}


@pytest.mark.parametrize("case", sorted(REFUSED_PATCHES))
def test_every_refusal_leaves_the_files_untouched(work, case):
    ops, why = REFUSED_PATCHES[case]
    bad = work / "patches" / "050-bad.json"
    bad.write_text(ops if isinstance(ops, str) else json.dumps(ops))
    files = snapshot(work)
    out = uet("plan", "apply", "plan.json", "patches/006-core-state-implementation.json",
              "patches/050-bad.json", "-o", "plan.json", cwd=work)
    assert out.returncode == 2, out.stderr
    assert why in out.stderr, out.stderr
    assert snapshot(work) == files
    assert events(work) == [] and not (work / ".ledger").exists()
    as_json = uet("plan", "apply", "plan.json", "patches/050-bad.json", "-o", "out.json",
                  "--json", cwd=work)
    assert as_json.returncode == 2
    doc = json.loads(as_json.stdout)
    assert doc["applied"] is False and any(why in p["message"] for p in doc["problems"])
    assert not (work / "out.json").exists()


def test_a_changed_patch_with_the_same_id_is_refused(work):
    assert uet("plan", "apply", "plan.json", "patches/006-core-state-implementation.json",
               "-o", "plan.json", cwd=work).returncode == 0
    ops = json.loads((work / "patches" / "006-core-state-implementation.json").read_text())
    ops[-1]["value"] = 12.5
    (work / "patches" / "006-changed.json").write_text(json.dumps(ops))
    files = snapshot(work)
    out = uet("plan", "apply", "plan.json", "patches/006-changed.json", "-o", "plan.json",
              cwd=work)
    assert out.returncode == 2 and "another patch with the id" in out.stderr
    assert snapshot(work) == files


def test_dry_run_prints_a_diff_and_changes_nothing(work):
    files = snapshot(work)
    out = uet("plan", "apply", "plan.json", "patches/006-core-state-implementation.json",
              "--dry-run", cwd=work)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("--- plan.json\n+++ plan.json (patched)\n")
    assert '-      "estimated_duration_hours": 9.5,' in out.stdout
    assert '+      "estimated_duration_hours": 11.5,' in out.stdout
    assert '+        "WS-000-010": {' in out.stdout
    assert "would apply 006-core-state-implementation" in out.stderr
    assert snapshot(work) == files and not (work / ".ledger").exists()
    as_json = json.loads(uet("plan", "apply", "plan.json",
                             "patches/006-core-state-implementation.json", "--dry-run",
                             "--json", cwd=work).stdout)
    assert as_json["dry_run"] is True and as_json["patches"][0]["status"] == "applied"
    def stamped(text: str) -> str:
        return re.sub(r'"applied_at": "[^"]*"', '"applied_at": "T"', text)
    assert stamped(as_json["diff"]) == stamped(out.stdout)


def test_output_elsewhere_or_on_stdout(work):
    files = snapshot(work)
    out = uet("plan", "apply", "plan.json", "patches/006-core-state-implementation.json",
              "-o", "master.json", cwd=work)
    assert out.returncode == 0, out.stderr
    assert {k: v for k, v in snapshot(work).items() if k != "master.json"} == files
    master = load_plan(work / "master.json")
    printed = uet("plan", "apply", "plan.json", "patches/006-core-state-implementation.json",
                  cwd=work)
    assert printed.returncode == 0
    from_stdout = json.loads(printed.stdout)
    for doc in (master, from_stdout):
        doc["meta"]["patch_metadata"]["006-core-state-implementation"].pop("applied_at")
    assert master == from_stdout
    assert uet("plan", "apply", "plan.json", "patches/006-core-state-implementation.json",
               "--json", cwd=work).returncode == 2   # --json needs -o: stdout holds the plan


def test_a_read_only_plan_folder_is_an_error_not_a_half_write(work):
    if os.geteuid() == 0:
        # root writes anywhere: make the target a folder instead, which no one can replace
        (work / "blocked.json").mkdir()
        target = "blocked.json"
    else:
        (work / "ro").mkdir()
        os.chmod(work / "ro", 0o500)
        target = "ro/plan.json"
    out = uet("plan", "apply", "plan.json", "patches/006-core-state-implementation.json",
              "-o", target, cwd=work)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr


# -- validate and show ----------------------------------------------------------------------

def test_validate_lists_every_problem_with_its_path(work):
    ok = uet("plan", "validate", "plan.json", cwd=work)
    assert ok.returncode == 0 and "valid plan UET-V2-EXAMPLE" in ok.stdout
    plan = json.loads((work / "plan.json").read_text())
    ws = plan["phases"]["PH-000"]["workstreams"]["WS-000-002"]
    ws["workstream_ulid"] = "01JDKCXWQP8PATCH006CORESTAT"
    ws["dependencies"] = ["WS-000-404"]
    plan["phases"]["PH-000"]["estimated_duration_hours"] = 1
    (work / "broken.json").write_text(json.dumps(plan))
    bad = uet("plan", "validate", "broken.json", cwd=work)
    assert bad.returncode == 2
    assert "not a valid plan (3 problems)" in bad.stdout
    for where in ("/phases/PH-000/workstreams/WS-000-002/workstream_ulid:",
                  "/phases/PH-000/workstreams/WS-000-002/dependencies/0:",
                  "/phases/PH-000/estimated_duration_hours:"):
        assert where in bad.stdout
    doc = json.loads(uet("plan", "validate", "broken.json", "--json", cwd=work).stdout)
    assert doc["valid"] is False and len(doc["problems"]) == 3
    assert uet("plan", "validate", "nope.json", cwd=work).returncode == 2


def test_show_draws_the_tree_with_the_ledgers_runs(work):
    out = uet("plan", "show", "plan.json", "--phase", "PH-000", cwd=work)
    assert out.returncode == 0, out.stderr
    assert "PH-000" in out.stdout and "PH-001" not in out.stdout
    assert "WS-000-001" in out.stdout and "TSK-000-001-002" in out.stdout
    assert "9.5 h" in out.stdout
    doc = json.loads(uet("plan", "show", "plan.json", "--json", cwd=work).stdout)
    assert [p["phase_id"] for p in doc["phases"]] == ["PH-000", "PH-001"]
    assert len(doc["phases"][0]["workstreams"]) == 9 and doc["ledger"] is None
    with Database(str(work / "ledger.db")) as db:
        run_id = db.create_run({"project_id": "PRJ-EXAMPLE", "phase_id": "PH-000",
                                "workstream_id": "WS-000-003"})
    doc = json.loads(uet("plan", "show", "plan.json", "--json", "--db", "ledger.db",
                         cwd=work).stdout)
    ws = {w["workstream_id"]: w for w in doc["phases"][0]["workstreams"]}
    assert ws["WS-000-003"]["last_run"]["run_id"] == run_id
    assert ws["WS-000-003"]["last_run"]["state"] == "pending"
    assert ws["WS-000-001"]["last_run"] is None
    assert uet("plan", "show", "plan.json", "--phase", "PH-9", cwd=work).returncode == 2
    assert uet("plan", "show", "plan.json", "--db", "missing.db", cwd=work).returncode == 1


# -- uet run --plan -------------------------------------------------------------------------

def make_demo(folder: Path) -> Path:
    repo = folder / "demo"
    subprocess.run([sys.executable, str(ROOT / "examples" / "demo" / "make_repo.py"),
                    str(repo)], check=True, capture_output=True, timeout=60)
    return repo


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, timeout=60).stdout


def test_run_a_workstream_of_the_plan_end_to_end(work):
    repo = make_demo(work)
    head = git(repo, "rev-parse", "HEAD").strip()
    out = uet("run", "--plan", "plan.json", "--repo", "demo", "--json", "WS-000-001",
              cwd=work, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    run_id = result["run_id"]
    assert result["state"] == "succeeded"
    with Database(str(work / ".ledger" / "framework.db")) as db:
        run = db.get_run(run_id)
        assert (run["project_id"], run["phase_id"], run["workstream_id"]) == \
            ("PRJ-EXAMPLE", "PH-000", "WS-000-001")
        assert run["metadata"]["workstream"]["source"].endswith(
            "plan.json#/phases/PH-000/workstreams/WS-000-001")
    # two commits on the run's branch, the checkout untouched
    branch = f"uet/{run_id}"
    log = git(repo, "log", "--format=%s", f"{head}..{branch}").splitlines()
    assert len(log) == 2
    assert git(repo, "rev-parse", "HEAD").strip() == head
    ops = git(repo, "show", f"{branch}:calc/ops.py")
    assert "def subtract" in ops and "def multiply" in ops
    # each task's acceptance tests judged its own patch only
    shown = json.loads(uet("show", run_id, "--json", cwd=work).stdout)
    names = sorted(g["name"] for g in shown["gates"])
    assert names == ["TSK-000-001-001/lint", "TSK-000-001-001/unit",
                     "TSK-000-001-002/lint", "TSK-000-001-002/unit"]
    assert all(g["state"] == "PASSED" for g in shown["gates"])


def test_run_plan_refusals_name_the_field(work):
    repo = make_demo(work)
    plan = json.loads((work / "plan.json").read_text())
    ws = plan["phases"]["PH-000"]["workstreams"]["WS-000-001"]
    task = ws["tasks"]["TSK-000-001-001"]
    task["executor"] = "no-such-tool"
    task["file_scope"]["delete"] = ["x"]
    (work / "bad.json").write_text(json.dumps(plan))
    out = uet("run", "--plan", "bad.json", "--repo", "demo", "WS-000-001", cwd=work)
    assert out.returncode == 2
    base = "/phases/PH-000/workstreams/WS-000-001/tasks/TSK-000-001-001"
    assert f"{base}/executor" in out.stderr and "no-such-tool" in out.stderr
    assert f"{base}/file_scope/delete" in out.stderr
    assert not (work / ".ledger").exists()   # nothing was recorded
    # a workstream the plan does not have; a workstream whose dependency never ran
    out = uet("run", "--plan", "plan.json", "--repo", "demo", "WS-404", cwd=work)
    assert out.returncode == 2 and "no workstream WS-404" in out.stderr
    dependent = next(k for k, w in plan["phases"]["PH-000"]["workstreams"].items()
                     if w.get("dependencies"))
    out = uet("run", "--plan", "plan.json", "--repo", "demo", dependent, cwd=work)
    assert out.returncode == 1 and "no succeeded run" in out.stderr
    assert "--ignore-dependencies" in out.stderr
    # an invalid plan is not run
    plan = json.loads((work / "plan.json").read_text())
    plan["phases"]["PH-000"]["estimated_duration_hours"] = 1
    (work / "invalid.json").write_text(json.dumps(plan))
    out = uet("run", "--plan", "invalid.json", "--repo", "demo", "WS-000-001", cwd=work)
    assert out.returncode == 2 and "uet plan validate" in out.stderr
    # options that need --plan, and --plan with more than one id
    assert uet("run", "--skip-test", "x", "--", "true", cwd=work).returncode == 2
    assert uet("run", "--plan", "plan.json", "WS-000-001", "WS-000-002",
               cwd=work).returncode == 2
    late = uet("run", "--plan", "plan.json", "WS-000-001", "--repo", "demo", cwd=work)
    assert late.returncode == 2 and "options go before it" in late.stderr
    assert git(repo, "branch", "--list", "uet/*") == ""

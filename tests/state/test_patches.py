"""The patch ledger: artifacts parsed from unified diffs, entries under the patch machine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from uet.errors import ConcurrentUpdateError, InvalidTransitionError, NotFoundError, ValidationError
from uet.state import PATCH, PatchArtifact, PatchLedger, PatchLedgerEntry, PatchState
from helpers import REFUSED, race_outcomes, raw_execute, refused_by, start_when_ready
from uet.state.patches import parse_unified_diff

HELPERS = str(Path(__file__).parent.parent / "helpers.py")
DIFF = """diff --git a/src/app.py b/src/app.py
index 83db48f..bf269f4 100644
--- a/src/app.py
+++ b/src/app.py
@@ -1,3 +1,3 @@
 import os
-print("hi")
+print("hello")
diff --git a/docs/old.md b/docs/old.md
deleted file mode 100644
--- a/docs/old.md
+++ /dev/null
@@ -1 +0,0 @@
-gone
"""
LEGAL = sorted((a, b) for a in PATCH.states for b in PATCH.states if PATCH.can(a, b))
ILLEGAL = sorted((a, b) for a in PATCH.states for b in PATCH.states if not PATCH.can(a, b))
SPEC = {("created", "validated"), ("created", "quarantined"), ("validated", "queued"),
        ("validated", "quarantined"), ("queued", "applied"), ("queued", "apply_failed"),
        ("applied", "verified"), ("applied", "quarantined"), ("apply_failed", "quarantined"),
        ("apply_failed", "dropped"), ("verified", "committed"), ("committed", "rolled_back"),
        ("quarantined", "dropped")}
PATH = {"created": [], "validated": ["validated"], "queued": ["validated", "queued"],
        "applied": ["validated", "queued", "applied"],
        "apply_failed": ["validated", "queued", "apply_failed"],
        "verified": ["validated", "queued", "applied", "verified"],
        "committed": ["validated", "queued", "applied", "verified", "committed"],
        "rolled_back": ["validated", "queued", "applied", "verified", "committed",
                        "rolled_back"],
        "quarantined": ["quarantined"], "dropped": ["quarantined", "dropped"]}


@pytest.fixture
def patches(db):
    return PatchLedger(db)


@pytest.fixture
def step(db):
    run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
    return db.create_step_attempt({"run_id": run_id, "sequence": 1, "tool_id": "aider"})


def _entry_in(patches, state, diff=DIFF):
    entry = patches.create_entry(patches.record_patch(diff), "PH-1", "WS-1")
    for target in PATH[state]:
        patches.transition_state(entry.ledger_id, target, reason=f"to {target}")
    return entry.ledger_id


def test_machine_matches_the_spec():
    assert set(LEGAL) == SPEC
    assert PATCH.terminal == {"rolled_back", "dropped"}


def test_record_patch_parses_files_hash_and_size(patches, db, step):
    artifact = patches.record_patch(DIFF, step_attempt_id=step)
    assert isinstance(artifact, PatchArtifact)
    assert artifact.files == ["src/app.py", "docs/old.md"]
    import hashlib
    assert artifact.sha256 == hashlib.sha256(DIFF.encode()).hexdigest()
    assert artifact.size_bytes == len(DIFF.encode())
    assert artifact.run_id == db.get_step_attempt(step)["run_id"]  # inferred from the step
    assert patches.get_patch(artifact.patch_id) == artifact
    event = db.list_events(artifact.run_id)[-1]
    assert event["event_type"] == "patch.recorded" and event["data"]["files"] == artifact.files


def test_recording_the_same_diff_for_the_same_step_is_idempotent(patches, db, step):
    first = patches.record_patch(DIFF, step_attempt_id=step)
    n = len(db.events_since(0))
    assert patches.record_patch(DIFF, step_attempt_id=step) == first
    assert len(db.events_since(0)) == n
    other_step = db.create_step_attempt({"run_id": first.run_id, "sequence": 2, "tool_id": "x"})
    assert patches.record_patch(DIFF, step_attempt_id=other_step).patch_id != first.patch_id


NOT_A_DIFF = r"^diff is not a unified diff: expected '--- a/PATH'"
NOT_TEXT = "^diff must be a non-empty string$"


@pytest.mark.parametrize("diff, refused", [
    ("", NOT_TEXT), ("just words", NOT_A_DIFF), ("--- a/x\n+++ b/x\nno hunk\n", NOT_A_DIFF),
    ("@@ -1 +1 @@\n-a\n+b\n", NOT_A_DIFF), (42, NOT_TEXT), (None, NOT_TEXT)])
def test_what_is_not_a_unified_diff_is_refused(patches, db, diff, refused):
    with pytest.raises(ValidationError, match=refused) as info:
        patches.record_patch(diff)
    assert info.value.field == "diff"
    assert db.events_since(0) == []


def test_git_renames_and_plain_diffs_parse():
    rename = ("diff --git a/old name.py b/new.py\nsimilarity index 100%\n"
              "rename from old name.py\nrename to new.py\n")
    assert parse_unified_diff(rename) == ["new.py"]
    plain = "--- file.txt\t2026-01-01 00:00:00\n+++ file.txt\t2026-01-02\n@@ -1 +1 @@\n-a\n+b\n"
    assert parse_unified_diff(plain) == ["file.txt"]
    new_file = "--- /dev/null\n+++ b/new.txt\n@@ -0,0 +1 @@\n+x\n"
    assert parse_unified_diff(new_file) == ["new.txt"]


def test_patch_references_are_checked(patches, db, step):
    with pytest.raises(ValidationError, match="^step attempt 'ghost' does not exist$"):
        patches.record_patch(DIFF, step_attempt_id="ghost")
    with pytest.raises(ValidationError, match="^run 'ghost' does not exist$"):
        patches.record_patch(DIFF, run_id="ghost")
    other_run = db.create_run({"project_id": "p", "phase_id": "ph"})
    owner = db.get_step_attempt(step)["run_id"]
    with pytest.raises(ValidationError, match=f"^step attempt '{step}' belongs to run "
                                              f"'{owner}', not '{other_run}'$"):
        patches.record_patch(DIFF, run_id=other_run, step_attempt_id=step)
    with pytest.raises(ValidationError,
                       match="^patch 'no-such-patch' does not exist; record it first$"):
        patches.create_entry("no-such-patch", "PH-1")
    assert db.events_since(0)[-1]["event_type"] == "run.created"  # nothing was recorded


def test_create_entry_starts_created_with_history(patches):
    artifact = patches.record_patch(DIFF)
    entry = patches.create_entry(artifact, "PH-1", "WS-1")
    assert isinstance(entry, PatchLedgerEntry)
    assert (entry.state, entry.version, entry.phase_id) == (PatchState.CREATED, 1, "PH-1")
    assert [h["state"] for h in entry.state_history] == ["created"]
    assert entry.updated_at == entry.created_at
    assert patches.get_entry(entry.ledger_id) == entry
    assert patches.create_entry(artifact.patch_id, "PH-2").patch_id == artifact.patch_id


@pytest.mark.parametrize("current, target", LEGAL)
def test_legal_transitions_append_history(patches, db, current, target):
    ledger_id = _entry_in(patches, current)
    before = patches.get_entry(ledger_id)
    assert patches.transition_state(ledger_id, PatchState(target), reason="why") is True
    after = patches.get_entry(ledger_id)
    assert after.state == target and after.version == before.version + 1
    assert after.state_history[:-1] == before.state_history
    assert after.state_history[-1]["state"] == target
    assert after.state_history[-1]["reason"] == "why"
    assert after.updated_at >= before.updated_at >= after.created_at
    event = db.events_since(0)[-1]
    assert event["event_type"] == "patch_entry.state_changed"
    assert (event["data"]["from"], event["data"]["to"]) == (current, target)
    if target == "quarantined":
        assert after.quarantine_reason == "why"


@pytest.mark.parametrize("current, target", ILLEGAL)
def test_illegal_transitions_change_nothing(patches, db, current, target):
    ledger_id = _entry_in(patches, current)
    before, events = patches.get_entry(ledger_id), db.events_since(0)
    with pytest.raises(InvalidTransitionError, match=f"^Invalid transition: patch_entry '{ledger_id}' cannot go "
                                                     f"from {current} to {target}: "):
        patches.transition_state(ledger_id, target, reason="x")
    assert patches.get_entry(ledger_id) == before and db.events_since(0) == events


def test_quarantine_needs_a_reason(patches):
    ledger_id = _entry_in(patches, "validated")
    with pytest.raises(ValidationError, match="^quarantining a patch needs a reason$"):
        patches.transition_state(ledger_id, "quarantined")
    with pytest.raises(ValidationError, match="^reason must be a non-empty string, got ''$"):
        patches.quarantine(ledger_id, "")
    with pytest.raises(ValidationError, match="^quarantining a patch needs a reason$"):
        patches.quarantine(ledger_id, "  ")
    assert patches.get_entry(ledger_id).state == "validated"
    entry = patches.quarantine(ledger_id, "touches files outside its scope")
    assert entry.state == "quarantined"
    assert entry.quarantine_reason == "touches files outside its scope"
    dropped = patches.transition_state(ledger_id, "dropped", reason="abandoned")
    assert dropped and patches.get_entry(ledger_id).quarantine_reason is not None


def test_set_validation_records_flags(patches, db):
    ledger_id = _entry_in(patches, "created")
    entry = patches.set_validation(ledger_id, format=True, scope=False)
    assert (entry.validated_format, entry.validated_scope, entry.validated_tests) == (
        True, False, None)
    entry = patches.set_validation(ledger_id, tests=True)
    assert (entry.validated_format, entry.validated_tests, entry.version) == (True, True, 3)
    with pytest.raises(ValidationError, match="^format must be True, False or None, got 'yes'$"):
        patches.set_validation(ledger_id, format="yes")
    with pytest.raises(NotFoundError, match="^patch_entry 'ghost' not found$"):
        patches.set_validation("ghost", format=True)
    assert patches.get_entry(ledger_id).version == 3


def test_expected_version_is_compare_and_set(patches):
    ledger_id = _entry_in(patches, "created")
    version = patches.get_entry(ledger_id).version
    patches.transition_state(ledger_id, "validated", expected_version=version)
    with pytest.raises(ConcurrentUpdateError, match=rf"^patch_entry '{ledger_id}' was expected "
                                                    rf"to be version {version} but is version "
                                                    rf"{version + 1} \(validated\): "):
        patches.transition_state(ledger_id, "queued", expected_version=version)
    assert patches.get_entry(ledger_id).state == "validated"


def test_the_same_transition_twice_is_a_concurrent_update(patches):
    ledger_id = _entry_in(patches, "created")
    patches.transition_state(ledger_id, "validated")
    duplicate = (f"^Invalid transition: patch_entry '{ledger_id}' cannot go from validated to validated: it is "
                 "already validated$")
    with pytest.raises(ConcurrentUpdateError, match=duplicate):
        patches.transition_state(ledger_id, "validated")
    with pytest.raises(InvalidTransitionError, match=duplicate):  # also a refused transition
        patches.transition_state(ledger_id, "validated")


def test_get_patches_by_state_and_phase(patches):
    a = _entry_in(patches, "queued")
    entry = patches.create_entry(patches.record_patch(DIFF), "PH-2")
    patches.transition_state(entry.ledger_id, "validated")
    patches.transition_state(entry.ledger_id, "queued")
    assert [e.ledger_id for e in patches.get_patches_by_state("queued")] == [a, entry.ledger_id]
    assert [e.ledger_id for e in patches.get_patches_by_state(PatchState.QUEUED, "PH-2")] == [
        entry.ledger_id]
    with pytest.raises(ValidationError,
                       match="^unknown patch_entry state 'merged'; known states: created, "):
        patches.get_patches_by_state("merged")


def test_history_of_run_shows_lineage(patches, db):
    run_id = db.create_run({"project_id": "p", "phase_id": "ph"})
    s1 = db.create_step_attempt({"run_id": run_id, "sequence": 1, "tool_id": "aider"})
    s2 = db.create_step_attempt({"run_id": run_id, "sequence": 1, "tool_id": "aider"})
    p1 = patches.record_patch(DIFF, step_attempt_id=s1)
    p2 = patches.record_patch(DIFF.replace("hello", "bye"), step_attempt_id=s2)
    e1 = patches.create_entry(p1, "PH-1")
    patches.quarantine(e1.ledger_id, "broke the build")
    patches.create_entry(p2, "PH-1")
    history = patches.history_of_run(run_id)
    assert [(h["patch_id"], h["step_attempt_id"], h["attempt"]) for h in history] == [
        (p1.patch_id, s1, 1), (p2.patch_id, s2, 2)]
    assert [e["state"] for e in history[0]["entries"]] == ["quarantined"]
    assert [e["state"] for e in history[1]["entries"]] == ["created"]
    assert patches.history_of_run("other") == []


APPEND_ONLY = refused_by("patch state_history is append-only",
                          "patch state_history is append-only")
QUARANTINE_REASON = refused_by(
    "state != 'quarantined' OR coalesce(length(quarantine_reason), 0) > 0",
    "patch_ledger_entries_check1")


def test_sql_level_invariants(patches, db):
    ledger_id = _entry_in(patches, "validated")
    bad = [
        ("UPDATE patch_ledger_entries SET state = 'quarantined', quarantine_reason = NULL",
         QUARANTINE_REASON),
        ("UPDATE patch_ledger_entries SET state = 'quarantined', quarantine_reason = ''",
         QUARANTINE_REASON),
        ("UPDATE patch_ledger_entries SET updated_at = '2000-01-01T00:00:00.000000Z'",
         refused_by("updated_at >= created_at", "patch_ledger_entries_check")),
        ("UPDATE patch_ledger_entries SET state_history = '[]'", APPEND_ONLY),
        ("UPDATE patch_ledger_entries SET state_history = "
         "'[{\"state\": \"forged\"}, 1, 2, 3]'", APPEND_ONLY),
        ("UPDATE patch_ledger_entries SET state = 'merged'",
         refused_by("state IN ( 'created',", "patch_ledger_entries_state_check")),
        ("UPDATE patch_ledger_entries SET validated_tests = 2",
         refused_by("validated_tests IN (0, 1)", "patch_ledger_entries_validated_tests_check")),
        ("UPDATE patches SET sha256 = 'short'",
         refused_by("length(sha256) = 64", "patches_sha256_check")),
        ("UPDATE patches SET files = '{}'",
         refused_by("json_valid(files) AND json_type(files) = 'array'",
                     "patches_files_check")),
    ]
    for sql, constraint in bad:
        with pytest.raises(REFUSED, match=constraint):
            raw_execute(db, sql)
    assert patches.get_entry(ledger_id).state == "validated"


def test_processes_racing_for_the_same_transition_get_one_winner(shared_db, tmp_path):
    """8 processes race to move the same 200 entries: exactly one winner each."""
    patches = PatchLedger(shared_db)
    ids = {patches.create_entry(patches.record_patch(DIFF.replace("hello", f"v{i}")),
                                "PH-1").ledger_id for i in range(200)}
    go, ids_file = str(tmp_path / "go"), tmp_path / "ids"
    ids_file.write_text("\n".join(sorted(ids)))
    outs = [str(tmp_path / f"out{i}") for i in range(8)]
    procs = [subprocess.Popen([sys.executable, HELPERS, "patch_race", shared_db.db_path,
                               str(ids_file), go, out]) for out in outs]
    start_when_ready(outs, go)
    assert [p.wait(timeout=120) for p in procs] == [0] * 8
    kinds, won = race_outcomes(outs)
    assert set(won) == ids and set(won.values()) == {1}
    assert kinds == {"won": 200, "lost": 1400}
    for ledger_id in ids:
        history = patches.get_entry(ledger_id).state_history
        assert [h["state"] for h in history] == ["created", "validated"]


def test_delete_run_takes_its_patches_entries_and_gates_along(patches, db):
    from uet.state import GateLedger
    r1 = db.create_run({"project_id": "p", "phase_id": "ph"})
    r2 = db.create_run({"project_id": "p", "phase_id": "ph"})
    loose = patches.record_patch(DIFF)  # belongs to no run
    p1 = patches.record_patch(DIFF, run_id=r1)
    p2 = patches.record_patch(DIFF, run_id=r2)
    e1 = patches.create_entry(p1, "PH-1")
    GateLedger(db).define_gate("UNIT", "PH-1", "pytest", run_id=r1, ledger_id=e1.ledger_id)
    db.delete_run(r1)
    db.delete_run(r2)
    assert patches.get_patch(p1.patch_id) is None and patches.get_patch(p2.patch_id) is None
    assert patches.get_entry(e1.ledger_id) is None
    assert GateLedger(db).list_gates() == []
    assert patches.get_patch(loose.patch_id) == loose
    assert patches.record_patch(DIFF, run_id=db.create_run(
        {"project_id": "p", "phase_id": "ph"})).patch_id != loose.patch_id


def test_processes_racing_with_expected_versions_get_one_winner(shared_db, tmp_path):
    patches = PatchLedger(shared_db)
    ids = {patches.create_entry(patches.record_patch(DIFF.replace("hello", f"w{i}")),
                                "PH-1").ledger_id for i in range(40)}
    go, ids_file = str(tmp_path / "go"), tmp_path / "ids"
    ids_file.write_text("\n".join(sorted(ids)))
    outs = [str(tmp_path / f"out{i}") for i in range(4)]
    # each process moves the entry to a different state, so only the version can tell
    targets = ["validated", "quarantined", "validated", "quarantined"]
    procs = [subprocess.Popen([sys.executable, HELPERS, "patch_race", shared_db.db_path,
                               str(ids_file), go, out, target, "versioned"])
             for out, target in zip(outs, targets)]
    start_when_ready(outs, go)
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    kinds, won = race_outcomes(outs)
    assert set(won) == ids and set(won.values()) == {1}
    assert kinds == {"won": 40, "lost": 120}
    for ledger_id in ids:
        entry = patches.get_entry(ledger_id)
        assert len(entry.state_history) == 2 and entry.version == 2


# -- the framework's contract: validate(), ValidationResult, the validation_*_passed names ---

def test_validate_without_a_validator_checks_the_form_and_moves_the_entry(patches, db):
    from uet.state import ValidationResult
    entry = patches.get_entry(_entry_in(patches, "created"))
    result = patches.validate(entry.ledger_id)
    assert isinstance(result, ValidationResult) and result.is_valid
    assert result.to_dict() == {"format_ok": True, "scope_ok": True, "constraints_ok": True,
                                "tests_ran": False, "tests_passed": False,
                                "validation_errors": []}
    now = patches.get_entry(entry.ledger_id)
    assert now.state is PatchState.VALIDATED
    assert (now.validation_format_passed, now.validation_scope_passed,
            now.validation_constraints_passed, now.validation_tests_passed) == \
        (True, True, True, False)
    assert (now.validated_format, now.validated_tests) == (True, None)   # the old names
    assert now.state_history[-1]["reason"] == "validation passed"
    # validated once: a second validate is an invalid transition, nothing recorded
    with pytest.raises(InvalidTransitionError, match="^Invalid transition: "):
        patches.validate(entry.ledger_id)
    assert patches.get_entry(entry.ledger_id).version == now.version


@pytest.mark.parametrize("verdict,passed", [
    (dict(format_ok=True, scope_ok=False, constraints_ok=True,
          validation_errors=["src/x.py is outside files_scope"]), False),
    (dict(format_ok=True, scope_ok=True, constraints_ok=False), False),
    (dict(format_ok=True, scope_ok=True, constraints_ok=True, tests_ran=True,
          tests_passed=False), True),
])
def test_validate_records_a_given_verdict(patches, verdict, passed):
    from uet.state import ValidationResult
    entry = patches.get_entry(_entry_in(patches, "created"))
    given = ValidationResult(**verdict)
    for how in ("result", "validator"):
        entry = patches.get_entry(_entry_in(patches, "created"))
        seen = []

        def validator(patch):
            seen.append(patch.patch_id)
            return given

        got = (patches.validate(entry.ledger_id, given) if how == "result"
               else patches.validate(entry.ledger_id, validator=validator))
        assert got is given
        assert seen == ([] if how == "result" else [entry.patch_id])
        now = patches.get_entry(entry.ledger_id)
        assert now.state is (PatchState.VALIDATED if passed else PatchState.QUARANTINED)
        assert now.validation_scope_passed == given.scope_ok
        assert now.validated_tests == (given.tests_passed if given.tests_ran else None)
        if not passed:
            assert now.quarantine_reason.startswith("validation failed (")
            for error in given.validation_errors:
                assert error in now.quarantine_reason


def test_validate_refuses_what_is_not_a_verdict_and_changes_nothing(patches):
    entry = patches.get_entry(_entry_in(patches, "created"))
    with pytest.raises(ValidationError, match="ValidationResult"):
        patches.validate(entry.ledger_id, validator=lambda patch: True)
    assert patches.get_entry(entry.ledger_id) == entry
    with pytest.raises(NotFoundError):
        patches.validate("no-such-entry")


def test_validate_loses_to_a_writer_that_moved_the_entry_first(patches):
    from uet.state import ValidationResult
    entry = patches.get_entry(_entry_in(patches, "created"))

    def slow_validator(patch):
        patches.quarantine(entry.ledger_id, "someone else was faster")
        return ValidationResult(format_ok=True, scope_ok=True, constraints_ok=True)

    with pytest.raises((ConcurrentUpdateError, InvalidTransitionError)):
        patches.validate(entry.ledger_id, validator=slow_validator)
    now = patches.get_entry(entry.ledger_id)
    assert now.state is PatchState.QUARANTINED
    assert now.quarantine_reason == "someone else was faster"
    assert now.validated_format is None   # the verdict was not recorded either


def test_check_patch_form_finds_a_tampered_diff(patches, db, step):
    from uet.state.patches import check_patch_form
    artifact = patches.record_patch(DIFF, step_attempt_id=step)
    assert check_patch_form(artifact).is_valid
    tampered = PatchArtifact(**{**artifact.__dict__, "diff": DIFF.replace("hello", "bye")})
    verdict = check_patch_form(tampered)
    assert not verdict.is_valid and "sha256" in verdict.validation_errors[0]
    empty = PatchArtifact(**{**artifact.__dict__, "diff": "just text\n"})
    assert not check_patch_form(empty).format_ok


def test_the_machines_differ_from_the_contract_only_as_listed():
    """The README lists where uet's machines differ from COMPONENT_CONTRACTS.md: this keeps
    that list true (the contract's transitions, as the document lists them)."""
    from uet.state import WORKER
    contract_worker = {("SPAWNING", "IDLE"), ("SPAWNING", "TERMINATED"), ("IDLE", "BUSY"),
                       ("IDLE", "TERMINATED"), ("BUSY", "IDLE"), ("BUSY", "DRAINING"),
                       ("BUSY", "TERMINATED"), ("DRAINING", "TERMINATED")}
    contract_patch = {("created", "validated"), ("created", "quarantined"),
                      ("validated", "queued"), ("queued", "applied"),
                      ("queued", "apply_failed"), ("applied", "verified"),
                      ("applied", "quarantined"), ("verified", "committed"),
                      ("committed", "rolled_back"), ("apply_failed", "quarantined"),
                      ("apply_failed", "dropped")}

    def edges(machine):
        return {(a, b) for a in machine.states for b in machine.states if machine.can(a, b)}
    assert edges(WORKER) == contract_worker
    assert edges(PATCH) - contract_patch == {("validated", "quarantined"),
                                             ("quarantined", "dropped")}
    assert contract_patch <= edges(PATCH)

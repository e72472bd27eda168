"""The patch ledger: patch artifacts (the unified diffs tools produce) and the ledger
entries that carry each patch through validation, application and commit.

Every entry change appends to its state_history and writes its event in one transaction;
concurrent changes of one entry are serialised with a version column (optimistic
concurrency).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Callable

from uet.errors import (ConcurrentUpdateError, ConstraintViolation, NotFoundError,
                        ValidationError)
from uet.state.db import Database
from uet.state.transitions import record_event
from uet.state.events import (PATCH_ENTRY_CREATED, PATCH_ENTRY_STATE_CHANGED,
                              PATCH_ENTRY_VALIDATION_SET, PATCH_RECORDED)
from uet.state.ids import new_ulid, utc_now
from uet.state.machines import PATCH
from uet.state.backends import Backend, Transaction
from uet.state.contracts import (PatchArtifact, PatchLedgerEntry, ValidationResult,
                                 entry_from_row, flag, patch_from_row, state_value)
from uet.state.tables import text


_HUNK = re.compile(r"^@@ -\d+(?:,\d+)? \+\d+(?:,\d+)? @@")
# git extended header lines that describe a change without hunks
_GIT_CHANGE = ("new file mode ", "deleted file mode ", "old mode ", "new mode ",
               "Binary files ", "GIT binary patch")


def _diff_path(raw: str) -> str:
    path = raw.split("\t", 1)[0].strip()
    if len(path) >= 2 and path[0] == path[-1] == '"':
        path = path[1:-1]
    if path.startswith(("a/", "b/")):
        path = path[2:]
    return path


def _section_files(lines: list[str]) -> list[str]:
    """Paths changed by one section of a diff (one `diff --git` block, or a plain diff)."""
    files = []
    for i, line in enumerate(lines):
        if (line.startswith("--- ") and i + 2 < len(lines) and lines[i + 1].startswith("+++ ")
                and _HUNK.match(lines[i + 2])):
            old, new = _diff_path(line[4:]), _diff_path(lines[i + 1][4:])
            files.append(old if new == "/dev/null" else new)
    if files or not lines or not lines[0].startswith("diff --git "):
        return files
    for line in lines[1:]:
        if line.startswith(("rename to ", "copy to ")):
            return [line.split(" to ", 1)[1].strip()]
    if any(line.startswith(_GIT_CHANGE) for line in lines[1:]):
        header = lines[0][len("diff --git "):]
        return [_diff_path(header.rsplit(" b/", 1)[-1] if " b/" in header else header)]
    return []


def parse_unified_diff(diff: str) -> list[str]:
    """The paths a unified diff (plain or git-style) touches, in order of appearance.

    Raises ValidationError when the text is not a unified diff: it needs a `--- ` / `+++ `
    file header followed by `@@ … @@` hunks (or a git header describing a rename, copy,
    mode change or binary patch).
    """
    sections: list[list[str]] = [[]]
    for line in diff.splitlines():
        if line.startswith("diff --git "):
            sections.append([])
        sections[-1].append(line)
    files = [path for section in sections for path in _section_files(section)]
    if not files:
        raise ValidationError("diff is not a unified diff: expected '--- a/PATH', '+++ b/PATH' "
                              "and '@@ -l,n +l,n @@' lines (or a git diff header)",
                              field="diff")
    return list(dict.fromkeys(files))


def check_patch_form(patch: PatchArtifact) -> ValidationResult:
    """uet's own check of a stored patch, for `PatchLedger.validate` without a validator: a
    unified diff naming at least one file, whose content still has its recorded sha256.
    Scope and constraints pass: with no files_scope or policy given, nothing restricts
    them."""
    errors = []
    try:
        files = parse_unified_diff(patch.diff)
    except ValidationError as exc:
        files, errors = [], [f"not a unified diff: {exc}"]
    if not files and not errors:
        errors.append("the diff names no file")
    if hashlib.sha256(patch.diff.encode("utf-8")).hexdigest() != patch.sha256:
        errors.append("the diff does not match its recorded sha256")
    return ValidationResult(format_ok=not errors, scope_ok=True, constraints_ok=True,
                            validation_errors=errors)


class PatchLedger:
    """Patches of one ledger and their ledger entries (machine of SPEC §4)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @property
    def _backend(self) -> Backend:
        return self._db.backend

    # -- artifacts -----------------------------------------------------------------------

    def record_patch(self, diff: str, *, run_id: str | None = None,
                     step_attempt_id: str | None = None) -> PatchArtifact:
        """Store a unified diff with its sha256, size and the files it touches.

        The producing step attempt (and its run, inferred when omitted) is recorded for
        lineage. Recording the same diff again for the same run and step attempt returns
        the first artifact.
        """
        if not isinstance(diff, str) or not diff.strip():
            raise ValidationError("diff must be a non-empty string", field="diff")
        diff_text = text(diff, "diff")
        files = parse_unified_diff(diff_text)
        run_id = text(run_id, "run_id", required=False)
        step_attempt_id = text(step_attempt_id, "step_attempt_id", required=False)
        data = diff_text.encode("utf-8")
        sha = hashlib.sha256(data).hexdigest()
        with self._backend.transaction() as tx:
            if step_attempt_id is not None:
                step = tx.rows("get_step_attempt", (step_attempt_id,))
                if not step:
                    raise ValidationError(f"step attempt {step_attempt_id!r} does not exist",
                                          field="step_attempt_id")
                if run_id is None:
                    run_id = step[0]["run_id"]
                elif run_id != step[0]["run_id"]:
                    raise ValidationError(
                        f"step attempt {step_attempt_id!r} belongs to run "
                        f"{step[0]['run_id']!r}, not {run_id!r}", field="run_id")
            found = tx.rows("find_patch", (run_id, step_attempt_id, sha))
            if found:
                return patch_from_row(found[0])
            if run_id is not None and not tx.run("get_run", (run_id,)).fetchone():
                raise ValidationError(f"run {run_id!r} does not exist", field="run_id")
            patch_id = new_ulid()
            row = tx.rows("insert_patch", (
                patch_id, diff_text, sha, json.dumps(files), len(data), run_id,
                step_attempt_id, utc_now()))[0]
            record_event(tx, run_id, PATCH_RECORDED, {
                "patch_id": patch_id, "sha256": sha, "files": files,
                "size_bytes": len(data), "step_attempt_id": step_attempt_id})
        return patch_from_row(row)

    def get_patch(self, patch_id: str) -> PatchArtifact | None:
        """The patch artifact, or None."""
        rows = self._backend.read("get_patch", (text(patch_id, "patch_id"),))
        return patch_from_row(rows[0]) if rows else None

    # -- ledger entries ------------------------------------------------------------------

    def create_entry(self, patch: PatchArtifact | str, phase_id: str,
                     workstream_id: str | None = None) -> PatchLedgerEntry:
        """Open a ledger entry (state created) for a recorded patch in a phase/workstream."""
        patch_id = text(patch.patch_id if isinstance(patch, PatchArtifact) else patch, "patch")
        phase_id = text(phase_id, "phase_id")
        workstream_id = text(workstream_id, "workstream_id", required=False)
        now = utc_now()
        history = json.dumps([{"state": "created", "at": now, "reason": ""}])
        ledger_id = new_ulid()
        with self._backend.transaction() as tx:
            patch_row = tx.rows("get_patch", (patch_id,))
            if not patch_row:
                raise ValidationError(f"patch {patch_id!r} does not exist; record it first",
                                      field="patch")
            row = tx.rows("insert_patch_entry", (
                ledger_id, patch_id, phase_id, workstream_id, history, now, now))[0]
            record_event(tx, patch_row[0]["run_id"], PATCH_ENTRY_CREATED, {
                "ledger_id": ledger_id, "patch_id": patch_id, "phase_id": phase_id,
                "workstream_id": workstream_id, "state": "created"})
        return entry_from_row(row)

    def transition_state(self, ledger_id: str, new_state: object, reason: str = "", *,
                         expected_version: int | None = None) -> bool:
        """Move an entry under the patch machine; returns True.

        The change is appended to state_history with its reason. Entering quarantined needs
        a reason. `expected_version` makes it compare-and-set on the entry's version; two
        writers making the same transition get one winner and one ConcurrentUpdateError.
        """
        self._change(ledger_id, state_value(PATCH, new_state, "new_state"), reason,
                     expected_version)
        return True

    def quarantine(self, ledger_id: str, reason: str) -> PatchLedgerEntry:
        """Quarantine an entry; the reason is required and kept in quarantine_reason."""
        text(reason, "reason")
        return self._change(ledger_id, "quarantined", reason, None)

    def set_validation(self, ledger_id: str, *, format: bool | None = None,
                       scope: bool | None = None, constraints: bool | None = None,
                       tests: bool | None = None) -> PatchLedgerEntry:
        """Record validation results (True/False; None leaves a flag as it is)."""
        ledger_id = text(ledger_id, "ledger_id")
        flags = {"format": flag(format, "format"), "scope": flag(scope, "scope"),
                 "constraints": flag(constraints, "constraints"), "tests": flag(tests, "tests")}
        with self._backend.transaction() as tx:
            current = self._fetch(tx, ledger_id)
            row = tx.rows("set_patch_validation", {
                **flags, "now": utc_now(), "ledger_id": ledger_id})[0]
            record_event(tx, current["patch_run_id"], PATCH_ENTRY_VALIDATION_SET, {
                "ledger_id": ledger_id, **{k: v for k, v in
                                           ((k, None if v is None else bool(v))
                                            for k, v in flags.items()) if v is not None}})
        return entry_from_row(row)

    def validate(self, ledger_id: str, result: ValidationResult | None = None, *,
                 validator: Callable[[PatchArtifact], ValidationResult] | None = None
                 ) -> ValidationResult:
        """The contract's validation step: judge a `created` entry's patch, record the
        verdict and move the entry on — to `validated` when `result.is_valid`, else to
        `quarantined` with the errors as the reason — in one transaction; returns the
        verdict.

        The verdict is `result` when the caller has judged the patch already (the engine's
        scope and policy checks), else `validator(patch)` (the contract's PatchValidator), else
        uet's own check of the patch's form (`check_patch_form`): with no scope or policy
        given, nothing restricts scope or constraints, as in a workstream without them. The
        entry must still be at the version it had when the judging began: a writer that moved
        it meanwhile makes this a ConcurrentUpdateError, with nothing recorded.
        """
        ledger_id = text(ledger_id, "ledger_id")
        if result is not None and not isinstance(result, ValidationResult):
            raise ValidationError(f"result must be a ValidationResult, not "
                                  f"{type(result).__name__}", field="result")
        if validator is not None and not callable(validator):
            raise ValidationError(f"validator must be a function of the patch, not "
                                  f"{type(validator).__name__}", field="validator")
        entry = self.get_entry(ledger_id)
        if entry is None:
            raise NotFoundError("patch_entry", ledger_id)
        PATCH.check_transition(ledger_id, entry.state.value, "validated")
        if result is None:
            patch = self.get_patch(entry.patch_id)
            if patch is None:  # an entry's patch is a foreign key: never absent
                raise NotFoundError("patch", entry.patch_id)
            result = (validator or check_patch_form)(patch)
        if not isinstance(result, ValidationResult):
            raise ValidationError(f"a validator returns a ValidationResult, not "
                                  f"{type(result).__name__}", field="result")
        with self._db.atomic():
            self.set_validation(ledger_id, format=bool(result.format_ok),
                                scope=bool(result.scope_ok),
                                constraints=bool(result.constraints_ok),
                                tests=bool(result.tests_passed) if result.tests_ran else None)
            if result.is_valid:
                self._change(ledger_id, "validated", "validation passed", entry.version + 1)
            else:
                failed = [name for name, ok in (("format", result.format_ok),
                                                ("scope", result.scope_ok),
                                                ("constraints", result.constraints_ok))
                          if not ok]
                why = "; ".join(str(e) for e in result.validation_errors) or "no reason given"
                self._change(ledger_id, "quarantined",
                             f"validation failed ({', '.join(failed)}): {why}",
                             entry.version + 1)
        return result

    def get_entry(self, ledger_id: str) -> PatchLedgerEntry | None:
        """The ledger entry, or None."""
        rows = self._backend.read("get_patch_entry", (text(ledger_id, "ledger_id"),))
        return entry_from_row(rows[0]) if rows else None

    def get_patches_by_state(self, state: object,
                             phase_id: str | None = None) -> list[PatchLedgerEntry]:
        """Entries in `state` (enum member or string), of one phase if given, oldest first."""
        state = state_value(PATCH, state)
        if phase_id is None:
            rows = self._backend.read("patch_entries_by_state", (state,))
        else:
            rows = self._backend.read("patch_entries_by_state_and_phase",
                                      (state, text(phase_id, "phase_id")))
        return [entry_from_row(r) for r in rows]

    def list_entries(self, state: object = None,
                     phase_id: str | None = None) -> list[PatchLedgerEntry]:
        """Ledger entries, optionally of one state and/or phase, oldest first."""
        if state is not None:
            return self.get_patches_by_state(state, phase_id)
        if phase_id is None:
            rows = self._backend.read("all_patch_entries")
        else:
            rows = self._backend.read("patch_entries_by_phase", (text(phase_id, "phase_id"),))
        return [entry_from_row(r) for r in rows]

    def history_of_run(self, run_id: str) -> list[dict[str, Any]]:
        """Lineage of a run's patches: which step attempt produced each patch, and where each
        of the patch's ledger entries stands. One dict per patch, oldest first."""
        rows = self._backend.read("history_of_run", (text(run_id, "run_id"),))
        patches: dict[str, dict[str, Any]] = {}
        for row in rows:
            patch = patches.setdefault(row["patch_id"], {
                "patch_id": row["patch_id"], "sha256": row["sha256"],
                "files": json.loads(row["files"]), "size_bytes": row["size_bytes"],
                "recorded_at": row["recorded_at"], "step_attempt_id": row["step_attempt_id"],
                "sequence": row["sequence"], "attempt": row["attempt"],
                "tool_id": row["tool_id"], "step_state": row["step_state"], "entries": []})
            if row["ledger_id"] is not None:
                patch["entries"].append({
                    "ledger_id": row["ledger_id"], "state": row["entry_state"],
                    "phase_id": row["phase_id"], "workstream_id": row["workstream_id"],
                    "updated_at": row["updated_at"]})
        return list(patches.values())

    # -- internals -----------------------------------------------------------------------

    @staticmethod
    def _fetch(tx: Transaction, ledger_id: str) -> dict[str, Any]:
        rows = tx.rows("lock_patch_entry", (ledger_id,))
        if not rows:
            raise NotFoundError("patch_entry", ledger_id)
        row: dict[str, Any] = rows[0]
        return row

    def _change(self, ledger_id: str, target: str, reason: object,
                expected_version: object) -> PatchLedgerEntry:
        ledger_id = text(ledger_id, "ledger_id")
        if not isinstance(reason, str):
            raise ValidationError(f"reason must be a string, got {reason!r}", field="reason")
        text(reason or "-", "reason")  # Unicode check
        if target == "quarantined" and not reason.strip():
            raise ValidationError("quarantining a patch needs a reason", field="reason")
        if expected_version is not None and (not isinstance(expected_version, int)
                                             or isinstance(expected_version, bool)):
            raise ValidationError(f"expected_version must be an integer, got "
                                  f"{expected_version!r}", field="expected_version")
        now = utc_now()
        with self._backend.transaction() as tx:
            current = self._fetch(tx, ledger_id)
            if expected_version is not None and current["version"] != expected_version:
                raise ConcurrentUpdateError("patch_entry", ledger_id,
                                            f"version {expected_version}",
                                            f"version {current['version']} "
                                            f"({current['state']})")
            PATCH.check_transition(ledger_id, current["state"], target)
            try:
                row = tx.rows("update_patch_entry", {
                    "state": target, "now": now, "ledger_id": ledger_id,
                    "version": current["version"],
                    "quarantine_reason": reason if target == "quarantined" else None,
                    "history_item": json.dumps({"state": target, "at": now,
                                                "reason": reason})})[0]
            except ConstraintViolation as exc:  # pragma: no cover - checked above
                raise ValidationError(f"patch entry {ledger_id!r}: {exc}") from None
            record_event(tx, current["patch_run_id"], PATCH_ENTRY_STATE_CHANGED, {
                "ledger_id": ledger_id, "patch_id": current["patch_id"],
                "from": current["state"], "to": target, "reason": reason})
        return entry_from_row(row)


__all__ = ["PatchLedger", "parse_unified_diff", "PATCH_RECORDED", "PATCH_ENTRY_CREATED",
           "PATCH_ENTRY_STATE_CHANGED", "PATCH_ENTRY_VALIDATION_SET"]

"""The framework's V2 records as Python types: state enums and the dataclasses the worker,
patch and gate APIs return, with the one place that turns rows into them and checks their
arguments.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field as dataclass_field
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

from uet.errors import ValidationError
from uet.state.ids import normalize_timestamp
from uet.state.machines import GATE, PATCH, WORKER, Machine
from uet.state.tables import encode_json, text


class WorkerState(str, enum.Enum):
    """A worker's state (a str enum: a member equals its stored value); the moves between
    them are `uet.state.machines.WORKER`'s, TERMINATED the final one."""
    SPAWNING = "SPAWNING"
    IDLE = "IDLE"
    BUSY = "BUSY"
    DRAINING = "DRAINING"
    TERMINATED = "TERMINATED"


class PatchState(str, enum.Enum):
    """A patch ledger entry's state, lower case as stored; the moves between them are
    `uet.state.machines.PATCH`'s (rolled_back and dropped are final)."""
    CREATED = "created"
    VALIDATED = "validated"
    QUEUED = "queued"
    APPLIED = "applied"
    APPLY_FAILED = "apply_failed"
    VERIFIED = "verified"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"
    QUARANTINED = "quarantined"
    DROPPED = "dropped"


class GateState(str, enum.Enum):
    """A test gate's state; the moves between them are `uet.state.machines.GATE`'s (PASSED
    and FAILED are final; a BLOCKED gate returns to PENDING once the gate that blocked it
    passes on a re-run)."""
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    PASSED = "PASSED"
    FAILED = "FAILED"
    BLOCKED = "BLOCKED"


class GateType(str, enum.Enum):
    """What a test gate checks: lint, unit tests, integration tests or security."""
    LINT = "LINT"
    UNIT = "UNIT"
    INTEGRATION = "INTEGRATION"
    SECURITY = "SECURITY"


# the enums must say exactly what the machines (and the CHECK constraints) say
assert [s.value for s in WorkerState] == list(WORKER.states)
assert [s.value for s in PatchState] == list(PATCH.states)
assert [s.value for s in GateState] == list(GATE.states)


@dataclass(frozen=True)
class WorkerRecord:
    """A worker as `WorkerLifecycle` returns it: its `affinity` (fixed once it leaves
    SPAWNING), its last heartbeat (None: none yet), when it was terminated (None until it
    is TERMINATED) and the run it holds (None: none). Timestamps are the ledger's UTC
    text."""
    worker_id: str
    worker_type: str
    state: WorkerState
    affinity: dict[str, Any]
    last_heartbeat: str | None
    created_at: str
    terminated_at: str | None
    current_run_id: str | None
    # the process holding the id (fencing); None for workers registered without one
    incarnation: str | None = None


@dataclass(frozen=True)
class PatchArtifact:
    """A stored patch (`PatchLedger.record_patch`): the unified diff, its sha256 (hex) and
    size in bytes (UTF-8), the files it touches in order of appearance, and the run and step
    attempt that produced it (None: not recorded)."""
    patch_id: str
    diff: str
    sha256: str
    files: list[str]
    size_bytes: int
    run_id: str | None
    step_attempt_id: str | None
    created_at: str


@dataclass(frozen=True)
class PatchLedgerEntry:
    """One patch's way through the patch machine (`PatchLedger`): its state, the validation
    flags (None: not checked yet), the reason it was quarantined (None: it was not),
    `state_history` (each state entered, oldest first: {"state", "at", "reason"}) and
    `version`, which every change increments (the compare-and-set of `expected_version`)."""
    ledger_id: str
    patch_id: str
    state: PatchState
    phase_id: str
    workstream_id: str | None
    validated_format: bool | None
    validated_scope: bool | None
    validated_constraints: bool | None
    validated_tests: bool | None
    quarantine_reason: str | None
    state_history: list[dict[str, str]]
    created_at: str
    updated_at: str
    version: int

    # the framework's contract (COMPONENT_CONTRACTS.md) names the validation flags
    # validation_*_passed, booleans defaulting to False; uet keeps None for "not checked"
    # in validated_*, and these read "checked and passed"
    @property
    def validation_format_passed(self) -> bool:
        """The contract's name: the format check ran and passed (validated_format)."""
        return self.validated_format is True

    @property
    def validation_scope_passed(self) -> bool:
        """The contract's name: the scope check ran and passed (validated_scope)."""
        return self.validated_scope is True

    @property
    def validation_constraints_passed(self) -> bool:
        """The contract's name: the constraints check ran and passed
        (validated_constraints)."""
        return self.validated_constraints is True

    @property
    def validation_tests_passed(self) -> bool:
        """The contract's name: the tests ran and passed (validated_tests)."""
        return self.validated_tests is True


@dataclass
class ValidationResult:
    """A patch's validation verdict, as the framework's contract has it (PatchValidator's and
    `PatchLedger.validate`'s result): the format, scope and constraints checks, whether tests
    ran and passed, and every error found. `is_valid`: format, scope and constraints all
    passed (tests are the gates' business, after validation)."""
    format_ok: bool = False
    scope_ok: bool = False
    constraints_ok: bool = False
    tests_ran: bool = False
    tests_passed: bool = False
    validation_errors: list[str] = dataclass_field(default_factory=list)

    @property
    def is_valid(self) -> bool:
        """Whether the patch may move on (created → validated)."""
        return self.format_ok and self.scope_ok and self.constraints_ok

    def to_dict(self) -> dict[str, Any]:
        """The verdict as a JSON-ready dict (the contract's keys)."""
        return {"format_ok": self.format_ok, "scope_ok": self.scope_ok,
                "constraints_ok": self.constraints_ok, "tests_ran": self.tests_ran,
                "tests_passed": self.tests_passed,
                "validation_errors": list(self.validation_errors)}


def worker_from_row(row: Mapping[str, Any]) -> WorkerRecord:
    """A `workers` row (its affinity JSON text) as a WorkerRecord."""
    return WorkerRecord(
        worker_id=row["worker_id"], worker_type=row["worker_type"],
        state=WorkerState(row["state"]), affinity=json.loads(row["affinity"]),
        last_heartbeat=row["last_heartbeat"], created_at=row["created_at"],
        terminated_at=row["terminated_at"], current_run_id=row["current_run_id"],
        incarnation=row.get("incarnation"))


def patch_from_row(row: Mapping[str, Any]) -> PatchArtifact:
    """A `patches` row (its files JSON text) as a PatchArtifact."""
    return PatchArtifact(
        patch_id=row["patch_id"], diff=row["diff"], sha256=row["sha256"],
        files=json.loads(row["files"]), size_bytes=row["size_bytes"], run_id=row["run_id"],
        step_attempt_id=row["step_attempt_id"], created_at=row["created_at"])


def _flag(value: int | None) -> bool | None:
    return None if value is None else bool(value)


def entry_from_row(row: Mapping[str, Any]) -> PatchLedgerEntry:
    """A `patch_ledger_entries` row as a PatchLedgerEntry: the stored 0/1 flags as booleans
    (None kept), state_history decoded."""
    return PatchLedgerEntry(
        ledger_id=row["ledger_id"], patch_id=row["patch_id"], state=PatchState(row["state"]),
        phase_id=row["phase_id"], workstream_id=row["workstream_id"],
        validated_format=_flag(row["validated_format"]),
        validated_scope=_flag(row["validated_scope"]),
        validated_constraints=_flag(row["validated_constraints"]),
        validated_tests=_flag(row["validated_tests"]),
        quarantine_reason=row["quarantine_reason"],
        state_history=json.loads(row["state_history"]), created_at=row["created_at"],
        updated_at=row["updated_at"], version=row["version"])


# -- argument checks -----------------------------------------------------------------------

def state_value(machine: Machine, state: object, field: str = "state") -> str:
    """A state given as an enum member or its string value, checked against the machine."""
    if isinstance(state, enum.Enum):
        state = state.value
    return machine.check_state(state, field)


def output(value: object, field: str) -> str | None:
    """Captured program output: None or any string (empty included)."""
    if value is None or value == "":
        return value
    return text(value, field)


def flag(value: object, field: str) -> int | None:
    """A validation flag: True, False or None (not checked), as stored (1, 0 or None)."""
    if value is None:
        return None
    if not isinstance(value, bool):
        raise ValidationError(f"{field} must be True, False or None, got {value!r}",
                              field=field)
    return int(value)


def positive_seconds(value: object, field: str, *, required: bool = True) -> float | None:
    """A duration in seconds as a float: a number above 0 and below 10**9 (no bool); None
    only when not `required`."""
    if value is None and not required:
        return None
    if (not isinstance(value, (int, float)) or isinstance(value, bool)
            or not 0 < value < 10**9):
        raise ValidationError(f"{field} must be a number of seconds > 0, got {value!r}",
                              field=field)
    return float(value)


def json_object(value: object, field: str) -> str:
    """A dict as the JSON text stored in `field` (the checks of `encode_json`)."""
    return encode_json(value, field, field)


def moment(now: object) -> datetime:
    """`now` as an aware UTC datetime (default: the clock)."""
    if now is None:
        return datetime.now(timezone.utc)
    if not isinstance(now, datetime) or now.tzinfo is None:
        raise ValidationError(f"now must be an aware datetime (e.g. datetime.now(timezone.utc)),"
                              f" got {now!r}", field="now")
    try:
        return now.astimezone(timezone.utc)
    except OverflowError:
        raise ValidationError(f"now is outside the years 1 to 9999 in UTC: {now!r}",
                              field="now") from None


def stamp(when: datetime) -> str:
    """An aware datetime (see `moment`) as a stored timestamp, in the ledger's format."""
    return normalize_timestamp(when, "now")


def parse_stamp(value: str) -> datetime:
    """A stored timestamp as an aware UTC datetime."""
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def seconds_between(start: str, end: str) -> float:
    """The seconds from one stored timestamp to another; 0.0 when `end` is the earlier."""
    return max(0.0, (parse_stamp(end) - parse_stamp(start)) / timedelta(seconds=1))

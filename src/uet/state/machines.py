"""The ledger's state machines as data: allowed transitions, initial and terminal states.

Every write path that changes a `state` column consults these tables; nothing else decides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from uet.errors import DuplicateTransitionError, InvalidTransitionError, ValidationError


@dataclass(frozen=True)
class Machine:
    """One state machine.

    `transitions` maps each state to the states it may move to; a state with no entry is
    terminal. `stamps` maps a target state to the timestamp column set on entering it
    (when that column is still empty). `redrives` are the moves back to a start state that
    only an explicit re-drive makes (a run run again under its own id), never an ordinary
    transition; `redrive_clears` the columns such a move empties.
    """

    entity: str
    states: tuple[str, ...]
    initial: tuple[str, ...]
    transitions: Mapping[str, frozenset[str]]
    stamps: Mapping[str, str] = field(default_factory=dict)
    redrives: Mapping[str, frozenset[str]] = field(default_factory=dict)
    redrive_clears: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        known = set(self.states)
        for src, targets in self.transitions.items():
            assert src in known and targets <= known, (self.entity, src, targets)
        assert set(self.initial) <= known and set(self.stamps) <= known
        for src, targets in self.redrives.items():
            assert src in known and targets <= set(self.initial), (self.entity, src, targets)

    @property
    def terminal(self) -> frozenset[str]:
        """States that accept no transition at all."""
        return frozenset(s for s in self.states if not self.transitions.get(s))

    def allowed_from(self, state: str) -> tuple[str, ...]:
        """The states `state` may move to, in declaration order."""
        targets = self.transitions.get(state, frozenset())
        return tuple(s for s in self.states if s in targets)

    def can(self, current: str, requested: str) -> bool:
        """Whether current -> requested is an ordinary transition (re-drives are not)."""
        return requested in self.transitions.get(current, ())

    def stamps_entering(self, state: str, current: Mapping[str, object],
                        given: Mapping[str, object], now: str) -> dict[str, str]:
        """The timestamp to set on entering `state`: {column: now} when the machine stamps a
        column for it that neither the row (`current`) nor the caller (`given`) has set;
        else {}. The one place every entity's timestamps are stamped from."""
        column = self.stamps.get(state)
        if column and given.get(column) is None and current.get(column) is None:
            return {column: now}
        return {}

    def check_redrive(self, entity_id: object, current: str, requested: str) -> None:
        """Raise InvalidTransitionError unless a re-drive may move current -> requested."""
        if requested not in self.redrives.get(current, ()):
            movable = [s for s in self.states if requested in self.redrives.get(s, ())]
            which = (", ".join(movable[:-1]) + " or " + movable[-1] if len(movable) > 1
                     else "".join(movable))
            raise InvalidTransitionError(
                self.entity, entity_id, current, requested,
                reason=(f"only a {which} {self.entity} can be re-driven to {requested}"
                        if movable else f"a {self.entity} is never re-driven to {requested}"))

    def check_state(self, state: object, field_name: str = "state") -> str:
        """Raise ValidationError unless `state` is one of this machine's states."""
        if not isinstance(state, str) or state not in self.states:
            raise ValidationError(
                f"unknown {self.entity} {field_name} {state!r}; "
                f"known states: {', '.join(self.states)}", field=field_name)
        return state

    def check_transition(self, entity_id: object, current: str, requested: str) -> None:
        """Raise InvalidTransitionError unless current -> requested is allowed.

        A 'transition' to the state the row is already in is refused: it is how two workers
        doing the same work show themselves.
        """
        if current == requested:
            raise DuplicateTransitionError(self.entity, entity_id, current)
        if not self.can(current, requested):
            raise InvalidTransitionError(self.entity, entity_id, current, requested,
                                         self.allowed_from(current))


def _machine(entity: str, states: tuple[str, ...], initial: tuple[str, ...],
             transitions: dict[str, tuple[str, ...]], stamps: dict[str, str],
             redrives: dict[str, tuple[str, ...]] | None = None,
             redrive_clears: tuple[str, ...] = ()) -> Machine:
    return Machine(
        entity=entity,
        states=states,
        initial=initial,
        transitions=MappingProxyType({k: frozenset(v) for k, v in transitions.items()}),
        stamps=MappingProxyType(dict(stamps)),
        redrives=MappingProxyType({k: frozenset(v) for k, v in (redrives or {}).items()}),
        redrive_clears=redrive_clears,
    )


RUN = _machine(
    "run",
    states=("pending", "running", "succeeded", "failed", "quarantined", "canceled"),
    # A run is created pending; one whose work starts at once may be created running.
    initial=("pending", "running"),
    transitions={
        "pending": ("running", "canceled"),
        "running": ("succeeded", "failed", "quarantined", "canceled"),
        "failed": ("quarantined",),
    },
    stamps={
        "running": "started_at",
        "succeeded": "ended_at",
        "failed": "ended_at",
        "quarantined": "ended_at",
        "canceled": "ended_at",
    },
    # Run again under the same id (SPEC: re-drive): a running run whose owner is gone, by
    # recovery that re-queues it; a failed or canceled one, by an explicit resume.
    redrives={"running": ("pending",), "failed": ("pending",), "canceled": ("pending",)},
    # what the run's last ending (or its lost owner) left; the re-drive event keeps them
    redrive_clears=("ended_at", "exit_code", "error_message", "worker_id"),
)

STEP_ATTEMPT = _machine(
    "step_attempt",
    states=("running", "succeeded", "failed", "canceled"),
    initial=("running",),
    transitions={"running": ("succeeded", "failed", "canceled")},
    stamps={"succeeded": "ended_at", "failed": "ended_at", "canceled": "ended_at"},
)

WORKER = _machine(
    "worker",
    states=("SPAWNING", "IDLE", "BUSY", "DRAINING", "TERMINATED"),
    initial=("SPAWNING",),
    transitions={
        "SPAWNING": ("IDLE", "TERMINATED"),
        "IDLE": ("BUSY", "TERMINATED"),
        "BUSY": ("IDLE", "DRAINING", "TERMINATED"),
        "DRAINING": ("TERMINATED",),
    },
    stamps={"TERMINATED": "terminated_at"},
)

PATCH = _machine(
    "patch_entry",
    states=("created", "validated", "queued", "applied", "apply_failed", "verified",
            "committed", "rolled_back", "quarantined", "dropped"),
    initial=("created",),
    transitions={
        "created": ("validated", "quarantined"),
        "validated": ("queued", "quarantined"),
        "queued": ("applied", "apply_failed"),
        "applied": ("verified", "quarantined"),
        "apply_failed": ("quarantined", "dropped"),
        "verified": ("committed",),
        "committed": ("rolled_back",),
        "quarantined": ("dropped",),
    },
    stamps={},
)

GATE = _machine(
    "gate",
    states=("PENDING", "RUNNING", "PASSED", "FAILED", "BLOCKED"),
    initial=("PENDING",),
    transitions={
        "PENDING": ("RUNNING", "BLOCKED"),
        "RUNNING": ("PASSED", "FAILED"),
        "BLOCKED": ("PENDING",),
    },
    stamps={"RUNNING": "started_at", "PASSED": "completed_at", "FAILED": "completed_at"},
)

MACHINES: Mapping[str, Machine] = MappingProxyType(
    {m.entity: m for m in (RUN, STEP_ATTEMPT, WORKER, PATCH, GATE)})

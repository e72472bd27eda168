"""The names of the events the ledger writes itself: "<record>.<what happened>".

Each is written in the same transaction as the change it reports. Callers may not forge them
through `Database.create_event`; every other event type is theirs.
"""

RUN_CREATED = "run.created"
RUN_STATE_CHANGED = "run.state_changed"
STEP_ATTEMPT_CREATED = "step_attempt.created"
STEP_ATTEMPT_STATE_CHANGED = "step_attempt.state_changed"
WORKER_SPAWNED = "worker.spawned"
WORKER_STATE_CHANGED = "worker.state_changed"
PATCH_RECORDED = "patch.recorded"
PATCH_ENTRY_CREATED = "patch_entry.created"
PATCH_ENTRY_STATE_CHANGED = "patch_entry.state_changed"
PATCH_ENTRY_VALIDATION_SET = "patch_entry.validation_set"
GATE_DEFINED = "gate.defined"
GATE_STATE_CHANGED = "gate.state_changed"

RESERVED_EVENT_TYPES = frozenset({
    RUN_CREATED, RUN_STATE_CHANGED, STEP_ATTEMPT_CREATED, STEP_ATTEMPT_STATE_CHANGED,
    WORKER_SPAWNED, WORKER_STATE_CHANGED, PATCH_RECORDED, PATCH_ENTRY_CREATED,
    PATCH_ENTRY_STATE_CHANGED, PATCH_ENTRY_VALIDATION_SET, GATE_DEFINED, GATE_STATE_CHANGED,
})

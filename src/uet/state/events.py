"""The names of the events the ledger writes itself: "<record>.<what happened>".

Each is written in the same transaction as the change it reports. Callers may not forge them
through `Database.create_event`; every other event type is theirs.

`run.updated` / `step_attempt.updated` record a call of update_run / update_step_attempt that
changed fields but not the state: `{"changed": {field: {"from": old, "to": new}}}` (a step
attempt's also names its `step_attempt_id`). A call that also changes the state (an update
or a transition with exit_code, error_message, ...) writes one `*.state_changed` event
instead, its `changed` listing the other fields the call changed.
"""

RUN_CREATED = "run.created"
RUN_STATE_CHANGED = "run.state_changed"
RUN_UPDATED = "run.updated"
# `uet cancel` asks a run's live owner to stop it (uet.state.recovery.request_cancel)
RUN_CANCEL_REQUESTED = "run.cancel_requested"
STEP_ATTEMPT_CREATED = "step_attempt.created"
STEP_ATTEMPT_STATE_CHANGED = "step_attempt.state_changed"
STEP_ATTEMPT_UPDATED = "step_attempt.updated"
WORKER_SPAWNED = "worker.spawned"
WORKER_STATE_CHANGED = "worker.state_changed"
PATCH_RECORDED = "patch.recorded"
PATCH_ENTRY_CREATED = "patch_entry.created"
PATCH_ENTRY_STATE_CHANGED = "patch_entry.state_changed"
PATCH_ENTRY_VALIDATION_SET = "patch_entry.validation_set"
GATE_DEFINED = "gate.defined"
GATE_STATE_CHANGED = "gate.state_changed"

RESERVED_EVENT_TYPES = frozenset({
    RUN_CREATED, RUN_STATE_CHANGED, RUN_UPDATED, RUN_CANCEL_REQUESTED, STEP_ATTEMPT_CREATED,
    STEP_ATTEMPT_STATE_CHANGED, STEP_ATTEMPT_UPDATED,
    WORKER_SPAWNED, WORKER_STATE_CHANGED, PATCH_RECORDED, PATCH_ENTRY_CREATED,
    PATCH_ENTRY_STATE_CHANGED, PATCH_ENTRY_VALIDATION_SET, GATE_DEFINED, GATE_STATE_CHANGED,
})

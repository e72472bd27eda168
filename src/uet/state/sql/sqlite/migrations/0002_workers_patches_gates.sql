-- 0002: the framework's V2 records: workers, patches with their ledger entries, test gates.
--
-- Runs and step attempts gain the worker that holds them (a column, so that reaping a lost
-- worker can find its work). Every invariant of the state-machine specification that a row
-- can state about itself is a CHECK or trigger here, so that no writer, ours or not, can
-- break it; the columns the code computes with are type-checked too (the tables are not
-- STRICT, to keep SQLite 3.35 and later able to open them).

CREATE TABLE workers (
    worker_id        TEXT PRIMARY KEY NOT NULL,
    worker_type      TEXT NOT NULL,
    state            TEXT NOT NULL DEFAULT 'SPAWNING' CHECK (state IN (
                         'SPAWNING', 'IDLE', 'BUSY', 'DRAINING', 'TERMINATED')),
    affinity         TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(affinity)
                                                    AND json_type(affinity) = 'object'),
    last_heartbeat   TEXT CHECK (last_heartbeat GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]Z'),
    created_at       TEXT NOT NULL CHECK (created_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]Z'),
    terminated_at    TEXT,
    -- the run a BUSY worker holds
    current_run_id   TEXT REFERENCES runs (run_id) ON DELETE SET NULL,
    -- terminated_at is set exactly when the worker is TERMINATED
    CHECK ((state = 'TERMINATED') = (terminated_at IS NOT NULL))
);

CREATE INDEX idx_workers_state ON workers (state, created_at, worker_id);
CREATE INDEX idx_workers_type ON workers (worker_type, state, created_at, worker_id);

-- affinity cannot change once the worker has left SPAWNING
CREATE TRIGGER workers_affinity_immutable BEFORE UPDATE OF affinity ON workers
WHEN OLD.state != 'SPAWNING' AND NEW.affinity IS NOT OLD.affinity
BEGIN
    SELECT RAISE(ABORT, 'worker affinity cannot change after SPAWNING');
END;

ALTER TABLE runs ADD COLUMN worker_id TEXT REFERENCES workers (worker_id) ON DELETE SET NULL;
ALTER TABLE step_attempts ADD COLUMN worker_id TEXT
    REFERENCES workers (worker_id) ON DELETE SET NULL;
CREATE INDEX idx_runs_worker ON runs (worker_id) WHERE worker_id IS NOT NULL;
CREATE INDEX idx_steps_worker ON step_attempts (worker_id) WHERE worker_id IS NOT NULL;

CREATE TABLE patches (
    patch_id         TEXT PRIMARY KEY NOT NULL,
    diff             TEXT NOT NULL,
    sha256           TEXT NOT NULL CHECK (length(sha256) = 64),
    files            TEXT NOT NULL CHECK (json_valid(files) AND json_type(files) = 'array'),
    size_bytes       INTEGER NOT NULL CHECK (typeof(size_bytes) = 'integer'
                                             AND size_bytes >= 0),
    -- a patch goes with the run that produced it (delete_run removes its whole record)
    run_id           TEXT REFERENCES runs (run_id) ON DELETE CASCADE,
    step_attempt_id  TEXT REFERENCES step_attempts (step_attempt_id) ON DELETE CASCADE,
    created_at       TEXT NOT NULL
);

-- recording the same diff twice for the same run / step attempt gives back the first
CREATE UNIQUE INDEX idx_patches_origin
    ON patches (coalesce(run_id, ''), coalesce(step_attempt_id, ''), sha256);
CREATE INDEX idx_patches_run ON patches (run_id, created_at) WHERE run_id IS NOT NULL;

CREATE TABLE patch_ledger_entries (
    ledger_id              TEXT PRIMARY KEY NOT NULL,
    patch_id               TEXT NOT NULL REFERENCES patches (patch_id) ON DELETE CASCADE,
    state                  TEXT NOT NULL DEFAULT 'created' CHECK (state IN (
                               'created', 'validated', 'queued', 'applied', 'apply_failed',
                               'verified', 'committed', 'rolled_back', 'quarantined',
                               'dropped')),
    phase_id               TEXT NOT NULL,
    workstream_id          TEXT,
    validated_format       INTEGER CHECK (validated_format IN (0, 1)),
    validated_scope        INTEGER CHECK (validated_scope IN (0, 1)),
    validated_constraints  INTEGER CHECK (validated_constraints IN (0, 1)),
    validated_tests        INTEGER CHECK (validated_tests IN (0, 1)),
    quarantine_reason      TEXT,
    state_history          TEXT NOT NULL CHECK (json_valid(state_history)
                                                AND json_type(state_history) = 'array'),
    created_at             TEXT NOT NULL,
    updated_at             TEXT NOT NULL,
    -- optimistic concurrency: every change increments it
    version                INTEGER NOT NULL DEFAULT 1 CHECK (typeof(version) = 'integer'
                                                         AND version >= 1),
    CHECK (updated_at >= created_at),
    CHECK (state != 'quarantined' OR coalesce(length(quarantine_reason), 0) > 0)
);

CREATE INDEX idx_patch_entries_state ON patch_ledger_entries (state, created_at, ledger_id);
CREATE INDEX idx_patch_entries_phase
    ON patch_ledger_entries (phase_id, state, created_at, ledger_id);
CREATE INDEX idx_patch_entries_patch ON patch_ledger_entries (patch_id);

-- state_history is append-only: an update may only add entries at its end
CREATE TRIGGER patch_history_append_only BEFORE UPDATE OF state_history
ON patch_ledger_entries
WHEN json_array_length(NEW.state_history) <= json_array_length(OLD.state_history)
  OR substr(NEW.state_history, 1, length(OLD.state_history) - 1)
     != substr(OLD.state_history, 1, length(OLD.state_history) - 1)
BEGIN
    SELECT RAISE(ABORT, 'patch state_history is append-only');
END;

CREATE TABLE test_gates (
    gate_id       TEXT PRIMARY KEY NOT NULL,
    gate_type     TEXT NOT NULL CHECK (gate_type IN ('LINT', 'UNIT', 'INTEGRATION',
                                                     'SECURITY')),
    -- a re-run of a gate is a new row with the same name in the same scope
    name          TEXT NOT NULL,
    phase_id      TEXT NOT NULL,
    state         TEXT NOT NULL DEFAULT 'PENDING' CHECK (state IN (
                      'PENDING', 'RUNNING', 'PASSED', 'FAILED', 'BLOCKED')),
    command       TEXT NOT NULL,
    exit_code     INTEGER CHECK (exit_code IS NULL OR typeof(exit_code) = 'integer'),
    stdout        TEXT,
    stderr        TEXT,
    duration_sec  REAL CHECK (duration_sec IS NULL OR (typeof(duration_sec) = 'real'
                                                      AND duration_sec >= 0)),
    started_at    TEXT CHECK (started_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]Z'),
    completed_at  TEXT CHECK (completed_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]Z'),
    timeout_sec   REAL CHECK (timeout_sec IS NULL OR (typeof(timeout_sec) = 'real'
                                                     AND timeout_sec > 0)),
    run_id        TEXT REFERENCES runs (run_id) ON DELETE CASCADE,
    ledger_id     TEXT REFERENCES patch_ledger_entries (ledger_id) ON DELETE CASCADE,
    created_at    TEXT NOT NULL,
    -- the dependency (by name) whose failure blocked this gate
    blocked_by    TEXT,
    CHECK (state NOT IN ('PASSED', 'FAILED') OR exit_code IS NOT NULL),
    CHECK ((state IN ('PASSED', 'FAILED')) = (completed_at IS NOT NULL))
);

CREATE INDEX idx_gates_scope ON test_gates (phase_id, run_id, ledger_id, name, created_at);
CREATE INDEX idx_gates_state ON test_gates (state, phase_id);
CREATE INDEX idx_gates_run ON test_gates (run_id) WHERE run_id IS NOT NULL;

-- a gate depends on the gates of its scope with these names
CREATE TABLE gate_dependencies (
    gate_id     TEXT NOT NULL REFERENCES test_gates (gate_id) ON DELETE CASCADE,
    depends_on  TEXT NOT NULL,
    PRIMARY KEY (gate_id, depends_on)
) WITHOUT ROWID;

CREATE INDEX idx_gate_dependencies_name ON gate_dependencies (depends_on);

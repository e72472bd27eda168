-- 0002: the framework's V2 records: workers, patches with their ledger entries, test gates.
--
-- The PostgreSQL twin of sql/sqlite/migrations/0002_workers_patches_gates.sql, with the
-- same invariants as CHECKs and triggers.

CREATE DOMAIN uet_timestamp AS text COLLATE "C"
    CHECK (VALUE ~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z$');

CREATE TABLE workers (
    worker_id        text COLLATE "C" PRIMARY KEY,
    worker_type      text COLLATE "C" NOT NULL,
    state            text COLLATE "C" NOT NULL DEFAULT 'SPAWNING' CHECK (state IN (
                         'SPAWNING', 'IDLE', 'BUSY', 'DRAINING', 'TERMINATED')),
    affinity         json NOT NULL DEFAULT '{}' CHECK (json_typeof(affinity) = 'object'),
    last_heartbeat   uet_timestamp,
    created_at       uet_timestamp NOT NULL,
    terminated_at    text COLLATE "C",
    current_run_id   text COLLATE "C" REFERENCES runs (run_id) ON DELETE SET NULL,
    CHECK ((state = 'TERMINATED') = (terminated_at IS NOT NULL))
);

CREATE INDEX idx_workers_state ON workers (state, created_at, worker_id);
CREATE INDEX idx_workers_type ON workers (worker_type, state, created_at, worker_id);

CREATE FUNCTION uet_workers_affinity_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.state != 'SPAWNING' AND NEW.affinity::text IS DISTINCT FROM OLD.affinity::text THEN
        RAISE EXCEPTION 'worker affinity cannot change after SPAWNING'
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER workers_affinity_immutable BEFORE UPDATE OF affinity ON workers
FOR EACH ROW EXECUTE FUNCTION uet_workers_affinity_immutable();

ALTER TABLE runs ADD COLUMN worker_id text COLLATE "C"
    REFERENCES workers (worker_id) ON DELETE SET NULL;
ALTER TABLE step_attempts ADD COLUMN worker_id text COLLATE "C"
    REFERENCES workers (worker_id) ON DELETE SET NULL;
CREATE INDEX idx_runs_worker ON runs (worker_id) WHERE worker_id IS NOT NULL;
CREATE INDEX idx_steps_worker ON step_attempts (worker_id) WHERE worker_id IS NOT NULL;

CREATE TABLE patches (
    patch_id         text COLLATE "C" PRIMARY KEY,
    diff             text COLLATE "C" NOT NULL,
    sha256           text COLLATE "C" NOT NULL CHECK (length(sha256) = 64),
    files            json NOT NULL CHECK (json_typeof(files) = 'array'),
    size_bytes       bigint NOT NULL CHECK (size_bytes >= 0),
    run_id           text COLLATE "C" REFERENCES runs (run_id) ON DELETE CASCADE,
    step_attempt_id  text COLLATE "C"
                         REFERENCES step_attempts (step_attempt_id) ON DELETE CASCADE,
    created_at       text COLLATE "C" NOT NULL
);

CREATE UNIQUE INDEX idx_patches_origin
    ON patches (coalesce(run_id, ''), coalesce(step_attempt_id, ''), sha256);
CREATE INDEX idx_patches_run ON patches (run_id, created_at) WHERE run_id IS NOT NULL;

CREATE TABLE patch_ledger_entries (
    ledger_id              text COLLATE "C" PRIMARY KEY,
    patch_id               text COLLATE "C" NOT NULL
                               REFERENCES patches (patch_id) ON DELETE CASCADE,
    state                  text COLLATE "C" NOT NULL DEFAULT 'created' CHECK (state IN (
                               'created', 'validated', 'queued', 'applied', 'apply_failed',
                               'verified', 'committed', 'rolled_back', 'quarantined',
                               'dropped')),
    phase_id               text COLLATE "C" NOT NULL,
    workstream_id          text COLLATE "C",
    validated_format       smallint CHECK (validated_format IN (0, 1)),
    validated_scope        smallint CHECK (validated_scope IN (0, 1)),
    validated_constraints  smallint CHECK (validated_constraints IN (0, 1)),
    validated_tests        smallint CHECK (validated_tests IN (0, 1)),
    quarantine_reason      text COLLATE "C",
    state_history          json NOT NULL CHECK (json_typeof(state_history) = 'array'),
    created_at             text COLLATE "C" NOT NULL,
    updated_at             text COLLATE "C" NOT NULL,
    version                bigint NOT NULL DEFAULT 1 CHECK (version >= 1),
    CHECK (updated_at >= created_at),
    CHECK (state != 'quarantined' OR coalesce(length(quarantine_reason), 0) > 0)
);

CREATE INDEX idx_patch_entries_state ON patch_ledger_entries (state, created_at, ledger_id);
CREATE INDEX idx_patch_entries_phase
    ON patch_ledger_entries (phase_id, state, created_at, ledger_id);
CREATE INDEX idx_patch_entries_patch ON patch_ledger_entries (patch_id);

-- state_history is append-only: an update may only add entries at its end
CREATE FUNCTION uet_patch_history_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    old_text text := OLD.state_history::text;
BEGIN
    IF json_array_length(NEW.state_history) <= json_array_length(OLD.state_history)
       OR substr(NEW.state_history::text, 1, length(old_text) - 1)
          IS DISTINCT FROM substr(old_text, 1, length(old_text) - 1) THEN
        RAISE EXCEPTION 'patch state_history is append-only'
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER patch_history_append_only BEFORE UPDATE OF state_history
ON patch_ledger_entries
FOR EACH ROW EXECUTE FUNCTION uet_patch_history_append_only();

CREATE TABLE test_gates (
    gate_id       text COLLATE "C" PRIMARY KEY,
    gate_type     text COLLATE "C" NOT NULL CHECK (gate_type IN ('LINT', 'UNIT', 'INTEGRATION',
                                                                 'SECURITY')),
    name          text COLLATE "C" NOT NULL,
    phase_id      text COLLATE "C" NOT NULL,
    state         text COLLATE "C" NOT NULL DEFAULT 'PENDING' CHECK (state IN (
                      'PENDING', 'RUNNING', 'PASSED', 'FAILED', 'BLOCKED')),
    command       text COLLATE "C" NOT NULL,
    exit_code     bigint,
    stdout        text COLLATE "C",
    stderr        text COLLATE "C",
    duration_sec  double precision CHECK (duration_sec IS NULL OR duration_sec >= 0),
    started_at    uet_timestamp,
    completed_at  uet_timestamp,
    timeout_sec   double precision CHECK (timeout_sec IS NULL OR timeout_sec > 0),
    run_id        text COLLATE "C" REFERENCES runs (run_id) ON DELETE CASCADE,
    ledger_id     text COLLATE "C"
                      REFERENCES patch_ledger_entries (ledger_id) ON DELETE CASCADE,
    created_at    text COLLATE "C" NOT NULL,
    blocked_by    text COLLATE "C",
    CHECK (state NOT IN ('PASSED', 'FAILED') OR exit_code IS NOT NULL),
    CHECK ((state IN ('PASSED', 'FAILED')) = (completed_at IS NOT NULL))
);

CREATE INDEX idx_gates_scope ON test_gates (phase_id, run_id, ledger_id, name, created_at);
CREATE INDEX idx_gates_state ON test_gates (state, phase_id);
CREATE INDEX idx_gates_run ON test_gates (run_id) WHERE run_id IS NOT NULL;

CREATE TABLE gate_dependencies (
    gate_id     text COLLATE "C" NOT NULL REFERENCES test_gates (gate_id) ON DELETE CASCADE,
    depends_on  text COLLATE "C" NOT NULL,
    PRIMARY KEY (gate_id, depends_on)
);

CREATE INDEX idx_gate_dependencies_name ON gate_dependencies (depends_on);

-- 0001: the core ledger: runs, step attempts, the event trail, and the version record.
--
-- The three seed tables keep every column of the seed's original implementation, with its
-- meaning; this version adds the event sequence (`seq`, the total order and tailing cursor)
-- and the step attempt number, enforces foreign keys with ON DELETE CASCADE, checks JSON
-- columns, and indexes the queries the API runs.

CREATE TABLE schema_migrations (
    version     INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    applied_at  TEXT NOT NULL
);

CREATE TABLE runs (
    run_id                TEXT PRIMARY KEY NOT NULL,
    project_id            TEXT NOT NULL,
    phase_id              TEXT NOT NULL,
    workstream_id         TEXT,
    execution_request_id  TEXT,
    created_at            TEXT NOT NULL,
    started_at            TEXT,
    ended_at              TEXT,
    state                 TEXT NOT NULL DEFAULT 'pending' CHECK (state IN (
                              'pending', 'running', 'succeeded', 'failed',
                              'quarantined', 'canceled')),
    exit_code             INTEGER,
    error_message         TEXT,
    metadata              TEXT CHECK (metadata IS NULL OR json_valid(metadata))
);

CREATE TABLE step_attempts (
    step_attempt_id       TEXT PRIMARY KEY NOT NULL,
    run_id                TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    sequence              INTEGER NOT NULL,
    tool_id               TEXT NOT NULL,
    tool_run_id           TEXT,
    execution_request_id  TEXT,
    prompt_id             TEXT,
    started_at            TEXT NOT NULL,
    ended_at              TEXT,
    state                 TEXT NOT NULL DEFAULT 'running' CHECK (state IN (
                              'running', 'succeeded', 'failed', 'canceled')),
    exit_code             INTEGER,
    input_prompt          TEXT,
    output_patch_id       TEXT,
    error_log             TEXT,
    metadata              TEXT CHECK (metadata IS NULL OR json_valid(metadata)),
    -- which try of this sequence number: a retry is a new row with the same sequence
    attempt               INTEGER NOT NULL DEFAULT 1 CHECK (attempt >= 1)
);

CREATE TABLE run_events (
    event_id    TEXT PRIMARY KEY NOT NULL,
    -- nullable so that later run-independent streams (workers, patches, gates) can share
    -- the one ordered trail; the API requires it for run events
    run_id      TEXT REFERENCES runs (run_id) ON DELETE CASCADE,
    timestamp   TEXT NOT NULL,
    event_type  TEXT NOT NULL,
    data        TEXT CHECK (data IS NULL OR json_valid(data)),
    -- total order of the trail, assigned inside the writing transaction (writers are
    -- serialised by the write lock, so commit order is seq order and a follower reading
    -- `seq > cursor` never skips a row)
    seq         INTEGER NOT NULL
);

-- Highest event seq ever deleted, so that seq is never handed out twice even when the
-- newest events go away with their run (a follower's cursor may already be past them).
CREATE TABLE ledger_counters (
    name   TEXT PRIMARY KEY NOT NULL,
    value  INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO ledger_counters (name, value) VALUES ('deleted_event_seq', 0);

-- list_runs: newest first, filtered by project and/or state, without scanning the table
CREATE INDEX idx_runs_project ON runs (project_id, created_at, run_id);
CREATE INDEX idx_runs_state ON runs (state, created_at, run_id);
CREATE INDEX idx_runs_project_state ON runs (project_id, state, created_at, run_id);
CREATE INDEX idx_runs_created ON runs (created_at, run_id);
-- list_step_attempts: a run's attempts by sequence, then attempt number
CREATE UNIQUE INDEX idx_steps_run ON step_attempts (run_id, sequence, attempt);
-- list_events / events_since: a run's events in order, and the whole trail in order
CREATE INDEX idx_events_run ON run_events (run_id, seq);
CREATE UNIQUE INDEX idx_events_seq ON run_events (seq);

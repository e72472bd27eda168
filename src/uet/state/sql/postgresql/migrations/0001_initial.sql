-- 0001: the core ledger: runs, step attempts, the event trail, and the version record.
--
-- The PostgreSQL twin of sql/sqlite/migrations/0001_initial.sql: the same tables, columns,
-- meaning and indexes. Timestamps are text in the ledger's one format (so both backends
-- return the same strings and order them the same way), JSON columns are `json` (checked
-- by the server, kept byte for byte as written), and every text column compares by code
-- point (COLLATE "C"), as SQLite does, whatever the database's locale.

CREATE TABLE schema_migrations (
    version     integer PRIMARY KEY,
    name        text COLLATE "C" NOT NULL,
    applied_at  text COLLATE "C" NOT NULL
);

CREATE TABLE runs (
    run_id                text COLLATE "C" PRIMARY KEY,
    project_id            text COLLATE "C" NOT NULL,
    phase_id              text COLLATE "C" NOT NULL,
    workstream_id         text COLLATE "C",
    execution_request_id  text COLLATE "C",
    created_at            text COLLATE "C" NOT NULL,
    started_at            text COLLATE "C",
    ended_at              text COLLATE "C",
    state                 text COLLATE "C" NOT NULL DEFAULT 'pending' CHECK (state IN (
                              'pending', 'running', 'succeeded', 'failed',
                              'quarantined', 'canceled')),
    exit_code             bigint,
    error_message         text COLLATE "C",
    metadata              json
);

CREATE TABLE step_attempts (
    step_attempt_id       text COLLATE "C" PRIMARY KEY,
    run_id                text COLLATE "C" NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    sequence              bigint NOT NULL,
    tool_id               text COLLATE "C" NOT NULL,
    tool_run_id           text COLLATE "C",
    execution_request_id  text COLLATE "C",
    prompt_id             text COLLATE "C",
    started_at            text COLLATE "C" NOT NULL,
    ended_at              text COLLATE "C",
    state                 text COLLATE "C" NOT NULL DEFAULT 'running' CHECK (state IN (
                              'running', 'succeeded', 'failed', 'canceled')),
    exit_code             bigint,
    input_prompt          text COLLATE "C",
    output_patch_id       text COLLATE "C",
    error_log             text COLLATE "C",
    metadata              json,
    -- which try of this sequence number: a retry is a new row with the same sequence
    attempt               bigint NOT NULL DEFAULT 1 CHECK (attempt >= 1)
);

CREATE TABLE run_events (
    event_id    text COLLATE "C" PRIMARY KEY,
    -- nullable: run-independent records (workers, patches, gates) share the one trail
    run_id      text COLLATE "C" REFERENCES runs (run_id) ON DELETE CASCADE,
    timestamp   text COLLATE "C" NOT NULL,
    event_type  text COLLATE "C" NOT NULL,
    data        json,
    -- total order of the trail. Every writing transaction holds the ledger's write lock
    -- (a transaction-level advisory lock) from its start to its commit, so commit order is
    -- seq order and a follower reading `seq > cursor` never skips a row that commits late.
    seq         bigint NOT NULL
);

-- Highest event seq ever deleted, so that seq is never handed out twice.
CREATE TABLE ledger_counters (
    name   text COLLATE "C" PRIMARY KEY,
    value  bigint NOT NULL
);

INSERT INTO ledger_counters (name, value) VALUES ('deleted_event_seq', 0);

CREATE INDEX idx_runs_project ON runs (project_id, created_at, run_id);
CREATE INDEX idx_runs_state ON runs (state, created_at, run_id);
CREATE INDEX idx_runs_project_state ON runs (project_id, state, created_at, run_id);
CREATE INDEX idx_runs_created ON runs (created_at, run_id);
CREATE UNIQUE INDEX idx_steps_run ON step_attempts (run_id, sequence, attempt);
CREATE INDEX idx_events_run ON run_events (run_id, seq);
CREATE UNIQUE INDEX idx_events_seq ON run_events (seq);

-- Followers LISTEN on this channel (named after the trail's table, so that ledgers in
-- different schemas of one database do not wake each other); one notification per
-- committing transaction that wrote events, delivered at commit.
CREATE FUNCTION uet_notify_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('uet_events_' || TG_RELID::text, '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER run_events_notify AFTER INSERT ON run_events
FOR EACH STATEMENT EXECUTE FUNCTION uet_notify_events();

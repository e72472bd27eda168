-- 0003: the work queue, fencing of worker incarnations, and what each step attempt used.
--
-- The PostgreSQL twin of sql/sqlite/migrations/0003_queue_fencing_usage.sql.

ALTER TABLE workers ADD COLUMN incarnation text COLLATE "C";

CREATE OR REPLACE FUNCTION uet_workers_affinity_immutable() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.state != 'SPAWNING' AND NEW.affinity::text IS DISTINCT FROM OLD.affinity::text
       AND NOT (OLD.state = 'TERMINATED' AND NEW.state = 'SPAWNING'
                AND NEW.incarnation IS DISTINCT FROM OLD.incarnation) THEN
        RAISE EXCEPTION 'worker affinity cannot change after SPAWNING'
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END;
$$;

ALTER TABLE runs ADD COLUMN priority bigint;
ALTER TABLE runs ADD COLUMN recoveries bigint NOT NULL DEFAULT 0 CHECK (recoveries >= 0);
CREATE INDEX idx_runs_queue ON runs (priority DESC, created_at, run_id)
    WHERE state = 'pending' AND priority IS NOT NULL;

ALTER TABLE step_attempts ADD COLUMN task_id text COLLATE "C";
ALTER TABLE step_attempts ADD COLUMN model text COLLATE "C";
ALTER TABLE step_attempts ADD COLUMN input_tokens bigint
    CHECK (input_tokens IS NULL OR input_tokens >= 0);
ALTER TABLE step_attempts ADD COLUMN output_tokens bigint
    CHECK (output_tokens IS NULL OR output_tokens >= 0);
ALTER TABLE step_attempts ADD COLUMN cost_usd double precision
    CHECK (cost_usd IS NULL OR cost_usd >= 0);
CREATE INDEX idx_steps_started ON step_attempts (started_at);
-- `uet usage` without a filter: the attempts that reported usage, read from the index alone
CREATE INDEX idx_steps_usage
    ON step_attempts (tool_id, model, task_id, input_tokens, output_tokens, cost_usd)
    WHERE (model IS NOT NULL OR input_tokens IS NOT NULL OR output_tokens IS NOT NULL
           OR cost_usd IS NOT NULL);

-- 0003: the work queue of `uet submit` / `uet worker`, fencing of worker incarnations, and
-- what each step attempt used.
--
-- Runs gain a priority (set only on runs submitted to the queue: a NULL priority is a run
-- no worker pool takes) and the count of recoveries by the pool (re-queues after their
-- owner was lost, capped by the workstream's max_recoveries). Workers gain the incarnation
-- of the process that holds the id: a write that names another incarnation is refused,
-- and a TERMINATED id may be registered again by a new process (a respawn). Step attempts
-- gain the workstream task they belong to and the usage their tool reported.

ALTER TABLE workers ADD COLUMN incarnation TEXT;

-- affinity stays fixed once a worker leaves SPAWNING, except when a new incarnation
-- registers a TERMINATED id again (it starts over in SPAWNING, with its own affinity)
DROP TRIGGER workers_affinity_immutable;
CREATE TRIGGER workers_affinity_immutable BEFORE UPDATE OF affinity ON workers
WHEN OLD.state != 'SPAWNING' AND NEW.affinity IS NOT OLD.affinity
 AND NOT (OLD.state = 'TERMINATED' AND NEW.state = 'SPAWNING'
          AND NEW.incarnation IS NOT OLD.incarnation)
BEGIN
    SELECT RAISE(ABORT, 'worker affinity cannot change after SPAWNING');
END;

ALTER TABLE runs ADD COLUMN priority INTEGER
    CHECK (priority IS NULL OR typeof(priority) = 'integer');
ALTER TABLE runs ADD COLUMN recoveries INTEGER NOT NULL DEFAULT 0
    CHECK (typeof(recoveries) = 'integer' AND recoveries >= 0);
-- claiming: the highest priority first, then the oldest (FIFO within a priority)
CREATE INDEX idx_runs_queue ON runs (priority DESC, created_at, run_id)
    WHERE state = 'pending' AND priority IS NOT NULL;

ALTER TABLE step_attempts ADD COLUMN task_id TEXT;
ALTER TABLE step_attempts ADD COLUMN model TEXT;
ALTER TABLE step_attempts ADD COLUMN input_tokens INTEGER
    CHECK (input_tokens IS NULL OR (typeof(input_tokens) = 'integer' AND input_tokens >= 0));
ALTER TABLE step_attempts ADD COLUMN output_tokens INTEGER
    CHECK (output_tokens IS NULL OR (typeof(output_tokens) = 'integer' AND output_tokens >= 0));
ALTER TABLE step_attempts ADD COLUMN cost_usd REAL
    CHECK (cost_usd IS NULL OR (typeof(cost_usd) = 'real' AND cost_usd >= 0));
-- `uet usage --since`: the attempts started in a window, without scanning the table
CREATE INDEX idx_steps_started ON step_attempts (started_at);
-- `uet usage` without a filter: the attempts that reported usage, read from the index alone
CREATE INDEX idx_steps_usage
    ON step_attempts (tool_id, model, task_id, input_tokens, output_tokens, cost_usd)
    WHERE (model IS NOT NULL OR input_tokens IS NOT NULL OR output_tokens IS NOT NULL
           OR cost_usd IS NOT NULL);

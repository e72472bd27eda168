-- Every fixed statement the SQLite backend runs, by name. Loaded once at import.
-- Statements whose column lists vary (updates, list filters) are assembled in Python from
-- the fixed column whitelists in uet/state/records.py, never from caller input.

-- name: insert_run
INSERT INTO runs (run_id, project_id, phase_id, workstream_id, execution_request_id,
                  created_at, started_at, ended_at, state, exit_code, error_message, metadata)
VALUES (:run_id, :project_id, :phase_id, :workstream_id, :execution_request_id,
        :created_at, :started_at, :ended_at, :state, :exit_code, :error_message, :metadata);

-- name: get_run
SELECT * FROM runs WHERE run_id = ?;

-- name: delete_run_floor
UPDATE ledger_counters
   SET value = max(value, coalesce((SELECT max(seq) FROM run_events WHERE run_id = ?), 0))
 WHERE name = 'deleted_event_seq';

-- name: delete_run
DELETE FROM runs WHERE run_id = ?;

-- name: insert_step_attempt
INSERT INTO step_attempts (step_attempt_id, run_id, sequence, tool_id, tool_run_id,
                           execution_request_id, prompt_id, started_at, ended_at, state,
                           exit_code, input_prompt, output_patch_id, error_log, metadata,
                           attempt)
VALUES (:step_attempt_id, :run_id, :sequence, :tool_id, :tool_run_id,
        :execution_request_id, :prompt_id, :started_at, :ended_at, :state,
        :exit_code, :input_prompt, :output_patch_id, :error_log, :metadata,
        coalesce(:attempt, (SELECT coalesce(max(attempt), 0) + 1 FROM step_attempts
                             WHERE run_id = :run_id AND sequence = :sequence)))
RETURNING attempt;

-- name: get_step_attempt
SELECT * FROM step_attempts WHERE step_attempt_id = ?;

-- name: list_step_attempts
SELECT * FROM step_attempts WHERE run_id = ? ORDER BY sequence, attempt;

-- name: insert_event
INSERT INTO run_events (event_id, run_id, timestamp, event_type, data, seq)
VALUES (:event_id, :run_id, :timestamp, :event_type, :data,
        1 + max(coalesce((SELECT max(seq) FROM run_events), 0),
                (SELECT value FROM ledger_counters WHERE name = 'deleted_event_seq')));

-- name: list_events
SELECT * FROM run_events WHERE run_id = ? ORDER BY seq;

-- name: events_since
SELECT * FROM run_events WHERE seq > ? ORDER BY seq LIMIT ?;

-- name: events_since_run
SELECT * FROM run_events WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?;

-- name: last_event_seq
SELECT coalesce(max(seq), 0) FROM run_events;

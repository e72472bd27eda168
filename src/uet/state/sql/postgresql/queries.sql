-- Every fixed statement the PostgreSQL backend runs, by name (the same names and meaning as
-- sql/sqlite/queries.sql, in psycopg's parameter style). Loaded once at import.
-- Statements whose column lists vary (updates, list filters) are assembled in Python from
-- the fixed column whitelists in uet/state/records.py, never from caller input.

-- name: insert_run
INSERT INTO runs (run_id, project_id, phase_id, workstream_id, execution_request_id,
                  created_at, started_at, ended_at, state, exit_code, error_message, metadata)
VALUES (%(run_id)s, %(project_id)s, %(phase_id)s, %(workstream_id)s, %(execution_request_id)s,
        %(created_at)s, %(started_at)s, %(ended_at)s, %(state)s, %(exit_code)s, %(error_message)s, %(metadata)s);

-- name: get_run
SELECT * FROM runs WHERE run_id = %s;

-- name: delete_run_floor
UPDATE ledger_counters
   SET value = GREATEST(value, coalesce((SELECT max(seq) FROM run_events WHERE run_id = %s), 0))
 WHERE name = 'deleted_event_seq';

-- name: delete_run
DELETE FROM runs WHERE run_id = %s;

-- name: insert_step_attempt
INSERT INTO step_attempts (step_attempt_id, run_id, sequence, tool_id, tool_run_id,
                           execution_request_id, prompt_id, started_at, ended_at, state,
                           exit_code, input_prompt, output_patch_id, error_log, metadata,
                           attempt, worker_id)
VALUES (%(step_attempt_id)s, %(run_id)s, %(sequence)s, %(tool_id)s, %(tool_run_id)s,
        %(execution_request_id)s, %(prompt_id)s, %(started_at)s, %(ended_at)s, %(state)s,
        %(exit_code)s, %(input_prompt)s, %(output_patch_id)s, %(error_log)s, %(metadata)s,
        coalesce(%(attempt)s, (SELECT coalesce(max(attempt), 0) + 1 FROM step_attempts
                             WHERE run_id = %(run_id)s AND sequence = %(sequence)s)),
        coalesce(%(worker_id)s, (SELECT worker_id FROM runs WHERE run_id = %(run_id)s)))
RETURNING attempt;

-- name: get_step_attempt
SELECT * FROM step_attempts WHERE step_attempt_id = %s;

-- name: list_step_attempts
SELECT * FROM step_attempts WHERE run_id = %s ORDER BY sequence, attempt;

-- name: insert_event
INSERT INTO run_events (event_id, run_id, timestamp, event_type, data, seq)
VALUES (%(event_id)s, %(run_id)s, %(timestamp)s, %(event_type)s, %(data)s,
        1 + GREATEST(coalesce((SELECT max(seq) FROM run_events), 0),
                     (SELECT value FROM ledger_counters WHERE name = 'deleted_event_seq')));

-- name: list_events
SELECT * FROM run_events WHERE run_id = %s ORDER BY seq;

-- name: events_since
SELECT * FROM run_events WHERE seq > %s ORDER BY seq LIMIT %s;

-- name: events_since_run
SELECT * FROM run_events WHERE run_id = %s AND seq > %s ORDER BY seq LIMIT %s;

-- name: insert_worker
INSERT INTO workers (worker_id, worker_type, state, affinity, created_at)
VALUES (%s, %s, 'SPAWNING', %s, %s)
RETURNING *;

-- name: get_worker
SELECT * FROM workers WHERE worker_id = %s;

-- name: workers_by_state
SELECT * FROM workers WHERE state = %s ORDER BY created_at, worker_id;

-- name: idle_workers
SELECT * FROM workers WHERE state = 'IDLE' ORDER BY created_at, worker_id;

-- name: idle_workers_of_type
SELECT * FROM workers WHERE state = 'IDLE' AND worker_type = %s ORDER BY created_at, worker_id;

-- name: set_worker_state
UPDATE workers SET state = %(state)s, terminated_at = %(terminated_at)s,
                   current_run_id = %(current_run_id)s,
                   last_heartbeat = coalesce(%(heartbeat)s, last_heartbeat)
 WHERE worker_id = %(worker_id)s
RETURNING *;

-- name: heartbeat
UPDATE workers SET last_heartbeat = %s WHERE worker_id = %s AND state != 'TERMINATED'
RETURNING worker_id;

-- name: stale_workers
-- DRAINING workers still hold work and heartbeat like BUSY ones
SELECT * FROM workers
 WHERE state IN ('IDLE', 'BUSY', 'DRAINING') AND coalesce(last_heartbeat, created_at) < %s
 ORDER BY created_at, worker_id;

-- name: oldest_pending_run
-- a run another claimer has locked is passed over, not waited for
SELECT run_id FROM runs WHERE state = 'pending' ORDER BY created_at, run_id LIMIT 1
   FOR NO KEY UPDATE SKIP LOCKED;

-- name: running_runs_of_worker
SELECT run_id FROM runs WHERE worker_id = %s AND state = 'running' ORDER BY run_id;

-- name: running_steps_of_worker
SELECT step_attempt_id FROM step_attempts
 WHERE state = 'running'
   AND (worker_id = %(worker_id)s
        OR run_id IN (SELECT run_id FROM runs WHERE worker_id = %(worker_id)s))
 ORDER BY step_attempt_id;

-- name: insert_patch
INSERT INTO patches (patch_id, diff, sha256, files, size_bytes, run_id, step_attempt_id,
                     created_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
RETURNING *;

-- name: find_patch
SELECT * FROM patches
 WHERE coalesce(run_id, '') = coalesce(%s, '') AND coalesce(step_attempt_id, '') = coalesce(%s, '')
   AND sha256 = %s;

-- name: get_patch
SELECT * FROM patches WHERE patch_id = %s;

-- name: insert_patch_entry
INSERT INTO patch_ledger_entries (ledger_id, patch_id, state, phase_id, workstream_id,
                                  state_history, created_at, updated_at)
VALUES (%s, %s, 'created', %s, %s, %s, %s, %s)
RETURNING *;

-- name: get_patch_entry
SELECT e.*, p.run_id AS patch_run_id
  FROM patch_ledger_entries AS e JOIN patches AS p ON p.patch_id = e.patch_id
 WHERE e.ledger_id = %s;

-- name: update_patch_entry
UPDATE patch_ledger_entries
   SET state = %(state)s,
       -- appended as text, so the stored history is a byte-for-byte prefix of the new one
       state_history = (substr(state_history::text, 1, length(state_history::text) - 1)
                        || ', ' || %(history_item)s || ']')::json,
       quarantine_reason = coalesce(%(quarantine_reason)s, quarantine_reason),
       updated_at = GREATEST(%(now)s, updated_at),
       version = version + 1
 WHERE ledger_id = %(ledger_id)s AND version = %(version)s
RETURNING *;

-- name: set_patch_validation
UPDATE patch_ledger_entries
   SET validated_format = coalesce(%(format)s, validated_format),
       validated_scope = coalesce(%(scope)s, validated_scope),
       validated_constraints = coalesce(%(constraints)s, validated_constraints),
       validated_tests = coalesce(%(tests)s, validated_tests),
       updated_at = GREATEST(%(now)s, updated_at),
       version = version + 1
 WHERE ledger_id = %(ledger_id)s
RETURNING *;

-- name: patch_entries_by_state
SELECT * FROM patch_ledger_entries WHERE state = %s ORDER BY created_at, ledger_id;

-- name: patch_entries_by_state_and_phase
SELECT * FROM patch_ledger_entries WHERE state = %s AND phase_id = %s
 ORDER BY created_at, ledger_id;

-- name: history_of_run
SELECT p.patch_id, p.sha256, p.files, p.size_bytes, p.created_at AS recorded_at,
       p.step_attempt_id, s.sequence, s.attempt, s.tool_id, s.state AS step_state,
       e.ledger_id, e.state AS entry_state, e.phase_id, e.workstream_id, e.updated_at
  FROM patches AS p
  LEFT JOIN step_attempts AS s ON s.step_attempt_id = p.step_attempt_id
  LEFT JOIN patch_ledger_entries AS e ON e.patch_id = p.patch_id
 WHERE p.run_id = %s
 ORDER BY p.created_at, p.patch_id, e.created_at, e.ledger_id;

-- name: insert_gate
INSERT INTO test_gates (gate_id, gate_type, name, phase_id, state, command, timeout_sec,
                        run_id, ledger_id, created_at)
VALUES (%s, %s, %s, %s, 'PENDING', %s, %s, %s, %s, %s)
RETURNING *;

-- name: insert_gate_dependency
INSERT INTO gate_dependencies (gate_id, depends_on) VALUES (%s, %s);

-- name: get_gate
SELECT * FROM test_gates WHERE gate_id = %s;

-- name: gate_dependencies
SELECT depends_on FROM gate_dependencies WHERE gate_id = %s ORDER BY depends_on;

-- name: scope_dependency_edges
SELECT DISTINCT g.name, d.depends_on
  FROM test_gates AS g JOIN gate_dependencies AS d ON d.gate_id = g.gate_id
 WHERE g.phase_id = %(phase_id)s AND g.run_id IS NOT DISTINCT FROM %(run_id)s AND g.ledger_id IS NOT DISTINCT FROM %(ledger_id)s;

-- name: latest_gate_named
SELECT * FROM test_gates
 WHERE phase_id = %(phase_id)s AND run_id IS NOT DISTINCT FROM %(run_id)s AND ledger_id IS NOT DISTINCT FROM %(ledger_id)s AND name = %(name)s
 ORDER BY created_at DESC, gate_id DESC LIMIT 1;

-- name: open_dependents
SELECT g.* FROM test_gates AS g JOIN gate_dependencies AS d ON d.gate_id = g.gate_id
 WHERE d.depends_on = %(name)s AND g.state IN ('PENDING', 'RUNNING')
   AND g.phase_id = %(phase_id)s AND g.run_id IS NOT DISTINCT FROM %(run_id)s AND g.ledger_id IS NOT DISTINCT FROM %(ledger_id)s
 ORDER BY g.created_at, g.gate_id;

-- name: gates_blocked_by
SELECT * FROM test_gates
 WHERE state = 'BLOCKED' AND blocked_by = %(name)s
   AND phase_id = %(phase_id)s AND run_id IS NOT DISTINCT FROM %(run_id)s AND ledger_id IS NOT DISTINCT FROM %(ledger_id)s
 ORDER BY created_at, gate_id;

-- name: set_gate_state
UPDATE test_gates
   SET state = %(state)s, exit_code = coalesce(%(exit_code)s, exit_code),
       stdout = coalesce(%(stdout)s, stdout), stderr = coalesce(%(stderr)s, stderr),
       started_at = coalesce(%(started_at)s, started_at),
       completed_at = coalesce(%(completed_at)s, completed_at),
       duration_sec = coalesce(%(duration_sec)s, duration_sec),
       blocked_by = %(blocked_by)s
 WHERE gate_id = %(gate_id)s
RETURNING *;

-- name: running_gates_with_timeout
SELECT * FROM test_gates WHERE state = 'RUNNING' AND timeout_sec IS NOT NULL
 ORDER BY started_at, gate_id;

-- name: set_gate_blocked_by
UPDATE test_gates SET blocked_by = %s WHERE gate_id = %s;

-- name: run_ids_with_prefix
SELECT run_id FROM runs WHERE run_id >= %s AND run_id < %s ORDER BY run_id LIMIT 11;

-- name: all_workers
SELECT * FROM workers ORDER BY created_at, worker_id;

-- name: all_patch_entries
SELECT * FROM patch_ledger_entries ORDER BY created_at, ledger_id;

-- name: patch_entries_by_phase
SELECT * FROM patch_ledger_entries WHERE phase_id = %s ORDER BY created_at, ledger_id;

-- name: gates_with_dependencies
-- list_gates adds WHERE and ORDER BY in place of the ';' (column names from a whitelist)
SELECT g.*, (SELECT coalesce(json_agg(depends_on), '[]') FROM gate_dependencies AS d
              WHERE d.gate_id = g.gate_id) AS depends_on
  FROM test_gates AS g;

-- Reads that a compare-and-set decides on: the row stays locked until the transaction ends
-- (FOR NO KEY UPDATE still lets other transactions insert rows that refer to it).

-- name: lock_run
SELECT * FROM runs WHERE run_id = %s FOR NO KEY UPDATE;

-- name: lock_step_attempt
SELECT * FROM step_attempts WHERE step_attempt_id = %s FOR NO KEY UPDATE;

-- name: lock_worker
SELECT * FROM workers WHERE worker_id = %s FOR NO KEY UPDATE;

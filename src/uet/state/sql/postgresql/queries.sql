-- PostgreSQL's own text of the named queries whose dialects differ; every other query is the
-- shared one of sql/queries.sql. Written in the same parameter style (? and :name) and turned
-- into psycopg's (%s and %(name)s) on loading, once at import. '-- name: x' must name a query
-- of sql/queries.sql ('-- name: x (this engine only)' one that exists on PostgreSQL alone).

-- GREATEST: max() is an aggregate only here (SQLite's two-argument max is scalar).

-- name: delete_run_floor
UPDATE ledger_counters
   SET value = GREATEST(value, coalesce((SELECT max(seq) FROM run_events WHERE run_id = ?), 0))
 WHERE name = 'deleted_event_seq';

-- name: insert_event
-- seq from the ledger's sequence, marked in flight until the transaction ends (0004)
INSERT INTO run_events (event_id, run_id, timestamp, event_type, data, seq)
VALUES (:event_id, :run_id, :timestamp, :event_type, :data, uet_next_event_seq());

-- name: events_since
-- only up to the horizon: no event that commits late is ever passed (0004)
SELECT * FROM uet_events_since(NULL, ?, ?);

-- name: events_since_run
SELECT * FROM uet_events_since(?, ?, ?);

-- name: latest_event_seq
SELECT uet_event_horizon() AS seq;

-- Also GREATEST; state_history is a json column, so the text it is appended to is cast from
-- and back to json.

-- name: update_patch_entry
UPDATE patch_ledger_entries
   SET state = :state,
       -- appended as text, so the stored history is a byte-for-byte prefix of the new one
       state_history = (substr(state_history::text, 1, length(state_history::text) - 1)
                        || ', ' || :history_item || ']')::json,
       quarantine_reason = coalesce(:quarantine_reason, quarantine_reason),
       updated_at = GREATEST(:now, updated_at),
       version = version + 1
 WHERE ledger_id = :ledger_id AND version = :version
RETURNING *;

-- name: set_patch_validation
UPDATE patch_ledger_entries
   SET validated_format = coalesce(:format, validated_format),
       validated_scope = coalesce(:scope, validated_scope),
       validated_constraints = coalesce(:constraints, validated_constraints),
       validated_tests = coalesce(:tests, validated_tests),
       updated_at = GREATEST(:now, updated_at),
       version = version + 1
 WHERE ledger_id = :ledger_id
RETURNING *;

-- A gate's scope may have no run or no ledger entry: IS NOT DISTINCT FROM is the equality
-- that holds for two NULLs (SQLite's `IS`; here IS takes only NULL, TRUE or FALSE).

-- name: scope_dependency_edges
SELECT DISTINCT g.name, d.depends_on
  FROM test_gates AS g JOIN gate_dependencies AS d ON d.gate_id = g.gate_id
 WHERE g.phase_id = :phase_id AND g.run_id IS NOT DISTINCT FROM :run_id
   AND g.ledger_id IS NOT DISTINCT FROM :ledger_id;

-- name: latest_gate_named
SELECT * FROM test_gates
 WHERE phase_id = :phase_id AND run_id IS NOT DISTINCT FROM :run_id
   AND ledger_id IS NOT DISTINCT FROM :ledger_id AND name = :name
 ORDER BY created_at DESC, gate_id DESC LIMIT 1;

-- name: open_dependents
SELECT g.* FROM test_gates AS g JOIN gate_dependencies AS d ON d.gate_id = g.gate_id
 WHERE d.depends_on = :name AND g.state IN ('PENDING', 'RUNNING')
   AND g.phase_id = :phase_id AND g.run_id IS NOT DISTINCT FROM :run_id
   AND g.ledger_id IS NOT DISTINCT FROM :ledger_id
 ORDER BY g.created_at, g.gate_id;

-- name: gates_blocked_by
SELECT * FROM test_gates
 WHERE state = 'BLOCKED' AND blocked_by = :name
   AND phase_id = :phase_id AND run_id IS NOT DISTINCT FROM :run_id
   AND ledger_id IS NOT DISTINCT FROM :ledger_id
 ORDER BY created_at, gate_id;

-- json_agg is PostgreSQL's JSON aggregate; it gives NULL for no rows, hence the '[]'.

-- name: gates_with_dependencies
-- list_gates adds WHERE and ORDER BY in place of the ';' (column names from a whitelist)
SELECT g.*, (SELECT coalesce(json_agg(depends_on), '[]') FROM gate_dependencies AS d
              WHERE d.gate_id = g.gate_id) AS depends_on
  FROM test_gates AS g;

-- Claimers run at once on many machines here (SQLite's writer holds the whole database).

-- name: next_queued_run
-- a run another claimer has locked is passed over, not waited for
SELECT run_id FROM runs WHERE state = 'pending' AND priority IS NOT NULL
 ORDER BY priority DESC, created_at, run_id LIMIT 1
   FOR NO KEY UPDATE SKIP LOCKED;

-- name: oldest_pending_run
-- a run another claimer has locked is passed over, not waited for
SELECT run_id FROM runs WHERE state = 'pending' ORDER BY created_at, run_id LIMIT 1
   FOR NO KEY UPDATE SKIP LOCKED;

-- Reads that a compare-and-set decides on: the row stays locked until the transaction ends
-- (FOR NO KEY UPDATE still lets other transactions insert rows that refer to it). SQLite's
-- transaction already holds the write lock, so its text is the shared plain read.

-- name: lock_run
SELECT * FROM runs WHERE run_id = ? FOR NO KEY UPDATE;

-- name: lock_patch_entry
SELECT e.*, p.run_id AS patch_run_id
  FROM patch_ledger_entries AS e JOIN patches AS p ON p.patch_id = e.patch_id
 WHERE e.ledger_id = ?
   FOR NO KEY UPDATE OF e;

-- name: lock_gate
SELECT * FROM test_gates WHERE gate_id = ? FOR NO KEY UPDATE;

-- name: lock_step_attempt
SELECT * FROM step_attempts WHERE step_attempt_id = ? FOR NO KEY UPDATE;

-- name: lock_worker
SELECT * FROM workers WHERE worker_id = ? FOR NO KEY UPDATE;

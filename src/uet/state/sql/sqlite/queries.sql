-- SQLite's own text of the named queries whose dialects differ; every other query is the
-- shared one of sql/queries.sql. Same parameter style (? and :name); loaded once at import.
-- '-- name: x' must name a query of sql/queries.sql ('-- name: x (this engine only)' one that
-- exists on SQLite alone).

-- max() with two or more arguments is SQLite's scalar maximum (PostgreSQL: GREATEST).

-- name: delete_run_floor
UPDATE ledger_counters
   SET value = max(value, coalesce((SELECT max(seq) FROM run_events WHERE run_id = ?), 0))
 WHERE name = 'deleted_event_seq';

-- name: insert_event
INSERT INTO run_events (event_id, run_id, timestamp, event_type, data, seq)
VALUES (:event_id, :run_id, :timestamp, :event_type, :data,
        1 + max(coalesce((SELECT max(seq) FROM run_events), 0),
                (SELECT value FROM ledger_counters WHERE name = 'deleted_event_seq')));

-- state_history is stored as text, so no cast back to JSON (PostgreSQL's is a json column)

-- name: update_patch_entry
UPDATE patch_ledger_entries
   SET state = :state,
       -- appended as text, so the stored history is a byte-for-byte prefix of the new one
       state_history = substr(state_history, 1, length(state_history) - 1)
                       || ', ' || :history_item || ']',
       quarantine_reason = coalesce(:quarantine_reason, quarantine_reason),
       updated_at = max(:now, updated_at),
       version = version + 1
 WHERE ledger_id = :ledger_id AND version = :version
RETURNING *;

-- name: set_patch_validation
UPDATE patch_ledger_entries
   SET validated_format = coalesce(:format, validated_format),
       validated_scope = coalesce(:scope, validated_scope),
       validated_constraints = coalesce(:constraints, validated_constraints),
       validated_tests = coalesce(:tests, validated_tests),
       updated_at = max(:now, updated_at),
       version = version + 1
 WHERE ledger_id = :ledger_id
RETURNING *;

-- A gate's scope may have no run or no ledger entry: `IS` is SQLite's equality that holds
-- for two NULLs (PostgreSQL's IS takes only NULL, TRUE or FALSE on its right).

-- name: scope_dependency_edges
SELECT DISTINCT g.name, d.depends_on
  FROM test_gates AS g JOIN gate_dependencies AS d ON d.gate_id = g.gate_id
 WHERE g.phase_id = :phase_id AND g.run_id IS :run_id AND g.ledger_id IS :ledger_id;

-- name: latest_gate_named
SELECT * FROM test_gates
 WHERE phase_id = :phase_id AND run_id IS :run_id AND ledger_id IS :ledger_id AND name = :name
 ORDER BY created_at DESC, gate_id DESC LIMIT 1;

-- name: open_dependents
SELECT g.* FROM test_gates AS g JOIN gate_dependencies AS d ON d.gate_id = g.gate_id
 WHERE d.depends_on = :name AND g.state IN ('PENDING', 'RUNNING')
   AND g.phase_id = :phase_id AND g.run_id IS :run_id AND g.ledger_id IS :ledger_id
 ORDER BY g.created_at, g.gate_id;

-- name: gates_blocked_by
SELECT * FROM test_gates
 WHERE state = 'BLOCKED' AND blocked_by = :name
   AND phase_id = :phase_id AND run_id IS :run_id AND ledger_id IS :ledger_id
 ORDER BY created_at, gate_id;

-- json_group_array is SQLite's JSON aggregate; it gives '[]' for no rows by itself.

-- name: gates_with_dependencies
-- list_gates adds WHERE and ORDER BY in place of the ';' (column names from a whitelist)
SELECT g.*, (SELECT json_group_array(depends_on) FROM gate_dependencies AS d
              WHERE d.gate_id = g.gate_id) AS depends_on
  FROM test_gates AS g;

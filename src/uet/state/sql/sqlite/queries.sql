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

-- Export, import and backup (uet.state.portable).

-- name: export_gates
SELECT g.gate_id, g.gate_type, g.name, g.phase_id, g.state, g.command, g.exit_code,
       g.stdout, g.stderr, g.duration_sec, g.started_at, g.completed_at, g.timeout_sec,
       g.run_id, g.ledger_id, g.created_at, g.blocked_by,
       (SELECT json_group_array(d.depends_on) FROM gate_dependencies AS d
         WHERE d.gate_id = g.gate_id) AS depends_on
  FROM test_gates AS g
  LEFT JOIN patch_ledger_entries AS e ON e.ledger_id = g.ledger_id
  LEFT JOIN patches AS p ON p.patch_id = e.patch_id
  LEFT JOIN runs AS r ON r.run_id = coalesce(g.run_id, p.run_id)
 WHERE g.gate_id >= :after
   AND CASE WHEN coalesce(g.run_id, p.run_id) IS NULL THEN CAST(:everything AS INTEGER) = 1
            ELSE (CAST(:project AS TEXT) IS NULL OR r.project_id = :project)
                 AND (CAST(:since AS TEXT) IS NULL OR r.created_at >= :since) END
 ORDER BY g.gate_id LIMIT :limit;

-- name: event_seq_high_water
SELECT max(coalesce((SELECT max(seq) FROM run_events), 0),
           (SELECT value FROM ledger_counters WHERE name = 'deleted_event_seq')) AS seq;

-- The write transaction holds the file's write lock: no other writer hands out a seq until
-- it ends, and the next seq is 1 + the highest stored or deleted one, so there is nothing to
-- lock or reserve beyond it (each statement only returns what it was given).

-- name: lock_event_seqs
SELECT 1 AS locked;

-- name: reserve_event_seqs
SELECT ? AS seq;

-- name: raise_deleted_event_seq
UPDATE ledger_counters SET value = max(value, ?) WHERE name = 'deleted_event_seq';

-- json_each: the elements of a JSON array, as rows.

-- name: existing_workers
SELECT worker_id AS id FROM workers WHERE worker_id IN (SELECT value FROM json_each(?));

-- name: existing_runs
SELECT run_id AS id FROM runs WHERE run_id IN (SELECT value FROM json_each(?));

-- name: existing_step_attempts
SELECT step_attempt_id AS id FROM step_attempts
 WHERE step_attempt_id IN (SELECT value FROM json_each(?));

-- name: existing_patches
SELECT patch_id AS id FROM patches WHERE patch_id IN (SELECT value FROM json_each(?));

-- name: existing_patch_entries
SELECT ledger_id AS id FROM patch_ledger_entries
 WHERE ledger_id IN (SELECT value FROM json_each(?));

-- name: existing_gates
SELECT gate_id AS id FROM test_gates WHERE gate_id IN (SELECT value FROM json_each(?));

-- name: existing_events
SELECT event_id AS id FROM run_events WHERE event_id IN (SELECT value FROM json_each(?));

-- ----------------------------------------------------------------------------------------
-- Retention (uet/state/retention.py): :run_ids is a JSON array of run ids, read as a set
-- with json_each (PostgreSQL: json_array_elements_text). The batch's write transaction
-- holds the write lock, so gc_lock_runs is the plain read. The sets of what belongs to a
-- run follow the foreign keys that cascade from it: its step attempts, events, patches (by
-- run or by step attempt), their ledger entries, gates (by run or by entry) and their
-- dependencies. Each DELETE begins with DELETE (its WITH inside the IN): Python's driver
-- reports the rows a statement deleted only when it begins so.

-- name: gc_select_runs
SELECT run_id FROM runs
 WHERE run_id IN (SELECT value FROM json_each(:run_ids))
   AND state IN (SELECT value FROM json_each(:states))
   AND created_at < :cutoff AND coalesce(ended_at, created_at) < :cutoff
   AND (:project_id IS NULL OR project_id = :project_id)
   AND NOT EXISTS (SELECT 1 FROM workers AS w WHERE w.current_run_id = runs.run_id)
 ORDER BY run_id;

-- name: gc_lock_runs
SELECT run_id FROM runs
 WHERE run_id IN (SELECT value FROM json_each(:run_ids))
   AND state IN (SELECT value FROM json_each(:states))
   AND created_at < :cutoff AND coalesce(ended_at, created_at) < :cutoff
   AND (:project_id IS NULL OR project_id = :project_id)
   AND NOT EXISTS (SELECT 1 FROM workers AS w WHERE w.current_run_id = runs.run_id)
 ORDER BY run_id;

-- name: gc_count_records
WITH batch (run_id) AS (SELECT value FROM json_each(:run_ids)),
     steps (step_attempt_id) AS (
         SELECT step_attempt_id FROM step_attempts WHERE run_id IN (SELECT run_id FROM batch)),
     doomed_patches (patch_id) AS (
         SELECT patch_id FROM patches WHERE run_id IN (SELECT run_id FROM batch)
         UNION
         SELECT patch_id FROM patches
          WHERE step_attempt_id IN (SELECT step_attempt_id FROM steps)),
     entries (ledger_id) AS (
         SELECT ledger_id FROM patch_ledger_entries
          WHERE patch_id IN (SELECT patch_id FROM doomed_patches)),
     gates (gate_id) AS (
         SELECT gate_id FROM test_gates WHERE run_id IN (SELECT run_id FROM batch)
         UNION
         SELECT gate_id FROM test_gates WHERE ledger_id IN (SELECT ledger_id FROM entries))
SELECT (SELECT count(*) FROM batch) AS runs,
       (SELECT count(*) FROM steps) AS step_attempts,
       (SELECT count(*) FROM run_events
         WHERE run_id IN (SELECT run_id FROM batch)) AS run_events,
       (SELECT count(*) FROM doomed_patches) AS patches,
       (SELECT count(*) FROM entries) AS patch_ledger_entries,
       (SELECT count(*) FROM gates) AS test_gates,
       (SELECT count(*) FROM gate_dependencies
         WHERE gate_id IN (SELECT gate_id FROM gates)) AS gate_dependencies;

-- name: gc_raise_deleted_seq
UPDATE ledger_counters
   SET value = max(value, coalesce((SELECT max(seq) FROM run_events
                                     WHERE run_id IN (SELECT value FROM json_each(:run_ids))),
                                   0))
 WHERE name = 'deleted_event_seq';

-- name: gc_delete_gate_dependencies
DELETE FROM gate_dependencies
 WHERE gate_id IN (
     WITH batch (run_id) AS (SELECT value FROM json_each(:run_ids)),
          doomed_patches (patch_id) AS (
              SELECT patch_id FROM patches WHERE run_id IN (SELECT run_id FROM batch)
              UNION
              SELECT patch_id FROM patches
               WHERE step_attempt_id IN (SELECT step_attempt_id FROM step_attempts
                                          WHERE run_id IN (SELECT run_id FROM batch))),
          gates (gate_id) AS (
              SELECT gate_id FROM test_gates WHERE run_id IN (SELECT run_id FROM batch)
              UNION
              SELECT gate_id FROM test_gates
               WHERE ledger_id IN (SELECT ledger_id FROM patch_ledger_entries
                                    WHERE patch_id IN (SELECT patch_id FROM doomed_patches)))
     SELECT gate_id FROM gates);

-- name: gc_delete_gates
DELETE FROM test_gates
 WHERE gate_id IN (
     WITH batch (run_id) AS (SELECT value FROM json_each(:run_ids)),
          doomed_patches (patch_id) AS (
              SELECT patch_id FROM patches WHERE run_id IN (SELECT run_id FROM batch)
              UNION
              SELECT patch_id FROM patches
               WHERE step_attempt_id IN (SELECT step_attempt_id FROM step_attempts
                                          WHERE run_id IN (SELECT run_id FROM batch))),
          gates (gate_id) AS (
              SELECT gate_id FROM test_gates WHERE run_id IN (SELECT run_id FROM batch)
              UNION
              SELECT gate_id FROM test_gates
               WHERE ledger_id IN (SELECT ledger_id FROM patch_ledger_entries
                                    WHERE patch_id IN (SELECT patch_id FROM doomed_patches)))
     SELECT gate_id FROM gates);

-- name: gc_delete_patch_entries
DELETE FROM patch_ledger_entries
 WHERE patch_id IN (
     WITH batch (run_id) AS (SELECT value FROM json_each(:run_ids)),
          doomed_patches (patch_id) AS (
              SELECT patch_id FROM patches WHERE run_id IN (SELECT run_id FROM batch)
              UNION
              SELECT patch_id FROM patches
               WHERE step_attempt_id IN (SELECT step_attempt_id FROM step_attempts
                                          WHERE run_id IN (SELECT run_id FROM batch)))
     SELECT patch_id FROM doomed_patches);

-- name: gc_delete_patches
DELETE FROM patches
 WHERE patch_id IN (
     WITH batch (run_id) AS (SELECT value FROM json_each(:run_ids)),
          doomed_patches (patch_id) AS (
              SELECT patch_id FROM patches WHERE run_id IN (SELECT run_id FROM batch)
              UNION
              SELECT patch_id FROM patches
               WHERE step_attempt_id IN (SELECT step_attempt_id FROM step_attempts
                                          WHERE run_id IN (SELECT run_id FROM batch)))
     SELECT patch_id FROM doomed_patches);

-- name: gc_delete_events
DELETE FROM run_events WHERE run_id IN (SELECT value FROM json_each(:run_ids));

-- name: gc_delete_steps
DELETE FROM step_attempts WHERE run_id IN (SELECT value FROM json_each(:run_ids));

-- name: gc_delete_runs
DELETE FROM runs WHERE run_id IN (SELECT value FROM json_each(:run_ids));

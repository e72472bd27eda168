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

-- Export, import and backup (uet.state.portable).

-- name: export_gates
SELECT g.gate_id, g.gate_type, g.name, g.phase_id, g.state, g.command, g.exit_code,
       g.stdout, g.stderr, g.duration_sec, g.started_at, g.completed_at, g.timeout_sec,
       g.run_id, g.ledger_id, g.created_at, g.blocked_by,
       (SELECT coalesce(json_agg(d.depends_on), '[]') FROM gate_dependencies AS d
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

-- The sequence hands out seqs (0004): the highest ever handed out is its last value.

-- name: event_seq_high_water
SELECT GREATEST((SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END
                   FROM uet_event_seq),
                coalesce((SELECT max(seq) FROM run_events), 0),
                (SELECT value FROM ledger_counters WHERE name = 'deleted_event_seq')) AS seq;

-- Writers hand out seqs under a shared lock (ledger, -1), followers read the horizon under
-- it exclusively: held exclusively to the end of the transaction, it keeps both waiting
-- while the import numbers its events, so no follower passes one that commits late.

-- name: lock_event_seqs
SELECT pg_advisory_xact_lock(uet_ledger_key(), -1);

-- setval is not undone by a rollback: a rolled-back import leaves a gap, as any rolled-back
-- writer does, and no seq is ever handed out twice.

-- name: reserve_event_seqs
SELECT setval('uet_event_seq', taken) AS seq
  FROM (SELECT GREATEST(?, (SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1
                                   END FROM uet_event_seq)) AS taken) AS s
 WHERE taken > 0;

-- name: raise_deleted_event_seq
UPDATE ledger_counters SET value = GREATEST(value, ?) WHERE name = 'deleted_event_seq';

-- json_array_elements_text: the elements of a JSON array, as rows of text.

-- name: existing_workers
SELECT worker_id AS id FROM workers
 WHERE worker_id IN (SELECT json_array_elements_text(?::json));

-- name: existing_runs
SELECT run_id AS id FROM runs WHERE run_id IN (SELECT json_array_elements_text(?::json));

-- name: existing_step_attempts
SELECT step_attempt_id AS id FROM step_attempts
 WHERE step_attempt_id IN (SELECT json_array_elements_text(?::json));

-- name: existing_patches
SELECT patch_id AS id FROM patches
 WHERE patch_id IN (SELECT json_array_elements_text(?::json));

-- name: existing_patch_entries
SELECT ledger_id AS id FROM patch_ledger_entries
 WHERE ledger_id IN (SELECT json_array_elements_text(?::json));

-- name: existing_gates
SELECT gate_id AS id FROM test_gates
 WHERE gate_id IN (SELECT json_array_elements_text(?::json));

-- name: existing_events
SELECT event_id AS id FROM run_events
 WHERE event_id IN (SELECT json_array_elements_text(?::json));

-- ----------------------------------------------------------------------------------------
-- Retention (uet/state/retention.py): :run_ids is a JSON array of run ids, read here as an
-- array (`= ANY (ARRAY(SELECT json_array_elements_text(...)))`: the planner then probes the
-- indexes, where a set it cannot size would make it scan whole tables; SQLite: json_each).
-- The sets of what belongs to a run follow the foreign keys that cascade from it: its step
-- attempts, events, patches (by run or by step attempt), their ledger entries, gates (by
-- run or by entry) and their dependencies. A parameter that may be NULL is cast, so that
-- the server knows its type.

-- name: gc_select_runs
SELECT run_id FROM runs
 WHERE run_id = ANY (ARRAY(SELECT json_array_elements_text(CAST(:run_ids AS json))))
   AND state = ANY (ARRAY(SELECT json_array_elements_text(CAST(:states AS json))))
   AND created_at < :cutoff AND coalesce(ended_at, created_at) < :cutoff
   AND (CAST(:project_id AS text) IS NULL OR project_id = :project_id)
   AND NOT EXISTS (SELECT 1 FROM workers AS w WHERE w.current_run_id = runs.run_id)
 ORDER BY run_id;

-- name: gc_lock_runs
-- FOR UPDATE: no writer can add a step attempt, event, patch or gate to a run being
-- deleted (their foreign-key checks wait for it, then fail); SKIP LOCKED: a run another
-- writer is changing right now is left for a later gc, never waited for
SELECT run_id FROM runs
 WHERE run_id = ANY (ARRAY(SELECT json_array_elements_text(CAST(:run_ids AS json))))
   AND state = ANY (ARRAY(SELECT json_array_elements_text(CAST(:states AS json))))
   AND created_at < :cutoff AND coalesce(ended_at, created_at) < :cutoff
   AND (CAST(:project_id AS text) IS NULL OR project_id = :project_id)
   AND NOT EXISTS (SELECT 1 FROM workers AS w WHERE w.current_run_id = runs.run_id)
 ORDER BY run_id
   FOR UPDATE OF runs SKIP LOCKED;

-- name: gc_count_records
WITH doomed_patches (patch_id) AS (
         SELECT patch_id FROM patches
          WHERE run_id = ANY (ARRAY(SELECT json_array_elements_text(CAST(:run_ids AS json))))
         UNION
         SELECT p.patch_id FROM patches AS p
           JOIN step_attempts AS s ON s.step_attempt_id = p.step_attempt_id
          WHERE s.run_id = ANY (ARRAY(SELECT json_array_elements_text(CAST(:run_ids AS json))))),
     gates (gate_id) AS (
         SELECT gate_id FROM test_gates
          WHERE run_id = ANY (ARRAY(SELECT json_array_elements_text(CAST(:run_ids AS json))))
         UNION
         SELECT g.gate_id FROM test_gates AS g
           JOIN patch_ledger_entries AS e ON e.ledger_id = g.ledger_id
          WHERE e.patch_id IN (SELECT patch_id FROM doomed_patches))
SELECT (SELECT count(*) FROM runs WHERE run_id = ANY (ARRAY(SELECT json_array_elements_text(CAST(:run_ids AS json))))) AS runs,
       (SELECT count(*) FROM step_attempts
         WHERE run_id = ANY (ARRAY(SELECT json_array_elements_text(CAST(:run_ids AS json))))) AS step_attempts,
       (SELECT count(*) FROM run_events
         WHERE run_id = ANY (ARRAY(SELECT json_array_elements_text(CAST(:run_ids AS json))))) AS run_events,
       (SELECT count(*) FROM doomed_patches) AS patches,
       (SELECT count(*) FROM patch_ledger_entries
         WHERE patch_id = ANY (ARRAY(SELECT patch_id FROM doomed_patches)))
           AS patch_ledger_entries,
       (SELECT count(*) FROM gates) AS test_gates,
       (SELECT count(*) FROM gate_dependencies
         WHERE gate_id = ANY (ARRAY(SELECT gate_id FROM gates))) AS gate_dependencies;

-- name: gc_raise_deleted_seq
-- seq comes from a sequence here, which never goes back; the mark is kept all the same.
-- The newest seq of each run, from idx_events_run (a max over the whole batch would walk
-- idx_events_seq back from the newest event of the ledger to the batch's old ones)
UPDATE ledger_counters
   SET value = GREATEST(value, coalesce(
           (SELECT max(newest.seq)
              FROM json_array_elements_text(CAST(:run_ids AS json)) AS batch (run_id)
             CROSS JOIN LATERAL (SELECT max(e.seq) AS seq FROM run_events AS e
                                  WHERE e.run_id = batch.run_id) AS newest), 0))
 WHERE name = 'deleted_event_seq';

-- name: gc_delete_gate_dependencies
DELETE FROM gate_dependencies
 WHERE gate_id = ANY (ARRAY(
     WITH doomed_patches (patch_id) AS (
              SELECT patch_id FROM patches
               WHERE run_id = ANY (ARRAY(SELECT json_array_elements_text(CAST(:run_ids AS json))))
              UNION
              SELECT p.patch_id FROM patches AS p
                JOIN step_attempts AS s ON s.step_attempt_id = p.step_attempt_id
               WHERE s.run_id = ANY (ARRAY(SELECT json_array_elements_text(CAST(:run_ids AS json))))),
          gates (gate_id) AS (
              SELECT gate_id FROM test_gates
               WHERE run_id = ANY (ARRAY(SELECT json_array_elements_text(CAST(:run_ids AS json))))
              UNION
              SELECT g.gate_id FROM test_gates AS g
                JOIN patch_ledger_entries AS e ON e.ledger_id = g.ledger_id
               WHERE e.patch_id IN (SELECT patch_id FROM doomed_patches))
     SELECT gate_id FROM gates));

-- name: gc_delete_gates
DELETE FROM test_gates
 WHERE gate_id = ANY (ARRAY(
     WITH doomed_patches (patch_id) AS (
              SELECT patch_id FROM patches
               WHERE run_id = ANY (ARRAY(SELECT json_array_elements_text(CAST(:run_ids AS json))))
              UNION
              SELECT p.patch_id FROM patches AS p
                JOIN step_attempts AS s ON s.step_attempt_id = p.step_attempt_id
               WHERE s.run_id = ANY (ARRAY(SELECT json_array_elements_text(CAST(:run_ids AS json))))),
          gates (gate_id) AS (
              SELECT gate_id FROM test_gates
               WHERE run_id = ANY (ARRAY(SELECT json_array_elements_text(CAST(:run_ids AS json))))
              UNION
              SELECT g.gate_id FROM test_gates AS g
                JOIN patch_ledger_entries AS e ON e.ledger_id = g.ledger_id
               WHERE e.patch_id IN (SELECT patch_id FROM doomed_patches))
     SELECT gate_id FROM gates));

-- name: gc_delete_patch_entries
DELETE FROM patch_ledger_entries
 WHERE patch_id = ANY (ARRAY(
     WITH doomed_patches (patch_id) AS (
              SELECT patch_id FROM patches
               WHERE run_id = ANY (ARRAY(SELECT json_array_elements_text(CAST(:run_ids AS json))))
              UNION
              SELECT p.patch_id FROM patches AS p
                JOIN step_attempts AS s ON s.step_attempt_id = p.step_attempt_id
               WHERE s.run_id = ANY (ARRAY(SELECT json_array_elements_text(CAST(:run_ids AS json)))))
     SELECT patch_id FROM doomed_patches));

-- name: gc_delete_patches
DELETE FROM patches
 WHERE patch_id = ANY (ARRAY(
     WITH doomed_patches (patch_id) AS (
              SELECT patch_id FROM patches
               WHERE run_id = ANY (ARRAY(SELECT json_array_elements_text(CAST(:run_ids AS json))))
              UNION
              SELECT p.patch_id FROM patches AS p
                JOIN step_attempts AS s ON s.step_attempt_id = p.step_attempt_id
               WHERE s.run_id = ANY (ARRAY(SELECT json_array_elements_text(CAST(:run_ids AS json)))))
     SELECT patch_id FROM doomed_patches));

-- name: gc_delete_events
DELETE FROM run_events WHERE run_id = ANY (ARRAY(SELECT json_array_elements_text(CAST(:run_ids AS json))));

-- name: gc_delete_steps
DELETE FROM step_attempts WHERE run_id = ANY (ARRAY(SELECT json_array_elements_text(CAST(:run_ids AS json))));

-- name: gc_delete_runs
DELETE FROM runs WHERE run_id = ANY (ARRAY(SELECT json_array_elements_text(CAST(:run_ids AS json))));

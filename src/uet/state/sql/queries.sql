-- Every fixed statement the ledger runs, by name ('-- name: x' starts query x), written once
-- for both engines in SQLite's parameter style (? and :name); uet/state/sqlfiles.py gives
-- PostgreSQL the same text in psycopg's (%s and %(name)s). Loaded once at import.
-- Where the two dialects differ, sql/<engine>/queries.sql holds the engine's own text under
-- the same name; a name below without a statement is one that each engine writes itself.
-- Statements whose column lists vary (updates, list filters) are assembled in Python from
-- the fixed column whitelists in uet/state/tables.py, never from caller input.

-- name: insert_run
INSERT INTO runs (run_id, project_id, phase_id, workstream_id, execution_request_id,
                  created_at, started_at, ended_at, state, exit_code, error_message, metadata,
                  priority)
VALUES (:run_id, :project_id, :phase_id, :workstream_id, :execution_request_id,
        :created_at, :started_at, :ended_at, :state, :exit_code, :error_message, :metadata,
        :priority);

-- name: get_run
SELECT * FROM runs WHERE run_id = ?;

-- name: delete_run_floor
-- per engine: the larger of two values (SQLite's max(a, b), PostgreSQL's GREATEST)

-- name: delete_run
DELETE FROM runs WHERE run_id = ?;

-- name: insert_step_attempt
INSERT INTO step_attempts (step_attempt_id, run_id, sequence, tool_id, tool_run_id,
                           execution_request_id, prompt_id, started_at, ended_at, state,
                           exit_code, input_prompt, output_patch_id, error_log, metadata,
                           attempt, worker_id, task_id, model, input_tokens, output_tokens,
                           cost_usd)
VALUES (:step_attempt_id, :run_id, :sequence, :tool_id, :tool_run_id,
        :execution_request_id, :prompt_id, :started_at, :ended_at, :state,
        :exit_code, :input_prompt, :output_patch_id, :error_log, :metadata,
        coalesce(:attempt, (SELECT coalesce(max(attempt), 0) + 1 FROM step_attempts
                             WHERE run_id = :run_id AND sequence = :sequence)),
        coalesce(:worker_id, (SELECT worker_id FROM runs WHERE run_id = :run_id)),
        :task_id, :model, :input_tokens, :output_tokens, :cost_usd)
RETURNING attempt;

-- name: get_step_attempt
SELECT * FROM step_attempts WHERE step_attempt_id = ?;

-- name: list_step_attempts
SELECT * FROM step_attempts WHERE run_id = ? ORDER BY sequence, attempt;

-- name: insert_event
-- per engine: the larger of two values (SQLite's max(a, b), PostgreSQL's GREATEST)

-- name: list_events
SELECT * FROM run_events WHERE run_id = ? ORDER BY seq;

-- name: events_since
SELECT * FROM run_events WHERE seq > ? ORDER BY seq LIMIT ?;

-- name: latest_event_seq
SELECT coalesce(max(seq), 0) AS seq FROM run_events;

-- name: events_since_run
SELECT * FROM run_events WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?;

-- name: insert_worker
INSERT INTO workers (worker_id, worker_type, state, affinity, created_at, incarnation)
VALUES (?, ?, 'SPAWNING', ?, ?, ?)
RETURNING *;

-- name: respawn_worker
-- a TERMINATED id registered again by a new incarnation: it starts over in SPAWNING
UPDATE workers SET worker_type = :worker_type, state = 'SPAWNING', affinity = :affinity,
                   incarnation = :incarnation, created_at = :now, last_heartbeat = NULL,
                   terminated_at = NULL, current_run_id = NULL
 WHERE worker_id = :worker_id AND state = 'TERMINATED'
RETURNING *;

-- name: get_worker
SELECT * FROM workers WHERE worker_id = ?;

-- name: workers_by_state
SELECT * FROM workers WHERE state = ? ORDER BY created_at, worker_id;

-- name: idle_workers
SELECT * FROM workers WHERE state = 'IDLE' ORDER BY created_at, worker_id;

-- name: idle_workers_of_type
SELECT * FROM workers WHERE state = 'IDLE' AND worker_type = ? ORDER BY created_at, worker_id;

-- name: set_worker_state
UPDATE workers SET state = :state, terminated_at = :terminated_at,
                   current_run_id = :current_run_id,
                   last_heartbeat = coalesce(:heartbeat, last_heartbeat)
 WHERE worker_id = :worker_id
RETURNING *;

-- name: heartbeat
UPDATE workers SET last_heartbeat = ? WHERE worker_id = ? AND state != 'TERMINATED'
RETURNING worker_id;

-- name: heartbeat_incarnation
UPDATE workers SET last_heartbeat = ?
 WHERE worker_id = ? AND state != 'TERMINATED' AND incarnation = ?
RETURNING worker_id;

-- name: stale_workers
-- DRAINING workers still hold work and heartbeat like BUSY ones
SELECT * FROM workers
 WHERE state IN ('IDLE', 'BUSY', 'DRAINING') AND coalesce(last_heartbeat, created_at) < ?
 ORDER BY created_at, worker_id;

-- name: next_queued_run
-- the work queue: the highest priority first, then the oldest (idx_runs_queue)
SELECT run_id FROM runs WHERE state = 'pending' AND priority IS NOT NULL
 ORDER BY priority DESC, created_at, run_id LIMIT 1;

-- name: queued_run_waiting
-- a plain read (no lock, no write transaction): whether an idle worker should try to claim
SELECT run_id FROM runs WHERE state = 'pending' AND priority IS NOT NULL LIMIT 1;

-- name: oldest_pending_run
SELECT run_id FROM runs WHERE state = 'pending' ORDER BY created_at, run_id LIMIT 1;

-- name: running_runs_of_worker
SELECT run_id FROM runs WHERE worker_id = ? AND state = 'running' ORDER BY run_id;

-- name: running_steps_of_worker
SELECT step_attempt_id FROM step_attempts
 WHERE state = 'running'
   AND (worker_id = :worker_id
        OR run_id IN (SELECT run_id FROM runs WHERE worker_id = :worker_id))
 ORDER BY step_attempt_id;

-- name: insert_patch
INSERT INTO patches (patch_id, diff, sha256, files, size_bytes, run_id, step_attempt_id,
                     created_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
RETURNING *;

-- name: find_patch
SELECT * FROM patches
 WHERE coalesce(run_id, '') = coalesce(?, '') AND coalesce(step_attempt_id, '') = coalesce(?, '')
   AND sha256 = ?;

-- name: get_patch
SELECT * FROM patches WHERE patch_id = ?;

-- name: insert_patch_entry
INSERT INTO patch_ledger_entries (ledger_id, patch_id, state, phase_id, workstream_id,
                                  state_history, created_at, updated_at)
VALUES (?, ?, 'created', ?, ?, ?, ?, ?)
RETURNING *;

-- name: get_patch_entry
SELECT e.*, p.run_id AS patch_run_id
  FROM patch_ledger_entries AS e JOIN patches AS p ON p.patch_id = e.patch_id
 WHERE e.ledger_id = ?;

-- name: lock_patch_entry
-- get_patch_entry, locked for the transaction that decides on it (PostgreSQL)
SELECT e.*, p.run_id AS patch_run_id
  FROM patch_ledger_entries AS e JOIN patches AS p ON p.patch_id = e.patch_id
 WHERE e.ledger_id = ?;

-- name: update_patch_entry
-- per engine: the larger of two values, and text appended to a JSON value

-- name: set_patch_validation
-- per engine: the larger of two values (SQLite's max(a, b), PostgreSQL's GREATEST)

-- name: patch_entries_by_state
SELECT * FROM patch_ledger_entries WHERE state = ? ORDER BY created_at, ledger_id;

-- name: patch_entries_by_state_and_phase
SELECT * FROM patch_ledger_entries WHERE state = ? AND phase_id = ?
 ORDER BY created_at, ledger_id;

-- name: history_of_run
SELECT p.patch_id, p.sha256, p.files, p.size_bytes, p.created_at AS recorded_at,
       p.step_attempt_id, s.sequence, s.attempt, s.tool_id, s.state AS step_state,
       e.ledger_id, e.state AS entry_state, e.phase_id, e.workstream_id, e.updated_at
  FROM patches AS p
  LEFT JOIN step_attempts AS s ON s.step_attempt_id = p.step_attempt_id
  LEFT JOIN patch_ledger_entries AS e ON e.patch_id = p.patch_id
 WHERE p.run_id = ?
 ORDER BY p.created_at, p.patch_id, e.created_at, e.ledger_id;

-- name: insert_gate
INSERT INTO test_gates (gate_id, gate_type, name, phase_id, state, command, timeout_sec,
                        run_id, ledger_id, created_at)
VALUES (?, ?, ?, ?, 'PENDING', ?, ?, ?, ?, ?)
RETURNING *;

-- name: insert_gate_dependency
INSERT INTO gate_dependencies (gate_id, depends_on) VALUES (?, ?);

-- name: get_gate
SELECT * FROM test_gates WHERE gate_id = ?;

-- name: lock_gate
SELECT * FROM test_gates WHERE gate_id = ?;

-- name: gate_dependencies
SELECT depends_on FROM gate_dependencies WHERE gate_id = ? ORDER BY depends_on;

-- name: scope_dependency_edges
-- per engine: equality that holds for two NULLs (SQLite's IS, PostgreSQL's
-- IS NOT DISTINCT FROM)

-- name: latest_gate_named
-- per engine: equality that holds for two NULLs

-- name: open_dependents
-- per engine: equality that holds for two NULLs

-- name: gates_blocked_by
-- per engine: equality that holds for two NULLs

-- name: set_gate_state
UPDATE test_gates
   SET state = :state, exit_code = coalesce(:exit_code, exit_code),
       stdout = coalesce(:stdout, stdout), stderr = coalesce(:stderr, stderr),
       started_at = coalesce(:started_at, started_at),
       completed_at = coalesce(:completed_at, completed_at),
       duration_sec = coalesce(:duration_sec, duration_sec),
       blocked_by = :blocked_by
 WHERE gate_id = :gate_id
RETURNING *;

-- name: running_gates_with_timeout
SELECT * FROM test_gates WHERE state = 'RUNNING' AND timeout_sec IS NOT NULL
 ORDER BY started_at, gate_id;

-- name: set_gate_blocked_by
UPDATE test_gates SET blocked_by = ? WHERE gate_id = ?;

-- name: run_ids_with_prefix
SELECT run_id FROM runs WHERE run_id >= ? AND run_id < ? ORDER BY run_id LIMIT 11;

-- name: all_workers
SELECT * FROM workers ORDER BY created_at, worker_id;

-- name: all_patch_entries
SELECT * FROM patch_ledger_entries ORDER BY created_at, ledger_id;

-- name: patch_entries_by_phase
SELECT * FROM patch_ledger_entries WHERE phase_id = ? ORDER BY created_at, ledger_id;

-- name: gates_with_dependencies
-- per engine: a JSON array built from rows (json_group_array, json_agg)

-- Reads that a compare-and-set decides on. SQLite's transaction already holds the write
-- lock (BEGIN IMMEDIATE), so a plain read is enough there; sql/postgresql/queries.sql locks
-- the row.

-- name: lock_run
SELECT * FROM runs WHERE run_id = ?;

-- name: lock_step_attempt
SELECT * FROM step_attempts WHERE step_attempt_id = ?;

-- name: lock_worker
SELECT * FROM workers WHERE worker_id = ?;

-- Export, import and backup (uet.state.portable: `uet export`, `uet import`, `uet backup`).
-- Every record type is read by keyset, in the order of its key: from :after (inclusive: the
-- reader drops the row it already has), :limit rows at a time, inside one read-only
-- snapshot. A selection (:project, :since; NULL for none) picks runs; a child row is
-- selected with the run it belongs to, and a row that belongs to no run only when nothing
-- is selected (:everything = 1). Imports insert every column as it was exported.

-- name: export_workers
SELECT worker_id, worker_type, state, affinity, last_heartbeat, created_at, terminated_at,
       current_run_id, incarnation
  FROM workers
 WHERE worker_id >= :after
 ORDER BY worker_id LIMIT :limit;

-- name: export_runs
SELECT run_id, project_id, phase_id, workstream_id, execution_request_id, created_at,
       started_at, ended_at, state, exit_code, error_message, metadata, worker_id, priority,
       recoveries
  FROM runs
 WHERE run_id >= :after
   AND (CAST(:project AS TEXT) IS NULL OR project_id = :project)
   AND (CAST(:since AS TEXT) IS NULL OR created_at >= :since)
 ORDER BY run_id LIMIT :limit;

-- name: export_step_attempts
SELECT s.step_attempt_id, s.run_id, s.sequence, s.tool_id, s.tool_run_id,
       s.execution_request_id, s.prompt_id, s.started_at, s.ended_at, s.state, s.exit_code,
       s.input_prompt, s.output_patch_id, s.error_log, s.metadata, s.attempt, s.worker_id,
       s.task_id, s.model, s.input_tokens, s.output_tokens, s.cost_usd
  FROM step_attempts AS s JOIN runs AS r ON r.run_id = s.run_id
 WHERE s.step_attempt_id >= :after
   AND (CAST(:project AS TEXT) IS NULL OR r.project_id = :project)
   AND (CAST(:since AS TEXT) IS NULL OR r.created_at >= :since)
 ORDER BY s.step_attempt_id LIMIT :limit;

-- name: export_patches
SELECT p.patch_id, p.diff, p.sha256, p.files, p.size_bytes, p.run_id, p.step_attempt_id,
       p.created_at
  FROM patches AS p LEFT JOIN runs AS r ON r.run_id = p.run_id
 WHERE p.patch_id >= :after
   AND CASE WHEN p.run_id IS NULL THEN CAST(:everything AS INTEGER) = 1
            ELSE (CAST(:project AS TEXT) IS NULL OR r.project_id = :project)
                 AND (CAST(:since AS TEXT) IS NULL OR r.created_at >= :since) END
 ORDER BY p.patch_id LIMIT :limit;

-- name: export_patch_entries
SELECT e.ledger_id, e.patch_id, e.state, e.phase_id, e.workstream_id, e.validated_format,
       e.validated_scope, e.validated_constraints, e.validated_tests, e.quarantine_reason,
       e.state_history, e.created_at, e.updated_at, e.version
  FROM patch_ledger_entries AS e JOIN patches AS p ON p.patch_id = e.patch_id
  LEFT JOIN runs AS r ON r.run_id = p.run_id
 WHERE e.ledger_id >= :after
   AND CASE WHEN p.run_id IS NULL THEN CAST(:everything AS INTEGER) = 1
            ELSE (CAST(:project AS TEXT) IS NULL OR r.project_id = :project)
                 AND (CAST(:since AS TEXT) IS NULL OR r.created_at >= :since) END
 ORDER BY e.ledger_id LIMIT :limit;

-- name: export_gates
-- per engine: the gate's dependencies as a JSON array (json_group_array, json_agg); a gate
-- belongs to the run it was defined for, else to the run of its patch entry's patch

-- name: export_events
-- in seq order: an import that renumbers keeps the trail's order
SELECT e.event_id, e.run_id, e.timestamp, e.event_type, e.data, e.seq
  FROM run_events AS e LEFT JOIN runs AS r ON r.run_id = e.run_id
 WHERE e.seq >= :after
   AND CASE WHEN e.run_id IS NULL THEN CAST(:everything AS INTEGER) = 1
            ELSE (CAST(:project AS TEXT) IS NULL OR r.project_id = :project)
                 AND (CAST(:since AS TEXT) IS NULL OR r.created_at >= :since) END
 ORDER BY e.seq LIMIT :limit;

-- name: export_schema_version
SELECT max(version) AS version FROM schema_migrations;

-- name: deleted_event_seq
SELECT value AS seq FROM ledger_counters WHERE name = 'deleted_event_seq';

-- name: event_seq_high_water
-- per engine: the highest event seq ever handed out (stored, deleted, or on PostgreSQL
-- taken from the sequence)

-- name: lock_event_seqs
-- per engine: inside a write transaction, no other writer hands out an event seq until it
-- ends (the import numbers its events above the high water mark meanwhile)

-- name: reserve_event_seqs
-- per engine: seqs up to ? are taken (the next one handed out is above it)

-- name: raise_deleted_event_seq
-- per engine: the larger of two values (SQLite's max(a, b), PostgreSQL's GREATEST)

-- name: existing_workers
-- per engine: the keys of a JSON array of ids that are already in the ledger (SQLite's
-- json_each, PostgreSQL's json_array_elements_text), for every record type below

-- name: existing_runs

-- name: existing_step_attempts

-- name: existing_patches

-- name: existing_patch_entries

-- name: existing_gates

-- name: existing_events

-- name: import_worker
-- current_run_id is set once the runs are in (import_worker_current_run): a worker and the
-- run it holds refer to each other
INSERT INTO workers (worker_id, worker_type, state, affinity, last_heartbeat, created_at,
                     terminated_at, current_run_id, incarnation)
VALUES (:worker_id, :worker_type, :state, :affinity, :last_heartbeat, :created_at,
        :terminated_at, NULL, :incarnation);

-- name: import_worker_current_run
-- (a worker that has it already counts: an import that goes on after a failure)
UPDATE workers SET current_run_id = :current_run_id
 WHERE worker_id = :worker_id AND created_at = :created_at
   AND (current_run_id IS NULL OR current_run_id = :current_run_id)
   AND EXISTS (SELECT 1 FROM runs WHERE run_id = :current_run_id);

-- name: import_run
INSERT INTO runs (run_id, project_id, phase_id, workstream_id, execution_request_id,
                  created_at, started_at, ended_at, state, exit_code, error_message, metadata,
                  worker_id, priority, recoveries)
VALUES (:run_id, :project_id, :phase_id, :workstream_id, :execution_request_id,
        :created_at, :started_at, :ended_at, :state, :exit_code, :error_message, :metadata,
        :worker_id, :priority, :recoveries);

-- name: import_step_attempt
INSERT INTO step_attempts (step_attempt_id, run_id, sequence, tool_id, tool_run_id,
                           execution_request_id, prompt_id, started_at, ended_at, state,
                           exit_code, input_prompt, output_patch_id, error_log, metadata,
                           attempt, worker_id, task_id, model, input_tokens, output_tokens,
                           cost_usd)
VALUES (:step_attempt_id, :run_id, :sequence, :tool_id, :tool_run_id,
        :execution_request_id, :prompt_id, :started_at, :ended_at, :state,
        :exit_code, :input_prompt, :output_patch_id, :error_log, :metadata,
        :attempt, :worker_id, :task_id, :model, :input_tokens, :output_tokens, :cost_usd);

-- name: import_patch
INSERT INTO patches (patch_id, diff, sha256, files, size_bytes, run_id, step_attempt_id,
                     created_at)
VALUES (:patch_id, :diff, :sha256, :files, :size_bytes, :run_id, :step_attempt_id,
        :created_at);

-- name: import_patch_entry
INSERT INTO patch_ledger_entries (ledger_id, patch_id, state, phase_id, workstream_id,
                                  validated_format, validated_scope, validated_constraints,
                                  validated_tests, quarantine_reason, state_history,
                                  created_at, updated_at, version)
VALUES (:ledger_id, :patch_id, :state, :phase_id, :workstream_id,
        :validated_format, :validated_scope, :validated_constraints,
        :validated_tests, :quarantine_reason, :state_history,
        :created_at, :updated_at, :version);

-- name: import_gate
INSERT INTO test_gates (gate_id, gate_type, name, phase_id, state, command, exit_code, stdout,
                        stderr, duration_sec, started_at, completed_at, timeout_sec, run_id,
                        ledger_id, created_at, blocked_by)
VALUES (:gate_id, :gate_type, :name, :phase_id, :state, :command, :exit_code, :stdout,
        :stderr, :duration_sec, :started_at, :completed_at, :timeout_sec, :run_id,
        :ledger_id, :created_at, :blocked_by);

-- name: import_event
-- with its seq: the exported one where it is above every seq the ledger handed out, else
-- the next one (uet.state.portable numbers them under lock_event_seqs)
INSERT INTO run_events (event_id, run_id, timestamp, event_type, data, seq)
VALUES (:event_id, :run_id, :timestamp, :event_type, :data, :seq);

-- ----------------------------------------------------------------------------------------
-- Retention (`uet gc`, `Database.gc`: uet/state/retention.py). A batch of runs is passed
-- as one parameter, :run_ids, the JSON array of their ids, which each engine reads as a set
-- in its own way (SQLite's json_each, PostgreSQL's json_array_elements_text): so the
-- statements below that take it are each engine's own text; the others are shared.

-- name: gc_candidates
-- the next runs of one state created before the cutoff, oldest first, after the last one
-- seen (:after_created, :after_run): a range of idx_runs_state, read once per call
SELECT run_id, project_id, created_at, ended_at FROM runs
 WHERE state = :state AND created_at < :cutoff AND created_at >= :after_created
   AND (created_at > :after_created OR run_id > :after_run)
 ORDER BY created_at, run_id LIMIT :limit;

-- name: gc_candidates_of_project
-- the same within one project (idx_runs_project_state)
SELECT run_id, project_id, created_at, ended_at FROM runs
 WHERE project_id = :project_id AND state = :state AND created_at < :cutoff
   AND created_at >= :after_created AND (created_at > :after_created OR run_id > :after_run)
 ORDER BY created_at, run_id LIMIT :limit;

-- name: gc_count_candidates
SELECT count(*) AS n FROM runs WHERE state = :state AND created_at < :cutoff;

-- name: gc_count_candidates_of_project
SELECT count(*) AS n FROM runs
 WHERE project_id = :project_id AND state = :state AND created_at < :cutoff;

-- name: gc_projects
-- every project that has runs, one index probe each (a skip scan of idx_runs_project)
WITH RECURSIVE projects (id) AS (
    SELECT min(project_id) FROM runs
    UNION ALL
    SELECT (SELECT min(r.project_id) FROM runs AS r WHERE r.project_id > projects.id)
      FROM projects WHERE projects.id IS NOT NULL)
SELECT id AS project_id FROM projects WHERE id IS NOT NULL;

-- name: gc_newest_of_project
-- --keep-last: the newest runs of one project in one state (idx_runs_project_state)
SELECT created_at, run_id FROM runs WHERE project_id = :project_id AND state = :state
 ORDER BY created_at DESC, run_id DESC LIMIT :limit;

-- name: gc_select_runs
-- per engine: the runs of :run_ids that may still go (finished in one of :states, ended
-- before :cutoff, of :project_id when given, no worker's current run)

-- name: gc_lock_runs
-- per engine: gc_select_runs inside the batch's write transaction (PostgreSQL locks them,
-- passing over the runs another writer holds)

-- name: gc_count_records
-- per engine: how many rows of each table belong to the runs of :run_ids (--dry-run)

-- name: gc_raise_deleted_seq
-- per engine: the deleted_event_seq high-water mark raised past the events of :run_ids

-- name: gc_delete_gate_dependencies
-- per engine: the dependencies of the gates of the runs of :run_ids (and of their patches)

-- name: gc_delete_gates
-- per engine: the gates of the runs of :run_ids, and those of their patches' entries

-- name: gc_delete_patch_entries
-- per engine: the ledger entries of the patches of the runs of :run_ids

-- name: gc_delete_patches
-- per engine: the patches of the runs of :run_ids and of their step attempts

-- name: gc_delete_events
-- per engine: the events of the runs of :run_ids

-- name: gc_delete_steps
-- per engine: the step attempts of the runs of :run_ids

-- name: gc_delete_runs
-- per engine: the runs of :run_ids

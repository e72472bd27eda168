-- 0006: indexes on the referencing columns that deleting a run cascades through and had
-- none: a patch's step attempt, a gate's patch ledger entry, a worker's current run (the
-- server's foreign-key actions otherwise read the whole referencing table per deleted row).
--
-- The PostgreSQL twin of sql/sqlite/migrations/0006_cascade_indexes.sql.
CREATE INDEX idx_patches_step ON patches (step_attempt_id) WHERE step_attempt_id IS NOT NULL;
CREATE INDEX idx_gates_ledger ON test_gates (ledger_id) WHERE ledger_id IS NOT NULL;
CREATE INDEX idx_workers_current_run ON workers (current_run_id)
    WHERE current_run_id IS NOT NULL;

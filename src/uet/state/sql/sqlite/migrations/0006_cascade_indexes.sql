-- 0006: indexes on the referencing columns that deleting a run cascades through and had
-- none: a patch's step attempt, a gate's patch ledger entry, a worker's current run.
-- Without them each deleted step attempt made SQLite (and PostgreSQL) read the whole
-- patches table, each deleted ledger entry the whole test_gates table, each deleted run the
-- whole workers table: `delete_run` and `uet gc` took about 85 s per 200 runs on a ledger
-- of 100,000 runs with a patch, an entry and a gate per step attempt; about 50 ms with them.
CREATE INDEX idx_patches_step ON patches (step_attempt_id) WHERE step_attempt_id IS NOT NULL;
CREATE INDEX idx_gates_ledger ON test_gates (ledger_id) WHERE ledger_id IS NOT NULL;
CREATE INDEX idx_workers_current_run ON workers (current_run_id)
    WHERE current_run_id IS NOT NULL;

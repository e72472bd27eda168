-- 0005: the runs listing filtered by phase or workstream reads an index, as it already did
-- by project and by state: newest first within one phase or workstream, and within one
-- phase or workstream and state (the dashboard's counts per state stop after 10,000 index
-- entries; without these an unknown workstream made each count read every run of its
-- state — 1.4 s at a million runs).
CREATE INDEX idx_runs_phase ON runs (phase_id, created_at, run_id);
CREATE INDEX idx_runs_phase_state ON runs (phase_id, state, created_at, run_id);
CREATE INDEX idx_runs_workstream ON runs (workstream_id, created_at, run_id);
CREATE INDEX idx_runs_workstream_state ON runs (workstream_id, state, created_at, run_id);

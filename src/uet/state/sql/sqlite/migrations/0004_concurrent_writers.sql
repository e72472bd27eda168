-- 0004: on PostgreSQL, writers stop taking a ledger-wide lock and event seq comes from a
-- sequence read up to the horizon of transactions still in flight (see the PostgreSQL twin).
-- Nothing changes on SQLite: its writers already share one write lock, which is the file's,
-- so seq is handed out in commit order. The version stays the same on both engines.
SELECT 1;

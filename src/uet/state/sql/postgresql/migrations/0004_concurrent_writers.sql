-- 0004: writers no longer take a ledger-wide lock; event `seq` comes from a sequence, and
-- followers read only below the "horizon": the highest seq below which no transaction that
-- was handed a seq is still open. So commits share WAL flushes (group commit), and a
-- follower reading `seq > cursor` still never passes an event that commits late.
--
-- How the horizon is known: a writer's first event of a transaction takes its seq and, in
-- the same moment, a transaction-level shared advisory lock keyed by (ledger, that seq) —
-- the "in flight" mark, visible in pg_locks to every session until the transaction has
-- ended (committed and visible, or rolled back). "The same moment" is a short shared
-- session lock (ledger, -1) that writers hold around nextval + mark; a follower takes it
-- exclusively for as long as it reads the sequence's last value and the marks, so no seq is
-- ever handed out unmarked while it looks. Horizon = (smallest marked seq) - 1, or the
-- last value handed out when nothing is in flight. Seqs are folded into 31 bits in the mark
-- (unfolded against the sequence's last value): a transaction would have to stay open
-- while two billion seqs are handed out to confuse it.

CREATE SEQUENCE uet_event_seq AS bigint MINVALUE 1;
SELECT setval('uet_event_seq',
              GREATEST(coalesce((SELECT max(seq) FROM run_events), 0),
                       (SELECT value FROM ledger_counters WHERE name = 'deleted_event_seq'))
              + 1, false);

-- the ledger's key in advisory locks: its run_events table's oid, folded into an integer
-- (ledgers in different schemas of one database do not see each other's marks)
CREATE FUNCTION uet_ledger_key() RETURNS integer LANGUAGE sql STABLE AS $$
    SELECT ('run_events'::regclass::oid::bigint % 2147483647)::integer
$$;

CREATE FUNCTION uet_next_event_seq() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    ledger integer := uet_ledger_key();
    handed bigint;
BEGIN
    PERFORM pg_advisory_lock_shared(ledger, -1);
    BEGIN
        handed := nextval('uet_event_seq');
        IF coalesce(current_setting('uet.in_flight', true), '') = '' THEN
            PERFORM pg_advisory_xact_lock_shared(ledger, (handed % 2147483648)::integer);
            PERFORM set_config('uet.in_flight', handed::text, true);
        END IF;
    EXCEPTION WHEN OTHERS THEN
        PERFORM pg_advisory_unlock_shared(ledger, -1);
        RAISE;
    END;
    PERFORM pg_advisory_unlock_shared(ledger, -1);
    RETURN handed;
END;
$$;

CREATE FUNCTION uet_event_horizon() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    ledger integer := uet_ledger_key();
    last bigint;
    oldest bigint;
BEGIN
    PERFORM pg_advisory_lock(ledger, -1);
    BEGIN
        SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END INTO last
          FROM uet_event_seq;
        SELECT min(last - ((last - objid::bigint) % 2147483648 + 2147483648) % 2147483648)
          INTO oldest
          FROM pg_locks
         WHERE locktype = 'advisory' AND objsubid = 2 AND granted
           AND classid = ledger::bigint::oid AND objid::bigint < 2147483648
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database());
    EXCEPTION WHEN OTHERS THEN
        PERFORM pg_advisory_unlock(ledger, -1);
        RAISE;
    END;
    PERFORM pg_advisory_unlock(ledger, -1);
    RETURN coalesce(oldest - 1, last);
END;
$$;

-- the events a follower may be given: after `after`, up to the horizon, in seq order. The
-- horizon is taken first, the rows read by a later statement (a later snapshot), so that
-- every seq up to it is there to be read or gone for good.
CREATE FUNCTION uet_events_since(run text, after bigint, most bigint)
RETURNS SETOF run_events LANGUAGE plpgsql AS $$
DECLARE
    horizon bigint := uet_event_horizon();
BEGIN
    IF run IS NULL THEN
        RETURN QUERY SELECT * FROM run_events
                      WHERE seq > after AND seq <= horizon ORDER BY seq LIMIT most;
    ELSE
        RETURN QUERY SELECT * FROM run_events
                      WHERE run_id = run AND seq > after AND seq <= horizon
                      ORDER BY seq LIMIT most;
    END IF;
END;
$$;

"""Speed of the PostgreSQL backend against raw psycopg doing the same statements, side by
side, on one server.

    .venv/bin/python bench/bench_postgres.py [--quick] [--url postgresql://...]
                                             [--writers-only] [--seconds 4]

Without --url (or $UET_TEST_POSTGRES_URL) it starts a private PostgreSQL server with the
server's default durability (fsync on, synchronous commit), as a real ledger runs.

1. create_event: uet's call (validation, id and timestamp, BEGIN + the ledger's write lock,
   the INSERT that assigns seq, COMMIT) vs raw psycopg running the same INSERT in its own
   transaction (BEGIN, INSERT, COMMIT) on the same tables.
2. transition: uet's transition_run (compare-and-set under a row lock, the UPDATE, the
   state-change event, COMMIT) vs raw psycopg running the same SELECT ... FOR NO KEY
   UPDATE, UPDATE and event INSERT in one transaction.
Blocks of each alternate so that machine noise hits both; medians are compared. The
target is >= 60 % of raw throughput.
3. writers (issue 16; alone with --writers-only): N writer processes (1, 2, 4, 8), each
   calling create_event in a loop for --seconds, vs N processes of raw psycopg each running
   the ledger's event INSERT into the same ledger's run_events table in its own transaction
   (autocommit off, BEGIN, INSERT, COMMIT: one commit per event); aggregate events/s. Every
   connection of this table sets synchronous_commit=on for its session (the URL's options),
   whatever the server's default. Raw writers take `seq` from a sequence of their own,
   negated (seq is unique and raw writers hold no lock, so max(seq) + 1 would collide), so
   that uet's max(seq) + 1 is unaffected. Processes are spawned, connect and write once,
   then start together at a barrier; each configuration alternates which side goes first.
   The issue's targets: >= 0.8x raw with 1 writer, >= 0.7x raw with 8.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import psycopg  # noqa: E402

import pgserver  # noqa: E402
from uet.state import Database  # noqa: E402
from uet.state.ids import new_ulid, utc_now  # noqa: E402
from uet.state.backends.postgresql import QUERIES  # noqa: E402

TRANSITION_UPDATE = ("UPDATE runs SET state = %s, started_at = %s WHERE run_id = %s "
                     "RETURNING *")
WRITER_COUNTS = (1, 2, 4, 8)
WRITERS_SCHEMA = "bench_writers"
RAW_SEQ = "bench_raw_event_seq"
# the ledger's insert_event (same columns, same values), except that seq comes from a
# sequence of the raw writers' own: below zero, so never one uet's max(seq) + 1 hands out
RAW_INSERT = QUERIES["insert_event"].split("VALUES")[0] + (
    "VALUES (%(event_id)s, %(run_id)s, %(timestamp)s, %(event_type)s, %(data)s, "
    f"-nextval('{RAW_SEQ}'))")


def _event_row(run_id: str, i: int) -> dict:
    return {"event_id": new_ulid(), "run_id": run_id, "timestamp": utc_now(),
            "event_type": "tick", "data": f'{{"i": {i}}}'}


def bench(url: str, blocks: int, per_block: int) -> dict[str, tuple[float, float]]:
    """Medians of calls per second, (uet, raw), per measure; each side in its own schema."""
    with pgserver.schema(url, "bench_uet") as uet_url, \
            pgserver.schema(url, "bench_raw") as raw_url:
        return _measure(uet_url, raw_url, blocks, per_block)


def _measure(uet_url: str, raw_url: str, blocks: int,
             per_block: int) -> dict[str, tuple[float, float]]:
    db = Database(uet_url)
    Database(raw_url).close()  # the same schema, indexes, triggers and constraints
    raw = psycopg.connect(raw_url)  # psycopg's default: a transaction per block of work
    run_id = db.create_run({"project_id": "bench", "phase_id": "ph"})
    with raw.transaction():
        raw.execute(QUERIES["insert_run"], {
            "run_id": run_id, "project_id": "bench", "phase_id": "ph", "workstream_id": None,
            "execution_request_id": None, "created_at": utc_now(), "started_at": None,
            "ended_at": None, "state": "pending", "exit_code": None, "error_message": None,
            "metadata": None, "priority": None})
    rates: dict[str, tuple[list, list]] = {"create_event": ([], []), "transition": ([], [])}

    def timed(call, count: int) -> float:
        start = time.perf_counter()
        for i in range(count):
            call(i)
        return count / (time.perf_counter() - start)

    def raw_event(i: int) -> None:
        with raw.transaction():
            raw.execute(QUERIES["insert_event"], _event_row(run_id, i))

    def new_runs(count: int) -> tuple[list[str], list[str]]:
        ids = [new_ulid() for _ in range(count)]
        for run in ids:
            db.create_run({"run_id": run, "project_id": "bench", "phase_id": "ph"})
        with raw.transaction():
            for run in ids:
                raw.execute("INSERT INTO runs (run_id, project_id, phase_id, created_at) "
                            "VALUES (%s, 'bench', 'ph', %s)", (run, utc_now()))
        return ids, list(ids)

    def raw_transition(run: str) -> None:
        with raw.transaction():
            state = raw.execute(QUERIES["lock_run"], (run,)).fetchone()
            assert state is not None
            row = raw.execute(TRANSITION_UPDATE, ("running", utc_now(), run)).fetchone()
            raw.execute(QUERIES["insert_event"], {
                "event_id": new_ulid(), "run_id": row[0], "timestamp": utc_now(),
                "event_type": "run.state_changed", "data": '{"from": "pending", "to": "running"}'})

    for _ in range(blocks):
        uet_rate = timed(lambda i: db.create_event(
            {"run_id": run_id, "event_type": "tick", "data": {"i": i}}), per_block)
        raw_rate = timed(raw_event, per_block)
        rates["create_event"][0].append(uet_rate)
        rates["create_event"][1].append(raw_rate)
        uet_ids, raw_ids = new_runs(per_block)
        uet_rate = timed(lambda i: db.transition_run(uet_ids[i], "running", expected="pending"),
                         per_block)
        raw_rate = timed(lambda i: raw_transition(raw_ids[i]), per_block)
        rates["transition"][0].append(uet_rate)
        rates["transition"][1].append(raw_rate)
    db.close()
    raw.close()
    return {name: (statistics.median(u), statistics.median(r))
            for name, (u, r) in rates.items()}


def _writer(kind: str, url: str, run_id: str, seconds: float, barrier, results) -> None:
    """One writer process: connect, write once (warm-up, not counted), wait for the others
    at the barrier, then write events one transaction each for `seconds`; reports
    (events, elapsed seconds)."""
    try:
        if kind == "uet":
            db = Database(url)
            event = {"run_id": run_id, "event_type": "tick", "data": {"i": 0}}

            def write(i: int) -> None:
                event["data"] = {"i": i}
                db.create_event(event)

            def close() -> None:
                db.close()
        else:
            conn = psycopg.connect(url)  # autocommit off: BEGIN is sent before the INSERT

            def write(i: int) -> None:
                conn.execute(RAW_INSERT, _event_row(run_id, i))
                conn.commit()

            def close() -> None:
                conn.close()
        write(-1)
        barrier.wait(timeout=300)
        count = 0
        start = time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            write(count)
            count += 1
        elapsed = time.perf_counter() - start
        close()
        results.put((count, elapsed, None))
    except BaseException as exc:  # reported to the parent, which fails the run
        barrier.abort()
        results.put((0, 0.0, f"{type(exc).__name__}: {exc}"))


def _writers_round(ctx, kind: str, url: str, run_ids: list[str], seconds: float) -> float:
    """Aggregate events/s of len(run_ids) writer processes of `kind`, one run each."""
    barrier = ctx.Barrier(len(run_ids))
    results = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(kind, url, run, seconds, barrier, results))
             for run in run_ids]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=300 + 2 * seconds) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    errors = [error for _, _, error in outcomes if error]
    if errors:
        raise RuntimeError(f"{kind} writer failed: {errors[0]}")
    return sum(count / elapsed for count, elapsed, _ in outcomes)


def bench_writers(url: str, seconds: float,
                  counts: tuple[int, ...] = WRITER_COUNTS) -> list[tuple[int, float, float]]:
    """(writers, uet events/s, raw events/s) per writer count, both sides writing into one
    ledger (its own schema) with synchronous_commit=on set per session."""
    ctx = multiprocessing.get_context("spawn")
    with pgserver.schema(url, WRITERS_SCHEMA) as ledger_url:
        ledger_url += "%20-csynchronous_commit%3Don"  # appended to the URL's options
        db = Database(ledger_url)
        run_ids = [db.create_run({"project_id": "bench", "phase_id": "ph"})
                   for _ in range(max(counts))]
        db.close()
        with psycopg.connect(ledger_url, autocommit=True) as conn:
            conn.execute(f"CREATE SEQUENCE {RAW_SEQ}")
            setting = conn.execute("SHOW synchronous_commit").fetchone()[0]
        assert setting == "on", setting
        rows = []
        for index, count in enumerate(counts):
            order = ("uet", "raw") if index % 2 == 0 else ("raw", "uet")
            rates = {kind: _writers_round(ctx, kind, ledger_url, run_ids[:count], seconds)
                     for kind in order}
            rows.append((count, rates["uet"], rates["raw"]))
            print(f"  {count} writers done ({' then '.join(order)})", file=sys.stderr)
        return rows


def print_writers(rows: list[tuple[int, float, float]]) -> bool:
    """The issue's table and the one-line summary; whether the issue's targets are met."""
    print("| writers | uet on PostgreSQL | raw psycopg | ratio |")
    print("|---|---|---|---|")
    for count, uet_rate, raw_rate in rows:
        print(f"| {count} | {uet_rate:,.0f}/s | {raw_rate:,.0f}/s | {uet_rate / raw_rate:.2f} |")
    print("PG_WRITERS " + " ".join(f"{count}:{uet_rate / raw_rate:.2f}"
                                   for count, uet_rate, raw_rate in rows))
    ratios = {count: uet_rate / raw_rate for count, uet_rate, raw_rate in rows}
    ok = ratios.get(1, 1.0) >= 0.8 and ratios.get(8, 1.0) >= 0.7
    print(f"targets (issue 16): 1 writer >= 0.80x raw, 8 writers >= 0.70x raw: "
          f"{'met' if ok else 'not met'}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter blocks")
    parser.add_argument("--url", default=os.environ.get(pgserver.ENV_VAR),
                        help="a PostgreSQL server to use instead of a private one")
    parser.add_argument("--writers-only", action="store_true",
                        help="only the table of 1, 2, 4, 8 writer processes")
    parser.add_argument("--seconds", type=float, default=None,
                        help="how long each writer round writes (default 4, 2 with --quick)")
    args = parser.parse_args()
    blocks, per_block = (3, 200) if args.quick else (9, 500)
    seconds = args.seconds if args.seconds is not None else (2.0 if args.quick else 4.0)
    if not seconds > 0:
        parser.error("--seconds must be > 0")
    server = None
    url = args.url
    if not url:
        server = pgserver.Server()
        url = server.start(durable=True)  # fsync on, synchronous_commit on: no test settings
    results: dict[str, tuple[float, float]] = {}
    try:
        with psycopg.connect(url) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
            durability = conn.execute("SHOW synchronous_commit").fetchone()[0]
            fsync = conn.execute("SHOW fsync").fetchone()[0]
        print(f"postgresql {version} (synchronous_commit={durability}, fsync={fsync}), "
              f"psycopg {psycopg.__version__}, python {sys.version.split()[0]}, "
              f"{os.cpu_count()} cpus")
        if not args.writers_only:
            print(f"{blocks} alternating blocks of {per_block} calls each, medians")
            results = bench(url, blocks, per_block)
            for name, (uet_rate, raw_rate) in results.items():
                ratio = uet_rate / raw_rate
                print(f"{name:<13} uet {uet_rate:8,.0f}/s   raw psycopg {raw_rate:8,.0f}/s   "
                      f"ratio {ratio:6.1%}   (target >= 60 %)")
            print()
        print(f"writers: N processes each writing events for {seconds:g} s, one commit per "
              f"event, aggregate events/s; synchronous_commit=on set per session"
              f"{'' if server is None else ' (private server: its durable defaults)'}, "
              f"fsync={fsync}")
        rows = bench_writers(url, seconds)
    finally:
        if server is not None:
            server.stop()
    writers_ok = print_writers(rows)
    if args.writers_only:
        return 0 if writers_ok else 1
    return 0 if all(u / r >= 0.6 for u, r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Speed of the PostgreSQL backend against raw psycopg doing the same statements, side by
side in one process, on one server.

    .venv/bin/python bench/bench_postgres.py [--quick] [--url postgresql://...]

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
"""

from __future__ import annotations

import argparse
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
            "metadata": None})
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter blocks")
    parser.add_argument("--url", default=os.environ.get(pgserver.ENV_VAR),
                        help="a PostgreSQL server to use instead of a private one")
    args = parser.parse_args()
    blocks, per_block = (3, 200) if args.quick else (9, 500)
    server = None
    url = args.url
    if not url:
        server = pgserver.Server()
        url = server.start(durable=True)
    try:
        with psycopg.connect(url) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
            durability = conn.execute("SHOW synchronous_commit").fetchone()[0]
        print(f"postgresql {version} (synchronous_commit={durability}), psycopg "
              f"{psycopg.__version__}, python {sys.version.split()[0]}")
        print(f"{blocks} alternating blocks of {per_block} calls each, medians")
        results = bench(url, blocks, per_block)
    finally:
        if server is not None:
            server.stop()
    ok = True
    for name, (uet_rate, raw_rate) in results.items():
        ratio = uet_rate / raw_rate
        ok = ok and ratio >= 0.6
        print(f"{name:<13} uet {uet_rate:8,.0f}/s   raw psycopg {raw_rate:8,.0f}/s   "
              f"ratio {ratio:6.1%}   (target >= 60 %)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Speed of `uet gc` (Database.gc): runs deleted per second, the longest write transaction one
batch held, and the worst wait of writers running meanwhile, on SQLite and PostgreSQL.

    .venv/bin/python bench/bench_gc.py [--size 100k|1M|N] [--pg-size N] [--writers 4]
        [--records | --no-records] [--engine sqlite postgresql] [--cache DIR] [--url URL]
        [--baseline-seconds S] [--batch N] [--yield-ratio R]

The ledger: `bench/build_ledger.py` (runs over the last 365 days, 3 step sequences and up to
4 events a run), plus — with `--records`, the default — what the orchestrator records
beside them: a patch of each step attempt with its ledger entry and a gate of that entry,
and two gates of each run that started (`unit` depending on `lint`). `uet gc --older-than
30d` then deletes about 92 % of the runs with all of that.

Each engine, on fresh copies of the same ledger:
1. gc alone: runs deleted per second, batches, and the time each batch held its write
   transaction (median, 99th percentile, longest);
2. writers alone for --baseline-seconds: N processes (`--writers`) each recording runs as
   an orchestrator does (create, start, a step attempt, an event, end the step, end the
   run: six calls, each one transaction) with the default busy timeout of 10 s; the wait of
   each call is timed (median, 99th percentile, worst);
3. gc while the same writers write (they stop when gc ends): the same figures for both,
   every DatabaseBusyError a writer met counted (there must be none).
Then prints the ratios: gc's rate with writers / alone, the writers' worst wait during gc /
without it. It measures, it asserts nothing about time (exit 1 only when a writer met a
DatabaseBusyError or another error, or gc left the ledger inconsistent).

SQLite: `--size` runs (default 100k; 1M builds an 8.6 GB file with records in about 3 min,
and the whole run takes about 25 min; `--cache DIR` keeps the built ledger for the next
run). PostgreSQL: a private server
(`bench/pgserver.py`, the server's durable defaults: fsync on, synchronous_commit on), or
`--url`; the ledger is a build of `--pg-size` runs (default 50k) copied in with COPY.

The module also serves tests/test_cli_gc.py: `add_records`, `copy_to_postgres`, and the
writer program (`python bench/bench_gc.py write ...`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

HERE = os.path.abspath(__file__)
CUTOFF_DAYS = 30
# every table that holds a run's records, parents first (the order rows are copied in)
TABLES = ("runs", "step_attempts", "run_events", "patches", "patch_ledger_entries",
          "test_gates", "gate_dependencies")


# -- the ledger -------------------------------------------------------------------------

RECORDS = (
    # a patch of every step attempt (its sha256: 64 digits from the rowid, unique)
    "INSERT INTO patches (patch_id, diff, sha256, files, size_bytes, run_id, step_attempt_id,"
    " created_at) SELECT 'P' || step_attempt_id, '--- a/app.py' || char(10) || '+++ b/app.py'"
    " || char(10) || '@@ -1 +1 @@' || char(10) || '-x = 1' || char(10) || '+x = 2' || char(10),"
    " printf('%064d', rowid), '[\"app.py\"]', 60, run_id, step_attempt_id, started_at"
    " FROM step_attempts",
    # its ledger entry
    "INSERT INTO patch_ledger_entries (ledger_id, patch_id, state, phase_id, state_history,"
    " created_at, updated_at) SELECT 'E' || p.patch_id, p.patch_id, 'created', r.phase_id,"
    " '[{\"state\": \"created\", \"at\": \"' || p.created_at || '\", \"reason\": \"\"}]',"
    " p.created_at, p.created_at FROM patches AS p JOIN runs AS r ON r.run_id = p.run_id",
    # a gate of the entry
    "INSERT INTO test_gates (gate_id, gate_type, name, phase_id, state, command, ledger_id,"
    " created_at) SELECT 'G' || ledger_id, 'UNIT', 'unit', phase_id, 'PENDING', 'pytest -q',"
    " ledger_id, created_at FROM patch_ledger_entries",
    # two gates of every run that started, unit depending on lint
    "INSERT INTO test_gates (gate_id, gate_type, name, phase_id, state, command, run_id,"
    " created_at) SELECT 'L' || run_id, 'LINT', 'lint', phase_id, 'PENDING', 'ruff check .',"
    " run_id, started_at FROM runs WHERE started_at IS NOT NULL",
    "INSERT INTO test_gates (gate_id, gate_type, name, phase_id, state, command, run_id,"
    " created_at) SELECT 'U' || run_id, 'UNIT', 'unit', phase_id, 'PENDING', 'pytest -q',"
    " run_id, started_at FROM runs WHERE started_at IS NOT NULL",
    "INSERT INTO gate_dependencies (gate_id, depends_on) SELECT 'U' || run_id, 'lint'"
    " FROM runs WHERE started_at IS NOT NULL",
)


def add_records(path: str | os.PathLike) -> dict[str, int]:
    """Add to a ledger built by build_ledger what an orchestrator records beside runs: a
    patch of each step attempt with its ledger entry and a gate of the entry, two gates of
    each run that started (one depending on the other). Plain SQL, one transaction; the
    row count of each table."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA cache_size=-512000")
        conn.execute("BEGIN")
        for statement in RECORDS:
            conn.execute(statement)
        conn.execute("COMMIT")
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
    finally:
        conn.close()


def build_cached(size: int, records: bool, folder: str, cache: str | None) -> str:
    """A pristine ledger of `size` runs (built once per cache folder), never written to."""
    from build_ledger import build
    name = f"gc-{size}{'-records' if records else ''}.db"
    path = os.path.join(cache or folder, name)
    if cache and os.path.exists(path):
        return path
    started = time.perf_counter()
    print(f"building {size:,} runs{' with records' if records else ''} ...", flush=True)
    build(path, size, progress=size >= 200_000)
    if records:
        add_records(path)
    print(f"  built in {time.perf_counter() - started:.0f} s "
          f"({os.path.getsize(path) / 1e9:.2f} GB)", flush=True)
    return path


def copy_ledger(source: str, target: str) -> str:
    """A copy of a ledger file, written through to the disk (so that the kernel's writeback
    of a multi-GB copy does not stall the writes measured next)."""
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(target + suffix):
            os.remove(target + suffix)
    shutil.copyfile(source, target)
    with open(target, "rb+") as f:
        os.fsync(f.fileno())
    return target


def copy_to_postgres(sqlite_path: str | os.PathLike, url: str) -> dict[str, int]:
    """Create a ledger at `url` (empty) and COPY every row of the SQLite ledger into it; the
    event sequence is moved past the highest seq, statistics are gathered (ANALYZE, as
    autovacuum would). The row count of each table copied."""
    import psycopg
    from uet.state import Database
    Database(url).close()
    source = sqlite3.connect(sqlite_path)
    counts = {}
    try:
        with psycopg.connect(url) as conn:
            for table in TABLES:
                columns = [r[1] for r in source.execute(f"PRAGMA table_info({table})")]
                names = ", ".join(columns)
                with conn.cursor().copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                    count = 0
                    for row in source.execute(f"SELECT {names} FROM {table}"):
                        copy.write_row(row)
                        count += 1
                counts[table] = count
            conn.execute("SELECT setval('uet_event_seq', coalesce((SELECT max(seq) FROM "
                         "run_events), 0) + 1, false)")
            conn.commit()
            conn.autocommit = True
            conn.execute("ANALYZE")
    finally:
        source.close()
    return counts


# -- the writers ------------------------------------------------------------------------

def write(path: str, name: str, go: str, stop: str, out: str) -> None:
    """A writer process: once `go` exists, record runs as an orchestrator does (six calls,
    each its own transaction) until `stop` exists; then write to `out` (JSON) the runs it
    recorded, how many calls met DatabaseBusyError or another error, and each call's
    seconds. It says it is ready (`out`.ready) once its ledger is open."""
    from uet.errors import DatabaseBusyError, UetError
    from uet.state import Database
    db = Database(path)
    db.schema_version()
    Path(out + ".ready").touch()
    while not os.path.exists(go):
        time.sleep(0.005)
    runs: list[str] = []
    waits: list[float] = []
    busy, errors = 0, []

    def call(function, *args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            waits.append(time.perf_counter() - started)

    while not os.path.exists(stop):
        try:
            run_id = call(db.create_run, {"project_id": f"writer-{name}", "phase_id": "PH",
                                          "metadata": {"writer": name}})
            call(db.transition_run, run_id, "running", expected="pending")
            step = call(db.create_step_attempt, {"run_id": run_id, "sequence": 1,
                                                 "tool_id": "aider"})
            call(db.create_event, {"run_id": run_id, "event_type": "tool.output",
                                   "data": {"line": len(runs)}})
            call(db.transition_step_attempt, step, "succeeded", exit_code=0)
            call(db.transition_run, run_id, "succeeded", exit_code=0)
            runs.append(run_id)
        except DatabaseBusyError:
            busy += 1
        except UetError as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    db.close()
    with open(out + ".tmp", "w") as f:
        json.dump({"runs": runs, "busy": busy, "errors": errors, "waits": waits}, f)
    os.replace(out + ".tmp", out)


class Writers:
    """N writer processes on one ledger: started ready, released at once, stopped on
    demand; their reports merged."""

    def __init__(self, ledger: str, count: int, folder: str, tag: str) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix=f"writers-{tag}-", dir=folder))
        self.go, self.stop_file = self.folder / "go", self.folder / "stop"
        self.outs = [str(self.folder / f"w{i}.json") for i in range(count)]
        self.procs = [subprocess.Popen(
            [sys.executable, HERE, "write", ledger, f"{tag}{i}", str(self.go),
             str(self.stop_file), out], stdin=subprocess.DEVNULL)
            for i, out in enumerate(self.outs)]
        deadline = time.monotonic() + 120
        while not all(os.path.exists(out + ".ready") for out in self.outs):
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                self.kill()
                raise RuntimeError("a writer did not get ready")
            time.sleep(0.01)

    def start(self) -> None:
        self.go.touch()

    def stop(self, timeout: float = 120) -> dict[str, Any]:
        self.stop_file.touch()
        try:
            for proc in self.procs:
                proc.wait(timeout)
        finally:
            self.kill()
        reports = [json.loads(Path(out).read_text()) for out in self.outs]
        return {"runs": [r for report in reports for r in report["runs"]],
                "busy": sum(report["busy"] for report in reports),
                "errors": [e for report in reports for e in report["errors"]],
                "waits": [w for report in reports for w in report["waits"]]}

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)


# -- measuring --------------------------------------------------------------------------

def percentile(values: list[float], share: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def cutoff() -> str:
    from uet.state.ids import normalize_timestamp
    return normalize_timestamp(datetime.now(timezone.utc) - timedelta(days=CUTOFF_DAYS), "t")


def timed_gc(ledger: str, batch: int) -> dict[str, Any]:
    """One gc (older than 30 days) through the API, with each batch's write time."""
    from uet.state import Database
    held: list[float] = []

    def progress(result) -> None:
        if result.batches > len(held):
            held.append(result.last_batch_seconds)

    with Database(ledger) as db:
        started = time.perf_counter()
        result = db.gc(cutoff(), batch_size=batch, progress=progress)
        seconds = time.perf_counter() - started
    return {"runs": result.runs, "deleted": result.deleted, "seconds": seconds,
            "rate": result.runs / seconds if seconds else 0.0, "batches": result.batches,
            "held": held, "longest": result.longest_batch_seconds}


def consistent(ledger: str) -> bool:
    """The ledger after gc: integrity_check ok, no foreign-key violation. Run once the
    writers have stopped: integrity_check reads the whole file in one long read, and while
    a read lasts SQLite cannot start its write-ahead log over — writers going on meanwhile
    grow the log by their every commit (on a 1M-run ledger, until the disk was full)."""
    from uet.state import Database
    with Database(ledger) as db:
        problems = db.doctor()
    return (problems.get("foreign_key_violations", 0) == 0
            and problems.get("integrity_check") == ["ok"])


def engine_round(engine: str, make_copy, writers: int, baseline_s: float, batch: int,
                 folder: str) -> dict[str, Any]:
    """gc alone, writers alone, gc with writers, each on a fresh copy of the ledger."""
    print(f"[{engine}] gc alone ...", flush=True)
    first = make_copy("alone")
    alone = timed_gc(first, batch)
    alone["consistent"] = consistent(first)
    live = make_copy("live")
    print(f"[{engine}] {writers} writers alone for {baseline_s:g} s ...", flush=True)
    crew = Writers(live, writers, folder, "b")
    crew.start()
    time.sleep(baseline_s)  # the baseline is a fixed span of writing, by design
    baseline = crew.stop()
    print(f"[{engine}] gc with {writers} writers ...", flush=True)
    crew = Writers(live, writers, folder, "g")
    crew.start()
    wal = WalWatch(live if engine == "sqlite" else None)
    try:
        during = timed_gc(live, batch)
    finally:
        concurrent = crew.stop()
        wal.stop()
    during["wal_peak"] = wal.peak
    during["log_peak"] = wal.log_peak
    during["consistent"] = consistent(live)
    return {"alone": alone, "baseline": baseline, "during": during, "writers": concurrent}


class WalWatch:
    """The largest size a SQLite ledger's write-ahead log file reaches while it is watched
    (sampled every 0.2 s): what gc costs in disk space while others write; and the longest
    the log in use got (its last frame, from the shared-memory index: the file keeps its
    size when the log starts over, so the file is the high-water mark).

    The watching is done by a separate process: closing any descriptor of a file drops
    every POSIX lock this process holds on it, so opening the ledger's -shm file here, where
    gc's connection holds its locks, would corrupt the ledger (it did)."""

    PROGRAM = (
        "import os, struct, sys, time\n"
        "wal, stop, out = sys.argv[1:4]\n"
        "shm = wal[:-4] + '-shm'\n"
        "peak = log = 0\n"
        "while not os.path.exists(stop):\n"
        "    time.sleep(0.2)\n"
        "    try:\n"
        "        peak = max(peak, os.path.getsize(wal))\n"
        "        with open(shm, 'rb') as f:\n"
        "            h = f.read(24)\n"
        "        page = struct.unpack_from('=H', h, 14)[0]\n"
        "        page = 65536 if page == 1 else page\n"
        "        log = max(log, struct.unpack_from('=I', h, 16)[0] * (page + 24))\n"
        "    except (OSError, struct.error):\n"
        "        pass\n"
        "open(out, 'w').write(f'{peak} {log}')\n")

    def __init__(self, ledger: str | None) -> None:
        self.peak = self.log_peak = 0
        self._child = None
        if ledger is not None:
            self._stop, self._out = ledger + ".watch-stop", ledger + ".watch-out"
            for path in (self._stop, self._out):
                if os.path.exists(path):
                    os.remove(path)
            self._child = subprocess.Popen([sys.executable, "-c", self.PROGRAM,
                                            ledger + "-wal", self._stop, self._out])

    def stop(self) -> None:
        if self._child is None:
            return
        Path(self._stop).touch()
        self._child.wait(timeout=60)
        self.peak, self.log_peak = (int(v) for v in Path(self._out).read_text().split())
        for path in (self._stop, self._out):
            os.remove(path)


def report(engine: str, size: int, figures: dict[str, Any]) -> bool:
    alone, during = figures["alone"], figures["during"]
    base, busy = figures["baseline"], figures["writers"]
    ms = 1000.0

    def held(r: dict[str, Any]) -> str:
        return (f"batch write p50 {percentile(r['held'], .5) * ms:.1f} ms, "
                f"p99 {percentile(r['held'], .99) * ms:.1f} ms, "
                f"longest {r['longest'] * ms:.1f} ms")

    def waits(r: dict[str, Any]) -> str:
        return (f"call p50 {percentile(r['waits'], .5) * ms:.1f} ms, "
                f"p99 {percentile(r['waits'], .99) * ms:.1f} ms, "
                f"worst {max(r['waits'], default=0) * ms:.1f} ms; "
                f"{len(r['runs']):,} runs, DatabaseBusyError {r['busy']}, "
                f"other errors {len(r['errors'])}")

    rows = ", ".join(f"{table} {n:,}" for table, n in alone["deleted"].items() if n)
    print(f"\n== {engine}, {size:,} runs: gc --older-than {CUTOFF_DAYS}d deletes "
          f"{alone['runs']:,} runs ({rows})")
    print(f"gc alone:          {alone['rate']:8,.0f} runs/s in {alone['seconds']:.1f} s, "
          f"{alone['batches']:,} batches; {held(alone)}")
    print(f"gc with writers:   {during['rate']:8,.0f} runs/s in {during['seconds']:.1f} s, "
          f"{during['batches']:,} batches; {held(during)}"
          + (f"; write-ahead log file at most {during['wal_peak'] / 1e6:,.0f} MB (log in use "
             f"at most {during['log_peak'] / 1e6:,.0f} MB)" if during.get("wal_peak") else ""))
    print(f"writers alone:     {waits(base)}")
    print(f"writers during gc: {waits(busy)}")
    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}" if b else "-"

    print(f"ratios: gc rate with writers / alone {ratio(during['rate'], alone['rate'])}; "
          f"writers' worst wait during gc / alone "
          f"{ratio(max(busy['waits'], default=0), max(base['waits'], default=0))} (p99 "
          f"{ratio(percentile(busy['waits'], .99), percentile(base['waits'], .99))}); "
          f"gc's longest write / 50 ms target {during['longest'] / 0.05:.2f}")
    ok = (busy["busy"] == 0 and base["busy"] == 0 and not busy["errors"]
          and not base["errors"] and alone["consistent"] and during["consistent"])
    if not ok:
        print(f"PROBLEM: busy errors or other errors in the writers ({busy['errors'][:3]}), "
              "or an inconsistent ledger after gc")
    return ok


def size_of(text: str) -> int:
    text = text.strip().lower().replace(",", "").replace("_", "")
    factor = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return int(float(text[:-1] if factor > 1 else text) * factor)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=size_of, default=100_000,
                        help="runs in the SQLite ledger (100k, 1M, or a number)")
    parser.add_argument("--pg-size", type=size_of, default=50_000,
                        help="runs in the PostgreSQL ledger")
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--records", action=argparse.BooleanOptionalAction, default=True,
                        help="patches, entries and gates beside the runs (default on)")
    parser.add_argument("--engine", nargs="+", default=["sqlite", "postgresql"],
                        choices=["sqlite", "postgresql"])
    parser.add_argument("--cache", help="keep built SQLite ledgers in this folder")
    parser.add_argument("--url", default=os.environ.get("UET_TEST_POSTGRES_URL"),
                        help="a PostgreSQL server to use instead of a private one")
    parser.add_argument("--baseline-seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=None,
                        help="gc's batch size (default: uet's)")
    parser.add_argument("--yield-ratio", type=float, default=None,
                        help="SQLite: gc's pause after a batch, in multiples of the batch's "
                             "write time (default: uet's YIELD_RATIO)")
    args = parser.parse_args()
    from uet.state import retention
    batch = args.batch or retention.DEFAULT_BATCH_SIZE
    if args.yield_ratio is not None:
        retention.YIELD_RATIO = args.yield_ratio  # gc runs in this process
    print(f"python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}, "
          f"{os.cpu_count()} cpus; gc batch size {batch}, yield ratio "
          f"{retention.YIELD_RATIO:g}; {args.writers} writers")
    if args.cache:
        os.makedirs(args.cache, exist_ok=True)
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench-gc-", dir=args.cache) as folder:
        if "sqlite" in args.engine:
            pristine = build_cached(args.size, args.records, folder, args.cache)
            # one working copy, replaced by the next round's (a 1M-run ledger is 8.6 GB)
            work = os.path.join(folder, "work.db")
            figures = engine_round(
                "sqlite", lambda tag: copy_ledger(pristine, work),
                args.writers, args.baseline_seconds, batch, folder)
            ok &= report("SQLite", args.size, figures)
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(work + suffix):
                    os.remove(work + suffix)
        if "postgresql" in args.engine:
            ok &= postgres(args, batch, folder)
    return 0 if ok else 1


def postgres(args: argparse.Namespace, batch: int, folder: str) -> bool:
    import psycopg
    import pgserver
    server = None
    url = args.url
    if not url:
        server = pgserver.Server()
        url = server.start(durable=True)  # fsync on, synchronous_commit on
    try:
        with psycopg.connect(url) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
        print(f"\npostgresql {version}: building {args.pg_size:,} runs and copying them in",
              flush=True)
        pristine = build_cached(args.pg_size, args.records, folder, args.cache)
        schemas = []

        def make_copy(tag: str) -> str:
            name = f"bench_gc_{tag}"
            context = pgserver.schema(url, name)
            ledger = context.__enter__()
            schemas.append(context)
            started = time.perf_counter()
            copy_to_postgres(pristine, ledger)
            print(f"  copied into schema {name} in {time.perf_counter() - started:.0f} s",
                  flush=True)
            return ledger

        try:
            figures = engine_round("postgresql", make_copy, args.writers,
                                   args.baseline_seconds, batch, folder)
        finally:
            for context in schemas:
                context.__exit__(None, None, None)
        return report("PostgreSQL", args.pg_size, figures)
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    if sys.argv[1:2] == ["write"]:
        write(*sys.argv[2:7])
        sys.exit(0)
    sys.exit(main())

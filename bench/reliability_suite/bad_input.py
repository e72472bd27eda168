"""Check 3: garbage into every public create/update/list call and into the command line.

Property-based (hypothesis): random dicts with unknown keys, injection strings in keys and
values, wrong types, huge strings, non-JSON metadata, unknown states, dangling references.
Each case either succeeds or raises one of the documented input errors, and a call that
raised has changed nothing (the whole database image is compared, byte for byte).
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import sqlite3
from collections import Counter
from pathlib import Path

from reliability_suite.common import Mode, Result, logical_snapshot, populate

INJECTIONS = ["1; DROP TABLE runs", "run_id = run_id --", "' OR '1'='1", "metadata)",
              "\"; DELETE FROM run_events; --", "x' UNION SELECT * FROM runs --",
              "\x00", "\ud800", "RUN_ID", "", " ", "seq", "state = 'x' --", "rowid"]
STATES = ["pending", "running", "succeeded", "failed", "canceled", "quarantined",
          "SPAWNING", "IDLE", "BUSY", "DRAINING", "TERMINATED", "created", "validated",
          "queued", "applied", "verified", "committed", "dropped", "PENDING", "RUNNING",
          "PASSED", "FAILED", "BLOCKED", "SKIPPED", "Running", "done", "null"]
RESERVED = ["run.created", "run.state_changed", "worker.spawned", "gate.state_changed"]
MINIMUM_CASES = {"quick": 2_000, "soak": 50_000}
IDS = ["run-p", "run-r", "run-w", "step-r", "w-idle", "w-busy", "w-new", "LINT", "gone",
       "run-"]


def _strategies():
    from hypothesis import strategies as st
    from uet.state.tables import RUN_EVENTS, RUNS, STEP_ATTEMPTS
    names = st.sampled_from(sorted(set(RUNS.names) | set(STEP_ATTEMPTS.names)
                                   | set(RUN_EVENTS.names)) + INJECTIONS) | st.text(max_size=8)
    json_like = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
        lambda children: st.lists(children, max_size=3) | st.dictionaries(
            st.text(max_size=5), children, max_size=3), max_leaves=8)
    scalar = (st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
              | st.floats(allow_nan=True) | st.text(max_size=20) | st.binary(max_size=8)
              | st.sampled_from(STATES + IDS + INJECTIONS + RESERVED)
              | st.sampled_from(["2026-01-01T00:00:00Z", "2026-13-45", "yesterday",
                                 "x" * 70_000, "\u2028" * 3, "{not json"])
              | st.datetimes() | st.builds(object) | st.just(float("inf")))
    value = scalar | json_like | st.lists(scalar, max_size=3) | st.dictionaries(
        names, scalar, max_size=3) | st.sets(st.integers(), max_size=2)
    record = st.dictionaries(names, value, max_size=7) | value
    return st, names, value, record


def _targets(st, _names, value, record):
    """(name, strategy of (args, kwargs), call(ctx, args, kwargs))."""
    from uet.state import GateLedger, PatchLedger, WorkerLifecycle

    def ident(pool):
        return st.sampled_from(pool) | value

    def args(*strategies, **keywords):
        return st.tuples(st.tuples(*strategies), st.fixed_dictionaries(
            {}, optional=dict(keywords)))

    runs, steps = ident(["run-p", "run-r", "run-w"]), ident(["step-r", "step-w"])
    dangling_run = st.sampled_from(["gone", "run-404"]) | st.text(min_size=1, max_size=30)

    def near(**base):
        """A valid dict with a few keys replaced (often by a dangling reference or a
        reserved name), added or dropped."""
        keys, edge = st.sampled_from(list(base)), st.sampled_from(["gone", "run-404", *RESERVED])
        return st.builds(lambda change, drop: {k: v for k, v in {**base, **change}.items()
                                               if k not in drop},
                         st.dictionaries(st.one_of(keys, keys, keys, _names),
                                         st.one_of(edge, edge, value), max_size=2),
                         st.sets(st.sampled_from(list(base)), max_size=1))
    workers = ident(["w-idle", "w-busy", "w-new"])
    state = ident(STATES)
    db = lambda c: c["db"]  # noqa: E731
    w = lambda c: WorkerLifecycle(c["db"])  # noqa: E731
    p = lambda c: PatchLedger(c["db"])  # noqa: E731
    g = lambda c: GateLedger(c["db"])  # noqa: E731
    def open_ledger(c, a, k):
        from uet.state import Database
        Database(*a, **k).close()

    # never None or a real path: those would open the default or a file in the folder
    where = st.just(":memory:") | st.integers() | st.binary(max_size=4) | st.just("")
    return [
        ("Database(...)", args(where, durability=value | st.sampled_from(["normal", "full"]),
                               busy_timeout=value, read_only=value), open_ledger),
        ("create_run", args(near(project_id="p", phase_id="ph")), lambda c, a, k: db(c).create_run(*a, **k)),
        ("update_run", args(runs, near(metadata={}, state="running")), lambda c, a, k: db(c).update_run(*a, **k)),
        ("transition_run", args(runs, state, expected=state, exit_code=value,
                                error_message=value),
         lambda c, a, k: db(c).transition_run(*a, **k)),
        ("delete_run", args(runs), lambda c, a, k: db(c).delete_run(*a, **k)),
        ("get_run", args(runs), lambda c, a, k: db(c).get_run(*a, **k)),
        ("list_runs", args(record, ident([1, 10, None]), since=value),
         lambda c, a, k: db(c).list_runs(*a, **k)),
        ("resolve_run_id", args(runs), lambda c, a, k: db(c).resolve_run_id(*a, **k)),
        ("create_step_attempt", args(near(run_id="run-r", sequence=1, tool_id="t")),
         lambda c, a, k: db(c).create_step_attempt(*a, **k)),
        ("update_step_attempt", args(steps, near(exit_code=0, state="succeeded")),
         lambda c, a, k: db(c).update_step_attempt(*a, **k)),
        ("transition_step_attempt", args(steps, state, expected=state, exit_code=value,
                                         error_log=value, output_patch_id=value),
         lambda c, a, k: db(c).transition_step_attempt(*a, **k)),
        ("list_step_attempts", args(runs), lambda c, a, k: db(c).list_step_attempts(*a, **k)),
        # dangling references: everything valid but the run they point at
        ("create_step_attempt (dangling)", args(st.fixed_dictionaries(
            {"run_id": dangling_run, "sequence": st.integers(1, 3), "tool_id": st.just("t")})),
         lambda c, a, k: db(c).create_step_attempt(*a, **k)),
        ("create_event (dangling)", args(st.fixed_dictionaries(
            {"run_id": dangling_run, "event_type": st.just("note")})),
         lambda c, a, k: db(c).create_event(*a, **k)),
        # the ledger's own event types may not be forged
        ("create_event (reserved type)", args(st.fixed_dictionaries(
            {"run_id": st.sampled_from(["run-p", "run-r", "run-w"]),
             "event_type": st.sampled_from(RESERVED)}, optional={"data": value})),
         lambda c, a, k: db(c).create_event(*a, **k)),
        ("create_event", args(near(run_id="run-p", event_type="note")), lambda c, a, k: db(c).create_event(*a, **k)),
        ("list_events", args(runs), lambda c, a, k: db(c).list_events(*a, **k)),
        ("events_since", args(value, run_id=runs, limit=value),
         lambda c, a, k: db(c).events_since(*a, **k)),
        ("spawn_worker", args(workers, value, value),
         lambda c, a, k: w(c).spawn_worker(*a, **k)),
        ("worker transition_state", args(workers, state),
         lambda c, a, k: w(c).transition_state(*a, **k)),
        ("heartbeat", args(workers), lambda c, a, k: w(c).heartbeat(*a, **k)),
        ("claim_run", args(workers, runs), lambda c, a, k: w(c).claim_run(*a, **k)),
        ("release", args(workers), lambda c, a, k: w(c).release(*a, **k)),
        ("terminate_worker", args(workers), lambda c, a, k: w(c).terminate_worker(*a, **k)),
        ("find_stale", args(value, value), lambda c, a, k: w(c).find_stale(*a, **k)),
        ("reap_stale", args(value, value), lambda c, a, k: w(c).reap_stale(*a, **k)),
        ("list_workers", args(state), lambda c, a, k: w(c).list_workers(*a, **k)),
        ("record_patch", args(st.sampled_from([
            "--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n+b\n", "diff --git a/x b/y\nrename from x\n"
            "rename to y\n", "not a diff"]) | value, run_id=runs, step_attempt_id=steps),
         lambda c, a, k: p(c).record_patch(*a, **k)),
        ("create_entry", args(ident([c for c in ("patch",)]), value, value),
         lambda c, a, k: p(c).create_entry(*(c["patch"] if x == "patch" else x for x in a),
                                           **k)),
        ("patch transition_state", args(ident(["entry"]), state, value,
                                        expected_version=value),
         lambda c, a, k: p(c).transition_state(*(c["entry"] if x == "entry" else x
                                                 for x in a), **k)),
        ("quarantine", args(ident(["entry"]), value),
         lambda c, a, k: p(c).quarantine(*(c["entry"] if x == "entry" else x for x in a),
                                         **k)),
        ("set_validation", args(ident(["entry"]), format=value, scope=value, tests=value,
                                constraints=value),
         lambda c, a, k: p(c).set_validation(*(c["entry"] if x == "entry" else x
                                               for x in a), **k)),
        ("list_entries", args(state, value), lambda c, a, k: p(c).list_entries(*a, **k)),
        ("history_of_run", args(runs), lambda c, a, k: p(c).history_of_run(*a, **k)),
        ("define_gate", args(ident(["LINT", "UNIT", "SECURITY"]), ident(["ph"]), value,
                             name=value, depends_on=value | st.just(["LINT"]),
                             timeout_sec=value, run_id=runs, ledger_id=value),
         lambda c, a, k: g(c).define_gate(*a, **k)),
        ("gate transition_state", args(ident(["gate"]), state, exit_code=value, stdout=value,
                                       stderr=value),
         lambda c, a, k: g(c).transition_state(*(c["lint"] if x == "gate" else x
                                                 for x in a), **k)),
        ("expire_timeouts", args(value), lambda c, a, k: g(c).expire_timeouts(*a, **k)),
        ("list_gates", args(value, state), lambda c, a, k: g(c).list_gates(*a, **k)),
    ]


def _fresh():
    """An in-memory ledger with a little of everything for the calls to hit."""
    from uet.state import init_db
    db = init_db(":memory:")
    return {"db": db, **populate(db)}


def _image(db) -> bytes:
    return db._backend.connect().serialize()


def _documented(exc: BaseException) -> bool:
    """The errors bad input may raise: about the input, never about the storage."""
    from uet.errors import (AmbiguousIdError, ConcurrentUpdateError, InvalidTransitionError,
                            NotALedgerError, NotFoundError, ValidationError)
    return isinstance(exc, (ValidationError, NotFoundError, AmbiguousIdError,
                            InvalidTransitionError, ConcurrentUpdateError, NotALedgerError))


def _fuzz_api(cases: int, seed: int, counts: Counter, details: list[str]) -> int:
    """About `cases` cases spread over every API call; returns how many calls."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed
    st, names, value, record = _strategies()
    targets = _targets(st, names, value, record)
    per_target = -(-cases // len(targets))
    for name, strategy, call in targets:
        ctx = {"db": None, "since_reset": 0}

        @hypothesis_seed(seed)
        @settings(max_examples=per_target, deadline=None, database=None,
                  phases=[Phase.generate], suppress_health_check=list(HealthCheck))
        @given(strategy)
        def case(arguments):
            if ctx["db"] is None or ctx["since_reset"] >= 200:
                if ctx["db"] is not None:
                    ctx["db"]["db"].close()
                ctx["db"], ctx["since_reset"] = _fresh(), 0
            ctx["since_reset"] += 1
            counts["cases"] += 1
            db = ctx["db"]["db"]
            before = _image(db)
            try:
                call(ctx["db"], *arguments)
            except Exception as exc:  # judged below: only documented input errors may pass
                if not _documented(exc):
                    counts["untyped"] += 1
                    details.append(f"{name}{arguments!r:.120}: {type(exc).__name__}: "
                                   f"{str(exc)[:120]}")
                elif _image(db) != before:
                    counts["changed"] += 1
                    details.append(f"{name}{arguments!r:.120}: raised "
                                   f"{type(exc).__name__} but changed the ledger")
                else:
                    counts["refused"] += 1
        try:
            case()
        finally:
            if ctx["db"] is not None:
                ctx["db"]["db"].close()
    return len(targets)


CLI_COMMANDS = ["runs", "show", "events", "workers", "patches", "gates", "doctor"]
CLI_TOKENS = ["--json", "--limit", "--state", "--project", "--phase", "--run", "--since",
              "--db", "--type", "--debug", "--help", "-n", "0", "-1", "1", "99999999999999999",
              "run-p", "RUN", "pending", "bogus", "2026-01-01", "yesterday", "--", "-"]


# Writing commands get options from fixed lists (a free-text token could otherwise become
# the command `uet run` executes, or a ledger path outside the work folder).
RUN_OPTIONS = ["--project", "--phase", "--workstream", "--tool", "--timeout"]
RUN_FLAGS = ["--json"]
LEDGER_PATHS = ["cli.db", "new.db", "sub/dir/new.db", "", ".", "..", "cli.db/inner.db",
                "sub", "not-a-ledger.txt"]


def _invoke(argv: list[str]) -> tuple[object, str]:
    """Run the `uet` command line in this process: (exit code, stderr)."""
    from uet.cli import main
    out, err = io.StringIO(), io.StringIO()
    code: object = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except Exception as exc:  # counted: the CLI must turn every error into a line
            code = f"{type(exc).__name__}: {exc}"
    return code, err.getvalue()


def _contents(path: str) -> object:
    """What a file holds: its rows if it is a ledger, else its bytes (None: no file)."""
    if not os.path.isfile(path):
        return None
    try:
        return logical_snapshot(path)
    except sqlite3.DatabaseError:
        return Path(path).read_bytes()


def _growth(path: str) -> tuple:
    """How far the ledger's runs, step attempts and trail have grown."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT (SELECT count(*) FROM runs), "
                            "(SELECT count(*) FROM step_attempts), "
                            "(SELECT max(seq) FROM run_events)").fetchone()
    finally:
        conn.close()


def _judge_cli(argv: list[str], code: object, err: str, allowed: tuple, counts: Counter,
               details: list[str]) -> None:
    lines = err.strip().splitlines()
    # --debug asks for the traceback; otherwise an error is one clean line, the last
    # (progress notes may come before it); `uet run` passes on the command's own codes
    clean = code == 0 or "--debug" in argv or (argv[0] == "run" and code == 124) or (
        lines and lines[-1].startswith("uet: error:")
        and sum(line.startswith("uet: error:") for line in lines) == 1
        and "Traceback" not in err)
    if code not in allowed or not clean:
        counts["untyped"] += 1
        details.append(f"uet {' '.join(argv)!r:.100}: exit {code}, {err.strip()[:120]!r}")


def _fuzz_cli(cases: int, seed: int, workdir: Path, counts: Counter,
              details: list[str]) -> None:
    """Inspection commands with random tokens (the ledger must stay byte-identical), then
    `uet run`, `init` and `migrate` with random option values (an error changes nothing)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st
    from uet.state import init_db
    path = str(workdir / "cli.db")
    with init_db(path) as db:
        populate(db)
    (workdir / "not-a-ledger.txt").write_text("hello")
    image = Path(path).read_bytes()
    free_text = st.text(max_size=12).filter(lambda t: "\x00" not in t)
    token = st.sampled_from(CLI_TOKENS + INJECTIONS[:-4]) | free_text
    inspect = st.tuples(st.sampled_from(CLI_COMMANDS), st.lists(token, max_size=6))
    value = (st.sampled_from(["0", "-1", "1e-9", "nan", "inf", "1e400", "31536001", "x" * 5000,
                              "\x1b[2J", "a\nb", "\u2028", "' OR 1=1 --"])
             | free_text).filter(lambda v: not v.startswith("-") or v == "-1")
    option = st.tuples(st.sampled_from(RUN_OPTIONS), value).map(list) | st.sampled_from(
        RUN_FLAGS).map(lambda f: [f])
    writing = st.one_of(
        st.lists(option, max_size=4).map(lambda opts: ["run", "--db", path,
                                                       *[t for o in opts for t in o],
                                                       "--", "true"]),
        st.tuples(st.sampled_from(["init", "migrate"]), st.sampled_from(LEDGER_PATHS),
                  st.lists(st.sampled_from(RUN_FLAGS + ["--debug"]), max_size=2)).map(
            lambda t: [t[0], "--db", t[1], *t[2]]))
    settings_ = settings(max_examples=cases // 2, deadline=None, database=None,
                         phases=[Phase.generate], suppress_health_check=list(HealthCheck))

    @hypothesis_seed(seed)
    @settings_
    @given(inspect)
    def inspection(arguments):
        command, rest = arguments
        if "--follow" in rest or "-f" in rest:
            return
        counts["cases"] += 1
        argv = [command, "--db", path, *rest]
        code, err = _invoke(argv)
        _judge_cli(argv, code, err, (0, 1, 2), counts, details)
        if Path(path).read_bytes() != image:
            counts["changed"] += 1
            details.append(f"uet {command} {rest!r:.80} changed the ledger")

    @hypothesis_seed(seed)
    @settings_
    @given(writing)
    def writes(argv):
        counts["cases"] += 1
        # the shared ledger grows with every recorded run: compare what a run would add
        target = path if argv[0] == "run" else str(workdir / argv[2])
        contents = _growth if argv[0] == "run" else _contents
        before = contents(target)
        code, err = _invoke(argv)
        # uet run passes on the command's own code: 124 is a timeout, recorded as a run
        _judge_cli(argv, code, err, (0, 1, 2, 124) if argv[0] == "run" else (0, 1, 2),
                   counts, details)
        if code not in (0, 124) and before is not None and contents(target) != before:
            counts["changed"] += 1
            details.append(f"uet {' '.join(argv)!r:.80} failed but changed the ledger")

    cwd = os.getcwd()
    os.chdir(workdir)  # relative ledger paths land here, never in the caller's folder
    try:
        inspection()
        writes()
    finally:
        os.chdir(cwd)


def run(mode: Mode, workdir: Path, mutant: str | None, rng: random.Random) -> Result:
    result = Result("bad_input")
    counts: Counter = Counter()
    details: list[str] = []
    seed = rng.randrange(2**31)
    cli_cases = max(100, mode.bad_input_cases // 12)
    targets = _fuzz_api(mode.bad_input_cases - cli_cases, seed, counts, details)
    _fuzz_cli(cli_cases, seed, workdir, counts, details)
    required = MINIMUM_CASES[mode.name]
    if counts["cases"] < required:  # a check that did not do its job must not pass
        raise RuntimeError(f"only {counts['cases']} bad-input cases ran; {mode.name} mode "
                           f"needs at least {required}")
    result.add("cases tried", counts["cases"], zero=False,
               note=f"{targets} API calls and {len(CLI_COMMANDS) + 3} commands")
    result.add("refused with a documented error", counts["refused"], zero=False)
    result.add("ledger changed after an error", counts["changed"], "partial")
    result.add("untyped or storage errors escaping", counts["untyped"], "untyped")
    result.details = details
    return result

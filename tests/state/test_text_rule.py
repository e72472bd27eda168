"""Every value in its own range. Text, wherever a caller puts it (ids, columns, JSON keys and
values at any depth, worker affinity, patch and gate text), is valid Unicode without NUL, or
the call is refused with a ValidationError naming the path (`metadata.a[2].b`) and nothing is
written; integers are refused outside what they can mean (a sequence below 1, an exit code
outside 32 bits)."""

from __future__ import annotations

import itertools
import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import raw_execute
from uet.errors import ValidationError
from uet.state import GateLedger, PatchLedger, WorkerLifecycle

SURROGATE = "is not valid Unicode text (it contains a lone surrogate)"
NUL = r"contains a NUL character (\x00), which a ledger cannot store; remove or escape it"
DIFF = "--- a/app.py\n+++ b/app.py\n@@ -1 +1 @@\n-print(1)\n+print(2)\n"


def _everything(db) -> tuple:
    """Every record the public API can list: a call that failed must leave it as it was."""
    runs = db.list_runs(limit=None)
    return (runs, [db.list_step_attempts(r["run_id"]) for r in runs],
            db.events_since(0, limit=10**6), WorkerLifecycle(db).list_workers(),
            PatchLedger(db).list_entries(), GateLedger(db).list_gates())


@pytest.fixture
def ids(db):
    """A run with a step attempt, and a worker, to update and refer to."""
    run_id = db.create_run({"run_id": "r", "project_id": "p", "phase_id": "ph"})
    step_id = db.create_step_attempt({"step_attempt_id": "s", "run_id": run_id, "sequence": 1,
                                      "tool_id": "t"})
    WorkerLifecycle(db).spawn_worker("w", "t")
    return run_id, step_id


# -- text inside JSON ----------------------------------------------------------------------

JSON_CASES = {
    "run metadata, in a list in a dict": (
        lambda db: db.create_run({"project_id": "p", "phase_id": "ph",
                                  "metadata": {"a": [0, 1, {"b": "x\ud800"}]}}),
        "run field 'metadata' at metadata.a[2].b " + SURROGATE, "metadata.a[2].b"),
    "run metadata, a key that is no plain name": (
        lambda db: db.create_run({"project_id": "p", "phase_id": "ph",
                                  "metadata": {"ok": 1, "x y": {"k\x00": 2}}}),
        'run field \'metadata\' at metadata["x y"]["k\\u0000"] (a key) ' + NUL,
        'metadata["x y"]["k\\u0000"]'),
    "run metadata by update_run": (
        lambda db: db.update_run("r", {"error_message": "fine",
                                       "metadata": {"notes": ["ok", "\udc00"]}}),
        "run field 'metadata' at metadata.notes[1] " + SURROGATE, "metadata.notes[1]"),
    "step attempt metadata, a long key": (
        lambda db: db.create_step_attempt({"run_id": "r", "sequence": 2, "tool_id": "t",
                                           "metadata": {"k" * 50 + "\ud800": True}}),
        f"step_attempt field 'metadata' at metadata[\"{'k' * 40}\"...] (a key) " + SURROGATE,
        f"metadata[\"{'k' * 40}\"...]"),
    "step attempt metadata by update_step_attempt": (
        lambda db: db.update_step_attempt("s", {"metadata": {"out": {"tail": "a\x00b"}}}),
        "step_attempt field 'metadata' at metadata.out.tail " + NUL, "metadata.out.tail"),
    "event data, deep in lists": (
        lambda db: db.create_event({"run_id": "r", "event_type": "note",
                                    "data": {"rows": [[{"v": "\x00"}]]}}),
        "event field 'data' at data.rows[0][0].v " + NUL, "data.rows[0][0].v"),
    "event data, under a key JSON writes as text": (
        lambda db: db.create_event({"run_id": "r", "event_type": "note",
                                    "data": {"by_code": {1: ["ok", "\x00"]}}}),
        'event field \'data\' at data.by_code["1"][1] ' + NUL, 'data.by_code["1"][1]'),
    "worker affinity": (
        lambda db: WorkerLifecycle(db).spawn_worker("w2", "t", {"tags": ["py", "\ud83d"]}),
        "affinity at affinity.tags[1] " + SURROGATE, "affinity.tags[1]"),
}


@pytest.mark.parametrize("case", JSON_CASES)
def test_text_in_json_breaking_the_rule_is_refused_naming_its_path(db, ids, case):
    call, message, path = JSON_CASES[case]
    before = _everything(db)
    with pytest.raises(ValidationError, match="^" + re.escape(message) + "$") as info:
        call(db)
    assert info.value.field == path
    assert _everything(db) == before


def test_the_first_text_breaking_the_rule_is_named_in_document_order(db):
    with pytest.raises(ValidationError, match=r"^run field 'metadata' at metadata\.b\[0\] "
                                              + re.escape(NUL)) as info:
        db.create_run({"project_id": "p", "phase_id": "ph",
                       "metadata": {"a": "fine", "b": ["\x00", "\ud800"], "\ud800": 1}})
    assert info.value.field == "metadata.b[0]"


def test_escaped_forms_and_other_characters_are_just_text(db):
    """What looks like a NUL or a surrogate but is not one (their escapes as text, a pair
    that makes one character, control characters) is stored and read back as given."""
    metadata = {"\\u0000": "\\ud800", "emoji \U0001F600": ["\x01\x1b[2J", "é"], "": ""}
    run_id = db.create_run({"project_id": "p", "phase_id": "ph", "metadata": metadata})
    assert db.get_run(run_id)["metadata"] == metadata
    db.create_event({"run_id": run_id, "event_type": "note", "data": metadata})
    assert db.list_events(run_id)[-1]["data"] == metadata


# -- the property: hostile strings at random depth -----------------------------------------

HOSTILE = ("\ud800", "\udbff", "\udc00", "\udfff", "\x00")
CLEAN = st.text(max_size=6)
# about one string in six holds a hostile character, somewhere in it
TEXT = st.builds(lambda head, bad, tail, dice: head + (bad if dice == 0 else "") + tail,
                 CLEAN, st.sampled_from(HOSTILE), CLEAN, st.integers(0, 5))
LEAVES = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
          | st.floats(allow_nan=False, allow_infinity=False) | TEXT)
JSON_VALUES = st.recursive(LEAVES, lambda children: st.lists(children, max_size=3)
                           | st.dictionaries(TEXT, children, max_size=3), max_leaves=10)
OBJECTS = st.dictionaries(TEXT, JSON_VALUES, max_size=4)
TARGETS = ("create_run", "update_run", "create_step_attempt", "update_step_attempt",
           "create_event", "spawn_worker")
PROPERTY = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


def _fault(text: str) -> str | None:
    if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        return SURROGATE
    return NUL if "\x00" in text else None


def _path(field: str, steps: list) -> str:
    """The documented form of a path (keys here are short: never cut)."""
    return field + "".join(
        f"[{step}]" if isinstance(step, int)
        else f".{step}" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", step)
        else f"[{json.dumps(step)}]" for step in steps)


def _breaches(field: str, value, steps=()) -> list[tuple[str, str]]:
    """Each key or string of `value` that breaks the rule: (its path, how a refusal
    describes it after "at ")."""
    found = []
    if isinstance(value, str):
        if _fault(value):
            path = _path(field, list(steps))
            found.append((path, f"{path} {_fault(value)}"))
    elif isinstance(value, dict):
        for key, child in value.items():
            if _fault(key):
                path = _path(field, [*steps, key])
                found.append((path, f"{path} (a key) {_fault(key)}"))
            found.extend(_breaches(field, child, (*steps, key)))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            found.extend(_breaches(field, child, (*steps, i)))
    return found


def _write(db, target: str, n: int, value: dict):
    """Put `value` where `target` takes JSON: (what, field, read back, written at all)."""
    run_id, step_id, worker_id = f"run-{n}", f"step-{n}", f"worker-{n}"
    if target in ("update_run", "create_step_attempt", "update_step_attempt", "create_event"):
        db.create_run({"run_id": run_id, "project_id": "p", "phase_id": "ph"})
    if target == "update_step_attempt":
        db.create_step_attempt({"step_attempt_id": step_id, "run_id": run_id, "sequence": 1,
                                "tool_id": "t"})
    cursor = (db.events_since(0, limit=10**6) or [{"seq": 0}])[-1]["seq"]
    calls = {
        "create_run": lambda: db.create_run({"run_id": run_id, "project_id": "p",
                                             "phase_id": "ph", "metadata": value}),
        "update_run": lambda: db.update_run(run_id, {"metadata": value}),
        "create_step_attempt": lambda: db.create_step_attempt({
            "step_attempt_id": step_id, "run_id": run_id, "sequence": 1, "tool_id": "t",
            "metadata": value}),
        "update_step_attempt": lambda: db.update_step_attempt(step_id, {"metadata": value}),
        "create_event": lambda: db.create_event({"event_id": f"event-{n}", "run_id": run_id,
                                                 "event_type": "note", "data": value}),
        "spawn_worker": lambda: WorkerLifecycle(db).spawn_worker(worker_id, "t", value),
    }
    reads = {
        "create_run": lambda: (db.get_run(run_id) or {}).get("metadata"),
        "update_run": lambda: db.get_run(run_id)["metadata"],
        "create_step_attempt": lambda: (db.get_step_attempt(step_id) or {}).get("metadata"),
        "update_step_attempt": lambda: db.get_step_attempt(step_id)["metadata"],
        "create_event": lambda: [e["data"] for e in db.list_events(run_id)
                                 if e["event_id"] == f"event-{n}"],
        "spawn_worker": lambda: getattr(WorkerLifecycle(db).get_worker(worker_id),
                                        "affinity", None),
    }
    entity = {"create_run": "run", "update_run": "run", "create_event": "event"}.get(
        target, "step_attempt")
    what, field = ((f"{entity} field 'data'", "data") if target == "create_event"
                   else ("affinity", "affinity") if target == "spawn_worker"
                   else (f"{entity} field 'metadata'", "metadata"))
    return calls[target], reads[target], what, field, cursor


@PROPERTY
@given(target=st.sampled_from(TARGETS), value=OBJECTS)
def test_hostile_text_at_any_depth_is_refused_with_its_path_or_stored_as_given(db, target,
                                                                               value):
    n = next(_numbers)
    call, read, what, field, cursor = _write(db, target, n, value)
    before = read()
    breaches = _breaches(field, value)
    try:
        call()
    except ValidationError as exc:
        assert breaches, f"refused though every text keeps the rule: {exc}"
        assert (exc.field, str(exc)) in [(path, f"{what} at {said}") for path, said in breaches]
        assert read() == before and db.events_since(cursor) == []  # nothing written
        return
    assert not breaches, f"accepted {breaches}"
    got = read()
    assert got == ([value] if target == "create_event" else value)
    json.dumps(got, ensure_ascii=False).encode("utf-8")  # every reader can show it


_numbers = itertools.count()


# -- text arguments of the V2 records ------------------------------------------------------

def _v2_calls():
    workers = lambda db: WorkerLifecycle(db)  # noqa: E731
    patches = lambda db: PatchLedger(db)  # noqa: E731
    gates = lambda db: GateLedger(db)  # noqa: E731

    def entry(db):
        return patches(db).create_entry(patches(db).record_patch(DIFF, run_id="r"), "PH")

    def running_gate(db):
        gate = gates(db).define_gate("LINT", "PH", "ruff", run_id="r")
        gates(db).transition_state(gate["gate_id"], "RUNNING")
        return gate["gate_id"]

    return {
        "worker_id": lambda db, bad: workers(db).spawn_worker(bad, "t"),
        "worker_type": lambda db, bad: workers(db).spawn_worker("w2", bad),
        "diff": lambda db, bad: patches(db).record_patch(DIFF + bad, run_id="r"),
        "phase_id": lambda db, bad: patches(db).create_entry(
            patches(db).record_patch(DIFF, run_id="r"), bad),
        "workstream_id": lambda db, bad: patches(db).create_entry(
            patches(db).record_patch(DIFF, run_id="r"), "PH", bad),
        "reason": lambda db, bad: patches(db).transition_state(
            entry(db).ledger_id, "validated", reason=bad),
        "command": lambda db, bad: gates(db).define_gate("LINT", "PH", bad),
        "name": lambda db, bad: gates(db).define_gate("LINT", "PH", "ruff", name=bad),
        "depends_on": lambda db, bad: gates(db).define_gate("LINT", "PH", "ruff",
                                                            depends_on=[bad]),
        "stdout": lambda db, bad: gates(db).transition_state(running_gate(db), "PASSED",
                                                             exit_code=0, stdout=bad),
        "stderr": lambda db, bad: gates(db).transition_state(running_gate(db), "FAILED",
                                                             exit_code=1, stderr=bad),
    }


V2_CALLS = _v2_calls()


@pytest.mark.parametrize("bad, fault", [("a\ud800", SURROGATE), ("a\x00", NUL)],
                         ids=["surrogate", "nul"])
@pytest.mark.parametrize("argument", V2_CALLS)
def test_v2_text_arguments_keep_the_rule(db, ids, argument, bad, fault):
    """Every text argument of the worker, patch and gate calls is refused, naming it."""
    with pytest.raises(ValidationError, match=f"^{argument} {re.escape(fault)}$") as info:
        V2_CALLS[argument](db, bad)
    assert info.value.field == argument


# -- integers in their own range -----------------------------------------------------------

def test_a_step_sequence_starts_at_one(db, ids):
    before = _everything(db)
    for bad in (0, -1, -2**63):
        with pytest.raises(ValidationError, match=f"^step_attempt field 'sequence' must be at "
                                                  f"least 1, got {bad}$") as info:
            db.create_step_attempt({"run_id": "r", "sequence": bad, "tool_id": "t"})
        assert info.value.field == "sequence"
    with pytest.raises(ValidationError, match="^step_attempt field 'sequence' must be at "
                                              "least 1, got 0$"):
        db.update_step_attempt("s", {"sequence": 0})
    assert _everything(db) == before
    step_id = db.create_step_attempt({"run_id": "r", "sequence": 1, "tool_id": "t"})
    assert db.get_step_attempt(step_id)["attempt"] == 2


EXIT_RANGE = "from -2147483648 to 4294967295"


@pytest.mark.parametrize("code", [-2**31, -9, 0, 1, 124, 127, 128 + 9, 255, 3221225477,
                                  2**32 - 1])
def test_exit_codes_of_every_system_are_kept(db, ids, code):
    """POSIX statuses (uet records 128+N for signal N), Python's -N for a signal, Windows'
    32-bit codes signed or unsigned."""
    assert db.transition_run("r", "running", exit_code=code)["exit_code"] == code
    assert db.update_step_attempt("s", {"exit_code": code})["exit_code"] == code
    assert db.get_run(db.create_run({"project_id": "p", "phase_id": "ph",
                                     "exit_code": code}))["exit_code"] == code


@pytest.mark.parametrize("code", [-2**31 - 1, 2**32, 2**63 - 1, -2**63])
def test_exit_codes_outside_32_bits_are_refused(db, ids, code):
    before = _everything(db)
    message = f"^run field 'exit_code' must be {EXIT_RANGE}, got {code}$"
    with pytest.raises(ValidationError, match=message) as info:
        db.create_run({"project_id": "p", "phase_id": "ph", "exit_code": code})
    assert info.value.field == "exit_code"
    with pytest.raises(ValidationError, match=message):
        db.transition_run("r", "running", exit_code=code)
    with pytest.raises(ValidationError, match=message):
        db.update_run("r", {"exit_code": code})
    step_message = f"^step_attempt field 'exit_code' must be {EXIT_RANGE}, got {code}$"
    with pytest.raises(ValidationError, match=step_message):
        db.create_step_attempt({"run_id": "r", "sequence": 2, "tool_id": "t",
                                "exit_code": code})
    with pytest.raises(ValidationError, match=step_message):
        db.transition_step_attempt("s", "failed", exit_code=code)
    assert _everything(db) == before


def test_a_filter_finds_a_value_written_before_its_range_applied(db, ids):
    """A filter looks for what is stored: an older ledger may hold an exit code outside
    today's range, and asking for one finds it (or nothing) rather than failing."""
    raw_execute(db, "UPDATE runs SET exit_code = ? WHERE run_id = ?", (2**40, "r"))
    assert [r["run_id"] for r in db.list_runs({"exit_code": 2**40})] == ["r"]
    assert db.list_runs({"exit_code": -2**40}) == []

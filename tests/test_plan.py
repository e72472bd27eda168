"""uet.plan: the master plan's rules (schema, ids, ULIDs, references, cycles, durations) and its
patches (RFC 6902, all or nothing, metadata merged, each patch once) — on generated plans and
patches as well as written ones."""

from __future__ import annotations

import copy
import graphlib
import json
import random
import string

import jsonpatch
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from uet.plan import PlanError, apply_patches, load_plan, parse_patch, plan_problems
from uet.plan.document import ULID_RE, find_cycle, parse_json
from uet.plan.patching import json_equal, make_patch, patch_hash

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def ulid(rng: random.Random) -> str:
    return "0" + "".join(rng.choice(CROCKFORD) for _ in range(25))


def make_plan(seed: int = 0, phases: int = 2, workstreams: int = 3, tasks: int = 2,
              hours: bool = True) -> dict:
    """A valid plan: ids of their form, unique ULIDs, dependencies on earlier items only
    (no cycle), hours that add up."""
    rng = random.Random(seed)
    plan = {"meta": {"plan_id": "P", "version": "1", "patch_metadata": {}},
            "phases": {}, "implementation": {}, "validation": {}}
    all_ws: list[str] = []
    total = 0.0
    for p in range(phases):
        ph = f"PH-{p:03d}"
        phase = {"phase_id": ph, "name": f"phase {p}", "phase_ulid": ulid(rng),
                 "workstreams": {}}
        ph_hours = 0.0
        for w in range(workstreams):
            ws = f"WS-{p:03d}-{w + 1:03d}"
            deps = rng.sample(all_ws, k=min(len(all_ws), rng.randint(0, 2)))
            entry = {"workstream_id": ws, "phase_id": ph, "name": f"ws {w}",
                     "workstream_ulid": ulid(rng), "dependencies": deps, "tasks": {}}
            ws_hours = 0.0
            done: list[str] = []
            for t in range(tasks):
                tid = f"TSK-{p:03d}-{w + 1:03d}-{t + 1:03d}"
                h = rng.choice([0.25, 0.5, 1.0, 1.5])
                entry["tasks"][tid] = {"task_id": tid, "task_ulid": ulid(rng),
                                       "workstream_id": ws, "name": f"task {t}",
                                       "depends_on": rng.sample(done, k=min(len(done), 1)),
                                       **({"estimated_duration_hours": h} if hours else {})}
                done.append(tid)
                ws_hours += h
            if hours:
                entry["estimated_duration_hours"] = ws_hours
            phase["workstreams"][ws] = entry
            all_ws.append(ws)
            ph_hours += ws_hours
        if hours:
            phase["estimated_duration_hours"] = ph_hours
        plan["phases"][ph] = phase
        total += ph_hours
    if hours:
        plan["meta"]["estimated_duration_hours"] = total
    return plan


def paths(problems) -> list[str]:
    return [p.path for p in problems]


# -- validation ----------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 3), st.integers(0, 4), st.integers(0, 3),
       st.booleans())
def test_generated_plans_are_valid(seed, phases, workstreams, tasks, hours):
    assert plan_problems(make_plan(seed, phases, workstreams, tasks, hours)) == []


FAULTS = ["bad_ulid_char", "short_ulid", "lower_ulid", "dup_ulid", "missing_ws_dep",
          "missing_task_dep", "ws_cycle", "task_cycle", "key_not_id", "bad_ws_id", "hours",
          "phase_of_ws", "missing_required", "wrong_type", "dup_ws_id", "self_dep"]


def inject(plan: dict, fault: str, rng: random.Random) -> str:
    """Break the plan in one way; returns the JSON Pointer where the problem must be."""
    phase_key = rng.choice(list(plan["phases"]))
    phase = plan["phases"][phase_key]
    ws_key = rng.choice(list(phase["workstreams"]))
    ws = phase["workstreams"][ws_key]
    ws_path = f"/phases/{phase_key}/workstreams/{ws_key}"
    task_key = rng.choice(list(ws["tasks"])) if ws["tasks"] else None
    if fault == "bad_ulid_char":
        ws["workstream_ulid"] = "0" + "I" * 25
        return f"{ws_path}/workstream_ulid"
    if fault == "short_ulid":
        ws["workstream_ulid"] = ws["workstream_ulid"][:-1]
        return f"{ws_path}/workstream_ulid"
    if fault == "lower_ulid":
        ws["workstream_ulid"] = ws["workstream_ulid"].lower() + ""
        ws["workstream_ulid"] = "0" + ws["workstream_ulid"][1:].replace("0", "a")
        if ws["workstream_ulid"] == ws["workstream_ulid"].upper():
            ws["workstream_ulid"] = "0a" + ws["workstream_ulid"][2:]
        return f"{ws_path}/workstream_ulid"
    if fault == "dup_ulid":
        phase["phase_ulid"] = ws["workstream_ulid"]
        # the later of the two in document order is reported
        return f"{ws_path}/workstream_ulid"
    if fault == "missing_ws_dep":
        ws["dependencies"] = ws["dependencies"] + ["WS-999-999"]
        return f"{ws_path}/dependencies/{len(ws['dependencies']) - 1}"
    if fault == "missing_task_dep" and task_key:
        ws["tasks"][task_key]["depends_on"] = ["TSK-999-999-999"]
        return f"{ws_path}/tasks/{task_key}/depends_on/0"
    if fault == "self_dep":
        ws["dependencies"] = [ws_key]
        return f"{ws_path}/dependencies/0"
    if fault == "ws_cycle":
        # the first workstream of the plan depends on the last: with the generated
        # dependencies on earlier ones that may or may not close a circle, so make one
        first_phase = next(iter(plan["phases"].values()))
        first_key = next(iter(first_phase["workstreams"]))
        first = first_phase["workstreams"][first_key]
        if first_key == ws_key:
            first["dependencies"] = [first_key]
            return f"/phases/{phase_key}/workstreams/{first_key}/dependencies/0"
        ws["dependencies"] = [first_key]
        first["dependencies"] = [ws_key]
        return "cycle"
    if fault == "task_cycle" and task_key and len(ws["tasks"]) >= 2:
        a, b = list(ws["tasks"])[:2]
        ws["tasks"][a]["depends_on"] = [b]
        ws["tasks"][b]["depends_on"] = [a]
        return "cycle"
    if fault == "key_not_id":
        ws["workstream_id"] = ws_key + "-X"
        return f"{ws_path}/workstream_id"
    if fault == "bad_ws_id":
        phase["workstreams"]["ws-lower"] = dict(ws, workstream_id="ws-lower",
                                                workstream_ulid=ulid(rng), tasks={})
        phase["workstreams"]["ws-lower"].pop("estimated_duration_hours", None)
        return f"/phases/{phase_key}/workstreams/ws-lower"
    if fault == "hours":
        ws["estimated_duration_hours"] = 1000.0
        if ws["tasks"] and all("estimated_duration_hours" in t for t in ws["tasks"].values()):
            return f"{ws_path}/estimated_duration_hours"
        return f"/phases/{phase_key}/estimated_duration_hours"
    if fault == "phase_of_ws":
        ws["phase_id"] = "PH-777"
        return f"{ws_path}/phase_id"
    if fault == "missing_required":
        del ws["workstream_id"]
        return f"{ws_path}/workstream_id"
    if fault == "wrong_type":
        ws["estimated_duration_hours"] = "two"
        return f"{ws_path}/estimated_duration_hours"
    if fault == "dup_ws_id":
        other_key = "PH-000" if phase_key != "PH-000" else None
        if other_key is None or other_key not in plan["phases"]:
            plan["phases"]["PH-900"] = {"phase_id": "PH-900", "workstreams": {}}
            other_key = "PH-900"
        plan["phases"][other_key]["workstreams"][ws_key] = {
            "workstream_id": ws_key, "phase_id": other_key}
        return "dup"
    return ""


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 100_000), st.sampled_from(FAULTS))
def test_every_kind_of_fault_is_found_where_it_is(seed, fault):
    plan = make_plan(seed, phases=2, workstreams=3, tasks=2)
    expected = inject(plan, fault, random.Random(seed))
    if not expected:
        return  # the fault did not apply to this plan's shape
    problems = plan_problems(plan)
    assert problems, (fault, expected)
    if expected == "cycle":
        assert any("circle" in p.message for p in problems), problems
    elif expected == "dup":
        assert any("also used at" in p.message for p in problems), problems
    else:
        assert expected in paths(problems), (fault, problems)


def test_ulid_form():
    good = "01JDKCXWQP8WS000010DBTEST1"
    assert ULID_RE.match(good)
    for bad, why in [("01JDKCXWQP8PATCH006CORESTAT", "27 characters"),   # the framework's
                     ("01JDKCXWQP8PATCH006CORESTA", "'O'"),             # O is not base 32
                     ("81JDKCXWQP8WS000010DBTEST1", "48 bits"),
                     ("01jdkcxwqp8ws000010dbtest1", "capitals"),
                     ("01JDKCXWQP8WS000010DBTESU1", "'U'")]:
        plan = make_plan(1)
        plan["meta"]["x_ulid"] = bad
        found = [p for p in plan_problems(plan) if p.path == "/meta/x_ulid"]
        assert found and why in found[0].message, (bad, found)


def test_ulid_that_is_not_a_string_and_ulids_in_lists():
    plan = make_plan(2)
    plan["validation"]["checks"] = [{"check_ulid": 5}, {"check_ulid": "01JDKCXWQP8WS000010DBTEST1"},
                                    {"check_ulid": "01JDKCXWQP8WS000010DBTEST1"}]
    got = {p.path: p.message for p in plan_problems(plan)}
    assert "a ULID is a string" in got["/validation/checks/0/check_ulid"]
    assert "also used at /validation/checks/1/check_ulid" in got["/validation/checks/2/check_ulid"]


def test_top_level_workstreams_need_an_existing_phase():
    plan = make_plan(3)
    plan["workstreams"] = {"WS-500-001": {"workstream_id": "WS-500-001", "phase_id": "PH-500"},
                           "WS-500-002": {"workstream_id": "WS-500-002"}}
    got = {p.path: p.message for p in plan_problems(plan)}
    assert "PH-500, which is not in the plan" in got["/workstreams/WS-500-001/phase_id"]
    assert "required" in got["/workstreams/WS-500-002/phase_id"]
    plan["workstreams"]["WS-500-001"]["phase_id"] = "PH-000"
    plan["workstreams"]["WS-500-002"]["phase_id"] = "PH-001"
    assert plan_problems(plan) == []


def test_only_meta_and_phases_are_required_and_unknown_keys_are_allowed():
    plan = {"meta": {}, "phases": {}, "anything": {"else": [1, 2]}}
    assert plan_problems(plan) == []
    assert paths(plan_problems({"phases": {}})) == ["/meta"]
    assert paths(plan_problems({"meta": {}})) == ["/phases"]
    assert paths(plan_problems([])) == [""]


def test_hours_that_do_not_add_up_name_the_parts():
    plan = make_plan(4, phases=1, workstreams=2, tasks=0)
    plan["phases"]["PH-000"]["workstreams"]["WS-000-001"]["estimated_duration_hours"] = 1.5
    plan["phases"]["PH-000"]["workstreams"]["WS-000-002"]["estimated_duration_hours"] = 2.0
    plan["phases"]["PH-000"]["estimated_duration_hours"] = 9.5
    plan["meta"]["estimated_duration_hours"] = 9.5
    got = {p.path: p.message for p in plan_problems(plan)}
    assert got == {"/phases/PH-000/estimated_duration_hours":
                   "is 9.5, but its workstreams add up to 3.5 (WS-000-001 1.5, WS-000-002 2)"}
    # a part without hours: no total to check
    del plan["phases"]["PH-000"]["workstreams"]["WS-000-002"]["estimated_duration_hours"]
    assert plan_problems(plan) == []


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from("abcdefgh"), st.lists(st.sampled_from("abcdefgh"),
                                                               max_size=3), max_size=8))
def test_find_cycle_agrees_with_graphlib(graph):
    cycle = find_cycle(graph)
    try:
        list(graphlib.TopologicalSorter(graph).static_order())
        has_cycle = False
    except graphlib.CycleError:
        has_cycle = True
    assert bool(cycle) == has_cycle
    for a, b in zip(cycle, cycle[1:] + cycle[:1]):
        assert b in graph.get(a, ()), (cycle, graph)


def test_strict_json():
    for text, why in [('{"a": 1, "a": 2}', "appears twice"), ('{"a": NaN}', "NaN"),
                      ('{"a": Infinity}', "Infinity"), ('{"a": ', "not valid JSON"),
                      ("[" * 100_000, "")]:
        with pytest.raises(PlanError) as err:
            parse_json(text)
        assert why in str(err.value)


def test_load_plan_refuses_what_is_not_a_plan(tmp_path):
    cases = {"list.json": b"[]", "bin.json": b"\xff\xfe{}", "missing.json": None}
    for name, content in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(PlanError) as err:
            load_plan(tmp_path / name)
        assert name in str(err.value)
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(make_plan()).encode())
    assert load_plan(tmp_path / "bom.json") == make_plan()


# -- patches --------------------------------------------------------------------------------

META = {"op": "add", "path": "/meta/patch_metadata",
        "value": {"patch_id": "010-thing", "patch_ulid": "01JDKCXWQP8WS000010DBTEST1"}}


def patch(*ops, patch_id=None):
    return make_patch([copy.deepcopy(META), *ops] if patch_id is None else list(ops),
                      default_id=patch_id)


def test_metadata_is_merged_never_replacing_other_patches():
    plan = make_plan(5)
    plan["meta"]["patch_metadata"] = {"001": {"patch_id": "001-config", "applied": False}}
    result = apply_patches(plan, [patch({"op": "add", "path": "/implementation/x",
                                         "value": 1})], now="T")
    record = result.plan["meta"]["patch_metadata"]
    assert record["001"] == {"patch_id": "001-config", "applied": False}
    entry = record["010-thing"]
    assert entry["patch_ulid"] == META["value"]["patch_ulid"]
    assert entry["applied"] is True and entry["applied_at"] == "T"
    assert entry["operations_applied"] == 1 and len(entry["content_sha256"]) == 64
    assert result.plan["implementation"]["x"] == 1
    assert plan["implementation"] == {}   # the input is never changed


def test_a_patch_is_applied_once():
    plan = make_plan(6)
    p = patch({"op": "add", "path": "/implementation/x", "value": [1]})
    once = apply_patches(plan, [p])
    twice = apply_patches(once.plan, [p])
    assert [o.status for o in twice.outcomes] == ["already_applied"]
    assert twice.plan == once.plan and not twice.changed
    # the same patch twice in one call: the second is a no-op too
    both = apply_patches(plan, [p, p])
    assert [o.status for o in both.outcomes] == ["applied", "already_applied"]
    # the same id, other content: refused
    other = patch({"op": "add", "path": "/implementation/x", "value": [2]})
    with pytest.raises(PlanError, match="another patch with the id 010-thing"):
        apply_patches(once.plan, [other])
    # recorded by another tool (no hash): not applied a second time
    legacy = copy.deepcopy(plan)
    legacy["meta"]["patch_metadata"]["010"] = {"patch_id": "010-thing"}
    with pytest.raises(PlanError, match="without a content hash"):
        apply_patches(legacy, [p])


def test_the_hash_ignores_formatting_and_key_order():
    ops = [META, {"op": "replace", "path": "/meta/version", "value": {"b": 1, "a": [1, 2]}}]
    compact = parse_patch(json.dumps(ops, separators=(",", ":")))
    spaced = parse_patch(json.dumps([{k: v for k, v in reversed(list(op.items()))}
                                     for op in ops], indent=4))
    assert compact.sha256 == spaced.sha256 == patch_hash(ops)
    changed = copy.deepcopy(ops)
    changed[1]["value"]["a"] = [2, 1]
    assert patch_hash(changed) != compact.sha256


REFUSALS = [
    ({"op": "add", "path": "/phases/PH-000", "value": {}}, "already exists"),
    ({"op": "add", "path": "/phases/PH-000/workstreams/WS-000-001", "value": {}},
     "already exists"),
    ({"op": "add", "path": "", "value": {}}, "record of applied"),
    ({"op": "replace", "path": "/phases/PH-404", "value": {}}, "does not exist"),
    ({"op": "remove", "path": "/phases/PH-000/workstreams/WS-404"}, "does not exist"),
    ({"op": "test", "path": "/meta/nothing", "value": 1}, "does not exist"),
    ({"op": "test", "path": "/meta/version", "value": "2"}, "the test failed"),
    ({"op": "test", "path": "/phases/PH-000/workstreams/WS-000-001/tasks/TSK-000-001-001/"
                            "estimated_duration_hours", "value": True}, "the test failed"),
    ({"op": "add", "path": "/nowhere/x", "value": 1}, "its parent /nowhere does not exist"),
    ({"op": "add", "path": "/meta/version/x", "value": 1}, "is a value"),
    ({"op": "add", "path": "/phases/PH-000/workstreams/WS-000-001/dependencies/9",
      "value": "x"}, "not a position"),
    ({"op": "move", "from": "/phases/PH-404", "path": "/x"}, "does not exist"),
    ({"op": "move", "from": "/phases", "path": "/phases/PH-000/x"}, "moved into itself"),
    ({"op": "copy", "from": "/meta/version", "path": "/meta/plan_id"}, "already exists"),
    ({"op": "replace", "path": "/meta/patch_metadata", "value": {}}, "record of applied"),
    ({"op": "remove", "path": "/meta/patch_metadata/001"}, "record of applied"),
    ({"op": "add", "path": "/meta/patch_metadata/999", "value": {}}, "record of applied"),
    ({"op": "replace", "path": "/meta", "value": {}}, "record of applied"),
    ({"op": "remove", "path": "/meta"}, "record of applied"),
    ({"op": "move", "from": "/meta/patch_metadata", "path": "/x"}, "record of applied"),
    # applies, but leaves a plan with a new problem
    ({"op": "replace", "path": "/phases/PH-000/estimated_duration_hours", "value": 99},
     "add up to"),
    ({"op": "add", "path": "/phases/PH-000/workstreams/WS-000-009",
      "value": {"workstream_id": "WS-000-009", "phase_id": "PH-000",
                "dependencies": ["WS-404"]}}, "not in the plan"),
]


@pytest.mark.parametrize("op,why", REFUSALS, ids=[f"{o['op']} {o['path']}" for o, _ in REFUSALS])
def test_refusals_change_nothing(op, why):
    plan = make_plan(7)
    plan["meta"]["patch_metadata"] = {"001": {"patch_id": "001-x", "content_sha256": "a" * 64}}
    pristine = copy.deepcopy(plan)
    good = patch({"op": "add", "path": "/implementation/first", "value": 1},
                 patch_id=None)
    bad = make_patch([{"op": "add", "path": "/meta/patch_metadata",
                       "value": {"patch_id": "011-bad"}}, op])
    with pytest.raises(PlanError) as err:
        apply_patches(plan, [good, bad])   # the good one before it is not applied either
    assert why in str(err.value), str(err.value)
    assert plan == pristine


MALFORMED = [
    ({"op": "frobnicate", "path": "/x"}, "/1/op"),
    ({"path": "/x", "value": 1}, "/1/op"),
    ({"op": "add", "value": 1}, "/1/path"),
    ({"op": "add", "path": "/x"}, "/1/value"),
    ({"op": "add", "path": "x", "value": 1}, "/1/path"),
    ({"op": "add", "path": "/a~2b", "value": 1}, "/1/path"),
    ({"op": "move", "path": "/x"}, "/1/from"),
    ({"op": "copy", "path": "/x", "from": 3}, "/1/from"),
    ("add /x", "/1"),
]


@pytest.mark.parametrize("op,where", MALFORMED)
def test_malformed_operations_are_named(op, where):
    with pytest.raises(PlanError) as err:
        make_patch([META, op])
    assert where in [p.path for p in err.value.problems]


def test_malformed_patches():
    for data, why in [({}, "a JSON list"), ([], "no operations"),
                      ([META, META], "a second"),
                      ([{"op": "add", "path": "/meta/patch_metadata", "value": 3}], "object"),
                      ([{"op": "add", "path": "/meta/patch_metadata",
                         "value": {"patch_id": "../etc"}}], "not a patch id")]:
        with pytest.raises(PlanError, match=why):
            make_patch(data, default_id="fine")
    # no metadata: the id is the file's name
    assert make_patch([{"op": "add", "path": "/x", "value": 1}], default_id="012-y").patch_id \
        == "012-y"
    with pytest.raises(PlanError, match="not a patch id"):
        make_patch([{"op": "add", "path": "/x", "value": 1}], default_id="has space")


def test_json_equal_is_json_equality():
    assert json_equal(1, 1.0) and json_equal({"a": [1, {"b": None}]}, {"a": [1.0, {"b": None}]})
    assert not json_equal(True, 1) and not json_equal(0, False) and not json_equal("1", 1)
    assert not json_equal([1, 2], [2, 1]) and not json_equal({"a": 1}, {"a": 1, "b": 2})


# -- generated patches against the reference implementation ---------------------------------

def random_pointer(doc, rng: random.Random, *, existing: bool) -> str:
    """A pointer into `doc`: to an existing value, or to a new key of an existing object."""
    node, path = doc, ""
    while True:
        if isinstance(node, dict) and node and (rng.random() < 0.7 or node is doc):
            # mostly not the record of applied patches (every change there is refused)
            keys = [k for k in node if node is not doc or k != "meta" or rng.random() < .05]
            key = rng.choice(keys or list(node))
        elif isinstance(node, list) and node and rng.random() < 0.7:
            key = rng.randrange(len(node))
        else:
            break
        path += "/" + str(key).replace("~", "~0").replace("/", "~1")
        node = node[key]
    if existing or not isinstance(node, (dict, list)):
        return path
    if isinstance(node, list):
        return path + "/" + rng.choice(["-", str(len(node))])
    return path + "/" + "".join(rng.choice(string.ascii_lowercase) for _ in range(3))


def random_ops(doc, rng: random.Random, count: int) -> list[dict]:
    ops = []
    scratch = copy.deepcopy(doc)
    for _ in range(count):
        name = rng.choice(["add", "add", "replace", "remove", "test", "copy", "move"])
        value = rng.choice([1, "s", None, [1, 2], {"k": True}])
        if name == "add":
            op = {"op": "add", "path": random_pointer(scratch, rng, existing=rng.random() < .2),
                  "value": value}
        elif name in ("replace", "remove", "test"):
            op = {"op": name, "path": random_pointer(scratch, rng, existing=rng.random() < .8)}
            if name != "remove":
                op["value"] = value
        else:
            op = {"op": name, "from": random_pointer(scratch, rng, existing=True),
                  "path": random_pointer(scratch, rng, existing=False)}
        ops.append(op)
        try:
            jsonpatch.apply_patch(scratch, [op], in_place=True)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException):
            pass
    return ops


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 1_000_000), st.integers(1, 6))
def test_generated_patches_apply_as_rfc6902_or_refuse_and_change_nothing(seed, count):
    rng = random.Random(seed)
    doc = {"meta": {"patch_metadata": {}}, "phases": {},
           "implementation": {"a": {"b": [1, 2, {"c": "d"}]}, "e": "f"}, "validation": []}
    ops = random_ops(doc, rng, count)
    pristine = copy.deepcopy(doc)
    try:
        p = make_patch(ops, default_id="gen")
        result = apply_patches(doc, [p])
    except PlanError:
        assert doc == pristine
        return
    assert doc == pristine
    # the patch's own `add /meta/patch_metadata` is merged into the record, not applied:
    # every other operation is applied exactly as RFC 6902 says
    changes = [op for op in ops if not (op["op"] == "add"
                                        and op["path"] == "/meta/patch_metadata")]
    expected = jsonpatch.apply_patch(doc, changes)
    got = copy.deepcopy(result.plan)
    entry = got["meta"]["patch_metadata"].pop(p.patch_id)
    assert entry["content_sha256"] == p.sha256
    assert entry["operations_applied"] == len(changes)
    assert got == expected


# -- hostile input: any JSON at all is judged, never crashes ---------------------------------

JSON_LEAVES = st.none() | st.booleans() | st.integers(-10**20, 10**20) \
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12)
KEYS = st.sampled_from(["meta", "phases", "workstreams", "tasks", "phase_id", "workstream_id",
                        "task_id", "PH-000", "WS-000-001", "TSK-000-001-001", "x_ulid",
                        "depends_on", "dependencies", "estimated_duration_hours",
                        "patch_metadata", "acceptance_tests", "executor", "file_scope", "-",
                        "a/b", "~", ""]) | st.text(max_size=6)
ANY_JSON = st.recursive(JSON_LEAVES, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(KEYS, inner, max_size=5), max_leaves=40)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ANY_JSON)
def test_any_json_is_judged_without_crashing(doc):
    problems = plan_problems(doc)
    assert all(isinstance(p.path, str) and p.message for p in problems)
    if not isinstance(doc, dict):
        assert problems


POINTERS = st.lists(KEYS | st.integers(0, 3).map(str), max_size=4).map(
    lambda parts: "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts))
OPERATION = st.fixed_dictionaries(
    {"op": st.sampled_from(["add", "remove", "replace", "move", "copy", "test", "nope"]),
     "path": POINTERS},
    optional={"value": ANY_JSON, "from": POINTERS})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ANY_JSON.filter(lambda d: isinstance(d, dict)) | st.just(make_plan(9)),
       st.lists(OPERATION | ANY_JSON, min_size=1, max_size=5))
def test_any_patch_is_applied_or_refused_with_a_plan_error(doc, ops):
    pristine = copy.deepcopy(doc)
    try:
        result = apply_patches(doc, [make_patch(ops, default_id="fuzz")])
    except PlanError as exc:
        assert exc.problems and str(exc)
    else:
        assert "fuzz" in result.plan["meta"]["patch_metadata"]
    assert doc == pristine


TASK_FIELDS = st.fixed_dictionaries({}, optional={
    "executor": st.sampled_from(["ed", "nope"]) | ANY_JSON,
    "acceptance_tests": ANY_JSON | st.dictionaries(st.sampled_from(["pytest", "lint", "pwsh"]),
                                                   ANY_JSON | st.text(max_size=20), max_size=3),
    "file_scope": ANY_JSON | st.fixed_dictionaries(
        {}, optional={"create": st.lists(st.text(max_size=8), max_size=2),
                      "modify": ANY_JSON, "delete": ANY_JSON}),
    "max_runtime_seconds": ANY_JSON, "max_attempts": ANY_JSON, "prompt": ANY_JSON,
    "depends_on": ANY_JSON})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 1000), TASK_FIELDS)
def test_any_task_maps_to_a_workstream_or_a_plan_error_naming_a_field(seed, fields):
    from uet.plan.workstreams import plan_workstream
    plan = make_plan(seed, phases=1, workstreams=1, tasks=1)
    plan["meta"]["tools"] = {"ed": {"command": ["python3", "edit.py", "{prompt_file}"]}}
    task = next(iter(plan["phases"]["PH-000"]["workstreams"]["WS-000-001"]["tasks"].values()))
    task.update(fields)
    try:
        mapped = plan_workstream(plan, "WS-000-001", plan_path="plan.json", repo=".")
    except PlanError as exc:
        assert exc.problems and all(p.message for p in exc.problems)
    else:
        assert [t.task_id for t in mapped.workstream.tasks] == [task["task_id"]]
        for gate in mapped.workstream.gates:
            assert gate.tasks == (task["task_id"],) and gate.command

"""Master-plan patches: RFC 6902 JSON Patch files, applied all or nothing, each at most once.

A patch file is a JSON list of operations, as the framework writes them. Its metadata is the
value of its `add /meta/patch_metadata` operation (the framework's habit, which, applied as
written, replaces the record of every earlier patch): uet merges it instead, under
`/meta/patch_metadata/<patch id>`, with what makes re-applying safe — `content_sha256` (of
the operations, whitespace and key order aside), `applied: true`, `applied_at` and
`operations_applied`. The patch id is the metadata's `patch_id`, else the file's name.

`apply_patches(plan, patches)` works on a copy and checks, per operation, more than RFC 6902
asks: the target of `replace`/`remove`/`test` (and the `from` of `move`/`copy`) must exist; an
`add` (or the target of a `move`/`copy`) must not overwrite a key that exists — a patch that
means to overwrite says so with `replace`; no operation may touch the record of applied
patches. A patch already recorded with the same hash is skipped (it says so); one recorded
with another hash is refused. The result must have no problem the plan did not already have
(uet.plan.document.plan_problems). Any refusal raises PlanError and changes nothing.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Literal, Sequence

import jsonpatch
import jsonpointer

from uet.engine.workstream_rules import Problem
from uet.plan.document import PlanError, kind_of, parse_json, plan_problems, read_json

OPERATIONS = ("add", "remove", "replace", "move", "copy", "test")
RECORD = "/meta/patch_metadata"        # where applied patches are recorded
PATCH_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class Patch:
    """A patch file's content: its id, its operations (the metadata operation included, as
    written), their hash, the metadata (None: the patch has none) and where it came from."""
    patch_id: str
    operations: tuple[dict[str, Any], ...]
    sha256: str
    metadata: dict[str, Any] | None = None
    source: str | None = None

    @property
    def name(self) -> str:
        """How messages name the patch: its file, else its id."""
        return self.source or self.patch_id

    def changes(self) -> list[tuple[int, dict[str, Any]]]:
        """(position, operation) of the operations that change the plan, the metadata
        operation left out (uet merges it)."""
        return [(i, op) for i, op in enumerate(self.operations) if not _is_metadata_op(op)]


@dataclass(frozen=True)
class PatchOutcome:
    """What became of one patch: "applied" (`operations` changed the plan) or
    "already_applied" (recorded with the same hash: nothing done)."""
    patch: Patch
    status: Literal["applied", "already_applied"]
    operations: int = 0
    recorded_at: str = ""   # where its record is (a JSON Pointer)


@dataclass
class ApplyResult:
    """The plan after the patches (the input is never changed), one outcome per patch in
    order, and the problems the plan had before and still has (a new problem refuses)."""
    plan: dict[str, Any]
    outcomes: list[PatchOutcome]
    remaining_problems: list[Problem] = field(default_factory=list)

    @property
    def applied(self) -> list[PatchOutcome]:
        """The outcomes of the patches applied now (not those already applied), in order."""
        return [o for o in self.outcomes if o.status == "applied"]

    @property
    def changed(self) -> bool:
        """Whether any patch was applied now; if not, the plan is the input's."""
        return bool(self.applied)


# -- reading patches ----------------------------------------------------------------------

def load_patch(path: str | os.PathLike[str]) -> Patch:
    """The patch in the JSON file at `path` (see parse_patch); its id defaults to the file's
    name without `.json`."""
    source = os.fspath(path)
    data = read_json(source, what="patch")
    stem = os.path.basename(source)
    stem = stem[:-5] if stem.lower().endswith(".json") else stem
    return make_patch(data, default_id=stem, source=source)


def parse_patch(text: str, *, patch_id: str | None = None,
                source: str | None = None) -> Patch:
    """The patch in `text` (a JSON list of RFC 6902 operations)."""
    return make_patch(parse_json(text, source=source, what="patch"), default_id=patch_id,
                      source=source)


def make_patch(data: Any, *, default_id: str | None = None,
               source: str | None = None) -> Patch:
    """A Patch from parsed JSON, every operation checked for form (RFC 6902 section 4):
    raises PlanError listing each malformed operation."""
    def refuse(problems: list[Problem]) -> PlanError:
        return PlanError(problems, source=source, what="patch")

    if not isinstance(data, list):
        raise refuse([Problem("", "a patch is a JSON list of operations (RFC 6902), not "
                                  f"{kind_of(data)}")])
    if not data:
        raise refuse([Problem("", "the patch has no operations")])
    problems: list[Problem] = []
    metadata: dict[str, Any] | None = None
    for index, op in enumerate(data):
        problems += _form_problems(index, op)
        if not problems and _is_metadata_op(op):
            if metadata is not None:
                problems.append(Problem(f"/{index}", f"a second `add {RECORD}`: a patch has "
                                                     "one metadata operation"))
            elif not isinstance(op["value"], dict):
                problems.append(Problem(f"/{index}/value", "the patch metadata is an object"))
            else:
                metadata = op["value"]
    if problems:
        raise refuse(problems)
    patch_id = metadata.get("patch_id") if metadata is not None else None
    where = "/meta/patch_metadata's patch_id"
    if patch_id is None:
        patch_id, where = default_id, "the file's name"
    if not isinstance(patch_id, str) or not PATCH_ID_RE.match(patch_id):
        raise refuse([Problem("", f"{where} ({json.dumps(patch_id)}) is not a patch id: 1 to "
                                  "128 letters, digits, '.', '_' or '-', starting with a "
                                  "letter or digit")])
    ops = tuple(data)
    return Patch(patch_id=patch_id, operations=ops, sha256=patch_hash(ops),
                 metadata=metadata, source=source)


def patch_hash(operations: Sequence[Any]) -> str:
    """sha256 of the operations as canonical JSON (sorted keys, no spaces): the same patch
    reformatted has the same hash."""
    text = json.dumps(list(operations), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _form_problems(index: int, op: Any) -> list[Problem]:
    here = f"/{index}"
    if not isinstance(op, dict):
        return [Problem(here, "an operation is an object ({\"op\": …, \"path\": …})")]
    name = op.get("op")
    if name not in OPERATIONS:
        return [Problem(f"{here}/op", f"{json.dumps(name)} is not an operation "
                                      f"({', '.join(OPERATIONS)})" if "op" in op
                        else "required, but missing")]
    problems = []
    members = ["path"] + (["value"] if name in ("add", "replace", "test") else []) \
        + (["from"] if name in ("move", "copy") else [])
    for member in members:
        if member not in op:
            problems.append(Problem(f"{here}/{member}", f"required for `{name}`, but missing"))
        elif member != "value":
            problem = _pointer_problem(op[member])
            if problem:
                problems.append(Problem(f"{here}/{member}", problem))
    return problems


def _pointer_problem(text: Any) -> str | None:
    if not isinstance(text, str):
        return f"a JSON Pointer is a string, not {json.dumps(text)}"
    if text and not text.startswith("/"):
        return f"{json.dumps(text)} is not a JSON Pointer: it starts with '/'"
    if re.search(r"~(?![01])", text):
        return (f"{json.dumps(text)} is not a JSON Pointer: '~' is written '~0' and '/' "
                "inside a key '~1'")
    return None


def _is_metadata_op(op: Any) -> bool:
    return isinstance(op, dict) and op.get("op") == "add" and op.get("path") == RECORD


# -- applying -----------------------------------------------------------------------------

def apply_patches(plan: dict[str, Any], patches: Sequence[Patch], *,
                  now: str | None = None) -> ApplyResult:
    """`plan` with `patches` applied in order, all or nothing (see the module's docstring).
    `plan` itself is not changed. Raises PlanError naming the patch, the operation and why."""
    doc = copy.deepcopy(plan)
    before = plan_problems(plan)
    stamp = now or datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    outcomes = []
    for patch in patches:
        outcomes.append(_apply_one(doc, patch, stamp))
    after = plan_problems(doc)
    known = set(before)
    new = [p for p in after if p not in known]
    if new:
        names = ", ".join(o.patch.name for o in outcomes if o.status == "applied")
        raise PlanError(new, source=f"the plan after {names or 'the patches'} (nothing was "
                                    "written)")
    return ApplyResult(plan=doc, outcomes=outcomes, remaining_problems=after)


def _apply_one(doc: dict[str, Any], patch: Patch, stamp: str) -> PatchOutcome:
    def refuse(message: str, index: int | None = None) -> PlanError:
        if index is None:
            return PlanError([Problem("", message)], source=patch.name, what="patch")
        op = patch.operations[index]
        what = f"operation {index} ({op['op']} {op['path'] or '(the whole plan)'})"
        return PlanError([Problem("", f"{what}: {message}")], source=patch.name, what="patch")

    record = _records(doc, refuse)
    found = _recorded(record, patch.patch_id)
    if found is not None:
        key, entry = found
        recorded_hash = entry.get("content_sha256")
        if recorded_hash == patch.sha256:
            return PatchOutcome(patch, "already_applied", 0, f"{RECORD}/{_escape(key)}")
        if recorded_hash is None:
            raise refuse(f"a patch {patch.patch_id} is already recorded at "
                         f"{RECORD}/{_escape(key)} without a content hash (not applied by "
                         "uet): uet cannot tell whether it is this patch, so it applies it "
                         "no second time")
        raise refuse(f"another patch with the id {patch.patch_id} was applied (content "
                     f"sha256 {recorded_hash[:12]}…, this one {patch.sha256[:12]}…): a patch "
                     "is never changed once applied — give the new one its own id")
    changes = patch.changes()
    for index, op in changes:
        problem = _operation_problem(doc, op)
        if problem:
            raise refuse(problem, index)
        if op["op"] == "test":
            found = jsonpointer.resolve_pointer(doc, op["path"])
            if not json_equal(found, op["value"]):
                raise refuse(f"the test failed: the value there is {_shown(found)}, not "
                             f"{_shown(op['value'])}", index)
            continue
        try:
            jsonpatch.JsonPatch([op]).apply(doc, in_place=True)
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
            raise refuse(str(exc), index) from None
    entry = dict(patch.metadata or {})
    entry.update({"patch_id": patch.patch_id, "applied": True, "applied_at": stamp,
                  "content_sha256": patch.sha256, "operations_applied": len(changes)})
    record = _records(doc, refuse)   # an operation may have replaced /meta's other keys
    record[patch.patch_id] = entry
    return PatchOutcome(patch, "applied", len(changes), f"{RECORD}/{_escape(patch.patch_id)}")


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values (RFC 6902 section 4.6): numbers by value (1 == 1.0), but true
    is not 1 and "1" is not 1 — Python's == says True == 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _shown(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _records(doc: dict[str, Any], refuse: Callable[[str], PlanError]) -> dict[str, Any]:
    meta = doc.get("meta")
    if not isinstance(meta, dict):
        raise refuse("the plan has no /meta object to record the patch in")
    record = meta.setdefault("patch_metadata", {})
    if not isinstance(record, dict):
        raise refuse(f"{RECORD} is not an object: uet records applied patches there")
    return record


def _recorded(record: dict[str, Any], patch_id: str) -> tuple[str, dict[str, Any]] | None:
    """The record of the patch with this id: under its own key, or (plans patched by the
    framework's script key them by number: "006") any entry naming it as its patch_id."""
    entry = record.get(patch_id)
    if isinstance(entry, dict):
        return patch_id, entry
    for key, entry in record.items():
        if isinstance(entry, dict) and entry.get("patch_id") == patch_id:
            return key, entry
    return None


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _operation_problem(doc: Any, op: dict[str, Any]) -> str | None:
    """Why this operation may not be applied to `doc`, or None."""
    name, path = op["op"], op["path"]
    for place in ([path] + ([op["from"]] if name == "move" else [])):
        if name != "test" and _touches_record(place, name):
            return (f"it would change {RECORD}, where uet keeps the record of applied "
                    "patches; a patch's own metadata is its `add /meta/patch_metadata` "
                    "operation, merged by uet")
    if name in ("replace", "remove", "test"):
        return None if _exists(doc, path) else _missing(doc, path)
    if name in ("move", "copy"):
        if not _exists(doc, op["from"]):
            return _missing(doc, op["from"], member="from")
        if name == "move" and (path + "/").startswith(op["from"] + "/") and path != op["from"]:
            return "a value cannot be moved into itself"
    # add, and the target of move/copy
    if path == "":
        return ("it would replace the whole plan; a patch that means to overwrite says so "
                "with `replace`")
    parent_path, key = path.rsplit("/", 1)
    if not _exists(doc, parent_path):
        return _missing(doc, parent_path, what="its parent")
    parent = jsonpointer.resolve_pointer(doc, parent_path)
    key = key.replace("~1", "/").replace("~0", "~")
    if isinstance(parent, dict):
        if key in parent and not (name == "move" and op["from"] == path):
            return (f"{path} already exists; a patch that means to overwrite it says so with "
                    "`replace` (an `add` never silently replaces a phase, workstream or "
                    "anything else)")
        return None
    if isinstance(parent, list):
        if key == "-":
            return None
        if not re.fullmatch(r"0|[1-9][0-9]*", key) or int(key) > len(parent):
            return (f"{json.dumps(key)} is not a position in the list at "
                    f"{parent_path or '(the whole plan)'} (0 to {len(parent)}, or '-' for the "
                    "end)")
        return None
    return f"its parent {parent_path or '(the whole plan)'} is a value, not an object or list"


def _touches_record(place: str, name: str) -> bool:
    """Whether changing `place` would change the record of applied patches: the record, an
    entry of it, or a place holding it (/meta, the whole plan). Adding a key beside the
    record inside /meta is fine."""
    if place == RECORD or place.startswith(RECORD + "/"):
        return True
    return place in ("", "/meta") and name in ("replace", "remove", "move", "add", "copy")


def _exists(doc: Any, path: str) -> bool:
    try:
        found = jsonpointer.resolve_pointer(doc, path)
    except jsonpointer.JsonPointerException:
        return False
    return not isinstance(found, jsonpointer.EndOfList)   # "-": past a list's end


def _missing(doc: Any, path: str, *, member: str = "path", what: str = "") -> str:
    # name the deepest part that exists: "… /phases/PH-000 has no workstreams/WS-9"
    parts = path.split("/")[1:]
    deepest = ""
    for part in parts:
        candidate = f"{deepest}/{part}"
        if not _exists(doc, candidate):
            break
        deepest = candidate
    where = deepest or "the plan"
    subject = what or (f"its {member}" if member != "path" else "its target")
    return f"{subject} {path} does not exist ({where} is the deepest part that does)"

"""The seed tables' columns as data, and the one place where caller dicts become rows.

Validation and the whitelists that keep caller-supplied names out of SQL live here; the
conversion of stored rows back to plain dicts (JSON columns decoded) too.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from collections.abc import Iterable, Mapping, Sequence, Set as AbstractSet
from typing import Any, Literal, TypeAlias, overload

from uet.errors import StorageError, ValidationError
from uet.state.ids import new_ulid, normalize_timestamp, utc_now
from uet.state.machines import RUN, STEP_ATTEMPT, Machine

TEXT, INT, JSON, TIMESTAMP, STATE = "text", "integer", "json", "timestamp", "state"
NUMBER = "number"  # a finite real number (an int or a float; stored as a float)
INT_MIN, INT_MAX = -(1 << 63), (1 << 63) - 1
# SQLite's default limit on one string is 1e9 bytes, and it stores a whole row as one
# record under the same limit (PostgreSQL's limit on one message is about 1 GiB); refuse
# above it with a clear message, counting a record's own bookkeeping per column generously.
MAX_VALUE_BYTES = 1_000_000_000
ROW_BYTES_PER_COLUMN = 16
# JSON nested deeper than this is refused on write: Python's decoder has a recursion limit,
# and a value that could be written but not read back would poison every later read.
MAX_JSON_DEPTH = 200
# An exit status is 0..255 on POSIX (uet records 128+N for signal N, 124, 126, 127), a
# negative -N where Python reports death by signal N, and a 32-bit DWORD on Windows (seen
# signed or unsigned, e.g. 0xC0000005 as 3221225477 or -1073741819): anything outside 32 bits,
# signed or unsigned, is no exit status of any system.
EXIT_CODE_MIN, EXIT_CODE_MAX = -(1 << 31), (1 << 32) - 1
# Events that record a change show a long value abbreviated (its first characters, a marker
# and its full length): the record itself holds the whole value.
SHOWN_CHARS = 200


@dataclass(frozen=True)
class Column:
    """One column of a table and what a caller's value for it must be: its `kind` (TEXT,
    INT, NUMBER, JSON, TIMESTAMP or STATE; checked by `encode_value`) and the rules below.
    A column that is not `updatable` is set on create only."""
    name: str
    kind: str
    required: bool = False   # must be given (and not None) on create
    generate: str | None = None  # "ulid" or "now": filled in when omitted on create
    updatable: bool = True
    nullable: bool = True   # may be set to None by an update
    minimum: int | None = None  # for integers: the range a written value must be in
    maximum: int | None = None
    managed_by: str | None = None  # set only through this API, never by create/update


@dataclass(frozen=True)
class Table:
    """One of the seed's tables (`RUNS`, `STEP_ATTEMPTS`, `RUN_EVENTS`) as data: its name,
    the entity messages call a record ("run"), its key column, its columns (the only field
    names a caller may give; `by_name` and `names` are derived from them) and the machine
    of its `state` column (None: its records have no state)."""
    name: str
    entity: str
    key: str
    columns: tuple[Column, ...]
    machine: Machine | None = None
    by_name: Mapping[str, Column] = field(init=False, repr=False)
    names: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {c.name: c for c in self.columns})
        object.__setattr__(self, "names", tuple(c.name for c in self.columns))

    @property
    def state_machine(self) -> Machine:
        """The machine of a table whose records have a state (runs, step attempts)."""
        assert self.machine is not None, f"{self.name} records have no state"
        return self.machine


RUNS = Table("runs", "run", "run_id", (
    Column("run_id", TEXT, generate="ulid", updatable=False),
    Column("project_id", TEXT, required=True),
    Column("phase_id", TEXT, required=True),
    Column("workstream_id", TEXT),
    Column("execution_request_id", TEXT),
    Column("created_at", TIMESTAMP, generate="now", updatable=False),
    Column("started_at", TIMESTAMP),
    Column("ended_at", TIMESTAMP),
    Column("state", STATE),
    Column("exit_code", INT, minimum=EXIT_CODE_MIN, maximum=EXIT_CODE_MAX),
    Column("error_message", TEXT),
    Column("metadata", JSON),
    # Beyond the seed: the worker holding the run (set by WorkerLifecycle.claim_run).
    Column("worker_id", TEXT, managed_by="WorkerLifecycle.claim_run"),
    # The run's place in the work queue (`uet submit`): higher first, then oldest first.
    # None (the default) for a run no worker pool takes.
    Column("priority", INT, minimum=-1_000_000, maximum=1_000_000),
    # How many times the pool re-queued the run after its owner was lost.
    Column("recoveries", INT, nullable=False, minimum=0, managed_by="the reaper"),
), machine=RUN)

STEP_ATTEMPTS = Table("step_attempts", "step_attempt", "step_attempt_id", (
    Column("step_attempt_id", TEXT, generate="ulid", updatable=False),
    Column("run_id", TEXT, required=True, updatable=False),
    Column("sequence", INT, required=True, minimum=1),
    Column("tool_id", TEXT, required=True),
    Column("tool_run_id", TEXT),
    Column("execution_request_id", TEXT),
    Column("prompt_id", TEXT),
    Column("started_at", TIMESTAMP, generate="now"),
    Column("ended_at", TIMESTAMP),
    Column("state", STATE),
    Column("exit_code", INT, minimum=EXIT_CODE_MIN, maximum=EXIT_CODE_MAX),
    Column("input_prompt", TEXT),
    Column("output_patch_id", TEXT),
    Column("error_log", TEXT),
    Column("metadata", JSON),
    # Beyond the seed: which try of this sequence number (1, 2, ...); numbered by the store
    # when omitted.
    Column("attempt", INT, nullable=False, minimum=1),
    # The worker running the attempt; by default the worker holding the run.
    Column("worker_id", TEXT, updatable=False),
    # The workstream task the attempt belongs to (workstream runs).
    Column("task_id", TEXT),
    # What the tool reported it used ($UET_USAGE_FILE): summed by `uet usage`.
    Column("model", TEXT),
    Column("input_tokens", INT, minimum=0),
    Column("output_tokens", INT, minimum=0),
    Column("cost_usd", NUMBER),
), machine=STEP_ATTEMPT)

RUN_EVENTS = Table("run_events", "event", "event_id", (
    Column("event_id", TEXT, generate="ulid", updatable=False),
    Column("run_id", TEXT, required=True, updatable=False),
    Column("timestamp", TIMESTAMP, generate="now", updatable=False),
    Column("event_type", TEXT, required=True, updatable=False),
    Column("data", JSON, updatable=False),
))

JSON_COLUMNS = frozenset({"metadata", "data"})


def _check_mapping(value: object, what: str, field: str | None = None) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValidationError(f"{what} must be a dict, got {type(value).__name__}",
                              field=field)
    return value


def _unknown(table: Table, keys: Iterable[object], what: str) -> None:
    if isinstance(keys, Mapping):
        keys = keys.keys()
    if isinstance(keys, AbstractSet) and keys <= table.by_name.keys():
        return  # the common case, without building the list
    unknown = [k for k in keys if not isinstance(k, str) or k not in table.by_name]
    if unknown:
        raise ValidationError(
            f"unknown {table.entity} field{'s' if len(unknown) > 1 else ''} in {what}: "
            f"{', '.join(repr(k) for k in unknown)}; known fields: {', '.join(table.names)}",
            field=str(unknown[0]))


def encode_value(table: Table, column: Column, value: object, *,
                 filtering: bool = False) -> object:
    """Check one caller value against its column and return what the database stores
    (or, with `filtering`, what a stored value is compared with)."""
    if value is None:
        if column.required or column.kind == STATE or not column.nullable:
            raise ValidationError(f"{table.entity} field {column.name!r} cannot be empty",
                                  field=column.name)
        return None
    kind = column.kind
    if kind == TEXT:
        if not isinstance(value, str):
            raise ValidationError(
                f"{table.entity} field {column.name!r} must be a string, got "
                f"{type(value).__name__}", field=column.name)
        if (column.required or column.generate) and not value and not filtering:
            raise ValidationError(f"{table.entity} field {column.name!r} cannot be empty",
                                  field=column.name)
        _check_text(value, f"{table.entity} field {column.name!r}", column.name)
        return value
    if kind == INT:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValidationError(
                f"{table.entity} field {column.name!r} must be an integer, got "
                f"{type(value).__name__}", field=column.name)
        if not INT_MIN <= value <= INT_MAX:
            raise ValidationError(
                f"{table.entity} field {column.name!r} is out of the 64-bit integer range",
                field=column.name)
        if not filtering:  # a filter may look for rows written before a range applied
            _check_range(table, column, value)
        return value
    if kind == NUMBER:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValidationError(
                f"{table.entity} field {column.name!r} must be a number, got "
                f"{type(value).__name__}", field=column.name)
        try:
            number = float(value)
        except OverflowError:
            number = float("inf")
        if not 0 <= number < float("inf"):
            raise ValidationError(
                f"{table.entity} field {column.name!r} must be a finite number >= 0, got "
                f"{value!r}", field=column.name)
        return number
    if kind == JSON:
        return encode_json(value, f"{table.entity} field {column.name!r}", column.name)
    if kind == TIMESTAMP:
        try:
            return normalize_timestamp(value, column.name)
        except ValueError as exc:
            raise ValidationError(f"{table.entity} field {exc}", field=column.name) from None
    if kind == STATE:
        assert table.machine is not None
        return table.machine.check_state(value)
    raise AssertionError(kind)  # pragma: no cover - the tables above use the kinds above


def _check_range(table: Table, column: Column, value: int) -> None:
    low, high = column.minimum, column.maximum
    if (low is None or value >= low) and (high is None or value <= high):
        return
    if high is None:
        wanted = f"at least {low}"
    elif low is None:
        wanted = f"at most {high}"
    else:
        wanted = f"from {low} to {high}"
    raise ValidationError(f"{table.entity} field {column.name!r} must be {wanted}, got {value}",
                          field=column.name)


# json.dumps(value, allow_nan=False) builds a new encoder on every call; this is the same one
_ENCODE_JSON = json.JSONEncoder(allow_nan=False).encode


def encode_json(value: object, what: str, field: str) -> str:
    """A dict as JSON text, refusing what could not be stored or read back: the text rule
    (valid Unicode, no NUL) holds for every key and string value at every depth, and a
    refusal names the path of the first one that breaks it (`metadata.a[2].b`)."""
    _check_mapping(value, what, field)
    try:
        text = _ENCODE_JSON(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValidationError(f"{what} must be JSON-serialisable: {exc}", field=field) from None
    # nesting needs two characters a level, so short texts cannot be too deep
    if len(text) > 2 * MAX_JSON_DEPTH and _too_deep(value):
        raise ValidationError(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels",
                              field=field)
    # the text is ASCII: a lone surrogate or a NUL in any string shows as a \u escape
    if "\\u" in text:
        found = _first_bad_text(value)
        if found is not None:
            path, is_key, fault = found
            where = json_path(field, path)
            raise ValidationError(f"{what} at {where}{' (a key)' if is_key else ''} {fault}",
                                  field=where)
    if len(text) > MAX_VALUE_BYTES:
        raise ValidationError(f"{what} is larger than {MAX_VALUE_BYTES:,} bytes", field=field)
    return text


_SURROGATE = "is not valid Unicode text (it contains a lone surrogate)"
_NUL = "contains a NUL character (\\x00), which a ledger cannot store; remove or escape it"


def _text_fault(value: str) -> str | None:
    """Why a string breaks the text rule (a lone surrogate, a NUL), or None."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return _SURROGATE
    return _NUL if "\x00" in value else None


# a place inside a JSON value as (parent path, step): linked, so that deep values cost no
# copying; the top-level value's path is None
_LinkedPath: TypeAlias = "tuple[_LinkedPath | None, str | int]"


def _first_bad_text(value: object) -> tuple[tuple[str | int, ...], bool, str] | None:
    """The first key or string value (in document order) of a JSON-serialisable value that
    breaks the text rule: (path as a tuple of keys and indexes, whether it is a key, why)."""
    stack: list[tuple[object, _LinkedPath | None, bool]] = [(value, None, False)]
    while stack:
        node, path, is_key = stack.pop()
        if isinstance(node, str):
            fault = _text_fault(node)
            if fault is not None:
                steps: list[str | int] = []
                while path is not None:
                    path, step = path
                    steps.append(step)
                return tuple(reversed(steps)), is_key, fault
        elif is_key:
            continue  # a key json.dumps writes as text (a number, true, null)
        elif isinstance(node, Mapping):
            for key, child in reversed(list(node.items())):
                name = key if isinstance(key, str) else _key_text(key)
                stack.append((child, (path, name), False))
                stack.append((key, (path, name), True))
        elif isinstance(node, (list, tuple)):
            stack.extend((node[i], (path, i), False) for i in reversed(range(len(node))))
    return None


def _key_text(key: object) -> str:
    """The text JSON writes for a key that is not a string (1 -> "1", None -> "null")."""
    written: str = next(iter(json.loads(json.dumps({key: None}))))
    return written


_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
PATH_KEY_CHARS = 40


def json_path(field: str, path: Iterable[str | int]) -> str:
    """A place inside a JSON value as people write it (keys as strings, list indexes as
    ints): `metadata.a[2].b`; a key that is not a plain name is quoted with its characters
    escaped (`metadata["a b"]`, `metadata["\\ud800"]`) and cut after PATH_KEY_CHARS
    characters (`["aaa"...]`)."""
    parts = [field]
    for step in path:
        if isinstance(step, int):
            parts.append(f"[{step}]")
        elif _PLAIN_KEY.fullmatch(step):
            parts.append(f".{step}")
        else:
            cut = step[:PATH_KEY_CHARS]
            parts.append(f"[{json.dumps(cut)}{'...' if len(step) > len(cut) else ''}]")
    return "".join(parts)


def _check_text(value: str, what: str, field: str) -> None:
    """A string both engines store as given: valid Unicode without NUL (PostgreSQL's text
    cannot hold it), within the size limit."""
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValidationError(f"{what} {_SURROGATE}", field=field) from None
    if "\x00" in value:
        raise ValidationError(f"{what} {_NUL}", field=field)
    if size > MAX_VALUE_BYTES:
        raise ValidationError(f"{what} is larger than {MAX_VALUE_BYTES:,} bytes", field=field)


@overload
def text(value: object, field: str, *, required: Literal[True] = ...) -> str: ...


@overload
def text(value: object, field: str, *, required: bool) -> str | None: ...


def text(value: object, field: str, *, required: bool = True) -> str | None:
    """A non-empty string (or None when not required)."""
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise ValidationError(f"{field} must be a non-empty string, got {value!r}", field=field)
    _check_text(value, field, field)
    return value


def _too_deep(value: object) -> bool:
    """Whether a JSON-serialisable value nests lists/dicts deeper than MAX_JSON_DEPTH."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children: Iterable[object]
        if isinstance(node, Mapping):
            children = node.values()
        elif isinstance(node, (list, tuple)):
            children = node
        else:
            continue
        if depth > MAX_JSON_DEPTH:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _check_writable(table: Table, column: Column) -> None:
    if column.managed_by:
        raise ValidationError(f"{table.entity} field {column.name!r} is set only by "
                              f"{column.managed_by}", field=column.name)


def prepare_insert(table: Table, data: object) -> dict[str, Any]:
    """Validate a create call's dict and return a full row (every column) to insert."""
    data = _check_mapping(data, f"{table.entity} data")
    _unknown(table, data, f"create_{table.entity}")
    row: dict[str, Any] = {}
    for column in table.columns:
        value = data.get(column.name)
        if value is not None:
            _check_writable(table, column)
            row[column.name] = encode_value(table, column, value)
        elif column.generate == "ulid":
            row[column.name] = new_ulid()
        elif column.generate == "now":
            row[column.name] = utc_now()
        elif column.required:
            raise ValidationError(f"missing required {table.entity} field {column.name!r}",
                                  field=column.name)
        elif column.kind == STATE:
            row[column.name] = table.state_machine.initial[0]
        else:
            row[column.name] = None
    check_row_size(table, row)
    return row


def check_row_size(table: Table, row: Mapping[str, object]) -> None:
    """Refuse a row whose values together (as stored, plus per-column bookkeeping) exceed
    MAX_VALUE_BYTES: SQLite would refuse the record, PostgreSQL the message."""
    overhead = ROW_BYTES_PER_COLUMN * len(table.columns)
    if 4 * sum(len(value) for value in row.values() if isinstance(value, str)) + overhead \
            <= MAX_VALUE_BYTES:
        return  # at most 4 UTF-8 bytes a character: cannot be over, no need to count
    texts = [(name, value) for name, value in row.items() if isinstance(value, str)]
    sizes = {name: len(value.encode("utf-8")) for name, value in texts}
    if sum(sizes.values()) + overhead > MAX_VALUE_BYTES:
        largest = max(sizes, key=sizes.__getitem__)
        raise ValidationError(
            f"{table.entity} values together are larger than {MAX_VALUE_BYTES:,} bytes, the "
            f"limit of one ledger record (largest: {largest!r}, {sizes[largest]:,} bytes); "
            "keep large output outside the ledger and store a reference", field=largest)


def prepare_update(table: Table, entity_id: str, updates: object) -> dict[str, Any]:
    """Validate an update call's dict; return {column: stored value} (state unchecked here)."""
    updates = _check_mapping(updates, f"{table.entity} updates")
    _unknown(table, updates.keys(), f"update_{table.entity}")
    changes: dict[str, Any] = {}
    for name, value in updates.items():
        column = table.by_name[name]
        _check_writable(table, column)
        if not column.updatable:
            if name == table.key and value == entity_id:
                continue  # the seed passed whole rows back; an unchanged key is harmless
            raise ValidationError(
                f"{table.entity} field {name!r} can never change", field=name)
        changes[name] = encode_value(table, column, value)
    check_row_size(table, changes)
    return changes


def read_back(column: Column, stored: object) -> object:
    """A stored value as reads return it (JSON decoded, a missing JSON value as {})."""
    return _decoded(column.name, stored) if column.kind == JSON else stored


def _decoded(name: str, text: object) -> object:
    """A JSON column's stored text as reads return it: a missing value (SQL NULL) as {}, any
    stored JSON as its value (JSON `null`, which a seed ledger may hold, as None)."""
    if text is None or text == "":
        return {}
    try:
        if not isinstance(text, (str, bytes, bytearray)):  # what json.loads says of it
            raise TypeError(f"the JSON object must be str, bytes or bytearray, "
                            f"not {type(text).__name__}")
        return json.loads(text)
    except (ValueError, TypeError, RecursionError) as exc:
        raise StorageError(
            f"field {name!r} of a stored row is not readable JSON ({type(exc).__name__}): "
            "the ledger is corrupt or was written past uet's checks") from None


def _same(column: Column, old: object, new: object) -> bool:
    if column.kind == JSON:  # as values: key order and spacing aside, but 1 is not 1.0
        return (json.dumps(old, sort_keys=True, separators=(",", ":"))
                == json.dumps(new, sort_keys=True, separators=(",", ":")))
    return type(old) is type(new) and old == new


def shown(value: object) -> object:
    """A value as an event that records a change shows it: a string longer than SHOWN_CHARS
    (or a JSON value whose text is) cut there with a marker giving its full length, and text
    stored before the text rule (a lone surrogate, a NUL) escaped, so the event can be
    written and read whatever the row held."""
    if isinstance(value, str):
        if _text_fault(value) is not None:
            value = (value.encode("utf-8", "backslashreplace").decode("utf-8")
                     .replace("\x00", "\\x00"))
        return _abbreviated(value)
    if isinstance(value, (dict, list)):
        bad = _first_bad_text(value) is not None
        text = json.dumps(value, ensure_ascii=bad, separators=(",", ":"))
        if bad or len(text) > SHOWN_CHARS:
            return _abbreviated(text)
    return value


def _abbreviated(text: str) -> str:
    if len(text) <= SHOWN_CHARS:
        return text
    return f"{text[:SHOWN_CHARS]}... [{len(text):,} characters in all]"


def describe_changes(table: Table, current: Mapping[str, Any],
                     changes: Mapping[str, object]) -> dict[str, dict[str, object]]:
    """What an update really changes, for its event: {column: {"from": old, "to": new}} for
    each column in `changes` (stored values) but `state` whose value as read back differs
    from the row's `current` one, in column order, values `shown` (abbreviated)."""
    described = {}
    for column in table.columns:
        if column.name not in changes or column.kind == STATE:
            continue
        old, new = current.get(column.name), read_back(column, changes[column.name])
        if not _same(column, old, new):
            described[column.name] = {"from": shown(old), "to": shown(new)}
    return described


def prepare_filters(table: Table, filters: object) -> list[tuple[str, object]]:
    """Validate equality filters; return (whitelisted column name, stored value) pairs."""
    if filters is None:
        return []
    filters = _check_mapping(filters, "filters")
    _unknown(table, filters.keys(), "filters")
    result: list[tuple[str, object]] = []
    for name, value in filters.items():
        column = table.by_name[name]
        if value is None:
            result.append((column.name, None))
        elif column.kind == JSON:
            raise ValidationError(f"cannot filter on JSON field {name!r}", field=name)
        else:
            result.append((column.name, encode_value(table, column, value, filtering=True)))
    return result


def decode_row(names: Sequence[str], values: Sequence[object],
               json_names: Iterable[str] | None = None) -> dict[str, Any]:
    """A stored row as a plain dict, JSON columns decoded (a missing value as {});
    `json_names` are those of `names` that are JSON columns, when the caller knows them."""
    row = dict(zip(names, values))
    for name in JSON_COLUMNS.intersection(row) if json_names is None else json_names:
        row[name] = _decoded(name, row[name])
    return row

"""The seed tables' columns as data, and the one place where caller dicts become rows.

Validation and the whitelists that keep caller-supplied names out of SQL live here; the
conversion of stored rows back to plain dicts (JSON columns decoded) too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from uet.errors import ValidationError
from uet.state.ids import new_ulid, normalize_timestamp, utc_now
from uet.state.machines import RUN, STEP_ATTEMPT, Machine

TEXT, INT, JSON, TIMESTAMP, STATE = "text", "integer", "json", "timestamp", "state"
INT_MIN, INT_MAX = -(1 << 63), (1 << 63) - 1
# SQLite's default limit on one string is 1e9 bytes, and it stores a whole row as one
# record under the same limit (PostgreSQL's limit on one message is about 1 GiB); refuse
# above it with a clear message, counting a record's own bookkeeping per column generously.
MAX_VALUE_BYTES = 1_000_000_000
ROW_BYTES_PER_COLUMN = 16
# JSON nested deeper than this is refused on write: Python's decoder has a recursion limit,
# and a value that could be written but not read back would poison every later read.
MAX_JSON_DEPTH = 200


@dataclass(frozen=True)
class Column:
    name: str
    kind: str
    required: bool = False   # must be given (and not None) on create
    generate: str | None = None  # "ulid" or "now": filled in when omitted on create
    updatable: bool = True
    nullable: bool = True   # may be set to None by an update
    minimum: int | None = None  # for integers
    managed_by: str | None = None  # set only through this API, never by create/update


@dataclass(frozen=True)
class Table:
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


RUNS = Table("runs", "run", "run_id", (
    Column("run_id", TEXT, generate="ulid", updatable=False),
    Column("project_id", TEXT, required=True),
    Column("phase_id", TEXT, required=True),
    Column("workstream_id", TEXT),
    Column("execution_request_id", TEXT),
    Column("created_at", TIMESTAMP, generate="now"),
    Column("started_at", TIMESTAMP),
    Column("ended_at", TIMESTAMP),
    Column("state", STATE),
    Column("exit_code", INT),
    Column("error_message", TEXT),
    Column("metadata", JSON),
    # Beyond the seed: the worker holding the run (set by WorkerLifecycle.claim_run).
    Column("worker_id", TEXT, managed_by="WorkerLifecycle.claim_run"),
), machine=RUN)

STEP_ATTEMPTS = Table("step_attempts", "step_attempt", "step_attempt_id", (
    Column("step_attempt_id", TEXT, generate="ulid", updatable=False),
    Column("run_id", TEXT, required=True, updatable=False),
    Column("sequence", INT, required=True),
    Column("tool_id", TEXT, required=True),
    Column("tool_run_id", TEXT),
    Column("execution_request_id", TEXT),
    Column("prompt_id", TEXT),
    Column("started_at", TIMESTAMP, generate="now"),
    Column("ended_at", TIMESTAMP),
    Column("state", STATE),
    Column("exit_code", INT),
    Column("input_prompt", TEXT),
    Column("output_patch_id", TEXT),
    Column("error_log", TEXT),
    Column("metadata", JSON),
    # Beyond the seed: which try of this sequence number (1, 2, ...); numbered by the store
    # when omitted.
    Column("attempt", INT, nullable=False, minimum=1),
    # The worker running the attempt; by default the worker holding the run.
    Column("worker_id", TEXT, updatable=False),
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
        if column.minimum is not None and value < column.minimum:
            raise ValidationError(
                f"{table.entity} field {column.name!r} must be at least {column.minimum}, "
                f"got {value}", field=column.name)
        return value
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


def encode_json(value: object, what: str, field: str) -> str:
    """A dict as JSON text, refusing what could not be stored or read back."""
    _check_mapping(value, what, field)
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValidationError(f"{what} must be JSON-serialisable: {exc}", field=field) from None
    # nesting needs two characters a level, so short texts cannot be too deep
    if len(text) > 2 * MAX_JSON_DEPTH and _too_deep(value):
        raise ValidationError(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels",
                              field=field)
    if len(text) > MAX_VALUE_BYTES:
        raise ValidationError(f"{what} is larger than {MAX_VALUE_BYTES:,} bytes", field=field)
    return text


def _check_text(value: str, what: str, field: str) -> None:
    """A string both engines store as given: valid Unicode without NUL (PostgreSQL's text
    cannot hold it), within the size limit."""
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValidationError(f"{what} is not valid Unicode text (it contains a lone "
                              "surrogate)", field=field) from None
    if "\x00" in value:
        raise ValidationError(f"{what} contains a NUL character (\\x00), which a ledger "
                              "cannot store; remove or escape it", field=field)
    if size > MAX_VALUE_BYTES:
        raise ValidationError(f"{what} is larger than {MAX_VALUE_BYTES:,} bytes", field=field)


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
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
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


def prepare_insert(table: Table, data: object) -> dict[str, object]:
    """Validate a create call's dict and return a full row (every column) to insert."""
    data = _check_mapping(data, f"{table.entity} data")
    _unknown(table, data, f"create_{table.entity}")
    row: dict[str, object] = {}
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
            row[column.name] = table.machine.initial[0]
        else:
            row[column.name] = None
    check_row_size(table, row)
    return row


def check_row_size(table: Table, row: Mapping[str, object]) -> None:
    """Refuse a row whose values together (as stored, plus per-column bookkeeping) exceed
    MAX_VALUE_BYTES: SQLite would refuse the record, PostgreSQL the message."""
    texts = [(name, value) for name, value in row.items() if isinstance(value, str)]
    overhead = ROW_BYTES_PER_COLUMN * len(table.columns)
    if 4 * sum(len(value) for _, value in texts) + overhead <= MAX_VALUE_BYTES:
        return  # at most 4 UTF-8 bytes a character: cannot be over, no need to count
    sizes = {name: len(value.encode("utf-8")) for name, value in texts}
    if sum(sizes.values()) + overhead > MAX_VALUE_BYTES:
        largest = max(sizes, key=sizes.__getitem__)
        raise ValidationError(
            f"{table.entity} values together are larger than {MAX_VALUE_BYTES:,} bytes, the "
            f"limit of one ledger record (largest: {largest!r}, {sizes[largest]:,} bytes); "
            "keep large output outside the ledger and store a reference", field=largest)


def prepare_update(table: Table, entity_id: str, updates: object) -> dict[str, object]:
    """Validate an update call's dict; return {column: stored value} (state unchecked here)."""
    updates = _check_mapping(updates, f"{table.entity} updates")
    _unknown(table, updates.keys(), f"update_{table.entity}")
    changes: dict[str, object] = {}
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


def prepare_filters(table: Table, filters: object) -> list[tuple[str, object]]:
    """Validate equality filters; return (whitelisted column name, stored value) pairs."""
    if filters is None:
        return []
    filters = _check_mapping(filters, "filters")
    _unknown(table, filters.keys(), "filters")
    result = []
    for name, value in filters.items():
        column = table.by_name[name]
        if value is None:
            result.append((column.name, None))
        elif column.kind == JSON:
            raise ValidationError(f"cannot filter on JSON field {name!r}", field=name)
        else:
            result.append((column.name, encode_value(table, column, value, filtering=True)))
    return result


def decode_row(names: tuple[str, ...], values: tuple) -> dict[str, Any]:
    """A stored row as a plain dict, JSON columns decoded (a missing value as {})."""
    row = dict(zip(names, values))
    for name in JSON_COLUMNS.intersection(row):
        text = row[name]
        value = json.loads(text) if text else None
        row[name] = {} if value is None else value
    return row

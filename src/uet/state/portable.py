"""A ledger carried elsewhere: `backup` (a consistent copy of a live ledger), `export_jsonl`
(every record as one JSON line, streamed) and `import_jsonl` (such a file loaded into another
ledger, of either engine). `Database.backup`, `.export_jsonl` and `.import_jsonl` call these.

The JSON lines format (`uet-jsonl`, version 1), ASCII only, one JSON object a line:

- a header: `{"type": "header", "format": "uet-jsonl", "format_version": 1,
  "schema_version": N, "uet_version": ..., "engine": ..., "exported_at": ...,
  "selection": {"since", "project_id"}, "event_seq": {"handed_out", "deleted"}}`;
- the records, in this order (parents before children, each kind in the order of its key):
  workers, runs, step attempts, patches, patch entries, gates, events (in `seq` order).
  Each is `{"type": "worker" | "run" | "step_attempt" | "patch" | "patch_entry" | "gate" |
  "event", "row": {column: value}}`; a gate also has `"depends_on": [names]`;
- an end line: `{"type": "end", "counts": {type: n}}` — an import refuses a file without it
  (cut short) or whose counts differ.

Values are exactly as stored: text as strings, integers and reals as numbers (a real keeps
its `.0`), JSON columns (metadata, data, affinity, files, state_history) as their stored JSON
*text* (byte for byte: `jq '.row.metadata | fromjson'`). What JSON cannot hold as such is
written in an explicit form: `{"$real": "Infinity" | "-Infinity" | "NaN"}`, and, for what
only a SQLite ledger can hold past uet's text rule (written by raw SQL or another program),
`{"$text": base64}` (text whose bytes are not UTF-8 or that holds NUL) and `{"$blob":
base64}` (a BLOB).

Importing checks every value against the ledger's rules before anything is written: types,
the text rule (valid Unicode, no NUL) for every plain string, JSON columns valid JSON of
their shape, the states of the machines (which are not re-run: records are finished facts),
the schema's CHECKs; the `$text` / `$blob` forms go back exactly into a SQLite ledger, and
PostgreSQL refuses them, naming the record. See `import_jsonl` for atomicity and `seq`.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import re
import secrets
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Iterator, NoReturn, Protocol, TextIO

from uet.errors import (ConstraintViolation, DatabaseBusyError,
                        SchemaVersionError, StorageError, UetError, ValidationError)
from uet.state.backends.common import Transaction
from uet.state.backends.sqlite_schema import LATEST_VERSION
from uet.state.contracts import GateType
from uet.state.ids import normalize_timestamp, utc_now
from uet.state.machines import GATE, PATCH, RUN, STEP_ATTEMPT, WORKER
from uet.state.names import MEMORY, display_name

FORMAT = "uet-jsonl"
FORMAT_VERSION = 1
EXPORT_BATCH = 500         # rows read per keyset query
IMPORT_BATCH = 500         # records written per transaction (a short one: writers go on)
IMPORT_BATCH_BYTES = 4_000_000
CHECK_BATCH = 500          # ids looked up at once in the target

TEXT, INTEGER, REAL, JSON = "text", "integer", "real", "json"
INT_MIN, INT_MAX = -(1 << 63), (1 << 63) - 1
# the ledger's one timestamp format, which the schema checks on workers and gates
_STAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z\Z")
# in a line written with ensure_ascii: a NUL or a surrogate escape, which only text that
# breaks the text rule (or a character beyond the BMP) produces; such rows are re-encoded
_SUSPECT = re.compile(r"\\u(?:0000|d[89a-f])")
_REALS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_ENCODE = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode


class LedgerFileError(ValidationError):
    """A line of an export file that cannot be imported: malformed, against the ledger's
    rules, or refused by the ledger. `line` is its number (1-based), `record` its type when
    known; the message says what, if anything, was imported."""

    def __init__(self, message: str, *, line: int, record: str | None = None,
                 field: str | None = None) -> None:
        self.line = line
        self.record = record
        super().__init__(message, field=field)


# -- the records -------------------------------------------------------------------------

@dataclass(frozen=True)
class Field:
    """One column as the file carries it and as the schema constrains it."""

    name: str
    kind: str = TEXT
    required: bool = False       # NOT NULL
    default: Any = None          # for a row of an older export that lacks the column
    plain: bool = False          # a key or a reference: valid text only, never empty
    shape: str | None = None     # JSON: "object" or "array" (None: any JSON)
    stamp: bool = False          # the schema checks the ledger's timestamp format
    choices: tuple[str | int, ...] | None = None
    minimum: float | None = None
    positive: bool = False
    length: int | None = None

    @property
    def free(self) -> str | None:
        """The kind of a column that only its type constrains (TEXT, INTEGER), whose common
        values are checked inline; None for the others."""
        if self.choices or self.stamp or self.length or self.shape or self.positive \
                or self.minimum is not None or self.kind in (JSON, REAL):
            return None
        return self.kind


@dataclass(frozen=True)
class Record:
    """A record type: its table, key, columns (in the file's and the statements' order) and
    named queries."""

    type: str
    table: str
    key: str
    fields: tuple[Field, ...]
    order: str                   # the keyset column of the export (the key, or seq)
    first: Any                   # a value no row's keyset column is below
    check: Callable[[dict[str, Any]], str | None] | None = None
    by_name: dict[str, Field] = field(init=False, repr=False, compare=False)
    # per field: (name, field, free, required, plain, default), for the checks of a line
    plan: tuple[tuple[str, Field, str | None, bool, bool, Any], ...] = field(
        init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {f.name: f for f in self.fields})
        object.__setattr__(self, "plan", tuple(
            (f.name, f, f.free, f.required, f.plain, f.default) for f in self.fields))

    @property
    def export_query(self) -> str:
        return f"export_{self.table_name}"

    @property
    def existing_query(self) -> str:
        return f"existing_{self.table_name}"

    @property
    def insert_query(self) -> str:
        return f"import_{self.type}"

    @property
    def table_name(self) -> str:  # as the query names spell it
        return {"patch_ledger_entries": "patch_entries", "test_gates": "gates",
                "run_events": "events"}.get(self.table, self.table)


def _worker_check(row: dict[str, Any]) -> str | None:
    if (row["state"] == "TERMINATED") != (row["terminated_at"] is not None):
        return "terminated_at must be set exactly when the worker is TERMINATED"
    return None


def _entry_check(row: dict[str, Any]) -> str | None:
    created, updated = row["created_at"], row["updated_at"]
    if isinstance(created, str) and isinstance(updated, str) and updated < created:
        return "updated_at is before created_at"
    if row["state"] == "quarantined" and not row["quarantine_reason"]:
        return "a quarantined entry needs its quarantine_reason"
    return None


def _gate_check(row: dict[str, Any]) -> str | None:
    finished = row["state"] in ("PASSED", "FAILED")
    if finished and row["exit_code"] is None:
        return f"a {row['state']} gate needs its exit_code"
    if finished != (row["completed_at"] is not None):
        return "completed_at must be set exactly when the gate is PASSED or FAILED"
    return None


WORKERS = Record("worker", "workers", "worker_id", (
    Field("worker_id", plain=True, required=True),
    Field("worker_type", required=True),
    Field("state", required=True, choices=WORKER.states),
    Field("affinity", JSON, required=True, default="{}", shape="object"),
    Field("last_heartbeat", stamp=True),
    Field("created_at", required=True, stamp=True),
    Field("terminated_at"),
    Field("current_run_id", plain=True),
    Field("incarnation"),
), "worker_id", "", _worker_check)

RUNS = Record("run", "runs", "run_id", (
    Field("run_id", plain=True, required=True),
    Field("project_id", required=True),
    Field("phase_id", required=True),
    Field("workstream_id"),
    Field("execution_request_id"),
    Field("created_at", required=True),
    Field("started_at"),
    Field("ended_at"),
    Field("state", required=True, choices=RUN.states),
    Field("exit_code", INTEGER),
    Field("error_message"),
    Field("metadata", JSON),
    Field("worker_id", plain=True),
    Field("priority", INTEGER),
    Field("recoveries", INTEGER, required=True, default=0, minimum=0),
), "run_id", "")

STEP_ATTEMPTS = Record("step_attempt", "step_attempts", "step_attempt_id", (
    Field("step_attempt_id", plain=True, required=True),
    Field("run_id", plain=True, required=True),
    Field("sequence", INTEGER, required=True),
    Field("tool_id", required=True),
    Field("tool_run_id"),
    Field("execution_request_id"),
    Field("prompt_id"),
    Field("started_at", required=True),
    Field("ended_at"),
    Field("state", required=True, choices=STEP_ATTEMPT.states),
    Field("exit_code", INTEGER),
    Field("input_prompt"),
    Field("output_patch_id"),
    Field("error_log"),
    Field("metadata", JSON),
    Field("attempt", INTEGER, required=True, default=1, minimum=1),
    Field("worker_id", plain=True),
    Field("task_id"),
    Field("model"),
    Field("input_tokens", INTEGER, minimum=0),
    Field("output_tokens", INTEGER, minimum=0),
    Field("cost_usd", REAL, minimum=0),
), "step_attempt_id", "")

PATCHES = Record("patch", "patches", "patch_id", (
    Field("patch_id", plain=True, required=True),
    Field("diff", required=True),
    Field("sha256", required=True, length=64),
    Field("files", JSON, required=True, shape="array"),
    Field("size_bytes", INTEGER, required=True, minimum=0),
    Field("run_id", plain=True),
    Field("step_attempt_id", plain=True),
    Field("created_at", required=True),
), "patch_id", "")

PATCH_ENTRIES = Record("patch_entry", "patch_ledger_entries", "ledger_id", (
    Field("ledger_id", plain=True, required=True),
    Field("patch_id", plain=True, required=True),
    Field("state", required=True, choices=PATCH.states),
    Field("phase_id", required=True),
    Field("workstream_id"),
    Field("validated_format", INTEGER, choices=(0, 1)),
    Field("validated_scope", INTEGER, choices=(0, 1)),
    Field("validated_constraints", INTEGER, choices=(0, 1)),
    Field("validated_tests", INTEGER, choices=(0, 1)),
    Field("quarantine_reason"),
    Field("state_history", JSON, required=True, shape="array"),
    Field("created_at", required=True),
    Field("updated_at", required=True),
    Field("version", INTEGER, required=True, default=1, minimum=1),
), "ledger_id", "", _entry_check)

GATES = Record("gate", "test_gates", "gate_id", (
    Field("gate_id", plain=True, required=True),
    Field("gate_type", required=True, choices=tuple(t.value for t in GateType)),
    Field("name", required=True),
    Field("phase_id", required=True),
    Field("state", required=True, choices=GATE.states),
    Field("command", required=True),
    Field("exit_code", INTEGER),
    Field("stdout"),
    Field("stderr"),
    Field("duration_sec", REAL, minimum=0),
    Field("started_at", stamp=True),
    Field("completed_at", stamp=True),
    Field("timeout_sec", REAL, positive=True),
    Field("run_id", plain=True),
    Field("ledger_id", plain=True),
    Field("created_at", required=True),
    Field("blocked_by"),
), "gate_id", "", _gate_check)

EVENTS = Record("event", "run_events", "event_id", (
    Field("event_id", plain=True, required=True),
    Field("run_id", plain=True),
    Field("timestamp", required=True),
    Field("event_type", required=True),
    Field("data", JSON),
    Field("seq", INTEGER, required=True, minimum=1),
), "seq", INT_MIN)

# in the file's order: every record after those it refers to
RECORDS = (WORKERS, RUNS, STEP_ATTEMPTS, PATCHES, PATCH_ENTRIES, GATES, EVENTS)
BY_TYPE = {record.type: record for record in RECORDS}
_RANK = {record.type: rank for rank, record in enumerate(RECORDS)}


def _uet_version() -> str:
    # the package is loaded whenever this module is; importing it here would be a cycle
    return str(getattr(sys.modules.get("uet"), "__version__", "unknown"))


# -- values: as stored -> as the file has them -------------------------------------------

def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def encode_value(value: Any) -> Any:
    """A stored value as the file holds it: itself when JSON holds it exactly and it keeps
    the text rule; otherwise its explicit form ($real, $text, $blob)."""
    if isinstance(value, str):
        if "\x00" in value or (not value.isascii() and not _encodable(value)):
            try:  # text read with its bad bytes as lone surrogates: those bytes again
                raw = value.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:
                raw = value.encode("utf-8", "surrogatepass")
            return {"$text": _b64(raw)}
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return {"$real": "NaN" if value != value else "Infinity" if value > 0 else "-Infinity"}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$blob": _b64(bytes(value))}
    return value


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _line(document: dict[str, Any]) -> str:
    """One record as its line: JSON, ASCII, exact."""
    try:
        line = _ENCODE(document)
    except (TypeError, ValueError):  # a BLOB, a non-finite real
        line = None
    if line is None or _SUSPECT.search(line):
        document["row"] = {k: encode_value(v) for k, v in document["row"].items()}
        if "depends_on" in document:
            document["depends_on"] = [encode_value(v) for v in document["depends_on"]]
        line = _ENCODE(document)
    return line + "\n"


# -- export ------------------------------------------------------------------------------

def _selection(since: object, project_id: object) -> tuple[str | None, str | None]:
    if since is not None:
        try:
            since = normalize_timestamp(since, "since")
        except ValueError as exc:
            raise ValidationError(str(exc), field="since") from None
    if project_id is not None:
        if not isinstance(project_id, str) or not project_id or _text_fault(project_id):
            raise ValidationError(f"project_id must be a non-empty string of valid text, got "
                                  f"{project_id!r}", field="project_id")
    return since, project_id


def export_jsonl(db: Any, out: TextIO, *, since: object = None,
                 project_id: object = None) -> dict[str, Any]:
    """Write the ledger to `out` (a text stream) as JSON lines (the module's docstring has
    the format), from one consistent snapshot while writers go on, reading every table in
    keyset batches: memory stays the same however large the ledger is.

    `since` (a timestamp) and `project_id` select runs (created at or after `since`, of that
    project): the file then holds those runs and everything that belongs to them (their
    step attempts, events, patches with their entries, gates defined for them or for those
    entries), and every worker (workers belong to no run; they are few, and runs and step
    attempts refer to them). Records that belong to no run — events written with no run,
    patches, entries and gates of no run — are exported only without a selection, which
    exports every row of every table. Returns the counts, bytes and seconds. A stream that
    cannot be written raises StorageError; BrokenPipeError when its reader went away.
    """
    since, project_id = _selection(since, project_id)
    everything = since is None and project_id is None
    params = {"since": since, "project": project_id, "everything": 1 if everything else 0}
    started = time.perf_counter()
    counts: dict[str, int] = {}
    written = 0

    def write(text: str) -> None:
        nonlocal written
        try:
            out.write(text)
        except BrokenPipeError:
            raise  # the reader went away (`uet export | head`): not the ledger's trouble
        except OSError as exc:
            raise StorageError(f"cannot write the export: {exc}") from None
        written += len(text)

    with db.backend.snapshot() as snap:
        version = snap.rows("export_schema_version")[1][0][0]
        handed_out = snap.rows("event_seq_high_water")[1][0][0]
        deleted = snap.rows("deleted_event_seq")[1][0][0]
        write(_ENCODE({
            "type": "header", "format": FORMAT, "format_version": FORMAT_VERSION,
            "schema_version": version, "uet_version": _uet_version(), "engine": db.engine,
            "exported_at": utc_now(), "selection": {"since": since, "project_id": project_id},
            "event_seq": {"handed_out": handed_out, "deleted": deleted}}) + "\n")
        for record in RECORDS:
            counts[record.type] = 0
            for names, rows in _keyset(snap, record, params):
                lines = []
                for values in rows:
                    row = dict(zip(names, values))
                    document: dict[str, Any] = {"type": record.type, "row": row}
                    if record is GATES:
                        document["depends_on"] = _dependencies(row.pop("depends_on"))
                    lines.append(_line(document))
                write("".join(lines))
                counts[record.type] += len(rows)
        write(_ENCODE({"type": "end", "counts": counts}) + "\n")
    try:
        out.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise StorageError(f"cannot write the export: {exc}") from None
    return {"format": FORMAT, "schema_version": version, "records": counts,
            "selection": {"since": since, "project_id": project_id}, "bytes": written,
            "seconds": round(time.perf_counter() - started, 3)}


def _keyset(snap: Any, record: Record, params: dict[str, Any]
            ) -> Iterator[tuple[list[str], list[tuple[Any, ...]]]]:
    """The record's rows, EXPORT_BATCH at a time, in the order of its keyset column: each
    query starts at the last row of the previous one (inclusive, and that row dropped), so
    any key — even the empty text — is read exactly once."""
    after, first = record.first, True
    while True:
        names, rows = snap.rows(record.export_query,
                                {**params, "after": after, "limit": EXPORT_BATCH})
        fetched = len(rows)
        if not rows:
            return
        index = names.index(record.order)
        if not first and rows[0][index] == after:
            rows = rows[1:]
        first = False
        if rows:
            yield names, rows
            after = rows[-1][index]
        if fetched < EXPORT_BATCH:
            return
        if isinstance(after, str) and not after.isascii() and not _encodable(after):
            raise StorageError(  # raw SQL put bytes that are not UTF-8 into a key
                f"{record.table} holds the key {after!r}, which is not UTF-8 text: the "
                "ledger cannot be read on from there; copy it with `uet backup` instead")


def _dependencies(text: Any) -> list[Any]:
    if text is None:
        return []
    try:
        names = json.loads(text)
    except (TypeError, ValueError):
        raise StorageError("a gate's dependencies could not be read (the ledger holds "
                           "names that are not text)") from None
    return sorted(names, key=lambda n: (not isinstance(n, str), str(n)))


# -- import: reading and checking --------------------------------------------------------

@dataclass
class _Item:
    """One record line, checked: what its insert binds, and what follows it."""

    line: int
    record: Record
    key: Any
    params: dict[str, Any]
    casts: tuple[str, ...] = ()      # SQLite: text columns bound as bytes, to CAST back
    depends_on: tuple[str, ...] = ()
    current_run_id: str | None = None  # a worker's, set once the runs are in
    exported_seq: int | None = None    # an event's
    size: int = 0


@dataclass
class _Header:
    schema_version: int
    handed_out: int
    deleted: int
    document: dict[str, Any]


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODE = json.JSONDecoder(parse_constant=_no_constant).decode


def _text_fault(value: str) -> str | None:
    if "\x00" in value:
        return "contains a NUL character (\\u0000), which a ledger's text cannot hold"
    if not value.isascii() and not _encodable(value):
        return "is not valid Unicode text (it contains a lone surrogate)"
    return None


class _Reader:
    """The lines of an export file, parsed and checked against the ledger's rules."""

    def __init__(self, name: str, engine: str) -> None:
        self.name = name
        self.engine = engine

    def fail(self, line: int, message: str, *, record: str | None = None,
             field: str | None = None, applied: str = "nothing was imported") -> NoReturn:
        raise LedgerFileError(f"{self.name} line {line}: {message}; {applied}", line=line,
                              record=record, field=field)

    def parse(self, raw: bytes, line: int) -> dict[str, Any]:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            self.fail(line, "is not UTF-8 text (an export file is ASCII)")
        text = text.rstrip("\r\n")
        if not text.strip():
            self.fail(line, "is empty (an export file has one JSON object on each line)")
        try:
            document = _DECODE(text)
        except RecursionError:
            self.fail(line, "is nested too deeply to be a record")
        except ValueError as exc:
            self.fail(line, f"is not JSON ({exc})")
        if not isinstance(document, dict) or not isinstance(document.get("type"), str):
            self.fail(line, "is not a record: every line is a JSON object with a \"type\"")
        return document

    def header(self, document: dict[str, Any], line: int) -> _Header:
        if document.get("type") != "header" or line != 1:
            self.fail(line, "must be the export's header: this is not a uet export file "
                            "(`uet export` writes one)")
        if document.get("format") != FORMAT:
            self.fail(line, f"names the format {document.get('format')!r}, not {FORMAT!r}")
        version = document.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            self.fail(line, f"has no valid format_version (got {version!r})")
        if version > FORMAT_VERSION:
            raise SchemaVersionError(
                f"{self.name} is in format {FORMAT} version {version}, newer than this uet "
                f"reads (up to {FORMAT_VERSION}); upgrade uet to import it. Nothing was "
                "imported.")
        schema = document.get("schema_version")
        if not isinstance(schema, int) or isinstance(schema, bool) or schema < 1:
            self.fail(line, f"has no valid schema_version (got {schema!r})")
        if schema > LATEST_VERSION:
            raise SchemaVersionError(
                f"{self.name} was exported from a ledger at schema version {schema}, newer "
                f"than this uet understands (up to {LATEST_VERSION}); upgrade uet to import "
                "it. Nothing was imported.")
        seqs = document.get("event_seq")
        numbers: list[Any] = [seqs.get(k) for k in ("handed_out", "deleted")] if isinstance(
            seqs, dict) else []
        if len(numbers) != 2 or not all(isinstance(n, int) and not isinstance(n, bool)
                                        and 0 <= n <= INT_MAX for n in numbers):
            self.fail(line, "has no valid event_seq ({\"handed_out\": N, \"deleted\": N})")
        return _Header(schema, numbers[0], numbers[1], document)

    def item(self, document: dict[str, Any], line: int, size: int = 0) -> _Item:
        record = BY_TYPE.get(document["type"])
        if record is None:
            self.fail(line, f"has an unknown record type {document['type']!r} (known: "
                            f"{', '.join(BY_TYPE)})")
        allowed = {"type", "row", "depends_on"} if record is GATES else {"type", "row"}
        unknown = sorted(set(document) - allowed)
        if unknown:
            self.fail(line, f"{record.type} line has unknown keys {unknown}", record=record.type)
        row = document.get("row")
        if not isinstance(row, dict):
            self.fail(line, f"{record.type} line has no \"row\" object", record=record.type)
        key = row.get(record.key)
        who = f"{record.type} {key!r}" if isinstance(key, str) else record.type
        unknown = sorted(set(row) - set(record.by_name))
        if unknown:
            self.fail(line, f"{who} has unknown fields {unknown} (known: "
                            f"{', '.join(record.by_name)})", record=record.type,
                      field=str(unknown[0]))
        params: dict[str, Any] = {}
        casts: list[str] = []
        for name, spec, free, required, plain, default in record.plan:
            if name in row:
                value = row[name]
            elif required and default is None:
                self.fail(line, f"{who}: field {name!r} is missing", record=record.type,
                          field=name)
            else:
                value = default
            # the common values inline (the same rules as `value`, which says why not)
            if value is None:
                if not required:
                    params[name] = None
                    continue
            elif free == TEXT:
                if (type(value) is str and "\x00" not in value and (not plain or value)
                        and (value.isascii() or _encodable(value))):
                    params[name] = value
                    continue
            elif free == INTEGER:
                if type(value) is int and INT_MIN <= value <= INT_MAX:
                    params[name] = value
                    continue
            value, cast = self.value(spec, value, line, who, record.type)
            params[name] = value
            if cast:
                casts.append(name)
        if record.check is not None:
            problem = record.check(params)
            if problem:
                self.fail(line, f"{who}: {problem}", record=record.type)
        item = _Item(line, record, params[record.key], params, tuple(casts), size=size)
        if record is GATES:
            names = document.get("depends_on", [])
            if not isinstance(names, list) or not all(isinstance(n, str) and n
                                                      and not _text_fault(n) for n in names):
                self.fail(line, f"{who}: depends_on must be a list of gate names (non-empty "
                                "valid text)", record=record.type, field="depends_on")
            if len(set(names)) != len(names):
                self.fail(line, f"{who}: depends_on names a gate twice", record=record.type,
                          field="depends_on")
            item.depends_on = tuple(names)
        if record is WORKERS:
            item.current_run_id = params["current_run_id"]
        if record is EVENTS:
            item.exported_seq = params["seq"]
        return item

    def value(self, spec: Field, value: Any, line: int, who: str,
              record: str) -> tuple[Any, bool]:
        """The value to bind for one field, and whether it is text bound as bytes that
        must be cast back to text once inserted (SQLite)."""
        def refuse(why: str) -> NoReturn:
            self.fail(line, f"{who}: field {spec.name!r} {why}", record=record,
                      field=spec.name)

        if value is None:
            if spec.required:
                refuse("cannot be empty (null)")
            return None, False
        if isinstance(value, dict):
            return self.special(spec, value, refuse)
        if spec.kind in (TEXT, JSON):
            if not isinstance(value, str):
                refuse(f"must be text, got {type(value).__name__}")
            fault = _text_fault(value)
            if fault:
                refuse(fault)
            if spec.plain and not value:
                refuse("cannot be empty text")
            if spec.kind == JSON:
                self.json_text(spec, value, refuse)
            if spec.choices is not None and value not in spec.choices:
                refuse(f"is {value!r}, not one of {', '.join(map(str, spec.choices))}")
            if spec.stamp and not _STAMP.match(value):
                refuse(f"is {value!r}, not a timestamp in the ledger's format "
                       "(2026-01-31T12:00:00.000000Z)")
            if spec.length is not None and len(value) != spec.length:
                refuse(f"must be {spec.length} characters long")
            return value, False
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            refuse(f"must be a number, got {type(value).__name__}")
        if spec.kind == INTEGER:
            if not isinstance(value, int):
                refuse(f"must be an integer, got {value!r}")
            if not INT_MIN <= value <= INT_MAX:
                refuse("is out of the 64-bit integer range")
        else:
            value = float(value)
            if not math.isfinite(value):
                refuse("must be a finite number (NaN and infinities are written "
                       "{\"$real\": \"NaN\"} ...)")
        return self.ranged(spec, value, refuse), False

    @staticmethod
    def ranged(spec: Field, value: Any, refuse: Callable[[str], NoReturn]) -> Any:
        if spec.choices is not None and value not in spec.choices:
            refuse(f"is {value!r}, not one of {', '.join(map(str, spec.choices))}")
        if spec.minimum is not None and not value >= spec.minimum:
            refuse(f"must be at least {spec.minimum:g}, got {value!r}")
        if spec.positive and not value > 0:
            refuse(f"must be greater than 0, got {value!r}")
        return value

    def special(self, spec: Field, value: dict[str, Any],
                refuse: Callable[[str], NoReturn]) -> tuple[Any, bool]:
        """An explicit form: {"$real": ...}, {"$text": base64}, {"$blob": base64}."""
        if len(value) != 1 or next(iter(value)) not in ("$real", "$text", "$blob"):
            refuse(f"holds an object {sorted(value)!r}: a value is text, a number, null, or "
                   "one of {\"$real\": ...}, {\"$text\": base64}, {\"$blob\": base64}")
        form, data = next(iter(value.items()))
        if form == "$real":
            if spec.kind != REAL or data not in _REALS:
                refuse("holds {\"$real\": ...}, which only a real column takes, with NaN, "
                       "Infinity or -Infinity")
            if data == "NaN" and self.engine == "sqlite":
                refuse("is NaN, which SQLite cannot store (it would become null)")
            return self.ranged(spec, _REALS[data], refuse), False
        if spec.kind != TEXT or spec.plain or spec.choices or spec.stamp or spec.length:
            refuse(f"holds {form}, which only a free text column takes (never a key, a "
                   "reference, a state, a timestamp the schema checks, or JSON)")
        if self.engine != "sqlite":
            refuse(f"holds {'a BLOB' if form == '$blob' else 'text that is not valid UTF-8 or holds NUL'}"
                   ", which a SQLite ledger kept past uet's text rule: PostgreSQL cannot "
                   "store it (import it into a SQLite ledger, or fix the value)")
        try:
            raw = base64.b64decode(data, validate=True) if isinstance(data, str) else None
        except (binascii.Error, ValueError):
            raw = None
        if raw is None:
            refuse(f"holds {form} whose value is not base64 text")
        if form == "$blob":
            return raw, False
        try:
            return raw.decode("utf-8"), False  # NUL inside: bound as the text it is
        except UnicodeDecodeError:
            return raw, True  # bytes that are not UTF-8: bound, then cast back to text

    @staticmethod
    def json_text(spec: Field, value: str, refuse: Callable[[str], NoReturn]) -> None:
        try:
            document = _DECODE(value)
        except RecursionError:
            refuse("is JSON nested too deeply to be read back")
        except ValueError as exc:
            refuse(f"is not valid JSON text ({exc})")
        if spec.shape == "object" and not isinstance(document, dict):
            refuse("must be a JSON object")
        if spec.shape == "array" and not isinstance(document, list):
            refuse("must be a JSON array")


class _Source(Protocol):
    """An export file as an import reads it: line by line, from its start, twice."""

    def seek(self, offset: int, /) -> object: ...

    def __iter__(self) -> Iterator[bytes]: ...


@contextmanager
def _opened(source: Any, name: str | None = None) -> Iterator[tuple[_Source, str]]:
    """The file to read twice (a check, then the writes) and its name for messages (`name`,
    else the path, <stdin>, the stream's name): a path, or "-" / a stream that cannot seek,
    copied first to a temporary file."""
    if isinstance(source, (str, os.PathLike)) and os.fspath(source) != "-":
        path = os.fspath(source)
        try:
            f = open(path, "rb")
        except OSError as exc:
            raise ValidationError(f"cannot read {path}: {exc.strerror}", field="file") from None
        with f:
            yield f, name or path
        return
    stream = sys.stdin.buffer if isinstance(source, (str, os.PathLike)) else source
    if name is None:
        name = "<stdin>" if stream is sys.stdin.buffer else getattr(stream, "name", None)
    if not isinstance(name, str):
        name = "<stream>"
    seekable = False
    try:
        seekable = stream.seekable()
    except (AttributeError, ValueError, OSError):
        pass
    if seekable:
        start = stream.tell()
        try:
            yield _Rewind(stream, start), name
        finally:
            stream.seek(start)  # where it was: the stream can be read again
        return
    with tempfile.TemporaryFile(prefix="uet-import-") as spool:
        try:
            shutil.copyfileobj(stream, spool, 1 << 20)
        except OSError as exc:
            raise StorageError(f"cannot copy {name} to a temporary file to import it: "
                               f"{exc}") from None
        spool.seek(0)
        yield spool, name


class _Rewind:
    """A seekable stream whose `seek(0)` goes back to where the import started reading."""

    def __init__(self, stream: BinaryIO, start: int) -> None:
        self._stream, self._start = stream, start

    def seek(self, offset: int) -> None:
        self._stream.seek(self._start + offset)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._stream)


def _lines(f: Any) -> Iterator[tuple[int, bytes]]:
    f.seek(0)
    for number, raw in enumerate(f, 1):
        if isinstance(raw, str):
            raise ValidationError("an export file must be read in binary mode ('rb')",
                                  field="file")
        yield number, raw


def _scan(f: Any, reader: _Reader, *, on_item: Callable[[_Item], None] | None = None
          ) -> tuple[_Header, dict[str, int], int]:
    """Read the whole file, checking every line: the header, the records in their order
    (events in increasing seq), the end line and its counts. Returns (header, counts, the
    number of lines)."""
    header: _Header | None = None
    counts = {record.type: 0 for record in RECORDS}
    rank, last_seq, ended, number = -1, 0, False, 0
    for number, raw in _lines(f):
        document = reader.parse(raw, number)
        if header is None:
            header = reader.header(document, number)
            continue
        if ended:
            reader.fail(number, "comes after the end line")
        kind = document["type"]
        if kind == "end":
            found = document.get("counts")
            if found != counts:
                reader.fail(number, f"counts {found!r} records, but the file holds {counts}: "
                                    "it was changed or cut")
            ended = True
            continue
        if kind == "header":
            reader.fail(number, "is a second header (two exports joined into one file?)")
        if _RANK.get(kind, rank) < rank:
            reader.fail(number, f"{kind} line comes after {RECORDS[rank].type} lines: the "
                                "records must be in the order the export writes them",
                        record=kind)
        item = reader.item(document, number, len(raw))
        rank = _RANK[kind]
        if item.record is EVENTS:
            if item.params["seq"] <= last_seq:
                reader.fail(number, f"event {item.key!r} has seq {item.params['seq']}, not "
                                    f"above the previous event's {last_seq}: events are in "
                                    "seq order", record="event", field="seq")
            last_seq = item.params["seq"]
        counts[kind] += 1
        if on_item is not None:
            on_item(item)
    if header is None:
        raise LedgerFileError(f"{reader.name} is empty: it is not a uet export; nothing was "
                              "imported", line=1)
    if not ended:
        reader.fail(number + 1, "is missing: the file ends without its end line, so it was "
                                "cut short (the export did not finish)")
    return header, counts, number


def check_jsonl(source: Any, *, engine: str = "sqlite",
                name: str | None = None) -> dict[str, Any]:
    """Check an export file for an import into a ledger of `engine`, writing nothing and
    opening no ledger: every line as `import_jsonl` checks it, but not the ids the target
    already holds. Returns the header and the counts; raises LedgerFileError (naming the
    line) or SchemaVersionError. `name`: how messages call the source."""
    with _opened(source, name) as (f, name):
        header, counts, _ = _scan(f, _Reader(name, engine))
    return {"header": header.document, "counts": counts}


# -- import: writing ---------------------------------------------------------------------

class _Importer:
    def __init__(self, db: Any, name: str, header: _Header, skip_existing: bool) -> None:
        self.backend = db.backend
        self.name = name
        self.header = header
        self.skip_existing = skip_existing
        self.imported = {record.type: 0 for record in RECORDS}
        self.skipped = {record.type: 0 for record in RECORDS}
        self.kept = self.renumbered = 0
        self.fixups: list[dict[str, Any]] = []
        self.fixups_done = False
        self.unset_current_runs = 0

    # -- writes ---------------------------------------------------------------------------

    def write(self, items: list[_Item]) -> None:
        record = items[0].record
        if record is not WORKERS and record is not RUNS:
            self.apply_fixups()
        try:
            with self.backend.transaction() as tx:
                written, kept = self.insert(tx, record, items)
        except UetError as exc:
            raise self.located(record, items, exc) from None
        # counted once committed
        self.imported[record.type] += written
        self.skipped[record.type] += len(items) - written
        self.kept += kept
        self.renumbered += written - kept if record is EVENTS else 0

    def insert(self, tx: Transaction, record: Record, items: list[_Item]) -> tuple[int, int]:
        """Write a batch (the records whose id is new, with `skip_existing`); returns how
        many were written and, of the events, how many kept their seq."""
        if self.skip_existing:
            found = _existing(tx.rows, record, [i.key for i in items])
            items = [i for i in items if i.key not in found]
            if not items:
                return 0, 0
        kept = self.number(tx, items) if record is EVENTS else 0
        tx.run_many(record.insert_query, [i.params for i in items])
        for item in items:
            self.after_insert(tx, item)
        if record is EVENTS:
            tx.run("reserve_event_seqs", (items[-1].params["seq"],))
        return len(items), kept

    def after_insert(self, tx: Transaction, item: _Item) -> None:
        record = item.record
        if item.depends_on:
            tx.run_many("insert_gate_dependency", [(item.key, d) for d in item.depends_on])
        for name in item.casts:
            # names from the record's fixed column list, never from the file
            tx.execute(f"UPDATE {record.table} SET {name} = CAST({name} AS TEXT) "
                       f"WHERE {record.key} = {tx.placeholder}", (item.key,))

    @staticmethod
    def number(tx: Transaction, items: list[_Item]) -> int:
        """Each event keeps its exported seq when that is above every seq the ledger ever
        handed out, else takes the next one: the trail keeps its order, a seq is never
        handed out twice, and (other writers held off until the transaction ends) no
        follower passes one. A copy into a fresh ledger keeps every seq. Returns how many
        kept theirs."""
        tx.run("lock_event_seqs")
        last = tx.rows("event_seq_high_water")[0]["seq"]
        kept = 0
        for item in items:
            wanted = item.exported_seq
            assert wanted is not None
            if wanted > last:
                kept += 1
                last = wanted
            else:
                last += 1
            item.params["seq"] = last
        return kept

    def apply_fixups(self) -> None:
        """Once the runs are in: the runs the workers held (a worker and its run refer to
        each other, so a worker is written without it). Where the run is not in the ledger
        (a selection's export), the worker keeps none."""
        if self.fixups_done:
            return
        self.fixups_done = True
        for start in range(0, len(self.fixups), IMPORT_BATCH):
            batch = self.fixups[start:start + IMPORT_BATCH]
            with self.backend.transaction() as tx:
                for params in batch:
                    if tx.run("import_worker_current_run", params).rowcount != 1:
                        self.unset_current_runs += 1

    def finish(self) -> None:
        self.apply_fixups()
        if self.renumbered == 0:
            # a continuation of the source's trail: its seq floor comes along
            with self.backend.transaction() as tx:
                tx.run("raise_deleted_event_seq", (self.header.deleted,))
                tx.run("reserve_event_seqs", (self.header.handed_out,))

    # -- what went wrong ------------------------------------------------------------------

    def progress(self, first_line: int) -> str:
        done = {k: v for k, v in self.imported.items() if v}
        what = ", ".join(f"{v:,} {k}{'' if v == 1 else 's'}" for k, v in done.items())
        if not done:
            return ("nothing was imported. Fix it and run the import again"
                    + (" (with --skip-existing)" if self.skip_existing else ""))
        return (f"the lines before line {first_line} were imported ({what}), nothing from "
                f"line {first_line} on. Fix it and run the import again with "
                "--skip-existing to go on from there")

    def located(self, record: Record, items: list[_Item], exc: UetError) -> UetError:
        """The error of a batch the ledger refused, naming the record that it refused (the
        batch is replayed one record at a time, and rolled back, to find it)."""
        first = items[0].line
        if isinstance(exc, (DatabaseBusyError, StorageError)):
            return type(exc)(f"{exc}; importing {self.name}: {self.progress(first)}")
        culprit: tuple[_Item, UetError] | None = None
        try:
            with self.backend.transaction():
                for item in items:
                    try:
                        with self.backend.transaction() as one:  # a savepoint
                            one.run(record.insert_query, item.params)
                            self.after_insert(one, item)
                    except UetError as refused:
                        culprit = (item, refused)
                        break
                raise _Replayed  # rolls the replay back
        except _Replayed:
            pass
        except UetError:
            culprit = None
        if culprit is None:
            return LedgerFileError(
                f"{self.name} lines {first}-{items[-1].line}: the ledger refused these "
                f"{record.type} records ({exc}); {self.progress(first)}", line=first,
                record=record.type)
        item, failed = culprit
        who = f"{record.type} {item.key!r}"
        if isinstance(failed, ConstraintViolation):
            if failed.kind == "unique" and failed.columns == (record.key,):
                why = "already exists in the ledger"
            elif failed.kind == "unique":
                why = (f"collides with a record of the ledger on {', '.join(failed.columns)} "
                       f"({failed})")
            elif failed.kind == "foreign_key":
                why = ("refers to a record that is neither in the file before it nor in the "
                       f"ledger ({failed})")
            else:
                why = f"was refused by the ledger's {failed.kind} constraint ({failed})"
        else:
            why = f"was refused by the ledger ({failed})"
        return LedgerFileError(f"{self.name} line {item.line}: {who} {why}; "
                               f"{self.progress(first)}", line=item.line, record=record.type)

    def report(self, started: float) -> dict[str, Any]:
        return {"format": FORMAT, "schema_version": self.header.schema_version,
                "exported_from": self.header.document.get("engine"),
                "imported": self.imported, "skipped": self.skipped,
                "events": {"kept_seq": self.kept, "renumbered": self.renumbered},
                "workers_without_their_run": self.unset_current_runs,
                "seconds": round(time.perf_counter() - started, 3)}


class _Replayed(Exception):
    """Rolls back the replay of a refused batch."""


def _existing(run: Callable[..., list[dict[str, Any]]], record: Record, keys: list[Any]) -> set[Any]:
    """Which of `keys` the ledger holds (`run`: a backend's `read` or a transaction's
    `rows`)."""
    found: set[Any] = set()
    for start in range(0, len(keys), CHECK_BATCH):
        found.update(r["id"] for r in run(record.existing_query,
                                          (json.dumps(keys[start:start + CHECK_BATCH]),)))
    return found


def _refuse_existing(backend: Any, name: str, items: list[_Item]) -> None:
    """Without skip_existing, before any write: no record of the file may exist already."""
    found = _existing(backend.read, items[0].record, [i.key for i in items])
    if found:
        item = next(i for i in items if i.key in found)
        raise LedgerFileError(
            f"{name} line {item.line}: {item.record.type} {item.key!r} already exists in "
            f"ledger {backend.path}; nothing was imported. Import with --skip-existing "
            "(skip_existing=True) to keep the ledger's records and add the others",
            line=item.line, record=item.record.type)


def import_jsonl(db: Any, source: Any, *, skip_existing: bool = False,
                 name: str | None = None) -> dict[str, Any]:
    """Load an export file (a path, "-" for stdin, or a binary stream) into this ledger,
    ids kept. Returns what was imported and skipped.

    First the whole file is checked, writing nothing: a malformed line, a value against the
    ledger's rules, a file cut short (no end line, or counts that differ), a header newer
    than this uet (SchemaVersionError) — and, without `skip_existing`, any record whose id
    the ledger already holds — raise LedgerFileError naming the line, and nothing is
    imported. Then the records are written in batches, each one short transaction (other
    writers wait for one batch at most, never for the whole import). Should the ledger
    refuse a record all the same (a reference to a record that is in neither the file nor
    the ledger, a writer racing the import), the error names its line: the batches before
    it stay imported, and importing the file again with `skip_existing` goes on from there
    (every record is skipped or written by its own id).

    `skip_existing`: a record whose id exists is left as it is, and skipped (a gate with its
    dependencies). Events: each keeps its exported `seq` when that is above every seq the
    ledger ever handed out (always so in a fresh ledger: the copy is exact), else takes the
    next one; either way the trail keeps the file's order and no seq is handed out twice.
    When every event kept its seq, the ledger also takes the source's seq floor (its
    deleted_event_seq, and on PostgreSQL its sequence), so it continues the source's trail.
    `name` is what messages call the source (default: its path, <stdin>, the stream's name).
    """
    if not isinstance(skip_existing, bool):
        raise ValidationError(f"skip_existing must be True or False, got {skip_existing!r}",
                              field="skip_existing")
    started = time.perf_counter()
    with _opened(source, name) as (f, name):
        reader = _Reader(name, db.engine)
        pending: list[_Item] = []

        def check(item: _Item) -> None:  # the ids the ledger holds, looked up in batches
            if pending and (pending[0].record is not item.record
                            or len(pending) >= CHECK_BATCH):
                _refuse_existing(db.backend, name, pending)
                pending.clear()
            pending.append(item)

        header, _, _ = _scan(f, reader, on_item=None if skip_existing else check)
        if pending:
            _refuse_existing(db.backend, name, pending)
        importer = _Importer(db, name, header, skip_existing)
        batch: list[_Item] = []
        size = 0
        for number, raw in _lines(f):
            document = reader.parse(raw, number)
            if number == 1 or document["type"] == "end":
                continue
            item = reader.item(document, number, len(raw))
            if item.record is WORKERS and item.current_run_id is not None:
                importer.fixups.append({"worker_id": item.key,
                                        "created_at": item.params["created_at"],
                                        "current_run_id": item.current_run_id})
            if batch and (batch[0].record is not item.record or len(batch) >= IMPORT_BATCH
                          or size >= IMPORT_BATCH_BYTES):
                importer.write(batch)
                batch, size = [], 0
            batch.append(item)
            size += item.size
        if batch:
            importer.write(batch)
        importer.finish()
    return importer.report(started)


# -- backup ------------------------------------------------------------------------------

def backup(db: Any, dest: Any, *, force: bool = False) -> dict[str, Any]:
    """A consistent copy of the ledger at `dest`, made while writers go on.

    SQLite: SQLite's online backup API in one step (one read transaction: writers never
    wait for it; a copy in steps would start over after each commit of another connection)
    into a temporary file beside `dest`, which is then checked (`PRAGMA integrity_check`,
    `foreign_key_check`), flushed to disk and renamed to `dest`: never a half copy at
    `dest`. An existing `dest` is refused unless `force`, and even then when a write-ahead
    log (`dest-wal`) lies beside it (a ledger in use). Returns what was copied (bytes, runs,
    seconds). PostgreSQL: nothing is written; returns the `pg_dump` command that copies the
    ledger's schema (and the `pg_restore` one), with no password in it.
    """
    if not isinstance(dest, (str, os.PathLike)) or not os.fspath(dest) or "\x00" in os.fspath(
            dest):
        raise ValidationError(f"a backup needs a destination path, got {dest!r}", field="dest")
    dest = os.fspath(dest)
    backend = db.backend
    if db.engine == "postgresql":
        command = backend.dump_command(dest)
        return {"engine": "postgresql", "ledger": display_name(db.db_path),
                "destination": dest, "written": False, **command}
    started = time.perf_counter()
    target = os.path.abspath(dest)
    folder = os.path.dirname(target)
    if db.db_path != MEMORY and _same_file(target, db.db_path):
        raise ValidationError(f"{dest} is the ledger itself; back it up to another file",
                              field="dest")
    if os.path.isdir(target):
        raise ValidationError(f"{dest} is a folder; name the backup file to write "
                              f"(e.g. {os.path.join(dest, 'framework.db')})", field="dest")
    if not os.path.isdir(folder):
        raise ValidationError(f"the folder of {dest} does not exist; create it first",
                              field="dest")
    if os.path.lexists(target) and not force:
        raise ValidationError(f"{dest} exists; pass --force (force=True) to replace it",
                              field="dest")
    for side in ("-wal", "-journal"):  # one left empty by a reader is harmless
        if os.path.exists(target + side) and os.path.getsize(target + side) > 0:
            raise ValidationError(
                f"{dest}{side} lies beside {dest}: {dest} is a ledger in use, or one that was "
                f"not closed cleanly, and replacing it under its {side[1:]} file would "
                "corrupt the new copy; back up to another name", field="dest")
    temporary = os.path.join(folder, f".{os.path.basename(target)}.uet-backup-"
                                     f"{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        backend.copy_to(temporary)
        health = backend.check_copy(temporary)
        if health["integrity_check"] != ["ok"] or health["foreign_key_violations"]:
            raise StorageError(
                f"the copy of ledger {backend.path} failed its check (integrity_check: "
                f"{'; '.join(map(str, health['integrity_check'][:5]))}; foreign-key "
                f"violations: {health['foreign_key_violations']}); the ledger itself may be "
                "damaged: run `uet doctor`. Nothing was written at " + dest)
        _fsync(temporary)
        _install(temporary, target, dest, force)
        _fsync_folder(folder)
    finally:
        for leftover in (temporary, temporary + "-journal", temporary + "-wal",
                         temporary + "-shm"):
            try:
                os.unlink(leftover)
            except FileNotFoundError:
                pass
            except OSError:
                pass  # a leftover temporary file is named after the backup: visible
    return {"engine": "sqlite", "ledger": display_name(db.db_path), "destination": dest,
            "written": True, "bytes": os.path.getsize(target), "runs": health["runs"],
            "schema_version": health["schema_version"], "integrity_check": "ok",
            "foreign_key_violations": 0, "method": "sqlite online backup API, one step",
            "seconds": round(time.perf_counter() - started, 3)}


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def _fsync(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise StorageError(f"cannot flush the backup {path} to disk: {exc.strerror}") from None


def _fsync_folder(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # a platform that cannot open folders: the rename stands as it is
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _install(temporary: str, target: str, dest: str, force: bool) -> None:
    """Put the checked copy at `target` in one step: a rename (replacing, with `force`),
    else a hard link, which fails rather than replace a file that appeared meanwhile."""
    try:
        if force:
            os.replace(temporary, target)
            return
        try:
            os.link(temporary, target)
        except FileExistsError:
            raise ValidationError(f"{dest} exists (it appeared during the backup); pass "
                                  "--force (force=True) to replace it", field="dest") from None
        except OSError:  # a file system without hard links
            if os.path.lexists(target):
                raise ValidationError(f"{dest} exists; pass --force (force=True) to replace "
                                      "it", field="dest") from None
            os.replace(temporary, target)
    except OSError as exc:
        raise StorageError(f"cannot write the backup {dest}: {exc.strerror}") from None


__all__ = ["FORMAT", "FORMAT_VERSION", "LedgerFileError", "RECORDS", "backup", "check_jsonl",
           "encode_value", "export_jsonl", "import_jsonl"]

"""The ledger as OpenTelemetry traces (`uet export --format otlp`): a run is a trace.

`export_otlp(db, out=FILE)` writes OTLP/JSON, `export_otlp(db, endpoint=URL)` sends OTLP/HTTP
protobuf to a collector. The spans are built as the OpenTelemetry SDK's `ReadableSpan`s
(explicit ids and times: the ledger's, not the clock's) and encoded with the official OTLP
encoder (`opentelemetry-exporter-otlp-proto-common`) into the protobuf
`ExportTraceServiceRequest`; the packages come with the extra `uet[otel]`.

The mapping (the same ledger always gives the same ids: a re-export replaces, never
duplicates, what a backend deduplicates by id):

- trace id: the first 16 bytes of sha256("uet-run:" + run id); one trace per run.
- span id: the first 8 bytes of sha256("uet-span:" + run id + ":" + kind + ":" + record id).
- the run: the root span (`run <workstream or phase>`), from `started_at` (else
  `created_at`) to `ended_at` (a run not finished yet: to the newest time it recorded).
  Status: succeeded → OK; failed, quarantined, canceled → ERROR with its error message;
  pending, running → UNSET. Attributes `uet.run.*`, `uet.project.id`, `uet.phase.id`,
  `uet.workstream.id`, `uet.run.metadata.<key>`, and the run's usage totals
  (`uet.usage.attempts`, `uet.usage.input_tokens`, `uet.usage.output_tokens`,
  `uet.usage.cost_usd`, `uet.usage.models`: sums, under uet's names so that a backend
  summing `gen_ai.usage.*` does not count them twice).
- every event of the run's trail: a span event of the root span, in the trail's order
  (`seq`), named by its `event_type`, at its `timestamp`, with `uet.event.id`,
  `uet.event.seq` and each top-level key of its `data` as an attribute (text, numbers,
  booleans and lists of one of them as themselves; anything else as its JSON text).
- each step attempt: a child span of the root (`invoke_agent <tool>` when its tool reported
  a model or tokens, else `step <tool>`), `started_at` → `ended_at`; succeeded → OK, failed
  and canceled → ERROR (its error log). Attributes `uet.step_attempt.id`, `uet.step.*`,
  `uet.tool.id`, `uet.task.id`, `uet.usage.cost_usd`, `uet.step.metadata.<key>` and the
  GenAI semantic conventions where they fit: `gen_ai.operation.name` (`invoke_agent`),
  `gen_ai.agent.name` (the tool), `gen_ai.request.model` and `gen_ai.response.model` (the
  model the tool reported), `gen_ai.usage.input_tokens`, `gen_ai.usage.output_tokens`.
  The prompt is not exported (it may be large or private; `uet export --format jsonl`
  has it).
- each patch: a span `patch` under the step attempt that produced it (else the root), from
  its recording to its entries' last change; under it one span per stage of each ledger
  entry (`patch validated`, `patch applied`, …: the time the entry spent in that state, from
  the `patch_entry.*` events of the trail; the state it is in now is a span of no length).
  committed → OK; quarantined, apply_failed, rolled_back, dropped → ERROR with the reason.
- each gate of the run: a span `gate <name>` under the step attempt whose patch it judged
  (gate → ledger entry → patch → step attempt), else under the root; `started_at` (else
  `created_at`) → `completed_at`; PASSED → OK, FAILED → ERROR. Attributes `uet.gate.*`
  (output clipped).

Values are written whatever the ledger holds: lone surrogates (text stored before the text
rule, or by raw SQL) are written as the escape `\\udXXX`; a text value longer than
ATTRIBUTE_LIMIT bytes (8 KB) is cut there and ends with a marker `…(clipped: N chars in
all)`; an integer beyond 64 bits is written as its decimal text; a span keeps at most
ATTRIBUTE_COUNT_LIMIT attributes and EVENT_COUNT_LIMIT events (the protocol's
`dropped_*_count` say how many were left out).

Streaming: runs are read page by page (newest first, keyset paging), and sent in batches —
one `ExportTraceServiceRequest` per batch of at most BATCH_RUNS runs or about BATCH_BYTES
bytes. In a file, each batch is one line of OTLP/JSON (the layout of the OpenTelemetry
Collector's file exporter and `otlpjsonfile` receiver): memory stays bounded by one batch
and one run, however large the ledger.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence, TextIO

from uet import __version__
from uet.errors import UetError, ValidationError
from uet.state import Database
from uet.state.views import run_document, since_timestamp

try:  # the extra uet[otel]; without it the module still loads and says what to install
    from google.protobuf import json_format
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceResponse)
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    MISSING_PACKAGES: ImportError | None = exc
    if not TYPE_CHECKING:  # mypy checks the classes against the installed packages
        ReadableSpan = Event = object  # the subclasses below stay definable
else:
    MISSING_PACKAGES = None

__all__ = ["export_otlp", "OtlpExportError", "otlp_json", "trace_id_of", "span_id_of",
           "ATTRIBUTE_LIMIT", "KEY_LIMIT",
           "ATTRIBUTE_COUNT_LIMIT", "EVENT_COUNT_LIMIT", "BATCH_RUNS", "BATCH_BYTES"]

ATTRIBUTE_LIMIT = 8192          # bytes (UTF-8) of one text value; longer ones are clipped
KEY_LIMIT = 256                 # bytes of an attribute key or a span / event name
ATTRIBUTE_COUNT_LIMIT = 128     # attributes of one span or span event
ARRAY_LIMIT = 128               # items of one array value (longer: its JSON text)
EVENT_COUNT_LIMIT = 10_000      # span events of one span (the run's trail)
BATCH_RUNS = 100                # runs per request / JSON line
BATCH_BYTES = 4_000_000         # about this many protobuf bytes per request
PAGE_RUNS = 200                 # runs read from the ledger per page
RETRIES = 4                     # further tries of a request the collector asks to retry
RETRY_AFTER_LIMIT_S = 30.0      # the longest wait between two tries
RETRYABLE_STATUS = frozenset({429, 502, 503, 504})  # the OTLP/HTTP spec's retryable codes

_INT64_MIN, _INT64_MAX = -(2 ** 63), 2 ** 63 - 1
_FIXED64_MAX = 2 ** 64 - 1
_SURROGATE = re.compile("[\ud800-\udfff]")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

# the status of a record's span, by its state (anything else: UNSET)
_RUN_OK, _RUN_ERROR = {"succeeded"}, {"failed", "quarantined", "canceled"}
_STEP_OK, _STEP_ERROR = {"succeeded"}, {"failed", "canceled"}
_GATE_OK, _GATE_ERROR = {"PASSED"}, {"FAILED"}
_PATCH_OK = {"committed"}
_PATCH_ERROR = {"quarantined", "apply_failed", "rolled_back", "dropped"}
# the patch entry events that tell its stages
_ENTRY_CREATED, _ENTRY_CHANGED = "patch_entry.created", "patch_entry.state_changed"


class OtlpExportError(UetError):
    """The traces could not be exported: the collector refused them or cannot be reached,
    the output cannot be written, or the OpenTelemetry packages are missing."""


# -- ids -----------------------------------------------------------------------------------

def trace_id_of(run_id: str) -> int:
    """The trace id of a run: the first 16 bytes of sha256("uet-run:" + run id)."""
    digest = hashlib.sha256(f"uet-run:{_safe_text(str(run_id))}".encode("utf-8")).digest()
    return int.from_bytes(digest[:16], "big") or 1  # an all-zero id is invalid


def span_id_of(run_id: str, kind: str, record_id: object) -> int:
    """The span id of one record of a run (kind: run, step_attempt, gate, patch,
    patch_stage): the first 8 bytes of sha256 of them."""
    key = f"uet-span:{_safe_text(str(run_id))}:{kind}:{_safe_text(str(record_id))}"
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") or 1


# -- values --------------------------------------------------------------------------------

def _safe_text(text: str) -> str:
    """`text` with every surrogate code point written as the escape `\\udXXX` (they cannot
    be encoded as UTF-8, which protobuf strings must be)."""
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _text(value: str, limit: int = ATTRIBUTE_LIMIT) -> str:
    """A text value fit for OTLP: surrogates escaped, at most `limit` bytes of UTF-8 (cut
    with a marker saying how long it was). Only the head of a long value is looked at."""
    head = _safe_text(value[:limit + 1])
    if len(head) <= limit // 4 or (len(value) <= limit and len(head.encode("utf-8")) <= limit):
        return head
    marker = f"…(clipped: {len(value):,} chars in all)"
    budget = max(limit - len(marker.encode("utf-8")), 0)
    return head.encode("utf-8")[:budget].decode("utf-8", "ignore") + marker


def _json_text(value: Any) -> str:
    try:
        dumped = json.dumps(value, ensure_ascii=False, default=repr)
    except (TypeError, ValueError, RecursionError):
        dumped = repr(value)
    return _text(dumped)


def _scalar(value: Any) -> Any:
    """A value an attribute can hold as itself (bool, int64, float, text), else None."""
    if isinstance(value, bool) or isinstance(value, float):
        return value
    if isinstance(value, int):
        return value if _INT64_MIN <= value <= _INT64_MAX else str(value)
    if isinstance(value, str):
        return _text(value)
    return None


def _attribute(value: Any) -> Any:
    """An attribute value for any ledger value (None: leave the attribute out)."""
    if value is None:
        return None
    scalar = _scalar(value)
    if scalar is not None:
        return scalar
    if isinstance(value, (list, tuple)) and len(value) <= ARRAY_LIMIT:
        kinds = {type(item) for item in value}
        if len(kinds) <= 1 and kinds <= {str, bool, int, float}:
            items = [_scalar(item) for item in value]
            if len({type(item) for item in items}) <= 1:  # no int beyond 64 bits among them
                return items
    return _json_text(value)


def _attributes(pairs: Iterable[tuple[str, Any]]) -> tuple[dict[str, Any], int]:
    """Attributes from (key, value) pairs: values made fit, None left out, at most
    ATTRIBUTE_COUNT_LIMIT of them; returns them and how many were left out."""
    attributes: dict[str, Any] = {}
    dropped = 0
    for key, value in pairs:
        converted = _attribute(value)
        if converted is None:
            continue
        name = _text(key if isinstance(key, str) else str(key), KEY_LIMIT) or "(empty key)"
        if name not in attributes and len(attributes) >= ATTRIBUTE_COUNT_LIMIT:
            dropped += 1
            continue
        attributes[name] = converted
    return attributes, dropped


def _nanos(stamp: Any) -> int | None:
    """A stored timestamp as nanoseconds since the epoch (exact: integer arithmetic), within
    OTLP's unsigned 64 bits; None when it is not a timestamp."""
    if not isinstance(stamp, str):
        return None
    try:
        moment = datetime.fromisoformat(stamp)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        delta = moment - _EPOCH
    except (ValueError, OverflowError):
        return None
    nanos = (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
    return min(max(nanos, 0), _FIXED64_MAX)


def _status(state: Any, ok: set[str], error: set[str], message: Any, default: str) -> Any:
    if state in ok:
        return Status(StatusCode.OK)
    if state in error:
        text = message if isinstance(message, str) and message.strip() else default
        return Status(StatusCode.ERROR, _text(text))
    return Status(StatusCode.UNSET)


# -- spans ---------------------------------------------------------------------------------

class _LedgerSpan(ReadableSpan):
    """A finished span built from the ledger, saying how many attributes and events its
    limits left out."""

    def __init__(self, *args: Any, dropped_attributes: int = 0, dropped_events: int = 0,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._uet_dropped_attributes = dropped_attributes
        self._uet_dropped_events = dropped_events

    @property
    def dropped_attributes(self) -> int:
        return self._uet_dropped_attributes

    @property
    def dropped_events(self) -> int:
        return self._uet_dropped_events


class _LedgerEvent(Event):
    """A span event from the trail, saying how many of its attributes were left out."""

    def __init__(self, name: str, attributes: dict[str, Any], timestamp: int,
                 dropped_attributes: int) -> None:
        super().__init__(name, attributes, timestamp)
        self._uet_dropped_attributes = dropped_attributes

    @property
    def dropped_attributes(self) -> int:
        return self._uet_dropped_attributes


class _Trace:
    """The spans of one run, built from its `run_document`."""

    def __init__(self, document: Mapping[str, Any], resource: Any, scope: Any) -> None:
        self.document = document
        self.run = document["run"]
        self.run_id = self.run["run_id"]
        self.trace_id = trace_id_of(self.run_id)
        self.resource = resource
        self.scope = scope
        self.spans: list[Any] = []
        self.event_count = 0

    def context(self, kind: str, record_id: object) -> Any:
        return SpanContext(self.trace_id, span_id_of(self.run_id, kind, record_id),
                           is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))

    def add(self, name: str, context: Any, parent: Any, start: int, end: int,
            pairs: Iterable[tuple[str, Any]], status: Any, events: Sequence[Any] = (),
            dropped_events: int = 0) -> None:
        attributes, dropped = _attributes(pairs)
        self.spans.append(_LedgerSpan(
            name=_text(name, KEY_LIMIT), context=context, parent=parent,
            resource=self.resource, attributes=attributes, events=events,
            kind=SpanKind.INTERNAL, status=status, start_time=start, end_time=max(start, end),
            instrumentation_scope=self.scope, dropped_attributes=dropped,
            dropped_events=dropped_events))

    def build(self) -> list[Any]:
        run, document = self.run, self.document
        events = document["events"]
        steps = document["step_attempts"]
        created = _nanos(run.get("created_at"))
        start = _nanos(run.get("started_at")) or created or 0
        end = _nanos(run.get("ended_at"))
        if end is None:  # not finished (or no end recorded): the newest time it recorded
            end = max([start, *self.times()])
        root = self.context("run", self.run_id)

        # the step attempts, their patches (with their stages) and the gates
        step_contexts = {}
        for step in steps:
            step_id = step["step_attempt_id"]
            step_contexts[step_id] = context = self.context("step_attempt", step_id)
            self.add_step(step, context, root, start, end)
        stages = self.stages(events)
        patch_step = {}  # ledger_id -> the step attempt that produced its patch
        for patch in document["patches"]:
            parent = step_contexts.get(patch["step_attempt_id"], root)
            for entry in patch["entries"]:
                patch_step[entry["ledger_id"]] = parent
            self.add_patch(patch, parent, stages, start)
        for gate in document["gates"]:
            self.add_gate(gate, patch_step.get(gate.get("ledger_id"), root), start, end)

        # the run itself, with the trail as its span events
        span_events = []
        for event in events[:EVENT_COUNT_LIMIT]:
            data = event.get("data")
            pairs = [("uet.event.id", event.get("event_id")), ("uet.event.seq", event.get("seq"))]
            if isinstance(data, Mapping):
                pairs += [(key, value) for key, value in data.items()
                          if key not in ("uet.event.id", "uet.event.seq")]
            elif data is not None:
                pairs.append(("uet.event.data", data))
            attributes, dropped = _attributes(pairs)
            name = event.get("event_type")
            span_events.append(_LedgerEvent(
                _text(name if isinstance(name, str) else str(name), KEY_LIMIT), attributes,
                _nanos(event.get("timestamp")) or start, dropped))
        self.event_count = len(span_events)
        usage = document.get("usage") or {}
        metadata = run.get("metadata")
        pairs = [("uet.run.id", self.run_id), ("uet.project.id", run.get("project_id")),
                 ("uet.phase.id", run.get("phase_id")),
                 ("uet.workstream.id", run.get("workstream_id")),
                 ("uet.run.state", run.get("state")), ("uet.run.exit_code", run.get("exit_code")),
                 ("uet.run.error_message", run.get("error_message")),
                 ("uet.run.created_at", run.get("created_at")),
                 ("uet.run.execution_request_id", run.get("execution_request_id")),
                 ("uet.run.worker_id", run.get("worker_id")),
                 ("uet.run.priority", run.get("priority")),
                 ("uet.run.recoveries", run.get("recoveries")),
                 ("uet.usage.attempts", usage.get("attempts")),
                 ("uet.usage.input_tokens", usage.get("input_tokens")),
                 ("uet.usage.output_tokens", usage.get("output_tokens")),
                 ("uet.usage.cost_usd", usage.get("cost_usd")),
                 ("uet.usage.models", usage.get("models") or None)]
        if run.get("state") in _RUN_ERROR:
            pairs.append(("error.type", run.get("state")))
        pairs += _prefixed("uet.run.metadata.", metadata)
        name = run.get("workstream_id") or run.get("phase_id") or run.get("project_id")
        self.add(f"run {name}" if isinstance(name, str) else "run", root, None, start, end,
                 pairs, _status(run.get("state"), _RUN_OK, _RUN_ERROR,
                                run.get("error_message"), f"run {run.get('state')}"),
                 span_events, max(len(events) - EVENT_COUNT_LIMIT, 0))
        self.spans.insert(0, self.spans.pop())  # the root first
        return self.spans

    def times(self) -> Iterator[int]:
        """Every time the run's records hold (to end a run that has not ended)."""
        document = self.document
        for event in document["events"]:
            yield _nanos(event.get("timestamp")) or 0
        for step in document["step_attempts"]:
            yield _nanos(step.get("ended_at")) or _nanos(step.get("started_at")) or 0
        for gate in document["gates"]:
            yield _nanos(gate.get("completed_at")) or _nanos(gate.get("created_at")) or 0

    def add_step(self, step: Mapping[str, Any], context: Any, root: Any, run_start: int,
                 run_end: int) -> None:
        start = _nanos(step.get("started_at")) or run_start
        end = _nanos(step.get("ended_at")) or max(run_end, start)
        tool = step.get("tool_id")
        genai = any(step.get(k) is not None for k in ("model", "input_tokens", "output_tokens"))
        state = step.get("state")
        pairs = [("uet.step_attempt.id", step["step_attempt_id"]),
                 ("uet.step.sequence", step.get("sequence")),
                 ("uet.step.attempt", step.get("attempt")), ("uet.step.state", state),
                 ("uet.tool.id", tool), ("uet.task.id", step.get("task_id")),
                 ("uet.step.exit_code", step.get("exit_code")),
                 ("uet.step.output_patch_id", step.get("output_patch_id")),
                 ("uet.step.tool_run_id", step.get("tool_run_id")),
                 ("uet.step.execution_request_id", step.get("execution_request_id")),
                 ("uet.step.prompt_id", step.get("prompt_id")),
                 ("uet.step.worker_id", step.get("worker_id")),
                 ("uet.step.error_log", step.get("error_log"))]
        if genai:
            pairs += [("gen_ai.operation.name", "invoke_agent"), ("gen_ai.agent.name", tool),
                      ("gen_ai.request.model", step.get("model")),
                      ("gen_ai.response.model", step.get("model")),
                      ("gen_ai.usage.input_tokens", step.get("input_tokens")),
                      ("gen_ai.usage.output_tokens", step.get("output_tokens"))]
        pairs.append(("uet.usage.cost_usd", step.get("cost_usd")))
        if state in _STEP_ERROR:
            pairs.append(("error.type", state))
        pairs += _prefixed("uet.step.metadata.", step.get("metadata"))
        verb = "invoke_agent" if genai else "step"
        self.add(f"{verb} {tool}", context, root, start, end, pairs,
                 _status(state, _STEP_OK, _STEP_ERROR, step.get("error_log"), f"step {state}"))

    @staticmethod
    def stages(events: list[Mapping[str, Any]]) -> dict[str, list[tuple[str, int, Any]]]:
        """ledger_id -> [(state, entered at, reason)] in order, from the trail."""
        stages: dict[str, list[tuple[str, int, Any]]] = {}
        for event in events:
            kind, data = event.get("event_type"), event.get("data")
            if kind not in (_ENTRY_CREATED, _ENTRY_CHANGED) or not isinstance(data, Mapping):
                continue
            ledger_id = data.get("ledger_id")
            state = data.get("state") if kind == _ENTRY_CREATED else data.get("to")
            when = _nanos(event.get("timestamp"))
            if isinstance(ledger_id, str) and isinstance(state, str) and when is not None:
                stages.setdefault(ledger_id, []).append((state, when, data.get("reason")))
        return stages

    def add_patch(self, patch: Mapping[str, Any], parent: Any,
                  stages: Mapping[str, list[tuple[str, int, Any]]], run_start: int) -> None:
        patch_id = patch["patch_id"]
        context = self.context("patch", patch_id)
        start = _nanos(patch.get("recorded_at")) or run_start
        end = start
        final: tuple[Any, Any, int] = (None, None, -1)  # the latest entry's state, reason
        for entry in patch["entries"]:
            ledger_id = entry["ledger_id"]
            entry_stages = stages.get(ledger_id) or [
                (entry.get("state"), _nanos(entry.get("updated_at")) or start, None)]
            for index, (state, entered, reason) in enumerate(entry_stages):
                left = (entry_stages[index + 1][1] if index + 1 < len(entry_stages)
                        else entered)
                end = max(end, left)
                self.add(f"patch {state}", self.context("patch_stage", f"{ledger_id}:{index}"),
                         context, entered, left,
                         [("uet.patch.id", patch_id), ("uet.patch.ledger_id", ledger_id),
                          ("uet.patch.state", state), ("uet.patch.reason", reason or None),
                          ("uet.patch.phase_id", entry.get("phase_id")),
                          ("uet.patch.workstream_id", entry.get("workstream_id")),
                          ("uet.patch.final", index + 1 == len(entry_stages))],
                         _status(state, set(), _PATCH_ERROR, reason, f"patch {state}"))
            last_state, last_time, last_reason = entry_stages[-1]
            if last_time >= final[2]:
                final = (last_state, last_reason, last_time)
            end = max(end, _nanos(entry.get("updated_at")) or end)
        pairs = [("uet.patch.id", patch_id), ("uet.patch.sha256", patch.get("sha256")),
                 ("uet.patch.files", patch.get("files")),
                 ("uet.patch.size_bytes", patch.get("size_bytes")),
                 ("uet.patch.step_attempt_id", patch.get("step_attempt_id")),
                 ("uet.patch.ledger_ids", [e["ledger_id"] for e in patch["entries"]] or None),
                 ("uet.patch.state", final[0])]
        self.add("patch", context, parent, start, end, pairs,
                 _status(final[0], _PATCH_OK, _PATCH_ERROR, final[1], f"patch {final[0]}"))

    def add_gate(self, gate: Mapping[str, Any], parent: Any, run_start: int,
                 run_end: int) -> None:
        created = _nanos(gate.get("created_at")) or run_start
        start = _nanos(gate.get("started_at")) or created
        end = _nanos(gate.get("completed_at"))
        if end is None:  # not finished: running until the run's end, or never started
            end = max(run_end, start) if gate.get("state") == "RUNNING" else start
        name, state = gate.get("name"), gate.get("state")
        pairs = [("uet.gate.id", gate.get("gate_id")), ("uet.gate.name", name),
                 ("uet.gate.type", gate.get("gate_type")), ("uet.gate.state", state),
                 ("uet.gate.phase_id", gate.get("phase_id")),
                 ("uet.gate.command", gate.get("command")),
                 ("uet.gate.exit_code", gate.get("exit_code")),
                 ("uet.gate.duration_sec", gate.get("duration_sec")),
                 ("uet.gate.timeout_sec", gate.get("timeout_sec")),
                 ("uet.gate.ledger_id", gate.get("ledger_id")),
                 ("uet.gate.blocked_by", gate.get("blocked_by")),
                 ("uet.gate.depends_on", gate.get("depends_on") or None),
                 ("uet.gate.stdout", gate.get("stdout") or None),
                 ("uet.gate.stderr", gate.get("stderr") or None)]
        if state in _GATE_ERROR:
            pairs.append(("error.type", state))
        self.add(f"gate {name}", self.context("gate", gate.get("gate_id")), parent, start, end,
                 pairs, _status(state, _GATE_OK, _GATE_ERROR, None,
                                f"gate {name} failed (exit {gate.get('exit_code')})"))


def _prefixed(prefix: str, mapping: Any) -> list[tuple[str, Any]]:
    if not isinstance(mapping, Mapping):
        return [] if mapping is None else [(prefix.rstrip("."), mapping)]
    return [(f"{prefix}{key}", value) for key, value in mapping.items()]


# -- encoding ------------------------------------------------------------------------------

_ID_FIELDS = ("traceId", "spanId", "parentSpanId")


def otlp_json(request: Any) -> str:
    """An ExportTraceServiceRequest as one line of OTLP/JSON: lowerCamelCase field names,
    enums as integers, trace and span ids as hex (not protobuf's base64), 64-bit integers
    as decimal strings, ASCII only (every other character escaped)."""
    document = json_format.MessageToDict(request, use_integers_for_enums=True)
    for resource_spans in document.get("resourceSpans", ()):
        for scope_spans in resource_spans.get("scopeSpans", ()):
            for span in scope_spans.get("spans", ()):
                _hex_ids(span)
                for link in span.get("links", ()):
                    _hex_ids(link)
    return json.dumps(document, separators=(",", ":"), ensure_ascii=True)


def _hex_ids(message: dict[str, Any]) -> None:
    for field in _ID_FIELDS:
        if field in message:
            message[field] = base64.b64decode(message[field]).hex()


# -- export --------------------------------------------------------------------------------

def export_otlp(db: Database, *, out: TextIO | None = None, endpoint: str | None = None,
                since: str | None = None, project_id: str | None = None,
                headers: Mapping[str, str] | None = None, timeout: float = 10.0
                ) -> dict[str, int]:
    """Export the ledger's runs as OpenTelemetry traces (one trace per run; see the module's
    docstring for the mapping), newest run first.

    Exactly one of `out` (a text stream: OTLP/JSON, one ExportTraceServiceRequest per line,
    one line per batch of runs) and `endpoint` (an OTLP/HTTP traces URL such as
    http://127.0.0.1:4318/v1/traces — a URL without a path gets /v1/traces — to which each
    batch is POSTed as protobuf, with `headers` added and `timeout` seconds per request).
    `since` (an ISO timestamp, or an age like 2h or 7d) keeps the runs created at or after
    it, `project_id` those of one project.

    Returns {"runs", "spans", "events"}: how many were exported. Raises ValidationError for
    bad arguments and OtlpExportError when the collector refuses the traces or cannot be
    reached, the output cannot be written, or the packages of `uet[otel]` are missing.
    """
    if MISSING_PACKAGES is not None:
        raise OtlpExportError(f"exporting OpenTelemetry traces needs the packages of the "
                              f"extra uet[otel] (pip install 'uet[otel]'): "
                              f"{MISSING_PACKAGES}")
    if (out is None) == (endpoint is None):
        raise ValidationError("give exactly one of out (a file to write OTLP/JSON to) and "
                              "endpoint (an OTLP/HTTP collector URL)", field="out")
    if endpoint is not None:
        endpoint = _traces_url(endpoint)
    if (not isinstance(timeout, (int, float)) or isinstance(timeout, bool)
            or not 0 < timeout <= 3600):
        raise ValidationError(f"timeout must be a number of seconds in (0, 3600], got "
                              f"{timeout!r}", field="timeout")
    sent_headers = _headers(headers)
    filters = {} if project_id is None else {"project_id": project_id}
    since_value = since_timestamp(since, selects="the runs created at or after it",
                                  option="since")
    resource = Resource({"service.name": "uet", "service.version": __version__})
    scope = InstrumentationScope("uet.otel", __version__)
    counts = {"runs": 0, "spans": 0, "events": 0}
    rejected: list[tuple[int, str]] = []

    def send(batch: Any) -> None:
        if out is not None:
            try:
                out.write(otlp_json(batch) + "\n")
            except OSError as exc:
                raise OtlpExportError(f"cannot write the OTLP/JSON output: {exc}") from exc
        elif endpoint is not None:  # exactly one of `out` and `endpoint` is given
            result = _post(endpoint, batch.SerializeToString(), sent_headers, timeout)
            if result is not None:
                rejected.append(result)

    batch, batch_runs, batch_bytes = None, 0, 0
    for document in _documents(db, filters, since_value):
        trace = _Trace(document, resource, scope)
        request = encode_spans(trace.build())
        batch_bytes += request.ByteSize()
        counts["runs"] += 1
        counts["spans"] += len(trace.spans)
        counts["events"] += trace.event_count
        if batch is None:
            batch = request
        else:
            batch.resource_spans[0].scope_spans[0].spans.extend(
                request.resource_spans[0].scope_spans[0].spans)
        batch_runs += 1
        if batch_runs >= BATCH_RUNS or batch_bytes >= BATCH_BYTES:
            send(batch)
            batch, batch_runs, batch_bytes = None, 0, 0
    if batch is not None:
        send(batch)
    if out is not None:
        try:
            out.flush()
        except OSError as exc:
            raise OtlpExportError(f"cannot write the OTLP/JSON output: {exc}") from exc
    if rejected:
        spans = sum(count for count, _ in rejected)
        message = next((text for _, text in rejected if text), "")
        raise OtlpExportError(f"the collector at {endpoint} rejected {spans:,} of "
                              f"{counts['spans']:,} spans" + (f": {message}" if message else ""))
    return counts


def _documents(db: Database, filters: Mapping[str, Any],
               since: str | None) -> Iterator[dict[str, Any]]:
    """The run_document of every matching run, newest first, read page by page."""
    before = None
    while True:
        page = db.list_runs(filters, PAGE_RUNS, since=since, before=before)
        for row in page:
            try:
                document = run_document(db, row["run_id"])
            except ValidationError:  # an id the API refuses (raw SQL): the run row alone
                document = {"run": row, "step_attempts": [], "events": [], "patches": [],
                            "gates": []}
            if document["run"] is not None:  # not deleted meanwhile (uet gc)
                yield document
        if len(page) < PAGE_RUNS:
            return
        last = page[-1]
        before = (str(last["created_at"]), str(last["run_id"]))


def _traces_url(endpoint: object) -> str:
    if not isinstance(endpoint, str):
        raise ValidationError(f"endpoint must be a URL, got {endpoint!r}", field="endpoint")
    parts = urllib.parse.urlsplit(endpoint.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValidationError(f"endpoint {endpoint!r} is not an http:// or https:// URL (an "
                              "OTLP/HTTP traces URL like http://127.0.0.1:4318/v1/traces)",
                              field="endpoint")
    if parts.path in ("", "/"):
        parts = parts._replace(path="/v1/traces")
    return urllib.parse.urlunsplit(parts)


def _headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    sent = {"Content-Type": "application/x-protobuf", "User-Agent": f"uet/{__version__}"}
    for name, value in (headers or {}).items():
        if not isinstance(name, str) or not isinstance(value, str) \
                or re.search(r"[\r\n]", name + value):
            raise ValidationError(f"header {name!r} must be a name and a value of one line "
                                  "of text each", field="headers")
        sent[name] = value
    return sent


def _post(url: str, body: bytes, headers: Mapping[str, str],
          timeout: float) -> tuple[int, str] | None:
    """POST one request; retried (up to RETRIES times, honouring Retry-After) when the
    collector answers 429, 502, 503 or 504. Returns (rejected spans, message) of a partial
    success, None of a full one."""
    for attempt in range(RETRIES + 1):
        request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return _partial_success(response.read(),
                                        response.headers.get("Content-Type", ""))
        except urllib.error.HTTPError as exc:
            try:
                detail = _body_text(exc)
            finally:
                exc.close()
            if exc.code in RETRYABLE_STATUS and attempt < RETRIES:
                time.sleep(_retry_delay(exc.headers.get("Retry-After"), attempt))
                continue
            raise OtlpExportError(f"the collector at {url} refused the traces: HTTP "
                                  f"{exc.code} {exc.reason}" + (f": {detail}" if detail else "")
                                  ) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise OtlpExportError(f"cannot send the traces to the collector at {url}: "
                                  f"{reason}") from None
    raise OtlpExportError(f"the collector at {url} kept asking to retry")  # pragma: no cover


def _retry_delay(retry_after: str | None, attempt: int) -> float:
    try:
        delay = float(retry_after) if retry_after is not None else 2.0 ** attempt
    except ValueError:
        delay = 2.0 ** attempt
    return min(max(delay, 0.0), RETRY_AFTER_LIMIT_S)


def _body_text(exc: urllib.error.HTTPError) -> str:
    try:
        raw = exc.read(4096)
    except OSError:
        return ""
    content_type = exc.headers.get("Content-Type", "") if exc.headers else ""
    if "protobuf" in content_type:  # a google.rpc.Status: its message is field 2 (text)
        return _text(re.sub(r"[^\x20-\x7e]+", " ", raw.decode("latin-1")).strip(), 500)
    return _text(" ".join(raw.decode("utf-8", "replace").split()), 500)


def _partial_success(body: bytes, content_type: str) -> tuple[int, str] | None:
    """The rejected spans and message of an ExportTraceServiceResponse (None when all were
    accepted, or the answer is not one)."""
    if not body:
        return None
    try:
        if "json" in content_type:
            response = json_format.Parse(body.decode("utf-8"), ExportTraceServiceResponse(),
                                         ignore_unknown_fields=True)
        else:
            response = ExportTraceServiceResponse.FromString(body)
    except (ValueError, json_format.ParseError, UnicodeDecodeError):
        return None
    partial = response.partial_success
    if partial.rejected_spans:
        return partial.rejected_spans, _text(partial.error_message, 500)
    return None


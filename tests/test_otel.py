"""OpenTelemetry traces of the ledger (uet.otel): the OTLP/JSON written parses back into the
official protobuf model (`ExportTraceServiceRequest`) and its span tree is the ledger's —
one trace per run, a root span per run, a child per step attempt, patches with their
stages and gates under the step attempt whose patch they judged, the run's events as span
events in order, times equal to the ledger's — on ledgers built through the API, on the
bundled demo's run, with hostile values stored by raw SQL, and sent to a collector (a tiny
HTTP server on 127.0.0.1) as OTLP/HTTP protobuf.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import sqlite3
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest, ExportTraceServiceResponse)
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from helpers import fresh_machine_environment
from uet import otel
from uet.errors import UetError, ValidationError
from uet.otel import OtlpExportError, export_otlp, span_id_of, trace_id_of
from uet.state import GateLedger, PatchLedger, init_db
from uet.state.views import run_document

ROOT = Path(__file__).resolve().parents[1]
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
OK, ERROR, UNSET = Status.STATUS_CODE_OK, Status.STATUS_CODE_ERROR, Status.STATUS_CODE_UNSET


# -- reading OTLP/JSON back ------------------------------------------------------------------

def parse_otlp_json(text: str) -> list[ExportTraceServiceRequest]:
    """Each line: one ExportTraceServiceRequest in OTLP/JSON (hex ids, which protobuf's own
    JSON mapping writes as base64: turned back before parsing)."""
    requests = []
    for line in text.splitlines():
        document = json.loads(line)
        for resource_spans in document["resourceSpans"]:
            for scope_spans in resource_spans["scopeSpans"]:
                for span in scope_spans["spans"]:
                    for field, size in (("traceId", 32), ("spanId", 16), ("parentSpanId", 16)):
                        if field in span:
                            value = span[field]
                            assert len(value) == size and value == value.lower(), value
                            span[field] = base64.b64encode(bytes.fromhex(value)).decode()
        requests.append(json_format.ParseDict(document, ExportTraceServiceRequest()))
    return requests


def spans_of(requests: list[ExportTraceServiceRequest]) -> list:
    return [span for request in requests for resource_spans in request.resource_spans
            for scope_spans in resource_spans.scope_spans for span in scope_spans.spans]


def attributes(message) -> dict:
    """A span's (or event's) attributes as Python values."""
    found = {}
    for pair in message.attributes:
        kind = pair.value.WhichOneof("value")
        value = getattr(pair.value, kind)
        if kind == "array_value":
            value = [getattr(v, v.WhichOneof("value")) for v in value.values]
        found[pair.key] = value
    return found


def nanos(stamp: str) -> int:
    return (datetime.fromisoformat(stamp) - EPOCH) // timedelta(microseconds=1) * 1000


def export_text(db, **kwargs) -> tuple[str, dict]:
    out = io.StringIO()
    counts = export_otlp(db, out=out, **kwargs)
    return out.getvalue(), counts


def assert_traces_match_the_ledger(db, spans: list, run_ids: list[str]) -> None:
    """The spans are exactly the traces of `run_ids`, each as the ledger has that run."""
    by_trace: dict[bytes, list] = {}
    for span in spans:
        by_trace.setdefault(span.trace_id, []).append(span)
    assert set(by_trace) == {trace_id_of(r).to_bytes(16, "big") for r in run_ids}
    for run_id in run_ids:
        document = run_document(db, run_id)
        run = document["run"]
        trace = by_trace[trace_id_of(run_id).to_bytes(16, "big")]
        ids = {span.span_id for span in trace}
        assert len(ids) == len(trace), "span ids repeat within a trace"
        roots = [span for span in trace if not span.parent_span_id]
        assert len(roots) == 1
        root = roots[0]
        assert all(span.parent_span_id in ids for span in trace if span is not root)
        assert root.span_id == span_id_of(run_id, "run", run_id).to_bytes(8, "big")
        assert attributes(root)["uet.run.id"] == run_id
        assert attributes(root)["uet.run.state"] == run["state"]
        assert root.start_time_unix_nano == nanos(run["started_at"] or run["created_at"])
        if run["ended_at"]:
            assert root.end_time_unix_nano == nanos(run["ended_at"])
        expected_status = {"succeeded": OK, "failed": ERROR, "canceled": ERROR,
                           "quarantined": ERROR}.get(run["state"], UNSET)
        assert root.status.code == expected_status

        # the run's events, in the trail's order, as the root span's events
        assert [(e.name, e.time_unix_nano, attributes(e)["uet.event.seq"])
                for e in root.events] == [(e["event_type"], nanos(e["timestamp"]), e["seq"])
                                          for e in document["events"]]

        # one child span per step attempt, with its times
        steps = {attributes(s).get("uet.step_attempt.id"): s for s in trace}
        steps.pop(None, None)
        assert sorted(steps) == sorted(s["step_attempt_id"] for s in document["step_attempts"])
        step_span_ids = {}
        for step in document["step_attempts"]:
            span = steps[step["step_attempt_id"]]
            step_span_ids[step["step_attempt_id"]] = span.span_id
            assert span.parent_span_id == root.span_id
            assert span.start_time_unix_nano == nanos(step["started_at"])
            if step["ended_at"]:
                assert span.end_time_unix_nano == nanos(step["ended_at"])
            found = attributes(span)
            assert (found["uet.step.sequence"], found["uet.step.attempt"],
                    found["uet.tool.id"]) == (step["sequence"], step["attempt"],
                                              step["tool_id"])
            if step["model"] is not None:
                assert found["gen_ai.request.model"] == step["model"]
            if step["input_tokens"] is not None:
                assert found["gen_ai.usage.input_tokens"] == step["input_tokens"]
            if step["output_tokens"] is not None:
                assert found["gen_ai.usage.output_tokens"] == step["output_tokens"]

        # each patch under the step attempt that produced it; gates under the step attempt
        # whose patch they judged, else under the root
        patch_parent = {}
        patch_spans = {attributes(s)["uet.patch.id"]: s for s in trace if s.name == "patch"}
        assert sorted(patch_spans) == sorted(p["patch_id"] for p in document["patches"])
        for patch in document["patches"]:
            parent = step_span_ids.get(patch["step_attempt_id"], root.span_id)
            assert patch_spans[patch["patch_id"]].parent_span_id == parent
            stages = [s for s in trace
                      if s.parent_span_id == patch_spans[patch["patch_id"]].span_id]
            assert [attributes(s)["uet.patch.state"] for s in stages][-1:] == [
                e["state"] for e in patch["entries"]][-1:]
            for entry in patch["entries"]:
                patch_parent[entry["ledger_id"]] = parent
        gates = {attributes(s)["uet.gate.id"]: s for s in trace if s.name.startswith("gate ")}
        assert sorted(gates) == sorted(g["gate_id"] for g in document["gates"])
        for gate in document["gates"]:
            span = gates[gate["gate_id"]]
            assert span.parent_span_id == patch_parent.get(gate["ledger_id"], root.span_id)
            if gate["completed_at"]:
                assert span.start_time_unix_nano == nanos(gate["started_at"])
                assert span.end_time_unix_nano == nanos(gate["completed_at"])
            assert span.status.code == {"PASSED": OK, "FAILED": ERROR}.get(gate["state"], UNSET)


# -- a ledger with everything ----------------------------------------------------------------

def build_run(db, *, project: str = "PRJ", created_at: str | None = None) -> str:
    """A finished run: an AI step attempt whose patch fails a gate and is quarantined, its
    retry committed after passing gates, a run-level gate, and events of its own."""
    run_id = db.create_run({"project_id": project, "phase_id": "PH-1", "workstream_id": "WS-1",
                            "metadata": {"tool": "aider", "nested": {"a": [1, 2]}},
                            **({"created_at": created_at} if created_at else {})})
    db.transition_run(run_id, "running")
    patches, gates = PatchLedger(db), GateLedger(db)
    diff = "--- a/app.py\n+++ b/app.py\n@@ -1 +1 @@\n-x = 1\n+x = {}\n"
    for attempt, passes in ((1, False), (2, True)):
        step = db.create_step_attempt({
            "run_id": run_id, "sequence": 1, "tool_id": "aider", "task_id": "T1",
            "model": "gpt-test", "input_tokens": 100 * attempt, "output_tokens": 7,
            "cost_usd": 0.25})
        db.create_event({"run_id": run_id, "event_type": "task.started",
                         "data": {"task_id": "T1", "attempt": attempt, "files": ["a", "b"],
                                  "nested": {"k": [1, {"x": None}]}, "none": None}})
        patch = patches.record_patch(diff.format(attempt + 1), step_attempt_id=step)
        entry = patches.create_entry(patch, "PH-1", "WS-1").ledger_id
        for state in ("validated", "queued", "applied"):
            patches.transition_state(entry, state, "ok")
        lint = gates.define_gate("LINT", "PH-1", "ruff .", name="lint", run_id=run_id,
                                 ledger_id=entry)
        gates.transition_state(lint["gate_id"], "RUNNING")
        gates.transition_state(lint["gate_id"], "PASSED" if passes else "FAILED",
                               exit_code=0 if passes else 1, stdout="checked\n")
        if passes:
            patches.transition_state(entry, "verified", "every gate passed")
            patches.transition_state(entry, "committed", "commit abc")
            db.transition_step_attempt(step, "succeeded", exit_code=0)
        else:
            patches.quarantine(entry, "gate lint failed (exit 1)")
            db.transition_step_attempt(step, "failed", exit_code=0,
                                       error_log="gate lint failed (exit 1)")
    final = gates.define_gate("UNIT", "PH-1", "pytest", name="final", run_id=run_id)
    gates.transition_state(final["gate_id"], "RUNNING")
    gates.transition_state(final["gate_id"], "PASSED", exit_code=0)
    db.transition_run(run_id, "succeeded", exit_code=0)
    return run_id


@pytest.fixture
def ledger(file_db):
    """Three runs: a finished one with everything, a failed one, a pending one."""
    full = build_run(file_db)
    failed = file_db.create_run({"project_id": "OTHER", "phase_id": "PH-2"})
    file_db.transition_run(failed, "running")
    step = file_db.create_step_attempt({"run_id": failed, "sequence": 1, "tool_id": "pytest"})
    file_db.transition_step_attempt(step, "failed", exit_code=2, error_log="2 tests failed")
    file_db.transition_run(failed, "failed", exit_code=2, error_message="boom")
    pending = file_db.create_run({"project_id": "PRJ", "phase_id": "PH-3"})
    return file_db, {"full": full, "failed": failed, "pending": pending}


def test_the_otlp_json_parses_back_and_its_span_tree_is_the_ledgers(ledger):
    db, runs = ledger
    text, counts = export_text(db)
    assert text.endswith("\n") and len(text.splitlines()) == 1  # one batch: one line
    spans = spans_of(parse_otlp_json(text))
    assert_traces_match_the_ledger(db, spans, list(runs.values()))
    assert counts == {"runs": 3, "spans": len(spans),
                      "events": sum(len(db.list_events(r)) for r in runs.values())}

    trace = [s for s in spans if s.trace_id == trace_id_of(runs["full"]).to_bytes(16, "big")]
    names = sorted(s.name for s in trace)
    # root, 2 step attempts, 2 patches (with 5 + 6 stages), 2 lint gates and 1 run gate
    assert names.count("invoke_agent aider") == 2 and names.count("patch") == 2
    assert names.count("gate lint") == 2 and names.count("gate final") == 1
    stages = [s.name for s in trace if s.name.startswith("patch ")]
    assert sorted(stages) == sorted(
        ["patch created", "patch validated", "patch queued", "patch applied",
         "patch quarantined", "patch created", "patch validated", "patch queued",
         "patch applied", "patch verified", "patch committed"])
    root = next(s for s in trace if not s.parent_span_id)
    found = attributes(root)
    assert root.name == "run WS-1" and root.kind == 1  # SPAN_KIND_INTERNAL
    assert found["uet.project.id"] == "PRJ" and found["uet.workstream.id"] == "WS-1"
    assert found["uet.run.exit_code"] == 0
    assert found["uet.usage.input_tokens"] == 300 and found["uet.usage.output_tokens"] == 14
    assert found["uet.usage.cost_usd"] == 0.5 and found["uet.usage.models"] == ["gpt-test"]
    assert found["uet.run.metadata.tool"] == "aider"
    assert json.loads(found["uet.run.metadata.nested"]) == {"a": [1, 2]}
    step = next(s for s in trace if s.name.startswith("invoke_agent")
                and attributes(s)["uet.step.attempt"] == 1)
    found = attributes(step)
    assert found["gen_ai.operation.name"] == "invoke_agent"
    assert found["gen_ai.agent.name"] == "aider" and found["uet.task.id"] == "T1"
    assert found["uet.usage.cost_usd"] == 0.25 and found["error.type"] == "failed"
    assert step.status.code == ERROR and step.status.message == "gate lint failed (exit 1)"
    quarantined = next(s for s in trace if s.name == "patch quarantined")
    assert quarantined.status.code == ERROR
    assert attributes(quarantined)["uet.patch.reason"] == "gate lint failed (exit 1)"
    # the custom event: scalars and lists as themselves, nested values as JSON, None left out
    started = next(e for e in root.events if e.name == "task.started")
    found = attributes(started)
    assert found["task_id"] == "T1" and found["attempt"] == 1 and found["files"] == ["a", "b"]
    assert json.loads(found["nested"]) == {"k": [1, {"x": None}]} and "none" not in found

    failed = next(s for s in spans if not s.parent_span_id
                  and attributes(s)["uet.run.id"] == runs["failed"])
    assert failed.status.code == ERROR and failed.status.message == "boom"
    assert attributes(failed)["error.type"] == "failed"
    tool_step = next(s for s in spans if s.parent_span_id == failed.span_id)
    assert tool_step.name == "step pytest"  # no model reported: not a GenAI span
    assert "gen_ai.operation.name" not in attributes(tool_step)
    pending = next(s for s in spans if not s.parent_span_id
                   and attributes(s)["uet.run.id"] == runs["pending"])
    assert pending.status.code == UNSET
    assert pending.end_time_unix_nano >= pending.start_time_unix_nano


def test_a_re_export_is_the_same_and_ids_come_from_the_run_id(ledger):
    db, runs = ledger
    first, _ = export_text(db)
    assert export_text(db)[0] == first
    document = json.loads(first)
    spans = document["resourceSpans"][0]["scopeSpans"][0]["spans"]
    assert {s["traceId"] for s in spans} == {f"{trace_id_of(r):032x}" for r in runs.values()}
    # the OTLP/JSON rules: lowerCamelCase names, integer enums, decimal 64-bit integers
    root = spans[0]
    assert isinstance(root["kind"], int) and isinstance(root["startTimeUnixNano"], str)
    assert "parentSpanId" not in root and "start_time_unix_nano" not in first
    assert document["resourceSpans"][0]["resource"]["attributes"][0] == {
        "key": "service.name", "value": {"stringValue": "uet"}}


def test_since_and_project_select_the_runs(file_db):
    old = build_run(file_db, project="A", created_at="2026-01-01T00:00:00Z")
    new_a = build_run(file_db, project="A", created_at="2026-03-01T00:00:00Z")
    new_b = build_run(file_db, project="B", created_at="2026-03-02T00:00:00Z")

    def exported(**kwargs) -> set[bytes]:
        return {s.trace_id for s in spans_of(parse_otlp_json(export_text(file_db, **kwargs)[0]))}

    def traces(*run_ids) -> set[bytes]:
        return {trace_id_of(r).to_bytes(16, "big") for r in run_ids}

    assert exported() == traces(old, new_a, new_b)
    assert exported(since="2026-02-01T00:00:00Z") == traces(new_a, new_b)
    assert exported(project_id="A") == traces(old, new_a)
    assert exported(since="2026-03-01T00:00:00Z", project_id="A") == traces(new_a)
    assert exported(since="2026-03-01T00:00:00.000001Z", project_id="A") == set()
    assert export_text(file_db, project_id="nobody") == ("", {"runs": 0, "spans": 0,
                                                               "events": 0})
    with pytest.raises(ValidationError, match="neither an age"):
        export_text(file_db, since="yesterday")


def test_runs_are_paged_and_sent_in_batches_one_json_line_each(file_db, monkeypatch):
    monkeypatch.setattr(otel, "PAGE_RUNS", 2)
    monkeypatch.setattr(otel, "BATCH_RUNS", 3)
    run_ids = []
    for i in range(7):
        run_ids.append(file_db.create_run({"project_id": "P", "phase_id": "PH",
                                           "created_at": f"2026-01-01T00:00:0{i}Z"}))
    run_ids.append(file_db.create_run({"project_id": "P", "phase_id": "PH",  # a tie in time
                                       "created_at": "2026-01-01T00:00:06Z"}))
    text, counts = export_text(file_db)
    requests = parse_otlp_json(text)
    assert [len(spans_of([r])) for r in requests] == [3, 3, 2]
    assert counts["runs"] == 8 and counts["spans"] == 8
    assert_traces_match_the_ledger(file_db, spans_of(requests), run_ids)
    # newest first, as list_runs pages them
    newest = [attributes(s)["uet.run.id"] for s in spans_of(requests)]
    assert newest == [r["run_id"] for r in file_db.list_runs(None, None)]


def test_a_batch_also_ends_at_its_byte_budget(file_db, monkeypatch):
    monkeypatch.setattr(otel, "BATCH_BYTES", 1)
    for _ in range(3):
        file_db.create_run({"project_id": "P", "phase_id": "PH"})
    text, counts = export_text(file_db)
    assert len(text.splitlines()) == 3 and counts["runs"] == 3


def test_the_bundled_demo_run_is_one_trace_as_its_ledger_says(tmp_path):
    clone = tmp_path / "clone"
    shutil.copytree(ROOT / "examples", clone / "examples",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    env = fresh_machine_environment(tmp_path)
    database = str(tmp_path / "demo.db")
    subprocess.run([sys.executable, "examples/demo/make_repo.py", ".demo"], cwd=clone, env=env,
                   check=True, capture_output=True, timeout=60)
    done = subprocess.run([sys.executable, "-m", "uet", "run", "--db", database,
                           "examples/demo/workstream.yaml"], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with init_db(database) as db:
        text, counts = export_text(db)
        spans = spans_of(parse_otlp_json(text))
        (run,) = db.list_runs()
        assert_traces_match_the_ledger(db, spans, [run["run_id"]])
    # the README's demo: five step attempts, five patches, eight gates (one FAILED under the
    # failed attempt of T2), the scope quarantine of T3 with no gate
    assert counts["runs"] == 1
    assert sum(s.name.startswith("invoke_agent") for s in spans) == 5
    assert sum(s.name == "patch" for s in spans) == 5
    failed_gates = [s for s in spans if s.name.startswith("gate ") and s.status.code == ERROR]
    assert [s.name for s in failed_gates] == ["gate unit"]
    parent = next(s for s in spans if s.span_id == failed_gates[0].parent_span_id)
    assert attributes(parent)["uet.task.id"] == "T2" and attributes(parent)["uet.step.attempt"] == 1
    scope = next(s for s in spans if s.name == "patch quarantined"
                 and "README.md" in s.status.message)
    step = next(s for s in spans if s.span_id == next(
        p for p in spans if p.span_id == scope.parent_span_id).parent_span_id)
    assert attributes(step)["uet.task.id"] == "T3"
    assert not [s for s in spans if s.name.startswith("gate ") and s.parent_span_id == step.span_id]


# -- hostile values --------------------------------------------------------------------------

def test_hostile_values_are_exported_escaped_and_clipped(file_db, db_path):
    run_id = file_db.create_run({
        "project_id": "p\x1b[2J\u202e", "phase_id": "PH",
        "metadata": {"log": "m" * 10_000_000, "wide": "漢" * 5000,
                     **{f"k{i}": i for i in range(300)}}})
    step = file_db.create_step_attempt({"run_id": run_id, "sequence": 1, "tool_id": "t",
                                        "input_tokens": 2 ** 63 - 1})
    file_db.create_event({"run_id": run_id, "event_type": "tick",
                          "data": {"big": 10 ** 30, "text": "x" * 10_000_000, "nan": 1.5}})
    file_db.create_event({"run_id": run_id, "event_type": "x" * 5000, "data": {}})
    conn = sqlite3.connect(db_path)
    try:  # what only raw SQL can store: lone surrogates, bytes that are not UTF-8, NaN
        conn.execute("PRAGMA ignore_check_constraints=ON")
        conn.execute("UPDATE run_events SET data = ? WHERE event_type = 'tick'",
                     ('{"\\ud800key": "lone \\udfff", "big": 1000000000000000000000000000000,'
                      ' "nan": NaN, "list": ["\\ud83d", 1]}',))
        conn.execute("UPDATE runs SET error_message = CAST(X'626164ff' AS TEXT), "
                     "state = 'failed'")
        conn.execute("UPDATE step_attempts SET metadata = ?, started_at = ?",
                     ('{"k": "\\udc80"}', b"\x1b[2J\xff"))
        conn.commit()
    finally:
        conn.close()

    text, counts = export_text(file_db)
    assert counts["runs"] == 1 and len(text) < 200_000
    assert all(ord(c) < 128 for c in text)  # escaped: one line, whatever the values
    (request,) = parse_otlp_json(text)
    spans = spans_of([request])
    root = next(s for s in spans if not s.parent_span_id)
    found = attributes(root)
    assert found["uet.project.id"] == "p\x1b[2J\u202e"  # valid text: kept as it is
    assert found["uet.run.metadata.log"].endswith("…(clipped: 10,000,000 chars in all)")
    assert len(found["uet.run.metadata.log"].encode()) <= otel.ATTRIBUTE_LIMIT
    assert len(found["uet.run.metadata.wide"].encode()) <= otel.ATTRIBUTE_LIMIT
    assert found["uet.run.metadata.wide"].startswith("漢" * 100)
    assert len(root.attributes) == otel.ATTRIBUTE_COUNT_LIMIT
    assert root.dropped_attributes_count > 0
    assert root.status.code == ERROR and root.status.message == "bad\\udcff"
    tick = next(e for e in root.events if e.name == "tick")
    found = attributes(tick)
    assert found["\\ud800key"] == "lone \\udfff"
    assert found["big"] == str(10 ** 30)  # beyond 64 bits: its decimal text
    assert found["nan"] != found["nan"]  # NaN stays a double
    assert found["list"] == '["\\ud83d", 1]'  # mixed: its JSON text, surrogate escaped
    long_name = next(e for e in root.events if e.name.startswith("xxx"))
    assert len(long_name.name.encode()) <= otel.KEY_LIMIT
    step_span = next(s for s in spans if s.parent_span_id == root.span_id)
    assert attributes(step_span)["gen_ai.usage.input_tokens"] == 2 ** 63 - 1
    assert attributes(step_span)["uet.step.metadata.k"] == "\\udc80"
    # a timestamp that is none: the step starts with its run
    assert step_span.start_time_unix_nano == root.start_time_unix_nano
    assert attributes(step_span)["uet.step_attempt.id"] == step


def test_arguments_are_checked(file_db):
    with pytest.raises(ValidationError, match="exactly one"):
        export_otlp(file_db)
    with pytest.raises(ValidationError, match="exactly one"):
        export_otlp(file_db, out=io.StringIO(), endpoint="http://127.0.0.1:4318/v1/traces")
    with pytest.raises(ValidationError, match="not an http"):
        export_otlp(file_db, endpoint="ftp://example/v1/traces")
    with pytest.raises(ValidationError, match="timeout"):
        export_otlp(file_db, endpoint="http://127.0.0.1:9/v1/traces", timeout=0)
    with pytest.raises(ValidationError, match="header"):
        export_otlp(file_db, endpoint="http://127.0.0.1:9/v1/traces",
                    headers={"X-Evil": "a\r\nInjected: 1"})


def test_an_output_that_cannot_be_written_is_a_uet_error(ledger):
    db, _ = ledger

    class Full(io.StringIO):
        def write(self, text):
            raise OSError(28, "No space left on device")

    with pytest.raises(OtlpExportError, match="No space left"):
        export_otlp(db, out=Full())


# -- a collector -----------------------------------------------------------------------------

class Collector:
    """An OTLP/HTTP collector on 127.0.0.1: records each request, answers each with the next
    of `answers` (status, headers, body), then with 200 and an empty response."""

    def __init__(self, answers=()) -> None:
        self.requests: list[tuple[str, dict, bytes]] = []
        self.answers = list(answers)
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers["Content-Length"]))
                collector.requests.append((self.path, dict(self.headers), body))
                status, headers, answer = (collector.answers.pop(0) if collector.answers else
                                           (200, {"Content-Type": "application/x-protobuf"},
                                            ExportTraceServiceResponse().SerializeToString()))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)

    def spans(self) -> list:
        return spans_of([ExportTraceServiceRequest.FromString(body)
                         for _, _, body in self.requests])


@pytest.fixture
def collector():
    made = []

    def start(answers=()) -> Collector:
        made.append(Collector(answers))
        return made[-1]

    yield start
    for one in made:
        one.close()


def test_an_endpoint_receives_the_traces_as_otlp_protobuf(ledger, collector, monkeypatch):
    db, runs = ledger
    monkeypatch.setattr(otel, "BATCH_RUNS", 2)
    server = collector()
    counts = export_otlp(db, endpoint=server.url + "/v1/traces",
                         headers={"Authorization": "Bearer t0ken"}, timeout=5)
    assert len(server.requests) == 2  # 3 runs, 2 per batch
    for path, headers, _ in server.requests:
        assert path == "/v1/traces"
        assert headers["Content-Type"] == "application/x-protobuf"
        assert headers["Authorization"] == "Bearer t0ken"
    spans = server.spans()
    assert counts == {"runs": 3, "spans": len(spans), "events": counts["events"]}
    assert_traces_match_the_ledger(db, spans, list(runs.values()))
    # the same spans as the OTLP/JSON file
    text, _ = export_text(db)
    assert sorted(s.SerializeToString() for s in spans) == sorted(
        s.SerializeToString() for s in spans_of(parse_otlp_json(text)))


def test_an_endpoint_without_a_path_gets_the_traces_path(ledger, collector):
    db, _ = ledger
    server = collector()
    export_otlp(db, endpoint=server.url)
    assert [path for path, _, _ in server.requests] == ["/v1/traces"]


def test_the_collector_asking_to_retry_is_retried(ledger, collector):
    db, runs = ledger
    server = collector([(503, {"Retry-After": "0"}, b"busy"),
                        (429, {"Retry-After": "0"}, b"slow down")])
    export_otlp(db, endpoint=server.url + "/v1/traces")
    assert len(server.requests) == 3
    assert_traces_match_the_ledger(db, spans_of([ExportTraceServiceRequest.FromString(
        server.requests[-1][2])]), list(runs.values()))


def test_a_refusal_is_a_uet_error_naming_the_collector_and_its_answer(ledger, collector):
    db, _ = ledger
    server = collector([(400, {"Content-Type": "text/plain"}, b"bad\nrequest: no spans\n")])
    with pytest.raises(OtlpExportError) as refused:
        export_otlp(db, endpoint=server.url + "/v1/traces")
    message = str(refused.value)
    assert server.url in message and "HTTP 400" in message and "bad request: no spans" in message
    assert isinstance(refused.value, UetError)


def test_a_partial_success_is_reported(ledger, collector):
    db, _ = ledger
    partial = ExportTraceServiceResponse()
    partial.partial_success.rejected_spans = 2
    partial.partial_success.error_message = "2 spans too old"
    server = collector([(200, {"Content-Type": "application/x-protobuf"},
                         partial.SerializeToString())])
    with pytest.raises(OtlpExportError, match="rejected 2 of .* spans: 2 spans too old"):
        export_otlp(db, endpoint=server.url + "/v1/traces")


def test_a_collector_that_cannot_be_reached_is_a_uet_error(ledger, collector):
    db, _ = ledger
    server = collector()
    url = server.url + "/v1/traces"
    server.close()  # nothing listens on its port any more
    with pytest.raises(OtlpExportError, match="cannot send the traces to the collector at"):
        export_otlp(db, endpoint=url, timeout=5)


def test_a_run_still_running_ends_at_the_newest_time_it_recorded(file_db):
    run_id = file_db.create_run({"project_id": "P", "phase_id": "PH", "state": "running"})
    step = file_db.create_step_attempt({"run_id": run_id, "sequence": 1, "tool_id": "aider"})
    file_db.create_event({"run_id": run_id, "event_type": "progress", "data": {"done": 0.5}})
    newest = file_db.list_events(run_id)[-1]["timestamp"]
    spans = spans_of(parse_otlp_json(export_text(file_db)[0]))
    root = next(s for s in spans if not s.parent_span_id)
    child = next(s for s in spans if s.parent_span_id)
    assert root.status.code == UNSET and child.status.code == UNSET
    assert root.end_time_unix_nano == child.end_time_unix_nano == nanos(newest)
    assert attributes(child)["uet.step_attempt.id"] == step
    assert attributes(child)["uet.step.state"] == "running"


def test_without_the_otel_packages_the_error_says_what_to_install(file_db, monkeypatch):
    monkeypatch.setattr(otel, "MISSING_PACKAGES", ImportError("No module named 'opentelemetry'"))
    with pytest.raises(OtlpExportError, match=r"pip install 'uet\[otel\]'"):
        export_otlp(file_db, out=io.StringIO())

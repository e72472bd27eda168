"""The dashboard in a real browser: a real `uet web` server (a subprocess over a SQLite
ledger file) driven by headless Chromium through Playwright. No mocks.

- the runs list: newest first, paged by `a#older` / `a#newest` without a run repeated or
  missing, filtered by the form, counts per state as the ledger has them, a bad filter a
  complete 400 page;
- live updates: what another process writes (a step attempt, an event, the run's end)
  shows on the open run page and on the runs list without a reload, an event appended
  live as the page shows it after a reload;
- the timeline of the real demo run (retries drawn as such), its patches' highlighted
  diffs and quarantine reasons;
- hostile values in every record type and text field: inert on every page and in every
  JSON mirror; a run id with a '/' opens from its link;
- the README's screenshots (written to docs/img only with UET_WRITE_SCREENSHOTS=1).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest

from helpers import fresh_machine_environment
from uet.state import Database, GateLedger, PatchLedger, WorkerLifecycle, init_db

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "demo"
DOCS_IMG = ROOT / "docs" / "img"
WAIT_MS = 15_000          # Playwright waits: generous, never a sleep
README_IMAGE_LIMIT = 200_000
STAMP = "%Y-%m-%dT%H:%M:%S.%fZ"
RUN_STATES = ("pending", "running", "succeeded", "failed", "quarantined", "canceled")


# -- helpers ----------------------------------------------------------------------------

def get(url: str) -> httpx.Response:
    """A plain GET from the test process: straight to the server, never through the
    environment's proxy."""
    with httpx.Client(trust_env=False, timeout=60) as client:
        return client.get(url)


def check_csp(headers) -> None:
    csp = headers.get("content-security-policy")
    assert csp, f"no Content-Security-Policy header: {dict(headers)}"
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, csp
    assert "script-src 'self'" in csp, csp


def visit(page, url: str, status: int = 200):
    """Open `url`; the response has `status` and the CSP; the page is complete."""
    response = page.goto(url, wait_until="domcontentloaded")
    assert response is not None, url
    assert response.status == status, (url, response.status)
    check_csp(response.headers)
    page.wait_for_selector("footer#page-end", state="attached", timeout=WAIT_MS)
    assert page.evaluate("document.body.lastElementChild.id") == "page-end"
    return response


def complete_navigation(page, action) -> None:
    """Do `action` (a click, a submit) and wait for the page it loads to be complete."""
    with page.expect_navigation(wait_until="domcontentloaded", timeout=WAIT_MS):
        action()
    page.wait_for_selector("footer#page-end", state="attached", timeout=WAIT_MS)


def with_attr(name: str, value: str) -> str:
    """A CSS attribute selector matching `value` exactly, whatever it holds."""
    escaped = "".join(f"\\{ord(c):x} " if ord(c) < 0x20 or c == "\x7f"
                      else "\\" + c if c in '"\\' else c for c in value)
    return f'[{name}="{escaped}"]'


def row_ids(page) -> list[str]:
    return page.eval_on_selector_all("table#runs tbody tr[data-run-id]",
                                     "rows => rows.map(r => r.getAttribute('data-run-id'))")


def shown_counts(page) -> dict[str, int]:
    return {item["state"]: int(item["count"]) for item in page.eval_on_selector_all(
        "ul#counts li[data-state][data-count]",
        "items => items.map(i => ({state: i.getAttribute('data-state'), "
        "count: i.getAttribute('data-count')}))")}


def in_another_process(script: str, *args: str) -> dict:
    """Run `script` (python, using the uet API) in a new process; its JSON output."""
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# -- the demo run, shared by the tests that show it ---------------------------------------

@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    """The bundled demo workstream, run for real: the ledger's path, the run's id."""
    home = tmp_path_factory.mktemp("demo")
    env = fresh_machine_environment(home)
    made = subprocess.run([sys.executable, str(DEMO / "make_repo.py"), str(home / "repo")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert made.returncode == 0, made.stderr
    done = subprocess.run([sys.executable, "-m", "uet", "run", "--repo", str(home / "repo"),
                           str(DEMO / "workstream.yaml")], cwd=home, capture_output=True,
                          text=True, env=env, timeout=180)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    db_path = str(home / ".ledger" / "framework.db")
    with Database(db_path, read_only=True) as db:
        runs = db.list_runs()
        assert len(runs) == 1 and runs[0]["state"] == "succeeded"
        return {"db": db_path, "run_id": runs[0]["run_id"], "home": home}


# -- 1. the runs list --------------------------------------------------------------------

def make_runs(path: str) -> list[dict]:
    """120 runs of projects alpha (80) and beta (40) in every state, created one second
    apart in pairs (equal created_at: the pages' cursor must break the tie)."""
    base = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
    made = []
    with init_db(path) as db:
        for i in range(120):
            project = "beta" if i % 3 == 0 else "alpha"
            state = RUN_STATES[(i // 3) % len(RUN_STATES)]
            created = (base + timedelta(seconds=i // 2)).strftime(STAMP)
            run_id = db.create_run({
                "project_id": project, "phase_id": f"PH-{i % 4}",
                "workstream_id": f"WS-{i % 5}", "created_at": created,
                "state": "pending" if state in ("pending", "canceled") else "running"})
            if state in ("succeeded", "failed", "quarantined"):
                db.transition_run(run_id, state, exit_code=0 if state == "succeeded" else 1)
            elif state == "canceled":
                db.transition_run(run_id, "canceled")
            made.append({"run_id": run_id, "project": project, "state": state,
                         "created_at": created})
    return made


def newest_first(runs: list[dict]) -> list[str]:
    return [r["run_id"] for r in sorted(runs, key=lambda r: (r["created_at"], r["run_id"]),
                                        reverse=True)]


def test_the_runs_list_pages_through_every_run_and_filters_with_true_counts(
        web, page, tmp_path):
    path = str(tmp_path / "runs.db")
    made = make_runs(path)
    server = web(path)
    expected = newest_first(made)
    api = get(server.url + "api/runs?limit=500")
    assert api.status_code == 200
    assert [r["run_id"] for r in api.json()["runs"]] == expected  # the API's list

    # the first page: the 50 newest, newest first; no way to "newest" from there
    visit(page, server.url + "runs")
    assert row_ids(page) == expected[:50]
    stamps = page.eval_on_selector_all("table#runs tbody tr[data-run-id] td.time",
                                       "cells => cells.map(c => c.textContent.trim())")
    assert stamps == sorted(stamps, reverse=True) and len(stamps) == 50
    assert page.locator("a#newest").count() == 0
    in_states = Counter(r["state"] for r in made)
    assert set(in_states) == set(RUN_STATES)
    assert shown_counts(page) == in_states

    # older, older: every run once, in order; the last page has no "older"
    seen = row_ids(page)
    pages = 1
    while page.locator("a#older").count():
        complete_navigation(page, lambda: page.click("a#older"))
        pages += 1
        assert page.locator("a#newest").count() == 1
        seen += row_ids(page)
        assert pages <= 3, "more pages than 120 runs make"
    assert pages == 3 and len(seen) == 120
    assert seen == expected, "a run repeated, missing or out of order across the pages"
    complete_navigation(page, lambda: page.click("a#newest"))
    assert row_ids(page) == expected[:50]

    # filters kept across pages: alpha in pages of 25
    visit(page, server.url + "runs?project=alpha&limit=25")
    project_of = {r["run_id"]: r["project"] for r in made}
    alpha = [run_id for run_id in expected if project_of[run_id] == "alpha"]
    seen = row_ids(page)
    while page.locator("a#older").count():
        complete_navigation(page, lambda: page.click("a#older"))
        assert parse_qs(urlsplit(page.url).query)["project"] == ["alpha"]
        seen += row_ids(page)
    assert seen == alpha and len(alpha) == 80
    complete_navigation(page, lambda: page.click("a#newest"))
    assert row_ids(page) == alpha[:25]  # the first page of the same filter

    # since (in the form): the runs created at or after a moment
    moment = made[90]["created_at"]
    visit(page, server.url + "runs")
    page.fill("form#filters input[name=since]", moment)
    complete_navigation(page, lambda: page.click("form#filters button[type=submit]"))
    assert row_ids(page) == newest_first([r for r in made if r["created_at"] >= moment])
    assert sum(shown_counts(page).values()) == 30

    # the form: project and state, filled and submitted in the browser
    for project, state in (("alpha", "failed"), ("beta", ""), ("beta", "quarantined")):
        visit(page, server.url + "runs")
        page.fill("form#filters input[name=project]", project)
        page.select_option("form#filters select[name=state]", state)
        complete_navigation(page, lambda: page.click("form#filters button[type=submit]"))
        query = parse_qs(urlsplit(page.url).query)
        assert query["project"] == [project]
        matching = [r for r in made if r["project"] == project
                    and (not state or r["state"] == state)]
        assert matching, "the filter must select something"
        assert row_ids(page) == newest_first(matching)
        states = page.eval_on_selector_all("table#runs tbody tr[data-run-id]",
                                           "rows => rows.map(r => r.getAttribute('data-state'))")
        projects = page.eval_on_selector_all(
            "table#runs tbody tr[data-run-id] td:nth-child(2)",
            "cells => cells.map(c => c.textContent.trim())")
        assert set(projects) == {project}
        if state:
            assert set(states) == {state}
        # counts: per state, under the same filters but the state (as the ledger has them)
        of_project = Counter(r["state"] for r in made if r["project"] == project)
        assert shown_counts(page) == {s: of_project.get(s, 0) for s in RUN_STATES}
        with Database(path, read_only=True) as db:
            assert shown_counts(page) == {
                s: db.count_runs({"project_id": project, "state": s}) for s in RUN_STATES}
        assert page.input_value("form#filters input[name=project]") == project
        assert page.locator("a#older").count() == 0  # 40 or fewer: one page

    # a filter that matches nothing says so
    visit(page, server.url + "runs?project=gamma")
    assert row_ids(page) == [] and "No runs match" in page.inner_text("table#runs")

    assert page.dialogs == [] and page.console_errors == []

    # bad filters: a complete 400 page naming the problem
    for query, word in (("since=garbage", "since"), ("limit=0", "limit"),
                        ("limit=501", "limit"), ("state=exploded", "state"),
                        ("before=not-a-cursor", "before")):
        visit(page, server.url + "runs?" + query, status=400)
        assert page.get_attribute("body", "data-page") == "error"
        assert word in page.inner_text("#error"), (query, page.inner_text("#error"))
        assert page.locator("table#runs").count() == 0
    assert page.dialogs == []
    assert len(page.console_errors) == 5 and all(  # each page's own status, nothing else
        "status of 400" in message for message in page.console_errors), page.console_errors


# -- 2. live updates -------------------------------------------------------------------

NEW_STEP_AND_EVENT = """
import json, sys
from uet.state import Database
with Database(sys.argv[1]) as db:
    run_id = sys.argv[2]
    step = db.create_step_attempt({"run_id": run_id, "sequence": 2, "tool_id": "second-tool"})
    db.create_event({"run_id": run_id, "event_type": "note.added",
                     "data": {"said": "hello from another process"}})
    seq = db.list_events(run_id)[-1]["seq"]
print(json.dumps({"step": step, "seq": seq}))
"""

FINISH_RUN = """
import json, sys
from uet.state import Database
with Database(sys.argv[1]) as db:
    run_id = sys.argv[2]
    for step in db.list_step_attempts(run_id):
        db.transition_step_attempt(step["step_attempt_id"], "succeeded", exit_code=0)
    state = db.transition_run(run_id, "succeeded", exit_code=0)["state"]
print(json.dumps({"state": state}))
"""


def test_what_another_process_writes_shows_live_on_the_run_page_and_the_runs_list(
        web, page, tmp_path):
    path = str(tmp_path / "live.db")
    with init_db(path) as db:
        run_id = db.create_run({"project_id": "live", "phase_id": "PH-1", "state": "running"})
        first = db.create_step_attempt({"run_id": run_id, "sequence": 1,
                                        "tool_id": "first-tool"})
        other = db.create_run({"project_id": "live", "phase_id": "PH-1", "state": "running"})
    server = web(path)

    run_url = server.url + "runs/" + run_id
    visit(page, run_url)
    assert page.get_attribute("body", "data-stream")
    assert page.locator("table#steps tr[data-step-attempt-id]").count() == 1
    assert page.locator(f'table#steps tr[data-step-attempt-id="{first}"]').count() == 1
    assert page.inner_text("#run-state").strip() == "running"
    page.wait_for_selector("#live[data-status=open]", timeout=WAIT_MS)
    page.evaluate("window.__sameDocument = 'run'")  # gone if the page were reloaded

    runs = page.context.new_page()
    runs.dialogs = []
    runs.on("dialog", lambda dialog: (runs.dialogs.append(dialog.message), dialog.dismiss()))
    visit(runs, server.url + "runs")
    assert runs.locator(f'tr[data-run-id="{run_id}"][data-state="running"]').count() == 1
    runs.wait_for_selector("#live[data-status=open]", timeout=WAIT_MS)
    runs.evaluate("window.__sameDocument = 'runs'")

    # another process records a step attempt and an event: both appear, no reload
    written = in_another_process(NEW_STEP_AND_EVENT, path, run_id)
    page.wait_for_selector(f'table#steps tr[data-step-attempt-id="{written["step"]}"]',
                           timeout=WAIT_MS)
    event = page.wait_for_selector(f'ol#events li[data-seq="{written["seq"]}"]',
                                   timeout=WAIT_MS)
    assert event.get_attribute("class") == "new"  # appended from the stream by live.js
    assert "note.added" in event.inner_text()
    assert "hello from another process" in event.inner_text()
    page.wait_for_selector(f'svg#timeline rect.bar[data-step-attempt-id="{written["step"]}"]',
                           timeout=WAIT_MS)
    assert page.locator("table#steps tr[data-step-attempt-id]").count() == 2
    # each event once, in order
    seqs = page.eval_on_selector_all("ol#events li[data-seq]",
                                     "items => items.map(i => Number(i.dataset.seq))")
    assert seqs == sorted(set(seqs)) and seqs[-1] == written["seq"]
    assert page.evaluate("window.__sameDocument") == "run"
    assert int(page.get_attribute("body", "data-updates") or 0) >= 1
    assert page.get_attribute("#live", "data-status") == "open"  # still running
    assert page.inner_text("#run-state").strip() == "running"

    # the run finishes: its state, exit code; the stream ends; the runs list follows
    assert in_another_process(FINISH_RUN, path, run_id) == {"state": "succeeded"}
    page.wait_for_function(
        "() => document.querySelector('#run-state').textContent.trim() === 'succeeded'",
        timeout=WAIT_MS)
    page.wait_for_selector("#live[data-status=closed]", timeout=WAIT_MS)
    assert page.inner_text("#exit-code").strip() == "0"
    assert page.evaluate("window.__sameDocument") == "run"
    steps = page.eval_on_selector_all("table#steps tr[data-step-attempt-id]",
                                      "rows => rows.map(r => r.dataset.state)")
    assert steps == ["succeeded", "succeeded"]

    runs.wait_for_selector(f'tr[data-run-id="{run_id}"][data-state="succeeded"]',
                           timeout=WAIT_MS)
    runs.wait_for_selector('ul#counts li[data-state="succeeded"][data-count="1"]',
                           timeout=WAIT_MS)
    assert runs.locator(f'tr[data-run-id="{other}"][data-state="running"]').count() == 1
    assert runs.get_attribute('ul#counts li[data-state="running"]', "data-count") == "1"
    assert runs.evaluate("window.__sameDocument") == "runs"
    assert runs.get_attribute("#live", "data-status") == "open"  # the whole trail: no end
    assert page.dialogs == [] and runs.dialogs == [] and page.console_errors == []


def test_an_event_appended_live_shows_as_the_page_shows_it_after_a_reload(
        web, page, tmp_path):
    """live.js appends each new event from the stream's message; the page, rendered by
    the server, shows the same event: both must show it alike (each value clipped at the
    same length)."""
    path = str(tmp_path / "reload.db")
    with init_db(path) as db:
        run_id = db.create_run({"project_id": "p", "phase_id": "ph", "state": "running"})
    server = web(path)
    visit(page, server.url + "runs/" + run_id)
    page.wait_for_selector("#live[data-status=open]", timeout=WAIT_MS)
    long_type = "tool.output." + "x" * 288  # 300 characters: a long but ordinary name
    with Database(path) as db:
        db.create_event({"run_id": run_id, "event_type": long_type, "data": {"n": 1}})
        db.create_event({"run_id": run_id, "event_type": "short", "data": {"n": 2}})
        seqs = [e["seq"] for e in db.list_events(run_id)[-2:]]
    live = [page.wait_for_selector(f'ol#events li[data-seq="{seq}"]', timeout=WAIT_MS)
            .inner_text() for seq in seqs]
    visit(page, server.url + "runs/" + run_id)
    rendered = [page.inner_text(f'ol#events li[data-seq="{seq}"]') for seq in seqs]
    assert long_type in rendered[0]
    assert live == rendered, "the live event differs from the same event after a reload"


# -- 3. and 4. the demo run: timeline, patches -------------------------------------------

def test_the_timeline_of_the_demo_run_draws_every_attempt_and_marks_retries(
        demo, web, page, screenshot):
    server = web(demo["db"])
    document = get(server.url + "api/runs/" + demo["run_id"]).json()
    steps = document["step_attempts"]
    assert [(s["sequence"], s["attempt"]) for s in steps] == [
        (1, 1), (2, 1), (2, 2), (3, 1), (3, 2)]

    visit(page, server.url + "runs/" + demo["run_id"])
    assert page.get_attribute("body", "data-stream") is None  # finished: not live
    bars = page.eval_on_selector_all("svg#timeline rect.bar", """bars => bars.map(b => ({
        id: b.getAttribute('data-step-attempt-id'), sequence: b.getAttribute('data-sequence'),
        attempt: b.getAttribute('data-attempt'), state: b.getAttribute('data-state'),
        classes: [...b.classList], fill: getComputedStyle(b).fill,
        x: b.getBBox().x, width: b.getBBox().width,
        row: [...b.parentElement.classList]}))""")
    assert len(bars) == len(steps) == 5
    by_id = {bar["id"]: bar for bar in bars}
    assert set(by_id) == {s["step_attempt_id"] for s in steps}
    for step in steps:
        bar = by_id[step["step_attempt_id"]]
        assert (bar["sequence"], bar["attempt"], bar["state"]) == (
            str(step["sequence"]), str(step["attempt"]), step["state"])
        assert f"state-{step['state']}" in bar["classes"]
        retried = step["attempt"] > 1
        assert ("retry" in bar["classes"]) == retried
        assert ("retry" in bar["row"]) == retried and "row" in bar["row"]
        assert bar["width"] > 0
    for sequence in (2, 3):  # the retried tasks: attempt 1 failed, then a retry bar
        retry = page.locator(f'svg#timeline rect.bar.retry[data-sequence="{sequence}"]')
        assert retry.count() == 1 and retry.get_attribute("data-attempt") == "2"
        assert retry.get_attribute("data-state") == "succeeded"
        first = by_id[next(s["step_attempt_id"] for s in steps
                           if (s["sequence"], s["attempt"]) == (sequence, 1))]
        assert first["state"] == "failed"
        assert by_id[retry.get_attribute("data-step-attempt-id")]["x"] > first["x"]
    assert page.locator("svg#timeline g.row.retry").count() == 2
    assert page.locator("svg#timeline g.row").count() == 5
    # coloured by state: one colour per state, failed and succeeded differ, not the default
    fills = {}
    for bar in bars:
        fills.setdefault(bar["state"], set()).add(bar["fill"])
    assert all(len(colours) == 1 for colours in fills.values()), fills
    assert fills["failed"] != fills["succeeded"]
    default = page.evaluate("""() => { const r = document.createElementNS(
        'http://www.w3.org/2000/svg', 'rect'); r.setAttribute('class', 'bar');
        document.querySelector('svg#timeline').appendChild(r);
        const fill = getComputedStyle(r).fill; r.remove(); return fill; }""")
    assert default not in fills["failed"] | fills["succeeded"]

    assert page.locator("table#steps tr[data-step-attempt-id]").count() == 5
    error_logs = page.locator("table#steps tr.output details pre.tail").all_text_contents()
    assert "gate unit failed (exit 1)" in error_logs  # the failed attempt's error log
    assert page.inner_text("#run-state").strip() == "succeeded"
    assert page.inner_text("#exit-code").strip() == "0"
    assert page.dialogs == [] and page.console_errors == []
    assert screenshot(page, "run-page").stat().st_size > 10_000


def test_the_demo_run_page_shows_each_patch_diff_highlighted_and_quarantine_reasons(
        demo, web, page, screenshot):
    server = web(demo["db"])
    run_id = demo["run_id"]
    document = get(server.url + "api/runs/" + run_id).json()
    patches = document["patches"]
    assert len(patches) == 5
    visit(page, server.url + "runs/" + run_id)
    quarantined = 0
    with Database(demo["db"], read_only=True) as db:
        ledger = PatchLedger(db)
        for patch in patches:
            diff = ledger.get_patch(patch["patch_id"]).diff
            box = page.locator(f'div.patch[data-patch-id="{patch["patch_id"]}"]')
            assert box.count() == 1
            details = box.locator("details.diff-box")
            if details.get_attribute("open") is None:
                details.locator("summary").click()
            pre = box.locator(".diff pre")
            assert pre.is_visible()
            shown = pre.inner_text()
            assert shown.rstrip("\n") == diff.rstrip("\n"), "the diff is not shown as it is"
            lines = diff.splitlines()
            inserted = box.locator(".diff pre span.gi").all_inner_texts()
            deleted = box.locator(".diff pre span.gd").all_inner_texts()
            assert inserted == [line for line in lines if line.startswith("+")]
            assert deleted == [line for line in lines if line.startswith("-")]
            assert any(not line.startswith("+++") for line in inserted)
            assert box.locator(".diff pre span.gu").count() >= 1  # the @@ hunk headers
            for entry in patch["entries"]:
                shown_entry = box.locator(f'.entry[data-ledger-id="{entry["ledger_id"]}"]')
                assert shown_entry.get_attribute("data-state") == entry["state"]
                reason = ledger.get_entry(entry["ledger_id"]).quarantine_reason
                if entry["state"] == "quarantined":
                    quarantined += 1
                    assert reason
                    assert shown_entry.locator("p.quarantine").inner_text() == \
                        f"quarantined: {reason}"
                else:
                    assert shown_entry.locator("p.quarantine").count() == 0
    assert quarantined == 2
    # the scope quarantine names the file outside the scope
    assert "README.md" in page.locator("p.quarantine").all_inner_texts()[1]
    # gates: every one of the run's gates, the failed one among them
    gate_rows = page.locator("table#gates tr[data-gate-id]")
    assert gate_rows.count() == len(document["gates"]) == 8
    assert page.locator('table#gates tr[data-gate-id][data-state="FAILED"]').count() == 1
    assert page.dialogs == [] and page.console_errors == []

    visit(page, server.url + "runs")
    assert row_ids(page) == [run_id]
    assert page.get_attribute(f'tr[data-run-id="{run_id}"]', "data-state") == "succeeded"
    assert screenshot(page, "runs-page").stat().st_size > 5_000


# -- 5. hostile values -------------------------------------------------------------------

PWN = "<script>window.__pwned=1;alert(1)</script>"
IMG = '"><img src=x onerror="window.__pwned=2;alert(2)">'
JS = "javascript:alert(3)"
TITLE = '</title><svg onload="window.__pwned=4;alert(4)">'
TERM = "\x1b[31mRED\x1b]0;title\x07"
BIDI = "evil\u202etxt.exe"
BREAKOUT = "</pre></details></td></tr></table></section><script>window.__pwned=5</script>"
TEMPLATE = "{{ 7*7 }}{% if 1 %}"
HOSTILE = PWN + IMG + JS + TITLE + TERM + BIDI + BREAKOUT + TEMPLATE


def as_shown(value: str) -> str:
    """How a page shows a hostile value: as text, whole, its hidden characters written
    as escapes."""
    return value.replace(TERM, "\\x1b[31mRED\\x1b]0;title\\x07").replace(
        BIDI, "evil\\u202etxt.exe")


SHOWN = as_shown(HOSTILE)
HIDDEN = ("\x1b", "\x07", "\u202e", "\x00", "\ufffd")
BIG = ("<script>window.__pwned=9</script>\x1b[2J" * 300_000)[:10_000_000]


def hostile(field: str) -> str:
    """The hostile value of one field: tagged, so that each field can be found."""
    return f"[{field}]{HOSTILE}"


def shows(field: str) -> str:
    """What a page shows of `hostile(field)`: all of it, as text."""
    return f"[{field}]{SHOWN}"


def starts(field: str) -> str:
    """The start of `hostile(field)` shown inside JSON text (where its quotes are
    escaped): verbatim."""
    return f"[{field}]{PWN}"


HOSTILE_RUN = 'run"><img src=x onerror="window.__pwned=6">'  # no '/': see the slash test
HOSTILE_STEP = 'step"><img src=x onerror="window.__pwned=7">'
HOSTILE_FILE = 'x"><img src=x onerror=alert(8)>.py'


def make_hostile_ledger(path: str) -> dict:
    ids: dict = {}
    with init_db(path) as db:
        run = db.create_run({
            "run_id": HOSTILE_RUN, "project_id": hostile("project"),
            "phase_id": hostile("phase"), "workstream_id": hostile("workstream"),
            "state": "running",
            "metadata": {hostile("meta-key"): hostile("meta-value"), "big": BIG[:1000],
                         "list": [hostile("meta-list")]}})
        step = db.create_step_attempt({
            "step_attempt_id": HOSTILE_STEP, "run_id": run, "sequence": 1,
            "tool_id": hostile("tool"), "task_id": hostile("task"), "model": hostile("model"),
            "metadata": {"stdout_tail": BIG + "\n" + hostile("stdout-tail"),
                         "stderr_tail": hostile("stderr-tail") + "\nline 2"}})
        db.transition_step_attempt(step, "failed", exit_code=2,
                                   error_log=hostile("error-log") + "\nmore")
        retry = db.create_step_attempt({"run_id": run, "sequence": 1,
                                        "tool_id": hostile("tool-retry")})
        db.create_event({"run_id": run, "event_type": hostile("event-type"),
                         "data": {hostile("data-key"): hostile("data-value"),
                                  "nested": [PWN, {"x": TITLE}]}})
        patches = PatchLedger(db)
        diff = (f"--- a/{HOSTILE_FILE}\n+++ b/{HOSTILE_FILE}\n@@ -1,2 +1,2 @@\n"
                f"-{hostile('diff-old')}\n+{hostile('diff-new')}\n {BREAKOUT}\n")
        patch = patches.record_patch(diff, step_attempt_id=retry)
        entry = patches.create_entry(patch, hostile("entry-phase"), hostile("entry-workstream"))
        patches.quarantine(entry.ledger_id, hostile("quarantine"))
        gates = GateLedger(db)
        gate = gates.define_gate("UNIT", hostile("gate-phase"), hostile("gate-command"),
                                 name=hostile("gate-name"), run_id=run)
        gates.transition_state(gate["gate_id"], "RUNNING")
        gates.transition_state(gate["gate_id"], "FAILED", exit_code=1,
                               stdout=hostile("gate-stdout") + "\nout",
                               stderr=hostile("gate-stderr") + "\nerr")
        gates.define_gate("LINT", hostile("gate-phase"), "true", name=hostile("gate-dependent"),
                          run_id=run, depends_on=[hostile("gate-name")])
        WorkerLifecycle(db).spawn_worker(hostile("worker-id"), hostile("worker-type"),
                                         {"host": hostile("worker-host"), "pid": 4242,
                                          hostile("affinity-key"): hostile("affinity-value")})
        # a finished run with a 10 MB error message
        big = db.create_run({"run_id": "big-run", "project_id": "p", "phase_id": "ph",
                             "state": "running"})
        db.transition_run(big, "failed", exit_code=1, error_message=BIG)
        ids.update(run=run, step=step, retry=retry, patch=patch.patch_id,
                   entry=entry.ledger_id, gate=gate["gate_id"], big=big)
    # what only raw SQL writes: text that is not UTF-8 (a lone surrogate's bytes), NUL,
    # lone surrogates in JSON
    conn = sqlite3.connect(path)
    try:
        surrogate = "eda080"  # U+D800 encoded as if it were a character: not UTF-8
        conn.execute(
            "INSERT INTO runs (run_id, project_id, phase_id, workstream_id, state, created_at,"
            " error_message, metadata) VALUES ('raw-run', CAST(X'" + "[raw-project]".encode()
            .hex() + surrogate + "' AS TEXT), ?, CAST(X'" + surrogate + "' AS TEXT), "
            "'failed', '2026-01-01T00:00:00.000000Z', ?, ?)",
            ("[raw-phase]" + PWN, "nul\x00inside" + PWN, '{"a": "\\ud800", "b": "\\u0000"}'))
        conn.execute(
            "INSERT INTO run_events (event_id, run_id, timestamp, event_type, data, seq) "
            "VALUES ('raw-event', 'raw-run', '2026-01-01T00:00:01.000000Z', CAST(X'"
            + "[raw-event]".encode().hex() + surrogate + "' AS TEXT), ?, "
            "(SELECT max(seq) + 1 FROM run_events))", ('{"s": "\\udfff", "n": "\\u0000"}',))
        conn.execute("UPDATE workers SET worker_type = CAST(X'" + "[raw-type]".encode().hex()
                     + surrogate + "' AS TEXT)")
        conn.execute("UPDATE test_gates SET stderr = ? WHERE gate_id = ?",
                     ("[raw-stderr]nul\x00" + PWN, ids["gate"]))
        conn.execute("UPDATE patch_ledger_entries SET workstream_id = CAST(X'"
                     + "[raw-ws]".encode().hex() + surrogate + "' AS TEXT)")
        conn.commit()
    finally:
        conn.close()
    return ids


INERT = """() => {
    const scripts = [...document.scripts].map(s => s.getAttribute('src'));
    const handlers = [...document.querySelectorAll('*')].filter(
        e => [...e.attributes].some(a => a.name.toLowerCase().startsWith('on'))).length;
    const links = [...document.querySelectorAll('[href]')].map(a => a.getAttribute('href'));
    const sources = [...document.querySelectorAll('[src]')].map(a => a.getAttribute('src'));
    const made = document.querySelectorAll(
        'img, iframe, object, embed, foreignObject, main svg:not(#timeline)').length;
    return {scripts, handlers, links, sources, made, clean: window.__pwned === undefined,
            title: document.title};
}"""


def check_inert(page, response, visible: tuple[str, ...] = ()) -> str:
    """The page loaded whole, nothing in it runs or was made from a value, and `visible`
    shows as text; returns the page's text (every details element opened)."""
    assert response.status == 200, response.url
    check_csp(response.headers)
    assert page.evaluate("document.body.lastElementChild.id") == "page-end"
    found = page.evaluate(INERT)
    assert found["clean"], f"an injected script ran on {page.url}"
    assert found["scripts"] == ["/static/live.js"], found["scripts"]
    assert found["handlers"] == 0, "an element with an on… handler was made from a value"
    assert found["made"] == 0, "an element was made from a value"
    assert all(link.startswith("/") and not link.startswith("//")
               for link in found["links"]), found["links"]
    assert found["sources"] == ["/static/live.js"]
    assert found["title"].endswith(" · uet"), found["title"]
    page.evaluate("document.querySelectorAll('details').forEach(d => d.open = true)")
    text = page.inner_text("body")
    for piece in visible:
        assert piece in text, f"{piece!r} is not shown as text on {page.url}"
    for character in HIDDEN:
        assert character not in text, f"{character!r} reached the page {page.url} as is"
    assert page.dialogs == [], page.dialogs
    assert page.console_errors == [], page.console_errors  # e.g. CSP refusals
    return text


def test_hostile_values_in_every_record_are_inert_text_on_every_page_and_mirror(
        web, page, tmp_path):
    path = str(tmp_path / "hostile.db")
    ids = make_hostile_ledger(path)
    server = web(path)
    base = server.url

    # the runs list, and its form keeping a hostile filter value as a value
    text = check_inert(page, visit(page, base + "runs"),
                       (shows("project"), shows("phase"), shows("workstream"), "[raw-project]",
                        "[raw-phase]" + PWN, HOSTILE_RUN))
    assert "\\udc" in text or "\\ud8" in text  # the lone surrogate, written as an escape
    link = "table#runs tr" + with_attr("data-run-id", HOSTILE_RUN) + " a"
    complete_navigation(page, lambda: page.click(link))
    assert page.get_attribute("body", "data-page") == "run"
    for name, value in (("project", hostile("project")), ("phase", IMG)):
        response = visit(page, base + "runs?" + name + "=" + quote(value))
        check_inert(page, response)
        assert page.input_value(f"form#filters input[name={name}]") == as_shown(value)

    # the hostile run's page: every field of the run, its steps, events, patch, gates
    response = visit(page, base + "runs/" + quote(HOSTILE_RUN, safe=""))
    page.wait_for_selector("#live[data-status=open]", timeout=WAIT_MS)
    text = check_inert(page, response, (
        shows("project"), shows("phase"), shows("workstream"), shows("tool"), shows("task"),
        shows("model"), shows("stdout-tail"), shows("stderr-tail"), shows("error-log"),
        shows("event-type"), starts("data-key"), starts("data-value"), shows("diff-old"),
        shows("diff-new"), BREAKOUT, shows("quarantine"), shows("gate-name"),
        shows("gate-command"), shows("gate-stdout"), "[raw-stderr]nul\\x00" + PWN,
        shows("gate-dependent"), HOSTILE_RUN, HOSTILE_STEP, "<img src=x onerror=alert(8)>.py"))
    step = with_attr("data-step-attempt-id", HOSTILE_STEP)
    assert page.locator("table#steps tr" + step).count() == 1
    assert page.locator("svg#timeline rect.bar" + step).count() == 1
    assert page.inner_text("h1 .id") == HOSTILE_RUN
    assert page.title() == f"run {HOSTILE_RUN} · uet"
    kept = page.locator('details.kept[data-stream-name="stdout"] pre.tail').inner_text()
    assert len(kept) < 20_000 and "chars before" in kept  # 10 MB: its end, bounded
    assert page.locator("p.quarantine").inner_text() == "quarantined: " + shows("quarantine")
    assert page.locator(f'.entry[data-ledger-id="{ids["entry"]}"][data-state="quarantined"]'
                        ).count() == 1

    # a hostile event arrives live: appended as text
    with Database(path) as db:
        db.create_event({"run_id": HOSTILE_RUN, "event_type": hostile("live-type"),
                         "data": {"live": hostile("live-data")}})
        seq = db.list_events(HOSTILE_RUN)[-1]["seq"]
    item = page.wait_for_selector(f'ol#events li[data-seq="{seq}"]', timeout=WAIT_MS)
    assert starts("live-type") in item.inner_text()  # (the whole: see the reload test)
    assert starts("live-data") in item.inner_text()
    page.wait_for_function("() => Number(document.body.dataset.updates || 0) >= 1",
                           timeout=WAIT_MS)
    check_inert(page, response, (starts("live-type"), starts("live-data"), shows("tool")))

    # the 10 MB error message: clipped on the page, whole in the JSON
    response = visit(page, base + "runs/big-run")
    check_inert(page, response)
    shown_error = page.inner_text("#error-message")
    assert shown_error.startswith("<script>window.__pwned=9</script>\\x1b[2J")
    assert 1_000 < len(shown_error) < 20_000

    # the rows only raw SQL makes: not UTF-8, NUL, lone surrogates in JSON
    response = visit(page, base + "runs/raw-run")
    text = check_inert(page, response, ("[raw-project]", "[raw-phase]" + PWN, "[raw-event]",
                                        "nul\\x00inside" + PWN))

    # workers, patches, gates (and their filters with hostile values)
    check_inert(page, visit(page, base + "workers"),
                (shows("worker-id"), "[raw-type]", shows("worker-host")))
    assert page.locator("table#workers tr[data-worker-id]").get_attribute(
        "data-worker-id") == as_shown(hostile("worker-id"))
    check_inert(page, visit(page, base + "patches"),
                (shows("entry-phase"), shows("quarantine"), "[raw-ws]", HOSTILE_RUN,
                 "<img src=x onerror=alert(8)>.py"))
    assert page.locator(f'table#patches tr[data-ledger-id="{ids["entry"]}"]').count() == 1
    check_inert(page, visit(page, base + "patches?phase=" + quote(hostile("entry-phase"))),
                (shows("entry-phase"),))
    check_inert(page, visit(page, base + "gates"),
                (shows("gate-name"), shows("gate-phase"), shows("gate-dependent"),
                 HOSTILE_RUN))
    assert page.locator(f'table#gates tr[data-gate-id="{ids["gate"]}"][data-state="FAILED"]'
                        ).count() == 1
    check_inert(page, visit(page, base + "gates?phase=" + quote(hostile("gate-phase"))),
                (shows("gate-name"),))

    # error pages echo hostile input as text
    response = visit(page, base + "runs?state=" + quote(PWN), status=400)
    assert page.evaluate("window.__pwned === undefined") and page.dialogs == []
    assert PWN in page.inner_text("#error")
    assert page.evaluate("document.body.lastElementChild.id") == "page-end"
    response = visit(page, base + "runs/" + quote(IMG, safe=""), status=404)
    found = page.evaluate(INERT)
    assert found["handlers"] == found["made"] == 0 and found["clean"] and page.dialogs == []
    # (the ledger looks ULIDs up case-insensitively: the message names the id upper-cased)
    assert IMG.upper() in page.inner_text("#error").upper()
    assert [m for m in page.console_errors if "Failed to load resource" not in m] == []

    # the JSON mirrors: parse, carry the values exactly, CSP too
    documents = {}
    for name in ("api/runs", "api/runs/" + quote(HOSTILE_RUN, safe=""), "api/runs/big-run",
                 "api/runs/raw-run", "api/workers", "api/patches", "api/gates", "healthz"):
        answer = get(base + name)
        assert answer.status_code == 200, (name, answer.text[:300])
        assert answer.headers["content-type"].startswith("application/json")
        assert answer.headers.get("x-content-type-options") == "nosniff"
        check_csp(answer.headers)
        documents[name] = answer.json()
    run_doc = documents["api/runs/" + quote(HOSTILE_RUN, safe="")]
    assert run_doc["run"]["project_id"] == hostile("project")
    assert run_doc["run"]["metadata"][hostile("meta-key")] == hostile("meta-value")
    assert run_doc["step_attempts"][0]["metadata"]["stdout_tail"] == (
        BIG + "\n" + hostile("stdout-tail"))
    assert run_doc["step_attempts"][0]["tool_id"] == hostile("tool")
    assert any(e["event_type"] == hostile("event-type") for e in run_doc["events"])
    assert documents["api/runs/big-run"]["run"]["error_message"] == BIG
    raw = documents["api/runs/raw-run"]
    assert raw["run"]["project_id"].startswith("[raw-project]")
    assert raw["run"]["metadata"] == {"a": "\ud800", "b": "\x00"}
    assert raw["run"]["error_message"] == "nul\x00inside" + PWN
    assert {r["run_id"] for r in documents["api/runs"]["runs"]} == {
        HOSTILE_RUN, "big-run", "raw-run"}
    assert documents["api/workers"][0]["worker_id"] == hostile("worker-id")
    assert documents["api/workers"][0]["host"] == hostile("worker-host")
    assert documents["api/patches"][0]["quarantine_reason"] == hostile("quarantine")
    assert {g["name"] for g in documents["api/gates"]} == {hostile("gate-name"),
                                                           hostile("gate-dependent")}
    # a JSON mirror opened in the browser is text, not a page
    response = page.goto(base + "api/workers")
    assert response.status == 200 and page.evaluate("window.__pwned === undefined")
    assert page.dialogs == [] and starts("worker-id") in page.inner_text("body")


def test_a_run_whose_id_has_a_slash_opens_from_the_runs_list(web, page, tmp_path):
    """The ledger accepts any text as a run id, '/' included (e.g. '</script>'); the runs
    list links to `/runs/<id percent-encoded>`, which must open that run's page."""
    path = str(tmp_path / "slash.db")
    with init_db(path) as db:
        run_id = db.create_run({"run_id": "team/PWN-<script>alert(1)</script>",
                                "project_id": "p", "phase_id": "ph"})
    server = web(path)
    visit(page, server.url + "runs")
    link = page.locator("tr" + with_attr("data-run-id", run_id) + " a")
    assert link.get_attribute("href") == "/runs/" + quote(run_id, safe="")
    with page.expect_navigation(wait_until="domcontentloaded", timeout=WAIT_MS) as nav:
        link.click()
    api = get(server.url + "api/runs/" + quote(run_id, safe=""))
    statuses = {"page": nav.value.status, "api": api.status_code}
    assert statuses == {"page": 200, "api": 200}, (
        f"the run's own link answers {statuses} ({api.text[:80]!r})")
    assert page.inner_text("h1 .id") == run_id
    assert api.json()["run"]["run_id"] == run_id


# -- 6. screenshots for the README ----------------------------------------------------------

def test_screenshots_of_the_runs_list_and_the_demo_run_for_the_readme(
        demo, web, browser, tmp_path):
    # the demo's ledger, copied, with some more runs around the demo run: a fuller list;
    # served by the name a user sees in the demo (no folder of this machine in the picture)
    (tmp_path / ".ledger").mkdir()
    path = str(tmp_path / ".ledger" / "framework.db")
    source, target = sqlite3.connect(demo["db"]), sqlite3.connect(path)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()
    with Database(path) as db:
        for i, (state, workstream) in enumerate((("failed", "WS-DOCS"), ("running", "WS-API"),
                                                 ("succeeded", "WS-CLI"),
                                                 ("canceled", "WS-DOCS"))):
            run = db.create_run({"project_id": "demo", "phase_id": f"PH-{i + 2}",
                                 "workstream_id": workstream,
                                 "state": "pending" if state == "canceled" else "running"})
            if state != "running":
                db.transition_run(run, state, exit_code={"failed": 1, "succeeded": 0}.get(
                    state), error_message="gate unit failed" if state == "failed" else None)
    server = web(".ledger/framework.db", cwd=tmp_path)
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        tab = context.new_page()
        shots = {}
        for name, address, ready in (
                ("runs-page", "runs", "table#runs tr[data-run-id]"),
                ("run-page", "runs/" + demo["run_id"], "svg#timeline rect.bar")):
            visit(tab, server.url + address)
            tab.wait_for_selector(ready, timeout=WAIT_MS)
            if name == "runs-page":
                assert tab.locator("table#runs tr[data-run-id]").count() == 5
                tab.wait_for_selector("#live[data-status=open]", timeout=WAIT_MS)
            else:
                assert tab.locator("svg#timeline rect.bar.retry").count() == 2
            shots[name] = tab.screenshot()  # the viewport: what the README shows
            assert png_size(shots[name]) == (1280, 800)
            assert len(shots[name]) < README_IMAGE_LIMIT, (name, len(shots[name]))
            artefact = ROOT / "test-artifacts" / "web" / f"{name}.png"
            artefact.parent.mkdir(parents=True, exist_ok=True)
            artefact.write_bytes(shots[name])
        if os.environ.get("UET_WRITE_SCREENSHOTS") == "1":
            DOCS_IMG.mkdir(parents=True, exist_ok=True)
            for name, file in (("runs-page", "web-runs.png"), ("run-page", "web-run.png")):
                (DOCS_IMG / file).write_bytes(shots[name])
    finally:
        context.close()


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


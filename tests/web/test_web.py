"""The dashboard over HTTP (issue 17): every page and `/api/…` mirror on hostile ledgers,
keyset pages, the guard (Host header, methods, token), the `uet web` command, and the live
streams — on real SQLite files and a real PostgreSQL server, through the real ASGI app
(httpx's in-process transport) or the real `uet web` process. The browser's view of the
same pages is in test_browser.py."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import unicodedata
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from urllib.parse import parse_qs, urlsplit

import anyio.from_thread
import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from test_cli_display import accepted, as_json, built, fill, huge, raw_only, raw_sqlite_values
from uet.state import Database, GateLedger, PatchLedger, WorkerLifecycle, init_db
from uet.web import create_app
from uet.web.guard import CSP, host_of
from uet.web.timeline import LABEL_WIDTH, MAX_ROWS, WIDTH, layout

BASE = "http://127.0.0.1:8765"
PAGES = ["/runs", "/workers", "/patches", "/gates", "/healthz"]
APIS = ["/api/runs", "/api/workers", "/api/patches", "/api/gates"]
HIDDEN = {"Cc", "Cf", "Cs", "Zl", "Zp"}


class client:
    """A blocking HTTP client of the dashboard app over `db`, in this process: httpx's ASGI
    transport (no socket), driven from a blocking portal (an event loop on a thread)."""

    def __init__(self, db, **options) -> None:
        self.app = create_app(db, **options)

    def __enter__(self) -> "client":
        self._portal_cm = anyio.from_thread.start_blocking_portal()
        self._portal = self._portal_cm.__enter__()
        self._http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app),
                                       base_url=BASE, follow_redirects=False)
        return self

    def __exit__(self, *exc) -> None:
        self._portal.call(self._http.aclose)
        self._portal_cm.__exit__(*exc)

    def request(self, method: str, path: str, **options) -> httpx.Response:
        return self._portal.call(lambda: self._http.request(method, path, **options))

    def get(self, path: str, **options) -> httpx.Response:
        return self.request("GET", path, **options)

    def head(self, path: str, **options) -> httpx.Response:
        return self.request("HEAD", path, **options)


# -- what a page may contain -----------------------------------------------------------

# the elements the templates and Pygments write: anything else would be a stored value
# that became markup
TAGS = {"html", "head", "meta", "title", "link", "script", "body", "header", "a", "nav",
        "span", "main", "footer", "h1", "h2", "h3", "form", "label", "input", "select",
        "option", "button", "section", "ul", "li", "b", "table", "thead", "tbody", "tr",
        "th", "td", "p", "dl", "dt", "dd", "svg", "line", "text", "g", "rect", "details",
        "summary", "pre", "div", "ol", "small", "code"}
URL_ATTRIBUTES = {"href", "src", "action"}


class PageShape(HTMLParser):
    """Every element and attribute of a page, and its text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []
        self.tags: list[str] = []
        self.text: list[str] = []
        self.scripts: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag not in TAGS:
            self.problems.append(f"element <{tag}>")
        for name, value in attrs:
            value = value or ""
            if name.startswith("on") or name in ("style", "srcdoc", "formaction"):
                self.problems.append(f"attribute {name}= on <{tag}>")
            if name in URL_ATTRIBUTES and not (value.startswith("/") and not
                                               value.startswith("//")):
                self.problems.append(f"{name}={value[:80]!r} leaves the dashboard")
            if "javascript:" in value.lower().replace(" ", "") and name in URL_ATTRIBUTES:
                self.problems.append(f"javascript: URL in {name}")
        if tag == "script":
            self.scripts.append(dict(attrs).get("src", "<inline>"))

    def handle_data(self, data):
        if self.tags and self.tags[-1] == "script" and data.strip():
            self.scripts.append("<inline>")
        self.text.append(data)


def check_page(response: httpx.Response) -> PageShape:
    """A page that renders hostile values inert: 200, valid UTF-8 with no hidden character
    (but line breaks and tabs), only the templates' elements and attributes, only our own
    script, complete, bounded, with the security headers."""
    assert response.status_code == 200, (response.request.url, response.text[-2000:])
    body = response.content.decode("utf-8")  # raises on anything that is not UTF-8
    hidden = [c for c in body if c not in "\n\t" and unicodedata.category(c) in HIDDEN]
    assert hidden == [], (response.request.url, hidden[:10])
    shape = PageShape()
    shape.feed(body)
    shape.close()
    assert shape.problems == [], (response.request.url, shape.problems[:10])
    assert shape.scripts == ["/static/live.js"], shape.scripts
    assert body.rstrip().endswith("</html>") and 'id="page-end"' in body
    assert len(body) < 3_000_000, (response.request.url, len(body))
    assert response.headers["content-security-policy"] == CSP
    assert "unsafe-inline" not in CSP and "script-src 'self'" in CSP
    return shape


def all_pages(http: httpx.Client, db) -> dict[str, httpx.Response]:
    """Every page of the dashboard on this ledger (each run's page too), by path."""
    paths = ["/runs", "/workers", "/patches", "/gates"]
    for run in db.list_runs(limit=None):
        paths.append(f"/runs/{run['run_id']}")
    return {path: http.get(path) for path in paths}


# -- hostile ledgers -------------------------------------------------------------------

_examples = iter(range(10**6))
HOSTILE = ["<script>window.__pwned=1</script>", '"><img src=x onerror=alert(2)>',
           "javascript:alert(3)", "</title><svg onload=alert(4)>", "\x1b[31mRED\x1b]0;t\x07",
           "\u202eevil", "{{ 7*7 }}", "{% raw %}", "' onmouseover='alert(5)"]


@settings(max_examples=8, deadline=None, derandomize=True,
          phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(texts=st.lists(st.one_of(accepted, st.sampled_from(HOSTILE)), min_size=1,
                      max_size=8),
       raw=st.lists(raw_only, min_size=1), big=huge, depth=st.integers(0, 120))
def test_every_page_renders_hostile_values_of_a_sqlite_ledger_inert(tmp_path, texts, raw,
                                                                     big, depth):
    path = str(tmp_path / f"hostile-{next(_examples)}.db")
    with init_db(path) as db:
        fill(db, [*HOSTILE, *texts], built(big), depth, "t", big_id=True)
        fill(db, texts, None, 2, "u", big_id=False)
    raw_sqlite_values(path, raw)
    with Database(path, read_only=True) as db, client(db) as http:
        for path_, response in all_pages(http, db).items():
            shape = check_page(response)
            if path_ == "/runs":  # hostile text is shown as text
                assert any("window.__pwned" in t for t in shape.text) or not any(
                    "window.__pwned" in str(r) for r in db.list_runs(limit=None))
        documents = {api: http.get(api) for api in APIS}
        for api, response in documents.items():
            assert response.status_code == 200, (api, response.text[-500:])
            assert response.headers["content-type"] == "application/json"
        # the mirrors are the ledger's values exactly (what `uet ... --json` prints)
        assert documents["/api/runs"].json()["runs"] == as_json(db.list_runs(limit=50))
        newest = db.list_runs(limit=1)[0]["run_id"]
        shown = http.get(f"/api/runs/{newest}").json()
        assert shown["run"] == as_json(db.get_run(newest))
        assert shown["step_attempts"] == as_json(db.list_step_attempts(newest))
        assert shown["events"] == as_json(db.list_events(newest))
        assert http.get("/healthz").json()["status"] == "ok"


def test_every_page_renders_hostile_values_of_a_postgresql_ledger_inert(postgres_url):
    texts = [*HOSTILE, "v\u05d0\u05d1", "v\U0001f600", "v" + "x" * 300_000]
    with init_db(postgres_url) as db:
        fill(db, texts, "\x1b[2J" * 100_000, 30, "p", big_id=False)
        with client(db) as http:
            for response in all_pages(http, db).values():
                check_page(response)
            for api in APIS:
                assert http.get(api).status_code == 200
            assert http.get("/api/runs").json()["runs"] == as_json(db.list_runs(limit=50))


def test_huge_values_are_clipped_on_pages_and_whole_in_the_json(file_db):
    huge_text = "E" * 10_000_000
    run = file_db.create_run({"project_id": "p", "phase_id": "ph", "state": "running"})
    step = file_db.create_step_attempt({"run_id": run, "sequence": 1, "tool_id": "t",
                                        "metadata": {"stdout_tail": huge_text}})
    file_db.transition_step_attempt(step, "failed", exit_code=1)
    file_db.transition_run(run, "failed", exit_code=1, error_message=huge_text)
    patches = PatchLedger(file_db)
    patches.record_patch("--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+" + huge_text + "\n",
                         run_id=run, step_attempt_id=step)
    with client(file_db) as http:
        page = http.get(f"/runs/{run}")
        check_page(page)
        assert len(page.text) < 1_000_000
        assert "chars)" in page.text  # the clip marker says how much was left out
        document = http.get(f"/api/runs/{run}").json()
        assert document["run"]["error_message"] == huge_text


# -- the runs list: filters, counts, keyset pages ----------------------------------------

def _runs_with_ties(db, count: int, seed: int) -> None:
    """`count` runs over three projects and every state, many sharing one created_at."""
    rng = random.Random(seed)
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for index in range(count):
        moment = start + timedelta(seconds=rng.choice([0, 1, 1, 2, index]))
        run = db.create_run({"project_id": rng.choice(["api", "web", "<b>x</b>"]),
                             "phase_id": "PH", "created_at": moment.isoformat(),
                             "state": rng.choice(["pending", "running"])})
        if rng.random() < 0.6:
            db.transition_run(db.get_run(run)["run_id"], "running") \
                if db.get_run(run)["state"] == "pending" else None
            db.transition_run(run, rng.choice(["succeeded", "failed", "canceled"]))


def _page_through(http: httpx.Client, query: dict) -> list[str]:
    seen, before = [], None
    for _ in range(1000):
        response = http.get("/api/runs", params={**query, **({"before": before}
                                                              if before else {})})
        assert response.status_code == 200, response.text
        document = response.json()
        seen += [r["run_id"] for r in document["runs"]]
        before = document["next_before"]
        if before is None:
            return seen
    raise AssertionError("paging never ended")


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(count=st.integers(0, 70), limit=st.integers(1, 17), seed=st.integers(0, 10**6),
       which=st.sampled_from([{}, {"project": "api"}, {"state": "failed"},
                              {"project": "<b>x</b>", "state": "running"}]))
def test_keyset_pages_list_every_run_once_in_order(count, limit, seed, which):
    with init_db(":memory:") as db:
        _runs_with_ties(db, count, seed)
        with client(db) as http:
            seen = _page_through(http, {**which, "limit": limit})
        filters = {{"project": "project_id"}.get(k, k): v for k, v in which.items()}
        expected = [r["run_id"] for r in db.list_runs(filters, None)]
        assert seen == expected


def test_keyset_pages_and_capped_counts_on_postgresql(postgres_url):
    with init_db(postgres_url) as db:
        _runs_with_ties(db, 60, 7)
        with client(db) as http:
            for limit in (1, 7, 50):
                assert _page_through(http, {"limit": limit}) == [
                    r["run_id"] for r in db.list_runs(limit=None)]
            counts = http.get("/api/runs").json()["counts"]
            since = "2026-01-01T00:00:02Z"
            recent = http.get("/api/runs", params={"since": since, "project": "api",
                                                   "limit": 500}).json()
        for state, number in counts.items():
            assert number == len(db.list_runs({"state": state}, None))
        assert [r["run_id"] for r in recent["runs"]] == [
            r["run_id"] for r in db.list_runs({"project_id": "api"}, None, since=since)]
        assert sum(recent["counts"].values()) == len(recent["runs"]) > 0
        assert db.count_runs(cap=5) == 5 and db.count_runs({"project_id": "none"}) == 0


def test_counts_stop_at_the_cap_and_say_so(file_db, monkeypatch):
    import uet.web.app as web_app
    monkeypatch.setattr(web_app, "COUNT_CAP", 3)
    for _ in range(5):
        file_db.create_run({"project_id": "p", "phase_id": "ph"})
    with client(file_db) as http:
        assert http.get("/api/runs").json()["counts"]["pending"] == 3
        page = http.get("/runs")
    check_page(page)
    assert "3+" in page.text


@pytest.mark.parametrize("query, says", [
    ({"state": "bogus"}, "known states"), ({"since": "yesterday-ish"}, "since"),
    ({"before": "not-a-cursor"}, "cursor"), ({"before": "WyJhIl0"}, "cursor"),
    ({"limit": "0"}, "limit"), ({"limit": "x"}, "limit"), ({"limit": "501"}, "limit")])
def test_a_bad_filter_is_a_400_page_that_says_why(file_db, query, says):
    with client(file_db) as http:
        page = http.get("/runs", params=query)
        api = http.get("/api/runs", params=query)
    assert page.status_code == 400 and says in page.text and 'id="page-end"' in page.text
    assert api.status_code == 400 and says in api.json()["error"]


def test_unknown_and_prefix_run_ids(file_db):
    run = file_db.create_run({"project_id": "p", "phase_id": "ph"})
    with client(file_db) as http:
        assert http.get("/runs/NOPE").status_code == 404
        assert http.get("/api/runs/NOPE").json()["status"] == 404
        moved = http.get(f"/runs/{run[:20]}")
        assert moved.status_code == 307 and moved.headers["location"] == f"/runs/{run}"
        assert http.get(f"/api/runs/{run[:20]}").headers["location"] == f"/api/runs/{run}"
        assert http.get("/").headers["location"] == "/runs"


def test_the_mirrors_are_the_documents_of_the_cli(tmp_path):
    """`/api/runs/ID` is `uet show --json`, `/api/workers` is `uet workers --json` (but
    for the ages, which move), `/api/patches` and `/api/gates` their commands'."""
    from test_cli import UET, uet_env
    path = str(tmp_path / "l.db")
    with init_db(path) as db:
        fill(db, ["va", "vb", "vc"], None, 1, "m", big_id=False)
        run = db.list_runs(limit=1)[0]["run_id"]

    def cli(*args):
        out = subprocess.run([UET, *args, "--json", "--db", path], env=uet_env(),
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)
    with Database(path, read_only=True) as db, client(db) as http:
        assert http.get(f"/api/runs/{run}").json() == cli("show", run)
        assert http.get("/api/patches").json() == cli("patches")
        assert http.get("/api/gates").json() == cli("gates")
        assert http.get("/api/runs").json()["runs"] == cli("runs")

        def steady(rows):
            return [{k: v for k, v in r.items() if k != "heartbeat_age_s"} for r in rows]
        assert steady(http.get("/api/workers").json()) == steady(cli("workers"))


def test_a_run_page_shows_timeline_retries_patches_gates_and_output(file_db):
    db = file_db
    run = db.create_run({"project_id": "p", "phase_id": "ph", "state": "running"})
    first = db.create_step_attempt({"run_id": run, "sequence": 1, "tool_id": "aider",
                                    "metadata": {"stdout_tail": "line one\nline two\n"}})
    db.transition_step_attempt(first, "failed", exit_code=1)
    retry = db.create_step_attempt({"run_id": run, "sequence": 1, "attempt": 2,
                                    "tool_id": "aider"})
    db.transition_step_attempt(retry, "succeeded", exit_code=0)
    patches = PatchLedger(db)
    patch = patches.record_patch("--- a/f.py\n+++ b/f.py\n@@ -1 +1 @@\n-old\n+new\n",
                                 run_id=run, step_attempt_id=retry)
    entry = patches.create_entry(patch, "ph")
    patches.quarantine(entry.ledger_id, "touches <README.md>")
    gates = GateLedger(db)
    lint = gates.define_gate("LINT", "ph", "ruff check", name="lint", run_id=run)
    unit = gates.define_gate("UNIT", "ph", "pytest", name="unit", run_id=run,
                             depends_on=["lint"])
    gates.transition_state(lint["gate_id"], "RUNNING")
    gates.transition_state(lint["gate_id"], "FAILED", exit_code=1, stdout="E501 <long>")
    with client(db) as http:
        page = http.get(f"/runs/{run}")
    shape = check_page(page)
    html = page.text
    assert html.count('class="bar state-') == 2
    assert 'class="bar state-succeeded retry"' in html and 'data-attempt="2"' in html
    assert "-old" in html and "+new" in html and 'class="gi"' in html  # highlighted
    assert "touches &lt;README.md&gt;" in html
    assert html.index(f'data-gate-id="{lint["gate_id"]}"') < html.index(
        f'data-gate-id="{unit["gate_id"]}"')
    assert "E501 &lt;long&gt;" in html and "line one\nline two" in html
    assert f'data-stream="/stream/runs/{run}"' in html  # open: live
    assert any("touches <README.md>" in t for t in shape.text)
    db.transition_run(run, "succeeded")
    with client(db) as http:
        assert 'data-stream="' not in http.get(f"/runs/{run}").text  # finished: not live


# -- the timeline's geometry -------------------------------------------------------------

stamps = st.one_of(st.none(), st.just("garbage"), st.integers(0, 10_000).map(
    lambda s: (datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=s)).isoformat()))


@given(st.lists(st.fixed_dictionaries({
    "step_attempt_id": st.text(max_size=5), "sequence": st.one_of(st.integers(1, 5),
                                                                   st.none(), st.text()),
    "attempt": st.one_of(st.integers(1, 3), st.none()), "tool_id": st.text(max_size=5),
    "state": st.sampled_from(["running", "succeeded", "failed", "<x>"]),
    "started_at": stamps, "ended_at": stamps}), max_size=30))
def test_the_timeline_draws_every_attempt_inside_the_chart(steps):
    now = datetime(2026, 1, 1, 4, tzinfo=timezone.utc)
    timeline = layout(steps, now)
    assert len(timeline.bars) == min(len(steps), MAX_ROWS)
    for bar in timeline.bars:
        if bar.x is not None:
            assert LABEL_WIDTH - 1e-6 <= bar.x <= WIDTH + 1e-6
            assert bar.x + bar.width <= WIDTH + 2.0 + 1e-6 and bar.width >= 2.0
        if isinstance(bar.attempt, int) and bar.attempt > 1:
            assert bar.retry
    ys = [bar.y for bar in timeline.bars]
    assert ys == sorted(ys) and len(set(ys)) == len(ys)


# -- the guard ---------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["evil.example", "127.0.0.1.nip.io", "localhost.evil",
                                  "", "127.0.0.1:80:80", "[::1", "10.0.0.1"])
def test_a_foreign_host_header_is_refused(in_memory_db, host):
    with client(in_memory_db) as http:
        response = http.get("/runs", headers={"host": host})
    assert response.status_code == 400 and "DNS rebinding" in response.text
    assert response.headers["content-security-policy"] == CSP


@pytest.mark.parametrize("host", ["127.0.0.1:8765", "localhost:8765", "LOCALHOST",
                                  "[::1]:8765", "127.0.0.1"])
def test_the_bound_names_are_answered(in_memory_db, host):
    with client(in_memory_db) as http:
        assert http.get("/healthz", headers={"host": host}).status_code == 200


def test_allowed_names_and_wildcard_binds(in_memory_db):
    with client(in_memory_db, host="127.0.0.1", allow_hosts=("uet.internal",)) as http:
        assert http.get("/healthz", headers={"host": "uet.internal:443"}).status_code == 200
    with client(in_memory_db, host="0.0.0.0", token="t" * 20) as http:
        response = http.get("/healthz", headers={"host": "192.0.2.7:8765",
                                                 "authorization": "Bearer " + "t" * 20})
        assert response.status_code == 200  # an address literal cannot be rebound
        assert http.get("/healthz", headers={"host": "evil.example"}).status_code == 400


@given(st.text(max_size=30))
def test_host_parsing_never_raises(header):
    result = host_of(header)
    assert result is None or isinstance(result, str)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE",
                                    "CONNECT", "PROPFIND"])
@pytest.mark.parametrize("path", ["/runs", "/api/runs", "/nowhere", "/static/live.js"])
def test_every_method_but_get_and_head_is_refused(in_memory_db, method, path):
    with client(in_memory_db) as http:
        response = http.request(method, path)
    assert response.status_code == 405 and response.headers["allow"] == "GET, HEAD"


def test_head_is_answered_without_a_body(in_memory_db):
    with client(in_memory_db) as http:
        response = http.head("/runs")
    assert response.status_code == 200 and response.content == b""


TOKEN = "s3cret-token-0123456789"


def test_the_token_is_asked_for_set_as_a_cookie_and_taken_out_of_the_address(in_memory_db):
    with client(in_memory_db, token=TOKEN) as http:
        for path in ("/runs", "/api/runs", "/static/uet.css", "/healthz", "/nowhere"):
            refused = http.get(path)
            assert refused.status_code == 401 and TOKEN not in refused.text
        assert http.get("/runs?token=wrong-token-0123456789").status_code == 401
        assert http.get("/runs", headers={"authorization": "Bearer nope"}).status_code == 401
        signed = http.get("/runs?project=a%20b&token=" + TOKEN + "&state=failed")
        assert signed.status_code == 303
        target = urlsplit(signed.headers["location"])
        assert target.path == "/runs" and "token" not in parse_qs(target.query)
        assert parse_qs(target.query) == {"project": ["a b"], "state": ["failed"]}
        cookie = signed.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert http.get(signed.headers["location"]).status_code == 200  # the cookie
        assert http.get("/api/runs").status_code == 200
    with client(in_memory_db, token=TOKEN) as http:
        assert http.get("/api/runs", headers={"authorization": f"Bearer {TOKEN}"}
                        ).status_code == 200
        assert http.get("/api/runs", headers={"cookie": f"uet_token={TOKEN}x"}
                        ).status_code == 401


# -- `uet web`, the command ----------------------------------------------------------------

def _uet(*args, env=None, timeout=60):
    from test_cli import UET, uet_env
    return subprocess.run([UET, *args], env={**uet_env(), **(env or {})},
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_another_address_needs_a_token_and_a_token_must_be_strong(db_path):
    init_db(db_path).close()
    refused = _uet("web", "--db", db_path, "--host", "0.0.0.0")
    assert refused.returncode == 2 and "--token" in refused.stderr
    weak = _uet("web", "--db", db_path, "--token", "short")
    assert weak.returncode == 2 and "16 to 256" in weak.stderr
    missing = _uet("web", "--db", db_path + ".nope")
    assert missing.returncode == 1 and "no ledger" in missing.stderr


def test_a_port_in_use_is_one_clear_error(db_path):
    init_db(db_path).close()
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        busy = _uet("web", "--db", db_path, "--port", str(holder.getsockname()[1]))
    finally:
        holder.close()
    assert busy.returncode == 1 and "cannot listen" in busy.stderr
    assert "Traceback" not in busy.stderr


def _get(url: str, **headers) -> httpx.Response:
    with httpx.Client(trust_env=False, timeout=20) as http:
        return http.get(url, headers=headers)


def test_the_server_answers_logs_without_queries_and_stops_on_ctrl_c(web, db_path):
    init_db(db_path).close()
    server = web(db_path, "--token", TOKEN, "--interval", "0.05")
    assert server.stdout_lines[1] == f"open {server.url}?token={TOKEN}"
    assert _get(server.url + "healthz").status_code == 401
    assert _get(server.url + f"runs?token={TOKEN}").status_code == 303
    ok = _get(server.url + "api/runs", authorization=f"Bearer {TOKEN}")
    assert ok.status_code == 200 and ok.json()["runs"] == []
    assert _get(server.url + "runs", host="evil.example").status_code == 400
    with httpx.Client(trust_env=False) as http:
        assert http.post(server.url + "runs").status_code == 405
    # an open live stream does not keep the server from stopping
    stream = socket.create_connection(("127.0.0.1", server.port))
    stream.sendall(f"GET /stream HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
                   f"{TOKEN}\r\n\r\n".encode())
    assert b"text/event-stream" in stream.recv(4096)
    started = time.monotonic()
    code, _, stderr = server.stop()
    stream.close()
    assert code == 0, stderr
    assert time.monotonic() - started < 15
    assert "GET /runs 303" in stderr and "GET /runs 400" in stderr
    assert TOKEN not in stderr and "Traceback" not in stderr


def test_a_postgresql_password_appears_nowhere(web, postgres_url, tmp_path):
    secret = "Pw-never-shown-42"
    scheme, rest = postgres_url.split("://", 1)
    user, at_host = rest.split("@", 1)
    url = f"{scheme}://{user}:{secret}@{at_host}"  # the test server trusts: any password
    with init_db(url) as db:
        run = db.create_run({"project_id": "p", "phase_id": "ph"})
    server = web(url)
    bodies = [_get(server.url + path).text for path in
              ("runs", f"runs/{run}", "workers", "patches", "gates", "healthz", "api/runs",
               f"api/runs/{run}", "runs/NOPE", "runs?state=x", "api/runs?since=x")]
    code, rest_out, stderr = server.stop()
    everything = "\n".join([*bodies, *server.stdout_lines, rest_out, stderr])
    assert secret not in everything
    assert "***" in server.stdout_lines[0]  # the ledger is named, without its password
    assert code == 0


# -- live streams ------------------------------------------------------------------------

class Stream:
    """A reader of one Server-Sent Events response, on a thread: its messages as dicts."""

    def __init__(self, url: str, **headers) -> None:
        self.messages: list[dict] = []
        self.closed = threading.Event()
        self.ready = threading.Event()
        self._client = httpx.Client(trust_env=False, timeout=httpx.Timeout(60, read=60))
        self._thread = threading.Thread(target=self._read, args=(url, headers), daemon=True)
        self._thread.start()
        assert self.ready.wait(20), "the stream did not open"

    def _read(self, url, headers) -> None:
        try:
            with self._client.stream("GET", url, headers=headers) as response:
                self.status = response.status_code
                self.ready.set()
                message: dict = {}
                for line in response.iter_lines():
                    if not line:
                        if message:
                            self.messages.append(message)
                        message = {}
                    elif not line.startswith(":"):
                        key, _, value = line.partition(":")
                        message[key] = value[1:] if value.startswith(" ") else value
        except httpx.HTTPError:
            pass
        finally:
            self._client.close()
            self.ready.set()
            self.closed.set()

    def wait_for(self, predicate, timeout: float = 20.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [m for m in self.messages if predicate(m)]
            if found:
                return found
            time.sleep(0.02)
        raise AssertionError(f"no such message in {self.messages!r}")

    def close(self) -> None:
        self._client.close()


WRITER = """
import sys
from uet.state import Database
db = Database(sys.argv[1])
run = sys.argv[2]
step = db.create_step_attempt({"run_id": run, "sequence": 2, "tool_id": "<b>tool</b>"})
db.create_event({"run_id": run, "event_type": "x.note", "data": {"say": "<script>1</script>"}})
print(step)
"""


def test_a_run_stream_carries_what_another_process_commits_then_ends(web, ledger):
    with init_db(ledger) as db:
        run = db.create_run({"project_id": "p", "phase_id": "ph", "state": "running"})
        other = db.create_run({"project_id": "p", "phase_id": "ph", "state": "running"})
        first_seq = db.latest_event_seq()
    server = web(ledger, "--interval", "0.05")
    stream = Stream(server.url + f"stream/runs/{run}?after={first_seq}")
    whole = Stream(server.url + "stream")
    try:
        assert stream.status == 200
        out = subprocess.run([sys.executable, "-c", WRITER, ledger, run], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        note = stream.wait_for(lambda m: "x.note" in m.get("data", ""))[0]
        assert note["event"] == "ledger" and int(note["id"]) > first_seq
        assert json.loads(note["data"])["data"] == '{"say": "<script>1</script>"}'
        with Database(ledger) as db:
            db.create_event({"run_id": other, "event_type": "y.other", "data": {}})
            db.transition_run(run, "succeeded")
            expected = [e["seq"] for e in db.events_since(first_seq, run_id=run)]
        assert stream.closed.wait(20), "the stream of a finished run ended"
        ids = [int(m["id"]) for m in stream.messages if m.get("event") == "ledger"]
        assert ids == expected  # every event of the run, once, in order; no other run's
        assert stream.messages[-1]["event"] == "end"
        whole.wait_for(lambda m: "y.other" in m.get("data", ""))
        # a reconnecting browser sends Last-Event-ID: it gets exactly what followed
        again = Stream(server.url + f"stream/runs/{run}", **{"last-event-id": str(ids[0])})
        assert again.closed.wait(20)
        assert [int(m["id"]) for m in again.messages if "id" in m] == ids[1:]
    finally:
        stream.close()
        whole.close()


def test_the_stream_of_a_finished_or_unknown_run_ends_at_once(web, db_path):
    with init_db(db_path) as db:
        run = db.create_run({"project_id": "p", "phase_id": "ph", "state": "running"})
        db.transition_run(run, "failed")
    server = web(db_path)
    done = Stream(server.url + f"stream/runs/{run}?after=999999")
    assert done.closed.wait(20) and done.messages[-1]["event"] == "end"
    assert _get(server.url + "stream/runs/NOPE").status_code == 404


def test_workers_page_marks_stale_workers(file_db):
    workers = WorkerLifecycle(file_db)
    host = socket.gethostname()
    workers.spawn_worker("w-live", "pool", {"host": host, "pid": os.getpid(),
                                           "heartbeat_s": 600})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    workers.spawn_worker("w-gone", "pool", {"host": host, "pid": dead.pid,
                                           "heartbeat_s": 600})
    with client(file_db) as http:
        page = http.get("/workers")
        api = {w["worker_id"]: w for w in http.get("/api/workers").json()}
    check_page(page)
    assert api["w-live"]["stale"] is False and api["w-gone"]["stale"] is True
    assert '<tr data-worker-id="w-gone" data-state="SPAWNING" class="stale">' in page.text
    assert '<tr data-worker-id="w-live" data-state="SPAWNING">' in page.text

"""The dashboard's pages, their `/api/…` JSON mirrors and the live streams: a Starlette
application over one open (read-only) `Database`.

Pages are rendered on the server by Jinja templates that escape every value (autoescape),
and every value passes one rule on its way out (`_shown`: the clipping and escaping of
`uet.text`, the command line's own rule), so a lone surrogate, a terminal escape or a 10 MB
string in any field renders as inert, bounded text. The JSON mirrors are the documents the
command line prints with `--json` (`uet.state.views`).

Live updates are Server-Sent Events: `/stream` (the whole trail) and `/stream/runs/{id}`
(one run's events, ending when the run finishes). Each stream reads the trail by cursor
(`events_since`), so no event is skipped or repeated; a reconnecting browser resumes from
`Last-Event-ID`. The small script that listens (`static/live.js`) refreshes the page's live
sections from the server's own HTML and appends events as text, never as markup.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import anyio
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup, escape
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from uet import __version__
from uet.errors import NotFoundError, UetError, ValidationError
from uet.state import Database, GateLedger, PatchLedger
from uet.state.machines import MACHINES
from uet.state.names import display_name, redact
from uet.state.views import (owners_lost, run_document, seconds_between, since_timestamp,
                             workers_document)
from uet.text import FIELD_LIMIT, cell, clip, log_text, to_json, usage_line
from uet.web.guard import Guard
from uet.web.timeline import layout

LOG = logging.getLogger("uet.web")
HERE = Path(__file__).resolve().parent
PAGE_SIZE, MAX_PAGE_SIZE = 50, 500
COUNT_CAP = 10_000        # counts per state stop here ("10,000+"): bounded at any size
EVENTS_SHOWN = 1_000      # the run page's trail shows the newest events; /api has them all
LIST_LIMIT = 500          # patches and gates pages
DIFF_LIMIT = 200_000      # characters of a diff shown (the API has it whole)
TAIL_LIMIT = 8_192        # characters of kept output shown per stream
FINISHED = tuple(s for s in MACHINES["run"].states
                 if s not in ("pending", "running"))
RUN_FILTERS = (("project", "project_id"), ("phase", "phase_id"),
               ("workstream", "workstream_id"))


# -- showing values --------------------------------------------------------------------

def _shown(value: Any) -> Any:
    """Jinja's finalize: every `{{ value }}` that is not already markup becomes one safe,
    clipped line of text (then autoescaped); None shows as nothing."""
    if isinstance(value, Markup):
        return value
    if value is None:
        return ""
    return cell(value, FIELD_LIMIT)


def _block(value: Any, limit: int = TAIL_LIMIT) -> Markup:
    """Text kept with its lines (output tails, gate output), escaped as markup: the end
    kept when clipped, unsafe characters written as escapes."""
    if not isinstance(value, str):
        return Markup("") if value is None else escape(cell(value, limit))
    if len(value) > limit:
        value = f"…({len(value) - limit:,} chars before)…\n" + value[-limit:]
    return escape(log_text(value))


def _seconds(value: Any) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
        return ""
    if value < 120:
        return f"{value:.2f}s"
    return f"{value / 60:.1f}m" if value < 7200 else f"{value / 3600:.1f}h"


def _css_token(value: Any) -> str:
    """A state as part of a CSS class name: letters, digits, '-' and '_' only."""
    text = str(value)
    return "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "_"
                   for c in text[:40]) or "_"


def _url(base: str, *segments: Any, **query: Any) -> Markup:
    """A link to one of our pages: `base` (ours), then each stored value as one
    percent-encoded path segment, then the query values percent-encoded — so that a stored
    value can never become a `javascript:` URL or leave the dashboard —, escaped for the
    attribute."""
    from urllib.parse import quote, urlencode
    target = base + "".join(
        "/" + quote(str(s).encode("utf-8", "surrogatepass"), safe="") for s in segments)
    given = [(k, str(v).encode("utf-8", "surrogatepass")) for k, v in query.items()
             if v not in (None, "")]
    if given:
        target += "?" + urlencode(given)
    return Markup(escape(target))


def run_url(run_id: Any) -> Markup:
    """The link to a run's page (`/runs/<id>`, the id one percent-encoded segment), escaped
    for an attribute; a filter and a global of the templates."""
    return _url("/runs", run_id)


def _diff_html(diff: Any) -> Markup:
    """A patch's diff, highlighted by Pygments (which escapes what it writes); clipped."""
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import DiffLexer
    text = diff if isinstance(diff, str) else cell(diff, DIFF_LIMIT)
    clipped = len(text) > DIFF_LIMIT
    text = log_text(clip(text, DIFF_LIMIT))
    html = highlight(text, DiffLexer(), HtmlFormatter(cssclass="diff", wrapcode=True))
    if clipped:
        html += str(escape(f"(the diff is {len(diff):,} characters: the rest is in the "
                           "JSON of this run)"))
    return Markup(html)


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(str(HERE / "templates")), autoescape=True,
                      finalize=_shown, undefined=StrictUndefined, trim_blocks=True,
                      lstrip_blocks=True)
    env.filters.update(block=_block, seconds=_seconds, css=_css_token, cell=cell,
                       run_url=run_url)
    env.globals.update(url=_url, run_url=run_url, version=__version__,
                       run_states=MACHINES["run"].states)
    return env


# -- the application -------------------------------------------------------------------

class Dashboard:
    """The routes' shared state: the ledger, the templates, how streams poll."""

    def __init__(self, db: Database, *, poll_interval: float = 0.25) -> None:
        self.db = db
        self.env = _environment()
        self.poll_interval = poll_interval
        self.ledger_name = display_name(db.db_path)
        self.secrets = _secrets_of(db.db_path)

    # -- responses ---------------------------------------------------------------------

    def html(self, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        """A page: `template` rendered with `values` (and the ledger's name)."""
        text = self.env.get_template(template).render(ledger_name=self.ledger_name,
                                                      **values)
        return HTMLResponse(text, status_code=status)

    @staticmethod
    def json(document: Any, status: int = 200) -> Response:
        """`document` as a JSON response, valid whatever it holds (`to_json`)."""
        return Response(to_json(document), status_code=status,
                        media_type="application/json")

    def scrub(self, text: str) -> str:
        """A message with the ledger's password (if its URL has one) taken out."""
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


def _secrets_of(db_path: str) -> list[str]:
    """The password parts of a PostgreSQL URL, as they may appear in a message."""
    from urllib.parse import unquote, urlsplit
    found = []
    try:
        password = urlsplit(db_path).password
    except ValueError:
        password = None
    if password:
        found += [password, unquote(password)]
    shown_name = redact(db_path) if "://" in db_path else db_path
    if shown_name != db_path:  # e.g. ?password=... parameters
        for part in db_path.replace("&", "?").split("?")[1:]:
            key, _, value = part.partition("=")
            if "password" in key.lower() and value:
                found += [value, unquote(value)]
    return sorted({s for s in found if len(s) >= 3}, key=len, reverse=True)


def page(handler: Callable[[Dashboard, Request], Response]
         ) -> Callable[[Request], Awaitable[Response]]:
    """A route: runs the (blocking) ledger reads in a worker thread; a bad filter is a
    400 page, an unknown record a 404, any other failure a 500 page — each one line a
    person can act on, with no password in it, and the JSON routes answer in JSON."""
    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        app: Dashboard = request.app.state.dashboard
        wants_json = request.url.path.startswith("/api/")
        try:
            return await anyio.to_thread.run_sync(handler, app, request)
        except (ValidationError, NotFoundError, UetError) as exc:
            status = (400 if isinstance(exc, ValidationError)
                      else 404 if isinstance(exc, NotFoundError) else 503)
            message = app.scrub(str(exc))
        except Exception as exc:  # noqa: BLE001 - any failure is a page, never a dropped connection
            LOG.error("%s failed: %s", request.url.path[:200],
                      app.scrub(f"{type(exc).__name__}: {exc}"))
            status, message = 500, ("the dashboard could not read this page from the ledger "
                                    f"({type(exc).__name__}); see the server's log")
        if wants_json:
            return app.json({"error": message, "status": status}, status)
        return app.html("error.html", status, title=f"error {status}", page="error",
                        code=status, message=message, stream=None)
    return endpoint


# -- runs ------------------------------------------------------------------------------

def _one(request: Request, name: str) -> str | None:
    values = request.query_params.getlist(name)
    value = values[-1].strip() if values else ""
    return value or None


def encode_cursor(row: dict[str, Any]) -> str:
    """The `before` cursor of the runs page that follows `row` (the last run shown): its
    created_at and run_id as URL-safe base64 of JSON, without padding."""
    raw = json.dumps([row["created_at"], row["run_id"]], ensure_ascii=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[str, str]:
    """The (created_at, run_id) of a cursor `encode_cursor` made; anything else raises
    ValidationError (a 400 page)."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        value = None
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, str) for v in value)):
        raise ValidationError("this page's `before` cursor is not one the dashboard made: "
                              "start again from the first page", field="before")
    return value[0], value[1]


def runs_query(request: Request) -> dict[str, Any]:
    """The runs page's filters and page position, checked."""
    filters = {column: value for name, column in RUN_FILTERS
               if (value := _one(request, name)) is not None}
    state = _one(request, "state")
    if state is not None:
        MACHINES["run"].check_state(state, "state")
    since_text = _one(request, "since")
    since = since_timestamp(since_text, selects="the runs created at or after it",
                            option="since")
    before_text = _one(request, "before")
    limit_text = _one(request, "limit")
    limit = (PAGE_SIZE if limit_text is None
             else int(limit_text) if limit_text.isascii() and limit_text.isdigit() else 0)
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValidationError(f"limit must be a whole number from 1 to {MAX_PAGE_SIZE}",
                              field="limit")
    return {"filters": filters, "state": state, "since_text": since_text, "since": since,
            "before_text": before_text,
            "before": None if before_text is None else decode_cursor(before_text),
            "limit": limit}


def runs_document(db: Database, query: dict[str, Any]) -> dict[str, Any]:
    """A page of runs (the rows `uet runs --json` prints), the cursor of the next page,
    and how many runs each state has under the same filters (each count stops at
    COUNT_CAP)."""
    filters = dict(query["filters"])
    if query["state"] is not None:
        filters["state"] = query["state"]
    rows = db.list_runs(filters, query["limit"] + 1, since=query["since"],
                        before=query["before"])
    more = len(rows) > query["limit"]
    rows = rows[:query["limit"]]
    counts = {state: db.count_runs({**query["filters"], "state": state},
                                   since=query["since"], cap=COUNT_CAP)
              for state in MACHINES["run"].states}
    return {"runs": rows, "next_before": encode_cursor(rows[-1]) if more else None,
            "counts": counts, "counts_capped_at": COUNT_CAP}


def _run_row(row: dict[str, Any], lost: dict[str, str]) -> dict[str, Any]:
    return {**row, "duration": _seconds(seconds_between(row.get("started_at"),
                                                        row.get("ended_at"))),
            "owner_lost": lost.get(row["run_id"])}


@page
def runs_page(app: Dashboard, request: Request) -> Response:
    """`/runs` and `/api/runs`: a page of runs under the query's filters (`runs_query`)
    with the counts per state; the HTML page follows the trail live."""
    query = runs_query(request)
    after = app.db.latest_event_seq()  # before the rows: no change in between is missed
    document = runs_document(app.db, query)
    if request.url.path.startswith("/api/"):
        return app.json(document)
    lost = owners_lost(app.db, document["runs"])
    keep = {name: _one(request, name) for name in
            ("project", "phase", "workstream", "state", "since", "limit")}
    return app.html(
        "runs.html", title="runs", page="runs", stream="/stream", after=after,
        rows=[_run_row(r, lost) for r in document["runs"]], counts=document["counts"],
        cap=COUNT_CAP, query=keep, deep=query["before"] is not None,
        older=(_url("/runs", **keep, before=document["next_before"])
               if document["next_before"] else None),
        newest=_url("/runs", **keep),
        api=_url("/api/runs", **keep, before=query["before_text"]))


# -- one run ---------------------------------------------------------------------------

def _ordered_gates(gates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Gates in dependency order (a gate after the gates it depends on, by name), ties and
    cycles in creation order."""
    by_name: dict[Any, list[dict[str, Any]]] = {}
    for gate in gates:
        by_name.setdefault(gate.get("name"), []).append(gate)
    placed: list[dict[str, Any]] = []
    done: set[int] = set()
    visiting: set[int] = set()

    def place(gate: dict[str, Any]) -> None:
        if id(gate) in done or id(gate) in visiting:
            return
        visiting.add(id(gate))
        deps = gate.get("depends_on")
        for name in deps if isinstance(deps, list) else []:
            for other in by_name.get(name, []) if isinstance(name, str) else []:
                place(other)
        visiting.discard(id(gate))
        done.add(id(gate))
        placed.append(gate)

    for gate in gates:
        place(gate)
    return placed


def _tails(step: dict[str, Any]) -> dict[str, str]:
    found = step.get("metadata")
    meta = found if isinstance(found, dict) else {}
    return {k: _block(meta[f"{k}_tail"]) for k in ("stdout", "stderr")
            if isinstance(meta.get(f"{k}_tail"), str) and meta.get(f"{k}_tail")}


def _patches_view(db: Database, patches: list[dict[str, Any]],
                  events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ledger = PatchLedger(db)
    shown = []
    for patch in patches:
        artifact = ledger.get_patch(patch["patch_id"])
        entries = []
        for entry in patch["entries"]:
            record = ledger.get_entry(entry["ledger_id"])
            history = record.state_history if record is not None else []
            entries.append({**entry, "quarantine_reason": getattr(record,
                                                                    "quarantine_reason", None),
                            "history": history if isinstance(history, list) else [],
                            "events": [e for e in events if isinstance(e.get("data"), dict)
                                       and e["data"].get("ledger_id") == entry["ledger_id"]]})
        diff = artifact.diff if artifact else ""
        shown.append({**patch, "entries": entries, "diff_html": _diff_html(diff),
                      "diff_small": isinstance(diff, str) and diff.count("\n") <= 80})
    return shown


@page
def run_page(app: Dashboard, request: Request) -> Response:
    """`/runs/{id}` and `/api/runs/{id}`: one run's document (`run_document`); the page
    adds its timeline, output tails, patches and gates, and follows the run while it is
    not finished. A prefix of an id redirects to the whole id."""
    db = app.db
    wanted = request.path_params["run_id"]
    run_id = db.resolve_run_id(wanted)
    api = request.url.path.startswith("/api/")
    if run_id != wanted:  # a prefix: the page's own address is the whole id
        return RedirectResponse(str(_url("/api/runs" if api else "/runs", run_id)).replace(
            "&amp;", "&"), status_code=307)
    document = run_document(db, run_id)
    if api:
        return app.json(document)
    run = document["run"]
    lost = owners_lost(db, [run])
    events = document["events"]
    shown_events = events[-EVENTS_SHOWN:]
    steps = [{**s, "duration": _seconds(seconds_between(s.get("started_at"),
                                                        s.get("ended_at"))),
              "tails": _tails(s)} for s in document["step_attempts"]]
    gates = [{**g, "stdout_tail": _block(g.get("stdout")),
              "stderr_tail": _block(g.get("stderr"))}
             for g in _ordered_gates(document["gates"])]
    is_open = run.get("state") not in FINISHED
    return app.html(
        "run.html", title=f"run {cell(run_id)}", page="run", run=_run_row(run, lost),
        usage=usage_line(document["usage"]) if "usage" in document else None,
        timeline=layout(document["step_attempts"], datetime.now(timezone.utc)),
        steps=steps, events=shown_events, events_left_out=len(events) - len(shown_events),
        patches=_patches_view(db, document["patches"], events), gates=gates,
        stream=_url("/stream/runs", run_id) if is_open else None,
        after=events[-1]["seq"] if events else 0, api=_url("/api/runs", run_id))


# -- workers, patches, gates -----------------------------------------------------------

@page
def workers_page(app: Dashboard, request: Request) -> Response:
    """`/workers` and `/api/workers`: every worker, or those in the query's `state`."""
    state = _one(request, "state")
    if state is not None:
        MACHINES["worker"].check_state(state, "state")
    after = app.db.latest_event_seq()
    rows = workers_document(app.db, state)
    if request.url.path.startswith("/api/"):
        return app.json(rows)
    return app.html("workers.html", title="workers", page="workers", rows=rows,
                    state=state, states=MACHINES["worker"].states, stream="/stream",
                    after=after, api=_url("/api/workers", state=state))


@page
def patches_page(app: Dashboard, request: Request) -> Response:
    """`/patches` and `/api/patches`: the patch ledger entries, optionally of one `state`
    and `phase`; the page shows the newest LIST_LIMIT (with each one's run and files), the
    API all of them."""
    state, phase = _one(request, "state"), _one(request, "phase")
    if state is not None:
        MACHINES["patch_entry"].check_state(state, "state")
    ledger = PatchLedger(app.db)
    after = app.db.latest_event_seq()
    entries = ledger.list_entries(state, phase)
    if request.url.path.startswith("/api/"):
        return app.json(entries)
    newest = entries[::-1][:LIST_LIMIT]
    rows = []
    for entry in newest:
        artifact = ledger.get_patch(entry.patch_id)
        rows.append({"entry": entry, "run_id": artifact.run_id if artifact else None,
                     "files": artifact.files if artifact else None})
    return app.html("patches.html", title="patches", page="patches", rows=rows,
                    left_out=len(entries) - len(newest), state=state, phase=phase,
                    states=MACHINES["patch_entry"].states, stream="/stream", after=after,
                    api=_url("/api/patches", state=state, phase=phase))


@page
def gates_page(app: Dashboard, request: Request) -> Response:
    """`/gates` and `/api/gates`: the test gates, optionally of one `state`, `phase` and
    `run` (an id or its prefix); the page shows the newest LIST_LIMIT, the API all of
    them."""
    state, phase, run = _one(request, "state"), _one(request, "phase"), _one(request, "run")
    if state is not None:
        MACHINES["gate"].check_state(state, "state")
    if run is not None:
        run = app.db.resolve_run_id(run)
    after = app.db.latest_event_seq()
    gates = GateLedger(app.db).list_gates(phase, state, run)
    if request.url.path.startswith("/api/"):
        return app.json(gates)
    newest = gates[::-1][:LIST_LIMIT]
    return app.html("gates.html", title="gates", page="gates", rows=newest,
                    left_out=len(gates) - len(newest), state=state, phase=phase, run=run,
                    states=MACHINES["gate"].states, stream="/stream", after=after,
                    api=_url("/api/gates", state=state, phase=phase, run=run))


@page
def healthz(app: Dashboard, request: Request) -> Response:
    """`/healthz`: the server answers and reads the ledger (its name, its schema version,
    uet's version), as JSON."""
    return app.json({"status": "ok", "ledger": app.ledger_name,
                     "schema_version": app.db.schema_version(), "version": __version__})


def pygments_css(request: Request) -> Response:
    """`/static/pygments.css`: the style sheet of the highlighted diffs (class `diff`)."""
    from pygments.formatter import Formatter
    from pygments.formatters import HtmlFormatter
    # typed as the base class, whose stub annotates get_style_defs (HtmlFormatter's does not)
    formatter: Formatter[str] = HtmlFormatter(style="default")
    return Response(formatter.get_style_defs(".diff"), media_type="text/css")


async def not_found(request: Request, exc: Exception) -> Response:
    """Any path the dashboard does not serve: its error page (JSON under /api/)."""
    app: Dashboard = request.app.state.dashboard
    message = "the dashboard has no such page"
    if request.url.path.startswith("/api/"):
        return app.json({"error": message, "status": 404}, 404)
    return app.html("error.html", 404, title="error 404", page="error", code=404,
                    message=message, stream=None)


async def home(request: Request) -> Response:
    """`/`: a redirect to the runs page."""
    return RedirectResponse("/runs", status_code=307)


# -- live ------------------------------------------------------------------------------

def _wire_event(event: dict[str, Any]) -> str:
    """An event as the browser gets it: what the trail shows, each value one safe clipped
    line (the script sets it as text)."""
    return to_json({"seq": event["seq"], "run_id": cell(event.get("run_id"), FIELD_LIMIT),
                    "timestamp": cell(event.get("timestamp"), FIELD_LIMIT),
                    "event_type": cell(event.get("event_type"), FIELD_LIMIT),
                    "data": cell(event.get("data"), FIELD_LIMIT)})


def _finishes(event: dict[str, Any]) -> bool:
    found = event.get("data")
    data = found if isinstance(found, dict) else {}
    return event.get("event_type") == "run.state_changed" and data.get("to") in FINISHED


def _start_cursor(request: Request, db: Database) -> int:
    for text in (request.headers.get("last-event-id"), request.query_params.get("after")):
        if text and text.strip().isdigit() and len(text.strip()) < 20:
            return int(text.strip())
    return db.latest_event_seq()


async def stream(request: Request) -> Response:
    """Server-Sent Events: each new event of the trail (or of one run) as it commits; one
    run's stream ends with an `end` message when the run finishes."""
    app: Dashboard = request.app.state.dashboard
    db = app.db
    run_id = request.path_params.get("run_id")
    try:
        if run_id is not None:
            run_id = await anyio.to_thread.run_sync(db.resolve_run_id, run_id)
        cursor = await anyio.to_thread.run_sync(_start_cursor, request, db)
    except UetError as exc:
        return Response(app.scrub(str(exc)), status_code=404 if isinstance(
            exc, NotFoundError) else 400, media_type="text/plain")

    shutdown = anyio.Event()  # set by sse-starlette when the server shuts down

    async def messages() -> AsyncIterator[dict[str, str]]:
        nonlocal cursor
        while not shutdown.is_set():
            batch = await anyio.to_thread.run_sync(
                functools.partial(db.events_since, cursor, run_id=run_id, limit=500))
            for event in batch:
                cursor = event["seq"]
                yield {"id": str(cursor), "event": "ledger", "data": _wire_event(event)}
                if run_id is not None and _finishes(event):
                    yield {"event": "end", "data": "finished"}
                    return
            if not batch:
                if run_id is not None:
                    run = await anyio.to_thread.run_sync(db.get_run, run_id)
                    if run is None or run.get("state") in FINISHED:
                        yield {"event": "end", "data": "finished"}
                        return
                with anyio.move_on_after(app.poll_interval):
                    await shutdown.wait()

    return EventSourceResponse(messages(), ping=15, send_timeout=30,
                               shutdown_event=shutdown, shutdown_grace_period=1.0,
                               headers={"cache-control": "no-store"})


def create_app(db: Database, *, host: str = "127.0.0.1", token: str | None = None,
               allow_hosts: tuple[str, ...] = (), poll_interval: float = 0.25) -> Guard:
    """The dashboard over an open ledger `db`, behind its guard (`uet.web.guard`): the
    address it is served on (`host`, for the Host header check), its token (None: no
    token; required by `uet web` for any address that is not loopback), more names it may
    be reached by, and how often live streams read the trail (seconds)."""
    routes = [
        Route("/", home),
        Route("/runs", runs_page), Route("/api/runs", runs_page),
        # a run id may hold any character, "/" too: the rest of the path is the id
        Route("/runs/{run_id:path}", run_page), Route("/api/runs/{run_id:path}", run_page),
        Route("/stream/runs/{run_id:path}", stream),
        Route("/workers", workers_page), Route("/api/workers", workers_page),
        Route("/patches", patches_page), Route("/api/patches", patches_page),
        Route("/gates", gates_page), Route("/api/gates", gates_page),
        Route("/stream", stream),
        Route("/healthz", healthz),
        Route("/static/pygments.css", pygments_css),
        Mount("/static", app=StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={404: not_found})
    app.state.dashboard = Dashboard(db, poll_interval=poll_interval)
    return Guard(app, bound_host=host, token=token, allow_hosts=allow_hosts)

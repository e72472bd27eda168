"""Speed of the dashboard (`uet web`) at 1,000, 100,000 and 1,000,000 runs: page latency
over a keep-alive connection, and the time from a commit to its live update on a run's
event stream.

    .venv/bin/python bench/bench_web.py [--sizes 1k 100k 1M] [--quick] [--requests 200]
        [--deep 5] [--live 20] [--cache DIR] [--web-args "--interval 0.1"]

For each size a ledger is built by bench/build_ledger.py (3 step sequences and at most 4
events per run, spread over a year; built into a temporary folder, or kept and reused in
`--cache DIR`), then `uet web --db LEDGER --port PORT --host 127.0.0.1` is started as a
subprocess (`python -m uet`, the running interpreter) and, once it printed its URL, timed
with http.client over one keep-alive connection, after a warm-up:

1. pages: the runs page (`GET /runs`, newest first), a deep page (the page reached by
   following the `<a id="older">` link `--deep` times from the first one), a run page
   (`GET /runs/{id}` of the run in the middle of the ledger) and their JSON twins
   (`/api/runs`, `/api/runs/{id}`); `--requests` of each, the kinds interleaved so that
   noise hits them all alike; p50 / p95 in ms. The pages are checked against the ledger:
   each page of the chain must list exactly the runs `Database.list_runs(limit=50,
   before=...)` gives, and the run page must name its run. With them: the runs page
   filtered by a workstream (it must list that workstream's newest runs), and by one that
   matches no run (the page whose counts once read every run: migration 0005 indexes both).
2. live updates: a run created `running` through the API (`Database.create_run`) is
   followed on `GET /stream/runs/{id}` (Server-Sent Events); then, `--live` times, after a
   random pause, the bench commits an event for it (`create_event`, or `create_step_attempt`
   whose `step_attempt.created` event is the update) and measures the time from the
   commit's return to the arrival of the SSE message whose `id:` is that event's seq.

Prints, per size, the figures, then a table over the sizes with the ratio of the largest
size's p50 to the smallest's (the target is <= 3x from 1k to 1M), and a one-line summary.
It measures and asserts nothing on time; it exits 1 when a page was wrong, a request
failed, an update never arrived or the server would not start. The server is always
stopped at the end.
"""

from __future__ import annotations

import argparse
import html
import http.client
import json
import os
import queue
import random
import re
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urljoin, urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from build_ledger import build  # noqa: E402
from uet.state import Database  # noqa: E402

HOST = "127.0.0.1"
PAGE_SIZE = 50               # runs per page of /runs (the dashboard's contract)
START_TIMEOUT_S = 180        # a server that has not printed its URL by then is broken
REQUEST_TIMEOUT_S = 60
LIVE_TIMEOUT_S = 10          # an update that has not arrived by then is lost
WARMUP = 10                  # requests of each kind before timing
ULID = r"[0-9A-HJKMNP-TV-Z]{26}"
OLDER_LINK = re.compile(r"<a\b[^>]*\bid=[\"']older[\"'][^>]*>", re.IGNORECASE)
HREF = re.compile(r"\bhref=[\"']([^\"']*)[\"']", re.IGNORECASE)
RUN_LINK = re.compile(r"href=[\"'][^\"']*?/runs/(" + ULID + r")[\"'/?#]")


@dataclass
class Figures:
    """One ledger size: how it was built and served, the latency samples of each request
    kind, the live-update latencies, and what went wrong."""
    runs: int
    build_s: float | None = None      # None: reused from the cache
    start_s: float = 0.0
    rss_mb: float | None = None
    keep_alive: bool = True
    samples_ms: dict[str, list[float]] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)
    deep_page: int = 0                # the page number of the deep page
    live_ms: list[float] = field(default_factory=list)
    stream_open_ms: float | None = None
    problems: list[str] = field(default_factory=list)


def _size(text: str) -> int:
    """1k, 100k, 1M, 2500 -> a number of runs."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmM]?)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1k, 100k, 1M, 2500)")
    factor = {"": 1, "k": 1_000, "m": 1_000_000}[match.group(2).lower()]
    return int(float(match.group(1)) * factor)


def _label(runs: int) -> str:
    if runs >= 1_000_000 and runs % 1_000_000 == 0:
        return f"{runs // 1_000_000}M"
    if runs >= 1_000 and runs % 1_000 == 0:
        return f"{runs // 1_000}k"
    return str(runs)


def _percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# -- the server ---------------------------------------------------------------------------

class Server:
    """`uet web` on a ledger, as a subprocess in its own process group; its output is
    drained by a thread (kept for the report of a failure)."""

    def __init__(self, ledger: str, folder: Path, extra: list[str]) -> None:
        self.port = _free_port()
        self.url = f"http://{HOST}:{self.port}/"
        self.err_path = folder / f"web-{self.port}.err"
        env = dict(os.environ)
        env.pop("UET_DATABASE", None)
        self._err = open(self.err_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uet", "web", "--db", ledger, "--port", str(self.port),
             "--host", HOST, *extra],
            cwd=folder, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=self._err, start_new_session=True)
        self.out: list[str] = []
        self._listening = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if len(self.out) < 200:
                self.out.append(line)
            if self.url in line or self.url.rstrip("/") in line:
                self._listening.set()

    def wait_listening(self) -> float:
        """Seconds until the server printed its URL; raises RuntimeError if it died or
        took longer than START_TIMEOUT_S."""
        began = time.monotonic()
        while not self._listening.wait(0.05):
            if self.proc.poll() is not None:
                raise RuntimeError(f"uet web exited {self.proc.returncode} before "
                                   f"listening: {self.tail()}")
            if time.monotonic() - began > START_TIMEOUT_S:
                raise RuntimeError(f"uet web printed no {self.url} within "
                                   f"{START_TIMEOUT_S} s: {self.tail()}")
        return time.monotonic() - began

    def rss_mb(self) -> float | None:
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def tail(self) -> str:
        err = self.err_path.read_text(errors="replace") if self.err_path.exists() else ""
        return (" | ".join(self.out[-5:]) + " " + err.strip()[-800:]).strip() or "(no output)"

    def stop(self) -> None:
        """SIGTERM, then SIGKILL to its process group if it lingers."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout=10)
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self._err.close()


# -- requests -----------------------------------------------------------------------------

class Client:
    """One keep-alive HTTP connection (reopened when the server closes it; counted)."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT_S)
        self.connects = 0
        self.requests = 0

    def get(self, path: str, accept: str = "text/html") -> tuple[int, str, float]:
        """(status, body, milliseconds) of one GET, the body read to its end."""
        if self.conn.sock is None:
            self.connects += 1
        started = time.perf_counter()
        try:
            self.conn.request("GET", path, headers={"Accept": accept})
            response = self.conn.getresponse()
            body = response.read()
        except (http.client.HTTPException, OSError):
            self.conn.close()  # a stale keep-alive connection: one retry on a new one
            self.connects += 1
            started = time.perf_counter()
            self.conn.request("GET", path, headers={"Accept": accept})
            response = self.conn.getresponse()
            body = response.read()
        elapsed = (time.perf_counter() - started) * 1000
        self.requests += 1
        return response.status, body.decode("utf-8", "replace"), elapsed

    def close(self) -> None:
        self.conn.close()


def _older_href(page: str, current: str) -> str | None:
    """The path of the page the `<a id="older">` link of `page` points to."""
    tag = OLDER_LINK.search(page)
    if not tag:
        return None
    href = HREF.search(tag.group(0))
    if not href:
        return None
    target = urlsplit(urljoin(current, html.unescape(href.group(1))))
    return target.path + (f"?{target.query}" if target.query else "")


def _run_ids(page: str) -> list[str]:
    """The runs a page links to, in order, each once."""
    seen: dict[str, None] = {}
    for run_id in RUN_LINK.findall(page):
        seen.setdefault(run_id)
    return list(seen)


def _expected_pages(ledger: str, pages: int) -> list[list[str]]:
    """The run ids of the first `pages` pages, newest first, as uet's API pages them."""
    found = []
    with Database(ledger, read_only=True) as db:
        before = None
        for _ in range(pages):
            rows = db.list_runs(limit=PAGE_SIZE, before=before)
            found.append([r["run_id"] for r in rows])
            if len(rows) < PAGE_SIZE:
                break
            before = (rows[-1]["created_at"], rows[-1]["run_id"])
    return found


def _middle_run(ledger: str) -> tuple[str, str]:
    """The run in the middle of the ledger (by creation), and its workstream."""
    conn = sqlite3.connect(f"file:{quote(ledger)}?mode=ro", uri=True)
    try:
        total = conn.execute("SELECT count(*) FROM runs").fetchone()[0]
        return conn.execute("SELECT run_id, workstream_id FROM runs "
                            "ORDER BY created_at, run_id LIMIT 1 OFFSET ?",
                            (total // 2,)).fetchone()
    finally:
        conn.close()


def time_pages(figures: Figures, server: Server, ledger: str, requests: int,
               deep: int) -> None:
    """The page latencies of one size, after checking the pages against the ledger."""
    client = Client(server.port)
    try:
        expected = _expected_pages(ledger, deep + 1)
        status, body, _ = client.get("/healthz")
        if status != 200:
            figures.problems.append(f"/healthz answered {status}")
        # the first page, then `deep` older links; each checked against list_runs
        path, depth = "/runs", 0
        for k in range(deep + 1):
            status, body, _ = client.get(path)
            if status != 200:
                figures.problems.append(f"GET {path} answered {status}")
                break
            listed = _run_ids(body)
            wanted = expected[k] if k < len(expected) else []
            if listed != wanted:
                missing = [r for r in wanted if r not in listed]
                figures.problems.append(
                    f"page {k + 1} ({path}) lists {len(listed)} runs, {len(missing)} of the "
                    f"{len(wanted)} expected missing" + (
                        "" if listed == sorted(listed, reverse=True) else ", not newest first"))
            if k == deep:
                break
            older = _older_href(body, path)
            if older is None:
                if len(expected) > k + 1 and expected[k + 1]:
                    figures.problems.append(f"page {k + 1} ({path}) has no "
                                            "<a id=\"older\"> link")
                break
            path, depth = older, k + 1
        figures.deep_page = depth + 1
        middle, workstream = _middle_run(ledger)
        kinds = {"runs page": "/runs", "deep page": path, "run page": f"/runs/{middle}",
                 "api runs": "/api/runs", "api run": f"/api/runs/{middle}",
                 "workstream page": f"/runs?workstream={quote(workstream)}",
                 "no-match page": "/runs?workstream=no-such-workstream"}
        figures.paths = kinds
        status, body, _ = client.get(kinds["run page"])
        if status != 200 or middle not in body:
            figures.problems.append(f"run page of {middle}: status {status}, "
                                    f"{'names' if middle in body else 'does not name'} it")
        for name in ("api runs", "api run"):
            status, body, _ = client.get(kinds[name], accept="application/json")
            try:
                json.loads(body)
            except ValueError:
                figures.problems.append(f"GET {kinds[name]}: status {status}, not JSON")
        for _ in range(WARMUP):
            for name, target in kinds.items():
                client.get(target, "application/json" if name.startswith("api") else
                           "text/html")
        connects_before = client.connects
        samples: dict[str, list[float]] = {name: [] for name in kinds}
        for _ in range(requests):
            for name, target in kinds.items():
                status, _, ms = client.get(
                    target, "application/json" if name.startswith("api") else "text/html")
                if status != 200:
                    figures.problems.append(f"GET {target} answered {status}")
                    return
                samples[name].append(ms)
        target = kinds["workstream page"]
        status, body, _ = client.get(target)
        with Database(ledger, read_only=True) as db:
            wanted = [r["run_id"] for r in db.list_runs({"workstream_id": workstream},
                                                         limit=PAGE_SIZE)]
        if status == 200 and _run_ids(body) != wanted:
            figures.problems.append(f"{target} does not list the {len(wanted)} newest runs "
                                    "of the workstream")
        figures.samples_ms = samples
        figures.keep_alive = client.connects == connects_before
    finally:
        client.close()


# -- live updates -------------------------------------------------------------------------

class Stream:
    """A run's Server-Sent Events stream, read by a thread: each message (its `id:`,
    `event:` and `data:` fields) is queued with the moment it arrived."""

    def __init__(self, port: int, run_id: str) -> None:
        self.messages: "queue.Queue[tuple[float, dict[str, str]]]" = queue.Queue()
        self.conn = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT_S)
        started = time.perf_counter()
        self.conn.request("GET", f"/stream/runs/{run_id}",
                          headers={"Accept": "text/event-stream", "Cache-Control": "no-cache"})
        self.response = self.conn.getresponse()
        self.open_ms = (time.perf_counter() - started) * 1000
        self.status = self.response.status
        self.content_type = self.response.getheader("Content-Type", "")
        self.error: str | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        if self.status == 200:
            self._reader.start()

    def _read(self) -> None:
        fields: dict[str, str] = {}
        try:
            while True:
                raw = self.response.readline()
                if not raw:
                    self.error = "the stream ended"
                    return
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if not line:
                    if fields:
                        self.messages.put((time.perf_counter(), fields))
                    fields = {}
                elif line.startswith(":"):
                    continue  # a comment (keep-alive ping)
                else:
                    name, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    fields[name] = (fields[name] + "\n" + value if name == "data"
                                    and name in fields else value)
        except (http.client.HTTPException, OSError, ValueError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"

    def wait_for(self, seq: int, timeout: float) -> float | None:
        """The arrival moment of the message whose id is `seq` (earlier ones are skipped);
        None if it has not come within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                arrived, fields = self.messages.get(timeout=left)
            except queue.Empty:
                return None
            if fields.get("id") == str(seq):
                return arrived

    def close(self) -> None:
        """End the stream: the reader sees the socket shut, then the connection closes."""
        sock = self.conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already gone
        if self._reader.is_alive():
            self._reader.join(timeout=5)
        self.conn.close()


def time_live(figures: Figures, server: Server, ledger: str, updates: int,
              rng: random.Random) -> None:
    """Commit-to-SSE latency of `updates` events of one running run."""
    with Database(ledger) as db:
        run_id = db.create_run({"project_id": "bench", "phase_id": "live",
                                "workstream_id": "WS-bench-live", "state": "running"})
        stream = None
        try:
            stream = Stream(server.port, run_id)
            figures.stream_open_ms = stream.open_ms
            if stream.status != 200 or "text/event-stream" not in stream.content_type:
                figures.problems.append(f"stream of {run_id}: status {stream.status}, "
                                        f"Content-Type {stream.content_type!r}")
                return
            # without Last-Event-ID the stream starts at the trail's end, read before its
            # headers are sent: from here on, every event of the run must come
            for k in range(updates):
                time.sleep(rng.uniform(0.05, 0.4))  # anywhere in the server's poll cycle
                if k % 2 == 0:
                    db.create_event({"run_id": run_id, "event_type": "bench.tick",
                                     "data": {"k": k}})
                else:
                    db.create_step_attempt({"run_id": run_id, "sequence": k,
                                            "tool_id": "bench"})
                committed = time.perf_counter()
                seq = db.list_events(run_id)[-1]["seq"]
                arrived = stream.wait_for(seq, LIVE_TIMEOUT_S)
                if arrived is None:
                    figures.problems.append(
                        f"live update {k + 1} (seq {seq}) did not arrive within "
                        f"{LIVE_TIMEOUT_S} s" + (f" ({stream.error})" if stream.error else ""))
                    if stream.error:
                        return
                    continue
                figures.live_ms.append(max(0.0, (arrived - committed) * 1000))
        finally:
            if stream is not None:
                stream.close()
            for step in db.list_step_attempts(run_id):
                if step["state"] == "running":
                    db.transition_step_attempt(step["step_attempt_id"], "succeeded",
                                               exit_code=0)
            db.transition_run(run_id, "succeeded", exit_code=0)


# -- one size -----------------------------------------------------------------------------

def measure(figures: Figures, folder: Path, cache: Path, args: argparse.Namespace,
            rng: random.Random) -> None:
    ledger = str(cache / f"web-{_label(figures.runs)}.db")
    if not os.path.exists(ledger):
        print(f"  building {figures.runs:,} runs ...", file=sys.stderr, flush=True)
        figures.build_s = build(ledger, figures.runs, seed=args.seed)["seconds"]
    server = Server(ledger, folder, shlex.split(args.web_args))
    try:
        figures.start_s = server.wait_listening()
        print(f"  {_label(figures.runs)}: server up in {figures.start_s:.1f} s, timing "
              "pages ...", file=sys.stderr, flush=True)
        time_pages(figures, server, ledger, args.requests, args.deep)
        figures.rss_mb = server.rss_mb()
        if args.live:
            print(f"  {_label(figures.runs)}: live updates ...", file=sys.stderr, flush=True)
            time_live(figures, server, ledger, args.live, rng)
    except (RuntimeError, OSError, http.client.HTTPException) as exc:
        figures.problems.append(f"{type(exc).__name__}: {exc}")
    finally:
        server.stop()
    if server.proc.returncode not in (0, -signal.SIGTERM) or "Traceback" in server.tail():
        figures.problems.append(f"uet web exited {server.proc.returncode}: "
                                f"{server.tail()[-400:]}")


KINDS = ("runs page", "deep page", "run page", "api runs", "api run", "workstream page",
         "no-match page")
TARGETED = KINDS[:3]  # the pages whose 1M/1k ratio has a target


def _p50(figures: Figures, kind: str) -> float:
    return _percentile(figures.samples_ms.get(kind, []), 0.5)


def report(results: list[Figures]) -> None:
    for f in results:
        built = ("reused" if f.build_s is None else f"built in {f.build_s:.1f} s")
        print(f"\n{f.runs:,} runs ({built}); server up in {f.start_s:.1f} s, "
              f"RSS {f.rss_mb or float('nan'):.0f} MB, keep-alive "
              f"{'yes' if f.keep_alive else 'NO (the server closed connections)'}")
        print(f"  {'request':<20} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'n':>5}  path")
        for name, values in f.samples_ms.items():
            label = f"deep page ({f.deep_page})" if name == "deep page" else name
            print(f"  {label:<20} {_percentile(values, 0.5):8.2f} "
                  f"{_percentile(values, 0.95):8.2f} {max(values):8.2f} {len(values):5}  "
                  f"{f.paths[name][:70]}")
        if f.live_ms or f.stream_open_ms is not None:
            print(f"  {'live update':<20} {_percentile(f.live_ms, 0.5):8.1f} "
                  f"{_percentile(f.live_ms, 0.95):8.1f} "
                  f"{max(f.live_ms or [float('nan')]):8.1f} {len(f.live_ms):5}  "
                  f"commit -> SSE message (stream opened in "
                  f"{f.stream_open_ms or float('nan'):.1f} ms)")
    measured = [f for f in results if f.samples_ms]
    if len(measured) >= 2:
        small, large = measured[0], measured[-1]
        print(f"\np50 ms by size, and {_label(large.runs)}/{_label(small.runs)} "
              "(target <= 3x for the three pages):")
        print(f"  {'request':<20} " + " ".join(f"{_label(f.runs):>8}" for f in measured)
              + f" {'ratio':>7}")
        for kind in KINDS:
            print(f"  {kind:<20} " + " ".join(f"{_p50(f, kind):8.2f}" for f in measured)
                  + f" {_p50(large, kind) / _p50(small, kind):6.2f}x")
        print(f"  {'live update':<20} " + " ".join(
            f"{_percentile(f.live_ms, 0.5):8.1f}" for f in measured))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=_size, nargs="+", default=None,
                        help="ledger sizes in runs (default 1k 100k 1M)")
    parser.add_argument("--quick", action="store_true",
                        help="1k and 10k runs, fewer requests (a smoke run)")
    parser.add_argument("--requests", type=int, default=None,
                        help="timed requests of each kind per size (default 200; quick 50)")
    parser.add_argument("--deep", type=int, default=5,
                        help="older links followed from the first page to the deep page")
    parser.add_argument("--live", type=int, default=20,
                        help="live updates timed per size (0: none)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="keep the built ledgers in this folder and reuse them")
    parser.add_argument("--web-args", default="",
                        help="more options for `uet web`, e.g. \"--interval 0.05\"")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sizes = args.sizes or ([1_000, 10_000] if args.quick else [1_000, 100_000, 1_000_000])
    if args.requests is None:
        args.requests = 50 if args.quick else 200
    rng = random.Random(args.seed)
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, python "
          f"{sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}; ledgers of "
          f"{', '.join(_label(s) for s in sizes)} runs (bench/build_ledger.py); "
          f"{args.requests} requests of each kind per size over one keep-alive connection "
          f"after {WARMUP} of warm-up; deep page = {args.deep} older links; "
          f"{args.live} live updates; uet web {args.web_args or '(default options)'}",
          flush=True)
    results = [Figures(size) for size in sorted(sizes)]
    with tempfile.TemporaryDirectory(prefix="uet-bench-web-") as tmp:
        folder = Path(tmp)
        cache = args.cache or folder
        cache.mkdir(parents=True, exist_ok=True)
        for figures in results:
            measure(figures, folder, cache, args, rng)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    report(results)
    problems = [f"{_label(f.runs)}: {p}" for f in results for p in f.problems]
    for problem in problems[:20]:
        print(f"  ! {problem}")
    measured = [f for f in results if f.samples_ms]
    labels = "/".join(_label(f.runs) for f in measured) or "none"
    pages = ", ".join(f"{kind} " + "/".join(f"{_p50(f, kind):.1f}" for f in measured) + " ms"
                      for kind in TARGETED) if measured else "no page measured"
    ratio = ""
    if len(measured) >= 2:
        small, large = measured[0], measured[-1]
        ratio = (f"; p50 ratio {_label(large.runs)}/{_label(small.runs)} " + "/".join(
            f"{_p50(large, kind) / _p50(small, kind):.2f}" for kind in TARGETED)
            + "x (target <= 3x)")
    live = "/".join(f"{_percentile(f.live_ms, 0.5):.0f}" for f in results if f.live_ms)
    print(f"WEB {labels} runs: p50 {pages}{ratio}; live update p50 {live or '-'} ms; "
          f"problems={len(problems)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

"""Fixtures of the dashboard's tests: a real `uet web` server in a subprocess (started on a
free port, stopped at the end) and, for the browser tests, headless Chromium driven by
Playwright.

The browser is the system's Chromium (Debian's `chromium` package; `.ci/run` installs it
when missing). Without it the browser tests are skipped with the reason — except in CI
(`CI=true`), where a missing browser is a failure: CI must run them.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--no-proxy-server",
                "--disable-quic"]
_URL_LINE = re.compile(r"at (http://\S+/)$")


def chromium_path() -> str | None:
    """The system's Chromium, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class WebServer:
    """A running `uet web`: its base URL (ends with '/'), the process, and what it wrote."""
    url: str
    process: subprocess.Popen
    stdout_lines: list[str]
    stderr_path: Path
    token: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def port(self) -> int:
        return int(self.url.rstrip("/").rsplit(":", 1)[1])

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> tuple[int, str, str]:
        """Stop it (SIGINT, as Ctrl-C); its exit code, the rest of its stdout, its stderr."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        rest = ""
        if self.process.stdout and not self.process.stdout.closed:
            rest = self.process.stdout.read()
            self.process.stdout.close()
        return self.process.returncode, rest, self.stderr()


def start_web(db: str, tmp_path: Path, *args: str, env: dict | None = None,
              cwd: Path | None = None, timeout: float = 30.0) -> WebServer:
    """Start `uet web --db DB --port 0 ARGS...` (in `cwd`) and wait for the line naming its
    URL."""
    stderr_path = tmp_path / f"web-{time.monotonic_ns()}.stderr"
    environment = {**os.environ, **(env or {})}
    for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
                  "ALL_PROXY"):
        environment.pop(proxy, None)
    with open(stderr_path, "w") as stderr:  # the child has its own copy
        process = subprocess.Popen(
            [sys.executable, "-m", "uet", "web", "--db", db, "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=stderr, text=True, env=environment, cwd=cwd)
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        match = _URL_LINE.search(lines[-1])
        if match:
            server = WebServer(match.group(1), process, lines, stderr_path)
            if "--token" in args:
                server.token = args[args.index("--token") + 1]
            if server.token is not None:  # the token link follows the URL line
                lines.append(process.stdout.readline().rstrip("\n"))
            _wait_listening(server)
            return server
    process.kill()
    process.wait()
    raise AssertionError(f"uet web did not start: {lines!r}\n"
                         f"{stderr_path.read_text(errors='replace')}")


def _wait_listening(server: WebServer) -> None:
    import socket
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("uet web printed its URL but does not accept connections")


@pytest.fixture
def web(tmp_path):
    """Start servers with `web(db, *args)`; every one is stopped at the end of the test."""
    started: list[WebServer] = []

    def start(db: str, *args: str, **kwargs) -> WebServer:
        server = start_web(db, tmp_path, *args, **kwargs)
        started.append(server)
        return server
    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium (the system's) through Playwright, for the whole session."""
    executable = chromium_path()
    if executable is None:
        if os.environ.get("CI") == "true":
            pytest.fail("no Chromium on this machine: CI must run the browser tests "
                        "(.ci/run installs Debian's chromium package)")
        pytest.skip("no Chromium on this machine (install Debian's chromium package to run "
                    "the browser tests)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=executable, args=BROWSER_ARGS)
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture
def page(browser):
    """A fresh browser page (its own context: no cookies from other tests). Dialogs
    (alert/confirm/prompt) are recorded in `page.dialogs` and dismissed; console errors in
    `page.console_errors`."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    tab.dialogs = []
    tab.console_errors = []
    tab.on("dialog", lambda dialog: (tab.dialogs.append(dialog.message), dialog.dismiss()))
    tab.on("console", lambda message: message.type == "error"
           and tab.console_errors.append(message.text))
    yield tab
    context.close()


@pytest.fixture
def screenshot():
    """`screenshot(page, name)` saves a screenshot as a test artefact
    (test-artifacts/web/NAME.png, git-ignored) and returns its path."""
    def save(tab, name: str, **options) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        tab.screenshot(path=str(path), **options)
        return path
    return save

"""A throwaway PostgreSQL server for the tests and benchmarks: started on demand, stopped
at the end, never touching a server of the machine.

`server_url()` is $UET_TEST_POSTGRES_URL when set (a server someone else runs), else the URL
of a private server started here: PostgreSQL's own programs (initdb, pg_ctl) from PATH or
`pg_config --bindir`, a temporary data directory, 127.0.0.1 on a free port. PostgreSQL
refuses to run as root, so as root the server runs as the unprivileged `postgres` user.

However the process that started a server ends (normally, by an exception, by SIGTERM or
SIGKILL), the server is stopped and its folder removed: a watchdog process, started with
the server in a session of its own, waits for the end of a pipe its starter holds and
cleans up when the pipe closes.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from typing import Any, Iterator

ENV_VAR = "UET_TEST_POSTGRES_URL"
SERVER_USER = "postgres"  # the system user the server runs as when we are root


class Unavailable(Exception):
    """No PostgreSQL server can be had here (the reason is the message)."""


def find_bindir() -> str:
    """The folder holding initdb and pg_ctl, or Unavailable saying why not."""
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return os.path.dirname(initdb)
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            bindir = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                    check=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            bindir = ""
        if bindir and os.path.exists(os.path.join(bindir, "initdb")):
            return bindir
    raise Unavailable("no PostgreSQL server programs (initdb, pg_ctl) on PATH or in "
                      "`pg_config --bindir`; install PostgreSQL's server package or set "
                      f"{ENV_VAR}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One private PostgreSQL server in a temporary data directory."""

    def __init__(self) -> None:
        self.bindir = find_bindir()
        self.folder = tempfile.mkdtemp(prefix="uet-pg-")
        self.data = os.path.join(self.folder, "data")
        self.port = 0
        self._options = ""
        self._watchdog: subprocess.Popen | None = None
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:
            import pwd
            try:
                entry = pwd.getpwnam(SERVER_USER)
            except KeyError:
                raise Unavailable(f"running as root and there is no {SERVER_USER!r} user to "
                                  "run PostgreSQL as (it refuses root)") from None
            os.chown(self.folder, entry.pw_uid, entry.pw_gid)
            self._as = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _run(self, *args: str) -> None:
        _run_program(self.bindir, self.folder, self._as, *args)

    def start(self, *, durable: bool = False) -> str:
        """Create the cluster, start the server; its URL (database `postgres`, user `uet`).

        Not `durable` (for tests): no fsync, asynchronous commit. `durable` keeps the
        server's own defaults, as a real ledger's server would run (for benchmarks)."""
        self._watch()
        self._run("initdb", "-D", self.data, "-U", "uet", "--auth=trust", "-E", "UTF8",
                  "--no-sync")
        for attempt in range(5):
            self.port = _free_port()
            options = (f"-p {self.port} -c listen_addresses=127.0.0.1 "
                       f"-c unix_socket_directories={self.folder} -c max_connections=200")
            if not durable:  # for throwaway test data only, never for a real ledger
                options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            try:
                self._options = options
                self._run("pg_ctl", "-D", self.data, "-l", os.path.join(self.folder, "log"),
                          "-o", options, "-w", "-t", "60", "start")
                return self.url()
            except Unavailable:
                if attempt == 4:
                    raise
                time.sleep(0.2)
        raise AssertionError("unreachable")

    def halt(self) -> None:
        """Stop the server at once, as a crash or an outage would (its data is kept)."""
        self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")

    def resume(self) -> None:
        """Start a halted server again, on the same port with the same data."""
        self._run("pg_ctl", "-D", self.data, "-l", os.path.join(self.folder, "log"),
                  "-o", self._options, "-w", "-t", "60", "start")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://uet@127.0.0.1:{self.port}/{database}"

    def _watch(self) -> None:
        """Start the watchdog that stops the server and removes its folder once this process
        is gone, however it ends (its own session: a Ctrl-C to our group does not reach it)."""
        self._watchdog = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "watch", self.bindir, self.folder],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)

    def stop(self) -> None:
        try:
            _teardown(self.bindir, self.folder, self._as)
        finally:
            if self._watchdog is not None:  # nothing left for it to do: let it go
                self._watchdog.stdin.close()
                self._watchdog.wait(timeout=120)
                self._watchdog = None


def _run_program(bindir: str, folder: str, run_as: dict[str, Any], *args: str) -> None:
    result = subprocess.run([os.path.join(bindir, args[0]), *args[1:]], capture_output=True,
                            text=True, timeout=120, cwd=folder, **run_as)
    if result.returncode != 0:
        raise Unavailable(f"{args[0]} failed ({result.returncode}): "
                          f"{(result.stderr or result.stdout).strip()[-2000:]}")


def _teardown(bindir: str, folder: str, run_as: dict[str, Any]) -> None:
    """Stop the server of `folder` if it runs (its postmaster.pid says so), remove the
    folder. Safe to call twice."""
    data = os.path.join(folder, "data")
    try:
        if os.path.exists(os.path.join(data, "postmaster.pid")):
            _run_program(bindir, folder, run_as, "pg_ctl", "-D", data, "-m", "immediate",
                         "-w", "stop")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _watchdog_main(bindir: str, folder: str) -> None:
    """The watchdog: wait until the starter's end of the pipe closes, then clean up."""
    import signal
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)  # only the pipe's end tells us to go
    sys.stdin.buffer.read()
    if not os.path.isdir(folder):
        return
    stat = os.stat(folder)
    run_as: dict[str, Any] = {}
    if os.geteuid() == 0 and stat.st_uid != 0:
        run_as = {"user": stat.st_uid, "group": stat.st_gid, "extra_groups": []}
    try:
        _teardown(bindir, folder, run_as)
    except (Unavailable, OSError, subprocess.SubprocessError):
        shutil.rmtree(folder, ignore_errors=True)


def with_schema(url: str, schema: str) -> str:
    """The URL of a ledger kept in `schema` of the database at `url` (search_path)."""
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options=-csearch_path%3D{schema}"


@contextmanager
def schema(server_url: str, name: str) -> Iterator[str]:
    """A new, empty schema `name` (an identifier its caller made, never input) on the server:
    yields the URL of a ledger kept there, and drops the schema with everything in it
    afterwards."""
    import psycopg
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        conn.execute(f"CREATE SCHEMA {name}")
    try:
        yield with_schema(server_url, name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


if __name__ == "__main__":
    if sys.argv[1:2] != ["watch"] or len(sys.argv) != 4:
        sys.exit("usage: pgserver.py watch BINDIR FOLDER  (started by Server, not by hand)")
    _watchdog_main(sys.argv[2], sys.argv[3])

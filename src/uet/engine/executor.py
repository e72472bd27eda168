"""The step executor: run one command as a subprocess and record it in the ledger as a run
with one step attempt — exit code, duration, the tail of its output, and how it ended.

Output passes through live; cancellation (SIGINT, SIGTERM, SIGHUP, SIGQUIT, or `uet cancel`
from another shell) stops the command and records `canceled`; a timeout kills it and records
`failed`. Signals are caught from before the run is created until it is finished, so the
ledger never keeps a run `running` after this returns.

The process owns its run through a worker record (`uet.state.recovery.Owner`) that
heartbeats while the command runs. Were this process killed outright (SIGKILL), the command
dies with it (a parent-death signal set in the child), and the next reaper pass (any uet
process that writes to the ledger, or `uet recover`) fails the run and stops what the
command left in its process group.

The command may report what it used (model, tokens, cost) by writing JSON to the file named
by `$UET_USAGE_FILE` (`uet.engine.usage`): a fresh path in a private temporary folder,
removed afterwards; what it wrote is stored on the step attempt with its end.

Run inside a git work tree, the run's `metadata.git` records the git context: the commit
and branch, whether the work tree was dirty before and after, and what the command changed
in it (`uet.engine.git.CommandGitContext`: snapshots taken right before the command starts
and after it ends, however it ends; the user's index, stash and files are never written).
A problem with git is recorded there as `{"error": ...}`, never a reason to fail the run.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import IO, Any, BinaryIO, Callable

from uet.engine.git import GIT_CONTEXT_TIMEOUT_S, CommandGitContext
from uet.engine.usage import read_usage
from uet.errors import DatabaseBusyError, StorageError, UetError, ValidationError
from uet.state import Database
from uet.state.tables import RUNS, prepare_insert
from uet.state.recovery import (DEFAULT_HEARTBEAT_S, Owner, cancel_requested, process_start,
                                recover)

TAIL_BYTES = 8192
GRACE_SECONDS = 5.0
POLL_SECONDS = 0.05
# How long output may keep coming after the command itself ended: a background process it
# started can hold the pipes open for ever, and must not keep the run open with it.
DRAIN_SECONDS = 2.0
# How long the final write is retried (with backoff) while the ledger is out of reach.
FINISH_TIMEOUT = 60.0
CANCEL_POLL_SECONDS = 0.5  # how often the ledger is asked whether `uet cancel` was called
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
EXIT_CANCELED = 143  # canceled through the ledger (`uet cancel`): as by SIGTERM
EXIT_TIMEOUT = 124
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127
# Seconds each step of the git context (a snapshot, the diff) may take; 0 turns it off.
GIT_TIMEOUT_VAR = "UET_GIT_CONTEXT_TIMEOUT"
SQLITE_SIDE_FILES = ("", "-wal", "-shm", "-journal")  # a SQLite ledger's files on disk


@dataclass(frozen=True)
class CommandResult:
    """How a recorded command ended: its run and step attempt, the run's final `state`,
    the `exit_code` `uet run` exits with, the command's duration and the error recorded."""
    run_id: str
    step_attempt_id: str
    state: str            # the run's final state: succeeded, failed or canceled
    exit_code: int        # what `uet run` exits with (the command's own code when it ran)
    duration_sec: float
    error: str | None


class _Pump(threading.Thread):
    """Copies one of the child's streams to ours as it comes, keeping the last bytes."""

    def __init__(self, source: IO[bytes], sink: BinaryIO | None, keep: int,
                 on_broken_sink: Callable[[], None]) -> None:
        super().__init__(daemon=True)
        self.source, self.sink, self.keep = source, sink, keep
        self.on_broken_sink = on_broken_sink
        self.tail = bytearray()

    def run(self) -> None:
        fd = self.source.fileno()
        while chunk := os.read(fd, 65536):
            if self.sink is not None:
                try:
                    self.sink.write(chunk)
                    self.sink.flush()
                except BrokenPipeError:
                    self.sink = None  # whoever read our output is gone: so must the command
                    self.on_broken_sink()
                except (OSError, ValueError):
                    self.sink = None  # our output is unusable; keep recording
            self.tail += chunk
            if len(self.tail) > 2 * self.keep:
                del self.tail[:-self.keep]

    def text(self) -> str:
        tail = bytes(self.tail)  # one copy: the thread may still be appending
        # undecodable bytes and NUL (which a ledger cannot store) become U+FFFD
        return tail[-self.keep:].decode("utf-8", errors="replace").replace("\x00", "\ufffd")


class _Signals:
    """Catches SIGINT, SIGTERM, SIGHUP and SIGQUIT for the whole life of a recorded command:
    the first one asks the command to stop (forwarded to it), later ones change nothing."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.child: subprocess.Popen[bytes] | None = None
        self.own_group = False
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> "_Signals":
        # Python lets only the main thread set handlers; elsewhere the caller's own
        # handling applies (the command is still stopped on timeout).
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            self.previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, _frame: object) -> None:
        if self.received is None:
            self.received = signum
            if self.child is not None:
                # SIGHUP/SIGQUIT are asked of the command as SIGTERM: a hang-up of uet's
                # terminal is no reason for the command to dump core or keep running
                send(self.child, signum if signum in (signal.SIGINT, signal.SIGTERM)
                     else signal.SIGTERM, self.own_group)


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that makes the child receive SIGKILL when this process dies (Linux's
    parent-death signal); None where the platform has none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, not in the child
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    set_parent_death_signal = 1  # PR_SET_PDEATHSIG

    def preexec() -> None:
        prctl(set_parent_death_signal, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os.kill(os.getpid(), signal.SIGKILL)
    return preexec


def send(child: subprocess.Popen[bytes], signum: int, own_group: bool) -> None:
    """Signal the command (its whole process group when it has its own)."""
    try:
        if own_group:
            os.killpg(child.pid, signum)
        else:
            child.send_signal(signum)
    except ProcessLookupError:
        pass


def run_command(db: Database, argv: list[str], *, project_id: str, phase_id: str,
                workstream_id: str | None = None, tool_id: str | None = None,
                timeout: float | None = None, stdout: BinaryIO | None = None,
                stderr: BinaryIO | None = None, tail_bytes: int = TAIL_BYTES,
                heartbeat_s: float = DEFAULT_HEARTBEAT_S,
                finish_timeout: float = FINISH_TIMEOUT,
                git_timeout: float | None = None) -> CommandResult:
    """Run `argv`, recording it as a run with one step attempt; returns how it ended.

    The child's output is copied to `stdout`/`stderr` (default: this process's) while the
    last `tail_bytes` of each are kept in the step attempt (`metadata`, and stderr in
    `error_log`). SIGINT/SIGTERM/SIGHUP/SIGQUIT received meanwhile, or a `uet cancel` of the
    run, stop the command and record `canceled`. When standard input is not a terminal the
    command gets its own process group, so that stopping it stops what it started too; on a
    terminal it stays in the foreground group (interactive tools keep their keyboard) and
    only the command itself is signalled.

    The run is owned by this process (a `cli` worker heartbeating every `heartbeat_s`);
    one reaper pass runs first, failing runs whose owners are gone. The final write is
    retried for up to `finish_timeout` seconds while the ledger is out of reach.

    The command finds in `$UET_USAGE_FILE` the path of a file it may write its usage to
    (`uet.engine.usage.read_usage`); the valid values are stored in the step attempt's
    `model`, `input_tokens`, `output_tokens` and `cost_usd`, and a problem with the file
    in its `metadata.usage_error`.

    When the working directory is inside a git work tree, the run's `metadata.git` records
    its git context (`uet.engine.git.CommandGitContext`), each step of it (a snapshot, the
    diff) taking at most `git_timeout` seconds (default: $UET_GIT_CONTEXT_TIMEOUT, else
    GIT_CONTEXT_TIMEOUT_S; 0: no git context).
    """
    if not argv or not isinstance(argv[0], str) or not argv[0]:
        raise ValidationError("uet run needs a command to run", field="command")
    tool = tool_id or os.path.basename(argv[0].rstrip("/")) or argv[0]
    stdout = stdout if stdout is not None else getattr(sys.stdout, "buffer", None)
    stderr = stderr if stderr is not None else getattr(sys.stderr, "buffer", None)
    command_line = shlex.join(argv)
    owner = Owner(db, "cli", heartbeat_s=heartbeat_s)
    cwd = os.getcwd()
    run_data = {"project_id": project_id, "phase_id": phase_id, "workstream_id": workstream_id,
                "metadata": {"command": argv, "cwd": cwd, "uet_owner": owner.worker_id}}
    prepare_insert(RUNS, run_data)  # bad input is refused before anything is written
    with _Signals() as signals:
        recover(db)
        # the work tree as it is before the command starts: taken before this process owns
        # a run (whose owner's heartbeat only beats once the command runs), so that a slow
        # snapshot cannot get the run reaped
        git_context = _git_context(db, cwd, git_timeout)
        try:
            owner.register()
            try:
                run_id = db.create_run(run_data)
                owner.claim(run_id)
                try:
                    step_id = db.create_step_attempt({"run_id": run_id, "sequence": 1,
                                                      "tool_id": tool,
                                                      "metadata": {"command": argv}})
                except UetError:
                    db.transition_run(run_id, "canceled",
                                      error_message="could not record the step")
                    raise
                usage_dir, usage_error = _usage_folder()
                usage_file = None if usage_dir is None \
                    else os.path.join(usage_dir, "usage.json")
                git = None
                try:
                    started = time.monotonic()
                    state, code, error, outcome, pumps = _execute(
                        db, owner, run_id, step_id, argv, command_line, timeout, signals,
                        stdout, stderr, tail_bytes, usage_file)
                    duration = round(time.monotonic() - started, 6)
                    # the work tree once the command has ended, however it ended
                    if git_context is not None:
                        git = git_context.finish()
                    usage: dict[str, Any] = {}
                    if usage_file is not None:
                        usage, usage_error = read_usage(usage_file)
                finally:
                    if usage_dir is not None:
                        shutil.rmtree(usage_dir, ignore_errors=True)
                metadata: dict[str, Any] = {"command": argv, "duration_sec": duration}
                if usage_error is not None:
                    metadata["usage_error"] = usage_error
                error_log = error
                if pumps is not None:
                    metadata["stdout_tail"] = pumps[0].text()
                    metadata["stderr_tail"] = pumps[1].text()
                    error_log = "\n".join(p for p in (pumps[1].text(), error) if p) or None
                _finish(db, run_id, step_id, state, code, error, error_log, metadata, usage,
                        finish_timeout, git)
            except RunNotClosedError:
                owner.stop_heartbeat()  # the ledger is out of reach: the reaper retires it
                raise
            finally:
                try:
                    owner.close()
                except UetError:
                    pass  # the ledger is out of reach: the reaper retires the worker later
        finally:
            if git_context is not None:
                git_context.close()  # its temporary files, however the run ended
    return CommandResult(run_id, step_id, state, outcome, duration, error)


def _git_context(db: Database, folder: str,
                 timeout: float | None) -> CommandGitContext | None:
    """The git context of the command about to run in `folder` (None: not in a git work
    tree, or turned off); the ledger's own files, should they be in the work tree, are not
    part of it (uet writes them while the command runs)."""
    given = f"git_timeout={timeout!r}"
    if timeout is None:
        value = os.environ.get(GIT_TIMEOUT_VAR, "").strip()
        given = f"${GIT_TIMEOUT_VAR} is {value[:100]!r}"
        try:
            timeout = float(value) if value else GIT_CONTEXT_TIMEOUT_S
        except ValueError:
            timeout = -1.0
    if not 0 <= timeout < float("inf"):
        return CommandGitContext({"error": f"{given}, not a number of seconds (0 turns the "
                                           "git context off)"})
    if timeout == 0:
        return None
    ledger = db.db_path
    files = [os.path.abspath(ledger + suffix) for suffix in SQLITE_SIDE_FILES] \
        if db.engine == "sqlite" and os.path.isfile(ledger) else []
    return CommandGitContext.start(folder, exclude=files, timeout=timeout)


def _usage_folder() -> tuple[str | None, str | None]:
    """A fresh private folder (0700, in the system's temporary folder: not the command's
    working directory, so nothing of it is taken for the command's work) to hold
    `$UET_USAGE_FILE`; (None, why) when none can be made: the command then runs without."""
    try:
        return tempfile.mkdtemp(prefix="uet-usage-"), None
    except OSError as exc:
        return None, ("no $UET_USAGE_FILE was offered: no temporary folder could be made "
                      f"({exc.strerror or exc})")


Outcome = tuple[str, "int | None", "str | None", int, "tuple[_Pump, _Pump] | None"]


def _execute(db: Database, owner: Owner, run_id: str, step_id: str, argv: list[str],
             command_line: str, timeout: float | None, signals: _Signals,
             stdout: BinaryIO | None, stderr: BinaryIO | None, tail_bytes: int,
             usage_file: str | None) -> Outcome:
    """Run the command (with `$UET_USAGE_FILE` naming `usage_file`); (state, recorded exit
    code, error, uet's exit code, pumps)."""
    if signals.received is not None:
        name = signal.Signals(signals.received).name
        return "canceled", None, f"canceled by {name} before it started", \
            128 + signals.received, None
    own_group = not os.isatty(0)
    env = {k: v for k, v in os.environ.items() if k != "UET_USAGE_FILE"}
    if usage_file is not None:  # never an outer tool's file, inherited
        env["UET_USAGE_FILE"] = usage_file
    try:
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 env=env,
                                 process_group=0 if own_group else None,
                                 preexec_fn=_die_with_parent())
    except FileNotFoundError:
        return "failed", EXIT_NOT_FOUND, f"command not found: {argv[0]}", EXIT_NOT_FOUND, None
    except OSError as exc:
        message = f"cannot execute {argv[0]}: {exc.strerror or exc}"
        return "failed", EXIT_CANNOT_EXECUTE, message, EXIT_CANNOT_EXECUTE, None
    signals.child, signals.own_group = child, own_group
    # the command's process (and group) for the reaper, should this process die outright
    db.update_step_attempt(step_id, {"metadata": {
        "command": argv, "pid": child.pid, "pid_started": process_start(child.pid),
        "pgid": child.pid if own_group else None}})
    owner.start_heartbeat()  # only now: no thread of ours may hold a lock across the fork
    broken = threading.Event()
    assert child.stdout is not None and child.stderr is not None  # both are pipes
    pumps = (_Pump(child.stdout, stdout, tail_bytes, broken.set),
             _Pump(child.stderr, stderr, tail_bytes, broken.set))
    for pump in pumps:
        pump.start()
    deadline = None if timeout is None else time.monotonic() + timeout
    timed_out = False
    canceled_by = None  # why the ledger wants the command stopped, if it does
    next_poll = time.monotonic() + CANCEL_POLL_SECONDS
    seen = 0  # the run's events read so far, looking for a cancel request
    stop_by = None  # when the grace period of a stop request ends
    while child.poll() is None:
        now = time.monotonic()
        if canceled_by is None and now >= next_poll:
            next_poll = now + CANCEL_POLL_SECONDS
            if owner.lost:
                canceled_by = f"its owner was retired: {owner.lost}"
            else:
                canceled_by, seen = _asked_to_cancel(db, run_id, seen)
        if (signals.received is not None or timed_out or broken.is_set()
                or canceled_by is not None):
            if stop_by is None:
                stop_by = now + GRACE_SECONDS
                if canceled_by is not None and signals.received is None:
                    send(child, signal.SIGTERM, own_group)
                elif broken.is_set() and signals.received is None and not timed_out:
                    send(child, signal.SIGPIPE, own_group)  # as a shell pipeline would
                elif timed_out:
                    send(child, signal.SIGTERM, own_group)
            elif now > stop_by:
                send(child, signal.SIGKILL, own_group)
        elif deadline is not None and now >= deadline:
            timed_out = True
            continue
        try:
            child.wait(POLL_SECONDS)
        except subprocess.TimeoutExpired:
            pass
    if own_group:  # what the command left behind in its group goes with it
        send(child, signal.SIGKILL, True)
    _drain(pumps)
    code = child.returncode
    if signals.received is not None:
        name = signal.Signals(signals.received).name
        return "canceled", None, f"canceled by {name}: {command_line}", \
            128 + signals.received, pumps
    if canceled_by is not None:
        return "canceled", None, f"canceled ({canceled_by}): {command_line}", \
            EXIT_CANCELED, pumps
    if timed_out:
        return "failed", EXIT_TIMEOUT, f"timed out after {timeout:g} s: {command_line}", \
            EXIT_TIMEOUT, pumps
    if code == 0:
        return "succeeded", 0, None, 0, pumps
    if code < 0:  # killed by a signal: report it the way shells do
        name = signal.Signals(-code).name
        return "failed", 128 - code, f"killed by {name}: {command_line}", 128 - code, pumps
    return "failed", code, f"exited with {code}: {command_line}", code, pumps


def _asked_to_cancel(db: Database, run_id: str, seen: int) -> tuple[str | None, int]:
    """Why the ledger asks for the run to stop (`uet cancel`), or None, and the events read;
    a ledger out of reach asks nothing (the command goes on; the final write retries)."""
    try:
        return cancel_requested(db, run_id, seen)
    except UetError:
        return None, seen


class RunNotClosedError(UetError):
    """The run's end could not be written within the finish timeout."""


def _finish(db: Database, run_id: str, step_id: str, state: str, code: int | None,
            error: str | None, error_log: str | None, metadata: dict[str, Any],
            usage: dict[str, Any], finish_timeout: float,
            git: dict[str, Any] | None = None) -> None:
    """Record the end (with the `usage` columns the command reported, and the `git`
    context in the run's metadata when given), retrying with backoff while the ledger is
    busy or out of reach: a run must not stay running. Past `finish_timeout`,
    RunNotClosedError (the reaper fails the run once the ledger is reachable again)."""
    deadline = time.monotonic() + finish_timeout
    pause = 0.1
    while True:
        try:
            with db.atomic():  # the step and its run end in one commit
                step = db.get_step_attempt(step_id)
                if step is not None and step["state"] == "running":
                    db.update_step_attempt(step_id, {**usage, "state": state,
                                                     "exit_code": code,
                                                     "error_log": error_log,
                                                     "metadata": metadata})
                run = db.get_run(run_id)
                if run is not None and run["state"] == "running":
                    if git is not None:
                        known = run["metadata"] if isinstance(run["metadata"], dict) else {}
                        db.update_run(run_id, {"metadata": {**known, "git": git}})
                    db.transition_run(run_id, state, exit_code=code, error_message=error)
            return
        except (DatabaseBusyError, StorageError) as exc:  # out of reach: worth a retry
            if time.monotonic() + pause > deadline:
                raise RunNotClosedError(
                    f"run {run_id} could not be closed ({state}) within {finish_timeout:g} s: "
                    f"{exc}; it stays running in the ledger until a reaper pass (any uet "
                    "command that writes, or `uet recover`) fails it once the ledger is "
                    "reachable") from None
            time.sleep(pause)
            pause = min(pause * 2, 5.0)


def _drain(pumps: tuple[_Pump, _Pump]) -> None:
    deadline = time.monotonic() + DRAIN_SECONDS
    for pump in pumps:
        pump.join(max(0.0, deadline - time.monotonic()))
        # A pump still reading belongs to a pipe a leftover background process holds: a
        # daemon thread whose copy so far is what gets recorded; its pipe stays open.
        if not pump.is_alive():
            pump.source.close()

"""The step executor: run one command as a subprocess and record it in the ledger as a run
with one step attempt — exit code, duration, the tail of its output, and how it ended.

Output passes through live; cancellation (SIGINT/SIGTERM) stops the child and records
`canceled`; a timeout kills it and records `failed`. The ledger never keeps a run
`running` after this returns.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import BinaryIO

from uet.state import Database

TAIL_BYTES = 8192
GRACE_SECONDS = 5.0
# How long output may keep coming after the command itself ended: a background process it
# started can hold the pipes open for ever, and must not keep the run open with it.
DRAIN_SECONDS = 2.0
EXIT_TIMEOUT = 124
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127


@dataclass(frozen=True)
class CommandResult:
    run_id: str
    step_attempt_id: str
    state: str            # the run's final state: succeeded, failed or canceled
    exit_code: int        # what `uet run` exits with (the command's own code when it ran)
    duration_sec: float
    error: str | None


class _Cancel(Exception):
    def __init__(self, signum: int) -> None:
        self.signum = signum


class _Pump(threading.Thread):
    """Copies one of the child's streams to ours as it comes, keeping the last bytes."""

    def __init__(self, source: BinaryIO, sink: BinaryIO | None, keep: int) -> None:
        super().__init__(daemon=True)
        self.source, self.sink, self.keep = source, sink, keep
        self.tail = bytearray()

    def run(self) -> None:
        fd = self.source.fileno()
        while chunk := os.read(fd, 65536):
            if self.sink is not None:
                try:
                    self.sink.write(chunk)
                    self.sink.flush()
                except (OSError, ValueError):
                    self.sink = None  # our own output went away; keep recording
            self.tail += chunk
            if len(self.tail) > 2 * self.keep:
                del self.tail[:-self.keep]

    def text(self) -> str:
        tail = bytes(self.tail)  # one copy: the thread may still be appending
        return tail[-self.keep:].decode("utf-8", errors="replace")


def run_command(db: Database, argv: list[str], *, project_id: str, phase_id: str,
                workstream_id: str | None = None, tool_id: str | None = None,
                timeout: float | None = None, stdout: BinaryIO | None = None,
                stderr: BinaryIO | None = None, tail_bytes: int = TAIL_BYTES) -> CommandResult:
    """Run `argv`, recording it as a run with one step attempt; returns how it ended.

    The child's output is copied to `stdout`/`stderr` (default: this process's) while the
    last `tail_bytes` of each are kept in the step attempt (`metadata`, and stderr in
    `error_log`). SIGINT/SIGTERM received meanwhile stop the child and record `canceled`.
    """
    if not argv:
        raise ValueError("run_command needs a command")
    stdout = stdout if stdout is not None else sys.stdout.buffer
    stderr = stderr if stderr is not None else sys.stderr.buffer
    command_line = shlex.join(argv)
    run_id = db.create_run({"project_id": project_id, "phase_id": phase_id,
                            "workstream_id": workstream_id,
                            "metadata": {"command": argv, "cwd": os.getcwd()}})
    db.transition_run(run_id, "running", expected="pending")
    step_id = db.create_step_attempt({
        "run_id": run_id, "sequence": 1, "tool_id": tool_id or os.path.basename(argv[0]),
        "metadata": {"command": argv}})
    started = time.monotonic()

    def finish(state: str, exit_code: int | None, error: str | None, outcome: int,
               pumps: tuple[_Pump, _Pump] | None = None) -> CommandResult:
        duration = round(time.monotonic() - started, 6)
        metadata = {"command": argv, "duration_sec": duration}
        error_log = error
        if pumps is not None:
            metadata["stdout_tail"], metadata["stderr_tail"] = pumps[0].text(), pumps[1].text()
            error_log = "\n".join(p for p in (pumps[1].text(), error) if p) or None
        db.update_step_attempt(step_id, {"state": state, "exit_code": exit_code,
                                         "error_log": error_log, "metadata": metadata})
        db.transition_run(run_id, state, exit_code=exit_code, error_message=error)
        return CommandResult(run_id, step_id, state, outcome, duration, error)

    try:
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except FileNotFoundError:
        return finish("failed", EXIT_NOT_FOUND, f"command not found: {argv[0]}",
                      EXIT_NOT_FOUND)
    except (PermissionError, OSError) as exc:
        return finish("failed", EXIT_CANNOT_EXECUTE,
                      f"cannot execute {argv[0]}: {exc.strerror or exc}", EXIT_CANNOT_EXECUTE)
    pumps = (_Pump(child.stdout, stdout, tail_bytes), _Pump(child.stderr, stderr, tail_bytes))
    for pump in pumps:
        pump.start()

    def on_signal(signum, _frame):
        raise _Cancel(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(child)
            _drain(pumps)
            return finish("failed", EXIT_TIMEOUT,
                          f"timed out after {timeout:g} s: {command_line}", EXIT_TIMEOUT, pumps)
        except _Cancel as cancel:
            _stop(child, cancel.signum)
            _drain(pumps)
            name = signal.Signals(cancel.signum).name
            return finish("canceled", None, f"canceled by {name}: {command_line}",
                          128 + cancel.signum, pumps)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    _drain(pumps)
    code = child.returncode
    if code == 0:
        return finish("succeeded", 0, None, 0, pumps)
    if code < 0:  # killed by a signal: report it the way shells do
        name = signal.Signals(-code).name
        return finish("failed", 128 - code, f"killed by {name}: {command_line}", 128 - code,
                      pumps)
    return finish("failed", code, f"exited with {code}: {command_line}", code, pumps)


def _stop(child: subprocess.Popen, signum: int = signal.SIGTERM) -> None:
    """Ask the child to stop with `signum`, then kill it after a grace period."""
    try:
        child.send_signal(signum)
        child.wait(timeout=GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _drain(pumps: tuple[_Pump, _Pump]) -> None:
    deadline = time.monotonic() + DRAIN_SECONDS
    for pump in pumps:
        pump.join(max(0.0, deadline - time.monotonic()))
    # Pumps still reading belong to pipes a leftover background process holds; they are
    # daemon threads, and what they copied so far is what gets recorded.

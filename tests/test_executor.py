"""The step executor as a library call (the CLI tests drive it through `uet run`)."""

from __future__ import annotations

import io
import sys
import threading

import pytest

from uet.engine import run_command
from uet.errors import ValidationError


def test_run_command_from_a_worker_thread(in_memory_db):
    results = []

    def work():
        results.append(run_command(in_memory_db, [sys.executable, "-c", "print('t')"],
                                   project_id="p", phase_id="ph", stdout=io.BytesIO(),
                                   stderr=io.BytesIO()))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(60)
    assert [(r.state, r.exit_code) for r in results] == [("succeeded", 0)]
    step = in_memory_db.get_step_attempt(results[0].step_attempt_id)
    assert step["metadata"]["stdout_tail"] == "t\n"


def test_run_command_needs_a_command(in_memory_db):
    for argv in ([], [""]):
        with pytest.raises(ValidationError, match="^uet run needs a command to run$") as info:
            run_command(in_memory_db, argv, project_id="p", phase_id="ph")
        assert info.value.field == "command"
    assert in_memory_db.list_runs() == []

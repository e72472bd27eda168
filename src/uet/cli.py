"""The `uet` command line (for now: version, and a demo that records a run in the ledger).

The full command set (init, migrate, doctor, run, runs, show, events ...) comes later; this
module stays a thin layer over `uet.state`.
"""

from __future__ import annotations

import argparse
import json
import sys

from uet import __version__
from uet.errors import UetError
from uet.state import Database


def _demo(db_path: str | None) -> int:
    """Record a run with two step attempts, then print it back from the ledger."""
    with Database(db_path) as db:
        run_id = db.create_run({"project_id": "demo", "phase_id": "PH-000",
                                "workstream_id": "WS-demo",
                                "metadata": {"started_by": "uet demo"}})
        db.transition_run(run_id, "running", expected="pending")
        lint = db.create_step_attempt({"run_id": run_id, "sequence": 1, "tool_id": "ruff"})
        db.transition_step_attempt(lint, "succeeded", exit_code=0)
        tests = db.create_step_attempt({"run_id": run_id, "sequence": 2, "tool_id": "pytest"})
        db.transition_step_attempt(tests, "succeeded", exit_code=0)
        db.transition_run(run_id, "succeeded", expected="running", exit_code=0)
        shown = {"database": db.db_path, "run": db.get_run(run_id),
                 "step_attempts": db.list_step_attempts(run_id),
                 "events": db.list_events(run_id)}
    print(json.dumps(shown, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="uet", description="uet: the run ledger of AI coding pipelines.")
    parser.add_argument("--version", action="version", version=f"uet {__version__}")
    parser.add_argument("--db", metavar="PATH",
                        help="ledger file (default: $UET_DATABASE, else .ledger/framework.db)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("demo", help="record a run with two step attempts and print it back")
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return _demo(args.db)
    except UetError as exc:
        print(f"uet: error: {exc}", file=sys.stderr)
        return 1

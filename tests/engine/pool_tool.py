"""The "AI tool" of the worker-pool tests (tests/engine/test_pool.py), run by uet in a task's
worktree: it says when it starts and when it is done, so that a test can act while it runs.

Usage: pool_tool.py --mark DIR --name NAME [--sleep S] [--append PATH TEXT]

Writes `DIR/<$UET_RUN_ID>-NAME.started` (holding its pid) at once, sleeps S seconds, adds
the line TEXT to PATH (the task's change; folders are created), then writes
`DIR/<$UET_RUN_ID>-NAME.finished`. Files are written whole (a reader never sees half).
"""

from __future__ import annotations

import argparse
import os
import time


def _write(path: str, text: str) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mark", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--append", nargs=2, metavar=("PATH", "TEXT"))
    args = parser.parse_args()
    stem = os.path.join(args.mark, f"{os.environ['UET_RUN_ID']}-{args.name}")
    _write(stem + ".started", str(os.getpid()))
    time.sleep(args.sleep)
    if args.append:
        path, text = args.append
        if os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(text + "\n")
    _write(stem + ".finished", str(os.getpid()))


if __name__ == "__main__":
    main()

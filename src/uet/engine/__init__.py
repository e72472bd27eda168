"""uet's engine: what drives work through the ledger (for now, the step executor)."""

from uet.engine.executor import CommandResult, run_command

__all__ = ["CommandResult", "run_command"]

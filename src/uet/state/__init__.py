"""uet's ledger: runs, step attempts, workers, patches, test gates and their audit trail, in
SQLite (standard library only).

`Database` is the facade of the seed API; `get_db` the process-wide instance per database;
`init_db` a new one. `WorkerLifecycle`, `PatchLedger` and `GateLedger` work on a Database
(loaded on first use, so that opening a ledger stays fast).
"""

from __future__ import annotations

import importlib
from typing import Any

from uet.state.backends.sqlite_schema import LATEST_VERSION
from uet.state.db import Database, get_db, init_db
from uet.state.machines import GATE, PATCH, RUN, STEP_ATTEMPT, WORKER, Machine
from uet.state.names import DEFAULT_PATH

_LAZY = {
    "WorkerLifecycle": "uet.state.workers", "PatchLedger": "uet.state.patches",
    "GateLedger": "uet.state.gates",
    "WorkerRecord": "uet.state.contracts", "WorkerState": "uet.state.contracts",
    "PatchArtifact": "uet.state.contracts", "PatchLedgerEntry": "uet.state.contracts",
    "PatchState": "uet.state.contracts", "GateState": "uet.state.contracts",
    "GateType": "uet.state.contracts", "ValidationResult": "uet.state.contracts",
}

__all__ = ["Database", "get_db", "init_db", "DEFAULT_PATH", "LATEST_VERSION", "Machine",
           "RUN", "STEP_ATTEMPT", "WORKER", "PATCH", "GATE", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'uet.state' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

"""uet: the run ledger of AI coding pipelines.

Names are loaded on first use (PEP 562), so that `uet` commands start fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "errors": "uet.errors",
    "UetError": "uet.errors", "NotFoundError": "uet.errors", "ValidationError": "uet.errors",
    "InvalidTransitionError": "uet.errors", "ConcurrentUpdateError": "uet.errors",
    "SchemaVersionError": "uet.errors",
    "Database": "uet.state", "get_db": "uet.state", "init_db": "uet.state",
    "WorkerLifecycle": "uet.state", "WorkerRecord": "uet.state", "WorkerState": "uet.state",
    "PatchLedger": "uet.state", "PatchArtifact": "uet.state",
    "PatchLedgerEntry": "uet.state", "PatchState": "uet.state", "GateLedger": "uet.state",
    "GateState": "uet.state", "GateType": "uet.state",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'uet' has no attribute {name!r}")
    loaded = importlib.import_module(module)
    value = loaded if name == "errors" else getattr(loaded, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

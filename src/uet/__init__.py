"""uet: the run ledger of AI coding pipelines."""

from uet import errors
from uet.errors import (ConcurrentUpdateError, InvalidTransitionError, NotFoundError,
                        SchemaVersionError, UetError, ValidationError)
from uet.state import (Database, GateLedger, GateState, GateType, PatchArtifact, PatchLedger,
                       PatchLedgerEntry, PatchState, WorkerLifecycle, WorkerRecord,
                       WorkerState, get_db, init_db)

__version__ = "0.1.0"

__all__ = ["Database", "get_db", "init_db", "WorkerLifecycle", "WorkerRecord", "WorkerState",
           "PatchLedger", "PatchArtifact", "PatchLedgerEntry", "PatchState", "GateLedger",
           "GateState", "GateType", "errors", "UetError", "NotFoundError", "ValidationError",
           "InvalidTransitionError", "ConcurrentUpdateError", "SchemaVersionError",
           "__version__"]

"""uet's ledger: runs, step attempts, workers, patches, test gates and their audit trail, in
SQLite (standard library only).

`Database` is the facade of the seed API; `get_db` the process-wide instance per database;
`init_db` a new one. `WorkerLifecycle`, `PatchLedger` and `GateLedger` work on a Database.
"""

from uet.state.db import DEFAULT_PATH, Database, get_db, init_db
from uet.state.gates import GateLedger
from uet.state.machines import GATE, PATCH, RUN, STEP_ATTEMPT, WORKER, Machine
from uet.state.models import (GateState, GateType, PatchArtifact, PatchLedgerEntry,
                              PatchState, WorkerRecord, WorkerState)
from uet.state.patches import PatchLedger
from uet.state.sqlite_migrations import LATEST_VERSION
from uet.state.workers import WorkerLifecycle

__all__ = ["Database", "get_db", "init_db", "DEFAULT_PATH", "LATEST_VERSION", "Machine",
           "RUN", "STEP_ATTEMPT", "WORKER", "PATCH", "GATE", "WorkerLifecycle",
           "WorkerRecord", "WorkerState", "PatchLedger", "PatchArtifact", "PatchLedgerEntry",
           "PatchState", "GateLedger", "GateState", "GateType"]

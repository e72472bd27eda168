"""uet's ledger: runs, step attempts and their audit trail in SQLite (standard library only).

`Database` is the facade; `get_db` the process-wide instance per database; `init_db` a new one.
"""

from uet.state.db import DEFAULT_PATH, Database, get_db, init_db
from uet.state.machines import RUN, STEP_ATTEMPT, Machine
from uet.state.sqlite_migrations import LATEST_VERSION

__all__ = ["Database", "get_db", "init_db", "DEFAULT_PATH", "LATEST_VERSION", "Machine",
           "RUN", "STEP_ATTEMPT"]

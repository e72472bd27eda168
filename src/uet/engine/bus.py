"""The engine's event bus: what the engine does is published as events in the ledger's trail,
in the same transaction as the change it describes, and handed to in-process subscribers
once committed.

The trail is the bus: `publish` writes an event with `create_event` (so inside an `atomic()`
block it commits or rolls back with the change it describes), and delivery reads the trail
by cursor after each commit. Subscribers therefore see every event of the trail committed
after the bus was made — the engine's own and the ledger's (`run.state_changed`,
`patch_entry.state_changed`, ...), from this process and others — in `seq` order, each once,
never one that was rolled back. Other processes follow the same trail by cursor
(`events_since`, `follow_events`).
"""

from __future__ import annotations

import fnmatch
import logging
import threading
from typing import Any, Callable, Mapping

from uet.errors import ValidationError
from uet.state.db import Database

Handler = Callable[[dict[str, Any]], None]

log = logging.getLogger(__name__)


class EventBus:
    """Publish engine events into a ledger's trail; call subscribers after commit."""

    def __init__(self, db: Database, *, batch: int = 1000) -> None:
        self._db = db
        self._batch = batch
        self._lock = threading.RLock()  # one delivery at a time, in order
        self._subscribers: list[tuple[str, Handler]] = []
        # start after what is already in the trail: subscribers get what happens from now on
        self._cursor = db.latest_event_seq()

    @property
    def cursor(self) -> int:
        """The `seq` of the last event delivered."""
        return self._cursor

    def subscribe(self, pattern: str, handler: Handler) -> Callable[[], None]:
        """Call `handler(event)` for every committed event whose type matches `pattern` (a
        glob: `patch_entry.*`, `task.*`, `*`); returns a function that unsubscribes it.
        A handler that raises is logged and skipped: it stops neither the others nor the
        engine."""
        if not isinstance(pattern, str) or not pattern:
            raise ValidationError(f"a subscription needs a non-empty glob of event types, "
                                  f"got {pattern!r}", field="pattern")
        if not callable(handler):
            raise ValidationError(f"a subscriber must be callable, got {handler!r}",
                                  field="handler")
        entry = (pattern, handler)
        with self._lock:
            self._subscribers.append(entry)

        def unsubscribe() -> None:
            with self._lock:
                if entry in self._subscribers:
                    self._subscribers.remove(entry)
        return unsubscribe

    def publish(self, event_type: str, data: Mapping[str, Any] | None = None, *,
                run_id: str) -> str:
        """Record an engine event of run `run_id` (in the caller's `atomic()` block, if any)
        and deliver the trail to subscribers once it is committed; returns the event id.
        Engine event types are namespaced (`task.started`, `patch.captured`,
        `gate.output`); the ledger's own types are refused, as `create_event` refuses them."""
        event_id = self._db.create_event({"run_id": run_id, "event_type": event_type,
                                          "data": dict(data or {})})
        self._db.on_commit(self._dispatch_committed)
        return event_id

    def _dispatch_committed(self) -> None:
        # an on_commit callback returns nothing: the count is for `dispatch`'s own callers
        self.dispatch()

    def dispatch(self) -> int:
        """Deliver every event committed since the last delivery, in `seq` order; returns how
        many were delivered. The engine calls it after its commits; call it to deliver
        events other processes committed."""
        delivered = 0
        with self._lock:
            while True:
                events = self._db.events_since(self._cursor, limit=self._batch)
                for event in events:
                    self._cursor = event["seq"]
                    delivered += 1
                    for pattern, handler in list(self._subscribers):
                        if fnmatch.fnmatchcase(event["event_type"], pattern):
                            self._call(handler, event)
                if len(events) < self._batch:
                    return delivered

    @staticmethod
    def _call(handler: Handler, event: dict[str, Any]) -> None:
        try:
            handler(event)
        except Exception:  # a subscriber's bug must not stop the engine or the others
            log.exception("event bus subscriber %r failed on event %s (%s)", handler,
                          event["seq"], event["event_type"])

"""What every engine's backend shares: the statements of an open write transaction and
rows as dicts. The engines themselves are `backends.sqlite` and `backends.postgresql`."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from uet.state.tables import decode_row


def rows_of(cursor) -> list[dict[str, Any]]:
    """A DB-API cursor's rows as plain dicts (JSON columns decoded)."""
    names = tuple(d[0] for d in cursor.description)
    return [decode_row(names, values) for values in cursor.fetchall()]


class Transaction:
    """The statements of one open write transaction (what a backend's `transaction()`
    yields). `run` / `rows` take the name of a query of the engine's queries.sql; `execute` /
    `query` a statement assembled from whitelisted names with `placeholder` marks."""

    __slots__ = ("conn",)
    queries: Mapping[str, str] = {}
    placeholder = "?"

    def __init__(self, conn) -> None:
        self.conn = conn

    def run(self, name: str, params: Sequence[Any] | dict = ()):
        return self.conn.execute(self.queries[name], params)

    def rows(self, name: str, params: Sequence[Any] | dict = ()) -> list[dict[str, Any]]:
        return rows_of(self.conn.execute(self.queries[name], params))

    def execute(self, sql: str, params: Sequence[Any] | dict = ()):
        return self.conn.execute(sql, params)

    def query(self, sql: str, params: Sequence[Any] | dict = ()) -> list[dict[str, Any]]:
        return rows_of(self.conn.execute(sql, params))

"""SQL assembled from the fixed column whitelists of `tables` (never from caller input):
the statements whose column lists vary, cached per shape."""

from __future__ import annotations

from uet.state.tables import RUNS, Table

_sql_cache: dict[tuple[object, ...], str] = {}


def update_sql(table: Table, columns: tuple[str, ...], mark: str) -> str:
    """UPDATE for a set of whitelisted columns (names come from `Table`, never a caller);
    `mark` is the backend's parameter placeholder."""
    key = ("update", table.name, columns, mark)
    sql = _sql_cache.get(key)
    if sql is None:
        assignments = ", ".join(f"{table.by_name[name].name} = {mark}" for name in columns)
        sql = f"UPDATE {table.name} SET {assignments} WHERE {table.key} = {mark} RETURNING *"
        _sql_cache[key] = sql
    return sql


def _runs_where(conditions: tuple[tuple[str, bool], ...], since: bool, mark: str,
                more: tuple[str, ...] = ()) -> str:
    """The WHERE clause of a runs listing: equality conditions on run columns (names looked
    up in the table's own columns, never taken from the caller), `since` and `more`."""
    where = " AND ".join(
        [f"{RUNS.by_name[name].name} IS NULL" if is_null
         else f"{RUNS.by_name[name].name} = {mark}" for name, is_null in conditions]
        + ([f"created_at >= {mark}"] if since else []) + list(more))
    return f" WHERE {where}" if where else ""


def list_runs_sql(conditions: tuple[tuple[str, bool], ...], since: bool, mark: str,
                  before: bool = False) -> str:
    """Runs newest first; `before`: only those after a keyset cursor (created_at, run_id) in
    that order — the next page, read from the index without OFFSET."""
    key = ("list_runs", conditions, since, mark, before)
    sql = _sql_cache.get(key)
    if sql is None:
        more = (f"(created_at, run_id) < ({mark}, {mark})",) if before else ()
        sql = ("SELECT * FROM runs" + _runs_where(conditions, since, mark, more)
               + f" ORDER BY created_at DESC, run_id DESC LIMIT {mark}")
        _sql_cache[key] = sql
    return sql


def count_runs_sql(conditions: tuple[tuple[str, bool], ...], since: bool, mark: str) -> str:
    """How many runs match, counting no further than a cap (the last parameter): a count
    that costs at most `cap` index entries however large the ledger grows."""
    key = ("count_runs", conditions, since, mark)
    sql = _sql_cache.get(key)
    if sql is None:
        sql = (f"SELECT count(*) AS n FROM (SELECT 1 FROM runs"
               f"{_runs_where(conditions, since, mark)} LIMIT {mark}) AS capped")
        _sql_cache[key] = sql
    return sql

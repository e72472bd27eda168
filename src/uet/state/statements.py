"""SQL assembled from the fixed column whitelists of `tables` (never from caller input):
the statements whose column lists vary, cached per shape."""

from __future__ import annotations

from uet.state.tables import RUNS, Table

_sql_cache: dict[tuple, str] = {}


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


def list_runs_sql(conditions: tuple[tuple[str, bool], ...], since: bool, mark: str) -> str:
    key = ("list_runs", conditions, since, mark)
    sql = _sql_cache.get(key)
    if sql is None:
        where = " AND ".join(
            [f"{RUNS.by_name[name].name} IS NULL" if is_null
             else f"{RUNS.by_name[name].name} = {mark}" for name, is_null in conditions]
            + ([f"created_at >= {mark}"] if since else []))
        sql = ("SELECT * FROM runs" + (f" WHERE {where}" if where else "")
               + f" ORDER BY created_at DESC, run_id DESC LIMIT {mark}")
        _sql_cache[key] = sql
    return sql

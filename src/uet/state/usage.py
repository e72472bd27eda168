"""What the step attempts used, rolled up: tokens and cost per tool, model, task, run or
project (`uet usage`), and per run (`uet show`), from the usage columns tools report.

One grouped query per call, on either engine. Its text is assembled only from the fixed
fragments below, chosen by which filters are given and by the whitelisted grouping;
caller values travel as parameters. Token sums are exact and never overflow: each sum is
taken over the high and the low 32 bits of the values apart (SQLite's SUM raises on a
64-bit overflow, and a tool may report up to 2**63-1 tokens per attempt), and joined here.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Iterable, Mapping

from uet.errors import ValidationError
from uet.state.db import Database
from uet.state.ids import normalize_timestamp
from uet.state.tables import text

# what each grouping groups by (a column of step_attempts `s`, or of its run `r`)
_GROUP_COLUMNS = {"tool": "s.tool_id", "model": "s.model", "task": "s.task_id",
                  "run": "s.run_id", "project": "r.project_id"}
BY_CHOICES = tuple(_GROUP_COLUMNS)
# the filters on the run's columns: the query joins runs only when one is given (or when
# grouping by project)
_RUN_FILTERS = (("project_id", "r.project_id"), ("phase_id", "r.phase_id"),
                ("workstream_id", "r.workstream_id"))
# a step attempt counts when its tool reported anything
_REPORTED = ("(s.model IS NOT NULL OR s.input_tokens IS NOT NULL"
             " OR s.output_tokens IS NOT NULL OR s.cost_usd IS NOT NULL)")
_SUMS = ("COUNT(*) AS attempts,"
         " SUM(s.input_tokens >> 32) AS input_high,"
         " SUM(s.input_tokens & 4294967295) AS input_low,"
         " SUM(s.output_tokens >> 32) AS output_high,"
         " SUM(s.output_tokens & 4294967295) AS output_low,"
         " SUM(s.cost_usd) AS cost_usd")

_MARKS = ("?", "%s")  # the engines' parameter marks
_LAST_MOMENT = "'9999-12-31T23:59:59.999999Z'"  # the latest timestamp a ledger holds

_sql_cache: dict[tuple[object, ...], str] = {}


def usage_rollup(db: Database, *, project_id: str | None = None,
                 phase_id: str | None = None, workstream_id: str | None = None,
                 since: str | datetime | None = None, by: str = "tool"
                 ) -> list[dict[str, Any]]:
    """The usage of the step attempts that reported any (`model`, `input_tokens`,
    `output_tokens` or `cost_usd` set), one row per group.

    `by` is one of "tool" (step_attempts.tool_id), "model", "task" (step_attempts.task_id),
    "run" or "project"; anything else raises ValidationError (field "by"). `project_id`,
    `phase_id` and `workstream_id` keep the attempts of matching runs; `since` (an ISO-8601
    timestamp or a datetime; naive means UTC) those started at or after it.

    Each row: `key` (the group's value; None for attempts without one, e.g. no task),
    `attempts`, `input_tokens`, `output_tokens` and `cost_usd` (sums over the attempts that
    reported the value; None when none did), `models` (the distinct models reported,
    sorted). Rows come most expensive first, then by most tokens, then by key.
    """
    if by not in _GROUP_COLUMNS:
        raise ValidationError(f"usage cannot be grouped by {by!r}: choose one of "
                              f"{', '.join(BY_CHOICES)}", field="by")
    run_filters = tuple((name, text(value, name)) for name, value in
                        (("project_id", project_id), ("phase_id", phase_id),
                         ("workstream_id", workstream_id)) if value is not None)
    since_value = _since(since)
    sql = rollup_sql(by, tuple(name for name, _ in run_filters),
                     since=since_value is not None, mark=db.backend.placeholder)
    params = [value for _, value in run_filters]
    if since_value is not None:
        params.append(since_value)
    return _rows(db.backend.query(sql, params))


def usage_of_run(db: Database, run_id: str) -> dict[str, Any]:
    """The usage of one run's step attempts, summed: `attempts` (those that reported
    any), `input_tokens`, `output_tokens`, `cost_usd` (None when no attempt reported the
    value) and `models` (sorted). A run without usage, or no such run, gives attempts 0."""
    sql = rollup_sql("model", one_run=True, mark=db.backend.placeholder)
    return usage_totals(_rows(db.backend.query(sql, [text(run_id, "run_id")])))


def usage_totals(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The totals of `usage_rollup` rows: attempts, the token and cost sums (None when no
    row has the value) and every model named."""
    total: dict[str, Any] = {"attempts": 0, "input_tokens": None, "output_tokens": None,
                             "cost_usd": None}
    models: set[Any] = set()
    for row in rows:
        total["attempts"] += row["attempts"]
        for name in ("input_tokens", "output_tokens", "cost_usd"):
            if row[name] is not None:
                total[name] = row[name] + (total[name] or 0)
        models.update(row["models"])
    total["models"] = sorted(models, key=_order_of_value)
    return total


def _since(since: object) -> str | None:
    if since is None:
        return None
    try:
        return normalize_timestamp(since, "since")
    except ValueError as exc:
        raise ValidationError(f"usage {exc}", field="since") from None


def rollup_sql(by: str, run_filters: tuple[str, ...] = (), *, one_run: bool = False,
               since: bool = False, mark: str = "?") -> str:
    """The grouped query of one shape (for EXPLAIN and benchmarks too): `by` one of
    BY_CHOICES, `run_filters` names among project_id, phase_id, workstream_id, `one_run`
    a run_id condition, `since` a started_at condition; values are `mark` parameters.
    Assembled from the fixed fragments above only (a name not among them is a KeyError)."""
    key = (by, run_filters, one_run, since, mark)
    sql = _sql_cache.get(key)
    if sql is None:
        if mark not in _MARKS:
            raise KeyError(mark)
        group = _GROUP_COLUMNS[by]
        wanted = dict(_RUN_FILTERS)
        conditions = [_REPORTED]
        if one_run:
            conditions.append(f"s.run_id = {mark}")
        conditions += [f"{wanted[name]} = {mark}" for name in run_filters]
        if since:
            # the upper bound (no ledger timestamp is past it) changes no result; it tells
            # SQLite's planner, which guesses that a one-sided range keeps a quarter of the
            # rows, that idx_steps_started narrows the scan, so that an index delivering
            # the groups in order is not preferred to it (bench/bench_usage.py --index
            # with a covering index on tool_id, model: 3 s instead of 15 ms at 1M attempts)
            conditions.append(f"s.started_at >= {mark} AND s.started_at <= {_LAST_MOMENT}")
        join = " JOIN runs r ON r.run_id = s.run_id" if run_filters or by == "project" else ""
        # grouped by model too, so that each group's models come with it
        grouping = group if by == "model" else f"{group}, s.model"
        sql = (f"SELECT {group} AS group_key, s.model AS model, {_SUMS}"
               f" FROM step_attempts s{join} WHERE {' AND '.join(conditions)}"
               f" GROUP BY {grouping}")
        _sql_cache[key] = sql
    return sql


def _joined(high: Any, low: Any) -> int | None:
    """A token sum from the sums of its high and low 32 bits (PostgreSQL sums bigint as
    numeric: Decimal)."""
    if high is None and low is None:
        return None
    return (int(high or 0) << 32) + int(low or 0)


def _rows(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The (group, model) rows of a query merged into one row per group, ordered."""
    groups: dict[Any, dict[str, Any]] = {}
    for found_row in found:
        group_key = found_row["group_key"]
        row = groups.get(group_key)
        if row is None:
            row = groups[group_key] = {"key": group_key, "attempts": 0, "input_tokens": None,
                                       "output_tokens": None, "cost_usd": None,
                                       "models": []}
        row["attempts"] += int(found_row["attempts"])
        for name, value in (
                ("input_tokens", _joined(found_row["input_high"], found_row["input_low"])),
                ("output_tokens", _joined(found_row["output_high"], found_row["output_low"])),
                ("cost_usd", found_row["cost_usd"])):
            if value is not None:
                row[name] = value + (row[name] or 0)
        if found_row["model"] is not None:
            row["models"].append(found_row["model"])
    for row in groups.values():
        row["models"].sort(key=_order_of_value)
    return sorted(groups.values(), key=_order_of_row)


def _order_of_value(value: Any) -> tuple[int, Any]:
    """A sort key for any stored value (raw SQL may have stored a BLOB or a number where
    text belongs): text first, then anything else by its repr, None last."""
    if value is None:
        return (2, "")
    return (0, value) if isinstance(value, str) else (1, repr(value))


def _order_of_row(row: Mapping[str, Any]) -> tuple[float, Any, tuple[int, Any]]:
    cost = row["cost_usd"]
    cost = 0.0 if cost is None else float(cost)
    if math.isnan(cost):  # only raw SQL can store one; it must not break the order
        cost = 0.0
    tokens = (row["input_tokens"] or 0) + (row["output_tokens"] or 0)
    return (-cost, -tokens, _order_of_value(row["key"]))

"""The run page's timeline: step attempts as a Gantt chart, laid out here (pure geometry,
no markup) and drawn by the `timeline.svg` template, which escapes every value like any
other.

One row per attempt, in the run's order (by sequence, then attempt), so that a retry is the
row under the attempt it retries, labelled with its attempt number. A bar spans the
attempt's start to its end (to now while it runs); an attempt with no usable timestamps
(raw SQL can store anything) gets a row and no bar, never an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Sequence

WIDTH = 900          # the chart's drawing width, in SVG user units
LABEL_WIDTH = 220    # the labels' column
ROW_HEIGHT = 22
AXIS_HEIGHT = 24
MAX_ROWS = 500       # a run with more attempts shows its first 500 (the table has them all)


@dataclass(frozen=True)
class Bar:
    """One attempt's row: the attempt as stored (any value: raw SQL can store anything), the
    row's top `y`, and its bar from `x` over `width` (SVG user units)."""
    step_attempt_id: Any
    sequence: Any
    attempt: Any
    tool_id: Any
    state: Any
    y: float
    x: float | None        # None: no usable timestamps, no bar
    width: float
    seconds: float | None  # the attempt's duration (so far, while it runs)
    retry: bool            # attempt 2 or later of its sequence


@dataclass(frozen=True)
class Tick:
    """A mark of the time axis: where it is (`x`, SVG user units) and the time since the
    first start it stands for ("1.5s", "3m")."""
    x: float
    label: str


@dataclass(frozen=True)
class Timeline:
    """The laid-out chart (`layout`): its rows and axis marks, its size and that of its
    label column and chart area (SVG user units), and the seconds the chart spans."""
    bars: list[Bar]
    ticks: list[Tick]
    width: float
    height: float
    label_width: float
    chart_width: float
    span_seconds: float
    left_out: int          # attempts beyond MAX_ROWS


def _moment(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _sort_key(step: dict[str, Any]) -> tuple[float, float, str]:
    def number(value: Any) -> float:
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) \
            else float("inf")
    return (number(step.get("sequence")), number(step.get("attempt")),
            str(step.get("step_attempt_id")))


def layout(steps: Sequence[dict[str, Any]], now: datetime | None = None) -> Timeline:
    """The timeline of a run's step attempts (rows of `db.list_step_attempts`)."""
    now = now or datetime.now(timezone.utc)
    ordered = sorted(steps, key=_sort_key)
    shown, left_out = ordered[:MAX_ROWS], max(0, len(ordered) - MAX_ROWS)
    spans = []
    for step in shown:
        start = _moment(step.get("started_at"))
        end = _moment(step.get("ended_at")) or (now if start is not None
                                                 and step.get("ended_at") is None else None)
        if start is not None and end is not None and end < start:
            end = start
        spans.append((start, end))
    starts = [s for s, e in spans if s is not None and e is not None]
    origin = min(starts) if starts else now
    finish = max([e for s, e in spans if s is not None and e is not None], default=origin)
    total = max((finish - origin).total_seconds(), 1e-3)
    chart = WIDTH - LABEL_WIDTH
    bars = []
    seen_sequences: set[str] = set()
    for index, (step, (start, end)) in enumerate(zip(shown, spans)):
        y = AXIS_HEIGHT + index * ROW_HEIGHT
        sequence = step.get("sequence")
        attempt = step.get("attempt")
        retry = (isinstance(attempt, int) and not isinstance(attempt, bool) and attempt > 1) \
            or (repr(sequence) in seen_sequences)
        seen_sequences.add(repr(sequence))
        if start is None or end is None:
            x, width, seconds = None, 0.0, None
        else:
            seconds = (end - start).total_seconds()
            x = LABEL_WIDTH + (start - origin).total_seconds() / total * chart
            width = max(seconds / total * chart, 2.0)  # a very short attempt stays visible
        bars.append(Bar(step.get("step_attempt_id"), sequence, attempt, step.get("tool_id"),
                        step.get("state"), y, x, width, seconds, retry))
    ticks = [Tick(LABEL_WIDTH + chart * i / 4, _seconds_label(total * i / 4))
             for i in range(5)]
    height = AXIS_HEIGHT + max(len(bars), 1) * ROW_HEIGHT + 4
    return Timeline(bars, ticks, WIDTH, height, LABEL_WIDTH, chart, total, left_out)


def _seconds_label(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"

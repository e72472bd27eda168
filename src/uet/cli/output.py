"""One output helper for every command: a JSON document (or JSON lines) for machines, a
table for people — in colour on a terminal, plain text when piped."""

from __future__ import annotations

import dataclasses
import enum
import json
import sys
from typing import Any, Iterable, Sequence


def plain(value: Any) -> Any:
    """Records (dataclasses, enums) as JSON-ready values."""
    if dataclasses.is_dataclass(value):
        return {k: plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def emit_json(document: Any) -> None:
    sys.stdout.write(json.dumps(plain(document), indent=2, ensure_ascii=False) + "\n")


def emit_json_line(document: Any) -> None:
    sys.stdout.write(json.dumps(plain(document), ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _console():
    from rich.console import Console  # imported only when a table is drawn
    console = Console(highlight=False, soft_wrap=False)
    if not console.is_terminal:  # piped: plain text, rows not folded to 80 columns
        console = Console(highlight=False, soft_wrap=False, width=1000, no_color=True)
    return console


STATE_STYLES = {"succeeded": "green", "PASSED": "green", "committed": "green",
                "verified": "green", "failed": "red", "FAILED": "red",
                "apply_failed": "red", "quarantined": "magenta", "canceled": "yellow",
                "BLOCKED": "yellow", "dropped": "dim", "TERMINATED": "dim",
                "running": "cyan", "RUNNING": "cyan", "BUSY": "cyan"}


# control characters (ESC above all, and the C1 set: 0x9b is CSI to some terminals) from
# recorded output must not reach the terminal; a cell keeps its line breaks
_CONTROLS = {c: f"\\x{c:02x}" for c in [*range(0, 9), *range(11, 32), *range(127, 160)]}
# one line: also the line breaks, and the Unicode line and paragraph separators
_LINE_BREAKS = {**_CONTROLS, 10: "\\n", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def one_line(text: str) -> str:
    """`text` with every control character and line break escaped: one terminal line."""
    return text.translate(_LINE_BREAKS)


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False).translate(_CONTROLS)
    return str(value).translate(_CONTROLS)


def emit_table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]],
               *, state_column: str | None = "state") -> None:
    """A table; the state column is coloured on a terminal."""
    from rich import box
    from rich.table import Table
    from rich.text import Text
    console = _console()
    table = Table(title=title, box=box.SIMPLE_HEAD if console.is_terminal else box.SIMPLE,
                  title_justify="left", show_edge=False, pad_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    index = columns.index(state_column) if state_column in columns else -1
    for row in rows:
        cells = [Text(cell(v)) for v in row]
        if index >= 0:
            cells[index].stylize(STATE_STYLES.get(cell(row[index]), ""))
        table.add_row(*cells)
    console.print(table)


def progress(message: str):
    """A spinner on stderr while long work runs, when stderr is a terminal; else nothing."""
    import contextlib
    if not sys.stderr.isatty():
        return contextlib.nullcontext()
    from rich.console import Console
    return Console(stderr=True).status(message)


def emit_fields(title: str, fields: Sequence[tuple[str, Any]]) -> None:
    """A record as 'name  value' lines."""
    from rich.table import Table
    console = _console()
    table = Table(title=title, show_header=False, box=None, title_justify="left")
    table.add_column(style="bold" if console.is_terminal else "")
    table.add_column(overflow="fold")
    for name, value in fields:
        table.add_row(name, cell(value))
    console.print(table)

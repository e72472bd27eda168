"""One output helper for every command: a JSON document (or JSON lines) for machines, a
table for people — in colour on a terminal, plain text when piped. What is safe to show (the
escaping and clipping of text, valid JSON in every case) is `uet.text`, shared with the
dashboard.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from uet.text import (CELL_LIMIT, FIELD_LIMIT, MESSAGE_LIMIT, UNSAFE, cell, clip, joined,
                      log_text, one_line, shown, to_json)

if TYPE_CHECKING:  # rich is imported only when something is drawn
    from contextlib import AbstractContextManager

    from rich.console import Console

__all__ = ["CELL_LIMIT", "FIELD_LIMIT", "MESSAGE_LIMIT", "UNSAFE", "cell", "clip", "joined",
           "log_text", "one_line", "shown", "to_json", "emit_json", "emit_json_line",
           "emit_table", "emit_fields", "emit_invalid", "emit_renderable", "progress", "STATE_STYLES"]


def emit_json(document: Any) -> None:
    """`document` on stdout as one indented JSON document (a command's `--json`), valid
    whatever its values hold (`to_json`)."""
    sys.stdout.write(to_json(document, indent=2) + "\n")


def emit_json_line(document: Any) -> None:
    """`document` on stdout as one line of JSON (JSON lines: a followed stream), flushed at
    once so that a reader sees it as it comes."""
    sys.stdout.write(to_json(document) + "\n")
    sys.stdout.flush()


# -- tables ----------------------------------------------------------------------------

def _console() -> Console:
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


def emit_table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]],
               *, state_column: str | None = "state") -> None:
    """A table; the state column is coloured on a terminal. Every cell is `cell()` text,
    never rich markup."""
    from rich import box
    from rich.table import Table
    from rich.text import Text
    console = _console()
    table = Table(title=None if title is None else Text(shown(title)),
                  box=box.SIMPLE_HEAD if console.is_terminal else box.SIMPLE,
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


def emit_invalid(file: str, what: str, problems: Sequence[Any], as_json: bool) -> None:
    """A file that is not a valid `what` (workstream, plan): every problem (`path`,
    `message`), one per line, or the JSON document."""
    if as_json:
        emit_json({"file": file, "valid": False,
                   "problems": [{"path": p.path, "message": p.message} for p in problems]})
        return
    import click
    count = len(problems)
    click.echo(f"{shown(file, FIELD_LIMIT)}: not a valid {what} ({count} "
               f"problem{'s' if count != 1 else ''})")
    for problem in problems:
        click.echo(one_line(str(problem)))


def emit_renderable(renderable: Any) -> None:
    """A rich renderable (a tree ...) built of Text, never markup: in colour on a terminal."""
    _console().print(renderable)


def progress(message: str) -> AbstractContextManager[object]:
    """A spinner on stderr while long work runs, when stderr is a terminal; else nothing."""
    import contextlib
    if not sys.stderr.isatty():
        return contextlib.nullcontext()
    from rich.console import Console
    from rich.text import Text
    return Console(stderr=True).status(Text(one_line(message)))


def emit_fields(title: str, fields: Sequence[tuple[str, Any]]) -> None:
    """A record as 'name  value' lines."""
    from rich.table import Table
    from rich.text import Text
    console = _console()
    table = Table(title=Text(shown(title)), show_header=False, box=None,
                  title_justify="left")
    table.add_column(style="bold" if console.is_terminal else "")
    table.add_column(overflow="fold")
    for name, value in fields:
        table.add_row(Text(shown(name)), Text(cell(value, FIELD_LIMIT)))
    console.print(table)

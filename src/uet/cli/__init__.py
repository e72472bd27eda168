"""The `uet` command line: the click group and its entry point `main`, which registers the
commands of the modules named in COMMAND_MODULES. A thin layer: parse, call the library, format.

Exit codes: 0 ok; 1 an error (unknown run, not a ledger, storage trouble, doctor found a
problem); 2 a usage error (bad option or value); `uet run` exits with the recorded command's
own code (124 timeout, 126 cannot execute, 127 not found, 128+N stopped by signal N).

What every command shares (its options, opening the ledger, the error policy) is in
`uet.cli.common`, output in `uet.cli.output`; command modules import those, never this one.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import sys

import click

from uet import __version__
from uet.cli.common import EXIT_USAGE, fail

# One module per command group, each with a COMMANDS tuple: a new group is one more name here
# (full names, so that tests/test_architecture.py sees these imports in its import graph).
COMMAND_MODULES = ("uet.cli.ledger", "uet.cli.execute", "uet.cli.inspection",
                   "uet.cli.workstreams", "uet.cli.usage", "uet.cli.pool", "uet.cli.web",
                   "uet.cli.retention", "uet.cli.portable", "uet.cli.plan")


@click.group(name="uet", context_settings={"help_option_names": ["-h", "--help"]},
             epilog="Examples:\n\n\b\n  uet run --project demo -- pytest -q\n  uet runs --state "
                    "failed --since 1d\n  uet show 01HX\n  uet events --follow")
@click.version_option(__version__, prog_name="uet", message="%(prog)s %(version)s")
def cli() -> None:
    """uet: the run ledger of AI coding pipelines — record commands as runs and see
    everything in the ledger."""


def _register_commands() -> None:
    for module in COMMAND_MODULES:
        for command in importlib.import_module(module).COMMANDS:
            cli.add_command(command)


_register_commands()


def main(argv: list[str] | None = None) -> None:
    """The console script: click parses; every error, usage errors included, is one line."""
    # the PostgreSQL pool's own log lines (reconnect attempts ...) are not for the user:
    # uet says in one line what went wrong
    pool_log = logging.getLogger("psycopg")
    pool_log.addHandler(logging.NullHandler())
    pool_log.propagate = False
    for stream in (sys.stdout, sys.stderr):  # a character the stream cannot encode is
        # escaped, not a crash (a stream replaced by something else is left as it is)
        if isinstance(stream, io.TextIOWrapper):
            with contextlib.suppress(ValueError):  # closed
                stream.reconfigure(errors="backslashreplace")
    try:
        code = cli.main(args=argv, prog_name="uet", standalone_mode=False)
    except getattr(click.exceptions, "NoArgsIsHelpError", ()) as exc:
        click.echo(exc.ctx.get_help())  # bare `uet`: the help, not an error
        sys.exit(0)
    except click.UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        fail(f"{exc.format_message()}{hint}", EXIT_USAGE)
    except click.ClickException as exc:
        fail(exc.format_message(), exc.exit_code)
    except click.Abort:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)

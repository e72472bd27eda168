"""What every `uet` command shares: the options each one takes (--db, --json, --debug), opening
the ledger they name, the one-line error policy and the exit codes.

Command modules import from here, never from the group module (`uet.cli`), which imports
them to register their commands. Nothing heavy is imported at module level: the state
package, rich and psycopg load when a command needs them, so that `uet --help` starts fast.
"""

from __future__ import annotations

import functools
import os
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, overload

import click

from uet.cli.output import one_line
from uet.errors import NotALedgerError, UetError, ValidationError

if TYPE_CHECKING:  # the state package loads when a command needs it, never for --help
    from uet.state import Database
    from uet.state.recovery import Recovered

EXIT_ERROR, EXIT_USAGE = 1, 2
DB_HELP = ("Ledger: a SQLite file, or a postgresql:// URL (default: $UET_DATABASE, else "
           ".ledger/framework.db).")


# -- ledger names: the CLI's only imports of uet.state's name helpers ----------------------
# They live in uet.state.names (resolve_path, display_name, is_postgres_url, MEMORY, ENV_VAR)
# and uet.state.backends (peek_version); uet.state.db re-exports them for earlier callers.
# Imported on first use: importing them loads the state package, which `uet --help` never
# needs.

def _names() -> ModuleType:
    from uet.state import names
    return names


def display_name(path: str) -> str:
    """A ledger's name as shown to people: a URL without its password."""
    shown: str = _names().display_name(path)
    return shown


def peek_version(path: str) -> int | None:
    """A ledger's schema version, changing nothing (None: no ledger there yet)."""
    from uet.state.backends import peek_version as peek
    return peek(path)


class Context:
    """What a command was given that is not its own: which ledger, --json, --debug; and the
    repository's configuration file (uet.config), read when a command needs a default."""

    def __init__(self, db_path: str | None, as_json: bool, debug: bool) -> None:
        self.db_path, self.as_json, self.debug = db_path, as_json, debug
        self._config: Any = None

    def config(self) -> Any:
        """The settings in effect (a uet.config.Config; read once). A broken file is a
        ConfigError naming the file and key."""
        if self._config is None:
            from uet.config import load_config
            self._config = load_config()
        return self._config

    @overload
    def default(self, key: str, given: str | None, fallback: str) -> str: ...

    @overload
    def default(self, key: str, given: str | None, fallback: None = None) -> str | None: ...

    def default(self, key: str, given: str | None, fallback: str | None = None) -> str | None:
        """An option's value: as given, else the configuration file's, else `fallback`."""
        if given is not None:
            return given
        configured: str | None = self.config().get(key)
        return configured if configured is not None else fallback

    def path(self) -> str:
        """The ledger the command means, checked before anything is opened or created: a
        SQLite file path or a PostgreSQL URL — --db, else $UET_DATABASE, else the
        configuration file's `database`, else the default ledger."""
        from uet.state.locations import check_location
        names = _names()
        given, source = self.db_path, "--db"
        if given is None:
            if os.environ.get(names.ENV_VAR):
                source = f"${names.ENV_VAR}"
            else:
                config = self.config()
                given = config.get("database")
                source = f"database in {config.source}" if given else "the default ledger"
        path: str = names.resolve_path(given)
        check_location(path, source)
        return path

    def open(self, *, create: bool = False, write: bool = False) -> Database:
        """The ledger: created or upgraded for commands that record; opened for writing, but
        never created, for commands that change what exists (`write`); opened read-only for
        inspection, which never creates, migrates or otherwise changes a ledger. An open
        that fails leaves no folder it created behind."""
        from uet.state import Database
        names = _names()
        path = self.path()
        if create:
            return Database(path)  # a failed open leaves no folder it created behind
        if path != names.MEMORY and not names.is_postgres_url(path) and not os.path.exists(path):
            raise NotALedgerError(f"no ledger at {path}; create one with `uet init` (or name "
                                  "another with --db)")
        return Database(path, read_only=not write)


def fail(message: str, code: int) -> None:
    """Print the one-line error and exit with `code`."""
    # the message may quote the caller's input or the ledger: one line, no control codes
    click.echo(f"uet: error: {one_line(message)}", err=True)
    sys.exit(code)


def command(name: str, *, epilog: str = "", json_option: bool = True,
            **settings: Any) -> Callable[[Callable[..., Any]], click.Command]:
    """A command with the options every command has (--db, --json, --debug) and one error
    policy: one line a person can act on, never a traceback (unless --debug). The command is
    registered by the group module, from its module's COMMANDS."""
    def decorate(func: Callable[..., Any]) -> click.Command:
        @functools.wraps(func)
        def wrapper(db: str | None, debug: bool, as_json: bool = False,
                    **kwargs: Any) -> Any:
            ctx = Context(db, as_json, debug)
            try:
                return func(ctx, **kwargs)
            except UetError as exc:
                if debug:
                    import traceback
                    traceback.print_exc()
                fail(str(exc), EXIT_USAGE if isinstance(exc, ValidationError) else EXIT_ERROR)
        params = [click.option("--db", metavar="PATH", default=None, help=DB_HELP),
                  click.option("--debug", is_flag=True, help="Show tracebacks of errors.")]
        if json_option:
            params.append(click.option("--json", "as_json", is_flag=True,
                                       help="Machine-readable JSON output."))
        for param in params:
            wrapper = param(wrapper)
        made: click.Command = click.command(  # type: ignore[no-untyped-call]  # click's
            name, epilog=epilog, **settings)(wrapper)  # decorator factory is untyped
        return made
    return decorate


def finite(_ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """Option callback refusing NaN, which passes every range check."""
    if value is not None and value != value:
        raise click.BadParameter("must be a number", param=param)
    return value


def reap(db: Database) -> list[Recovered]:
    """The reaper pass every uet process that writes to a ledger makes once: runs whose
    owner is gone are failed (uet.state.recovery)."""
    from uet.state.recovery import recover
    return recover(db)

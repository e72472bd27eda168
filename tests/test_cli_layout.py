"""The layout of the command line: every command has help text and is listed by `uet --help`,
each command module is registered, and none imports the group module or anything heavy."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import uet.cli
from uet.cli import COMMAND_MODULES, cli

CLI_FOLDER = Path(uet.cli.__file__).parent
CLI_MODULES = sorted(info.name for info in pkgutil.iter_modules([str(CLI_FOLDER)]))


def every_command(group: click.Group = cli, path: str = "uet"):
    """(command path, command) of every command and subcommand, groups included."""
    for name, command in sorted(group.commands.items()):
        yield f"{path} {name}", command
        if isinstance(command, click.Group):
            yield from every_command(command, f"{path} {name}")


def every_group(group: click.Group = cli, path: str = "uet"):
    yield path, group
    for sub_path, command in every_command(group, path):
        if isinstance(command, click.Group):
            yield sub_path, command


def listed_commands(help_text: str) -> set[str]:
    """The command names a group's --help lists under `Commands:`."""
    lines = help_text.split("Commands:\n", 1)[1].splitlines()
    listed = set()
    for line in lines:
        if not line.startswith("  "):
            break  # the blank line before the epilog ends the list
        if not line.startswith("   "):  # a wrapped description is indented further
            listed.add(line.split()[0])
    return listed


@pytest.mark.parametrize("path,command", [pytest.param(*pair, id=pair[0])
                                          for pair in every_command()])
def test_every_command_and_subcommand_has_help_text(path, command):
    assert (command.help or "").strip(), f"`{path}` has no help text"
    assert command.get_short_help_str().strip(), f"`{path}` has no short help for listings"
    result = CliRunner().invoke(cli, [*path.split()[1:], "--help"])
    assert result.exit_code == 0 and f"Usage: {path}" in result.output
    assert command.help.split()[0] in result.output


def test_uet_help_lists_every_registered_command():
    # through `python -m uet`, the same main as the console script
    result = subprocess.run([sys.executable, "-m", "uet", "--help"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert cli.commands and listed_commands(result.stdout) == set(cli.commands)


@pytest.mark.parametrize("path,group", [pytest.param(*pair, id=pair[0])
                                        for pair in every_group()])
def test_every_group_help_lists_its_subcommands(path, group):
    result = CliRunner().invoke(cli, [*path.split()[1:], "--help"])
    assert result.exit_code == 0
    assert listed_commands(result.output) == set(group.commands)


@pytest.mark.parametrize("name", CLI_MODULES)
def test_every_module_that_defines_commands_is_registered_with_all_of_them(name):
    module = importlib.import_module(f"uet.cli.{name}")
    defined = {value for value in vars(module).values() if isinstance(value, click.Command)
               and value is not cli}
    if name == "__init__" or not defined:
        return
    assert module.__name__ in COMMAND_MODULES, f"uet/cli/{name}.py defines commands: list it"
    # a group's subcommands are registered through the group
    reachable = set(module.COMMANDS) | {sub for group in module.COMMANDS
                                        if isinstance(group, click.Group)
                                        for sub in group.commands.values()}
    assert reachable == defined, f"uet/cli/{name}.py: COMMANDS misses some"
    assert all(cli.commands[command.name] is command for command in module.COMMANDS)


@pytest.mark.parametrize("name", [n for n in CLI_MODULES if n != "__init__"])
def test_command_modules_never_import_the_group_module(name):
    tree = ast.parse((CLI_FOLDER / f"{name}.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.module != "uet.cli", f"uet/cli/{name}.py imports from uet.cli"
        elif isinstance(node, ast.Import):
            assert all(alias.name != "uet.cli" for alias in node.names), name


def test_uet_help_imports_neither_the_state_package_nor_rich_nor_psycopg():
    program = ("import sys\nfrom uet.cli import main\n"
               "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
               "print(sorted({m.split('.')[0] if not m.startswith('uet') else m\n"
               "              for m in sys.modules}))\n")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    loaded = set(ast.literal_eval(result.stdout.splitlines()[-1]))
    assert not loaded & {"rich", "psycopg", "psycopg_pool", "sqlite3", "uet.state",
                         "uet.engine"}

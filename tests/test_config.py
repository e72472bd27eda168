"""Configured once: `uet.toml` or `[tool.uet]` in pyproject.toml, found by walking up from the
working directory; below --db / options and $UET_DATABASE; a broken file is one error naming
the file and key. Unit tests of uet.config and the CLI's Context, then the real command."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from uet.cli.common import Context
from uet.config import ConfigError, find_config_file, load_config

UET = shutil.which("uet", path=os.path.dirname(sys.executable))


@pytest.fixture(autouse=True)
def no_outside_settings(monkeypatch):
    monkeypatch.delenv("UET_CONFIG", raising=False)
    monkeypatch.delenv("UET_DATABASE", raising=False)


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_found_by_walking_up_and_relative_database_is_the_files(tmp_path):
    tree(tmp_path, {"repo/uet.toml": 'database = "data/l.db"\nproject = "api"\n',
                    "repo/a/b/c/.keep": ""})
    config = load_config(tmp_path / "repo" / "a" / "b" / "c")
    assert config.source == str((tmp_path / "repo" / "uet.toml").resolve())
    assert config.values == {"database": str((tmp_path / "repo" / "data" / "l.db").resolve()),
                             "project": "api"}
    assert load_config(tmp_path).source is None   # above it: nothing


def test_uet_toml_before_pyproject_and_pyprojects_without_the_table_are_passed_over(tmp_path):
    tree(tmp_path, {"outer/pyproject.toml": '[tool.uet]\nproject = "outer"\n',
                    "outer/inner/pyproject.toml": '[project]\nname = "x"\n',
                    "outer/inner/deep/.keep": ""})
    assert load_config(tmp_path / "outer" / "inner" / "deep").get("project") == "outer"
    tree(tmp_path, {"outer/inner/uet.toml": 'project = "inner"\n'})
    assert load_config(tmp_path / "outer" / "inner" / "deep").get("project") == "inner"
    tree(tmp_path, {"outer/inner/deep/pyproject.toml": '[tool.uet]\nphase = "PH-1"\n'})
    deep = load_config(tmp_path / "outer" / "inner" / "deep")
    assert deep.values == {"phase": "PH-1"} and deep.source.endswith("deep/pyproject.toml")


BROKEN = {
    "uet.toml": [('project = "a"\nproject = "b"\n', None, "not valid TOML"),
                 ("project = [\n", None, "not valid TOML"),
                 ('databse = "x"\n', "databse", "did you mean 'database'"),
                 ("project = 3\n", "project", "non-empty string"),
                 ('project = ""\n', "project", "non-empty string"),
                 ('[uet]\nproject = "x"\n', "uet", "unknown key")],
    "pyproject.toml": [('[tool.uet]\nworkstream = true\n', "workstream", "non-empty string"),
                       ('[tool]\nuet = "x"\n', None, "must be a table"),
                       ('[tool.uet]\nproject = "x"\n[tool.uet\n', None, "not valid TOML")],
}


@pytest.mark.parametrize("name,text,key,why", [(n, *case) for n, cases in BROKEN.items()
                                                for case in cases])
def test_a_broken_file_is_one_error_naming_the_file_and_key(tmp_path, name, text, key, why):
    tree(tmp_path, {name: text})
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path)
    message = str(err.value)
    assert message.startswith(str(tmp_path / name)), message
    assert why in message
    assert err.value.key == key
    if key is not None:
        assert f": {'tool.uet.' if name == 'pyproject.toml' else ''}{key}: " in message


def test_not_utf8_and_unreadable(tmp_path):
    (tmp_path / "uet.toml").write_bytes(b"project = \"\xff\"\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(tmp_path)


def test_uet_config_names_a_file_or_turns_the_search_off(tmp_path, monkeypatch):
    tree(tmp_path, {"uet.toml": 'project = "found"\n', "elsewhere.toml": 'project = "named"\n'})
    monkeypatch.setenv("UET_CONFIG", str(tmp_path / "elsewhere.toml"))
    assert load_config(tmp_path).get("project") == "named"
    monkeypatch.setenv("UET_CONFIG", "")
    assert find_config_file(tmp_path) is None and load_config(tmp_path).values == {}
    monkeypatch.setenv("UET_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(tmp_path)


@pytest.mark.parametrize("option,env,configured", list(itertools.product([False, True],
                                                                          repeat=3)))
def test_precedence_of_the_ledger(tmp_path, monkeypatch, option, env, configured):
    """--db, then $UET_DATABASE, then the file's database, then the default: every mix."""
    if configured:
        tree(tmp_path, {"uet.toml": 'database = "from-file.db"\n'})
    if env:
        monkeypatch.setenv("UET_DATABASE", str(tmp_path / "from-env.db"))
    monkeypatch.chdir(tmp_path)
    ctx = Context(str(tmp_path / "from-option.db") if option else None, False, False)
    expected = ("from-option.db" if option else "from-env.db" if env
                else "from-file.db" if configured else "framework.db")
    assert os.path.basename(ctx.path()) == expected
    # options fall back the same way
    tree(tmp_path, {"pyproject.toml": '[tool.uet]\nproject = "p"\n'})
    ctx = Context(None, False, False)
    assert ctx.default("project", "given") == "given"
    assert ctx.default("phase", None, "default") == "default"


# -- the real command ---------------------------------------------------------------------

def uet(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("UET_DATABASE", "UET_CONFIG")}
    return subprocess.run([UET, *args], cwd=cwd, env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def test_commands_use_the_configured_ledger_and_doctor_says_so(tmp_path):
    tree(tmp_path, {"repo/pyproject.toml": '[project]\nname = "r"\n\n[tool.uet]\n'
                                           'database = "var/ledger.db"\nproject = "api"\n',
                    "repo/src/.keep": ""})
    sub = tmp_path / "repo" / "src"
    assert uet("init", cwd=sub).returncode == 0
    assert (tmp_path / "repo" / "var" / "ledger.db").exists()
    assert not (sub / ".ledger").exists()
    doctor = json.loads(uet("doctor", "--json", cwd=sub).stdout)
    assert doctor["config"] == {"file": str((tmp_path / "repo" / "pyproject.toml").resolve()),
                                "values": {"database": str((tmp_path / "repo" / "var" /
                                                            "ledger.db").resolve()),
                                           "project": "api"}}
    text = uet("doctor", cwd=sub).stdout
    assert "pyproject.toml" in text and "api" in text
    # --db and $UET_DATABASE come first
    assert uet("init", "--db", "own.db", cwd=sub).returncode == 0 and (sub / "own.db").exists()
    assert uet("init", cwd=sub, env={"UET_DATABASE": str(sub / "env.db")}).returncode == 0
    assert (sub / "env.db").exists()


def test_a_broken_file_stops_the_command_with_one_line(tmp_path):
    tree(tmp_path, {"uet.toml": 'projet = "api"\n'})
    out = uet("init", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == (f"uet: error: {tmp_path / 'uet.toml'}: projet: unknown key; "
                                  "did you mean 'project'? (uet reads: database, project, "
                                  "phase, workstream)")
    assert not (tmp_path / ".ledger").exists()
    # a command given its ledger does not need the file
    assert uet("init", "--db", "x.db", cwd=tmp_path).returncode == 0


def test_runs_are_recorded_under_the_configured_ids_unless_an_option_says_otherwise(tmp_path):
    tree(tmp_path, {"uet.toml": 'project = "api"\nphase = "PH-2"\nworkstream = "WS-7"\n'
                                'database = "ledger.db"\n', "sub/.keep": ""})
    sub = tmp_path / "sub"
    assert uet("run", "--", sys.executable, "-c", "pass", cwd=sub).returncode == 0
    assert uet("run", "--project", "other", "--phase", "PH-9", "--", sys.executable, "-c",
               "pass", cwd=sub).returncode == 0
    runs = json.loads(uet("runs", "--json", cwd=sub).stdout)
    got = sorted((r["project_id"], r["phase_id"], r["workstream_id"]) for r in runs)
    assert got == [("api", "PH-2", "WS-7"), ("other", "PH-9", "WS-7")]
    # without the file: the built-in defaults
    (tmp_path / "uet.toml").unlink()
    assert uet("run", "--db", str(tmp_path / "ledger.db"), "--", sys.executable, "-c", "pass",
               cwd=sub).returncode == 0
    runs = json.loads(uet("runs", "--json", "--db", str(tmp_path / "ledger.db"),
                          cwd=sub).stdout)
    assert ("default", "default", None) in [(r["project_id"], r["phase_id"],
                                             r["workstream_id"]) for r in runs]

"""The named queries: written once in sql/queries.sql where both engines run the same text,
overridden per engine where the dialects differ, and given to psycopg in its own style."""

from __future__ import annotations

import re
import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uet.state.sqlfiles import load_queries, merge_queries, split_statements, to_psycopg_style

ENGINES = ("sqlite", "postgresql")
QUERIES = {engine: load_queries(engine) for engine in ENGINES}

# What SQLite and PostgreSQL do not read as code (their parameters included): literals,
# quoted names, comments. Written apart from the module's own tokenizer on purpose.
NOT_CODE = re.compile(r"'[^']*'|\"[^\"]*\"|--[^\n]*|/\*.*?\*/", re.DOTALL)
SQLITE_PARAMETER = re.compile(r"\?|(?<!:):([A-Za-z_][A-Za-z0-9_]*)")
PSYCOPG_PERCENT = re.compile(r"%(?:(%)|(s)|\(([A-Za-z_][A-Za-z0-9_]*)\)s)")


def sqlite_parameters(sql: str) -> tuple[int, set[str]]:
    """How many `?` a SQLite statement binds, and its `:name`s."""
    found = SQLITE_PARAMETER.findall(NOT_CODE.sub(" ", sql))
    return sum(1 for name in found if not name), {name for name in found if name}


def psycopg_parameters(sql: str) -> tuple[int, set[str]]:
    """How many `%s` a psycopg statement binds, and its `%(name)s`s."""
    found = PSYCOPG_PERCENT.findall(sql)
    return (sum(1 for _, s, _ in found if s), {name for _, _, name in found if name})


def back_to_sqlite_style(sql: str) -> str:
    """The inverse of the conversion, read the way psycopg reads its text."""
    return PSYCOPG_PERCENT.sub(
        lambda m: "%" if m.group(1) else "?" if m.group(2) else ":" + m.group(3), sql)


# -- the files as they are ------------------------------------------------------------------

def test_every_query_resolves_on_both_engines():
    assert set(QUERIES["sqlite"]) == set(QUERIES["postgresql"])
    for engine in ENGINES:
        for name, sql in QUERIES[engine].items():
            assert sqlite3.complete_statement(sql) and split_statements(sql) == [sql], (
                engine, name)


@pytest.mark.parametrize("name", sorted(QUERIES["postgresql"]))
def test_postgresql_text_keeps_no_sqlite_parameter(name):
    sql = QUERIES["postgresql"][name]
    code = NOT_CODE.sub(" ", sql)
    assert "?" not in code
    assert not re.search(r"(?<!:):[A-Za-z_]", code)
    assert "%" not in PSYCOPG_PERCENT.sub("", sql)  # every % is a placeholder or a doubled one


@pytest.mark.parametrize("name", sorted(QUERIES["sqlite"]))
def test_both_engines_bind_the_same_parameters(name):
    """An override may change the SQL around them, never what a caller passes."""
    assert (psycopg_parameters(QUERIES["postgresql"][name])
            == sqlite_parameters(QUERIES["sqlite"][name]))


# -- how the files merge ------------------------------------------------------------------

SHARED = """\
-- the header is no query

-- name: get_run
SELECT * FROM runs WHERE run_id = ?;

-- name: newest_run
-- per engine: a comment alone is no statement

-- name: cast_run
SELECT CAST(:run_id AS text) AS run_id;
"""
OWN = """\
-- name: newest_run
SELECT * FROM runs ORDER BY created_at DESC LIMIT 1;

-- an override of a shared query, in the same parameter style

-- name: cast_run
SELECT :run_id::text AS run_id, '50%' AS share;
"""


def test_an_override_wins_and_every_query_takes_the_engine_style():
    assert dict(merge_queries(SHARED, OWN, "sqlite")) == {
        "get_run": "SELECT * FROM runs WHERE run_id = ?;",
        "newest_run": "SELECT * FROM runs ORDER BY created_at DESC LIMIT 1;",
        "cast_run": "SELECT :run_id::text AS run_id, '50%' AS share;"}
    assert dict(merge_queries(SHARED, OWN, "postgresql")) == {
        "get_run": "SELECT * FROM runs WHERE run_id = %s;",
        "newest_run": "SELECT * FROM runs ORDER BY created_at DESC LIMIT 1;",
        "cast_run": "SELECT %(run_id)s::text AS run_id, '50%%' AS share;"}


def test_an_override_of_an_unknown_name_is_refused():
    own = OWN + "\n-- name: get_runs\nSELECT * FROM runs;\n"
    with pytest.raises(RuntimeError, match=r"^sqlite/queries.sql overrides 'get_runs', which "
                                           r"queries.sql does not define"):
        merge_queries(SHARED, own, "sqlite")


def test_a_query_marked_for_one_engine_only_needs_no_shared_text():
    own = OWN + "\n-- name: vacuum_hint (this engine only)\nPRAGMA optimize;\n"
    assert merge_queries(SHARED, own, "sqlite")["vacuum_hint"] == "PRAGMA optimize;"


def test_a_query_marked_for_one_engine_only_that_is_shared_is_refused():
    own = OWN + "\n-- name: get_run (this engine only)\nSELECT 1;\n"
    with pytest.raises(RuntimeError, match="marks 'get_run' as this engine's only"):
        merge_queries(SHARED, own, "sqlite")
    with pytest.raises(RuntimeError, match="queries.sql marks"):
        merge_queries(SHARED + "\n-- name: x (this engine only)\nSELECT 1;\n", OWN, "sqlite")


def test_a_shared_name_without_statement_must_be_written_by_each_engine():
    own = OWN.split("-- an override")[1]  # cast_run only
    with pytest.raises(RuntimeError, match=r"^sqlite/queries.sql lacks \['newest_run'\]"):
        merge_queries(SHARED, own, "sqlite")


def test_an_override_with_the_shared_text_is_refused():
    own = OWN + "\n-- name: get_run\nSELECT *\n  FROM runs WHERE run_id = ?;\n"
    with pytest.raises(RuntimeError, match="overrides 'get_run' with the shared text"):
        merge_queries(SHARED, own, "postgresql")


def test_an_override_without_statement_is_refused():
    with pytest.raises(RuntimeError, match="has no statement for 'get_run'"):
        merge_queries(SHARED, OWN + "\n-- name: get_run\n-- to do\n", "sqlite")


@pytest.mark.parametrize("twice_in", ["shared", "own"])
def test_a_name_defined_twice_in_one_file_is_refused(twice_in):
    again = "\n-- name: cast_run\nSELECT 2;\n"
    shared, own = (SHARED + again, OWN) if twice_in == "shared" else (SHARED, OWN + again)
    with pytest.raises(RuntimeError, match="^query 'cast_run' defined twice in "):
        merge_queries(shared, own, "postgresql")


def test_a_statement_psycopg_cannot_take_is_refused_on_loading():
    shared = SHARED + "\n-- name: mixed\nSELECT * FROM runs WHERE run_id = ? OR state = :s;\n"
    assert "mixed" in merge_queries(shared, OWN, "sqlite")  # SQLite's text is not converted
    with pytest.raises(RuntimeError, match="^postgresql query 'mixed': positional and named"):
        merge_queries(shared, OWN, "postgresql")


# -- the parameter-style conversion ---------------------------------------------------------

@pytest.mark.parametrize(("sqlite_text", "psycopg_text"), [
    ("SELECT ?, ? FROM t", "SELECT %s, %s FROM t"),
    ("WHERE a = :a AND b=:b_2", "WHERE a = %(a)s AND b=%(b_2)s"),
    ("SELECT x::text, :x::json", "SELECT x::text, %(x)s::json"),
    ("SELECT 'it''s ? :a %', \"odd ?\" -- why? :b 5%\n, ?",
     "SELECT 'it''s ? :a %%', \"odd ?\" -- why? :b 5%%\n, %s"),
    ("SELECT /* ? :a % */ a % 2 FROM t -- the end ?",
     "SELECT /* ? :a %% */ a %% 2 FROM t -- the end ?"),
    ("SELECT '%s', '%(a)s' WHERE x = :x", "SELECT '%%s', '%%(a)s' WHERE x = %(x)s"),
    ("SELECT a[1:2], :3, ?", "SELECT a[1:2], :3, %s"),
])
def test_conversion_examples(sqlite_text, psycopg_text):
    assert to_psycopg_style(sqlite_text) == psycopg_text


@pytest.mark.parametrize(("sql", "reason"), [
    ("SELECT ?1", "numbered parameter '\\?1'"),
    ("SELECT ?, :a", "positional and named parameters"),
    ("SELECT 'open", "unterminated literal or comment at offset 7"),
    ('SELECT "open', "unterminated"),
    ("SELECT 1 /* open", "unterminated"),
])
def test_conversion_refuses_what_has_no_faithful_equivalent(sql, reason):
    with pytest.raises(ValueError, match=reason):
        to_psycopg_style(sql)


NAME = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
SOME_TEXT = "ab ?:%-_'\"x1\n"  # what a placeholder, a cast or a comment could be made of


def _doubled_percent(text: str) -> tuple[str, str]:
    return text, text.replace("%", "%%")


# fragments of a statement: (SQLite's text, psycopg's), space-separated in a statement
CODE = st.from_regex(r"[A-Za-z0-9_(),.=<>+* ]{1,8}", fullmatch=True).map(lambda s: (s, s))
LITERAL = st.text(SOME_TEXT, max_size=10).map(
    lambda s: _doubled_percent("'" + s.replace("'", "''") + "'"))
QUOTED_NAME = st.text(SOME_TEXT, max_size=10).map(
    lambda s: _doubled_percent('"' + s.replace('"', '""') + '"'))
LINE_COMMENT = st.text(SOME_TEXT.replace("\n", ""), max_size=10).map(
    lambda s: _doubled_percent("--" + s + "\n"))
BLOCK_COMMENT = st.text(SOME_TEXT, max_size=10).map(lambda s: _doubled_percent(f"/*{s}*/"))
CAST = st.tuples(NAME, NAME).map(lambda p: (f"{p[0]}::{p[1]}",) * 2)
PERCENT = st.just(("%", "%%"))
POSITIONAL = st.just(("?", "%s"))
NAMED = NAME.map(lambda n: (f":{n}", f"%({n})s"))
UNCHANGED = st.one_of(CODE, LITERAL, QUOTED_NAME, LINE_COMMENT, BLOCK_COMMENT, CAST, PERCENT)
STATEMENT = st.sampled_from([POSITIONAL, NAMED]).flatmap(
    lambda placeholder: st.lists(st.one_of(UNCHANGED, placeholder), max_size=12))


@settings(max_examples=300)
@given(STATEMENT)
def test_conversion_changes_each_placeholder_and_percent_sign_and_nothing_else(fragments):
    """Literals, quoted names, comments and casts come out as they went in (their % doubled,
    as psycopg reads its whole text), every placeholder in the code is converted."""
    sql = " ".join(sqlite for sqlite, _ in fragments)
    assert to_psycopg_style(sql) == " ".join(psycopg for _, psycopg in fragments)


@settings(max_examples=300)
@given(st.sampled_from(["?", ":"]).flatmap(lambda placeholder: st.lists(st.sampled_from(
    [placeholder, "::", "%", "'", '"', "--", "/*", "*/", "\n", " ", "a", "_", "1", "(", "s"]),
    max_size=30).map("".join)))
def test_psycopg_reads_back_exactly_the_text_that_was_converted(sql):
    """Whatever the text, a conversion that succeeds changes nothing but `?`, `:name` and
    `%`, each into what psycopg reads as that same thing."""
    try:
        converted = to_psycopg_style(sql)
    except ValueError:
        return  # an unterminated literal or comment: refused, tested above
    assert back_to_sqlite_style(converted) == sql

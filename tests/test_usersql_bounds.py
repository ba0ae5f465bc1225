"""run_user_sql's answers stay bounded however big the values a query builds, say what was cut, and its errors keep
DuckDB's caret under the token it blames."""
from __future__ import annotations

import json

import pytest

from mcp_server.history import History, UserSqlError, run_user_sql
from mcp_server.history.usersql import MAX_ANSWER_BYTES, MAX_CELL_CHARS


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("usersql-bounds") / "history.duckdb"
    History(path).close()
    return path


def test_a_huge_cell_is_cut_and_the_answer_says_which(db):
    result = run_user_sql(db, "SELECT repeat('x', 100000000) AS big, 7 AS n, [repeat('y', 3000)] AS l")
    big, n, lst = result.rows[0]
    assert big.startswith("x" * MAX_CELL_CHARS) and big.endswith("…[cut: 100,000,000 chars]") and n == 7
    assert len(big) < MAX_CELL_CHARS + 40 and lst.startswith('["yyy') and lst.endswith("…[cut: 3,004 chars]")
    assert result.cut.startswith("2 cell(s) cut to 2,000 characters (row 1 'big' (100,000,000 chars); row 1 'l'")
    assert not result.truncated


def test_many_rows_of_big_cells_stop_at_the_answer_bound(db):
    result = run_user_sql(db, "SELECT i, repeat('y', 5000) AS s FROM range(1000) t(i)", limit=1000)
    assert result.truncated and 0 < result.row_count < 1000
    assert [r[0] for r in result.rows] == list(range(result.row_count))
    assert len(json.dumps(result.rows).encode()) <= MAX_ANSWER_BYTES
    assert f"{result.row_count} cell(s) cut" in result.cut
    assert f"rows after row {result.row_count} left out to keep the answer under 200 KB" in result.cut


def test_small_answers_are_untouched(db):
    result = run_user_sql(db, "SELECT 'short' AS s, [1, 2] AS l")
    assert result.rows == [["short", [1, 2]]] and result.cut is None and not result.truncated


def test_a_value_past_duckdbs_string_limit_fails_cleanly(db):
    with pytest.raises(UserSqlError, match="Cannot create a string of size"):
        run_user_sql(db, "SELECT repeat('x', 10000000000)")
    assert run_user_sql(db, "SELECT 1").rows == [[1]]


@pytest.mark.parametrize("sql, where", [
    ("SELEC 1", "LINE 1: SELEC 1\n        ^^^^^\n"),
    ("SELECT 1,\n  2\n WHERE x = = 1", "LINE 3:  WHERE x = = 1\n                   ^\n"),
])
def test_a_syntax_error_keeps_the_caret_under_the_token(db, sql, where):
    with pytest.raises(UserSqlError) as refused:
        run_user_sql(db, sql)
    message = str(refused.value)
    assert message.startswith("syntax error: Parser Error: syntax error at or near ") and where in message
    assert message.splitlines()[-1].startswith("fix the query where the ^ points, then send exactly one")

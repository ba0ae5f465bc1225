"""run_user_sql on real history files: every refusal with its message, the row cap, the time limit."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from mcp_server.history import History, UserSqlError, run_user_sql


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("usersql") / "history.duckdb"
    with History(path) as h:
        ids = h.insert_jobs([{"argv": ["train", str(i)], "config": {"lr": i / 100}, "gpu_class": "H100",
                              "tags": ["wave"]} for i in range(120)])
        for i, job_id in enumerate(ids):
            h.ingest(job_id, {"status": "succeeded", "started_at": 1_700_000_000.0, "ended_at": 1_700_000_300.0,
                              "gpus": [0]},
                     [{"seq": 0, "t": 1_700_000_100.0, "source": "marker", "data": {"step": 1, "train_loss": 3.0}},
                      {"seq": 1, "t": 1_700_000_300.0, "source": "summary", "data": {"val_bpb": 1 - i / 1000}}])
    return path


@pytest.mark.parametrize("sql, message", [
    ("COPY jobs TO '/tmp/arc-leak.csv'", "refused: COPY reads or writes files"),
    ("EXPORT DATABASE '/tmp/arc-export'", "refused: EXPORT DATABASE writes files"),
    ("ATTACH '/tmp/other.duckdb' AS o", "refused: ATTACH opens other database files"),
    ("DETACH history", "refused: DETACH"),
    ("INSTALL httpfs", "refused: INSTALL/LOAD add extensions"),
    ("LOAD httpfs", "refused: INSTALL/LOAD add extensions"),
    ("SET threads = 1", "refused: SET/RESET/USE change settings"),
    ("RESET threads", "refused: SET/RESET/USE change settings"),
    ("USE memory", "refused: SET/RESET/USE change settings"),
    ("PRAGMA version", "refused: PRAGMA"),
    ("DELETE FROM jobs", "refused: DELETE writes"),
    ("INSERT INTO jobs (job_id) VALUES ('j1000')", "refused: INSERT writes"),
    ("UPDATE jobs SET status = 'failed'", "refused: UPDATE writes"),
    ("DROP TABLE jobs", "refused: DROP writes"),
    ("CREATE TABLE x AS SELECT 1", "refused: CREATE writes"),
    ("CREATE TEMP TABLE x AS SELECT 1", "refused: CREATE writes"),
    ("ALTER TABLE jobs ADD COLUMN x INT", "refused: ALTER writes"),
    ("CHECKPOINT", "refused: CALL"),
    ("BEGIN", "refused: transaction control"),
    ("SELECT 1; DROP TABLE jobs", "exactly one statement is allowed, got 2 (SELECT, DROP)"),
    ("SELECT 1; SELECT 2", "exactly one statement is allowed, got 2 (SELECT, SELECT)"),
    ("SELECT * FROM read_csv('/etc/passwd')", "file access is disabled"),
    ("SELECT * FROM read_text('/etc/passwd')", "file access is disabled"),
    ("SELECT * FROM glob('/etc/*')", "file access is disabled"),
    ("SELECT * FROM read_parquet('/tmp/x.parquet')", "file access is disabled"),
    ("SELECT * FROM '/etc/passwd'", "Table with name /etc/passwd does not exist"),
    ("SELEC job_id FROM jobs", 'syntax error: Parser Error: syntax error at or near "SELEC"'),
    ("SELECT nope FROM jobs", 'Referenced column "nope" not found'),
    ("   ", "empty query"),
])
def test_refusals_say_what_was_wrong(db, sql, message):
    with pytest.raises(UserSqlError) as refused:
        run_user_sql(db, sql)
    assert message in str(refused.value)
    assert len(str(refused.value)) < 500


def test_refusals_leave_the_history_intact(db):
    result = run_user_sql(db, "SELECT count(*) AS n, count(DISTINCT status) AS s FROM jobs")
    assert result.rows == [[120, 1]]


def test_a_select_returns_json_friendly_rows(db):
    result = run_user_sql(db, """
        WITH best AS (SELECT job_id, val_bpb FROM runs ORDER BY val_bpb LIMIT 3)
        SELECT r.job_id, r.val_bpb, r.ended_at, r.config, r.tags, r.duration_s, 1.5::DECIMAL(4, 2) AS d,
               INTERVAL 5 MINUTE AS budget
        FROM best JOIN runs r USING (job_id) ORDER BY r.val_bpb""")
    assert result.columns == ["job_id", "val_bpb", "ended_at", "config", "tags", "duration_s", "d", "budget"]
    assert result.rows[0] == ["j120", 0.881, "2023-11-14T22:18:20+00:00", {"lr": 1.19}, ["wave"], 300.0, 1.5, 300.0]
    assert (result.row_count, result.truncated) == (3, False)
    json.dumps(result.rows)


def test_the_row_cap_truncates_without_building_the_whole_result(db):
    result = run_user_sql(db, "SELECT * FROM runs", limit=50)
    assert (result.row_count, result.truncated, len(result.rows)) == (50, True, 50)
    exact = run_user_sql(db, "SELECT * FROM runs", limit=120)
    assert (exact.row_count, exact.truncated) == (120, False)
    huge = run_user_sql(db, "SELECT range AS i FROM range(1000000000000)", limit=5, timeout_s=5)
    assert huge.rows == [[0], [1], [2], [3], [4]] and huge.truncated


@pytest.mark.parametrize("limit, timeout_s, message", [
    (0, 10, "limit must be an integer from 1 to 10000"), (10_001, 10, "limit must be"),
    ("5", 10, "limit must be"), (5, 0, "timeout_s must be in"), (5, 1000, "timeout_s must be in")])
def test_out_of_range_limits_are_refused(db, limit, timeout_s, message):
    with pytest.raises(UserSqlError, match=message):
        run_user_sql(db, "SELECT 1", limit=limit, timeout_s=timeout_s)


@pytest.mark.timeout(120)    # the hang guard: uninterrupted, this 10^12-row join would run for hours
def test_a_slow_query_is_stopped_at_the_time_limit(db):
    with pytest.raises(UserSqlError, match=r"query stopped after 1 s \(time limit\)"):
        run_user_sql(db, "SELECT count(*) FROM range(1000000) a, range(1000000) b WHERE (a.range * b.range) % 7 = 3",
                     timeout_s=1)


def test_a_missing_file_is_explained(tmp_path):
    with pytest.raises(UserSqlError, match="no history at .* yet"):
        run_user_sql(tmp_path / "none.duckdb", "SELECT 1")


def test_a_file_held_read_write_by_this_process_is_refused(tmp_path):
    path = tmp_path / "h.duckdb"
    with History(path):
        with pytest.raises(UserSqlError, match="is held read-write .* query through it"):
            run_user_sql(path, "SELECT 1")
    assert run_user_sql(path, "SELECT count(*) FROM jobs").rows == [[0]]


def test_a_file_held_read_write_by_another_process_is_refused(tmp_path):
    path = tmp_path / "h.duckdb"
    History(path).close()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, duckdb
        con = duckdb.connect({str(path)!r})
        print("holding", flush=True)
        sys.stdin.read()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(UserSqlError, match="Could not set lock on file"):
            run_user_sql(path, "SELECT 1")
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)

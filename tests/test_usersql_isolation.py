"""User SQL runs in worker processes under an address-space limit (history/sql_worker.py): a query that builds a
huge value takes the worker's memory, never the daemon's, and a worker that dies costs only its own query."""
from __future__ import annotations

import os
import signal
import threading

import duckdb
import pytest

from mcp_server.daemon.client import DaemonError
from mcp_server.history.sql_worker import SqlWorkers
from mcp_server.history.usersql import UserSqlError


def _peak_rss_mb(pid: int) -> float:
    status = open(f"/proc/{pid}/status").read()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024


def test_huge_values_are_built_beside_the_daemon_not_in_it(tmp_path, local_hosts_yaml, arcs):
    arc = arcs(tmp_path / "state", local_hosts_yaml)
    arc.start()
    before = _peak_rss_mb(arc.pid)
    big = arc.call("query_results", sql="SELECT repeat('x', 200000000) AS big, 7 AS n")    # built, then cut
    assert big["rows"][0][1] == 7 and big["cut"] and "200,000,000 chars" in big["cut"]
    # 4 GB: run without the worker's limit, this query took 15.7 GB of RSS and 95 s; the worker's address space
    # refuses it at once. (A 1 GB value fails there too, but only after 5-7 s of building it, so on a loaded
    # machine the 10 s time limit came first and the test read the wrong refusal.)
    with pytest.raises(DaemonError) as refused:
        arc.call("query_results", sql="SELECT repeat(repeat('x', 100000), 40000) AS n")
    assert "more memory than a user query may use: aggregate" in str(refused.value), refused.value
    assert _peak_rss_mb(arc.pid) - before < 300, "the daemon held the query's value"
    assert arc.call("query_results", sql="SELECT 42 AS answer")["rows"] == [[42]]


@pytest.fixture
def history(tmp_path):
    path = tmp_path / "history.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE t AS SELECT range AS i FROM range(10)")
    return path


def test_a_worker_that_dies_fails_only_its_own_query(history):
    workers = SqlWorkers()
    try:
        assert workers.run(history, "SELECT count(*) FROM t", limit=5, timeout_s=10).rows == [[10]]
        (worker,) = workers._idle
        killer = threading.Timer(0.5, os.kill, (worker.pid, signal.SIGKILL))
        killer.start()
        with pytest.raises(UserSqlError, match=r"process ended \(signal 9\)"):
            workers.run(history, "SELECT count(*) FROM range(100000000000)", limit=5, timeout_s=60)
        killer.join()
        assert workers.run(history, "SELECT max(i) FROM t", limit=5, timeout_s=10).rows == [[9]]
    finally:
        workers.close()


def test_refusals_and_time_limits_come_back_from_the_worker(history):
    workers = SqlWorkers()
    try:
        with pytest.raises(UserSqlError, match="only SELECT is allowed"):
            workers.run(history, "DROP TABLE t", limit=5, timeout_s=10)
        with pytest.raises(UserSqlError, match="time limit"):
            workers.run(history, "SELECT count(*) FROM range(100000000000)", limit=5, timeout_s=0.5)
        assert len(workers._idle) == 1          # both answered: the same worker serves on
    finally:
        workers.close()

"""SQL beside a running daemon: another process reads the snapshot file with its own DuckDB while the daemon writes
(the main file it cannot even open), and `arc sql` serves exactly one read-only SELECT, refusing anything else with
a clear message."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.daemon_support import Arc, metric_job

READER = """
import json, sys, time
from pathlib import Path
import duckdb
snapshot, stop = sys.argv[1], Path(sys.argv[2])
errors, reads = [], 0
while not stop.exists():
    try:
        with duckdb.connect(snapshot, read_only=True) as con:
            top, done = con.execute("SELECT max(job_num), count(*) FILTER (status = 'succeeded') FROM jobs").fetchone()
        reads += 1
        print(json.dumps({"top": top, "done": done}), flush=True)
    except Exception as e:
        errors.append(f"{type(e).__name__}: {e}")
    time.sleep(0.05)
print(json.dumps({"reads": reads, "errors": errors[:5]}), flush=True)
"""


@pytest.fixture(scope="module")
def arc(netns_hosts, tmp_path_factory):
    arc = Arc(tmp_path_factory.mktemp("sql") / "state", netns_hosts.hosts_yaml)
    arc.start()
    yield arc
    arc.stop()


@pytest.mark.timeout(180)
def test_another_process_reads_the_snapshot_while_the_daemon_writes(arc, tmp_path):
    blocked = subprocess.run([sys.executable, "-c", "import duckdb, sys; duckdb.connect(sys.argv[1], read_only=True)",
                              str(arc.paths.history)], capture_output=True, text=True)
    assert blocked.returncode != 0 and "Could not set lock" in blocked.stderr
    stop = tmp_path / "stop"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(arc.paths.snapshot), str(stop)],
                              stdout=subprocess.PIPE, text=True)
    try:
        ids: list[str] = []
        for batch in range(4):     # the daemon writes all along: submissions, dispatches, metrics, ends
            ids += arc.submit([metric_job(10 * batch + i, steps=6, pause_s=0.05) for i in range(4)])
            time.sleep(0.3)
        last = int(ids[-1][1:])
        # the reader keeps reading until the snapshot shows the last job, then every job done; the test's
        # timeout mark is the hang guard for a snapshot that never catches up
        assert any((seen := json.loads(line))["top"] is not None and seen["top"] >= last for line in reader.stdout)
        arc.wait(ids)
        assert any(json.loads(line)["done"] >= len(ids) for line in reader.stdout)
    finally:
        stop.touch()
        tail = reader.communicate(timeout=30)[0].strip().splitlines()
    summary = json.loads(tail[-1])
    assert summary["errors"] == [] and summary["reads"] > 10


@pytest.mark.parametrize("query, message", [
    ("COPY jobs TO '/tmp/arc-test-copy.csv'", "refused: COPY reads or writes files; only SELECT is allowed here"),
    ("ATTACH '/tmp/arc-test-other.duckdb' AS other", "refused: ATTACH opens other database files"),
    ("INSTALL httpfs", "refused: INSTALL/LOAD add extensions"),
    ("SET threads = 1", "refused: SET/RESET/USE change settings"),
    ("SELECT * FROM read_csv('/etc/passwd')", "file access is disabled"),
    ("SELECT 1; DROP TABLE jobs", "exactly one statement is allowed, got 2 (SELECT, DROP): send exactly one "
                                  "read-only SELECT (WITH ... SELECT is fine); arc schema lists tables and examples"),
], ids=["COPY", "ATTACH", "INSTALL", "SET", "read_csv", "two statements"])
def test_arc_sql_refuses_anything_but_one_select(arc, query, message):
    proc = arc.cli("sql", query, check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("arc: ") and message in proc.stderr, proc.stderr
    assert "send exactly one read-only SELECT" in proc.stderr or "query the history's tables" in proc.stderr
    assert "describe_history" not in proc.stderr   # a person is told the arc command that lists the tables
    assert not any(os.path.exists(p) for p in ("/tmp/arc-test-copy.csv", "/tmp/arc-test-other.duckdb"))
    assert arc.cli_json("sql", "SELECT count(*) AS n FROM jobs")["columns"] == ["n"]


def test_arc_sql_answers_one_select_with_a_row_cap(arc):
    [job] = arc.submit([metric_job(7, steps=5)])
    arc.wait([job])
    out = arc.cli_json("sql", f"SELECT seq, value FROM metrics WHERE job_id = '{job}' AND name = 'x' ORDER BY seq",
                       "--limit", "3")
    assert out["rows"] == [[0, 7.0], [1, 7 + 1 / 7], [2, 7 + 2 / 7]] and out["truncated"] is True


def test_a_diverged_runs_nan_metric_reaches_the_cli_as_null(arc):
    [job] = arc.submit([{"command": [sys.executable, "-c", "print('---'); print('val_bpb: nan')"],
                         "time_limit_s": 60}])
    assert arc.wait([job])[job]["metric"] is None
    assert arc.sql(f"SELECT isnan(primary_value) FROM jobs WHERE job_id = '{job}'") == [[True]]   # kept as NaN
    listed = arc.cli_json("jobs")["jobs"]
    assert [j["metric"] for j in listed if j["job_id"] == job] == [None]

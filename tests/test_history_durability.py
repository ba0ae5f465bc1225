"""Crash safety and the snapshot, with real processes: kill -9 of a writer, readers of a live snapshot."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import duckdb
import pytest

from mcp_server.history import History, SnapshotWriter, run_user_sql

REPO = Path(__file__).resolve().parents[1]

WRITER = textwrap.dedent("""
    import sys, time
    from mcp_server.history import History
    h = History(sys.argv[1])
    n = 0
    while True:
        (job_id,) = h.insert_jobs([{"argv": ["train"]}])
        h.update_job(job_id, "queued", status="running", _reason="test")
        records = [{"seq": i, "t": time.time(), "source": "marker", "data": {"step": i, "loss": 1.0, "lr": 0.1}}
                   for i in range(100)]
        rows = h.ingest(job_id, None, records)
        n += 1
        print(job_id, rows, flush=True)     # printed only after both transactions committed
""")


def test_kill_9_mid_writes_keeps_every_committed_row(tmp_path):
    path = tmp_path / "h.duckdb"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=REPO, stdout=subprocess.PIPE,
                              text=True)
    committed = {}
    try:
        for line in writer.stdout:
            job_id, rows = line.split()
            committed[job_id] = int(rows)
            if len(committed) == 40:
                break
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=10)
    assert writer.returncode == -signal.SIGKILL
    assert os.path.getsize(str(path) + ".wal") > 0          # the reopen below must replay the WAL
    with History(path) as h:
        for job_id, rows in committed.items():
            job = h.get_job(job_id)
            assert (job["status"], job["metrics_seq"]) == ("running", 99), job_id
            count = h.cursor().execute("SELECT count(*) FROM metrics WHERE job_id = ?", [job_id]).fetchall()
            assert count == [(rows,)] == [(200,)]
        highest = max(int(j[1:]) for j in committed)
        assert int(h.new_job_ids(1)[0][1:]) > highest       # ids handed out before the crash are not reused
        assert h.count_jobs() >= len(committed)


READER = textwrap.dedent("""
    import sys, time, duckdb
    seen = []
    while len(seen) < 8:
        con = duckdb.connect(sys.argv[1], read_only=True)
        seen.append(con.execute("SELECT count(*) FROM metrics").fetchall()[0][0])
        con.close()
        time.sleep(0.15)
    try:
        duckdb.connect(sys.argv[2], read_only=True)
        main = "opened"
    except duckdb.IOException as e:
        main = "locked"
    print(" ".join(map(str, seen)), main, flush=True)
""")


@pytest.mark.parametrize("method", ["file", "copy"])
def test_another_process_reads_the_snapshot_while_the_owner_writes(tmp_path, method):
    path, snapshot = tmp_path / "h.duckdb", tmp_path / "h.snapshot.duckdb"
    stop = threading.Event()
    with History(path) as h, SnapshotWriter(h, snapshot, min_interval_s=0.1, method=method) as writer:
        (job_id,) = h.insert_jobs([{"argv": ["train"]}])

        def write() -> None:
            seq = 0
            while not stop.is_set():
                h.ingest(job_id, None, [{"seq": seq + i, "t": time.time(), "source": "marker",
                                         "data": {"loss": 1.0}} for i in range(50)])
                seq += 50
                time.sleep(0.01)

        thread = threading.Thread(target=write)
        thread.start()
        try:
            reader = subprocess.run([sys.executable, "-c", READER, str(snapshot), str(path)],
                                    capture_output=True, text=True, timeout=60)
        finally:
            stop.set()
            thread.join()
        assert reader.returncode == 0, reader.stderr
        *counts, main = reader.stdout.split()
        counts = [int(c) for c in counts]
        assert main == "locked"                          # why the snapshot exists
        assert counts == sorted(counts) and counts[-1] > counts[0], counts
        assert writer.last_error is None
        final = writer.refresh_now(force=True)
        assert final is not None and final.method == method
        total = h.cursor().execute("SELECT count(*) FROM metrics").fetchall()[0][0]
    assert run_user_sql(snapshot, "SELECT count(*) FROM metrics").rows == [[total]]


def test_the_snapshot_is_rewritten_only_after_a_change(tmp_path):
    path, snapshot = tmp_path / "h.duckdb", tmp_path / "snap.duckdb"
    with History(path) as h:
        writer = SnapshotWriter(h, snapshot, min_interval_s=0.05)
        assert writer.refresh_now() is not None           # first call: nothing written yet
        assert writer.refresh_now() is None               # clean
        h.get_job("j1")                                    # reads do not dirty it
        assert not writer.dirty and writer.refresh_now() is None
        h.add_hypothesis("x")
        assert writer.dirty
        assert writer.refresh_now(max_age_s=60) is None     # bounded staleness: the last one is young enough
        info = writer.refresh_now()
        assert info.generation == h.generation and info.bytes == snapshot.stat().st_size
        writer.start()
        try:
            h.add_hypothesis("y")
            deadline = time.monotonic() + 5
            while writer.dirty and time.monotonic() < deadline:
                time.sleep(0.02)
            assert not writer.dirty
        finally:
            writer.stop()
    con = duckdb.connect(str(snapshot), read_only=True)
    assert con.execute("SELECT count(*) FROM hypotheses").fetchall() == [(2,)]
    con.close()
    assert not snapshot.with_name(snapshot.name + ".tmp").exists()


def test_a_refused_checkpoint_still_gives_a_whole_snapshot(tmp_path):
    """DuckDB refuses CHECKPOINT while another transaction has drawn from a sequence (the daemon hit this under
    load): the snapshot falls back to copying inside a read transaction instead of failing the caller's query."""
    path, snapshot = tmp_path / "h.duckdb", tmp_path / "snap.duckdb"
    with History(path) as h:
        h.add_hypothesis("committed before the snapshot")
        other = h._con.cursor()
        other.begin()
        other.execute("SELECT nextval('event_id_seq')").fetchall()
        try:
            with pytest.raises(duckdb.TransactionException, match="other write transactions"):
                h.cursor().execute("CHECKPOINT")       # the refusal is real: this test would pass vacuously
            info = h.write_snapshot(snapshot)
        finally:
            other.rollback()
        assert info.method == "copy"
    assert run_user_sql(snapshot, "SELECT text FROM hypotheses").rows == [["committed before the snapshot"]]

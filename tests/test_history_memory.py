"""The history's share of the daemon's memory is bounded. Outside its buffers, DuckDB keeps a record (~150 bytes) in
its buffer pool's eviction queues for every buffer a query released, and purges a queue only once it holds more than
32,768 records. Over the first few thousand jobs these records are the daemon's memory growth; then they stay.
History.memory() reports them (the daemon's GET /memory, bench/scale.py's memory figure). This test pins the bound
the README's figure rests on, so that a DuckDB upgrade which moves it is noticed."""
from __future__ import annotations

from mcp_server.history import History

PURGE_FLOOR = 4096 * 2 * 4           # DuckDB's INSERT_INTERVAL x PURGE_SIZE_MULTIPLIER x EARLY_OUT_MULTIPLIER
QUEUE_BOUND = PURGE_FLOOR + 4096     # a purge runs every INSERT_INTERVAL insertions into the queue


def queues(history: History) -> list[tuple[int, int]]:
    """(records now, records ever inserted) of each eviction queue."""
    return history.cursor().execute(
        "SELECT approximate_size, total_insertions FROM duckdb_eviction_queues() ORDER BY queue_index").fetchall()


def test_eviction_records_grow_with_queries_and_each_queue_is_purged_at_its_bound(tmp_path):
    history = History(tmp_path / "history.duckdb")
    cur = history.cursor()
    # A hash join over 300,000 rows releases ~76 buffers a query: the bound is reached in seconds, not jobs.
    cur.execute("CREATE TEMP TABLE a AS SELECT i, i % 100 AS g FROM range(300000) t(i)")
    cur.execute("CREATE TEMP TABLE b AS SELECT i, 'x' || i AS s FROM range(300000) t(i)")
    before = history.memory()["eviction_queue_records"]
    for r in range(1500):
        cur.execute("SELECT count(*) FROM a JOIN b USING (i) WHERE a.g = ?", [r % 100]).fetchall()
    after = queues(history)
    assert history.memory()["eviction_queue_records"] == sum(size for size, _ in after) > before + 50_000
    assert any(inserted > QUEUE_BOUND for _, inserted in after), f"no queue reached its bound: {after}"
    assert all(size <= QUEUE_BOUND for size, _ in after), f"a queue holds more than DuckDB's bound: {after}"
    assert history.memory()["buffers_mb"] >= 0
    history.close()

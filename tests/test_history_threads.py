"""One History used from many threads at once: no "connection is busy", no lost or doubled writes."""
from __future__ import annotations

import threading
import time

from mcp_server.history import History


def run_threads(target, n: int) -> list[BaseException]:
    errors: list[BaseException] = []
    start = threading.Barrier(n)

    def guarded(i: int) -> None:
        try:
            start.wait()
            target(i)
        except BaseException as e:       # collected and asserted on below
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_eight_threads_write_and_read_together(tmp_path):
    with History(tmp_path / "h.duckdb") as h:
        rounds = 10

        def work(i: int) -> None:
            if i % 2 == 0:          # writers: submit, dispatch, ingest, finish
                for r in range(rounds):
                    (job_id,) = h.insert_jobs([{"argv": ["x"], "tags": [f"t{i}"]}])
                    assert h.update_job(job_id, "queued", status="dispatching", host=f"h{i}")
                    h.ingest(job_id, None, [{"seq": s, "t": time.time(), "source": "marker",
                                             "data": {"step": s, "loss": 1.0 / (s + 1)}} for s in range(20)])
                    h.ingest(job_id, {"status": "succeeded", "started_at": time.time() - 1,
                                      "ended_at": time.time(), "gpus": [0]},
                             [{"seq": 20, "t": time.time(), "source": "summary", "data": {"val_bpb": 1.0 + r}}])
                    h.add_event("tick", f"writer {i} round {r}")
            else:                   # readers: what the MCP tools and the scheduler ask
                for _ in range(rounds * 2):
                    h.jobs(status=["queued", "dispatching", "succeeded"], limit=20)
                    h.count_jobs(tag=f"t{i - 1}")
                    h.get_job("j1")
                    h.metric_series(["j1", "j2"], "loss", max_points=10)
                    h.events(limit=5)
                    h.cursor().execute("SELECT gpu_class, min(primary_value), count(*) FROM jobs "
                                       "WHERE status = 'succeeded' GROUP BY gpu_class").fetchall()

        assert run_threads(work, 8) == []
        assert h.count_jobs(status="succeeded") == 4 * rounds
        metrics = h.cursor().execute("SELECT count(*), count(DISTINCT (job_id, seq)) FROM metrics").fetchall()
        assert metrics == [(4 * rounds * 21, 4 * rounds * 21)]
        assert len({j["job_id"] for j in h.jobs(limit=None)}) == 4 * rounds


def test_compare_and_set_lets_exactly_one_thread_win(tmp_path):
    with History(tmp_path / "h.duckdb") as h:
        job_ids = h.insert_jobs([{"argv": ["x"]} for _ in range(20)])
        wins: list[tuple[str, int]] = []
        lock = threading.Lock()

        def race(i: int) -> None:
            for job_id in job_ids:
                if h.update_job(job_id, "queued", status="dispatching", host=f"h{i}"):
                    with lock:
                        wins.append((job_id, i))

        assert run_threads(race, 8) == []
        assert sorted(j for j, _ in wins) == sorted(job_ids)          # each job won exactly once
        for job_id, winner in wins:
            assert h.get_job(job_id)["host"] == f"h{winner}"
            assert len(h.events(job_id=job_id, kind="status")) == 1


def test_new_ids_from_many_threads_are_distinct(tmp_path):
    with History(tmp_path / "h.duckdb") as h:
        got: list[str] = []
        lock = threading.Lock()

        def take(_: int) -> None:
            for _ in range(20):
                ids = h.new_job_ids(3)
                with lock:
                    got.extend(ids)

        assert run_threads(take, 8) == []
        assert sorted(got, key=lambda j: int(j[1:])) == [f"j{n}" for n in range(1, 8 * 20 * 3 + 1)]

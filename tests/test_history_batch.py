"""Set-based job updates (History.update_jobs) and their group commit across threads (update_job_grouped): what a
dispatch round's placements and a wave's launch confirmations are written with (bench/scale.py found a statement
per job holding the write lock for seconds)."""
from __future__ import annotations

import threading
import time

import pytest

from mcp_server.history import History, HistoryError, JobChange


def _jobs(history: History, n: int) -> list[str]:
    return history.insert_jobs([{"argv": ["sleep", "1"], "time_limit_s": 60.0} for _ in range(n)])


def _status_events(history: History, job_id: str) -> list[tuple[str, str, str]]:
    return [(e["old_status"], e["new_status"], e["reason"]) for e in history.events(job_id=job_id, kind="status")]


def test_update_jobs_sets_each_job_its_own_values_under_its_own_compare_and_set(tmp_path):
    with History(tmp_path / "h.duckdb") as history:
        a, b, c = _jobs(history, 3)
        history.update_job(c, status="cancelled")
        generation = history.generation
        applied = history.update_jobs([
            JobChange(a, {"status": "dispatching", "host": "n1", "gpu_indices": [0, 1]}, "queued", "placed a"),
            JobChange(b, {"status": "dispatching", "host": "n2", "gpu_indices": [3]}, "queued", "placed b"),
            JobChange(c, {"status": "dispatching", "host": "n3", "gpu_indices": [4]}, "queued", "placed c"),
            JobChange("j999", {"status": "dispatching"}, "queued", "no such job"),
        ])
        assert applied == [True, True, False, False]
        assert history.generation == generation + 1          # one transaction
        rows = {r["job_id"]: r for r in history.get_jobs([a, b, c])}
        assert (rows[a]["host"], rows[a]["gpu_indices"]) == ("n1", [0, 1])
        assert (rows[b]["host"], rows[b]["gpu_indices"]) == ("n2", [3])
        assert (rows[c]["status"], rows[c]["host"]) == ("cancelled", None)
        assert _status_events(history, a)[-1] == ("queued", "dispatching", "placed a")
        assert _status_events(history, b)[-1] == ("queued", "dispatching", "placed b")
        assert [e[1] for e in _status_events(history, c)] == ["cancelled"]      # nothing more


def test_update_jobs_applies_changes_to_one_job_in_order(tmp_path):
    with History(tmp_path / "h.duckdb") as history:
        (a,) = _jobs(history, 1)
        applied = history.update_jobs([
            JobChange(a, {"status": "dispatching", "host": "n1"}, "queued", "placed"),
            JobChange(a, {"status": "running", "argv": ["sleep", "2"]}, "dispatching", "launched"),
            JobChange(a, {"status": "failed"}, "queued", "sees running, not queued: refused"),
        ])
        assert applied == [True, True, False]
        row = history.get_job(a)
        assert (row["status"], row["host"], row["argv"]) == ("running", "n1", ["sleep", "2"])
        assert _status_events(history, a)[-2:] == [("queued", "dispatching", "placed"),
                                                   ("dispatching", "running", "launched")]


def test_update_jobs_refuses_a_bad_change_before_writing_any(tmp_path):
    with History(tmp_path / "h.duckdb") as history:
        a, b = _jobs(history, 2)
        with pytest.raises(HistoryError, match="unknown or fixed jobs column"):
            history.update_jobs([JobChange(a, {"status": "dispatching"}, "queued"),
                                 JobChange(b, {"no_such_column": 1}, "queued")])
        with pytest.raises(HistoryError, match="status"):
            history.update_jobs([JobChange(a, {"status": "nonsense"})])
        assert [r["status"] for r in history.get_jobs([a, b])] == ["queued", "queued"]


def test_grouped_updates_from_many_threads_share_transactions(tmp_path):
    with History(tmp_path / "h.duckdb") as history:
        ids = _jobs(history, 64)
        results: dict[str, bool] = {}

        def confirm(job_id: str) -> None:
            results[job_id] = history.update_job_grouped(
                JobChange(job_id, {"status": "dispatching", "host": "n1"}, "queued", "placed"))

        threads = [threading.Thread(target=confirm, args=(j,)) for j in ids]
        generation = history.generation
        with history.transaction():        # the write lock is held: the first thread's write waits for it
            for t in threads:
                t.start()
            deadline = time.monotonic() + 60
            while len(history._grouped) < len(ids) - 1:     # the rest queue behind the first's write
                assert time.monotonic() < deadline, "the threads did not all queue their changes"
                time.sleep(0.01)
        for t in threads:
            t.join(60)
        assert results == {j: True for j in ids}
        # This test's transaction, then the first thread's change, then the 63 queued meanwhile: not 64 writes.
        assert history.generation - generation <= 3
        assert {r["status"] for r in history.get_jobs(ids)} == {"dispatching"}
        assert all(_status_events(history, j)[-1] == ("queued", "dispatching", "placed") for j in ids)


def test_a_grouped_update_inside_a_transaction_is_refused(tmp_path):
    with History(tmp_path / "h.duckdb") as history:
        (a,) = _jobs(history, 1)
        with history.transaction(), pytest.raises(RuntimeError, match="inside a transaction"):
            history.update_job_grouped(JobChange(a, {"status": "dispatching"}, "queued"))
        assert history.get_job(a)["status"] == "queued"

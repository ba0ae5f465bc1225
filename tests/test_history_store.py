"""History on real DuckDB files: schema and migrations, ids, compare-and-set, ingestion, queries."""
from __future__ import annotations

import math
import time

import duckdb
import pytest

from mcp_server.history import (
    EXAMPLES, History, HistoryBusyError, HistoryError, Migration, describe_history, run_user_sql, schema,
)


@pytest.fixture
def history(tmp_path):
    with History(tmp_path / "history.duckdb") as h:
        yield h


def rows(history: History, sql: str) -> list[dict]:
    cur = history.cursor().execute(sql)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def marker(seq: int, **data) -> dict:
    return {"seq": seq, "t": 1_700_000_000.0 + seq, "source": "marker", "data": data}


def summary(seq: int, **data) -> dict:
    return {"seq": seq, "t": 1_700_000_000.0 + seq, "source": "summary", "data": data}


def finished(status: str = "succeeded", gpus=(0,), start: float = 1_700_000_000.0, seconds: float = 300.0) -> dict:
    return {"status": status, "gpus": list(gpus), "gpu_uuids": [f"GPU-{i}" for i in gpus], "started_at": start,
            "ended_at": start + seconds, "exit_code": 0 if status == "succeeded" else 1, "signal": None,
            "reason": None, "log_bytes": 4096}


def everything(path) -> dict:
    """Every row of every table, for before/after comparisons."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        tables = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()]
        return {t: sorted(map(repr, con.execute(f"SELECT * FROM {t}").fetchall())) for t in tables}
    finally:
        con.close()


def test_schema_is_created_and_survives_reopen(tmp_path):
    path = tmp_path / "h.duckdb"
    with History(path) as h:
        assert h.schema_version == schema.MIGRATIONS[-1].version
        (job_id,) = h.insert_jobs([{"argv": ["echo", "hi"], "tags": ["t"]}])
    with History(path) as h:
        assert h.get_job(job_id)["argv"] == ["echo", "hi"]
        versions = h.cursor().execute("SELECT version FROM schema_version").fetchall()
        assert versions == [(m.version,) for m in schema.MIGRATIONS]
        names = {r[0] for r in h.cursor().execute(
            "SELECT table_name FROM duckdb_tables() UNION SELECT view_name FROM duckdb_views() "
            "WHERE NOT internal").fetchall()}
    assert {"jobs", "metrics", "events", "hosts", "gpus", "hypotheses", "runs", "hypothesis_jobs"} <= names


def test_a_new_migration_is_applied_once_on_open(tmp_path, monkeypatch):
    path = tmp_path / "h.duckdb"
    History(path).close()
    extra = Migration(schema.MIGRATIONS[-1].version + 1, "notes table",
                      lambda cur: cur.execute("CREATE TABLE notes (id INTEGER, text VARCHAR)"))
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS + [extra])
    for _ in range(2):
        with History(path) as h:
            assert h.schema_version == extra.version
            assert h.cursor().execute("SELECT count(*) FROM notes").fetchall() == [(0,)]


def test_a_database_from_a_newer_arc_is_refused(tmp_path):
    path = tmp_path / "h.duckdb"
    History(path).close()
    con = duckdb.connect(str(path))
    con.execute("INSERT INTO schema_version VALUES (999, now(), 'future')")
    con.close()
    with pytest.raises(RuntimeError, match="schema version 999, newer than this arc"):
        History(path)
    with History(path.with_name("other.duckdb")):       # a failed open leaves nothing behind
        pass


def test_one_history_per_file_per_process(tmp_path):
    with History(tmp_path / "h.duckdb"):
        with pytest.raises(HistoryBusyError, match="already open in this process"):
            History(tmp_path / "h.duckdb")
    History(tmp_path / "h.duckdb").close()


def test_job_ids_are_never_reused_even_across_reopen(tmp_path):
    path = tmp_path / "h.duckdb"
    with History(path) as h:
        assert h.new_job_ids(3) == ["j1", "j2", "j3"]       # reserved, never inserted
    with History(path) as h:
        assert h.new_job_ids(2) == ["j4", "j5"]
        assert h.insert_jobs([{"argv": ["true"]}, {"argv": ["false"]}]) == ["j6", "j7"]
    with History(path) as h:
        assert h.new_job_ids(1) == ["j8"]
        assert h.add_hypothesis("a") == "h1"
    with History(path) as h:
        assert h.add_hypothesis("b") == "h2"


def test_insert_refuses_bad_rows_and_writes_nothing(history):
    with pytest.raises(HistoryError, match="was not allocated by new_job_ids"):
        history.insert_jobs([{"job_id": "j5", "argv": ["true"]}])
    with pytest.raises(HistoryError, match="unknown or fixed jobs column.*colour"):
        history.insert_jobs([{"argv": ["true"], "colour": "red"}])
    with pytest.raises(HistoryError, match="status 'paused' is not one of queued"):
        history.insert_jobs([{"argv": ["true"], "status": "paused"}])
    with pytest.raises(HistoryError, match="unknown hypothesis 'h9'"):
        history.insert_jobs([{"argv": ["true"], "hypothesis_id": "h9"}])
    assert history.count_jobs() == 0
    assert history.events() == []


def test_compare_and_set_on_status_writes_one_event(history):
    (job_id,) = history.insert_jobs([{"argv": ["true"]}])
    assert history.update_job(job_id, "queued", status="dispatching", host="a", gpu_indices=[1],
                              _reason="placed on a:1", _event={"policy": "fastest-free"})
    assert not history.update_job(job_id, "queued", status="dispatching", host="b")     # lost the race
    assert not history.update_job("j999", None, status="running")                       # no such job
    assert not history.update_job("../j1", None, status="running") and history.get_job("j1 ") is None
    job = history.get_job(job_id)
    assert (job["status"], job["host"], job["gpu_indices"]) == ("dispatching", "a", [1])
    assert history.update_job(job_id, ["dispatching", "unconfirmed"], status="running", attempts=1)
    assert history.update_job(job_id, None, log_bytes=10)                               # no status change
    events = history.events(job_id=job_id, kind="status")
    assert [(e["old_status"], e["new_status"], e["reason"], e["host"]) for e in events] == [
        ("queued", "dispatching", "placed on a:1", "a"), ("dispatching", "running", None, "a")]
    assert events[0]["data"] == {"policy": "fastest-free"}
    with pytest.raises(HistoryError, match="unknown or fixed jobs column.*job_num"):
        history.update_job(job_id, None, job_num=5)


def test_ingest_maps_records_and_state(history):
    (job_id,) = history.insert_jobs([{"argv": ["train"], "gpu_indices": [0, 1]}])
    history.update_job(job_id, "queued", status="running")
    records = [marker(0, step=0, train_loss=4.0, tok_per_s=1e6, compiled=True, config={"lr": 0.02}),
               marker(1, step=1, train_loss=float("nan")),
               summary(2, val_bpb="0.997900", peak_vram_mb=45000.5, num_steps=950, note="ok")]
    assert history.ingest(job_id, finished(gpus=(0, 1)), records) == 2 + 1 + 3
    job = history.get_job(job_id)
    assert job["status"] == "succeeded" and job["exit_code"] == 0 and job["log_bytes"] == 4096
    assert job["primary_value"] == pytest.approx(0.9979)
    assert job["summary"] == {"val_bpb": "0.997900", "peak_vram_mb": 45000.5, "num_steps": 950, "note": "ok"}
    assert job["info"] == {"compiled": True, "config": {"lr": 0.02}}
    assert job["gpu_seconds"] == pytest.approx(600.0) and job["gpu_uuids"] == ["GPU-0", "GPU-1"]
    assert job["metrics_seq"] == 2
    rows = history.cursor().execute(
        "SELECT seq, step, name, value FROM metrics WHERE job_id = ? ORDER BY seq, name", [job_id]).fetchall()
    assert rows[:2] == [(0, 0, "tok_per_s", 1e6), (0, 0, "train_loss", 4.0)]
    assert rows[2][:3] == (1, 1, "train_loss") and math.isnan(rows[2][3])
    assert rows[3:] == [(2, None, "num_steps", 950.0), (2, None, "peak_vram_mb", 45000.5), (2, None, "val_bpb", 0.9979)]
    (event,) = history.events(job_id=job_id, kind="status", after_id=0)[-1:]
    assert (event["old_status"], event["new_status"], event["data"]["exit_code"]) == ("running", "succeeded", 0)
    run = history.cursor().execute("SELECT val_bpb, num_steps, n_gpus FROM runs WHERE job_id = ?",
                                   [job_id]).fetchall()
    assert run == [(0.9979, 950.0, 2)]


def test_ingesting_the_same_thing_twice_changes_nothing(tmp_path):
    path = tmp_path / "h.duckdb"
    records = [marker(i, step=i, train_loss=3.0 - i / 100, tok_per_s=1e6) for i in range(50)]
    records.append(summary(50, val_bpb=0.99, mfu_percent=float("nan")))
    with History(path) as h:
        (job_id,) = h.insert_jobs([{"argv": ["train"]}])
        assert h.ingest(job_id, finished(), records) == 50 * 2 + 2
    before = everything(path)
    with History(path) as h:
        generation = h.generation
        assert h.ingest(job_id, finished(), records) == 0
        assert h.ingest(job_id, finished(), records[10:20]) == 0
        assert h.generation == generation         # no write committed: a snapshot stays clean
    assert everything(path) == before


def test_overlapping_batches_ingest_each_record_once(history):
    (job_id,) = history.insert_jobs([{"argv": ["train"]}])
    running = {"status": "running", "started_at": 1_700_000_000.0}
    assert history.ingest(job_id, running, [marker(i, step=i, loss=1.0) for i in range(0, 50)]) == 50
    assert history.ingest(job_id, running, [marker(i, step=i, loss=1.0) for i in range(25, 100)]) == 50
    assert history.get_job(job_id)["status"] == "queued"        # a non-terminal host status is the scheduler's
    counts = history.cursor().execute(
        "SELECT count(*), count(DISTINCT seq), max(seq) FROM metrics WHERE job_id = ?", [job_id]).fetchall()
    assert counts == [(100, 100, 99)]


def test_ingest_of_an_unknown_job_is_refused(history):
    with pytest.raises(HistoryError, match="unknown job 'j42'"):
        history.ingest("j42", finished(), [marker(0, loss=1.0)])


def test_bulk_ingest_of_100k_metric_rows(history):
    (job_id,) = history.insert_jobs([{"argv": ["train"]}])
    records = [marker(i, step=i, a=1.0, b=2.0, c=3.0, d=4.0, e=float(i)) for i in range(20_000)]
    started = time.perf_counter()
    assert history.ingest(job_id, None, records) == 100_000
    elapsed = time.perf_counter() - started
    assert history.cursor().execute("SELECT count(*), sum(value) FROM metrics WHERE name = 'e'").fetchall() == [
        (20_000, float(sum(range(20_000))))]
    print(f"100k metric rows ingested in {elapsed:.2f} s")


def test_job_listing_filters_orders_and_pages(history):
    h1 = history.add_hypothesis("wider is better")
    ids = history.insert_jobs([{"argv": ["x"], "host": "a" if i % 2 else "b", "tags": ["wave1"] if i < 4 else [],
                                "priority": i} for i in range(10)])
    history.update_hypothesis(h1, add_jobs=ids[:3])
    history.update_job(ids[0], None, status="running")
    assert [j["job_id"] for j in history.jobs(limit=3)] == ["j10", "j9", "j8"]
    assert [j["job_id"] for j in history.jobs(limit=3, offset=3)] == ["j7", "j6", "j5"]
    assert [j["job_id"] for j in history.jobs(order="priority asc", limit=2)] == ["j1", "j2"]
    assert history.count_jobs(status="queued") == 9 and history.count_jobs(status=["queued", "running"]) == 10
    assert {j["job_id"] for j in history.jobs(host="a", tag="wave1")} == {"j2", "j4"}
    assert {j["job_id"] for j in history.jobs(hypothesis=h1)} == set(ids[:3])
    assert history.count_jobs(since=time.time() + 60) == 0
    with pytest.raises(HistoryError, match="order 'argv; drop table jobs'"):
        history.jobs(order="argv; drop table jobs")
    with pytest.raises(HistoryError, match="status 'done' is not one of"):
        history.jobs(status="done")
    assert [j["job_id"] for j in history.get_jobs(["j3", "j99", "j1"])] == ["j3", "j1"]


def test_hypotheses_lifecycle(history):
    hyp = history.add_hypothesis("lower warmup helps", rationale="short runs", tags=["lr"], created_by="agent")
    ids = history.insert_jobs([{"argv": ["x"], "hypothesis_id": hyp}, {"argv": ["y"]}, {"argv": ["z"]}])
    updated = history.update_hypothesis(hyp, status="supported", verdict="-0.004 bpb on H100", effect_size=-0.004,
                                        add_jobs=[ids[2], ids[1], ids[2]])
    assert updated["jobs"] == ["j1", "j3", "j2"] and updated["status"] == "supported"
    assert history.get_job(ids[2])["hypothesis_id"] == hyp
    assert [h["hyp_id"] for h in history.hypotheses(status="supported")] == [hyp]
    assert history.count_hypotheses(status="open") == 0
    assert history.hypotheses(status=["open", "refuted"]) == []
    with pytest.raises(HistoryError, match="hypothesis status 'proven' is not one of open"):
        history.update_hypothesis(hyp, status="proven")
    with pytest.raises(HistoryError, match="unknown hypothesis 'h7'"):
        history.update_hypothesis("h7", verdict="x")
    with pytest.raises(HistoryError, match="unknown job.*j99"):
        history.update_hypothesis(hyp, add_jobs=["j99"])
    with pytest.raises(HistoryError, match="needs text"):
        history.add_hypothesis("  ")
    assert history.get_hypothesis(hyp)["jobs"] == ["j1", "j3", "j2"]


def test_hosts_and_gpus_upsert_only_what_is_given(history):
    history.upsert_hosts([{"name": "a", "transport": "ssh", "address": "10.77.0.11", "labels": ["fast"],
                           "cost_per_gpu_hour": 2.5, "reachable": True}])
    history.upsert_hosts([{"name": "a", "reachable": False, "last_error": "timeout"}, {"name": "b"}])
    a, b = rows(history, "SELECT * FROM hosts ORDER BY name")
    assert (a["address"], a["labels"], a["reachable"], a["last_error"]) == ("10.77.0.11", ["fast"], False, "timeout")
    assert b["name"] == "b" and b["transport"] is None
    history.upsert_gpus("a", [{"index": 0, "uuid": "GPU-x", "name": "NVIDIA H100 80GB HBM3",
                               "memory_total_mb": 81559.0, "simulated": True}])
    history.upsert_gpus("a", [{"index": 0, "uuid": "GPU-x", "name": "NVIDIA H200", "memory_total_mb": 143771.0,
                               "simulated": False}])
    (gpu,) = rows(history, "SELECT * FROM gpus WHERE host = 'a'")
    assert (gpu["model"], gpu["gpu_class"], gpu["memory_total_mb"]) == ("NVIDIA H200", "H200", 143771.0)
    with pytest.raises(HistoryError, match="host without a name"):
        history.upsert_hosts([{"address": "x"}])


def test_metric_series_is_downsampled_keeping_the_ends(history):
    a, b = history.insert_jobs([{"argv": ["x"]}, {"argv": ["y"]}])
    history.ingest(a, None, [marker(i, step=i * 10, train_loss=10 - i / 100) for i in range(1000)])
    history.ingest(b, None, [marker(i, step=i, train_loss=1.0) for i in range(5)])
    series = history.metric_series([a, b, "j99"], "train_loss", max_points=100)
    assert 90 <= len(series[a]["step"]) <= 101
    assert series[a]["step"][0] == 0 and series[a]["step"][-1] == 9990
    assert series[a]["step"] == sorted(series[a]["step"])
    assert series[b]["value"] == [1.0] * 5 and series["j99"]["step"] == []
    assert history.metric_names(a) == ["train_loss"]


def test_events_page_forward_or_show_the_latest(history):
    ids = [history.add_event("tick", f"n{i}", host="a", data={"i": i}) for i in range(10)]
    assert ids == sorted(ids)
    assert [e["reason"] for e in history.events(limit=3)] == ["n7", "n8", "n9"]
    assert [e["reason"] for e in history.events(after_id=ids[1], limit=2)] == ["n2", "n3"]
    assert history.events(host="b") == []


def test_describe_covers_every_relation_and_its_examples_run(tmp_path):
    path = tmp_path / "h.duckdb"
    with History(path) as h:
        hyp = h.add_hypothesis("x")
        (job_id,) = h.insert_jobs([{"argv": ["x"], "host": "a", "gpu_class": "H100", "hypothesis_id": hyp,
                                    "config": {"lr": 0.01}}])
        h.ingest(job_id, finished(), [marker(0, step=0, train_loss=2.0), summary(1, val_bpb=0.99)])
        described = h.describe()
    relations = {r["name"]: r for r in described["relations"]}
    assert {"jobs", "metrics", "events", "hosts", "gpus", "hypotheses", "runs", "hypothesis_jobs"} <= set(relations)
    assert relations["jobs"]["columns"]["status"].startswith("VARCHAR: one of queued")
    assert relations["runs"]["columns"]["val_bpb"] == "DOUBLE: summary value val_bpb"
    assert relations["runs"]["columns"]["host"] == "VARCHAR: host it was placed on"     # from the jobs docs
    assert all(doc.split(": ", 1)[1] for r in relations.values() for doc in r["columns"].values())
    assert 5 <= len(described["examples"]) <= 8
    for example in EXAMPLES:
        result = run_user_sql(path, example["sql"])
        assert result.columns, example["title"]
    con = duckdb.connect(str(path), read_only=True)
    assert describe_history(con) == described          # the same from any connection, e.g. a snapshot
    con.close()


def test_paging_orders_and_unbounded_listing(history):
    ids = history.insert_jobs([{"argv": ["x"], "name": f"n{i}", "priority": i % 3} for i in range(7)])
    rows, total = history.jobs_page(limit=2, offset=1)
    assert total == 7 and [r["job_id"] for r in rows] == ["j6", "j5"]
    ordered = history.jobs(order="priority desc, job_num asc", limit=None)
    assert [(r["priority"], r["job_id"]) for r in ordered] == [
        (2, "j3"), (2, "j6"), (1, "j2"), (1, "j5"), (0, "j1"), (0, "j4"), (0, "j7")]
    assert history.get_job(ids[0])["name"] == "n0"
    assert history.update_job(ids[0], None, cancel_requested=True)
    assert history.get_job(ids[0])["cancel_requested"] is True
    with pytest.raises(HistoryError, match="order 'priority desc, argv'"):
        history.jobs(order="priority desc, argv")


def test_metric_high_water_and_last_values(history):
    (job_id,) = history.insert_jobs([{"argv": ["x"]}])
    assert history.metrics_high_water(job_id) == 0 and history.last_metrics(job_id) is None
    history.ingest(job_id, None, [marker(0, step=0, loss=3.0), marker(1, step=1, loss=2.5, lr=0.1)])
    assert history.metrics_high_water(job_id) == 2
    assert history.last_metrics(job_id) == {"loss": 2.5, "lr": 0.1}
    with pytest.raises(HistoryError, match="unknown job 'j9'"):
        history.metrics_high_water("j9")


def test_a_read_only_history_reads_and_refuses_writes(tmp_path):
    path = tmp_path / "h.duckdb"
    with pytest.raises(HistoryError, match="no history at .* yet"):
        History(path, read_only=True)
    with History(path) as h:
        h.insert_jobs([{"argv": ["x"]}])
    with History(path, read_only=True) as ro:
        assert ro.count_jobs() == 1 and ro.get_job("j1")["argv"] == ["x"]
        with pytest.raises(HistoryError, match="open read-only: writes go through the arc daemon"):
            ro.update_job("j1", None, status="failed")
        with pytest.raises(HistoryError, match="snapshots are written by the history's read-write owner"):
            ro.write_snapshot(tmp_path / "snap.duckdb")
        # the CLI with no daemon serves user SQL on the main file while it reads it
        assert run_user_sql(path, "SELECT job_id FROM jobs").rows == [["j1"]]
    with History(path, read_only=True) as ro:
        assert ro.schema_version == schema.MIGRATIONS[-1].version


def test_the_schema_admits_exactly_the_vocabulary(history):
    from mcp_server.core.vocabulary import HYPOTHESIS_STATUSES, JOB_STATUSES

    ids = history.insert_jobs([{"argv": ["x"], "status": s} for s in JOB_STATUSES])
    assert [history.get_job(j)["status"] for j in ids] == list(JOB_STATUSES)
    with pytest.raises(HistoryError, match="status 'held' is not one of queued, dispatching"):
        history.insert_jobs([{"argv": ["x"], "status": "held"}])
    cur = history.cursor()
    with pytest.raises(duckdb.ConstraintException):     # the CHECK itself, for writers that skip the store
        cur.execute("UPDATE jobs SET status = 'held' WHERE job_id = ?", [ids[0]])
    hyp = history.add_hypothesis("wider is better")
    for status in HYPOTHESIS_STATUSES:
        assert history.update_hypothesis(hyp, status=status)["status"] == status
    with pytest.raises(duckdb.ConstraintException):
        cur.execute("UPDATE hypotheses SET status = 'closed' WHERE hyp_id = ?", [hyp])

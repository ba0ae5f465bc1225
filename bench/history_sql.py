"""History at scale: SQL latency, snapshot cost, file size and daemon memory on a synthetic history.

    python bench/history_sql.py                      # 100 k jobs, 10 M metric rows (about a minute to build)
    python bench/history_sql.py --jobs 10000 --metrics 1000000 --runs 3

Builds the history through the real schema (History opens and migrates it) with Arrow inserts, then times
(median of --runs after one warm-up) the queries the tools and people run, directly on the owner's connection and
through run_user_sql on the snapshot (which includes opening a fresh locked-down instance per query); the two
snapshot methods; and, in a child process, the RSS of a History that opened this history and served the
scheduler's and tools' reads, and of one that inserted jobs through the API.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mcp_server.history import History, run_user_sql  # noqa: E402

CLASSES = np.array(["H100-SXM", "H200", "A100-80GB"])   # as gpu_classes.gpu_class names them
STATUSES = np.array(["succeeded"] * 8 + ["failed", "timeout"])

QUERIES = {
    "leaderboard (top 20 in a class)":
        "SELECT job_id, val_bpb, seed, config FROM runs WHERE status = 'succeeded' AND gpu_class = 'H100-SXM' "
        "ORDER BY val_bpb LIMIT 20",
    "one job's loss curve":
        "SELECT step, value FROM metrics WHERE job_id = '{job}' AND name = 'train_loss' ORDER BY seq",
    "best per GPU class":
        "SELECT gpu_class, min(val_bpb) AS best, arg_min(job_id, val_bpb) AS job_id, count(*) AS runs FROM runs "
        "WHERE status = 'succeeded' GROUP BY gpu_class ORDER BY best",
    "failures by reason":
        "SELECT status, reason, count(*) AS n FROM jobs WHERE status IN ('failed', 'timeout', 'lost') "
        "GROUP BY ALL ORDER BY n DESC",
}


def ids(prefix: str, numbers: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(numbers), pa.string()), "")


def build(path: Path, n_jobs: int, n_metrics: int, seed: int = 0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    per_job = max(1, n_metrics // n_jobs)
    timings = {}
    with History(path) as h:
        num = np.arange(1, n_jobs + 1)
        started = 1_700_000_000 + num * 60.0
        val_bpb = 0.99 + rng.random(n_jobs) * 0.05
        lr = np.round(rng.choice([0.02, 0.03, 0.04, 0.06], n_jobs), 3)
        config = [json.dumps({"lr": float(a), "depth": int(d)}) for a, d in zip(lr, 8 + num % 4)]
        summary = [json.dumps({"val_bpb": float(v), "training_seconds": 300.0, "total_seconds": 325.1,
                               "peak_vram_mb": 45060.2, "mfu_percent": 39.6, "total_tokens_M": 499.6,
                               "num_steps": per_job, "num_params_M": 50.3, "depth": 8}) for v in val_bpb]
        status = STATUSES[num % len(STATUSES)]
        utc = pa.timestamp("us", tz="UTC")
        jobs = pa.table({
            "job_id": ids("j", num), "job_num": pa.array(num, pa.int64()), "status": pa.array(status),
            "submitted_at": pa.array((started - 30) * 1e6, pa.int64()).cast(utc),
            "updated_at": pa.array((started + 330) * 1e6, pa.int64()).cast(utc),
            "started_at": pa.array(started * 1e6, pa.int64()).cast(utc),
            "ended_at": pa.array((started + 325) * 1e6, pa.int64()).cast(utc),
            "kind": pa.array(np.full(n_jobs, "trainer")), "priority": pa.array(np.zeros(n_jobs, np.int32)),
            "attempts": pa.array(np.ones(n_jobs, np.int32)), "primary_metric": pa.array(np.full(n_jobs, "val_bpb")),
            "metrics_seq": pa.array(np.full(n_jobs, per_job - 1, np.int64)),
            "host": ids("host", num % 32), "gpu_indices": pa.array([[int(i)] for i in num % 8], pa.list_(pa.int32())),
            "gpu_class": pa.array(CLASSES[num % 3]), "seed": pa.array(num, pa.int64()),
            "config": pa.array(config), "summary": pa.array(summary),
            "primary_value": pa.array(np.where(status == "succeeded", val_bpb, np.nan)),
            "reason": pa.array(np.where(status == "succeeded", None, "exit code 1")),
            "gpu_seconds": pa.array(np.full(n_jobs, 325.0)), "tags": pa.array([["bench"]] * n_jobs)})
        t = time.perf_counter()
        with h.transaction() as cur:
            cur.register("bench_jobs", jobs)
            cur.execute("INSERT INTO jobs BY NAME SELECT * FROM bench_jobs")
            cur.unregister("bench_jobs")
            cur.execute("UPDATE counters SET value = ? WHERE name = 'job'", [n_jobs])
        timings["insert jobs (Arrow), rows/s"] = n_jobs / (time.perf_counter() - t)

        t = time.perf_counter()
        chunk = 1_000_000
        for lo in range(0, n_jobs * per_job, chunk):
            row = np.arange(lo, min(lo + chunk, n_jobs * per_job))
            job, seq = row // per_job + 1, row % per_job
            names = np.where(seq % 2 == 0, "train_loss", "tok_per_s")
            values = np.where(seq % 2 == 0, 4.0 / np.sqrt(seq + 1) + rng.random(len(row)) * 0.05, 1.6e6)
            table = pa.table({
                "job_id": ids("j", job), "seq": pa.array(seq, pa.int64()),
                "t": pa.array(((1_700_000_000 + job * 60.0 + seq * 0.3) * 1e6).astype(np.int64)).cast(utc),
                "step": pa.array(seq // 2, pa.int64()), "name": pa.array(names), "value": pa.array(values)})
            with h.transaction() as cur:
                cur.register("bench_metrics", table)
                cur.execute("INSERT INTO metrics SELECT * FROM bench_metrics")
                cur.unregister("bench_metrics")
        timings["insert metrics (Arrow), rows/s"] = n_jobs * per_job / (time.perf_counter() - t)
    return timings


def median_time(fn, runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


MEMORY_CHILD = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from mcp_server.history import History

    def rss_mb(field="VmRSS"):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    out = {"python + imports": rss_mb()}
    mode, path, n = sys.argv[2], sys.argv[3], int(sys.argv[4])
    with History(path) as h:
        out["History opened"] = rss_mb()
        if mode == "read":
            h.jobs(status=["queued", "dispatching", "unconfirmed", "running", "unknown"], limit=None)
            h.jobs(status="succeeded", limit=None)          # every finished job as dicts: the worst case
            h.count_jobs()
            for sql in QUERIES.values():
                h.cursor().execute(sql.format(job="j1")).fetchall()
            h.metric_series(["j1", "j%d" % n], "train_loss", 500); h.events(limit=100)
            out["after reading all 100k-scale job lists"] = rss_mb()
        else:
            for lo in range(0, n, 500):
                batch = [{"argv": ["python", "-m", "trainer"], "config": {"lr": 0.04, "depth": 8}, "tags": ["w"],
                          "requirements": {"gpus": 1, "gpu_class": "H100-SXM"}, "seed": i}
                         for i in range(lo, min(lo + 500, n))]
                h.insert_jobs(batch)
            out["after insert_jobs of %d jobs" % n] = rss_mb()
            for i in range(1, min(n, 1000) + 1):
                job = "j%d" % i
                h.update_job(job, "queued", status="running", host="a", gpu_indices=[0])
                h.ingest(job, {"status": "succeeded", "started_at": 1.7e9, "ended_at": 1.7e9 + 300, "gpus": [0]},
                         [{"seq": s, "t": 1.7e9 + s, "source": "marker", "data": {"step": s, "train_loss": 3.0}}
                          for s in range(100)] + [{"seq": 100, "t": 1.7e9 + 300, "source": "summary",
                                                   "data": {"val_bpb": 0.99}}])
            out["after dispatching + ingesting %d of them" % min(n, 1000)] = rss_mb()
    out["peak (VmHWM)"] = rss_mb("VmHWM")
    print(json.dumps(out))
""")


def memory(path: Path, mode: str, n_jobs: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(Path(__file__).resolve().parents[1]), mode,
                          str(path), str(n_jobs)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--metrics", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="where to build (default: a temporary directory)")
    args = parser.parse_args()
    workdir = Path(args.dir or tempfile.mkdtemp(prefix="arc-history-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    path, snapshot = workdir / "history.duckdb", workdir / "history.snapshot.duckdb"
    for stale in workdir.glob("history*"):
        stale.unlink()
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
          f"{args.jobs:,} jobs, {args.metrics:,} metric rows; median of {args.runs} runs\n")

    t = time.perf_counter()
    rows = build(path, args.jobs, args.metrics)
    rows["build total, s"] = time.perf_counter() - t
    job = f"j{args.jobs // 2}"
    with History(path) as h:
        rows["DB file size, MB"] = path.stat().st_size / 1e6
        for method in ("file", "copy"):
            rows[f"snapshot ({method}), s"] = median_time(lambda: h.write_snapshot(snapshot, method),
                                                          max(1, args.runs // 2))
        rows["snapshot file size, MB"] = snapshot.stat().st_size / 1e6
        cur = h.cursor()
        for name, sql in QUERIES.items():
            sql = sql.format(job=job)
            rows[f"{name}: direct, ms"] = 1e3 * median_time(lambda: cur.execute(sql).fetchall(), args.runs)
            rows[f"{name}: run_user_sql, ms"] = 1e3 * median_time(
                lambda: run_user_sql(snapshot, sql, limit=1000), args.runs)
        rows["API metric_series(1 job, 500 pts), ms"] = 1e3 * median_time(
            lambda: h.metric_series([job], "train_loss", 500), args.runs)
        rows["API jobs(status=running, limit=None), ms"] = 1e3 * median_time(
            lambda: h.jobs(status="running", limit=None), args.runs)
        rows["API get_job, ms"] = 1e3 * median_time(lambda: h.get_job(job), args.runs)
        queued = iter(h.insert_jobs([{"argv": ["x"]} for _ in range(args.runs + 1)]))
        rows["API update_job (compare-and-set + event), ms"] = 1e3 * median_time(
            lambda: h.update_job(next(queued), "queued", status="dispatching", host="host1", gpu_indices=[0],
                                 _reason="bench"), args.runs)
        batches = iter(range(10**6, 10**9, 100))       # fresh seqs each call, past the synthetic ones

        def ingest_batch() -> None:
            first = next(batches)
            h.ingest("j1", None, [{"seq": s, "t": time.time(), "source": "marker",
                                   "data": {"step": s, "train_loss": 3.0, "tok_per_s": 1e6}}
                                  for s in range(first, first + 100)])

        rows["API ingest (100 records x 2 metrics), ms"] = 1e3 * median_time(ingest_batch, args.runs)
        rows["run_user_sql overhead (SELECT 1), ms"] = 1e3 * median_time(lambda: run_user_sql(snapshot, "SELECT 1"),
                                                                          args.runs)
    for key, value in memory(path, "read", args.jobs).items():
        rows[f"RSS, opened the {args.jobs:,}-job history: {key}, MB"] = value
    for key, value in memory(workdir / "fresh.duckdb", "write", args.jobs).items():
        rows[f"RSS, fresh history via API: {key}, MB"] = value

    width = max(len(k) for k in rows)
    for key, value in rows.items():
        print(f"{key:<{width}}  {value:>12,.1f}")


if __name__ == "__main__":
    main()

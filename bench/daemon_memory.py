"""The daemon's memory on a large history: RSS of a real `arc daemon` process that owns a history of --jobs jobs.

bench/history_sql.py measures a bare History object in a child process; this measures the whole daemon (uvicorn,
the MCP server, the scheduler, the host sessions, the snapshot writer) on the same synthetic history, built by
history_sql.build through the real schema. One `local` host with two simulated GPUs (no root needed).
Per run (a fresh daemon each time, same history): RSS after start (reconcile and first snapshot), after the
reads the tools and people make (list_jobs, job_status, leaderboard, digest, SQL on the snapshot), and after
--run-jobs short jobs went through it; with the peak (VmHWM). An empty history is the baseline. Medians of --runs.

    python bench/daemon_memory.py [--jobs 100000] [--metrics 1000000] [--runs 3] [--run-jobs 200]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from history_sql import build  # noqa: E402

from mcp_server.core.paths import StatePaths  # noqa: E402
from mcp_server.daemon.client import DaemonClient  # noqa: E402
from tests.harness import local_host_entry, write_hosts_yaml  # noqa: E402


def rss_mb(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def one_run(state: Path, hosts_yaml: Path, run_jobs: int) -> dict[str, float]:
    client = DaemonClient(StatePaths.resolve(state))
    client.ensure(hosts_yaml)
    pid = client.info()["pid"]
    try:
        deadline = time.monotonic() + 60
        while not all(h["reachable"] for h in client.call("list_gpus")["hosts"]):
            if time.monotonic() > deadline:
                raise SystemExit("the local host did not connect")
            time.sleep(0.2)
        out = {"after start": rss_mb(pid)["VmRSS"]}
        listed = client.call("list_jobs", limit=500)["jobs"]
        if listed:
            client.call("job_status", job_ids=[j["job_id"] for j in listed[:50]])
        client.call("leaderboard")
        client.call("digest", since="1d")
        client.call("query_results", sql="SELECT gpu_class, min(val_bpb), count(*) FROM runs GROUP BY ALL")
        out["after tool reads"] = rss_mb(pid)["VmRSS"]
        ids: list[str] = []
        for lo in range(0, run_jobs, 200):
            ids += [j["job_id"] for j in client.call("submit_jobs", jobs=[
                {"command": ["true"], "time_limit_s": 60}] * min(200, run_jobs - lo))["jobs"]]
        for lo in range(0, len(ids), 200):
            client.call("wait_for_jobs", timeout=700, job_ids=ids[lo:lo + 200], mode="all", timeout_s=600)
        end = rss_mb(pid)
        out[f"after {run_jobs} more jobs ran"] = end["VmRSS"]
        out["peak (VmHWM)"] = end["VmHWM"]
        return out
    finally:
        client.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--metrics", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--run-jobs", type=int, default=200)
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPUs, load average {load[0]:.2f}; {args.jobs:,} jobs, {args.metrics:,} metric "
          f"rows; median of {args.runs} runs, a fresh daemon each\n")
    with tempfile.TemporaryDirectory(prefix="arc-daemon-memory-") as tmp:
        root = Path(tmp)
        hosts_yaml = write_hosts_yaml(root / "hosts.yaml", [local_host_entry(
            root / "work", simulate_gpus=[{"model": "H100", "memory_gb": 80}] * 2, cpu_slots=2)])
        results: dict[str, list[dict[str, float]]] = {"empty history": [], f"{args.jobs:,}-job history": []}
        big = root / "big"
        big.mkdir()
        t = time.perf_counter()
        build(big / "history.duckdb", args.jobs, args.metrics)
        print(f"built the synthetic history in {time.perf_counter() - t:.0f} s "
              f"({(big / 'history.duckdb').stat().st_size / 1e6:.0f} MB)")
        for i in range(args.runs):
            results["empty history"].append(one_run(root / f"empty{i}", hosts_yaml, args.run_jobs))
            results[f"{args.jobs:,}-job history"].append(one_run(big, hosts_yaml, args.run_jobs))
    for name, runs in results.items():
        print(f"\n{name} (RSS, MB):")
        for key in runs[0]:
            values = [r[key] for r in runs]
            print(f"  {key:<28} {statistics.median(values):8.1f}   runs: {' '.join(f'{v:.0f}' for v in values)}")


if __name__ == "__main__":
    main()

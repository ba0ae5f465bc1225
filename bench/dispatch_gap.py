"""Dispatch without gaps: how long a GPU sits idle between one job's exit and the next job's start.

Builds --hosts hosts as network namespaces with their own sshd (tests/harness; needs root), --gpus simulated GPUs
each, starts a real `arc daemon` on them, and per run submits --jobs jobs of --seconds (`sleep S`, so the 2-core
machine is not busy starting Pythons) in one batch, waits for all, and reads each job's started_at / ended_at from
the hosts' state.json files:
- gap: on each GPU, the next job's process start minus the previous job's exit (p50, p99, max over all gaps);
- efficiency: ideal time (total job seconds / GPUs) over measured time (first start to last end);
- where the gap goes, from the history's event times: exit → the next job placed (the agent's event over SSH,
  the scheduler's wake, the compare-and-set in DuckDB), placed → process start (the launch request over SSH and
  the agent's fork), process start → the history says running (the launch reply).
Figures are medians over --runs runs on one daemon (warm sessions), after one warm-up run that is not counted.

    sudo python bench/dispatch_gap.py [--hosts 4] [--gpus 2] [--jobs 40] [--seconds 2] [--runs 3] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mcp_server.core.paths import StatePaths  # noqa: E402
from mcp_server.daemon.client import DaemonClient  # noqa: E402
from tests.harness import NetnsFleet  # noqa: E402


MAX_BATCH = 200     # the service's limit per submit call


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def wait_ready(client: DaemonClient, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(h["reachable"] for h in client.call("list_gpus")["hosts"]):
            return
        time.sleep(0.2)
    raise SystemExit("the hosts did not all connect")


def one_run(client: DaemonClient, fleet: NetnsFleet, history_id: str, jobs: int, seconds: float) -> dict:
    spec = {"command": ["sleep", f"{seconds:g}"], "time_limit_s": seconds + 60}
    ids: list[str] = []
    for lo in range(0, jobs, MAX_BATCH):
        ids += [j["job_id"] for j in client.call("submit_jobs", jobs=[spec] * min(MAX_BATCH, jobs - lo))["jobs"]]
    pending = list(ids)
    while pending:
        done = client.call("wait_for_jobs", timeout=700, job_ids=pending[:200], mode="all", timeout_s=600)
        bad = [j for j in done["done"] if j["status"] != "succeeded"]
        if bad:
            raise SystemExit(f"jobs failed: {bad[:3]}")
        pending = pending[200:] + done["pending"]

    states = {}
    for h in fleet.hosts:
        for job_id in ids:
            path = h.workdir / "jobs" / f"{job_id}-{history_id}" / "state.json"
            if path.exists():
                states[job_id] = {**json.loads(path.read_text()), "host": h.name}
    assert len(states) == len(ids), "some jobs have no state.json on any host"
    per_gpu: dict[tuple[str, int], list[dict]] = {}
    for job_id, s in states.items():
        per_gpu.setdefault((s["host"], s["gpus"][0]), []).append({**s, "job": job_id})
    gaps, follows = [], []
    for runs in per_gpu.values():
        runs.sort(key=lambda s: s["started_at"])
        for prev, nxt in zip(runs, runs[1:]):
            gaps.append(nxt["started_at"] - prev["ended_at"])
            follows.append((prev, nxt))
    busy = sum(s["ended_at"] - s["started_at"] for s in states.values())
    n_gpus = len(fleet.hosts) * len(fleet.hosts[0].simulate_gpus)
    span = max(s["ended_at"] for s in states.values()) - min(s["started_at"] for s in states.values())

    # Where a gap goes: the history's event times for the next job (placed, then running).
    rows = []
    for lo in range(0, len(ids), 200):
        chunk = ", ".join(repr(j) for j in ids[lo:lo + 200])
        rows += client.call("query_results", limit=500, sql=(
            "SELECT job_id, new_status, epoch(t) FROM events WHERE kind = 'status' "
            f"AND new_status IN ('dispatching', 'running') AND job_id IN ({chunk}) ORDER BY event_id"))["rows"]
    placed = {j: t for j, status, t in rows if status == "dispatching"}
    running = {j: t for j, status, t in rows if status == "running"}
    exit_to_placed = [placed[n["job"]] - p["ended_at"] for p, n in follows]
    placed_to_start = [n["started_at"] - placed[n["job"]] for _, n in follows]
    start_to_running = [running[n["job"]] - n["started_at"] for _, n in follows]
    firsts = [runs[0]["started_at"] for runs in per_gpu.values()]
    lasts = [runs[-1]["ended_at"] for runs in per_gpu.values()]
    return {
        "gap p50 s": percentile(gaps, 0.5), "gap p99 s": percentile(gaps, 0.99), "gap max s": max(gaps),
        "efficiency %": 100 * (busy / n_gpus) / span,
        "exit -> next placed p50 s": percentile(exit_to_placed, 0.5),
        "exit -> next placed p99 s": percentile(exit_to_placed, 0.99),
        "placed -> process start p50 s": percentile(placed_to_start, 0.5),
        "placed -> process start p99 s": percentile(placed_to_start, 0.99),
        "process start -> history running p50 s": percentile(start_to_running, 0.5),
        "first starts spread s": max(firsts) - min(firsts), "last ends spread s": max(lasts) - min(lasts),
        "measured span s": span, "ideal s": busy / n_gpus,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--gpus", type=int, default=2, help="simulated GPUs per host")
    parser.add_argument("--jobs", type=int, default=40, help="jobs per run, submitted at once")
    parser.add_argument("--seconds", type=float, default=2.0, help="each job's duration")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
          f"{args.hosts} hosts x {args.gpus} GPUs, {args.jobs} jobs of {args.seconds:g} s, median of {args.runs} runs")
    with tempfile.TemporaryDirectory(prefix="arc-dispatch-bench-") as tmp:
        fleet = NetnsFleet.create(Path(tmp) / "fleet", args.hosts,
                                  simulate_gpus=[{"model": "H100", "memory_gb": 80}] * args.gpus, cpu_slots=0)
        client = DaemonClient(StatePaths.resolve(Path(tmp) / "state"))
        try:
            client.ensure(fleet.hosts_yaml)
            wait_ready(client)
            history_id = client.call("query_results", sql="SELECT value FROM meta WHERE key = 'history_id'")[
                "rows"][0][0]
            one_run(client, fleet, history_id, 2 * args.hosts * args.gpus, 0.2)    # warm-up
            results = []
            for i in range(args.runs):
                r = one_run(client, fleet, history_id, args.jobs, args.seconds)
                print(f"run {i + 1}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()), flush=True)
                results.append(r)
        finally:
            client.stop()
            fleet.teardown()
    medians = {k: statistics.median(r[k] for r in results) for k in results[0]}
    print("\nmedians:")
    for key, value in medians.items():
        print(f"  {key:<42} {value:10.3f}")
    goals = {"gap p50 s": 0.1, "gap p99 s": 0.5}
    verdict = [f"{k} {'meets' if medians[k] <= v else 'MISSES'} <= {v}" for k, v in goals.items()]
    verdict.append(f"efficiency {'meets' if medians['efficiency %'] >= 97 else 'MISSES'} >= 97 %")
    print("goals: " + "; ".join(verdict))
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "load": load,
                                         "runs": results, "medians": medians}, indent=2))


if __name__ == "__main__":
    main()

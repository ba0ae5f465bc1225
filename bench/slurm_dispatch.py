"""Slurm dispatch: arc inside allocations against one sbatch per job, on a real Slurm on this machine.

Builds 2 Slurm nodes (network namespaces, tests/harness/slurm.py; needs root and slurmctld/slurmd/munge) with
--gpus fake GPUs each (GRES on character devices), then runs --jobs jobs of --seconds (`sleep`) three ways:
- arc: a real `arc daemon` with the cluster in hosts.yaml (login on this machine, max_nodes 2): holder allocations,
  its agent inside them. Run 1 starts from nothing (the allocations and the agents start inside it); run 2 reuses
  the allocations it holds. Then `arc daemon stop --release`;
- sbatch, tuned: one `sbatch --gres=gpu:TYPE:1` per job on the same Slurm (Epilog=/bin/true and
  batch_sched_delay=0: FACTS.md, Slurm);
- sbatch, stock: the same on a Slurm without those two settings (a fresh slurmctld/slurmd on the same nodes).
For each: gap on a GPU from one job's exit to the next job's start (p50, p99), batch efficiency (total job seconds
/ GPUs over first start to last end), and first start (the first submission to the first job's start). Job times
come from the jobs' own clocks: arc's state.json files; for sbatch, `date` written by the job script.

    sudo python bench/slurm_dispatch.py [--jobs 40] [--seconds 2] [--gpus 2] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mcp_server.core.paths import StatePaths  # noqa: E402
from mcp_server.daemon.client import DaemonClient  # noqa: E402
from tests.harness import NetnsFleet  # noqa: E402
from tests.harness.slurm import SlurmHarness  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def figures(runs: list[tuple[str, float, float]], gpus: int, submitted: float) -> dict[str, float]:
    """runs: (GPU, start, end) of every job, epoch seconds."""
    per_gpu: dict[str, list[tuple[float, float]]] = {}
    for gpu, start, end in runs:
        per_gpu.setdefault(gpu, []).append((start, end))
    gaps = []
    for spans in per_gpu.values():
        spans.sort()
        gaps += [nxt[0] - prev[1] for prev, nxt in zip(spans, spans[1:])]
    first, last = min(s for _, s, _ in runs), max(e for _, _, e in runs)
    busy = sum(e - s for _, s, e in runs)
    return {"gap p50 s": percentile(gaps, 0.5), "gap p99 s": percentile(gaps, 0.99),
            "efficiency %": 100 * busy / gpus / (last - first), "first start s": first - submitted,
            "span s": last - first, "GPUs used": len(per_gpu)}


def run_arc(root: Path, slurm: SlurmHarness, jobs: int, seconds: float, gpus: int) -> list[dict[str, float]]:
    root.mkdir(parents=True)
    hosts = root / "hosts.yaml"
    nodes = root / "nodes"
    hosts.write_text(yaml.safe_dump({"clusters": [{
        "name": "bench", "kind": "slurm", "login": {"transport": "local"}, "gpu_type": slurm.gpu_type,
        "gpus_per_node": gpus, "gpu_model": "H100", "max_nodes": len(slurm.nodes), "walltime": "01:00:00",
        "idle_release_s": 600, "python": sys.executable, "workdir": str(nodes), "simulate_gpus": True}]}))
    state = root / "state"
    client = DaemonClient(StatePaths.resolve(state))
    out = []
    try:
        client.ensure(hosts)
        history = client.call("query_results", sql="SELECT value FROM meta WHERE key = 'history_id'")["rows"][0][0]
        spec = {"command": ["sleep", f"{seconds:g}"], "time_limit_s": seconds + 60, "requirements": {"gpus": 1}}
        for _ in range(2):
            submitted = time.time()
            ids = [j["job_id"] for j in client.call("submit_jobs", jobs=[spec] * jobs)["jobs"]]
            pending = ids
            while pending:
                done = client.call("wait_for_jobs", timeout=700, job_ids=pending, mode="all", timeout_s=600)
                bad = [j for j in done["done"] if j["status"] != "succeeded"]
                if bad:
                    raise SystemExit(f"arc jobs failed: {bad[:3]}")
                pending = done["pending"]
            runs = []
            for job_id in ids:
                [path] = nodes.glob(f"alloc-*/jobs/{job_id}-{history}/state.json")
                s = json.loads(path.read_text())
                runs.append((f"{path.parts[-4]}/{s['gpus'][0]}", s["started_at"], s["ended_at"]))
            out.append(figures(runs, gpus * len(slurm.nodes), submitted))
    finally:
        subprocess.run([sys.executable, "-m", "mcp_server", "--state-dir", str(state), "--hosts", str(hosts),
                        "daemon", "stop", "--release"], cwd=REPO, capture_output=True, timeout=120)
    return out


JOB = 'echo "$SLURMD_NODENAME/$CUDA_VISIBLE_DEVICES $(date +%s.%N)" > {d}/$SLURM_JOB_ID.start; sleep {s}; ' \
      'echo "$(date +%s.%N)" > {d}/$SLURM_JOB_ID.end'


def run_sbatch(root: Path, slurm: SlurmHarness, jobs: int, seconds: float, gpus: int) -> dict[str, float]:
    marks = root / "marks"
    marks.mkdir(parents=True)
    submitted = time.time()
    for _ in range(jobs):
        slurm.run("sbatch", "--parsable", "--output=/dev/null", f"--gres=gpu:{slurm.gpu_type}:1",
                  "--wrap", JOB.format(d=marks, s=f"{seconds:g}"))
    deadline = time.monotonic() + 600
    while len(list(marks.glob("*.end"))) < jobs or slurm.run("squeue", "-h").strip():
        if time.monotonic() > deadline:
            raise SystemExit("sbatch jobs did not all end within 600 s")
        time.sleep(0.2)
    runs = []
    for start in marks.glob("*.start"):
        gpu, t0 = start.read_text().split()
        runs.append((gpu, float(t0), float(start.with_suffix(".end").read_text())))
    return figures(runs, gpus * len(slurm.nodes), submitted)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--gpus", type=int, default=2, help="fake GPUs per node (2 nodes)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; 2 nodes x "
          f"{args.gpus} GPUs, {args.jobs} jobs of {args.seconds:g} s", flush=True)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="arc-slurm-bench-") as tmp:
        root = Path(tmp)
        fleet = NetnsFleet.create(root / "fleet", 2)
        previous = os.environ.get("SLURM_CONF")
        try:
            for tuned in (True, False):
                slurm = SlurmHarness.create(root / f"slurm-{tuned}", fleet, args.gpus, tuned=tuned)
                os.environ["SLURM_CONF"] = str(slurm.conf)     # for the daemon and the client commands
                try:
                    if tuned:
                        cold, warm = run_arc(root / "arc", slurm, args.jobs, args.seconds, args.gpus)
                        results["arc in allocations, from nothing"] = cold
                        results["arc in allocations, held"] = warm
                    name = "one sbatch per job, " + ("tuned Slurm" if tuned else "stock Slurm")
                    results[name] = run_sbatch(root / name.replace(" ", "_"), slurm, args.jobs, args.seconds,
                                               args.gpus)
                finally:
                    slurm.teardown()
        finally:
            if previous is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = previous
            fleet.teardown()
    print("\n| way | gap p50 | gap p99 | batch efficiency | first start |\n|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['gap p50 s']:.3f} s | {r['gap p99 s']:.3f} s | {r['efficiency %']:.1f} % | "
              f"{r['first start s']:.2f} s |")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "load": load,
                                         "results": results}, indent=2))


if __name__ == "__main__":
    main()

"""Chaos at scale, the long run: 8 network-namespace hosts (real sshd) x 2 simulated GPUs, 200 jobs of 3-10 s each
printing metric lines with unique values, through a real `arc daemon`, with every fault of tests/chaos_support.py
(a tenth of the jobs' processes SIGKILLed on their hosts, sshd killed on two hosts, the daemon killed with -9 twice,
a host crash, a host silent for 20 s, a full workdir). Runs the same checks as tests/test_chaos_scale.py and prints
the figures (jobs, faults, losses, retries, wall time). Needs root.

    sudo python bench/chaos.py [--hosts 8] [--gpus 2] [--jobs 200] [--silent 20] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.chaos_support import ChaosPlan, check, prepare, run_chaos, unmount  # noqa: E402
from tests.daemon_support import Arc  # noqa: E402
from tests.harness import NetnsFleet  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=8)
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--silent", type=float, default=20.0, help="seconds the silent host's link stays down")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    plan = ChaosPlan(hosts=args.hosts, gpus=args.gpus, jobs=args.jobs, silent_s=args.silent)
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="arc-chaos-bench-") as tmp:
        fleet = NetnsFleet.create(Path(tmp) / "fleet", plan.hosts, simulate_gpus=[
            {"model": "H100", "memory_gb": 80}] * plan.gpus, cpu_slots=0)
        disk = prepare(fleet, plan)
        arc = Arc(Path(tmp) / "state", fleet.hosts_yaml)
        try:
            run = run_chaos(fleet, arc, plan, say=lambda msg: print(msg, flush=True))
            figures = check(run)
        finally:
            arc.stop()
            unmount(disk)
            fleet.teardown()
    end = os.getloadavg()
    print("\nfaults:\n  " + "\n  ".join(run.faults) + f"\n  {len(run.killed)} job processes SIGKILLed on their hosts")
    print("figures (all checks passed):")
    for key, value in figures.items():
        print(f"  {key:<24} {value}")
    print(f"load average at the end: {end[0]:.2f} {end[1]:.2f} {end[2]:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "load": [load, end],
                                         "faults": run.faults, "figures": figures}, indent=2))


if __name__ == "__main__":
    main()

"""`inventory` over many SSH hosts: arc's warm sessions against one OpenSSH command per host, in turn.

Builds --hosts hosts as network namespaces with their own sshd (tests/harness; needs root), two simulated GPUs each.
- arc warm: Fleet sessions already open; the time of one `fleet.request_all("inventory")` (all hosts in parallel).
- OpenSSH sequential: for each host in turn, `ssh root@host 'cd <agent> && python -m gpu_agent --workdir W
  inventory'` (a fresh connection, a login shell, a Python start), which is what a script without arc does.
Also the cold start (Fleet.start: connect, agent check or push, hello on every host, in parallel).
Each figure is the median over --runs runs (the sequential one over --ssh-runs, it is slow).

    sudo python bench/fleet_list_gpus.py [--hosts 32] [--runs 15] [--ssh-runs 3] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mcp_server.fleet import Fleet  # noqa: E402
from tests.harness import NetnsFleet  # noqa: E402

GPUS = [{"model": "H100", "memory_gb": 80}, {"model": "H100", "memory_gb": 80}]


def arc_warm(fleet: Fleet, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        results = fleet.request_all("inventory", timeout=30)
        times.append(time.perf_counter() - t0)
        failed = {h: r for h, r in results.items() if isinstance(r, Exception)}
        if failed:
            raise SystemExit(f"inventory failed: {failed}")
    return times


def openssh_sequential(hosts: NetnsFleet, fleet: Fleet, runs: int) -> list[float]:
    commands = []
    for h in hosts.hosts:
        agent_dir = fleet.session(h.name).agent_tree.path
        remote = (f"cd {shlex.quote(agent_dir)} && {shlex.quote(hosts.python)} -m gpu_agent "
                  f"--workdir {shlex.quote(str(h.workdir))} inventory")
        commands.append(["ssh", "-i", str(hosts.client_key), "-o", f"UserKnownHostsFile={hosts.known_hosts}",
                         "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", f"root@{h.address}", remote])
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for argv in commands:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            if out.returncode != 0 or not json.loads(out.stdout)["ok"]:
                raise SystemExit(f"{' '.join(argv)} failed: {out.stdout[-300:]} {out.stderr[-300:]}")
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=32)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--ssh-runs", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="arc-bench-") as tmp:
        hosts = NetnsFleet.create(Path(tmp), args.hosts, simulate_gpus=GPUS)
        try:
            t0 = time.perf_counter()
            fleet = Fleet(hosts.hosts_yaml, connect_timeout=30).start(wait=300)
            cold = time.perf_counter() - t0
            down = [n for n, s in fleet.sessions.items() if not s.connected]
            if down:
                raise SystemExit(f"hosts not connected: {[(n, fleet.session(n).last_error) for n in down]}")
            with fleet:
                warm = arc_warm(fleet, args.runs)
                sequential = openssh_sequential(hosts, fleet, args.ssh_runs)
        finally:
            hosts.teardown()

    figures = {
        "hosts": args.hosts,
        "arc_cold_start_s": round(cold, 3),
        "arc_warm_inventory_all_s": {"median": round(statistics.median(warm), 4), "min": round(min(warm), 4),
                                     "max": round(max(warm), 4), "runs": len(warm)},
        "openssh_sequential_s": {"median": round(statistics.median(sequential), 3),
                                 "min": round(min(sequential), 3), "max": round(max(sequential), 3),
                                 "runs": len(sequential)},
        "openssh_per_host_s": round(statistics.median(sequential) / args.hosts, 3),
        "speedup": round(statistics.median(sequential) / statistics.median(warm), 1),
    }
    print(f"inventory over {args.hosts} hosts (2 simulated GPUs each), median of runs:")
    warm_ms = figures["arc_warm_inventory_all_s"]["median"] * 1000
    print(f"  arc, warm sessions, all hosts in parallel : {warm_ms:8.1f} ms")
    print(f"  OpenSSH, one `ssh host ...` each, in turn  : {figures['openssh_sequential_s']['median'] * 1000:8.1f} ms "
          f"({figures['openssh_per_host_s'] * 1000:.0f} ms a host)")
    print(f"  speed-up: {figures['speedup']}x; arc cold start (connect + agent + hello, parallel): {cold:.2f} s")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()

"""Chaos at scale, the CI size: 4 namespace hosts x 2 simulated GPUs, 40 jobs of 2-4 s, while a tenth of the jobs'
processes are SIGKILLed on their hosts, sshd dies on two hosts, the daemon is killed with -9 twice, a host crashes,
another goes silent, and a host's workdir fills up. The driver and its checks are tests/chaos_support.py, shared with
bench/chaos.py (8 hosts, 200 jobs)."""
from __future__ import annotations

from tests.chaos_support import ChaosPlan, check, prepare, run_chaos, unmount

PLAN = ChaosPlan(hosts=4, gpus=2, jobs=40, min_s=2.0, max_s=4.0, silent_s=8.0, full_disk_s=5.0)


def test_chaos_at_scale_loses_nothing_and_retries_only_the_infrastructure(netns_factory, arcs, tmp_path):
    fleet = netns_factory(PLAN.hosts, simulate_gpus=[{"model": "H100", "memory_gb": 80}] * PLAN.gpus, cpu_slots=0)
    disk = prepare(fleet, PLAN)
    try:
        run = run_chaos(fleet, arcs(tmp_path / "state", fleet.hosts_yaml), PLAN, say=print)
        figures = check(run)
    finally:
        unmount(disk)
    print("chaos at scale:", figures)
    assert figures["processes killed"] == len(run.victims)
    assert len(run.faults) == 7

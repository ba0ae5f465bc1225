"""A scheduler on a full fleet with a long queue, in-process on a real history file: shared by
tests/test_dispatch_round.py and bench/scale.py (the dispatch round with 10,000 queued jobs)."""
from __future__ import annotations

from pathlib import Path

from mcp_server.core.placement import GpuSlot, HostCapacity
from mcp_server.core.scheduler import Scheduler
from mcp_server.fleet.hosts_config import load_hosts
from mcp_server.history import History
from mcp_server.stores.code import CodeStore
from tests.harness import local_host_entry, write_hosts_yaml

GPU = {"model": "H100", "memory_gb": 80}


def fleet_yaml(root: Path, hosts: int, gpus: int) -> Path:
    return write_hosts_yaml(root / "hosts.yaml", [
        local_host_entry(root / f"w{i}", name=f"n{i:02d}", simulate_gpus=[GPU] * gpus, cpu_slots=0)
        for i in range(hosts)])


def busy_scheduler(root: Path, hosts: int, gpus: int, queued: int) -> tuple[Scheduler, list[str]]:
    """A Scheduler (not started: no host sessions) whose `hosts` x `gpus` GPUs are all inventoried, ready and held
    by running jobs, with `queued` jobs waiting in its history. Launches are recorded in `launched`, not sent."""
    history = History(root / "history.duckdb")
    history.insert_jobs([{"argv": ["sleep", "1"], "kind": "command", "time_limit_s": 60.0, "requirements": {}}
                         for _ in range(queued)])
    sched = Scheduler(history, load_hosts(fleet_yaml(root, hosts, gpus)), CodeStore(root / "code"), root / "data")
    for name, rt in sched.hosts.items():
        rt.capacity = HostCapacity(name, (), [GpuSlot(name, i, "NVIDIA H100 80GB HBM3", "H100", 80.0, 1.0)
                                              for i in range(gpus)], 0)
        rt.ready = True
        for i in range(gpus):
            sched._busy_gpus[(name, i)] = f"running-{name}-{i}"
    launched: list[str] = []
    sched._launch = lambda job, placement, token: launched.append(job["job_id"])   # no host session to launch on
    return sched, launched

"""The fleet's seam for kinds of hosts (fleet/sources.py): a source whose hosts appear, end and go while the daemon
runs plugs into the real Service and scheduler untouched. The hosts are real (this machine, local transport, each
with its own agent workdir and simulated GPUs); only when each exists is the test's to say."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from mcp_server.core.paths import StatePaths
from mcp_server.core.service import Service
from mcp_server.fleet import HostFacts, HostSource, make_transport
from mcp_server.fleet.hosts_config import load_hosts
from tests.daemon_support import wait_for
from tests.harness import local_host_entry, write_hosts_yaml
from tests.mcp_support import sleeper


class Appearing(HostSource):
    """Hosts of a hosts file that exist only once the test makes them appear, with an end it may set: the shape of
    an allocation, without a cluster."""

    def __init__(self, path: Path):
        self.file = load_hosts(path)
        self.name = "appearing"
        self.present: set[str] = set()
        self.ends: dict[str, float] = {}

    def hosts(self):
        return [h for h in self.file.hosts if h.name in self.present]

    def transport(self, name, connect_timeout=10.0):
        return make_transport(self.file, name, connect_timeout)

    def facts(self, name):
        return HostFacts(expires_at=self.ends.get(name))


@pytest.fixture
def fleet(tmp_path):
    # fast: an H200 (placement's first choice); slow: an H100
    path = write_hosts_yaml(tmp_path / "hosts.yaml", [
        local_host_entry(tmp_path / "fast", name="fast", simulate_gpus=[{"model": "H200", "memory_gb": 141}]),
        local_host_entry(tmp_path / "slow", name="slow", simulate_gpus=[{"model": "H100", "memory_gb": 80}])])
    source = Appearing(path)
    source.present.add("fast")
    service = Service(StatePaths.resolve(tmp_path / "state"), source)
    service.start()
    yield source, service
    active = [j.job_id for j in service.list_jobs(status=["queued", "running"], limit=500).jobs]
    if active:
        service.cancel_jobs(active)
    service.close()


def status(service: Service, job_id: str) -> dict:
    return service.job_status([job_id]).jobs[0].model_dump()


def test_hosts_that_appear_end_and_go(fleet, tmp_path):
    source, service = fleet
    wait_for(lambda: service.list_gpus().hosts[0].reachable, 60, "the first host to connect")
    first = service.submit_jobs([sleeper(120, requirements={"gpus": 1})]).jobs[0].job_id
    wait_for(lambda: status(service, first)["status"] == "running", 60, "the first job to run")
    assert status(service, first)["host"] == "fast"

    source.present.add("slow")                      # a host appears: the scheduler takes it without a restart
    second = service.submit_jobs([sleeper(120, requirements={"gpus": 1})]).jobs[0].job_id
    wait_for(lambda: status(service, second)["status"] == "running", 60, "the second job to run on the new host")
    assert status(service, second)["host"] == "slow"
    assert {h.name for h in service.list_gpus().hosts} == {"fast", "slow"}

    # fast ends in 60 s: a job that may run 300 s must not go there, though fast is the first choice when free
    source.ends["fast"] = time.time() + 60
    service.cancel_jobs([first, second])
    wait_for(lambda: service.list_jobs(status=["running"]).total == 0, 60, "both jobs to end")
    # max_attempts=1: the loss below stays a loss (infrastructure losses are otherwise queued again)
    third = service.submit_jobs([sleeper(120, requirements={"gpus": 1}, time_limit_s=300,
                                         max_attempts=1)]).jobs[0].job_id
    wait_for(lambda: status(service, third)["status"] == "running", 60, "the third job to run")
    assert status(service, third)["host"] == "slow"
    short = service.submit_jobs([sleeper(30, requirements={"gpus": 1}, time_limit_s=30)]).jobs[0].job_id
    wait_for(lambda: status(service, short)["status"] == "running", 60, "a job that fits before the end")
    assert status(service, short)["host"] == "fast"

    source.present.discard("slow")                  # the host goes, with a job on it: the infrastructure lost it
    wait_for(lambda: status(service, third)["status"] == "lost", 60, "the job of the host that went")
    assert status(service, third)["reason"] == "its host slow is gone"
    assert {h.name for h in service.list_gpus().hosts} == {"fast"}

"""Slurm clusters as part of the fleet, on a real Slurm (tests/harness/slurm.py): arc holds GPUs with holder jobs,
its agent lives in the holder's batch step, and the channel is an `srun --overlap` step through the login (local
here). The Service and scheduler are the real ones; only the source of hosts is the cluster."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mcp_server.core.errors import ArcError
from mcp_server.core.paths import StatePaths
from mcp_server.core.service import Service
from mcp_server.fleet.hosts_config import load_hosts
from mcp_server.fleet.slurm import SlurmCluster, owner_id
from tests.daemon_support import wait_for
from tests.mcp_support import sleeper


def cluster_file(tmp_path: Path, **overrides) -> Path:
    entry = {"name": "uni", "kind": "slurm", "login": {"transport": "local"}, "gpu_type": "h100",
             "gpus_per_node": 2, "gpu_model": "H100", "max_nodes": 2, "walltime": "01:00:00",
             "idle_release_s": 600, "python": sys.executable, "workdir": str(tmp_path / "nodes"),
             "simulate_gpus": True, **overrides}
    path = tmp_path / "hosts.yaml"
    path.write_text(yaml.safe_dump({"clusters": [entry]}))
    return path


def ours(slurm, cluster: SlurmCluster) -> list[dict]:
    return [j for j in slurm.jobs() if j["name"] == cluster.job_name]


@pytest.fixture
def arc(slurm, tmp_path):
    made: list[tuple[Service, SlurmCluster]] = []

    def start(**overrides) -> tuple[Service, SlurmCluster]:
        config = load_hosts(cluster_file(tmp_path, **overrides)).clusters[0]
        state = tmp_path / "state"
        cluster = SlurmCluster(config, owner_id(state))
        service = Service(StatePaths.resolve(state), [cluster])
        service.start()
        made.append((service, cluster))
        return service, cluster

    yield start
    for service, cluster in made:
        active = [j.job_id for j in service.list_jobs(status=["queued", "running"], limit=500).jobs]
        if active:
            service.cancel_jobs(active)
        service.close()
        cluster.release()
    wait_for(lambda: not [j for j in slurm.jobs() if j["name"].startswith("arc-")], 30, "no allocation left")


def status(service: Service, job_id: str) -> dict:
    return service.job_status([job_id]).jobs[0].model_dump()


def test_jobs_run_inside_an_allocation_that_is_released_when_idle(slurm, arc):
    service, cluster = arc(idle_release_s=3)
    jobs = [j.job_id for j in service.submit_jobs([sleeper(1, requirements={"gpus": 1}, time_limit_s=60)] * 2).jobs]
    for job_id in jobs:
        wait_for(lambda: status(service, job_id)["status"] == "succeeded", 120, f"{job_id} to succeed in Slurm")
        assert status(service, job_id)["host"].startswith("uni-")
    holders = ours(slurm, cluster)
    assert len(holders) == 1, holders              # both jobs fit one node's two GPUs: one allocation
    assert f"owner={cluster.owner}" in holders[0]["comment"]
    # idle past idle_release_s: released (scancel), and the host leaves the fleet
    wait_for(lambda: not ours(slurm, cluster), 60, "the idle allocation to be released")
    wait_for(lambda: not service.scheduler.host_configs(), 30, "the released allocation to leave the fleet")


def test_a_pending_allocation_shows_its_reason(slurm, arc):
    blockers = [slurm.run("sbatch", "--parsable", "--output=/dev/null", "--gres=gpu:h100:2", "--wrap",
                          "sleep 300").strip() for _ in slurm.nodes]
    try:
        service, cluster = arc()
        service.submit_jobs([sleeper(1, requirements={"gpus": 1}, time_limit_s=60)])
        waiting = wait_for(lambda: [h for h in service.list_gpus().hosts if h.waiting], 60,
                           "the pending allocation in list_gpus")
        wait_for(lambda: "Resources" in (service.list_gpus().hosts[-1].waiting or ""), 60, "Slurm's reason")
        assert waiting[0].name.startswith("uni-")
        assert "waiting: uni-" in service.list_gpus().summary
    finally:
        slurm.run("scancel", *blockers)


def test_a_job_longer_than_the_walltime_is_refused_at_submission(slurm, arc):
    service, cluster = arc(walltime="00:10:00")
    with pytest.raises(ArcError, match=r"time limit \(900 s\) is longer than what uni allocates"):
        service.submit_jobs([sleeper(1, requirements={"gpus": 1}, time_limit_s=900)])
    assert service.submit_jobs([sleeper(1, requirements={"gpus": 1}, time_limit_s=300)]).jobs


def test_arc_clusters_release_cancels_what_this_state_dir_holds(slurm, arc, tmp_path):
    service, cluster = arc()
    job = service.submit_jobs([sleeper(120, requirements={"gpus": 1}, time_limit_s=300)]).jobs[0].job_id
    wait_for(lambda: status(service, job)["status"] == "running", 120, "the job to run in an allocation")
    other = slurm.run("sbatch", "--parsable", "--output=/dev/null", "--gres=gpu:h100:1",
                      "--wrap", "sleep 300").strip()   # not arc's
    try:
        released = subprocess.run([sys.executable, "-m", "mcp_server", "--json", "--hosts", str(tmp_path / "hosts.yaml"),
                                   "--state-dir", str(tmp_path / "state"), "clusters", "release"],
                                  capture_output=True, text=True, timeout=60)
        assert released.returncode == 0, released.stderr
        assert len(json.loads(released.stdout)["released"]["uni"]) == 1
        wait_for(lambda: not ours(slurm, cluster), 30, "arc's allocation to be cancelled")
        assert other in {j["id"] for j in slurm.jobs()}          # someone else's job is left alone
    finally:
        slurm.run("scancel", other)

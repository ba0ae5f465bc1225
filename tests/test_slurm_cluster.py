"""Slurm clusters as part of the fleet, on a real Slurm (tests/harness/slurm.py): arc holds GPUs with holder jobs,
its agent lives in the holder's batch step, and the channel is an `srun --overlap` step through the login (local
here). The Service and scheduler are the real ones; only the source of hosts is the cluster."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from mcp_server.core.errors import ArcError
from mcp_server.core.paths import StatePaths
from mcp_server.core.service import Service
from mcp_server.fleet.hosts_config import load_hosts
from mcp_server.fleet.slurm import SlurmCluster, owner_id
from tests.daemon_support import Arc, Gates, wait_for
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
    assert_nothing_left(slurm, tmp_path / "nodes")


def assert_nothing_left(slurm, workdir: Path) -> None:
    """Teardown leaves no allocation and no process of the allocations (agents, supervisors, jobs, relays)."""
    wait_for(lambda: not [j for j in slurm.jobs() if j["name"].startswith("arc-")], 30, "no allocation left")
    wait_for(lambda: not processes_in(workdir), 30, f"no process left in {workdir}")


def processes_in(workdir: Path) -> list[str]:
    """Live processes that run from `workdir` or name it on their command line."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if " Z " in Path(f"/proc/{pid}/stat").read_text().split(")", 1)[1][:3]:
                continue    # a zombie that PID 1 here reaps late (FACTS.md) is no process left running
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if str(workdir) in cmdline or cwd.startswith(str(workdir)):
            found.append(f"{pid}: {cmdline[:200]}")
    return found


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


def test_work_for_two_nodes_asks_for_both_allocations_at_once(slurm, arc):
    blockers = [slurm.run("sbatch", "--parsable", "--output=/dev/null", "--gres=gpu:h100:2", "--wrap",
                          "sleep 300").strip() for _ in slurm.nodes]
    try:
        service, cluster = arc()
        service.submit_jobs([sleeper(0.5, requirements={"gpus": 2}, time_limit_s=60)] * 2)
        # not one after the other: from nothing, the second node then started a second or more after the first
        wait_for(lambda: len([j for j in ours(slurm, cluster) if j["state"] == "PENDING"]) == 2, 60,
                 "both holders pending at once")
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


def gated(gates: Gates, name: str) -> dict:
    return gates.spec(name, requirements={"gpus": 1}, time_limit_s=300)


def test_a_cancelled_allocation_loses_its_job_which_runs_again_in_a_new_one(slurm, arc, tmp_path):
    service, cluster = arc()
    gates = Gates(tmp_path / "gates")
    job = service.submit_jobs([gated(gates, "a")]).jobs[0].job_id
    wait_for(lambda: status(service, job)["status"] == "running", 120, "the job to run in an allocation")
    first = status(service, job)["host"]
    slurm.run("scancel", first.removeprefix("uni-"))          # the allocation ends under the job (preempted, say)
    wait_for(lambda: status(service, job)["attempts"] == 1, 60, "the lost attempt to be recorded")
    lost = status(service, job)["lost_attempts"][0]
    assert lost["host"] == first
    assert "CANCELLED" in lost["reason"], lost            # Slurm's word for it, not a generic "host gone"
    wait_for(lambda: status(service, job)["status"] == "running", 120, "the job to run again in a new allocation")
    gates.open("a")
    wait_for(lambda: status(service, job)["status"] == "succeeded", 60, "the second attempt to succeed")
    assert status(service, job)["host"] not in (first, None)
    assert [j["id"] for j in ours(slurm, cluster)] == [status(service, job)["host"].removeprefix("uni-")]


def test_a_cut_channel_leaves_the_job_running_and_its_result_arrives_once_back(slurm, arc, tmp_path):
    service, cluster = arc()
    gates = Gates(tmp_path / "gates")
    job = service.submit_jobs([gated(gates, "a")]).jobs[0].job_id
    wait_for(lambda: status(service, job)["status"] == "running", 120, "the job to run in an allocation")
    host = status(service, job)["host"]
    allocation = host.removeprefix("uni-")
    channel = wait_for(lambda: slurm.steps(allocation), 30, "the channel's overlap step")
    slurm.run("scancel", *channel)        # the srun --overlap step that carries the channel ends
    wait_for(lambda: (slurm.steps(allocation) or channel)[0] not in channel, 60,
             "the session to open a new channel step")
    gates.open("a")
    wait_for(lambda: status(service, job)["status"] == "succeeded", 60, "the result through the new channel")
    done = status(service, job)
    assert done["host"] == host and done["attempts"] == 0     # the same run: it never stopped


def test_slurmctld_restarted_mid_campaign(slurm, arc, tmp_path):
    service, cluster = arc()
    gates = Gates(tmp_path / "gates")
    jobs = [j.job_id for j in service.submit_jobs([gated(gates, "a"), gated(gates, "b")]).jobs]
    for job in jobs:
        wait_for(lambda: status(service, job)["status"] == "running", 120, f"{job} to run in an allocation")
    holders = [j["id"] for j in ours(slurm, cluster)]
    slurm.stop_slurmctld()
    try:
        wait_for(lambda: "cluster unreachable" in (service.list_gpus().hosts[-1].waiting or ""), 90,
                 "list_gpus to say the cluster is unreachable")
        assert all(status(service, job)["status"] == "running" for job in jobs)   # nothing else stops
    finally:
        slurm.start_slurmctld()
    wait_for(lambda: not any(h.waiting for h in service.list_gpus().hosts), 90, "the cluster to be back")
    gates.open("a", "b")
    for job in jobs:
        wait_for(lambda: status(service, job)["status"] == "succeeded", 60, f"{job} to succeed")
        assert status(service, job)["attempts"] == 0
    assert [j["id"] for j in ours(slurm, cluster)] == holders


def test_a_killed_daemon_restarts_and_adopts_its_allocations(slurm, arcs, tmp_path):
    arc: Arc = arcs(tmp_path / "state", cluster_file(tmp_path))
    job_name = f"arc-{owner_id(tmp_path / 'state')}-uni"
    gates = Gates(tmp_path / "gates")
    try:
        arc.start()
        jobs = arc.submit([gated(gates, "a"), gated(gates, "b")])
        wait_for(lambda: all(j["status"] == "running" for j in arc.jobs(jobs).values()), 120,
                 "both jobs to run in one allocation")
        holders = [j["id"] for j in slurm.jobs() if j["name"] == job_name]
        assert len(holders) == 1, holders
        arc.kill9()
        arc.start()
        gates.open("a", "b")
        done = arc.wait(jobs, timeout=120)
        assert {d["status"] for d in done.values()} == {"succeeded"}, done
        assert {d["host"] for d in done.values()} == {f"uni-{holders[0]}"}
        assert all(d["attempts"] == 0 for d in done.values())
        again = arc.submit([sleeper(0.5, requirements={"gpus": 1}, time_limit_s=60)])
        assert arc.wait(again)[again[0]]["host"] == f"uni-{holders[0]}"   # the adopted allocation takes new work
        assert [j["id"] for j in slurm.jobs() if j["name"] == job_name] == holders     # none duplicated
    finally:
        arc.cli("daemon", "stop", "--release", check=False)
    assert_nothing_left(slurm, tmp_path / "nodes")


def test_an_allocation_near_its_end_is_replaced_while_work_is_queued(slurm, arc):
    service, cluster = arc(walltime="00:01:00", max_nodes=1)    # Slurm's shortest walltime: one minute
    first = service.submit_jobs([sleeper(0.5, requirements={"gpus": 1}, time_limit_s=40)]).jobs[0].job_id
    wait_for(lambda: status(service, first)["status"] == "succeeded", 120, "a job to run in the first allocation")
    old = status(service, first)["host"]
    ends = cluster.facts(old).expires_at
    # Under a quarter of its walltime left: a job of 40 s no longer fits there, and max_nodes is 1
    wait_for(lambda: time.time() > ends - 14, 60, "the allocation to come near its end", every=0.5)
    late = service.submit_jobs([sleeper(0.5, requirements={"gpus": 1}, time_limit_s=40)]).jobs[0].job_id
    wait_for(lambda: status(service, late)["status"] == "succeeded", 120, "the queued job to run in a replacement")
    assert status(service, late)["host"] not in (old, None)
    # ahead of time: the job started in the replacement before the old allocation's walltime was up
    started = datetime.fromisoformat(status(service, late)["started_at"]).timestamp()
    assert started < ends, (started, ends)


def hosts_check(hosts_yaml: Path) -> tuple[int, dict]:
    r = subprocess.run([sys.executable, "-m", "mcp_server", "--json", "--hosts", str(hosts_yaml), "hosts", "check"],
                       capture_output=True, text=True, timeout=300)
    return r.returncode, json.loads(r.stdout)


def test_hosts_check_checks_each_cluster_with_a_short_srun(slurm, tmp_path):
    code, report = hosts_check(cluster_file(tmp_path, partition="gpu"))
    assert code == 0, report
    [row] = report["hosts"]                                     # one row per cluster
    assert row["host"] == "uni" and row["transport"] == "slurm" and row["ready"], row
    assert row["python"] == "%d.%d.%d" % sys.version_info[:3]  # as a node runs it
    assert row["torch"]                                         # a version, or "absent" with a warning
    assert "partition gpu (up, 2 nodes)" in row["slurm"] and "gpu:h100:2" in row["slurm"], row["slurm"]
    assert not [j for j in slurm.jobs() if j["name"] == "arc-check"]

    code, report = hosts_check(cluster_file(tmp_path, gpu_type="a100"))
    [row] = report["hosts"]
    assert code == 1 and not row["ready"] and row["failed_step"] == "gres", row
    assert "gpu:a100:2" in row["error"] and "gpu:h100:2" in row["error"] and "fix: set gpu_type" in row["error"]

    code, report = hosts_check(cluster_file(tmp_path, partition="cpu"))
    assert report["hosts"][0]["failed_step"] == "partition"
    assert "no partition 'cpu' on this cluster (there are: gpu)" in report["hosts"][0]["error"]


def test_a_shared_workdir_gets_the_agent_once_per_cluster(slurm, arc, tmp_path):
    service, cluster = arc(shared_workdir=True)
    gates = Gates(tmp_path / "gates")
    specs = [gates.spec(name, requirements={"gpus": 2}, time_limit_s=300) for name in ("a", "b")]
    jobs = [j.job_id for j in service.submit_jobs(specs).jobs]
    for job_id in jobs:      # a whole node each, at once: two allocations
        wait_for(lambda: status(service, job_id)["status"] == "running", 120, f"{job_id} to run")
    gates.open_all()
    for job_id in jobs:
        wait_for(lambda: status(service, job_id)["status"] == "succeeded", 60, f"{job_id} to succeed")
    hosts = {status(service, job_id)["host"] for job_id in jobs}
    assert len(hosts) == 2, hosts
    nodes = tmp_path / "nodes"
    assert len([p for p in (nodes / "agent").iterdir() if not p.name.startswith(".")]) == 1   # pushed once
    for host in hosts:
        assert (nodes / f"alloc-{host.removeprefix('uni-')}" / "agent").is_symlink()


def ssh_login(slurm) -> dict:
    """The harness's login node (no slurmd, its own sshd) as a cluster's `login:`: arc reaches Slurm over SSH."""
    entry = slurm.fleet.host_entry(slurm.login)
    return {k: entry[k] for k in ("address", "port", "user", "identity_file", "known_hosts")}


def test_through_an_ssh_login_jobs_run_on_when_the_login_connection_drops(slurm, arc, tmp_path):
    service, cluster = arc(login=ssh_login(slurm), max_nodes=3)
    gates = Gates(tmp_path / "gates")
    specs = [gates.spec(name, requirements={"gpus": 2}, time_limit_s=300) for name in ("a", "b")]
    jobs = [j.job_id for j in service.submit_jobs(specs).jobs]
    for job in jobs:        # a whole node each: two allocations, two channels through the login's sshd
        wait_for(lambda: status(service, job)["status"] == "running", 120, f"{job} to run in an allocation")
    holders = sorted(j["id"] for j in ours(slurm, cluster))
    assert len(holders) == 2, holders
    channels = {h: wait_for(lambda: slurm.steps(h), 30, f"the channel step of {h}") for h in holders}
    # With both channels open, Slurm's commands still go through the login: a third job's allocation pends, visibly
    third = service.submit_jobs([sleeper(0.5, requirements={"gpus": 1}, time_limit_s=60)]).jobs[0].job_id
    wait_for(lambda: "Resources" in (service.list_gpus().hosts[-1].waiting or ""), 60,
             "the third job's allocation pending for Resources, read through the login")
    # Every SSH connection to the login drops and its sshd restarts: each srun that carried a channel ends with them
    slurm.fleet.drop_connections(slurm.login)
    slurm.fleet.restart_sshd(slurm.login)
    for h, old in channels.items():
        wait_for(lambda: (slurm.steps(h) or old)[0] not in old, 60,
                 f"a new channel step in {h} through a new login connection")
    gates.open("a", "b")
    for job in jobs:
        wait_for(lambda: status(service, job)["status"] == "succeeded", 60, f"{job}'s result through the new channel")
        assert status(service, job)["host"] in {f"uni-{h}" for h in holders}
        assert status(service, job)["attempts"] == 0
    wait_for(lambda: status(service, third)["status"] == "succeeded", 120, "the third job in a new allocation")


def test_hosts_check_through_an_ssh_login(slurm, tmp_path):
    code, report = hosts_check(cluster_file(tmp_path, login=ssh_login(slurm), partition="gpu"))
    [row] = report["hosts"]
    assert code == 0 and row["ready"], row
    assert "partition gpu (up, 2 nodes)" in row["slurm"], row["slurm"]

"""Recovery through a real daemon over sshd hosts: a daemon restarted (after kill -9 or a clean stop) while jobs run
reconciles them with their hosts and ingests them when they end, losing nothing; a host away longer than the
grace (`arc daemon start --lost-after S`) has its jobs marked lost, and when it returns, the GPU those jobs still
hold is not handed to anyone else until they really end; a launch stuck in a connection the daemon gave up on never
runs beside its requeued self."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.daemon_support import (
    TERMINAL, Arc, Gates, claim_violations, host_job_dir, host_state, metric_job, metric_problems, wait_for,
)

GPUS = [{"model": "H100", "memory_gb": 80}, {"model": "H100", "memory_gb": 80}]


def statuses(arc: Arc, job_ids: list[str]) -> list[str]:
    jobs = arc.jobs(job_ids)
    return [jobs[j]["status"] for j in job_ids]


@pytest.mark.parametrize("how", ["kill -9", "clean stop"])
def test_a_restarted_daemon_reconciles_running_jobs_and_ingests_them(netns_factory, arcs, tmp_path, how):
    fleet = netns_factory(2, simulate_gpus=GPUS)
    workdirs = {h.name: h.workdir for h in fleet.hosts}
    arc = arcs(tmp_path / "state", fleet.hosts_yaml)
    gates = Gates(tmp_path / "gates")
    first_pid = arc.start()
    hid = arc.history_id()
    held = arc.submit([metric_job(i, steps=3, pause_s=0.02, gate=gates.path(f"g{i}")) for i in range(4)])
    queued = arc.submit([metric_job(10 + i, steps=3, pause_s=0.02) for i in range(2)])
    wait_for(lambda: statuses(arc, held) == ["running"] * 4, 60, "four jobs to fill the four GPUs")
    assert statuses(arc, queued) == ["queued"] * 2

    arc.kill9() if how == "kill -9" else arc.stop()
    # Two jobs end while no daemon runs; the other two keep running.
    gates.open("g0", "g1")
    for job_id in held[:2]:
        host = next(h for h, w in workdirs.items() if host_state(w, job_id, hid))
        wait_for(lambda: host_state(workdirs[host], job_id, hid)["status"] == "succeeded", 30,
                 f"{job_id} to end on {host}")
    assert arc.start() != first_pid

    wait_for(lambda: statuses(arc, held[:2]) == ["succeeded"] * 2, 30, "the jobs that ended meanwhile to be ingested")
    assert statuses(arc, held[2:]) == ["running"] * 2
    wait_for(lambda: statuses(arc, queued) == ["succeeded"] * 2, 60, "the queued jobs to run on the freed GPUs")
    gates.open("g2", "g3")
    final = arc.wait(held + queued, timeout=60)
    assert {j: d["status"] for j, d in final.items()} == {j: "succeeded" for j in held + queued}
    assert arc.event_chain_problems() == []
    arc.stop()
    assert claim_violations(list(workdirs.values())) == {}
    rows = arc.read_history("SELECT job_id, seq, step, name, value FROM metrics")
    assert metric_problems(rows, workdirs, hid, final) == []
    assert len(rows) == 6 * (3 * 2 + 2)   # per job: 3 @arc lines of x and loss, and val_bpb + training_seconds


def test_a_host_away_past_the_grace_has_its_jobs_marked_lost(netns_factory, arcs, tmp_path):
    fleet = netns_factory(2, simulate_gpus=GPUS)
    arc = arcs(tmp_path / "state", fleet.hosts_yaml)
    gates = Gates(tmp_path / "gates")
    arc.start("--lost-after", "3")
    # One attempt: this is about a lost job's GPU, not its retry (tests/test_scheduler_retry.py).
    away, control = arc.submit([gates.spec("away", max_attempts=1, requirements={"host": "h2"}),
                                gates.spec("control", requirements={"host": "h1"})])
    wait_for(lambda: statuses(arc, [away, control]) == ["running", "running"], 60, "both jobs to run")

    fleet.link_down("h2")
    wait_for(lambda: statuses(arc, [away]) == ["unknown"], 60, "the job of the vanished host to turn unknown")
    wait_for(lambda: statuses(arc, [away]) == ["lost"], 30, "the grace to pass")
    assert arc.jobs([away])[away]["reason"] == "h2 unreachable for more than 3 s"
    assert statuses(arc, [control]) == ["running"]
    [later] = arc.submit([gates.spec("later", requirements={"host": "h2"})])
    assert statuses(arc, [later]) == ["queued"]

    # h2 returns with the lost job still running on gpu0: the queued job gets gpu1, at its first attempt.
    fleet.link_up("h2")
    wait_for(lambda: statuses(arc, [later]) == ["running"], 90, "h2 to come back and take the queued job")
    detail = arc.jobs([later])[later]
    assert (detail["gpu_indices"], detail["attempts"]) == ([1], 0)
    assert statuses(arc, [away]) == ["lost"]
    # When the lost job really ends, the host's word is recorded and its GPU is used again.
    gates.open("away")
    wait_for(lambda: statuses(arc, [away]) == ["succeeded"], 30, "the lost job's real end to be recorded")
    [again] = arc.submit([gates.spec("again", requirements={"host": "h2"})])
    wait_for(lambda: statuses(arc, [again]) == ["running"], 30, "a job on the GPU the lost job held")
    assert arc.jobs([again])[again]["gpu_indices"] == [0]

    gates.open_all()
    arc.wait_idle()
    assert all(s in TERMINAL for s in statuses(arc, [away, control, later, again]))
    assert arc.event_chain_problems() == []
    arc.stop()
    assert claim_violations([h.workdir for h in fleet.hosts]) == {}


def test_jobs_of_a_host_removed_from_hosts_yaml_are_lost_not_stuck(netns_factory, arcs, tmp_path):
    fleet = netns_factory(2, simulate_gpus=GPUS)
    gates = Gates(tmp_path / "gates")
    arc = arcs(tmp_path / "state", fleet.hosts_yaml)
    arc.start()
    [crashed] = arc.submit([{"command": ["false"], "time_limit_s": 60, "requirements": {"host": "h2"}}])
    arc.wait([crashed])
    # One attempt: pinned to a host that leaves the fleet, a retry could only wait forever.
    [orphan] = arc.submit([gates.spec("orphan", max_attempts=1, requirements={"host": "h2"})])
    wait_for(lambda: statuses(arc, [orphan]) == ["running"], 60, "the job on h2 to run")
    arc.stop()
    # The person drops h2 from the fleet: what ran there can no longer be reconciled, so it is lost, with why,
    # and its details (whose log lives on h2) still answer.
    only_h1 = fleet.write_hosts_yaml(tmp_path / "h1-only.yaml", [fleet.host_entry("h1")])
    arc = arcs(tmp_path / "state", only_h1)
    arc.start()
    jobs = arc.jobs([crashed, orphan])
    assert (jobs[orphan]["status"], jobs[orphan]["reason"]) == ("lost", "its host h2 is no longer in hosts.yaml")
    assert jobs[crashed]["status"] == "failed" and jobs[crashed]["triage"] is not None
    assert arc.event_chain_problems() == []
    arc.stop()
    gates.open_all()


def test_a_launch_stuck_in_a_dropped_connection_never_runs_beside_its_requeued_self(netns_factory, arcs, tmp_path):
    """h1's agent stops reading (SIGSTOP) with a launch waiting in its input, as when a partition holds the bytes
    back: the daemon gives that connection up, reconnects, finds no record of the job, and queues it again, and it
    runs on h2. When the old agent process reads the launch at last, h1 refuses it: the daemon revoked it."""
    fleet = netns_factory(2)
    hosts_yaml = fleet.write_hosts_yaml(tmp_path / "hosts.yaml", [
        fleet.host_entry("h1", simulate_gpus=[{"model": "H100", "memory_gb": 80}]),
        fleet.host_entry("h2", simulate_gpus=[{"model": "H200", "memory_gb": 141}])])   # faster: preferred
    arc = arcs(tmp_path / "state", hosts_yaml)
    gates = Gates(tmp_path / "gates")
    arc.start()
    hid = arc.history_id()
    [h2_busy] = arc.submit([gates.spec("h2-busy", requirements={"host": "h2"})])
    wait_for(lambda: statuses(arc, [h2_busy]) == ["running"], 60, "h2's GPU to be taken")

    old_agent = serve_pid(fleet.host("h1").workdir)
    os.kill(old_agent, signal.SIGSTOP)
    try:
        [job] = arc.submit([metric_job(1, steps=2, pause_s=0.05)])      # h1's GPU is the only free one
        wait_for(lambda: statuses(arc, [job]) == ["dispatching"], 30, "the launch to be sent to h1")
        gates.open("h2-busy")       # so h2's faster GPU is free by the time the job is queued again
        wait_for(lambda: statuses(arc, [job]) == ["succeeded"], 120, "the job to be queued again and run")
    finally:
        os.kill(old_agent, signal.SIGCONT)
    wait_for(lambda: not os.path.exists(f"/proc/{old_agent}"), 30, "h1's old agent to read its input and exit")

    assert arc.jobs([job])[job]["host"] == "h2"
    assert not host_job_dir(fleet.host("h1").workdir, job, hid).exists()
    arc.stop()
    reasons = [r for (r,) in arc.read_history("SELECT reason FROM events WHERE job_id = ?", [job])]
    assert "launch never reached h1; revoked there, queued again" in reasons
    assert not (Path(fleet.host("h1").workdir) / "claims.log").exists()     # h1 never claimed anything
    assert claim_violations([fleet.host("h2").workdir]) == {}


def serve_pid(workdir: Path) -> int:
    """The agent's serve process for this workdir (not the spare supervisors it forked, which share its cmdline)."""
    def cmdline(pid: str) -> list[str]:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            return []
    serving = {pid for pid in os.listdir("/proc") if pid.isdigit()
               and str(workdir) in cmdline(pid) and "serve" in cmdline(pid)}
    parent = {pid: Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1] for pid in serving}
    [pid] = [pid for pid in serving if parent[pid] not in serving]
    return int(pid)

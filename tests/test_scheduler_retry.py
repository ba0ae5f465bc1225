"""Infrastructure failures are retried, the experiment's own never: an SSH host whose processes all die mid-job (a
crash: agent, supervisor, job and sshd SIGKILLed, then sshd back with the same workdir) has its job queued again,
away from that host while another could run it, up to the job's `max_attempts`; every attempt stays in the history
and shows in job_status."""
from __future__ import annotations

import os
import signal

from tests.daemon_support import Arc, Gates, claim_violations, wait_for

GPUS = [{"model": "H100", "memory_gb": 80}]


def crash(fleet, name: str) -> None:
    """Every process of the host dies at once, as in a power cut; then it boots with its disk (workdir) intact."""
    for pid in fleet.pids(name):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_for(lambda: not fleet.pids(name), 30, f"every process of {name} to be gone")
    fleet.start_sshd(name)


def detail(arc: Arc, job_id: str) -> dict:
    return arc.jobs([job_id])[job_id]


def test_a_job_on_a_crashed_host_is_retried_elsewhere_and_succeeds(netns_factory, arcs, tmp_path):
    fleet = netns_factory(2, simulate_gpus=GPUS)
    gates = Gates(tmp_path / "gates")
    arc = arcs(tmp_path / "state", fleet.hosts_yaml)
    arc.start()
    [job] = arc.submit([gates.spec("job")])
    wait_for(lambda: detail(arc, job)["status"] == "running", 60, "the job to run")
    first = detail(arc, job)["host"]
    other = next(h.name for h in fleet.hosts if h.name != first)
    # The experiment's own failure, beside it: never retried.
    [failing] = arc.submit([{"command": ["false"], "time_limit_s": 60}])

    crash(fleet, first)
    wait_for(lambda: detail(arc, job)["host"] == other and detail(arc, job)["status"] == "running", 90,
             f"the job to run again on {other}")
    gates.open("job")
    final = arc.wait([job, failing], timeout=60)
    assert final[job]["status"] == "succeeded"
    assert final[job]["attempts"] == 1
    [lost] = final[job]["lost_attempts"]
    assert lost["attempt"] == 1 and lost["host"] == first and lost["started_at"] and lost["ended_at"]
    assert "supervisor" in lost["reason"] or "no record" in lost["reason"], lost["reason"]
    assert (final[failing]["status"], final[failing]["attempts"], final[failing]["lost_attempts"]) == \
        ("failed", 0, [])
    assert arc.event_chain_problems() == []
    arc.stop()
    assert claim_violations([h.workdir for h in fleet.hosts]) == {}


def test_max_attempts_is_respected_and_a_pinned_job_retries_on_its_own_host(netns_factory, arcs, tmp_path):
    fleet = netns_factory(2, simulate_gpus=GPUS)
    gates = Gates(tmp_path / "gates")
    arc = arcs(tmp_path / "state", fleet.hosts_yaml)
    arc.start()
    # Pinned to h1: the host that lost it is the only one that can run it, so it goes back there.
    [twice, once] = arc.submit([gates.spec("twice", max_attempts=2, requirements={"host": "h1"}),
                                gates.spec("once", max_attempts=1, requirements={"host": "h2"})])
    wait_for(lambda: [detail(arc, j)["status"] for j in (twice, once)] == ["running"] * 2, 60, "both jobs to run")

    crash(fleet, "h1")
    crash(fleet, "h2")
    wait_for(lambda: detail(arc, once)["status"] == "lost", 90, "the job with one attempt to stay lost")
    assert (detail(arc, once)["attempts"], detail(arc, once)["lost_attempts"]) == (0, [])
    wait_for(lambda: detail(arc, twice)["status"] == "running" and detail(arc, twice)["attempts"] == 1, 90,
             "the job with two attempts to run again on h1")
    assert detail(arc, twice)["host"] == "h1"

    crash(fleet, "h1")
    wait_for(lambda: detail(arc, twice)["status"] == "lost", 90, "the second loss to be the last")
    assert detail(arc, twice)["attempts"] == 1
    assert [a["host"] for a in detail(arc, twice)["lost_attempts"]] == ["h1"]
    assert arc.event_chain_problems() == []
    arc.stop()
    gates.open_all()

"""Placement through a real daemon over three sshd hosts with different simulated GPUs: constraints are honoured,
impossible jobs are refused at submission with the reason, the fastest free GPU goes first, "same class as job X"
and priority order hold, a claim race is retried on another GPU, and a job that fails by itself is never retried.

Fleet: h1 two "NVIDIA H200" (141 GB, label big), h2 two "NVIDIA H100 80GB HBM3" (label fast), h3 two
"NVIDIA A100-SXM4-80GB" (label cheap, the only host with CPU slots). Jobs hold their GPU until the test opens their
gate (a file), so what runs where is decided by the test, not by timing.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mcp_server.daemon.client import DaemonError
from tests.daemon_support import REPO, TERMINAL, Arc, Gates, claim_violations, host_job_dir, host_state, wait_for


H200 = {"model": "NVIDIA H200", "memory_gb": 141}
H100 = {"model": "NVIDIA H100 80GB HBM3", "memory_gb": 80}
A100 = {"model": "NVIDIA A100-SXM4-80GB", "memory_gb": 80}
CLASS = {"h1": "H200", "h2": "H100-SXM", "h3": "A100-80GB"}


@pytest.fixture(scope="module")
def mixed(netns_factory, tmp_path_factory):
    fleet = netns_factory(3)
    root = tmp_path_factory.mktemp("placement")
    hosts_yaml = fleet.write_hosts_yaml(root / "hosts.yaml", [
        fleet.host_entry("h1", simulate_gpus=[H200, H200], cpu_slots=0, labels=["big"]),
        fleet.host_entry("h2", simulate_gpus=[H100, H100], cpu_slots=0, labels=["fast"]),
        fleet.host_entry("h3", simulate_gpus=[A100, A100], cpu_slots=2, labels=["cheap"])])
    arc = Arc(root / "state", hosts_yaml)
    arc.start()
    yield fleet, arc
    arc.stop()


@pytest.fixture
def run(mixed, tmp_path):
    """(fleet, arc, gates) with every GPU free; at the end every gate is opened and every job must end, with its
    status events chained from its submission to its end, each with a reason, and no GPU ever held twice."""
    fleet, arc = mixed
    gates = Gates(tmp_path / "gates")
    yield fleet, arc, gates
    gates.open_all()
    arc.wait_idle()
    assert arc.event_chain_problems() == []
    assert claim_violations([h.workdir for h in fleet.hosts]) == {}


def running(arc: Arc, job_ids: list[str]) -> dict[str, dict]:
    jobs = arc.jobs(job_ids)
    return jobs if all(j["status"] == "running" for j in jobs.values()) else {}


def test_fastest_free_gpu_first_with_mixed_models(run):
    fleet, arc, gates = run
    first = arc.submit([gates.spec(f"a{i}") for i in range(6)])
    jobs = wait_for(lambda: running(arc, first), 60, "six jobs to run")
    assert [(jobs[j]["host"], jobs[j]["gpu_class"]) for j in first] == [
        ("h1", "H200"), ("h1", "H200"), ("h2", "H100-SXM"), ("h2", "H100-SXM"), ("h3", "A100-80GB"),
        ("h3", "A100-80GB")]
    # Free one GPU of each model; then the next two jobs take the H200, then the H100, leaving the A100.
    gates.open("a0", "a2", "a4")
    wait_for(lambda: all(s["status"] == "succeeded" for s in arc.jobs([first[0], first[2], first[4]]).values()),
             60, "one job of each model to end")
    second = arc.submit([gates.spec(f"b{i}") for i in range(2)])
    jobs = wait_for(lambda: running(arc, second), 60, "two more jobs to run")
    assert [(jobs[j]["host"], jobs[j]["gpu_indices"]) for j in second] == [("h1", [0]), ("h2", [0])]


@pytest.mark.parametrize("requirements, host, gpus", [
    ({"gpu_class": "A100-80GB"}, "h3", [0]),
    ({"gpu_model": "H100"}, "h2", [0]),
    ({"min_memory_gb": 100}, "h1", [0]),
    ({"host": "h3"}, "h3", [0]),
    ({"label": "fast"}, "h2", [0]),
    ({"gpus": 2}, "h1", [0, 1]),
    ({"gpus": 2, "gpu_class": "A100-80GB"}, "h3", [0, 1]),
    ({"cpu_only": True}, "h3", []),
], ids=lambda v: json.dumps(v) if isinstance(v, dict) else None)
def test_constraints_are_honoured(run, requirements, host, gpus):
    fleet, arc, gates = run
    [job] = arc.submit([gates.spec("g", requirements=requirements)])
    detail = wait_for(lambda: running(arc, [job]), 60, f"{job} to run")[job]
    assert (detail["host"], detail["gpu_indices"]) == (host, gpus)
    on_host = host_state(fleet.host(host).workdir, job, arc.history_id())
    assert on_host["gpus"] == gpus
    if requirements.get("cpu_only"):
        assert detail["gpu_class"] == "cpu" and on_host["cpu_slot"] is not None
    else:
        assert detail["gpu_class"] == CLASS[host]


def test_a_constrained_job_waits_for_its_gpu_rather_than_taking_another(run):
    fleet, arc, gates = run
    big = arc.submit([gates.spec(f"big{i}", requirements={"gpu_class": "H200"}) for i in range(2)])
    wait_for(lambda: running(arc, big), 60, "both H200s to be busy")
    [waiting, other] = arc.submit([gates.spec("w", requirements={"min_memory_gb": 100}), gates.spec("o")])
    # The job after it in the queue is placed: the dispatcher has seen the constrained one and left it queued.
    assert wait_for(lambda: running(arc, [other]), 60, "the unconstrained job to run")[other]["host"] == "h2"
    assert arc.jobs([waiting])[waiting]["status"] == "queued"
    gates.open("big1")
    detail = wait_for(lambda: running(arc, [waiting]), 60, "the constrained job to get the freed H200")[waiting]
    assert (detail["host"], detail["gpu_indices"]) == ("h1", [1])


@pytest.mark.parametrize("args, reason", [
    (["--gpu-class", "H300"], "no host has 1 GPU(s) of class H300; the fleet has A100-80GB (80 GB), "
                              "H100-SXM (80 GB), H200 (141 GB)"),
    (["--min-memory-gb", "200"], "no host has 1 GPU(s) with >= 200 GB"),
    (["--gpu-model", "A100", "--min-memory-gb", "100"], "no host has 1 GPU(s) of model 'A100' with >= 100 GB"),
    (["--gpus", "3"], "no host has 3 GPU(s); the fleet has A100-80GB (80 GB), H100-SXM (80 GB), H200 (141 GB) "
                      "(at most 2 matching on one host)"),
    (["--host", "h9"], "no host named 'h9' in hosts.yaml"),
    (["--label", "tiny"], "no host carries the label 'tiny'"),
    (["--cpu", "--host", "h1"], "no matching host offers CPU slots"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_impossible_jobs_are_refused_at_submission_with_the_reason(run, args, reason):
    fleet, arc, gates = run
    before = arc.call("list_jobs", limit=1)["total"]
    proc = arc.cli("submit", *args, "--", "true", check=False)
    assert proc.returncode == 1
    assert f"nothing submitted; job 0: can never run: {reason}" in proc.stderr
    # A batch with one impossible job submits nothing either.
    with pytest.raises(DaemonError, match="nothing submitted; job 1: can never run"):
        arc.call("submit_jobs", jobs=[gates.spec("x"), {"command": ["true"], "requirements": {"gpu_class": "H300"}}])
    assert arc.call("list_jobs", limit=1)["total"] == before


def test_same_gpu_class_as_another_job(run):
    fleet, arc, gates = run
    [ref] = arc.submit([gates.spec("ref", requirements={"gpu_class": "A100-80GB"})])
    wait_for(lambda: running(arc, [ref]), 60, "the reference job to run")
    # Faster GPUs are free, yet the comparison runs on the reference job's class.
    [same] = arc.submit([gates.spec("same", requirements={"same_class_as": ref})])
    detail = wait_for(lambda: running(arc, [same]), 60, "the comparison job to run")[same]
    assert (detail["host"], detail["gpu_class"]) == ("h3", "A100-80GB")
    # A reference still queued: the comparison waits until it is placed, then follows it onto its class.
    [queued_ref] = arc.submit([gates.spec("qref", requirements={"host": "h3"})])
    [follower, other] = arc.submit([gates.spec("follow", requirements={"same_class_as": queued_ref}),
                                    gates.spec("other")])
    wait_for(lambda: running(arc, [other]), 60, "a later job to run")
    assert {j["status"] for j in arc.jobs([queued_ref, follower]).values()} == {"queued"}
    gates.open("ref", "same")
    detail = wait_for(lambda: running(arc, [queued_ref, follower]), 60, "both to run on h3")
    assert {(d["host"], d["gpu_class"]) for d in detail.values()} == {("h3", "A100-80GB")}


def test_priority_order(run):
    fleet, arc, gates = run
    hold = arc.submit([gates.spec(f"hold{i}", requirements={"host": "h3"}) for i in range(2)])
    wait_for(lambda: running(arc, hold), 60, "h3 to be full")
    low, mid, high = arc.submit([gates.spec(name, requirements={"host": "h3"}, priority=p)
                                 for name, p in (("low", -5), ("mid", 0), ("high", 5))])
    gates.open("hold0")
    wait_for(lambda: running(arc, [high]), 60, "the high-priority job to start first")
    assert {j["status"] for j in arc.jobs([low, mid]).values()} == {"queued"}
    gates.open("hold1")
    wait_for(lambda: running(arc, [mid]), 60, "then the default-priority job")
    assert arc.jobs([low])[low]["status"] == "queued"
    gates.open("high")
    wait_for(lambda: running(arc, [low]), 60, "and the low-priority job last")


def test_a_claim_race_is_retried_on_another_gpu(run):
    fleet, arc, gates = run
    h1 = fleet.host("h1")
    # Something outside this history claims h1's gpu0 after the daemon took its inventory (another controller,
    # a person with the agent's CLI): the daemon still thinks that GPU, the fastest, is free.
    intruder = subprocess.run(
        ["ip", "netns", "exec", h1.ns, sys.executable, "-m", "gpu_agent", "--workdir", str(h1.workdir), "launch",
         "--job-id", "intruder", "--gpus", "0", "--time-limit", "120", "--", *gates.spec("intruder")["command"]],
        cwd=REPO, capture_output=True, text=True)
    assert intruder.returncode == 0, intruder.stdout + intruder.stderr
    [job] = arc.submit([gates.spec("racer")])
    detail = wait_for(lambda: running(arc, [job]), 60, "the job to run after its claim conflict")[job]
    assert (detail["host"], detail["gpu_indices"], detail["attempts"]) == ("h1", [1], 1)
    reasons = [r[0] for r in arc.sql(f"SELECT reason FROM events WHERE job_id = '{job}' ORDER BY event_id")]
    assert any(r.startswith("claim_conflict on h1: gpu0 is held by job intruder") and r.endswith("queued again")
               for r in reasons), reasons
    # Once the intruder ends, its GPU is used again.
    gates.open("intruder")
    wait_for(lambda: (json.loads((h1.workdir / "jobs" / "intruder" / "state.json").read_text())["status"]
                      in TERMINAL), 30, "the intruder to end")
    [after] = arc.submit([gates.spec("after")])
    assert wait_for(lambda: running(arc, [after]), 60, "a job on the freed GPU")[after]["gpu_indices"] == [0]


def test_cpu_slots_held_outside_this_history_make_a_cpu_job_wait_not_fail(run):
    fleet, arc, gates = run
    h3 = fleet.host("h3")
    for name in ("cpu-intruder-0", "cpu-intruder-1"):             # both of h3's CPU slots, behind the daemon's back
        intruder = subprocess.run(
            ["ip", "netns", "exec", h3.ns, sys.executable, "-m", "gpu_agent", "--workdir", str(h3.workdir), "launch",
             "--job-id", name, "--time-limit", "120", "--", *gates.spec(name)["command"]],
            cwd=REPO, capture_output=True, text=True)
        assert intruder.returncode == 0, intruder.stdout + intruder.stderr
    [job] = arc.submit([gates.spec("cpu-waiter", requirements={"cpu_only": True})])
    wait_for(lambda: arc.jobs([job])[job]["attempts"] == 1, 30, "the launch to meet the held slots")
    # Later GPU jobs queued behind it run and end: every dispatch round that placed one looked at the waiter
    # first (the queue is in submission order) and had a free GPU host's chance to relaunch it; it must wait,
    # not burn its attempts.
    probes = arc.submit([{"command": ["true"], "time_limit_s": 60} for _ in range(3)])
    assert {d["status"] for d in arc.wait(probes).values()} == {"succeeded"}
    detail = arc.jobs([job])[job]
    assert (detail["status"], detail["attempts"]) == ("queued", 1), detail
    gates.open("cpu-intruder-1")                     # one slot frees: the job takes it
    detail = wait_for(lambda: running(arc, [job]), 60, "the CPU job to run once a slot frees")[job]
    assert detail["host"] == "h3" and detail["gpu_class"] == "cpu"


def test_a_job_that_fails_by_itself_is_never_retried(run):
    fleet, arc, gates = run
    [job] = arc.submit([{"command": [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"],
                         "time_limit_s": 60}])
    detail = arc.wait([job], timeout=60)[job]
    assert (detail["status"], detail["exit_code"], detail["attempts"]) == ("failed", 3, 0)
    placed = arc.sql(f"SELECT count(*) FROM events WHERE job_id = '{job}' AND new_status = 'dispatching'")
    assert placed == [[1]]
    hid = arc.history_id()
    assert [h.name for h in fleet.hosts if host_job_dir(h.workdir, job, hid).exists()] == [detail["host"]]

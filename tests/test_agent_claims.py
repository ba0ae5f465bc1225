"""Claims: one job per GPU, all-or-nothing multi-GPU claims, stale claims reported and released only on request."""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from gpu_agent.errors import AgentRefusal
from gpu_agent.ops import Agent
from tests.agent_support import (  # noqa: F401
    agent, ended, launch, ledger_violations, process_gone, read_ledger, wait_until, workdir)

ROUNDS = 40
RACERS = 3


def _racer(workdir: str, racer: int, barrier, out: str) -> None:
    """One contender: each round, launch its own job on GPU 0 at the same moment as the others."""
    agent = Agent(Path(workdir))
    gpu0 = Path(workdir) / "claims" / "gpu0"
    with open(out, "w") as f:
        for round_ in range(ROUNDS):
            job_id = f"r{round_}-{racer}"
            barrier.wait()
            r = agent.handle({"id": round_, "op": "launch", "params": {
                "job_id": job_id, "launch_token": f"t{round_}-{racer}", "argv": ["sleep", "30"], "gpus": [0],
                "time_limit_s": 30}})
            f.write(json.dumps({"round": round_, "ok": r["ok"], "code": r.get("error", {}).get("code")}) + "\n")
            barrier.wait()          # everyone has tried while the winner's job holds GPU 0
            if r["ok"]:
                agent.handle({"id": round_, "op": "cancel", "params": {"job_id": job_id}})
            deadline = time.monotonic() + 20
            while gpu0.exists() and time.monotonic() < deadline:
                time.sleep(0.002)


def test_launches_racing_for_one_gpu_exactly_one_wins(workdir, tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(RACERS)
    outs = [tmp_path / f"racer{k}.jsonl" for k in range(RACERS)]
    racers = [ctx.Process(target=_racer, args=(str(workdir), k, barrier, str(outs[k]))) for k in range(RACERS)]
    for p in racers:
        p.start()
    for p in racers:
        p.join(120)
        assert p.exitcode == 0
    results = [json.loads(line) for out in outs for line in out.read_text().splitlines()]
    assert len(results) == ROUNDS * RACERS
    for round_ in range(ROUNDS):
        outcome = sorted((r["ok"], r["code"]) for r in results if r["round"] == round_)
        assert outcome == [(False, "claim_conflict")] * (RACERS - 1) + [(True, None)], f"round {round_}: {outcome}"
    ledger = read_ledger(workdir / "claims.log")
    assert ledger_violations(ledger) == []
    assert sum(e["op"] == "acquire" for e in ledger) == ROUNDS


def test_multi_gpu_claims_are_all_or_nothing(agent, workdir):
    launch(agent, "hold1", ["sleep", "30"], gpus=[1])
    with pytest.raises(AgentRefusal) as e:
        launch(agent, "both", ["sleep", "30"], gpus=[0, 1])
    assert e.value.code == "claim_conflict" and "gpu1" in e.value.message and "hold1" in e.value.message
    assert [(c["resource"], c["job_id"]) for c in agent.call("claims")["claims"]] == [("gpu1", "hold1")]
    assert not (workdir / "jobs" / "both").exists()     # a refused launch leaves nothing: retry elsewhere is safe
    launch(agent, "zero", ["true"], gpus=[0])
    assert ended(agent, "zero")["status"] == "succeeded"
    with pytest.raises(AgentRefusal) as e:
        launch(agent, "nine", ["true"], gpus=[9])
    assert e.value.code == "no_such_gpu"
    agent.call("cancel", job_id="hold1")
    ended(agent, "hold1")
    launch(agent, "both", ["true"], gpus=[0, 1])        # the same job id, refused before, launches now
    state = ended(agent, "both")
    assert state["status"] == "succeeded" and state["gpu_uuids"] == [f"SIM-{os.uname().nodename}-{i}" for i in (0, 1)]
    assert ledger_violations(read_ledger(workdir / "claims.log")) == []


def test_dead_supervisor_leaves_a_stale_claim_until_release_stale(agent, workdir):
    state = launch(agent, "s1", ["sleep", "60"], gpus=[0])
    job = agent.event("job_started", "s1")[1]["state"]
    os.kill(state["supervisor_pid"], signal.SIGKILL)

    lost = ended(agent, "s1")                           # the serve process saw its supervisor's pipe close
    assert lost["status"] == "lost" and "died" in lost["reason"]
    assert not process_gone(job["pid"])                 # the orphaned job still runs, and still holds GPU 0
    claims = agent.call("claims")["claims"]
    assert [(c["resource"], c["job_id"], c["stale"]) for c in claims] == [("gpu0", "s1", True)]
    gpu0 = agent.call("inventory")["gpus"][0]
    assert (gpu0["claimed_by"], gpu0["claim_stale"]) == ("s1", True)
    assert agent.call("status")["jobs"][0]["status"] == "lost"
    with pytest.raises(AgentRefusal) as e:
        launch(agent, "s2", ["true"], gpus=[0])         # never silently reused
    assert e.value.code == "claim_conflict"

    released = agent.call("release_stale", job_id="s1")
    assert released["released"] == ["gpu0"] and released["killed"] == [job["pid"]]
    assert process_gone(job["pid"])
    assert released["state"]["status"] == "lost" and "released by the controller" in released["state"]["reason"]
    assert agent.call("status", job_ids=["s1"])["jobs"][0]["status"] == "lost"
    assert agent.call("claims")["claims"] == []
    launch(agent, "s2", ["true"], gpus=[0])
    assert ended(agent, "s2")["status"] == "succeeded"
    assert ledger_violations(read_ledger(workdir / "claims.log")) == []


def test_release_stale_refuses_a_live_job(agent, workdir):
    launch(agent, "alive", ["sleep", "30"], gpus=[0])
    with pytest.raises(AgentRefusal) as e:
        agent.call("release_stale", job_id="alive")
    assert e.value.code == "bad_request" and "alive" in e.value.message and "cancel" in e.value.message
    with pytest.raises(AgentRefusal) as e:
        agent.call("release_stale", job_id="nobody")
    assert e.value.code == "unknown_job"
    agent.call("cancel", job_id="alive")
    assert ended(agent, "alive")["status"] == "cancelled"

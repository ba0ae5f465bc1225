"""The guardrails driving the real scheduler (local host, real agent, two simulated GPUs): a checkpoint holds
queued jobs until approval, and max_gpus caps the GPUs held at once."""
import sys
import time

import pytest

from mcp_server.core.scheduler import Scheduler, SchedulerSettings
from mcp_server.fleet.hosts_config import load_hosts
from mcp_server.history import History
from mcp_server.research.config import parse_research
from mcp_server.research.guard import Guardrails
from mcp_server.stores.code import CodeStore


TERMINAL = ("succeeded", "failed", "cancelled", "timeout", "lost")


def short_job(seconds: float) -> dict:
    return {"kind": "command", "argv": [sys.executable, "-c", f"import time; time.sleep({seconds})"],
            "time_limit_s": 60.0, "requirements": {}}


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def campaign(tmp_path, local_hosts_yaml):
    """start(research settings) -> (history, guardrails, scheduler) on one local host with two simulated GPUs."""
    made = []

    def start(settings: dict):
        history = History(tmp_path / "history.duckdb")
        guard = Guardrails(parse_research(settings), history)
        rounds: list = []      # each dispatch round's allowance, in order: proof that the scheduler had its chance

        def allowance():
            rounds.append(guard.allowance())
            return rounds[-1]

        scheduler = Scheduler(history, load_hosts(local_hosts_yaml), CodeStore(tmp_path / "code"),
                              tmp_path / "data", SchedulerSettings(tick_s=0.2), allowance=allowance)
        made.append((history, scheduler))
        scheduler.start()
        return history, guard, scheduler, rounds

    yield start
    for history, scheduler in made:
        scheduler.stop()
        history.close()


def statuses(history):
    return {j["job_id"]: j["status"] for j in history.jobs(limit=100)}


def test_checkpoint_holds_dispatch_until_approved(campaign):
    # Three experiments per checkpoint on two GPUs: the third must start alone, and then nothing until approval.
    history, guard, scheduler, rounds = campaign({"checkpoint": {"every_experiments": 3}})
    ids = history.insert_jobs([short_job(0.3) for _ in range(6)])
    scheduler.wake()
    wait_until(lambda: sum(s in TERMINAL for s in statuses(history).values()) == 3, 60, "the first three jobs")
    # three dispatch rounds that saw the hold: each had the chance to start a queued job on a free GPU
    seen = len(rounds)
    wait_until(lambda: sum(a.held is not None for a in rounds[seen:]) >= 3, 60, "three dispatch rounds")
    now = [statuses(history)[j] for j in ids]
    assert now.count("queued") == 3 and now.count("succeeded") == 3
    status = guard.status()
    assert status.paused == "paused for review: 3 experiments since the campaign started (checkpoint every 3)"
    guard.approve("first three look sane", by="tester")
    scheduler.wake()
    wait_until(lambda: all(s in TERMINAL for s in statuses(history).values()), 60, "the other three jobs")
    assert guard.status().last_approval_note == "first three look sane"
    assert guard.status().paused == "paused for review: 3 experiments since the last approval (checkpoint every 3)"
    events = [e["kind"] for e in history.events(limit=500) if e["kind"] in ("paused", "approved", "resumed")]
    assert events[:3] == ["paused", "approved", "resumed"]


def test_max_gpus_caps_concurrent_jobs(campaign):
    history, guard, scheduler, _ = campaign({"max_gpus": 1})
    ids = history.insert_jobs([short_job(0.5) for _ in range(3)])
    scheduler.wake()
    wait_until(lambda: all(statuses(history)[j] in TERMINAL for j in ids), 60, "the three jobs")
    jobs = sorted((history.get_job(j) for j in ids), key=lambda j: j["started_at"])
    assert [j["status"] for j in jobs] == ["succeeded"] * 3
    # two GPUs free, but the campaign may hold one: the recorded run intervals follow one another
    for before, after in zip(jobs, jobs[1:]):
        assert before["ended_at"] <= after["started_at"], (before["job_id"], after["job_id"])

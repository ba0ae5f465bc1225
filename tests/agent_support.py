"""Fixtures and helpers shared by the agent's tests (tests/test_agent_*.py): real agent processes, real jobs.

GPUs are the only simulated thing, declared in agent.json as the controller's bootstrap would write it.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from gpu_agent.client import PACKAGE_PARENT, AgentProcess
from gpu_agent.jobstore import JobStore
from gpu_agent.protocol import TERMINAL_STATUSES, LedgerEntry

SIMULATED = [{"model": "NVIDIA H100 80GB HBM3", "memory_gb": 80}, {"model": "NVIDIA H200", "memory_gb": 141}]


def make_workdir(path: Path, config: dict[str, Any] | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (path / "agent.json").write_text(json.dumps(config))
    return path


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    w = make_workdir(tmp_path / "agent", {"simulate_gpus": SIMULATED, "cpu_slots": 2})
    yield w
    kill_jobs(w)


@pytest.fixture
def agent(workdir: Path) -> Iterator[AgentProcess]:
    with AgentProcess(workdir) as a:
        yield a


def kill_jobs(workdir: Path) -> None:
    """Teardown: no test leaves a supervisor or a job behind."""
    store = JobStore(workdir)
    for job_id in store.newest_first():
        state = store.raw_state(job_id)
        if state["status"] in TERMINAL_STATUSES:
            continue
        for pid, kill in ((state.get("pid"), os.killpg), (state.get("supervisor_pid"), os.kill)):
            if pid:
                try:
                    kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass


def gated(gate: Path, then: str = "") -> list[str]:
    """A job that runs until the test creates `gate` (then runs the shell snippet `then`): no race with slow starts."""
    return ["sh", "-c", f'while [ ! -e "$0" ]; do sleep 0.02; done; {then or "true"}', str(gate)]


def python_job(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def launch(agent: AgentProcess, job_id: str, argv: list[str], **params: Any) -> dict[str, Any]:
    params.setdefault("launch_token", f"token-{job_id}")
    params.setdefault("time_limit_s", 60)
    return agent.call("launch", job_id=job_id, argv=argv, **params)


def ended(agent: AgentProcess, job_id: str, timeout: float = 20.0) -> dict[str, Any]:
    """The job's final state, from its job_ended event."""
    return agent.event("job_ended", job_id, timeout)[1]["state"]


def wait_until(predicate: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.01)
    return value


def process_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def cli(workdir: Path, *args: str) -> tuple[int, dict[str, Any]]:
    """A one-shot `python -m gpu_agent` command, as a person runs it."""
    done = subprocess.run([sys.executable, "-m", "gpu_agent", "--workdir", str(workdir), *args], cwd=PACKAGE_PARENT,
                          capture_output=True, text=True, timeout=60)
    return done.returncode, json.loads(done.stdout)


def read_ledger(path: Path) -> list[LedgerEntry]:
    """The host's claim ledger (<workdir>/claims.log), complete lines only."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


def ledger_violations(entries: list[LedgerEntry]) -> list[str]:
    """Every place, in file order, where a resource was acquired while held or released by a non-holder."""
    holder: dict[str, str] = {}
    problems = []
    for n, e in enumerate(entries):
        resource, job = e["resource"], e["job_id"]
        if e["op"] == "acquire":
            if resource in holder:
                problems.append(f"line {n + 1}: {job} acquired {resource} while {holder[resource]} held it")
            holder[resource] = job
        elif holder.get(resource) != job:
            problems.append(f"line {n + 1}: {job} released {resource} held by {holder.get(resource)}")
        else:
            del holder[resource]
    return problems

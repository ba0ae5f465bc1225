"""`arc mcp` outlives its daemon: a headless Claude session keeps working when the daemon is killed (kill -9) while
idle, during a read-only call, and during a submission, through the real stdio MCP client and a real daemon on
this machine's `local` host. SIGSTOP first makes "the daemon dies while it holds the request" deterministic."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
from contextlib import asynccontextmanager

import anyio
import pytest
from mcp import Client, StdioServerParameters

from mcp_server.core.paths import StatePaths
from mcp_server.daemon.client import DaemonClient
from tests.daemon_support import gated_job, wait_for
from tests.mcp_support import data, error_text


pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


@asynccontextmanager
async def bridge(hosts_yaml, state):
    arc = shutil.which("arc")
    if arc is None:
        pytest.fail("the `arc` command is not on PATH: install the project first (pip install -e .)")
    env = {"ARC_HOSTS": str(hosts_yaml), "ARC_STATE_DIR": str(state), "PATH": os.environ["PATH"],
           **source_path()}
    async with Client(StdioServerParameters(command=arc, args=["mcp"], env=env), read_timeout_seconds=120) as c:
        yield c


def source_path() -> dict[str, str]:
    """The client passes the server only the environment it is given: PYTHONPATH too, so a worktree's own code runs."""
    return {"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}


async def kill_while_holding(daemon: DaemonClient, call):
    """Freeze the daemon, make `call` (it reaches the frozen daemon), kill the daemon: `call`'s answer."""
    info = daemon.info()
    pid = info["pid"]
    os.kill(pid, signal.SIGSTOP)
    answer = {}

    async def make_call():
        answer["result"] = await call()

    async with anyio.create_task_group() as tg:
        tg.start_soon(make_call)
        await reaches(info["socket"])
        assert not answer, "the frozen daemon answered"
        os.kill(pid, signal.SIGKILL)
    return answer["result"]


async def reaches(socket_path: str, hang_guard_s: float = 60) -> None:
    """Until a connection waits in the daemon's accept queue: the bridge has handed the call to the daemon (it
    connects per message and writes the request at once), which, frozen, cannot take it."""
    with anyio.fail_after(hang_guard_s):
        while True:
            listening = subprocess.run(["ss", "-xlnH", "src", socket_path], capture_output=True, text=True,
                                       check=True).stdout.split()
            if int(listening[2]) > 0:                       # Recv-Q of a listening socket: connections not accepted
                return
            await anyio.sleep(0.02)


async def test_the_bridge_outlives_its_daemon(tmp_path, local_hosts_yaml):
    state = tmp_path / "state"
    daemon = DaemonClient(StatePaths.resolve(state))
    try:
        async with bridge(local_hosts_yaml, state) as c:
            await c.list_tools()                            # what Claude Code does first; it learns what is read-only
            assert data(await c.call_tool("list_jobs", {}))["total"] == 0

            first = daemon.info()["pid"]                    # 1. killed while the agent was thinking
            os.kill(first, signal.SIGKILL)
            wait_for(lambda: not daemon.running(), 10, "the killed daemon's lock to go")
            assert data(await c.call_tool("list_jobs", {}))["total"] == 0
            assert daemon.info()["pid"] != first

            gate = tmp_path / "gate"                        # 2. killed during a read-only call: sent again
            job = data(await c.call_tool("submit_jobs", {"jobs": [gated_job(gate)]}))["jobs"][0]["job_id"]

            async def wait_after_opening_the_gate():
                gate.touch()                                 # the job ends while no daemon runs
                return await c.call_tool("wait_for_jobs", {"job_ids": [job], "timeout_s": 60})

            before = daemon.info()["pid"]
            waited = data(await kill_while_holding(daemon, wait_after_opening_the_gate))
            assert daemon.info()["pid"] != before                    # answered by the daemon the bridge restarted
            assert [(d["job_id"], d["status"]) for d in waited["done"]] == [(job, "succeeded")]

            submission = {"jobs": [gated_job(gate, name="lost-or-not")]}   # 3. killed during a submission
            refused = error_text(await kill_while_holding(daemon, lambda: c.call_tool("submit_jobs", submission)))
            assert "arc's daemon went away" in refused and "during this call" in refused
            assert "check list_jobs first" in refused
            jobs = data(await c.call_tool("list_jobs", {}))     # the next call starts a daemon again
            assert jobs["total"] == 1, jobs                  # the frozen daemon never recorded it; the first job kept
    finally:
        daemon.stop()


def test_a_daemon_that_cannot_start_is_reported_with_its_reason(tmp_path, local_hosts_yaml):
    state = StatePaths.resolve(tmp_path / "state").ensure()
    state.history.write_text("not a DuckDB file\n")                   # the daemon cannot open its history
    env = {**os.environ, "ARC_HOSTS": str(local_hosts_yaml), "ARC_STATE_DIR": str(state.root)}
    proc = subprocess.run([shutil.which("arc"), "mcp"], env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0 and proc.stdout == ""                  # stdout is the protocol's alone
    assert proc.stderr.startswith("arc: the daemon exited at start"), proc.stderr
    assert str(state.history) in proc.stderr, proc.stderr                   # the log's tail names what failed

"""The MCP tools as Claude Code reaches them: `arc mcp` launched over stdio (the real MCP client), which starts the
daemon, which runs jobs on hosts that are network namespaces with their own sshd (tests/harness)."""
from __future__ import annotations

import asyncio
import base64
import json
import shutil
import sys
from contextlib import asynccontextmanager

import pytest
from mcp import Client, StdioServerParameters

from mcp_server.core.paths import StatePaths
from mcp_server.daemon.client import DaemonClient
from tests.mcp_support import data, error_text, image, log_parts, metric_job, sleeper
from tests.test_bridge_restart import source_path


pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
def arc_env(netns_hosts, tmp_path_factory):
    """What `claude mcp add arc -e ... -- arc mcp` would give the bridge: the fleet file and a state dir."""
    arc = shutil.which("arc")
    if arc is None:
        pytest.fail("the `arc` command is not on PATH: install the project first (pip install -e .)")
    state = tmp_path_factory.mktemp("stdio-state")
    research = state / "research.yaml"       # not beside the session's hosts file: other modules share that
    research.write_text("metric: {name: val_bpb, direction: minimize}\n"
                        "search_space:\n  lr: {type: float, min: 0.0001, max: 0.1, log: true}\n")
    env = {"ARC_HOSTS": str(netns_hosts.hosts_yaml), "ARC_STATE_DIR": str(state), "ARC_RESEARCH": str(research),
           **source_path()}
    yield arc, env
    DaemonClient(StatePaths.resolve(state)).stop()


@asynccontextmanager
async def bridge(arc_env):
    arc, env = arc_env
    async with Client(StdioServerParameters(command=arc, args=["mcp"], env=env), read_timeout_seconds=120) as c:
        yield c


async def fleet_ready(call, n_hosts: int) -> dict:
    """list_gpus once every host is reachable (the daemon connects to its hosts in the background)."""
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        gpus = data(await call("list_gpus", {}))
        if sum(h["reachable"] for h in gpus["hosts"]) == n_hosts:
            return gpus
        assert asyncio.get_running_loop().time() < deadline, gpus["summary"]
        await asyncio.sleep(0.5)


async def test_every_tool_over_stdio_on_ssh_hosts(arc_env, netns_hosts, tmp_path):
    gate = tmp_path / "first-progress-came"     # the hosts' namespaces share this filesystem
    async with bridge(arc_env) as c:
        offered = {t.name for t in (await c.list_tools()).tools}
        called: set[str] = set()

        async def call(tool: str, args: dict, **options):
            called.add(tool)
            return await c.call_tool(tool, args, **options)

        gpus = await fleet_ready(call, len(netns_hosts.hosts))
        assert sorted(h["name"] for h in gpus["hosts"]) == [h.name for h in netns_hosts.hosts]
        assert sum(len(h["gpus"]) for h in gpus["hosts"]) == 2 * len(netns_hosts.hosts)

        hostile = "; rm -rf / $(id) `hostname` && echo owned > /tmp/arc-owned"
        # The job ends only once the wait has reported progress, so the wait really waits (a job that ended before
        # its first check would get an answer with no progress, rightly).
        code = f"import os, sys, time; print(sys.argv[1:], flush=True)\nwhile not os.path.exists({str(gate)!r}): " \
               "time.sleep(0.05)"
        spec = {"command": [sys.executable, "-c", code, hostile], "requirements": {"host": "h2"}}
        job = data(await call("submit_jobs", {"jobs": [spec]}))["jobs"][0]
        progress = []

        async def on_progress(done, total, message):
            progress.append(done)
            gate.touch()

        waited = data(await call("wait_for_jobs", {"job_ids": [job["job_id"]], "timeout_s": 60},
                                        progress_callback=on_progress))
        assert waited["done"][0]["status"] == "succeeded" and waited["done"][0]["host"] == "h2" and progress
        header, fenced = log_parts(await call("tail_log", {"job_id": job["job_id"]}))
        assert repr([hostile]) in fenced and "BEGIN JOB OUTPUT" in fenced and header["next_offset"] > 0

        detail = data(await call("job_status", {"job_ids": [job["job_id"]]}))["jobs"][0]
        assert detail["command"][-1] == hostile and detail["exit_code"] == 0
        listed = data(await call("list_jobs", {"host": "h2", "limit": 5}))
        assert job["job_id"] in [j["job_id"] for j in listed["jobs"]]

        base, better = (j["job_id"] for j in data(await call("submit_jobs", {"jobs": [
            metric_job(1.0, tags=["baseline"], requirements={"host": "h1"}),
            metric_job(0.9, requirements={"host": "h3"})]}))["jobs"])
        hyp = data(await call("append_hypothesis", {"text": "0.9 beats 1.0", "jobs": [better]}))
        hyp_id = hyp["hypothesis"]["hyp_id"]
        data(await call("wait_for_jobs", {"job_ids": [base, better], "mode": "all", "timeout_s": 60}))
        data(await call("update_hypothesis", {"hyp_id": hyp_id, "status": "inconclusive",
                                                     "verdict": "H100: 0.9 vs 1.0", "effect_size": -0.1}))
        assert data(await call("list_hypotheses", {}))["hypotheses"][0]["status"] == "inconclusive"
        board = data(await call("leaderboard", {}))
        assert board["classes"][0]["best"][0]["job_id"] == better
        assert data(await call("digest", {"since": "1h"}))["succeeded"] >= 3
        rows = data(await call("query_results", {
            "sql": "SELECT job_id, host, val_bpb FROM runs WHERE val_bpb IS NOT NULL ORDER BY val_bpb"}))["rows"]
        assert [r[0] for r in rows] == [better, base] and rows[0][1] == "h3"
        assert data(await call("describe_history", {"table": "runs"}))["relations"][0]["name"] == "runs"
        png = base64.b64decode(image(await call("plot_runs", {"job_ids": [base, better]})).data)
        assert png.startswith(b"\x89PNG")

        assert data(await call("compare_runs", {"a": [better], "b": [base]}))["summary"]
        # one run a side proves nothing: a keep is refused and says what would settle it; a discard is recorded
        refused = error_text(await call("keep_run", {"job_ids": [better], "against": [base], "reason": "0.9 < 1.0"}))
        assert "too few runs" in refused and "rerun_job" in refused
        discarded = data(await call("discard_run", {"job_ids": [better], "against": [base], "reason": "unproven"}))
        assert discarded["summary"]
        confirming = data(await call("confirm_runs", {"job_ids": [better], "seeds": [1]}))
        assert confirming["summary"]
        answer = await call("diff_jobs", {"a": base, "b": better})      # text blocks only; no code to diff here
        assert not answer.is_error and answer.structured_content is None
        diff = json.loads(answer.content[0].text)
        assert diff["summary"].startswith(f"{base} -> {better}: 1 setting(s) differ")
        assert "val_bpb: 1.000000" in diff["settings"][0] and "val_bpb: 0.900000" in diff["settings"][0]
        again = data(await call("rerun_job", {"job_id": base}))["jobs"][0]["job_id"]
        rerun = data(await call("wait_for_jobs", {"job_ids": [again], "timeout_s": 60}))["done"][0]
        assert rerun["metric"] == 1.0 and rerun["host"] == "h1"     # the same command, the same requirements
        status = data(await call("research_status", {}))
        assert status["summary"].startswith("running") and "PAUSED" not in status["summary"]
        suggested = data(await call("suggest_configs", {"n": 2}))["configs"]
        assert len(suggested) == 2 and all(1e-4 <= s["lr"] <= 0.1 for s in suggested)
        # trainer jobs need a prepared dataset (tests/test_mcp_research.py runs them): here the refusal says so
        refused = error_text(await call("measure_noise", {"seeds": 2}))
        assert "no dataset prepared for trainer jobs" in refused and "arc data prepare" in refused

        slow = data(await call("submit_jobs", {"jobs": [sleeper(120)]}))["jobs"][0]["job_id"]
        assert data(await call("cancel_jobs", {"job_ids": [slow]}))["cancelled"] == [slow]
        ended = data(await call("wait_for_jobs", {"job_ids": [slow], "timeout_s": 60}))
        assert ended["done"][0]["status"] == "cancelled"
        assert called == offered, f"tools the server lists but this test never calls: {sorted(offered - called)}"


REFUSALS = [
    ("job_status", {"job_ids": ["j424242"]}, "no job j424242"),
    ("tail_log", {"job_id": "../../../etc/passwd"}, "not a job id"),
    ("query_results", {"sql": "SELECT * FROM nowhere"}, "nowhere"),
    ("query_results", {"sql": "COPY jobs TO '/tmp/arc-stdio-leak.csv'"}, "COPY"),
    ("query_results", {"sql": "SELECT * FROM read_csv('/etc/passwd')"}, "file access"),
    ("list_jobs", {"limit": 10**6}, "limit"),
    ("submit_jobs", {"jobs": [{"config": {"depth": 2}, "command": ["true"]}]}, "either config"),
    ("submit_jobs", {"jobs": [{"command": ["true"], "requirements": {"gpus": 3}}]}, "can never run"),
]


async def test_refusals_over_stdio(arc_env):
    async with bridge(arc_env) as c:
        for tool, args, expect in REFUSALS:
            message = error_text(await c.call_tool(tool, args))
            assert expect.lower() in message.lower(), (tool, message)
        assert data(await c.call_tool("list_jobs", {"limit": 1}))    # the session is still fine after refusals


async def test_two_bridges_at_once_submit_into_one_queue(arc_env, netns_hosts):
    async def submit_from_a_bridge(tag: str) -> tuple[list[str], int]:
        async with bridge(arc_env) as c:
            ids = [j["job_id"] for j in data(await c.call_tool("submit_jobs", {
                "jobs": [metric_job(1.5, sleep_s=0.5, tags=[tag, "both"]) for _ in range(5)]}))["jobs"]]
            data(await c.call_tool("wait_for_jobs", {"job_ids": ids, "mode": "all", "timeout_s": 120}))
            seen = data(await c.call_tool("list_jobs", {"tag": "both", "limit": 50}))["total"]
            return ids, seen

    (a, seen_a), (b, seen_b) = await asyncio.gather(submit_from_a_bridge("a"), submit_from_a_bridge("b"))
    assert len(set(a) | set(b)) == 10                   # one id sequence: no job id handed out twice
    assert seen_a == 10 or seen_b == 10                 # the later finisher sees both sessions' jobs
    async with bridge(arc_env) as c:
        jobs = data(await c.call_tool("list_jobs", {"tag": "both", "limit": 50}))["jobs"]
    assert sorted(j["status"] for j in jobs) == ["succeeded"] * 10


async def test_wait_reports_progress_until_the_jobs_end(arc_env):
    async with bridge(arc_env) as c:
        job_id = data(await c.call_tool("submit_jobs", {"jobs": [sleeper(6)]}))["jobs"][0]["job_id"]
        updates = []

        async def on_progress(done, total, message):
            updates.append((done, total, message))

        waited = data(await c.call_tool("wait_for_jobs", {"job_ids": [job_id], "timeout_s": 60},
                                        progress_callback=on_progress))
    # it returned because the job ended, not at its deadline
    assert waited["done"][0]["status"] == "succeeded" and not waited["pending"] and not waited["timed_out"]
    assert len(updates) >= 2 and all(total == 1 for _, total, _ in updates)     # every ~2 s while it waited
    assert job_id in updates[0][2]

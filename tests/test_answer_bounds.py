"""Answers that Claude Code shows whole: no tool answers more than MAX_ANSWER_CHARS (the client moves a longer
result into a file and shows the model a 2 KB preview of its start), a cut log keeps its newest lines and its
fence, and list answers stay small as the fleet grows (128 real local hosts × 8 simulated GPUs)."""
from __future__ import annotations

import sys
import time

import pytest
from mcp import Client
from mcp.types import CallToolResult, TextContent

from mcp_server.core.paths import StatePaths
from mcp_server.core.service import Service
from mcp_server.fleet.hosts_config import load_hosts
from mcp_server.surfaces.tools import CLIENT_SHOWS_CHARS, MAX_ANSWER_CHARS, build_server
from tests.harness import local_host_entry, write_hosts_yaml
from tests.mcp_support import data, log_parts, metric_job, sleeper, started


pytestmark = pytest.mark.anyio

FLEET_HOSTS = 128
GPUS_PER_HOST = 8
SMALL_ANSWER_CHARS = 8_000          # ~2 k tokens: what a default list answer takes at any fleet size
LAST_LINE = "val_bpb: 0.987654 THE NEWEST LINE"


@pytest.fixture(scope="module")
def anyio_backend():
    return "asyncio"


def size(result: CallToolResult) -> int:
    """What Claude Code measures against its threshold: the answer's text blocks together."""
    return sum(len(b.text) for b in result.content if isinstance(b, TextContent))


def loud_job(lines: int, width: int) -> dict:
    """A command job that prints `lines` lines of `width` characters, then the line a reader needs most."""
    code = (f"import sys\nfor i in range({lines}):\n    sys.stdout.write(f'{{i:06d}} ' + 'x' * {width} + '\\n')\n"
            f"print({LAST_LINE!r})\n")
    return {"command": [sys.executable, "-c", code]}


# ---- a long log through the in-process MCP client ------------------------------------------------------------

@pytest.fixture(scope="module")
def small_service(tmp_path_factory):
    root = tmp_path_factory.mktemp("bounds")
    hosts = write_hosts_yaml(root / "hosts.yaml", [local_host_entry(
        root / "work", simulate_gpus=[{"model": "H100", "memory_gb": 80}] * 2, cpu_slots=2)])
    svc = started(Service(StatePaths.resolve(root / "state"), load_hosts(hosts)))
    yield svc
    svc.close()


@pytest.fixture
async def small_client(small_service):
    async with Client(build_server(small_service)) as c:
        yield c


async def finished(client, spec: dict) -> str:
    job_id = data(await client.call_tool("submit_jobs", {"jobs": [spec]}))["jobs"][0]["job_id"]
    done = data(await client.call_tool("wait_for_jobs", {"job_ids": [job_id], "timeout_s": 120}))
    assert [j["status"] for j in done["done"]] == ["succeeded"], done
    return job_id


async def test_a_long_tail_keeps_the_newest_lines_and_the_fence_and_says_what_gets_the_rest(small_client):
    job_id = await finished(small_client, loud_job(5000, 200))            # ~1 MB of output
    for lines in (2000, 400):
        result = await small_client.call_tool("tail_log", {"job_id": job_id, "lines": lines})
        header, fenced = log_parts(result)
        assert size(result) <= MAX_ANSWER_CHARS, (lines, size(result))
        body = fenced.splitlines()
        tag = body[-1].split()[0]
        assert body[-1] == f"{tag} END JOB OUTPUT>>>" and body[-2] == LAST_LINE
        assert body[-3].startswith("004999 ")                             # nothing newer was skipped
        assert header["truncated"] and "newest" in header["summary"] and "client shows it whole" in header["summary"]
        assert "offset=" in header["next"] and "grep=" in header["next"]

    # The offset it names reads the older output, itself bounded, and says how to read on.
    older = int(header["next"].split("offset=")[1].split(")")[0])
    result = await small_client.call_tool("tail_log", {"job_id": job_id, "offset": older})
    header2, fenced2 = log_parts(result)
    assert size(result) <= MAX_ANSWER_CHARS and header2["truncated"] and "more follows" in header2["summary"]
    assert f"offset={header2['next_offset']}" in header2["next"]
    assert fenced2.splitlines()[-1].endswith("END JOB OUTPUT>>>")

    # A grep's hits are held to the same bound, newest kept.
    result = await small_client.call_tool("tail_log", {"job_id": job_id, "grep": "x", "lines": 2000})
    header3, fenced3 = log_parts(result)
    assert size(result) <= MAX_ANSWER_CHARS and fenced3.splitlines()[-2].startswith("004999 ")
    assert "newest" in header3["summary"] and "offset=" in header3["next"]


async def test_a_log_that_fits_is_answered_whole_without_a_cut(small_client):
    job_id = await finished(small_client, loud_job(50, 20))
    header, fenced = log_parts(await small_client.call_tool("tail_log", {"job_id": job_id}))
    assert fenced.splitlines()[-2] == LAST_LINE and "newest" not in header["summary"]
    assert not header["truncated"] and "next" not in header


async def test_every_tool_declares_the_client_threshold(small_client):
    for tool in (await small_client.list_tools()).tools:
        assert tool.meta == {"anthropic/maxResultSizeChars": CLIENT_SHOWS_CHARS}, tool.name
    assert MAX_ANSWER_CHARS < CLIENT_SHOWS_CHARS


async def test_a_list_answer_past_the_bound_drops_rows_from_the_end_and_says_so(small_client):
    await finished(small_client, metric_job(1.0))
    # 500 rows of ~250 characters: within what the SQL layer returns (200 KB), far past one answer's bound.
    sql = "SELECT job_id, repeat('y', 250) AS wide FROM range(500) r, (SELECT job_id FROM jobs LIMIT 1)"
    result = await small_client.call_tool("query_results", {"sql": sql, "limit": 500})
    answer = data(result)
    assert size(result) <= MAX_ANSWER_CHARS
    assert 0 < len(answer["rows"]) < 500 and answer["row_count"] == 500
    assert f"rows {len(answer['rows'])} of 500" in answer["summary"] and "client shows whole" in answer["summary"]
    assert answer["next"].startswith("query_results with narrower arguments")


# ---- 128 hosts × 8 GPUs: every tool's default answer -----------------------------------------------------------

@pytest.fixture(scope="module")
def fleet_service(tmp_path_factory):
    """128 real `local` hosts, each with its own agent process and workdir (measured: ~40 s to connect on 2
    cores, ~2.5 GB for the agents)."""
    root = tmp_path_factory.mktemp("fleet128")
    entries = [local_host_entry(root / f"work{i:03d}", name=f"gpu-node-{i:03d}",
                                simulate_gpus=[{"model": "H100", "memory_gb": 80}] * GPUS_PER_HOST)
               for i in range(FLEET_HOSTS)]
    svc = Service(StatePaths.resolve(root / "state"), load_hosts(write_hosts_yaml(root / "hosts.yaml", entries)))
    svc.start()
    deadline = time.monotonic() + 300
    while True:
        fleet = svc.list_gpus()
        if not fleet.unreachable and sum(c.gpus for c in fleet.classes) == FLEET_HOSTS * GPUS_PER_HOST:
            break
        assert time.monotonic() < deadline, fleet.summary
        time.sleep(1.0)
    yield svc
    svc.close()


async def test_every_tool_answers_small_on_a_large_fleet(fleet_service):
    async with Client(build_server(fleet_service)) as c:
        names = {t.name for t in (await c.list_tools()).tools}
        sizes: dict[str, int] = {}          # each tool's first (default) answer
        largest = 0

        async def call(name: str, arguments: dict) -> CallToolResult:
            nonlocal largest
            result = await c.call_tool(name, arguments)
            sizes.setdefault(name, size(result))
            largest = max(largest, size(result))
            return result

        busy = data(await call("submit_jobs", {"jobs": [sleeper(300, time_limit_s=600)] * 12}))["jobs"]
        hyp = data(await call("append_hypothesis", {"text": "deeper is better"}))["hypothesis"]["hyp_id"]
        ids = [j["job_id"] for j in data(await c.call_tool("submit_jobs", {"jobs": [
            metric_job(1.0 + i / 100, name=f"run {i} " + "n" * 60, tags=["wave", f"t{i}"], hypothesis_id=hyp)
            for i in range(30)]}))["jobs"]]
        assert not data(await c.call_tool("wait_for_jobs", {"job_ids": ids, "mode": "all", "timeout_s": 240}))[
            "pending"]
        a, b = ids[:2]
        minimal = {
            "list_gpus": {}, "job_status": {"job_ids": [a]}, "list_jobs": {}, "tail_log": {"job_id": a},
            "wait_for_jobs": {"job_ids": [a]}, "query_results": {"sql": "SELECT * FROM jobs"},
            "describe_history": {}, "update_hypothesis": {"hyp_id": hyp, "verdict": "not yet"},
            "list_hypotheses": {}, "leaderboard": {}, "digest": {}, "plot_runs": {"job_ids": [a]},
            "research_status": {}, "suggest_configs": {}, "compare_runs": {"a": [a], "b": [b]},
            "measure_noise": {"gpu_class": "H100-SXM"}, "diff_jobs": {"a": a, "b": b}, "rerun_job": {"job_id": a},
            "cancel_jobs": {"job_ids": [busy[0]["job_id"]]},
            "keep_run": {"job_ids": [b], "against": [a], "reason": "one run a side"},
            "discard_run": {"job_ids": [b], "against": [a], "reason": "no better"},
            "confirm_runs": {"job_ids": [b]},
        }
        for name, arguments in minimal.items():
            await call(name, arguments)
        assert set(sizes) == names, names - set(sizes)        # a new tool is measured here too

        gpus = data(await call("list_gpus", {}))
        assert gpus["summary"].startswith(f"{FLEET_HOSTS} hosts, {FLEET_HOSTS * GPUS_PER_HOST} GPUs")
        assert gpus["classes"][0]["free"] < FLEET_HOSTS * GPUS_PER_HOST
        assert gpus["classes"][0]["next_frees_in_s"] > 0 and gpus["hosts_total"] == FLEET_HOSTS
        assert "offset=40" in gpus["summary"] and all("gpus" not in h for h in gpus["hosts"])
        detail = data(await call("list_gpus", {"detail": True, "offset": 120}))
        assert [h["name"] for h in detail["hosts"]] == [f"gpu-node-{i:03d}" for i in range(120, 125)]
        assert all(len(h["gpus"]) == GPUS_PER_HOST for h in detail["hosts"])
        free = data(await call("list_gpus", {"free_only": True, "detail": True, "limit": 200}))
        # 1,013 free GPUs itemised do not fit: hosts dropped from the end, and the page call for the rest.
        assert 0 < len(free["hosts"]) < FLEET_HOSTS and "cut to stay under" in free["summary"]
        assert all(g.get("job_id") is None for h in free["hosts"] for g in h["gpus"])
        assert free["next"] == f"list_gpus(free_only=True, detail=True, limit={len(free['hosts'])}, " \
                               f"offset={len(free['hosts'])})"

        assert largest <= MAX_ANSWER_CHARS
        defaults = ("list_gpus", "list_jobs", "job_status", "list_hypotheses", "leaderboard", "digest",
                    "wait_for_jobs", "describe_history", "research_status")
        assert {n: sizes[n] for n in defaults if sizes[n] > SMALL_ANSWER_CHARS} == {}, sizes

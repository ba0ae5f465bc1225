"""Every MCP tool in-process (`Client(server)`), against a real Service on this machine's `local` host with two
simulated GPUs: happy paths, refusals, the prompt and the resources. The stdio bridge is tests/test_mcp_stdio.py."""
from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import pytest
from mcp import Client

from mcp_server.core.paths import StatePaths
from mcp_server.core.service import Service
from mcp_server.fleet.hosts_config import load_hosts
from mcp_server.surfaces.cli.hints import COMMANDS
from mcp_server.surfaces.tools import build_server
from tests.harness import local_host_entry, write_hosts_yaml
from tests.mcp_support import data, error_text, image, log_parts, metric_job, sleeper, started


pytestmark = pytest.mark.anyio

EXPECTED_TOOLS = {
    "list_gpus": True, "submit_jobs": False, "job_status": True, "list_jobs": True, "cancel_jobs": False,
    "tail_log": True, "wait_for_jobs": True, "query_results": True, "describe_history": True,
    "append_hypothesis": False, "update_hypothesis": False, "list_hypotheses": True, "leaderboard": True,
    "digest": True, "plot_runs": True, "research_status": True, "suggest_configs": True, "compare_runs": True,
    "measure_noise": False, "diff_jobs": True, "rerun_job": False, "keep_run": False, "discard_run": False,
    "confirm_runs": False,
}


@pytest.fixture(scope="module")
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("tools")
    hosts = write_hosts_yaml(root / "hosts.yaml", [local_host_entry(
        root / "work", simulate_gpus=[{"model": "H100", "memory_gb": 80}] * 2, cpu_slots=2)])
    svc = started(Service(StatePaths.resolve(root / "state"), load_hosts(hosts)))
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def finished_job(service) -> str:
    """A job that has ended, for refusals that need an existing job."""
    result = service.submit_jobs([metric_job(3.0)], submitted_by="test")
    job_id = result.jobs[0].job_id
    assert service.wait_for_jobs([job_id], timeout_s=60).done
    return job_id


@pytest.fixture
async def client(service):
    async with Client(build_server(service)) as c:
        yield c


async def run_jobs(client, *specs) -> list[dict]:
    ids = [j["job_id"] for j in data(await client.call_tool("submit_jobs", {"jobs": list(specs)}))["jobs"]]
    done = data(await client.call_tool("wait_for_jobs", {"job_ids": ids, "mode": "all", "timeout_s": 60}))
    assert not done["pending"], done
    return sorted(done["done"], key=lambda j: int(j["job_id"][1:]))


async def test_tools_are_listed_with_annotations_and_short_descriptions(client):
    tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == set(EXPECTED_TOOLS)
    for name, read_only in EXPECTED_TOOLS.items():
        tool = tools[name]
        assert tool.annotations.read_only_hint is read_only, name
        assert 40 < len(tool.description) < 2048, name          # Claude Code cuts descriptions at 2 KB
    assert tools["cancel_jobs"].annotations.destructive_hint
    assert tools["leaderboard"].output_schema["properties"]["summary"]
    assert tools["tail_log"].output_schema is None                # the log is text content, not structured
    assert tools["diff_jobs"].output_schema is None               # so is a code diff
    assert "approve" not in tools                                 # lifting a checkpoint is the person's act
    assert set(COMMANDS) == set(tools)              # every tool's next-step hint reads as an arc command too
    for name, (_, options) in COMMANDS.items():
        assert set(options) <= set(tools[name].input_schema["properties"]), name


async def test_list_gpus_and_unknown_host(client):
    gpus = data(await client.call_tool("list_gpus", {}))
    (host,) = gpus["hosts"]
    assert host["reachable"] and len(host["gpus"]) == 2 and all("H100" in g["gpu_class"] for g in host["gpus"])
    assert gpus["summary"].startswith("1 hosts, 2 GPUs")
    assert "no host 'nope'" in error_text(await client.call_tool("list_gpus", {"host": "nope"}))


async def test_submit_wait_status_and_log_with_shell_metacharacters(client, tmp_path):
    hostile = "; rm -rf / $(id) `whoami` | cat /etc/passwd > x && echo pwned"
    gate = tmp_path / "gate"      # the job ends only once the wait has reported progress, so that report must come
    code = ("import os, sys, time\nprint(sys.argv[2:], flush=True)\n"
            "while not os.path.exists(sys.argv[1]): time.sleep(0.05)")
    spec = {"command": [sys.executable, "-c", code, str(gate), hostile, "'quoted'"],
            "tags": ["meta"], "name": "argv check"}
    progress: list[tuple] = []

    async def on_progress(done, total, message):
        progress.append((done, total, message))
        gate.touch()

    submitted = data(await client.call_tool("submit_jobs", {"jobs": [spec]}))
    job_id = submitted["jobs"][0]["job_id"]
    assert submitted["summary"].startswith(f"submitted 1 job(s) {job_id}") and "wait_for_jobs" in submitted["next"]
    waited = data(await client.call_tool("wait_for_jobs", {"job_ids": [job_id], "timeout_s": 60},
                                         progress_callback=on_progress))
    assert [j["status"] for j in waited["done"]] == ["succeeded"] and not waited["timed_out"]
    assert progress and progress[0][1] == 1

    header, fenced = log_parts(await client.call_tool("tail_log", {"job_id": job_id}))
    assert repr([hostile, "'quoted'"]) in fenced                 # the argv arrived as literal text, no shell
    assert header["job_id"] == job_id and header["next_offset"] > 0
    first, *_, last = fenced.splitlines()
    tag = last.split()[0]
    assert "untrusted" in first and f"<<<{tag} BEGIN JOB OUTPUT" in fenced and last == f"{tag} END JOB OUTPUT>>>"

    status = data(await client.call_tool("job_status", {"job_ids": [job_id]}))["jobs"][0]
    assert status["command"][-2:] == [hostile, "'quoted'"] and status["exit_code"] == 0

    grep = log_parts(await client.call_tool("tail_log", {"job_id": job_id, "grep": "pwned"}))[1]
    assert "pwned" in grep
    rest = log_parts(await client.call_tool("tail_log", {"job_id": job_id, "offset": header["next_offset"]}))
    assert rest[0]["offset"] == header["next_offset"]


async def test_wait_for_any_returns_when_the_first_job_ends(client):
    fast, slow = (j["job_id"] for j in data(await client.call_tool(
        "submit_jobs", {"jobs": [metric_job(1.0), sleeper(60)]}))["jobs"])
    waited = data(await client.call_tool("wait_for_jobs", {"job_ids": [fast, slow], "mode": "any"}))
    assert [j["job_id"] for j in waited["done"]] == [fast] and waited["pending"] == [slow]
    timed_out = data(await client.call_tool("wait_for_jobs", {"job_ids": [slow], "timeout_s": 0.5}))
    assert timed_out["timed_out"] and timed_out["pending"] == [slow]
    cancelled = data(await client.call_tool("cancel_jobs", {"job_ids": [slow, fast]}))
    assert cancelled["cancelled"] == [slow] and cancelled["already_ended"] == [fast]
    ended = data(await client.call_tool("wait_for_jobs", {"job_ids": [slow], "timeout_s": 30}))
    assert ended["done"][0]["status"] == "cancelled"


async def test_list_jobs_filters_and_pages(client):
    await run_jobs(client, metric_job(2.0, tags=["page"]), metric_job(2.1, tags=["page"]),
                   metric_job(2.2, tags=["page"]))
    first = data(await client.call_tool("list_jobs", {"tag": "page", "limit": 2}))
    assert first["total"] == 3 and len(first["jobs"]) == 2 and first["next"] == "list_jobs(tag='page', limit=2, offset=2)"
    second = data(await client.call_tool("list_jobs", {"tag": "page", "limit": 2, "offset": 2}))
    assert len(second["jobs"]) == 1 and "next" not in second
    assert data(await client.call_tool("list_jobs", {"status": ["succeeded"], "tag": "page"}))["total"] == 3


@pytest.mark.parametrize("tool,args,expect", [
    ("job_status", {"job_ids": ["j99999"]}, "no job j99999"),
    ("job_status", {"job_ids": ["../../etc/passwd"]}, "not a job id"),
    ("tail_log", {"job_id": "../j1"}, "not a job id"),
    ("tail_log", {"job_id": "JOB", "grep": "("}, "regular expression"),
    ("tail_log", {"job_id": "JOB", "lines": 0}, "lines"),
    ("cancel_jobs", {"job_ids": ["j1/../j2"]}, "not a job id"),
    ("wait_for_jobs", {"job_ids": ["j99999"]}, "no job j99999"),
    ("wait_for_jobs", {"job_ids": ["JOB"], "timeout_s": 99999}, "timeout_s"),
    ("wait_for_jobs", {"job_ids": ["JOB"], "mode": "some"}, "mode"),
    ("list_jobs", {"limit": 0}, "limit"),
    ("list_jobs", {"limit": 100000}, "limit"),
    ("list_jobs", {"offset": -1}, "offset"),
    ("list_jobs", {"status": ["sleeping"]}, "status"),
    ("query_results", {"sql": "SELEC 1"}, "syntax"),
    ("query_results", {"sql": "DELETE FROM jobs"}, "DELETE"),
    ("query_results", {"sql": "SELECT 1; DROP TABLE jobs"}, "one"),
    ("query_results", {"sql": "COPY jobs TO '/tmp/arc-leak.csv'"}, "COPY"),
    ("query_results", {"sql": "SELECT * FROM read_csv('/etc/passwd')"}, "file access"),
    ("query_results", {"sql": "SELECT 1", "limit": 0}, "limit"),
    ("submit_jobs", {"jobs": []}, "jobs"),
    ("submit_jobs", {"jobs": [{"config": {"depth": 2}, "command": ["true"]}]}, "either config"),
    ("submit_jobs", {"jobs": [{"command": []}]}, "non-empty argv"),
    ("submit_jobs", {"jobs": [{"config": "depth=10"}]}, "config"),
    ("submit_jobs", {"jobs": [{"command": ["true"], "requirements": {"gpus": 8}}]}, "can never run"),
    ("submit_jobs", {"jobs": [{"command": ["true"], "requirements": {"gpu_class": "H200"}}]}, "can never run"),
    ("submit_jobs", {"jobs": [{"command": ["true"], "hypothesis_id": "../h1"}]}, "hypothesis id"),
    ("submit_jobs", {"jobs": [{"command": ["true"], "env": {"BAD NAME": "x"}}]}, "env name"),
    ("submit_jobs", {"jobs": [{"command": ["true"], "sneaky": 1}]}, "sneaky"),
    ("update_hypothesis", {"hyp_id": "h9999", "status": "refuted", "verdict": "x"}, "unknown hypothesis"),
    ("update_hypothesis", {"hyp_id": "h1", "status": "proven"}, "status"),
    ("append_hypothesis", {"text": " "}, "empty"),
    ("list_hypotheses", {"limit": 1000}, "limit"),
    ("leaderboard", {"top": 0}, "top"),
    ("digest", {"since": "last tuesday"}, "since"),
    ("plot_runs", {"job_ids": ["j99999"]}, "no job j99999"),
    ("plot_runs", {"kind": "curves"}, "needs job_ids"),
    ("describe_history", {"table": "passwords"}, "no table or view 'passwords'"),
])
async def test_bad_input_is_refused_with_a_reason(client, finished_job, tool, args, expect):
    args = json.loads(json.dumps(args).replace('"JOB"', json.dumps(finished_job)))
    message = error_text(await client.call_tool(tool, args))
    assert expect.lower() in message.lower(), message
    assert "errors.pydantic.dev" not in message and len(message) > 25, message


async def test_sql_cannot_write_or_read_files(client, tmp_path):
    target = tmp_path / "leak.csv"
    for sql in (f"COPY (SELECT * FROM jobs) TO '{target}'", f"SELECT * FROM read_text('{Path(__file__)}')",
                f"ATTACH '{tmp_path / 'other.duckdb'}' AS other"):
        assert error_text(await client.call_tool("query_results", {"sql": sql}))
    assert not target.exists() and not (tmp_path / "other.duckdb").exists()
    ok = data(await client.call_tool("query_results", {"sql": "SELECT count(*) AS n FROM jobs", "limit": 1}))
    assert ok["columns"] == ["n"] and ok["row_count"] == 1


async def test_hypotheses_leaderboard_digest_and_plots(client):
    baseline, = await run_jobs(client, metric_job(1.00, tags=["baseline", "lb"]))
    h = data(await client.call_tool("append_hypothesis", {"text": "lower is reachable", "rationale": "test"}))
    hyp_id = h["hypothesis"]["hyp_id"]
    assert h["next"].startswith("submit_jobs with hypothesis_id")
    better, worse = await run_jobs(client, metric_job(0.90, hypothesis_id=hyp_id, tags=["lb"]),
                                   metric_job(1.10, hypothesis_id=hyp_id, tags=["lb"]))
    judged = data(await client.call_tool("update_hypothesis", {
        "hyp_id": hyp_id, "status": "inconclusive", "verdict": "H100: 0.90 vs 1.00", "effect_size": -0.1}))
    assert judged["hypothesis"]["jobs"] == [better["job_id"], worse["job_id"]]
    listed = data(await client.call_tool("list_hypotheses", {"status": "inconclusive"}))
    assert hyp_id in [x["hyp_id"] for x in listed["hypotheses"]]

    board = data(await client.call_tool("leaderboard", {"top": 50}))
    (h100,) = [c for c in board["classes"] if "H100" in c["gpu_class"]]
    ranked = [r["job_id"] for r in h100["best"]]
    assert ranked.index(better["job_id"]) < ranked.index(baseline["job_id"]) < ranked.index(worse["job_id"])
    assert any(r["job_id"] == better["job_id"] and r["vs_baseline"] < 0 for r in h100["best"])

    digest = data(await client.call_tool("digest", {"since": "10m"}))
    assert digest["succeeded"] >= 3 and any(hyp_id in line for line in digest["hypotheses"])

    curves = await client.call_tool("plot_runs", {"job_ids": [baseline["job_id"], better["job_id"]]})
    png = base64.b64decode(image(curves).data)
    assert png.startswith(b"\x89PNG") and image(curves).mime_type == "image/png"
    assert base64.b64decode(image(await client.call_tool("plot_runs", {"kind": "best"})).data).startswith(b"\x89PNG")


async def test_describe_history_prompt_and_resources(client):
    schema = data(await client.call_tool("describe_history", {}))
    names = {r["name"] for r in schema["relations"]}
    assert {"jobs", "metrics", "hypotheses", "runs"} <= names and schema["examples"]
    for example in schema["examples"]:        # every example runs as written
        data(await client.call_tool("query_results", {"sql": example["sql"], "limit": 5}))
    assert schema["relations"][0]["columns"] and all(":" not in t for r in schema["relations"]
                                                     for t in r["columns"].values())       # types only
    one = data(await client.call_tool("describe_history", {"table": "metrics"}))
    assert [r["name"] for r in one["relations"]] == ["metrics"]
    assert one["relations"][0]["columns"]["step"].startswith("BIGINT: ")                # with meanings

    prompts = (await client.list_prompts()).prompts
    assert [p.name for p in prompts] == ["autoresearch"]
    text = (await client.get_prompt("autoresearch", {"goal": "beat 0.99"})).messages[0].content.text
    assert "beat 0.99" in text and "val_bpb" in text and "Baseline first" in text and "{" not in text

    uris = {str(r.uri) for r in (await client.list_resources()).resources}
    assert uris == {"arc://fleet", "arc://history/schema"}
    fleet = json.loads((await client.read_resource("arc://fleet")).contents[0].text)
    assert fleet["hosts"][0]["name"] == "local"
    history = json.loads((await client.read_resource("arc://history/schema")).contents[0].text)
    assert "jobs" in {r["name"] for r in history["relations"]}


async def test_a_crash_inside_a_tool_names_the_exception_and_the_server_keeps_serving(tmp_path, caplog):
    """The SDK would answer only 'Error executing tool X'; the agent needs the cause and what to do next."""
    hosts = write_hosts_yaml(tmp_path / "hosts.yaml", [local_host_entry(tmp_path / "work", cpu_slots=1)])
    svc = Service(StatePaths.resolve(tmp_path / "state"), load_hosts(hosts))
    try:
        async with Client(build_server(svc)) as c:
            svc.history.close()                     # every history read now raises RuntimeError
            text = error_text(await c.call_tool("list_hypotheses", {}))
            assert "list_hypotheses failed unexpectedly (RuntimeError: history" in text, text
            assert "is closed" in text and "retry once" in text and "daemon log" in text
            assert "tool list_hypotheses crashed" in caplog.text and "Traceback" in caplog.text
            assert {t.name for t in (await c.list_tools()).tools} == set(EXPECTED_TOOLS)
    finally:
        svc.close()

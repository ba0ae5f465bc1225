"""The campaign's memory over real MCP (in-process `Client(server)`) against a real Service on this machine's `local`
host with two simulated GPU classes: the incumbent per class, keep/discard as recorded decisions, submissions built
on the incumbent, the lineage (leaderboard, research_status, the chart), verdicts that hold to the data, confounds,
and screen-then-confirm across classes. The campaign runs the real trainer on the CPU; rules that need no trainer
semantics use command jobs that print metrics."""
from __future__ import annotations

import sys
from pathlib import Path

import duckdb
import pytest
from mcp import Client
from mcp.types import TextContent
from rich.console import Console

from mcp_server.core.paths import StatePaths
from mcp_server.core.service import Service
from mcp_server.fleet.hosts_config import load_hosts
from mcp_server.history import History
from mcp_server.history.schema import MIGRATIONS
from mcp_server.research import parse_research
from mcp_server.surfaces.demo import prepare_data
from mcp_server.surfaces.tools import build_server
from tests.harness import local_host_entry, write_hosts_yaml
from tests.mcp_support import data, error_text, image, metric_job, started


pytestmark = pytest.mark.anyio

TINY_DATA = ["--max-bytes", "100000", "--vocab-size", "300", "--val-fraction", "0.2"]
H100, H200 = {"model": "H100", "memory_gb": 80}, {"model": "H200", "memory_gb": 141}
# A throughput off by 3x is flagged: the trainer's own runs on this shared 2-core machine stay well inside that.
RULES = {"noise": {"seeds": 2, "runs_per_side": 2, "throughput_share": 2.0}}


@pytest.fixture(scope="module")
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("memory")
    hosts = write_hosts_yaml(root / "hosts.yaml", [local_host_entry(root / "work", simulate_gpus=[H100, H200],
                                                                    cpu_slots=2)])
    paths = StatePaths.resolve(root / "state").ensure()
    prepare_data(paths, Console(quiet=True), TINY_DATA)
    svc = started(Service(paths, load_hosts(hosts), research=parse_research(RULES)))
    yield svc
    svc.close()


@pytest.fixture
async def client(service):
    async with Client(build_server(service)) as c:
        yield c


async def run(client, *specs, tool: str = "submit_jobs", **args) -> list[str]:
    """Submit (or confirm_runs) and wait for every job; their ids."""
    answer = data(await client.call_tool(tool, args if args else {"jobs": list(specs)}))
    ids = [j["job_id"] for j in answer["jobs"]]
    done = data(await client.call_tool("wait_for_jobs", {"job_ids": ids, "mode": "all", "timeout_s": 300}))
    assert not done["pending"], done
    return ids


def plot_summary(result) -> str:
    return next(b.text for b in result.content if isinstance(b, TextContent))


def on(cls: str) -> dict:
    return {"requirements": {"gpu_class": cls}}


def quick(value: float, tokens_m: float | None = None, **extra) -> dict:
    """A command job printing a val_bpb (and, with tokens_m, a throughput: tokens_m M tokens in 1 s)."""
    job = metric_job(value, **{"time_limit_s": 60, "requirements": {"cpu_only": True}, **extra})
    if tokens_m is not None:
        job["command"][-1] += f"print('total_tokens_M: {tokens_m}')\n"
    return job


async def cmd_pair(client, a: tuple[float, float], b: tuple[float, float], **extra) -> tuple[list[str], list[str]]:
    return (await run(client, quick(a[0], **extra), quick(a[1], **extra)),
            await run(client, quick(b[0], **extra), quick(b[1], **extra)))


# ---- the scripted campaign: two classes, real trainer runs --------------------------------------------------

def trainer(seed: int, **extra) -> dict:
    return {"seed": seed, "time_limit_s": 300, **extra}


# Nine real training runs: on a loaded 2-core machine they take minutes, more than the suite's default limit.
@pytest.mark.timeout(1800)
async def test_campaign_keeps_discards_confirms_and_a_fresh_session_resumes_from_research_status(service, client):
    h100 = data(await client.call_tool("list_gpus", {}))["hosts"][0]["gpus"][0]["gpu_class"]
    h200 = data(await client.call_tool("list_gpus", {}))["hosts"][0]["gpus"][1]["gpu_class"]
    assert h100 != h200

    # The baseline: two seeds on the screening class.
    base = await run(client, *[trainer(s, config={"max_steps": 2}, preset="cpu-tiny", tags=["baseline"], **on(h100))
                               for s in (0, 1)])
    status = data(await client.call_tool("research_status", {}))
    (inc,) = status["incumbents"]
    assert inc["job_ids"] == base and inc["why"] == "baseline" and inc["config"] == {"max_steps": 2,
                                                                                    "preset": "cpu-tiny"}

    # A change built on the incumbent: the agent states only what it changes.
    hyp = data(await client.call_tool("append_hypothesis", {"text": "more steps lower val_bpb"}))["hypothesis"]
    longer = await run(client, *[trainer(s, base="incumbent", config={"max_steps": 8}, hypothesis_id=hyp["hyp_id"],
                                         **on(h100)) for s in (0, 1)])
    detail = data(await client.call_tool("job_status", {"job_ids": longer}))["jobs"][0]
    assert detail["config"] == {"max_steps": 8, "preset": "cpu-tiny"} and f"on:{base[0]}" in detail["tags"]

    kept = data(await client.call_tool("keep_run", {"job_ids": longer, "reason": "8 steps beat 2"}))
    assert kept["summary"].startswith("keep recorded (d1) on " + h100) and kept["incumbent"]["job_ids"] == longer
    assert kept["decision"]["against"] == base and kept["decision"]["decided_by"] == "agent"
    assert kept["decision"]["hypothesis_id"] == hyp["hyp_id"] and "Welch, 2 vs 2 runs" in kept["decision"]["comparison"]

    # A second change on top of the new incumbent, one seed: it inherits max_steps=8; it is discarded.
    worse = await run(client, trainer(0, base="incumbent", config={"matrix_lr": 0.0005}, **on(h100)))
    detail = data(await client.call_tool("job_status", {"job_ids": worse}))["jobs"][0]
    assert detail["config"] == {"max_steps": 8, "matrix_lr": 0.0005, "preset": "cpu-tiny"}
    refused = error_text(await client.call_tool("keep_run", {"job_ids": worse, "reason": "try"}))
    assert "keep refused, nothing recorded:" in refused and f"The incumbent stays {', '.join(longer)}" \
        in refused
    dropped = data(await client.call_tool("discard_run", {"job_ids": worse, "reason": "a tiny lr stalls"}))
    assert dropped["decision"]["kind"] == "discard" and dropped["incumbent"]["job_ids"] == longer

    # Screen on H100, confirm on H200: the kept change and what it replaced, as one paired batch.
    confirm = data(await client.call_tool("confirm_runs", {"job_ids": [longer[0]], "gpu_class": h200}))
    assert set(confirm["linked"]) == {base[0], longer[0]} and all(len(v) == 2 for v in confirm["linked"].values())
    ids = [j for v in confirm["linked"].values() for j in v]
    done = data(await client.call_tool("wait_for_jobs", {"job_ids": ids, "mode": "all", "timeout_s": 300}))
    assert not done["pending"]
    on_h200 = data(await client.call_tool("job_status", {"job_ids": ids}))["jobs"]
    assert {j["gpu_class"] for j in on_h200} == {h200} and all("confirm" in j["tags"] for j in on_h200)
    data(await client.call_tool("keep_run", {"job_ids": confirm["linked"][longer[0]],
                                             "against": confirm["linked"][base[0]],
                                             "reason": "confirmed on the faster class"}))

    # A fresh session, knowing nothing, reads the incumbents and the lineage from research_status alone.
    async with Client(build_server(service)) as fresh:
        status = data(await fresh.call_tool("research_status", {}))
    by_class = {i["gpu_class"]: i for i in status["incumbents"]}
    assert by_class[h100]["job_ids"] == longer and by_class[h100]["why"] == "8 steps beat 2"
    assert by_class[h100]["config"] == {"max_steps": 8, "preset": "cpu-tiny"}
    assert by_class[h200]["job_ids"] == confirm["linked"][longer[0]]
    lines = {line.split(":")[0]: line for line in status["lineage"]}
    assert lines[h100].startswith(f"{h100}: {'+'.join(base)} ") and f"-> {'+'.join(longer)} " in lines[h100]
    assert any(line.startswith(f"discard {'+'.join(worse)} on {h100}") for line in status["last_decisions"])
    assert f"; incumbents: {h100}: {'+'.join(longer)}" in status["summary"]

    board = data(await client.call_tool("leaderboard", {"gpu_class": h100}))
    (steps,) = [c["lineage"] for c in board["classes"]]
    assert [s["job_ids"] for s in steps] == [base, longer] and steps[1]["gain"] < 0
    assert "significant" in steps[1]["significance"] and "1 kept change(s)" in board["summary"]

    digest = data(await client.call_tool("digest", {"since": "1h"}))
    assert any(line.startswith(f"{h100}: {'+'.join(longer)}") for line in digest["incumbents"])
    assert any(line.startswith("discard ") for line in digest["decisions"])

    chart = await client.call_tool("plot_runs", {"kind": "lineage"})
    assert image(chart).mime_type == "image/png"
    assert plot_summary(chart).startswith("lineage: ") and f"{h100}: 5 runs, 1 kept, 0 failed" in plot_summary(chart)


# ---- verdicts that hold to the data ---------------------------------------------------------------------------

async def test_supported_is_refused_for_a_run_worse_than_its_baseline(client):
    a, b = await cmd_pair(client, (1.000, 1.010), (1.580, 1.590))
    hyp = data(await client.call_tool("append_hypothesis", {"text": "b improves on a"}))["hypothesis"]["hyp_id"]
    answer = data(await client.call_tool("update_hypothesis", {"hyp_id": hyp, "status": "supported",
                                                               "verdict": "b helps", "compare": {"a": a, "b": b}}))
    assert answer["hypothesis"]["status"] == "inconclusive"
    assert answer["summary"].startswith(f"{hyp} inconclusive (supported refused: b is not better within the noise")
    assert "b is worse by 0.58" in answer["summary"]
    # Without a comparison a verdict cannot claim anything.
    assert "needs compare=" in error_text(await client.call_tool("update_hypothesis", {
        "hyp_id": hyp, "status": "supported", "verdict": "trust me"}))


async def test_a_verdict_needs_the_runs_per_side_and_says_how_to_settle_it(client):
    a, b = await run(client, quick(1.0)), await run(client, quick(0.5))
    hyp = data(await client.call_tool("append_hypothesis", {"text": "b halves it"}))["hypothesis"]["hyp_id"]
    answer = data(await client.call_tool("update_hypothesis", {"hyp_id": hyp, "status": "supported",
                                                               "compare": {"a": a, "b": b}}))
    assert answer["hypothesis"]["status"] == "inconclusive"
    assert "too few runs: a has 1 and b has 1 of the 2 per side research.yaml asks for" in answer["summary"]
    assert "rerun_job with seeds for 1 more run(s)" in answer["summary"]


async def test_refuted_needs_an_effect_against_or_runs_that_could_have_seen_it(client):
    a, b = await cmd_pair(client, (1.000, 1.020), (1.005, 1.025))
    hyp = data(await client.call_tool("append_hypothesis", {"text": "b is much better"}))["hypothesis"]["hyp_id"]
    within = data(await client.call_tool("update_hypothesis", {"hyp_id": hyp, "status": "refuted",
                                                               "compare": {"a": a, "b": b}}))
    assert within["hypothesis"]["status"] == "inconclusive" and "refuted refused: not worse beyond the noise" \
        in within["summary"] and "more seed(s) per side (rerun_job with seeds)" in within["summary"]
    # The runs could detect a 0.5 effect and saw none: that refutes a claimed 0.5 gain.
    powered = data(await client.call_tool("update_hypothesis", {"hyp_id": hyp, "status": "refuted",
                                                                "expected_effect": 0.5, "compare": {"a": a, "b": b}}))
    assert powered["hypothesis"]["status"] == "refuted"
    worse_a, worse_b = await cmd_pair(client, (1.000, 1.010), (1.300, 1.310))
    clear = data(await client.call_tool("update_hypothesis", {"hyp_id": hyp, "status": "refuted",
                                                              "compare": {"a": worse_a, "b": worse_b}}))
    assert clear["hypothesis"]["status"] == "refuted"


async def test_a_summary_shortens_the_claim_never_the_caveat(client):
    a, b = await cmd_pair(client, (1.000, 1.010), (1.580, 1.590))
    hyp = data(await client.call_tool("append_hypothesis", {"text": "long claim"}))["hypothesis"]["hyp_id"]
    claim = "this change is wonderful " * 40
    answer = data(await client.call_tool("update_hypothesis", {"hyp_id": hyp, "status": "abandoned",
                                                               "verdict": claim, "compare": {"a": a, "b": b}}))
    caveat = data(await client.call_tool("compare_runs", {"a": a, "b": b}))["summary"]
    assert answer["summary"].endswith(caveat) and len(answer["summary"]) < len(claim)
    digest = data(await client.call_tool("digest", {"since": "1h"}))
    assert any(line.startswith(f"{hyp} abandoned: …") and line.endswith(caveat) for line in digest["hypotheses"])


async def test_keep_holds_to_the_same_rule_and_loses_nothing(client, service):
    cls = "cpu"
    before = len(service.history.decisions())
    # No incumbent on the CPU class yet: its first succeeded run is the baseline.
    base = await run(client, quick(1.00, tags=["baseline"]), quick(1.00, tags=["baseline"]))
    near = await run(client, quick(0.999), quick(1.012))
    refused = error_text(await client.call_tool("keep_run", {"job_ids": near, "reason": "looks better"}))
    assert "keep refused, nothing recorded: b is not better within the noise (not significant" in refused
    assert len(service.history.decisions()) == before
    status = data(await client.call_tool("research_status", {}))
    # The baseline's twins (the same command, run earlier) belong to it as its seeds.
    assert set(base) <= set({i["gpu_class"]: i["job_ids"] for i in status["incumbents"]}[cls])


# ---- confounds ------------------------------------------------------------------------------------------------

async def test_another_time_budget_is_never_compared_silently(client):
    a = await run(client, quick(1.00, time_budget_s=30), quick(1.01, time_budget_s=30))
    b = await run(client, quick(0.50, time_budget_s=60), quick(0.51, time_budget_s=60))
    c = data(await client.call_tool("compare_runs", {"a": a, "b": b}))
    assert c["confounds"] == ["time budget differs (30.0 vs 60.0)"] and "; CONFOUNDED: time budget differs" in \
        c["summary"]
    refused = error_text(await client.call_tool("keep_run", {"job_ids": b, "against": a, "reason": "faster"}))
    assert "confounded: time budget differs (30.0 vs 60.0)" in refused


async def test_a_throughput_outlier_is_flagged_in_comparisons_leaderboard_and_digest(client):
    usual = await run(client, *[quick(2.0 + i / 100, tokens_m=10.0, tags=["speed"]) for i in range(3)])
    slow = await run(client, quick(2.5, tokens_m=1.0, tags=["speed"]))
    c = data(await client.call_tool("compare_runs", {"a": usual[:2], "b": slow}))
    assert c["confounds"] == [f"throughput outlier(s): {slow[0]} ran at 10% of cpu's median throughput"]
    board = data(await client.call_tool("leaderboard", {"gpu_class": "cpu", "top": 50}))
    assert any(line.startswith(f"{slow[0]} ran at 10%") for line in board["classes"][0]["confounded"])
    entry = next(e for e in board["classes"][0]["best"] if e["job_id"] == slow[0])
    assert "CONFOUNDED" in entry["significance"]
    health = data(await client.call_tool("digest", {"since": "1h"}))["health"]
    assert any(line.startswith(f"throughput outlier {slow[0]}") for line in health)


# ---- the lineage chart and base='incumbent' refusals -----------------------------------------------------------

async def test_the_lineage_chart_marks_failures(client):
    await run(client, {"command": [sys.executable, "-c", "raise SystemExit(3)"], "time_limit_s": 60,
                       "requirements": {"cpu_only": True}})
    chart = await client.call_tool("plot_runs", {"kind": "lineage", "gpu_class": "cpu"})
    assert image(chart).data and "1 failed" in plot_summary(chart)


async def test_base_incumbent_needs_a_class_that_has_one(client):
    refused = error_text(await client.call_tool("submit_jobs", {"jobs": [{"base": "incumbent",
                                                                          "config": {"max_steps": 2}}]}))
    assert "base='incumbent' needs the job's GPU class" in refused
    refused = error_text(await client.call_tool("submit_jobs", {"jobs": [
        {"base": "incumbent", "command": ["true"], "requirements": {"cpu_only": True}}]}))
    assert "base='incumbent' builds on a trainer config" in refused


# ---- an old history file ------------------------------------------------------------------------------------

def test_an_old_history_is_migrated_without_losing_a_hypothesis(tmp_path: Path):
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL, "
                "description VARCHAR)")
    for m in MIGRATIONS[:4]:
        m.apply(con)
        con.execute("INSERT INTO schema_version VALUES (?, now(), ?)", [m.version, m.description])
    # What a v4 file holds: a CHECK without 'inconclusive', which DuckDB cannot alter in place.
    con.execute("CREATE TABLE hypotheses_old_check AS SELECT * FROM hypotheses")
    con.execute("DROP TABLE hypotheses")
    con.execute("""CREATE TABLE hypotheses (hyp_id VARCHAR PRIMARY KEY, num BIGINT NOT NULL UNIQUE,
        created_at TIMESTAMPTZ NOT NULL, updated_at TIMESTAMPTZ NOT NULL, text VARCHAR NOT NULL, rationale VARCHAR,
        status VARCHAR NOT NULL CHECK (status IN ('open', 'supported', 'refuted', 'abandoned')), verdict VARCHAR,
        effect_size DOUBLE, jobs VARCHAR[] NOT NULL, tags VARCHAR[], created_by VARCHAR)""")
    con.execute("DROP TABLE hypotheses_old_check")
    con.execute("INSERT INTO hypotheses VALUES ('h1', 1, now(), now(), 'kept text', 'why', 'supported', "
                "'H100: -0.01', -0.01, [], ['t'], 'agent')")
    con.close()
    with History(path) as history:
        old = history.get_hypothesis("h1")
        assert (old["text"], old["status"], old["verdict"], old["tags"]) == ("kept text", "supported", "H100: -0.01",
                                                                             ["t"])
        assert history.update_hypothesis("h1", status="inconclusive")["status"] == "inconclusive"
        assert history.cursor().execute("SELECT count(*) FROM hypothesis_jobs").fetchone() == (0,)
        assert history.decisions() == []

"""The research layer as a person drives it: a real `arc daemon` (local host, two simulated GPUs) and the `arc`
command. A checkpoint holds dispatch until `arc approve` (RPC over the owner-only socket; no MCP tool exists for it),
the note reaches the agent's answers, budgets are accounted from the jobs' GPU-seconds, and every research tool has
its command (noise, rerun, compare, diff, suggest, verdicts with a comparison)."""
from __future__ import annotations

import getpass
from pathlib import Path

import pytest
from rich.console import Console

from mcp_server.surfaces.demo import prepare_data
from tests.daemon_support import Arc, metric_job, wait_for


TINY_DATA = ["--max-bytes", "100000", "--vocab-size", "300", "--val-fraction", "0.2"]
SPACE = """
search_space:
  matrix_lr: {type: float, min: 0.005, max: 0.12, log: true}
  warmdown_ratio: {type: float, min: 0.1, max: 0.9}
baseline: {matrix_lr: 0.04, warmdown_ratio: 0.5}
budgets: {gpu_hours: 2}
noise: {seeds: 2}
"""


def campaign(tmp_path: Path, hosts_yaml: Path, rules: str) -> Arc:
    (hosts_yaml.parent / "research.yaml").write_text(rules)      # the daemon reads the one beside the hosts file
    arc = Arc(tmp_path / "state", hosts_yaml)
    prepare_data(arc.paths.ensure(), Console(quiet=True), TINY_DATA)
    arc.start()
    return arc


def test_a_checkpoint_holds_dispatch_until_arc_approve(tmp_path, local_hosts_yaml):
    arc = campaign(tmp_path, local_hosts_yaml, SPACE + "checkpoint: {every_experiments: 3}\n")
    try:
        ids = arc.submit([metric_job(tag) for tag in range(4)])
        assert all(d["status"] == "succeeded" for d in arc.wait(ids[:3]).values())
        # the round that looked at the fourth job with three experiments done records the hold; it must wait
        wait_for(lambda: arc.sql("SELECT count(*) FROM events WHERE kind = 'paused'") == [[1]], 60, "the hold")
        assert arc.jobs([ids[3]])[ids[3]]["status"] == "queued"
        status = arc.cli_json("research", "status")
        assert status["paused"] == "paused for review: 3 experiments since the campaign started (checkpoint every 3)"
        assert status["resume"] == "a person runs `arc approve --note '...'` to go on"
        shown = arc.cli("research", "status").stdout
        assert shown.startswith("PAUSED (paused for review") and "arc approve --note" in shown

        approved = arc.cli("approve", "--note", "fine so far; try deeper models next").stdout
        assert "fine so far; try deeper models next" in approved and "PAUSED" not in approved
        assert arc.wait([ids[3]])[ids[3]]["status"] == "succeeded"
        status = arc.cli_json("research", "status")
        assert status["last_approval_note"] == "fine so far; try deeper models next"
        assert status["last_approval_by"] == getpass.getuser() and status.get("paused") is None
        assert status["experiments_since_checkpoint"] == 1 and status["checkpoint_every"] == 3
        assert "last approval note: 'fine so far; try deeper models next'" in arc.cli_json("digest")["guardrails"]
        events = [r[0] for r in arc.sql("SELECT kind FROM events WHERE kind IN ('paused', 'approved', 'resumed') "
                                        "ORDER BY event_id")]
        assert events == ["paused", "approved", "resumed"]

        # Budgets are accounted from the GPU-seconds the finished jobs used, nothing else.
        (total, jobs), = arc.sql("SELECT sum(gpu_seconds), count(*) FILTER (gpu_seconds > 0) FROM jobs")
        assert jobs == 4 and status["gpu_hours_used"] == round(total / 3600, 3)
        assert status["gpu_hours_left"] == round(2 - total / 3600, 3) and status["gpu_hours_committed"] == 0
        # The agent's side has no way to approve: the daemon's MCP tools do not include it.
        assert "approve" in arc.cli("--help").stdout
    finally:
        arc.stop()


def test_a_person_edits_research_yaml_or_hosts_yaml_and_applies_it(tmp_path, local_hosts_yaml):
    rules = local_hosts_yaml.parent / "research.yaml"
    arc = campaign(tmp_path, local_hosts_yaml, SPACE + "max_gpus: 1\n")
    try:
        two_gpus = ("submit", "--gpus", "2", "--time-limit", "60", "--", "sleep", "0.1")
        refused = arc.cli(*two_gpus, check=False)
        assert refused.returncode != 0 and "asks 2 GPUs but research.yaml max_gpus is 1" in refused.stderr

        rules.write_text(SPACE + "max_gpus: [2\n")                     # a slip while editing
        broken = arc.cli("research", "reload", check=False)
        assert broken.returncode != 0 and "YAML syntax error" in broken.stderr
        assert "the rules in force are unchanged" in broken.stderr
        rules.write_text(SPACE + "max_gpus: 2\nmetric: {name: loss, direction: minimize}\n")
        renamed = arc.cli("research", "reload", check=False)
        assert renamed.returncode != 0 and "metric changed from val_bpb (minimize) to loss" in renamed.stderr
        status = arc.cli_json("research", "status")
        assert status["max_gpus"] == 1
        assert f"{rules.resolve()} has changed since it was loaded: a person runs `arc research reload`" \
            in status["summary"]

        rules.write_text(SPACE + "max_gpus: 2\n")
        reloaded = arc.cli_json("research", "reload")
        assert reloaded["max_gpus"] == 2 and reloaded["summary"].startswith(f"rules reloaded from {rules.resolve()}; ")
        job = arc.cli_json(*two_gpus)["jobs"][0]["job_id"]
        assert arc.wait([job])[job]["status"] == "succeeded"
        reloads = arc.sql("SELECT reason FROM events WHERE kind = 'research_reloaded'")
        assert reloads == [[f"rules reloaded from {rules.resolve()}"]], reloads
        assert "has changed" not in arc.cli_json("research", "status")["summary"]

        assert "has changed" not in arc.cli_json("gpus")["summary"]
        local_hosts_yaml.write_text(local_hosts_yaml.read_text() + "# a host will go here\n")
        assert f"{local_hosts_yaml.resolve()} has changed since the daemon started: a person runs " \
               "`arc daemon restart`" in arc.cli_json("gpus")["summary"]
        arc.cli("daemon", "restart")
        assert "has changed" not in arc.cli_json("gpus")["summary"]
    finally:
        arc.stop()


def test_every_research_tool_is_a_command(tmp_path, local_hosts_yaml):
    arc = campaign(tmp_path, local_hosts_yaml, SPACE)
    try:
        noise = arc.cli_json("noise", "--preset", "cpu-tiny", "--set", "max_steps=4")
        assert noise["summary"].startswith("noise floor: submitted 2 job(s)")
        seeds = [j["job_id"] for j in noise["jobs"]]
        first = arc.wait(seeds)
        rerun = [j["job_id"] for j in arc.cli_json("rerun", seeds[0])["jobs"]]
        again = arc.wait(rerun)
        assert again[rerun[0]]["metric"] == first[seeds[0]]["metric"]      # the exact run again
        assert first[seeds[0]]["metric"] != first[seeds[1]]["metric"]

        compared = arc.cli_json("compare", "--a", *seeds, "--b", *rerun)    # a seed against both: within noise
        assert compared["summary"].startswith("within noise (") and "2 vs 1 runs on H100-SXM" in compared["summary"]
        diff = arc.cli_json("diff", seeds[0], seeds[1])
        assert diff["settings"] == ["seed: 0 -> 1"] and diff["code_same"] is True
        suggested = arc.cli_json("suggest", "-n", "3", "--preset", "cpu-tiny", "--set", "max_steps=4")
        assert len(suggested["configs"]) == 3 and suggested["based_on"] == 3 and suggested["preset"] == "cpu-tiny"
        assert all(c["max_steps"] == 4 and 0.005 <= c["matrix_lr"] <= 0.12 for c in suggested["configs"])

        hyp = arc.cli_json("hypotheses", "add", "seed 0 beats the baseline's two seeds")["hypothesis"]["hyp_id"]
        judged = arc.cli_json("hypotheses", "update", hyp, "--status", "refuted", "--a", *seeds, "--b", *rerun)
        # Within noise refutes nothing: recorded inconclusive, the comparison first in the verdict.
        assert judged["hypothesis"]["verdict"].startswith(compared["summary"] + "; refuted refused: ")
        assert judged["hypothesis"]["status"] == "inconclusive"
        board = arc.cli("leaderboard").stdout
        assert "significance" in board and "baseline" in board

        arc.stop()       # the history file itself, with research.yaml's settings, when no daemon runs
        assert arc.cli_json("compare", "--a", *seeds, "--b", *rerun)["summary"] == compared["summary"]
        assert arc.cli_json("diff", seeds[1], rerun[0])["settings"] == ["seed: 1 -> 0"]
    finally:
        arc.stop()


@pytest.mark.parametrize("args,expect", [
    (["compare", "--a", "j1"], "the following arguments are required: --b"),
    (["hypotheses", "update", "h1", "--a", "j1"], "--a and --b go together"),
    (["rerun", "j1", "--seeds"], "expected at least one argument"),
])
def test_research_commands_refuse_bad_input_before_any_call(tmp_path, local_hosts_yaml, args, expect):
    arc = Arc(tmp_path / "state", local_hosts_yaml)
    proc = arc.cli(*args, check=False)
    assert proc.returncode != 0 and expect in proc.stderr, proc.stderr
    assert not arc.client.running()

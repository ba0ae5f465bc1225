"""`arc demo` end to end: data, daemon, the real MCP client over stdio, a campaign of real CPU training runs;
then the same history through the `arc` commands a person uses (human parity with the tools)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mcp_server.daemon_client import DaemonClient
from mcp_server.paths import StatePaths
from tests.harness import local_host_entry, write_hosts_yaml

REPO = Path(__file__).resolve().parent.parent


def test_demo_runs_a_campaign_and_leaves_it_in_the_history(tmp_path):
    arc = shutil.which("arc")
    if arc is None:
        pytest.fail("the `arc` command is not on PATH: install the project first (pip install -e .)")
    hosts = write_hosts_yaml(tmp_path / "hosts.yaml", [local_host_entry(tmp_path / "work")])
    shutil.copy(REPO / "research.yaml", tmp_path / "research.yaml")     # the campaign keeps to the repo's rules
    state = tmp_path / "demo-state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARC_")} | {"COLUMNS": "160"}
    daemon = DaemonClient(StatePaths.resolve(state))

    def arc_json(*args: str) -> dict:
        result = subprocess.run([arc, "--state-dir", str(state), "--hosts", str(hosts), "--json", *args],
                                capture_output=True, text=True, timeout=120, env=env)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    try:
        proc = subprocess.run([arc, "--state-dir", str(state), "--hosts", str(hosts), "demo", "--steps", "12"],
                              capture_output=True, text=True, timeout=600, env=env)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-5000:]
        for png in ("curves.png", "best.png"):
            assert (state / png).read_bytes().startswith(b"\x89PNG"), png
            assert str(state / png) in out.replace("\n", "")
        assert "Verdicts" in out and "BEGIN JOB OUTPUT" in out and "tool calls" in out
        assert not daemon.running()                      # the demo stops the daemon it started

        (ok, with_metric), = arc_json("sql", "SELECT count(*) FILTER (status = 'succeeded'), count(val_bpb) "
                                             "FROM runs")["rows"]
        assert ok == with_metric == 7                    # baseline at two seeds, four variations, a follow-up
        statuses = [r[0] for r in arc_json("sql", "SELECT status FROM hypotheses ORDER BY num")["rows"]]
        assert len(statuses) == 5 and "open" not in statuses   # each written before its runs, judged after
        (baseline,), = arc_json("sql", "SELECT count(*) FROM jobs WHERE list_contains(tags, 'baseline')")["rows"]
        assert baseline == 2

        # The person's side of the same history, with no daemon running (read straight from the file) ...
        board = arc_json("leaderboard")
        assert board["classes"][0]["runs"] == 7 and board["classes"][0]["best"][0]["vs_baseline"] <= 0
        assert arc_json("digest", "--since", "1h")["succeeded"] == 7
        assert len(arc_json("hypotheses", "list")["hypotheses"]) == 5
        assert "runs" in [r["name"] for r in arc_json("schema")["relations"]]
        plotted = arc_json("plot", "--kind", "best", "-o", str(tmp_path / "best.png"))
        assert plotted["path"] and (tmp_path / "best.png").read_bytes().startswith(b"\x89PNG")
        # ... and writes, which go through the daemon.
        added = arc_json("hypotheses", "add", "a person's note: try a longer run")["hypothesis"]
        judged = arc_json("hypotheses", "update", added["hyp_id"], "--status", "abandoned")
        assert judged["hypothesis"]["status"] == "abandoned"
    finally:
        daemon.stop()

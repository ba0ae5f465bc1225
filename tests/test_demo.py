"""`arc demo` end to end: data, daemon, the real MCP client over stdio, a campaign of real CPU training runs."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from mcp_server.daemon_client import DaemonClient
from mcp_server.paths import StatePaths
from tests.harness import local_host_entry, write_hosts_yaml


def test_demo_runs_a_campaign_and_leaves_it_in_the_history(tmp_path):
    arc = shutil.which("arc")
    if arc is None:
        pytest.fail("the `arc` command is not on PATH: install the project first (pip install -e .)")
    hosts = write_hosts_yaml(tmp_path / "hosts.yaml", [local_host_entry(tmp_path / "work")])
    state = tmp_path / "demo-state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARC_")} | {"COLUMNS": "160"}
    try:
        proc = subprocess.run([arc, "--state-dir", str(state), "--hosts", str(hosts), "demo", "--budget", "4"],
                              capture_output=True, text=True, timeout=600, env=env)
    finally:
        DaemonClient(StatePaths.resolve(state)).stop()
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    for png in ("curves.png", "best.png"):
        assert (state / png).read_bytes().startswith(b"\x89PNG"), png
        assert str(state / png) in out.replace("\n", "")
    assert "Verdicts" in out and "BEGIN JOB OUTPUT" in out and "tool calls" in out

    def sql(query: str) -> list[list]:
        result = subprocess.run([arc, "--state-dir", str(state), "--json", "sql", query], capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)["rows"]

    (ok, with_metric), = sql("SELECT count(*) FILTER (status = 'succeeded'), count(val_bpb) FROM runs")
    assert ok >= 6 and with_metric >= 6                  # baseline, four variations, the follow-up
    statuses = [r[0] for r in sql("SELECT status FROM hypotheses ORDER BY num")]
    assert len(statuses) == 5 and "open" not in statuses  # every hypothesis written before and judged after
    (baseline,), = sql("SELECT count(*) FROM jobs WHERE list_contains(tags, 'baseline')")
    assert baseline == 1
    assert not DaemonClient(StatePaths.resolve(state)).running()   # the demo stops the daemon it started


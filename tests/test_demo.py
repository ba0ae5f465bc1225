"""`arc demo` end to end: data, daemon, the real MCP client over stdio, a campaign of real CPU training runs that
reaches a checkpoint (approved with `arc approve`), a suggestion wave and significance statements; then the same
history through the `arc` commands a person uses (human parity with the tools)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from mcp_server.core.paths import StatePaths
from mcp_server.daemon.client import DaemonClient
from mcp_server.history import History
from mcp_server.surfaces.demo import MARKER, RULES_FILE, DemoError, fresh_campaign
from tests.harness import local_host_entry, write_hosts_yaml


def test_demo_runs_a_campaign_and_leaves_it_in_the_history(tmp_path):
    arc = shutil.which("arc")
    if arc is None:
        pytest.fail("the `arc` command is not on PATH: install the project first (pip install -e .)")
    hosts = write_hosts_yaml(tmp_path / "hosts.yaml", [local_host_entry(tmp_path / "work")])
    state = tmp_path / "demo-state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARC_")} | {"COLUMNS": "160"}
    daemon = DaemonClient(StatePaths.resolve(state))

    def arc_json(*args: str) -> dict:
        result = subprocess.run([arc, "--state-dir", str(state), "--hosts", str(hosts), "--json", *args],
                                capture_output=True, text=True, timeout=120, env=env)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    try:
        # As a person who installed arc runs it: from an empty folder, no fleet file (the demo's is this machine).
        empty = tmp_path / "empty"
        empty.mkdir()
        # At the demo's own 40 steps: at fewer the seed noise hides even its kept change's gain (see demo.IDEAS).
        proc = subprocess.run([arc, "--state-dir", str(state), "demo"], cwd=empty,
                              capture_output=True, text=True, timeout=1500, env=env)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-5000:]
        for png in ("curves.png", "best.png", "lineage.png"):
            assert (state / png).read_bytes().startswith(b"\x89PNG"), png
            assert str(state / png) in out.replace("\n", "")
        flat = " ".join(out.split())                     # rich wraps long lines
        assert "Verdicts" in out and "BEGIN JOB OUTPUT" in out and "tool calls" in out
        # The checkpoint: the researcher sees PAUSED, the person approves on the command line, the note comes back.
        assert "Checkpoint: the campaign waits for a person" in out
        assert "research_status → PAUSED (paused for review: 8 experiments since the campaign started" in flat
        assert "person $ arc approve --note" in flat and "the person's note reaches the researcher" in flat
        # The suggestion wave and the significance statements.
        assert "suggest_configs → 3 TPE suggestion(s) inside the search space, learned from 7 finished" in flat
        assert "Welch, 3 vs 3 runs on cpu" in flat and "vs 1 runs on cpu" in flat and " noise (" in flat
        # The memory: one run against three seeds is inconclusive; the confirmed change is kept, the worst
        # discarded, and the lineage comes back from research_status.
        assert "inconclusive (supported refused: too few runs" in flat or \
            "inconclusive (refuted refused: too few runs" in flat
        assert "keep_run → keep recorded" in flat and "discard_run → discard recorded" in flat and \
            "plot_runs → lineage: cpu: " in flat
        # The person's view: the report written beside the state dir, and the dashboard's link (show_dashboard).
        report = (state / "campaign.html").read_text()
        assert report.startswith("<!doctype html>") and "arc campaign report" in report
        assert all(h in report for h in ("leaderboard", "hypotheses", "approvals", "Checked the first"))
        assert str(state / "campaign.html") in flat and "dashboard http://127.0.0.1:" in flat
        assert not daemon.running()                      # the demo stops the daemon it started
        assert not list(empty.iterdir())                 # it wrote nothing into the folder it ran from

        (ok, with_metric), = arc_json("sql", "SELECT count(*) FILTER (status = 'succeeded'), count(val_bpb) "
                                             "FROM runs")["rows"]
        assert ok == with_metric == 12     # baseline at three seeds, four variations, three suggestions, two reruns
        statuses = [r[0] for r in arc_json("sql", "SELECT status FROM hypotheses ORDER BY num")["rows"]]
        assert len(statuses) == 6 and "open" not in statuses   # each written before its runs, judged after
        verdicts = [r[0] for r in arc_json("sql", "SELECT verdict FROM hypotheses ORDER BY num")["rows"]]
        assert all(" runs on cpu" in v for v in verdicts)      # each states class, runs per side, significance
        (baseline,), = arc_json("sql", "SELECT count(*) FROM jobs WHERE list_contains(tags, 'noise')")["rows"]
        assert baseline == 3
        # Issue 16's demo: a keep (the confirmed change, the class's new incumbent), a discard, an inconclusive
        # verdict and the lineage chart.
        kinds = [r[0] for r in arc_json("sql", "SELECT kind FROM decisions ORDER BY decision_id")["rows"]]
        assert kinds == ["keep", "discard"], kinds
        assert "inconclusive" in statuses
        (approvals,) = arc_json("sql", "SELECT count(*) FROM approvals WHERE note LIKE 'Checked the first%'")["rows"]
        assert approvals == [1]

        # The person's side of the same history, with no daemon running (read straight from the file) ...
        board = arc_json("leaderboard")
        assert board["classes"][0]["runs"] == 12 and board["classes"][0]["best"][0]["vs_baseline"] <= 0
        assert board["classes"][0]["baseline_runs"] == 3
        digest = arc_json("digest", "--since", "1h")
        assert digest["succeeded"] == 12 and digest["significance"][0].startswith("cpu: best ")
        assert len(arc_json("hypotheses", "list")["hypotheses"]) == 6
        assert "runs" in [r["name"] for r in arc_json("schema")["relations"]]
        plotted = arc_json("plot", "--kind", "best", "-o", str(tmp_path / "best.png"))
        assert plotted["path"] and (tmp_path / "best.png").read_bytes().startswith(b"\x89PNG")
        # ... and writes, which go through the daemon.
        added = arc_json("hypotheses", "add", "a person's note: try a longer run")["hypothesis"]
        judged = arc_json("hypotheses", "update", added["hyp_id"], "--status", "abandoned")
        assert judged["hypothesis"]["status"] == "abandoned"
    finally:
        daemon.stop()


def test_each_demo_starts_a_fresh_history_and_never_empties_a_foreign_state_dir(tmp_path):
    demo = StatePaths.resolve(tmp_path / "demo").ensure()
    History(demo.history).close()
    (demo.root / MARKER).write_text("made by arc demo\n")
    (demo.data_dir / "kept").mkdir(parents=True)
    fresh_campaign(demo)
    assert not list(demo.root.glob("history*.duckdb*")) and (demo.data_dir / "kept").is_dir()
    assert "every_experiments: 8" in (demo.root / RULES_FILE).read_text()

    other = StatePaths.resolve(tmp_path / "campaign").ensure()
    History(other.history).close()
    with pytest.raises(DemoError, match="holds a history the demo did not make"):
        fresh_campaign(other)
    assert other.history.exists() and not (other.root / MARKER).exists()

"""`arc report -o campaign.html`: the campaign in one self-contained HTML file (uPlot, the chart code and the data
inlined), which opens from disk with no server and no network. Tables are rendered here with every value escaped;
the chart reads its data from a JSON block whose `<` are escaped so that no value can end the script early."""
from __future__ import annotations

import json
from html import escape
from typing import Any

from .app import STATIC, _finite


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return escape(f"{value:.6g}")
    if isinstance(value, (dict, list)):
        return escape(json.dumps(value, default=str))
    return escape(str(value))


def _table(head: list[str], rows: list[list[Any]], id_: str) -> str:
    return (f"<table id='{id_}'><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in r) + "</tr>" for r in rows) + "</table>")


def render(data: dict[str, Any]) -> str:
    s = data.get("status") or {}
    budgets = _table(["", "used", "budget", "left"], [
        ["GPU-hours", s.get("gpu_hours_used"), s.get("gpu_hours_budget"), s.get("gpu_hours_left")],
        ["money", s.get("money_used"), s.get("money_budget"), s.get("money_left")],
        ["experiments since the last approval", s.get("experiments_since_checkpoint"), s.get("checkpoint_every"),
         None]], "budgets") if s else "<p>no guardrails recorded</p>"
    board = _table(["class", "rank", "job", data["metric"], "vs baseline", "changes", "significance"],
                   [[b["gpu_class"], r["rank"], r["job_id"], r["metric"], r["vs_baseline"], r["changes"],
                     r.get("significance")] for b in data["leaderboard"]["classes"] for r in b["best"]],
                   "leaderboard")
    lineage = _table(["class", "step", "runs", data["metric"], "gain over the step before", "significance", "since",
                      "why"],
                     [[b["gpu_class"], i, " ".join(step["job_ids"]), step["metric"], step.get("gain"),
                       step.get("significance"), step.get("since"), step.get("why")]
                      for b in data["leaderboard"]["classes"] for i, step in enumerate(b.get("lineage") or [])],
                     "lineage")
    hyps = _table(["id", "status", "hypothesis", "verdict", "effect size", "runs"],
                  [[h["hyp_id"], h["status"], h["text"], h["verdict"], h["effect_size"], " ".join(h["jobs"])]
                   for h in data["hypotheses"]], "hypotheses")
    approvals = _table(["when", "by", "note", "experiments", "pause it ended"],
                       [[a["t"], a["by"], a["note"], a["experiments"], a["paused_reason"]] for a in data["approvals"]],
                       "approvals")
    counts = ", ".join(f"{n} {s}" for s, n in data["statuses"].items()) or "no jobs"
    chart_data = json.dumps(_finite({k: data[k] for k in ("metric", "direction", "points")}), allow_nan=False)
    chart_data = chart_data.replace("<", "\\u003c")
    health = "".join(f"<li>{escape(h)}</li>" for h in data["health"]) or "<li>no warnings</li>"
    paused = f"<p class='banner'>paused: {escape(s['paused'])}</p>" if s.get("paused") else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>arc campaign report</title>
<style>{(STATIC / "uPlot.min.css").read_text()}
{(STATIC / "dashboard.css").read_text()}</style></head>
<body><header><b>arc</b> campaign report</header><main>
<p id="summary">{len(data["points"])} ended run(s) of {escape(data["metric"])} ({counts}).
{escape("; ".join(data["significance"]))}</p>{paused}
<div id="chart"></div>
<div class="cols"><div><h3>Budgets</h3>{budgets}</div><div><h3>Search health</h3><ul>{health}</ul></div></div>
<h3>Leaderboard</h3>{board}
<h3>Lineage: the baseline and each kept change</h3>{lineage}
<h3>Hypotheses</h3>{hyps}
<h3>Approvals</h3>{approvals}
</main>
<script type="application/json" id="campaign-data">{chart_data}</script>
<script>{(STATIC / "uPlot.iife.min.js").read_text()}</script>
<script>{(STATIC / "charts.js").read_text()}</script>
<script>window.arcChart = arcCampaignChart(document.getElementById("chart"),
  JSON.parse(document.getElementById("campaign-data").textContent));</script>
</body></html>
"""

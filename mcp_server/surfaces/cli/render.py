"""How `arc` shows an operation's result to a person: a rich table or text per result model, the result's summary,
and its next step as an arc command line; `--json` prints the result as the agent would read it. A result model
without a renderer of its own shows its summary and next step."""
from __future__ import annotations

import json
import sys
from typing import Any, Callable

from .hints import as_command_line

def console():
    from rich.console import Console

    return Console(highlight=False)


def emit(args, data: dict[str, Any], render) -> None:
    if args.json:
        print(json.dumps(data, indent=None, default=str))
    else:
        render(console(), data)


def table(title: str | None, columns: list[str], rows: list[list[Any]]):
    from rich.table import Table

    t = Table(title=title, title_justify="left", show_edge=False, header_style="bold")
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*["" if v is None else str(v) for v in r])
    return t


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6f}" if abs(v) < 100 else f"{v:.1f}"
    return "" if v is None else str(v)


def render_summary(console, data: dict) -> None:
    console.print(data.get("summary", ""))
    render_next(console, data)


def render_next(console, data: dict) -> None:
    if data.get("next"):
        console.print(f"next: {as_command_line(data['next'])}", style="dim", markup=False, highlight=False)


def frees(seconds: float | None) -> str:
    return f"next frees in {seconds:.0f}s" if seconds is not None else ""


def render_gpus(console, data: dict) -> None:
    """Per GPU class, then the page of hosts: GPU by GPU when the answer itemises them, else one line a host."""
    if len(data.get("classes") or []) > 1 or not any(h.get("gpus") is not None for h in data["hosts"]):
        console.print(table(None, ["class", "GPUs", "free", "hosts", ""],
                            [[c["gpu_class"], c["gpus"], c["free"], c["hosts"], frees(c.get("next_frees_in_s"))]
                             for c in data.get("classes") or []]))
    rows = []
    for h in data["hosts"]:
        if h.get("waiting"):
            rows.append([h["name"], "-", "waiting", "", "", "", h["waiting"]])
            continue
        if not h["reachable"]:
            rows.append([h["name"], "-", "unreachable", "", "", "", h.get("error", "")])
            continue
        if h.get("gpus") is None:
            rows.append([h["name"], h.get("n_gpus", 0), h.get("gpu_class") or "", "", "",
                         f"{h.get('free', 0)} free", frees(h.get("next_frees_in_s"))])
        for g in h.get("gpus") or []:
            mem = f"{fmt(g.get('memory_used_gb'))}/{g['memory_total_gb']} GB"
            rows.append([h["name"], g["index"], g["gpu_class"] + (" (sim)" if g.get("simulated") else ""), mem,
                         fmt(g.get("util_pct")), g.get("job_id") or "free", frees(g.get("frees_in_s"))])
        if h.get("cpu_slots"):
            rows.append([h["name"], "cpu", f"{h['cpu_slots']} slots", "", "", f"{h['cpu_slots_used']} used", ""])
    console.print(table(None, ["host", "gpu", "class", "memory", "util %", "job", ""], rows))
    render_summary(console, data)


def render_jobs(console, data: dict) -> None:
    rows = [[j["job_id"], j["status"], j.get("host"), j.get("gpu_class"), fmt(j.get("metric")),
             j.get("name") or "", (j.get("reason") or "")[:60]] for j in data["jobs"]]
    console.print(table(None, ["job", "status", "host", "class", "metric", "name", "reason"], rows))
    render_summary(console, data)


def render_job_details(console, data: dict) -> None:
    for j in data["jobs"]:
        ended = "".join(f" {k}={j[k]}" for k in ("exit_code", "signal") if j.get(k) is not None)
        console.print(f"[bold]{j['job_id']}[/bold] {j['status']}  host={j.get('host')} class={j.get('gpu_class')}"
                      f"{ended}")
        for key in ("name", "config", "command", "code_hash", "seed", "reason", "summary_metrics", "last_metrics"):
            if j.get(key) not in (None, [], {}):
                console.print(f"  {key}: {j[key]}")
    render_summary(console, data)


def render_sql(console, data: dict) -> None:
    """A table when it fits the terminal; else one record per row, a line per column (`SELECT *` is 40 wide)."""
    rows = [[fmt(v) for v in r] for r in data["rows"]]
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(data["columns"])]
    if sum(widths) + 3 * max(len(widths) - 1, 0) <= console.width:
        console.print(table(None, data["columns"], rows))
    else:
        name_width = max(map(len, data["columns"]), default=0)
        for n, r in enumerate(rows, 1):
            console.print(f"-[ row {n} ]" + "-" * max(0, min(console.width, 40) - 10 - len(str(n))), style="dim")
            for column, value in zip(data["columns"], r):
                console.print(f"{column:<{name_width}} | {value}", markup=False)
    render_summary(console, data)


def render_submit(console, data: dict) -> None:
    for j in data["jobs"]:
        where = f"on {j['host']} ({j['gpu_class']})" if j.get("host") else f"queue position {j.get('queue_position')}"
        console.print(f"{j['job_id']} {j['status']} {where}")
    render_summary(console, data)


def render_hypotheses(console, data: dict) -> None:
    rows = [[h["hyp_id"], h["status"], h["text"][:70], h.get("verdict") or "", fmt(h.get("effect_size")),
             " ".join(h.get("jobs") or [])] for h in data["hypotheses"]]
    console.print(table(None, ["id", "status", "hypothesis", "verdict", "effect", "jobs"], rows))
    render_summary(console, data)


def render_hypothesis(console, data: dict) -> None:
    render_hypotheses(console, {**data, "hypotheses": [data["hypothesis"]]})


def render_leaderboard(console, data: dict) -> None:
    for c in data["classes"]:
        rows = [[r["rank"], r["job_id"], fmt(r["metric"]), f"{r['vs_baseline']:+.6f}",
                 json.dumps(r["changes"]) if r["changes"] else "", "yes" if r["code_changed"] else "",
                 r.get("significance") or ""] for r in c["best"]]
        console.print(table(f"{c['gpu_class']}: baseline {c['baseline_job']} {fmt(c['baseline_metric'])} "
                             f"({c.get('baseline_runs', 1)} run(s)), {c['runs']} runs",
                             ["rank", "job", data["metric"], "vs baseline", "changes", "code", "significance"],
                             rows))
        render_lineage(console, c.get("lineage") or [], data["metric"])
        for line in c.get("confounded") or []:
            console.print(f"  throughput outlier: {line}", markup=False)
    render_summary(console, data)


def render_lineage(console, steps: list[dict], metric: str) -> None:
    rows = [[i, "+".join(s["job_ids"]), fmt(s["metric"]), "" if s.get("gain") is None else f"{s['gain']:+.6f}",
             s.get("significance") or "", s["why"]] for i, s in enumerate(steps)]
    if len(rows) > 1:
        console.print(table("lineage", ["#", "runs", metric, "gain", "significance", "why"], rows))


def render_digest(console, data: dict) -> None:
    render_summary(console, data)
    for key in ("incumbents", "decisions", "new_bests", "failures", "hypotheses", "significance", "health"):
        for line in data.get(key) or []:
            console.print(f"  {key.replace('_', ' ')}: {line}", markup=False)
    if data.get("guardrails"):
        console.print(f"  guardrails: {data['guardrails']}", markup=False)
    console.print(f"[dim]until {data['until']}[/dim]")


def render_schema(console, data: dict) -> None:
    for r in data["relations"]:
        console.print(f"[bold]{r['name']}[/bold] ({r['kind']}): {r['doc']}")
        for column, doc in r["columns"].items():
            console.print(f"  {column}  [dim]{doc}[/dim]")
    for e in data["examples"]:
        console.print(f"[bold]-- {e['title']}[/bold]\n{e['sql']}")
    render_summary(console, data)


def render_guard(console, data: dict) -> None:
    console.print(data["summary"], markup=False)
    rows = [["GPU-hours", f"{data['gpu_hours_used']:.3f} used, {data['gpu_hours_committed']:.3f} committed"
             + (f", {data['gpu_hours_left']:.3f} left of {data['gpu_hours_budget']:g}"
                if data.get("gpu_hours_budget") is not None else "")]]
    if data.get("money_budget") is not None:
        rows.append(["money", f"{data['money_used']:.2f} used, {data['money_left']:.2f} left of "
                              f"{data['money_budget']:g}"])
    rows.append(["checkpoint", f"{data['experiments_since_checkpoint']} experiments"
                 + (f" of {data['checkpoint_every']}" if data.get("checkpoint_every") else "")
                 + f", {data['hours_since_checkpoint']:.2f} h"
                 + (f" of {data['checkpoint_every_hours']:g}" if data.get("checkpoint_every_hours") else "")
                 + " since the last approval"])
    rows.append(["GPUs", f"{data['gpus_in_use']} in use" + (f" of {data['max_gpus']}" if data.get("max_gpus")
                                                            else "")])
    if data.get("last_approval_at"):
        rows.append(["last approval", f"{data['last_approval_at']} by {data.get('last_approval_by') or '?'}: "
                                      f"{data.get('last_approval_note') or '(no note)'}"])
    if data.get("paused"):
        rows.append(["PAUSED", f"{data['paused']}; {data['resume']}"])
    grid = table(None, ["", ""], rows)
    grid.show_header = False
    console.print(grid)


def render_research_status(console, data: dict) -> None:
    render_guard(console, data)
    rows = [[i["gpu_class"], "+".join(i["job_ids"]), fmt(i["metric"]), i.get("since") or "", i["why"],
             json.dumps(i.get("config") or {})] for i in data.get("incumbents") or []]
    if rows:
        console.print(table("incumbents", ["class", "runs", "metric", "since", "why", "config"], rows))
    for key in ("lineage", "open_hypotheses", "last_decisions"):
        for line in data.get(key) or []:
            console.print(f"  {key.replace('_', ' ')}: {line}", markup=False)


def render_decision(console, data: dict) -> None:
    d, i = data["decision"], data["incumbent"]
    console.print(f"d{d['decision_id']} {d['kind']} {'+'.join(d['job_ids'])} vs {'+'.join(d['against'])} on "
                  f"{d['gpu_class']} by {d.get('decided_by') or '?'}: {d['reason']}", markup=False)
    console.print(f"  incumbent now {'+'.join(i['job_ids'])} {fmt(i['metric'])}", markup=False)
    render_summary(console, data)


def render_suggestions(console, data: dict) -> None:
    keys = sorted({k for c in data["configs"] for k in c})
    console.print(table(None, ["#", *keys], [[i + 1, *(fmt(c.get(k)) for k in keys)]
                                             for i, c in enumerate(data["configs"])]))
    render_summary(console, data)


def render_comparison(console, data: dict) -> None:
    console.print(data["summary"], markup=False)
    rows = [["a", data.get("gpu_class_a"), data["n_a"], fmt(data["mean_a"])],
            ["b", data.get("gpu_class_b"), data["n_b"], fmt(data["mean_b"])]]
    console.print(table(None, ["side", "class", "runs", "mean"], rows))
    render_next(console, data)


def render_diff(console, data: dict) -> None:
    console.print(data["summary"], markup=False)
    for line in data["settings"] + data["files"]:
        console.print(f"  {line}", markup=False)
    if data.get("diff"):
        sys.stdout.write("\n" + data["diff"])


Renderer = Callable[[Any, dict], None]
# By result model name: the operations' declarations say which model each returns.
RENDERERS: dict[str, Renderer] = {
    "GpuList": render_gpus, "JobList": render_jobs, "JobDetails": render_job_details, "SqlResult": render_sql,
    "SubmitResult": render_submit, "HypothesisList": render_hypotheses, "HypothesisResult": render_hypothesis,
    "Leaderboard": render_leaderboard, "Digest": render_digest, "HistorySchema": render_schema,
    "GuardStatus": render_guard, "Suggestions": render_suggestions, "Comparison": render_comparison,
    "JobDiff": render_diff, "ResearchStatus": render_research_status, "DecisionResult": render_decision,
    "ConfirmResult": render_submit,
}


def renderer(result_model: type) -> Renderer:
    return RENDERERS.get(result_model.__name__, render_summary)

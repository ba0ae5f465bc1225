"""The campaign's memory: the incumbent (current best) per GPU class and the lineage of kept changes.

autoresearch keeps its state in a git branch: each experiment starts from the current best, and a change is kept
(commit) or discarded (reset). Here that state lives in the history, so a session that was compacted, or a new one,
reads it back instead of rebuilding it from SQL: a class's incumbent is its last `keep` decision's runs, or, before
any keep, its baseline (the earliest succeeded run tagged `baseline`, else its first succeeded run) with the
baseline's seed twins. Results never cross classes, so neither do incumbents.
"""
from __future__ import annotations

import json
from statistics import fmean
from typing import TYPE_CHECKING, Any

from ..core.gpu_classes import CPU_CLASS
from ..core.models import Decision, Incumbent, LineageStep, iso
from ..core.vocabulary import DecisionKind, JobStatus
from ..history.values import from_json


if TYPE_CHECKING:     # for annotations only: importing the history loads DuckDB
    from ..history import History


BASELINE_TAG = "baseline"


def ok_runs_sql(extra: str = "") -> str:
    """Succeeded jobs with a finite primary metric (bound as the first parameter), with their comparison class."""
    return f"""
        SELECT job_id, job_num, coalesce(gpu_class, '{CPU_CLASS}') AS cls, primary_value AS v, config, code_hash,
               CASE WHEN kind = 'command' THEN argv END AS argv, seed, hypothesis_id,
               coalesce(list_contains(tags, '{BASELINE_TAG}'), false) AS is_baseline, ended_at, time_budget_s
        FROM jobs WHERE status = '{JobStatus.SUCCEEDED}' AND primary_metric = ? AND primary_value IS NOT NULL
          AND isfinite(primary_value) {extra}"""


def _baseline(history: History, metric: str, cls: str) -> Incumbent | None:
    rows = history.cursor().execute(f"""
        SELECT job_id, v, config, code_hash, argv, ended_at, time_budget_s
        FROM ({ok_runs_sql("AND coalesce(gpu_class, 'cpu') = ?")})
        ORDER BY is_baseline DESC, job_num""", [metric, cls]).fetchall()
    if not rows:
        return None
    job_id, _, config, code_hash, argv, ended_at, budget = rows[0]
    key = (json.dumps(from_json(config) or {}, sort_keys=True), code_hash, json.dumps(list(argv or [])), budget)
    twins = [r for r in rows if (json.dumps(from_json(r[2]) or {}, sort_keys=True), r[3],
                                 json.dumps(list(r[4] or [])), r[6]) == key]
    return Incumbent(gpu_class=cls, job_ids=[r[0] for r in twins], metric=fmean(r[1] for r in twins),
                     config=from_json(config) or {}, code_hash=code_hash, time_budget_s=budget, since=iso(ended_at),
                     why="baseline")


def _kept(history: History, decision: dict[str, Any]) -> Incumbent:
    jobs = history.get_jobs(decision["job_ids"])
    first = jobs[0]
    return Incumbent(gpu_class=decision["gpu_class"], job_ids=list(decision["job_ids"]),
                     metric=fmean(j["primary_value"] for j in jobs), config=dict(first.get("config") or {}),
                     code_hash=first.get("code_hash"), time_budget_s=first.get("time_budget_s"),
                     since=iso(decision["t"]), why=decision["reason"], decision_id=decision["decision_id"])


def classes(history: History, metric: str) -> list[str]:
    rows = history.cursor().execute(f"SELECT DISTINCT cls FROM ({ok_runs_sql()}) UNION "
                                    "SELECT DISTINCT gpu_class FROM decisions ORDER BY 1", [metric]).fetchall()
    return [r[0] for r in rows]


def incumbent(history: History, metric: str, cls: str) -> Incumbent | None:
    """The class's current best, or None before its first succeeded run."""
    keeps = history.decisions(gpu_class=cls, kind=DecisionKind.KEEP, limit=1)
    return _kept(history, keeps[-1]) if keeps else _baseline(history, metric, cls)


def incumbents(history: History, metric: str) -> list[Incumbent]:
    return [i for i in (incumbent(history, metric, c) for c in classes(history, metric)) if i is not None]


def lineage(history: History, metric: str, cls: str) -> list[LineageStep]:
    """The baseline, then every kept change in order, each with its gain against its predecessor."""
    base = _baseline(history, metric, cls)
    steps = [] if base is None else [LineageStep(job_ids=base.job_ids, metric=base.metric, since=base.since,
                                                 why="baseline")]
    for d in history.decisions(gpu_class=cls, kind=DecisionKind.KEEP):
        kept = _kept(history, d)
        gain = kept.metric - steps[-1].metric if steps else None
        steps.append(LineageStep(job_ids=kept.job_ids, metric=kept.metric, gain=gain, significance=d["comparison"],
                                 since=kept.since, why=d["reason"]))
    return steps


def lineage_line(cls: str, steps: list[LineageStep]) -> str:
    """'cpu: j1+j2 2.9 -> j5+j6 2.7 (-0.2) -> ...': the chain in one line, the newest links kept if it is long."""
    links = [f"{'+'.join(s.job_ids[:3])} {s.metric:.5g}" + (f" ({s.gain:+.3g})" if s.gain is not None else "")
             for s in steps]
    return f"{cls}: " + " -> ".join(links if len(links) <= 6 else [links[0], "…", *links[-4:]])


def incumbent_line(inc: Incumbent, metric: str) -> str:
    """'cpu: j7+j8 val_bpb 2.61 since 2026-...: kept because ...' — the reason last, where a cut may fall."""
    return (f"{inc.gpu_class}: {'+'.join(inc.job_ids[:4])} {metric} {inc.metric:.6g} since {inc.since} "
            f"({inc.why[:120]})")


def decision_view(row: dict[str, Any]) -> Decision:
    return Decision(**{**row, "t": iso(row["t"]), "job_ids": list(row["job_ids"]), "against": list(row["against"])})


def decision_line(row: dict[str, Any]) -> str:
    """The decision, then its comparison in full, then the reason (shortened if need be: never the caveat)."""
    return (f"{row['kind']} {'+'.join(row['job_ids'][:4])} on {row['gpu_class']} vs {'+'.join(row['against'][:4])}: "
            f"{row['comparison']}; why: {row['reason'][:100]}")

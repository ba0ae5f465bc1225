"""What the dashboard and the report show, read through the service's operations; the few views no operation
gives (every run as a chart point, the approvals timeline, a job's loss curve) read the history directly."""
from __future__ import annotations

from typing import Any

from ...core.errors import ArcError
from ...core.gpu_classes import CPU_CLASS
from ...core.operations import registry
from ...core.vocabulary import JobStatus
from ...core.models import iso
from ...research.insights import config_delta

# A job's live curve: the first of these it records, else its first stepped metric.
CURVE_SERIES = ("train_loss", "loss")
LOG_LINES = 200


def _op(service, name: str, **params: Any) -> dict:
    """An operation's result as JSON-ready data, through the same validation as the RPC and the CLI."""
    return registry()[name].call(service, params).model_dump(mode="json")


def chart_points(service) -> dict[str, Any]:
    """Every ended run of the campaign's metric as a point (time, value, class, status): the chart's data."""
    metric = service.primary_metric
    rows = service.history.cursor().execute(
        "SELECT job_id, status, coalesce(gpu_class, ?), epoch(ended_at), primary_value FROM jobs "
        "WHERE ended_at IS NOT NULL AND (primary_metric = ? OR primary_metric IS NULL) ORDER BY ended_at, job_num",
        [CPU_CLASS, metric]).fetchall()
    return {"metric": metric, "direction": service.metric_direction,
            "points": [{"job": j, "status": s, "cls": c, "t": t, "v": v} for j, s, c, t, v in rows]}


def approvals(service) -> list[dict[str, Any]]:
    rows = service.history.cursor().execute(
        "SELECT approval_id, t, note, approved_by, experiments, paused_reason FROM approvals "
        "ORDER BY approval_id").fetchall()
    return [{"approval_id": a, "t": iso(t), "note": n, "by": b, "experiments": e, "paused_reason": p}
            for a, t, n, b, e, p in rows]


def guardrails(service) -> dict[str, Any] | None:
    """The research status, or None where the service holds no guardrails (the history file alone)."""
    try:
        return _op(service, "research_status")
    except ArcError:
        return None


def campaign(service) -> dict[str, Any]:
    digest = _op(service, "digest")
    return {**chart_points(service), "status": guardrails(service), "health": digest["health"],
            "significance": digest["significance"], "leaderboard": _op(service, "leaderboard", top=10)}


def fleet(service) -> dict[str, Any]:
    return _op(service, "list_gpus", detail=True, limit=200)     # every GPU of up to 200 hosts: the whole grid


def jobs(service, status: str | None, tag: str | None, hypothesis: str | None, gpu_class: str | None,
         limit: int = 200) -> dict[str, Any]:
    statuses = [s for s in (status or "").split(",") if s] or None
    page = _op(service, "list_jobs", status=statuses, tag=tag or None, hypothesis_id=hypothesis or None,
               limit=limit)
    if gpu_class:     # list_jobs has no class filter; the page it gives is filtered here
        page["jobs"] = [j for j in page["jobs"] if j["gpu_class"] == gpu_class]
    return page


def hypotheses(service) -> dict[str, Any]:
    return _op(service, "list_hypotheses", limit=200)


def _baseline(service, detail: dict) -> str | None:
    board = _op(service, "leaderboard", gpu_class=detail["gpu_class"], top=1) if detail["gpu_class"] else None
    classes = board["classes"] if board else []
    return classes[0]["baseline_job"] if classes else None


def job(service, job_id: str) -> dict[str, Any]:
    detail = _op(service, "job_status", job_ids=[job_id])["jobs"][0]
    baseline = _baseline(service, detail)
    out: dict[str, Any] = {"job": detail, "baseline": baseline, "config_diff": None, "code_diff": None,
                           "log": None, "log_error": None, "curve": None}
    if baseline and baseline != job_id:
        base = _op(service, "job_status", job_ids=[baseline])["jobs"][0]
        out["config_diff"] = config_delta(base.get("config"), detail.get("config"))
        out["code_diff"] = _op(service, "diff_jobs", a=baseline, b=job_id)
    if detail["host"]:
        try:
            out["log"] = _op(service, "tail_log", job_id=job_id, lines=LOG_LINES)
        except ArcError as e:
            out["log_error"] = str(e)
    names = service.history.metric_names(job_id)
    stepped = [n for n in CURVE_SERIES if n in names] or [n for n in names if n != service.primary_metric]
    if stepped:
        series = service.history.metric_series([job_id], stepped[0], max_points=500)[job_id]
        out["curve"] = {"name": stepped[0], "step": [s if s is not None else i for i, s in enumerate(series["step"])],
                        "value": series["value"]}
    return out


def log_since(service, job_id: str, offset: int) -> dict[str, Any]:
    return _op(service, "tail_log", job_id=job_id, offset=offset)


def report(service) -> dict[str, Any]:
    """Everything `arc report` writes into its one file."""
    return {**campaign(service), "hypotheses": hypotheses(service)["hypotheses"], "approvals": approvals(service),
            "statuses": {s.value: n for s in JobStatus
                         if (n := _op(service, "list_jobs", status=[s.value], limit=1)["total"])}}

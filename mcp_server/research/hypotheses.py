"""Hypotheses: written before the runs that test them, judged after (program.md's keep/discard, made explicit).

Thin rules over the history's hypotheses table: a verdict is required to close one, ids and linked jobs are
checked, and every answer says what to do next.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from ..core.errors import ArcError
from ..core.models import HYP_ID_RE, Hypothesis, HypothesisList, HypothesisResult, check_job_id, iso, next_page
from ..core.vocabulary import DECIDED_HYPOTHESIS_STATUSES, HYPOTHESIS_STATUSES, HypothesisStatus
from ..history.errors import HistoryError


if TYPE_CHECKING:     # for annotations only: importing the history loads DuckDB
    from ..history import History


MAX_TEXT = 2000


def _view(row: dict[str, Any]) -> Hypothesis:
    return Hypothesis(hyp_id=row["hyp_id"], status=row["status"], text=row["text"], verdict=row.get("verdict"),
                      effect_size=row.get("effect_size"), jobs=list(row.get("jobs") or []),
                      created_at=iso(row.get("created_at")))


def brief(verdict: str, limit: int = 240) -> str:
    """A verdict in at most `limit` characters. A verdict is the claim, then the comparison that qualifies it
    ('b helps; within noise (...)'), so the start is what gives way: the caveat is never the part cut."""
    return verdict if len(verdict) <= limit else "…" + verdict[-(limit - 1):]


def _check_id(hyp_id: str) -> None:
    if not isinstance(hyp_id, str) or not HYP_ID_RE.match(hyp_id):
        raise ArcError(f"'{hyp_id}' is not a hypothesis id; they look like h3 (see list_hypotheses)")


def require(history: History, hyp_id: str) -> dict[str, Any]:
    """The hypothesis, or a refusal that says how to find the ids."""
    _check_id(hyp_id)
    row = history.get_hypothesis(hyp_id)
    if row is None:
        raise ArcError(f"unknown hypothesis {hyp_id!r}: list_hypotheses shows the ids")
    return row


def _check_jobs(job_ids: list[str] | None) -> list[str]:
    try:
        return [check_job_id(j) for j in job_ids or []]
    except ValueError as e:
        raise ArcError(str(e)) from None


def _text(name: str, value: str | None, required: bool = False) -> str | None:
    if value is None or not value.strip():
        if required:
            raise ArcError(f"{name} is empty; say what you expect to change in the metric and why")
        return None
    if len(value) > MAX_TEXT:
        raise ArcError(f"{name} has {len(value)} characters; keep it under {MAX_TEXT}")
    return value.strip()


def append_hypothesis(history: History, text: str, rationale: str | None = None, tags: list[str] | None = None,
                      jobs: list[str] | None = None, created_by: str = "agent") -> HypothesisResult:
    text = _text("text", text, required=True)
    rationale = _text("rationale", rationale)
    jobs = _check_jobs(jobs)
    for t in tags or []:
        if not re.fullmatch(r"[\w.:-]{1,40}", t):
            raise ArcError(f"tag {t!r}: use 1-40 letters, digits, '_', '.', ':' or '-'")
    try:
        hyp_id = history.add_hypothesis(text, rationale=rationale, tags=tags, created_by=created_by)
        row = history.update_hypothesis(hyp_id, add_jobs=jobs) if jobs else history.get_hypothesis(hyp_id)
    except HistoryError as e:
        raise ArcError(str(e)) from None
    return HypothesisResult(summary=f"{hyp_id} open: {text[:80]}", hypothesis=_view(row),
                            next=f"submit_jobs with hypothesis_id='{hyp_id}' on each job that tests it")


def update_hypothesis(history: History, hyp_id: str, status: str | None = None, verdict: str | None = None,
                      effect_size: float | None = None, add_jobs: list[str] | None = None) -> HypothesisResult:
    _check_id(hyp_id)
    if status is not None and status not in HYPOTHESIS_STATUSES:
        raise ArcError(f"status {status!r} is not one of {', '.join(HYPOTHESIS_STATUSES)}")
    verdict = _text("verdict", verdict)
    if status in DECIDED_HYPOTHESIS_STATUSES and verdict is None and \
            not (history.get_hypothesis(hyp_id) or {}).get("verdict"):
        raise ArcError(f"marking {hyp_id} {status} needs a verdict: one line with the GPU class, the runs "
                       "compared and the difference, e.g. 'H100: j12 0.9912 vs baseline j3 0.9979 (-0.0067)'")
    if effect_size is not None and effect_size != effect_size:
        raise ArcError("effect_size is NaN; give the metric difference (new minus baseline) as a number")
    add_jobs = _check_jobs(add_jobs)
    if status is None and verdict is None and effect_size is None and not add_jobs:
        raise ArcError("nothing to change: give status, verdict, effect_size or add_jobs")
    try:
        row = history.update_hypothesis(hyp_id, status=status, verdict=verdict, effect_size=effect_size,
                                        add_jobs=add_jobs or None)
    except HistoryError as e:
        raise ArcError(str(e)) from None
    view = _view(row)
    return HypothesisResult(summary=f"{hyp_id} {view.status}" + (f": {brief(view.verdict)}" if view.verdict else ""),
                            hypothesis=view,
                            next=None if view.status != HypothesisStatus.OPEN
                            else "wait_for_jobs on its jobs, then set a verdict")


def list_hypotheses(history: History, status: str | None = None, limit: int = 20,
                    offset: int = 0) -> HypothesisList:
    if status is not None and status not in HYPOTHESIS_STATUSES:
        raise ArcError(f"status {status!r} is not one of {', '.join(HYPOTHESIS_STATUSES)}")
    if not 1 <= limit <= 200:
        raise ArcError(f"limit must be from 1 to 200 (got {limit})")
    if offset < 0:
        raise ArcError(f"offset must be >= 0 (got {offset})")
    rows = history.hypotheses(status=status, limit=limit, offset=offset)
    total = history.count_hypotheses(status=status)
    views = [_view(r) for r in rows]
    counts = history.cursor().execute("SELECT status, count(*) FROM hypotheses GROUP BY status "
                                      "ORDER BY status").fetchall() if status is None else []
    by_status = ", ".join(f"{n} {s}" for s, n in counts)
    more = offset + len(views) < total
    return HypothesisList(summary=f"{total} hypothes{'i' if total == 1 else 'e'}s" + (f" ({by_status})" if by_status
                                                                                      else "")
                          + (f"; showing {offset + 1}-{offset + len(views)}" if views else ""),
                          hypotheses=views, total=total, offset=offset,
                          next=next_page("list_hypotheses", offset + len(views), status=status,
                                         limit=None if limit == 20 else limit) if more else None)

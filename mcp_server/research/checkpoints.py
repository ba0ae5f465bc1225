"""Human checkpoints: after every N experiments and/or H hours the campaign pauses until a person approves.

An experiment is a job that has been placed on a host (the `jobs.host` column is set): counting placements rather
than submissions or results makes the pause exact, because the scheduler asks before each placement. A job sent
back to the queue by an infrastructure retry loses its host and so counts once. Approvals are rows of the
`approvals` table (history schema): when, who, the note (shown to the agent) and the experiment count at that
moment, from which the next checkpoint counts.
"""
from __future__ import annotations

import datetime as dt
import time
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from ..history.values import now as utc_now
from .config import ResearchConfig


if TYPE_CHECKING:     # for annotations only: importing the history loads DuckDB
    from ..history import History


class Approval(BaseModel):
    model_config = ConfigDict(defer_build=True)
    approval_id: int
    t: dt.datetime
    note: str | None = None
    approved_by: str | None = None
    experiments: int
    paused_reason: str | None = None


class CheckpointState(BaseModel):
    """Where the campaign stands against its checkpoint cadence."""
    model_config = ConfigDict(defer_build=True)
    experiments: int                         # placed so far, all time
    experiments_since: int                   # placed since the last approval (or since the start)
    since: dt.datetime | None                # the last approval, else the first submission; None: no jobs yet
    last: Approval | None = None

    def hours_since(self, now: float | None = None) -> float:
        if self.since is None:
            return 0.0
        return max(0.0, ((time.time() if now is None else now) - self.since.timestamp()) / 3600)


def checkpoint_state(history: History) -> CheckpointState:
    cur = history.cursor()
    experiments, first_submitted = cur.execute(
        "SELECT count(*) FILTER (WHERE host IS NOT NULL), min(submitted_at) FROM jobs").fetchone()
    last = last_approval(history)
    base = last.experiments if last else 0
    return CheckpointState(experiments=experiments, experiments_since=max(0, experiments - base),
                           since=last.t if last else first_submitted, last=last)


def checkpoint_due(cfg: ResearchConfig, state: CheckpointState, now: float | None = None) -> str | None:
    """Why the campaign must pause for a person now, or None."""
    every_n, every_h = cfg.checkpoint.every_experiments, cfg.checkpoint.every_hours
    since = "since the last approval" if state.last else "since the campaign started"
    if every_n is not None and state.experiments_since >= every_n:
        n = state.experiments_since
        return f"{n} experiment{'' if n == 1 else 's'} {since} (checkpoint every {every_n})"
    hours = state.hours_since(now)
    if every_h is not None and state.since is not None and hours >= every_h:
        return f"{hours:.1f} hours {since} (checkpoint every {every_h:g} h)"
    return None


def last_approval(history: History) -> Approval | None:
    cur = history.cursor()
    cur.execute("SELECT * FROM approvals ORDER BY approval_id DESC LIMIT 1")
    row = cur.fetchone()
    if row is None:
        return None
    return Approval(**dict(zip([d[0] for d in cur.description], row)))


def approve(history: History, note: str | None, by: str | None, paused_reason: str | None = None) -> Approval:
    """Record a person's approval: the checkpoint count restarts from the experiments placed so far."""
    note = (note or "").strip() or None
    with history.transaction() as cur:
        experiments = cur.execute("SELECT count(*) FROM jobs WHERE host IS NOT NULL").fetchone()[0]
        cur.execute("INSERT INTO approvals (t, note, approved_by, experiments, paused_reason) "
                    "VALUES (?, ?, ?, ?, ?) RETURNING *", [utc_now(), note, by, experiments, paused_reason])
        approval = Approval(**dict(zip([d[0] for d in cur.description], cur.fetchone())))
        history.add_event("approved", f"approved by {by or 'someone'}" + (f": {note}" if note else ""),
                          data={"approval_id": approval.approval_id, "ended_pause": paused_reason})
    return approval

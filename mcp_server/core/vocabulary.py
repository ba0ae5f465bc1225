"""The words arc's state is spelled in, defined once: job and hypothesis statuses and the groups the code asks about.

The history's CHECK constraints, the pydantic models the tools take and return, the scheduler, the research layer
and the `arc` command all read these, so a status cannot be written in one place and missed in another. They are
`StrEnum`s: a member equals its text (`JobStatus.QUEUED == "queued"`), which is what DuckDB stores and binds.
"""
from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"                 # in the history's queue, not placed yet
    DISPATCHING = "dispatching"       # placed; the launch is on its way to the host
    UNCONFIRMED = "unconfirmed"       # the launch's reply was lost: the host is asked before anything else
    RUNNING = "running"
    UNKNOWN = "unknown"               # was running when its host stopped answering
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    LOST = "lost"                     # its host has no record of it, or its supervisor died


class HypothesisStatus(StrEnum):
    OPEN = "open"
    SUPPORTED = "supported"
    REFUTED = "refuted"
    INCONCLUSIVE = "inconclusive"     # judged, but the runs cannot tell (within noise, too few per side, confounded)
    ABANDONED = "abandoned"


class DecisionKind(StrEnum):
    """What a person or the agent decided about a run against its class's incumbent (autoresearch's commit/reset)."""
    KEEP = "keep"                     # the run becomes its class's incumbent
    DISCARD = "discard"               # it does not; the incumbent stays


JOB_STATUSES: tuple[JobStatus, ...] = tuple(JobStatus)
WAITING_STATUSES = (JobStatus.QUEUED,)
# Placed, but the host has not confirmed the launch: the host is asked (and the launch revoked) before a requeue.
LAUNCHING_STATUSES = (JobStatus.DISPATCHING, JobStatus.UNCONFIRMED)
# Placed on a host: they hold GPUs or a CPU slot there until they end.
IN_FLIGHT_STATUSES = (JobStatus.DISPATCHING, JobStatus.UNCONFIRMED, JobStatus.RUNNING, JobStatus.UNKNOWN)
# Their process runs (as far as anyone knows): elapsed time is being spent.
STARTED_STATUSES = (JobStatus.RUNNING, JobStatus.UNKNOWN)
ACTIVE_STATUSES = WAITING_STATUSES + IN_FLIGHT_STATUSES
TERMINAL_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.TIMEOUT, JobStatus.LOST)
# Ended without a result and not at anyone's request: what triage explains and a retry may fix.
FAILED_STATUSES = (JobStatus.FAILED, JobStatus.TIMEOUT, JobStatus.LOST)

HYPOTHESIS_STATUSES: tuple[HypothesisStatus, ...] = tuple(HypothesisStatus)
DECISION_KINDS: tuple[DecisionKind, ...] = tuple(DecisionKind)
# A verdict on the evidence (as opposed to open, or abandoned without one).
DECIDED_HYPOTHESIS_STATUSES = (HypothesisStatus.SUPPORTED, HypothesisStatus.REFUTED)

JOB_KINDS = ("trainer", "command")


def sql_list(values: tuple[str, ...] | frozenset[str]) -> str:
    """Values as a SQL list body for `IN (...)` and CHECK constraints: `'queued', 'running'`."""
    return ", ".join("'" + str(v).replace("'", "''") + "'" for v in values)

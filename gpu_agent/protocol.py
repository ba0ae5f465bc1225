"""The wire contract between the controller and the host agent.

This is the only module the controller imports from gpu_agent. Standard library only: the agent runs on any
GPU box with any Python >= 3.10. The controller validates what it receives with pydantic TypeAdapters over
these TypedDicts.

Transport: `python -m gpu_agent --workdir W serve` reads one JSON request a line on stdin and writes one JSON
line per response on stdout. Responses carry the request's `id`. The agent may also write unsolicited event
lines (no `id`, an `event` key) at any time, e.g. when a job it watches ends and its GPUs free.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable, Literal

try:  # pydantic (controller side) only accepts typing_extensions' TypedDict before Python 3.12
    from typing_extensions import TypedDict
except ImportError:  # hosts run the standard library only
    from typing import TypedDict

PROTOCOL_VERSION = 1

# Lines a workload prints that start with this marker carry one JSON object of metrics.
METRIC_MARKER = "@arc "

# Bounds the agent enforces on what one answer carries (a request asking for more gets bad_request).
MAX_TAIL_LINES = 10_000
MAX_TAIL_BYTES = 1 << 20
MAX_METRICS_RECORDS = 10_000
MAX_METRICS_BYTES = 1 << 20
MAX_LIST_LIMIT = 500
MAX_STATUS_IDS = 1_000
MAX_REQUEST_BYTES = 4 << 20

# Job ids on the host: the controller sends `<history job id>-<history id>` (e.g. "j17-4f2a"), people and tests
# any short name. One rule, here, for every place that takes one (it also names a directory: no "/" or "..").
HOST_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
HOST_JOB_ID_RULE = "1-64 characters of A-Z a-z 0-9 _ -"


def check_host_job_id(value: Any) -> str:
    if isinstance(value, str) and HOST_JOB_ID.fullmatch(value):
        return value
    raise ValueError(f"must be {HOST_JOB_ID_RULE}")


JobStatus = Literal["starting", "running", "succeeded", "failed", "cancelled", "timeout", "lost"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled", "timeout", "lost"})

Op = Literal["hello", "inventory", "launch", "status", "list", "cancel", "tail", "metrics", "claims",
             "release_stale", "revoke_launch", "shutdown"]

ErrorCode = Literal[
    "bad_request",      # malformed request or arguments; fix the caller
    "bad_config",       # <workdir>/agent.json is invalid; the message names the field
    "unknown_job",      # no such job directory on this host
    "job_exists",       # launch: this job id exists with a different launch token
    "launch_revoked",   # launch: the controller revoked this launch token (revoke_launch) before it arrived
    "claim_conflict",   # a requested GPU/slot is held by another job, or no CPU slot is free (retry elsewhere)
    "no_such_gpu",      # index not in this host's inventory
    "launch_failed",    # the supervisor could not be started (infrastructure); if the message says the
                        # supervisor did not answer in time, the job may still start: ask status first
    "internal",         # a bug in the agent; message has the traceback's last line
]


class Request(TypedDict, total=False):
    id: int
    op: Op
    params: dict[str, Any]     # checked against PARAMS[op] and PARAM_RULES; unknown keys are refused with
                               # bad_request (they are typos); a null value means the key is absent (its default)


class ErrorInfo(TypedDict):
    code: ErrorCode
    message: str


class Response(TypedDict, total=False):
    id: int | None         # the request's id; null when the request line was not a JSON object
    ok: bool
    result: Any            # present when ok
    error: ErrorInfo       # present when not ok


class Event(TypedDict):
    # job_started: the job's process of a launch made by this serve process has started.
    # job_ended: the job reached a terminal state (or its supervisor died: status "lost"), for jobs launched by
    # this serve process (within milliseconds) and for every other job on the host (running when this serve
    # process started, or launched since by another process; within ~0.25 s).
    # Each job gets at most one job_ended per serve process; by then its claims are released (unless lost).
    event: Literal["job_ended", "job_started"]
    job_id: str
    state: "JobState"


# ---- inventory -------------------------------------------------------------------------------------------

class GpuProcess(TypedDict):
    pid: int
    used_mb: float | None


class ClaimInfo(TypedDict):
    resource: str              # "gpu0", "cpu3"
    job_id: str
    supervisor_pid: int | None
    stale: bool                # the supervisor is dead (or its pid was reused): the job is lost
    claimed_at: float | None


class GpuInfo(TypedDict):
    index: int                 # NVML index (PCI bus order); jobs see it through CUDA_VISIBLE_DEVICES
    uuid: str
    name: str                  # NVML name, e.g. "NVIDIA H100 80GB HBM3", or the simulated model
    memory_total_mb: float
    memory_used_mb: float | None
    utilization_pct: float | None
    temperature_c: float | None
    power_w: float | None
    processes: list[GpuProcess]
    simulated: bool
    claimed_by: str | None     # job id holding the claim file, if any
    claim_stale: bool          # claim held by a job whose supervisor is dead


class Inventory(TypedDict):
    hostname: str
    source: Literal["nvml", "simulated", "none"]
    nvml_error: str | None     # why NVML gave nothing, when it did not
    gpus: list[GpuInfo]
    cpu_slots: int             # concurrent CPU-only jobs this host accepts
    cpu_slots_used: int
    cpu_claims: list[ClaimInfo]


class Hello(TypedDict):
    protocol: int
    agent_version: str         # content hash of the gpu_agent package as deployed
    python: str
    hostname: str
    pid: int
    workdir: str
    nvml: bool
    nvml_error: str | None
    config_error: str | None   # agent.json is invalid: inventory and launch answer bad_config until fixed
    time: float                # host clock, so the controller can measure skew


# ---- jobs ------------------------------------------------------------------------------------------------

class _LaunchRequired(TypedDict):
    job_id: str                # a host job id (check_host_job_id)
    launch_token: str          # unique per intent; a retried launch with the same token returns the same
                               # job (its current state), the same job_id with another token is job_exists
    argv: list[str]            # non-empty; never run through a shell
    time_limit_s: float        # > 0: the whole process group is killed past it (status "timeout")


class LaunchParams(_LaunchRequired, total=False):
    env: dict[str, str]        # added to the agent's environment; ARC_* and CUDA_* set by the agent win
    cwd: str                   # absolute, or relative to the workdir (e.g. "code/<sha256>"); default: the workdir
    gpus: list[int]            # GPU indices to claim, all or nothing; empty or absent: a CPU-only job
    cpu_slot: bool             # default: true exactly when gpus is empty (every job holds a claim)
    kill_grace_s: float        # SIGTERM, then SIGKILL after this many seconds
# The job sees CUDA_VISIBLE_DEVICES (claimed indices; "" for CPU-only jobs and simulated GPUs),
# CUDA_DEVICE_ORDER=PCI_BUS_ID, ARC_JOB_ID, ARC_CACHE_DIR=<workdir>/cache, ARC_GPU_MODEL (the first claimed GPU's
# name, "" for CPU-only jobs), and PYTHONUNBUFFERED=1 and GOMP_SPINCOUNT=1000 (launcher.JOB_ENV_DEFAULTS) unless env
# sets them.


class JobState(TypedDict, total=False):
    job_id: str
    launch_token: str
    status: JobStatus
    gpus: list[int]
    gpu_uuids: list[str]
    cpu_slot: int | None
    supervisor_pid: int | None
    supervisor_start: int | None   # start time of supervisor_pid (clock ticks since boot): guards pid reuse
    pid: int | None            # the job's process (leader of its own process group)
    pid_start: int | None      # start time of pid (clock ticks since boot)
    created_at: float
    started_at: float | None   # the job's process started
    ended_at: float | None     # the job's process exited (or was found lost)
    heartbeat_at: float | None
    exit_code: int | None
    signal: int | None         # signal that ended the process, if any
    reason: str | None         # why it ended when not by itself: "time limit 30s", "cancelled", "killed by SIGKILL",
                               # "cannot start 'x': ...", "supervisor (pid N) died" (status lost)
    log_bytes: int
    metrics_count: int         # lines in metrics.jsonl (as of the last heartbeat)


class MetricRecord(TypedDict):
    seq: int                   # 0-based line number in metrics.jsonl: the idempotency key for ingestion
    t: float                   # host time the supervisor read the line
    source: Literal["marker", "summary", "progress"]   # see gpu_agent/metrics.py
    data: dict[str, Any]       # the parsed object: numbers are metrics, anything else is job info


class TailResult(TypedDict):
    job_id: str
    text: str
    offset: int                # byte offset where `text` starts
    next_offset: int           # pass back as `offset` to continue
    size: int                  # the log's size now
    truncated: bool            # last-lines mode: output exists before `offset`; offset mode: after `next_offset`


class MetricsResult(TypedDict):
    job_id: str
    records: list[MetricRecord]
    next_seq: int              # pass back as `from_seq` to continue
    more: bool                 # more complete records exist past next_seq


# ---- op parameters and results: PARAMS and RESULTS below say which op takes and answers which ---------------
# cancel: SIGTERM to the group now, SIGKILL after kill_grace_s; idempotent; a job_ended event follows.

class NoParams(TypedDict):
    pass


class JobRef(TypedDict):
    job_id: str


class StatusParams(TypedDict, total=False):
    job_ids: list[str]         # absent: every job holding a claim (running, starting, or lost and unacknowledged)


class StatusResult(TypedDict):
    jobs: list[JobState]
    unknown: list[str]         # requested ids with no job directory on this host


class ListParams(TypedDict, total=False):
    limit: int
    offset: int


class ListResult(TypedDict):
    jobs: list[JobState]       # newest first
    total: int
    next_offset: int | None    # None on the last page


class TailParams(JobRef, total=False):
    lines: int                 # the last N lines; ignored when offset is given
    offset: int                # read forward from this byte offset instead
    max_bytes: int


class MetricsParams(JobRef, total=False):
    from_seq: int
    limit: int                 # records; an answer is also cut at MAX_METRICS_BYTES


class ClaimsResult(TypedDict):
    claims: list[ClaimInfo]


class RevokeParams(TypedDict):
    job_id: str
    launch_token: str


class RevokeResult(TypedDict):
    # The controller's answer to a launch whose reply it never got, and of which the host has no record: either
    # the launch did happen (state: the job, whatever its token) or it never will (revoked: a launch with this
    # token that arrives later, through a connection the controller has given up on, is refused). Revoking and
    # creating a job take the same lock, so exactly one of the two wins.
    revoked: bool
    state: JobState | None


class ReleaseStaleResult(TypedDict):
    job_id: str
    released: list[str]        # resources freed
    killed: list[int]          # orphaned job processes that were still alive and got SIGKILL
    state: JobState | None     # None when the claim's job never got a job directory


class ShutdownResult(TypedDict):
    stopping: bool


PARAMS: dict[Op, type] = {
    "hello": NoParams, "inventory": NoParams, "launch": LaunchParams, "status": StatusParams, "list": ListParams,
    "cancel": JobRef, "tail": TailParams, "metrics": MetricsParams, "claims": NoParams, "release_stale": JobRef,
    "revoke_launch": RevokeParams, "shutdown": NoParams}

RESULTS: dict[Op, type] = {
    "hello": Hello, "inventory": Inventory, "launch": JobState, "status": StatusResult, "list": ListResult,
    "cancel": JobState, "tail": TailResult, "metrics": MetricsResult, "claims": ClaimsResult,
    "release_stale": ReleaseStaleResult, "revoke_launch": RevokeResult, "shutdown": ShutdownResult}


# ---- what the types cannot say: per params type and key, a rule that takes the well-typed value and returns the
# value to use, or raises ValueError saying what it must be; then the defaults of absent optional keys ------------
Rule = Callable[[Any], Any]


def _between(lo: int, hi: int) -> Rule:
    def rule(v: int) -> int:
        if lo <= v <= hi:
            return v
        raise ValueError(f"must be an integer from {lo} to {hi}")
    return rule


def _seconds(above_zero: bool) -> Rule:
    def rule(v: float) -> float:
        if (v > 0 if above_zero else v >= 0) and math.isfinite(v):
            return float(v)
        raise ValueError(f"must be a number {'>' if above_zero else '>='} 0 (seconds)")
    return rule


def _token(v: str) -> str:
    if 0 < len(v) <= 128:
        return v
    raise ValueError("must be a string of 1-128 characters")


def _argv(v: list[str]) -> list[str]:
    if v and v[0]:
        return v
    raise ValueError("must be a non-empty list of strings (the command, never run through a shell)")


def _env(v: dict[str, str]) -> dict[str, str]:
    if all(k and "=" not in k for k in v):
        return v
    raise ValueError("must be an object of string names (without '=') to string values")


def _gpu_indices(v: list[int]) -> list[int]:
    if all(i >= 0 for i in v) and len(set(v)) == len(v):
        return sorted(v)
    raise ValueError("must be a list of distinct GPU indices >= 0")


def _host_job_ids(v: list[str]) -> list[str]:
    if len(v) > MAX_STATUS_IDS:
        raise ValueError(f"must be a list of at most {MAX_STATUS_IDS} job ids")
    return [check_host_job_id(j) for j in v]


_OFFSET = _between(0, 1 << 62)

PARAM_RULES: dict[type, dict[str, Rule]] = {
    LaunchParams: {"job_id": check_host_job_id, "launch_token": _token, "argv": _argv, "env": _env,
                   "gpus": _gpu_indices, "time_limit_s": _seconds(True), "kill_grace_s": _seconds(False)},
    JobRef: {"job_id": check_host_job_id},
    RevokeParams: {"job_id": check_host_job_id, "launch_token": _token},
    StatusParams: {"job_ids": _host_job_ids},
    ListParams: {"limit": _between(1, MAX_LIST_LIMIT), "offset": _OFFSET},
    TailParams: {"job_id": check_host_job_id, "lines": _between(1, MAX_TAIL_LINES), "offset": _OFFSET,
                 "max_bytes": _between(1, MAX_TAIL_BYTES)},
    MetricsParams: {"job_id": check_host_job_id, "from_seq": _OFFSET, "limit": _between(1, MAX_METRICS_RECORDS)},
}

PARAM_DEFAULTS: dict[type, dict[str, Any]] = {
    LaunchParams: {"env": {}, "cwd": "", "gpus": [], "cpu_slot": None, "kill_grace_s": 10.0},
    StatusParams: {"job_ids": None},
    ListParams: {"limit": 50, "offset": 0},
    TailParams: {"lines": 80, "offset": None, "max_bytes": 65536},
    MetricsParams: {"from_seq": 0, "limit": 1000},
}


# ---- the claim ledger: <workdir>/claims.log, one JSON line per acquire and per release ---------------------
# Acquire lines are written after the claim files exist and before the job starts; release lines after the job's
# process group is gone and before the claim files are removed. So, in file order, a resource's acquire/release
# intervals never overlap unless two jobs really held it at once.

class LedgerEntry(TypedDict):
    t: float
    op: Literal["acquire", "release"]
    resource: str
    job_id: str
    pid: int                   # the process that wrote the line

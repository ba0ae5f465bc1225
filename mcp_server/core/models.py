"""Typed inputs and results of arc's operations, shared by the MCP tools, the `arc` command and the daemon's RPC.

Results are what the agent reads (Claude Code shows it the structured content as compact JSON), so every result
starts with a one-line `summary`, keeps its fields small, and names the obvious next call in `next`.
"""
from __future__ import annotations

import datetime as dt
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..research.guard import GuardStatus
from ..research.triage import Triage
from .vocabulary import HypothesisStatus, JobStatus


DEFAULT_MAX_ATTEMPTS = 3
MAX_ATTEMPTS_LIMIT = 20
JOB_ID_RE = re.compile(r"^j[0-9]{1,9}$")
HYP_ID_RE = re.compile(r"^h[0-9]{1,9}$")


class Model(BaseModel):
    """Every input and result model. Their validators are built on first use, not at import: `arc` imports them all
    to make its commands, and building ~90 schemas up front would double every command's start-up."""
    model_config = ConfigDict(defer_build=True)


class Strict(Model):
    model_config = ConfigDict(extra="forbid", defer_build=True)


def check_job_id(job_id: str) -> str:
    if not isinstance(job_id, str) or not JOB_ID_RE.match(job_id):
        raise ValueError(f"'{job_id}' is not a job id; job ids look like j17 (see list_jobs)")
    return job_id


class Requirements(Strict):
    """What a job needs from the fleet. Unset fields do not constrain placement."""
    gpus: int = Field(1, ge=0, le=64, description="GPUs on one host (0 with cpu_only)")
    gpu_class: str | None = Field(None, description="e.g. H100-SXM, H200 (see list_gpus)")
    gpu_model: str | None = Field(None, description="substring of the GPU's model name, e.g. 'H100'")
    min_memory_gb: float | None = Field(None, gt=0)
    host: str | None = None
    label: str | None = None
    cpu_only: bool = False
    same_class_as: str | None = Field(None, description="run on the GPU class job X ran on (fair comparison)")
    avoid_hosts: list[str] = Field(default_factory=list, description=(
        "set by arc, not at submission: the host whose failure ended the previous attempt, avoided while another "
        "host could run the job"))

    @model_validator(mode="after")
    def _consistent(self) -> "Requirements":
        if self.cpu_only:
            self.gpus = 0
        elif self.gpus == 0:
            raise ValueError("gpus=0 needs cpu_only=true (a job runs on GPUs or on a CPU slot)")
        if self.same_class_as is not None:
            check_job_id(self.same_class_as)
        return self


class JobSpec(Strict):
    """One experiment. Either `config` (trainer overrides, the usual case) or `command` (any argv)."""
    config: dict[str, Any] | None = Field(
        None, description="trainer overrides, e.g. {'depth': 10, 'matrix_lr': 0.03}; runs python -m trainer.train")
    command: list[str] | None = Field(
        None, description="argv to run instead of the trainer; never passed through a shell")
    code: str | None = Field(
        None, description="'trainer' (default), a local folder to snapshot, or a code hash of an earlier job")
    preset: str | None = Field(None, description="trainer preset, e.g. cpu-tiny")
    time_budget_s: float | None = Field(None, gt=0, le=24 * 3600, description="trainer's training budget")
    time_limit_s: float | None = Field(None, gt=0, le=7 * 24 * 3600, description="hard kill limit")
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    requirements: Requirements = Field(default_factory=Requirements)
    priority: int = Field(0, ge=-100, le=100, description="higher runs first")
    tags: list[str] = Field(default_factory=list, max_length=16)
    hypothesis_id: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    name: str | None = Field(None, max_length=120)
    max_attempts: int | None = Field(
        None, ge=1, le=MAX_ATTEMPTS_LIMIT, description="attempts when the infrastructure fails (a host lost, a "
        "launch failed for the host's reasons); default from research.yaml, else 3. The experiment's own failure "
        "is never retried")
    base: Literal["incumbent"] | None = Field(
        None, description="'incumbent': start from the job's GPU class's current best (its config, preset, code and "
                          "time budget); this job's config keys, preset, code and budget apply on top")

    @model_validator(mode="after")
    def _one_workload(self) -> "JobSpec":
        if self.requirements.avoid_hosts:
            raise ValueError("requirements.avoid_hosts is set by arc after a host loses a job; leave it out "
                             "(to keep a job off a host, use requirements.host or label)")
        if self.command is not None and self.config is not None:
            raise ValueError("give either config (trainer overrides) or command (argv), not both")
        if self.command is not None and not self.command:
            raise ValueError("command must be a non-empty argv list, e.g. ['python', 'run.py', '--lr', '0.1']")
        if self.base is not None and self.command is not None:
            raise ValueError("base='incumbent' builds on a trainer config; a command job states its own argv")
        if self.hypothesis_id is not None and not HYP_ID_RE.match(self.hypothesis_id):
            raise ValueError(f"'{self.hypothesis_id}' is not a hypothesis id; they look like h3")
        return self

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        for k in env:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k):
                raise ValueError(f"env name '{k}' is not a valid variable name")
        return env

    @property
    def kind(self) -> Literal["trainer", "command"]:
        return "command" if self.command is not None else "trainer"


# ---- results -----------------------------------------------------------------------------------------------

class Result(Model):
    summary: str
    next: str | None = None


class GpuView(Model):
    index: int
    model: str
    gpu_class: str
    memory_used_gb: float | None = None
    memory_total_gb: float
    util_pct: float | None = None
    temp_c: float | None = None
    job_id: str | None = None
    frees_in_s: float | None = Field(None, description="seconds until the job's time limit, at most")
    simulated: bool = False


class HostView(Model):
    """A host in one row: its GPUs counted by state; `gpus` itemises them only in a detailed answer."""
    name: str
    reachable: bool
    error: str | None = None
    gpu_class: str | None = Field(None, description="its GPUs' class ('A+B' when it has several)")
    n_gpus: int = 0
    free: int = 0
    next_frees_in_s: float | None = Field(None, description="the soonest one of its busy GPUs frees, at most")
    gpus: list[GpuView] | None = Field(None, description="per GPU: with detail=true, or when the answer is small")
    waiting: str | None = None      # capacity asked for, not there yet (a pending Slurm allocation): why
    cpu_slots: int = 0
    cpu_slots_used: int = 0
    labels: list[str] | None = None


class GpuClassCount(Model):
    gpu_class: str
    gpus: int
    free: int
    hosts: int
    next_frees_in_s: float | None = Field(None, description="the soonest a busy GPU of this class frees, at most")


class GpuList(Result):
    """The fleet in a bounded answer at any size: per GPU class, then one page of hosts."""
    classes: list[GpuClassCount]
    hosts: list[HostView] = Field(description="one page of hosts (limit/offset), by name")
    hosts_total: int = Field(description="hosts that match the filters")
    offset: int = 0
    unreachable: list[str] = Field(default_factory=list, description="hosts that do not answer (the first 50)")


class SubmittedJob(Model):
    job_id: str
    status: JobStatus
    host: str | None = None
    gpu_class: str | None = None
    queue_position: int | None = None


class SubmitResult(Result):
    jobs: list[SubmittedJob]


class JobView(Model):
    """A job in a few fields; `job_status` adds detail."""
    job_id: str
    status: JobStatus
    name: str | None = None
    host: str | None = None
    gpu_class: str | None = None
    metric: float | None = Field(None, description="the primary metric (e.g. val_bpb) once known")
    submitted_at: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    reason: str | None = None
    hypothesis_id: str | None = None
    tags: list[str] = Field(default_factory=list)


class AttemptView(Model):
    """An earlier attempt of a job, ended by the infrastructure (its host lost, its launch failed there)."""
    attempt: int
    host: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    reason: str
    gpu_seconds: float = 0.0


class JobDetail(JobView):
    kind: str
    config: dict[str, Any] | None = None
    command: list[str] | None = None
    code_hash: str | None = None
    seed: int | None = None
    gpu_indices: list[int] = Field(default_factory=list)
    exit_code: int | None = None
    signal: int | None = None
    summary_metrics: dict[str, Any] | None = None
    last_metrics: dict[str, float] | None = None
    attempts: int = Field(0, description="earlier attempts that an infrastructure failure ended")
    lost_attempts: list[AttemptView] = Field(default_factory=list, description="those attempts: host, times, why")
    time_limit_s: float | None = None
    triage: Triage | None = Field(None, description="why it failed and what to do (failed/timeout/lost jobs)")


class JobList(Result):
    jobs: list[JobView]
    total: int
    offset: int


class JobDetails(Result):
    jobs: list[JobDetail]


class CancelResult(Result):
    cancelled: list[str]
    already_ended: list[str] = Field(default_factory=list)


class LogTail(Result):
    job_id: str
    text: str
    offset: int
    next_offset: int
    truncated: bool


class WaitResult(Result):
    done: list[JobView]
    pending: list[str]
    timed_out: bool
    held: str | None = Field(None, description="why the pending jobs cannot start until a person acts")


class SqlResult(Result):
    columns: list[str]
    rows: list[list[Any]]
    row_count: int
    truncated: bool
    cut: str | None = Field(None, description="cells cut to a bounded length, rows left out to bound the answer")


class Hypothesis(Model):
    hyp_id: str
    status: HypothesisStatus
    text: str
    verdict: str | None = None
    effect_size: float | None = None
    jobs: list[str] = Field(default_factory=list)
    created_at: str | None = None


class HypothesisResult(Result):
    hypothesis: Hypothesis


class HypothesisList(Result):
    hypotheses: list[Hypothesis]
    total: int
    offset: int


# ---- insights: leaderboard, digest, plots, the history's schema --------------------------------------------------

class RunEntry(Model):
    rank: int
    job_id: str
    metric: float
    vs_baseline: float | None = Field(None, description="metric minus the class baseline's metric")
    changes: dict[str, Any] = Field(default_factory=dict,
                                    description="config keys that differ from the baseline (null: back to default)")
    code_changed: bool = False
    seed: int | None = None
    hypothesis_id: str | None = None
    n: int = Field(1, description="runs of this code and config (seeds), compared as one group with the baseline's")
    significance: str | None = Field(None, description="whether the difference from the baseline clears the noise")
    significant: bool | None = None


class LineageStep(Model):
    """One link of a class's chain: the baseline, then each kept change."""
    job_ids: list[str]
    metric: float = Field(description="mean of the primary metric over job_ids")
    gain: float | None = Field(None, description="metric minus its predecessor's (None for the baseline)")
    significance: str | None = Field(None, description="the comparison the keep rested on")
    since: str | None = None
    why: str


class ClassBoard(Model):
    gpu_class: str
    runs: int = Field(description="succeeded runs with a metric in this class")
    baseline_job: str
    baseline_metric: float
    baseline_runs: int = Field(1, description="runs of the baseline's code and config (its seeds)")
    noise_sigma: float | None = Field(None, description="seed-to-seed spread measured by measure_noise here")
    best: list[RunEntry]
    lineage: list[LineageStep] = Field(default_factory=list, description="baseline -> kept change 1 -> ...")
    confounded: list[str] = Field(default_factory=list, description="runs whose throughput was off the class's")


class Leaderboard(Result):
    metric: str
    direction: Literal["min", "max"]
    classes: list[ClassBoard]


class Digest(Result):
    since: str
    until: str = Field(description="pass this as `since` next time to see only what is new")
    succeeded: int
    failed: int
    cancelled: int
    running: int
    queued: int
    new_bests: list[str] = Field(default_factory=list)
    failures: list[str] = Field(default_factory=list)
    hypotheses: list[str] = Field(default_factory=list)
    significance: list[str] = Field(default_factory=list, description="per GPU class: the best against its baseline")
    health: list[str] = Field(default_factory=list, description="search-health warnings")
    guardrails: str | None = Field(None, description="budget, checkpoint and the last approval note")
    incumbents: list[str] = Field(default_factory=list, description="per GPU class: the current best")
    decisions: list[str] = Field(default_factory=list, description="the last keep/discard decisions")


class Plot(Result):
    """A PNG; the MCP tool sends it as image content, the RPC as base64."""
    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")
    png: bytes


class Relation(Model):
    name: str
    kind: str
    doc: str
    columns: dict[str, str] = Field(description="column: 'TYPE', or 'TYPE: meaning' when one table is asked for")


class SqlExample(Model):
    title: str
    sql: str


class HistorySchema(Result):
    relations: list[Relation]
    examples: list[SqlExample]
    notes: list[str]


# ---- the campaign's memory: incumbents, decisions -----------------------------------------------------------

class Incumbent(Model):
    """A GPU class's current best: what the next change builds on (submit_jobs with base='incumbent')."""
    gpu_class: str
    job_ids: list[str] = Field(description="the runs behind it (its seeds or confirmation runs)")
    metric: float = Field(description="mean primary metric over job_ids")
    config: dict[str, Any] = Field(default_factory=dict, description="trainer overrides, preset included")
    code_hash: str | None = None
    time_budget_s: float | None = None
    since: str | None = Field(None, description="when it became current")
    why: str = Field(description="'baseline', or the keep decision's reason")
    decision_id: int | None = None


class Decision(Model):
    decision_id: int
    kind: str
    gpu_class: str
    job_ids: list[str]
    against: list[str]
    diff: float | None = None
    comparison: str
    reason: str
    decided_by: str | None = None
    hypothesis_id: str | None = None
    t: str | None = None


class DecisionResult(Result):
    decision: Decision
    incumbent: Incumbent = Field(description="the class's incumbent after this decision")


class ConfirmResult(SubmitResult):
    linked: dict[str, list[str]] = Field(description="original job -> its confirmation runs (the incumbent's too)")


class ResearchStatus(GuardStatus):
    """The guardrails plus the campaign's memory: everything a fresh session needs to resume."""
    incumbents: list[Incumbent] = Field(default_factory=list)
    lineage: list[str] = Field(default_factory=list, description="per class: baseline -> kept change 1 -> ...")
    open_hypotheses: list[str] = Field(default_factory=list)
    last_decisions: list[str] = Field(default_factory=list)


class Suggestions(Result):
    configs: list[dict[str, Any]] = Field(description="trainer overrides: submit each as a job's config")
    preset: str | None = Field(None, description="the preset to submit them with")
    gpu_class: str | None = Field(None, description="the class whose history informed them: run them there")
    based_on: int = Field(0, description="finished runs of that class inside the search space")


# ---- how values read in answers ---------------------------------------------------------------------------

def iso(value: Any) -> str | None:
    """A time as the agent reads it: UTC, to the second."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        value = dt.datetime.fromtimestamp(value, dt.timezone.utc)
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(value)


def next_page(tool: str, offset: int, **filters: Any) -> str:
    """The call that fetches the next page, carrying the caller's filters (None: left out)."""
    args = ", ".join(f"{k}={v!r}" for k, v in filters.items() if v not in (None, []))
    return f"{tool}({args + ', ' if args else ''}offset={offset})"

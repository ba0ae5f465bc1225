"""The research layer: what makes a campaign of experiments research rather than a job queue.

- `config`: research.yaml (metric, search space, constraints, time limits, budgets, checkpoints, command policy).
- `guard`: refusals at submission and `Guardrails` (dispatch allowance, pauses, approvals, status) for the daemon;
  `usage` (GPU-seconds and money from the history), `checkpoints` (approvals), `space` (membership and constraints).
- `stats`: noise floors and significance within one GPU class. `suggest`: Optuna proposals over the space.
- `triage`: why a job failed and what to do. `health`: search-health warnings. `hangs`: hung-job detection.
- `snapshot_diff`: settings and code differences between two jobs.
"""
from .checkpoints import Approval, approve, checkpoint_due, checkpoint_state
from .config import ResearchConfig, ResearchConfigError, load_research, parse_research
from .guard import Allowance, GuardError, Guardrails, GuardStatus, check_submission, job_times, pause_prefix
from .hangs import HangWatch
from .health import search_health
from .snapshot_diff import JobDiff, diff_jobs
from .stats import (
    NOISE_TAG, Comparison, NoiseFloor, Sides, compare, compare_jobs, judge, noise_floors, throughput_outliers,
)
from .suggest import suggest_configs, warm_trials
from .triage import Triage, triage
from .usage import Prices, Usage, measure_usage

__all__ = [
    "ResearchConfig", "ResearchConfigError", "load_research", "parse_research",
    "Guardrails", "GuardError", "GuardStatus", "Allowance", "check_submission", "job_times", "pause_prefix",
    "Approval", "approve", "checkpoint_due", "checkpoint_state", "Prices", "Usage", "measure_usage",
    "Comparison", "NoiseFloor", "NOISE_TAG", "Sides", "compare", "compare_jobs", "noise_floors", "judge",
    "throughput_outliers",
    "suggest_configs", "warm_trials", "Triage", "triage", "search_health", "HangWatch", "JobDiff", "diff_jobs",
]

"""The research layer: what makes a campaign of experiments research rather than a job queue.

- `config`: research.yaml (metric, search space, constraints, time limits, budgets, checkpoints, command policy).
- `guard`: refusals at submission and `Guardrails` (dispatch allowance, pauses, approvals, status) for the daemon;
  `usage` (GPU-seconds and money from the history), `checkpoints` (approvals), `space` (membership and constraints).
- `stats`: noise floors and significance within one GPU class. `suggest`: Optuna proposals over the space.
- `triage`: why a job failed and what to do. `health`: search-health warnings. `hangs`: hung-job detection.
- `snapshot_diff`: settings and code differences between two jobs.
"""
from ..lazy import lazy_exports

# Each name is imported from its module on first use: importing one light part of this package loads no other.
# (Not `triage`, the function: once its module is imported, the package's attribute of that name is the module.)
__getattr__, __all__ = lazy_exports(__name__, {
    "Approval": ".checkpoints",
    "approve": ".checkpoints",
    "checkpoint_due": ".checkpoints",
    "checkpoint_state": ".checkpoints",
    "ResearchConfig": ".config",
    "ResearchConfigError": ".config",
    "load_research": ".config",
    "parse_research": ".config",
    "Allowance": ".guard",
    "GuardError": ".guard",
    "Guardrails": ".guard",
    "GuardStatus": ".guard",
    "check_submission": ".guard",
    "job_times": ".guard",
    "pause_prefix": ".guard",
    "HangWatch": ".hangs",
    "search_health": ".health",
    "JobDiff": ".snapshot_diff",
    "diff_jobs": ".snapshot_diff",
    "NOISE_TAG": ".stats",
    "Comparison": ".stats",
    "NoiseFloor": ".stats",
    "Sides": ".stats",
    "compare": ".stats",
    "compare_jobs": ".stats",
    "judge": ".stats",
    "noise_floors": ".stats",
    "throughput_outliers": ".stats",
    "suggest_configs": ".suggest",
    "warm_trials": ".suggest",
    "Triage": ".triage",
    "Prices": ".usage",
    "Usage": ".usage",
    "measure_usage": ".usage",
})

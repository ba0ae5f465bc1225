"""The research layer: what makes a campaign of experiments research rather than a job queue.

- `config`: research.yaml (metric, search space, constraints, time limits, budgets, checkpoints, command policy).
- `guard`: refusals at submission and `Guardrails` (dispatch allowance, pauses, approvals, status) for the daemon;
  `usage` (GPU-seconds and money from the history), `checkpoints` (approvals), `space` (membership and constraints).
- `stats`: noise floors and significance within one GPU class. `suggest`: Optuna proposals over the space.
- `triage`: why a job failed and what to do. `health`: search-health warnings. `hangs`: hung-job detection.
- `snapshot_diff`: settings and code differences between two jobs.
"""
from __future__ import annotations

import importlib
from typing import Any


# Each name is imported from its module on first use (PEP 562), so that importing one light part of this package
# (a result model, a type) does not load the heavy ones: `arc --help` and `arc mcp` start without them.
_EXPORTS = {
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
    "triage": ".triage",
    "Prices": ".usage",
    "Usage": ".usage",
    "measure_usage": ".usage",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value

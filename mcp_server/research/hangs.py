"""Hung jobs: running, silent in its log for `hangs.silent_after_s`, and its GPUs idle. A silent job whose GPUs
compute is left alone (a long evaluation prints nothing); where utilization is unknown (a CPU job, a simulated GPU)
the silence decides alone. research.yaml `hangs.kill` says whether the scheduler cancels it or only flags it."""
from __future__ import annotations

from typing import Sequence

from .config import ResearchConfig

IDLE_UTIL_PCT = 5.0


def hang_reason(cfg: ResearchConfig, silent_s: float, gpu_util_pct: Sequence[float | None]) -> str | None:
    """Why a running job counts as hung, or None. `silent_s`: seconds since its log last grew;
    `gpu_util_pct`: the current utilization of each of its GPUs (None where unknown)."""
    limit = cfg.hangs.silent_after_s
    if limit is None or silent_s < limit:
        return None
    known = [u for u in gpu_util_pct if u is not None]
    if known and max(known) >= IDLE_UTIL_PCT:
        return None
    idle = f"its GPUs at {max(known):.0f} % utilization" if known else "GPU utilization unknown"
    return (f"hung: no output for {silent_s:.0f} s (research.yaml hangs.silent_after_s {limit:g}) and {idle}"
            + ("; cancelled (hangs.kill)" if cfg.hangs.kill else "; flagged only (hangs.kill is false)"))

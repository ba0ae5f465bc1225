"""Hung jobs: running, silent in its log for `hangs.silent_after_s`, and its GPUs idle. A silent job whose GPUs
compute is left alone (a long evaluation prints nothing); where utilization is unknown (a CPU job, a simulated GPU)
the silence decides alone. research.yaml `hangs.kill` says whether the scheduler cancels it or only flags it."""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Sequence

from ..core.vocabulary import JobStatus
from .config import ResearchConfig


log = logging.getLogger("arc.research.hangs")

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


class HangWatch:
    """Run at every scheduler tick: follows each running job's log size, and flags (or, with hangs.kill, cancels) a
    job whose log stopped growing past the limit while its GPUs sit idle. Each hang is flagged once, as a `hung`
    event. `scheduler` answers `request(host, op, ...)` and `cancel(job)`; `research` gives the rules in force
    (they may be reloaded)."""

    def __init__(self, history: Any, scheduler: Any, research: Callable[[], ResearchConfig]):
        self.history = history
        self.scheduler = scheduler
        self.research = research
        self._log_growth: dict[str, tuple[int, float, bool]] = {}   # job -> (log bytes, since, flagged hung)

    def tick(self) -> None:
        cfg = self.research()
        limit = cfg.hangs.silent_after_s
        if limit is None:
            return
        now = time.time()
        running = self.history.jobs(status=[JobStatus.RUNNING], limit=None)
        alive = {j["job_id"] for j in running}
        for job_id in list(self._log_growth):
            if job_id not in alive:
                del self._log_growth[job_id]
        for job in running:
            size = job.get("log_bytes") or 0
            seen = self._log_growth.get(job["job_id"])
            if seen is None or seen[0] != size:
                self._log_growth[job["job_id"]] = (size, now, False)
                continue
            silent = now - seen[1]
            if silent < limit or seen[2]:
                continue
            try:
                inv = self.scheduler.request(job["host"], "inventory", timeout=5.0)
            except Exception as e:   # an unreachable host is the reconciler's business, not a hang
                log.info("no utilization for %s: %s", job["job_id"], e)
                continue
            indices = set(job.get("gpu_indices") or [])
            utils = [g.get("utilization_pct") for g in inv.get("gpus", []) if g["index"] in indices]
            reason = hang_reason(cfg, silent, utils)
            if reason is None:
                continue
            self._log_growth[job["job_id"]] = (size, seen[1], True)
            self.history.add_event("hung", reason, job_id=job["job_id"], host=job["host"])
            if cfg.hangs.kill:
                self.scheduler.cancel(job)

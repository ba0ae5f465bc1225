"""What the campaign has spent and has committed to spend: GPU-seconds and money, from the history.

Spent is measured, not estimated: `jobs.gpu_seconds` of every ended job (or its ended - started × GPUs when the host
never reported it, e.g. a lost job), plus the elapsed time × GPUs of every job still running, plus the GPU time of
attempts the infrastructure lost (`attempts`: the job ran again, but those hours were spent). Committed is the
estimate for jobs that hold or wait for GPUs: the rest of each one's time budget (its time limit when it has no
budget). Money is GPU-hours × the price of the host or GPU class the job ran on.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from pydantic import BaseModel, ConfigDict

from ..core.vocabulary import IN_FLIGHT_STATUSES, STARTED_STATUSES, TERMINAL_STATUSES, WAITING_STATUSES, sql_list
from ..history.values import from_json
from .config import ResearchConfig


if TYPE_CHECKING:     # for annotations only: importing the history loads DuckDB
    from ..history import History


@dataclass(frozen=True)
class Prices:
    """Price of one GPU-hour. A research.yaml key naming a host wins, then the host's hosts.yaml
    `cost_per_gpu_hour` (0 there means "not set"), then a research.yaml key naming the GPU class."""
    by_host: Mapping[str, float] = field(default_factory=dict)
    by_class: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def build(cls, cfg: ResearchConfig, host_prices: Mapping[str, float] | None = None) -> "Prices":
        hosts = {h: float(p) for h, p in (host_prices or {}).items() if p and p > 0}
        declared = cfg.budgets.price_per_gpu_hour
        hosts.update({k: v for k, v in declared.items() if k in (host_prices or {})})
        return cls(by_host=hosts, by_class={k: v for k, v in declared.items() if k not in (host_prices or {})})

    @property
    def known(self) -> bool:
        return bool(self.by_host or self.by_class)

    def per_gpu_hour(self, host: str | None, gpu_class: str | None, requirements: Mapping[str, Any] | None = None
                     ) -> float:
        """The price where the job runs; for a job not yet placed, where its requirements pin it, else the
        dearest known price (so a projection never undercounts)."""
        req = requirements or {}
        host = host or req.get("host")
        gpu_class = gpu_class or req.get("gpu_class")
        if host in self.by_host:
            return self.by_host[host]
        if gpu_class in self.by_class:
            return self.by_class[gpu_class]
        if host is not None and gpu_class is not None:
            return 0.0
        return max([*self.by_host.values(), *self.by_class.values()], default=0.0)


class Usage(BaseModel):
    model_config = ConfigDict(defer_build=True)
    gpu_seconds: float = 0.0             # spent: ended jobs + elapsed of running ones
    money: float = 0.0
    committed_gpu_seconds: float = 0.0   # still to come for queued and running jobs (their budgets)
    committed_money: float = 0.0
    gpus_in_use: int = 0                 # GPUs held by placed, unfinished jobs
    active_jobs: int = 0

    @property
    def gpu_hours(self) -> float:
        return self.gpu_seconds / 3600

    @property
    def projected_gpu_seconds(self) -> float:
        return self.gpu_seconds + self.committed_gpu_seconds

    @property
    def projected_money(self) -> float:
        return self.money + self.committed_money


def job_gpus(job: Mapping[str, Any]) -> int:
    """GPUs a job holds (once placed) or will hold (from its requirements)."""
    if job.get("host") and job.get("gpu_indices") is not None:
        return len(job["gpu_indices"])
    req = job.get("requirements") or {}
    return 0 if req.get("cpu_only") else int(req.get("gpus", 1))


def job_seconds(job: Mapping[str, Any]) -> float:
    """Expected run time of a job: its training budget, else its time limit."""
    return float(job.get("time_budget_s") or job.get("time_limit_s") or 0.0)


def measure_usage(history: History, prices: Prices, now: float | None = None) -> Usage:
    now = time.time() if now is None else now
    cur = history.cursor()
    spent = money = committed = committed_money = 0.0
    in_use = active = 0
    for host, gpu_class, gpu_seconds in cur.execute(f"""
            SELECT host, gpu_class, sum(coalesce(gpu_seconds,
                       greatest(0, epoch(ended_at) - epoch(started_at)) * coalesce(len(gpu_indices), 0), 0))
            FROM jobs WHERE status IN ({sql_list(TERMINAL_STATUSES)}) GROUP BY ALL""").fetchall():
        spent += gpu_seconds
        money += gpu_seconds / 3600 * prices.per_gpu_hour(host, gpu_class)
    # Attempts the infrastructure lost were paid for all the same.
    for host, gpu_class, gpu_seconds in cur.execute(
            "SELECT host, gpu_class, sum(gpu_seconds) FROM attempts GROUP BY ALL").fetchall():
        spent += gpu_seconds
        money += gpu_seconds / 3600 * prices.per_gpu_hour(host, gpu_class)
    # Placed jobs one by one (few: at most one per GPU or CPU slot); waiting ones by kind (there may be many).
    for status, host, gpu_class, gpu_indices, started, budget, limit in cur.execute(f"""
            SELECT status, host, gpu_class, gpu_indices, epoch(started_at), time_budget_s, time_limit_s
            FROM jobs WHERE status IN ({sql_list(IN_FLIGHT_STATUSES)})""").fetchall():
        job = {"host": host, "gpu_indices": gpu_indices or [], "time_budget_s": budget, "time_limit_s": limit}
        gpus, price = job_gpus(job), prices.per_gpu_hour(host, gpu_class) / 3600
        elapsed = max(0.0, now - started) if status in STARTED_STATUSES and started is not None else 0.0
        remaining = max(0.0, job_seconds(job) - elapsed)
        spent += elapsed * gpus
        money += elapsed * gpus * price
        committed += remaining * gpus
        committed_money += remaining * gpus * price
        in_use += gpus
        active += 1
    for requirements, seconds, count in cur.execute(f"""
            SELECT requirements, coalesce(time_budget_s, time_limit_s, 0), count(*)
            FROM jobs WHERE status IN ({sql_list(WAITING_STATUSES)}) GROUP BY ALL""").fetchall():
        req = from_json(requirements) or {}
        gpu_seconds = seconds * job_gpus({"requirements": req}) * count
        committed += gpu_seconds
        committed_money += gpu_seconds * prices.per_gpu_hour(None, None, req) / 3600
        active += count
    return Usage(gpu_seconds=spent, money=money, committed_gpu_seconds=committed, committed_money=committed_money,
                 gpus_in_use=in_use, active_jobs=active)

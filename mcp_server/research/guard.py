"""The campaign's guardrails: refuse submissions that break research.yaml, and hold dispatch for a person.

At submission (`check_submission`, before any id is allocated): a config outside the search space or breaking a
constraint, a time limit above the hard limit, a command the command policy refuses, a job asking more GPUs than the
campaign may hold, or a batch whose projected spend (spent + committed + this batch's budgets × GPUs) would cross
the GPU-hour or money budget. The message names the rule, the limit and what to do instead. The projection counts
time budgets; start-up and evaluation come on top, which the spent-budget hold at dispatch catches.

At dispatch (`Guardrails.launch_gate`, asked by the scheduler before each placement): a checkpoint that is due or a
budget that is spent holds every queued job until a person acts (`arc approve`, or a larger budget), and `max_gpus`
caps the GPUs held at once.
"""
from __future__ import annotations

import shlex
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from pydantic import BaseModel, ConfigDict

from ..core import workloads
from ..core.user_pattern import compile_user_pattern
from .checkpoints import CheckpointState, approve, checkpoint_due, checkpoint_state
from .config import ResearchConfig, ResearchConfigError
from .space import config_problems
from .usage import Prices, Usage, job_gpus, job_seconds, measure_usage


if TYPE_CHECKING:     # for annotations only: importing the history loads DuckDB
    from ..history import History


MAX_LISTED = 5
REVIEW = "paused for review: "
APPROVE_HINT = "a person runs `arc approve --note '...'` to go on"
BUDGET_HINT = "a person raises the budget in research.yaml and runs `arc research reload`"
WHILE_PAUSED = "report to the person (digest, leaderboard); queued jobs start once they act"


def pause_prefix(held: str) -> str:
    """The words every tool answer starts with while dispatch is held: why, and what a person does to go on."""
    if held.startswith(REVIEW):
        return (f"PAUSED for review: {held[len(REVIEW):]}; new work waits until a person runs "
                "`arc approve --note '...'`. ")
    return f"PAUSED: {held}; new work waits until {BUDGET_HINT}. "


class GuardError(ValueError):
    """A submission refused by research.yaml; the message names each rule broken and its limit."""


def command_problem(cfg: ResearchConfig, row: Mapping[str, Any]) -> str | None:
    policy = cfg.command_policy
    if row.get("kind") != "command" or policy.mode == "any":
        return None
    if policy.mode == "trainer_only":
        return ("command jobs are refused by research.yaml command_policy (mode trainer_only: only the trainer "
                "with config overrides); fix: submit config={...} (trainer overrides) instead of a command")
    argv = [str(a) for a in row.get("argv") or []]
    line = shlex.join(argv)
    for entry in policy.allow:
        if isinstance(entry, list) and argv[:len(entry)] == entry:
            return None
        if isinstance(entry, str) and compile_user_pattern(entry).fullmatch(line):
            return None
    allowed = "; ".join(shlex.join(e) + " ..." if isinstance(e, list) else f"/{e}/" for e in policy.allow)
    return (f"command {line[:120]!r} matches no entry of research.yaml command_policy.allow (mode allowlist: "
            f"{allowed}); fix: run an allowed command, or add it to command_policy.allow")


def time_problem(cfg: ResearchConfig, row: Mapping[str, Any]) -> str | None:
    hard = cfg.hard_limit_s
    if hard is None:
        return None
    for key in ("time_limit_s", "time_budget_s"):
        value = row.get(key)
        if value is not None and value > hard:
            return (f"{key}={value:g} is above research.yaml hard_limit_s {hard:g}; "
                    f"fix: ask {key} <= {hard:g}")
    return None


def job_times(cfg: ResearchConfig, kind: str, time_budget_s: float | None, time_limit_s: float | None
              ) -> tuple[float | None, float]:
    """A job's (time budget, time limit) with research.yaml's defaults: its time_budget_s for trainer jobs that
    give none, and a default limit kept within hard_limit_s (a limit the job asks for itself is checked instead)."""
    budget = time_budget_s if time_budget_s is not None or kind != "trainer" else cfg.time_budget_s
    if time_limit_s is not None:
        return budget, time_limit_s
    limit = workloads.default_time_limit(kind, budget)
    return budget, limit if cfg.hard_limit_s is None else min(limit, cfg.hard_limit_s)


def row_problems(cfg: ResearchConfig, row: Mapping[str, Any]) -> list[str]:
    """What one job (a row as the service builds it) breaks, budgets aside."""
    problems = [p for p in (command_problem(cfg, row), time_problem(cfg, row)) if p]
    if row.get("kind", "trainer") == "trainer":
        problems += config_problems(cfg, {k: v for k, v in (row.get("config") or {}).items()})
    gpus = job_gpus(row)
    if cfg.max_gpus is not None and gpus > cfg.max_gpus:
        problems.append(f"asks {gpus} GPUs but research.yaml max_gpus is {cfg.max_gpus} (GPUs the campaign may "
                        f"hold at once), so it could never start; fix: ask at most {cfg.max_gpus}")
    return problems


def budget_problems(cfg: ResearchConfig, rows: Sequence[Mapping[str, Any]], usage: Usage,
                    prices: Prices) -> list[str]:
    """Whether the batch would push the projected spend over a budget."""
    problems = []
    batch_s = sum(job_seconds(r) * job_gpus(r) for r in rows)
    gpu_hours = cfg.budgets.gpu_hours
    if gpu_hours is not None:
        projected = (usage.projected_gpu_seconds + batch_s) / 3600
        if projected > gpu_hours + 1e-9:
            problems.append(
                f"this batch would bring projected GPU use to {projected:.2f} h, over the budget of {gpu_hours:g} "
                f"GPU-hours (research.yaml budgets.gpu_hours): spent {usage.gpu_seconds / 3600:.2f} h, committed "
                f"to queued and running jobs {usage.committed_gpu_seconds / 3600:.2f} h, this batch "
                f"{batch_s / 3600:.2f} h ({len(rows)} job(s), time budget × GPUs); fix: submit fewer or shorter "
                f"jobs, wait for running ones, or raise budgets.gpu_hours")
    money = cfg.budgets.money
    if money is not None:
        batch_money = sum(job_seconds(r) * job_gpus(r) / 3600 * prices.per_gpu_hour(
            r.get("host"), r.get("gpu_class"), r.get("requirements")) for r in rows)
        projected = usage.projected_money + batch_money
        if projected > money + 1e-9:
            problems.append(
                f"this batch would bring projected spend to {projected:.2f}, over the money budget of {money:g} "
                f"(research.yaml budgets.money): spent {usage.money:.2f}, committed {usage.committed_money:.2f}, "
                f"this batch {batch_money:.2f}; fix: submit fewer or shorter jobs, run on cheaper GPUs, "
                f"or raise budgets.money")
    return problems


def check_submission(cfg: ResearchConfig, rows: Sequence[Mapping[str, Any]], usage: Usage,
                     prices: Prices | None = None) -> None:
    """Raise GuardError naming every rule the batch breaks; the service then submits nothing."""
    problems = [f"job {i}: {p}" for i, row in enumerate(rows) for p in row_problems(cfg, row)]
    problems += [f"batch: {p}" for p in budget_problems(cfg, rows, usage, prices or Prices())]
    if problems:
        more = f"; and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise GuardError("refused by research.yaml: " + "; ".join(problems[:MAX_LISTED]) + more)


@dataclass(frozen=True)
class Allowance:
    """What may start now. `held`: nothing may, and why (a person must act); `jobs`: placements left before the
    next checkpoint; `gpus`: GPUs that may still be taken under max_gpus. None: no limit."""
    held: str | None = None
    jobs: int | None = None
    gpus: int | None = None


class GuardStatus(BaseModel):
    """The guardrails in a few fields, for the agent and for `arc research status`."""
    model_config = ConfigDict(defer_build=True)
    summary: str
    paused: str | None = None                # why new work is held for a person; None while dispatching
    resume: str | None = None                # what a person does to go on
    gpu_hours_used: float
    gpu_hours_committed: float
    gpu_hours_budget: float | None = None
    gpu_hours_left: float | None = None
    money_used: float | None = None
    money_budget: float | None = None
    money_left: float | None = None
    experiments_since_checkpoint: int
    checkpoint_every: int | None = None
    hours_since_checkpoint: float
    checkpoint_every_hours: float | None = None
    gpus_in_use: int
    max_gpus: int | None = None
    last_approval_note: str | None = None    # what the person said at the last checkpoint
    last_approval_at: str | None = None
    last_approval_by: str | None = None
    next: str | None = None


class Guardrails:
    """research.yaml applied to one history. `prices`: hosts.yaml's cost_per_gpu_hour by host name."""

    def __init__(self, cfg: ResearchConfig, history: History, prices: Mapping[str, float] | None = None):
        self.history = history
        self._host_prices = dict(prices or {})
        self._lock = threading.Lock()
        self._last_held: str | None = None
        self.use(cfg)

    def use(self, cfg: ResearchConfig) -> None:
        """Apply these rules from now on: at start, and when a person edits research.yaml and reloads it."""
        prices = Prices.build(cfg, self._host_prices)
        if cfg.budgets.money is not None and not prices.known:
            raise ResearchConfigError([
                "research.yaml: field 'budgets.money': a money budget needs a price per GPU-hour, and none is "
                "known; fix: set budgets.price_per_gpu_hour (e.g. {H100: 2.5}) or cost_per_gpu_hour in hosts.yaml"])
        self.cfg, self.prices = cfg, prices

    def usage(self) -> Usage:
        return measure_usage(self.history, self.prices)

    def check(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """For `Service.submit_jobs(check=...)`: raises GuardError to refuse the batch."""
        budgets = self.cfg.budgets.gpu_hours is not None or self.cfg.budgets.money is not None
        check_submission(self.cfg, rows, self.usage() if budgets else Usage(), self.prices)

    def _budget_spent(self, usage: Usage) -> str | None:
        b = self.cfg.budgets
        if b.gpu_hours is not None and usage.gpu_hours >= b.gpu_hours:
            return (f"budget spent: {usage.gpu_hours:.2f} of {b.gpu_hours:g} GPU-hours used "
                    "(research.yaml budgets.gpu_hours)")
        if b.money is not None and usage.money >= b.money:
            return f"budget spent: {usage.money:.2f} of {b.money:g} used (research.yaml budgets.money)"
        return None

    def _needs_usage(self) -> bool:
        cfg = self.cfg
        return cfg.max_gpus is not None or cfg.budgets.gpu_hours is not None or cfg.budgets.money is not None

    def _needs_checkpoints(self) -> bool:
        return self.cfg.checkpoint.every_experiments is not None or self.cfg.checkpoint.every_hours is not None

    def pause_reason(self, usage: Usage | None = None, state: CheckpointState | None = None) -> str | None:
        """Why new work is held until a person acts (budget spent, checkpoint due), or None."""
        cfg = self.cfg
        if cfg.budgets.gpu_hours is not None or cfg.budgets.money is not None:
            spent = self._budget_spent(usage or self.usage())
            if spent:
                return spent
        if self._needs_checkpoints():
            due = checkpoint_due(cfg, state or checkpoint_state(self.history))
            if due:
                return f"paused for review: {due}"
        return None

    def allowance(self) -> Allowance:
        """What the scheduler may start in one dispatch round (one look at the history for the whole round).
        A change between held and not held is recorded as an event."""
        if not self._needs_usage() and not self._needs_checkpoints():
            return Allowance()
        usage = self.usage() if self._needs_usage() else None
        state = checkpoint_state(self.history) if self._needs_checkpoints() else None
        held = self.pause_reason(usage, state)
        with self._lock:
            if held != self._last_held:
                if held is not None:
                    self.history.add_event("paused", held)
                elif self._last_held is not None:
                    self.history.add_event("resumed", f"no longer held ({self._last_held})")
                self._last_held = held
        every = self.cfg.checkpoint.every_experiments
        return Allowance(
            held=held,
            jobs=None if every is None or state is None else max(0, every - state.experiments_since),
            gpus=None if self.cfg.max_gpus is None or usage is None else
            max(0, self.cfg.max_gpus - usage.gpus_in_use))

    @property
    def last_held(self) -> str | None:
        """The hold the last allowance found (no query): cheap enough to prefix every tool answer with. The
        scheduler asks for an allowance each dispatch round and the daemon's tick, so it is seconds old at most."""
        return self._last_held

    def launch_gate(self) -> str | None:
        """For the scheduler: why nothing may be dispatched now (held for a person, or max_gpus reached), or None."""
        allowance = self.allowance()
        if allowance.held is None and allowance.gpus == 0:
            return (f"max_gpus reached: all {self.cfg.max_gpus} GPUs the campaign may hold are in use "
                    "(research.yaml max_gpus)")
        return allowance.held

    def approve(self, note: str | None = None, by: str | None = None) -> GuardStatus:
        """A person's go-ahead at a checkpoint; the note is shown to the agent from now on."""
        approve(self.history, note, by, paused_reason=self.pause_reason())
        self.allowance()   # the hold lifts now (and says so in the events), not at the next dispatch round
        return self.status()

    def status(self) -> GuardStatus:
        cfg = self.cfg
        usage = self.usage()
        state = checkpoint_state(self.history)
        paused = self.pause_reason(usage, state)
        b = cfg.budgets
        used_h, committed_h = usage.gpu_hours, usage.committed_gpu_seconds / 3600
        status = GuardStatus(
            summary="", paused=paused,
            resume=None if paused is None else APPROVE_HINT if paused.startswith(REVIEW) else BUDGET_HINT,
            next=WHILE_PAUSED if paused else None,
            gpu_hours_used=round(used_h, 3), gpu_hours_committed=round(committed_h, 3),
            gpu_hours_budget=b.gpu_hours,
            gpu_hours_left=None if b.gpu_hours is None else round(max(0.0, b.gpu_hours - used_h), 3),
            money_used=round(usage.money, 2) if self.prices.known else None, money_budget=b.money,
            money_left=None if b.money is None else round(max(0.0, b.money - usage.money), 2),
            experiments_since_checkpoint=state.experiments_since, checkpoint_every=cfg.checkpoint.every_experiments,
            hours_since_checkpoint=round(state.hours_since(), 2), checkpoint_every_hours=cfg.checkpoint.every_hours,
            gpus_in_use=usage.gpus_in_use, max_gpus=cfg.max_gpus,
            last_approval_note=state.last.note if state.last else None,
            last_approval_at=state.last.t.strftime("%Y-%m-%dT%H:%M:%SZ") if state.last else None,
            last_approval_by=state.last.approved_by if state.last else None)
        status.summary = _summary(status)
        return status


def _summary(s: GuardStatus) -> str:
    parts = [f"PAUSED ({s.paused}); {s.resume}" if s.paused else "running"]
    if s.gpu_hours_budget is not None:
        parts.append(f"{s.gpu_hours_used:.2f} of {s.gpu_hours_budget:g} GPU-hours used")
    else:
        parts.append(f"{s.gpu_hours_used:.2f} GPU-hours used")
    if s.money_budget is not None:
        parts.append(f"{s.money_used:.2f} of {s.money_budget:g} spent")
    if s.checkpoint_every is not None:
        parts.append(f"{s.experiments_since_checkpoint}/{s.checkpoint_every} experiments to the next checkpoint")
    if s.max_gpus is not None:
        parts.append(f"{s.gpus_in_use}/{s.max_gpus} GPUs")
    if s.last_approval_note:
        parts.append(f"last approval note: {s.last_approval_note!r}")
    return "; ".join(parts)


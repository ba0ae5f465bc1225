"""Classical proposals for the agent's waves: Optuna (TPE by default, CMA-ES on request) over the declared space.

The study lives in memory and is rebuilt on every call from the history: every succeeded job of the GPU class whose
trainer config lies in the space (unset keys take their `baseline` value; a job that sets a key outside the space,
other than the `fixed` settings the caller names, tested something else and is left out) becomes a finished trial.
Results are only comparable within one class, so the class is part of the question. The same history, space and
seed give the same suggestions.
"""
from __future__ import annotations

import functools
import math
import warnings
from typing import TYPE_CHECKING, Any, Iterable, Literal, Mapping

from ..core.vocabulary import JobStatus
from .config import ChoiceParam, FloatParam, ResearchConfig
from .space import config_problems, param_problem


MAX_SUGGESTIONS = 50
MAX_DRAWS_PER_SUGGESTION = 50    # draws that break a constraint are dropped; give up past this many per config
CMA_WARM_START_MIN = 10

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution


@functools.cache
def _optuna():
    """Optuna, imported at the first suggestion: it takes about a second, which the daemon's start-up (and so
    Claude Code's first answer) should not pay."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def distributions(cfg: ResearchConfig) -> dict[str, BaseDistribution]:
    d = _optuna().distributions
    out: dict[str, BaseDistribution] = {}
    for name, p in cfg.search_space.items():
        if isinstance(p, ChoiceParam):
            out[name] = d.CategoricalDistribution(p.values)
        elif isinstance(p, FloatParam):
            out[name] = d.FloatDistribution(p.min, p.max, log=p.log)
        else:
            out[name] = d.IntDistribution(p.min, p.max, log=p.log)
    return out


def point_in_space(cfg: ResearchConfig, config: Mapping[str, Any] | None,
                   fixed: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The job's coordinates in the space (baseline for unset keys), or None when it lies outside: a value out of
    range, or a key outside the space whose value differs from `fixed` (the job tested something else)."""
    config, fixed = dict(config or {}), dict(fixed or {})
    if any(config.get(k) != v for k, v in fixed.items()) or set(config) - set(cfg.search_space) - set(fixed):
        return None
    point = {name: config.get(name, cfg.baseline.get(name)) for name in cfg.search_space}
    if any(v is None or param_problem(n, cfg.search_space[n], v) for n, v in point.items()):
        return None
    return point


def warm_trials(cfg: ResearchConfig, rows: Iterable[Mapping[str, Any]], gpu_class: str | None,
                fixed: Mapping[str, Any] | None = None) -> list[optuna.trial.FrozenTrial]:
    dists = distributions(cfg)
    trials = []
    for r in rows:
        value = r.get("primary_value")
        if r.get("status") != JobStatus.SUCCEEDED or value is None or not math.isfinite(value) \
                or (gpu_class is not None and r.get("gpu_class") != gpu_class):
            continue
        point = point_in_space(cfg, r.get("config"), fixed)
        if point is not None:
            trials.append(_optuna().trial.create_trial(params=point, distributions=dists, value=float(value)))
    return trials


def _sampler(kind: str, seed: int, cfg: ResearchConfig, warm: list[optuna.trial.FrozenTrial]
             ) -> optuna.samplers.BaseSampler:
    optuna = _optuna()
    if kind == "tpe":
        # constant_liar: the n trials asked in one wave count as pending, which spreads them apart.
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    numeric = {n: d for n, d in distributions(cfg).items()
               if not isinstance(d, optuna.distributions.CategoricalDistribution)}
    if not numeric:
        raise ValueError("CMA-ES needs float or int parameters in search_space; use sampler='tpe' for choices")
    # Warm-starting CMA-ES (WS-CMA-ES) fits its initial distribution to the best tenth of the history, so it
    # needs ten runs; with fewer it starts from the centre of the space. Choices are drawn at random.
    source = [optuna.trial.create_trial(params={n: t.params[n] for n in numeric}, distributions=numeric,
                                        value=t.value) for t in warm]
    return optuna.samplers.CmaEsSampler(
        seed=seed, source_trials=source if len(source) >= CMA_WARM_START_MIN else None,
        warn_independent_sampling=False, independent_sampler=optuna.samplers.RandomSampler(seed=seed))


def suggest_configs(cfg: ResearchConfig, history_rows: Iterable[Mapping[str, Any]], n: int,
                    sampler: Literal["tpe", "cmaes"] = "tpe", gpu_class: str | None = None,
                    seed: int = 0, fixed: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """n trainer configs inside the search space and its constraints, informed by the history of `gpu_class`.
    `fixed`: settings outside the space that the warm-start runs share and every suggestion carries, e.g.
    {"preset": "cpu-tiny"}."""
    if not cfg.search_space:
        raise ValueError("research.yaml declares no search_space; declare the parameters to explore first")
    if not 1 <= n <= MAX_SUGGESTIONS:
        raise ValueError(f"n must be from 1 to {MAX_SUGGESTIONS} (got {n})")
    if sampler not in ("tpe", "cmaes"):
        raise ValueError(f"sampler must be 'tpe' or 'cmaes' (got {sampler!r})")
    overlap = set(fixed or {}) & set(cfg.search_space)
    if overlap:
        raise ValueError(f"fixed settings {sorted(overlap)} are search-space parameters; fix only keys outside it")
    optuna = _optuna()
    warm = warm_trials(cfg, history_rows, gpu_class, fixed)
    dists = distributions(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(direction=cfg.metric.direction, sampler=_sampler(sampler, seed, cfg, warm))
        study.add_trials(warm)
        out: list[dict[str, Any]] = []
        draws = 0
        while len(out) < n:
            if draws >= n * MAX_DRAWS_PER_SUGGESTION:
                raise ValueError(f"only {len(out)} of {n} draws met research.yaml constraints after {draws} tries; "
                                 "the constraints leave little room in the search space: loosen one of them")
            draws += 1
            trial = study.ask(dists)
            config = {**(fixed or {}), **{name: _tidy(cfg, name, v) for name, v in trial.params.items()}}
            if config_problems(cfg, config):
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                continue
            out.append(config)
    return out


def _tidy(cfg: ResearchConfig, name: str, value: Any) -> Any:
    """Four significant digits for floats (an agent reads them), kept inside the range."""
    p = cfg.search_space[name]
    if not isinstance(p, FloatParam):
        return value
    return min(p.max, max(p.min, float(f"{value:.4g}")))

"""The declared search space and constraint rules applied to one trainer config: what breaks them, and where a
value sits inside its range. Messages name the rule, the limit and a fix, for an agent to act on."""
from __future__ import annotations

import math
from typing import Any, Mapping

from .config import ChoiceParam, Constraint, FloatParam, IntParam, ResearchConfig, baseline_for


Spec = FloatParam | IntParam | ChoiceParam


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else repr(value) if isinstance(value, str) else str(value)


def param_problem(name: str, spec: Spec, value: Any) -> str | None:
    """Why `value` is outside the declared parameter, or None."""
    where = f"research.yaml search_space.{name}"
    if isinstance(spec, ChoiceParam):
        if any(v == value and (type(v) is type(value) or is_number(v) and is_number(value)) for v in spec.values):
            return None
        return (f"{name}={fmt(value)} is not one of the search space's values ({where}.values); "
                f"fix: choose one of {', '.join(fmt(v) for v in spec.values)}")
    if isinstance(spec, IntParam) and not (isinstance(value, int) and not isinstance(value, bool)):
        return f"{name}={fmt(value)} is not an integer ({where} is type int); fix: give a whole number"
    if not is_number(value) or not math.isfinite(value):
        return f"{name}={fmt(value)} is not a finite number ({where} is type {spec.type}); fix: give a number"
    interval = f"[{fmt(spec.min)}, {fmt(spec.max)}]"
    if value < spec.min:
        return (f"{name}={fmt(value)} is below the search space min {fmt(spec.min)} ({where}.min); "
                f"fix: choose a value in {interval}")
    if value > spec.max:
        return (f"{name}={fmt(value)} is above the search space max {fmt(spec.max)} ({where}.max); "
                f"fix: choose a value in {interval}")
    return None


def constraint_problem(index: int, rule: Constraint, config: Mapping[str, Any],
                       baseline: Mapping[str, Any]) -> str | None:
    """Why `config` (with `baseline` for unset keys) breaks rule number `index`, or None."""
    where = f"research.yaml constraints[{index}]"
    values = {k: config.get(k, baseline.get(k)) for k in rule.keys}
    if rule.param is not None and values[rule.param] is None:
        return None   # unset and no baseline: the trainer's default holds
    for key, value in values.items():
        if not is_number(value):
            return f"{key}={fmt(value)} is not a number, which {where} ({rule.label}) needs; fix: give a number"
    total = math.prod(values.values())
    if rule.product is None:
        shown = f"{rule.param}={fmt(total)}"
        fix_what = f"choose {rule.param}"
    else:
        shown = f"{rule.label} = " + " × ".join(f"{k} {fmt(v)}" for k, v in values.items()) + f" = {fmt(total)}"
        fix_what = f"change {' or '.join(rule.keys)} so the product is"
    if rule.min is not None and total < rule.min:
        return f"{shown} is below the limit {fmt(rule.min)} ({where}); fix: {fix_what} >= {fmt(rule.min)}"
    if rule.max is not None and total > rule.max:
        return f"{shown} is above the limit {fmt(rule.max)} ({where}); fix: {fix_what} <= {fmt(rule.max)}"
    return None


def config_problems(cfg: ResearchConfig, config: Mapping[str, Any]) -> list[str]:
    """Everything in a trainer config that the search space or the constraints refuse."""
    problems = []
    baseline = baseline_for(cfg, config.get("preset"))
    for name, value in config.items():
        if name == "preset":
            continue   # a preset names a starting point, not a searched value
        spec = cfg.search_space.get(name)
        if spec is not None:
            problem = param_problem(name, spec, value)
            if problem:
                problems.append(problem)
        elif cfg.undeclared_params == "refuse":
            problems.append(f"{name}={fmt(value)}: {name} is not in the search space and research.yaml "
                            f"undeclared_params is refuse; fix: remove {name}, or declare it under search_space")
    for i, rule in enumerate(cfg.constraints):
        problem = constraint_problem(i, rule, config, baseline)
        if problem:
            problems.append(problem)
    return problems


def position(spec: FloatParam | IntParam, value: float) -> float:
    """Where `value` sits in the range, 0 at min and 1 at max, on the log scale for log parameters."""
    lo, hi, x = float(spec.min), float(spec.max), float(value)
    if spec.log:
        lo, hi, x = math.log(lo), math.log(hi), math.log(max(x, spec.min))
    return (x - lo) / (hi - lo)

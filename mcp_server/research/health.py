"""Search health for the digest: a few one-line warnings about how the campaign explores its space.

- stagnation: no new best within one GPU class in the last `stagnation.window` ended experiments;
- edges: the best run's value of a parameter lies within 5 % of its range's end (on the log scale for log
  parameters), so the optimum may lie outside the declared range;
- unexplored: parameters no job ever set (every run used the baseline), thirds of a numeric range never sampled,
  choices never tried.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

from ..core.vocabulary import JobStatus
from .config import ChoiceParam, FloatParam, IntParam, ResearchConfig, baseline_for
from .space import fmt, is_number, position


EDGE = 0.05
MAX_WARNINGS = 8
THIRDS = ("lower", "middle", "upper")


def _num(job: Mapping[str, Any]) -> int:
    return int(job.get("job_num") or str(job["job_id"]).lstrip("j") or 0)


def _ok(job: Mapping[str, Any]) -> bool:
    v = job.get("primary_value")
    return job.get("status") == JobStatus.SUCCEEDED and v is not None and math.isfinite(v)


def stagnation(cfg: ResearchConfig, jobs: list[Mapping[str, Any]]) -> list[str]:
    window = cfg.stagnation.window
    better = (lambda x, y: x < y) if cfg.metric.lower_is_better else (lambda x, y: x > y)
    out = []
    for cls in sorted({str(j.get("gpu_class")) for j in jobs if _ok(j)}):
        ended = [j for j in jobs if str(j.get("gpu_class")) == cls
                 and j.get("status") in (JobStatus.SUCCEEDED, JobStatus.FAILED)]
        best, since = None, 0
        for j in ended:
            if _ok(j) and (best is None or better(j["primary_value"], best["primary_value"])):
                best, since = j, 0
            else:
                since += 1
        if best is not None and since >= window:
            out.append(f"stagnation on {cls}: no new best in the last {since} experiments (best "
                       f"{cfg.metric.name} {best['primary_value']:.6g} from {best['job_id']}); try a new direction, "
                       f"suggest_configs, or a larger change (stagnation.window {window})")
    return out


def edges(cfg: ResearchConfig, jobs: list[Mapping[str, Any]]) -> list[str]:
    pick = min if cfg.metric.lower_is_better else max
    out = []
    for cls in sorted({str(j.get("gpu_class")) for j in jobs if _ok(j)}):
        best = pick((j for j in jobs if _ok(j) and str(j.get("gpu_class")) == cls),
                    key=lambda j: j["primary_value"])
        config = {**baseline_for(cfg, (best.get("config") or {}).get("preset")), **(best.get("config") or {})}
        for name, spec in cfg.search_space.items():
            value = config.get(name)
            if isinstance(spec, ChoiceParam) or not is_number(value) or not spec.min <= value <= spec.max:
                continue
            pos = position(spec, value)
            if pos <= EDGE or pos >= 1 - EDGE:
                end, key = ("bottom", "min") if pos <= EDGE else ("top", "max")
                out.append(f"edge on {cls}: the best run {best['job_id']} has {name}={fmt(value)} at the {end} of "
                           f"its range [{fmt(spec.min)}, {fmt(spec.max)}]; the optimum may lie beyond: widen "
                           f"search_space.{name}.{key} if that is allowed")
    return out


def _third_bounds(spec: FloatParam | IntParam, i: int) -> str:
    lo, hi = float(spec.min), float(spec.max)
    if spec.log:
        a, b = (math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * k / 3) for k in (i, i + 1))
    else:
        a, b = (lo + (hi - lo) * k / 3 for k in (i, i + 1))
    return f"{a:.3g}–{b:.3g}"


def unexplored(cfg: ResearchConfig, jobs: list[Mapping[str, Any]]) -> list[str]:
    tried = [j for j in jobs if j.get("status") != JobStatus.CANCELLED]
    never, out = [], []
    for name, spec in cfg.search_space.items():
        values = [(j.get("config") or {})[name] for j in tried if name in (j.get("config") or {})]
        if not values:
            never.append(name)
        elif isinstance(spec, ChoiceParam):
            missing = [v for v in spec.values if v not in values]
            if missing:
                out.append(f"unexplored: {name} never tried {', '.join(fmt(v) for v in missing)}")
        else:
            hits = {min(2, int(position(spec, v) * 3)) for v in values if is_number(v) and spec.min <= v <= spec.max}
            gaps = [f"{THIRDS[i]} third ({_third_bounds(spec, i)})" for i in range(3) if i not in hits]
            if gaps:
                out.append(f"unexplored: {name} never sampled in its {' and '.join(gaps)}")
    if never and tried:
        out.insert(0, f"unexplored: never varied from the baseline: {', '.join(never)}")
    return out


def search_health(cfg: ResearchConfig, jobs: Iterable[Mapping[str, Any]]) -> list[str]:
    """Warnings, most pressing first, at most MAX_WARNINGS lines (jobs: rows with job_id, status, gpu_class,
    primary_value, config)."""
    ordered = sorted(jobs, key=_num)
    warnings = stagnation(cfg, ordered) + edges(cfg, ordered) + unexplored(cfg, ordered)
    if len(warnings) > MAX_WARNINGS:
        warnings = warnings[:MAX_WARNINGS - 1] + [f"... and {len(warnings) - MAX_WARNINGS + 1} more"]
    return warnings

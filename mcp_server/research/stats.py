"""Is a difference in the primary metric real? Noise floors and significance, within one GPU class.

Results from different GPU classes are never compared (an H200 fits more steps into a fixed budget than an H100):
such a comparison comes back flagged, without a difference. Within a class, Welch's t-test answers when both sides
have at least two runs; otherwise the difference is held against the class's noise floor, measured by
`measure_noise` (the baseline run with several seeds, jobs tagged `noise`): with σ the pooled standard deviation of
those seeds, a difference must exceed z(1 - α/2) · σ · √(1/n_a + 1/n_b) to count (a z-test with σ known).
"""
from __future__ import annotations

import json
import math
from statistics import NormalDist, fmean
from typing import Any, Iterable, Literal, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from ..core.vocabulary import JobStatus


NOISE_TAG = "noise"


class NoiseFloor(BaseModel):
    gpu_class: str
    sigma: float          # pooled standard deviation of the primary metric across seeds of one config
    runs: int             # noise runs it rests on
    groups: int           # distinct (code, config) baselines among them


class Comparison(BaseModel):
    """b against a: `diff` = mean(b) - mean(a); `better` says whether b improves on a in the metric's direction.
    `summary` is the statement a verdict quotes: the GPU class, the runs on each side, the difference and whether it
    clears the noise."""
    summary: str
    comparable: bool
    gpu_class: str | None = None        # None when the two sides ran on different classes
    gpu_class_a: str | None = None
    gpu_class_b: str | None = None
    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    diff: float | None = None
    better: bool | None = None
    test: Literal["welch", "noise_floor", "none"] = "none"
    p_value: float | None = None
    noise_floor: float | None = None    # the |diff| a noise-floor comparison had to exceed
    significant: bool | None = None
    next: str | None = None


class Sides(BaseModel):
    """Two groups of runs to compare: `a` the reference (e.g. the baseline's seeds), `b` the candidate."""
    model_config = ConfigDict(extra="forbid")
    a: list[str] = Field(min_length=1, max_length=200, description="reference job ids, e.g. the baseline's seeds")
    b: list[str] = Field(min_length=1, max_length=200, description="candidate job ids")


def _finite(values: Iterable[float], side: str) -> list[float]:
    out = [float(v) for v in values]
    if not out:
        raise ValueError(f"side {side} has no runs to compare")
    bad = [v for v in out if not math.isfinite(v)]
    if bad:
        raise ValueError(f"side {side} holds non-finite values {bad[:3]}; compare only runs that produced the metric")
    return out


def compare(a: Sequence[float], b: Sequence[float], gpu_class_a: str | None, gpu_class_b: str | None,
            direction: str = "minimize", noise_sigma: float | None = None, alpha: float = 0.05) -> Comparison:
    """Compare candidate runs `b` with reference runs `a` (primary-metric values) on their GPU classes."""
    a, b = _finite(a, "a"), _finite(b, "b")
    base = dict(gpu_class_a=gpu_class_a, gpu_class_b=gpu_class_b, n_a=len(a), n_b=len(b),
                mean_a=fmean(a), mean_b=fmean(b))
    if gpu_class_a != gpu_class_b:
        return Comparison(summary=f"cross-class: {gpu_class_a} vs {gpu_class_b} — not comparable; rerun one side "
                          "on the other's class (requirements.same_class_as)", comparable=False, gpu_class=None, **base)
    cls = gpu_class_a
    diff = base["mean_b"] - base["mean_a"]
    better = diff < 0 if direction == "minimize" else diff > 0
    runs = f"{len(a)} vs {len(b)} runs on {cls}"
    way = "better" if better else "worse"
    if len(a) >= 2 and len(b) >= 2:
        p = _welch_p(a, b)
        significant = p < alpha
        verdict = (f"{'significant' if significant else 'not significant'} (p={p:.3g}, Welch, {runs}): "
                   f"b is {way} by {abs(diff):.6g}" if diff else f"no difference (p=1, Welch, {runs})")
        return Comparison(summary=verdict, comparable=True, gpu_class=cls, diff=diff, better=better if diff else None,
                          test="welch", p_value=p, significant=significant and diff != 0, **base)
    if noise_sigma is None:
        return Comparison(summary=f"unknown: {runs}, too few for a t-test, and no noise floor measured on {cls} "
                          "(run measure_noise, or add seeds to both sides)", comparable=True, gpu_class=cls,
                          diff=diff, better=better if diff else None, **base)
    floor = NormalDist().inv_cdf(1 - alpha / 2) * noise_sigma * math.sqrt(1 / len(a) + 1 / len(b))
    significant = abs(diff) > floor
    verdict = (f"beyond noise (|Δ|={abs(diff):.6g} > floor {floor:.6g}, {runs}): b is {way}" if significant else
               f"within noise (|Δ|={abs(diff):.6g} <= floor {floor:.6g}, {runs})")
    return Comparison(summary=verdict, comparable=True, gpu_class=cls, diff=diff, better=better if diff else None,
                      test="noise_floor", noise_floor=floor, significant=significant, **base)


def _welch_p(a: list[float], b: list[float]) -> float:
    if min(a) == max(a) and min(b) == max(b):   # no spread on either side (deterministic CPU runs): means decide
        return 1.0 if a[0] == b[0] else 0.0
    from scipy import stats as scipy_stats  # here, not at the top: the daemon's start-up need not pay for scipy

    return float(scipy_stats.ttest_ind(a, b, equal_var=False).pvalue)


def compare_jobs(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]], direction: str = "minimize",
                 floors: Mapping[str, NoiseFloor] | None = None, alpha: float = 0.05) -> Comparison:
    """`compare` on job rows (gpu_class, primary_value); a side mixing GPU classes is not comparable."""
    sides = []
    for name, rows in (("a", a), ("b", b)):
        classes = sorted({str(r.get("gpu_class")) for r in rows})
        if len(classes) > 1:
            raise ValueError(f"side {name} mixes GPU classes {', '.join(classes)}: compare within one class")
        values = [r["primary_value"] for r in rows if r.get("primary_value") is not None]
        sides.append((values, rows[0].get("gpu_class") if rows else None))
    (va, ca), (vb, cb) = sides
    floor = (floors or {}).get(ca) if ca == cb else None
    return compare(va, vb, ca, cb, direction, floor.sigma if floor else None, alpha)


def noise_floors(rows: Iterable[Mapping[str, Any]], tag: str = NOISE_TAG) -> dict[str, NoiseFloor]:
    """Per GPU class, the pooled seed-to-seed standard deviation of succeeded jobs tagged `tag`; jobs with the same
    code and config form one group (measure_noise may have run several baselines)."""
    groups: dict[tuple[str, str, str], list[float]] = {}
    for r in rows:
        value = r.get("primary_value")
        if tag not in (r.get("tags") or []) or r.get("status") != JobStatus.SUCCEEDED or value is None \
                or not math.isfinite(value) or not r.get("gpu_class"):
            continue
        key = (r["gpu_class"], str(r.get("code_hash")), json.dumps(r.get("config") or {}, sort_keys=True))
        groups.setdefault(key, []).append(float(value))
    pooled: dict[str, list[list[float]]] = {}
    for (cls, _, _), values in groups.items():
        if len(values) >= 2:
            pooled.setdefault(cls, []).append(values)
    floors = {}
    for cls, sets in pooled.items():
        dof = sum(len(s) - 1 for s in sets)
        ss = sum(sum((v - fmean(s)) ** 2 for v in s) for s in sets)
        floors[cls] = NoiseFloor(gpu_class=cls, sigma=math.sqrt(ss / dof), runs=sum(map(len, sets)),
                                 groups=len(sets))
    return floors

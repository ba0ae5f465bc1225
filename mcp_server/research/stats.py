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
from statistics import NormalDist, fmean, variance
from typing import Any, Iterable, Literal, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from ..core.vocabulary import JobStatus


NOISE_TAG = "noise"


class NoiseFloor(BaseModel):
    model_config = ConfigDict(defer_build=True)
    gpu_class: str
    sigma: float          # pooled standard deviation of the primary metric across seeds of one config
    runs: int             # noise runs it rests on
    groups: int           # distinct (code, config) baselines among them


class Comparison(BaseModel):
    model_config = ConfigDict(defer_build=True)
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
    detectable: float | None = None     # the smallest |diff| these runs could tell from noise (None: unknown)
    confounds: list[str] = Field(default_factory=list, description="why the two sides may differ for other reasons")
    next: str | None = None


class Sides(BaseModel):
    """Two groups of runs to compare: `a` the reference (e.g. the baseline's seeds), `b` the candidate."""
    model_config = ConfigDict(defer_build=True, extra="forbid")
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
        detectable = NormalDist().inv_cdf(1 - alpha / 2) * math.sqrt(variance(a) / len(a) + variance(b) / len(b))
        significant = p < alpha
        verdict = (f"{'significant' if significant else 'not significant'} (p={p:.3g}, Welch, {runs}): "
                   f"b is {way} by {abs(diff):.6g}" if diff else f"no difference (p=1, Welch, {runs})")
        return Comparison(summary=verdict, comparable=True, gpu_class=cls, diff=diff, better=better if diff else None,
                          test="welch", p_value=p, significant=significant and diff != 0, detectable=detectable,
                          **base)
    if noise_sigma is None:
        return Comparison(summary=f"unknown: {runs}, too few for a t-test, and no noise floor measured on {cls} "
                          "(run measure_noise, or add seeds to both sides)", comparable=True, gpu_class=cls,
                          diff=diff, better=better if diff else None, **base)
    floor = NormalDist().inv_cdf(1 - alpha / 2) * noise_sigma * math.sqrt(1 / len(a) + 1 / len(b))
    significant = abs(diff) > floor
    verdict = (f"beyond noise (|Δ|={abs(diff):.6g} > floor {floor:.6g}, {runs}): b is {way}" if significant else
               f"within noise (|Δ|={abs(diff):.6g} <= floor {floor:.6g}, {runs})")
    return Comparison(summary=verdict, comparable=True, gpu_class=cls, diff=diff, better=better if diff else None,
                      test="noise_floor", noise_floor=floor, significant=significant, detectable=floor, **base)


def _welch_p(a: list[float], b: list[float]) -> float:
    if min(a) == max(a) and min(b) == max(b):   # no spread on either side (deterministic CPU runs): means decide
        return 1.0 if a[0] == b[0] else 0.0
    from scipy import stats as scipy_stats  # here, not at the top: the daemon's start-up need not pay for scipy

    return float(scipy_stats.ttest_ind(a, b, equal_var=False).pvalue)


def compare_jobs(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]], direction: str = "minimize",
                 floors: Mapping[str, NoiseFloor] | None = None, alpha: float = 0.05,
                 slow: Mapping[str, str] | None = None) -> Comparison:
    """`compare` on job rows (gpu_class, primary_value); a side mixing GPU classes is not comparable. The answer
    names what else differs between the sides (`confounds`, with `slow`: throughput outliers by job id)."""
    sides = []
    for name, rows in (("a", a), ("b", b)):
        classes = sorted({str(r.get("gpu_class")) for r in rows})
        if len(classes) > 1:
            raise ValueError(f"side {name} mixes GPU classes {', '.join(classes)}: compare within one class")
        values = [r["primary_value"] for r in rows if r.get("primary_value") is not None]
        sides.append((values, rows[0].get("gpu_class") if rows else None))
    (va, ca), (vb, cb) = sides
    floor = (floors or {}).get(ca) if ca == cb else None
    result = compare(va, vb, ca, cb, direction, floor.sigma if floor else None, alpha)
    result.confounds = confounds(a, b, slow or {})
    if result.confounds:
        result.summary += "; CONFOUNDED: " + "; ".join(result.confounds)
    return result


def _preset(row: Mapping[str, Any]) -> Any:
    config = row.get("config")
    config = json.loads(config) if isinstance(config, str) else config
    return (config or {}).get("preset")


# What must match across the two sides of a comparison, else a difference may be theirs and not the change's.
_SAME = (("time budget", lambda r: r.get("time_budget_s")), ("data hash", lambda r: (r.get("data_hash") or "")[:12]),
         ("preset", _preset))


def confounds(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]],
              slow: Mapping[str, str]) -> list[str]:
    """Why a difference between runs `a` and `b` may not be the change's: another time budget, dataset or preset
    across the sides, or runs whose throughput was off their class's median (`slow`: job id -> what was off)."""
    out = []
    for name, value in _SAME:
        va, vb = sorted({str(value(r)) for r in a}), sorted({str(value(r)) for r in b})
        if va != vb:
            out.append(f"{name} differs ({', '.join(va)} vs {', '.join(vb)})")
    off = [f"{r['job_id']} {slow[r['job_id']]}" for r in [*a, *b] if r.get("job_id") in slow]
    if off:
        out.append("throughput outlier(s): " + ", ".join(off[:6]))
    return out


def throughput(row: Mapping[str, Any]) -> float | None:
    """A run's training speed from its final summary: tokens per second where it says, else steps per second."""
    summary = row.get("summary")
    summary = json.loads(summary) if isinstance(summary, str) else summary or {}
    seconds = summary.get("training_seconds")
    work = summary.get("total_tokens_M", summary.get("num_steps"))
    if not isinstance(seconds, (int, float)) or not isinstance(work, (int, float)) or seconds <= 0:
        return None
    return float(work) / float(seconds)


def _step_budgeted(row: Mapping[str, Any]) -> bool:
    """A trainer run bounded by a step count (config `max_steps`) rather than by its time budget."""
    config = row.get("config")
    config = json.loads(config) if isinstance(config, str) else config or {}
    steps = config.get("max_steps") if isinstance(config, dict) else None
    return isinstance(steps, (int, float)) and steps > 0


def throughput_outliers(rows: Iterable[Mapping[str, Any]], share: float) -> dict[str, str]:
    """Within each GPU class (and preset, whose models differ in size), the succeeded runs whose throughput is off
    the median by more than `share` either way (0.3: faster than 1.3x or slower than 1/1.3 of it): a throttled or
    shared GPU, or a loaded host. Job id -> what was off."""
    groups: dict[tuple[str, str], list[tuple[str, float]]] = {}
    for r in rows:
        if _step_budgeted(r):   # it trained its fixed steps however fast it ran: speed cannot move its metric
            continue
        speed = throughput(r) if r.get("status") == JobStatus.SUCCEEDED else None
        if speed is not None:
            groups.setdefault((str(r.get("gpu_class")), str(_preset(r))), []).append((r["job_id"], speed))
    out = {}
    for (cls, _), runs in groups.items():
        if len(runs) < 3:       # a median of two is their mean: either could be the odd one
            continue
        speeds = sorted(v for _, v in runs)
        median = speeds[len(speeds) // 2] if len(speeds) % 2 else fmean(speeds[len(speeds) // 2 - 1:][:2])
        for job_id, v in runs:
            # Symmetric: a run at a third of the median is as far off as one at three times it.
            if median > 0 and v > 0 and max(v / median, median / v) - 1 > share:
                out[job_id] = f"ran at {v / median:.0%} of {cls}'s median throughput"
    return out


def judge(c: Comparison, claim: Literal["supported", "refuted", "keep"], min_runs: int,
          expected_effect: float | None = None) -> str | None:
    """None when comparison `c` (candidate b against reference a) carries the claim; else why not, with what would
    settle it. `supported` and `keep`: b is better beyond the noise, with `min_runs` runs a side and no confound.
    `refuted`: b is worse beyond the noise, or the runs could have detected `expected_effect` (|new - old|) and
    did not see it."""
    if not c.comparable:
        return f"the sides are not comparable ({c.summary})"
    if c.confounds:
        return "confounded: " + "; ".join(c.confounds) + " (rerun one side to match the other)"
    short = [f"{side} has {n}" for side, n in (("a", c.n_a), ("b", c.n_b)) if n < min_runs]
    if short:
        return (f"too few runs: {' and '.join(short)} of the {min_runs} per side research.yaml asks for "
                f"(noise.runs_per_side); rerun_job with seeds for {max(min_runs - min(c.n_a, c.n_b), 1)} more "
                "run(s) on the short side")
    if claim in ("supported", "keep"):
        if c.significant and c.better:
            return None
        return (f"b is {'not better' if not c.better else 'better only'} within the noise ({c.summary}); "
                + _settle(c))
    if c.significant and c.better is False:
        return None
    if expected_effect is not None and c.detectable is not None and c.detectable < abs(expected_effect) \
            and not (c.significant and c.better):
        return None
    return (f"not worse beyond the noise ({c.summary})"
            + ("" if expected_effect is not None else ", and no expected_effect was given to show the runs could "
               "have seen it") + "; " + _settle(c))


def _settle(c: Comparison) -> str:
    """How many more seeds per side would let an effect the size of this one clear the noise."""
    if c.diff is None or c.detectable is None or not c.diff:
        return "more seeds per side (rerun_job with seeds) or measure_noise would settle it"
    n = min(c.n_a, c.n_b)
    needed = math.ceil(n * (c.detectable / abs(c.diff)) ** 2)
    if needed > 64:
        return (f"an effect this small ({abs(c.diff):.3g}) would need over 64 runs per side: treat it as no effect "
                "worth keeping")
    return (f"about {max(needed - n, 1)} more seed(s) per side (rerun_job with seeds) would show whether "
            f"a difference of {abs(c.diff):.3g} is real")


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

"""Noise floors and significance on constructed histories with known answers."""
import math

import numpy as np
import pytest

from mcp_server.history import History
from mcp_server.research.stats import compare, compare_jobs, noise_floors


def test_identical_distributions_are_not_significant_at_the_stated_rate():
    rng = np.random.default_rng(0)
    verdicts = [compare(rng.normal(1.0, 0.001, 4), rng.normal(1.0, 0.001, 4), "H100", "H100")
                for _ in range(400)]
    assert all(v.test == "welch" and v.comparable for v in verdicts)
    false_positives = sum(v.significant for v in verdicts) / len(verdicts)
    assert 0.01 <= false_positives <= 0.10          # alpha = 0.05


def test_a_large_shift_is_significant_and_direction_aware():
    rng = np.random.default_rng(1)
    a, b = rng.normal(1.000, 0.001, 3), rng.normal(0.990, 0.001, 3)
    lower = compare(a, b, "H100", "H100")
    assert lower.significant and lower.better and lower.p_value < 0.01 and lower.diff == pytest.approx(
        np.mean(b) - np.mean(a))
    assert lower.summary.startswith(f"significant (p={lower.p_value:.3g}, Welch, 3 vs 3 runs on H100): "
                                    f"b is better by ")
    higher = compare(a, b, "H100", "H100", direction="maximize")
    assert higher.significant and higher.better is False and "b is worse by" in higher.summary


def test_single_runs_are_held_against_the_noise_floor():
    # The public run's figures: the same H100 code gave 0.997900 and 0.997591 with different seeds.
    sigma = 0.0003
    within = compare([0.997900], [0.997591], "H100", "H100", noise_sigma=sigma)
    floor = 1.959964 * sigma * math.sqrt(2)
    assert within.test == "noise_floor" and within.p_value is None and not within.significant
    assert within.noise_floor == pytest.approx(floor, rel=1e-5)
    assert within.summary == f"within noise (|Δ|=0.000309 <= floor {floor:.6g}, 1 vs 1 runs on H100)"
    beyond = compare([0.9979, 0.9981, 0.9980, 0.9978], [0.9950], "H100", "H100", noise_sigma=sigma)
    assert beyond.significant and beyond.better
    assert beyond.summary.startswith("beyond noise (|Δ|=0.00295 > floor") and beyond.summary.endswith(
        "4 vs 1 runs on H100): b is better")


def test_without_a_floor_a_single_run_gives_no_verdict():
    result = compare([1.0], [0.99, 0.98], "H200", "H200")
    assert result.significant is None and result.test == "none" and result.diff == pytest.approx(-0.015)
    assert result.summary.startswith("unknown: 1 vs 2 runs on H200, too few for a t-test, and no noise floor")


def test_cross_class_is_flagged_never_a_silent_number():
    result = compare([0.998, 0.997], [0.992, 0.993], "H100", "H200")
    assert not result.comparable and result.diff is None and result.significant is None
    assert result.p_value is None and result.gpu_class is None
    assert result.summary.startswith("cross-class: H100 vs H200 — not comparable")


def test_no_spread_on_either_side():
    assert compare([1.0, 1.0], [1.0, 1.0], "cpu", "cpu").summary == "no difference (p=1, Welch, 2 vs 2 runs on cpu)"
    deterministic = compare([1.0, 1.0], [0.9, 0.9], "cpu", "cpu")
    assert deterministic.significant and deterministic.p_value == 0.0


def test_bad_samples_are_refused():
    with pytest.raises(ValueError, match="side a has no runs"):
        compare([], [1.0], "H100", "H100")
    with pytest.raises(ValueError, match="side b holds non-finite values"):
        compare([1.0], [float("nan")], "H100", "H100")


def noise_row(job_id, value, cls="H100", config=None, tags=("noise",), status="succeeded", code="c1"):
    return {"job_id": job_id, "primary_value": value, "gpu_class": cls, "config": config or {}, "tags": list(tags),
            "status": status, "code_hash": code}


def test_noise_floor_pools_groups_within_a_class():
    rows = [noise_row("j1", 1.0), noise_row("j2", 1.2), noise_row("j3", 1.1),
            noise_row("j4", 2.0, config={"depth": 10}), noise_row("j5", 2.2, config={"depth": 10}),
            noise_row("j6", 5.0, tags=()),                       # not a noise run
            noise_row("j7", 9.0, status="failed"),
            noise_row("j8", 0.5, cls="H200"), noise_row("j9", 0.6, cls="H200"),
            noise_row("j10", 0.7, cls="A100")]                   # one seed: no floor
    floors = noise_floors(rows)
    assert set(floors) == {"H100", "H200"}
    # pooled variance: (0.02 + 0.02) / (2 + 1)
    assert floors["H100"].sigma == pytest.approx(math.sqrt(0.04 / 3)) and floors["H100"].runs == 5
    assert floors["H100"].groups == 2
    assert floors["H200"].sigma == pytest.approx(np.std([0.5, 0.6], ddof=1))


def test_compare_jobs_on_real_history_rows(tmp_path):
    with History(tmp_path / "h.duckdb") as h:
        ids = h.insert_jobs([{"kind": "trainer", "status": "succeeded", "gpu_class": cls, "primary_value": v,
                              "tags": tags, "config": cfg, "code_hash": "abc"}
                             for cls, v, tags, cfg in [
                                 ("H100", 0.9979, ["noise"], {}), ("H100", 0.9976, ["noise"], {}),
                                 ("H100", 0.9981, ["noise"], {}), ("H100", 0.9950, [], {"matrix_lr": 0.03}),
                                 ("H200", 0.9930, [], {"matrix_lr": 0.03})]])
        rows = {r["job_id"]: r for r in h.jobs(limit=100)}
    floors = noise_floors(rows.values())
    base = [rows[j] for j in ids[:3]]
    result = compare_jobs(base, [rows[ids[3]]], floors=floors)
    assert result.test == "noise_floor" and result.significant and result.better and result.gpu_class == "H100"
    assert compare_jobs(base, [rows[ids[4]]], floors=floors).comparable is False
    with pytest.raises(ValueError, match="side b mixes GPU classes H100, H200"):
        compare_jobs(base, [rows[ids[3]], rows[ids[4]]])


def test_a_step_budgeted_run_is_never_a_throughput_outlier():
    """With a fixed step count a slowed run trains the same steps and scores the same: its speed is no confound.
    With a time budget, speed decides how far it trains."""
    from mcp_server.research.stats import throughput_outliers

    def run(job_id: str, seconds: float, config: dict) -> dict:
        return {"job_id": job_id, "status": "succeeded", "gpu_class": "cpu", "config": config,
                "summary": {"training_seconds": seconds, "num_steps": 40}}

    timed = [run("j1", 10, {}), run("j2", 10, {}), run("j3", 40, {})]
    assert set(throughput_outliers(timed, 0.3)) == {"j3"}
    stepped = [run(r["job_id"], r["summary"]["training_seconds"], {"max_steps": 40}) for r in timed]
    assert throughput_outliers(stepped, 0.3) == {}

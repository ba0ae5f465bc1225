"""suggest_configs: inside the space and its constraints, deterministic, and drawn toward the history's optimum."""
import math
import random
import statistics

import pytest

from mcp_server.history import History
from mcp_server.research.config import parse_research
from mcp_server.research.space import config_problems
from mcp_server.research.suggest import point_in_space, suggest_configs, warm_trials

SPACE = {
    "matrix_lr": {"type": "float", "min": 0.001, "max": 0.3, "log": True},
    "depth": {"type": "int", "min": 2, "max": 16},
    "window_pattern": {"type": "choice", "values": ["SSSL", "L"]},
}
CFG = parse_research({"search_space": SPACE, "baseline": {"window_pattern": "SSSL"}})


def campaign(optimum_lr: float, n: int = 40, seed: int = 1, gpu_class: str = "H100") -> list[dict]:
    """A history of random experiments whose val_bpb is best at matrix_lr = optimum_lr and depth 10."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        lr = math.exp(rng.uniform(math.log(0.001), math.log(0.3)))
        depth = rng.randint(2, 16)
        value = 1.0 + (math.log10(lr / optimum_lr)) ** 2 + 0.01 * (depth - 10) ** 2 + rng.gauss(0, 0.01)
        rows.append({"job_id": f"j{i + 1}", "status": "succeeded", "gpu_class": gpu_class, "primary_value": value,
                     "config": {"matrix_lr": lr, "depth": depth}})
    return rows


def log_distance(configs, optimum_lr):
    return statistics.fmean(abs(math.log10(c["matrix_lr"] / optimum_lr)) for c in configs)


@pytest.mark.parametrize("sampler", ["tpe", "cmaes"])
def test_a_clear_optimum_draws_suggestions_toward_it(sampler):
    for optimum in (0.003, 0.08):
        history = campaign(optimum)
        suggestions = [c for seed in range(4)
                       for c in suggest_configs(CFG, history, 8, sampler=sampler, gpu_class="H100", seed=seed)]
        cold = [c for seed in range(4) for c in suggest_configs(CFG, [], 8, sampler=sampler, seed=seed)]
        assert log_distance(suggestions, optimum) < 0.6 * log_distance([r["config"] for r in history], optimum)
        assert log_distance(suggestions, optimum) < 0.6 * log_distance(cold, optimum)
    low = statistics.median(c["matrix_lr"] for c in suggest_configs(CFG, campaign(0.003), 10, sampler=sampler,
                                                                     gpu_class="H100"))
    high = statistics.median(c["matrix_lr"] for c in suggest_configs(CFG, campaign(0.08), 10, sampler=sampler,
                                                                      gpu_class="H100"))
    assert low < 0.01 < 0.03 < high


def test_only_the_asked_gpu_class_informs_the_suggestions():
    mixed = campaign(0.003, gpu_class="H100") + campaign(0.2, seed=2, gpu_class="H200")
    h100 = suggest_configs(CFG, mixed, 10, gpu_class="H100")
    h200 = suggest_configs(CFG, mixed, 10, gpu_class="H200")
    assert log_distance(h100, 0.003) < log_distance(h200, 0.003)
    assert log_distance(h200, 0.2) < log_distance(h100, 0.2)


def test_suggestions_stay_inside_space_and_constraints():
    cfg = parse_research({"search_space": SPACE, "baseline": {"seq_len": 512, "depth": 8},
                          "constraints": [{"product": ["depth", "seq_len"], "max": 4096}]})  # depth <= 8
    for sampler in ("tpe", "cmaes"):
        configs = suggest_configs(cfg, campaign(0.02), 30, sampler=sampler, gpu_class="H100", seed=3)
        assert len(configs) == 30
        for c in configs:
            assert config_problems(cfg, c) == [] and set(c) == set(SPACE)
            assert isinstance(c["depth"], int) and c["depth"] <= 8 and c["window_pattern"] in ("SSSL", "L")


def test_deterministic_given_a_seed():
    history = campaign(0.02)
    assert suggest_configs(CFG, history, 5, seed=7) == suggest_configs(CFG, history, 5, seed=7)
    assert suggest_configs(CFG, history, 5, seed=7) != suggest_configs(CFG, history, 5, seed=8)
    assert suggest_configs(CFG, history, 5, sampler="cmaes", seed=7) == \
        suggest_configs(CFG, history, 5, sampler="cmaes", seed=7)


def test_warm_start_takes_only_finished_runs_that_lie_in_the_space(tmp_path):
    rows = [
        {"status": "succeeded", "gpu_class": "H100", "primary_value": 1.0, "config": {"matrix_lr": 0.01}},
        {"status": "succeeded", "gpu_class": "H100", "primary_value": 1.1,
         "config": {"matrix_lr": 0.01, "compile": False}},                             # another experiment
        {"status": "succeeded", "gpu_class": "H100", "primary_value": 1.2, "config": {"matrix_lr": 5.0}},
        {"status": "failed", "gpu_class": "H100", "primary_value": None, "config": {"matrix_lr": 0.02}},
        {"status": "succeeded", "gpu_class": "H200", "primary_value": 0.9, "config": {"matrix_lr": 0.02}},
        {"status": "succeeded", "gpu_class": "H100", "primary_value": float("nan"), "config": {}},
    ]
    cfg = parse_research({"search_space": SPACE, "baseline": {"depth": 8, "window_pattern": "L"}})
    trials = warm_trials(cfg, rows, "H100")
    assert [(t.params, t.value) for t in trials] == [
        ({"matrix_lr": 0.01, "depth": 8, "window_pattern": "L"}, 1.0)]
    assert point_in_space(CFG, {"matrix_lr": 0.01}) is None     # depth has no baseline: not a point
    with History(tmp_path / "h.duckdb") as h:
        h.insert_jobs([{"kind": "trainer", **{k: v for k, v in r.items()}} for r in rows])
        assert len(warm_trials(cfg, h.jobs(limit=100), "H100")) == 1


def test_refusals():
    with pytest.raises(ValueError, match="declares no search_space"):
        suggest_configs(parse_research({}), [], 3)
    with pytest.raises(ValueError, match="n must be from 1 to 50"):
        suggest_configs(CFG, [], 0)
    with pytest.raises(ValueError, match="sampler must be 'tpe' or 'cmaes'"):
        suggest_configs(CFG, [], 2, sampler="random")
    with pytest.raises(ValueError, match="CMA-ES needs float or int parameters"):
        suggest_configs(parse_research({"search_space": {"w": {"type": "choice", "values": ["a", "b"]}}}), [], 2,
                        sampler="cmaes")
    tight = parse_research({"search_space": SPACE, "constraints": [{"param": "depth", "min": 16},
                                                                   {"param": "matrix_lr", "max": 0.0011}]})
    with pytest.raises(ValueError, match="draws met research.yaml constraints"):
        suggest_configs(tight, [], 3)


def test_fixed_settings_outside_the_space():
    history = campaign(0.003)
    for r in history[:30]:
        r["config"]["preset"] = "cpu-tiny"
    configs = suggest_configs(CFG, history, 4, gpu_class="H100", fixed={"preset": "cpu-tiny"})
    assert all(c["preset"] == "cpu-tiny" and config_problems(CFG, c) == [] for c in configs)
    assert len(warm_trials(CFG, history, "H100", {"preset": "cpu-tiny"})) == 30
    assert len(warm_trials(CFG, history, "H100")) == 10          # the runs without a preset
    with pytest.raises(ValueError, match=r"fixed settings \['depth'\] are search-space parameters"):
        suggest_configs(CFG, history, 2, fixed={"depth": 4})

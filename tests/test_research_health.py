"""Search health warnings and hang detection on constructed campaigns."""
from mcp_server.history import History
from mcp_server.research.config import parse_research
from mcp_server.research.hangs import hang_reason
from mcp_server.research.health import MAX_WARNINGS, search_health

CFG = parse_research({
    "search_space": {
        "matrix_lr": {"type": "float", "min": 0.001, "max": 0.1, "log": True},
        "depth": {"type": "int", "min": 4, "max": 13},
        "warmdown_ratio": {"type": "float", "min": 0.1, "max": 0.9},
        "window_pattern": {"type": "choice", "values": ["SSSL", "SL", "L"]},
    },
    "baseline": {"matrix_lr": 0.01, "depth": 8, "warmdown_ratio": 0.5, "window_pattern": "SSSL"},
    "stagnation": {"window": 5},
})


def job(n, value, config=None, cls="H100", status="succeeded"):
    return {"job_id": f"j{n}", "status": status, "gpu_class": cls, "primary_value": value, "config": config or {}}


def test_stagnation_per_gpu_class():
    jobs = [job(1, 1.00), job(2, 0.98)] + [job(n, 0.99) for n in range(3, 7)] + [job(7, None, status="failed")]
    jobs += [job(10, 0.95, cls="H200"), job(11, 0.94, cls="H200")]
    warnings = [w for w in search_health(CFG, jobs) if w.startswith("stagnation")]
    assert warnings == ["stagnation on H100: no new best in the last 5 experiments (best val_bpb 0.98 from j2); "
                        "try a new direction, suggest_configs, or a larger change (stagnation.window 5)"]
    improving = [job(1, 1.0)] + [job(n, 1.0 - n / 100) for n in range(2, 9)]
    assert not [w for w in search_health(CFG, improving) if w.startswith("stagnation")]


def test_stagnation_respects_direction():
    cfg = parse_research({"metric": {"name": "accuracy", "direction": "maximize"}, "stagnation": {"window": 3}})
    rising = [job(n, n / 10) for n in range(1, 8)]
    assert not [w for w in search_health(cfg, rising) if w.startswith("stagnation")]
    falling = [job(n, 1 - n / 10) for n in range(1, 8)]
    assert "no new best in the last 6 experiments (best accuracy 0.9 from j1)" in search_health(cfg, falling)[0]


def test_best_on_the_edge_of_its_range_is_log_aware():
    # matrix_lr 0.09 sits at 97.7 % of its log range: an edge.
    jobs = [job(1, 1.0, {"matrix_lr": 0.01}), job(2, 0.9, {"matrix_lr": 0.09, "depth": 4, "warmdown_ratio": 0.5})]
    edges = [w for w in search_health(CFG, jobs) if w.startswith("edge")]
    assert edges == [
        "edge on H100: the best run j2 has matrix_lr=0.09 at the top of its range [0.001, 0.1]; the optimum may lie "
        "beyond: widen search_space.matrix_lr.max if that is allowed",
        "edge on H100: the best run j2 has depth=4 at the bottom of its range [4, 13]; the optimum may lie beyond: "
        "widen search_space.depth.min if that is allowed"]
    middle = [job(1, 1.0, {"matrix_lr": 0.0015})]    # 8.8 % up the log range (0.5 % of the linear one)
    assert not [w for w in search_health(CFG, middle) if w.startswith("edge on H100: the best run j1 has matrix_lr")]


def test_unexplored_parameters_thirds_and_choices():
    jobs = [job(1, 1.0, {"matrix_lr": 0.002}), job(2, 0.9, {"matrix_lr": 0.003, "window_pattern": "SL"}),
            job(3, None, {"depth": 12}, status="cancelled")]
    warnings = [w for w in search_health(CFG, jobs) if w.startswith("unexplored")]
    assert warnings == [
        "unexplored: never varied from the baseline: depth, warmdown_ratio",
        "unexplored: matrix_lr never sampled in its middle third (0.00464–0.0215) and upper third (0.0215–0.1)",
        "unexplored: window_pattern never tried 'SSSL', 'L'"]


def test_warnings_are_bounded_and_read_real_rows(tmp_path):
    cfg = parse_research({"search_space": {f"p{i}": {"type": "float", "min": 0, "max": 1} for i in range(12)},
                          "stagnation": {"window": 2}})
    with History(tmp_path / "h.duckdb") as h:
        h.insert_jobs([{"kind": "trainer", "status": "succeeded", "gpu_class": "H100", "primary_value": 1.0,
                        "config": {f"p{i}": 0.01 for i in range(12)}} for _ in range(4)])
        rows = h.jobs(limit=100)
    warnings = search_health(cfg, rows)
    assert len(warnings) == MAX_WARNINGS and warnings[-1].startswith("... and ")
    assert warnings[0].startswith("stagnation on H100: no new best in the last 3 experiments (best val_bpb 1 from j1)")
    assert search_health(cfg, []) == []


def test_hangs():
    cfg = parse_research({"hangs": {"silent_after_s": 600, "kill": True}})
    assert hang_reason(cfg, 599, [0.0]) is None
    assert hang_reason(cfg, 900, [0.0, 87.0]) is None          # silent but computing: a long evaluation
    assert hang_reason(cfg, 900, [0.0, 1.0]) == ("hung: no output for 900 s (research.yaml hangs.silent_after_s 600) "
                                                 "and its GPUs at 1 % utilization; cancelled (hangs.kill)")
    assert hang_reason(cfg, 900, [None]).endswith("and GPU utilization unknown; cancelled (hangs.kill)")
    assert hang_reason(parse_research({}), 10**6, [0.0]) is None
    assert hang_reason(parse_research({"hangs": {"silent_after_s": 60}}), 61, []).endswith(
        "flagged only (hangs.kill is false)")

"""Leaderboard, digest, plots and hypotheses over a real DuckDB history with constructed runs."""
from __future__ import annotations

import datetime as dt

import pytest

from mcp_server.core.service import ArcError
from mcp_server.history import History
from mcp_server.research import NOISE_TAG, hypotheses, insights, noise_floors, parse_research
from mcp_server.research.insights import best_line


T0 = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.timezone.utc)


@pytest.fixture
def history(tmp_path):
    h = History(tmp_path / "history.duckdb")
    yield h
    h.close()


def add_run(h: History, value: float | None, gpu_class: str | None = "H100", config: dict | None = None,
            tags: list[str] | None = None, minutes: float = 0, status: str = "succeeded",
            code_hash: str = "c0", reason: str | None = None, seed: int | None = None) -> str:
    (job_id,) = h.new_job_ids(1)
    h.insert_jobs([{"job_id": job_id, "kind": "trainer", "config": config or {}, "tags": tags or [],
                    "code_hash": code_hash, "time_limit_s": 60.0, "seed": seed}])
    t = T0 + dt.timedelta(minutes=minutes)
    h.update_job(job_id, status=status, gpu_class=gpu_class, primary_value=value, started_at=t,
                 ended_at=t + dt.timedelta(minutes=5), reason=reason, exit_code=0 if status == "succeeded" else 1)
    return job_id


def test_leaderboard_ranks_within_each_class_against_its_baseline(history):
    first = add_run(history, 1.10, config={"preset": "x"})                      # first run, not tagged
    base = add_run(history, 1.00, config={"preset": "x"}, tags=["baseline"], minutes=1)
    better = add_run(history, 0.95, config={"preset": "x", "matrix_lr": 0.08}, minutes=2, code_hash="c1")
    worse = add_run(history, 1.20, config={}, minutes=3)
    h200 = add_run(history, 0.90, gpu_class="H200", minutes=4)
    add_run(history, None, status="failed", minutes=5)
    board = insights.leaderboard(history, "val_bpb", top=3)

    by_class = {c.gpu_class: c for c in board.classes}
    assert set(by_class) == {"H100", "H200"}
    h100 = by_class["H100"]
    assert (h100.baseline_job, h100.baseline_metric, h100.runs) == (base, 1.00, 4)
    assert [r.job_id for r in h100.best] == [better, base, first]
    top = h100.best[0]
    assert top.changes == {"matrix_lr": 0.08} and top.code_changed and top.vs_baseline == pytest.approx(-0.05)
    assert by_class["H200"].baseline_job == h200          # no tagged baseline: the class's first run
    assert worse not in [r.job_id for r in h100.best]
    assert board.summary.startswith("H100: best " + better)

    reverted = insights.leaderboard(history, "val_bpb", direction="max", gpu_class="H100", top=1)
    assert reverted.classes[0].best[0].job_id == worse
    assert reverted.classes[0].best[0].changes == {"preset": None}   # the baseline's override, dropped


def test_leaderboard_and_digest_hold_each_best_to_the_noise_of_its_class(history):
    base = [add_run(history, v, tags=["baseline", "noise"], seed=i, minutes=i)
            for i, v in enumerate((1.000, 1.002, 0.998))]                          # sigma 0.002
    better = [add_run(history, v, config={"matrix_lr": 0.08}, seed=i, minutes=5 + i)
              for i, v in enumerate((0.950, 0.952))]
    add_run(history, 0.950, config={"matrix_lr": 0.08}, seed=0, minutes=8)        # a rerun: no new replicate
    tiny = add_run(history, 0.999, config={"matrix_lr": 0.041}, seed=0, minutes=9)
    other = add_run(history, 0.5, gpu_class="H200", config={"matrix_lr": 0.08}, seed=0, minutes=10)
    floors = noise_floors(history.jobs(tag=NOISE_TAG, limit=None))
    assert floors["H100"].sigma == pytest.approx(0.002)

    board = insights.leaderboard(history, "val_bpb", top=10, floors=floors)
    h100 = next(c for c in board.classes if c.gpu_class == "H100")
    assert (h100.baseline_job, h100.baseline_runs, h100.noise_sigma) == (base[0], 3, 0.002)
    entries = {e.job_id: e for e in h100.best}
    assert entries[better[0]].n == 2 and entries[better[0]].significant
    assert entries[better[0]].significance.startswith("significant (Welch p=")
    assert entries[better[0]].significance.endswith(", 2 vs 3 baseline run(s))")
    floor = 1.959964 * 0.002 * (1 / 3 + 1) ** 0.5
    assert entries[tiny].significance == f"within noise (|Δ| 0.001 <= floor {floor:.4g}, 1 vs 3 baseline run(s))"
    assert entries[base[1]].significance is None and entries[base[1]].n == 3      # the baseline's own seed
    h200 = next(c for c in board.classes if c.gpu_class == "H200")
    assert h200.best[0].job_id == other and h200.best[0].significance is None    # never held against H100
    assert board.summary.startswith(f"H100: best {better[0]} val_bpb 0.95 (-0.05 vs baseline {base[0]}: "
                                    "significant (Welch p=")
    assert board.summary.endswith("classes are ranked apart, never against each other")

    rules = parse_research({"search_space": {"matrix_lr": {"type": "float", "min": 0.005, "max": 0.08}},
                            "stagnation": {"window": 2}})
    digest = insights.digest(history, "val_bpb", since="2025-06-01T00:00:00Z", research=rules, floors=floors,
                             guardrails="running; 0.50 of 4 GPU-hours used")
    assert digest.significance[0] == best_line(h100, "val_bpb") and len(digest.significance) == 2
    assert digest.guardrails == "running; 0.50 of 4 GPU-hours used"
    assert any(w.startswith("stagnation on H100: no new best in the last 3 experiments") for w in digest.health)
    assert any(w.startswith(f"edge on H100: the best run {better[0]} has matrix_lr=0.08 at the top") for w in
               digest.health)
    assert digest.summary.endswith(f"; {len(digest.health)} search-health warning(s)")
    assert digest.next == "suggest_configs for fresh proposals"


def test_leaderboard_refusals_and_empty_history(history):
    assert insights.leaderboard(history, "val_bpb").classes == []
    with pytest.raises(ArcError, match="top must be"):
        insights.leaderboard(history, "val_bpb", top=0)
    with pytest.raises(ArcError, match="direction"):
        insights.leaderboard(history, "val_bpb", direction="up")


def test_digest_reports_new_bests_failures_and_hypotheses(history):
    old = add_run(history, 1.0, tags=["baseline"], minutes=-120)
    since = (T0 - dt.timedelta(minutes=60)).isoformat()
    new = add_run(history, 0.9, minutes=0)
    add_run(history, 1.1, minutes=1)
    add_run(history, None, status="failed", reason="out of memory", minutes=2)
    add_run(history, 0.8, gpu_class="H200", minutes=3)
    hyp = hypotheses.append_hypothesis(history, "lower lr helps").hypothesis.hyp_id
    d = insights.digest(history, "val_bpb", since=since)
    assert (d.succeeded, d.failed) == (3, 1)
    assert any(line.startswith(f"H100: {new}") and f"was 1 {old}" in line for line in d.new_bests)
    assert any(line.startswith("H200:") and "(first)" in line for line in d.new_bests)
    assert d.failures and "out of memory" in d.failures[0]
    assert d.hypotheses and d.hypotheses[0].startswith(f"{hyp} open")
    later = insights.digest(history, "val_bpb", since=d.until)
    assert (later.succeeded, later.failed, later.new_bests) == (0, 0, [])


def test_parse_since_accepts_spans_and_iso_and_refuses_the_rest():
    assert insights.parse_since("2025-06-01T12:00:00Z") == T0
    before = insights.now()
    got = insights.parse_since("2h")
    assert before - dt.timedelta(hours=2) <= got <= insights.now() - dt.timedelta(hours=2)
    with pytest.raises(ArcError, match="span like"):
        insights.parse_since("yesterday")


def test_plots_are_png_and_refuse_what_cannot_be_drawn(history):
    a = add_run(history, 1.0, tags=["baseline"])
    b = add_run(history, 0.9, minutes=1)
    history.ingest(a, None, [{"seq": i, "t": 1.7e9 + i, "source": "marker",
                              "data": {"step": i * 10, "train_loss": 5 - i * 0.1}} for i in range(20)])
    curves = insights.plot_runs(history, "val_bpb", job_ids=[a, b], series="train_loss")
    assert curves.png.startswith(b"\x89PNG") and "no points yet for " + b in curves.summary
    best = insights.plot_runs(history, "val_bpb", kind="best")
    assert best.png.startswith(b"\x89PNG") and f"best 0.9 ({b})" in best.summary
    with pytest.raises(ArcError, match="recorded metrics: train_loss"):
        insights.plot_runs(history, "val_bpb", job_ids=[a], series="val_loss")
    with pytest.raises(ArcError, match="no job j999"):
        insights.plot_runs(history, "val_bpb", job_ids=["j999"])
    with pytest.raises(ArcError, match="needs job_ids"):
        insights.plot_runs(history, "val_bpb", kind="curves")
    with pytest.raises(ArcError, match="kind must be"):
        insights.plot_runs(history, "val_bpb", kind="pie")


def test_hypotheses_lifecycle_and_refusals(history):
    job = add_run(history, 0.9)
    h = hypotheses.append_hypothesis(history, "  depth 10 beats depth 8  ", rationale="more capacity", jobs=[job])
    hyp_id = h.hypothesis.hyp_id
    assert h.hypothesis.text == "depth 10 beats depth 8" and h.hypothesis.jobs == [job]
    with pytest.raises(ArcError, match="needs a verdict"):
        hypotheses.update_hypothesis(history, hyp_id, status="supported")
    done = hypotheses.update_hypothesis(history, hyp_id, status="supported", verdict="H100: -0.01", effect_size=-0.01)
    assert (done.hypothesis.status, done.hypothesis.effect_size) == ("supported", -0.01)
    assert history.get_job(job)["hypothesis_id"] == hyp_id

    for bad, match in [(dict(hyp_id="h999", status="abandoned"), "unknown hypothesis"),
                       (dict(hyp_id="../h1", status="abandoned"), "not a hypothesis id"),
                       (dict(hyp_id=hyp_id, status="maybe"), "not one of"),
                       (dict(hyp_id=hyp_id, add_jobs=["j1; rm"]), "not a job id"),
                       (dict(hyp_id=hyp_id, add_jobs=["j777"]), "unknown job"),
                       (dict(hyp_id=hyp_id), "nothing to change")]:
        with pytest.raises(ArcError, match=match):
            hypotheses.update_hypothesis(history, **bad)
    with pytest.raises(ArcError, match="text is empty"):
        hypotheses.append_hypothesis(history, "   ")
    with pytest.raises(ArcError, match="tag"):
        hypotheses.append_hypothesis(history, "x", tags=["no spaces allowed"])

    hypotheses.append_hypothesis(history, "second")
    page = hypotheses.list_hypotheses(history, limit=1)
    assert page.total == 2 and len(page.hypotheses) == 1 and page.next == "list_hypotheses(limit=1, offset=1)"
    assert "1 open, 1 supported" in page.summary
    assert hypotheses.list_hypotheses(history, status="supported").hypotheses[0].hyp_id == hyp_id
    with pytest.raises(ArcError, match="limit"):
        hypotheses.list_hypotheses(history, limit=0)

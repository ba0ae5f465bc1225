"""Guardrails on a real DuckDB history: refusals with their rule and limit, budget accounting from GPU-seconds,
checkpoints that hold dispatch until approved, and the GPU cap."""
import time

import pytest

from mcp_server.history import History
from mcp_server.research.checkpoints import checkpoint_due, checkpoint_state
from mcp_server.research.config import ResearchConfigError, parse_research
from mcp_server.research.guard import Allowance, GuardError, Guardrails, check_submission, job_times, pause_prefix
from mcp_server.research.usage import Prices, Usage, measure_usage

SPACE = {
    "matrix_lr": {"type": "float", "min": 0.001, "max": 0.1, "log": True},
    "depth": {"type": "int", "min": 4, "max": 12},
    "window_pattern": {"type": "choice", "values": ["SSSL", "SL", "L"]},
}


@pytest.fixture
def history(tmp_path):
    h = History(tmp_path / "history.duckdb")
    yield h
    h.close()


def trainer(config=None, gpus=1, budget=300.0, limit=900.0, **extra):
    return {"kind": "trainer", "argv": [], "config": config or {}, "time_budget_s": budget, "time_limit_s": limit,
            "requirements": {"gpus": gpus} if gpus != 1 else {}, **extra}


def command(argv, **extra):
    return {"kind": "command", "argv": argv, "config": None, "time_budget_s": None, "time_limit_s": 600.0,
            "requirements": {}, **extra}


def add_job(history, status, host="h1", gpus=(0,), gpu_class="H100", started=None, ended=None, gpu_seconds=None,
            **fields):
    """A job row in the history as the scheduler and ingestion leave it."""
    row = {**trainer(), "status": status, "host": host, "gpu_indices": list(gpus), "gpu_class": gpu_class,
           "started_at": started, "ended_at": ended, "gpu_seconds": gpu_seconds, **fields}
    if status == "queued":
        row.update(host=None, gpu_indices=None, gpu_class=None)
    return history.insert_jobs([row])[0]


def refusal(cfg, rows, usage=None, prices=None) -> str:
    with pytest.raises(GuardError) as info:
        check_submission(cfg, rows, usage or Usage(), prices)
    assert isinstance(info.value, ValueError)
    return str(info.value)


# ---- refusals, one rule at a time ---------------------------------------------------------------------------

def test_search_space_refusals_name_rule_and_limit():
    cfg = parse_research({"search_space": SPACE})
    check_submission(cfg, [trainer({"matrix_lr": 0.02, "depth": 8, "window_pattern": "SL", "other": 1})], Usage())
    assert refusal(cfg, [trainer(), trainer(), trainer({"matrix_lr": 0.5})]) == (
        "refused by research.yaml: job 2: matrix_lr=0.5 is above the search space max 0.1 "
        "(research.yaml search_space.matrix_lr.max); fix: choose a value in [0.001, 0.1]")
    assert "job 0: matrix_lr=0.0001 is below the search space min 0.001 (research.yaml search_space.matrix_lr.min)" \
        in refusal(cfg, [trainer({"matrix_lr": 0.0001})])
    assert "job 0: depth=8.5 is not an integer (research.yaml search_space.depth is type int)" \
        in refusal(cfg, [trainer({"depth": 8.5})])
    assert "job 0: window_pattern='SSL' is not one of the search space's values " \
           "(research.yaml search_space.window_pattern.values); fix: choose one of 'SSSL', 'SL', 'L'" \
        in refusal(cfg, [trainer({"window_pattern": "SSL"})])
    assert "matrix_lr=True is not a finite number" in refusal(cfg, [trainer({"matrix_lr": True})])


EDGE_SPACE = {
    "lr": {"type": "float", "min": 0.001, "max": 0.1},
    "log_lr": {"type": "float", "min": 1e-4, "max": 1e-2, "log": True},
    "depth": {"type": "int", "min": 4, "max": 12},
    "pattern": {"type": "choice", "values": ["SSSL", "SL", 3]},
}


@pytest.mark.parametrize("name, inside, outside", [
    ("lr", 0.1, 0.1 * (1 + 1e-9)), ("lr", 0.001, 0.001 * (1 - 1e-9)),
    ("log_lr", 1e-2, 1e-2 * (1 + 1e-9)), ("log_lr", 1e-4, 1e-4 * (1 - 1e-9)),
    ("depth", 12, 13), ("depth", 4, 3),
    ("pattern", "SL", "SLL"), ("pattern", 3, 3.5), ("pattern", "SL", "sl"),
], ids=["float-max", "float-min", "log-max", "log-min", "int-max", "int-min", "choice-near-string",
        "choice-near-number", "choice-case"])
def test_each_kind_of_bound_holds_at_its_edge(name, inside, outside):
    """The bound itself is allowed and the nearest value past it is refused: a check loosened anywhere (max * 1.5,
    >= for >) fails here, where values far outside would still be refused."""
    cfg = parse_research({"search_space": EDGE_SPACE})
    check_submission(cfg, [trainer({name: inside})], Usage())
    assert f"job 0: {name}=" in refusal(cfg, [trainer({name: outside})])


@pytest.mark.parametrize("rule, inside, outside", [
    ({"param": "depth", "max": 12}, {"depth": 12}, {"depth": 12.000001}),
    ({"param": "depth", "min": 4}, {"depth": 4}, {"depth": 3.999999}),
    ({"product": ["a", "b"], "max": 65536}, {"a": 32, "b": 2048}, {"a": 32, "b": 2049}),
    ({"product": ["a", "b"], "min": 1024}, {"a": 32, "b": 32}, {"a": 31, "b": 33}),
], ids=["param-max", "param-min", "product-max", "product-min"])
def test_each_constraint_holds_at_its_edge(rule, inside, outside):
    cfg = parse_research({"baseline": {"a": 1, "b": 1}, "constraints": [rule]})
    check_submission(cfg, [trainer(inside)], Usage())
    assert "(research.yaml constraints[0])" in refusal(cfg, [trainer(outside)])


def test_undeclared_params_refused_when_configured():
    cfg = parse_research({"search_space": SPACE, "undeclared_params": "refuse"})
    assert "job 0: compile=False: compile is not in the search space and research.yaml undeclared_params is " \
           "refuse; fix: remove compile, or declare it under search_space" in refusal(
               cfg, [trainer({"compile": False})])


def test_constraints_param_and_product():
    cfg = parse_research({"baseline": {"device_batch_size": 32, "seq_len": 2048}, "constraints": [
        {"param": "depth", "max": 12}, {"param": "matrix_lr", "min": 0.001},
        {"product": ["device_batch_size", "seq_len"], "max": 65536, "name": "tokens per device batch"}]})
    check_submission(cfg, [trainer({"depth": 12, "device_batch_size": 32})], Usage())
    assert "job 0: depth=16 is above the limit 12 (research.yaml constraints[0]); fix: choose depth <= 12" \
        in refusal(cfg, [trainer({"depth": 16})])
    assert "job 0: matrix_lr=0.0005 is below the limit 0.001 (research.yaml constraints[1]); " \
           "fix: choose matrix_lr >= 0.001" in refusal(cfg, [trainer({"matrix_lr": 0.0005})])
    # seq_len unset: its baseline value counts.
    assert "job 0: tokens per device batch = device_batch_size 64 × seq_len 2048 = 131072 is above the limit 65536 " \
           "(research.yaml constraints[2]); fix: change device_batch_size or seq_len so the product is <= 65536" \
        in refusal(cfg, [trainer({"device_batch_size": 64})])
    assert "depth='deep' is not a number" in refusal(cfg, [trainer({"depth": "deep"})])


def test_time_limit_above_hard_limit():
    cfg = parse_research({"hard_limit_s": 1200})
    check_submission(cfg, [trainer(limit=1200)], Usage())
    assert "job 0: time_limit_s=3600 is above research.yaml hard_limit_s 1200; fix: ask time_limit_s <= 1200" \
        in refusal(cfg, [trainer(limit=3600)])
    assert "time_budget_s=2000 is above research.yaml hard_limit_s 1200" \
        in refusal(cfg, [trainer(budget=2000, limit=None)])


def test_job_times_apply_defaults_within_the_hard_limit():
    cfg = parse_research({"time_budget_s": 300, "hard_limit_s": 700})
    assert job_times(cfg, "trainer", None, None) == (300, 700)      # default 300 + 600 slack, capped
    assert job_times(cfg, "trainer", 60, None) == (60, 660)
    assert job_times(cfg, "trainer", 60, 5000) == (60, 5000)        # asked for: checked, not silently capped
    assert job_times(cfg, "command", None, None) == (None, 700)
    assert job_times(parse_research({}), "trainer", None, None) == (None, 900)


def test_command_policy():
    assert "command jobs are refused by research.yaml command_policy (mode trainer_only" in refusal(
        parse_research({"command_policy": {"mode": "trainer_only"}}), [command(["bash", "-c", "rm -rf /"])])
    cfg = parse_research({"command_policy": {"mode": "allowlist",
                                             "allow": [["python", "run.py"], r"python -m mypkg\.train( .*)?"]}})
    check_submission(cfg, [command(["python", "run.py", "--lr", "0.1"]), command(["python", "-m", "mypkg.train"]),
                           command(["python", "-m", "mypkg.train", "--x", "1"]), trainer()], Usage())
    message = refusal(cfg, [command(["python", "other.py"]), command(["python", "-m", "mypkg.trainx"])])
    assert "job 0: command 'python other.py' matches no entry of research.yaml command_policy.allow (mode " \
           "allowlist: python run.py ...; /python -m mypkg\\.train( .*)?/); fix: run an allowed command" in message
    assert "job 1: command 'python -m mypkg.trainx'" in message
    check_submission(parse_research({}), [command(["anything"])], Usage())


def test_job_asking_more_gpus_than_the_campaign_may_hold():
    assert "job 0: asks 8 GPUs but research.yaml max_gpus is 4" in refusal(
        parse_research({"max_gpus": 4}), [trainer(gpus=8)])


def test_all_problems_of_a_batch_in_one_message():
    cfg = parse_research({"search_space": SPACE, "hard_limit_s": 1000})
    rows = [trainer({"depth": 20}), trainer(), trainer({"matrix_lr": 1.0}, limit=2000)] + \
        [trainer({"depth": 3})] * 5
    message = refusal(cfg, rows)
    assert message.count("job ") == 5 and "job 0: depth=20" in message and "job 2: time_limit_s=2000" in message \
        and "job 2: matrix_lr=1" in message and message.endswith("; and 3 more")


# ---- budgets ------------------------------------------------------------------------------------------------

def test_usage_is_measured_from_gpu_seconds(history):
    now = time.time()
    # Two jobs end through ingestion, which computes gpu_seconds from the host's report (ended - started) x GPUs.
    done = add_job(history, "running", gpus=(0,), started=now - 400)
    history.ingest(done, {"status": "succeeded", "started_at": now - 400, "ended_at": now - 100, "gpus": [0]}, [])
    two = add_job(history, "running", host="h2", gpus=(0, 1), started=now - 200, gpu_class="H200")
    history.ingest(two, {"status": "failed", "started_at": now - 200, "ended_at": now - 100, "gpus": [0, 1]}, [])
    assert [history.get_job(j)["gpu_seconds"] for j in (done, two)] == pytest.approx([300.0, 200.0])
    add_job(history, "lost", gpus=(1,), started=now - 1000, ended=now - 900)   # no gpu_seconds reported: 100 s
    add_job(history, "cancelled", gpus=(), started=None, ended=now)
    add_job(history, "running", host="h2", gpus=(2, 3), gpu_class="H200", started=now - 60)   # 120 spent, 480 to go
    add_job(history, "queued", requirements={"gpus": 2})                                      # 600 to go
    add_job(history, "queued", requirements={"cpu_only": True, "gpus": 0})                   # no GPU
    usage = measure_usage(history, Prices.build(parse_research({"budgets": {"price_per_gpu_hour": {
        "H100": 3.6, "H200": 7.2}}}), {"h1": 0.0, "h2": 0.0}), now=now)
    assert usage.gpu_seconds == pytest.approx(300 + 200 + 100 + 120)
    assert usage.committed_gpu_seconds == pytest.approx(480 + 600)
    assert usage.gpus_in_use == 2 and usage.active_jobs == 3
    # H100: 400 s at 3.6/h; H200: 320 s at 7.2/h; the queued job has no class: the dearest price.
    assert usage.money == pytest.approx(400 / 3600 * 3.6 + 320 / 3600 * 7.2)
    assert usage.committed_money == pytest.approx(480 / 3600 * 7.2 + 600 / 3600 * 7.2)


def test_usage_counts_the_gpu_time_of_attempts_the_infrastructure_lost(history):
    """A job retried after its host crashed ran twice: the lost attempt's GPU time was spent all the same."""
    now = time.time()
    job = add_job(history, "running", host="h2", gpus=(0, 1), gpu_class="H200", started=now - 50)
    assert history.retry_job(job, "running", "h2 has no record of the job")
    [lost] = history.job_attempts([job])[job]
    assert (lost["host"], lost["gpu_indices"], lost["attempt"]) == ("h2", [0, 1], 1)
    assert lost["gpu_seconds"] == pytest.approx(100, abs=2)
    queued = history.get_job(job)
    assert (queued["status"], queued["attempts"], queued["requirements"]["avoid_hosts"]) == ("queued", 1, ["h2"])
    usage = measure_usage(history, Prices.build(parse_research({"budgets": {"price_per_gpu_hour": {"H200": 7.2}}}),
                                                {"h2": 0.0}))
    assert usage.gpu_seconds == pytest.approx(lost["gpu_seconds"])
    assert usage.money == pytest.approx(lost["gpu_seconds"] / 3600 * 7.2)


def test_prices_host_beats_class_and_unplaced_jobs_take_the_dearest():
    cfg = parse_research({"budgets": {"price_per_gpu_hour": {"H100": 2.0, "gpu9": 9.0}}})
    prices = Prices.build(cfg, {"gpu1": 4.0, "gpu2": 0.0, "gpu9": 1.0})
    assert prices.per_gpu_hour("gpu1", "H100") == 4.0      # hosts.yaml cost_per_gpu_hour
    assert prices.per_gpu_hour("gpu2", "H100") == 2.0      # 0 there means unset: the class price
    assert prices.per_gpu_hour("gpu9", "H100") == 9.0      # research.yaml naming the host wins
    assert prices.per_gpu_hour("gpu2", "A100") == 0.0
    assert prices.per_gpu_hour(None, None, {"gpu_class": "H100"}) == 2.0
    assert prices.per_gpu_hour(None, None, {}) == 9.0


def test_gpu_hour_budget_refuses_a_batch_that_would_cross_it(history):
    now = time.time()
    for _ in range(3):
        add_job(history, "succeeded", started=now - 3600, ended=now, gpu_seconds=3600.0)
    guard = Guardrails(parse_research({"budgets": {"gpu_hours": 5}}), history)
    guard.check([trainer(budget=3600, limit=4000)])           # 3 h spent + 1 h = 4 h: fine
    add_job(history, "queued", time_budget_s=3600.0)            # committed: 1 h
    guard.check([trainer(budget=3600, limit=4000)])           # 3 + 1 + 1 = 5 h: exactly the budget
    with pytest.raises(GuardError) as info:
        guard.check([trainer(budget=2000, limit=4000, gpus=2)])
    assert str(info.value) == (
        "refused by research.yaml: batch: this batch would bring projected GPU use to 5.11 h, "
        "over the budget of 5 GPU-hours (research.yaml budgets.gpu_hours): spent 3.00 h, committed to queued and "
        "running jobs 1.00 h, this batch 1.11 h (1 job(s), time budget × GPUs); fix: submit fewer or shorter jobs, "
        "wait for running ones, or raise budgets.gpu_hours")


def test_money_budget(history):
    now = time.time()
    add_job(history, "succeeded", host="gpu1", started=now - 3600, ended=now, gpu_seconds=3600.0)
    guard = Guardrails(parse_research({"budgets": {"money": 10}}), history, prices={"gpu1": 4.0})
    guard.check([trainer(budget=3600, limit=4000, host="gpu1")])        # 4 + 4 = 8
    with pytest.raises(GuardError, match=r"projected spend to 12.00, over the money budget of 10 "
                                         r"\(research.yaml budgets.money\): spent 4.00, committed 0.00, "
                                         r"this batch 8.00"):
        guard.check([trainer(budget=3600, limit=4000, gpus=2)])
    with pytest.raises(ResearchConfigError, match="a money budget needs a price per GPU-hour"):
        Guardrails(parse_research({"budgets": {"money": 10}}), history, prices={"gpu1": 0.0})


def test_spent_budget_holds_dispatch_and_approval_does_not_lift_it(history):
    now = time.time()
    guard = Guardrails(parse_research({"budgets": {"gpu_hours": 1}}), history)
    assert guard.launch_gate() is None
    add_job(history, "running", gpus=(0, 1), started=now - 1900)   # 2 GPUs × 1900 s > 1 h
    reason = guard.launch_gate()
    assert reason.startswith("budget spent: 1.06 of 1 GPU-hours used (research.yaml budgets.gpu_hours)")
    status = guard.approve("go on", by="alice")
    assert status.paused.startswith("budget spent: 1.06 of 1 GPU-hours used")
    assert status.resume == "a person raises the budget in research.yaml and runs `arc research reload`"
    assert guard.last_held == reason and pause_prefix(reason) == (
        f"PAUSED: {reason}; new work waits until a person raises the budget in research.yaml and runs "
        "`arc research reload`. ")
    assert guard.launch_gate() is not None
    with pytest.raises(GuardError, match="budgets.gpu_hours"):
        guard.check([trainer(budget=10)])


# ---- checkpoints --------------------------------------------------------------------------------------------

def place(history, n):
    """n jobs placed on a host: experiments, as the checkpoint counts them."""
    history.insert_jobs([{**trainer(), "status": "running", "host": "h1", "gpu_indices": [0], "gpu_class": "H100",
                          "started_at": time.time()} for _ in range(n)])


def test_checkpoint_pauses_after_n_experiments_and_approval_resumes(history):
    guard = Guardrails(parse_research({"checkpoint": {"every_experiments": 3}}), history)
    add_job(history, "queued")                      # not placed: not an experiment
    place(history, 2)
    assert guard.launch_gate() is None and guard.allowance() == Allowance(jobs=1)
    assert guard.status().summary == "running; 0.00 GPU-hours used; 2/3 experiments to the next checkpoint"
    place(history, 1)
    assert guard.last_held is None
    reason = guard.launch_gate()
    assert reason == "paused for review: 3 experiments since the campaign started (checkpoint every 3)"
    assert guard.last_held == reason
    status = guard.status()
    assert status.paused == reason and status.resume == "a person runs `arc approve --note '...'` to go on"
    assert status.summary.startswith("PAUSED (paused for review: 3 experiments")
    assert pause_prefix(reason) == ("PAUSED for review: 3 experiments since the campaign started (checkpoint every "
                                    "3); new work waits until a person runs `arc approve --note '...'`. ")
    approved = guard.approve("lr sweep looks fine; try depth next", by="alice")
    assert approved.paused is None and approved.last_approval_note == "lr sweep looks fine; try depth next"
    assert guard.last_held is None                  # lifted at once, not at the next dispatch round
    assert approved.last_approval_by == "alice" and approved.experiments_since_checkpoint == 0
    assert guard.launch_gate() is None
    place(history, 3)
    assert guard.launch_gate() == "paused for review: 3 experiments since the last approval (checkpoint every 3)"
    kinds = [(e["kind"], e["reason"]) for e in history.events(limit=100) if e["kind"] in ("paused", "resumed",
                                                                                             "approved")]
    assert kinds == [("paused", reason), ("approved", "approved by alice: lr sweep looks fine; try depth next"),
                     ("resumed", f"no longer held ({reason})"),
                     ("paused", "paused for review: 3 experiments since the last approval (checkpoint every 3)")]
    rows = history.cursor().execute("SELECT note, approved_by, experiments, paused_reason FROM approvals").fetchall()
    assert rows == [("lr sweep looks fine; try depth next", "alice", 3, reason)]


def test_checkpoint_every_hours(history):
    cfg = parse_research({"checkpoint": {"every_hours": 4}})
    assert checkpoint_due(cfg, checkpoint_state(history)) is None      # no jobs yet: nothing to review
    add_job(history, "succeeded", submitted_at=time.time() - 5 * 3600, started=time.time() - 5 * 3600,
            ended=time.time() - 4 * 3600, gpu_seconds=3600.0)
    state = checkpoint_state(history)
    assert checkpoint_due(cfg, state) == "5.0 hours since the campaign started (checkpoint every 4 h)"
    assert checkpoint_due(cfg, state, now=time.time() - 2 * 3600) is None
    guard = Guardrails(cfg, history)
    assert guard.launch_gate().startswith("paused for review: 5.0 hours")
    guard.approve(None, by="bob")
    assert guard.launch_gate() is None and guard.status().last_approval_note is None
    assert checkpoint_due(cfg, checkpoint_state(history), now=time.time() + 4.1 * 3600).startswith(
        "4.1 hours since the last approval")


def test_max_gpus_caps_what_may_start(history):
    guard = Guardrails(parse_research({"max_gpus": 4}), history)
    add_job(history, "running", gpus=(0, 1), started=time.time())
    add_job(history, "dispatching", host="h2", gpus=(0,))
    assert guard.launch_gate() is None and guard.allowance() == Allowance(gpus=1)
    add_job(history, "unconfirmed", host="h2", gpus=(1,))
    assert guard.launch_gate() == "max_gpus reached: all 4 GPUs the campaign may hold are in use " \
                                  "(research.yaml max_gpus)"
    assert guard.allowance() == Allowance(gpus=0)
    assert guard.status().paused is None and guard.status().gpus_in_use == 4   # a cap is not a pause
    assert not [e for e in history.events(limit=100) if e["kind"] == "paused"]


def test_no_rules_means_no_pause_and_no_limit(history):
    guard = Guardrails(parse_research({}), history)
    place(history, 100)
    assert guard.allowance() == Allowance() and guard.launch_gate() is None
    assert guard.check([trainer(budget=10**6, limit=10**7, gpus=64)]) is None

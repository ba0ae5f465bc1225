"""trainer.train on the CPU: real training runs on a freshly prepared corpus, their output read by the fleet
agent's own metrics parser (`@arc ` JSON lines and the `key: value` block after `---`)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpu_agent.metrics import MetricsParser
from trainer import train as trainer

REPO = Path(__file__).resolve().parents[1]
# autoresearch's summary keys, in its order: the head of ours
AUTORESEARCH_KEYS = ["val_bpb", "training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent",
                     "total_tokens_M", "num_steps", "num_params_M", "depth"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trainer-data")
    result = subprocess.run([sys.executable, "-m", "trainer.prepare", "--out", str(out), "--max-bytes", "600000",
                             "--vocab-size", "512"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return out


def run_train(data: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer.train", "--data", str(data), "--preset", "cpu-tiny", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=180, env=env)


def parse(stdout: str) -> tuple[list[dict], dict]:
    """(@arc objects, the summary block) as the agent records them from a job's output."""
    records: list[tuple[str, dict]] = []
    parser = MetricsParser(lambda source, data: records.append((source, data)))
    parser.feed(stdout.encode())
    parser.close()
    summaries = [data for source, data in records if source == "summary"]
    assert len(summaries) <= 1, summaries
    return [data for source, data in records if source == "marker"], (summaries[0] if summaries else {})


def test_cpu_tiny_learns_and_prints_an_autoresearch_summary(data: Path) -> None:
    result = run_train(data, "--time-budget", "5", "--set", "val_every=100000", "log_every=2")
    assert result.returncode == 0, result.stdout + result.stderr
    events, summary = parse(result.stdout)

    header = events[0]
    manifest = json.loads((data / "manifest.json").read_text())
    assert header["data_hash"] == manifest["content_hash"]
    assert len(header["code_hash"]) == 64 and header["code_hash"] == trainer.code_hash()
    assert header["device"] == "cpu" and header["gpu_model"] is None
    assert header["config"]["depth"] == 2 and header["config"]["time_budget"] == 5.0
    assert header["micro_batch"] * header["grad_accum"] * header["config"]["seq_len"] == \
        header["config"]["total_batch_size"]

    assert any("startup_s" in e for e in events)  # where the overhead went, by phase
    initial = next(e["val_bpb"] for e in events if "val_bpb" in e and e["step"] == 0)
    progress = [e for e in events if "train_loss" in e]
    assert progress, "no progress lines"
    for line in progress:
        assert {"step", "train_loss", "tok_per_s", "lr_mult", "elapsed_s"} <= line.keys()
        assert "mfu_percent" not in line  # no known peak on a CPU: omitted, never guessed

    keys = list(summary)
    assert keys[:8] == [k for k in AUTORESEARCH_KEYS if k != "mfu_percent"]  # MFU line omitted on the CPU
    assert "overhead_seconds" in keys
    assert summary["val_bpb"] < initial, (summary["val_bpb"], initial)
    assert summary["training_seconds"] >= 5.0
    assert summary["num_steps"] == progress[-1]["step"]
    overhead = summary["total_seconds"] - summary["training_seconds"]
    assert summary["overhead_seconds"] == pytest.approx(overhead, abs=0.11)
    assert summary["depth"] == 2


def test_same_seed_and_step_budget_give_the_same_val_bpb(data: Path) -> None:
    runs = [run_train(data, "--max-steps", "3", "--set", *extra) for extra in (["seed=7"], ["seed=7"], ["seed=8"])]
    for r in runs:
        assert r.returncode == 0, r.stdout + r.stderr
    first, second, other = (parse(r.stdout)[1]["val_bpb"] for r in runs)
    assert first == second
    assert first != other


def test_overrides_change_the_model_and_a_config_file_applies(data: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"depth": 3, "window_pattern": "L"}))
    deeper = run_train(data, "--max-steps", "1", "--config", str(config), "--set", "aspect_ratio=64")
    assert deeper.returncode == 0, deeper.stdout + deeper.stderr
    header = parse(deeper.stdout)[0][0]
    assert header["config"]["depth"] == 3 and header["config"]["window_pattern"] == "L"
    assert header["config"]["aspect_ratio"] == 64 and header["width"] == 192
    base = trainer.GPT(trainer.resolve_config("cpu-tiny", None, [], None, None), header["vocab_size"])
    assert base.width == 64
    assert header["num_params"] > sum(p.numel() for p in base.parameters())
    assert parse(deeper.stdout)[1]["depth"] == 3


def test_unknown_key_is_refused_with_the_valid_list(data: Path) -> None:
    result = run_train(data, "--set", "dept=3")
    assert result.returncode == 2
    assert "unknown config key 'dept'" in result.stderr and "depth (int)" in result.stderr
    assert "@arc" not in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--set", "depth=three"], "config key 'depth' expects int, got 'three'"),
    (["--set", "compile=maybe"], "config key 'compile' expects bool"),
    (["--set", "depth"], "is not key=value"),
    (["--set", "attention=fast"], "attention='fast' is not one of auto, flex, sdpa"),
    (["--set", "device_batch_size=5"], "device_batch_size=5 must divide"),
    (["--set", "window_pattern=SLX"], "must be a non-empty string of S and L"),
    (["--set", "attention=flex"], "attention=flex needs a CUDA device"),
    (["--set", "device=cuda"], "device=cuda but torch sees no CUDA GPU"),
    (["--preset", "huge"], "unknown preset 'huge'"),
])
def test_bad_settings_are_refused(data: Path, capsys: pytest.CaptureFixture, args: list[str], message: str) -> None:
    argv = ["--data", str(data), "--preset", "cpu-tiny", *args]
    assert trainer.main(argv) == 2
    assert message in capsys.readouterr().err


def test_bad_config_file_is_refused(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"depth": "3"}))
    assert trainer.main(["--data", str(data), "--preset", "cpu-tiny", "--config", str(config)]) == 2
    assert "config key 'depth' expects int, got '3'" in capsys.readouterr().err


def test_unprepared_data_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert trainer.main(["--data", str(tmp_path), "--preset", "cpu-tiny"]) == 2
    assert "prepare it first" in capsys.readouterr().err


def test_divergence_prints_fail_and_exits_nonzero(data: Path) -> None:
    result = run_train(data, "--max-steps", "3", "--set", "embedding_lr=1e30", "unembedding_lr=1e30",
                       "matrix_lr=1e30", "scalar_lr=1e30")
    assert result.returncode == 1
    fail = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert fail and fail[0].startswith("FAIL step ")
    assert "---" not in result.stdout.splitlines()


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_windowed_layers_through_flex_and_sdpa_agree_and_differ_from_full_attention(data: Path) -> None:
    cfg = trainer.resolve_config("cpu-tiny", None, ["depth=3", "window_pattern=SSL"], None, None)
    torch.manual_seed(0)
    model = trainer.GPT(cfg, vocab_size=512)
    model.init_weights()
    with torch.no_grad():  # flex attention has no CPU backward; the forward is what we compare
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # zero-initialised projections would hide the attention
        x, y, _ = next(trainer.train_batches(trainer.load_data(data, cfg.seq_len).train, cfg.seq_len, 4, 0,
                                             torch.device("cpu")))
        losses = {}
        for impl in ("sdpa", "flex"):
            model.set_attention(impl)
            losses[impl] = model(x, y)
        model.masks = [None] * cfg.depth
        full = model(x, y)
    torch.testing.assert_close(losses["flex"], losses["sdpa"], rtol=1e-5, atol=1e-5)
    assert (losses["sdpa"] - full).abs().max() > 1e-3


MiB, GiB = 2**20, 2**30


@pytest.mark.parametrize("micro_batch, peak, card, expected", [
    (64, 24_889.5 * MiB, 79.2 * GiB, 128),    # H100 SXM: the eager probe's 64; 128 then ran in 49,146 MiB
    (128, 49_146 * MiB, 139.8 * GiB, 256),    # H200: the eager probe's 128; 256 ran in 97,507 MiB
    (64, 38 * GiB, 79.2 * GiB, 64),           # doubling (76 GiB) would fit the card but not its 90 %
    (64, 75 * GiB, 79.2 * GiB, 64),           # a run that already exceeded 90 % keeps what it ran with
])
def test_a_runs_measured_peak_raises_the_micro_batch_only_as_far_as_it_fits(micro_batch: int, peak: float,
                                                                             card: float, expected: int) -> None:
    # peak, micro-batch and card as measured by bench/trainer_gpu.py on one H100 and one H200 (README)
    assert trainer.measured_micro_batch(256, micro_batch, peak, card) == expected


def test_a_measured_micro_batch_is_a_divisor_of_the_global_batch() -> None:
    # 2x fits, 4x does not: 6 sequences (a divisor of 12), never 8
    assert trainer.measured_micro_batch(12, 3, 3.0, 7.0 / 0.9) == 6
    assert trainer.measured_micro_batch(12, 3, 1.0, 100.0) == 12


def test_compile_cache_goes_under_arc_cache_dir(tmp_path: Path) -> None:
    # torch and its compiler are imported first, with the caches off, as in a warm start's preloaded interpreter
    code = ("import os, torch, torch._dynamo, torch._inductor.compile_fx; "
            "torch._inductor.config.fx_graph_cache = torch._functorch.config.enable_autograd_cache = False; "
            "import trainer.train as t; t.enable_compile_caches(); "
            "from torch._inductor.runtime.cache_dir_utils import cache_dir; "
            "print(t.COMPILE_CACHE); print(cache_dir()); print(os.environ['TRITON_CACHE_DIR']); "
            "print(torch._inductor.config.fx_graph_cache, torch._functorch.config.enable_autograd_cache)")
    env = dict(os.environ, ARC_CACHE_DIR=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    folder = str(tmp_path / f"torch-{torch.__version__}")
    assert result.stdout.split("\n")[:4] == [folder, folder, os.path.join(folder, "triton"), "True True"]


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")   # inside torch's own compiler
def test_compiled_muon_compiles_once_and_follows_the_schedule(data: Path) -> None:
    """compile_optimizer: Muon's hyperparameters are tensors the schedule updates in place, so the compiled step
    is traced once although LR, momentum and weight decay change at every step, and it tracks the eager step."""
    from torch._dynamo.utils import counters
    steps = 4
    cfgs = {flag: trainer.resolve_config("cpu-tiny", None, ["depth=1", f"compile_optimizer={flag}"], None, steps)
            for flag in (0, 1)}
    batches = trainer.train_batches(trainer.load_data(data, cfgs[0].seq_len).train, cfgs[0].seq_len, 4, 0,
                                    torch.device("cpu"))
    torch.manual_seed(0)
    models = {flag: trainer.GPT(cfg, vocab_size=512) for flag, cfg in cfgs.items()}
    models[0].init_weights()
    models[1].load_state_dict(models[0].state_dict())
    initial = [p.detach().clone() for p in models[0].parameters()]
    optimizers = {flag: trainer.build_optimizers(models[flag], cfg, torch.device("cpu")) for flag, cfg in cfgs.items()}
    step_fns = {flag: trainer.optimizer_step(optimizers[flag], cfg) for flag, cfg in cfgs.items()}
    torch._dynamo.reset()
    counters.clear()
    for step in range(steps):
        x, y, _ = next(batches)
        models[0](x, y).mean().backward()
        for eager, compiled in zip(models[0].parameters(), models[1].parameters()):
            compiled.grad = eager.grad.clone()  # the same gradients: only the optimizer steps differ
        for flag, cfg in cfgs.items():
            trainer.apply_schedule(optimizers[flag], cfg, step, step / steps)
            step_fns[flag]()
            models[flag].zero_grad(set_to_none=True)
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    muon_group = optimizers[1][1].param_groups[0]
    assert float(muon_group["lr"]) == pytest.approx(optimizers[0][1].param_groups[0]["lr"])
    assert float(muon_group["momentum"]) == pytest.approx(trainer.muon_momentum(cfgs[1], steps - 1))
    muon_params = {id(p) for p in optimizers[0][1].param_groups[0]["params"]}
    for (name, eager), compiled, start in zip(models[0].named_parameters(), models[1].parameters(), initial):
        if id(eager) not in muon_params:  # AdamW's, eager in both
            assert torch.equal(compiled, eager), name
            continue
        # Newton-Schulz runs in bf16 and its quintic magnifies the rounding of small singular values, so a fused
        # graph lands a few percent (here up to ~10 %) from eager; a wrong LR or a skipped step lands >= 50 % away
        moved, apart = (eager - start).norm(), (compiled - eager).norm()
        assert apart < 0.25 * moved, f"{name}: {apart:.4f} from eager after the eager step moved it {moved:.4f}"

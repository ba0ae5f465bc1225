"""
GPT pretraining in one file, autoresearch-compatible (github.com/karpathy/autoresearch): same model family, same
default shape, same val_bpb and the same final summary block, but offline, on torch's own attention and optimizers,
with MFU from the GPU actually in use and a micro-batch fitted to its memory.

    python -m trainer.train --data DIR [--preset default|cpu-tiny] [--config FILE.json] [--set key=value ...]
                            [--time-budget S] [--max-steps N]

DIR comes from `python -m trainer.prepare`. Settings apply in order: preset, --config (a JSON object), --set,
then --time-budget / --max-steps. Unknown or ill-typed keys are refused (exit 2) with the list of valid ones.

Budget. By default a run trains for `time_budget` seconds of timed steps; the first `untimed_steps` steps (they
include compilation) are trained but not counted, and the LR schedule follows the timed seconds, as in
autoresearch. Wall-clock budgets make the step count depend on the machine's speed, so `max_steps > 0` switches
to a step budget: exactly that many steps with the schedule by step count. On the CPU the same seed and config
with a step budget give the same val_bpb to the last printed digit (torch's CPU kernels are deterministic for a
fixed thread count).

Output (read by the fleet's agent):
  @arc {"config": {...}, "code_hash": ..., "data_hash": ..., "device": ..., "gpu_model": ..., ...}   once, early
  @arc {"step": ..., "train_loss": ..., "tok_per_s": ..., "mfu_percent": ..., "lr_mult": ..., "elapsed_s": ...}
  ---
  val_bpb: ... training_seconds: ... (autoresearch's keys in its order, then overhead_seconds and a few more)
A NaN or exploding loss prints `FAIL step N: ...` and exits 1. MFU is printed only where trainer/gpu_specs.py
knows the GPU's peak: never a guessed figure.

Environment: ARC_CACHE_DIR (set by the host agent) holds torch's compile caches, one folder per torch version, so a
warm host skips most of the compilation.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

# total_seconds counts from here: importing torch and start-up are overhead too (a warm start imported torch ahead)
T_START = time.time()
os.environ.setdefault("PYTORCH_ALLOC_CONF", "expandable_segments:True")   # read when CUDA first allocates
WARM_START = "torch" in sys.modules    # the host agent's warm interpreter imported it ahead (gpu_agent/warm.py)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention  # noqa: E402

from trainer import gpu_specs  # noqa: E402
from trainer.config import PRESETS, Config, ConfigError, resolve_config  # noqa: E402


def use_compile_cache() -> str | None:
    """Put inductor's and Triton's caches in $ARC_CACHE_DIR/torch-<version>/ (both read when used, not at import).
    The micro-batch memo lives there too."""
    root = os.environ.get("ARC_CACHE_DIR")
    if not root:
        return None
    folder = os.path.join(root, f"torch-{torch.__version__}")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
    os.environ["TRITON_CACHE_DIR"] = os.path.join(folder, "triton")
    return folder


def enable_compile_caches() -> None:
    """The FX-graph and autograd caches on, in torch's live config: on a warm start (the host agent's preloaded
    interpreter) torch was imported before this file ran, too late for their environment variables. Only before
    torch.compile: importing these configs costs over a second that a run without compilation need not pay."""
    import torch._functorch.config
    import torch._inductor.config
    torch._inductor.config.fx_graph_cache = True
    torch._functorch.config.enable_autograd_cache = True


COMPILE_CACHE = use_compile_cache()

# ---------------------------------------------------------------------------------------------------------------
# The model: rotary embeddings, QK-norm, ReLU^2 MLP, value embeddings, sliding windows, logit soft-cap.
# ---------------------------------------------------------------------------------------------------------------


def norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


def has_value_embed(layer: int, n_layer: int) -> bool:
    """Alternating layers, always including the last."""
    return layer % 2 == (n_layer - 1) % 2


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.type_as(x), sin.type_as(x)
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


# An attention mask per layer: None = full causal (SDPA's flash path), a BlockMask = flex attention over a sliding
# window, a bool tensor = SDPA with an explicit window mask (CPU, and the plain-SDPA comparison on GPUs).
Mask = BlockMask | torch.Tensor | None


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, n_head: int, head_dim: int, value_embed: bool):
        super().__init__()
        self.n_head, self.head_dim = n_head, head_dim
        self.c_q = nn.Linear(width, width, bias=False)
        self.c_k = nn.Linear(width, width, bias=False)
        self.c_v = nn.Linear(width, width, bias=False)
        self.c_proj = nn.Linear(width, width, bias=False)
        self.ve_gate_channels = 32
        self.ve_gate = nn.Linear(self.ve_gate_channels, n_head, bias=False) if value_embed else None

    def forward(self, x, ve, cos, sin, mask: Mask):
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_head, self.head_dim)
        if ve is not None:  # value residual, gated per head by the input (gate starts at 1)
            gate = 2 * torch.sigmoid(self.ve_gate(x[..., :self.ve_gate_channels]))
            v = v + gate.unsqueeze(-1) * ve.view(B, T, self.n_head, self.head_dim)
        q, k = norm(rotate(q, cos, sin)).type_as(v), norm(rotate(k, cos, sin)).type_as(v)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif isinstance(mask, BlockMask):
            y = flex_attention(q, k, v, block_mask=mask)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.c_fc = nn.Linear(width, 4 * width, bias=False)
        self.c_proj = nn.Linear(4 * width, width, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, width: int, n_head: int, head_dim: int, value_embed: bool):
        super().__init__()
        self.attn = CausalSelfAttention(width, n_head, head_dim, value_embed)
        self.mlp = MLP(width)

    def forward(self, x, ve, cos, sin, mask: Mask):
        x = x + self.attn(norm(x), ve, cos, sin, mask)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, cfg: Config, vocab_size: int):
        super().__init__()
        self.cfg, self.vocab_size = cfg, vocab_size
        self.width = math.ceil(cfg.depth * cfg.aspect_ratio / cfg.head_dim) * cfg.head_dim
        self.n_head = self.width // cfg.head_dim
        pattern = cfg.window_pattern.upper()
        self.windows = [cfg.seq_len if pattern[i % len(pattern)] == "L" else cfg.seq_len // 2
                        for i in range(cfg.depth)]
        self.windows[-1] = cfg.seq_len
        self.wte = nn.Embedding(vocab_size, self.width)
        self.blocks = nn.ModuleList(
            Block(self.width, self.n_head, cfg.head_dim, cfg.value_embeds and has_value_embed(i, cfg.depth))
            for i in range(cfg.depth))
        self.value_embeds = nn.ModuleDict({
            str(i): nn.Embedding(vocab_size, self.width)
            for i in range(cfg.depth) if cfg.value_embeds and has_value_embed(i, cfg.depth)})
        self.lm_head = nn.Linear(self.width, vocab_size, bias=False)
        self.resid_lambdas = nn.Parameter(torch.ones(cfg.depth))
        self.x0_lambdas = nn.Parameter(torch.zeros(cfg.depth))
        inv_freq = 1.0 / (10000 ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim))
        freqs = torch.outer(torch.arange(cfg.seq_len, dtype=torch.float32), inv_freq)[None, :, None, :]
        self.register_buffer("cos", freqs.cos(), persistent=False)
        self.register_buffer("sin", freqs.sin(), persistent=False)
        self.masks: list = [None] * cfg.depth

    @torch.no_grad()
    def init_weights(self) -> None:
        nn.init.normal_(self.wte.weight, mean=0.0, std=1.0)
        nn.init.normal_(self.lm_head.weight, mean=0.0, std=0.001)
        bound = 3**0.5 * self.width**-0.5  # uniform with std 1/sqrt(width)
        for block in self.blocks:
            for linear in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                nn.init.uniform_(linear.weight, -bound, bound)
            nn.init.zeros_(block.attn.c_proj.weight)  # each block starts as the identity
            nn.init.zeros_(block.mlp.c_proj.weight)
            if block.attn.ve_gate is not None:
                nn.init.zeros_(block.attn.ve_gate.weight)
        for embed in self.value_embeds.values():
            nn.init.uniform_(embed.weight, -bound, bound)
        self.resid_lambdas.fill_(1.0)
        self.x0_lambdas.fill_(0.1)

    def set_attention(self, impl: str) -> None:
        """Build each windowed layer's mask for `impl` ("flex" or "sdpa") on the model's device."""
        device, T = self.cos.device, self.cfg.seq_len
        masks: dict[int, Any] = {}
        for window in set(self.windows) - {T}:
            def in_window(b, h, q_idx, kv_idx, window=window):
                return (q_idx >= kv_idx) & (q_idx - kv_idx < window)
            if impl == "flex":
                masks[window] = create_block_mask(in_window, B=None, H=None, Q_LEN=T, KV_LEN=T, device=device)
            else:
                i = torch.arange(T, device=device)
                masks[window] = in_window(None, None, i[:, None], i[None, :])
        self.masks = [masks.get(w) for w in self.windows]

    def estimate_flops(self) -> float:
        """FLOPs per token, forward + backward: 6 per matrix weight, plus attention (autoresearch's count)."""
        embeddings = self.wte.weight.numel() + sum(e.weight.numel() for e in self.value_embeds.values())
        scalars = self.resid_lambdas.numel() + self.x0_lambdas.numel()
        matrices = sum(p.numel() for p in self.parameters()) - embeddings - scalars
        attention = sum(12 * self.n_head * self.cfg.head_dim * min(w, self.cfg.seq_len) for w in self.windows)
        return 6 * matrices + attention

    def forward(self, idx, targets):
        """Cross-entropy of each target token (0 where the target is -1), flattened."""
        x = norm(self.wte(idx))
        x0 = x
        for i, block in enumerate(self.blocks):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = self.value_embeds[str(i)](idx) if str(i) in self.value_embeds else None
            x = block(x, ve, self.cos, self.sin, self.masks[i])
        logits = self.lm_head(norm(x)).float()
        cap = self.cfg.logit_softcap
        logits = cap * torch.tanh(logits / cap)
        return F.cross_entropy(logits.view(-1, self.vocab_size), targets.reshape(-1), ignore_index=-1,
                               reduction="none")


# ---------------------------------------------------------------------------------------------------------------
# Data: token streams from trainer.prepare, cut into seq_len+1 windows.
# ---------------------------------------------------------------------------------------------------------------


class DataError(Exception):
    pass


@dataclass
class Dataset:
    train: np.ndarray
    val: np.ndarray
    token_bytes: np.ndarray
    manifest: dict


def load_data(folder: Path, seq_len: int) -> Dataset:
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise DataError(f"{folder} has no manifest.json: prepare it first with "
                        f"`python -m trainer.prepare --out {folder}` (an interrupted prepare leaves none)")
    manifest = json.loads(manifest_path.read_text())
    data = Dataset(np.load(folder / "train.npy", mmap_mode="r"), np.load(folder / "val.npy", mmap_mode="r"),
                   np.load(folder / "token_bytes.npy"), manifest)
    for split, tokens in (("train", data.train), ("val", data.val)):
        if tokens.size <= seq_len:
            raise DataError(f"the {split} split of {folder} has {tokens.size} tokens, fewer than seq_len+1="
                            f"{seq_len + 1}; prepare more text or lower seq_len")
    return data


def train_batches(tokens: np.ndarray, seq_len: int, batch: int, seed: int,
                  device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """Non-overlapping windows in a seeded random order, every window once per epoch."""
    rows = (tokens.size - 1) // seq_len
    generator = torch.Generator().manual_seed(seed)
    offsets = np.arange(seq_len + 1)
    pending, epoch = np.empty(0, dtype=np.int64), 0
    while True:
        while pending.size < batch:
            pending = np.concatenate([pending, torch.randperm(rows, generator=generator).numpy()])
            epoch += 1
        take, pending = pending[:batch], pending[batch:]
        window = tokens[take[:, None] * seq_len + offsets].astype(np.int64)
        # contiguous inputs and targets, like the evaluation's: the compiled graph is specialised on strides too
        x, y = (torch.from_numpy(np.ascontiguousarray(a)) for a in (window[:, :-1], window[:, 1:]))
        if device.type == "cuda":
            x, y = x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        yield x, y, epoch


def evaluate_bpb(model, data: Dataset, cfg: Config, batch: int, device: torch.device, autocast) -> tuple[float, int]:
    """Bits per byte over the fixed validation windows, as autoresearch defines it: summed cross-entropy (nats)
    over the target tokens divided by ln 2 times their UTF-8 bytes; special tokens (0 bytes) count in neither sum.
    The windows are the first eval_tokens/seq_len of the split whatever the micro-batch; the last batch is padded
    with ignored targets, so every GPU scores the same tokens. Returns (val_bpb, tokens scored).

    It runs in grad mode on the training batch shape on purpose: the compiled training graph then serves as is,
    where no_grad would compile a separate inference graph, most of the evaluation's cost on a warm host. The
    outputs are detached at once, so the activations kept for a backward that never comes are freed per batch."""
    T = cfg.seq_len
    rows = min(cfg.eval_tokens // T, (data.val.size - 1) // T)
    token_bytes = torch.from_numpy(data.token_bytes.astype(np.int64)).to(device)
    windows = torch.from_numpy(data.val[: rows * T + 1].astype(np.int64))
    total_nats = torch.zeros((), dtype=torch.float64, device=device)
    total_bytes = torch.zeros((), dtype=torch.int64, device=device)
    for start in range(0, rows, batch):
        n = min(batch, rows - start)
        x = torch.zeros(batch, T, dtype=torch.int64)
        y = torch.full((batch, T), -1, dtype=torch.int64)
        span = windows[start * T: (start + n) * T + 1]
        x[:n] = span[:-1].view(n, T)
        y[:n] = span[1:].view(n, T)
        x, y = x.to(device), y.to(device)
        with autocast:
            nats = model(x, y).detach()
        nbytes = token_bytes[y.clamp(min=0)].view(-1) * (y.view(-1) >= 0)
        total_nats += (nats.double() * (nbytes > 0)).sum()
        total_bytes += nbytes.sum()
    return total_nats.item() / (math.log(2) * total_bytes.item()), rows * T


# ---------------------------------------------------------------------------------------------------------------
# Optimizers: Muon (torch.optim.Muon) for the matrices in the blocks, AdamW for embeddings, lm_head and scalars.
# ---------------------------------------------------------------------------------------------------------------


def build_optimizers(model: GPT, cfg: Config, device: torch.device) -> list[torch.optim.Optimizer]:
    if not hasattr(torch.optim, "Muon"):
        raise RuntimeError(f"torch {torch.__version__} has no torch.optim.Muon; install torch >= 2.9")
    scale = (model.width / 768) ** -0.5  # AdamW LRs were tuned at width 768
    adam_groups = [
        dict(params=[model.lm_head.weight], lr=cfg.unembedding_lr * scale),
        dict(params=[model.wte.weight], lr=cfg.embedding_lr * scale),
        dict(params=list(model.value_embeds.parameters()), lr=cfg.embedding_lr * scale),
        dict(params=[model.resid_lambdas], lr=cfg.scalar_lr * 0.01),
        dict(params=[model.x0_lambdas], lr=cfg.scalar_lr, betas=(0.96, 0.95)),
    ]
    adamw = torch.optim.AdamW([g for g in adam_groups if g["params"]], betas=(cfg.adam_beta1, cfg.adam_beta2),
                              eps=1e-10, weight_decay=0.0, fused=device.type == "cuda")
    # A compiled step treats float hyperparameters as constants and recompiles whenever the schedule moves them;
    # 0-dim tensors (updated in place by set_hyperparameter) are inputs of one graph instead. On the parameters'
    # device, so the graph mixes no devices and updating them never waits for the GPU.
    def hyper(value: float) -> float | torch.Tensor:
        return torch.tensor(value, device=device) if cfg.compile_optimizer else value
    muon = torch.optim.Muon(list(model.blocks.parameters()), lr=hyper(cfg.matrix_lr),
                            weight_decay=hyper(cfg.weight_decay), momentum=hyper(cfg.muon_momentum), nesterov=True)
    for opt in (adamw, muon):
        for group in opt.param_groups:
            group["initial_lr"] = float(group["lr"])
    return [adamw, muon]


def set_hyperparameter(group: dict, key: str, value: float) -> None:
    if isinstance(group[key], torch.Tensor):
        group[key].fill_(value)
    else:
        group[key] = value


def apply_schedule(optimizers: list[torch.optim.Optimizer], cfg: Config, step: int, progress: float) -> float:
    """Set every group's LR, Muon's momentum and weight decay for this step; the LR multiplier."""
    lr_mult = lr_multiplier(cfg, progress)
    for opt in optimizers:
        for group in opt.param_groups:
            set_hyperparameter(group, "lr", group["initial_lr"] * lr_mult)
    muon_group = optimizers[1].param_groups[0]
    set_hyperparameter(muon_group, "momentum", muon_momentum(cfg, step))
    set_hyperparameter(muon_group, "weight_decay", cfg.weight_decay * (1 - progress))
    return lr_mult


def optimizer_step(optimizers: list[torch.optim.Optimizer], cfg: Config) -> Callable[[], None]:
    """One step of both optimizers; Muon's torch.compile'd with compile_optimizer (its per-matrix eager step is
    about 25 small kernels for each of the ~50 block matrices)."""
    adamw, muon = optimizers
    muon_step = torch.compile(muon.step) if cfg.compile_optimizer else muon.step

    def step() -> None:
        adamw.step()
        muon_step()
    return step


def lr_multiplier(cfg: Config, progress: float) -> float:
    if progress < cfg.warmup_ratio:
        return progress / cfg.warmup_ratio
    if progress < 1.0 - cfg.warmdown_ratio:
        return 1.0
    cooldown = (1.0 - progress) / cfg.warmdown_ratio
    return cooldown + (1 - cooldown) * cfg.final_lr_frac


def muon_momentum(cfg: Config, step: int) -> float:
    frac = min(step / 300, 1.0)
    return (1 - frac) * 0.85 + frac * cfg.muon_momentum


# ---------------------------------------------------------------------------------------------------------------
# Hardware: the device, its peak FLOP/s, and the largest micro-batch that fits.
# ---------------------------------------------------------------------------------------------------------------


def pick_device(cfg: Config) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but torch sees no CUDA GPU; use device=cpu or auto")
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def fit_micro_batch(model: GPT, cfg: Config, device: torch.device, autocast, optimizer_bytes: int,
                    source_hash: str) -> tuple[int, str, Path | None]:
    """Sequences per forward/backward: device_batch_size when set, else the largest divisor of the global batch
    that fits (on a GPU: probed, and remembered in the compile cache for the same GPU, model shape and code).
    Also the memo that this run's measured peak should refine, or None. Whether the model is compiled is part of
    the key, since eager keeps far more activations; the attention kernel is not: flex and SDPA's masked
    memory-efficient kernel measured the same peak (H100, 64 sequences: 24,890 and 24,902 MiB)."""
    seqs = cfg.total_batch_size // cfg.seq_len
    if cfg.device_batch_size:
        return cfg.device_batch_size, "set by device_batch_size", None
    if device.type != "cuda":
        return max(b for b in range(1, min(seqs, 32) + 1) if seqs % b == 0), \
            "CPU: largest divisor of the global batch up to 32 sequences", None
    if COMPILE_CACHE is None:
        return *probe_micro_batch(model, cfg, device, autocast, optimizer_bytes), None
    shape = {k: getattr(cfg, k) for k in ("depth", "aspect_ratio", "head_dim", "seq_len", "window_pattern",
                                          "value_embeds", "total_batch_size", "compile")}
    key = json.dumps([torch.cuda.get_device_name(device), torch.cuda.get_device_properties(device).total_memory,
                      torch.__version__, source_hash, model.vocab_size, shape])
    memo = Path(COMPILE_CACHE) / "micro_batch" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"
    if memo.is_file():
        known = json.loads(memo.read_text())
        return known["micro_batch"], f"{known['reason']} (remembered from an earlier run on this host)", \
            None if known.get("measured") else memo
    micro_batch, reason = probe_micro_batch(model, cfg, device, autocast, optimizer_bytes)
    write_json_atomically(memo, {"micro_batch": micro_batch, "reason": reason})
    return micro_batch, reason, memo


def measured_micro_batch(seqs: int, micro_batch: int, peak_bytes: float, total_bytes: float) -> int:
    """The largest divisor of the global batch that a finished run's own peak memory says fits in 90% of the GPU.
    Scaling the whole peak by b / micro_batch over-estimates, since weights, gradients and optimizer states do not
    grow with the micro-batch, so the bound is safe; it is far tighter than the eager probe's, which counts
    activations the compiled graph never keeps (on an H100: 692 MiB per sequence probed, ~380 measured)."""
    return max(b for b in range(micro_batch, seqs + 1)
               if seqs % b == 0 and (b == micro_batch or peak_bytes * b / micro_batch <= 0.9 * total_bytes))


def refine_micro_batch(memo: Path, seqs: int, micro_batch: int, peak: int, device: torch.device) -> None:
    """Remember, for the later runs of this code and shape on this GPU, the micro-batch this run's peak allows."""
    total = torch.cuda.get_device_properties(device).total_memory
    better = measured_micro_batch(seqs, micro_batch, peak, total)
    reason = (f"measured: {peak / 2**30:.1f} GiB peak with {micro_batch} sequences, {total / 2**30:.1f} GiB card "
              f"-> {better} of {seqs} sequences")
    write_json_atomically(memo, {"micro_batch": better, "reason": reason, "measured": True})
    if better != micro_batch:
        arc(micro_batch_next=better, micro_batch_next_reason=reason)


def write_json_atomically(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


def probe_micro_batch(model: GPT, cfg: Config, device: torch.device, autocast,
                      optimizer_bytes: int) -> tuple[int, str]:
    """The largest divisor of the global batch whose predicted peak memory fits in 90% of the GPU. Activation
    memory per sequence comes from two eager forward/backward passes (1 and 4 sequences): eager keeps more
    activations alive than the compiled graph, so the estimate errs on the safe side. The probe uses SDPA's
    memory-efficient kernel, whose memory matches the flash kernels', so cuDNN does not build attention plans
    for shapes the run never uses again."""
    seqs = cfg.total_batch_size // cfg.seq_len
    model.set_attention("sdpa")
    peaks = {}
    with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
        for probe in sorted({1, min(4, seqs)}):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            x = torch.zeros(probe, cfg.seq_len, dtype=torch.int64, device=device)
            with autocast:
                loss = model(x, x).mean()
            loss.backward()
            model.zero_grad(set_to_none=True)
            del loss
            peaks[probe] = torch.cuda.max_memory_allocated() - before
    big = max(peaks)
    per_seq = (peaks[big] - peaks[1]) / (big - 1) if big > 1 else peaks[1]
    fixed = peaks[1] - per_seq
    total = torch.cuda.get_device_properties(device).total_memory
    budget = 0.9 * total - torch.cuda.memory_allocated() - optimizer_bytes - fixed
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    b = next((b for b in range(seqs, 0, -1) if seqs % b == 0 and b * per_seq <= budget), 1)
    return b, (f"probe: {per_seq / 2**20:.0f} MiB/sequence eager, {total / 2**30:.1f} GiB card -> "
               f"{b} of {seqs} sequences")


def optimizer_state_bytes(optimizers: list[torch.optim.Optimizer]) -> int:
    """Memory the optimizer states will take once created: AdamW keeps two moments, Muon one momentum buffer."""
    adamw, muon = optimizers
    moments = sum(2 * p.numel() * p.element_size() for g in adamw.param_groups for p in g["params"])
    return moments + sum(p.numel() * p.element_size() for g in muon.param_groups for p in g["params"])


def code_hash() -> str:
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(f"{path.name}\0".encode() + path.read_bytes())
    return h.hexdigest()


def arc(**fields: Any) -> None:
    print("@arc " + json.dumps(fields), flush=True)


# ---------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------


class DeviceClock:
    """Milliseconds the device spends on a stretch of work, read once that work is done: CUDA events on a GPU, so
    timing queues nothing and waits for nothing; the wall clock on the CPU, which runs work as it is issued."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        self.t0 = self.wall_ms = 0.0

    def __enter__(self) -> None:
        if self.cuda:
            self.start.record()
        else:
            self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            self.end.record()
        else:
            self.wall_ms = 1000 * (time.perf_counter() - self.t0)

    def ms(self) -> float:
        return self.start.elapsed_time(self.end) if self.cuda else self.wall_ms


class Laps:
    """Start-up time by phase (printed before training): where a warm host's overhead goes."""

    def __init__(self) -> None:
        self.last, self.phases = T_START, {}

    def __call__(self, phase: str) -> None:
        now = time.time()
        self.phases[phase] = round(now - self.last, 2)
        self.last = now


def train(cfg: Config, data_dir: Path) -> int:
    laps = Laps()
    laps("imports")
    device = pick_device(cfg)
    attention = cfg.attention if cfg.attention != "auto" else ("flex" if device.type == "cuda" else "sdpa")
    if attention == "flex" and device.type != "cuda":
        raise ConfigError("attention=flex needs a CUDA device (flex attention has no CPU backward); use "
                          "attention=sdpa or auto")
    torch.empty(1, device=device)  # creates the CUDA context here, so the laps show what it costs
    laps("device_init")
    data = load_data(data_dir, cfg.seq_len)
    vocab_size = int(data.manifest["vocab_size"])
    source_hash = code_hash()
    laps("data")
    torch.manual_seed(cfg.seed)
    torch.set_float32_matmul_precision("high")
    autocast = (torch.autocast(device_type="cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())

    with torch.device(device):
        model = GPT(cfg, vocab_size)
    model.init_weights()
    if device.type == "cuda":  # bf16 embeddings halve their memory traffic; matrices stay fp32 under autocast
        model.wte.to(torch.bfloat16)
        model.value_embeds.to(torch.bfloat16)
    optimizers = build_optimizers(model, cfg, device)
    num_params = sum(p.numel() for p in model.parameters())
    flops_per_token = model.estimate_flops()
    laps("model")

    micro_batch, batch_reason, micro_batch_memo = fit_micro_batch(
        model, cfg, device, autocast, optimizer_state_bytes(optimizers), source_hash)
    laps("micro_batch")
    seqs = cfg.total_batch_size // cfg.seq_len
    grad_accum = seqs // micro_batch
    model.set_attention(attention)
    laps("attention_masks")

    gpu_model = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    spec = gpu_specs.lookup(gpu_model) if gpu_model else None
    peak_flops = spec.peak_bf16_tflops * 1e12 if spec else None
    arc(config=dataclasses.asdict(cfg), code_hash=source_hash, data_hash=data.manifest["content_hash"],
        device=device.type, gpu_model=gpu_model, gpu_class=spec.gpu_class if spec else None,
        peak_bf16_tflops=spec.peak_bf16_tflops if spec else None, micro_batch=micro_batch, grad_accum=grad_accum,
        micro_batch_reason=batch_reason, attention=attention, width=model.width, n_head=model.n_head,
        vocab_size=vocab_size, num_params=num_params, flops_per_token=flops_per_token, torch=torch.__version__,
        compile_cache=COMPILE_CACHE, threads=torch.get_num_threads())
    if gpu_model and not spec:
        print(f"note: GPU model {gpu_model!r} is not in trainer/gpu_specs.py, so MFU is omitted; add its dense bf16 "
              "peak there to get it", flush=True)

    if (cfg.compile or cfg.compile_optimizer) and COMPILE_CACHE:
        enable_compile_caches()
    step_model = torch.compile(model, dynamic=False) if cfg.compile else model
    step_optimizers, optimizer_clock = optimizer_step(optimizers, cfg), DeviceClock(device)
    batches = train_batches(data.train, cfg.seq_len, micro_batch, cfg.seed, device)
    x, y, epoch = next(batches)

    def validate(step: int) -> float:
        val_bpb, _ = evaluate_bpb(step_model, data, cfg, micro_batch, device, autocast)
        arc(step=step, val_bpb=round(val_bpb, 6), elapsed_s=round(time.time() - T_START, 2))
        return val_bpb

    laps("first_batch")
    if cfg.val_every:
        validate(0)
        laps("first_validation")
    arc(startup_s=laps.phases)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    startup_s = time.time() - T_START
    step, training_time, timed_steps, first_step_s = 0, 0.0, 0, 0.0
    while True:
        t0 = time.time()
        loss_sum = torch.zeros((), device=device)
        for _ in range(grad_accum):
            with autocast:
                loss = step_model(x, y).mean()
            (loss / grad_accum).backward()
            loss_sum += loss.detach()
            x, y, epoch = next(batches)  # queued while the GPU works
        progress = step / cfg.max_steps if cfg.max_steps else min(training_time / cfg.time_budget, 1.0)
        lr_mult = apply_schedule(optimizers, cfg, step, progress)
        with optimizer_clock:
            step_optimizers()
        model.zero_grad(set_to_none=True)
        train_loss = loss_sum.item() / grad_accum  # waits for the queued step: the timing below is the GPU's
        dt = time.time() - t0
        if step == 0:
            first_step_s = dt
        if step >= cfg.untimed_steps:
            training_time += dt
            timed_steps += 1
        step += 1  # from here on, the number of steps done

        if not math.isfinite(train_loss) or train_loss > 100:
            print(f"FAIL step {step}: train loss {train_loss} (NaN or above 100: the run diverged; lower the "
                  "learning rates or raise warmup_ratio)", flush=True)
            return 1
        done = step >= cfg.max_steps if cfg.max_steps else (
            step > cfg.untimed_steps and training_time >= cfg.time_budget)
        if step == 1 or step % cfg.log_every == 0 or done:
            tok_per_s = cfg.total_batch_size / dt
            progress_line = dict(step=step, train_loss=round(train_loss, 6), tok_per_s=round(tok_per_s),
                                 lr_mult=round(lr_mult, 4), elapsed_s=round(time.time() - T_START, 2),
                                 training_s=round(training_time, 2), dt_ms=round(dt * 1000, 1),
                                 optimizer_ms=round(optimizer_clock.ms(), 1), epoch=epoch)
            if peak_flops:
                progress_line["mfu_percent"] = round(100 * flops_per_token * tok_per_s / peak_flops, 2)
            arc(**progress_line)
        if cfg.val_every and step % cfg.val_every == 0 and not done:
            validate(step)
        if step == 1:  # the first step made the long-lived objects; keep the collector out of the timed loop
            gc.collect()
            gc.freeze()
            gc.disable()
        elif step % 5000 == 0:
            gc.collect()
        if done:
            break

    t_eval = time.time()
    val_bpb, eval_tokens = evaluate_bpb(step_model, data, cfg, micro_batch, device, autocast)
    eval_s = time.time() - t_eval
    total_seconds = time.time() - T_START
    tok_per_s = timed_steps * cfg.total_batch_size / training_time if training_time else 0.0
    peak_bytes = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    if micro_batch_memo is not None:
        refine_micro_batch(micro_batch_memo, seqs, micro_batch, peak_bytes, device)

    print("---")
    print(f"val_bpb:          {val_bpb:.6f}")
    print(f"training_seconds: {training_time:.1f}")
    print(f"total_seconds:    {total_seconds:.1f}")
    print(f"peak_vram_mb:     {peak_bytes / 2**20:.1f}")
    if peak_flops:
        print(f"mfu_percent:      {100 * flops_per_token * tok_per_s / peak_flops:.2f}")
    print(f"total_tokens_M:   {step * cfg.total_batch_size / 1e6:.1f}")
    print(f"num_steps:        {step}")
    print(f"num_params_M:     {num_params / 1e6:.1f}")
    print(f"depth:            {cfg.depth}")
    print(f"overhead_seconds: {total_seconds - training_time:.1f}")
    print(f"startup_seconds:  {startup_s:.1f}")
    print(f"warm_start:       {int(WARM_START)}")
    print(f"first_step_seconds: {first_step_s:.1f}")
    print(f"eval_seconds:     {eval_s:.1f}")
    print(f"eval_tokens_M:    {eval_tokens / 1e6:.3f}")
    print(f"tok_per_s:        {tok_per_s:.0f}")
    print(f"micro_batch:      {micro_batch}")
    print(f"grad_accum:       {grad_accum}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.train", description=__doc__.strip().split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder written by `python -m trainer.prepare`")
    parser.add_argument("--preset", default="default", help=f"one of: {', '.join(PRESETS)} (default: default)")
    parser.add_argument("--config", type=Path, help="JSON file with an object of settings")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", action="extend",
                        help="override settings, e.g. --set depth=10 matrix_lr=0.03")
    parser.add_argument("--time-budget", type=float, help="seconds of timed training (sets time_budget)")
    parser.add_argument("--max-steps", type=int, help="train exactly this many steps (deterministic on CPU)")
    args = parser.parse_args(argv)
    try:
        cfg = resolve_config(args.preset, args.config, args.set, args.time_budget, args.max_steps)
        return train(cfg, args.data)
    except ConfigError as exc:
        print(f"train: config error: {exc}", file=sys.stderr)
        return 2
    except DataError as exc:
        print(f"train: data error: {exc}", file=sys.stderr)
        return 2
    except torch.OutOfMemoryError as exc:
        print(f"FAIL out of GPU memory ({str(exc).splitlines()[0]}); set device_batch_size lower", flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())

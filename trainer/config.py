"""The trainer's settings: every hyperparameter with its name, type and default; presets; validation.

Standard library only, so the controller can check a job's overrides at submission (and read the defaults)
without importing torch. `python -m trainer.train` applies, in order: preset, --config FILE, --set key=value,
then --time-budget / --max-steps.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# ---------------------------------------------------------------------------------------------------------------
# Configuration: every hyperparameter has a name and a default; presets override a few.
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Config:
    # model (width = depth * aspect_ratio rounded up to a multiple of head_dim; heads = width / head_dim)
    depth: int = 8
    aspect_ratio: int = 64
    head_dim: int = 128
    seq_len: int = 2048
    window_pattern: str = "SSSL"       # per layer, repeating: L = full causal, S = half the context; last is L
    value_embeds: bool = True          # ResFormer value embeddings on alternating layers
    logit_softcap: float = 15.0
    # optimisation
    total_batch_size: int = 2**19      # tokens per optimizer step (the global batch)
    device_batch_size: int = 0         # sequences per forward/backward; 0 = the largest that fits the device
    embedding_lr: float = 0.6          # AdamW, token and value embeddings
    unembedding_lr: float = 0.004      # AdamW, lm_head
    matrix_lr: float = 0.04            # Muon, every matrix inside the blocks
    scalar_lr: float = 0.5             # AdamW, per-layer residual mixing scalars
    weight_decay: float = 0.2          # Muon's decoupled weight decay, decayed linearly to 0 over the run
    adam_beta1: float = 0.8
    adam_beta2: float = 0.95
    muon_momentum: float = 0.95        # reached after a ramp from 0.85 over the first 300 steps
    warmup_ratio: float = 0.0          # share of the budget with linear LR warmup
    warmdown_ratio: float = 0.5        # share of the budget with linear LR decay to final_lr_frac
    final_lr_frac: float = 0.0
    # run
    time_budget: float = 300.0         # seconds of timed training (ignored when max_steps > 0)
    max_steps: int = 0                 # > 0: step budget instead of the time budget (deterministic)
    untimed_steps: int = 1             # first steps trained but not timed (the first one compiles)
    eval_tokens: int = 40 * 2**19      # validation tokens for val_bpb (capped at the validation split's size)
    val_every: int = 0                 # > 0: also print val_bpb at step 0 and every this many steps
    log_every: int = 10                # an @arc progress line every this many steps
    seed: int = 42
    device: str = "auto"               # auto | cuda | cpu
    compile: bool = True               # torch.compile the model
    compile_optimizer: bool = False    # torch.compile Muon's step too (once: its hyperparameters become tensors)
    attention: str = "auto"            # auto | flex | sdpa: how windowed layers attend (auto = flex on CUDA)


PRESETS: dict[str, dict[str, Any]] = {
    "default": {},  # autoresearch's shape: depth 8, width 512, 4 heads, seq 2048, 2^19-token batch
    "cpu-tiny": dict(depth=2, aspect_ratio=32, head_dim=32, seq_len=128, window_pattern="SL",
                     total_batch_size=16 * 128, device_batch_size=16, time_budget=30.0, untimed_steps=1,
                     eval_tokens=64 * 128, log_every=5, device="cpu", compile=False),
}
CHOICES = {"device": ("auto", "cuda", "cpu"), "attention": ("auto", "flex", "sdpa")}


class ConfigError(Exception):
    """A refused setting; the message names the key, what was wrong and the valid choices."""


def valid_keys() -> str:
    return ", ".join(f"{f.name} ({f.type})" for f in dataclasses.fields(Config))


def coerce(key: str, value: Any, from_text: bool) -> Any:
    """Convert one setting to its field's type: text from --set, or a JSON value from --config."""
    fields = {f.name: f.type for f in dataclasses.fields(Config)}
    if key not in fields:
        raise ConfigError(f"unknown config key {key!r}; valid keys: {valid_keys()}")
    kind = fields[key]
    try:
        if kind == "bool":
            if from_text:
                words = {"true": True, "1": True, "yes": True, "on": True,
                         "false": False, "0": False, "no": False, "off": False}
                return words[value.strip().lower()]
            if isinstance(value, bool):
                return value
        elif kind == "int":
            if from_text:
                return int(value)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif kind == "float":
            if from_text or (isinstance(value, (int, float)) and not isinstance(value, bool)):
                number = float(value)
                if math.isfinite(number):
                    return number
        elif kind == "str":
            if from_text or isinstance(value, str):
                return value
    except (ValueError, KeyError):
        pass
    raise ConfigError(f"config key {key!r} expects {'a finite float' if kind == 'float' else kind}, got {value!r}")


def check(cfg: Config) -> None:
    """Refuse values the trainer cannot run, with the reason."""
    problems = []
    for key, choices in CHOICES.items():
        if getattr(cfg, key) not in choices:
            problems.append(f"{key}={getattr(cfg, key)!r} is not one of {', '.join(choices)}")
    positive = ["depth", "aspect_ratio", "head_dim", "total_batch_size", "eval_tokens", "log_every", "logit_softcap"]
    problems += [f"{k} must be > 0" for k in positive if getattr(cfg, k) <= 0]
    non_negative = ["device_batch_size", "max_steps", "untimed_steps", "val_every", "embedding_lr",
                    "unembedding_lr", "matrix_lr", "scalar_lr", "weight_decay", "warmup_ratio", "warmdown_ratio",
                    "final_lr_frac"]
    problems += [f"{k} must be >= 0" for k in non_negative if getattr(cfg, k) < 0]
    if cfg.head_dim % 2:
        problems.append("head_dim must be even (rotary embeddings rotate pairs of channels)")
    if cfg.seq_len < 2:
        problems.append("seq_len must be >= 2")
    if not cfg.window_pattern or set(cfg.window_pattern.upper()) - set("SL"):
        problems.append(f"window_pattern={cfg.window_pattern!r} must be a non-empty string of S and L")
    if cfg.total_batch_size % cfg.seq_len:
        problems.append(f"total_batch_size={cfg.total_batch_size} must be a multiple of seq_len={cfg.seq_len}")
    elif cfg.device_batch_size and (cfg.total_batch_size // cfg.seq_len) % cfg.device_batch_size:
        problems.append(f"device_batch_size={cfg.device_batch_size} must divide total_batch_size/seq_len="
                        f"{cfg.total_batch_size // cfg.seq_len} sequences")
    if cfg.time_budget <= 0 and cfg.max_steps == 0:
        problems.append("time_budget must be > 0 (or give max_steps)")
    if cfg.warmup_ratio + cfg.warmdown_ratio > 1:
        problems.append("warmup_ratio + warmdown_ratio must be <= 1")
    if not (0 <= cfg.adam_beta1 < 1 and 0 <= cfg.adam_beta2 < 1 and 0 <= cfg.muon_momentum < 1):
        problems.append("adam_beta1, adam_beta2 and muon_momentum must be in [0, 1)")
    if problems:
        raise ConfigError("; ".join(problems))


def resolve_config(preset: str, config_file: Path | None, overrides: list[str],
                   time_budget: float | None, max_steps: int | None) -> Config:
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    values = dict(PRESETS[preset])
    if config_file is not None:
        try:
            loaded = json.loads(config_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"--config {config_file}: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"--config {config_file} must hold one JSON object of key: value settings")
        values.update({k: coerce(k, v, from_text=False) for k, v in loaded.items()})
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r} is not key=value; valid keys: {valid_keys()}")
        values[key.strip()] = coerce(key.strip(), text, from_text=True)
    if time_budget is not None:
        values["time_budget"] = time_budget
    if max_steps is not None:
        values["max_steps"] = max_steps
    cfg = Config(**values)
    check(cfg)
    return cfg

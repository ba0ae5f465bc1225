"""GPU classes and relative speed, from the trainer's peak-FLOPs table.

Results are only comparable within one GPU class (an H200 fits more steps into a fixed budget than an H100), so
every job records the class it ran on. The table lives in trainer/gpu_specs.py (pure Python, no torch, read through
trainer/contract.py), and `gpu_class` below is the one rule that names a GPU's class: placement stamps it on
`jobs.gpu_class` and the inventory on `gpus.gpu_class`, so the two tables join and the trainer's MFU agrees.
"""
from __future__ import annotations

import re

from trainer.contract import lookup


CPU_CLASS = "cpu"


def gpu_class(model: str) -> str:
    """The class name of a GPU model as NVML reports it; unknown models get a normalized form of their name."""
    spec = lookup(model)
    if spec is not None:
        return spec.gpu_class
    name = re.sub(r"^(NVIDIA|AMD)\s+", "", model.strip(), flags=re.I)
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-") or "unknown"


def speed(model: str, memory_gb: float) -> float:
    """Relative speed for fastest-first placement: dense bf16 peak, ties broken by memory (H200 over H100)."""
    spec = lookup(model)
    peak = spec.peak_bf16_tflops if spec is not None else 0.0
    return peak + memory_gb / 1e4

"""Peak dense bf16 throughput by GPU model: the denominator of MFU, and the controller's speed ranking.

Pure Python on purpose (no torch, no NVML): the controller imports it to classify the GPUs its hosts report and to
rank them fastest-first, and the trainer imports it to turn FLOP/s into MFU.

    >>> lookup("NVIDIA H100 80GB HBM3")
    GpuSpec(gpu_class='H100-SXM', peak_bf16_tflops=989.5)
    >>> lookup("Tesla K80") is None      # unknown model: callers must omit MFU, never guess
    True

`lookup` takes a name as NVML or `torch.cuda.get_device_name()` reports it ("NVIDIA H100 PCIe"), or one of the
normalized class names below ("H100-PCIe"), case-insensitively.

Figures are the vendors' datasheet numbers for dense bf16 tensor math with fp32 accumulation (what torch's bf16
matmuls use), without structured sparsity. GeForce cards run fp32-accumulated bf16 at half their headline
fp16-accumulate rate, so their entries are that half (Ada and Ampere whitepapers: RTX 4090 165.2, RTX 3090 71).
Add a model by adding one rule; the first matching rule wins, so specific names come before general ones.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class GpuSpec:
    gpu_class: str            # normalized model name, e.g. "H100-SXM"
    peak_bf16_tflops: float   # dense bf16 tensor-core peak, TFLOP/s


# (pattern over the upper-cased name, spec). Patterns also accept the class names themselves.
_RULES: list[tuple[str, GpuSpec]] = [
    (r"B200", GpuSpec("B200", 2250.0)),
    (r"GH200", GpuSpec("GH200", 989.5)),
    (r"H200[ -]?NVL", GpuSpec("H200-NVL", 835.5)),
    (r"H200", GpuSpec("H200", 989.5)),
    (r"H100[ -]?NVL", GpuSpec("H100-NVL", 835.5)),
    (r"H100.*PCIE", GpuSpec("H100-PCIe", 756.5)),
    (r"H100", GpuSpec("H100-SXM", 989.5)),          # "NVIDIA H100 80GB HBM3", "H100 SXM5", "H100-SXM"
    (r"A100.*80\s?GB", GpuSpec("A100-80GB", 312.0)),
    (r"A100", GpuSpec("A100-40GB", 312.0)),
    (r"L40S", GpuSpec("L40S", 362.05)),
    (r"\bL40\b", GpuSpec("L40", 181.05)),
    (r"\bL4\b", GpuSpec("L4", 121.0)),
    (r"\bA10\b", GpuSpec("A10", 125.0)),
    (r"RTX ?4090(?!\s*D)", GpuSpec("RTX4090", 165.2)),
    (r"RTX ?3090(?!\s*TI)", GpuSpec("RTX3090", 71.0)),
]

# One name per class as NVML (and torch) report it: what hosts actually send, for tests and examples.
REPORTED_NAMES: dict[str, str] = {
    "B200": "NVIDIA B200", "GH200": "NVIDIA GH200 480GB", "H200-NVL": "NVIDIA H200 NVL", "H200": "NVIDIA H200",
    "H100-NVL": "NVIDIA H100 NVL", "H100-PCIe": "NVIDIA H100 PCIe", "H100-SXM": "NVIDIA H100 80GB HBM3",
    "A100-80GB": "NVIDIA A100-SXM4-80GB", "A100-40GB": "NVIDIA A100-SXM4-40GB", "L40S": "NVIDIA L40S",
    "L40": "NVIDIA L40", "L4": "NVIDIA L4", "A10": "NVIDIA A10", "RTX4090": "NVIDIA GeForce RTX 4090",
    "RTX3090": "NVIDIA GeForce RTX 3090",
}


def lookup(name: str) -> GpuSpec | None:
    """The spec for a GPU model name, or None when the model is not in the table."""
    upper = " ".join(name.upper().split())
    for pattern, spec in _RULES:
        if re.search(pattern, upper):
            return spec
    return None


def known_classes() -> list[GpuSpec]:
    """Every class in the table, fastest first (the controller's default placement order)."""
    unique = {spec.gpu_class: spec for _, spec in _RULES}
    return sorted(unique.values(), key=lambda s: -s.peak_bf16_tflops)

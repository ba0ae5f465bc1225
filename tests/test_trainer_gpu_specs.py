"""trainer.gpu_specs: GPU model names -> normalized class and dense bf16 peak, importable without torch."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from trainer.gpu_specs import REPORTED_NAMES, GpuSpec, known_classes, lookup

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name, gpu_class, tflops", [
    ("NVIDIA H100 80GB HBM3", "H100-SXM", 989.5),
    ("NVIDIA H100 PCIe", "H100-PCIe", 756.5),
    ("NVIDIA H100 NVL", "H100-NVL", 835.5),
    ("NVIDIA H200", "H200", 989.5),
    ("NVIDIA A100-SXM4-80GB", "A100-80GB", 312.0),
    ("NVIDIA A100-SXM4-40GB", "A100-40GB", 312.0),
    ("NVIDIA A100 80GB PCIe", "A100-80GB", 312.0),
    ("NVIDIA L40S", "L40S", 362.05),
    ("NVIDIA L4", "L4", 121.0),
    ("NVIDIA GeForce RTX 4090", "RTX4090", 165.2),
    ("NVIDIA GeForce RTX 3090", "RTX3090", 71.0),
    ("h100-pcie", "H100-PCIe", 756.5),   # class names, any case, map to themselves
    ("RTX4090", "RTX4090", 165.2),
])
def test_known_models(name: str, gpu_class: str, tflops: float) -> None:
    assert lookup(name) == GpuSpec(gpu_class, tflops)


@pytest.mark.parametrize("name", ["Tesla K80", "NVIDIA GeForce RTX 3090 Ti", "NVIDIA A10G", "", "cpu"])
def test_unknown_models_give_none_not_a_guess(name: str) -> None:
    assert lookup(name) is None


def test_every_class_name_looks_up_to_itself_and_ranking_is_fastest_first() -> None:
    classes = known_classes()
    assert [lookup(s.gpu_class) for s in classes] == classes
    peaks = [s.peak_bf16_tflops for s in classes]
    assert peaks == sorted(peaks, reverse=True)
    assert classes[0].gpu_class == "B200"


def test_every_class_has_one_reported_name_that_looks_up_to_it() -> None:
    assert set(REPORTED_NAMES) == {s.gpu_class for s in known_classes()}
    assert {c: lookup(n).gpu_class for c, n in REPORTED_NAMES.items()} == {c: c for c in REPORTED_NAMES}


def test_imports_without_torch() -> None:
    code = "import sys; sys.modules['torch'] = None; import trainer.gpu_specs as g; print(g.lookup('NVIDIA H200'))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "H200" in result.stdout

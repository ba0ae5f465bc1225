"""What the controller (mcp_server/) may use of the workload: the one door between the two.

The trainer knows nothing of arc; arc knows the trainer only through the names below, all standard library and
importable without torch (tests/test_workload_contract.py holds mcp_server/ to this module and to no torch):

- config resolution and its error: a job's overrides are checked at submission the way `python -m trainer.train`
  will check them (`resolve_config`, `ConfigError`), and the defaults of each preset are known (`PRESETS`, `Config`);
- the GPU table: a model name as NVML reports it to its class and dense bf16 peak (`lookup`, `GpuSpec`,
  `known_classes`, and `REPORTED_NAMES`: one reported name per class), so placement, the history and the trainer's MFU name a GPU alike;
- where the trainer's code lives (`code_folder`), which the controller snapshots and pushes to hosts.
"""
from __future__ import annotations

from pathlib import Path

from .config import PRESETS, Config, ConfigError, resolve_config
from .gpu_specs import REPORTED_NAMES, GpuSpec, known_classes, lookup

__all__ = ["PRESETS", "Config", "ConfigError", "resolve_config", "GpuSpec", "known_classes", "lookup",
           "REPORTED_NAMES", "code_folder"]


def code_folder() -> Path:
    """The trainer package's folder: the code a `config` job runs (`python -m trainer.train`)."""
    return Path(__file__).resolve().parent

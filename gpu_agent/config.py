"""The host's configuration: <workdir>/agent.json, written by the controller's bootstrap.

{"gpus": "all" | [indices], "simulate_gpus": [{"model": str, "memory_gb": number}, ...] | null, "cpu_slots": N | null,
 "preload": [module, ...] | null}

preload: the modules a warm start imports ahead of a Python job (warm.py); null is torch's stack on hosts with real
GPUs and nothing elsewhere, [] turns warm starts off.

Every key is optional; unknown keys are refused. Simulated GPUs exist only when listed here: there is no fallback.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIG_FILE = "agent.json"
MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class SimulatedGpu:
    model: str
    memory_gb: float


@dataclass(frozen=True)
class AgentConfig:
    gpus: tuple[int, ...] | None = None          # None: all GPUs NVML sees
    simulate_gpus: tuple[SimulatedGpu, ...] | None = None
    cpu_slots: int = max(1, (os.cpu_count() or 2) // 2)
    preload: tuple[str, ...] | None = None       # None: the default for the host (warm.preload_modules)


def load_config(workdir: Path) -> AgentConfig:
    path = workdir / CONFIG_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return AgentConfig()
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read it as JSON ({e}); rewrite it with `arc hosts check`") from e
    return parse_config(raw, str(path))


def parse_config(raw: Any, where: str = CONFIG_FILE) -> AgentConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    unknown = set(raw) - {"gpus", "simulate_gpus", "cpu_slots", "preload"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: gpus, simulate_gpus, cpu_slots, "
                          "preload")
    default = AgentConfig()
    return AgentConfig(
        gpus=_gpus(raw.get("gpus", "all"), where),
        simulate_gpus=_simulated(raw.get("simulate_gpus"), where),
        cpu_slots=_cpu_slots(raw.get("cpu_slots"), default.cpu_slots, where),
        preload=_preload(raw.get("preload"), where),
    )


def _gpus(value: Any, where: str) -> tuple[int, ...] | None:
    if value == "all" or value is None:
        return None
    if (isinstance(value, list) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value)
            and len(set(value)) == len(value)):
        return tuple(sorted(value))
    raise ConfigError(f'{where}: "gpus" must be "all" or a list of distinct GPU indices >= 0, got {value!r}')


def _simulated(value: Any, where: str) -> tuple[SimulatedGpu, ...] | None:
    if value is None:
        return None
    problem = f'{where}: "simulate_gpus" must be null or a list of {{"model": str, "memory_gb": number > 0}}'
    if not isinstance(value, list):
        raise ConfigError(f"{problem}, got {value!r}")
    gpus = []
    for i, item in enumerate(value):
        ok = (isinstance(item, dict) and set(item) == {"model", "memory_gb"} and isinstance(item["model"], str)
              and item["model"] and isinstance(item["memory_gb"], (int, float))
              and not isinstance(item["memory_gb"], bool) and item["memory_gb"] > 0)
        if not ok:
            raise ConfigError(f"{problem}; item {i} is {item!r}")
        gpus.append(SimulatedGpu(item["model"], float(item["memory_gb"])))
    return tuple(gpus)


def _cpu_slots(value: Any, default: int, where: str) -> int:
    if value is None:
        return default
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ConfigError(f'{where}: "cpu_slots" must be null or an integer >= 0, got {value!r}')


def _preload(value: Any, where: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, list) and all(isinstance(m, str) and MODULE_NAME.fullmatch(m) for m in value):
        return tuple(value)
    raise ConfigError(f'{where}: "preload" must be null or a list of module names like "torch._dynamo", '
                      f"got {value!r}")

"""How a job spec becomes the argv a host runs.

A trainer job is `python -m trainer.train` inside its code snapshot, reading the dataset the controller pushed to
the host (`<workdir>/data/<hash>`, which is `../../data/<hash>` from the snapshot at `<workdir>/code/<hash>`).
A command job runs its argv as given, never through a shell.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:     # for annotations only: importing the history loads DuckDB
    from ..fleet.hosts_config import HostConfig



DEFAULT_TIME_BUDGET_S = 300.0
# Start-up, compilation and evaluation happen outside the training budget; a cold compile on a Hopper GPU takes
# about a minute, so the hard limit leaves generous room before it kills a healthy run.
TRAINER_LIMIT_SLACK_S = 600.0
DEFAULT_COMMAND_LIMIT_S = 3600.0


def format_override(key: str, value: Any) -> str:
    """`key=value` as the trainer's --set parses it: JSON for everything but plain strings."""
    text = value if isinstance(value, str) else json.dumps(value)
    return f"{key}={text}"


def trainer_argv(job: dict, host: HostConfig) -> list[str]:
    argv = [host.python, "-m", "trainer.train", "--data", f"../../data/{job['data_hash']}"]
    if job.get("time_budget_s"):
        argv += ["--time-budget", f"{float(job['time_budget_s']):g}"]
    config = dict(job.get("config") or {})
    if job.get("seed") is not None:
        config["seed"] = int(job["seed"])   # the trainer takes its seed as a config key (--set seed=N)
    preset = config.pop("preset", None)
    if preset:
        argv += ["--preset", str(preset)]
    if config:
        argv += ["--set", *(format_override(k, v) for k, v in sorted(config.items()))]
    return argv


def job_argv(job: dict, host: HostConfig) -> list[str]:
    if job["kind"] == "trainer":
        return trainer_argv(job, host)
    return list(job["argv"])


def default_time_limit(kind: str, time_budget_s: float | None) -> float:
    if kind == "trainer":
        return (time_budget_s or DEFAULT_TIME_BUDGET_S) + TRAINER_LIMIT_SLACK_S
    return DEFAULT_COMMAND_LIMIT_S

"""pytest fixtures over the netns/sshd harness; tests/conftest.py registers them."""
from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.harness.netns import NetnsFleet, local_host_entry, write_hosts_yaml

DEFAULT_SIMULATED_GPUS = [{"model": "H100", "memory_gb": 80}, {"model": "H100", "memory_gb": 80}]


@pytest.fixture(scope="session")
def netns_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., NetnsFleet]]:
    """make(n, simulate_gpus=None, cpu_slots=None) -> a new NetnsFleet; all are torn down at session end."""
    made: list[NetnsFleet] = []
    counter = itertools.count(1)

    def make(n: int, *, simulate_gpus: list[dict[str, Any]] | None = None,
             cpu_slots: int | None = None) -> NetnsFleet:
        fleet = NetnsFleet.create(tmp_path_factory.mktemp(f"netns{next(counter)}"), n,
                                  simulate_gpus=simulate_gpus, cpu_slots=cpu_slots)
        made.append(fleet)
        return fleet

    yield make
    for fleet in made:
        fleet.teardown()


@pytest.fixture(scope="session")
def netns_hosts(netns_factory: Callable[..., NetnsFleet]) -> NetnsFleet:
    """Three shared hosts h1..h3, two simulated H100s each. Do not break them: use netns_factory for that."""
    return netns_factory(3, simulate_gpus=DEFAULT_SIMULATED_GPUS, cpu_slots=2)


@pytest.fixture
def local_hosts_yaml(tmp_path: Path) -> Path:
    """A hosts file with one `local` host (this machine, two simulated GPUs) and its own workdir."""
    return write_hosts_yaml(tmp_path / "hosts.yaml",
                            [local_host_entry(tmp_path / "work", simulate_gpus=DEFAULT_SIMULATED_GPUS, cpu_slots=2)])


@pytest.fixture(scope="session")
def slurm(netns_factory: Callable[..., NetnsFleet], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real Slurm: 2 nodes (network namespaces h1, h2), 2 fake H100s each; SLURM_CONF set for this process and
    its children (a `local` login); h3 is a login node with its own sshd (`harness.login`, no slurmd). Torn down at
    session end: no job and no daemon left."""
    from tests.harness.slurm import SlurmHarness
    harness = SlurmHarness.create(tmp_path_factory.mktemp("slurm"), netns_factory(3), login="h3")
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(harness.conf)
    yield harness
    harness.teardown()
    if previous is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = previous

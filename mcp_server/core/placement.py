"""Where a queued job may run, and where it should run now.

Pure functions over plain data, so the policy can be read and tested without a fleet. The scheduler feeds them the
fleet's capacity (what exists) and what is free right now.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from .models import Requirements


@dataclass(frozen=True)
class GpuSlot:
    host: str
    index: int
    model: str
    gpu_class: str
    memory_gb: float
    speed: float          # relative speed; higher is faster (see gpu_classes.speed)


@dataclass
class HostCapacity:
    name: str
    labels: tuple[str, ...] = ()
    gpus: list[GpuSlot] = field(default_factory=list)
    cpu_slots: int = 0


@dataclass(frozen=True)
class Placement:
    host: str
    gpu_indices: tuple[int, ...]     # empty for a CPU-slot job
    gpu_model: str
    gpu_class: str


def _gpu_matches(req: Requirements, gpu: GpuSlot) -> bool:
    if req.gpu_class and req.gpu_class.lower() != gpu.gpu_class.lower():
        return False
    if req.gpu_model and req.gpu_model.lower() not in gpu.model.lower() \
            and req.gpu_model.lower() != gpu.gpu_class.lower():
        return False
    if req.min_memory_gb is not None and gpu.memory_gb + 1e-9 < req.min_memory_gb:
        return False
    return True


def _host_matches(req: Requirements, host: HostCapacity) -> bool:
    if req.host and req.host != host.name:
        return False
    if req.label and req.label not in host.labels:
        return False
    return True


def why_impossible(req: Requirements, fleet: Iterable[HostCapacity]) -> str | None:
    """None when some host of the fleet could ever run the job; otherwise the reason, for the submitter."""
    hosts = [h for h in fleet if _host_matches(req, h)]
    if not hosts:
        if req.host:
            return f"no host named '{req.host}' in hosts.yaml"
        return f"no host carries the label '{req.label}'"
    if req.cpu_only:
        if any(h.cpu_slots > 0 for h in hosts):
            return None
        return "no matching host offers CPU slots (set cpu_slots in hosts.yaml)"
    best = 0
    for h in hosts:
        by_class: dict[str, int] = {}
        for g in h.gpus:
            if _gpu_matches(req, g):
                by_class[g.gpu_class] = by_class.get(g.gpu_class, 0) + 1
        best = max([best, *by_class.values()])
    if best >= req.gpus:
        return None
    wanted = " ".join(filter(None, [
        f"{req.gpus} GPU(s)",
        f"of class {req.gpu_class}" if req.gpu_class else "",
        f"of model '{req.gpu_model}'" if req.gpu_model else "",
        f"with >= {req.min_memory_gb:g} GB" if req.min_memory_gb is not None else "",
        f"on host {req.host}" if req.host else "",
        f"with label {req.label}" if req.label else "",
    ]))
    have = sorted({f"{g.gpu_class} ({g.memory_gb:.0f} GB)" for h in hosts for g in h.gpus})
    return (f"no host has {wanted}; the fleet has " + (", ".join(have) if have else "no GPUs")
            + ("" if best == 0 else f" (at most {best} matching on one host)"))


def place(req: Requirements, fleet: Iterable[HostCapacity], busy_gpus: set[tuple[str, int]],
          busy_cpu_slots: dict[str, int]) -> Placement | None:
    """The best free resources for `req` now, or None if it must wait.

    `busy_gpus` holds (host, gpu index) pairs in use; `busy_cpu_slots` counts CPU slots in use per host (the host
    agent picks which slot). Policy: the fastest free GPU class first;
    among equals, the host with the fewest free matching GPUs (packs jobs, keeping whole hosts free for wide jobs);
    then the lowest indices. Hosts in `req.avoid_hosts` (one lost the job's previous attempt) are left out while
    some other host of `fleet` could ever run the job, busy or not: the job waits for it rather than go back.
    """
    fleet = list(fleet)
    if req.avoid_hosts:
        others = [h for h in fleet if h.name not in req.avoid_hosts]
        if why_impossible(req, others) is None:
            fleet = others
    candidates: list[tuple[tuple, Placement]] = []
    for host in fleet:
        if not _host_matches(req, host):
            continue
        if req.cpu_only:
            free_slots = host.cpu_slots - busy_cpu_slots.get(host.name, 0)
            if free_slots > 0:
                candidates.append(((0.0, -free_slots, host.name),
                                   Placement(host.name, (), "cpu", "cpu")))
            continue
        free_by_class: dict[str, list[GpuSlot]] = {}
        for g in host.gpus:
            if (host.name, g.index) not in busy_gpus and _gpu_matches(req, g):
                free_by_class.setdefault(g.gpu_class, []).append(g)
        for gpus in free_by_class.values():
            if len(gpus) < req.gpus:
                continue
            chosen = sorted(gpus, key=lambda g: g.index)[: req.gpus]
            key = (-chosen[0].speed, len(gpus), host.name)
            candidates.append((key, Placement(host.name, tuple(g.index for g in chosen),
                                              chosen[0].model, chosen[0].gpu_class)))
    if not candidates:
        return None
    return min(candidates, key=lambda c: c[0])[1]

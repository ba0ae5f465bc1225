"""What this host offers: its GPUs (from NVML, or the simulated ones agent.json declares) and its CPU slots.

pynvml is imported here only, lazily, so the rest of the agent runs on hosts without it.
"""
from __future__ import annotations

import socket
from typing import Any, NamedTuple

from .claims import Claims, cpu_resource, gpu_resource
from .config import AgentConfig, ConfigError
from .protocol import GpuInfo, GpuProcess, Inventory


class Device(NamedTuple):
    index: int
    uuid: str
    name: str
    memory_total_mb: float
    simulated: bool


class Nvml:
    """One NVML session per process, opened on first use; why it failed is kept and reported, not retried."""

    def __init__(self) -> None:
        self._lib: Any = None
        self._tried = False
        self.error: str | None = None

    def open(self) -> Any:
        if not self._tried:
            self._tried = True
            try:
                import pynvml
                pynvml.nvmlInit()
                self._lib = pynvml
            except ImportError as e:
                self.error = f"pynvml is not installed ({e}); install nvidia-ml-py"
            except Exception as e:  # noqa: BLE001 - every NVMLError subclass means the same: no NVML here
                self.error = f"{type(e).__name__}: {e}"
        return self._lib

    def devices(self) -> list[Device]:
        lib = self.open()
        if lib is None:
            return []
        found = []
        for index in range(lib.nvmlDeviceGetCount()):
            handle = lib.nvmlDeviceGetHandleByIndex(index)
            found.append(Device(index, _text(lib.nvmlDeviceGetUUID(handle)), _text(lib.nvmlDeviceGetName(handle)),
                                lib.nvmlDeviceGetMemoryInfo(handle).total / 2**20, False))
        return found

    def poll(self, index: int) -> dict[str, Any]:
        """The fields that change; each is None where this GPU or driver does not report it."""
        lib = self._lib
        handle = lib.nvmlDeviceGetHandleByIndex(index)

        def read(fn: Any, *args: Any) -> Any:
            try:
                return fn(handle, *args)
            except lib.NVMLError:
                return None

        memory = read(lib.nvmlDeviceGetMemoryInfo)
        util = read(lib.nvmlDeviceGetUtilizationRates)
        power_mw = read(lib.nvmlDeviceGetPowerUsage)
        running = read(lib.nvmlDeviceGetComputeRunningProcesses) or []
        return {
            "memory_used_mb": memory.used / 2**20 if memory else None,
            "utilization_pct": float(util.gpu) if util else None,
            "temperature_c": read(lib.nvmlDeviceGetTemperature, lib.NVML_TEMPERATURE_GPU),
            "power_w": power_mw / 1000 if power_mw is not None else None,
            "processes": [GpuProcess(pid=p.pid, used_mb=p.usedGpuMemory / 2**20 if p.usedGpuMemory else None)
                          for p in running],
        }


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Gpus:
    """The GPUs jobs may claim on this host, per agent.json: the simulated ones when declared, else NVML's."""

    def __init__(self, config: AgentConfig, nvml: Nvml) -> None:
        self.config = config
        self.nvml = nvml
        self._devices: list[Device] | None = None

    @property
    def source(self) -> str:
        if self.config.simulate_gpus is not None:
            return "simulated"
        return "nvml" if self.nvml.open() is not None else "none"

    def devices(self) -> list[Device]:
        """Fixed for the life of the process (cached): the set of GPUs does not change under a running agent."""
        if self._devices is None:
            if self.config.simulate_gpus is not None:
                host = socket.gethostname()
                every = [Device(i, f"SIM-{host}-{i}", g.model, g.memory_gb * 1024, True)
                         for i, g in enumerate(self.config.simulate_gpus)]
            else:
                every = self.nvml.devices()
            self._devices = _select(every, self.config.gpus)
        return self._devices

    def by_index(self) -> dict[int, Device]:
        return {d.index: d for d in self.devices()}


def _select(devices: list[Device], wanted: tuple[int, ...] | None) -> list[Device]:
    if wanted is None:
        return devices
    present = {d.index for d in devices}
    missing = [i for i in wanted if i not in present]
    if missing:
        raise ConfigError(f'agent.json: "gpus" lists {missing} but this host has GPU indices {sorted(present)}; '
                          'fix the host\'s gpus in hosts.yaml')
    return [d for d in devices if d.index in wanted]


def inventory(gpus: Gpus, claims: Claims) -> Inventory:
    held = {c["resource"]: c for c in claims.list()}
    infos = []
    for d in gpus.devices():
        claim = held.get(gpu_resource(d.index))
        dynamic = gpus.nvml.poll(d.index) if not d.simulated else {}
        infos.append(GpuInfo(
            index=d.index, uuid=d.uuid, name=d.name, memory_total_mb=d.memory_total_mb,
            memory_used_mb=dynamic.get("memory_used_mb"), utilization_pct=dynamic.get("utilization_pct"),
            temperature_c=dynamic.get("temperature_c"), power_w=dynamic.get("power_w"),
            processes=dynamic.get("processes", []), simulated=d.simulated,
            claimed_by=claim["job_id"] if claim else None, claim_stale=bool(claim and claim["stale"])))
    slots = gpus.config.cpu_slots
    cpu_claims = [held[cpu_resource(k)] for k in range(slots) if cpu_resource(k) in held]
    source = gpus.source
    return Inventory(hostname=socket.gethostname(), source=source,
                     nvml_error=gpus.nvml.error if source == "none" else None,
                     gpus=infos, cpu_slots=slots, cpu_slots_used=len(cpu_claims), cpu_claims=cpu_claims)

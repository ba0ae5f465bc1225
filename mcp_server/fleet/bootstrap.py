"""Bootstrap and check hosts: push the agent and the trainer, check Python, NVML and torch, report readiness.
A Slurm cluster gets one row of its own: its Slurm commands, partition and GRES type, and Python and torch on a node
through a short srun (its allocations are made later, by the daemon, when work is queued)."""
from __future__ import annotations

import os
import shlex
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from mcp_server.fleet.connect import DEFAULT_CONNECT_TIMEOUT_S, make_transport
from mcp_server.fleet.errors import FleetError
from mcp_server.fleet.hosts_config import ClusterConfig, HostsFile, load_hosts
from mcp_server.fleet.push import push_tree
from mcp_server.fleet.session import AGENT_DIR, HostSession, prepare_agent
from mcp_server.fleet.transport import Transport


TRAINER_PACKAGE = "trainer"
TRAINER_DIR = Path(__file__).resolve().parents[2] / TRAINER_PACKAGE
MIN_PYTHON = (3, 10)
TORCH_TIMEOUT_S = 90.0             # a cold `import torch` takes tens of seconds on some hosts
STEPS = ("connect", "python", "agent", "code", "torch", "agent hello", "inventory")
CLUSTER_STEPS = ("connect", "slurm", "partition", "gres", "python on a node")
SLURM_COMMANDS = ("sbatch", "squeue", "srun", "scancel", "sinfo")
SRUN_IMMEDIATE_S = 60              # a check waits this long for a node, then says the partition is full
MAX_PARALLEL = 32

ProgressCallback = Callable[[str, str, int, int], None]   # (host, step, steps done, steps in all)


def _stepper(r: "HostReadiness", total: int, progress_callback: ProgressCallback | None) -> Callable[[str], None]:
    """`step(name)` for one readiness check: the step about to run is the one a failure names, and the progress
    callback hears of it."""
    done = 0

    def step(name: str) -> None:
        nonlocal done
        r.failed_step = name
        if progress_callback is not None:
            progress_callback(r.host, name, done, total)
        done += 1

    return step

_PYTHON_VERSION = "import sys; print('%d.%d.%d' % sys.version_info[:3])"
_TORCH_VERSION = """
try:
    import torch
except ImportError:
    print("absent")
else:
    print(torch.__version__, torch.cuda.is_available())
"""


@dataclass
class HostReadiness:
    host: str
    transport: str
    address: str                          # "this machine", or user@host:port (via jumps)
    ready: bool = False
    error: str | None = None              # the step that failed and why, with the fix
    failed_step: str | None = None
    python: str | None = None
    agent_hash: str | None = None
    agent_uploaded: bool | None = None
    code_hash: str | None = None
    code_path: str | None = None
    code_uploaded: bool | None = None
    agent_version: str | None = None      # what the running agent reports
    nvml: bool | None = None
    nvml_error: str | None = None
    gpu_source: str | None = None         # "nvml" | "simulated" | "none"
    gpus: list[dict[str, Any]] = field(default_factory=list)   # index, name, memory_total_mb, simulated
    cpu_slots: int | None = None
    torch: str | None = None              # version, "absent", or "unknown: why"
    cuda: bool | None = None
    warnings: list[str] = field(default_factory=list)
    slurm: str | None = None              # a cluster's row: Slurm's version, partition and GRES as found
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _StepFailed(Exception):
    pass


def check_hosts(hosts_file: HostsFile | str | os.PathLike, progress_callback: ProgressCallback | None = None, *,
                hosts: list[str] | None = None, agent_dir: Path = AGENT_DIR, code_dir: Path | None = TRAINER_DIR,
                torch_timeout: float = TORCH_TIMEOUT_S,
                connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S) -> list[HostReadiness]:
    """Bootstrap every host (or `hosts`) in parallel, then check each cluster (all of them when `hosts` is None, else
    those it names); one readiness record each, in hosts-file order."""
    hf = hosts_file if isinstance(hosts_file, HostsFile) else load_hosts(hosts_file)
    names = [n for n in hosts if n in hf.names] if hosts is not None else hf.names
    clusters = [c for c in hf.clusters if hosts is None or c.name in hosts]

    def one(name: str) -> HostReadiness:
        return bootstrap_host(make_transport(hf, name, connect_timeout), progress_callback, agent_dir=agent_dir,
                              code_dir=code_dir, torch_timeout=torch_timeout, connect_timeout=connect_timeout,
                              route=_describe(hf, name))

    def cluster(config: ClusterConfig) -> HostReadiness:
        return check_cluster(config, progress_callback, torch_timeout=torch_timeout, connect_timeout=connect_timeout)

    work = len(names) + len(clusters)
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, max(1, work)), thread_name_prefix="arc-check") as pool:
        host_rows = pool.map(one, names)
        cluster_rows = pool.map(cluster, clusters)
        return [*host_rows, *cluster_rows]


def check_cluster(config: ClusterConfig, progress_callback: ProgressCallback | None = None, *,
                  torch_timeout: float = TORCH_TIMEOUT_S,
                  connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S) -> HostReadiness:
    """A cluster's row: can arc submit there as hosts.yaml says, and run its agent on a node? Submits no holder."""
    from mcp_server.fleet.slurm import login_transport, slurm_flags

    start = time.monotonic()
    login = config.login
    r = HostReadiness(config.name, "slurm", "login on this machine" if login.transport == "local" else
                      f"login {login.user + '@' if login.user else ''}{login.address}:{login.port}")
    step = _stepper(r, len(CLUSTER_STEPS), progress_callback)

    transport = login_transport(config, connect_timeout)

    def run(command: str, timeout: float = connect_timeout) -> str:
        res = transport.run(command, timeout=timeout)
        if res.exit_code != 0:
            raise _StepFailed(f"`{command[:120]}` failed on the login (exit {res.exit_code}): "
                              f"{res.text.strip()[-300:]}; fix: make it work there (slurmctld up and reachable, "
                              f"SLURM_CONF or the config Slurm finds), or correct the cluster entry")
        return res.text

    try:
        step("connect")
        transport.connect(connect_timeout)
        step("slurm")
        found = run("for c in " + " ".join(SLURM_COMMANDS) + "; do command -v $c >/dev/null || echo missing:$c; "
                    "done; sinfo --version")
        missing = [w.split(":", 1)[1] for w in found.split() if w.startswith("missing:")]
        if missing:
            raise _StepFailed(f"{', '.join(missing)} not found on the login's PATH; fix: run arc where Slurm's "
                              f"client commands work (login: in the cluster entry), or install slurm-client")
        version = found.strip().splitlines()[-1]
        step("partition")
        partitions = {}
        for line in run("sinfo -h -o '%P|%a|%D'").splitlines():
            name, avail, nodes = (line.split("|") + ["", ""])[:3]
            partitions[name.rstrip("*")] = (name.endswith("*"), avail, nodes)
        wanted = config.partition or next((p for p, (default, _, _) in partitions.items() if default), None)
        if wanted is None or wanted not in partitions:
            raise _StepFailed(f"no partition {config.partition!r} on this cluster (there are: "
                              f"{', '.join(partitions) or 'none'}); fix: set partition: to one of them"
                              if config.partition else "the cluster has no default partition; fix: set partition:")
        _, avail, nodes = partitions[wanted]
        if avail != "up":
            r.warnings.append(f"partition {wanted} is {avail}: allocations wait until it is up")
        step("gres")
        gres = sorted({g for line in run(f"sinfo -h -p {shlex.quote(wanted)} -o '%G'").splitlines()
                       for g in line.split(",") if g.startswith("gpu")})
        fits = [g for g in gres if _gres_count(g, config.gpu_type) >= config.gpus_per_node]
        if not fits:
            raise _StepFailed(f"no node of partition {wanted} has gpu:{config.gpu_type}:{config.gpus_per_node} "
                              f"(its GRES: {', '.join(gres) or 'none'}); fix: set gpu_type to the GRES type and "
                              f"gpus_per_node to at most a node's count")
        r.slurm = f"{version}, partition {wanted} ({avail}, {nodes} nodes), {', '.join(fits)}"
        step("python on a node")
        probe = f"{shlex.quote(config.python)} -c {shlex.quote(_PYTHON_VERSION + _TORCH_VERSION)}"
        flags = " ".join(shlex.quote(f) for f in slurm_flags(config, partition=wanted))
        out = run(f"srun --immediate={SRUN_IMMEDIATE_S} -N1 -n1 --time=5 --job-name=arc-check "
                  f"{flags} {probe}", timeout=SRUN_IMMEDIATE_S + torch_timeout).strip().splitlines()
        if len(out) < 2:
            raise _StepFailed(f"{config.python} on a node printed {out!r}; fix: set python: to a Python >= 3.10 "
                              f"that the nodes have")
        r.python = out[-2].strip()
        if tuple(int(x) for x in r.python.split(".")[:2]) < MIN_PYTHON:
            raise _StepFailed(f"{config.python} on the nodes is Python {r.python}; arc's agent needs >= 3.10; fix: "
                              f"set python: /path/to/python3.10-or-newer in the cluster entry")
        words = out[-1].split()
        if words == ["absent"]:
            r.torch = "absent"
            r.warnings.append("torch is not installed on the nodes: the trainer cannot run there (pip install torch)")
        else:
            r.torch, r.cuda = words[0], words[-1] == "True"
        r.ready, r.failed_step = True, None
    except (FleetError, _StepFailed) as e:
        r.error = e.message if isinstance(e, FleetError) else str(e)
    finally:
        transport.close()
        r.seconds = time.monotonic() - start
        if progress_callback is not None:
            progress_callback(r.host, "ready" if r.ready else f"failed at {r.failed_step}", len(CLUSTER_STEPS),
                              len(CLUSTER_STEPS))
    return r


def _gres_count(gres: str, gpu_type: str) -> int:
    """GPUs of `gpu_type` in one sinfo GRES item: gpu:h100:2(S:0-1) -> 2; another type -> 0."""
    parts = gres.split("(")[0].split(":")
    if len(parts) != 3 or parts[1] != gpu_type:
        return 0
    return int(parts[2]) if parts[2].isdigit() else 0


def bootstrap_host(transport: Transport, progress_callback: ProgressCallback | None = None, *,
                   agent_dir: Path = AGENT_DIR, code_dir: Path | None = TRAINER_DIR,
                   torch_timeout: float = TORCH_TIMEOUT_S, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
                   route: str | None = None) -> HostReadiness:
    """Push what the host needs and check it; closes the transport when done."""
    start = time.monotonic()
    r = HostReadiness(transport.name, transport.host.transport, route or transport.host.address or "this machine")
    step = _stepper(r, len(STEPS), progress_callback)

    session: HostSession | None = None
    try:
        step("connect")
        transport.connect(connect_timeout)
        step("python")
        _check_python(transport, r, connect_timeout)
        step("agent")
        agent = prepare_agent(transport, agent_dir, timeout=connect_timeout * 3)
        r.agent_hash, r.agent_uploaded = agent.content_hash, agent.uploaded
        step("code")
        if code_dir is not None and code_dir.is_dir():
            # As a package (code/<hash>/trainer/...): jobs run `python -m trainer.train` with cwd code/<hash>.
            code = push_tree(transport, code_dir, "code", prefix=TRAINER_PACKAGE)
            r.code_hash, r.code_path, r.code_uploaded = code.content_hash, code.path, code.uploaded
        step("torch")
        _check_torch(transport, r, torch_timeout)
        step("agent hello")
        session = HostSession(transport, agent_dir=agent_dir, connect_timeout=connect_timeout,
                              heartbeat_s=3600.0).start(wait=connect_timeout * 5)
        if not session.connected:
            raise _StepFailed(session.last_error or "the agent session did not come up")
        hello = session.hello or {}
        r.agent_version, r.nvml, r.nvml_error = hello.get("agent_version"), hello.get("nvml"), hello.get("nvml_error")
        if hello.get("config_error"):
            raise _StepFailed(f"the agent refuses its agent.json: {hello['config_error']}; fix: correct this host's "
                              f"gpus/simulate_gpus/cpu_slots/preload in the hosts file")
        step("inventory")
        _read_inventory(session.request("inventory", timeout=connect_timeout * 3), r)
        r.ready, r.failed_step = True, None
    except (FleetError, _StepFailed) as e:
        r.error = e.message if isinstance(e, FleetError) else str(e)
    finally:
        if session is not None:
            session.close()
        transport.close()
        r.seconds = time.monotonic() - start
        if progress_callback is not None:
            progress_callback(r.host, "ready" if r.ready else f"failed at {r.failed_step}", len(STEPS), len(STEPS))
    return r


def _check_python(transport: Transport, r: HostReadiness, timeout: float) -> None:
    python = transport.host.python
    res = transport.run(f"{shlex.quote(python)} -c {shlex.quote(_PYTHON_VERSION)}", timeout=timeout)
    if res.exit_code != 0:
        raise _StepFailed(f"cannot run {python!r} on the host (exit {res.exit_code}: {res.text.strip()[-200:]}); "
                          f"fix: install Python >= 3.10 there or set python: /path/to/python3 in the hosts file")
    r.python = res.text.strip().splitlines()[-1]
    if tuple(int(x) for x in r.python.split(".")[:2]) < MIN_PYTHON:
        raise _StepFailed(f"{python} is Python {r.python}; arc's agent needs >= 3.10; fix: set python: "
                          f"/path/to/python3.10-or-newer in the hosts file")


def _check_torch(transport: Transport, r: HostReadiness, timeout: float) -> None:
    try:
        res = transport.run(f"{shlex.quote(transport.host.python)} -c {shlex.quote(_TORCH_VERSION)}",
                            timeout=timeout)
    except FleetError as e:
        if not isinstance(e, TimeoutError):
            raise
        r.torch = f"unknown: import torch took over {timeout:g}s"
        r.warnings.append(r.torch)
        return
    words = res.text.strip().splitlines()[-1].split() if res.exit_code == 0 and res.text.strip() else []
    if words == ["absent"]:
        r.torch = "absent"
        r.warnings.append("torch is not installed: the trainer cannot run here (pip install torch)")
    elif len(words) == 2:
        r.torch, r.cuda = words[0], words[1] == "True"
    else:
        r.torch = f"unknown: import torch failed: {res.text.strip()[-200:]}"
        r.warnings.append(r.torch)


def _read_inventory(inv: dict[str, Any], r: HostReadiness) -> None:
    r.gpu_source = inv.get("source")
    r.cpu_slots = inv.get("cpu_slots")
    r.gpus = [{"index": g.get("index"), "name": g.get("name"), "memory_total_mb": g.get("memory_total_mb"),
               "simulated": g.get("simulated")} for g in inv.get("gpus", [])]
    if r.gpu_source == "simulated":
        r.warnings.append("simulated GPUs (test-only): jobs run on the CPU")
    elif not r.gpus:
        why = inv.get("nvml_error") or r.nvml_error
        r.warnings.append(f"no GPUs{f' ({why})' if why else ''}: CPU slots only")


def _describe(hf: HostsFile, name: str) -> str:
    host = hf.get(name)
    if host.transport == "local":
        return "this machine"
    hops = hf.ssh_route(name)
    target = f"{hops[-1].user}@{hops[-1].hostname}:{hops[-1].port}"
    return target + (f" via {', '.join(h.hostname for h in hops[:-1])}" if len(hops) > 1 else "")

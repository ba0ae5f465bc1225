"""Slurm clusters as a source of hosts: pilot allocations (Parsl, Dask-jobqueue and HTCondor glide-ins do the same).

arc holds a node's GPUs with an sbatch *holder* job; while it runs, the allocation is a host like any other. Its
batch step runs the agent's long-lived part (`python -m gpu_agent hold`: supervisors, jobs, warm interpreters), and
the channel to it is `srun --jobid=ID --overlap … python -m gpu_agent serve --via-socket` through the login node,
which relays JSON lines. Slurm kills every process of a step when the step ends, detached ones included, so nothing
that must outlive a dropped channel may live in the overlap step (measured; ../shared/FACTS.md, Slurm).

Every Slurm command runs through the login transport (`local` when arc runs on the login node, or SSH). The holder
jobs carry a job name and comment naming this arc state directory, so a restarted daemon finds them with squeue and
never submits a duplicate nor leaks one.
"""
from __future__ import annotations

import hashlib
import logging
import math
import shlex
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from mcp_server.core.gpu_classes import gpu_class
from mcp_server.fleet.connect import DEFAULT_CONNECT_TIMEOUT_S
from mcp_server.fleet.errors import FleetError
from mcp_server.fleet.hosts_config import ClusterConfig, HostConfig, SimulatedGpu, _route, walltime_seconds
from mcp_server.fleet.local import LocalTransport
from mcp_server.fleet.sources import Demand, HostFacts, HostSource
from mcp_server.fleet.transport import DEFAULT_MAX_OUTPUT, CommandResult, ProcessStream, Stdin, Transport, shell_path

log = logging.getLogger(__name__)

SLURM_TIMEOUT_S = 20.0
SETTLE_S = 20.0              # a new allocation gets this long to take the queued work it can hold
NEAR_END_FRACTION = 0.25     # an allocation with less than this share of its walltime left is replaced, not counted
IDLE_CHECK_S = 2.0
PENDING_POLL_S = 0.1         # squeue is ~10 ms: while an allocation pends, its start is seen this soon, not a tick later
SIMULATED_MEMORY_GB = 80.0
RUNNING_STATES = {"RUNNING"}
PENDING_STATES = {"PENDING", "CONFIGURING", "REQUEUED", "RESIZING"}
# A job that has begun to end (COMPLETING) gets its final state (CANCELLED, TIMEOUT, PREEMPTED, NODE_FAIL, ...) at
# once, which is the reason worth recording; squeue -t all shows it until MinJobAge purges the job.
ENDING_STATES = {"COMPLETING", "SIGNALING", "STAGE_OUT"}
LIVE_STATES = RUNNING_STATES | PENDING_STATES | ENDING_STATES


def owner_id(state_dir: Path) -> str:
    """Names this arc state directory (its history) in holder jobs' names."""
    return hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:8]


def login_transport(config: ClusterConfig, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S) -> Transport:
    login = config.login
    if login.transport == "local":
        return LocalTransport(login)
    from mcp_server.fleet.ssh import SshTransport    # paramiko: only for a login over SSH

    return SshTransport(login, _route(_NoHosts(), login, ()), connect_timeout=connect_timeout)


class _NoHosts:
    """A login's proxy_jump names jump hosts of the ssh config, not hosts of the file."""
    names: list[str] = []
    ssh_config_path = None


class SrunTransport(Transport):
    """One allocation's commands: run inside it with `srun --overlap` through the login transport."""

    agent_mode = "serve --via-socket"

    def __init__(self, login: Transport, host: HostConfig, job_id: str, shared: str | None = None,
                 owns_login: bool = False):
        self.login, self.host, self.name, self.job_id = login, host, host.name, job_id
        self.shared = shared
        self.owns_login = owns_login

    def _in_allocation(self, command: str) -> str:
        if self.shared is not None:
            command = _share_trees(self.shared, self.host.workdir) + command
        return f"exec srun --jobid={self.job_id} --overlap --quiet -N1 -n1 /bin/sh -c {shlex.quote(command)}"

    def connect(self, timeout: float) -> None:
        self.login.connect(timeout)

    def run(self, command: str, *, stdin: Stdin = None, timeout: float = 60.0,
            max_output: int = DEFAULT_MAX_OUTPUT) -> CommandResult:
        return self.login.run(self._in_allocation(command), stdin=stdin, timeout=timeout, max_output=max_output)

    def open_process(self, command: str, timeout: float = 15.0) -> ProcessStream:
        return self.login.open_process(self._in_allocation(command), timeout=timeout)

    def probe(self, timeout: float) -> bool:
        return self.login.probe(timeout)

    def close(self) -> None:
        """A login connection of the cluster's own (the local one, shared by its allocations) is the cluster's to
        close."""
        if self.owns_login:
            self.login.close()


@dataclass
class Allocation:
    job_id: str
    state: str
    reason: str
    start: str               # Slurm's start time, or its estimate while pending
    expires_at: float | None
    node: str
    running_since: float | None = None    # monotonic, when arc first saw it running
    idle_since: float | None = None


class SlurmCluster(HostSource):
    def __init__(self, config: ClusterConfig, owner: str, login: Transport | None = None):
        self.config = config
        self.name = config.name
        self.owner = owner
        self.job_name = f"arc-{owner}-{config.name}"
        self.login = login or login_transport(config)
        self.error: str | None = None
        self._lock = threading.Lock()
        self._allocations: dict[str, Allocation] = {}
        self._read = False                  # Slurm's queue read once (allocations adopted)
        self._gone: dict[str, str] = {}     # host name -> why Slurm ended that allocation (for the jobs it took)
        self._last_idle_check = 0.0
        self._class = gpu_class(config.gpu_model)
        self._watching = False              # a thread polls squeue while an allocation pends
        self._closed = False
        # One Slurm command at a time on the login connection: the tick and that thread would otherwise take two of
        # the few sessions sshd allows a connection (MaxSessions)
        self._slurm_lock = threading.Lock()

    # ---- what the scheduler reads ------------------------------------------------------------------------

    def host_name(self, job_id: str) -> str:
        return f"{self.name}-{job_id}"

    def hosts(self) -> Sequence[HostConfig]:
        if not self._read:
            # A restarted daemon adopts its allocations before it settles the jobs its history has on them: an
            # allocation not listed yet would read as a host removed from the file, and its jobs as lost.
            self._read_queue()
        with self._lock:
            # An allocation that ends under its jobs stays a host (its session is down, nothing is dispatched there)
            # until Slurm names how it ended: that is the reason its jobs get. One arc released is no host again.
            return [self._host(a) for a in self._allocations.values()
                    if a.state in RUNNING_STATES or (a.state in ENDING_STATES and a.running_since is not None)]

    def transport(self, name: str, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S) -> Transport:
        job_id = name[len(self.name) + 1:]
        with self._lock:
            allocation = self._allocations[job_id]
        # Over SSH each allocation gets its own connection to the login: its channel holds an SSH session as long as
        # it lives, and one connection carries few (sshd's MaxSessions), so on a shared one a few allocations left no
        # session for squeue and sbatch, and the cluster read as unreachable.
        own = self.config.login.transport != "local"
        return SrunTransport(login_transport(self.config, connect_timeout) if own else self.login,
                             self._host(allocation), job_id,
                             self.config.workdir if self.config.shared_workdir else None, owns_login=own)

    def facts(self, name: str) -> HostFacts:
        with self._lock:
            allocation = self._allocations.get(name[len(self.name) + 1:])
        return HostFacts(expires_at=allocation.expires_at) if allocation else HostFacts()

    def why_gone(self, name: str) -> str | None:
        return self._gone.get(name)

    def pending(self) -> dict[str, HostFacts]:
        with self._lock:
            out = {self.host_name(a.job_id): HostFacts(waiting=f"Slurm job {a.job_id} pending ({a.reason}); "
                                                              f"start estimate {a.start}")
                   for a in self._allocations.values() if a.state in PENDING_STATES}
        if self.error:
            out[self.name] = HostFacts(waiting=f"cluster unreachable: {self.error}")
        return out

    def _host(self, a: Allocation) -> HostConfig:
        c = self.config
        simulated = tuple(SimulatedGpu(model=c.gpu_model, memory_gb=SIMULATED_MEMORY_GB)
                          for _ in range(c.gpus_per_node)) if c.simulate_gpus else None
        return HostConfig(name=self.host_name(a.job_id), transport=c.login.transport, address=c.login.address,
                          port=c.login.port, user=c.login.user, workdir=_allocation_workdir(c.workdir, a.job_id),
                          python=c.python, labels=(c.name, "slurm"), simulate_gpus=simulated)

    # ---- once a tick -------------------------------------------------------------------------------------

    def refresh(self, demand: Demand) -> None:
        if not self._read_queue():
            return      # what runs there may still run: keep the allocations until Slurm says otherwise
        now = time.monotonic()
        wanted = sum(int(job.requirements.get("gpus", 1)) for job in demand.queued
                     if self.could_make(job.requirements, job.time_limit_s))
        if wanted:
            self._grow(now, wanted)
        self._release_idle(now, busy=bool(wanted))

    def _read_queue(self) -> bool:
        """This state dir's allocations as Slurm has them now; False when Slurm cannot be asked (then `error`)."""
        try:
            seen = self._squeue()
        except FleetError as e:
            self.error = e.message
            log.warning("cluster %s: %s", self.name, e.message)
            return False
        self.error = None
        self._read = True
        now = time.monotonic()
        with self._lock:
            for job_id, a in seen.items():
                old = self._allocations.get(job_id)
                if a.state in RUNNING_STATES:
                    a.running_since = old.running_since if old and old.running_since else now
                    a.idle_since = old.idle_since if old else None
                elif a.state in ENDING_STATES and old is not None:
                    a.running_since = old.running_since
            for job_id, old in self._allocations.items():
                a = seen.get(job_id)
                if old.state in RUNNING_STATES | ENDING_STATES and (
                        a is None or a.state not in RUNNING_STATES | ENDING_STATES):
                    self._gone[self.host_name(job_id)] = _ended(a, job_id)
            self._allocations = {j: a for j, a in seen.items() if a.state in LIVE_STATES}
        return True

    def could_make(self, req: dict, time_limit_s: float | None = None) -> bool:
        if time_limit_s is not None and time_limit_s > self.config.walltime_s:
            return False    # an allocation would end before the job's time limit: it could never be placed there
        gpus = req.get("gpus", 1)
        if req.get("cpu_only") or not gpus or gpus > self.config.gpus_per_node:
            return False
        if req.get("gpu_class") and req["gpu_class"].lower() != self._class.lower():
            return False
        if req.get("gpu_model") and req["gpu_model"].lower() not in self.config.gpu_model.lower() \
                and req["gpu_model"].lower() != self._class.lower():
            return False
        host = req.get("host")
        return not host or host == self.name or host.startswith(self.name + "-")

    def _grow(self, now: float, queued_gpus: int) -> None:
        with self._lock:
            allocations = list(self._allocations.values())
        pending = [a for a in allocations if a.state in PENDING_STATES]
        usable = [a for a in allocations if a.state in RUNNING_STATES and not self._near_end(a)]
        fresh = [a for a in usable if now - (a.running_since or now) < SETTLE_S]
        # A pending or fresh allocation takes up to gpus_per_node of the queue's GPUs: ask for more only for what
        # they cannot, all at once (a queue of 40 one-GPU jobs wants every node now: asked one after the other, the
        # second node started a second or more after the first)
        per_node = self.config.gpus_per_node
        wanted = math.ceil(max(0, queued_gpus - (len(fresh) + len(pending)) * per_node) / per_node)
        for _ in range(min(wanted, self.config.max_nodes - len(usable) - len(pending))):
            self.submit()

    def _near_end(self, a: Allocation) -> bool:
        return a.expires_at is not None and a.expires_at - time.time() < NEAR_END_FRACTION * self.config.walltime_s

    def _release_idle(self, now: float, busy: bool) -> None:
        with self._lock:
            running = [a for a in self._allocations.values() if a.state in RUNNING_STATES]
        if busy or not running:
            for a in running:
                a.idle_since = None
            return
        if now - self._last_idle_check < IDLE_CHECK_S:
            return
        self._last_idle_check = now
        for a in running:
            if self._claims(a):
                a.idle_since = None
                continue
            a.idle_since = a.idle_since or now
            if now - a.idle_since >= self.config.idle_release_s:
                log.info("cluster %s: allocation %s idle for %.0fs: releasing it", self.name, a.job_id,
                         now - a.idle_since)
                self.cancel([a.job_id])

    def _claims(self, a: Allocation) -> bool:
        """True when a job holds a GPU or CPU slot of the allocation (read from its agent's claim files)."""
        w = shell_path(_allocation_workdir(self.config.workdir, a.job_id))
        try:
            r = SrunTransport(self.login, self._host(a), a.job_id).run(
                f"ls {w}/claims 2>/dev/null | head -1", timeout=SLURM_TIMEOUT_S)
        except FleetError:
            return True     # unknown: never release on a guess
        return r.exit_code != 0 or bool(r.text.strip())

    # ---- Slurm commands ----------------------------------------------------------------------------------

    def _slurm(self, command: str, stdin: bytes | None = None) -> str:
        with self._slurm_lock:
            self.login.connect(SLURM_TIMEOUT_S)
            r = self.login.run(command, stdin=stdin, timeout=SLURM_TIMEOUT_S)
        if r.exit_code != 0:
            raise FleetError(self.name, f"{command.split()[0]} failed (exit {r.exit_code}): "
                                        f"{r.text.strip()[-300:]}")
        return r.text

    def _squeue(self) -> dict[str, Allocation]:
        out = self._slurm(f"squeue -h -t all --name={shlex.quote(self.job_name)} -o '%i|%T|%r|%S|%L|%N|%k'")
        found: dict[str, Allocation] = {}
        now = time.time()
        for line in out.splitlines():
            parts = line.split("|", 6)
            if len(parts) != 7 or f"owner={self.owner}" not in parts[6]:
                continue
            job_id, state, reason, start, left, node, _ = parts
            seconds = walltime_seconds(left)
            if seconds is None and state in RUNNING_STATES:
                # Past its time limit Slurm shows no time left ("INVALID") until it gets round to ending the job
                # (tens of seconds): the allocation is ending, not endless.
                seconds = 0
            found[job_id] = Allocation(job_id, state, reason, start, None if seconds is None else now + seconds,
                                       node)
        return found

    def submit(self) -> str:
        """Ask Slurm for one more allocation (a holder job); returns its job id."""
        c = self.config
        w = shell_path(c.workdir.rstrip("/")) + "/alloc-$SLURM_JOB_ID"
        script = (f"#!/bin/sh\n"
                  f"# arc's holder: the agent of this allocation lives in this batch step (see mcp_server/fleet/slurm.py)\n"
                  f"W={w}\nmkdir -p \"$W\"\n"
                  f"while [ ! -s \"$W/hold-root\" ]; do sleep 0.1; done\n"
                  f"cd \"$(cat \"$W/hold-root\")\" && exec {shlex.quote(c.python)} -u -m gpu_agent --workdir \"$W\" hold\n")
        flags = ["--parsable", f"--job-name={self.job_name}", f"--comment=arc owner={self.owner} cluster={c.name}",
                 f"--gres=gpu:{c.gpu_type}:{c.gpus_per_node}", "--nodes=1", "--ntasks=1",
                 f"--time={_slurm_time(c.walltime_s)}", "--output=/dev/null"]
        flags += slurm_flags(c)
        job_id = self._slurm("sbatch " + " ".join(shlex.quote(f) for f in flags), stdin=script.encode())
        job_id = job_id.strip().splitlines()[-1].split(";")[0]
        log.info("cluster %s: asked for an allocation (Slurm job %s)", self.name, job_id)
        with self._lock:
            self._allocations[job_id] = Allocation(job_id, "PENDING", "submitted", "unknown", None, "")
            start = not self._watching
            self._watching = True
        if start:
            threading.Thread(target=self._watch_pending, name=f"slurm-{self.name}-pending", daemon=True).start()
        return job_id

    def _watch_pending(self) -> None:
        """While arc's allocations pend, poll squeue and call `on_change` the moment one runs: its host then joins
        the fleet and its agent starts at once, not at the next tick. Only reads: the tick's refresh owns the state."""
        try:
            while True:
                with self._lock:
                    pending = {j for j, a in self._allocations.items() if a.state in PENDING_STATES}
                    if not pending or self._closed:
                        self._watching = False
                        return
                time.sleep(PENDING_POLL_S)
                try:
                    seen = self._squeue()
                except FleetError:
                    continue    # the tick's refresh reports it
                if any(seen[j].state not in PENDING_STATES for j in pending if j in seen) and self.on_change:
                    self.on_change()
        except BaseException:
            with self._lock:
                self._watching = False
            raise

    def cancel(self, job_ids: list[str]) -> None:
        if job_ids:
            self._slurm("scancel " + " ".join(shlex.quote(j) for j in job_ids))
        with self._lock:
            for j in job_ids:
                self._allocations.pop(j, None)

    def release(self) -> list[str]:
        """Cancel every allocation of this arc state directory on the cluster, running or pending."""
        job_ids = sorted(j for j, a in self._squeue().items() if a.state in RUNNING_STATES | PENDING_STATES)
        self.cancel(job_ids)
        return job_ids

    def close(self) -> None:
        """Allocations outlive the daemon on purpose (a restart adopts them); `arc clusters release` ends them."""
        self._closed = True
        self.login.close()


def slurm_flags(c: ClusterConfig, partition: str | None = None) -> list[str]:
    """Where the cluster entry says arc's jobs go (partition, account, qos, constraint, its own sbatch_args)."""
    return [f"--{k}={v}" for k, v in (("partition", partition or c.partition), ("account", c.account),
                                      ("qos", c.qos), ("constraint", c.constraint)) if v] + list(c.sbatch_args)


def _ended(a: Allocation | None, job_id: str) -> str:
    if a is None:
        return f"Slurm job {job_id} (its allocation) left Slurm's queue"
    reason = f" ({a.reason})" if a.reason and a.reason != "None" else ""
    return f"Slurm ended its allocation (job {job_id} {a.state}{reason})"


def _share_trees(workdir: str, allocation_workdir: str) -> str:
    """Shell that points an allocation's agent/, code/ and data/ at the cluster workdir's (a shared filesystem): what
    one allocation pushed, the next finds there. Before every command, since the first one already checks for the
    agent; claims and jobs stay the allocation's own."""
    shared, own = shell_path(workdir.rstrip("/")), shell_path(allocation_workdir)
    return (f"mkdir -p {own} {shared}/agent {shared}/code {shared}/data && for k in agent code data; do "
            f"[ -L {own}/$k ] || ln -sn {shared}/$k {own}/$k 2>/dev/null || [ -L {own}/$k ]; done && ")


def _allocation_workdir(workdir: str, job_id: str) -> str:
    # Two allocations on one node both see their GPUs as 0..N-1: each needs its own claims.
    return f"{workdir.rstrip('/')}/alloc-{job_id}"


def _slurm_time(seconds: int) -> str:
    minutes = math.ceil(seconds / 60)
    return f"{minutes // 1440}-{minutes % 1440 // 60:02d}:{minutes % 60:02d}:00"

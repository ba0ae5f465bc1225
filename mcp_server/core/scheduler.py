"""The scheduler: queue → placement → dispatch → ingest → reconcile.

Principles (DESIGN.md): the intent is written before the side effect (a job gets its host, GPUs and a fresh launch
token in the history before the launch request leaves); an ambiguous launch is `unconfirmed`, never failed, until the
host is asked; the host is the truth for execution, the history for identity.

Threads: one dispatcher (woken by "GPU freed" events from the host sessions, by submissions and by a short tick),
one ticker (reconciliation, live metrics, lost hosts), and per host one worker for launches and one for ingestion, so
a slow host never delays another. GPU bookkeeping lives in memory under one lock and is rebuilt from the history and
the hosts' claims on start.

The gap from a freed GPU to the next start is the dispatcher's critical path (bench/dispatch_gap.py), so: the
dispatcher keeps the queue it read and reads it again only when it may have changed (a submission, a requeue, a
failed compare-and-set, the tick); a launcher thread only sends launches, and what follows a reply goes to the
host's ingestion worker; and history writes off the critical path (ingestion, start and launch confirmations) wait,
briefly, for a pending dispatch round to finish, since every write takes the history's one write lock.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from gpu_agent.protocol import TERMINAL_STATUSES as AGENT_TERMINAL

from ..fleet import AgentError, Fleet, HostUnavailable, ProtocolError, RequestTimeout
from ..fleet.sources import Demand, HostFacts, HostSource, QueuedJob
from ..fleet.hosts_config import HostConfig, HostsFile
from ..history import History, JobChange
from ..research.guard import Allowance
from ..stores.code import CodeStore
from . import gpu_classes
from .models import DEFAULT_MAX_ATTEMPTS, Requirements
from .placement import GpuSlot, HostCapacity, Placement, place, why_impossible
from .vocabulary import IN_FLIGHT_STATUSES, LAUNCHING_STATUSES, TERMINAL_STATUSES, WAITING_STATUSES, JobStatus


log = logging.getLogger("arc.scheduler")

DISPATCH_FIRST_S = 0.2   # longest a background history write waits for a pending dispatch round


def host_row(config: HostConfig, hello: dict | None) -> dict[str, Any]:
    """The history's `hosts` row for a host that just answered: hosts.yaml's facts and the agent's hello."""
    hello = hello or {}
    return {"name": config.name, "transport": config.transport, "address": config.address,
            "labels": list(config.labels), "cost_per_gpu_hour": config.cost_per_gpu_hour, "reachable": True,
            "last_seen": time.time(), "python": hello.get("python"), "agent_version": hello.get("agent_version"),
            "nvml": hello.get("nvml")}


@dataclass
class SchedulerSettings:
    tick_s: float = 1.0
    launch_timeout_s: float = 20.0
    request_timeout_s: float = 10.0
    live_ingest_every_s: float = 5.0
    lost_after_s: float = 600.0          # a host away longer than this: its jobs are lost
    unconfirmed_recheck_s: float = 5.0
    kill_grace_s: float = 10.0


@dataclass
class HostRuntime:
    config: HostConfig
    capacity: HostCapacity | None = None   # None until the first inventory
    ready: bool = False                    # connected and reconciled: may receive launches
    away_since: float | None = None
    last_error: str | None = None
    pushed: set[str] = field(default_factory=set)   # code/data hashes known present on the host
    foreign: set[int] = field(default_factory=set)  # GPUs claimed by something that is not one of our jobs
    foreign_cpu: set[str] = field(default_factory=set)   # host job ids holding CPU slots that are not ours


class Scheduler:
    def __init__(self, history: History, hosts: HostSource | HostsFile, code: CodeStore, data_root,
                 settings: SchedulerSettings | None = None,
                 allowance: Callable[[], Allowance] | None = None,
                 job_argv: Callable[[dict, HostConfig], list[str]] | None = None,
                 on_tick: Callable[[], None] | None = None):
        self.history = history
        self.settings = settings or SchedulerSettings()
        self.code = code
        self.data_root = data_root
        # The research layer limits what may start (human checkpoint, budget, max GPUs) once per dispatch round.
        self.allowance = allowance or Allowance
        self.job_argv = job_argv
        self.on_tick = on_tick
        # Hosts know a job as `<job_id>-<history_id>`: histories sharing a host workdir never collide.
        self._suffix = f"-{history.history_id}"
        # Where hosts come from is the fleet's sources' business (fleet/sources.py): hosts may appear and go.
        self.fleet = Fleet(hosts, on_event=self._on_event, on_state=self._on_state)
        self.hosts: dict[str, HostRuntime] = {h.name: HostRuntime(h) for h in self.fleet.hosts()}
        self._lock = threading.RLock()
        self._busy_gpus: dict[tuple[str, int], str] = {}
        self._busy_cpu: dict[str, set[str]] = {h: set() for h in self.hosts}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._sync_soon = threading.Event()     # new work, or a source's hosts changed: read the sources now
        for source in self.fleet.sources:
            source.on_change = self._sync_soon.set
        self._queue: list[dict] = []          # queued jobs in dispatch order, as last read from the history
        self._queue_stale = True
        self._dispatch_idle = threading.Event()   # cleared while a dispatch round or a launch is under way
        self._dispatch_idle.set()
        self._launching = 0
        self._terminal_version = 0
        self._terminal_cv = threading.Condition()
        # One launcher and one ingester thread per host: a host's steps stay in order, hosts never wait on each other.
        self._launchers: dict[str, ThreadPoolExecutor] = {}
        self._ingesters: dict[str, ThreadPoolExecutor] = {}
        self._threads: list[threading.Thread] = []

    # ---- life cycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        self._rebuild_bookkeeping()
        for name, target in (("dispatcher", self._dispatch_loop), ("ticker", self._tick_loop)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        self.fleet.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._sync_soon.set()
        for t in self._threads:
            t.join(timeout=5)
        for pool in [*list(self._launchers.values()), *list(self._ingesters.values())]:
            pool.shutdown(wait=True, cancel_futures=True)
        self.fleet.close()

    def wake(self) -> None:
        """The queue changed (a submission, an approval): dispatch what fits now."""
        self._queue_stale = True
        self._dispatch_idle.clear()
        self._wake.set()

    # ---- identity on the hosts -------------------------------------------------------------------------------

    def host_job_id(self, job_id: str, attempt: int = 0) -> str:
        """The host's name for attempt `attempt` (0: the first) of a job: each attempt gets its own, so a retry on
        a host that holds an earlier attempt's job directory is a new job there, not that one."""
        return job_id + (f"_r{attempt}" if attempt else "") + self._suffix

    def our_job_id(self, host_job_id: str | None) -> str | None:
        """The history's id for a host's job id (of any attempt), or None for a job of another history (or none)."""
        if host_job_id and host_job_id.endswith(self._suffix):
            return host_job_id[: -len(self._suffix)].split("_r")[0]
        return None

    def _current_host_id(self, job: dict) -> str:
        return self.host_job_id(job["job_id"], int(job.get("attempts") or 0))

    def request(self, host: str, op: str, params: dict | None = None, timeout: float | None = None) -> Any:
        if host not in self.hosts:   # a job's host since removed from hosts.yaml, or an allocation that ended
            raise HostUnavailable(host, "no longer in the fleet (removed from hosts.yaml, or gone)")
        return self.fleet.session(host).request(op, params, timeout=timeout or self.settings.request_timeout_s)

    def host_configs(self) -> list[HostConfig]:
        """The hosts of the fleet now."""
        return [rt.config for rt in self.hosts.values()]

    def inventories(self, hosts: list[str], first_connect_s: float, timeout: float = 5.0) -> dict[str, Any]:
        """Each host's inventory, or the exception that stood in the way. Right after the daemon starts, each host
        first gets its first connection attempt (at most `first_connect_s`)."""
        for name in hosts:
            self.fleet.session(name).wait_attempted(first_connect_s)
        return self.fleet.request_all("inventory", None, timeout=timeout, hosts=hosts)

    def _executor(self, pools: dict[str, ThreadPoolExecutor], host: str, kind: str) -> ThreadPoolExecutor:
        with self._lock:
            if host not in pools:
                pools[host] = ThreadPoolExecutor(1, thread_name_prefix=f"{kind}-{host}")
            return pools[host]

    def _launcher(self, host: str) -> ThreadPoolExecutor:
        return self._executor(self._launchers, host, "launch")

    def _ingester(self, host: str) -> ThreadPoolExecutor:
        return self._executor(self._ingesters, host, "ingest")

    def _sync_hosts(self) -> None:
        """Hosts the sources made since the last tick get their runtime; hosts that went away (an allocation that
        ended) take their in-flight jobs with them: the infrastructure lost those."""
        queued = [QueuedJob(j.get("requirements") or {}, float(j["time_limit_s"])) for j in self._queue]
        added, removed = self.fleet.refresh(Demand(queued=queued))
        for name in added:
            config = next(c for c in self.fleet.hosts() if c.name == name)
            with self._lock:
                self.hosts[name] = HostRuntime(config)
                self._busy_cpu[name] = set()
        for name in removed:
            with self._lock:
                self.hosts.pop(name, None)
                self._busy_cpu.pop(name, None)
            for job in self.history.jobs(status=list(IN_FLIGHT_STATUSES), host=name, limit=None):
                reason = next((r for s in self.fleet.sources if (r := s.why_gone(name))), f"its host {name} is gone")
                if self._retry(job, name, reason):
                    continue
                if self.history.update_job(job["job_id"], expect_status=job["status"], status=JobStatus.LOST,
                                           ended_at=time.time(), reason=reason, _reason=reason):
                    self._free(job["job_id"], name)
                    self._notify_terminal()
            for pools in (self._launchers, self._ingesters):
                pool = pools.pop(name, None)
                if pool is not None:
                    pool.shutdown(wait=False, cancel_futures=True)

    # ---- bookkeeping -------------------------------------------------------------------------------------

    def _rebuild_bookkeeping(self) -> None:
        """Resources held by in-flight jobs, from the history: nothing is dispatched onto them until reconciled."""
        with self._lock:
            for job in self.history.jobs(status=list(IN_FLIGHT_STATUSES), limit=None):
                if job["host"] in self.hosts:
                    self._hold(job["job_id"], job["host"], job.get("gpu_indices") or [])
                else:   # nothing will ever reconcile it
                    reason = f"its host {job['host']} is no longer in hosts.yaml"
                    if self._retry(job, job["host"], reason):
                        continue
                    self.history.update_job(job["job_id"], expect_status=job["status"], status=JobStatus.LOST,
                                            ended_at=time.time(), reason=reason, _reason=reason)

    def _hold(self, job_id: str, host: str, gpus: list[int]) -> None:
        if gpus:
            for i in gpus:
                self._busy_gpus[(host, i)] = job_id
        else:
            self._busy_cpu[host].add(job_id)

    def _free(self, job_id: str, host: str | None) -> None:
        with self._lock:
            # Only on `host`: a retried job may hold GPUs elsewhere while its earlier attempt's end is reported.
            for key in [k for k, v in self._busy_gpus.items() if v == job_id and k[0] == host]:
                del self._busy_gpus[key]
            if host in self._busy_cpu:
                self._busy_cpu[host].discard(job_id)
        self._dispatch_idle.clear()
        self._wake.set()

    def capacity(self) -> list[HostCapacity]:
        """What the fleet has, as far as known (hosts never inventoried are left out)."""
        return [rt.capacity for rt in self.hosts.values() if rt.capacity is not None]

    def unknown_hosts(self) -> list[str]:
        return [name for name, rt in self.hosts.items() if rt.capacity is None]

    def why_impossible(self, req: Requirements, time_limit_s: float | None = None) -> str | None:
        """A reason to refuse a job at submission, or None. Hosts not yet inventoried might fit it: accept then."""
        unknown = self.unknown_hosts()
        if unknown and (req.host is None or req.host in unknown):
            return None
        wanted = req.model_dump(exclude_defaults=True)
        if any(source.could_make(wanted, time_limit_s) for source in self.fleet.sources):
            return None     # a cluster makes a host that fits when the job is queued
        reason = why_impossible(req, self.capacity())
        short = [source.name for source in self.fleet.sources if source.could_make(wanted)]
        if reason is not None and short:     # a cluster could, but its allocations end before the job's limit would
            return (f"its time limit ({time_limit_s:.0f} s) is longer than what {', '.join(short)} allocates "
                    "(walltime in hosts.yaml); lower time_limit_s, or raise that cluster's walltime")
        return reason

    def pending(self) -> dict[str, HostFacts]:
        """Capacity the sources have asked for and not got yet, with why it waits: {name: facts}."""
        return {name: facts for source in self.fleet.sources for name, facts in source.pending().items()}

    def fleet_has_gpus(self) -> bool:
        return any(c.gpus for c in self.capacity()) or any(
            rt.config.simulate_gpus for rt in self.hosts.values())

    def gpus_in_use(self) -> int:
        with self._lock:
            return len(self._busy_gpus)

    # ---- events from the hosts -----------------------------------------------------------------------------

    def _on_event(self, host: str, event: dict[str, Any]) -> None:
        kind, state = event.get("event"), event.get("state") or {}
        job_id = self.our_job_id(event.get("job_id"))
        if kind == "job_ended":
            rt = self.hosts.get(host)
            if rt is None:
                return
            with self._lock:
                freed = rt.foreign & set(state.get("gpus") or [])  # a GPU we avoided: another history's job, or
                rt.foreign -= freed                               # one of ours the history no longer counts
                freed_cpu = event.get("job_id") in rt.foreign_cpu
                rt.foreign_cpu.discard(event.get("job_id"))
            if freed or freed_cpu:
                self._dispatch_idle.clear()
                self._wake.set()
        if job_id is None:
            return
        if kind == "job_ended":
            # Free first, ingest after: the next job must not wait for metrics to be copied.
            self._free(job_id, host)
            self._ingester(host).submit(self._guard, self._ingest, host, job_id, state)
        elif kind == "job_started":
            self._ingester(host).submit(self._guard, self._mark_started, job_id, state)

    def _on_state(self, host: str, connected: bool, error: str | None) -> None:
        rt = self.hosts.get(host)
        if rt is None:
            return
        if connected:
            rt.last_error = None
            self._ingester(host).submit(self._guard, self._reconcile_host, host)
            return
        rt.ready = False
        rt.last_error = error
        if rt.away_since is None:
            rt.away_since = time.time()
        self._ingester(host).submit(self._guard, self._mark_host_away, host, error)

    def _guard(self, fn: Callable, *args) -> None:
        try:
            fn(*args)
        except (HostUnavailable, RequestTimeout) as e:   # the host's session reports and recovers this itself
            log.info("background step %s%s skipped: %s", getattr(fn, "__name__", fn), args[:2], e)
        except Exception:   # a background step must never kill its worker; the tick retries what matters
            log.exception("background step %s%s failed", getattr(fn, "__name__", fn), args[:2])

    def _maybe_idle(self) -> None:
        with self._lock:
            if self._launching == 0 and not self._wake.is_set():
                self._dispatch_idle.set()

    def _after_dispatch(self) -> None:
        """Let a pending dispatch round write first (bounded): every history write takes the one write lock."""
        self._dispatch_idle.wait(DISPATCH_FIRST_S)

    # ---- reconciliation ------------------------------------------------------------------------------------

    def _reconcile_host(self, host: str) -> None:
        """Before any launch on a (re)connected host: inventory it and settle every in-flight job it holds."""
        rt = self.hosts[host]
        self._apply_inventory(host, self.request(host, "inventory"))
        jobs = self.history.jobs(status=list(IN_FLIGHT_STATUSES), host=host, limit=None)
        states: dict[str, dict] = {}
        if jobs:
            res = self.request(host, "status", {"job_ids": [self._current_host_id(j) for j in jobs]})
            states = {self.our_job_id(s["job_id"]): s for s in res.get("jobs", [])}
        for job in jobs:
            self._settle(host, job, states.get(job["job_id"]))
        for claim in self.request(host, "claims").get("claims", []):
            if claim.get("stale") and self.our_job_id(claim.get("job_id")) is not None:
                self._lose_stale(host, claim, "its supervisor died (stale claim)")
        rt.away_since = None
        rt.ready = True
        self.history.upsert_hosts([{**host_row(rt.config, self.fleet.session(host).hello), "last_error": None}])
        log.info("host %s ready: %d GPUs, %d in-flight jobs reconciled", host,
                 len(rt.capacity.gpus) if rt.capacity else 0, len(jobs))
        self._wake.set()

    def _settle(self, host: str, job: dict, state: dict | None) -> None:
        """Make the history agree with what the host says of one in-flight job."""
        job_id, status = job["job_id"], job["status"]
        if state is None:
            if status in LAUNCHING_STATUSES:
                # No record of the launch, but a copy of it may still be on its way through a connection we gave
                # up on (a healed partition delivers it). Revoke it, so the host refuses it if it comes; or, if it
                # came meanwhile, settle the job it made.
                answer = self.request(host, "revoke_launch", {"job_id": self._current_host_id(job),
                                                              "launch_token": job["launch_token"]})
                if not answer["revoked"]:
                    self._settle(host, job, answer["state"])
                    return
                if self.history.update_job(job_id, expect_status=status, status=JobStatus.QUEUED, host=None,
                                           gpu_indices=[], gpu_model=None, gpu_class=None, launch_token=None,
                                           _reason=f"launch never reached {host}; revoked there, queued again"):
                    self._queue_stale = True
                    self._free(job_id, host)
            elif self._retry(job, host, f"{host} has no record of the job"):
                pass
            elif self.history.update_job(job_id, expect_status=status, status=JobStatus.LOST, ended_at=time.time(),
                                         reason=f"{host} has no record of the job",
                                         _reason=f"{host} has no record of the job"):
                self._free(job_id, host)
                self._notify_terminal()
            return
        if state.get("status") in AGENT_TERMINAL:
            self._free(job_id, host)
            self._ingest(host, job_id, state)
            return
        if status != JobStatus.RUNNING:
            self.history.update_job(job_id, expect_status=status, status=JobStatus.RUNNING,
                                    _reason=f"{host} reports it running")
        if job.get("cancel_requested"):
            self.request(host, "cancel", {"job_id": self._current_host_id(job)})
            self.history.add_event("cancel_sent", f"pending cancel sent to {host}", job_id=job_id, host=host)

    def _lose_stale(self, host: str, claim: dict, reason: str) -> None:
        host_job_id = claim["job_id"]
        job_id = self.our_job_id(host_job_id)
        job = self.history.get_job(job_id)
        # An earlier attempt's claim says nothing of the job now: that attempt was settled when it was lost.
        current = job is not None and self._current_host_id(job) == host_job_id
        if current and job["status"] not in TERMINAL_STATUSES and not self._retry(job, host, f"{host}: {reason}"):
            self.history.update_job(job_id, status=JobStatus.LOST, reason=reason, ended_at=time.time(),
                                    _reason=f"{host}: {reason}")
        # Only once the history says lost (or queued again) is the claim released (and an orphaned job process
        # group killed).
        self.request(host, "release_stale", {"job_id": host_job_id})
        # The inventory counted the dead claim as someone else's: its resource is free now.
        with self._lock:
            rt = self.hosts.get(host)
            if rt is not None:
                resource = claim.get("resource") or ""
                if resource.startswith("gpu") and resource[3:].isdigit():
                    rt.foreign.discard(int(resource[3:]))
                rt.foreign_cpu.discard(host_job_id)
        if current:
            self._free(job_id, host)
            self._notify_terminal()
        else:
            self._wake.set()

    def _mark_host_away(self, host: str, error: str | None) -> None:
        for job in self.history.jobs(status=[JobStatus.RUNNING], host=host, limit=None):
            self.history.update_job(job["job_id"], expect_status=JobStatus.RUNNING, status=JobStatus.UNKNOWN,
                                    _reason=f"{host} unreachable: {error or 'connection lost'}")
        self.history.upsert_hosts([{"name": host, "reachable": False, "last_error": error}])

    def _apply_inventory(self, host: str, inv: dict) -> None:
        rt = self.hosts[host]
        wanted = rt.config.gpus
        listed = [g for g in inv.get("gpus", []) if wanted == "all" or g["index"] in wanted]
        slots = []
        for g in listed:
            mem_gb = g["memory_total_mb"] / 1024
            slots.append(GpuSlot(host, g["index"], g["name"], gpu_classes.gpu_class(g["name"]), mem_gb,
                                 gpu_classes.speed(g["name"], mem_gb)))
        with self._lock:
            rt.capacity = HostCapacity(host, tuple(rt.config.labels), slots, int(inv.get("cpu_slots", 0)))
            # Claimed by anything but the job our bookkeeping puts there: another history's job, or one of ours
            # that the history no longer counts as running (lost while its host was away, say).
            rt.foreign = {g["index"] for g in listed if g.get("claimed_by") and
                          self.our_job_id(g["claimed_by"]) != self._busy_gpus.get((host, g["index"]))}
            rt.foreign_cpu = {c["job_id"] for c in inv.get("cpu_claims", [])
                              if self.our_job_id(c["job_id"]) not in self._busy_cpu[host]}
        self.history.upsert_gpus(host, listed)

    # ---- dispatch ------------------------------------------------------------------------------------------

    def _dispatch_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.settings.tick_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.dispatch_once()
            except Exception:
                self._queue_stale = True
                log.exception("dispatch failed; retrying at the next tick")
            self._maybe_idle()

    def dispatch_once(self) -> int:
        """Place and launch every queued job that fits now (within the research allowance); returns how many."""
        # The queue is read even with no host ready: a source that makes hosts (a Slurm cluster) reacts to it.
        if self._queue_stale:
            self._queue_stale = False   # first: a change while reading marks it stale again
            before = {j["job_id"] for j in self._queue}
            self._queue = self.history.jobs(status=[JobStatus.QUEUED], order="priority desc, job_num asc", limit=500)
            if any(j["job_id"] not in before for j in self._queue):
                self._sync_soon.set()   # a cluster asks for an allocation now, not at the next tick
        ready = [rt.capacity for rt in self.hosts.values() if rt.ready and rt.capacity is not None]
        if not ready or not self._queue:
            return 0
        ends = {c.name: self.fleet.facts(c.name).expires_at for c in ready}
        now = time.time()
        allowed = self.allowance()
        if allowed.held:
            return 0
        chosen: list[tuple[dict, Placement]] = []
        taken = 0
        # A round only takes resources, never frees them (frees wake the next round), so requirements that found
        # no place stay placeless for the rest of it: each distinct one is tried once, not once per queued job
        # (10,000 queued jobs on a full fleet made every round cost a second).
        no_place: set[tuple[str, float]] = set()
        expiring = any(e is not None for e in ends.values())
        with self._lock:
            busy_gpus = set(self._busy_gpus) | {(name, i) for name, rt in self.hosts.items() for i in rt.foreign}
            busy_cpu = {h: len(s) + len(self.hosts[h].foreign_cpu) for h, s in self._busy_cpu.items()}
            for job in self._queue:
                if allowed.jobs is not None and len(chosen) >= allowed.jobs:
                    break
                raw = job.get("requirements") or {}
                # A host that goes away before the job's time limit (an allocation's end) cannot take it.
                limit = float(job["time_limit_s"])
                key = (repr(sorted(raw.items())), limit if expiring else 0.0)
                if key in no_place:
                    continue
                req = Requirements.model_validate(raw)
                if allowed.gpus is not None and taken + req.gpus > allowed.gpus:
                    continue
                if req.same_class_as:
                    ref = self.history.get_job(req.same_class_as)
                    if ref is None or not ref.get("gpu_class"):
                        continue   # wait until the reference job has been placed
                    req = req.model_copy(update={"gpu_class": ref["gpu_class"], "same_class_as": None})
                fits = [c for c in ready if ends[c.name] is None or ends[c.name] - now >= limit]
                placement = place(req, fits, busy_gpus, busy_cpu)
                if placement is None:
                    no_place.add(key)
                    continue
                self._hold(job["job_id"], placement.host, list(placement.gpu_indices))   # reserved for the round
                busy_gpus |= {(placement.host, i) for i in placement.gpu_indices}
                if not placement.gpu_indices:
                    busy_cpu[placement.host] = busy_cpu.get(placement.host, 0) + 1
                chosen.append((job, placement))
                taken += len(placement.gpu_indices)
        if not chosen:
            return 0
        launches = self._write_intents(chosen)
        for job, placement, token in launches:
            with self._lock:
                self._launching += 1
            self._launcher(placement.host).submit(self._guard, self._launch, job, placement, token)
        return len(launches)

    def _write_intents(self, chosen: list[tuple[dict, Placement]]) -> list[tuple[dict, Placement, str]]:
        """Record each placement and its fresh launch token before any launch, in one transaction of a few
        statements: the jobs of a round start together instead of one commit apart. Returns the jobs still queued
        when written."""
        def intent(job: dict, placement: Placement, token: str) -> JobChange:
            where = ",".join(f"gpu{i}" for i in placement.gpu_indices) or "a CPU slot"
            return JobChange(job["job_id"], {
                "status": JobStatus.DISPATCHING, "host": placement.host, "gpu_indices": list(placement.gpu_indices),
                "gpu_model": placement.gpu_model, "gpu_class": placement.gpu_class, "launch_token": token},
                expect_status=JobStatus.QUEUED, reason=f"placed on {placement.host} {where} ({placement.gpu_class})")

        tokens = [uuid.uuid4().hex for _ in chosen]
        try:
            applied = self.history.update_jobs([intent(job, placement, token)
                                                for (job, placement), token in zip(chosen, tokens)])
        except BaseException:
            for job, placement in chosen:
                self._free(job["job_id"], placement.host)
            self._queue_stale = True
            raise
        launches = [(job, placement, token) for (job, placement), token, ok in zip(chosen, tokens, applied) if ok]
        placed = {job["job_id"] for job, _, _ in launches}
        taken = {id(job) for job, _ in chosen}
        self._queue = [job for job in self._queue if id(job) not in taken]
        for job, placement in chosen:
            if job["job_id"] not in placed:   # no longer queued (cancelled): the queue read is out of date
                self._queue_stale = True
                self._free(job["job_id"], placement.host)
        return launches

    def _launch(self, job: dict, placement: Placement, token: str) -> None:
        try:
            self._send_launch(job, placement, token)
        finally:
            with self._lock:
                self._launching -= 1
            self._maybe_idle()

    def _send_launch(self, job: dict, placement: Placement, token: str) -> None:
        host = placement.host
        rt = self.hosts[host]
        job_id = job["job_id"]
        try:
            cwd = self._ensure_pushed(host, "code", job["code_hash"]) if job.get("code_hash") else ""
            if job.get("data_hash"):
                self._ensure_pushed(host, "data", job["data_hash"])
            argv = self.job_argv(job, rt.config) if self.job_argv else list(job["argv"])
            env = {**(job.get("env") or {}), "ARC_HISTORY_JOB_ID": job_id}
            params = {
                "job_id": self._current_host_id(job), "launch_token": token, "argv": argv, "env": env, "cwd": cwd,
                "gpus": list(placement.gpu_indices), "cpu_slot": not placement.gpu_indices,
                "time_limit_s": float(job["time_limit_s"]), "kill_grace_s": self.settings.kill_grace_s,
            }
            state = self.request(host, "launch", params, timeout=self.settings.launch_timeout_s)
        except AgentError as e:
            if e.code in ("bad_request", "bad_config"):
                self._fail_launch(job_id, host, f"{host} refused the launch: {e.message}")
            elif e.code == "job_exists":   # an earlier launch of this job reached the host after all: adopt it
                self.history.update_job(job_id, expect_status=JobStatus.DISPATCHING, status=JobStatus.UNCONFIRMED,
                                        _reason=f"{host} already has this job from an earlier launch; will ask it")
            else:
                conflict = e.code == "claim_conflict"
                if conflict:   # the host is fine, a GPU of it is taken: no reason to avoid it
                    self._learn_claims(host, placement.gpu_indices)
                self._requeue(job, host, f"{e.code} on {host}: {e.message}", avoid=not conflict)
            return
        except (RequestTimeout, HostUnavailable, ProtocolError) as e:
            if not getattr(e, "request_sent", True):
                self._requeue(job, host, f"could not reach {host}: {e}", count=False)
                return
            # Ambiguous: the launch may have happened. Ask the host before doing anything else.
            self.history.update_job(job_id, expect_status=JobStatus.DISPATCHING, status=JobStatus.UNCONFIRMED,
                                    _reason=f"launch reply lost ({e}); will ask {host}")
            return
        except Exception as e:   # push or argv failure: infrastructure, retried elsewhere
            log.warning("launch of %s on %s failed before the request: %s", job_id, host, e)
            self._requeue(job, host, f"launch preparation failed on {host}: {e}")
            return
        # The launcher is free for the next launch on this host; the history hears of this one in host order.
        self._ingesters[host].submit(self._guard, self._launched, host, job_id, argv, state)

    def _launched(self, host: str, job_id: str, argv: list[str], state: dict) -> None:
        self._after_dispatch()
        # "running" too: the job_started event may have been recorded first; a job that ended stays as it is.
        # Grouped: a wave's launches are confirmed by every host's ingester at once.
        self.history.update_job_grouped(JobChange(job_id, {"status": JobStatus.RUNNING, "argv": argv},
                                                  [*LAUNCHING_STATUSES, JobStatus.RUNNING], f"launched on {host}"))
        if state.get("status") in AGENT_TERMINAL:   # it ended before the reply was read
            self._free(job_id, host)
            self._ingest(host, job_id, state)

    def _learn_claims(self, host: str, gpus: tuple[int, ...]) -> None:
        """A launch found GPUs (or every CPU slot) claimed that we thought free: ask the host which, so we avoid
        exactly those until their holders end."""
        try:
            self._apply_inventory(host, self.request(host, "inventory"))
        except (AgentError, HostUnavailable, RequestTimeout):
            with self._lock:
                self.hosts[host].foreign |= set(gpus)

    def _ensure_pushed(self, host: str, kind: str, digest: str) -> str:
        rt = self.hosts[host]
        if digest not in rt.pushed:
            local = self.code.path(digest) if kind == "code" else self.data_root / digest
            self.fleet.push_tree(host, local, kind)
            rt.pushed.add(digest)
        return f"{kind}/{digest}"

    def _requeue(self, job: dict, host: str, reason: str, count: bool = True, avoid: bool = True) -> None:
        """Queue again after a launch failed for the host's reasons; `count`: it used up one of the job's attempts
        (not when the request never left: then nothing happened on the host)."""
        if count:
            if not self._retry(job, host, reason, launching=True, avoid=avoid):
                attempts = int(job.get("attempts") or 0) + 1
                self._fail_launch(job["job_id"], host, f"{reason} (gave up after {attempts} attempts)")
            return
        if self.history.update_job(job["job_id"], expect_status=list(LAUNCHING_STATUSES), status=JobStatus.QUEUED,
                                   host=None, gpu_indices=[], gpu_model=None, gpu_class=None, launch_token=None,
                                   _reason=f"{reason}; queued again"):
            self._queue_stale = True
            self._free(job["job_id"], host)

    def _retry(self, job: dict, host: str, reason: str, started_at: float | None = None,
               launching: bool = False, avoid: bool = True) -> bool:
        """The infrastructure ended this attempt of the job (its host lost it, or the launch failed there): queue it
        again, away from `host`, if it has attempts left. False: it has none, or it is no longer in the status
        `job` shows; the caller then records the loss as before (its compare-and-set sees the change)."""
        attempts = int(job.get("attempts") or 0) + 1
        if attempts >= int(job.get("max_attempts") or DEFAULT_MAX_ATTEMPTS):
            return False
        expect = list(LAUNCHING_STATUSES) if launching else job["status"]
        if not self.history.retry_job(job["job_id"], expect, reason, started_at=started_at, avoid_host=avoid):
            return False
        self._queue_stale = True
        self._free(job["job_id"], host)
        return True

    def _fail_launch(self, job_id: str, host: str, reason: str) -> None:
        self.history.update_job(job_id, expect_status=list(LAUNCHING_STATUSES), status=JobStatus.FAILED,
                                reason=reason, ended_at=time.time(), _reason=reason)
        self._free(job_id, host)
        self._notify_terminal()

    # ---- ingestion -----------------------------------------------------------------------------------------

    def _mark_started(self, job_id: str, state: dict) -> None:
        self._after_dispatch()
        self.history.update_job_grouped(JobChange(
            job_id, {"status": JobStatus.RUNNING, "started_at": state.get("started_at")}, list(IN_FLIGHT_STATUSES),
            "process started"))

    def _ingest(self, host: str, job_id: str, state: dict | None = None) -> None:
        """Copy new metric records and the job's state from the host into the history (idempotent). A job the host
        reports lost (its supervisor died: the host crashed) is queued again while it has attempts left."""
        self._after_dispatch()
        job = self.history.get_job(job_id)
        if job is None:
            return
        host_id = self._current_host_id(job)
        if state and state.get("job_id") not in (None, host_id):
            log.info("%s: %s is an earlier attempt of %s; its end is not this attempt's", host, state["job_id"], job_id)
            return
        if not state:
            found = self.request(host, "status", {"job_ids": [host_id]}).get("jobs", [])
            if not found:
                return
            state = found[0]
        if state.get("status") == "lost" and job["status"] in IN_FLIGHT_STATUSES and job["host"] == host:
            if self._retry(job, host, f"{host}: {state.get('reason') or 'its supervisor died'}",
                           started_at=state.get("started_at")):
                # The history has queued it again: only now may the host free the claim and kill what is left.
                try:
                    self.request(host, "release_stale", {"job_id": host_id})
                except AgentError as e:
                    log.info("%s: release of %s's stale claim refused: %s", host, host_id, e)
                return
        seq = job["metrics_seq"] + 1     # metrics_high_water, from the row read above (a stale one re-sends, no more)
        records: list[dict] = []
        while True:
            res = self.request(host, "metrics", {"job_id": host_id, "from_seq": seq, "limit": 5000})
            records.extend(res.get("records", []))
            if not res.get("more") or res.get("next_seq", seq) <= seq:
                break
            seq = res["next_seq"]
        self.history.ingest(job_id, {**state, "job_id": job_id}, records)
        if state.get("status") in AGENT_TERMINAL:
            self._free(job_id, host)
            self._notify_terminal()

    def _notify_terminal(self) -> None:
        with self._terminal_cv:
            self._terminal_version += 1
            self._terminal_cv.notify_all()

    def wait_terminal(self, version: int, timeout: float) -> int:
        """Block until some job reaches a terminal state after `version` (or timeout); returns the new version."""
        with self._terminal_cv:
            self._terminal_cv.wait_for(lambda: self._terminal_version != version, timeout=timeout)
            return self._terminal_version

    @property
    def terminal_version(self) -> int:
        return self._terminal_version

    # ---- cancel ---------------------------------------------------------------------------------------------

    def cancel(self, job: dict) -> str:
        """Cancel one job: 'cancelled' (it never started), 'signalled', 'pending' (host away) or 'raced'."""
        job_id, status = job["job_id"], job["status"]
        if status in WAITING_STATUSES:
            if self.history.update_job(job_id, expect_status=status, status=JobStatus.CANCELLED, ended_at=time.time(),
                                       reason="cancelled before it started", _reason="cancelled while queued"):
                self._notify_terminal()
                return "cancelled"
            return "raced"   # it was just dispatched: cancel again
        host = job["host"]
        self.history.update_job(job_id, cancel_requested=True)
        try:
            self.request(host, "cancel", {"job_id": self._current_host_id(job)})
        except AgentError as e:
            if e.code == "unknown_job" and status in LAUNCHING_STATUSES:
                return "raced"   # the launch is still on its way; the reconcile sends the pending cancel
            raise
        except (HostUnavailable, RequestTimeout) as e:
            self.history.add_event("cancel_pending", f"{host} unreachable ({e}); cancel resent on reconnect",
                                   job_id=job_id, host=host)
            return "pending"
        self.history.add_event("cancel_sent", f"cancel sent to {host}", job_id=job_id, host=host)
        return "signalled"

    # ---- the tick -------------------------------------------------------------------------------------------

    def _tick_loop(self) -> None:
        last_live, last_tick = 0.0, time.time()     # the first full tick one tick_s after the start, as ever
        while not self._stop.is_set():
            self._sync_soon.wait(self.settings.tick_s)
            self._sync_soon.clear()
            if self._stop.is_set():
                return
            try:
                now = time.time()
                self._sync_hosts()
                if now - last_tick < self.settings.tick_s:
                    self._wake.set()    # an early sync: only the hosts (a new one may take queued work)
                    continue
                last_tick = now
                self._expire_away_hosts(now)
                self._recheck_unconfirmed()
                if now - last_live >= self.settings.live_ingest_every_s:
                    last_live = now
                    self._live_ingest()
                    if self.on_tick is not None:
                        self.on_tick()
                self.wake()   # the backstop: also reads the queue again (cancellations, other changes)
            except Exception:
                log.exception("tick failed")

    def _expire_away_hosts(self, now: float) -> None:
        for name, rt in list(self.hosts.items()):
            if rt.away_since is None or now - rt.away_since < self.settings.lost_after_s:
                continue
            for job in self.history.jobs(status=list(IN_FLIGHT_STATUSES), host=name, limit=None):
                if self._retry(job, name, f"{name} unreachable for more than {self.settings.lost_after_s:.0f} s"):
                    continue
                if self.history.update_job(
                        job["job_id"], expect_status=job["status"], status=JobStatus.LOST, ended_at=now,
                        reason=f"{name} unreachable for more than {self.settings.lost_after_s:.0f} s",
                        _reason=f"{name} away past the grace period"):
                    self._free(job["job_id"], name)
                    self._notify_terminal()

    def _recheck_unconfirmed(self) -> None:
        for job in self.history.jobs(status=[JobStatus.UNCONFIRMED], limit=None):
            rt = self.hosts.get(job["host"])
            if rt is not None and rt.ready:
                self._ingester(rt.config.name).submit(self._guard, self._confirm, job)

    def _confirm(self, job: dict) -> None:
        host = job["host"]
        found = self.request(host, "status", {"job_ids": [self._current_host_id(job)]}).get("jobs", [])
        current = self.history.get_job(job["job_id"])
        if current is not None and current["status"] == JobStatus.UNCONFIRMED:
            self._settle(host, current, found[0] if found else None)

    def _live_ingest(self) -> None:
        """Copy what running jobs printed since the last look. Per host, one status request for all its running
        jobs, then an ingest only of those with something new (metrics past the history's, more log, an end): a
        request and a history transaction per job every few seconds held the write lock for seconds on a fleet of
        512 running jobs, and a dispatch round waited behind them."""
        by_host: dict[str, list[dict]] = {}
        for job in self.history.jobs(status=[JobStatus.RUNNING], limit=None):
            rt = self.hosts.get(job["host"])
            if rt is not None and rt.ready:
                by_host.setdefault(rt.config.name, []).append(job)
        for host, jobs in by_host.items():
            self._ingester(host).submit(self._guard, self._live_ingest_host, host, jobs)

    def _live_ingest_host(self, host: str, jobs: list[dict]) -> None:
        res = self.request(host, "status", {"job_ids": [self._current_host_id(job) for job in jobs]})
        states = {s["job_id"]: s for s in res.get("jobs", [])}
        for job in jobs:
            state = states.get(self._current_host_id(job))
            if state is None:   # not on the host (any more): the reconciliation settles that, not a metrics copy
                continue
            # `job` was read before this step waited its turn: at worst it shows less than the history has, and an
            # ingest with nothing new writes nothing.
            if (state.get("metrics_count", 0) > job["metrics_seq"] + 1 or state.get("log_bytes") != job["log_bytes"]
                    or state.get("status") in AGENT_TERMINAL):
                self._ingest(host, job["job_id"], state)

"""Launch: check the request, hand the job's plan to a supervisor process, and wait for its answer.

Supervisors are forked from this process, never started as a fresh Python (tens of milliseconds): the launch-to-start
latency is what the scheduler's dispatch gap is made of. The serve loop goes further and keeps one spare supervisor
forked ahead, already detached and waiting for a plan, so a launch costs a pipe write instead of a fork. fork()
must come from a single-threaded process, which the agent's CLI and serve loop are.

Where the host preloads modules (warm.py), the serve loop also keeps warm spares: after a Python job's launch, one
whose child is that job's interpreter and environment with the preload imported, ready for the next job with the
same key. There is at most one per GPU set (CUDA_VISIBLE_DEVICES), the newest key winning, so their count stays
within the host's GPUs (plus one for CPU jobs).

A launch is idempotent on its token: a job directory holding the same token is returned as it is, never started
twice; the same job id with another token is refused.
"""
from __future__ import annotations

import json
import os
import select
import time
from pathlib import Path
from typing import Any, NamedTuple

from . import supervisor, warm
from .claims import Claims, gpu_resource
from .errors import AgentRefusal
from .inventory import Gpus
from .jobstore import JobStore
from .protocol import JobState

HANDSHAKE_TIMEOUT_S = 30.0
DUPLICATE_WAIT_S = 2.0
CACHE_DIR = "cache"

# Every job runs in its own session, so Linux (autogroup) schedules it as its own group: when anything else is busy,
# a job's OpenMP threads cannot all run at once, and GNU OpenMP's default spin of 300,000 iterations per wait burns
# the group's share waiting for a thread that is not running. Measured on 2 cores with one busy process beside it
# (bench/cpu_contention.py, median of 3): the CPU trainer's 40 steps trained in 124 s; with a spin of 1,000, in 9.2 s
# (5.3 s and 5.5 s on the quiet machine). The agent's or the job's own environment wins.
JOB_ENV_DEFAULTS = {"GOMP_SPINCOUNT": "1000"}


class Watch(NamedTuple):
    """The serve loop's handle on a supervisor it forked: its messages, and EOF when it exits, arrive on `fd`."""
    job_id: str
    pid: int
    fd: int
    pending: bytes      # bytes read past the handshake line (the {"started": ...} line may be there already)


class _Spare(NamedTuple):
    pid: int
    plan_fd: int        # write the plan here, then close it
    events_fd: int      # the supervisor's messages


class Launcher:
    def __init__(self, workdir: Path, store: JobStore, claims: Claims, gpus: Gpus) -> None:
        self.workdir, self.store, self.claims, self.gpus = workdir, store, claims, gpus
        self._spare: _Spare | None = None
        self._preload: tuple[str, ...] | None = None
        self._warm_wanted: dict[str, warm.WarmStart] = {}     # by GPU set: the key of its latest launch
        self._warm: dict[str, tuple[warm.Key, _Spare]] = {}         # by GPU set: the warm spare ready for it

    @property
    def preload(self) -> tuple[str, ...]:
        if self._preload is None:
            real = self.gpus.source == "nvml" and bool(self.gpus.devices())
            self._preload = warm.preload_modules(self.gpus.config.preload, real)
        return self._preload

    def prepare(self) -> None:
        """Fork the next supervisors now, while nothing waits on this process (the serve loop calls this)."""
        if self._spare is None:
            self._spare = self._fork()
        for gpu_set, start in self._warm_wanted.items():
            ready = self._warm.get(gpu_set)
            if ready is not None and ready[0] == start.key:
                continue
            if ready is not None:
                _retire(ready[1])
            self._warm[gpu_set] = (start.key, self._fork(start))

    def launch(self, p: dict[str, Any]) -> tuple[JobState, Watch | None]:
        """`p` holds validated LaunchParams. Returns the job's state and, for a new job, the supervisor to watch."""
        job_id = p["job_id"]
        existing = _existing(self.store, job_id, p["launch_token"])
        if existing is not None:
            return existing, None
        job_plan = _plan(self.workdir, self.gpus, p)
        plan = json.dumps(vars(job_plan)).encode()     # not asdict: its deep copy of the env was 9% of a launch
        key = warm.key(job_plan.argv, job_plan.env) if self.preload else None
        ready = self._warm.get(key.gpus) if key is not None else None
        if ready is not None and ready[0] == key:
            spare = self._warm.pop(key.gpus)[1]
        else:
            spare, self._spare = self._spare or self._fork(), None
        if key is not None:
            self._warm_wanted.pop(key.gpus, None)       # re-inserted last: the newest GPU set is kept longest
            self._warm_wanted[key.gpus] = warm.WarmStart(key, job_plan.env, self.preload)
            while len(self._warm_wanted) > len(self.gpus.devices()) + 1:
                dropped = next(iter(self._warm_wanted))
                del self._warm_wanted[dropped]
                if dropped in self._warm:
                    _retire(self._warm.pop(dropped)[1])
        answer = self._hand_over(spare, plan, job_id)
        if answer is None:      # that spare was dead (killed while waiting) and did nothing: a fresh one will do
            spare = self._fork()
            answer = self._hand_over(spare, plan, job_id)
        line, pending = answer or ({"error": "launch_failed", "message": f"the supervisor of {job_id} exited"}, b"")
        if line.get("ok"):
            return line["state"], Watch(job_id, spare.pid, spare.events_fd, pending)
        try:
            os.waitpid(spare.pid, 0)    # it exits right after saying no
        except ChildProcessError:
            pass
        error = line.get("error")
        if error == "exists" or (error == "claim_conflict" and line.get("holder") == job_id):
            # The same launch raced with itself (a retry through a second session): the first one is the job.
            return _wait_existing(self.store, job_id, p["launch_token"]), None
        raise AgentRefusal(error, line["message"])

    def _hand_over(self, spare: _Spare, plan: bytes, job_id: str) -> tuple[dict[str, Any], bytes] | None:
        """Give the plan to the spare and read its first answer; None if it died without leaving any trace."""
        try:
            _write_all(spare.plan_fd, plan)
        except BrokenPipeError:
            pass                        # it is dead: its events pipe is at EOF too
        finally:
            os.close(spare.plan_fd)
        line, pending = _handshake(spare.events_fd, job_id)
        if line is not None:
            if not line.get("ok"):
                os.close(spare.events_fd)
            return line, pending
        os.close(spare.events_fd)
        if self.store.exists(job_id) or self.claims.held_by(job_id):
            return {"error": "launch_failed", "message": f"the supervisor of {job_id} died during the launch; its "
                                                          "claims are stale (see the claims op)"}, b""
        return None

    def _fork(self, warm_start: warm.WarmStart | None = None) -> _Spare:
        plan_r, plan_w = os.pipe()
        events_r, events_w = os.pipe()
        try:
            pid = os.fork()
        except OSError as e:
            for fd in (plan_r, plan_w, events_r, events_w):
                os.close(fd)
            raise AgentRefusal("launch_failed", f"cannot fork a supervisor: {e.strerror or e}") from None
        if pid == 0:
            status = 70         # EX_SOFTWARE, should the supervisor itself raise
            try:
                os.close(plan_w)
                os.close(events_r)
                status = supervisor.main(self.store, self.claims, plan_r, events_w, warm_start)
            finally:
                os._exit(status)
        os.close(plan_r)
        os.close(events_w)
        return _Spare(pid, plan_w, events_r)


def _retire(spare: _Spare) -> None:
    """A spare no longer wanted: without a plan it kills its warm child and exits (the serve loop reaps it)."""
    os.close(spare.plan_fd)
    os.close(spare.events_fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _existing(store: JobStore, job_id: str, token: str) -> JobState | None:
    try:
        spec = store.spec(job_id)
    except AgentRefusal:
        return None
    if spec["launch_token"] != token:
        raise AgentRefusal("job_exists", f"job {job_id} already exists on this host with another launch token; "
                                         "a new launch needs a new job id")
    return store.state(job_id)


def _wait_existing(store: JobStore, job_id: str, token: str) -> JobState:
    deadline = time.monotonic() + DUPLICATE_WAIT_S
    while (state := _existing(store, job_id, token)) is None:
        if time.monotonic() > deadline:
            raise AgentRefusal("claim_conflict", f"job {job_id} is being launched by another request; "
                                                 "ask for its status")
        time.sleep(0.01)
    return state


def _plan(workdir: Path, gpus: Gpus, p: dict[str, Any]) -> supervisor.JobPlan:
    devices = gpus.by_index()
    missing = [i for i in p["gpus"] if i not in devices]
    if missing:
        raise AgentRefusal("no_such_gpu",
                           f"GPU index(es) {missing} not on this host; it has {sorted(devices) or 'none'}")
    if not p["gpus"] and gpus.config.cpu_slots == 0:
        raise AgentRefusal("claim_conflict", "this host takes no CPU-only jobs (cpu_slots is 0 in agent.json)")
    cwd = (workdir / p["cwd"]).resolve() if p["cwd"] else workdir.resolve()
    if not cwd.is_dir():
        raise AgentRefusal("bad_request", f"cwd {p['cwd']!r} is not a directory on this host ({cwd}); "
                                          "push the code first or pass an existing directory")
    chosen = [devices[i] for i in p["gpus"]]
    simulated = any(d.simulated for d in chosen)
    cache = workdir / CACHE_DIR
    cache.mkdir(exist_ok=True)
    env = {**JOB_ENV_DEFAULTS, **os.environ, "PYTHONUNBUFFERED": "1", **p["env"],
           # Set last: a job may not pick other GPUs than it claimed. Simulated GPUs run on the CPU.
           "CUDA_VISIBLE_DEVICES": "" if simulated else ",".join(str(i) for i in p["gpus"]),
           "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
           "ARC_JOB_ID": p["job_id"],
           "ARC_CACHE_DIR": str(cache.resolve()),
           "ARC_GPU_MODEL": chosen[0].name if chosen else ""}
    spec = {"job_id": p["job_id"], "launch_token": p["launch_token"], "argv": p["argv"], "env": p["env"],
            "cwd": str(cwd), "gpus": p["gpus"], "gpu_uuids": [d.uuid for d in chosen],
            "gpu_model": env["ARC_GPU_MODEL"], "cpu_slot": not p["gpus"], "time_limit_s": p["time_limit_s"],
            "kill_grace_s": p["kill_grace_s"]}
    return supervisor.JobPlan(
        job_id=p["job_id"], launch_token=p["launch_token"], argv=p["argv"], env=env, cwd=str(cwd), gpus=p["gpus"],
        gpu_uuids=spec["gpu_uuids"], gpu_resources=[gpu_resource(i) for i in p["gpus"]],
        cpu_slots=gpus.config.cpu_slots, time_limit_s=p["time_limit_s"], kill_grace_s=p["kill_grace_s"], spec=spec)


def _handshake(fd: int, job_id: str) -> tuple[dict[str, Any] | None, bytes]:
    """The supervisor's first message, and what came after it; None at EOF without one."""
    buf = b""
    deadline = time.monotonic() + HANDSHAKE_TIMEOUT_S
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            os.close(fd)
            raise AgentRefusal("launch_failed",
                               f"the supervisor of {job_id} did not answer in {HANDSHAKE_TIMEOUT_S:g}s; "
                               "the job may still start: ask for its status before launching again")
        chunk = os.read(fd, 4096)
        if not chunk:
            return None, b""
        buf += chunk
    line, _, pending = buf.partition(b"\n")
    return json.loads(line), pending

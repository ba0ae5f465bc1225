"""The agent's operations: one request dict in, one response dict out, for the serve loop and the CLI alike.

Every op checks its params against the protocol's declaration of them (protocol.PARAMS, PARAM_RULES: unknown keys,
wrong types and out-of-range values are bad_request naming the field and what it must be), so a controller bug shows
up as a clear error rather than a silently ignored field.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import os
import platform
import signal
import socket
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from . import launcher, procs, protocol, typecheck
from .claims import Claims
from .config import AgentConfig, ConfigError, load_config
from .errors import AgentRefusal
from .inventory import Gpus, Nvml, inventory
from .jobstore import JobStore
from .metrics import read_metrics
from .protocol import TERMINAL_STATUSES, JobState, Response
from .tail import tail

ORPHAN_KILL_WAIT_S = 5.0


class Agent:
    def __init__(self, workdir: Path, on_launch: Callable[[launcher.Watch], None] | None = None) -> None:
        workdir = workdir.resolve()     # supervisors leave the launcher's cwd: every path they hold is absolute
        self.workdir = workdir
        for sub in ("claims", "jobs", "cache"):
            (workdir / sub).mkdir(parents=True, exist_ok=True)
        self.store = JobStore(workdir)
        self.claims = Claims(workdir)
        self.nvml = Nvml()
        self.on_launch = on_launch
        self.stopping = False
        try:
            self.config, self.config_error = load_config(workdir), None
        except ConfigError as e:
            self.config, self.config_error = AgentConfig(), str(e)
        self.gpus = Gpus(self.config, self.nvml)
        self.launcher = launcher.Launcher(workdir, self.store, self.claims, self.gpus)
        self.ops: dict[str, Callable[[dict[str, Any]], Any]] = {
            "hello": self.hello, "inventory": self.inventory, "launch": self.launch, "status": self.status,
            "list": self.list, "cancel": self.cancel, "tail": self.tail, "metrics": self.metrics,
            "claims": self.claims_op, "release_stale": self.release_stale, "revoke_launch": self.revoke_launch,
            "shutdown": self.shutdown}

    def handle(self, request: Any) -> Response:
        rid = request.get("id") if isinstance(request, dict) else None
        try:
            if not isinstance(request, dict):
                raise AgentRefusal("bad_request", 'a request is a JSON object {"id": int, "op": str, "params": {...}}')
            op, params = request.get("op"), request.get("params") or {}
            if op not in self.ops:
                raise AgentRefusal("bad_request", f"unknown op {op!r}; ops: {', '.join(self.ops)}")
            if not isinstance(params, dict):
                raise AgentRefusal("bad_request", f"{op}: params must be a JSON object, got {type(params).__name__}")
            return {"id": rid, "ok": True, "result": self.ops[op](params)}
        except AgentRefusal as e:
            return {"id": rid, "ok": False, "error": e.info()}
        except ConfigError as e:
            return {"id": rid, "ok": False, "error": {"code": "bad_config", "message": str(e)}}
        except Exception as e:  # noqa: BLE001 - a bug answers this request; the loop keeps serving
            where = traceback.extract_tb(e.__traceback__)[-1]
            return {"id": rid, "ok": False, "error": {
                "code": "internal", "message": f"{type(e).__name__}: {e} ({Path(where.filename).name}:{where.lineno})"}}

    # ---- ops ----------------------------------------------------------------------------------------------

    def hello(self, params: dict[str, Any]) -> protocol.Hello:
        _params("hello", params)
        nvml_ok = self.nvml.open() is not None
        return protocol.Hello(protocol=protocol.PROTOCOL_VERSION, agent_version=agent_version(),
                              python=platform.python_version(), hostname=socket.gethostname(), pid=os.getpid(),
                              workdir=str(self.workdir), nvml=nvml_ok, nvml_error=self.nvml.error,
                              config_error=self.config_error, time=time.time())

    def inventory(self, params: dict[str, Any]) -> protocol.Inventory:
        _params("inventory", params)
        self._config_ok()
        return inventory(self.gpus, self.claims)

    def launch(self, params: dict[str, Any]) -> JobState:
        p = _params("launch", params)
        if p["cpu_slot"] is not None and p["cpu_slot"] == bool(p["gpus"]):
            raise AgentRefusal("bad_request", "launch: cpu_slot must be true exactly when gpus is empty "
                                              "(a job claims GPUs or one CPU slot); omit it to get that default")
        self._config_ok()
        state, watch = self.launcher.launch(p)
        if watch is not None:
            if self.on_launch is not None:
                self.on_launch(watch)
            else:
                os.close(watch.fd)
        return state

    def status(self, params: dict[str, Any]) -> protocol.StatusResult:
        p = _params("status", params)
        ids = p["job_ids"] if p["job_ids"] is not None else sorted({c["job_id"] for c in self.claims.list()})
        jobs, unknown = [], []
        for job_id in ids:
            try:
                jobs.append(self.store.state(job_id))
            except AgentRefusal:
                unknown.append(job_id)
        return {"jobs": jobs, "unknown": unknown}

    def list(self, params: dict[str, Any]) -> protocol.ListResult:
        p = _params("list", params)
        ids = self.store.newest_first()
        page = ids[p["offset"]:p["offset"] + p["limit"]]
        end = p["offset"] + len(page)
        return {"jobs": [self.store.state(j) for j in page], "total": len(ids),
                "next_offset": end if end < len(ids) else None}

    def cancel(self, params: dict[str, Any]) -> JobState:
        job_id = _params("cancel", params)["job_id"]
        state = self.store.state(job_id)
        if state["status"] not in TERMINAL_STATUSES:
            # The supervisor turns SIGTERM into: SIGTERM to the job's group, SIGKILL after kill_grace_s.
            try:
                os.kill(state["supervisor_pid"], signal.SIGTERM)
            except ProcessLookupError:
                pass
        return state

    def tail(self, params: dict[str, Any]) -> protocol.TailResult:
        p = _params("tail", params)
        self.store.spec(p["job_id"])
        return tail(self.store.path(p["job_id"]) / "output.log", p["job_id"], p["lines"], p["offset"],
                    p["max_bytes"])

    def metrics(self, params: dict[str, Any]) -> protocol.MetricsResult:
        p = _params("metrics", params)
        self.store.spec(p["job_id"])
        return read_metrics(self.store.path(p["job_id"]) / "metrics.jsonl", p["job_id"], p["from_seq"],
                            p["limit"], protocol.MAX_METRICS_BYTES)

    def claims_op(self, params: dict[str, Any]) -> protocol.ClaimsResult:
        _params("claims", params)
        return {"claims": self.claims.list()}

    def release_stale(self, params: dict[str, Any]) -> protocol.ReleaseStaleResult:
        """The controller has recorded the job as lost: kill what is left of it, then free its claims."""
        job_id = _params("release_stale", params)["job_id"]
        held = self.claims.held_by(job_id)
        live = [c for c in held if not c["stale"]]
        if live:
            raise AgentRefusal("bad_request", f"job {job_id}'s supervisor (pid {live[0]['supervisor_pid']}) is alive: "
                                              "its claims are not stale; use cancel to stop it")
        try:
            state: JobState | None = self.store.state(job_id)
        except AgentRefusal:
            if not held:
                raise
            state = None
        if state is not None and state["status"] not in TERMINAL_STATUSES:
            raise AgentRefusal("bad_request", f"job {job_id} is {state['status']}, not lost; nothing to release")
        killed = _kill_orphan(state) if state is not None else []
        released = self.claims.release([c["resource"] for c in held], job_id)
        if state is not None and state["status"] == "lost" and self.store.raw_state(job_id)["status"] != "lost":
            state["reason"] = f"{state['reason']}; released by the controller"
            self.store.write_state(job_id, state)
        return {"job_id": job_id, "released": released, "killed": killed, "state": state}

    def revoke_launch(self, params: dict[str, Any]) -> protocol.RevokeResult:
        """The controller got no reply to a launch and this host has no record of it: settle which it was."""
        p = _params("revoke_launch", params)
        state = self.store.revoke(p["job_id"], p["launch_token"])
        return {"revoked": state is None, "state": state}

    def shutdown(self, params: dict[str, Any]) -> dict[str, bool]:
        _params("shutdown", params)
        self.stopping = True
        return {"stopping": True}

    def _config_ok(self) -> None:
        if self.config_error:
            raise AgentRefusal("bad_config", self.config_error)


def _kill_orphan(state: JobState) -> list[int]:
    """SIGKILL the job's process group if it outlived its supervisor; wait until it is gone (zombies aside)."""
    pid = state.get("pid")
    if not pid:
        return []
    leader_start = procs.start_ticks(pid)
    if leader_start is not None and leader_start != state.get("pid_start"):
        return []       # the pid was reused by an unrelated process: its group is not ours
    if not procs.group_exists(pid):
        return []
    victims = procs.leftovers(pid)
    deadline = time.monotonic() + ORPHAN_KILL_WAIT_S
    while (alive := procs.leftovers(pid)):
        if time.monotonic() > deadline:
            raise AgentRefusal("internal", f"job {state['job_id']}'s processes {alive} survive SIGKILL (stuck in the "
                                           "kernel?); its claims stay held; retry release_stale later")
        procs.signal_all(alive, signal.SIGKILL)
        time.sleep(0.01)
    return victims


@functools.cache
def agent_version() -> str:
    """Content hash of the package this process runs (read once: hello comes with every heartbeat)."""
    digest = hashlib.sha256()
    package = Path(__file__).parent
    for path in sorted(package.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


# ---- params ---------------------------------------------------------------------------------------------------

def _params(op: str, params: dict[str, Any]) -> dict[str, Any]:
    """The op's params checked against protocol.PARAMS[op] and its rules, absent keys set to their defaults."""
    tp = protocol.PARAMS[op]
    try:
        given = typecheck.check({k: v for k, v in params.items() if v is not None}, tp, "params")
    except typecheck.Mismatch as e:
        raise AgentRefusal("bad_request", f"{op}: {e}") from None
    return {**copy.deepcopy(protocol.PARAM_DEFAULTS.get(tp, {})), **given}

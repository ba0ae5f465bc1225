"""The agent's operations: one request dict in, one response dict out, for the serve loop and the CLI alike.

Every op checks its params strictly (unknown keys, wrong types and out-of-range values are bad_request with the
fix in the message), so a controller bug shows up as a clear error rather than a silently ignored field.
"""
from __future__ import annotations

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

from . import launcher, procs, protocol
from .claims import Claims
from .config import ConfigError, HostConfig, load_config
from .errors import AgentError
from .inventory import Gpus, Nvml, inventory
from .jobstore import JOB_ID_RULE, JobStore, valid_job_id
from .metrics import read_metrics
from .protocol import TERMINAL_STATUSES, JobState, Response
from .tail import tail

REQUIRED = object()
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
            self.config, self.config_error = HostConfig(), str(e)
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
                raise AgentError("bad_request", 'a request is a JSON object {"id": int, "op": str, "params": {...}}')
            op, params = request.get("op"), request.get("params") or {}
            if op not in self.ops:
                raise AgentError("bad_request", f"unknown op {op!r}; ops: {', '.join(self.ops)}")
            if not isinstance(params, dict):
                raise AgentError("bad_request", f"{op}: params must be a JSON object, got {type(params).__name__}")
            return {"id": rid, "ok": True, "result": self.ops[op](params)}
        except AgentError as e:
            return {"id": rid, "ok": False, "error": e.info()}
        except ConfigError as e:
            return {"id": rid, "ok": False, "error": {"code": "bad_config", "message": str(e)}}
        except Exception as e:  # noqa: BLE001 - a bug answers this request; the loop keeps serving
            where = traceback.extract_tb(e.__traceback__)[-1]
            return {"id": rid, "ok": False, "error": {
                "code": "internal", "message": f"{type(e).__name__}: {e} ({Path(where.filename).name}:{where.lineno})"}}

    # ---- ops ----------------------------------------------------------------------------------------------

    def hello(self, params: dict[str, Any]) -> protocol.Hello:
        _params("hello", params, {})
        nvml_ok = self.nvml.open() is not None
        return protocol.Hello(protocol=protocol.PROTOCOL_VERSION, agent_version=agent_version(),
                              python=platform.python_version(), hostname=socket.gethostname(), pid=os.getpid(),
                              workdir=str(self.workdir), nvml=nvml_ok, nvml_error=self.nvml.error,
                              config_error=self.config_error, time=time.time())

    def inventory(self, params: dict[str, Any]) -> protocol.Inventory:
        _params("inventory", params, {})
        self._config_ok()
        return inventory(self.gpus, self.claims)

    def launch(self, params: dict[str, Any]) -> JobState:
        p = _params("launch", params, {
            "job_id": (_job_id, REQUIRED), "launch_token": (_token, REQUIRED), "argv": (_argv, REQUIRED),
            "env": (_env, {}), "cwd": (_str, ""), "gpus": (_gpu_list, []), "cpu_slot": (_bool, None),
            "time_limit_s": (_positive, REQUIRED), "kill_grace_s": (_non_negative, 10.0)})
        if p["cpu_slot"] is not None and p["cpu_slot"] == bool(p["gpus"]):
            raise AgentError("bad_request", "launch: cpu_slot must be true exactly when gpus is empty "
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
        p = _params("status", params, {"job_ids": (_job_ids, None)})
        ids = p["job_ids"] if p["job_ids"] is not None else sorted({c["job_id"] for c in self.claims.list()})
        jobs, unknown = [], []
        for job_id in ids:
            try:
                jobs.append(self.store.state(job_id))
            except AgentError:
                unknown.append(job_id)
        return {"jobs": jobs, "unknown": unknown}

    def list(self, params: dict[str, Any]) -> protocol.ListResult:
        p = _params("list", params, {"limit": (_int_in(1, protocol.MAX_LIST_LIMIT), 50),
                                     "offset": (_int_in(0, 1 << 62), 0)})
        ids = self.store.newest_first()
        page = ids[p["offset"]:p["offset"] + p["limit"]]
        end = p["offset"] + len(page)
        return {"jobs": [self.store.state(j) for j in page], "total": len(ids),
                "next_offset": end if end < len(ids) else None}

    def cancel(self, params: dict[str, Any]) -> JobState:
        job_id = _params("cancel", params, {"job_id": (_job_id, REQUIRED)})["job_id"]
        state = self.store.state(job_id)
        if state["status"] not in TERMINAL_STATUSES:
            # The supervisor turns SIGTERM into: SIGTERM to the job's group, SIGKILL after kill_grace_s.
            try:
                os.kill(state["supervisor_pid"], signal.SIGTERM)
            except ProcessLookupError:
                pass
        return state

    def tail(self, params: dict[str, Any]) -> protocol.TailResult:
        p = _params("tail", params, {"job_id": (_job_id, REQUIRED),
                                     "lines": (_int_in(1, protocol.MAX_TAIL_LINES), 80),
                                     "offset": (_int_in(0, 1 << 62), None),
                                     "max_bytes": (_int_in(1, protocol.MAX_TAIL_BYTES), 65536)})
        self.store.spec(p["job_id"])
        return tail(self.store.path(p["job_id"]) / "output.log", p["job_id"], p["lines"], p["offset"],
                    p["max_bytes"])

    def metrics(self, params: dict[str, Any]) -> protocol.MetricsResult:
        p = _params("metrics", params, {"job_id": (_job_id, REQUIRED), "from_seq": (_int_in(0, 1 << 62), 0),
                                        "limit": (_int_in(1, protocol.MAX_METRICS_RECORDS), 1000)})
        self.store.spec(p["job_id"])
        return read_metrics(self.store.path(p["job_id"]) / "metrics.jsonl", p["job_id"], p["from_seq"],
                            p["limit"], protocol.MAX_METRICS_BYTES)

    def claims_op(self, params: dict[str, Any]) -> protocol.ClaimsResult:
        _params("claims", params, {})
        return {"claims": self.claims.list()}

    def release_stale(self, params: dict[str, Any]) -> protocol.ReleaseStaleResult:
        """The controller has recorded the job as lost: kill what is left of it, then free its claims."""
        job_id = _params("release_stale", params, {"job_id": (_job_id, REQUIRED)})["job_id"]
        held = self.claims.held_by(job_id)
        live = [c for c in held if not c["stale"]]
        if live:
            raise AgentError("bad_request", f"job {job_id}'s supervisor (pid {live[0]['supervisor_pid']}) is alive: "
                                            "its claims are not stale; use cancel to stop it")
        try:
            state: JobState | None = self.store.state(job_id)
        except AgentError:
            if not held:
                raise
            state = None
        if state is not None and state["status"] not in TERMINAL_STATUSES:
            raise AgentError("bad_request", f"job {job_id} is {state['status']}, not lost; nothing to release")
        killed = _kill_orphan(state) if state is not None else []
        released = self.claims.release([c["resource"] for c in held], job_id)
        if state is not None and state["status"] == "lost" and self.store.raw_state(job_id)["status"] != "lost":
            state["reason"] = f"{state['reason']}; released by the controller"
            self.store.write_state(job_id, state)
        return {"job_id": job_id, "released": released, "killed": killed, "state": state}

    def revoke_launch(self, params: dict[str, Any]) -> protocol.RevokeResult:
        """The controller got no reply to a launch and this host has no record of it: settle which it was."""
        p = _params("revoke_launch", params, {"job_id": (_job_id, REQUIRED), "launch_token": (_token, REQUIRED)})
        state = self.store.revoke(p["job_id"], p["launch_token"])
        return {"revoked": state is None, "state": state}

    def shutdown(self, params: dict[str, Any]) -> dict[str, bool]:
        _params("shutdown", params, {})
        self.stopping = True
        return {"stopping": True}

    def _config_ok(self) -> None:
        if self.config_error:
            raise AgentError("bad_config", self.config_error)


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
            raise AgentError("internal", f"job {state['job_id']}'s processes {alive} survive SIGKILL (stuck in the "
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

def _params(op: str, params: dict[str, Any], schema: dict[str, tuple[Callable[[Any], Any], Any]]) -> dict[str, Any]:
    unknown = sorted(set(params) - set(schema))
    if unknown:
        raise AgentError("bad_request", f"{op}: unknown param(s) {unknown}; {op} takes {sorted(schema) or 'none'}")
    out = {}
    for key, (check, default) in schema.items():
        if key not in params or params[key] is None:
            if default is REQUIRED:
                raise AgentError("bad_request", f"{op}: params.{key} is required")
            out[key] = default
            continue
        try:
            out[key] = check(params[key])
        except (TypeError, ValueError) as e:
            raise AgentError("bad_request", f"{op}: params.{key}: {e}, got {params[key]!r}") from None
    return out


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _job_id(v: Any) -> str:
    if valid_job_id(v):
        return v
    raise ValueError(f"must be {JOB_ID_RULE}")


def _token(v: Any) -> str:
    if isinstance(v, str) and 0 < len(v) <= 128:
        return v
    raise ValueError("must be a string of 1-128 characters")


def _str(v: Any) -> str:
    if isinstance(v, str):
        return v
    raise TypeError("must be a string")


def _argv(v: Any) -> list[str]:
    if isinstance(v, list) and v and all(isinstance(a, str) for a in v) and v[0]:
        return v
    raise ValueError("must be a non-empty list of strings (the command, never run through a shell)")


def _env(v: Any) -> dict[str, str]:
    if isinstance(v, dict) and all(isinstance(k, str) and k and "=" not in k and isinstance(x, str)
                                   for k, x in v.items()):
        return v
    raise ValueError("must be an object of string names (without '=') to string values")


def _gpu_list(v: Any) -> list[int]:
    if isinstance(v, list) and all(_is_int(i) and i >= 0 for i in v) and len(set(v)) == len(v):
        return sorted(v)
    raise ValueError("must be a list of distinct GPU indices >= 0")


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    raise TypeError("must be true or false")


def _positive(v: Any) -> float:
    if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < float("inf"):
        return float(v)
    raise ValueError("must be a number > 0 (seconds)")


def _non_negative(v: Any) -> float:
    if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < float("inf"):
        return float(v)
    raise ValueError("must be a number >= 0 (seconds)")


def _int_in(lo: int, hi: int) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if _is_int(v) and lo <= v <= hi:
            return v
        raise ValueError(f"must be an integer from {lo} to {hi}")
    return check


def _job_ids(v: Any) -> list[str]:
    if not isinstance(v, list) or len(v) > protocol.MAX_STATUS_IDS:
        raise ValueError(f"must be a list of at most {protocol.MAX_STATUS_IDS} job ids")
    return [_job_id(j) for j in v]

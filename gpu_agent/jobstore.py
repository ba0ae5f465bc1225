"""Job directories on the host: the truth about execution.

<workdir>/jobs/<job-id>/ spec.json (written once, before launch), state.json (atomic rename writes), output.log,
metrics.jsonl. A job directory appears whole: it is built under a temporary name and renamed into place, so a
directory named after a job always has its spec and first state.

<workdir>/revoked_launches/<sha256 of a launch token>: launches the controller gave up on (revoke), refused if
they arrive later. Creating a job and revoking a launch hold the same lock (<workdir>/jobs.lock), so one of them
wins. Both live beside jobs/, which holds job directories only.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from . import procs
from .errors import AgentRefusal
from .protocol import TERMINAL_STATUSES, JobState, check_host_job_id

JOBS_DIR = "jobs"
REVOKED_DIR = "revoked_launches"
CREATE_LOCK = "jobs.lock"


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)


class JobStore:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.root = workdir / JOBS_DIR

    def path(self, job_id: str) -> Path:
        try:
            return self.root / check_host_job_id(job_id)
        except ValueError as e:
            raise AgentRefusal("bad_request", f"job_id {e}, got {job_id!r}") from None

    def exists(self, job_id: str) -> bool:
        return (self.path(job_id) / "spec.json").exists()

    def create(self, job_id: str, spec: dict[str, Any], state: JobState) -> bool:
        """Make the job directory with its spec and first state; False if the job already exists."""
        tmp = self.root / f".new-{job_id}-{os.getpid()}"
        try:
            tmp.mkdir()
        except FileExistsError:     # left by a crashed launcher whose pid we now have
            shutil.rmtree(tmp)
            tmp.mkdir()
        for name, content in (("spec.json", spec), ("state.json", state), ("output.log", None)):
            with open(tmp / name, "w") as f:    # private until renamed: no need for atomic writes here
                if content is not None:
                    json.dump(content, f)
        with self._creating():
            if self._revoked(spec["launch_token"]).exists():
                shutil.rmtree(tmp, ignore_errors=True)
                raise AgentRefusal("launch_revoked", f"this launch of job {job_id} arrived after the controller had "
                                                     "revoked it (it had queued the job again): nothing was started")
            try:
                os.rename(tmp, self.path(job_id))
                return True
            except OSError:         # EEXIST / ENOTEMPTY: the job is there already
                shutil.rmtree(tmp, ignore_errors=True)
                return False

    def revoke(self, job_id: str, token: str) -> JobState | None:
        """The job's state if it exists; else None, and a launch with this token that arrives later is refused."""
        with self._creating():
            if self.exists(job_id):
                return self.state(job_id)
            marker = self._revoked(token)
            marker.parent.mkdir(exist_ok=True)
            marker.touch()
            return None

    @contextlib.contextmanager
    def _creating(self):
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.workdir / CREATE_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)      # released by the kernel if this process dies holding it
            yield
        finally:
            os.close(fd)

    def _revoked(self, token: str) -> Path:
        return self.workdir / REVOKED_DIR / hashlib.sha256(token.encode()).hexdigest()

    def spec(self, job_id: str) -> dict[str, Any]:
        try:
            return read_json(self.path(job_id) / "spec.json")
        except FileNotFoundError:
            raise AgentRefusal("unknown_job", f"no job {job_id} on this host") from None

    def raw_state(self, job_id: str) -> JobState:
        try:
            return read_json(self.path(job_id) / "state.json")
        except FileNotFoundError:
            raise AgentRefusal("unknown_job", f"no job {job_id} on this host") from None

    def write_state(self, job_id: str, state: JobState) -> None:
        write_json_atomic(self.path(job_id) / "state.json", state)

    def state(self, job_id: str) -> JobState:
        """The job's state as the controller should see it: a job whose supervisor died is `lost`."""
        state = self.raw_state(job_id)
        if state["status"] not in TERMINAL_STATUSES and not procs.alive(state.get("supervisor_pid"),
                                                                         state.get("supervisor_start")):
            state["status"] = "lost"
            state["reason"] = f"supervisor (pid {state.get('supervisor_pid')}) died"
            state["ended_at"] = state.get("heartbeat_at") or state.get("created_at")
        try:
            state["log_bytes"] = os.stat(self.path(job_id) / "output.log").st_size
        except FileNotFoundError:
            pass
        return state

    def newest_first(self) -> list[str]:
        """Job ids by creation (spec.json is written once, so its mtime is the creation time), newest first."""
        try:
            names = [n for n in os.listdir(self.root) if not n.startswith(".")]
        except FileNotFoundError:
            return []
        created = []
        for name in names:
            try:
                created.append((os.stat(self.root / name / "spec.json").st_mtime, name))
            except FileNotFoundError:
                continue
        created.sort(reverse=True)
        return [name for _, name in created]

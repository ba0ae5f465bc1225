"""`python -m gpu_agent serve`: JSON requests a line on stdin, responses and events a line on stdout.

One thread, one select() loop, on purpose: launching forks the supervisor from this process, which is only safe
without other threads. Every line goes out through `_send`, whole. Two ways to be reached:
- on stdin/stdout (`serve`): the process lives as long as its channel (an SSH exec);
- on a unix socket in the workdir (`hold`, inside a Slurm allocation's batch step): Slurm kills every process of a
  step when the step ends, detached ones included, so the supervisors, jobs and warm interpreters this process forks
  must belong to the long-lived batch step, not to the `srun --overlap` step that carries the channel. That step
  runs `serve --via-socket` (`relay` below), which only copies lines between its stdio and this socket. A new
  channel replaces the current one: an old one whose srun has not noticed its dead link yet must not hold the agent.
Events:
- job_started / job_ended for jobs launched here, from the supervisor's pipe, within milliseconds (the pipe
  closing without an "ended" message means the supervisor died: job_ended with the job `lost`);
- job_ended for every other job on the host (running when serve started, or launched since by another process),
  found every POLL_S from the claims held at start and the claim ledger's new lines, then the job's state.
"""
from __future__ import annotations

import json
import logging
import os
import select
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import procs
from .errors import AgentRefusal
from .launcher import Watch
from .ops import Agent
from .protocol import MAX_REQUEST_BYTES, TERMINAL_STATUSES

POLL_S = 0.25
EXIT_WAIT_S = 1.0
LOG_FILE = "agent.log"
SOCKET_FILE = "agent.sock"
HOLD_ROOT_FILE = "hold-root"        # where the relay found the agent package: the holder starts `hold` from there
RELAY_CONNECT_S = 120.0             # the holder waits for the agent code, then starts: allow for both
log = logging.getLogger("gpu_agent.serve")


@dataclass
class _Supervised:
    """A supervisor this process forked, seen through its pipe."""
    job_id: str
    pid: int
    unread: bytes
    ended: bool = False     # it sent {"ended": state}


class Server:
    def __init__(self, workdir: Path, in_fd: int | None = 0, out_fd: int | None = 1,
                 listener: socket.socket | None = None) -> None:
        self.agent = Agent(workdir, on_launch=self._on_launch)
        self.in_fd, self.out_fd = in_fd, out_fd
        self.listener = listener                # hold mode: channels come and go on this socket
        self.channel: socket.socket | None = None
        self.inbuf = bytearray()
        self.discarding = False                 # inside an oversized request line: skip to its end
        self.watches: dict[int, _Supervised] = {}   # by pipe fd
        self.fresh: list[int] = []              # watches added by the request being answered
        self.launched: set[str] = set()         # launched here; forgotten at their release line in the ledger
        self.foreign: set[str] = set()          # other jobs whose end is not reported yet
        self.ledger_pos = 0                     # how far the claim ledger has been read

    def run(self) -> None:
        log.info("serving %s (pid %d)", self.agent.workdir, os.getpid())
        self._watch_others_from_now()
        next_poll = 0.0
        while not self.agent.stopping:
            now = time.monotonic()
            if now >= next_poll:
                procs.reap_children()       # supervisors we forked, once they exit
                self._poll_others()
                next_poll = now + POLL_S
            self.agent.launcher.prepare()
            inputs = [fd for fd in (self.in_fd,) if fd is not None]
            if self.listener is not None:
                inputs.append(self.listener.fileno())
            ready, _, _ = select.select([*inputs, *self.watches], [], [], max(0.0, next_poll - now))
            for fd in ready:
                if self.listener is not None and fd == self.listener.fileno():
                    self._take_channel()
                elif fd == self.in_fd:
                    if not self._read_requests():
                        if self.listener is None:
                            log.info("stdin closed: exiting; supervisors keep running")
                            return
                        log.info("channel closed: waiting for the next one")
                        self._drop_channel()
                elif fd in self.watches:
                    self._read_watch(fd)
        log.info("shutdown requested: exiting; supervisors keep running")

    def _take_channel(self) -> None:
        conn, _ = self.listener.accept()
        if self.channel is not None:
            log.info("a new channel replaces the current one")
            self._drop_channel()
        self.channel = conn
        self.in_fd = self.out_fd = conn.fileno()
        self.inbuf.clear()
        self.discarding = False

    def _drop_channel(self) -> None:
        """Events meanwhile are not kept: the controller reconciles its jobs when it reconnects."""
        if self.channel is not None:
            self.channel.close()
        self.channel = None
        self.in_fd = self.out_fd = None

    # ---- requests -----------------------------------------------------------------------------------------

    def _read_requests(self) -> bool:
        try:
            data = os.read(self.in_fd, 1 << 16)
        except ConnectionResetError:
            data = b""
        if not data:
            return False
        *lines, rest = data.split(b"\n")
        for line in lines:
            if self.discarding:
                self.discarding = False
                continue
            request = bytes(self.inbuf) + line
            self.inbuf.clear()
            if len(request) > MAX_REQUEST_BYTES:
                self._too_long()
            elif request.strip():
                self._answer(request)
            if self.agent.stopping:
                return True
        if not self.discarding:
            self.inbuf += rest
            if len(self.inbuf) > MAX_REQUEST_BYTES:
                self.inbuf.clear()
                self.discarding = True
                self._too_long()
        return True

    def _too_long(self) -> None:
        self._send({"id": None, "ok": False, "error": {
            "code": "bad_request", "message": f"request line longer than {MAX_REQUEST_BYTES} bytes: dropped"}})

    def _answer(self, line: bytes) -> None:
        try:
            request = json.loads(line)
        except ValueError as e:
            response = {"id": None, "ok": False, "error": {"code": "bad_request",
                                                           "message": f"request is not JSON ({e}): {line[:80]!r}"}}
        else:
            response = self.agent.handle(request)
            if not response["ok"]:
                log.warning("op %r failed: %s", request.get("op") if isinstance(request, dict) else None,
                            response["error"])
        self._send(response)
        for fd in self.fresh:
            self._consume(fd)
        self.fresh.clear()

    def _send(self, message: dict[str, Any]) -> None:
        if self.out_fd is None:
            return
        line = memoryview((json.dumps(message, separators=(",", ":")) + "\n").encode())
        try:
            while line:
                line = line[os.write(self.out_fd, line):]
        except (BrokenPipeError, ConnectionResetError):
            if self.listener is not None:
                self._drop_channel()
                return
            log.info("stdout closed: exiting")
            self.agent.stopping = True

    # ---- events -------------------------------------------------------------------------------------------

    def _on_launch(self, watch: Watch) -> None:
        log.info("launched %s: supervisor pid %d", watch.job_id, watch.pid)
        self.watches[watch.fd] = _Supervised(watch.job_id, watch.pid, watch.pending)
        self.launched.add(watch.job_id)
        self.fresh.append(watch.fd)

    def _read_watch(self, fd: int) -> None:
        data = os.read(fd, 4096)
        if data:
            self.watches[fd].unread += data
            self._consume(fd)
            return
        watched = self.watches.pop(fd)
        os.close(fd)
        if not watched.ended:   # the supervisor died before it could say: the job is lost
            _await_exit(watched.pid)
            state = self._state(watched.job_id)
            if state is not None:
                self._event("job_ended", watched.job_id, state)

    def _consume(self, fd: int) -> None:
        watched = self.watches[fd]
        *lines, watched.unread = watched.unread.split(b"\n")
        for line in lines:
            message = json.loads(line)
            if "started" in message:
                self._event("job_started", watched.job_id, message["started"])
            elif "ended" in message:
                watched.ended = True
                self._event("job_ended", watched.job_id, message["ended"])

    def _state(self, job_id: str) -> dict[str, Any] | None:
        try:
            return self.agent.store.state(job_id)
        except AgentRefusal:
            return None     # claimed a moment ago by a launch still creating its job directory
        except (OSError, ValueError) as e:
            log.error("cannot read the state of %s: %s", job_id, e)
            return None

    def _event(self, event: str, job_id: str, state: dict[str, Any]) -> None:
        log.info("%s %s: %s", event, job_id, state["status"])
        self._send({"event": event, "job_id": job_id, "state": state})

    def _watch_others_from_now(self) -> None:
        """Jobs this process did not fork: those holding claims now, then whoever the ledger shows acquiring."""
        try:
            self.ledger_pos = os.path.getsize(self.agent.claims.ledger)
        except FileNotFoundError:
            self.ledger_pos = 0
        self.foreign = {c["job_id"] for c in self.agent.claims.list()}     # after the size: nothing falls between

    def _poll_others(self) -> None:
        for entry in self._new_ledger_entries():
            job_id = entry["job_id"]
            if job_id in self.launched:
                if entry["op"] == "release":
                    self.launched.discard(job_id)
            elif entry["op"] == "acquire":
                self.foreign.add(job_id)
        for job_id in sorted(self.foreign):
            state = self._state(job_id)
            if state is not None and state["status"] in TERMINAL_STATUSES:     # a dead supervisor reads as lost
                self.foreign.discard(job_id)
                self._event("job_ended", job_id, state)

    def _new_ledger_entries(self) -> list[dict[str, Any]]:
        try:
            with open(self.agent.claims.ledger, "rb") as f:
                f.seek(self.ledger_pos)
                data = f.read()
        except FileNotFoundError:
            return []
        complete = data[:data.rfind(b"\n") + 1]
        self.ledger_pos += len(complete)
        entries = []
        for line in complete.splitlines():
            try:
                entries.append(json.loads(line))
            except ValueError:
                log.error("claim ledger: unreadable line %r", line[:200])
        return entries


def _await_exit(pid: int) -> None:
    """The pipe closes while the supervisor exits; reap it so that a supervisor killed mid-job reads as dead."""
    deadline = time.monotonic() + EXIT_WAIT_S
    try:
        while os.waitpid(pid, os.WNOHANG)[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.0005)
    except ChildProcessError:
        pass        # reaped already by the loop's periodic reaping


def _log_to_file(workdir: Path, mode: str) -> None:
    """stdout is reserved for protocol lines: logs, warnings and stray prints go to agent.log."""
    log_fd = os.open(workdir / LOG_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    sys.stdout = sys.stderr
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format=f"%(asctime)s {mode}[%(process)d] %(levelname)s %(message)s")


def serve(workdir: Path) -> None:
    _log_to_file(workdir, "serve")
    Server(workdir).run()


def hold(workdir: Path) -> None:
    """The long-lived agent of a Slurm allocation: serves channels that `relay` opens on the workdir's socket."""
    _log_to_file(workdir, "hold")
    path = workdir / SOCKET_FILE
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(4)
    try:
        Server(workdir, None, None, listener).run()
    finally:
        listener.close()
        path.unlink(missing_ok=True)


def relay(workdir: Path) -> None:
    """`serve --via-socket`: carry JSON lines between stdio and the holder's agent. Tells the holder where the agent
    package is (the current directory) so that it can start, then waits for its socket."""
    _log_to_file(workdir, "relay")
    root = workdir / HOLD_ROOT_FILE
    if not root.exists():
        tmp = root.with_name(root.name + f".{os.getpid()}")
        tmp.write_text(os.getcwd() + "\n")
        os.replace(tmp, root)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deadline = time.monotonic() + RELAY_CONNECT_S
    while True:
        try:
            sock.connect(str(workdir / SOCKET_FILE))
            break
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() > deadline:
                log.error("no holder agent on %s after %gs", workdir / SOCKET_FILE, RELAY_CONNECT_S)
                raise SystemExit(1)
            time.sleep(0.05)
    log.info("relaying to %s", workdir / SOCKET_FILE)
    ends = {0: sock.fileno(), sock.fileno(): 1}
    while True:
        ready, _, _ = select.select(list(ends), [], [])
        for fd in ready:
            data = os.read(fd, 1 << 16)
            if not data:
                return      # either side closed: the channel is over (the holder's agent keeps running)
            out = memoryview(data)
            while out:
                out = out[os.write(ends[fd], out):]

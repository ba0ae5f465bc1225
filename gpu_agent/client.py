"""A small stdlib client for `python -m gpu_agent serve` run as a local child process.

For local tools, tests and benchmarks; the controller has its own sessions (local and SSH) in mcp_server.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from .errors import AgentRefusal

PACKAGE_PARENT = Path(__file__).resolve().parent.parent


class AgentProcess:
    """One serve process. Responses are matched to requests by id; events are kept, in order, with the host
    time they were read (`events`)."""

    def __init__(self, workdir: Path, python: str = sys.executable) -> None:
        self.proc = subprocess.Popen([python, "-m", "gpu_agent", "--workdir", str(workdir), "serve"],
                                     cwd=PACKAGE_PARENT, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.events: list[tuple[float, dict[str, Any]]] = []
        self._responses: dict[Any, dict[str, Any]] = {}
        self._next_id = 0
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for raw in self.proc.stdout:
            received = time.time()
            message = json.loads(raw)
            with self._cond:
                if "event" in message:
                    self.events.append((received, message))
                else:
                    self._responses[message.get("id")] = message
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def send_raw(self, line: bytes) -> None:
        self.proc.stdin.write(line)
        self.proc.stdin.flush()

    def request(self, op: str, params: dict[str, Any] | None = None, timeout: float = 10.0) -> dict[str, Any]:
        with self._cond:
            self._next_id += 1
            rid = self._next_id
        self.send_raw(json.dumps({"id": rid, "op": op, "params": params or {}}).encode() + b"\n")
        return self.wait_for(lambda: self._responses.pop(rid, None), timeout, f"no answer to {op}")

    def call(self, op: str, timeout: float = 10.0, **params: Any) -> Any:
        """The result of a successful op; an error response raises AgentRefusal."""
        response = self.request(op, params, timeout)
        if not response["ok"]:
            raise AgentRefusal(response["error"]["code"], response["error"]["message"])
        return response["result"]

    def event(self, kind: str, job_id: str, timeout: float = 10.0) -> tuple[float, dict[str, Any]]:
        """The first `kind` event for `job_id` (already received or coming), with the time it was read."""
        def find() -> tuple[float, dict[str, Any]] | None:
            return next(((t, e) for t, e in self.events if e["event"] == kind and e["job_id"] == job_id), None)
        return self.wait_for(find, timeout, f"no {kind} event for {job_id}")

    def wait_for(self, found: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        with self._cond:
            while (value := found()) is None:
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise TimeoutError(f"{what} within {timeout:g}s (serve exit status {self.proc.poll()})")
                self._cond.wait(min(left, 0.5))
            return value

    def close(self, timeout: float = 5.0) -> int:
        """Close stdin (serve exits; supervisors keep running) and wait for the process."""
        if self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def __enter__(self) -> AgentProcess:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

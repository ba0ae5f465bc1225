"""Finding, starting and calling the daemon of a state dir (the CLI's and the bridge's side).

Standard library only (http.client over the unix socket), so `arc jobs` starts fast.
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..core.paths import StatePaths
from .state import lock_is_held, read_info


START_TIMEOUT_S = 60.0


class DaemonError(RuntimeError):
    """The daemon refused a call (the message says why) or could not be reached."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


class DaemonClient:
    def __init__(self, paths: StatePaths):
        self.paths = paths

    def running(self) -> bool:
        return lock_is_held(self.paths) and bool(read_info(self.paths).get("socket"))

    def info(self) -> dict[str, Any]:
        return read_info(self.paths)

    def token(self) -> str:
        return self.paths.daemon_token.read_text().strip()

    def ensure(self, hosts_file: Path, research_file: Path | None = None,
               daemon_args: tuple[str, ...] = ()) -> dict[str, Any]:
        """Start the daemon if none runs for this state dir; return its info once it answers. `daemon_args` are
        options of `arc daemon start` (e.g. `--lost-after 60`), used only when this call starts it."""
        if self.running() and self._healthy():
            return self.info()
        self.paths.ensure()
        log = open(self.paths.daemon_log, "ab")
        cmd = [sys.executable, "-m", "mcp_server", "--state-dir", str(self.paths.root),
               "--hosts", str(Path(hosts_file).resolve())]
        if research_file is not None:
            cmd += ["--research", str(Path(research_file).resolve())]
        cmd += ["daemon", "start", "--foreground", *daemon_args]
        # Its own session: the daemon outlives the CLI call or Claude session that started it.
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                                close_fds=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.running() and self._healthy():
                return self.info()
            code = proc.poll()
            # Ours exited: fine if another client's daemon won the lock and is still starting.
            if code is not None and not lock_is_held(self.paths):
                raise DaemonError(f"the daemon exited at start (code {code}); see {self.paths.daemon_log}:\n"
                                  + _tail(self.paths.daemon_log))
            time.sleep(0.05)
        raise DaemonError(f"the daemon did not answer within {START_TIMEOUT_S:.0f} s; see {self.paths.daemon_log}")

    def _healthy(self) -> bool:
        try:
            self._request("GET", "/health", None, timeout=2.0)
            return True
        except (OSError, DaemonError, http.client.HTTPException):
            return False

    def _request(self, method: str, path: str, body: Any, timeout: float) -> Any:
        info = self.info()
        if not info.get("socket"):
            raise DaemonError(f"no daemon runs for {self.paths.root}")
        conn = _UnixConnection(info["socket"], timeout)
        try:
            payload = None if body is None else json.dumps(body).encode()
            conn.request(method, path, body=payload, headers={
                "Authorization": f"Bearer {self.token()}", "Content-Type": "application/json"})
            resp = conn.getresponse()
            data = json.loads(resp.read() or b"{}")
        finally:
            conn.close()
        if resp.status != 200:
            raise DaemonError(data.get("error") or f"daemon answered HTTP {resp.status}")
        return data

    def call(self, method: str, timeout: float = 120.0, **params: Any) -> dict[str, Any]:
        return self._request("POST", f"/rpc/{method}", params, timeout)

    def get(self, path: str, timeout: float = 120.0) -> Any:
        return self._request("GET", path, None, timeout)

    def stop(self, timeout: float = 20.0) -> bool:
        if not self.running():
            return False
        pid = self.info().get("pid")
        try:
            self.call("shutdown", timeout=5.0)
        except (OSError, DaemonError, http.client.HTTPException):
            if pid:
                os.kill(pid, 15)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and lock_is_held(self.paths):
            time.sleep(0.05)
        return not lock_is_held(self.paths)


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""

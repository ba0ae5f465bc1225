"""The daemon's files in the state dir: its lock, its info, its token, its socket path.

Standard library only: the CLI reads these to find the daemon without importing the server stack.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

from ..core.paths import StatePaths


MAX_UNIX_PATH = 100
PROBE_RACE_S = 0.5


class DaemonRunning(RuntimeError):
    pass


def acquire_lock(paths: StatePaths) -> int:
    fd = os.open(paths.daemon_lock, os.O_RDWR | os.O_CREAT, 0o600)
    # A client probing with lock_is_held holds the lock for an instant: only a lock held past that is a daemon.
    deadline = time.monotonic() + PROBE_RACE_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() < deadline:
                time.sleep(0.01)
                continue
            os.close(fd)
            info = read_info(paths)
            raise DaemonRunning(f"a daemon already runs for {paths.root} (pid {info.get('pid', '?')})") from None


def lock_is_held(paths: StatePaths) -> bool:
    """Whether a daemon holds the state dir's lock (probing takes a shared lock for an instant)."""
    if not paths.daemon_lock.exists():
        return False
    fd = os.open(paths.daemon_lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def read_info(paths: StatePaths) -> dict[str, Any]:
    try:
        return json.loads(paths.daemon_info.read_text())
    except (OSError, ValueError):
        return {}


def ensure_token(paths: StatePaths) -> str:
    """The bearer token, kept across restarts so HTTP registrations stay valid."""
    try:
        token = paths.daemon_token.read_text().strip()
        if token:
            os.chmod(paths.daemon_token, 0o600)
            return token
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(32)
    fd = os.open(paths.daemon_token, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def socket_path(paths: StatePaths) -> Path:
    """The state dir's socket, or a private /tmp one when that path is too long for a unix socket."""
    if len(str(paths.daemon_socket)) <= MAX_UNIX_PATH:
        return paths.daemon_socket
    folder = Path(tempfile.gettempdir()) / f"arc-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    os.chmod(folder, 0o700)
    digest = hashlib.sha256(str(paths.root).encode()).hexdigest()[:16]
    return folder / f"{digest}.sock"

"""Process facts from /proc: identity that survives pid reuse, liveness of process groups, leftovers.

A pid alone is not an identity: pids are reused. (pid, start time in clock ticks since boot, field 22 of
/proc/<pid>/stat) is. Zombies count as dead: they hold no GPU memory and run no code.
"""
from __future__ import annotations

import ctypes
import os
import signal
from typing import NamedTuple

PR_SET_NAME = 15
PR_SET_CHILD_SUBREAPER = 36


class ProcStat(NamedTuple):
    pid: int
    state: str
    ppid: int
    pgrp: int
    start: int


def stat(pid: int) -> ProcStat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm (field 2) may contain spaces and parentheses: everything after the last ')' is fixed-format.
    fields = raw[raw.rindex(b")") + 2:].split()
    return ProcStat(pid, fields[0].decode(), int(fields[1]), int(fields[2]), int(fields[19]))


def start_ticks(pid: int) -> int | None:
    st = stat(pid)
    return None if st is None or st.state in ("Z", "X") else st.start


def alive(pid: int | None, start: int | None) -> bool:
    """The process that had this pid and start time still runs (not a zombie, not a reused pid)."""
    if not pid:
        return False
    now = start_ticks(pid)
    return now is not None and (start is None or now == start)


def group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def leftovers(pgid: int | None, parent: int | None = None) -> list[int]:
    """Live processes in process group `pgid` or whose parent is `parent` (a subreaper's adopted orphans).

    Scans /proc, so callers first check the cheap signs (the group exists, the subreaper has children)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            st = stat(int(name))
        except (OSError, ValueError, IndexError):
            continue
        if st is None or st.state in ("Z", "X") or st.pid == os.getpid():
            continue
        if st.pgrp == pgid or (parent is not None and st.ppid == parent):
            found.append(st.pid)
    return found


def signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def reap_children() -> bool:
    """Reap every exited child; True while some child still runs."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True


# Loaded with this module, in the launcher, rather than in each freshly forked supervisor.
_LIBC = ctypes.CDLL(None, use_errno=True)


def become_subreaper() -> None:
    """Orphaned descendants of the job (daemons, setsid escapees) become our children, so none outlives the claim."""
    try:
        _LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except AttributeError:
        pass    # not Linux: the process group is still killed, only setsid escapees are missed


def set_name(name: str) -> None:
    """The name `ps -o comm` and `top` show (15 bytes): supervisors are forks of `python -m gpu_agent serve`."""
    try:
        _LIBC.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except AttributeError:
        pass


def exit_text(status: int | None) -> str:
    """A wait status for people: "status 3" or "signal 9"."""
    if status is None:
        return "unknown status"
    code = os.waitstatus_to_exitcode(status)
    return f"status {code}" if code >= 0 else f"signal {-code}"

"""Warm starts: a job's interpreter, with the host's preload modules (torch and its compiler) already imported.

A warm-start job skips the import time, which a warm host's overhead per experiment is mostly made of (measured on
an H200: 13 of 20 s were Python importing torch's compiler stack). After a launch, the launcher keeps a spare
supervisor whose child is the same interpreter with the same environment (warm_child.py), importing the preload
modules while the GPU is busy. The next launch with that same key gets it, and the child becomes the job. It is
still the supervisor's child, in its own process group, so cancel, time limit and leftover handling are unchanged.

The key is what the imports can depend on: the interpreter and the job's whole environment, CUDA_VISIBLE_DEVICES
included (one warm child per GPU, so nothing the imports might initialise points at another GPU). Only the ARC_*
names differ per job; the agent sets them for the job to read, not for imports. Only `python -m module ...` and
`python script.py ...` start warm; anything else, or any difference in the key, starts the ordinary way.

The preload is imported before the job's folder is on sys.path, so a file there named like a module it imported
would not shadow that module as it does on an ordinary start; such a job starts the ordinary way (warm_child.py).
What stays different: the process's command line in /proc (and so in `ps`) is the warm child's, not the job's.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import select
import shutil
import signal
from pathlib import Path
from typing import NamedTuple

from . import procs

CHILD_SCRIPT = str(Path(__file__).with_name("warm_child.py"))
# torch, then what the first optimizer and torch.compile() import: the bulk of a warm host's start-up.
DEFAULT_PRELOAD = ("torch", "torch._dynamo", "torch._inductor.compile_fx")
PER_JOB_ENV_PREFIX = "ARC_"
PIPE_BYTES = 1 << 20
_PYTHON = re.compile(r"python(\d+(\.\d+)?)?")


class Key(NamedTuple):
    program: str                    # the interpreter's absolute path, as found on the job's PATH
    argv0: str                      # as the job gives it: Python finds its venv from it, so no realpath anywhere
    env: tuple[tuple[str, str], ...]

    @property
    def gpus(self) -> str:
        return dict(self.env).get("CUDA_VISIBLE_DEVICES", "")


def key(argv: list[str], env: dict[str, str]) -> Key | None:
    """The warm child that can run this job, or None when the job cannot start warm."""
    if len(argv) < 2 or not _PYTHON.fullmatch(os.path.basename(argv[0])):
        return None
    if not (argv[1] == "-m" and len(argv) >= 3 or argv[1].endswith(".py") and not argv[1].startswith("-")):
        return None
    program = argv[0] if os.sep in argv[0] else shutil.which(argv[0], path=env.get("PATH", os.defpath))
    if program is None or not os.path.isabs(program):      # relative to the job's cwd: only a cold start knows it
        return None
    return Key(program, argv[0],
               tuple(sorted((k, v) for k, v in env.items() if not k.startswith(PER_JOB_ENV_PREFIX))))


class WarmStart(NamedTuple):
    """What a warm spare starts ahead of its plan: the interpreter and environment of its key, and the imports."""
    key: Key
    env: dict[str, str]
    preload: tuple[str, ...]


class WarmChild:
    """The warm interpreter a spare supervisor started; it becomes the job, or is killed."""

    def __init__(self, template: Key, env: dict[str, str], preload: tuple[str, ...]) -> None:
        self.key, self.preload = template, preload
        self.status_lines: list[str] = []
        ctl_r, self.ctl_w = os.pipe()
        self.status_r, status_w = os.pipe()
        self.out_r, out_w = os.pipe()
        for fd in (self.ctl_w, self.out_r):     # a big job environment must not block the hand-over
            try:
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
            except OSError:
                pass        # above /proc/sys/fs/pipe-max-size: the default pipe works too
        try:
            self.pid = os.posix_spawn(
                template.program, [template.argv0, CHILD_SCRIPT, *preload], env, setsid=True,
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
                file_actions=[(os.POSIX_SPAWN_DUP2, ctl_r, 0), (os.POSIX_SPAWN_DUP2, out_w, 1),
                              (os.POSIX_SPAWN_DUP2, out_w, 2), (os.POSIX_SPAWN_DUP2, status_w, 3)])
        finally:
            for fd in (ctl_r, status_w, out_w):
                os.close(fd)

    def hand_over(self, argv: list[str], cwd: str, env: dict[str, str]) -> str | None:
        """Give the job to the child; None if it took it, else why not (the child is then gone)."""
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid:
            why = f"the warm interpreter exited ({procs.exit_text(status)}) before its job: {self._last_words()}"
            self._close()
            return why
        job = json.dumps({"executable": self.key.program, "argv": argv, "cwd": cwd, "env": env}).encode()
        try:
            view = memoryview(job)
            while view:
                view = view[os.write(self.ctl_w, view):]
        except BrokenPipeError:
            self.kill()
            return "the warm interpreter closed its input before its job"
        os.close(self.ctl_w)
        self.ctl_w = -1
        return None

    def took_job(self) -> bool:
        """Once the job's leader exited: whether the child had taken the job before it ended."""
        return "took" in self._status()[1:]

    def outcome(self) -> str:
        """Once the job's leader exited: how the warm start went."""
        preload, *rest = self._status()
        skip = next((line.removeprefix("skip ") for line in rest if line.startswith("skip ")), None)
        if preload != "ready":
            return f"warm start failed, the job was exec()ed the ordinary way: {preload}"
        if skip:
            return f"warm start skipped, the job was exec()ed the ordinary way: {skip}"
        return f"started warm: {', '.join(self.preload)} imported ahead"

    def _status(self) -> list[str]:
        """The child's status lines: "ready" or why a preload import failed, "skip WHY" if the job must start the
        ordinary way after all, then "took" once it read its job. Read to EOF, which comes once the child has
        closed it (before it becomes the job) or died."""
        if self.status_r >= 0:
            chunks = []
            while chunk := os.read(self.status_r, 4096):
                chunks.append(chunk)
            os.close(self.status_r)
            self.status_r = -1
            self.status_lines = b"".join(chunks).decode(errors="replace").splitlines() or ["no status"]
        return self.status_lines

    def kill(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass
        self._close()

    def _last_words(self) -> str:
        os.set_blocking(self.out_r, False)
        text = b""
        while select.select([self.out_r], [], [], 0)[0]:
            chunk = os.read(self.out_r, 1 << 16)
            if not chunk:
                break
            text = (text + chunk)[-2000:]
        lines = text.decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else "no output"

    def _close(self) -> None:
        for fd in (self.ctl_w, self.status_r, self.out_r):
            if fd >= 0:
                os.close(fd)
        self.ctl_w = self.status_r = self.out_r = -1


def preload_modules(configured: tuple[str, ...] | None, has_real_gpus: bool) -> tuple[str, ...]:
    """agent.json's list; by default torch's stack on hosts with real GPUs and nothing elsewhere."""
    if configured is not None:
        return configured
    return DEFAULT_PRELOAD if has_real_gpus else ()

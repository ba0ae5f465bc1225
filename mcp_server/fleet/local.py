"""The `local` transport: this machine, through subprocesses run by /bin/sh in the home directory."""
from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
from pathlib import Path

from mcp_server.fleet.errors import HostUnavailable, RequestTimeout
from mcp_server.fleet.hosts_config import HostConfig
from mcp_server.fleet.transport import (
    DEFAULT_MAX_OUTPUT, CommandResult, OutputBuffer, ProcessStream, Stdin, Transport, feed_stdin,
)


CLOSE_GRACE_S = 2.0


class LocalTransport(Transport):
    def __init__(self, host: HostConfig):
        self.host = host
        self.name = host.name

    def connect(self, timeout: float) -> None:
        return None

    def probe(self, timeout: float) -> bool:
        return True

    def close(self) -> None:
        return None

    def run(self, command: str, *, stdin: Stdin = None, timeout: float = 60.0,
            max_output: int = DEFAULT_MAX_OUTPUT) -> CommandResult:
        start = time.monotonic()
        proc = self._spawn(command, stdin is not None)
        out = OutputBuffer(max_output)
        feeder = feed_stdin(stdin, self._writer(proc), self._closer(proc)) if stdin is not None else None
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while True:
                left = start + timeout - time.monotonic()
                if left <= 0:
                    _kill_group(proc)
                    raise RequestTimeout(self.name, f"command did not finish within {timeout:g}s "
                                                    f"(killed): {command[:200]}", out.value())
                if sel.select(min(left, 1.0)):
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        break
                    out.add(chunk)
        proc.stdout.close()
        code = proc.wait()
        if feeder is not None:
            feeder.join(1.0)
        return CommandResult(code, out.value(), out.total, time.monotonic() - start)

    def open_process(self, command: str, timeout: float = 15.0) -> ProcessStream:
        return _LocalStream(self._spawn(command, True))

    def _spawn(self, command: str, with_stdin: bool) -> subprocess.Popen:
        try:
            # Own session: a deadline can kill the whole process group, and terminal signals don't reach it.
            return subprocess.Popen(["/bin/sh", "-c", command], stdin=subprocess.PIPE if with_stdin
                                    else subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    cwd=Path.home(), start_new_session=True)
        except OSError as e:
            raise HostUnavailable(self.name, f"cannot start /bin/sh: {e}") from None

    @staticmethod
    def _writer(proc: subprocess.Popen):
        assert proc.stdin is not None
        return lambda data: (proc.stdin.write(data), proc.stdin.flush())

    @staticmethod
    def _closer(proc: subprocess.Popen):
        assert proc.stdin is not None
        return proc.stdin.close


class _LocalStream(ProcessStream):
    def __init__(self, proc: subprocess.Popen):
        self.proc = proc

    def write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def read(self, n: int = 65536) -> bytes:
        assert self.proc.stdout is not None
        try:
            return os.read(self.proc.stdout.fileno(), n)
        except (OSError, ValueError):   # closed underneath us by close()
            return b""

    def close(self) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(CLOSE_GRACE_S)
        except subprocess.TimeoutExpired:
            _kill_group(self.proc)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()

"""The one interface every transport (local subprocess, SSH) offers, and what they share.

Commands are shell command lines run by the host's /bin/sh (remote shell for SSH): build them with `shell_path()`
for paths that may start with `~` and `shlex.quote()` for everything else.
"""
from __future__ import annotations

import re
import shlex
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import BinaryIO, Callable, Union

from mcp_server.fleet.hosts_config import HostConfig


DEFAULT_MAX_OUTPUT = 4 * 1024 * 1024   # bytes of output a run() keeps (the last ones)
STDIN_CHUNK = 256 * 1024

Stdin = Union[bytes, BinaryIO, None]


@dataclass(frozen=True)
class CommandResult:
    exit_code: int          # -N when killed by signal N (local), -1 when the remote gave no status
    output: bytes           # stdout and stderr combined, the last `max_output` bytes
    total_bytes: int        # how many bytes the command printed in all
    elapsed_s: float

    @property
    def truncated(self) -> bool:
        return self.total_bytes > len(self.output)

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", "replace")


class ProcessStream(ABC):
    """A long-lived process on a host: bytes in on its stdin, its stdout+stderr out."""

    @abstractmethod
    def write(self, data: bytes) -> None:
        """Write all of `data`; raises OSError (or a transport error) when the process or link is gone."""

    @abstractmethod
    def read(self, n: int = 65536) -> bytes:
        """Block until some output arrives; b"" once the process closed its output (or the stream was closed)."""

    @abstractmethod
    def close(self) -> None:
        """Close stdin (the agent exits on EOF) and release the stream; never blocks for long."""


class Transport(ABC):
    """One host's connection. Thread-safe: several threads may run commands at once."""

    name: str
    host: HostConfig
    # How the agent serves this host's channel: `serve` lives as long as the channel; a Slurm allocation's channel
    # relays to the agent its batch step holds (gpu_agent/serve.py).
    agent_mode = "serve"

    @abstractmethod
    def connect(self, timeout: float) -> None:
        """Make sure the connection is up (a no-op when it is); raises HostUnavailable and its subclasses."""

    @abstractmethod
    def run(self, command: str, *, stdin: Stdin = None, timeout: float = 60.0,
            max_output: int = DEFAULT_MAX_OUTPUT) -> CommandResult:
        """Run a shell command to its end, feeding `stdin`; raises RequestTimeout past `timeout`."""

    @abstractmethod
    def open_process(self, command: str, timeout: float = 15.0) -> ProcessStream:
        """Start a long-lived shell command and return its stream."""

    @abstractmethod
    def probe(self, timeout: float) -> bool:
        """True when the host still answers within `timeout`; on False the connection is dropped."""

    @abstractmethod
    def close(self) -> None:
        """Drop the connection; the next call reconnects."""


def shell_path(path: str) -> str:
    """Quote a path for the host's shell, leaving a leading `~` or `~user` unquoted so the host expands it."""
    m = re.match(r"^(~[A-Za-z0-9._-]*)(/.*)?$", path)
    if not m:
        return shlex.quote(path)
    rest = m.group(2) or ""
    return m.group(1) + ("/" + shlex.quote(rest[1:]) if len(rest) > 1 else rest)


class OutputBuffer:
    """Keeps the last `limit` bytes of a stream and counts them all."""

    def __init__(self, limit: int):
        self.limit = limit
        self.total = 0
        self._buf = bytearray()

    def add(self, data: bytes) -> None:
        self.total += len(data)
        self._buf += data
        if len(self._buf) > 2 * self.limit:   # trim in batches: keeps appends amortised O(1)
            del self._buf[:-self.limit]

    def value(self) -> bytes:
        return bytes(self._buf[-self.limit:]) if self.limit else b""


def feed_stdin(stdin: Stdin, write: Callable[[bytes], object], finish: Callable[[], object]) -> threading.Thread | None:
    """Write `stdin` from a thread (so a command that prints before reading cannot deadlock us), then signal EOF."""
    if stdin is None:
        finish()
        return None

    def pump() -> None:
        try:
            if isinstance(stdin, (bytes, bytearray, memoryview)):
                view = memoryview(stdin)
                for i in range(0, len(view), STDIN_CHUNK):
                    write(bytes(view[i:i + STDIN_CHUNK]))
            else:
                while chunk := stdin.read(STDIN_CHUNK):
                    write(chunk)
            finish()
        except Exception:  # the command went away or the deadline closed the channel: run() reports that
            pass

    thread = threading.Thread(target=pump, name="stdin-feeder", daemon=True)
    thread.start()
    return thread


"""All host sessions of one hosts file."""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mcp_server.fleet.connect import DEFAULT_CONNECT_TIMEOUT_S, make_transport
from mcp_server.fleet.hosts_config import HostsFile, load_hosts
from mcp_server.fleet.session import (
    AGENT_DIR, DEFAULT_REQUEST_TIMEOUT_S, HEARTBEAT_S, PROBE_TIMEOUT_S, EventCallback, HostSession, StateCallback,
)


MAX_PARALLEL = 64


class Fleet:
    def __init__(self, hosts_file: HostsFile | str | os.PathLike, *, on_event: EventCallback | None = None,
                 on_state: StateCallback | None = None, request_timeout: float = DEFAULT_REQUEST_TIMEOUT_S,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S, heartbeat_s: float = HEARTBEAT_S,
                 probe_timeout: float = PROBE_TIMEOUT_S, agent_dir: Path = AGENT_DIR):
        self.hosts_file = hosts_file if isinstance(hosts_file, HostsFile) else load_hosts(hosts_file)
        self.sessions: dict[str, HostSession] = {
            name: HostSession(make_transport(self.hosts_file, name, connect_timeout), on_event=on_event,
                              on_state=on_state, agent_dir=agent_dir, request_timeout=request_timeout,
                              connect_timeout=connect_timeout, heartbeat_s=heartbeat_s,
                              probe_timeout=probe_timeout)
            for name in self.hosts_file.names}
        self._pool = ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, max(1, len(self.sessions))),
                                        thread_name_prefix="arc-fleet")

    def start(self, wait: float | None = None) -> "Fleet":
        """Start every session; with `wait`, return once each has connected or failed once (at most that long)."""
        for s in self.sessions.values():
            s.start()
        if wait:
            deadline = time.monotonic() + wait
            for s in self.sessions.values():
                s.wait_attempted(max(0.0, deadline - time.monotonic()))
        return self

    def session(self, name: str) -> HostSession:
        try:
            return self.sessions[name]
        except KeyError:
            raise KeyError(f"no host {name!r} in {self.hosts_file.path} (hosts: {', '.join(self.sessions)})") \
                from None

    def request_all(self, op: str, params: dict[str, Any] | None = None, timeout: float = 10.0,
                    hosts: list[str] | None = None) -> dict[str, Any]:
        """The same request to every host (or `hosts`) in parallel: {host: result, or the exception it raised}."""
        names = hosts if hosts is not None else list(self.sessions)
        futures = {n: self._pool.submit(self.session(n).request, op, params, timeout) for n in names}
        out: dict[str, Any] = {}
        for name, future in futures.items():
            try:
                out[name] = future.result()
            except Exception as e:  # each host's failure is its own answer
                out[name] = e
        return out

    def close(self) -> None:
        list(self._pool.map(lambda s: s.close(), self.sessions.values()))
        self._pool.shutdown(wait=True)

    def __enter__(self) -> "Fleet":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""All host sessions of the fleet: one per host its sources have now."""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

from mcp_server.fleet.connect import DEFAULT_CONNECT_TIMEOUT_S
from mcp_server.fleet.hosts_config import HostConfig, HostsFile, load_hosts
from mcp_server.fleet.push import PushedTree, push_tree
from mcp_server.fleet.session import (
    AGENT_DIR, DEFAULT_REQUEST_TIMEOUT_S, HEARTBEAT_S, PROBE_TIMEOUT_S, EventCallback, HostSession, StateCallback,
)
from mcp_server.fleet.sources import Demand, HostFacts, HostSource, StaticHosts


MAX_PARALLEL = 64


class Fleet:
    def __init__(self, hosts: HostSource | Sequence[HostSource] | HostsFile | str | os.PathLike, *,
                 on_event: EventCallback | None = None, on_state: StateCallback | None = None,
                 request_timeout: float = DEFAULT_REQUEST_TIMEOUT_S,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S, heartbeat_s: float = HEARTBEAT_S,
                 probe_timeout: float = PROBE_TIMEOUT_S, agent_dir: Path = AGENT_DIR):
        if isinstance(hosts, (str, os.PathLike)):
            hosts = load_hosts(hosts)
        if isinstance(hosts, HostsFile):
            hosts = StaticHosts(hosts)
        self.sources: list[HostSource] = [hosts] if isinstance(hosts, HostSource) else list(hosts)
        self._session_options = dict(on_event=on_event, on_state=on_state, agent_dir=agent_dir,
                                     request_timeout=request_timeout, connect_timeout=connect_timeout,
                                     heartbeat_s=heartbeat_s, probe_timeout=probe_timeout)
        self._connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._source_of: dict[str, HostSource] = {}
        self._configs: dict[str, HostConfig] = {}
        self.sessions: dict[str, HostSession] = {}
        self._started = False
        self.sync()
        self._pool = ThreadPoolExecutor(max_workers=MAX_PARALLEL, thread_name_prefix="arc-fleet")

    def _new_session(self, source: HostSource, name: str) -> HostSession:
        return HostSession(source.transport(name, self._connect_timeout), **self._session_options)

    def sync(self) -> tuple[list[str], list[str]]:
        """Sessions for the hosts the sources have now: new hosts get one (started if the fleet runs), hosts gone
        have theirs closed. Returns (added, removed) host names."""
        wanted = {h.name: (source, h) for source in self.sources for h in source.hosts()}
        with self._lock:
            added = [n for n in wanted if n not in self.sessions]
            removed = [n for n in self.sessions if n not in wanted]
            gone = [self.sessions.pop(n) for n in removed]
            for name in added:
                source, config = wanted[name]
                self.sessions[name] = self._new_session(source, name)
            self._source_of = {n: s for n, (s, _) in wanted.items()}
            self._configs = {n: c for n, (_, c) in wanted.items()}
            started = self._started
        for session in gone:
            session.close()
        if started:
            for name in added:
                self.sessions[name].start()
        return added, removed

    def refresh(self, demand: Demand) -> tuple[list[str], list[str]]:
        """Let each source react to the queue, then sync the sessions."""
        for source in self.sources:
            source.refresh(demand)
        return self.sync()

    def hosts(self) -> list[HostConfig]:
        return list(self._configs.values())

    def facts(self, name: str) -> HostFacts:
        source = self._source_of.get(name)
        return source.facts(name) if source is not None else HostFacts()

    def start(self, wait: float | None = None) -> "Fleet":
        """Start every session; with `wait`, return once each has connected or failed once (at most that long)."""
        with self._lock:
            self._started = True
            sessions = list(self.sessions.values())
        for s in sessions:
            s.start()
        if wait:
            deadline = time.monotonic() + wait
            for s in sessions:
                s.wait_attempted(max(0.0, deadline - time.monotonic()))
        return self

    def session(self, name: str) -> HostSession:
        try:
            return self.sessions[name]
        except KeyError:
            raise KeyError(f"no host {name!r} in the fleet (hosts: {', '.join(self.sessions)})") from None

    def push_tree(self, name: str, local: Path, kind: str) -> PushedTree:
        """A content-addressed folder (a code snapshot, a dataset) onto host `name`, once."""
        return push_tree(self.session(name).transport, local, kind)

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
        list(self._pool.map(lambda s: s.close(), list(self.sessions.values())))
        self._pool.shutdown(wait=True)
        for source in self.sources:
            source.close()

    def __enter__(self) -> "Fleet":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""`arc mcp`: what Claude Code launches over stdio. It starts the daemon if none runs, then relays MCP messages
between stdio and the daemon's streamable HTTP endpoint on its owner-only unix socket.

A relay rather than a second server: every Claude session then shares one queue, one history and one view of the
GPUs, and the daemon keeps dispatching after the session ends. Nothing but protocol goes to stdout.
"""
from __future__ import annotations

import logging
from pathlib import Path

import anyio
import httpx2
from mcp.client.streamable_http import streamable_http_client
from mcp.server.stdio import stdio_server

from .daemon_client import DaemonClient
from .paths import StatePaths

log = logging.getLogger("arc.bridge")


async def _pump(source, sink, label: str) -> None:
    async with sink:
        async for message in source:
            if isinstance(message, Exception):
                log.warning("%s: %s", label, message)
                continue
            await sink.send(message)


async def relay(paths: StatePaths, hosts_file: Path, research_file: Path | None = None) -> None:
    client = DaemonClient(paths)
    info = client.ensure(hosts_file, research_file)
    http = httpx2.AsyncClient(
        transport=httpx2.AsyncHTTPTransport(uds=info["socket"]),
        headers={"Authorization": f"Bearer {client.token()}"},
        timeout=httpx2.Timeout(30.0, read=None),   # wait_for_jobs streams for as long as it waits
    )
    async with http, streamable_http_client("http://localhost/mcp", http_client=http) as (d_read, d_write), \
            stdio_server() as (s_read, s_write):
        async with anyio.create_task_group() as tg:
            async def client_to_daemon():
                await _pump(s_read, d_write, "from client")
                tg.cancel_scope.cancel()   # stdin closed: Claude Code ended the session

            tg.start_soon(client_to_daemon)
            tg.start_soon(_pump, d_read, s_write, "from daemon")


def run(paths: StatePaths, hosts_file: Path, research_file: Path | None = None) -> None:
    anyio.run(relay, paths, hosts_file, research_file)

"""`arc mcp`: what Claude Code launches over stdio. It starts the daemon if none runs, then relays MCP messages
between stdio and the daemon's streamable HTTP endpoint on its owner-only unix socket.

A relay rather than a second server: every Claude session then shares one queue, one history and one view of the
GPUs, and the daemon keeps dispatching after the session ends. Nothing but protocol goes to stdout.

A headless session runs for hours, so the relay outlives its daemon: when the daemon goes away (killed, crashed,
stopped by a person to pick up a new hosts.yaml), the next message starts it again and the session's handshake
is replayed to it, so Claude Code never notices a new session. A call of a read-only tool that was running when
the daemon went away is sent again; a call that changes something is answered with an error that says so (it may
or may not have taken effect: a submission is checked with list_jobs before it is repeated). Nothing recorded is
lost across the restart: the history is on disk and the new daemon reconciles every job with its host.
"""
from __future__ import annotations

import logging
from pathlib import Path

import anyio
import httpx2
from anyio.abc import ObjectReceiveStream, ObjectSendStream
from mcp.client.streamable_http import streamable_http_client
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage
from mcp.types import ErrorData, JSONRPCError, JSONRPCNotification, JSONRPCRequest, JSONRPCResponse

from .daemon_client import DaemonClient, DaemonError
from .paths import StatePaths

log = logging.getLogger("arc.bridge")

REPLAY_ID = "arc-bridge-replay"     # the id of a replayed handshake; its answer is not the client's
ATTEMPTS = 3                        # daemon (re)starts in a row before the waiting messages are refused
INTERNAL_ERROR = -32603


class DaemonGone(Exception):
    """The connection to the daemon ended."""


class Relay:
    def __init__(self, client: DaemonClient, hosts_file: Path, research_file: Path | None,
                 to_client: ObjectSendStream[SessionMessage]):
        self.client = client
        self.hosts_file = hosts_file
        self.research_file = research_file
        self.to_client = to_client
        self.handshake: JSONRPCRequest | None = None     # the client's initialize, once the daemon answered it
        self.opening: JSONRPCRequest | None = None       # ... while it is on its way
        self.in_flight: dict[str | int, JSONRPCRequest] = {}
        self.connections = 0
        self.daemon_pid: int | None = None
        self.read_only: set[str] = set()    # tools whose annotations say they change nothing: safe to send again

    def daemon_alive(self) -> bool:
        """The daemon this session talks to still runs (no query: its lock and info file)."""
        return self.client.running() and self.client.info().get("pid") == self.daemon_pid

    async def run(self, inbox: ObjectReceiveStream[SessionMessage]) -> None:
        """Until the client closes stdin: connect when there is something to send, reconnect when the daemon
        goes away."""
        backlog: list[SessionMessage] = []
        failures = 0
        while True:
            if not backlog:
                try:
                    backlog.append(await inbox.receive())
                except anyio.EndOfStream:
                    return
            connections = self.connections
            try:
                info = await anyio.to_thread.run_sync(self._ensure)
                await self._session(info, inbox, backlog)
                return                                         # the client closed stdin
            except DaemonError as e:
                failures = ATTEMPTS
                reason = f"arc's daemon cannot start: {e}"
            except Exception as e:                          # the connection broke: anything httpx2 or anyio raise
                failures = 1 if self.connections > connections else failures + 1
                reason = f"arc's daemon went away ({_describe(e)})"
                log.warning("%s; reconnecting (attempt %d of %d)", reason, failures, ATTEMPTS)
            backlog = await self._after_loss(backlog, reason)
            if failures >= ATTEMPTS:
                for message in backlog:
                    await self._refuse(message, f"{reason}; see {self.client.paths.daemon_log}")
                backlog, failures = [], 0
            else:
                await anyio.sleep(0.2 * failures)

    def _ensure(self) -> dict:
        return self.client.ensure(self.hosts_file, self.research_file)

    async def _session(self, info: dict, inbox: ObjectReceiveStream[SessionMessage],
                       backlog: list[SessionMessage]) -> None:
        http = httpx2.AsyncClient(
            transport=httpx2.AsyncHTTPTransport(uds=info["socket"]),
            headers={"Authorization": f"Bearer {self.client.token()}"},
            timeout=httpx2.Timeout(30.0, read=None),   # wait_for_jobs streams for as long as it waits
        )
        async with http, streamable_http_client("http://localhost/mcp", http_client=http) as (d_read, d_write):
            self.daemon_pid = info.get("pid")
            if self.handshake is not None:
                await self._replay_handshake(d_read, d_write)
            self.connections += 1
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._from_daemon, d_read)
                while backlog:
                    await self._to_daemon(d_write, backlog.pop(0))
                async for message in inbox:
                    if not self.daemon_alive():
                        # Not sent yet, so safe to send to the next daemon: this is what spares the usual case
                        # (the daemon died while the agent was thinking) an error answer.
                        backlog.append(message)
                        raise DaemonGone("the daemon stopped")
                    await self._to_daemon(d_write, message)
                tg.cancel_scope.cancel()                     # stdin closed: Claude Code ended the session

    async def _replay_handshake(self, d_read, d_write) -> None:
        """A restarted daemon knows no session: introduce the client again, as it introduced itself."""
        await d_write.send(SessionMessage(self.handshake.model_copy(update={"id": REPLAY_ID})))
        async for message in d_read:
            if isinstance(message, Exception):
                raise message
            reply = message.message
            if isinstance(reply, (JSONRPCResponse, JSONRPCError)) and reply.id == REPLAY_ID:
                if isinstance(reply, JSONRPCError):
                    raise DaemonGone(f"the restarted daemon refused the session: {reply.error.message}")
                break
        else:
            raise DaemonGone("the daemon closed the connection during the handshake")
        await d_write.send(SessionMessage(JSONRPCNotification(jsonrpc="2.0", method="notifications/initialized")))
        log.info("session replayed to daemon %s", self.daemon_pid)

    async def _to_daemon(self, d_write, message: SessionMessage) -> None:
        m = message.message
        if isinstance(m, JSONRPCRequest):
            if m.method == "initialize":
                self.opening = m
            self.in_flight[m.id] = m
        elif isinstance(m, JSONRPCNotification) and m.method == "notifications/cancelled":
            self.in_flight.pop((m.params or {}).get("requestId"), None)
        await d_write.send(message)

    async def _from_daemon(self, d_read) -> None:
        async for message in d_read:
            if isinstance(message, Exception):
                if isinstance(message, httpx2.TransportError):
                    raise message
                log.warning("from daemon: %s", message)
                continue
            m = message.message
            if isinstance(m, JSONRPCError) and m.id in self.in_flight and not self.daemon_alive():
                raise DaemonGone(m.error.message)   # the SDK's stand-in answer for a stream that broke
            if isinstance(m, (JSONRPCResponse, JSONRPCError)):
                request = self.in_flight.pop(m.id, None)
                if request is not None and request.method == "tools/list" and isinstance(m, JSONRPCResponse):
                    self.read_only |= {t["name"] for t in m.result.get("tools", [])
                                       if (t.get("annotations") or {}).get("readOnlyHint")}
                if self.opening is not None and m.id == self.opening.id and isinstance(m, JSONRPCResponse):
                    self.handshake, self.opening = self.opening, None
            await self.to_client.send(message)
        raise DaemonGone("the daemon closed the connection")

    async def _after_loss(self, backlog: list[SessionMessage], reason: str) -> list[SessionMessage]:
        """What was in flight when the connection broke: a call of a tool that changes something is answered (it
        may have run); anything else, read-only tools included, waits to be sent again, ahead of what had not
        been sent yet."""
        again = []
        for request in self.in_flight.values():
            if request.method == "tools/call" and (request.params or {}).get("name") not in self.read_only:
                await self._refuse(SessionMessage(request), f"{reason} during this call; the next call starts it again "
                                   "and every recorded job and result is kept. Call the tool again; if it was a "
                                   "submission (submit_jobs, rerun_job, measure_noise), check list_jobs first: it "
                                   "may have been recorded")
            else:
                again.append(SessionMessage(request))
        self.in_flight.clear()
        self.opening = None
        return again + backlog

    async def _refuse(self, message: SessionMessage, why: str) -> None:
        """Answer a request the daemon could not: a tool call with an error result the model reads, any other
        request with a JSON-RPC error. Notifications need no answer."""
        m = message.message
        if not isinstance(m, JSONRPCRequest):
            return
        if m.method == "tools/call":
            reply = JSONRPCResponse(jsonrpc="2.0", id=m.id,
                                    result={"content": [{"type": "text", "text": why}], "isError": True})
        else:
            reply = JSONRPCError(jsonrpc="2.0", id=m.id, error=ErrorData(code=INTERNAL_ERROR, message=why))
        await self.to_client.send(SessionMessage(reply))


def _describe(error: BaseException) -> str:
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


async def relay(paths: StatePaths, hosts_file: Path, research_file: Path | None = None) -> None:
    client = DaemonClient(paths)
    await anyio.to_thread.run_sync(client.ensure, hosts_file, research_file)   # fail fast on a broken fleet file
    async with stdio_server() as (s_read, s_write):
        inbox_send, inbox = anyio.create_memory_object_stream[SessionMessage](64)
        relay = Relay(client, hosts_file, research_file, s_write)

        async def from_client() -> None:
            async with inbox_send:
                async for message in s_read:
                    if isinstance(message, Exception):
                        log.warning("from client: %s", message)
                        continue
                    await inbox_send.send(message)

        async with anyio.create_task_group() as tg:
            tg.start_soon(from_client)
            await relay.run(inbox)
            tg.cancel_scope.cancel()


def run(paths: StatePaths, hosts_file: Path, research_file: Path | None = None) -> None:
    anyio.run(relay, paths, hosts_file, research_file)

"""`arc mcp`: what Claude Code launches over stdio. It starts the daemon if none runs, then relays MCP messages
between stdio and the daemon's streamable HTTP endpoint on its owner-only unix socket.

A relay rather than a second server: every Claude session then shares one queue, one history and one view of the
GPUs, and the daemon keeps dispatching after the session ends. Nothing but protocol goes to stdout.

Standard library only: the relay moves JSON-RPC lines and reads the few fields it needs (ids, methods, the
session header), so it does not pay for importing the MCP SDK (seconds) before Claude Code's first answer. Each
client request is one POST whose answer (JSON or an event stream) is copied to stdout, on a thread of its own so a
long wait_for_jobs holds up nothing else. When stdin closes, the client is gone and so is the relay.

A headless session runs for hours, so the relay outlives its daemon: when the daemon goes away (killed, crashed,
stopped by a person to pick up a new hosts.yaml), the next message starts it again and the session's handshake
is replayed to it, so Claude Code never notices a new session (the same happens when the daemon has forgotten an
idle session). A request that never reached the daemon is sent again. A call of a read-only tool that was running
when the daemon went away is sent again; a call that changes something is answered with an error that says so (it
may or may not have taken effect: a submission is checked with list_jobs before it is repeated). Nothing recorded
is lost across the restart: the history is on disk and the new daemon reconciles every job with its host.

A daemon that must be started takes seconds (it imports the MCP SDK), and Claude Code waits for the handshake
before the session begins. The handshake's answers (initialize, the tool, prompt and resource lists) depend only on
arc's code, so the relay keeps the last ones a daemon gave (core/startup_cache.py, keyed by the build) and, while
its daemon starts, answers them itself: the session begins at once and its first call waits for the daemon, to
which the handshake is then replayed as after a restart. The first session of a new build waits for the daemon.

When arc cannot serve at all (no fleet file, a broken one, a daemon that cannot start), the relay still starts and
answers the handshake itself, then every tool call with the reason and the fix: an `arc mcp` that exits instead
shows the person only `Failed to connect`, its reason lost on a stderr nobody reads.
"""
from __future__ import annotations

import http.client
import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

from ..core import startup_cache
from ..core.paths import StatePaths
from ..daemon.client import DaemonClient, DaemonError, _UnixConnection


log = logging.getLogger("arc.bridge")

REPLAY_ID = "arc-bridge-replay"     # the id of a replayed handshake; its answer is not the client's
ATTEMPTS = 3                        # losses in a row of one request before it is refused
INTERNAL_ERROR = -32603
METHOD_NOT_FOUND = -32601
CONNECT_TIMEOUT_S = 30.0
SESSION_HEADER = "mcp-session-id"
HANDSHAKE = "mcp-handshake"         # the startup_cache entry of the answers below
LISTS = ("tools/list", "prompts/list", "resources/list", "resources/templates/list")


class NotDelivered(Exception):
    """The daemon never got the message (no connection, or it had forgotten the session): safe to send again."""


class DaemonGone(Exception):
    """The connection broke after the message was sent: the daemon may have acted on it."""


class Relay:
    def __init__(self, client: DaemonClient, hosts_file: Path, research_file: Path | None, out: BinaryIO):
        self.client = client
        self.hosts_file = hosts_file
        self.research_file = research_file
        self.out = out
        self.out_lock = threading.Lock()
        self.connect_lock = threading.Lock()   # one thread (re)starts the daemon and replays; the others wait
        self.daemon: dict[str, Any] | None = None    # the info of the daemon this session talks to
        self.session_id: str | None = None
        self.protocol_version: str | None = None
        self.handshake: dict[str, Any] | None = None  # the client's initialize, once a daemon answered it
        self.read_only: set[str] = set()    # tools whose annotations say they change nothing: safe to send again
        self.cancelled: set[Any] = set()    # request ids the client gave up on: never answered nor sent again
        self.remembered = _remembered_handshake()
        self.memory_lock = threading.Lock()
        self.answered_early = False         # the client's initialize was answered from memory, not by a daemon

    # ---- stdin ------------------------------------------------------------------------------------------------

    def serve(self, stdin: BinaryIO) -> None:
        """Until the client closes stdin."""
        for line in stdin:
            if not line.strip():
                continue
            try:
                message = json.loads(line)
            except ValueError as e:
                log.warning("from client: not JSON (%s): %.200r", e, line)
                continue
            if not isinstance(message, dict):
                log.warning("from client: not a JSON-RPC message: %.200r", line)
                continue
            if "method" in message and "id" in message:
                threading.Thread(target=self.request, args=(message,), daemon=True).start()
            else:
                self.notify(message)
        self.end_session()

    def start_daemon(self) -> None:
        """Start the daemon while the handshake is answered from memory; a failure is told to each later call."""
        try:
            self._connect()
        except (DaemonError, NotDelivered, DaemonGone) as e:
            print(f"arc: {e}", file=sys.stderr, flush=True)

    def request(self, message: dict[str, Any]) -> None:
        if self.daemon is None and (reply := self._from_memory(message)) is not None:
            self._deliver(message, reply)
            return
        failures = 0
        while True:
            try:
                self._connect()
                self._exchange(message)
                return
            except DaemonError as e:
                self._refuse(message, f"arc's daemon cannot start: {e}; see {self.client.paths.daemon_log}")
                return
            except NotDelivered as e:
                reason = f"arc's daemon went away ({e})"
            except DaemonGone as e:
                reason = f"arc's daemon went away ({e})"
                if message.get("id") in self.cancelled:
                    return
                if message["method"] == "tools/call" and _tool(message) not in self.read_only:
                    self._refuse(message, f"{reason} during this call; the next call starts it again and every "
                                 "recorded job and result is kept. Call the tool again; if it was a submission "
                                 "(submit_jobs, rerun_job, measure_noise), check list_jobs first: it may have "
                                 "been recorded")
                    return
            failures += 1
            if failures >= ATTEMPTS:
                self._refuse(message, f"{reason}; see {self.client.paths.daemon_log}")
                return
            log.warning("%s; reconnecting (attempt %d of %d)", reason, failures, ATTEMPTS)
            time.sleep(0.2 * failures)

    def notify(self, message: dict[str, Any]) -> None:
        """A notification or an answer to the daemon: nothing to answer, and after a restart the replayed
        handshake stands in for the client's own `initialized`."""
        if message.get("method") == "notifications/cancelled":
            self.cancelled.add((message.get("params") or {}).get("requestId"))
        if message.get("method") == "notifications/initialized" and self.answered_early:
            return      # the daemon has not seen this session's initialize: the replay sends both
        try:
            self._connect()
            self._exchange(message)
        except (DaemonError, NotDelivered, DaemonGone) as e:
            log.warning("could not pass %s to the daemon: %s", message.get("method", "an answer"), e)

    def end_session(self) -> None:
        """Tell the daemon the session is over, so it frees it now rather than after its idle timeout."""
        if self.daemon is None or self.session_id is None:
            return
        try:
            conn = self._connection(timeout=2.0)
            conn.request("DELETE", "/mcp", headers=self._headers())
            conn.getresponse().read()
            conn.close()
        except (OSError, http.client.HTTPException):
            pass

    # ---- the daemon -------------------------------------------------------------------------------------------

    def _alive(self) -> bool:
        """The daemon this session talks to still runs (no query: its lock and info file)."""
        return (self.daemon is not None and self.client.running()
                and self.client.info().get("pid") == self.daemon.get("pid"))

    def _connect(self) -> None:
        with self.connect_lock:
            if self._alive() and (self.session_id is not None or self.handshake is None):
                return
            self.daemon = self.client.ensure(self.hosts_file, self.research_file)
            self.session_id = None
            if self.handshake is not None:
                self._replay_handshake()

    def _replay_handshake(self) -> None:
        """A restarted daemon knows no session: introduce the client again, as it introduced itself."""
        replies = self._exchange({**self.handshake, "id": REPLAY_ID})
        reply = next((r for r in replies if r.get("id") == REPLAY_ID), None)
        if reply is None:
            raise DaemonGone("the daemon closed the connection during the handshake")
        if "error" in reply:
            raise DaemonGone(f"the restarted daemon refused the session: {reply['error'].get('message')}")
        self._exchange({"jsonrpc": "2.0", "method": "notifications/initialized"})
        log.info("session replayed to daemon %s", self.daemon.get("pid"))

    def _connection(self, timeout: float | None) -> _UnixConnection:
        return _UnixConnection(self.daemon["socket"], timeout)

    def _headers(self) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.client.token()}", "Content-Type": "application/json",
                   "Accept": "application/json, text/event-stream"}
        if self.session_id is not None:
            headers["Mcp-Session-Id"] = self.session_id
        if self.protocol_version is not None:
            headers["Mcp-Protocol-Version"] = self.protocol_version
        return headers

    def _exchange(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        """POST one message; the messages that come back, each copied to the client unless it is the relay's own.
        A replayed handshake's exchange happens under connect_lock, which is why the lock is not taken here."""
        conn = self._connection(timeout=CONNECT_TIMEOUT_S)
        try:
            try:
                conn.request("POST", "/mcp", body=json.dumps(message).encode(), headers=self._headers())
            except OSError as e:
                raise NotDelivered(_describe(e)) from None
            # Connected: from here on the daemon may act on it. wait_for_jobs streams for as long as it waits.
            conn.sock.settimeout(None)
            try:
                response = conn.getresponse()
                if response.status == 404 and self.session_id is not None:
                    response.read()
                    self.session_id = None      # the daemon forgot the session (restarted, or idle too long)
                    raise NotDelivered("it did not know this session")
                session = response.getheader(SESSION_HEADER)
                if session and message.get("method") == "initialize":
                    self.session_id = session
                kind = response.getheader("content-type", "")
                if kind.startswith("text/event-stream"):
                    return list(self._events(response, message))
                body = response.read()
            except (OSError, http.client.HTTPException) as e:
                raise DaemonGone(_describe(e)) from None
        finally:
            conn.close()
        if response.status >= 400 and "id" in message:
            try:
                reply = json.loads(body)
            except ValueError:
                reply = None
            if not (isinstance(reply, dict) and "error" in reply):
                reply = {"jsonrpc": "2.0", "id": message["id"], "error": {
                    "code": INTERNAL_ERROR, "message": f"arc's daemon answered HTTP {response.status}: "
                                                       f"{body[:300].decode('utf-8', 'replace')}"}}
            reply["id"] = message["id"]
            self._deliver(message, reply)
            return [reply]
        if not body.strip():
            return []
        reply = json.loads(body)
        self._deliver(message, reply)
        return [reply]

    def _events(self, response: http.client.HTTPResponse, message: dict[str, Any]):
        """The JSON-RPC messages of a server-sent event stream, as they come."""
        data: list[bytes] = []
        answered = "id" not in message
        for line in response:
            line = line.rstrip(b"\r\n")
            if line.startswith(b"data:"):
                data.append(line[5:].removeprefix(b" "))
            elif not line and data:
                reply = json.loads(b"\n".join(data))
                data = []
                self._deliver(message, reply)
                answered = answered or reply.get("id") == message.get("id")
                yield reply
        if not answered:
            raise DaemonGone("the daemon closed the connection")

    def _deliver(self, request: dict[str, Any], reply: dict[str, Any]) -> None:
        """Note what the relay needs from an answer, then pass it on (a replayed handshake's is the relay's own)."""
        if reply.get("id") == REPLAY_ID:
            return
        result = reply.get("result")
        if reply.get("id") == request.get("id") and isinstance(result, dict):
            if request.get("method") == "initialize":
                self.handshake = request
                self.protocol_version = result.get("protocolVersion")
            elif request.get("method") == "tools/list":
                self.read_only |= {t["name"] for t in result.get("tools", [])
                                   if (t.get("annotations") or {}).get("readOnlyHint")}
            if self.daemon is not None:
                self._remember(request, result)
        self._write(reply)

    def _from_memory(self, message: dict[str, Any]) -> dict[str, Any] | None:
        """This build's answer to a handshake request, as a daemon gave it to an earlier session."""
        method, params = message.get("method"), message.get("params") or {}
        if method == "initialize":
            result = self.remembered["initialize"].get(params.get("protocolVersion"))
            self.answered_early = result is not None
        elif method in LISTS and self.answered_early and "cursor" not in params:
            result = self.remembered["lists"].get(method)
        else:
            return None
        return None if result is None else {"jsonrpc": "2.0", "id": message["id"], "result": result}

    def _remember(self, request: dict[str, Any], result: dict[str, Any]) -> None:
        """Keep a daemon's handshake answer for the next session's start (written only when it changed)."""
        method, params = request.get("method"), request.get("params") or {}
        if method == "initialize" and isinstance(params.get("protocolVersion"), str):
            table, key = "initialize", params["protocolVersion"]
        elif method in LISTS and "cursor" not in params:
            table, key = "lists", method
        else:
            return
        with self.memory_lock:
            if self.remembered[table].get(key) != result:
                self.remembered[table][key] = result
                startup_cache.write(HANDSHAKE, self.remembered)

    def _refuse(self, message: dict[str, Any], why: str) -> None:
        """Answer a request the daemon could not: a tool call with an error result the model reads, any other
        request with a JSON-RPC error."""
        if message["method"] == "tools/call":
            reply = {"jsonrpc": "2.0", "id": message["id"],
                     "result": {"content": [{"type": "text", "text": why}], "isError": True}}
        else:
            reply = {"jsonrpc": "2.0", "id": message["id"], "error": {"code": INTERNAL_ERROR, "message": why}}
        self._write(reply)

    def _write(self, message: dict[str, Any]) -> None:
        line = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        with self.out_lock:
            self.out.write(line)
            self.out.flush()


def _tool(message: dict[str, Any]) -> Any:
    return (message.get("params") or {}).get("name")


def _remembered_handshake() -> dict[str, dict[str, Any]]:
    """The handshake answers kept for this build: {"initialize": {protocol version: result}, "lists": {method:
    result}}; anything else found there (another shape, a damaged file) counts as nothing kept."""
    kept = startup_cache.read(HANDSHAKE)
    tables = {"initialize": {}, "lists": {}}
    if isinstance(kept, dict):
        for name, table in tables.items():
            if isinstance(kept.get(name), dict):
                table.update((k, v) for k, v in kept[name].items() if isinstance(v, dict))
    return tables


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


class Unusable:
    """The MCP server of an arc that cannot serve: it introduces itself, lists one tool that says why, and answers
    any tool call with the reason and the fix."""

    TOOL = "arc_setup"

    def __init__(self, reason: str, out: BinaryIO):
        self.reason = (f"arc cannot serve: {reason.rstrip('. ')}. Once fixed, reconnect arc in Claude Code (/mcp, then "
                       "reconnect; or start Claude Code again)")
        self.out = out

    def serve(self, stdin: BinaryIO) -> None:
        for line in stdin:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict) and "method" in message and "id" in message:
                self._write(self._answer(message))

    def _answer(self, message: dict[str, Any]) -> dict[str, Any]:
        method, params = message["method"], message.get("params") or {}
        result: dict[str, Any]
        if method == "initialize":
            version = params.get("protocolVersion")
            result = {"protocolVersion": version if isinstance(version, str) else "2025-06-18",
                      "capabilities": {"tools": {"listChanged": False}},
                      "serverInfo": {"name": "arc", "version": _version()}, "instructions": self.reason}
        elif method == "tools/list":
            result = {"tools": [{"name": self.TOOL, "description": self.reason + ". Call this tool for the same "
                                 "text; tell the person, who fixes it.",
                                 "inputSchema": {"type": "object", "properties": {}},
                                 "annotations": {"readOnlyHint": True}}]}
        elif method == "tools/call":
            result = {"content": [{"type": "text", "text": self.reason}], "isError": True}
        elif method in ("prompts/list", "resources/list", "resources/templates/list"):
            key = {"prompts/list": "prompts", "resources/list": "resources"}.get(method, "resourceTemplates")
            result = {key: []}
        elif method == "ping":
            result = {}
        else:
            return {"jsonrpc": "2.0", "id": message["id"],
                    "error": {"code": METHOD_NOT_FOUND, "message": f"{method}: {self.reason}"}}
        return {"jsonrpc": "2.0", "id": message["id"], "result": result}

    def _write(self, message: dict[str, Any]) -> None:
        self.out.write(json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode() + b"\n")
        self.out.flush()


def _version() -> str:
    from .. import __version__

    return __version__


def run(paths: StatePaths, hosts_file: Path | None, research_file: Path | None = None,
        unusable: str | None = None) -> bool:
    """Relay stdio to the daemon, started now so a daemon that cannot start is found before the first question
    (while the handshake is answered from memory, when this build kept one, the start goes on beside it and a
    failure is told to each call); or, when arc cannot serve (`unusable` says why, or the daemon cannot start),
    say why on stderr and answer every request with it. False when it could only refuse."""
    client = DaemonClient(paths)
    relay = Relay(client, hosts_file, research_file, sys.stdout.buffer) if unusable is None else None
    if relay is not None and not client.running() and relay.remembered["initialize"]:
        threading.Thread(target=relay.start_daemon, daemon=True).start()
    elif relay is not None:
        try:
            client.ensure(hosts_file, research_file)
        except DaemonError as e:
            unusable = str(e)
    if unusable is not None:
        print(f"arc: {unusable}", file=sys.stderr, flush=True)
        Unusable(unusable, sys.stdout.buffer).serve(sys.stdin.buffer)
        return False
    relay.serve(sys.stdin.buffer)
    return True

"""One long-lived agent session per host: `python -m gpu_agent serve` on one channel, JSON lines both ways.

Threads, not asyncio (paramiko blocks). Per session:
- the maintainer thread connects (pushing the agent if the host lacks it), says hello, then heartbeats while idle
  and reconnects with exponential backoff when the connection is lost;
- a reader thread matches response lines to waiting requests by id and queues event lines;
- an event thread calls `on_event`, so a callback may itself make requests on this session.
Callbacks must not raise (exceptions are logged) and should return quickly.
"""
from __future__ import annotations

import collections
import itertools
import json
import logging
import queue
import random
import shlex
import threading
import time
from pathlib import Path
from typing import Any, Callable

from pydantic import TypeAdapter, ValidationError

import gpu_agent
from gpu_agent import protocol
from mcp_server.fleet.errors import AgentError, FleetError, HostUnavailable, ProtocolError, RequestTimeout
from mcp_server.fleet.push import PushedTree, completed_check, content_hash, found_path, push_tree
from mcp_server.fleet.transport import ProcessStream, Transport, shell_path

log = logging.getLogger(__name__)

AGENT_DIR = Path(gpu_agent.__file__).resolve().parent
AGENT_PACKAGE = "gpu_agent"
DEFAULT_REQUEST_TIMEOUT_S = 30.0
HEARTBEAT_S = 10.0                 # an idle session says hello this often; a missed answer is a lost host
PROBE_TIMEOUT_S = 5.0
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
MAX_LINE = 64 * 1024 * 1024
CONFIG_WRITTEN = "ARC-CONFIG-WRITTEN"

EventCallback = Callable[[str, dict], None]
StateCallback = Callable[[str, bool, "str | None"], None]

# Built once: an adapter compiles its type's validator. Strict: the agent writes JSON of exactly these types, so a
# "3" where an int belongs is a bug to report, not a value to coerce.
_RESPONSE = TypeAdapter(protocol.Response)
_EVENT = TypeAdapter(protocol.Event)
_RESULTS = {op: TypeAdapter(tp) for op, tp in protocol.RESULTS.items()}


def prepare_agent(transport: Transport, agent_dir: Path = AGENT_DIR, timeout: float = 30.0) -> PushedTree:
    """Write `<workdir>/agent.json` and make sure this agent version is on the host: one command when it is."""
    digest = content_hash(agent_dir, prefix=AGENT_PACKAGE)
    w = shell_path(transport.host.workdir)
    config = shlex.quote(json.dumps(transport.host.agent_config()))
    r = transport.run(f"mkdir -p {w} && printf '%s\\n' {config} > {w}/agent.json.tmp && "
                      f"mv -f {w}/agent.json.tmp {w}/agent.json && echo {CONFIG_WRITTEN} && "
                      f"{completed_check(transport, 'agent', digest)}", timeout=timeout)
    found = found_path(r.text)
    if found:
        return PushedTree(found, digest, False, r.elapsed_s)
    if CONFIG_WRITTEN not in r.text.splitlines():
        raise FleetError(transport.name, f"cannot write {transport.host.workdir}/agent.json: {r.text.strip()[-300:]}"
                                         f"; fix: make the workdir writable or set workdir in the hosts file")
    return push_tree(transport, agent_dir, "agent", prefix=AGENT_PACKAGE, timeout=timeout * 4)


def agent_command(transport: Transport, agent_root: str) -> str:
    w = shell_path(transport.host.workdir)
    return f"cd {shlex.quote(agent_root)} && exec {shlex.quote(transport.host.python)} -u -m {AGENT_PACKAGE} " \
           f"--workdir {w} {transport.agent_mode}"


class _Slot:
    __slots__ = ("event", "response", "error")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.response: dict | None = None
        self.error: FleetError | None = None


class _Connection:
    """One running agent process and what is in flight on it."""

    def __init__(self, host: str, stream: ProcessStream):
        self.host = host
        self.stream = stream
        self.pending: dict[int, _Slot] = {}
        self.lock = threading.Lock()
        self.lost = threading.Event()
        self.reason: str | None = None
        self.noise: collections.deque[str] = collections.deque(maxlen=20)   # non-JSON output (tracebacks)
        self.last_rx = time.monotonic()
        self.probing = False

    def fail(self, reason: str) -> None:
        with self.lock:
            if self.lost.is_set():
                return
            self.reason = reason
            self.lost.set()
            pending, self.pending = self.pending, {}
        for slot in pending.values():
            slot.error = HostUnavailable(self.host, f"connection lost before the answer: {reason}",
                                         request_sent=True)
            slot.event.set()
        try:
            self.stream.close()
        except Exception:   # already broken: nothing left to release
            log.debug("closing a lost stream", exc_info=True)


class HostSession:
    """The agent session of one host. `request()` may be called from many threads at once."""

    def __init__(self, transport: Transport, *, on_event: EventCallback | None = None,
                 on_state: StateCallback | None = None, agent_dir: Path = AGENT_DIR,
                 request_timeout: float = DEFAULT_REQUEST_TIMEOUT_S, connect_timeout: float = 10.0,
                 heartbeat_s: float = HEARTBEAT_S, probe_timeout: float = PROBE_TIMEOUT_S):
        self.transport = transport
        self.name = transport.name
        self.host = transport.host
        self.on_event = on_event
        self.on_state = on_state
        self.agent_dir = agent_dir
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self.heartbeat_s = heartbeat_s
        self.probe_timeout = probe_timeout
        self.hello: dict | None = None
        self.agent_tree: PushedTree | None = None
        self._conn: _Connection | None = None
        self._state: tuple[bool, str | None] = (False, "not started")
        self._ids = itertools.count(1)
        self._write_lock = threading.Lock()
        self._lock = threading.Lock()          # orders close() against a connection coming up
        self._closed = threading.Event()
        self._attempted = threading.Event()
        self._events: queue.Queue[dict | None] = queue.Queue()
        self._threads: list[threading.Thread] = []

    # ---- public --------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        conn = self._conn
        return conn is not None and not conn.lost.is_set()

    @property
    def last_error(self) -> str | None:
        return self._state[1]

    def start(self, wait: float | None = None) -> "HostSession":
        """Start connecting in the background; with `wait`, block until the first attempt ended (or that long)."""
        for target, name in ((self._maintain, "maintain"), (self._deliver_events, "events")):
            t = threading.Thread(target=target, name=f"arc-{self.name}-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        if wait:
            self.wait_attempted(wait)
        return self

    def wait_attempted(self, timeout: float) -> bool:
        """Block until the first connection attempt has ended, successful or not."""
        return self._attempted.wait(timeout)

    def request(self, op: str, params: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        """Send one request and return its `result`, checked against protocol.RESULTS[op].

        Raises AgentError (ok=false), RequestTimeout (no answer in time; the host gets probed), HostUnavailable
        (not connected, or the connection dropped while waiting: then `request_sent` is True), ProtocolError (the
        answer does not match the protocol; the agent may have acted).
        """
        if self._closed.is_set():
            raise HostUnavailable(self.name, "session closed")
        conn = self._conn
        if conn is None or conn.lost.is_set():
            reason = conn.reason if conn is not None and conn.lost.is_set() else self.last_error
            raise HostUnavailable(self.name, f"not connected: {reason or 'connecting'}")
        return self._send(conn, op, params, self.request_timeout if timeout is None else timeout)

    def close(self) -> None:
        with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
            conn = self._conn
        if conn is not None:
            conn.fail("session closed")
        self._events.put(None)
        for t in self._threads:
            t.join(5.0)
        self.transport.close()

    # ---- connection lifecycle ------------------------------------------------------------------------

    def _maintain(self) -> None:
        failures = 0
        while not self._closed.is_set():
            try:
                conn = self._connect()
            except Exception as e:  # a bug must not end reconnection: report it as the host's error
                message = e.message if isinstance(e, FleetError) else f"{type(e).__name__}: {e}"
                self._set_state(False, message)
                self._attempted.set()
                delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** failures) * random.uniform(0.8, 1.2)
                failures += 1
                self._closed.wait(delay)
                continue
            failures = 0
            with self._lock:
                if self._closed.is_set():
                    conn.fail("session closed")
                    return
                self._conn = conn
            self._set_state(True, None)
            self._attempted.set()
            self._watch(conn)
            with self._lock:
                self._conn = None
            if not self._closed.is_set():
                self._set_state(False, conn.reason)

    def _connect(self) -> _Connection:
        self.transport.connect(self.connect_timeout)
        self.agent_tree = prepare_agent(self.transport, self.agent_dir, timeout=self.connect_timeout * 3)
        stream = self.transport.open_process(agent_command(self.transport, self.agent_tree.path),
                                             timeout=self.connect_timeout)
        conn = _Connection(self.name, stream)
        reader = threading.Thread(target=self._read, args=(conn,), name=f"arc-{self.name}-reader", daemon=True)
        reader.start()
        try:
            hello = self._send(conn, "hello", None, self.connect_timeout)
        except FleetError as e:
            conn.fail(e.message)
            detail = f" (agent output: {conn.noise[-1]})" if conn.noise else ""
            raise HostUnavailable(self.name, f"agent did not start: {e.message}{detail}") from None
        if hello["protocol"] != protocol.PROTOCOL_VERSION:
            conn.fail("protocol mismatch")
            raise HostUnavailable(self.name, f"agent speaks protocol {hello['protocol']}, the controller "
                                             f"{protocol.PROTOCOL_VERSION}; fix: upgrade arc on both sides")
        self.hello = dict(hello)
        return conn

    def _watch(self, conn: _Connection) -> None:
        """Until the connection is lost: say hello when idle, so a vanished host is noticed without traffic."""
        while not conn.lost.wait(min(1.0, self.heartbeat_s)):
            if time.monotonic() - conn.last_rx < self.heartbeat_s:
                continue
            try:
                self._send(conn, "hello", None, self.probe_timeout, probe_on_timeout=False)
            except RequestTimeout:
                if self.transport.probe(self.probe_timeout):
                    conn.fail(f"agent did not answer hello within {self.probe_timeout:g}s; restarting it")
                else:
                    self._lose_host(conn)
            except FleetError:
                pass   # the connection failed; the loop ends on conn.lost

    def _lose_host(self, conn: _Connection) -> None:
        conn.fail("the host stopped answering (link down, host gone, or sshd dead)")
        with self._lock:
            # A late probe of an old connection must not cut the transport a newer connection already uses.
            if conn is self._conn:
                self.transport.close()

    def _probe_later(self, conn: _Connection) -> None:
        """A request timed out: is the host still there? Asked off the caller's thread, once at a time."""
        with conn.lock:
            if conn.probing or conn.lost.is_set():
                return
            conn.probing = True

        def probe() -> None:
            if not self.transport.probe(self.probe_timeout):
                self._lose_host(conn)
            conn.probing = False

        threading.Thread(target=probe, name=f"arc-{self.name}-probe", daemon=True).start()

    def _set_state(self, connected: bool, error: str | None) -> None:
        if self._state == (connected, error):
            return
        self._state = (connected, error)
        if self.on_state is not None:
            try:
                self.on_state(self.name, connected, error)
            except Exception:
                log.exception("on_state callback failed for host %s", self.name)

    # ---- requests and responses ----------------------------------------------------------------------

    def _send(self, conn: _Connection, op: str, params: dict[str, Any] | None, timeout: float,
              probe_on_timeout: bool = True) -> Any:
        rid = next(self._ids)
        slot = _Slot()
        with conn.lock:
            if conn.lost.is_set():
                raise HostUnavailable(self.name, f"not connected: {conn.reason}")
            conn.pending[rid] = slot
        line = json.dumps({"id": rid, "op": op, "params": params or {}}).encode() + b"\n"
        try:
            with self._write_lock:
                conn.stream.write(line)
        except Exception as e:  # broken channel or pipe
            conn.fail(f"writing to the agent failed ({e or type(e).__name__})")
            raise HostUnavailable(self.name, f"could not send {op!r}: {conn.reason}") from None
        if not slot.event.wait(timeout):
            with conn.lock:
                conn.pending.pop(rid, None)
            if probe_on_timeout:
                self._probe_later(conn)
            raise RequestTimeout(self.name, f"no answer to {op!r} within {timeout:g}s", request_sent=True)
        if slot.error is not None:
            raise slot.error
        try:
            response = _RESPONSE.validate_python(slot.response, strict=True)
        except ValidationError as e:
            raise ProtocolError(self.name, f"answered {op} with a malformed response: {_problem(e)}") from None
        if response.get("ok"):
            try:
                return _RESULTS[op].validate_python(response.get("result"), strict=True)
            except ValidationError as e:
                raise ProtocolError(self.name, f"answered {op} with a malformed result: {_problem(e)}") from None
        error = response.get("error") or {"code": "internal", "message": "ok=false without an error"}
        raise AgentError(self.name, error["code"], error["message"])

    def _read(self, conn: _Connection) -> None:
        buf = bytearray()
        try:
            while chunk := conn.stream.read(65536):
                conn.last_rx = time.monotonic()
                buf += chunk
                while (end := buf.find(b"\n")) >= 0:
                    line = bytes(buf[:end])
                    del buf[:end + 1]
                    self._line(conn, line)
                if len(buf) > MAX_LINE:
                    conn.fail(f"the agent sent a line longer than {MAX_LINE} bytes")
                    return
        except Exception as e:  # the stream broke in a transport-specific way
            conn.noise.append(f"read failed: {e or type(e).__name__}")
        conn.fail(self._why_ended(conn))

    def _why_ended(self, conn: _Connection) -> str:
        if not getattr(self.transport, "is_connected", True):
            return "the SSH connection closed"
        last = f": {conn.noise[-1]}" if conn.noise else ""
        return f"the agent process ended{last}"

    def _line(self, conn: _Connection, line: bytes) -> None:
        try:
            msg = json.loads(line)
        except ValueError:
            if line.strip():
                conn.noise.append(line.decode("utf-8", "replace")[:500])
                log.debug("host %s agent output: %s", self.name, conn.noise[-1])
            return
        rid = msg.get("id") if isinstance(msg, dict) else None
        if isinstance(rid, int) and not isinstance(rid, bool):
            with conn.lock:
                slot = conn.pending.pop(rid, None)
            if slot is not None:    # its request's thread checks it: a bad answer fails that request only
                slot.response = msg
                slot.event.set()
        elif isinstance(msg, dict) and "event" in msg:
            try:
                self._events.put(dict(_EVENT.validate_python(msg, strict=True)))
            except ValidationError as e:
                log.error("host %s: dropped an agent event that does not match the protocol (%s): %.300s",
                          self.name, _problem(e), line.decode("utf-8", "replace"))
        else:   # output that is not ours (a traceback), or an answer to no request of ours
            conn.noise.append(line.decode("utf-8", "replace")[:500])

    def _deliver_events(self) -> None:
        while (event := self._events.get()) is not None:
            if self.on_event is not None:
                try:
                    self.on_event(self.name, event)
                except Exception:
                    log.exception("on_event callback failed for host %s", self.name)


def _problem(e: ValidationError) -> str:
    """The first thing wrong, where it is: "gpus.0.memory_total_mb: field required (and 2 more)"."""
    first = e.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "the whole value"
    more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
    return f"{where}: {first['msg'][:1].lower()}{first['msg'][1:]}{more}"

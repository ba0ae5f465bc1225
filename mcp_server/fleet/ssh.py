"""The `ssh` transport: one paramiko connection per host (through ProxyJump hops when configured).

Every operation has a deadline enforced by closing the socket or channel from a timer: paramiko itself waits
forever for some replies (exec requests, global requests) and keepalives do not notice a host that vanished.
Host keys are verified against the host's known_hosts file unless the host entry opts into trust-on-first-use.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Callable

import paramiko

from mcp_server.fleet.errors import (
    AuthFailed, FleetError, HostKeyChanged, HostKeyUnknown, HostUnavailable, RequestTimeout,
)
from mcp_server.fleet.hosts_config import HostConfig, SshEndpoint
from mcp_server.fleet.transport import (
    DEFAULT_MAX_OUTPUT, CommandResult, OutputBuffer, ProcessStream, Stdin, Transport, feed_stdin,
)


log = logging.getLogger(__name__)

STREAM_SEND_TIMEOUT_S = 10.0
MAX_CHANNELS = 8            # sshd's MaxSessions is 10 by default: more callers wait for a free channel


class SshTransport(Transport):
    def __init__(self, host: HostConfig, route: list[SshEndpoint], connect_timeout: float = 10.0):
        if not route:
            raise ValueError("an SSH route needs at least the host itself")
        self.host = host
        self.name = host.name
        self.route = route
        self.connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._clients: list[paramiko.SSHClient] = []   # jump hops first, the host last
        self._slots = threading.BoundedSemaphore(MAX_CHANNELS)

    # ---- connection ----------------------------------------------------------------------------------

    def connect(self, timeout: float | None = None) -> None:
        with self._lock:
            self._connected(timeout or self.connect_timeout)

    @property
    def is_connected(self) -> bool:
        t = self._clients[-1].get_transport() if self._clients else None
        return bool(t and t.is_active())

    def close(self) -> None:
        with self._lock:
            self._drop()

    def probe(self, timeout: float) -> bool:
        try:
            self._release(self._channel(timeout))
            return True
        except FleetError:
            return False

    def _connected(self, timeout: float) -> paramiko.Transport:
        """The live paramiko transport, connecting first if needed. Call with self._lock held."""
        if self._clients:
            t = self._clients[-1].get_transport()
            if t is not None and t.is_active():
                return t
            self._drop()
        self._clients = self._open(time.monotonic() + timeout, timeout)
        t = self._clients[-1].get_transport()
        assert t is not None
        t.set_keepalive(30)   # keeps NAT/firewall state alive; deadlines, not this, detect dead hosts
        return t

    def _open(self, deadline: float, timeout: float) -> list[paramiko.SSHClient]:
        clients: list[paramiko.SSHClient] = []
        try:
            for i, hop in enumerate(self.route):
                via = f" via {', '.join(h.label for h in self.route[:i])}" if i else ""
                clients.append(self._open_hop(hop, clients[-1] if clients else None, deadline, timeout, via))
            return clients
        except BaseException:
            for c in reversed(clients):
                c.close()
            raise

    def _open_hop(self, hop: SshEndpoint, jump: paramiko.SSHClient | None, deadline: float, timeout: float,
                  via: str) -> paramiko.SSHClient:
        where = f"{hop.user}@{hop.hostname}:{hop.port}{via}"
        keys = [k for k in hop.identity_files if os.path.exists(k)]
        if hop.identity_files and not keys:
            raise AuthFailed(self.name, f"{self._who(hop)}identity file(s) {', '.join(hop.identity_files)} do not "
                                        f"exist; fix: identity_file: <path to your private key>")
        left = max(0.05, deadline - time.monotonic())
        sock = self._socket(hop, jump, left, where, timeout)
        client = paramiko.SSHClient()
        known = Path(hop.known_hosts)
        if known.exists():
            client.load_host_keys(str(known))
        client.set_missing_host_key_policy(_TrustOnFirstUse(known) if hop.host_key_policy == "trust-on-first-use"
                                           else _Refuse())
        expired = threading.Event()
        # Closing the socket is the only way to interrupt paramiko's handshake and auth waits past the deadline.
        watchdog = threading.Timer(max(0.05, deadline - time.monotonic()), lambda: (expired.set(), sock.close()))
        watchdog.daemon = True
        watchdog.start()
        try:
            left = max(0.05, deadline - time.monotonic())
            client.connect(hop.hostname, hop.port, username=hop.user, key_filename=keys or None,
                           look_for_keys=not keys, allow_agent=True, sock=sock, timeout=left,
                           banner_timeout=left, auth_timeout=left, channel_timeout=left)
            return client
        except _UnknownKey as e:
            client.close()
            raise HostKeyUnknown(self.name, self._who(hop) + _unknown_key_message(hop, e.key_name, e.key, self.route)) \
                from None
        except paramiko.BadHostKeyException as e:
            client.close()
            raise HostKeyChanged(self.name, self._who(hop) + _changed_key_message(hop, e.key, e.expected_key)) from None
        except paramiko.PasswordRequiredException:
            client.close()
            raise AuthFailed(self.name, f"{self._who(hop)}private key {', '.join(keys)} is encrypted; fix: load it "
                                        f"into ssh-agent (ssh-add {keys[0] if keys else '<key>'})") from None
        except paramiko.AuthenticationException as e:
            client.close()
            offered = ", ".join(keys) if keys else "ssh-agent and default keys (~/.ssh/id_*)"
            raise AuthFailed(self.name, f"{self._who(hop)}authentication refused for {where} ({e}); offered: "
                                        f"{offered}; fix: add the public key to ~{hop.user}/.ssh/authorized_keys "
                                        f"on the host, or set identity_file / user") from None
        except (paramiko.SSHException, EOFError, OSError) as e:
            client.close()
            if expired.is_set():
                raise HostUnavailable(self.name, f"{self._who(hop)}SSH handshake with {where} got no answer within "
                                                 f"{timeout:g}s (host overloaded, vanished, or not an SSH server)"
                                      ) from None
            raise HostUnavailable(self.name, f"{self._who(hop)}SSH handshake with {where} failed: "
                                             f"{e or type(e).__name__}") from None
        finally:
            watchdog.cancel()

    def _socket(self, hop: SshEndpoint, jump: paramiko.SSHClient | None, left: float, where: str,
                timeout: float):
        target = (hop.hostname, hop.port)
        if jump is not None:
            jt = jump.get_transport()
            assert jt is not None
            try:
                return jt.open_channel("direct-tcpip", target, ("127.0.0.1", 0), timeout=left)
            except paramiko.ChannelException as e:
                raise HostUnavailable(self.name, f"{self._who(hop)}the jump host could not connect to {where}: "
                                                 f"{e.text or e}; fix: check address/port as seen from the jump "
                                                 f"host") from None
            except paramiko.SSHException as e:
                raise HostUnavailable(self.name, f"{self._who(hop)}jump to {where} got no answer within "
                                                 f"{timeout:g}s ({e})") from None
        if hop.proxy_command:   # the ssh config's ProxyCommand (SkyPilot's, say): its stdio is the connection
            try:
                return paramiko.ProxyCommand(hop.proxy_command)
            except paramiko.SSHException as e:
                raise HostUnavailable(self.name, f"{self._who(hop)}ProxyCommand {hop.proxy_command!r} failed: {e}; "
                                                 f"fix: the command in the ssh config") from None
        try:
            return socket.create_connection(target, timeout=left)
        except socket.gaierror as e:
            raise HostUnavailable(self.name, f"{self._who(hop)}cannot resolve {hop.hostname!r} ({e.strerror}); "
                                             f"fix: address: <a resolvable name or IP>") from None
        except ConnectionRefusedError:
            raise HostUnavailable(self.name, f"{self._who(hop)}connection refused at {hop.hostname}:{hop.port} "
                                             f"(nothing listens there: sshd down or wrong port); fix: start sshd "
                                             f"on the host or set port") from None
        except (socket.timeout, TimeoutError):
            raise HostUnavailable(self.name, f"{self._who(hop)}no answer from {hop.hostname}:{hop.port} within "
                                             f"{timeout:g}s (host down, link cut, or a firewall dropping "
                                             f"packets)") from None
        except OSError as e:
            raise HostUnavailable(self.name, f"{self._who(hop)}cannot reach {hop.hostname}:{hop.port}: "
                                             f"{e.strerror or e}") from None

    def _who(self, hop: SshEndpoint) -> str:
        """Message prefix naming a jump hop; errors of the host itself already name it."""
        return "" if hop is self.route[-1] else f"{hop.label}: "

    def _drop(self) -> None:
        for c in reversed(self._clients):
            c.close()
        self._clients = []

    def _channel(self, timeout: float) -> paramiko.Channel:
        """A new session channel within `timeout` (give it back with _release); a host that does not answer
        gets its connection dropped."""
        deadline = time.monotonic() + timeout
        if not self._slots.acquire(timeout=timeout):
            raise RequestTimeout(self.name, f"all {MAX_CHANNELS} SSH channels stayed busy for {timeout:g}s")
        try:
            with self._lock:
                t = self._connected(max(0.05, deadline - time.monotonic()))
            return self._open_session(t, max(0.05, deadline - time.monotonic()), timeout)
        except BaseException:
            self._slots.release()
            raise

    def _release(self, chan: paramiko.Channel) -> None:
        chan.close()
        self._slots.release()

    def _open_session(self, t: paramiko.Transport, left: float, timeout: float) -> paramiko.Channel:
        """`left` is what remains of the caller's `timeout`; the error names the deadline the caller gave."""
        try:
            return t.open_session(timeout=left)
        except paramiko.ChannelException as e:
            raise HostUnavailable(self.name, f"sshd refused a new channel ({e.text or e}); at most MaxSessions "
                                             f"(default 10) channels may be open at once") from None
        except (paramiko.SSHException, EOFError, OSError) as e:
            with self._lock:
                if self._clients and self._clients[-1].get_transport() is t:
                    self._drop()
            raise HostUnavailable(self.name, f"connection lost: no answer within {timeout:g}s opening a channel "
                                             f"({e or type(e).__name__}); host vanished or link cut") from None

    # ---- commands ------------------------------------------------------------------------------------

    def run(self, command: str, *, stdin: Stdin = None, timeout: float = 60.0,
            max_output: int = DEFAULT_MAX_OUTPUT) -> CommandResult:
        start = time.monotonic()
        chan = self._channel(timeout)
        expired = threading.Event()
        watchdog = threading.Timer(max(0.01, start + timeout - time.monotonic()),
                                   lambda: (expired.set(), chan.close()))
        watchdog.daemon = True
        watchdog.start()
        out = OutputBuffer(max_output)
        try:
            # Combined streams, drained to EOF before asking for the exit status: anything else can deadlock.
            chan.set_combine_stderr(True)
            chan.exec_command(command)
            feed_stdin(stdin, chan.sendall, chan.shutdown_write)
            while chunk := chan.recv(65536):
                out.add(chunk)
            chan.status_event.wait(max(0.0, start + timeout - time.monotonic()))
            if expired.is_set() or not chan.exit_status_ready():
                raise RequestTimeout(self.name, f"command did not finish within {timeout:g}s: {command[:200]}",
                                     out.value())
            return CommandResult(chan.recv_exit_status(), out.value(), out.total, time.monotonic() - start)
        except (paramiko.SSHException, EOFError, OSError) as e:
            if expired.is_set():
                raise RequestTimeout(self.name, f"command did not finish within {timeout:g}s: {command[:200]}",
                                     out.value()) from None
            raise HostUnavailable(self.name, f"connection lost during a command ({e or type(e).__name__})") from None
        finally:
            watchdog.cancel()
            self._release(chan)

    def open_process(self, command: str, timeout: float = 15.0) -> ProcessStream:
        chan = self._channel(timeout)
        watchdog = threading.Timer(timeout, chan.close)
        watchdog.daemon = True
        watchdog.start()
        try:
            chan.set_combine_stderr(True)
            chan.exec_command(command)
        except (paramiko.SSHException, EOFError, OSError) as e:
            self._release(chan)
            raise HostUnavailable(self.name, f"could not start {command[:120]!r} within {timeout:g}s "
                                             f"({e or type(e).__name__})") from None
        finally:
            watchdog.cancel()
        return _SshStream(chan, self._release)


class _SshStream(ProcessStream):
    def __init__(self, chan: paramiko.Channel, release: Callable[[paramiko.Channel], None]):
        self.chan = chan
        self._release = release
        self._released = threading.Lock()
        # Bounds sendall when the remote window stays full (a host that vanished): the write fails, not hangs.
        chan.settimeout(STREAM_SEND_TIMEOUT_S)

    def write(self, data: bytes) -> None:
        self.chan.sendall(data)

    def read(self, n: int = 65536) -> bytes:
        while True:
            try:
                return self.chan.recv(n)
            except socket.timeout:
                if self.chan.closed:
                    return b""

    def close(self) -> None:
        if not self._released.acquire(blocking=False):
            return   # closed already: the channel slot was given back once
        try:
            self.chan.shutdown_write()
        except (paramiko.SSHException, OSError, EOFError):
            pass
        self._release(self.chan)


# ---- host keys -------------------------------------------------------------------------------------------

class _UnknownKey(paramiko.SSHException):
    def __init__(self, key_name: str, key: paramiko.PKey):
        super().__init__(key_name)
        self.key_name, self.key = key_name, key


class _Refuse(paramiko.MissingHostKeyPolicy):
    def missing_host_key(self, client, hostname, key):
        raise _UnknownKey(hostname, key)


class _TrustOnFirstUse(paramiko.MissingHostKeyPolicy):
    """Accept an unknown key once and record it, as `ssh -o StrictHostKeyChecking=accept-new` does."""

    def __init__(self, known_hosts: Path):
        self.known_hosts = known_hosts

    def missing_host_key(self, client, hostname, key):
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.known_hosts, "a") as f:
            f.write(paramiko.hostkeys.HostKeyEntry([hostname], key).to_line())
        client.get_host_keys().add(hostname, key.get_name(), key)
        log.warning("trust-on-first-use: recorded %s key %s for %s in %s", key.get_name(), key.fingerprint,
                    hostname, self.known_hosts)


def _key_name(hop: SshEndpoint) -> str:
    return hop.hostname if hop.port == 22 else f"[{hop.hostname}]:{hop.port}"


def _unknown_key_message(hop: SshEndpoint, key_name: str, key: paramiko.PKey, route: list[SshEndpoint]) -> str:
    kh = hop.known_hosts
    jumps = route[:route.index(hop)]
    if jumps:
        j = ",".join(f"{h.user}@{h.hostname}:{h.port}" for h in jumps)
        how = (f"ssh -o UserKnownHostsFile={kh} -J {j} -p {hop.port} {hop.user}@{hop.hostname} true "
               f"(check the fingerprint, answer yes)")
    else:
        how = f"ssh-keyscan -p {hop.port} -H {hop.hostname} >> {kh}"
    return (f"unknown host key for {key_name}: {key.get_name()} {key.fingerprint} is not in {kh}; "
            f"fix: confirm that fingerprint with the host's admin, then run: {how}; or set host_key_policy: "
            f"trust-on-first-use for this host")


def _changed_key_message(hop: SshEndpoint, got: paramiko.PKey, expected: paramiko.PKey) -> str:
    name = _key_name(hop)
    line = _known_hosts_line(Path(hop.known_hosts), name)
    at = f"{hop.known_hosts} line {line}" if line else hop.known_hosts
    return (f"HOST KEY CHANGED for {name}: {at} records {expected.get_name()} {expected.fingerprint}"
            f", the host offered {got.get_name()} {got.fingerprint}; refused (a reinstalled host, or someone "
            f"intercepting the connection); fix: only if the change is expected, remove the old key with "
            f"`ssh-keygen -f {hop.known_hosts} -R '{name}'` and connect again")


def _known_hosts_line(path: Path, name: str) -> int | None:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for n, line in enumerate(lines, 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        for h in fields[0].split(","):
            if h == name or (h.startswith("|1|") and paramiko.HostKeys.hash_host(name, h) == h):
                return n
    return None

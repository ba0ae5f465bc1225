"""Hosts as network namespaces on a bridge, each with its own real sshd (see the package docstring for the API)."""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import string
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

FAMILY = "arct"                      # every namespace/link this harness makes starts with FAMILY + a 4-char tag
STATE_DIR = Path("/run/arc-test-harness")
SSHD = "/usr/sbin/sshd"
SSHD_READY_S = 10.0
TERM_GRACE_S = 2.0


class HarnessError(RuntimeError):
    """The harness could not build its hosts (not root, no sshd, no netns support...)."""


def sh(*argv: str, check: bool = True, input: bytes | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, input=input, capture_output=True)
    if check and proc.returncode != 0:
        raise HarnessError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.decode().strip()}")
    return proc


@dataclass
class NetnsHost:
    name: str                  # the host name in hosts.yaml: h1, h2, ...
    ns: str                    # the network namespace
    address: str               # 10.77.X.(10+i)
    dir: Path                  # its files: sshd config, host key, pid file, log
    workdir: Path              # its agent workdir (namespaces share the filesystem, so one each)
    veth: str                  # the root-namespace end of its link
    simulate_gpus: list[dict[str, Any]] | None = None
    cpu_slots: int | None = None

    @property
    def sshd_config(self) -> Path:
        return self.dir / "sshd_config"

    @property
    def host_key(self) -> Path:
        return self.dir / "ssh_host_ed25519_key"

    @property
    def pidfile(self) -> Path:
        return self.dir / "sshd.pid"

    @property
    def log(self) -> Path:
        return self.dir / "sshd.log"

    def known_hosts_line(self) -> str:
        kind, key = (self.host_key.with_suffix(".pub")).read_text().split()[:2]
        return f"{self.address} {kind} {key}\n"


@dataclass
class NetnsFleet:
    root: Path
    tag: str
    subnet: int                # X in 10.77.X.0/24
    hosts: list[NetnsHost] = field(default_factory=list)
    python: str = sys.executable

    # ---- names and files ---------------------------------------------------------------------------------

    @property
    def bridge(self) -> str:
        return f"{FAMILY}{self.tag}br"

    @property
    def bridge_address(self) -> str:
        return f"10.77.{self.subnet}.1"

    @property
    def client_key(self) -> Path:
        return self.root / "client_key"

    @property
    def authorized_keys(self) -> Path:
        return self.root / "authorized_keys"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    @property
    def hosts_yaml(self) -> Path:
        return self.root / "hosts.yaml"

    def host(self, name: str) -> NetnsHost:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(f"no harness host {name!r} (have {[h.name for h in self.hosts]})")

    # ---- building --------------------------------------------------------------------------------------

    @classmethod
    def create(cls, root: Path, n: int, *, simulate_gpus: list[dict[str, Any]] | None = None,
               cpu_slots: int | None = None) -> "NetnsFleet":
        preflight()
        cleanup_stale()
        root.mkdir(parents=True, exist_ok=True)
        fleet = cls(root=root, tag=_claim_tag(), subnet=0)
        try:
            fleet.subnet = _free_subnet()
            _write_state(fleet.tag, fleet.subnet)
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "arc-test-client", "-f", str(fleet.client_key))
            fleet.authorized_keys.write_text(fleet.client_key.with_suffix(".pub").read_text())
            sh("ip", "link", "add", fleet.bridge, "type", "bridge")
            sh("ip", "addr", "add", f"{fleet.bridge_address}/24", "dev", fleet.bridge)
            sh("ip", "link", "set", fleet.bridge, "up")
            for i in range(1, n + 1):
                fleet.hosts.append(fleet._add_host(i, simulate_gpus, cpu_slots))
            fleet.known_hosts.write_text("".join(h.known_hosts_line() for h in fleet.hosts))
            for h in fleet.hosts:
                fleet.start_sshd(h.name, wait=False)
            for h in fleet.hosts:
                fleet.wait_sshd(h.name)
            fleet.write_hosts_yaml()
            return fleet
        except BaseException:
            fleet.teardown()
            raise

    def _add_host(self, i: int, simulate_gpus: list[dict[str, Any]] | None, cpu_slots: int | None) -> NetnsHost:
        h = NetnsHost(name=f"h{i}", ns=f"{FAMILY}{self.tag}h{i}", address=f"10.77.{self.subnet}.{10 + i}",
                      dir=self.root / f"h{i}", workdir=self.root / f"h{i}" / "work", veth=f"{FAMILY}{self.tag}v{i}",
                      simulate_gpus=simulate_gpus, cpu_slots=cpu_slots)
        h.workdir.mkdir(parents=True, exist_ok=True)
        sh("ip", "netns", "add", h.ns)
        sh("ip", "link", "add", h.veth, "type", "veth", "peer", "name", "eth0", "netns", h.ns)
        sh("ip", "link", "set", h.veth, "master", self.bridge, "up")
        sh("ip", "-n", h.ns, "addr", "add", f"{h.address}/24", "dev", "eth0")
        sh("ip", "-n", h.ns, "link", "set", "eth0", "up")
        sh("ip", "-n", h.ns, "link", "set", "lo", "up")
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"arc-test-{h.name}", "-f", str(h.host_key))
        h.sshd_config.write_text(_sshd_config(h, self.authorized_keys))
        return h

    # ---- hosts.yaml ------------------------------------------------------------------------------------

    def host_entry(self, name: str, **overrides: Any) -> dict[str, Any]:
        """The hosts.yaml entry for one harness host; `overrides` replace or add fields (None removes one)."""
        h = self.host(name)
        entry: dict[str, Any] = {
            "name": h.name, "transport": "ssh", "address": h.address, "port": 22, "user": "root",
            "identity_file": str(self.client_key), "known_hosts": str(self.known_hosts),
            "workdir": str(h.workdir), "python": self.python,
        }
        if h.simulate_gpus is not None:
            entry["simulate_gpus"] = h.simulate_gpus
        if h.cpu_slots is not None:
            entry["cpu_slots"] = h.cpu_slots
        entry.update(overrides)
        return {k: v for k, v in entry.items() if v is not None}

    def write_hosts_yaml(self, path: Path | None = None, entries: list[dict[str, Any]] | None = None,
                         **top_level: Any) -> Path:
        """Write a hosts file (default: every harness host, at `self.hosts_yaml`); returns its path."""
        return write_hosts_yaml(path or self.hosts_yaml,
                                entries if entries is not None else [self.host_entry(h.name) for h in self.hosts],
                                **top_level)

    # ---- breaking things -------------------------------------------------------------------------------

    def exec(self, name: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a command inside the host's namespace."""
        return sh("ip", "netns", "exec", self.host(name).ns, *argv, check=check)

    def link_down(self, name: str) -> None:
        """The host vanishes silently: no RST, no ICMP, packets just stop."""
        sh("ip", "-n", self.host(name).ns, "link", "set", "eth0", "down")

    def link_up(self, name: str) -> None:
        sh("ip", "-n", self.host(name).ns, "link", "set", "eth0", "up")

    def block_controller(self, name: str) -> None:
        """The host stops answering the root namespace (the controller) but still reaches the other hosts."""
        sh("ip", "-n", self.host(name).ns, "route", "add", "blackhole", f"{self.bridge_address}/32")

    def unblock_controller(self, name: str) -> None:
        sh("ip", "-n", self.host(name).ns, "route", "del", "blackhole", f"{self.bridge_address}/32")

    def start_sshd(self, name: str, wait: bool = True) -> None:
        h = self.host(name)
        h.pidfile.unlink(missing_ok=True)
        sh("ip", "netns", "exec", h.ns, SSHD, "-f", str(h.sshd_config), "-E", str(h.log))
        if wait:
            self.wait_sshd(name)

    def wait_sshd(self, name: str) -> None:
        h = self.host(name)
        deadline = time.monotonic() + SSHD_READY_S
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((h.address, 22), timeout=1.0) as s:
                    if s.recv(4).startswith(b"SSH-"):
                        return
            except OSError:
                time.sleep(0.02)
        raise HarnessError(f"sshd of {name} ({h.address}) did not answer within {SSHD_READY_S}s; "
                           f"log: {h.log.read_text() if h.log.exists() else '(none)'}")

    def sshd_pid(self, name: str) -> int | None:
        try:
            return int(self.host(name).pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop_sshd(self, name: str) -> None:
        """Stop the listening sshd (SIGTERM); connections already open keep running, as with a real restart."""
        pid = self.sshd_pid(name)
        if pid is not None:
            _signal(pid, signal.SIGTERM)
            _wait_gone(pid)

    def restart_sshd(self, name: str) -> None:
        self.stop_sshd(name)
        self.start_sshd(name)

    def kill_sshd(self, name: str) -> None:
        """SIGKILL every sshd process of the host, listener and open connections: sessions drop at once. Returns
        once they are gone: a killed listener holds its port until it has exited, and an sshd started before then
        cannot bind it (the chaos run's restart failed that way on a loaded machine)."""
        killed = [pid for pid in self.pids(name) if _comm(pid) == "sshd"]
        for pid in killed:
            _signal(pid, signal.SIGKILL)
        for pid in killed:
            _wait_gone(pid)

    def drop_connections(self, name: str) -> None:
        """Kill the host's open SSH connections but keep its sshd listening (a network blip, seen from the host)."""
        listener = self.sshd_pid(name)
        for pid in self.pids(name):
            if pid != listener and _comm(pid) == "sshd":
                _signal(pid, signal.SIGKILL)

    def new_host_key(self, name: str) -> None:
        """Give the host a new key (a reinstall) and restart its sshd; known_hosts keeps the old one."""
        h = self.host(name)
        h.host_key.unlink()
        h.host_key.with_suffix(".pub").unlink()
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"arc-test-{h.name}", "-f", str(h.host_key))
        self.restart_sshd(name)

    def pids(self, name: str) -> list[int]:
        """Every process living in the host's namespace (its sshd, agents and jobs)."""
        out = sh("ip", "netns", "pids", self.host(name).ns, check=False).stdout.decode()
        return [int(p) for p in out.split()]

    # ---- teardown --------------------------------------------------------------------------------------

    def teardown(self) -> None:
        _remove_tag(self.tag)


def write_hosts_yaml(path: Path, entries: list[dict[str, Any]], **top_level: Any) -> Path:
    """Write a hosts file with these host entries and top-level keys (defaults=..., ssh_config=...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({**top_level, "hosts": entries}, sort_keys=False))
    return path


def local_host_entry(workdir: Path, name: str = "local", **fields: Any) -> dict[str, Any]:
    """A hosts.yaml entry for this machine with its own workdir (e.g. simulate_gpus=[...], cpu_slots=2)."""
    return {"name": name, "transport": "local", "workdir": str(workdir), "python": sys.executable, **fields}


# ---- preflight and cleanup -------------------------------------------------------------------------------

def preflight() -> None:
    problems = []
    if os.geteuid() != 0:
        problems.append("must run as root (network namespaces)")
    if not os.access(SSHD, os.X_OK):
        problems.append(f"{SSHD} missing: apt-get install -y openssh-server")
    for tool in ("ip", "ssh-keygen"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            problems.append(f"{tool} missing: apt-get install -y iproute2 openssh-client")
    if problems:
        raise HarnessError("the netns/sshd test harness cannot run: " + "; ".join(problems))
    # sshd's privilege separation directory.
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    STATE_DIR.mkdir(mode=0o700, exist_ok=True)


def cleanup_stale() -> None:
    """Remove namespaces and links of this harness whose owning process is gone (a crashed or killed run)."""
    tags = {name[len(FAMILY):len(FAMILY) + 4] for name in _our_namespaces() + _our_links()}
    tags |= {p.stem for p in STATE_DIR.glob("*.json")}
    for tag in tags:
        if not _tag_alive(tag):
            _remove_tag(tag)


def _our_namespaces() -> list[str]:
    out = sh("ip", "netns", "list", check=False).stdout.decode()
    return [line.split()[0] for line in out.splitlines() if line.startswith(FAMILY)]


def _our_links() -> list[str]:
    out = sh("ip", "-o", "link", "show", check=False).stdout.decode()
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]
    return [n for n in names if n.startswith(FAMILY)]


def _remove_tag(tag: str) -> None:
    prefix = FAMILY + tag
    namespaces = [ns for ns in _our_namespaces() if ns.startswith(prefix)]
    pids = [int(p) for ns in namespaces for p in sh("ip", "netns", "pids", ns, check=False).stdout.decode().split()]
    # SIGTERM first: a login shell killed outright can leave a lock behind (pyenv's rehash lock in a ~/.bashrc
    # stalled every later SSH login on this machine for a minute). SIGKILL what is left after a grace.
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + TERM_GRACE_S
    while any(_running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    for pid in pids:
        _signal(pid, signal.SIGKILL)
    for ns in namespaces:
        sh("ip", "netns", "del", ns, check=False)
    for link in _our_links():
        if link.startswith(prefix):
            sh("ip", "link", "del", link, check=False)
    (STATE_DIR / f"{tag}.json").unlink(missing_ok=True)


def _claim_tag() -> str:
    taken = {p.stem for p in STATE_DIR.glob("*.json")}
    while True:
        tag = "".join(random.choices(string.ascii_lowercase + string.digits, k=4))
        if tag not in taken:
            _write_state(tag, 0)   # claimed before anything is created, so a crash leaves a trace to clean
            return tag


def _write_state(tag: str, subnet: int) -> None:
    (STATE_DIR / f"{tag}.json").write_text(json.dumps({"pid": os.getpid(), "start": _start_time(os.getpid()),
                                                       "subnet": subnet}))


def _tag_alive(tag: str) -> bool:
    try:
        state = json.loads((STATE_DIR / f"{tag}.json").read_text())
    except (OSError, ValueError):
        return False
    started = _start_time(state["pid"])
    return started is not None and started == state["start"]


def _free_subnet() -> int:
    used = set()
    for p in STATE_DIR.glob("*.json"):
        try:
            used.add(json.loads(p.read_text())["subnet"])
        except (OSError, ValueError, KeyError):
            pass
    addrs = sh("ip", "-o", "-4", "addr", "show", check=False).stdout.decode()
    used |= {int(part.split(".")[2]) for part in addrs.split() if part.startswith("10.77.")}
    free = [x for x in range(100, 250) if x not in used]
    if not free:
        raise HarnessError("no free 10.77.X.0/24 subnet for the test harness (100-249 all in use)")
    return random.choice(free)


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _running(pid: int) -> bool:
    """Alive and not a zombie (whose parent may never reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.01)


def _sshd_config(h: NetnsHost, authorized_keys: Path) -> str:
    return "\n".join([
        "Port 22",
        "ListenAddress 0.0.0.0",
        f"HostKey {h.host_key}",
        f"PidFile {h.pidfile}",
        f"AuthorizedKeysFile {authorized_keys}",
        "StrictModes no",              # keys live under /tmp
        "UsePAM no",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "Subsystem sftp internal-sftp",
        "MaxStartups 100:30:200",
        "UseDNS no",
        "LogLevel VERBOSE",            # logs the client address of each accepted key: tests check jump routes
        "",
    ])

"""A real Slurm on this machine: slurmctld on the harness bridge, one slurmd per network namespace (a node), fake GPUs
as GRES character devices, proctrack/cgroup as on production clusters (../shared/FACTS.md, Slurm section).

Client commands find the cluster through SLURM_CONF, which `SlurmHarness.env()` gives (set it in os.environ for a
local login). A fleet host named as `login` is no node: its sshd hands SLURM_CONF to every session (`SetEnv`), as a
real login node's /etc/slurm does, and munge's socket is on the shared filesystem. Teardown cancels every job, then
stops the daemons (slurmstepd and job processes outlive slurmd).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness.netns import HarnessError, NetnsFleet, NetnsHost, _running, _wait_gone, sh

MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_PID = Path("/run/munge/munged.pid")
UP_S = 30.0


@dataclass
class SlurmHarness:
    fleet: NetnsFleet
    root: Path
    gpus_per_node: int
    gpu_type: str = "h100"
    tuned: bool = True      # Epilog set and no batch scheduling delay (FACTS.md: 1.0 s → 0.05 s between jobs)
    login: str | None = None    # a fleet host that runs no slurmd: the login node arc reaches over SSH
    started_munge: bool = False
    pids: dict[str, Path] = field(default_factory=dict)     # daemon -> its pid file

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def node_hosts(self) -> list[NetnsHost]:
        return [h for h in self.fleet.hosts if h.name != self.login]

    @property
    def nodes(self) -> list[str]:
        return [f"n{i}" for i in range(1, len(self.node_hosts) + 1)]

    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *argv: str, check: bool = True) -> str:
        r = subprocess.run(argv, env=self.env(), capture_output=True, text=True, timeout=30)
        if check and r.returncode != 0:
            raise HarnessError(f"{' '.join(argv)}: exit {r.returncode}: {r.stderr.strip()}")
        return r.stdout

    @classmethod
    def create(cls, root: Path, fleet: NetnsFleet, gpus_per_node: int = 2, tuned: bool = True,
               login: str | None = None) -> "SlurmHarness":
        for tool in ("/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/munged"):
            if not os.access(tool, os.X_OK):
                raise HarnessError(f"{tool} missing: apt-get install -y slurmctld slurmd slurm-client munge")
        root.mkdir(parents=True, exist_ok=True)
        h = cls(fleet=fleet, root=root, gpus_per_node=gpus_per_node, tuned=tuned, login=login)
        try:
            h._munge()
            h._write_config()
            h._start("slurmctld", ["/usr/sbin/slurmctld", "-f", str(h.conf)], h.root / "slurmctld.pid")
            for node, host in zip(h.nodes, h.node_hosts):
                h._start(f"slurmd-{node}", ["nsenter", f"--net=/run/netns/{host.ns}", "/usr/sbin/slurmd",
                                            "-f", str(h.conf), "-N", node], h.root / f"slurmd-{node}.pid")
            h._wait_idle()
            if login is not None:
                host = fleet.host(login)
                # MaxSessions 2: sessions per connection are few on a login node (10 by default, lower at some
                # sites), so arc must not carry every allocation's channel over one connection
                host.sshd_config.write_text(host.sshd_config.read_text() +
                                            f"SetEnv SLURM_CONF={h.conf}\nMaxSessions 2\n")
                fleet.restart_sshd(login)
            return h
        except BaseException:
            h.teardown()
            raise

    def _munge(self) -> None:
        if MUNGE_PID.exists() and _running(int(MUNGE_PID.read_text().split()[0])):
            return
        Path("/run/munge").mkdir(mode=0o755, exist_ok=True)
        sh("chown", "munge:munge", "/run/munge")
        if not MUNGE_KEY.exists():
            sh("runuser", "-u", "munge", "--", "/usr/sbin/mungekey", "--create")
        sh("runuser", "-u", "munge", "--", "/usr/sbin/munged")
        self.started_munge = True

    def _write_config(self) -> None:
        spool = self.root / "spool"
        (spool / "ctld").mkdir(parents=True, exist_ok=True)
        memory = 1024      # below what each slurmd detects: above it makes the node INVALID
        gres = []
        lines = [
            f"ClusterName=arc{self.fleet.tag}",
            f"SlurmctldHost={socket.gethostname().split('.')[0]}({self.fleet.bridge_address})",
            f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
            "AuthType=auth/munge", "ProctrackType=proctrack/cgroup", "TaskPlugin=task/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
            "AccountingStorageType=accounting_storage/none", "JobAcctGatherType=jobacct_gather/none",
            "MailProg=/bin/true", "ReturnToService=2", "GresTypes=gpu",
            *(["Epilog=/bin/true", "SchedulerParameters=batch_sched_delay=0"] if self.tuned else []),
            "MinJobAge=300", "SlurmUser=root", "SlurmdUser=root",
            f"StateSaveLocation={spool / 'ctld'}", f"SlurmdSpoolDir={spool}/slurmd-%n",
            f"SlurmctldPidFile={self.root / 'slurmctld.pid'}", f"SlurmdPidFile={self.root}/slurmd-%n.pid",
            f"SlurmctldLogFile={self.root / 'slurmctld.log'}", f"SlurmdLogFile={self.root}/slurmd-%n.log",
        ]
        for node, host in zip(self.nodes, self.node_hosts):
            devices = []
            for g in range(self.gpus_per_node):
                dev = self.root / f"fakegpu-{node}-{g}"
                if not dev.exists():
                    os.mknod(dev, 0o666 | 0o020000, os.makedev(1, 3))   # a character device, as GRES requires
                devices.append(str(dev))
            lines.append(f"NodeName={node} NodeAddr={host.address} CPUs=2 RealMemory={memory} "
                         f"Gres=gpu:{self.gpu_type}:{self.gpus_per_node} State=UNKNOWN")
            gres.append(f"NodeName={node} Name=gpu Type={self.gpu_type} File={','.join(devices)}")
        lines.append(f"PartitionName=gpu Nodes={','.join(self.nodes)} Default=YES MaxTime=INFINITE State=UP")
        self.conf.write_text("\n".join(lines) + "\n")
        (self.root / "gres.conf").write_text("AutoDetect=off\n" + "\n".join(gres) + "\n")
        (self.root / "cgroup.conf").write_text("CgroupPlugin=cgroup/v1\nCgroupMountpoint=/sys/fs/cgroup\n")

    def _start(self, name: str, argv: list[str], pidfile: Path) -> None:
        pidfile.unlink(missing_ok=True)
        r = subprocess.run(argv, env=self.env(), capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise HarnessError(f"{name} did not start (exit {r.returncode}): {r.stderr.strip()}")
        self.pids[name] = pidfile

    def _wait_idle(self) -> None:
        deadline = time.monotonic() + UP_S
        states = ""
        while time.monotonic() < deadline:
            states = self.run("sinfo", "-h", "-N", "-o", "%N %T", check=False)
            if states and all(line.split()[1] == "idle" for line in states.splitlines()):
                return
            time.sleep(0.1)
        raise HarnessError(f"Slurm nodes not idle within {UP_S:g}s: {states!r}; see {self.root}/*.log")

    def jobs(self) -> list[dict[str, str]]:
        """Every job Slurm knows now: id, name, state, reason, comment."""
        out = self.run("squeue", "-h", "-o", "%i|%j|%T|%r|%k")
        return [dict(zip(("id", "name", "state", "reason", "comment"), line.split("|", 4)))
                for line in out.splitlines() if line.strip()]

    def steps(self, job_id: str) -> list[str]:
        """The steps running in job `job_id` other than its batch step ("ID.0", ...): `srun --overlap` steps."""
        out = self.run("squeue", "-h", "-s", "-j", job_id, "-o", "%i", check=False)
        return [s for s in out.split() if "." in s and not s.endswith((".batch", ".extern"))]

    def stop_slurmctld(self) -> None:
        self.stop_daemon("slurmctld")

    def start_slurmctld(self) -> None:
        """Again after stop_slurmctld(): it recovers its jobs from StateSaveLocation, as after a real restart."""
        self._start("slurmctld", ["/usr/sbin/slurmctld", "-f", str(self.conf)], self.root / "slurmctld.pid")
        deadline = time.monotonic() + UP_S
        while subprocess.run(["squeue", "-h"], env=self.env(), capture_output=True, timeout=30).returncode != 0:
            if time.monotonic() > deadline:
                raise HarnessError(f"slurmctld did not answer within {UP_S:g}s; see {self.root}/slurmctld.log")
            time.sleep(0.1)

    def stop_daemon(self, name: str) -> None:
        pidfile = self.pids.get(name)
        if pidfile is None or not pidfile.exists():
            return
        pid = int(pidfile.read_text().split()[0])
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        _wait_gone(pid)

    def teardown(self) -> None:
        if "slurmctld" in self.pids:
            self.run("scancel", "--full", "-u", "root", check=False)
            self.run("scancel", "-u", "root", check=False)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.run("squeue", "-h", check=False).strip():
                time.sleep(0.1)
        for name in [n for n in self.pids if n != "slurmctld"] + ["slurmctld"]:
            self.stop_daemon(name)
        if self.started_munge and MUNGE_PID.exists():
            pid = int(MUNGE_PID.read_text().split()[0])
            os.kill(pid, signal.SIGTERM)
            _wait_gone(pid)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]

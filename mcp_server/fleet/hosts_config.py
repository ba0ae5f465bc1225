"""hosts.yaml: the fleet file, validated with pydantic.

```yaml
ssh_config: ~/.ssh/config        # optional; where ~/.ssh/config-style entries are read from
defaults:                        # optional; applied to every host, the host's own values win
  user: ubuntu
hosts:
  - name: local
    transport: local
  - name: gpu1                   # transport defaults to ssh
    address: 10.0.0.5            # address/port/user/identity_file/proxy_jump may come from the ssh config,
    gpus: all                    # looked up under `address` (or `name` when there is none)
```

Precedence for connection settings: the host's own field > `defaults:` > the ssh config entry > built-in default.
Relative paths (identity_file, known_hosts, ssh_config) are taken relative to the hosts file's folder.
A broken file is refused as a whole with one line per problem: `file:line: host 'x' field 'y': what is wrong; fix: ...`.
"""
from __future__ import annotations

import difflib
import fnmatch
import getpass
import logging
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

if TYPE_CHECKING:
    import paramiko


DEFAULT_SSH_CONFIG = "~/.ssh/config"
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
DEFAULT_WORKDIR = "~/.arc"
DEFAULT_REMOTE_PYTHON = "python3"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
MODULE_PATTERN = r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$"
log = logging.getLogger("arc.fleet")

TOP_LEVEL_KEYS = ("hosts", "clusters", "defaults", "ssh_config")
SSH_ONLY_FIELDS = ("address", "port", "user", "identity_file", "proxy_jump", "known_hosts", "host_key_policy")

# What each field must be, and a line that would fix it. Every validation message is built from these.
FIELD_RULES: dict[str, tuple[str, str]] = {
    "name": ("must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit", "name: gpu1"),
    "transport": ("must be 'local' or 'ssh'", "transport: ssh"),
    "address": ("must be a host name or IP address", "address: 10.0.0.5"),
    "port": ("must be an integer 1-65535", "port: 22"),
    "user": ("must be a user name", "user: ubuntu"),
    "identity_file": ("must be a private key path (or a list of them)", "identity_file: ~/.ssh/id_ed25519"),
    "proxy_jump": ("must be [user@]host[:port], comma-separated for a chain", "proxy_jump: bastion"),
    "known_hosts": ("must be a known_hosts file path", "known_hosts: ~/.ssh/known_hosts"),
    "host_key_policy": ("must be 'verify' or 'trust-on-first-use'", "host_key_policy: verify"),
    "workdir": ("must be a directory path on the host", "workdir: ~/.arc"),
    "python": ("must be the host's Python >= 3.10 command or path", "python: python3"),
    "gpus": ("must be 'all' or a list of distinct GPU indices >= 0", "gpus: all"),
    "labels": ("must be a list of strings", "labels: [h100, fast]"),
    "cost_per_gpu_hour": ("must be a number >= 0", "cost_per_gpu_hour: 2.5"),
    "cpu_slots": ("must be an integer >= 0", "cpu_slots: 4"),
    "preload": ("must be a list of Python module names to import ahead of each Python job ([] turns it off)",
                "preload: [torch, torch._dynamo, torch._inductor.compile_fx]"),
    "simulate_gpus": ("must be a list of {model, memory_gb} (test-only: declares simulated GPUs)",
                      "simulate_gpus: [{model: H100, memory_gb: 80}]"),
    "model": ("must be a GPU model name", "model: H100"),
    "memory_gb": ("must be a number > 0", "memory_gb: 80"),
    "hosts": ("must be a list of host entries", "hosts: [{name: local, transport: local}]"),
    "defaults": ("must be a mapping of host fields", "defaults: {user: ubuntu}"),
    "ssh_config": ("must be an ssh config file path", "ssh_config: ~/.ssh/config"),
    "clusters": ("must be a list of cluster entries", "clusters: [{name: uni, kind: slurm, login: {transport: local}, "
                                                      "gpu_type: h100, gpus_per_node: 4, gpu_model: H100}]"),
    "kind": ("must be 'slurm'", "kind: slurm"),
    "login": ("must be a mapping: {transport: local} or the SSH fields of a host",
              "login: {address: login.cluster.edu, user: me}"),
    "partition": ("must be a Slurm partition name", "partition: gpu"),
    "account": ("must be a Slurm account name", "account: my-lab"),
    "qos": ("must be a Slurm QOS name", "qos: normal"),
    "constraint": ("must be a Slurm node feature expression", "constraint: h100"),
    "sbatch_args": ("must be a list of extra sbatch flags", "sbatch_args: ['--mem=64G']"),
    "gpu_type": ("must be the GRES type of the GPUs (as in --gres=gpu:TYPE:N)", "gpu_type: h100"),
    "gpus_per_node": ("must be an integer >= 1", "gpus_per_node: 4"),
    "gpu_model": ("must be the GPU model name (its class comes from it)", "gpu_model: H100"),
    "max_nodes": ("must be an integer >= 1 (allocations arc may hold at once)", "max_nodes: 2"),
    "walltime": ("must be seconds, or Slurm's [D-]HH:MM:SS", "walltime: '04:00:00'"),
    "idle_release_s": ("must be a number >= 0 (seconds an allocation may sit idle before it is released)",
                       "idle_release_s: 300"),
    "shared_workdir": ("must be true or false", "shared_workdir: true"),
}


class HostsConfigError(ValueError):
    """The hosts file is refused; str() is one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class SimulatedGpu(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid", frozen=True)
    model: str = Field(min_length=1)
    memory_gb: float = Field(gt=0)


class HostFields(BaseModel):
    """Every field a host entry (or `defaults:`) may set; None means "not set here"."""
    model_config = ConfigDict(defer_build=True, extra="forbid")

    transport: Literal["local", "ssh"] | None = None
    address: str | None = Field(default=None, min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535, strict=True)
    user: str | None = Field(default=None, min_length=1)
    identity_file: list[str] | None = None
    proxy_jump: str | None = Field(default=None, min_length=1)
    known_hosts: str | None = Field(default=None, min_length=1)
    host_key_policy: Literal["verify", "trust-on-first-use"] | None = None
    workdir: str | None = Field(default=None, min_length=1)
    python: str | None = Field(default=None, min_length=1)
    gpus: Literal["all"] | list[int] | None = None
    labels: list[str] | None = None
    cost_per_gpu_hour: float | None = Field(default=None, ge=0)
    cpu_slots: int | None = Field(default=None, ge=0, strict=True)
    preload: list[Annotated[str, StringConstraints(pattern=MODULE_PATTERN)]] | None = None
    simulate_gpus: list[SimulatedGpu] | None = None

    @field_validator("identity_file", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("gpus")
    @classmethod
    def _distinct_indices(cls, v: Any) -> Any:
        if isinstance(v, list) and (len(set(v)) != len(v) or any(i < 0 for i in v)):
            raise ValueError("indices must be distinct and >= 0")
        return v


class HostEntry(HostFields):
    name: str = Field(pattern=NAME_PATTERN)


class ClusterEntry(BaseModel):
    """A `clusters:` entry as written (the login is checked as a host entry)."""
    model_config = ConfigDict(defer_build=True, extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    kind: Literal["slurm"]
    login: dict[str, Any]
    partition: str | None = Field(default=None, min_length=1)
    account: str | None = Field(default=None, min_length=1)
    qos: str | None = Field(default=None, min_length=1)
    constraint: str | None = Field(default=None, min_length=1)
    sbatch_args: list[str] = []
    gpu_type: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    gpus_per_node: int = Field(ge=1, strict=True)
    gpu_model: str = Field(min_length=1)
    max_nodes: int = Field(default=1, ge=1, strict=True)
    walltime: int | str = 4 * 3600
    idle_release_s: float = Field(default=300.0, ge=0)
    python: str = Field(default=DEFAULT_REMOTE_PYTHON, min_length=1)
    workdir: str = Field(default=DEFAULT_WORKDIR, min_length=1)
    shared_workdir: bool = False
    # Test-only, like a host's: the allocation's agent declares gpus_per_node simulated GPUs of gpu_model.
    simulate_gpus: bool = False

    @field_validator("walltime")
    @classmethod
    def _walltime(cls, v: Any) -> Any:
        seconds = walltime_seconds(v)
        if seconds is None or seconds <= 0:
            raise ValueError("not a walltime")
        return seconds


class ClusterConfig(BaseModel):
    """A Slurm cluster whose allocations become hosts (fleet/slurm.py)."""
    model_config = ConfigDict(defer_build=True, frozen=True)

    name: str
    login: HostConfig                   # where sbatch/squeue/srun run
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    sbatch_args: tuple[str, ...] = ()
    gpu_type: str
    gpus_per_node: int
    gpu_model: str
    max_nodes: int = 1
    walltime_s: int = 4 * 3600
    idle_release_s: float = 300.0
    python: str = DEFAULT_REMOTE_PYTHON
    workdir: str = DEFAULT_WORKDIR
    shared_workdir: bool = False
    simulate_gpus: bool = False


def walltime_seconds(v: Any) -> int | None:
    """Seconds from an int, or from Slurm's `[D-]HH:MM:SS` / `MM:SS` / `MM`; None when it is neither."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(v).strip())
    if not m:
        return None
    days, a, b, c = (int(x) if x else None for x in m.groups())
    if c is not None:
        h, mi, sec = a, b, c
    elif b is not None:
        h, mi, sec = (a, b, 0) if days is not None else (0, a, b)
    else:
        h, mi, sec = (a, 0, 0) if days is not None else (0, a, 0)
    return (days or 0) * 86400 + h * 3600 + mi * 60 + sec


KNOWN_FIELDS = frozenset(HostEntry.model_fields) | frozenset(SimulatedGpu.model_fields) | \
    frozenset(ClusterEntry.model_fields)


class HostConfig(BaseModel):
    """One host with everything resolved: defaults merged, ssh config applied, paths expanded."""
    model_config = ConfigDict(defer_build=True, frozen=True)

    name: str
    transport: Literal["local", "ssh"]
    address: str | None = None          # ssh: the real host name/IP to connect to
    port: int = 22
    user: str | None = None
    identity_file: tuple[str, ...] = ()
    proxy_jump: str | None = None
    proxy_command: str | None = None    # from the ssh config (SkyPilot writes one): the socket is this command's stdio
    known_hosts: str = ""
    host_key_policy: Literal["verify", "trust-on-first-use"] = "verify"
    workdir: str = DEFAULT_WORKDIR      # as the host's shell sees it; "~" expands on the host
    python: str = DEFAULT_REMOTE_PYTHON
    gpus: Literal["all"] | tuple[int, ...] = "all"
    labels: tuple[str, ...] = ()
    cost_per_gpu_hour: float = 0.0
    cpu_slots: int | None = None
    preload: tuple[str, ...] | None = None     # None: the agent's default (torch's stack where GPUs are real)
    simulate_gpus: tuple[SimulatedGpu, ...] | None = None

    def agent_config(self) -> dict[str, Any]:
        """The `<workdir>/agent.json` the host's agent reads."""
        return {
            "gpus": self.gpus if self.gpus == "all" else list(self.gpus),
            "simulate_gpus": None if self.simulate_gpus is None else [g.model_dump() for g in self.simulate_gpus],
            "cpu_slots": self.cpu_slots,
            "preload": None if self.preload is None else list(self.preload),
        }


@dataclass(frozen=True)
class SshEndpoint:
    """One hop of an SSH route."""
    label: str                          # for messages: "host 'gpu1'" or "jump host 'bastion'"
    hostname: str
    port: int
    user: str
    identity_files: tuple[str, ...]
    known_hosts: str
    host_key_policy: str
    proxy_command: str | None = None


class HostsFile(BaseModel):
    model_config = ConfigDict(defer_build=True, frozen=True)

    path: Path
    hosts: tuple[HostConfig, ...]
    ssh_config_path: Path | None = None
    clusters: tuple[ClusterConfig, ...] = ()

    @property
    def names(self) -> list[str]:
        return [h.name for h in self.hosts]

    def get(self, name: str) -> HostConfig:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(f"no host {name!r} in {self.path} (hosts: {', '.join(self.names)})")

    def ssh_route(self, name: str) -> list[SshEndpoint]:
        """The hops to reach host `name`: jump hosts first, the host itself last."""
        return _route(self, self.get(name), seen=())


def load_hosts(path: str | os.PathLike, ssh_config_path: str | os.PathLike | None = None) -> HostsFile:
    """Read and validate a hosts file. `ssh_config_path` overrides the file's `ssh_config:` and ~/.ssh/config."""
    path = Path(path)
    label = str(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise HostsConfigError([f"{label}: cannot read the hosts file: {e.strerror or e}; fix: create it "
                                f"(a minimal one: 'hosts: [{{name: local, transport: local}}]')"]) from None
    try:
        root_node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{label}:{mark.line + 1}:{mark.column + 1}" if mark else label
        problem = getattr(e, "problem", None) or str(e)
        context = getattr(e, "context", None)
        raise HostsConfigError([f"{where}: YAML syntax error: {problem}"
                                f"{f' ({context})' if context else ''}; fix: correct the YAML at that line"
                                f" (indentation, a missing ':' or an unclosed quote/bracket)"]) from None
    return _Loader(path, label, root_node, data, ssh_config_path).load()


# ---- loading ---------------------------------------------------------------------------------------------

class _Loader:
    def __init__(self, path: Path, label: str, node: yaml.Node | None, data: Any, ssh_config_path: Any):
        self.path, self.label, self.node, self.data = path, label, node, data
        self.override_ssh_config = ssh_config_path
        self.found: dict[str, int] = {}  # problem line -> YAML line, for sorting

    @property
    def problems(self) -> list[str]:
        return sorted(self.found, key=self.found.__getitem__)

    def problem(self, loc: tuple, host: str | None, field: str | None, what: str, fix: str,
                line: int | None = None) -> None:
        """Record one problem; `host` is a host name, or "defaults" for the defaults block."""
        line = line or _line_of(self.node, loc)
        where = f"{self.label}:{line}" if line else self.label
        kind = "cluster" if loc and loc[0] == "clusters" else "host"
        who = ("" if not host else " defaults" if host == "defaults" else f" {kind} {host!r}") + \
            (f" field {field!r}" if field else "")
        self.found.setdefault(f"{where}:{who}: {what}; fix: {fix}", line or sys.maxsize)

    def load(self) -> HostsFile:
        data = self.data
        if not isinstance(data, dict):
            self.problem((), None, None, "the file must be a mapping with a 'hosts:' list",
                         "start with 'hosts:' followed by '- name: local' / '  transport: local'")
            raise HostsConfigError(self.problems)
        self._duplicate_keys(self.node, ())
        for key in data:
            if key not in TOP_LEVEL_KEYS:
                allowed = ", ".join(TOP_LEVEL_KEYS)
                self.problem((key,), None, str(key), "unknown top-level key",
                             f"remove it{_did_you_mean(key, list(TOP_LEVEL_KEYS))} (allowed: {allowed})")
        ssh_config = self._ssh_config(data.get("ssh_config"))
        defaults = self._defaults(data.get("defaults"))
        entries = data.get("hosts", [] if data.get("clusters") else None)
        if not isinstance(entries, list) or not (entries or data.get("clusters")):
            self.problem(("hosts",), None, "hosts", "missing or empty" if not entries else FIELD_RULES["hosts"][0],
                         "hosts: [{name: local, transport: local}]")
            raise HostsConfigError(self.problems)
        seen: dict[str, int] = {}
        for i, raw in enumerate(entries):
            name = raw.get("name") if isinstance(raw, dict) else None
            if isinstance(name, str) and name in seen:
                self.problem(("hosts", i, "name"), name, "name",
                             f"duplicate host name (host entry {seen[name] + 1} has it too)",
                             f"rename one, e.g. name: {name}-2")
            elif isinstance(name, str):
                seen[name] = i
        hosts = [h for i, raw in enumerate(entries) if (h := self._host(i, raw, defaults, ssh_config))]
        clusters = self._clusters(data.get("clusters"), defaults, ssh_config, set(seen))
        result = HostsFile(path=self.path, hosts=tuple(hosts), ssh_config_path=ssh_config.path,
                           clusters=tuple(clusters))
        for host in hosts:
            if host.transport == "ssh":
                try:
                    result.ssh_route(host.name)
                except HostsConfigError as e:
                    self.problem(("hosts", seen[host.name], "proxy_jump"), host.name, "proxy_jump", str(e),
                                 "point proxy_jump at a reachable jump host without a loop, or remove it")
        if self.problems:
            raise HostsConfigError(self.problems)
        return result

    def _clusters(self, raw: Any, defaults: dict[str, Any], ssh_config: "_SshConfig",
                  host_names: set[str]) -> list[ClusterConfig]:
        if raw is None:
            return []
        if not isinstance(raw, list):
            self.problem(("clusters",), None, "clusters", f"{FIELD_RULES['clusters'][0]} (got {raw!r})",
                         FIELD_RULES["clusters"][1])
            return []
        out: list[ClusterConfig] = []
        for i, entry in enumerate(raw):
            loc = ("clusters", i)
            name = entry.get("name") if isinstance(entry, dict) and isinstance(entry.get("name"), str) \
                else f"#{i + 1}"
            if not isinstance(entry, dict):
                self.problem(loc, name, None, f"a cluster entry must be a mapping (got {entry!r})",
                             FIELD_RULES["clusters"][1])
                continue
            if name in host_names:
                self.problem(loc + ("name",), name, "name", "a host or cluster has this name already",
                             f"rename it, e.g. name: {name}-2")
            host_names.add(name)
            try:
                cluster = ClusterEntry.model_validate(entry)
            except ValidationError as e:
                for err in e.errors():
                    self._report(err, loc, name, entry)
                continue
            bad = [k for k in cluster.login if k not in ("transport", *SSH_ONLY_FIELDS)]
            for k in bad:
                self.problem(loc + ("login", k), name, f"login.{k}", "not a login field",
                             f"remove it (login fields: transport, {', '.join(SSH_ONLY_FIELDS)})")
            login = None if bad else self._host(i, {**cluster.login, "name": f"{cluster.name}-login"},
                                                defaults, ssh_config)
            if login is None:
                continue
            out.append(ClusterConfig(
                name=cluster.name, login=login, partition=cluster.partition, account=cluster.account,
                qos=cluster.qos, constraint=cluster.constraint, sbatch_args=tuple(cluster.sbatch_args),
                gpu_type=cluster.gpu_type, gpus_per_node=cluster.gpus_per_node, gpu_model=cluster.gpu_model,
                max_nodes=cluster.max_nodes, walltime_s=int(cluster.walltime), idle_release_s=cluster.idle_release_s,
                python=cluster.python, workdir=cluster.workdir, shared_workdir=cluster.shared_workdir,
                simulate_gpus=cluster.simulate_gpus))
        return out

    def _ssh_config(self, raw: Any) -> "_SshConfig":
        import paramiko     # here, not at the top: a CLI that only reads a local fleet file starts without it

        chosen = self.override_ssh_config if self.override_ssh_config is not None else raw
        if chosen is not None and not isinstance(chosen, (str, os.PathLike)):
            self.problem(("ssh_config",), None, "ssh_config", f"{FIELD_RULES['ssh_config'][0]} (got {chosen!r})",
                         FIELD_RULES["ssh_config"][1])
            chosen = None
        path = self._path(chosen if chosen is not None else DEFAULT_SSH_CONFIG)
        if not path.exists():
            if chosen is not None:
                self.problem(("ssh_config",), None, "ssh_config", f"file {path} does not exist",
                             "point ssh_config at an existing file or remove the key")
            return _SshConfig(None, paramiko.SSHConfig())
        try:
            return _SshConfig(path, paramiko.SSHConfig.from_path(str(path)), shutil.which("ssh"))
        except Exception as e:  # paramiko raises a mix of types for a bad config
            self.problem(("ssh_config",), None, "ssh_config", f"cannot parse {path}: {e}",
                         "fix that ssh config file")
            return _SshConfig(None, paramiko.SSHConfig())

    def _defaults(self, raw: Any) -> dict[str, Any]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.problem(("defaults",), None, "defaults", f"{FIELD_RULES['defaults'][0]} (got {raw!r})",
                         FIELD_RULES["defaults"][1])
            return {}
        if "name" in raw:
            self.problem(("defaults", "name"), "defaults", "name", "a default cannot set the host name",
                         "remove 'name' from defaults")
        fields = {k: v for k, v in raw.items() if k != "name"}
        try:
            HostFields.model_validate(fields)
            return fields
        except ValidationError as e:
            bad = set()
            for err in e.errors():
                bad.add(err["loc"][0])
                self._report(err, ("defaults",), "defaults", fields)
            return {k: v for k, v in fields.items() if k not in bad}

    def _host(self, i: int, raw: Any, defaults: dict[str, Any], ssh_config: "_SshConfig") -> HostConfig | None:
        loc = ("hosts", i)
        if not isinstance(raw, dict):
            self.problem(loc, f"#{i + 1}", None, f"a host entry must be a mapping (got {raw!r})",
                         "- {name: gpu1, address: 10.0.0.5}")
            return None
        name = raw.get("name") if isinstance(raw.get("name"), str) else f"#{i + 1}"
        explicit_transport = raw.get("transport", defaults.get("transport", "ssh"))
        inherited = {k: v for k, v in defaults.items()
                     if not (explicit_transport == "local" and k in SSH_ONLY_FIELDS)}
        merged = {**inherited, **raw}
        try:
            entry = HostEntry.model_validate(merged)
        except ValidationError as e:
            for err in e.errors():
                self._report(err, loc, name, merged)
            return None
        transport = entry.transport or "ssh"
        if transport == "local":
            for field in SSH_ONLY_FIELDS:
                if field in raw:
                    self.problem(loc + (field,), entry.name, field, "only applies to ssh hosts",
                                 f"remove '{field}' or set transport: ssh")
            return HostConfig(
                name=entry.name, transport="local",
                workdir=str(Path(entry.workdir or DEFAULT_WORKDIR).expanduser()),
                python=entry.python or sys.executable,
                **self._common(entry))
        if entry.address is None and not ssh_config.knows(entry.name):
            where = f"no 'Host {entry.name}' entry in {ssh_config.path}" if ssh_config.path \
                else "no ssh config file to look it up in"
            self.problem(loc + ("address",), entry.name, "address", f"required for ssh hosts ({where})",
                         f"address: <host name or IP of {entry.name}>, or transport: local for this machine")
            return None
        alias = entry.address or entry.name
        looked_up = ssh_config.lookup(alias)
        port = entry.port if entry.port is not None else _int_or(looked_up.get("port"), 22)
        identity = entry.identity_file if entry.identity_file is not None else looked_up.get("identityfile", [])
        jump = entry.proxy_jump if entry.proxy_jump is not None else looked_up.get("proxyjump")
        proxy_command = looked_up.get("proxycommand") if entry.proxy_jump is None else None
        return HostConfig(
            name=entry.name, transport="ssh", address=looked_up.get("hostname", alias), port=port,
            user=entry.user or looked_up.get("user") or getpass.getuser(),
            identity_file=tuple(str(self._path(p)) for p in identity),
            proxy_jump=None if jump in (None, "none") else jump,
            proxy_command=None if proxy_command in (None, "none") else proxy_command,
            known_hosts=str(self._path(entry.known_hosts or DEFAULT_KNOWN_HOSTS)),
            host_key_policy=entry.host_key_policy or "verify",
            workdir=entry.workdir or DEFAULT_WORKDIR,
            python=entry.python or DEFAULT_REMOTE_PYTHON,
            **self._common(entry))

    @staticmethod
    def _common(entry: HostEntry) -> dict[str, Any]:
        return dict(gpus="all" if entry.gpus in (None, "all") else tuple(entry.gpus),
                    labels=tuple(entry.labels or ()), cost_per_gpu_hour=entry.cost_per_gpu_hour or 0.0,
                    cpu_slots=entry.cpu_slots,
                    preload=None if entry.preload is None else tuple(entry.preload),
                    simulate_gpus=None if entry.simulate_gpus is None else tuple(entry.simulate_gpus))

    def _path(self, p: str | os.PathLike) -> Path:
        p = Path(p).expanduser()
        return p if p.is_absolute() else (self.path.parent / p).resolve()

    def _report(self, err: dict, loc: tuple, host: str | None, given: dict[str, Any]) -> None:
        # Drop pydantic's union-member tags ("list[int]", "literal['all']"...): keep indices and field names,
        # and the unknown key itself.
        *path, last = err["loc"]
        field_loc = tuple(x for x in path if isinstance(x, int) or x in KNOWN_FIELDS)
        if isinstance(last, int) or last in KNOWN_FIELDS or err["type"] == "extra_forbidden":
            field_loc += (last,)
        top = str(field_loc[0]) if field_loc else ""
        if err["type"] == "extra_forbidden":
            known = list(HostEntry.model_fields) if len(field_loc) == 1 else list(SimulatedGpu.model_fields)
            close = _did_you_mean(str(field_loc[-1]), known)
            self.problem(loc + field_loc, host, _dotted(field_loc), "unknown field",
                         f"remove it{close}" if close else f"remove it (fields: {', '.join(known)})")
            return
        if err["type"] == "missing":
            fix = FIELD_RULES.get(str(field_loc[-1]), ("", f"{field_loc[-1]}: <value>"))[1]
            self.problem(loc + field_loc, host, _dotted(field_loc), "missing (required)", fix)
            return
        leaf = next((str(x) for x in reversed(field_loc) if isinstance(x, str)), top)
        rule, fix = FIELD_RULES.get(leaf, (err["msg"], f"{leaf}: <value>"))
        got = _value_at(given, field_loc)
        self.problem(loc + field_loc, host, _dotted(field_loc), f"{rule} (got {got!r})", fix)

    def _duplicate_keys(self, node: yaml.Node | None, loc: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for k, v in node.value:
                if k.value in seen:
                    host = None
                    if len(loc) == 2 and loc[0] == "hosts":
                        host = next((vv.value for kk, vv in node.value if kk.value == "name"), f"#{loc[1] + 1}")
                    self.problem(loc, host, k.value, "given twice in one entry (YAML keeps only the last)",
                                 f"keep one '{k.value}:' line", line=k.start_mark.line + 1)
                seen.add(k.value)
                self._duplicate_keys(v, loc + (k.value,))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._duplicate_keys(item, loc + (i,))


@dataclass
class _SshConfig:
    """Host aliases resolved as OpenSSH resolves them: `ssh -G` prints the effective config, so Include, Match and
    ProxyCommand work (paramiko 5.1's parser hands Include back as a plain key: an included host resolves to
    nothing). Without an `ssh` client, paramiko's parser, with a note in the log."""
    path: Path | None
    config: paramiko.SSHConfig
    ssh: str | None = None

    def __post_init__(self) -> None:
        if self.ssh is None and self.path is not None:
            log.warning("no ssh client found: %s is read with paramiko's parser, which ignores Include, Match and "
                        "ProxyCommand; install openssh-client for OpenSSH's own resolution", self.path)

    def lookup(self, alias: str) -> dict[str, Any]:
        if self.ssh is None or self.path is None:
            return dict(self.config.lookup(alias))
        return _ssh_g(self.ssh, self.path, alias)

    def knows(self, alias: str) -> bool:
        """True when the config says something of `alias` (then ssh can reach it by that name)."""
        if self.ssh is not None and self.path is not None:
            found = self.lookup(alias)
            return found.get("hostname", alias) != alias or "proxycommand" in found or "proxyjump" in found
        found = self.config.lookup(alias)
        return found.get("hostname", alias) != alias or any(
            p != "*" and _glob_match(p, alias) for p in self.config.get_hostnames())


_OPENSSH_DEFAULT_KEYS = frozenset(os.path.expanduser(f"~/.ssh/{n}") for n in (
    "id_rsa", "id_ecdsa", "id_ecdsa_sk", "id_ed25519", "id_ed25519_sk", "id_xmss", "id_dsa"))


def _ssh_g(ssh: str, path: Path, alias: str) -> dict[str, Any]:
    """`ssh -G`'s effective config for `alias`, keyed like paramiko's lookup. OpenSSH's default identity files are
    left out unless they exist: ssh -G lists them whether they exist or not."""
    try:
        out = subprocess.run([ssh, "-G", "-F", str(path), alias], capture_output=True, text=True, timeout=10,
                             check=True).stdout
    except (subprocess.SubprocessError, OSError) as e:
        raise HostsConfigError([f"ssh_config: `ssh -G {alias}` failed on {path}: "
                                f"{getattr(e, 'stderr', None) or e}; fix that ssh config file"]) from None
    found: dict[str, Any] = {}
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        if key == "identityfile":
            expanded = os.path.expanduser(value)
            if expanded not in _OPENSSH_DEFAULT_KEYS or os.path.exists(expanded):
                found.setdefault(key, []).append(expanded)
        elif key in ("hostname", "user", "port", "proxyjump", "proxycommand", "userknownhostsfile"):
            found[key] = value
    if "proxycommand" in found:   # ssh expands these tokens when it runs the command; so must we
        tokens = {"%h": found.get("hostname", alias), "%p": found.get("port", "22"), "%r": found.get("user", ""),
                  "%n": alias, "%%": "%"}
        found["proxycommand"] = re.sub(r"%[hprn%]", lambda m: tokens[m.group(0)], found["proxycommand"])
    return found


# ---- ProxyJump routes ------------------------------------------------------------------------------------

def _route(hosts: HostsFile, host: HostConfig, seen: tuple[str, ...]) -> list[SshEndpoint]:
    if host.name in seen:
        raise HostsConfigError([f"proxy_jump loop: {' -> '.join(seen + (host.name,))}"])
    hops: list[SshEndpoint] = []
    for spec in (host.proxy_jump or "").split(","):
        spec = spec.strip()
        if spec:
            hops.extend(_jump_hops(hosts, host, spec, seen + (host.name,)))
    assert host.address is not None
    hops.append(SshEndpoint(f"host {host.name!r}", host.address, host.port, host.user or getpass.getuser(),
                            host.identity_file, host.known_hosts, host.host_key_policy, host.proxy_command))
    return hops


def _jump_hops(hosts: HostsFile, target: HostConfig, spec: str, seen: tuple[str, ...]) -> list[SshEndpoint]:
    m = re.fullmatch(r"(?:ssh://)?(?:(?P<user>[^@]+)@)?(?P<host>\[[^\]]+\]|[^:]+)(?::(?P<port>\d+))?", spec)
    if not m:
        raise HostsConfigError([f"cannot parse proxy_jump {spec!r} (expected [user@]host[:port])"])
    name = m["host"].strip("[]")
    if name in hosts.names and hosts.get(name).transport == "ssh":
        route = _route(hosts, hosts.get(name), seen)
        last = route[-1]
        route[-1] = SshEndpoint(f"jump host {name!r}", last.hostname, int(m["port"] or last.port),
                                m["user"] or last.user, last.identity_files, last.known_hosts, last.host_key_policy)
        return route
    import paramiko

    cfg = paramiko.SSHConfig.from_path(str(hosts.ssh_config_path)) if hosts.ssh_config_path else paramiko.SSHConfig()
    found = cfg.lookup(name)
    nested = found.get("proxyjump")
    if nested and nested != "none":
        raise HostsConfigError([f"jump host {name!r} has its own ProxyJump in the ssh config; "
                                f"list it as a host in the hosts file instead"])
    identities = tuple(found.get("identityfile", ())) or target.identity_file
    return [SshEndpoint(f"jump host {name!r}", found.get("hostname", name),
                        int(m["port"] or _int_or(found.get("port"), 22)),
                        m["user"] or found.get("user") or target.user or getpass.getuser(),
                        identities, target.known_hosts, target.host_key_policy)]


# ---- small helpers ---------------------------------------------------------------------------------------

def _line_of(node: yaml.Node | None, loc: tuple) -> int | None:
    """1-based line of the deepest YAML node along `loc` (keys of mappings, indices of sequences)."""
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if match is None:
                break
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _value_at(data: Any, loc: tuple) -> Any:
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _did_you_mean(word: Any, choices: list[str]) -> str:
    close = difflib.get_close_matches(str(word), choices, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _glob_match(pattern: str, name: str) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in pattern.split(",") if not p.startswith("!"))


def _int_or(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default

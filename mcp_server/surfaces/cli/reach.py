"""How `arc` reaches the service: the daemon of the state dir (started on demand), or, for reads, the history file
itself when no daemon runs."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ...core.paths import StatePaths, default_research_file, hosts_file


class CliError(Exception):
    """What `arc` prints as `arc: ...` before exiting 1."""


def state_paths(args) -> StatePaths:
    return StatePaths.resolve(args.state_dir)


def client(args, start: bool = True, daemon_args: tuple[str, ...] = ()):
    from ...daemon.client import DaemonClient

    found = DaemonClient(state_paths(args))
    # A running daemon already validated its files; checking them again would cost every command a second.
    if start and not found.running():
        hosts = hosts_file(args.hosts)
        if not hosts.exists():
            raise CliError(f"hosts file {hosts} not found; pass --hosts FILE or set ARC_HOSTS "
                           "(the repository's hosts.yaml describes this machine)")
        check_hosts_file(hosts)
        found.ensure(hosts, research_file(args), daemon_args)
    return found


def research_file(args) -> Path:
    from ...research import ResearchConfigError, load_research

    path = default_research_file(hosts_file(args.hosts), args.research)
    try:
        load_research(path)
    except ResearchConfigError as e:
        raise CliError(str(e)) from None
    return path


def check_hosts_file(path: Path) -> None:
    from ...fleet.hosts_config import HostsConfigError, load_hosts

    try:
        load_hosts(path)
    except HostsConfigError as e:
        raise CliError(str(e)) from None


def call(args, method: str, timeout: float = 120.0, **params) -> dict:
    from ...daemon.client import DaemonError

    try:
        return client(args).call(method, timeout=timeout, **params)
    except DaemonError as e:
        raise CliError(str(e)) from None


def read_or_call(args, method: str, **params) -> dict:
    """History reads go to the daemon when it runs, else straight to the DuckDB file."""
    from ...daemon.client import DaemonClient, DaemonError

    daemon = DaemonClient(state_paths(args))
    if daemon.running():
        try:
            return daemon.call(method, **params)
        except DaemonError as e:
            raise CliError(str(e)) from None
    from ...core.errors import ArcError
    from ...core.operations import OPERATIONS
    from ...core.service import Service
    from ...research import load_research

    paths = state_paths(args)
    if not paths.history.exists():
        raise CliError(f"no history at {paths.history} yet; submit a job first (arc submit) or pass --state-dir")
    research = load_research(research_file(args))    # the campaign's metric, space and noise settings
    try:
        with Service(paths, None, read_only=True, research=research) as service:
            return OPERATIONS[method].call(service, params).model_dump(mode="json")
    except ArcError as e:
        raise CliError(str(e)) from None


def as_arguments(params: dict[str, Any]) -> dict[str, Any]:
    """What a command read from its options, without those left unset (the operation's defaults apply)."""
    return {k: v for k, v in params.items() if v is not None}

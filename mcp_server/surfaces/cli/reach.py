"""How `arc` reaches the service: the daemon of the state dir (started on demand), or, for reads, the history file
itself when no daemon runs."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ...core.paths import FleetFile, StatePaths, default_research_file, fleet_file


class CliError(Exception):
    """What `arc` prints as `arc: ...` before exiting 1."""


def fleet(args) -> FleetFile:
    return fleet_file(args.hosts)


def state_paths(args) -> StatePaths:
    return StatePaths.resolve(args.state_dir, fleet(args))


def missing_fleet(chosen: FleetFile) -> str:
    """Why there is no fleet and what to do, for the CLI and for every tool call of a fleet-less `arc mcp`."""
    return (f"no fleet file: {chosen.describe()} does not exist. Fix: run `arc init` to write a commented one "
            "that describes this machine (then edit it to add GPU hosts), or pass --hosts FILE / set ARC_HOSTS")


def client(args, start: bool = True, daemon_args: tuple[str, ...] = ()):
    from ...daemon.client import DaemonClient

    found = DaemonClient(state_paths(args))
    chosen = fleet(args)
    if start and found.running():
        # A running daemon already validated its files; checking them again would cost every command a second.
        running = found.info().get("hosts_file")
        if running and chosen.path.exists() and Path(running) != chosen.path:
            raise CliError(f"the daemon of {found.paths.root} runs the fleet file {running}, not "
                           f"{chosen.describe()}. Fix: `arc daemon restart` (with the same --hosts) to switch it "
                           "to that file (running jobs are kept), or pass another --state-dir to run a second "
                           "daemon beside it")
    elif start:
        if not chosen.path.exists():
            raise CliError(missing_fleet(chosen))
        check_hosts_file(chosen.path)
        found.ensure(chosen.path, research_file(args), daemon_args)
    return found


def research_file(args) -> Path:
    from ...research import ResearchConfigError, load_research

    path = default_research_file(fleet(args).path, args.research)
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
    from ...core.operations import registry
    from ...core.service import Service
    from ...research import load_research

    paths = state_paths(args)
    if not paths.history.exists():
        raise CliError(f"no history at {paths.history} yet; submit a job first (arc submit) or pass --state-dir")
    research = load_research(research_file(args))    # the campaign's metric, space and noise settings
    try:
        with Service(paths, None, read_only=True, research=research) as service:
            return registry()[method].call(service, params).model_dump(mode="json")
    except ArcError as e:
        raise CliError(str(e)) from None


def as_arguments(params: dict[str, Any]) -> dict[str, Any]:
    """What a command read from its options, without those left unset (the operation's defaults apply)."""
    return {k: v for k, v in params.items() if v is not None}

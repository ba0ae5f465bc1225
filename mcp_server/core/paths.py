"""Where arc keeps its files on the controller.

The fleet file: `--hosts` / env ARC_HOSTS, else `./hosts.yaml` (a project's), else the person's own in the user
config dir (`$XDG_CONFIG_HOME/arc/hosts.yaml` on Linux, what `arc init` writes). The state dir (history, daemon):
`--state-dir` / env ARC_STATE_DIR, else `./.arc` for a project's fleet file, else the user data dir
(`$XDG_DATA_HOME/arc` on Linux). So `arc mcp` registered at user scope finds the same fleet and history from any
folder Claude Code starts in, and a project keeps its own. One state dir per fleet/history, so several can live
side by side.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


DEFAULT_STATE_DIR = ".arc"
DEFAULT_HOSTS_FILE = "hosts.yaml"
DEFAULT_RESEARCH_FILE = "research.yaml"


@dataclass(frozen=True)
class StatePaths:
    root: Path

    @classmethod
    def resolve(cls, state_dir: str | os.PathLike | None = None, fleet: "FleetFile | None" = None) -> "StatePaths":
        """`fleet`: the fleet file in use, which picks the default (./.arc, or the user data dir for the user's
        own fleet file); without it the default is ./.arc."""
        raw = state_dir or os.environ.get("ARC_STATE_DIR")
        if not raw:
            raw = user_data_dir() if fleet is not None and fleet.origin == USER else DEFAULT_STATE_DIR
        return cls(Path(raw).expanduser().resolve())

    def ensure(self) -> "StatePaths":
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self

    @property
    def history(self) -> Path:
        return self.root / "history.duckdb"

    @property
    def snapshot(self) -> Path:
        return self.root / "history.snapshot.duckdb"

    @property
    def daemon_lock(self) -> Path:
        return self.root / "daemon.lock"

    @property
    def daemon_socket(self) -> Path:
        return self.root / "daemon.sock"

    @property
    def daemon_token(self) -> Path:
        return self.root / "daemon.token"

    @property
    def daemon_info(self) -> Path:
        return self.root / "daemon.json"

    @property
    def daemon_log(self) -> Path:
        return self.root / "daemon.log"

    @property
    def snapshots_dir(self) -> Path:
        """Content-addressed code snapshots kept on the controller (tar files by sha256)."""
        return self.root / "code"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"


GIVEN, PROJECT, USER = "given", "project", "user"     # where the fleet file in use came from


@dataclass(frozen=True)
class FleetFile:
    path: Path
    origin: str         # GIVEN (--hosts / ARC_HOSTS), PROJECT (./hosts.yaml) or USER (the user config dir)

    def describe(self) -> str:
        return {GIVEN: f"{self.path} (given by --hosts or ARC_HOSTS)",
                PROJECT: f"{self.path} (this folder's hosts.yaml)",
                USER: f"{self.path} (your own fleet file)"}[self.origin]


def user_config_dir() -> Path:
    import platformdirs     # here, not at the top: `arc mcp` with a project's file imports only the stdlib

    return platformdirs.user_config_path("arc")


def user_data_dir() -> Path:
    import platformdirs

    return platformdirs.user_data_path("arc")


def user_hosts_file() -> Path:
    return user_config_dir() / DEFAULT_HOSTS_FILE


def fleet_file(path: str | os.PathLike | None = None) -> FleetFile:
    """The fleet file in use (it may not exist yet: the user's own one before `arc init`)."""
    chosen = path or os.environ.get("ARC_HOSTS")
    if chosen:
        return FleetFile(Path(chosen).expanduser().resolve(), GIVEN)
    here = Path(DEFAULT_HOSTS_FILE)
    if here.exists():
        return FleetFile(here.resolve(), PROJECT)
    return FleetFile(user_hosts_file(), USER)


def hosts_file(path: str | os.PathLike | None = None) -> Path:
    return fleet_file(path).path


def default_research_file(hosts_path: str | os.PathLike, path: str | os.PathLike | None = None) -> Path:
    """research.yaml: given, else env ARC_RESEARCH, else the one beside the hosts file (a missing file means
    no limits)."""
    chosen = path or os.environ.get("ARC_RESEARCH")
    return Path(chosen).expanduser() if chosen else Path(hosts_path).expanduser().resolve().parent / DEFAULT_RESEARCH_FILE

"""Where arc keeps its files on the controller.

One state dir per fleet/history (`--state-dir`, env ARC_STATE_DIR, default `./.arc`), so several can live side by side.
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
    def resolve(cls, state_dir: str | os.PathLike | None = None) -> "StatePaths":
        raw = state_dir or os.environ.get("ARC_STATE_DIR") or DEFAULT_STATE_DIR
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


def hosts_file(path: str | os.PathLike | None = None) -> Path:
    return Path(path or os.environ.get("ARC_HOSTS") or DEFAULT_HOSTS_FILE).expanduser()


def default_research_file(hosts_path: str | os.PathLike, path: str | os.PathLike | None = None) -> Path:
    """research.yaml: given, else env ARC_RESEARCH, else the one beside the hosts file (a missing file means
    no limits)."""
    chosen = path or os.environ.get("ARC_RESEARCH")
    return Path(chosen).expanduser() if chosen else Path(hosts_path).expanduser().resolve().parent / DEFAULT_RESEARCH_FILE

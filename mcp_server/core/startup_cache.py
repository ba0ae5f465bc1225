"""Answers that depend only on arc's code, kept on disk so a start-up need not import the code to give them.

`arc --help` lists every operation, which means importing their declarations (pydantic, the service: 0.3 s of a
0.4 s command); the MCP handshake (initialize, tools/list) means a daemon that has imported the MCP SDK (seconds
when none runs). Both are the same for the same code, so each is stored the first time it is made and read back
while the code is unchanged: the idea of Azure CLI's command index and of Python's own bytecode cache.

An entry is keyed by the build's fingerprint: the size and modification time of every file of the controller and
of the MCP SDK it serves with. Any edit, install or upgrade changes it, and a stale entry is never read (it is
removed when the new one is written). Standard library plus platformdirs: the readers are the fast paths.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

PACKAGE_ROOT = Path(__file__).resolve().parent.parent      # mcp_server/


def cache_dir() -> Path:
    """Where the entries live (env ARC_CACHE_DIR, else the user cache dir: `$XDG_CACHE_HOME/arc` on Linux)."""
    if os.environ.get("ARC_CACHE_DIR"):
        return Path(os.environ["ARC_CACHE_DIR"])
    import platformdirs

    return platformdirs.user_cache_path("arc")


def fingerprint() -> str:
    """This build of arc: Python's version and every source file of the controller and of the MCP SDK (~1 ms)."""
    digest = hashlib.sha256(sys.version.encode())
    roots = [PACKAGE_ROOT]
    sdk = importlib.util.find_spec("mcp")       # finds without importing
    if sdk is not None and sdk.submodule_search_locations:
        roots += [Path(p) for p in sdk.submodule_search_locations]
    for root in roots:
        for path in sorted(_sources(root)):
            st = os.stat(path)
            digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _sources(root: Path):
    for entry in os.scandir(root):
        if entry.is_dir(follow_symlinks=False) and entry.name != "__pycache__":
            yield from _sources(Path(entry.path))
        elif entry.name.endswith((".py", ".js", ".css", ".html")):
            yield entry.path


def read(kind: str, key: str = "") -> Any:
    """The stored entry of this build, or None."""
    try:
        return json.loads(_path(kind, fingerprint(), key).read_text())
    except (OSError, ValueError):
        return None


def write(kind: str, value: Any, key: str = "") -> None:
    """Store an entry of this build, replacing this kind's entries of other builds. A cache that cannot be written
    (a read-only home) only means the next start-up is the slow one."""
    build = fingerprint()
    path = _path(kind, build, key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for old in path.parent.glob(f"{kind}-*.json"):
            if not old.name.startswith(f"{kind}-{build}"):
                old.unlink(missing_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".tmp-", delete=False) as f:
            json.dump(value, f)
        os.replace(f.name, path)    # a reader sees the old entry or the new one, never half of one
    except OSError:
        pass


def _path(kind: str, build: str, key: str) -> Path:
    return cache_dir() / f"{kind}-{build}{f'-{key}' if key else ''}.json"

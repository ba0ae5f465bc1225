"""Content-addressed pushes: a local folder lands once per content at `<workdir>/<kind>/<sha256>/` on a host.

The tree travels as one gzip'd tar stream on a command's stdin and is unpacked by the host's Python into a
temporary folder, which gets a marker file and is then renamed into place. The rename is the commit: a folder
without the marker (a push cut short by an older scheme or by hand) is never taken as complete and is replaced.
"""
from __future__ import annotations

import hashlib
import os
import shlex
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

from mcp_server.fleet.errors import FleetError
from mcp_server.fleet.transport import Transport, shell_path

Kind = Literal["agent", "code", "data"]
MARKER = ".arc-complete"
TREE_FOUND = "ARC-TREE-FOUND"
IGNORED_DIRS = {"__pycache__", ".git"}
IGNORED_SUFFIXES = (".pyc",)
SPOOL_IN_MEMORY = 64 * 1024 * 1024

# Runs on the host: argv = workdir kind hash; the tar.gz arrives on stdin; prints the final absolute path.
_UNPACK = r"""
import os, shutil, sys, tarfile, tempfile
base = os.path.join(os.path.expanduser(sys.argv[1]), sys.argv[2])
final, digest = os.path.join(base, sys.argv[3]), sys.argv[3]
marker = os.path.join(final, ".arc-complete")
os.makedirs(base, exist_ok=True)
tmp = tempfile.mkdtemp(prefix=".partial-" + digest[:16] + "-", dir=base)
try:
    with tarfile.open(fileobj=sys.stdin.buffer, mode="r|gz") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(tmp, filter="data")
        else:
            tar.extractall(tmp)
    with open(os.path.join(tmp, ".arc-complete"), "w") as f:
        f.write(digest + "\n")
    if os.path.isdir(final) and not os.path.exists(marker):
        shutil.rmtree(final)
    try:
        os.rename(tmp, final)
    except OSError:
        if not os.path.exists(marker):
            raise
finally:
    shutil.rmtree(tmp, ignore_errors=True)
print(os.path.abspath(final))
"""


@dataclass(frozen=True)
class PushedTree:
    path: str              # absolute path on the host
    content_hash: str
    uploaded: bool         # False when the host already had it
    seconds: float

    def __str__(self) -> str:
        return self.path


def tree_files(root: Path) -> Iterator[tuple[str, Path]]:
    """(relative posix path, file) for every file under root, sorted, without caches and VCS data."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if d not in IGNORED_DIRS]
        for name in filenames:
            if not name.endswith(IGNORED_SUFFIXES):
                path = Path(dirpath) / name
                found.append((path.relative_to(root).as_posix(), path))
    return iter(sorted(found))


def content_hash(path: str | os.PathLike, prefix: str | None = None) -> str:
    """sha256 over each file's relative path (under `prefix/` when given) and the sha256 of its bytes, in order.

    Only names and contents count (not times or modes), so the same tree hashes the same on every machine.
    """
    root = Path(path)
    if not root.is_dir():
        raise NotADirectoryError(f"cannot hash {root}: not a directory")
    h = hashlib.sha256()
    for rel, file in tree_files(root):
        h.update(((f"{prefix}/{rel}" if prefix else rel) + "\0").encode())
        h.update(_file_digest(file))
    return h.hexdigest()


def _file_digest(file: Path) -> bytes:
    h = hashlib.sha256()
    with open(file, "rb") as f:
        while chunk := f.read(1 << 20):   # datasets can be large: never whole files in memory
            h.update(chunk)
    return h.digest()


def remote_tree(transport: Transport, kind: Kind, digest: str) -> str:
    """The host's path of a pushed tree, as its shell sees it (`~` unexpanded)."""
    return f"{transport.host.workdir.rstrip('/')}/{kind}/{digest}"


def completed_check(transport: Transport, kind: Kind, digest: str) -> str:
    """A shell command that prints `TREE_FOUND <absolute path>` when the tree is on the host, complete."""
    return f'{{ cd {shell_path(remote_tree(transport, kind, digest))} 2>/dev/null && test -f {MARKER} && ' \
           f'echo "{TREE_FOUND} $PWD"; }}'


def found_path(output: str) -> str | None:
    """The path a completed_check printed, if any. Markers, not whole output: login shells may print noise."""
    for line in output.splitlines():
        if line.startswith(TREE_FOUND + " "):
            return line[len(TREE_FOUND) + 1:]
    return None


def unpack_command(transport: Transport, kind: Kind, digest: str) -> str:
    """The host command that unpacks a tar.gz from stdin as `<workdir>/<kind>/<digest>` and prints its path."""
    return " ".join([shlex.quote(transport.host.python), "-c", shlex.quote(_UNPACK),
                     shlex.quote(transport.host.workdir), kind, digest])


def push_tree(transport: Transport, local_dir: str | os.PathLike, kind: Kind, *, prefix: str | None = None,
              timeout: float = 600.0) -> PushedTree:
    """Put `local_dir` at `<workdir>/<kind>/<hash>/` (inside `<hash>/<prefix>/` when given) unless already there."""
    start = time.monotonic()
    root = Path(local_dir)
    digest = content_hash(root, prefix)
    found = found_path(transport.run(completed_check(transport, kind, digest), timeout=30.0).text)
    if found:
        return PushedTree(found, digest, False, time.monotonic() - start)
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as spool:
        with tarfile.open(fileobj=spool, mode="w|gz") as tar:
            for rel, file in tree_files(root):
                tar.add(str(file), arcname=f"{prefix}/{rel}" if prefix else rel, recursive=False)
        spool.seek(0)
        r = transport.run(unpack_command(transport, kind, digest), stdin=spool,
                          timeout=max(1.0, timeout - (time.monotonic() - start)))
    if r.exit_code == 127:
        raise FleetError(transport.name, f"{transport.host.python!r} was not found on the host "
                                         f"({r.text.strip()[-200:]}); fix: set python: /path/to/python3 "
                                         f"(>= 3.10) for this host in the hosts file")
    if r.exit_code != 0:
        raise FleetError(transport.name, f"pushing {root} to {remote_tree(transport, kind, digest)} failed "
                                         f"(exit {r.exit_code}): {r.text.strip()[-500:]}")
    return PushedTree(r.text.strip().splitlines()[-1], digest, True, time.monotonic() - start)

"""Content-addressed code snapshots on the controller.

Every job records the exact code it ran, discarded experiments included: the source folder is copied into
`<state>/code/<sha256>/` once (immutable afterwards) and pushed to a host's `<workdir>/code/<sha256>/` the first time
a job there needs it. A snapshot of the trainer keeps the package folder (`<sha>/trainer/...`) so that
`python -m trainer.train` works with the snapshot as the job's working directory.

A folder is measured before anything is copied: the walk counts bytes and entries as it goes and stops at the cap,
so `code: "/usr/lib"` is refused after reading a few directories, not after writing gigabytes. The walk never
follows a link: a symlink to a file inside the folder is copied as a regular file (its bytes count once more); a
symlink to a directory, one that leaves the folder, one that dangles, and anything that is not a regular file
(fifo, socket, device) are left out of the snapshot. So a link to `/` or a link loop costs nothing, and a snapshot
holds only regular files (the hosts' unpack and `content_hash` never meet a link).
"""
from __future__ import annotations

import heapq
import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path

from ..fleet.push import content_hash


log = logging.getLogger("arc.code_store")

IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".git", ".arc", ".venv", "node_modules", ".pytest_cache")
MAX_SNAPSHOT_BYTES = 64 * 2**20
MAX_SNAPSHOT_ENTRIES = 10_000      # files and folders: a tree of empty files is as much work as a big one
FIX = "point `code` at the folder holding only your training code (data, checkpoints and environments elsewhere)"


class CodeStoreError(ValueError):
    pass


def trainer_source() -> Path:
    from trainer.contract import code_folder

    return code_folder()


class CodeStore:
    def __init__(self, root: Path):
        self.root = root

    def path(self, code_hash: str) -> Path:
        return self.root / code_hash

    def has(self, code_hash: str) -> bool:
        return (self.root / code_hash).is_dir()

    def resolve(self, code_hash_prefix: str) -> str:
        """A full hash from a unique prefix (agents carry short prefixes)."""
        if len(code_hash_prefix) < 6 or not all(c in "0123456789abcdef" for c in code_hash_prefix):
            raise CodeStoreError(f"'{code_hash_prefix}' is not a code hash (hex, at least 6 characters)")
        hits = [p.name for p in self.root.glob(code_hash_prefix + "*") if p.is_dir()] if self.root.is_dir() else []
        if len(hits) != 1:
            raise CodeStoreError(f"code hash '{code_hash_prefix}' matches {len(hits)} snapshots; "
                                 "give more characters (job_status shows each job's code_hash)")
        return hits[0]

    def snapshot_trainer(self) -> str:
        return self.snapshot(trainer_source(), as_package="trainer")

    def snapshot(self, folder: Path, as_package: str | None = None) -> str:
        """Copy `folder` into the store and return its hash (copying once per content)."""
        folder = Path(folder).expanduser().resolve()
        if not folder.is_dir():
            raise CodeStoreError(f"code folder {folder} does not exist or is not a folder")
        _refuse_broad(folder)
        files = self._measure(folder)
        self.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.root, prefix=".incoming-") as tmp:
            target = Path(tmp) / "tree"
            dest = target / as_package if as_package else target
            dest.mkdir(parents=True)
            budget = MAX_SNAPSHOT_BYTES
            for rel, source in files:
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                budget -= _copy_bounded(source, dest / rel, budget, folder)
            digest = content_hash(target)
            final = self.root / digest
            if not final.exists():
                os.replace(target, final)
        return digest

    def _measure(self, folder: Path) -> list[tuple[str, Path]]:
        """(relative path, file to copy) for every file the snapshot will hold; refuses a folder past the caps
        as soon as the walk crosses them."""
        store = self.root.resolve()
        files: list[tuple[str, Path]] = []
        total, entries = 0, 0
        largest: list[tuple[int, str]] = []        # a min-heap of the 3 biggest files seen, for the message
        stack = [folder]
        while stack:
            directory = stack.pop()
            try:
                with os.scandir(directory) as it:
                    found = sorted(it, key=lambda e: e.name)
            except OSError as e:
                raise CodeStoreError(f"cannot read {directory} in code folder {folder} ({e.strerror}): {FIX}") from None
            ignored = IGNORED(str(directory), [e.name for e in found])
            for entry in found:
                if entry.name in ignored:
                    continue
                path = Path(entry.path)
                rel = path.relative_to(folder).as_posix()
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    source = _link_inside(path, folder)
                    if source is None:
                        continue
                    st = source.stat()
                else:
                    source = path
                if stat.S_ISDIR(st.st_mode):
                    if path != store:           # a state dir inside the code folder holds the copy in progress
                        stack.append(path)
                elif stat.S_ISREG(st.st_mode):
                    files.append((rel, source))
                    total += st.st_size
                    heapq.heappush(largest, (st.st_size, rel))
                    if len(largest) > 3:
                        heapq.heappop(largest)
                else:
                    log.info("code folder %s: %s is not a regular file; left out of the snapshot", folder, rel)
                entries += 1
                if total > MAX_SNAPSHOT_BYTES:
                    big = ", ".join(f"{r} ({n / 2**20:.1f} MiB)" for n, r in sorted(largest, reverse=True))
                    raise CodeStoreError(f"code folder {folder} holds more than {MAX_SNAPSHOT_BYTES // 2**20} MiB "
                                         f"(stopped counting there; largest files seen: {big}); snapshots are "
                                         f"capped at {MAX_SNAPSHOT_BYTES // 2**20} MiB: {FIX}")
                if entries > MAX_SNAPSHOT_ENTRIES:
                    raise CodeStoreError(f"code folder {folder} holds more than {MAX_SNAPSHOT_ENTRIES:,} files and "
                                         f"folders (stopped counting at {rel}); snapshots are capped at "
                                         f"{MAX_SNAPSHOT_ENTRIES:,}: {FIX}")
        return files


def _refuse_broad(folder: Path) -> None:
    """The root, a home folder or a folder above one: never the code of one experiment, and huge."""
    home = Path.home().resolve()
    if folder == home or folder in home.parents or Path("/home") in (folder, folder.parent):
        raise CodeStoreError(f"code folder {folder} is the root, a home folder or a folder above one, not one "
                             f"project: {FIX}")


def _link_inside(link: Path, folder: Path) -> Path | None:
    """The regular file a symlink leads to when it stays inside `folder`; None (left out) otherwise."""
    try:
        target = link.resolve(strict=True)
    except (OSError, RuntimeError):             # dangling, or a loop
        log.info("code folder %s: link %s leads nowhere; left out of the snapshot", folder, link)
        return None
    if not target.is_relative_to(folder) or not target.is_file():
        log.info("code folder %s: link %s leads to %s (outside the folder or not a file); left out of the "
                 "snapshot", folder, link, target)
        return None
    return target


def _copy_bounded(source: Path, dest: Path, budget: int, folder: Path) -> int:
    """Copy one file, never more than `budget` bytes: a file that grew since it was measured cannot blow the cap."""
    copied = 0
    with open(source, "rb") as src, open(dest, "wb") as out:
        while chunk := src.read(min(1 << 20, budget - copied + 1)):
            copied += len(chunk)
            if copied > budget:
                raise CodeStoreError(f"code folder {folder} grew past {MAX_SNAPSHOT_BYTES // 2**20} MiB while it "
                                     f"was copied ({source} is growing): {FIX}")
            out.write(chunk)
    shutil.copymode(source, dest)               # a job may run ./train.sh
    return copied

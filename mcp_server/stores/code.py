"""Content-addressed code snapshots on the controller.

Every job records the exact code it ran, discarded experiments included: the source folder is copied into
`<state>/code/<sha256>/` once (immutable afterwards) and pushed to a host's `<workdir>/code/<sha256>/` the first time
a job there needs it. A snapshot of the trainer keeps the package folder (`<sha>/trainer/...`) so that
`python -m trainer.train` works with the snapshot as the job's working directory.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..fleet.push import content_hash


IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".git", ".arc", ".venv", "node_modules", ".pytest_cache")
MAX_SNAPSHOT_BYTES = 64 * 2**20


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
        self.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.root, prefix=".incoming-") as tmp:
            target = Path(tmp) / "tree"
            dest = target / as_package if as_package else target
            shutil.copytree(folder, dest, ignore=IGNORED, symlinks=False)
            size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
            if size > MAX_SNAPSHOT_BYTES:
                raise CodeStoreError(f"code folder {folder} holds {size / 2**20:.0f} MiB; snapshots are capped at "
                                     f"{MAX_SNAPSHOT_BYTES // 2**20} MiB: keep data out of the code folder")
            digest = content_hash(target)
            final = self.root / digest
            if not final.exists():
                os.replace(target, final)
        return digest

"""The trainer's dataset on the controller: prepared once, content-addressed, pushed to each host once.

`python -m trainer.prepare` (run in a subprocess: the controller never imports torch or tokenizers itself) writes a
folder that is moved to `<state>/data/<sha256>/`; `<state>/data/CURRENT` names the one new trainer jobs use. Every
host then trains on identical bytes, whatever Python or corpus it has locally.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..core.paths import StatePaths
from ..fleet import content_hash


class DatasetError(RuntimeError):
    pass


def current_dataset(paths: StatePaths) -> str | None:
    marker = paths.data_dir / "CURRENT"
    if not marker.exists():
        return None
    digest = marker.read_text().strip()
    return digest if (paths.data_dir / digest).is_dir() else None


def prepare_dataset(paths: StatePaths, prepare_args: list[str]) -> tuple[str, dict[str, Any]]:
    """Run `python -m trainer.prepare ARGS`, store the result by its content hash and make it CURRENT.

    Returns (hash, what prepare reported: token counts, vocabulary size, ...)."""
    paths.data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=paths.data_dir, prefix=".incoming-") as tmp:
        out = Path(tmp) / "data"
        proc = subprocess.run([sys.executable, "-m", "trainer.prepare", "--out", str(out), *prepare_args],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise DatasetError(f"python -m trainer.prepare failed (exit {proc.returncode}):\n"
                               f"{proc.stderr[-2000:]}")
        digest = content_hash(out)
        if not (paths.data_dir / digest).exists():
            os.replace(out, paths.data_dir / digest)
    marker = paths.data_dir / "CURRENT"
    tmp_marker = marker.with_suffix(".tmp")
    tmp_marker.write_text(digest + "\n")
    os.replace(tmp_marker, marker)
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    facts.pop("path", None)   # the temporary folder it was written to
    # The trainer hashes its data files (it prints that hash in its runs); arc names the folder by the hash of
    # the whole folder, manifest included, which is what hosts receive.
    facts["manifest_hash"] = facts.pop("content_hash", None)
    return digest, facts

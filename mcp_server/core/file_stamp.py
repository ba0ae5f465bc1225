"""Has a config file changed on disk since the daemon read it?

The daemon reads hosts.yaml when it starts and research.yaml when it starts or a person runs `arc research reload`.
Someone who edits either and forgets to apply it gets a hint in the answers that show that file's effect (list_gpus,
research_status) instead of a silent difference between the file and what the daemon does.
"""
from __future__ import annotations

import hashlib
from pathlib import Path


class FileStamp:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.digest = self._digest()

    def _digest(self) -> str | None:
        try:
            return hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError:          # missing or unreadable: a state of its own, compared like any other
            return None

    def changed(self) -> bool:
        return self._digest() != self.digest

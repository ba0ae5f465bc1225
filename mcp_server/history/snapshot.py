"""Keeping a read-only copy of the history fresh, so other processes can query it while the daemon owns it.

While one process holds the main file read-write, no other process can open it (see usersql.py). The snapshot is
a complete DuckDB file written aside and renamed into place, so a reader sees either the previous snapshot or
the new one, never a partial file, and readers holding the old one keep it until they close it.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from .store import History, SnapshotInfo

log = logging.getLogger(__name__)


class SnapshotWriter:
    """Refreshes `path` from `history` in a background thread: at most every `min_interval_s`, and only when a
    write committed since the last snapshot. `refresh_now()` brings it up to date at once (the query path
    calls it before serving SQL; it returns immediately when nothing changed).

    Writers wait while a "file" snapshot copies (~0.3 s for a 140 MB history of 10 M metric rows, ~ms for a
    small one), so the background interval also stretches to `IDLE_FACTOR` times the last snapshot's duration:
    writers then wait at most ~1/IDLE_FACTOR of the time, however large the history grows."""

    IDLE_FACTOR = 10

    def __init__(self, history: History, path: str | os.PathLike, min_interval_s: float = 2.0,
                 method: str = "file"):
        self.history = history
        self.path = Path(path)
        self.min_interval_s = min_interval_s
        self.method = method
        self.last: SnapshotInfo | None = None
        self.last_error: str | None = None
        self._lock = threading.Lock()          # one snapshot at a time
        self._wake = threading.Event()         # a write committed, or stop() was called
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._written_at = 0.0

    def start(self) -> "SnapshotWriter":
        """Write a first snapshot (the file on disk may be from an earlier run), then keep it fresh."""
        self.refresh_now(force=True)
        self.history.add_change_listener(self._wake.set)
        self._thread = threading.Thread(target=self._run, name="history-snapshot", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        self.history.remove_change_listener(self._wake.set)
        self._stop.set()
        self._wake.set()
        self._thread.join()
        self._thread = None

    def __enter__(self) -> "SnapshotWriter":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def dirty(self) -> bool:
        return self.last is None or self.history.generation > self.last.generation

    def refresh_now(self, force: bool = False, max_age_s: float = 0.0) -> SnapshotInfo | None:
        """Write a snapshot if anything changed since the last one (or `force`); return it, or None when the
        snapshot is clean or, with `max_age_s`, younger than that (bounded staleness instead of a copy per call
        on a large history)."""
        with self._lock:
            young = time.monotonic() - self._written_at < max_age_s
            if not force and (not self.dirty or young):
                return None
            try:
                self.last = self.history.write_snapshot(self.path, self.method)
            except Exception as e:
                self.last_error = f"{type(e).__name__}: {e}"
                raise
            self.last_error = None
            self._written_at = time.monotonic()
            return self.last

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            last_took = self.last.seconds if self.last else 0.0
            wait = self._written_at + max(self.min_interval_s, self.IDLE_FACTOR * last_took) - time.monotonic()
            if self._stop.is_set() or (wait > 0 and self._stop.wait(wait)):
                return
            try:
                self.refresh_now()
            except Exception:
                log.exception("history snapshot to %s failed; retrying in %.1f s", self.path, self.min_interval_s)
                self._written_at = time.monotonic()
                self._wake.set()

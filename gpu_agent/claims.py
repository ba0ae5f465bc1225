"""Atomic resource claims: holding <workdir>/claims/<resource> means owning that GPU or CPU slot.

A claim file is created whole or not at all: its content is written to a private temporary file that is then
hard-linked to the claim name. link() fails with EEXIST when the name exists, which gives the same exclusivity as
O_CREAT|O_EXCL, but a reader never sees an empty or half-written claim. A claim names the job and its supervisor
(pid + start time); a claim whose supervisor is dead is stale and is only released on request (release_stale),
never reused silently.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from . import procs
from .protocol import ClaimInfo, LedgerEntry

CLAIMS_DIR = "claims"
LEDGER_FILE = "claims.log"


def gpu_resource(index: int) -> str:
    return f"gpu{index}"


def cpu_resource(slot: int) -> str:
    return f"cpu{slot}"


class ClaimConflict(Exception):
    def __init__(self, message: str, holder: str | None = None) -> None:
        super().__init__(message)
        self.holder = holder


class Claims:
    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / CLAIMS_DIR
        self.ledger = workdir / LEDGER_FILE

    def acquire(self, resources: list[str], job_id: str, pid: int, start: int | None) -> None:
        """Claim every resource or none (raises ClaimConflict naming the first one held by someone else)."""
        body = json.dumps({"job_id": job_id, "supervisor_pid": pid, "supervisor_start": start,
                           "claimed_at": time.time()}).encode()
        tmp = self.dir / f".tmp-{job_id}-{pid}"
        with open(tmp, "wb") as f:
            f.write(body)
        taken: list[str] = []
        try:
            for resource in resources:
                try:
                    os.link(tmp, self.dir / resource)
                except FileExistsError:
                    holder = str((self._read(resource) or {}).get("job_id", "?"))
                    self._unlink(taken)
                    raise ClaimConflict(f"{resource} is held by job {holder}", holder) from None
                taken.append(resource)
        finally:
            tmp.unlink()

    def acquire_cpu_slot(self, slots: int, job_id: str, pid: int, start: int | None) -> str:
        for slot in range(slots):
            try:
                self.acquire([cpu_resource(slot)], job_id, pid, start)
                return cpu_resource(slot)
            except ClaimConflict:
                continue
        raise ClaimConflict(f"no free CPU slot: all {slots} are held")

    def record(self, op: str, resources: list[str], job_id: str) -> None:
        """Append ledger lines; O_APPEND keeps each line whole and in order across processes."""
        now = time.time()
        lines = "".join(json.dumps(LedgerEntry(t=now, op=op, resource=r, job_id=job_id, pid=os.getpid())) + "\n"
                        for r in resources)
        fd = os.open(self.ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, lines.encode())
        finally:
            os.close(fd)

    def release(self, resources: list[str], job_id: str) -> list[str]:
        """Ledger first, then the files: a resource's next acquire line always follows this release line."""
        mine = [r for r in resources if (self._read(r) or {}).get("job_id") == job_id]
        if mine:
            self.record("release", mine, job_id)
            self._unlink(mine)
        return mine

    def rollback(self, resources: list[str]) -> None:
        """Drop claims taken moments ago for a launch that did not happen (no ledger lines were written)."""
        self._unlink(resources)

    def list(self) -> list[ClaimInfo]:
        try:
            names = sorted(n for n in os.listdir(self.dir) if not n.startswith("."))
        except FileNotFoundError:
            return []
        claims = []
        for name in names:
            raw = self._read(name)
            if raw is None:
                continue    # released while we listed
            pid = raw.get("supervisor_pid")
            claims.append(ClaimInfo(resource=name, job_id=str(raw.get("job_id", "?")), supervisor_pid=pid,
                                    stale=not procs.alive(pid, raw.get("supervisor_start")),
                                    claimed_at=raw.get("claimed_at")))
        return claims

    def held_by(self, job_id: str) -> list[ClaimInfo]:
        return [c for c in self.list() if c["job_id"] == job_id]

    def _read(self, resource: str) -> dict | None:
        try:
            return json.loads((self.dir / resource).read_bytes())
        except FileNotFoundError:
            return None
        except ValueError:
            return {}       # not ours (hand-made?): reported with job "?" and stale, never silently reused

    def _unlink(self, resources: list[str]) -> None:
        for resource in resources:
            try:
                (self.dir / resource).unlink()
            except FileNotFoundError:
                pass


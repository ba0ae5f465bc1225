"""Reading a job's output.log back, bounded: the last N lines, or forward from a byte offset."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import AgentRefusal
from .protocol import TailResult

BLOCK = 1 << 16


def tail(path: Path, job_id: str, lines: int, offset: int | None, max_bytes: int) -> TailResult:
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return TailResult(job_id=job_id, text="", offset=0, next_offset=0, size=0, truncated=False)
    with f:
        size = os.fstat(f.fileno()).st_size
        if offset is None:
            start, data = _last_lines(f, size, lines, max_bytes)
            end = size
        else:
            if offset > size:
                raise AgentRefusal("bad_request", f"tail: offset {offset} is past the end of the log ({size} bytes)")
            f.seek(offset)
            data = f.read(min(max_bytes, size - offset))
            start, end = offset, offset + len(data)
            cut = data.rfind(b"\n")
            if end < size and cut >= 0:
                # Stop at a line end so the next call starts on a line (and never inside a UTF-8 character).
                data = data[:cut + 1]
                end = start + len(data)
    return TailResult(job_id=job_id, text=data.decode("utf-8", "replace"), offset=start, next_offset=end,
                      size=size, truncated=start > 0 if offset is None else end < size)


def _last_lines(f, size: int, lines: int, max_bytes: int) -> tuple[int, bytes]:
    """Read backwards by blocks until the newline before the first wanted line (or max_bytes) is in hand."""
    # A final newline ends the last line rather than starting another one.
    need = lines + (1 if size and _last_byte(f, size) == b"\n" else 0)
    start, data = size, b""
    while start > 0 and data.count(b"\n") < need and len(data) < max_bytes:
        step = min(BLOCK, start)
        start -= step
        f.seek(start)
        data = f.read(step) + data
    cut = len(data)
    for _ in range(need):
        cut = data.rfind(b"\n", 0, cut)
        if cut < 0:
            break
    cut = cut + 1 if cut >= 0 else 0
    if len(data) - cut > max_bytes:
        cut = len(data) - max_bytes
        line_start = data.find(b"\n", cut, len(data) - 1)
        cut = line_start + 1 if line_start >= 0 else cut
    return start + cut, data[cut:]


def _last_byte(f, size: int) -> bytes:
    f.seek(size - 1)
    return f.read(1)

"""Metrics in a job's output: parsed by the supervisor as the bytes stream by (in bounded memory) into
metrics.jsonl, and read back from there by the metrics op.

Two forms (DESIGN.md, "Metrics protocol"):
- a line `@arc {json object}`: one record, source "marker";
- autoresearch's final block: a line exactly `---`, then `key: value` lines; the block ends at the first other line
  or at the end of output and becomes one record, source "summary". Numbers become int/float, other values stay text.
A malformed line is skipped (it stays in the log). Lines longer than MAX_LINE_BYTES are skipped without being held
in memory. A carriage return also ends a line, so a marker after a progress bar's `\\r` redraws is still seen.
Non-finite numbers (nan, inf) are kept as strings so every record is strict JSON.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Callable

from .protocol import METRIC_MARKER, MetricRecord, MetricsResult

MAX_LINE_BYTES = 64 * 1024
_MARKER = METRIC_MARKER.encode()
_KEY_VALUE = re.compile(rb"([A-Za-z_][A-Za-z0-9_.\-/]*)[ \t]*:[ \t]*(.*)")
_INT = re.compile(r"[+-]?\d+")

Emit = Callable[[str, dict[str, Any]], None]


class MetricsParser:
    def __init__(self, emit: Emit) -> None:
        self._emit = emit
        self._partial = bytearray()
        self._overlong = False          # the line being assembled passed MAX_LINE_BYTES: drop it whole
        self._block: dict[str, Any] | None = None

    def feed(self, chunk: bytes) -> None:
        *complete, rest = chunk.split(b"\n")
        for i, piece in enumerate(complete):
            if i == 0:
                self._hold(piece)
                piece, self._overlong = (None if self._overlong else bytes(self._partial)), False
                self._partial.clear()
            elif len(piece) > MAX_LINE_BYTES:
                piece = None
            self._line(piece)
        self._hold(rest)

    def close(self) -> None:
        """End of output: the unterminated last line counts, and an open summary block is emitted."""
        if self._partial or self._overlong:
            self._line(None if self._overlong else bytes(self._partial))
        self._partial.clear()
        self._overlong = False
        self._end_block()

    def _hold(self, piece: bytes) -> None:
        if self._overlong:
            return
        if len(self._partial) + len(piece) > MAX_LINE_BYTES:
            self._overlong = True
            self._partial.clear()
        else:
            self._partial += piece

    def _line(self, line: bytes | None) -> None:
        if line is None:
            self._end_block()
            return
        for segment in line.split(b"\r"):
            self._segment(segment.rstrip())

    def _segment(self, text: bytes) -> None:
        if self._block is not None:
            kv = _KEY_VALUE.fullmatch(text)
            if kv:
                self._block[kv[1].decode()] = _value(kv[2].decode("utf-8", "replace"))
                return
            self._end_block()
        if text == b"---":
            self._block = {}
        elif text.startswith(_MARKER):
            try:
                data = json.loads(text[len(_MARKER):])
            except ValueError:
                return
            if isinstance(data, dict):
                self._emit("marker", _finite(data))

    def _end_block(self) -> None:
        if self._block:
            self._emit("summary", self._block)
        self._block = None


def _value(raw: str) -> Any:
    if _INT.fullmatch(raw):
        return int(raw)
    try:
        number = float(raw)
    except ValueError:
        return raw
    return number if math.isfinite(number) else raw


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def read_metrics(path: Path, job_id: str, from_seq: int, limit: int, max_bytes: int) -> MetricsResult:
    """Records from seq `from_seq` on; only complete lines (the supervisor may be writing the last one)."""
    records: list[MetricRecord] = []
    size, more = 0, False
    try:
        with open(path, "rb") as f:
            for seq, line in enumerate(f):
                if seq < from_seq:
                    continue
                if not line.endswith(b"\n"):
                    break
                if len(records) >= limit or (records and size + len(line) > max_bytes):
                    more = True
                    break
                records.append(json.loads(line))
                size += len(line)
    except FileNotFoundError:
        pass
    return MetricsResult(job_id=job_id, records=records, next_seq=from_seq + len(records), more=more)

"""Metrics in a job's output: parsed by the supervisor as the bytes stream by (in bounded memory) into
metrics.jsonl, and read back from there by the metrics op.

Three forms (DESIGN.md, "Metrics protocol"):
- a line `@arc {json object}`: one record, source "marker";
- autoresearch's final block: a line exactly `---`, then `key: value` lines; the block ends at the first other line
  or at the end of output and becomes one record, source "summary". Numbers become int/float, other values stay text.
- autoresearch's progress line, `step 00042 (14.0%) | loss: 3.210000 | lrm: 1.00 | dt: 320ms | tok/sec: 1,646,117 |
  mfu: 39.8% | epoch: 1 | remaining: 258s`: one record, source "progress", its fields renamed to the names the
  trainer's own markers use (PROGRESS_FIELDS), so an unmodified autoresearch train.py gives the same curves.
A malformed line is skipped (it stays in the log). Lines longer than MAX_LINE_BYTES are skipped without being held
in memory. A carriage return ends a line as a newline does (CRLF counts once): autoresearch redraws its progress
line with `\\r` and prints no newline until training ends, so each redraw is read when the next one begins.
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
_EOL = re.compile(rb"\r\n?|\n")
_PROGRESS = re.compile(rb"step[ \t]+(\d+)[ \t]+\(([0-9.]+)%\)((?:[ \t]*\|[^|]*)*)")
_PROGRESS_NUMBER = re.compile(r"([+-]?[0-9][0-9,]*(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?)(ms|s|%)?")
# autoresearch's label -> (the trainer's marker name, the unit that label's number must carry)
PROGRESS_FIELDS: dict[str, tuple[str, str | None]] = {
    "loss": ("train_loss", None),
    "lrm": ("lr_mult", None),
    "dt": ("dt_ms", "ms"),
    "tok/sec": ("tok_per_s", None),
    "mfu": ("mfu_percent", "%"),
    "epoch": ("epoch", None),
    "remaining": ("remaining_s", "s"),
}

Emit = Callable[[str, dict[str, Any]], None]


class MetricsParser:
    def __init__(self, emit: Emit) -> None:
        self._emit = emit
        self._partial = bytearray()
        self._overlong = False          # the line being assembled passed MAX_LINE_BYTES: drop it whole
        self._block: dict[str, Any] | None = None
        self._after_cr = False          # the last chunk ended in \r: a \n opening the next one ends nothing more

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        if self._after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._after_cr = chunk.endswith(b"\r")
        *complete, rest = _EOL.split(chunk)
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
        text = line.rstrip()
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
        elif progress := _progress(text):
            self._emit("progress", progress)

    def _end_block(self) -> None:
        if self._block:
            self._emit("summary", self._block)
        self._block = None


def _progress(text: bytes) -> dict[str, Any] | None:
    """The numbers of an autoresearch progress line; None for any other line. A field it does not know, or one
    whose value is not a number in the expected unit, is left out rather than failing the line."""
    match = _PROGRESS.fullmatch(text.strip())
    if not match:
        return None
    record: dict[str, Any] = {"step": int(match[1]), "progress_percent": float(match[2])}
    for field in match[3].decode("utf-8", "replace").split("|")[1:]:
        label, _, raw = field.partition(":")
        known = PROGRESS_FIELDS.get(label.strip())
        number = _PROGRESS_NUMBER.fullmatch(raw.strip())
        if known is None or number is None or number[2] != known[1]:
            continue
        value = _value(number[1].replace(",", ""))
        if isinstance(value, (int, float)):
            record[known[0]] = value
    return record


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

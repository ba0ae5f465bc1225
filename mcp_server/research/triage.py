"""Why did a job fail? A classification from its exit (status, exit code, signal, reason) and its log tail, with a
one-line remedy, so the agent fixes the cause instead of resubmitting the same failure.

Checks run from the most specific evidence to the least: the controller's own verdicts (host lost, time limit,
cancelled), then the log's tell-tale lines (disk full, out of memory, a Python error in the code, a diverged loss),
then a plain "failed (exit N)" with the last line that looks like an error.
"""
from __future__ import annotations

import re
import signal as signals
from typing import Literal

from pydantic import BaseModel, ConfigDict

from ..core.vocabulary import JobStatus


Category = Literal["host_lost", "time_limit", "cancelled", "disk_full", "oom", "code_error", "nan", "killed", "failed"]

MAX_EVIDENCE = 200

_DISK_FULL = re.compile(r"No space left on device|ENOSPC|Disk quota exceeded", re.I)
_OOM = re.compile(r"CUDA out of memory|OutOfMemoryError|FAIL out of (GPU )?memory|\bMemoryError\b|"
                  r"Unable to allocate|can't allocate memory|Cannot allocate memory|std::bad_alloc|"
                  r"out of memory|oom-kill|Killed process", re.I | re.M)
_CODE = re.compile(r"^\s*(?:[\w.]+\.)?(SyntaxError|IndentationError|TabError|ImportError|ModuleNotFoundError)\b.*$",
                   re.M)
_FAIL = re.compile(r"^FAIL\b.*$", re.M)   # the trainer's verdict line (trainer/train.py)
_NAN = re.compile(r"^.*(?:loss|grad\w*)\W{0,4}(?:is\s+)?(?:nan|-?inf(?:inity)?)\b.*$", re.I | re.M)
_ERROR_LINE = re.compile(r"(error|exception|fail|fatal|abort|killed|denied)", re.I)


class Triage(BaseModel):
    model_config = ConfigDict(defer_build=True)
    category: Category
    summary: str            # one line: what happened
    remedy: str             # one line: what to do about it
    evidence: str | None = None   # the log line it rests on


def _line(text: str) -> str:
    text = text.strip()
    return text if len(text) <= MAX_EVIDENCE else text[:MAX_EVIDENCE - 3] + "..."


def _signal_name(number: int) -> str:
    try:
        return signals.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _last_error_line(log: str) -> str | None:
    lines = [ln for ln in log.splitlines() if ln.strip()]
    hits = [ln for ln in lines if _ERROR_LINE.search(ln)]
    return _line(hits[-1]) if hits else _line(lines[-1]) if lines else None


def _code_location(log: str) -> str:
    """' (File "x.py", line 12)' from the last traceback frame or SyntaxError header, if any."""
    frames = re.findall(r'File "([^"]+)", line (\d+)', log)
    return f" at {frames[-1][0].rsplit('/', 1)[-1]}:{frames[-1][1]}" if frames else ""


def triage(status: str, exit_code: int | None, signal: int | None, reason: str | None, log_tail: str) -> Triage:
    """Classify an ended job that did not succeed (status failed, timeout, lost or cancelled)."""
    reason = reason or ""
    log = log_tail or ""
    if status == JobStatus.LOST:
        return Triage(category="host_lost", summary=f"host lost: {reason or 'the host stopped answering'}",
                      remedy="rerun the job (rerun_job) on another host; list_gpus shows which hosts answer",
                      evidence=_line(reason) or None)
    if status == JobStatus.TIMEOUT or re.search(r"time limit", reason, re.I):
        return Triage(category="time_limit", summary=f"killed at the time limit ({reason or 'timeout'})",
                      remedy="if it was still making progress raise time_limit_s (within hard_limit_s) or lower "
                             "the time budget; if its log went quiet, look for a hang (tail_log)",
                      evidence=_last_error_line(log))
    if status == JobStatus.CANCELLED:
        return Triage(category="cancelled", summary=f"cancelled ({reason or 'by request'})",
                      remedy="nothing to fix; resubmit if it is still wanted", evidence=None)
    if m := _DISK_FULL.search(log):
        return Triage(category="disk_full", summary="disk full on the host",
                      remedy="free space in the host's workdir (old job folders, caches) or run elsewhere",
                      evidence=_line(_line_at(log, m.start())))
    if m := _OOM.search(log + "\n" + reason):
        gpu = re.search(r"CUDA|GPU", _line_at(log + "\n" + reason, m.start()))
        return Triage(category="oom", summary=f"out of {'GPU' if gpu else 'host'} memory",
                      remedy="lower device_batch_size (or the model size: depth, aspect_ratio, seq_len)" if gpu else
                             "lower the memory the job needs (device_batch_size, data held in RAM) or run on a host "
                             "with more memory",
                      evidence=_line(_line_at(log + "\n" + reason, m.start())))
    if m := _CODE.search(log):
        kind = m.group(1)
        where = _code_location(log)
        fix = "install the missing module on the host or fix the import" if "Import" in kind or "Module" in kind \
            else "fix the syntax"
        return Triage(category="code_error", summary=f"{kind}{where}: the code did not start",
                      remedy=f"{fix} in the code snapshot, then resubmit (diff_jobs shows what changed)",
                      evidence=_line(m.group(0)))
    if m := _FAIL.search(log) or _NAN.search(log):
        return Triage(category="nan", summary="the loss diverged (NaN or exploding)",
                      remedy="lower the learning rates (matrix_lr, embedding_lr, ...) or raise warmup_ratio",
                      evidence=_line(m.group(0)))
    last = _last_error_line(log)
    if signal:
        name = _signal_name(signal)
        hint = " (with no other cause in the log, often the kernel's out-of-memory killer)" \
            if signal == signals.SIGKILL else ""
        return Triage(category="killed", summary=f"killed by {name}{hint}",
                      remedy="check the host's memory (and dmesg) and whether anything else kills processes there",
                      evidence=last)
    return Triage(category="failed", summary=f"failed (exit {exit_code})" + (f": {last}" if last else ""),
                  remedy="read the log around the last error (tail_log with grep) and fix the cause",
                  evidence=last)


def _line_at(text: str, pos: int) -> str:
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    return text[start:end if end >= 0 else len(text)]

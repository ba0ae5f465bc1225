"""What differs between two jobs: their settings (config overrides, seed, budget, command) and their code snapshots
(`<state>/code/<sha256>/`, see code_store.py), as a file list first and then a unified diff bounded in lines."""
from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict


MAX_DIFF_LINES = 300
UNSET = "(unset)"


class JobDiff(BaseModel):
    model_config = ConfigDict(defer_build=True)
    summary: str
    a: str
    b: str
    settings: list[str]                 # "key: a -> b"
    code_same: bool | None = None       # None: a snapshot is missing (or a job has none)
    files: list[str] = []               # "M trainer/train.py (+3 -1)", "A new.py", "D old.py"
    diff: str = ""
    truncated: bool = False


def _show(value: Any) -> str:
    return UNSET if value is None else json.dumps(value, sort_keys=True) if not isinstance(value, str) else value


def settings_changes(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    changes = []
    ca, cb = a.get("config") or {}, b.get("config") or {}
    for key in sorted(set(ca) | set(cb)):
        if ca.get(key) != cb.get(key):
            changes.append(f"config.{key}: {_show(ca.get(key))} -> {_show(cb.get(key))}")
    for key in ("seed", "time_budget_s", "gpu_class", "kind"):
        if a.get(key) != b.get(key):
            changes.append(f"{key}: {_show(a.get(key))} -> {_show(b.get(key))}")
    if (a.get("kind") == "command" or b.get("kind") == "command") and a.get("argv") != b.get("argv"):
        changes.append(f"command: {_show(a.get('argv'))} -> {_show(b.get('argv'))}")
    return changes


def _files(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


def _text(path: Path) -> list[str] | None:
    data = path.read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8").splitlines(keepends=True)
    except UnicodeDecodeError:
        return None


def code_changes(root_a: Path, root_b: Path, max_lines: int = MAX_DIFF_LINES) -> tuple[list[str], str, bool]:
    """(file list, unified diff, truncated) from snapshot folder a to b."""
    fa, fb = _files(root_a), _files(root_b)
    files, chunks = [], []
    for name in sorted(set(fa) | set(fb)):
        if name not in fb:
            files.append(f"D {name}")
            continue
        if name in fa and fa[name].read_bytes() == fb[name].read_bytes():
            continue
        mark = "M" if name in fa else "A"
        old, new = _text(fa[name]) if name in fa else [], _text(fb[name])
        if old is None or new is None:
            files.append(f"{mark} {name} (binary)")
            continue
        lines = list(difflib.unified_diff(old, new, f"a/{name}", f"b/{name}", n=3))
        added = sum(1 for ln in lines if ln.startswith("+") and not ln.startswith("+++"))
        removed = sum(1 for ln in lines if ln.startswith("-") and not ln.startswith("---"))
        files.append(f"{mark} {name} (+{added} -{removed})")
        chunks.extend(ln if ln.endswith("\n") else ln + "\n" for ln in lines)
    truncated = len(chunks) > max_lines
    text = "".join(chunks[:max_lines])
    if truncated:
        text += f"... {len(chunks) - max_lines} more diff lines (raise max_lines to see them)\n"
    return files, text, truncated


def diff_jobs(a: Mapping[str, Any], b: Mapping[str, Any], code_store_root: Path,
              max_lines: int = MAX_DIFF_LINES) -> JobDiff:
    """Differences from job row `a` to job row `b` (rows as History.get_job returns them)."""
    ja, jb = a["job_id"], b["job_id"]
    settings = settings_changes(a, b)
    ha, hb = a.get("code_hash"), b.get("code_hash")
    result = JobDiff(summary="", a=ja, b=jb, settings=settings)
    if ha and ha == hb:
        result.code_same = True
    elif ha and hb:
        ra, rb = Path(code_store_root) / ha, Path(code_store_root) / hb
        missing = [f"{j}'s snapshot {h[:12]}" for j, h, r in ((ja, ha, ra), (jb, hb, rb)) if not r.is_dir()]
        if missing:
            result.files = [f"missing on this controller: {', '.join(missing)}"]
        else:
            result.files, result.diff, result.truncated = code_changes(ra, rb, max_lines)
            result.code_same = not result.files
    else:
        result.files = [f"{j} has no code snapshot" for j, h in ((ja, ha), (jb, hb)) if not h]
    code = "same code" if result.code_same else \
        f"{len(result.files)} file(s) differ" if result.code_same is False else "code not comparable"
    result.summary = f"{ja} -> {jb}: {len(settings)} setting(s) differ, {code}"
    return result

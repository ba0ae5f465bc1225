"""Turning what a host agent reports (JobState + metric records) into history rows.

Pure functions: `History.ingest` reads the job's row, calls `plan_ingest`, and writes what it returns in one
transaction. A record becomes one metric row per numeric key (except `step`, which labels the others); booleans and
other non-numeric values go to `jobs.info`; a summary record (autoresearch's `---` block) is also kept whole in
`jobs.summary`, and its numeric values are metric rows with a NULL step. Records whose seq is at or below the
job's high-water mark (`jobs.metrics_seq`) were ingested before and are skipped, which makes ingestion idempotent:
the agent numbers records 0, 1, 2, … in the order it wrote them, so the caller asks for records after that mark.
"""
from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..core.vocabulary import TERMINAL_STATUSES
from .values import from_json, to_json, utc


@dataclass
class MetricRows:
    """Column lists, ready for an Arrow insert into `metrics`."""
    job_id: list[str] = field(default_factory=list)
    seq: list[int] = field(default_factory=list)
    t: list[dt.datetime | None] = field(default_factory=list)
    step: list[int | None] = field(default_factory=list)
    name: list[str] = field(default_factory=list)
    value: list[float] = field(default_factory=list)

    def add(self, job_id: str, seq: int, t: dt.datetime | None, step: int | None, name: str, value: float) -> None:
        self.job_id.append(job_id)
        self.seq.append(seq)
        self.t.append(t)
        self.step.append(step)
        self.name.append(name)
        self.value.append(value)

    def __len__(self) -> int:
        return len(self.name)


@dataclass
class IngestPlan:
    metrics: MetricRows
    job_fields: dict[str, Any]      # only the columns whose value changes
    status_reason: str | None       # reason for the status event, when status changes


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _summary_number(value: Any) -> float | None:
    """A summary value as a number: the agent may pass autoresearch's `key: value` text unparsed."""
    if _is_number(value):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def plan_ingest(job: Mapping[str, Any], state: Mapping[str, Any] | None,
                records: Sequence[Mapping[str, Any]]) -> IngestPlan:
    """What ingesting `state` and `records` changes in `job` (a row as `History.get_job` returns it)."""
    job_id = job["job_id"]
    high_water = job["metrics_seq"]
    rows = MetricRows()
    summary = dict(job["summary"] or {})
    info = dict(job["info"] or {})
    primary = job["primary_metric"]
    latest_primary: float | None = None
    last_t: dt.datetime | None = None

    for record in sorted(records, key=lambda r: r["seq"]):
        seq = int(record["seq"])
        if seq <= high_water:
            continue
        high_water = seq
        t = utc(record.get("t"))
        if t is not None and (last_t is None or t > last_t):
            last_t = t
        data = record.get("data") or {}
        if record.get("source") == "summary":
            summary.update(data)
            for name, value in data.items():
                number = _summary_number(value)
                if number is not None:
                    rows.add(job_id, seq, t, None, name, number)
            continue
        step_value = data.get("step")
        step = int(step_value) if _is_number(step_value) and math.isfinite(step_value) else None
        for name, value in data.items():
            if name == "step" and step is not None:
                continue
            if _is_number(value):
                rows.add(job_id, seq, t, step, name, float(value))
                if name == primary:
                    latest_primary = float(value)
            else:
                info[name] = value

    wanted: dict[str, Any] = {"metrics_seq": high_water}
    if summary:
        summary = wanted["summary"] = from_json(to_json(summary))   # as stored, so a re-ingest compares equal
    if info:
        wanted["info"] = from_json(to_json(info))
    summary_primary = _summary_number(summary.get(primary))
    if summary_primary is not None:
        wanted["primary_value"] = summary_primary
    elif latest_primary is not None:
        wanted["primary_value"] = latest_primary
    if last_t is not None and (job["last_output_at"] is None or last_t > job["last_output_at"]):
        wanted["last_output_at"] = last_t

    status_reason = None
    if state:
        wanted.update(_from_state(job, state))
        if state.get("status") in TERMINAL_STATUSES and state["status"] != job["status"]:
            wanted["status"] = state["status"]
            status_reason = state.get("reason") or f"host reported {state['status']}"

    changed = {k: v for k, v in wanted.items() if not _same(job.get(k), v)}
    if "status" not in changed:
        status_reason = None
    return IngestPlan(rows, changed, status_reason)


def _from_state(job: Mapping[str, Any], state: Mapping[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for key in ("exit_code", "signal", "reason", "log_bytes"):
        if state.get(key) is not None:
            fields[key] = state[key]
    started, ended = utc(state.get("started_at")), utc(state.get("ended_at"))
    if started is not None:
        fields["started_at"] = started
    if ended is not None:
        fields["ended_at"] = ended
    if state.get("gpus"):
        fields["gpu_indices"] = list(state["gpus"])
    if state.get("gpu_uuids"):
        fields["gpu_uuids"] = list(state["gpu_uuids"])
    gpu_count = len(state.get("gpus") or state.get("gpu_uuids") or job.get("gpu_indices") or [])
    if started is not None and ended is not None:
        fields["gpu_seconds"] = max(0.0, (ended - started).total_seconds()) * gpu_count
    return fields


def _same(old: Any, new: Any) -> bool:
    if isinstance(old, float) and isinstance(new, float) and math.isnan(old) and math.isnan(new):
        return True
    return old == new

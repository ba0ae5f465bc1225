"""What the history holds, for people and the agent writing SQL: read from the catalog (tables, views, columns
and their `COMMENT`s), plus example queries that run as written on any history."""
from __future__ import annotations

from typing import Any

import duckdb

from ..core.gpu_classes import gpu_class
from ..core.vocabulary import FAILED_STATUSES, JobStatus, sql_list
from .schema import INTERNAL_TABLES


# Values as the history holds them: a class is what placement stamps on jobs and inventory on gpus.
_OK = f"status = '{JobStatus.SUCCEEDED}'"
_H100 = gpu_class("NVIDIA H100 80GB HBM3")

EXAMPLES: list[dict[str, str]] = [
    {"title": "best val_bpb per GPU class",
     "sql": "SELECT gpu_class, min(val_bpb) AS best_val_bpb, arg_min(job_id, val_bpb) AS job_id, count(*) AS runs\n"
            f"FROM runs WHERE {_OK} AND val_bpb IS NOT NULL\n"
            "GROUP BY gpu_class ORDER BY best_val_bpb"},
    {"title": "top 10 runs within one GPU class",
     "sql": "SELECT job_id, val_bpb, seed, config, hypothesis_id FROM runs\n"
            f"WHERE {_OK} AND gpu_class = '{_H100}' ORDER BY val_bpb LIMIT 10"},
    {"title": "one job's training-loss curve",
     "sql": "SELECT step, value AS train_loss FROM metrics\n"
            "WHERE job_id = 'j1' AND name = 'train_loss' ORDER BY seq"},
    {"title": "the jobs that test a hypothesis",
     "sql": "SELECT r.job_id, r.status, r.gpu_class, r.val_bpb, r.config\n"
            "FROM hypothesis_jobs hj JOIN runs r USING (job_id) WHERE hj.hyp_id = 'h1' ORDER BY r.val_bpb"},
    {"title": "failures by reason",
     "sql": "SELECT status, coalesce(reason, 'exit code ' || exit_code) AS why, count(*) AS jobs\n"
            f"FROM jobs WHERE status IN ({sql_list(FAILED_STATUSES)}) GROUP BY ALL ORDER BY jobs DESC"},
    {"title": "GPU-hours per host",
     "sql": "SELECT host, round(sum(gpu_seconds) / 3600, 2) AS gpu_hours, count(*) AS jobs\n"
            "FROM jobs WHERE gpu_seconds IS NOT NULL GROUP BY host ORDER BY gpu_hours DESC"},
    {"title": "effect of one config value (mean val_bpb per matrix_lr)",
     "sql": "SELECT config ->> 'matrix_lr' AS matrix_lr, avg(val_bpb) AS mean_val_bpb, count(*) AS runs FROM runs\n"
            f"WHERE {_OK} GROUP BY matrix_lr ORDER BY mean_val_bpb"},
    {"title": "what happened in the last hour",
     "sql": "SELECT t, job_id, kind, old_status, new_status, reason FROM events\n"
            "WHERE t > now() - INTERVAL 1 HOUR ORDER BY event_id DESC LIMIT 20"},
]

NOTES = [
    "One SELECT (or WITH ... SELECT) per query, read-only; results are capped, long queries are stopped.",
    "Timestamps are TIMESTAMPTZ in UTC: compare with now() - INTERVAL 1 HOUR.",
    "JSON columns (config, summary, info, requirements, env, data): config ->> 'matrix_lr' gives text; "
    "TRY_CAST(config ->> 'matrix_lr' AS DOUBLE) a number.",
    "Compare runs within one gpu_class: identical configs score differently on different GPUs.",
]


def describe_history(cur: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """{"relations": [{"name", "kind", "doc", "columns": {name: "TYPE: meaning"}}], "examples", "notes"}."""
    relations = cur.execute("""
        SELECT table_name, 'table', comment FROM duckdb_tables() WHERE schema_name = 'main'
        UNION ALL
        SELECT view_name, 'view', comment FROM duckdb_views() WHERE schema_name = 'main' AND NOT internal
        ORDER BY 2, 1""").fetchall()
    columns: dict[str, list[tuple[str, str, str | None]]] = {}
    for table, column, data_type, doc in cur.execute("""
            SELECT table_name, column_name, data_type, comment FROM duckdb_columns()
            WHERE schema_name = 'main' ORDER BY table_name, column_index""").fetchall():
        columns.setdefault(table, []).append((column, data_type, doc))
    job_docs = {c: d for c, _, d in columns.get("jobs", [])}
    out = []
    for name, kind, doc in relations:
        if name in INTERNAL_TABLES:
            continue
        out.append({"name": name, "kind": kind, "doc": doc or "", "columns": {
            c: f"{_short_type(t)}: {d or job_docs.get(c) or ''}".rstrip(": ") for c, t, d in columns.get(name, [])}})
    return {"relations": out, "examples": EXAMPLES, "notes": NOTES}


def _short_type(data_type: str) -> str:
    return data_type.replace("TIMESTAMP WITH TIME ZONE", "TIMESTAMPTZ")

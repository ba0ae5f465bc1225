"""arc's history: one DuckDB file of jobs, metrics, events, hosts, GPUs and hypotheses.

- `History`: the read-write owner (one per process; thread-safe, one cursor per thread).
- `SnapshotWriter`: keeps a read-only copy fresh for other processes while the owner runs.
- `run_user_sql`: serves one read-only SELECT from a person or the agent, bounded in rows and time.
- `describe_history` / `History.describe()`: tables, columns and example queries for whoever writes SQL.
"""
from .describe import EXAMPLES, describe_history
from .schema import (HYPOTHESIS_STATUSES, JOB_KINDS, JOB_STATUSES, MIGRATIONS, SUMMARY_COLUMNS,
                     TERMINAL_JOB_STATUSES, Migration)
from .snapshot import SnapshotWriter
from .store import History, HistoryBusyError, HistoryError, SnapshotInfo, gpu_class_of
from .usersql import UserSqlError, UserSqlResult, run_user_sql

__all__ = [
    "History", "HistoryError", "HistoryBusyError", "SnapshotInfo", "SnapshotWriter", "gpu_class_of",
    "run_user_sql", "UserSqlError", "UserSqlResult", "describe_history", "EXAMPLES",
    "JOB_STATUSES", "TERMINAL_JOB_STATUSES", "HYPOTHESIS_STATUSES", "JOB_KINDS", "SUMMARY_COLUMNS",
    "MIGRATIONS", "Migration",
]

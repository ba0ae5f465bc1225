"""arc's history: one DuckDB file of jobs, metrics, events, hosts, GPUs and hypotheses.

- `History`: the read-write owner (one per process; thread-safe, one cursor per thread).
- `SnapshotWriter`: keeps a read-only copy fresh for other processes while the owner runs.
- `run_user_sql`: serves one read-only SELECT from a person or the agent, bounded in rows and time.
- `describe_history` / `History.describe()`: tables, columns and example queries for whoever writes SQL.
"""
from .describe import EXAMPLES, describe_history
from .schema import MIGRATIONS, SUMMARY_COLUMNS, Migration
from .snapshot import SnapshotWriter
from .store import History, HistoryBusyError, HistoryError, SnapshotInfo
from .usersql import UserSqlError, UserSqlResult, run_user_sql

__all__ = [
    "History", "HistoryError", "HistoryBusyError", "SnapshotInfo", "SnapshotWriter",
    "run_user_sql", "UserSqlError", "UserSqlResult", "describe_history", "EXAMPLES",
    "SUMMARY_COLUMNS", "MIGRATIONS", "Migration",
]

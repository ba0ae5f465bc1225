"""arc's history: one DuckDB file of jobs, metrics, events, hosts, GPUs and hypotheses.

- `History`: the read-write owner (one per process; thread-safe, one cursor per thread).
- `SnapshotWriter`: keeps a read-only copy fresh for other processes while the owner runs.
- `run_user_sql`: serves one read-only SELECT from a person or the agent, bounded in rows and time;
  `sql_worker.SqlWorkers` runs it for the daemon in processes whose memory is capped.
- `describe_history` / `History.describe()`: tables, columns and example queries for whoever writes SQL.
"""
from ..lazy import lazy_exports

# Each name is imported from its module on first use: importing one light part of this package loads no other.
__getattr__, __all__ = lazy_exports(__name__, {
    "EXAMPLES": ".describe",
    "describe_history": ".describe",
    "MIGRATIONS": ".schema",
    "SUMMARY_COLUMNS": ".schema",
    "Migration": ".schema",
    "SnapshotWriter": ".snapshot",
    "History": ".store",
    "JobChange": ".store",
    "HistoryBusyError": ".errors",
    "HistoryError": ".errors",
    "SnapshotInfo": ".store",
    "UserSqlError": ".usersql",
    "UserSqlResult": ".usersql",
    "run_user_sql": ".usersql",
})

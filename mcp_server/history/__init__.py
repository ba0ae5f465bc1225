"""arc's history: one DuckDB file of jobs, metrics, events, hosts, GPUs and hypotheses.

- `History`: the read-write owner (one per process; thread-safe, one cursor per thread).
- `SnapshotWriter`: keeps a read-only copy fresh for other processes while the owner runs.
- `run_user_sql`: serves one read-only SELECT from a person or the agent, bounded in rows and time.
- `describe_history` / `History.describe()`: tables, columns and example queries for whoever writes SQL.
"""
from __future__ import annotations

import importlib
from typing import Any

# Each name is imported from its module on first use (PEP 562), so that importing one light part of this package
# (a result model, a type) does not load the heavy ones: `arc --help` and `arc mcp` start without them.
_EXPORTS = {
    "EXAMPLES": ".describe",
    "describe_history": ".describe",
    "MIGRATIONS": ".schema",
    "SUMMARY_COLUMNS": ".schema",
    "Migration": ".schema",
    "SnapshotWriter": ".snapshot",
    "History": ".store",
    "HistoryBusyError": ".errors",
    "HistoryError": ".errors",
    "SnapshotInfo": ".store",
    "UserSqlError": ".usersql",
    "UserSqlResult": ".usersql",
    "run_user_sql": ".usersql",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value

"""Serving SQL written by people and the AI agent, without letting it write, read files or run forever.

Where it runs (measured, duckdb 2.0.1). While one process holds the file read-write, no other process can open
it, and inside that process no second instance can either: `duckdb.connect(path, read_only=True)` raises "Can't
open a connection to same database file with a different configuration than existing connections" and
`ATTACH ... (READ_ONLY)` from another instance raises "Unique file handle conflict". Running user SQL on the
owner's own instance is not safe: `enable_external_access=false` and `lock_configuration=true` apply to a whole
instance, and the owner needs file access (ATTACH for snapshots) and its settings. So:
- while the daemon owns the main file, user SQL runs on the snapshot it keeps (`SnapshotWriter`). The query path
  calls `refresh_now()` first, a no-op when nothing changed since the last snapshot, so answers are as fresh as
  the last commit (the snapshot costs ~ms on a small history, see bench/history_sql.py for 10 M metric rows);
- with no daemon, it runs on the main file itself, also while this process reads it through a read-only
  `History` (a read-only holder does not block another read-only instance).

How. A fresh in-memory instance (never DuckDB's per-path instance cache, which could hand back an instance still
reading a replaced snapshot) attaches the file read-only, then disables file access and locks its configuration,
so `read_csv`, `glob`, `COPY`, `ATTACH`, `INSTALL/LOAD` and `SET` fail even if the checks below missed
something. Exactly one statement, of type SELECT (`extract_statements`, before anything runs), inside a READ ONLY
transaction; rows pulled one at a time from a streaming result (a huge result is never built; an export,
`stream_user_sql`, pulls every row in batches); a watchdog thread calls `interrupt()` at the deadline. Memory and
threads of the instance are capped.

Bounded answers. The answer travels to the MCP client through `arc mcp`'s HTTP stream, which breaks on an event
over 1 MiB, and reaches a model that can read far less: each cell's text is cut to MAX_CELL_CHARS and rows stop
once the answer passes MAX_ANSWER_BYTES, and the result's `cut` says which. DuckDB's memory_limit does not cover
one string a function builds, so the daemon runs this in a worker process with an address-space limit
(sql_worker.py); strings over 4 GiB fail at once ("Cannot create a string of size"), which is explained below.
"""
from __future__ import annotations

import json
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import duckdb

from .values import from_json, jsonable

MAX_LIMIT = 10_000
MAX_CELL_CHARS = 2_000
MAX_ANSWER_BYTES = 200_000        # as JSON; well under the bridge's 1 MiB event and the client's 50,000 chars x 4
MAX_CUT_LISTED = 5
MAX_TIMEOUT_S = 300.0
# A query runs beside the daemon on the same machine: cap what it may take.
INSTANCE_CONFIG = {"memory_limit": "2GB", "threads": max(1, min(4, os.cpu_count() or 1))}

_REFUSALS = {
    "COPY": "COPY reads or writes files",
    "EXPORT": "EXPORT DATABASE writes files",
    "ATTACH": "ATTACH opens other database files",
    "DETACH": "DETACH changes the attached databases",
    "LOAD": "INSTALL/LOAD add extensions",
    "SET": "SET/RESET/USE change settings",
    "PRAGMA": "PRAGMA changes settings or reads files",
    "VARIABLE_SET": "SET VARIABLE changes session state",
    "INSERT": "INSERT writes", "UPDATE": "UPDATE writes", "DELETE": "DELETE writes",
    "CREATE": "CREATE writes", "DROP": "DROP writes", "ALTER": "ALTER writes",
    "MERGE_INTO": "MERGE writes", "VACUUM": "VACUUM writes", "ANALYZE": "ANALYZE writes",
    "CALL": "CALL runs procedures (use SELECT * FROM fn() for table functions)",
    "TRANSACTION": "transaction control is done for you",
}
_HOW = "send exactly one read-only SELECT (WITH ... SELECT is fine); describe_history lists tables and examples"


class UserSqlError(ValueError):
    """The query was refused or failed: the message says what was wrong and what to do."""


@dataclass(frozen=True)
class UserSqlResult:
    columns: list[str]
    rows: list[list[Any]]   # JSON-friendly values: ISO timestamps, floats, lists, dicts (JSON columns parsed)
    row_count: int          # rows returned (at most the limit)
    truncated: bool         # more rows existed than were returned (the limit, or the answer's byte bound)
    elapsed_s: float
    cut: str | None = None  # which cells were cut and whether rows were left out to bound the answer


def run_user_sql(db_path: str | os.PathLike, sql: str, limit: int = 50, timeout_s: float = 10.0) -> UserSqlResult:
    """Run one SELECT from a user or agent on the history file `db_path` (never one held read-write)."""
    if not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise UserSqlError(f"limit must be an integer from 1 to {MAX_LIMIT}, got {limit!r}")
    started = time.perf_counter()
    with _running(Path(db_path), sql, timeout_s) as con:
        json_columns = {i for i, d in enumerate(con.description) if str(d[1]) == "JSON"}
        rows, cut, more = _bounded_rows(con, [d[0] for d in con.description], json_columns, limit)
        return UserSqlResult([d[0] for d in con.description], rows, len(rows), more, time.perf_counter() - started,
                             cut)


def stream_user_sql(db_path: str | os.PathLike, sql: str, timeout_s: float = MAX_TIMEOUT_S,
                    batch: int = 1000) -> Iterator[list[Any]]:
    """Every row of one SELECT, with the same safety as run_user_sql and no row cap (an export: `arc sql --format
    csv`): first the column names, then each row, pulled `batch` rows at a time."""
    with _running(Path(db_path), sql, timeout_s) as con:
        json_columns = {i for i, d in enumerate(con.description) if str(d[1]) == "JSON"}
        yield [d[0] for d in con.description]
        while raw := con.fetchmany(batch):
            yield from ([jsonable(from_json(v) if i in json_columns else v) for i, v in enumerate(row)]
                        for row in raw)


@contextmanager
def _running(path: Path, sql: str, timeout_s: float) -> Iterator[duckdb.DuckDBPyConnection]:
    """The connection with `sql` executing under the watchdog, in a read-only transaction; DuckDB's errors while
    it runs or its rows are fetched become UserSqlErrors that say what to do."""
    if not 0 < timeout_s <= MAX_TIMEOUT_S:
        raise UserSqlError(f"timeout_s must be in (0, {MAX_TIMEOUT_S:g}], got {timeout_s!r}")
    if not sql or not sql.strip():
        raise UserSqlError(f"empty query: {_HOW}")
    con = _open(path)
    try:
        _check_one_select(con, sql)
        con.execute("BEGIN TRANSACTION READ ONLY")       # on this connection: USE does not carry to cursors
        with _Watchdog(con, timeout_s) as watchdog:
            try:
                con.execute(sql)
                yield con
            except duckdb.InterruptException:
                raise UserSqlError(f"query stopped after {timeout_s:g} s (time limit): filter more, aggregate, "
                                   "or add LIMIT") from None
            except duckdb.OutOfMemoryException:
                raise UserSqlError("the query needed more memory than a user query may use: aggregate, filter, or "
                                   "select fewer or shorter columns") from None
            except duckdb.PermissionException:
                raise UserSqlError("file access is disabled: query the history's tables and views only "
                                   "(read_csv, read_parquet, glob, COPY and ATTACH are refused)") from None
            except duckdb.Error as e:
                if watchdog.fired:
                    raise UserSqlError(f"query stopped after {timeout_s:g} s (time limit)") from None
                raise UserSqlError(_explain(e)) from None
    finally:
        con.close()


def _open(path: Path) -> duckdb.DuckDBPyConnection:
    if not path.exists():
        raise UserSqlError(f"no history at {path} yet: submit a job first, or check --state-dir")
    con = duckdb.connect(":memory:", config=INSTANCE_CONFIG)
    try:
        con.execute(f"ATTACH '{str(path).replace(chr(39), chr(39) * 2)}' AS history (READ_ONLY)")
    except duckdb.Error as e:
        con.close()
        raise UserSqlError(f"{path} is held read-write ({_short(e)}): while the arc daemon runs, query through "
                           "it (arc sql, query_results) or open its snapshot file") from None
    # TimeZone needs the ICU extension, loaded only once the instance exists; then lock everything.
    for statement in ("USE history", "SET GLOBAL TimeZone = 'UTC'", "SET GLOBAL enable_external_access = false",
                      "SET GLOBAL lock_configuration = true"):
        con.execute(statement)
    return con


def _check_one_select(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as e:
        raise UserSqlError(f"syntax error: {_explain(e)}") from None
    if len(statements) != 1:
        kinds = ", ".join(_kind(s) for s in statements) or "none"
        raise UserSqlError(f"exactly one statement is allowed, got {len(statements)} ({kinds}): {_HOW}")
    kind = _kind(statements[0])
    if kind != "SELECT":
        why = _REFUSALS.get(kind, f"{kind} is not a query")
        raise UserSqlError(f"refused: {why}; only SELECT is allowed here — {_HOW}")


def _kind(statement: Any) -> str:
    return str(statement.type).rsplit(".", 1)[-1]


def _bounded_rows(con: duckdb.DuckDBPyConnection, columns: list[str], json_columns: set[int], limit: int
                  ) -> tuple[list[list[Any]], str | None, bool]:
    """Up to `limit` rows, each cell's text within MAX_CELL_CHARS, the whole within MAX_ANSWER_BYTES; rows are
    fetched one by one, so no row after the one that crosses the bound becomes Python values. Returns (rows, what was cut,
    whether rows were left out)."""
    rows: list[list[Any]] = []
    cut_cells: list[str] = []
    size = 0
    while len(rows) < limit:
        raw = con.fetchone()
        if raw is None:
            return rows, _cut_note(cut_cells, None), False
        row, row_cuts = [], []
        for i, value in enumerate(raw):
            value = jsonable(from_json(value) if i in json_columns else value)
            text = value if isinstance(value, str) else None
            if isinstance(value, (list, dict)):
                text = json.dumps(value, separators=(",", ":"))
            if text is not None and len(text) > MAX_CELL_CHARS:
                row_cuts.append(f"row {len(rows) + 1} {columns[i]!r} ({len(text):,} chars)")
                value = text[:MAX_CELL_CHARS] + f"…[cut: {len(text):,} chars]"
            row.append(value)
        size += len(json.dumps(row, separators=(",", ":"), default=str).encode())
        if size > MAX_ANSWER_BYTES:
            if not rows:
                raise UserSqlError(f"one row takes {size // 1000:,} KB even with each cell cut to {MAX_CELL_CHARS:,} "
                                   f"characters; answers are bounded to {MAX_ANSWER_BYTES // 1000} KB: select fewer "
                                   "columns")
            return rows, _cut_note(cut_cells, len(rows)), True
        rows.append(row)
        cut_cells += row_cuts
    return rows, _cut_note(cut_cells, None), con.fetchone() is not None


def _cut_note(cut_cells: list[str], kept_rows: int | None) -> str | None:
    notes = []
    if cut_cells:
        listed = "; ".join(cut_cells[:MAX_CUT_LISTED]) + ("; …" if len(cut_cells) > MAX_CUT_LISTED else "")
        notes.append(f"{len(cut_cells)} cell(s) cut to {MAX_CELL_CHARS:,} characters ({listed}): select "
                     "substr(col, start, 2000) or length(col) to read them")
    if kept_rows is not None:
        notes.append(f"rows after row {kept_rows} left out to keep the answer under {MAX_ANSWER_BYTES // 1000} KB: "
                     "select fewer or shorter columns, or page with LIMIT/OFFSET")
    return "; ".join(notes) or None


def _explain(error: duckdb.Error, max_lines: int = 8, max_chars: int = 300) -> str:
    """DuckDB's message with its line structure kept, so that the caret under `LINE n:` still points at the
    token it blames, and what to do next."""
    lines = [line.rstrip()[:max_chars] for line in str(error).strip().splitlines() if line.strip()][:max_lines]
    pointed = any(line.lstrip().startswith("^") for line in lines)
    fix = "fix the query where the ^ points, then " if pointed else ""
    return "\n".join(lines) + f"\n{fix}{_HOW}"


def _short(error: BaseException, limit: int = 300) -> str:
    """DuckDB's message without its error-class prefix, on one line, bounded."""
    text = " ".join(line.strip() for line in str(error).strip().splitlines() if line.strip())
    return text if len(text) <= limit else text[:limit - 1] + "…"


class _Watchdog:
    """Interrupts the connection once the deadline passes, and again every 0.1 s until the query returns: an
    interrupt that lands before the query starts would otherwise be lost."""

    def __init__(self, con: duckdb.DuckDBPyConnection, timeout_s: float):
        self._con, self._timeout_s = con, timeout_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="user-sql-watchdog", daemon=True)
        self.fired = False

    def _run(self) -> None:
        if self._done.wait(self._timeout_s):
            return
        while not self._done.is_set():
            self.fired = True
            self._con.interrupt()
            self._done.wait(0.1)

    def __enter__(self) -> "_Watchdog":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

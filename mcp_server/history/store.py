"""`History`: the one read-write owner of the DuckDB history file.

One process (the daemon, or the CLI when no daemon runs) opens the file through this class and uses it from many
threads. Each thread gets its own cursor (`cursor()`); a DuckDB connection shared by threads refuses concurrent
calls. Every write goes through `transaction()`, which also serialises writers inside the process: status
compare-and-set and the snapshot's checkpoint-and-copy rely on no other write being in flight. Reads run
concurrently without the lock (MVCC). Bulk rows go in as Arrow tables, never `executemany` (~650 rows/s).

The owning process must never open and close the history file by other means (hashing it, copying it with
shutil, `open(path)`): DuckDB's lock is a POSIX record lock, which the OS releases when the process closes any
descriptor of that file, after which another process can open it (measured). `write_snapshot` copies through a
descriptor held for the History's lifetime for that reason.
"""
from __future__ import annotations

import os
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import duckdb
import pyarrow as pa

from ..core.gpu_classes import gpu_class
from ..core.vocabulary import DECISION_KINDS, HYPOTHESIS_STATUSES, JOB_KINDS, JOB_STATUSES, HypothesisStatus, JobStatus
from .describe import describe_history
from .errors import HistoryBusyError, HistoryError
from .ingest import plan_ingest
from .schema import migrate
from .values import first_row, from_json, now, to_json, utc


DEFAULT_PRIMARY_METRIC = "val_bpb"
JOB_ORDER_COLUMNS = frozenset({"job_num", "submitted_at", "started_at", "ended_at", "updated_at",
                               "primary_value", "priority", "status", "host", "gpu_class"})
_JOB_ID = re.compile(r"^j([1-9][0-9]*)$")

# Paths held by a History in this process: a second one on the same file would share DuckDB's cached instance
# but not the write lock, breaking compare-and-set and consistent snapshots.
_open_paths: set[Path] = set()
_open_paths_lock = threading.Lock()


@dataclass(frozen=True)
class SnapshotInfo:
    path: Path
    method: str          # "file": checkpoint + file copy; "copy": ATTACH + COPY FROM DATABASE
    seconds: float
    bytes: int
    generation: int      # History.generation the snapshot contains (at least)


def _arrow_type(sql_type: str) -> pa.DataType:
    if sql_type.endswith("[]"):
        return pa.list_(_arrow_type(sql_type[:-2]))
    return {
        "VARCHAR": pa.string(), "JSON": pa.string(), "BIGINT": pa.int64(), "INTEGER": pa.int32(),
        "DOUBLE": pa.float64(), "BOOLEAN": pa.bool_(), "TIMESTAMP WITH TIME ZONE": pa.timestamp("us", tz="UTC"),
    }[sql_type]


@dataclass(frozen=True)
class JobChange:
    """One job's compare-and-set for `History.update_jobs`: set `fields` if its status is (one of) `expect_status`
    (None: whatever it is); a status change records an event with `reason` and `event` as its data."""
    job_id: str
    fields: Mapping[str, Any]
    expect_status: str | Sequence[str] | None = None
    reason: str | None = None
    event: Any = None

    def expected(self) -> set[str] | None:
        status = self.expect_status
        return None if status is None else {status} if isinstance(status, str) else set(status)


@dataclass
class _Grouped:
    """A change waiting in `update_job_grouped`, and what became of it."""
    change: JobChange
    done: threading.Event = field(default_factory=threading.Event)
    result: bool | BaseException = False     # applied, or why the batch failed


class History:
    """`read_only=True`: for reading a history no process holds read-write (the CLI with no daemon running);
    writes are refused, and the file must exist and be at the current schema version."""

    def __init__(self, path: str | os.PathLike, read_only: bool = False):
        self.path = Path(path).expanduser().resolve()
        self.read_only = read_only
        if read_only and not self.path.exists():
            raise HistoryError(f"no history at {self.path} yet: submit a job first, or check --state-dir")
        with _open_paths_lock:
            if self.path in _open_paths:
                raise HistoryBusyError(f"{self.path} is already open in this process: share that History object")
            _open_paths.add(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._con = duckdb.connect(str(self.path), read_only=read_only)
        except duckdb.IOException as e:
            with _open_paths_lock:
                _open_paths.discard(self.path)
            raise HistoryBusyError(f"history {self.path} is held by another process ({_first_line(e)}); "
                                   "talk to the arc daemon that owns it, or query its snapshot") from e
        except BaseException:
            with _open_paths_lock:
                _open_paths.discard(self.path)
            raise
        # DuckDB's lock on the file is a POSIX record lock, which the OS drops when the process closes ANY
        # descriptor of the file (measured: after open()+close() of the file elsewhere in this process, another
        # process could open it). So the snapshot reads through this one descriptor, closed only after DuckDB.
        self._fd = os.open(self.path, os.O_RDONLY)
        self._local = threading.local()
        self._write_lock = threading.RLock()
        self._grouped: list[_Grouped] = []        # update_job_grouped's queue
        self._grouped_lock = threading.Lock()
        self._group_writing = False               # a thread is writing the queue
        self._listeners: list[Callable[[], None]] = []
        self._generation = 0
        self._closed = False
        self._con.execute("SET GLOBAL TimeZone = 'UTC'")     # how fetched timestamps are shown
        try:
            self.schema_version = migrate(self._con, read_only)
        except BaseException:
            self.close()
            raise
        self._db_name = first_row(self._con.execute("SELECT current_database()"))[0]
        self.history_id: str = first_row(self._con.execute("SELECT value FROM meta WHERE key = 'history_id'"))[0]
        self._columns = {
            table: dict(self._con.execute(
                "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = ? AND schema_name = 'main' "
                "ORDER BY column_index", [table]).fetchall())
            for table in ("jobs", "metrics", "events", "hosts", "gpus", "hypotheses", "attempts")}

    # ---- connection, transactions, change tracking ----------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        with self._write_lock:
            self._closed = True
            self._con.close()       # also closes every thread's cursor, and checkpoints
            os.close(self._fd)
        with _open_paths_lock:
            _open_paths.discard(self.path)

    def __enter__(self) -> "History":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """This thread's cursor (created on first use)."""
        if self._closed:
            raise RuntimeError(f"history {self.path} is closed")
        cur = getattr(self._local, "cursor", None)
        if cur is None:
            cur = self._local.cursor = self._con.cursor()
            self._local.depth = 0           # nesting of transaction() on this thread
            self._local.reading = False     # inside _read_transaction()
        return cur

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A write transaction on this thread's cursor; nested calls join the outer one."""
        if self.read_only:
            raise HistoryError(f"history {self.path} is open read-only: writes go through the arc daemon")
        with self._write_lock:
            cur = self.cursor()
            if self._local.reading:
                raise RuntimeError("a write inside a read transaction would be rolled back: write outside it")
            if self._local.depth:
                self._local.depth += 1
                try:
                    yield cur
                finally:
                    self._local.depth -= 1
                return
            self._local.depth = 1
            self._local.unchanged = False
            cur.begin()
            try:
                yield cur
                cur.commit()
            except BaseException:
                try:
                    cur.rollback()
                except duckdb.Error:
                    pass        # the failed statement already ended the transaction
                raise
            finally:
                self._local.depth = 0
            if self._local.unchanged:
                return
            self._generation += 1
            for listener in list(self._listeners):
                listener()

    @contextmanager
    def _read_transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Several reads that see one state (joins a write transaction already open on this thread)."""
        cur = self.cursor()
        if self._local.depth or self._local.reading:
            yield cur
            return
        self._local.reading = True
        cur.begin()
        try:
            yield cur
        finally:
            self._local.reading = False
            cur.rollback()

    @property
    def generation(self) -> int:
        """Counts committed write transactions since open: a snapshot is stale when this moved."""
        return self._generation

    def add_change_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener()` after every committed write (in the writing thread, holding the write lock: keep it
        as short as setting an Event)."""
        self._listeners.append(listener)

    def remove_change_listener(self, listener: Callable[[], None]) -> None:
        self._listeners.remove(listener)

    def _rows(self, cur: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
        names = [d[0] for d in cur.description]
        json_columns = [i for i, d in enumerate(cur.description) if str(d[1]) == "JSON"]
        out = []
        for row in cur.fetchall():
            row = list(row)
            for i in json_columns:
                row[i] = from_json(row[i])
            out.append(dict(zip(names, row)))
        return out

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cur = self.cursor()
        cur.execute(sql, list(params))
        return self._rows(cur)

    def _insert(self, cur: duckdb.DuckDBPyConnection, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert dict rows through Arrow; absent columns take their defaults."""
        names = sorted({k for row in rows for k in row})
        types = self._columns[table]
        schema = pa.schema([(n, _arrow_type(types[n])) for n in names])
        arrays = {n: [self._to_db(table, n, row.get(n)) for row in rows] for n in names}
        self._insert_arrow(cur, table, pa.table(arrays, schema=schema))

    @classmethod
    def _insert_arrow(cls, cur: duckdb.DuckDBPyConnection, table: str, data: pa.Table) -> None:
        cls._with_arrow(cur, table, data, f"INSERT INTO {table} BY NAME SELECT * FROM {{view}}")

    @staticmethod
    def _with_arrow(cur: duckdb.DuckDBPyConnection, name: str, data: pa.Table, sql: str) -> None:
        """Run `sql` with the Arrow table `data` visible as `{view}`."""
        view = f"_arrow_{name}"
        cur.register(view, data)
        try:
            cur.execute(sql.format(view=view))
        finally:
            cur.unregister(view)

    def _to_db(self, table: str, column: str, value: Any) -> Any:
        sql_type = self._columns[table][column]
        if sql_type == "JSON":
            return to_json(value)
        if sql_type == "TIMESTAMP WITH TIME ZONE":
            return utc(value)
        if sql_type.endswith("[]") and value is not None:
            return list(value)
        return value

    def _check_columns(self, table: str, names: Iterable[str], fixed: frozenset[str] = frozenset()) -> None:
        unknown = sorted(set(names) - set(self._columns[table]) | (set(names) & fixed))
        if unknown:
            settable = ", ".join(sorted(set(self._columns[table]) - fixed))
            raise HistoryError(f"unknown or fixed {table} column(s) {', '.join(unknown)}; settable: {settable}")

    # ---- ids ------------------------------------------------------------------------------------------------

    def _next_numbers(self, cur: duckdb.DuckDBPyConnection, counter: str, n: int) -> range:
        last = first_row(cur.execute("UPDATE counters SET value = value + ? WHERE name = ? RETURNING value",
                                     [n, counter]))[0]
        return range(last - n + 1, last + 1)

    def new_job_ids(self, n: int = 1) -> list[str]:
        """Reserve n job ids; committed before returning, so never handed out again, across restarts too."""
        if n < 1:
            raise HistoryError(f"n must be at least 1, got {n}")
        with self.transaction() as cur:
            return [f"j{i}" for i in self._next_numbers(cur, "job", n)]

    # ---- jobs -----------------------------------------------------------------------------------------------

    def insert_jobs(self, rows: Sequence[Mapping[str, Any]], reason: str = "submitted") -> list[str]:
        """Insert jobs (ids from `new_job_ids`, or allocated here when absent) and their `submitted` events.

        Defaults: status queued, kind 'command' with argv else 'trainer', priority 0, primary_metric val_bpb.
        A job naming a hypothesis is added to that hypothesis' `jobs`. Returns the job ids.
        """
        if not rows:
            return []
        self._check_columns("jobs", {k for row in rows for k in row}, frozenset({"job_num", "metrics_seq"}))
        with self.transaction() as cur:
            missing = sum(1 for row in rows if not row.get("job_id"))
            fresh = iter(self._next_numbers(cur, "job", missing)) if missing else iter(())
            allocated = first_row(cur.execute("SELECT value FROM counters WHERE name = 'job'"))[0]
            t = now()
            prepared = []
            for row in rows:
                job = dict(row)
                job_id = job.get("job_id") or f"j{next(fresh)}"
                match = _JOB_ID.match(job_id)
                if not match or int(match.group(1)) > allocated:
                    raise HistoryError(f"job id {job_id!r} was not allocated by new_job_ids(); "
                                       "reserve ids with new_job_ids() or leave job_id out")
                job.update(job_id=job_id, job_num=int(match.group(1)), metrics_seq=-1)
                job.setdefault("status", JobStatus.QUEUED)
                job.setdefault("kind", "command" if job.get("argv") else "trainer")
                job.setdefault("submitted_at", t)
                job.setdefault("updated_at", t)
                for key, default in (("priority", 0), ("attempts", 0), ("primary_metric", DEFAULT_PRIMARY_METRIC)):
                    if job.get(key) is None:
                        job[key] = default
                _check_choice("status", job["status"], JOB_STATUSES)
                _check_choice("kind", job["kind"], JOB_KINDS)
                prepared.append(job)
            self._insert(cur, "jobs", prepared)
            by_hypothesis: dict[str, list[str]] = {}
            for job in prepared:
                if job.get("hypothesis_id"):
                    by_hypothesis.setdefault(job["hypothesis_id"], []).append(job["job_id"])
            for hyp_id, job_ids in by_hypothesis.items():
                self._link_jobs(cur, hyp_id, job_ids)
            self._insert(cur, "events", [
                {"t": t, "job_id": job["job_id"], "host": job.get("host"), "kind": "submitted",
                 "new_status": job["status"], "reason": reason} for job in prepared])
        return [job["job_id"] for job in prepared]

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        rows = self._query("SELECT * FROM jobs WHERE job_num = ?", [_job_num(job_id)])
        return rows[0] if rows else None

    def get_jobs(self, job_ids: Sequence[str]) -> list[dict[str, Any]]:
        """The jobs that exist among `job_ids`, in the order given."""
        if not job_ids:
            return []
        rows = {r["job_id"]: r for r in self._query("SELECT * FROM jobs WHERE job_id IN (SELECT unnest(?))",
                                                     [list(job_ids)])}
        return [rows[j] for j in job_ids if j in rows]

    def queue_positions(self, job_ids: Sequence[str]) -> dict[str, int]:
        """Where each of `job_ids` that is queued stands in the dispatch order (1 = next), in one query."""
        if not job_ids:
            return {}
        rows = self._query(
            "SELECT job_id, pos FROM (SELECT job_id, row_number() OVER (ORDER BY priority DESC, job_num ASC) AS pos "
            "FROM jobs WHERE status = ?) WHERE job_id IN (SELECT unnest(?))", [JobStatus.QUEUED, list(job_ids)])
        return {r["job_id"]: int(r["pos"]) for r in rows}

    def _job_filter(self, status: str | Sequence[str] | None, host: str | None, tag: str | None,
                    hypothesis: str | None, since: Any) -> tuple[str, list[Any]]:
        clauses, params = ["TRUE"], []
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            for s in statuses:
                _check_choice("status", s, JOB_STATUSES)
            clauses.append("status IN (SELECT unnest(?))")
            params.append(statuses)
        if host is not None:
            clauses.append("host = ?")
            params.append(host)
        if tag is not None:
            clauses.append("list_contains(tags, ?)")
            params.append(tag)
        if hypothesis is not None:
            clauses.append("job_id IN (SELECT unnest(jobs) FROM hypotheses WHERE hyp_id = ?)")
            params.append(hypothesis)
        if since is not None:
            clauses.append("updated_at >= ?")
            params.append(utc(since))
        return " AND ".join(clauses), params

    def jobs(self, status: str | Sequence[str] | None = None, host: str | None = None, tag: str | None = None,
             hypothesis: str | None = None, since: Any = None, limit: int | None = 50, offset: int = 0,
             order: str = "job_num desc") -> list[dict[str, Any]]:
        """Jobs matching every filter given (`since`: changed at or after it), sorted by `order`
        ("column [asc|desc], ..."); `limit=None` returns them all."""
        where, params = self._job_filter(status, host, tag, hypothesis, since)
        if (limit is not None and limit < 0) or offset < 0:
            raise HistoryError(f"limit and offset must be >= 0, got {limit}, {offset}")
        return self._query(f"SELECT * FROM jobs WHERE {where} ORDER BY {_job_order(order)} LIMIT ? OFFSET ?",
                           params + [limit, offset])

    def jobs_page(self, status: str | Sequence[str] | None = None, host: str | None = None,
                  tag: str | None = None, hypothesis: str | None = None, since: Any = None, limit: int | None = 50,
                  offset: int = 0, order: str = "job_num desc") -> tuple[list[dict[str, Any]], int]:
        """`jobs(...)` and the number of jobs matching the filters, from one read transaction."""
        with self._read_transaction():
            return (self.jobs(status, host, tag, hypothesis, since, limit, offset, order),
                    self.count_jobs(status, host, tag, hypothesis, since))

    def count_jobs(self, status: str | Sequence[str] | None = None, host: str | None = None,
                   tag: str | None = None, hypothesis: str | None = None, since: Any = None) -> int:
        where, params = self._job_filter(status, host, tag, hypothesis, since)
        return first_row(self.cursor().execute(f"SELECT count(*) FROM jobs WHERE {where}", params))[0]

    def update_job(self, job_id: str, expect_status: str | Sequence[str] | None = None, *,
                   _reason: str | None = None, _event: Mapping[str, Any] | None = None, **fields: Any) -> bool:
        """Set `fields` on a job; with `expect_status`, only if its status is (one of) that (compare-and-set).

        Returns False, changing nothing, when the job does not exist or its status did not match. A status change
        writes a `status` event (reason `_reason`, data `_event`) in the same transaction.
        """
        return self.update_jobs([JobChange(job_id, fields, expect_status, _reason, _event)])[0]

    def update_jobs(self, changes: Sequence[JobChange]) -> list[bool]:
        """`update_job` for many jobs in one transaction and a few statements: one read of their statuses, one
        UPDATE per distinct set of columns, one insert of their events. A statement per job made a dispatch round
        of 200 placements, or a wave's 512 launch confirmations, hold the write lock for seconds. Changes apply in
        order (a later change to the same job sees the earlier one's status). Returns, per change, whether it was
        applied."""
        for change in changes:
            self._check_change(change)
        if not changes:
            return []
        nums = [_job_num(change.job_id) for change in changes]
        with self.transaction() as cur:
            state = {num: (status, host) for num, status, host in cur.execute(
                "SELECT job_num, status, host FROM jobs WHERE job_num IN (SELECT unnest(?))", [nums]).fetchall()}
            t = now()
            applied: list[bool] = []
            pending: dict[tuple[str, ...], list[tuple[int, dict[str, Any]]]] = {}
            events: list[dict[str, Any]] = []
            written: set[int] = set()      # jobs in `pending`
            for change, num in zip(changes, nums):
                found = state.get(num)
                expected = change.expected()
                if found is None or (expected is not None and found[0] not in expected):
                    applied.append(False)
                    continue
                if num in written:      # one UPDATE sets a row once: write the earlier change first
                    self._set_jobs(cur, pending)
                    written.clear()
                written.add(num)
                fields = {**change.fields, "updated_at": t}
                pending.setdefault(tuple(fields), []).append((num, fields))
                old_status, host = found
                if "status" in fields and fields["status"] != old_status:
                    events.append({"job_id": change.job_id, "host": fields.get("host", host), "kind": "status",
                                   "old_status": old_status, "new_status": fields["status"], "reason": change.reason,
                                   "data": change.event})
                state[num] = (fields.get("status", old_status), fields.get("host", host))
                applied.append(True)
            self._set_jobs(cur, pending)
            if len(events) == 1:
                self._add_event(cur, **events[0])
            elif events:
                self._insert(cur, "events", [{**event, "t": t} for event in events])
        return applied

    def update_job_grouped(self, change: JobChange) -> bool:
        """`update_job` for many threads at once (group commit): a thread that finds no write under way writes its
        change and, until none is left, every change queued meanwhile, each batch in one `update_jobs`; the others
        wait for theirs. 64 host threads confirming a wave's 512 launches so write a few transactions, not 512. Not
        inside a transaction: another thread may write this change."""
        self._check_change(change)
        if getattr(self._local, "depth", 0):
            raise RuntimeError("update_job_grouped inside a transaction: another thread may write the change "
                               "outside it; call update_job there")
        mine = _Grouped(change)
        with self._grouped_lock:
            self._grouped.append(mine)
            lead, self._group_writing = not self._group_writing, True
        if lead:
            # Write until nothing waits: changes queued meanwhile go in the next batch. The others wait on their
            # own events, not on a lock each must take in turn to learn it is done (64 such turns cost more than
            # the write).
            while True:
                with self._grouped_lock:
                    batch, self._grouped = self._grouped, []
                    if not batch:
                        self._group_writing = False
                        break
                try:
                    results = self.update_jobs([g.change for g in batch])
                except BaseException as e:
                    results = [e] * len(batch)
                for g, result in zip(batch, results):
                    g.result = result
                    g.done.set()
        mine.done.wait()
        if isinstance(mine.result, BaseException):
            raise mine.result
        return mine.result

    def _check_change(self, change: JobChange) -> None:
        self._check_columns("jobs", change.fields, frozenset({"job_id", "job_num", "updated_at"}))
        if "status" in change.fields:
            _check_choice("status", change.fields["status"], JOB_STATUSES)

    def retry_job(self, job_id: str, expect_status: str | Sequence[str], reason: str,
                  started_at: Any = None, avoid_host: bool = True) -> bool:
        """Close the job's current attempt as ended by an infrastructure failure and queue the job again, away from
        the host that lost it unless not `avoid_host` (compare-and-set on `expect_status`, like update_job). The attempt keeps its host,
        GPUs, times and reason in `attempts`; its metrics go, since the next attempt numbers its records from 0."""
        expected = {expect_status} if isinstance(expect_status, str) else set(expect_status)
        with self.transaction() as cur:
            rows = self._rows(cur.execute("SELECT * FROM jobs WHERE job_num = ?", [_job_num(job_id)]))
            if not rows or rows[0]["status"] not in expected:
                return False
            job, t = rows[0], now()
            started = utc(started_at) if started_at is not None else job.get("started_at")
            gpus = list(job.get("gpu_indices") or [])
            seconds = max(0.0, (t - started).total_seconds()) * len(gpus) if started is not None else 0.0
            attempt = int(job["attempts"]) + 1
            self._insert(cur, "attempts", [{
                "job_id": job_id, "attempt": attempt, "host": job["host"], "gpu_indices": gpus,
                "gpu_class": job.get("gpu_class"), "started_at": started, "ended_at": t, "reason": reason,
                "gpu_seconds": seconds}])
            requirements = dict(job.get("requirements") or {})
            if job["host"] and avoid_host:
                requirements["avoid_hosts"] = [job["host"]]
            cur.execute("DELETE FROM metrics WHERE job_id = ?", [job_id])
            self._set_job(cur, job_id, {
                "status": JobStatus.QUEUED, "attempts": attempt, "host": None, "gpu_indices": [], "gpu_model": None,
                "gpu_class": None, "gpu_uuids": None, "launch_token": None, "started_at": None, "ended_at": None,
                "exit_code": None, "signal": None, "log_bytes": None, "last_output_at": None, "metrics_seq": -1,
                "requirements": requirements, "reason": f"attempt {attempt} lost: {reason}"})
            self._add_event(cur, "status", f"{reason}; queued again", job_id=job_id,
                            host=job["host"], old_status=job["status"], new_status=JobStatus.QUEUED,
                            data={"attempt": attempt, "gpu_seconds_lost": seconds})
        return True

    def job_attempts(self, job_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
        """The earlier attempts of each job, in order (jobs with none are left out)."""
        out: dict[str, list[dict[str, Any]]] = {}
        for row in self._query("SELECT * FROM attempts WHERE job_id IN (SELECT unnest(?)) ORDER BY job_id, attempt",
                               [list(job_ids)]):
            out.setdefault(row["job_id"], []).append(row)
        return out

    def _set_job(self, cur: duckdb.DuckDBPyConnection, job_id: str, fields: Mapping[str, Any]) -> None:
        fields = {**fields, "updated_at": now()}
        assignments = ", ".join(f"{name} = ?" for name in fields)
        cur.execute(f"UPDATE jobs SET {assignments} WHERE job_num = ?",
                    [self._to_db("jobs", n, v) for n, v in fields.items()] + [_job_num(job_id)])

    def _set_jobs(self, cur: duckdb.DuckDBPyConnection,
                  pending: dict[tuple[str, ...], list[tuple[int, dict[str, Any]]]]) -> None:
        """One UPDATE per set of columns, from an Arrow table of (job_num, values...); empties `pending`. A single
        row goes as plain parameters: registering an Arrow table costs more than the statement."""
        types = self._columns["jobs"]
        for names, group in pending.items():
            if len(group) == 1:
                num, fields = group[0]
                cur.execute(f"UPDATE jobs SET {', '.join(f'{n} = ?' for n in names)} WHERE job_num = ?",
                            [self._to_db("jobs", n, fields[n]) for n in names] + [num])
                continue
            data = pa.table({"job_num": pa.array([num for num, _ in group], pa.int64()),
                             **{n: pa.array([self._to_db("jobs", n, fields[n]) for _, fields in group],
                                            _arrow_type(types[n])) for n in names}})
            assignments = ", ".join(f"{n} = u.{n}" for n in names)
            self._with_arrow(cur, "jobs_update", data,
                             f"UPDATE jobs SET {assignments} FROM {{view}} AS u WHERE jobs.job_num = u.job_num")
        pending.clear()

    # ---- metrics ingestion ----------------------------------------------------------------------------------

    def ingest(self, job_id: str, state: Mapping[str, Any] | None, records: Sequence[Mapping[str, Any]]) -> int:
        """Record an agent's JobState and MetricRecords for a job; return the number of new metric rows.

        Idempotent: records at or below the job's `metrics_seq` are skipped, and fields are written only when
        they change (so ingesting the same thing twice writes nothing). See ingest.py for the mapping.
        """
        with self.transaction() as cur:
            job = self._rows(cur.execute("SELECT * FROM jobs WHERE job_num = ?", [_job_num(job_id)]))
            if not job:
                raise HistoryError(f"unknown job {job_id!r}: ingest only jobs inserted with insert_jobs()")
            plan = plan_ingest(job[0], state, records)
            if plan.metrics:
                m = plan.metrics
                self._insert_arrow(cur, "metrics", pa.table({
                    "job_id": pa.array(m.job_id, pa.string()), "seq": pa.array(m.seq, pa.int64()),
                    "t": pa.array(m.t, pa.timestamp("us", tz="UTC")), "step": pa.array(m.step, pa.int64()),
                    "name": pa.array(m.name, pa.string()), "value": pa.array(m.value, pa.float64())}))
            if plan.job_fields:
                self._set_job(cur, job_id, plan.job_fields)
            if plan.status_reason is not None:
                self._add_event(cur, "status", plan.status_reason, job_id=job_id, host=job[0]["host"],
                                old_status=job[0]["status"], new_status=plan.job_fields["status"],
                                data={"source": "host", "exit_code": state.get("exit_code"),
                                      "signal": state.get("signal")})
            if not plan.metrics and not plan.job_fields:
                self._local.unchanged = True     # a repeated ingest leaves the snapshot clean
        return len(plan.metrics)

    def metrics_high_water(self, job_id: str) -> int:
        """The seq after the last record ingested for the job (0 when none): pass it to the agent as from_seq."""
        row = first_row(self.cursor().execute("SELECT metrics_seq FROM jobs WHERE job_num = ?", [_job_num(job_id)]))
        if row is None:
            raise HistoryError(f"unknown job {job_id!r}")
        return row[0] + 1

    def last_metrics(self, job_id: str) -> dict[str, float] | None:
        """The latest value of each metric the job printed (None when it printed none)."""
        rows = self.cursor().execute("SELECT name, arg_max(value, seq) FROM metrics WHERE job_id = ? "
                                     "GROUP BY name ORDER BY name", [job_id]).fetchall()
        return dict(rows) or None

    def metric_names(self, job_id: str) -> list[str]:
        return [r[0] for r in self.cursor().execute(
            "SELECT DISTINCT name FROM metrics WHERE job_id = ? ORDER BY name", [job_id]).fetchall()]

    def metric_series(self, job_ids: Sequence[str], name: str, max_points: int = 500) -> dict[str, dict[str, list]]:
        """Per job, the series of metric `name` in record order, downsampled to at most ~max_points by stride
        (the last point always kept): {job_id: {"step": [...], "t": [epoch s, ...], "value": [...]}}."""
        if max_points < 2:
            raise HistoryError(f"max_points must be at least 2, got {max_points}")
        rows = self.cursor().execute("""
            SELECT job_id, step, epoch(t), value FROM (
                SELECT job_id, seq, step, t, value,
                       row_number() OVER (PARTITION BY job_id ORDER BY seq) AS rn,
                       count(*) OVER (PARTITION BY job_id) AS n
                FROM metrics WHERE job_id IN (SELECT unnest(?)) AND name = ?)
            WHERE (rn - 1) % greatest(1, ceil(n / ?)::BIGINT) = 0 OR rn = n
            ORDER BY job_id, seq""", [list(job_ids), name, max_points - 1]).fetchall()
        series: dict[str, dict[str, list]] = {j: {"step": [], "t": [], "value": []} for j in job_ids}
        for job_id, step, t, value in rows:
            s = series[job_id]
            s["step"].append(step)
            s["t"].append(t)
            s["value"].append(value)
        return series

    # ---- events ---------------------------------------------------------------------------------------------

    def _add_event(self, cur: duckdb.DuckDBPyConnection, kind: str, reason: str | None, *, job_id: str | None = None,
                   host: str | None = None, data: Any = None, old_status: str | None = None,
                   new_status: str | None = None) -> int:
        return first_row(cur.execute(
            "INSERT INTO events (t, job_id, host, kind, old_status, new_status, reason, data) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING event_id",
            [now(), job_id, host, kind, old_status, new_status, reason, to_json(data)]))[0]

    def add_event(self, kind: str, reason: str | None, job_id: str | None = None, host: str | None = None,
                  data: Any = None, old_status: str | None = None, new_status: str | None = None) -> int:
        """Record a decision or observation; returns its event_id."""
        with self.transaction() as cur:
            return self._add_event(cur, kind, reason, job_id=job_id, host=host, data=data,
                                   old_status=old_status, new_status=new_status)

    def events(self, since: Any = None, job_id: str | None = None, host: str | None = None,
               kind: str | None = None, after_id: int | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Events in order. With `since` (time) or `after_id`, the first `limit` after it; otherwise the last
        `limit` events."""
        clauses, params = ["TRUE"], []
        for column, value in (("job_id", job_id), ("host", host), ("kind", kind)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            clauses.append("t >= ?")
            params.append(utc(since))
        if after_id is not None:
            clauses.append("event_id > ?")
            params.append(after_id)
        where = " AND ".join(clauses)
        if since is None and after_id is None:
            return self._query(f"SELECT * FROM (SELECT * FROM events WHERE {where} ORDER BY event_id DESC LIMIT ?) "
                               "ORDER BY event_id", params + [limit])
        return self._query(f"SELECT * FROM events WHERE {where} ORDER BY event_id LIMIT ?", params + [limit])

    # ---- hosts and GPUs -------------------------------------------------------------------------------------

    def upsert_hosts(self, hosts: Sequence[Mapping[str, Any]]) -> None:
        """Insert or update hosts by name; only the keys given are changed on an existing host."""
        for host in hosts:
            if not host.get("name"):
                raise HistoryError(f"host without a name: {dict(host)!r}")
            self._check_columns("hosts", host)
        with self.transaction() as cur:
            for host in hosts:
                names = list(host)
                updates = ", ".join(f"{n} = excluded.{n}" for n in names if n != "name")
                cur.execute(f"INSERT INTO hosts ({', '.join(names)}) VALUES ({', '.join('?' * len(names))}) "
                            f"ON CONFLICT (name) DO " + (f"UPDATE SET {updates}" if updates else "NOTHING"),
                            [self._to_db("hosts", n, host[n]) for n in names])

    def upsert_gpus(self, host: str, gpus: Sequence[Mapping[str, Any]]) -> None:
        """Record a host's GPUs from an agent inventory (GpuInfo: index, uuid, name, memory_total_mb, simulated).
        The class comes from `gpu_classes.gpu_class`, the rule placement stamps on jobs, so the two tables join."""
        t = now()
        with self.transaction() as cur:
            for gpu in gpus:
                model = gpu.get("name", gpu.get("model"))
                cur.execute("""
                    INSERT INTO gpus VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                    ON CONFLICT (host, idx) DO UPDATE SET uuid = excluded.uuid, model = excluded.model,
                        gpu_class = excluded.gpu_class, memory_total_mb = excluded.memory_total_mb,
                        simulated = excluded.simulated, last_seen = excluded.last_seen""",
                            [host, gpu.get("index", gpu.get("idx")), gpu.get("uuid"), model,
                             gpu_class(model), gpu.get("memory_total_mb"),
                             bool(gpu.get("simulated", False)), t])

    # ---- hypotheses -----------------------------------------------------------------------------------------

    def add_hypothesis(self, text: str, rationale: str | None = None, tags: Sequence[str] | None = None,
                       created_by: str | None = None) -> str:
        if not text or not text.strip():
            raise HistoryError("a hypothesis needs text: say what you expect to change and why")
        t = now()
        with self.transaction() as cur:
            (num,) = self._next_numbers(cur, "hypothesis", 1)
            hyp_id = f"h{num}"
            cur.execute("INSERT INTO hypotheses VALUES (?, ?, ?, ?, ?, ?, ?, NULL, NULL, [], ?, ?)",
                        [hyp_id, num, t, t, text.strip(), rationale, HypothesisStatus.OPEN,
                         list(tags) if tags else None, created_by])
            self._add_event(cur, "hypothesis", "added", data={"hyp_id": hyp_id})
        return hyp_id

    def update_hypothesis(self, hyp_id: str, status: str | None = None, verdict: str | None = None,
                          effect_size: float | None = None, add_jobs: Sequence[str] | None = None) -> dict[str, Any]:
        """Change what is given; linked jobs without a hypothesis get this one. Returns the hypothesis."""
        if status is not None:
            _check_choice("hypothesis status", status, HYPOTHESIS_STATUSES)
        with self.transaction() as cur:
            old = first_row(cur.execute("SELECT status FROM hypotheses WHERE hyp_id = ?", [hyp_id]))
            if old is None:
                raise HistoryError(f"unknown hypothesis {hyp_id!r}: list_hypotheses shows the ids")
            fields = {k: v for k, v in (("status", status), ("verdict", verdict), ("effect_size", effect_size))
                      if v is not None}
            fields["updated_at"] = now()
            cur.execute(f"UPDATE hypotheses SET {', '.join(f'{k} = ?' for k in fields)} WHERE hyp_id = ?",
                        list(fields.values()) + [hyp_id])
            if add_jobs:
                self._link_jobs(cur, hyp_id, list(add_jobs))
            self._add_event(cur, "hypothesis", f"status {old[0]} -> {status}" if status and status != old[0]
                            else "updated", data={"hyp_id": hyp_id, **{k: v for k, v in fields.items()
                                                                       if k != "updated_at"},
                                                  "add_jobs": list(add_jobs or [])})
        return self.get_hypothesis(hyp_id)

    def _link_jobs(self, cur: duckdb.DuckDBPyConnection, hyp_id: str, job_ids: list[str]) -> None:
        if first_row(cur.execute("SELECT count(*) FROM hypotheses WHERE hyp_id = ?", [hyp_id]))[0] == 0:
            raise HistoryError(f"unknown hypothesis {hyp_id!r}: create it with add_hypothesis first")
        job_ids = list(dict.fromkeys(job_ids))
        known = {r[0] for r in cur.execute("SELECT job_id FROM jobs WHERE job_id IN (SELECT unnest(?))",
                                           [job_ids]).fetchall()}
        unknown = [j for j in job_ids if j not in known]
        if unknown:
            raise HistoryError(f"unknown job(s) {', '.join(unknown)}: link only submitted jobs")
        cur.execute("UPDATE hypotheses SET updated_at = ?, "
                    "jobs = list_concat(jobs, list_filter(?, lambda j: NOT list_contains(jobs, j))) WHERE hyp_id = ?",
                    [now(), job_ids, hyp_id])
        cur.execute("UPDATE jobs SET hypothesis_id = ?, updated_at = ? "
                    "WHERE job_id IN (SELECT unnest(?)) AND hypothesis_id IS NULL", [hyp_id, now(), job_ids])

    # ---- decisions (keep / discard against a class's incumbent) ------------------------------------------------

    def add_decision(self, kind: str, gpu_class: str, job_ids: Sequence[str], against: Sequence[str],
                     diff: float | None, comparison: str, reason: str, decided_by: str | None = None,
                     hypothesis_id: str | None = None) -> dict[str, Any]:
        _check_choice("decision kind", kind, DECISION_KINDS)
        with self.transaction() as cur:
            (decision_id,) = first_row(cur.execute(
                "INSERT INTO decisions (t, kind, gpu_class, job_ids, against, diff, comparison, reason, decided_by, "
                "hypothesis_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING decision_id",
                [now(), kind, gpu_class, list(job_ids), list(against), diff, comparison, reason, decided_by,
                 hypothesis_id]))
            self._add_event(cur, "decision", f"{kind} {', '.join(job_ids)} on {gpu_class}: {reason}",
                            data={"decision_id": decision_id, "against": list(against)})
        return self._query("SELECT * FROM decisions WHERE decision_id = ?", [decision_id])[0]

    def decisions(self, gpu_class: str | None = None, kind: str | None = None,
                  limit: int | None = None) -> list[dict[str, Any]]:
        """Oldest first (a lineage reads forward); `limit` keeps the newest."""
        sql = ("SELECT * FROM (SELECT * FROM decisions WHERE (? IS NULL OR gpu_class = ?) AND (? IS NULL OR kind = ?) "
               "ORDER BY decision_id DESC LIMIT ?) ORDER BY decision_id")
        return self._query(sql, [gpu_class, gpu_class, kind, kind, limit if limit is not None else 2**62])

    def get_hypothesis(self, hyp_id: str) -> dict[str, Any] | None:
        rows = self._query("SELECT * FROM hypotheses WHERE hyp_id = ?", [hyp_id])
        return rows[0] if rows else None

    def hypotheses(self, status: str | Sequence[str] | None = None, limit: int = 50,
                   offset: int = 0) -> list[dict[str, Any]]:
        """Newest first."""
        where, params = self._hypothesis_filter(status)
        return self._query(f"SELECT * FROM hypotheses WHERE {where} ORDER BY num DESC LIMIT ? OFFSET ?",
                           params + [limit, offset])

    def count_hypotheses(self, status: str | Sequence[str] | None = None) -> int:
        where, params = self._hypothesis_filter(status)
        return first_row(self.cursor().execute(f"SELECT count(*) FROM hypotheses WHERE {where}", params))[0]

    @staticmethod
    def _hypothesis_filter(status: str | Sequence[str] | None) -> tuple[str, list[Any]]:
        if status is None:
            return "TRUE", []
        statuses = [status] if isinstance(status, str) else list(status)
        for s in statuses:
            _check_choice("hypothesis status", s, HYPOTHESIS_STATUSES)
        return "status IN (SELECT unnest(?))", [statuses]

    # ---- snapshot and schema --------------------------------------------------------------------------------

    def write_snapshot(self, path: str | os.PathLike, method: str = "file") -> SnapshotInfo:
        """Write a consistent copy of the whole database to `path` (via `path.tmp` and a rename).

        "file" (default): CHECKPOINT, then copy the file while holding the write lock; nothing else writes the
        file meanwhile (commits are what write it, and they wait for the lock). Measured ~25x faster than
        "copy" at 10 M metric rows, but writers wait for the copy. "copy": ATTACH a new file and COPY FROM
        DATABASE in one read transaction; writers never wait, the copy costs CPU in proportion to the data.
        If the checkpoint is refused or leaves a WAL behind, "file" falls back to "copy".
        """
        if self.read_only:
            raise HistoryError("snapshots are written by the history's read-write owner (the arc daemon)")
        target = Path(path)
        tmp = target.with_name(target.name + ".tmp")
        for stale in (tmp, tmp.with_name(tmp.name + ".wal")):
            stale.unlink(missing_ok=True)
        started = time.perf_counter()
        generation = self._generation
        if method == "file":
            with self._write_lock:
                generation = self._generation
                cur = self.cursor()
                try:
                    cur.execute("CHECKPOINT")
                except duckdb.TransactionException:
                    # "other write transactions active": DuckDB refuses while any open transaction has drawn
                    # from a sequence, and the daemon met it under load although every write holds this lock.
                    # The copy below needs no checkpoint and is just as consistent.
                    method = "copy"
                else:
                    wal = self.path.with_name(self.path.name + ".wal")
                    if not wal.exists() or wal.stat().st_size == 0:
                        self._copy_file(tmp)
                    else:
                        method = "copy"
        elif method != "copy":
            raise HistoryError(f"snapshot method {method!r}: use 'file' or 'copy'")
        if method == "copy":
            cur = self.cursor()
            cur.execute(f"ATTACH '{_sql_text(str(tmp))}' AS arc_snapshot")
            try:
                generation = self._generation
                cur.execute(f'COPY FROM DATABASE "{self._db_name}" TO arc_snapshot')
            finally:
                cur.execute("DETACH arc_snapshot")
        # A WAL beside the target (someone opened a snapshot read-write) would be replayed onto the new file.
        target.with_name(target.name + ".wal").unlink(missing_ok=True)
        os.replace(tmp, target)
        return SnapshotInfo(target, method, time.perf_counter() - started, target.stat().st_size, generation)

    def _copy_file(self, target: Path, chunk: int = 4 << 20) -> None:
        """Copy the main file through the descriptor kept open (never open and close the file: see __init__)."""
        size = os.fstat(self._fd).st_size
        with open(target, "wb") as out:
            offset = 0
            while offset < size:
                data = os.pread(self._fd, min(chunk, size - offset), offset)
                if not data:
                    break
                out.write(data)
                offset += len(data)

    def describe(self) -> dict[str, Any]:
        return describe_history(self.cursor())

    def memory(self) -> dict[str, float]:
        """What DuckDB holds for this history: its buffers (MB), and the records in its buffer pool's eviction
        queues. DuckDB adds a record (~150 bytes, outside its buffers) for each buffer a query releases, and purges a
        queue only once it holds more than 32,768 records (4096 x 2 x 4 in its buffer_pool.cpp; a purge is tried every
        4096 insertions). So over the first several thousand jobs these records grow toward 8 queues x ~36,900 (at
        most ~45 MB) and never past it: the daemon's memory growth after its warm-up, bounded (bench/scale.py's memory
        figure shows both; tests/test_history_memory.py pins the bound)."""
        cur = self.cursor()
        buffers = first_row(cur.execute("SELECT coalesce(sum(memory_usage_bytes), 0) FROM duckdb_memory()"))[0]
        records = first_row(cur.execute("SELECT coalesce(sum(approximate_size), 0) FROM duckdb_eviction_queues()"))[0]
        return {"buffers_mb": round(buffers / 2**20, 1), "eviction_queue_records": int(records)}


def _job_num(job_id: str) -> int | None:
    """Point lookups go by job_num: its zonemaps prune (job_id's do not, with a bound parameter: ~3x slower at
    100 k jobs). Not a job id: None, which matches nothing."""
    match = _JOB_ID.match(job_id) if isinstance(job_id, str) else None
    return int(match.group(1)) if match else None


def _job_order(order: str) -> str:
    terms = []
    for term in order.split(","):
        parts = term.split()
        if not 1 <= len(parts) <= 2 or parts[0] not in JOB_ORDER_COLUMNS or \
                (len(parts) == 2 and parts[1].lower() not in ("asc", "desc")):
            raise HistoryError(f"order {order!r}: use '<column> [asc|desc], ...' with columns among "
                               f"{', '.join(sorted(JOB_ORDER_COLUMNS))}")
        terms.append(" ".join(parts) + " NULLS LAST")
    return ", ".join(terms + ["job_num DESC"])


def _check_choice(what: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise HistoryError(f"{what} {value!r} is not one of {', '.join(allowed)}")


def _sql_text(text: str) -> str:
    return text.replace("'", "''")


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__

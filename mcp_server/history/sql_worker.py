"""User SQL in processes of their own, each under an address-space limit.

DuckDB's memory_limit bounds its buffers, not one string a function builds: `repeat('x', 10**9)` took 3.9 GB of
RSS under a 256MB limit, and a daemon that runs it holds that much beside every host session. So the daemon runs
each query (usersql.run_user_sql, with all of its checks) in a worker process whose address space is capped
(RLIMIT_AS): a query that needs more fails there with DuckDB's or Python's out-of-memory error, said as what to do,
and the daemon's own memory never holds it.

A worker runs one query at a time; the pool keeps it for the next (a start costs Python and DuckDB's import, a few
tenths of a second), runs at most MAX_WORKERS at once (others wait their turn), kills one that overstays its time
limit and replaces one that died. Protocol: one JSON line per request {"db", "sql", "limit", "timeout_s"}, one per
answer {"result": UserSqlResult's fields} or {"error": message}.
"""
from __future__ import annotations

import dataclasses
import json
import os
import resource
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

from .usersql import UserSqlError, UserSqlResult, run_user_sql

WORKER_ADDRESS_SPACE = 4 * 2**30    # DuckDB's 2GB memory_limit, the answer's Python values, the interpreter
MAX_WORKERS = 2
GRACE_S = 5.0                       # past the query's own time limit (its watchdog interrupts it), the worker dies


class SqlWorkers:
    def __init__(self, max_workers: int = MAX_WORKERS):
        self._slots = threading.BoundedSemaphore(max_workers)
        self._idle: list[subprocess.Popen] = []
        self._lock = threading.Lock()
        self._closed = False

    def run(self, db_path: str | os.PathLike, sql: str, limit: int, timeout_s: float) -> UserSqlResult:
        """run_user_sql's answer, computed in a worker."""
        request = json.dumps({"db": str(db_path), "sql": sql, "limit": limit, "timeout_s": timeout_s})
        with self._slots:
            worker = self._take()
            try:
                answer = self._ask(worker, request, timeout_s + GRACE_S)
            except BaseException:
                _kill(worker)
                raise
            self._keep(worker)
        if "error" in answer:
            raise UserSqlError(answer["error"])
        return UserSqlResult(**answer["result"])

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for worker in idle:
            _kill(worker)

    def _take(self) -> subprocess.Popen:
        with self._lock:
            while self._idle:
                worker = self._idle.pop()
                if worker.poll() is None:
                    return worker
        # Its stderr is the daemon's: a worker's traceback lands in the daemon log.
        return subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                close_fds=True)

    def _keep(self, worker: subprocess.Popen) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(worker)
                return
        _kill(worker)

    @staticmethod
    def _ask(worker: subprocess.Popen, request: str, within_s: float) -> dict:
        try:
            worker.stdin.write(request.encode() + b"\n")
            worker.stdin.flush()
        except OSError:
            raise UserSqlError(_died(worker)) from None
        deadline = time.monotonic() + within_s
        while not select.select([worker.stdout], [], [], max(0.0, deadline - time.monotonic()))[0]:
            if time.monotonic() >= deadline:
                raise UserSqlError(f"query stopped after {within_s:g} s (its process did not answer): filter "
                                   "more, aggregate, or add LIMIT")
        line = worker.stdout.readline()
        if not line:
            raise UserSqlError(_died(worker))
        return json.loads(line)


def _died(worker: subprocess.Popen) -> str:
    try:
        code = worker.wait(timeout=5)
    except subprocess.TimeoutExpired:
        code = None
    if code is not None and code >= 0:
        return (f"the query's process ended (exit {code}) before answering; its error is in arc's daemon log "
                "(arc daemon status shows where); other queries are not affected")
    how = "closed its output" if code is None else f"ended (signal {-code})"
    return (f"the query's process {how} before answering, most likely out of memory: aggregate, filter, or select "
            "fewer or shorter columns; other queries are not affected")


def _kill(worker: subprocess.Popen) -> None:
    if worker.poll() is None:
        worker.kill()
    worker.wait()
    for stream in (worker.stdin, worker.stdout):
        stream.close()


def serve() -> None:
    """The worker: answer each request line until stdin closes."""
    resource.setrlimit(resource.RLIMIT_AS, (WORKER_ADDRESS_SPACE, WORKER_ADDRESS_SPACE))
    for line in sys.stdin:
        request = json.loads(line)
        try:
            result = run_user_sql(Path(request["db"]), request["sql"], request["limit"], request["timeout_s"])
            answer = {"result": dataclasses.asdict(result)}
        except UserSqlError as e:
            answer = {"error": str(e)}
        except MemoryError:
            answer = {"error": "the query's answer needed more memory than a user query may use: aggregate, "
                               "filter, or select fewer or shorter columns"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    serve()

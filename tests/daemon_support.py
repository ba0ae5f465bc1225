"""Driving a real `arc daemon` the way a person does (the CLI) and a script does (DaemonClient), and reading back
what the hosts and the history recorded. Shared by the daemon, scheduler and chaos tests."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import duckdb
import pytest

from mcp_server.core.paths import StatePaths
from mcp_server.core.vocabulary import ACTIVE_STATUSES, TERMINAL_STATUSES
from mcp_server.daemon.client import DaemonClient
from mcp_server.daemon.state import lock_is_held
from tests.agent_support import ledger_violations, read_ledger


REPO = Path(__file__).resolve().parent.parent
TERMINAL = TERMINAL_STATUSES
T = TypeVar("T")

# A workload: `steps` @arc lines (x depends on the job's tag, so every job's values differ), then autoresearch's
# block. After its metrics it holds: `hold` seconds, or until the file `hold` names exists (a gate the test opens).
METRIC_JOB = """\
import json, os, sys, time
tag, steps, pause, hold = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
for i in range(steps):
    print('@arc ' + json.dumps({'step': i, 'x': tag + i / 7, 'loss': 4.0 - i * 0.01 - tag / 1e4}), flush=True)
    time.sleep(pause)
print('some ordinary output line', flush=True)
if hold.startswith('/'):
    while not os.path.exists(hold):
        time.sleep(0.02)
else:
    time.sleep(float(hold))
print('---')
print(f'val_bpb: {1 + tag / 1e4:.6f}')
print('training_seconds: 1.5')
"""
GATED = "import os, sys, time\nwhile not os.path.exists(sys.argv[1]):\n    time.sleep(0.02)\n"


def metric_job(tag: int, steps: int = 4, pause_s: float = 0.1, hold_s: float = 0.0, gate: Path | None = None,
               **extra: Any) -> dict:
    hold = str(gate) if gate is not None else str(hold_s)
    return {"command": [sys.executable, "-c", METRIC_JOB, str(tag), str(steps), str(pause_s), hold],
            "time_limit_s": 300, **extra}


def gated_job(gate: Path, **extra: Any) -> dict:
    """A job that runs until the file `gate` exists."""
    return {"command": [sys.executable, "-c", GATED, str(gate)], "time_limit_s": 300, **extra}


class Gates:
    """Files that let gated jobs end: `spec(name)` makes a job waiting for gate `name`, `open(name)` ends it."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.made: list[str] = []

    def path(self, name: str) -> Path:
        return self.root / name

    def spec(self, name: str, **extra: Any) -> dict:
        self.made.append(name)
        return gated_job(self.path(name), **extra)

    def open(self, *names: str) -> None:
        for name in names:
            self.path(name).touch()

    def open_all(self) -> None:
        self.open(*self.made)


def wait_for(predicate: Callable[[], T], timeout: float, what: str, every: float = 0.05) -> T:
    """Poll until `predicate()` is truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)


class Arc:
    """One state dir and its daemon: `cli(...)` runs `python -m mcp_server`, `call(...)` the daemon's RPC."""

    def __init__(self, state_dir: Path, hosts_yaml: Path):
        self.state_dir = Path(state_dir)
        self.hosts_yaml = Path(hosts_yaml)
        self.paths = StatePaths.resolve(self.state_dir)
        self.client = DaemonClient(self.paths)

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "mcp_server", "--state-dir", str(self.state_dir),
                "--hosts", str(self.hosts_yaml), *args]

    def cli(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.argv(*args), cwd=REPO, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"arc {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def cli_json(self, *args: str, timeout: float = 120) -> dict:
        return json.loads(self.cli("--json", *args, timeout=timeout).stdout)

    def start(self, *daemon_args: str) -> int:
        """`arc daemon start` (in the background), then wait until every host is connected; returns its pid."""
        info = self.cli_json("daemon", "start", *daemon_args)
        wait_for(self.hosts_ready, 60, "every host to be connected")
        return info["pid"]

    def hosts_ready(self) -> bool:
        gpus = self.call("list_gpus")
        return all(h["reachable"] for h in gpus["hosts"])

    @property
    def pid(self) -> int | None:
        return self.client.info().get("pid") if self.client.running() else None

    def call(self, method: str, timeout: float = 120, **params: Any) -> dict:
        return self.client.call(method, timeout=timeout, **params)

    def submit(self, specs: list[dict]) -> list[str]:
        return [j["job_id"] for j in self.call("submit_jobs", jobs=specs)["jobs"]]

    def jobs(self, job_ids: list[str]) -> dict[str, dict]:
        out = {}
        for i in range(0, len(job_ids), 50):
            out.update({j["job_id"]: j for j in self.call("job_status", job_ids=job_ids[i:i + 50])["jobs"]})
        return out

    def wait(self, job_ids: list[str], timeout: float = 120) -> dict[str, dict]:
        """Until every job is terminal; returns their details."""
        deadline = time.monotonic() + timeout
        pending = list(job_ids)
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                now = self.jobs(pending)
                raise AssertionError(f"jobs still not terminal after {timeout:g}s: "
                                     + ", ".join(f"{j} {d['status']}" for j, d in now.items()))
            for i in range(0, len(pending), 200):
                self.call("wait_for_jobs", timeout=left + 30, job_ids=pending[i:i + 200], mode="all",
                          timeout_s=min(left, 30.0))
            pending = [j for j, d in self.jobs(pending).items() if d["status"] not in TERMINAL]
        return self.jobs(job_ids)

    def wait_idle(self, timeout: float = 60) -> None:
        """Until no job of the history is queued or in flight."""
        wait_for(lambda: self.call("list_jobs", status=list(ACTIVE_STATUSES), limit=1)["total"] == 0, timeout,
                 "every job of the history to end")

    def kill9(self) -> None:
        pid = self.pid
        assert pid is not None, "no daemon runs"
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not lock_is_held(self.paths), 10, "the killed daemon's lock to go")

    def stop(self) -> None:
        if self.client.running():
            assert self.client.stop(timeout=30), f"the daemon did not stop; see {self.paths.daemon_log}"

    def log(self) -> str:
        return self.paths.daemon_log.read_text(errors="replace")

    def history_id(self) -> str:
        return self.call("query_results", sql="SELECT value FROM meta WHERE key = 'history_id'")["rows"][0][0]

    def sql(self, sql: str) -> list[list]:
        """Every row of a SELECT through the daemon (`arc sql`'s path), paged by its row cap."""
        rows: list[list] = []
        while True:
            page = self.call("query_results", sql=f"{sql} LIMIT 500 OFFSET {len(rows)}", limit=500)["rows"]
            rows += page
            if len(page) < 500:
                return rows

    def event_chain_problems(self) -> list[str]:
        return event_chain_problems(self.sql(
            "SELECT job_id, event_id, kind, old_status, new_status, reason FROM events "
            "WHERE job_id IS NOT NULL ORDER BY event_id"))

    def read_history(self, sql: str, params: list | None = None) -> list[tuple]:
        """Query the history file itself (only with no daemon holding it)."""
        assert not self.client.running(), "stop the daemon before reading its history file"
        with duckdb.connect(str(self.paths.history), read_only=True) as con:
            return con.execute(sql, params or []).fetchall()


@pytest.fixture
def arcs() -> Callable[[Path, Path], Arc]:
    """make(state_dir, hosts_yaml) -> Arc; every daemon made is stopped at the end, killed if it will not stop,
    so that a failing test leaves no daemon behind."""
    made: list[Arc] = []

    def make(state_dir: Path, hosts_yaml: Path) -> Arc:
        made.append(Arc(state_dir, hosts_yaml))
        return made[-1]

    yield make
    for arc in made:
        if arc.client.running() and not arc.client.stop(timeout=30) and arc.pid:
            os.kill(arc.pid, signal.SIGKILL)


# ---- what the hosts recorded ------------------------------------------------------------------------------------

def host_job_dir(workdir: Path, job_id: str, history_id: str) -> Path:
    return Path(workdir) / "jobs" / f"{job_id}-{history_id}"


def host_state(workdir: Path, job_id: str, history_id: str) -> dict | None:
    try:
        return json.loads((host_job_dir(workdir, job_id, history_id) / "state.json").read_text())
    except (OSError, ValueError):
        return None


def claim_violations(workdirs: list[Path]) -> dict[str, list[str]]:
    """Every host workdir's claim ledger checked: no GPU or CPU slot ever held by two jobs at once."""
    found = {}
    for w in workdirs:
        ledger = Path(w) / "claims.log"
        # Every launch writes the ledger: without one there is nothing to check, which must not read as "no overlap".
        problems = (ledger_violations(read_ledger(ledger)) if ledger.exists()
                    else [f"no claim ledger {ledger}: no job ran on this host, or claims are no longer recorded"])
        if problems:
            found[str(w)] = problems
    return found


def expected_metric_rows(job_id: str, metrics_jsonl: Path) -> list[tuple]:
    """(job_id, seq, step, name, value) rows the history must hold for what a job printed (see history/ingest.py:
    each numeric key but `step` of an @arc line, each number of the summary block with no step)."""
    rows = []
    if not metrics_jsonl.exists():
        return rows
    for line in metrics_jsonl.read_text().splitlines():
        record = json.loads(line)
        data = record["data"]
        if record["source"] == "summary":
            for name, value in data.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    rows.append((job_id, record["seq"], None, name, float(value)))
            continue
        step = data.get("step")
        for name, value in data.items():
            if name != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                rows.append((job_id, record["seq"], step, name, float(value)))
    return rows


def printed_marker_lines(output_log: Path) -> int:
    return sum(1 for line in output_log.read_text(errors="replace").splitlines() if line.startswith("@arc "))


def metric_problems(metric_rows: list[tuple], workdirs: dict[str, Path], history_id: str,
                    jobs: dict[str, dict]) -> list[str]:
    """Where the history's metric rows (job_id, seq, step, name, value) differ from what each job printed on the
    one host that ran it: its output.log's @arc lines, its metrics.jsonl records, each stored exactly once."""
    problems = []
    stored: dict[str, list[tuple]] = {}
    seen: set[tuple] = set()
    for row in metric_rows:
        key = (row[0], row[1], row[3])
        if key in seen:
            problems.append(f"duplicate metric row {key}")
        seen.add(key)
        stored.setdefault(row[0], []).append(tuple(row))
    for job_id, job in jobs.items():
        ran_on = [h for h, w in workdirs.items() if host_job_dir(w, job_id, history_id).exists()]
        if ran_on != [job["host"]]:
            problems.append(f"{job_id} has job directories on {ran_on}, the history says {job['host']}")
            continue
        jobdir = host_job_dir(workdirs[job["host"]], job_id, history_id)
        expected = expected_metric_rows(job_id, jobdir / "metrics.jsonl")
        records = (jobdir / "metrics.jsonl").read_text().splitlines() if expected else []
        markers = sum(1 for line in records if json.loads(line)["source"] == "marker")
        if markers != printed_marker_lines(jobdir / "output.log"):
            problems.append(f"{job_id}: {markers} records in metrics.jsonl, "
                            f"{printed_marker_lines(jobdir / 'output.log')} @arc lines in output.log")
        if sorted(stored.get(job_id, []), key=repr) != sorted(expected, key=repr):
            problems.append(f"{job_id}: the history has {len(stored.get(job_id, []))} metric rows, "
                            f"the host {len(expected)}, or their values differ")
    strays = set(stored) - set(jobs)
    if strays:
        problems.append(f"metric rows of jobs not checked: {sorted(strays)}")
    return problems


def event_chain_problems(rows: list[tuple]) -> list[str]:
    """`rows`: (job_id, event_id, kind, old_status, new_status, reason) of every job, by event_id. Each job's status
    events must chain from its submission to its final status, each with a reason."""
    problems = []
    last: dict[str, str] = {}
    for job_id, event_id, kind, old, new, reason in rows:
        if kind == "submitted":
            last[job_id] = new
            continue
        if kind != "status":
            continue
        if not reason:
            problems.append(f"{job_id} event {event_id} {old}->{new} has no reason")
        if last.get(job_id) != old:
            problems.append(f"{job_id} event {event_id} {old}->{new} follows status {last.get(job_id)}")
        last[job_id] = new
    return problems

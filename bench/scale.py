"""Scale: 64 `local`-transport hosts x 8 simulated GPUs (512 GPUs) on one machine.

Four figures, each a median of --runs:
- daemon start: `arc daemon start` of a fresh state dir on the 64-host fleet until every host is connected
  (one agent process per host: on two cores this is mostly 64 Python interpreters starting);
- a wave: 512 jobs submitted at once (three submit calls) on the idle fleet; from the first submit call to the last
  job's process start, read from the hosts' own state.json files (goal: every GPU busy within 2 s);
- a dispatch round with 10,000 queued jobs while every GPU is busy (what each job's end costs the scheduler), and
  with one GPU free: Scheduler.dispatch_once itself, in-process on a real history file with the queue re-read from
  DuckDB as after every change (goal <= 10 ms); the launch of the one placed job is not part of the round;
- daemon memory: RSS of the daemon every --mem-step jobs while --mem-jobs short jobs run through it (flat?).

    python bench/scale.py [--hosts 64] [--gpus 8] [--runs 3] [--queued 10000] [--mem-jobs 10000] [--json out.json]
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mcp_server.core.paths import StatePaths  # noqa: E402
from mcp_server.daemon.client import DaemonClient  # noqa: E402
from tests.scale_support import busy_scheduler, fleet_yaml  # noqa: E402

BATCH = 200      # the service's limit per submit call


def start_daemon(state: Path, hosts_yaml: Path) -> tuple[DaemonClient, float]:
    client = DaemonClient(StatePaths.resolve(state))
    t = time.monotonic()
    client.ensure(hosts_yaml)
    while not all(h["reachable"] for h in client.call("list_gpus", limit=100)["hosts"]):
        if time.monotonic() - t > 300:
            raise SystemExit("the hosts did not all connect in 300 s")
        time.sleep(0.05)
    return client, time.monotonic() - t


def submit(client: DaemonClient, spec: dict, n: int) -> list[str]:
    ids: list[str] = []
    for lo in range(0, n, BATCH):
        ids += [j["job_id"] for j in client.call("submit_jobs", jobs=[spec] * min(BATCH, n - lo))["jobs"]]
    return ids


def wait_all(client: DaemonClient, ids: list[str]) -> None:
    for lo in range(0, len(ids), 200):
        client.call("wait_for_jobs", timeout=1300, job_ids=ids[lo:lo + 200], mode="all", timeout_s=1200)


def history_id(client: DaemonClient) -> str:
    return client.call("query_results", sql="SELECT value FROM meta WHERE key = 'history_id'")["rows"][0][0]


class CpuMeter:
    """CPU seconds used since start, sampled every 50 ms in a thread: the whole machine's (/proc/stat) and the
    daemon's own (/proc/<pid>/stat), to say whether the cores or arc bound a stage."""

    def __init__(self, daemon_pid: int):
        self.pid, self.samples = daemon_pid, []
        self.tick = os.sysconf("SC_CLK_TCK")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self) -> tuple[float, float, float]:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        busy = sum(int(v) for i, v in enumerate(fields) if i not in (3, 4))   # all but idle and iowait
        daemon = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return time.time(), busy / self.tick, (int(daemon[11]) + int(daemon[12])) / self.tick

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.samples.append(self._read())

    def __enter__(self) -> "CpuMeter":
        self.samples.append(self._read())
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def used(self, until: float) -> tuple[float, float]:
        """(machine, daemon) CPU seconds from the first sample to the last one at or before `until` (epoch s)."""
        last = max((s for s in self.samples if s[0] <= until), key=lambda s: s[0])
        return last[1] - self.samples[0][1], last[2] - self.samples[0][2]


def wave(client: DaemonClient, root: Path, hosts: int, gpus: int, seconds: float) -> dict[str, float]:
    """512 jobs at once on the idle fleet: submit -> every process started, with where the time went. Each job's
    stages, in seconds from the first submit call: its submit call answered; placed (its intent written: queued ->
    dispatching in the history's events); its launch answered by the host (-> running); its process started (the
    host's own state.json)."""
    hid = history_id(client)
    spec = {"command": ["sleep", f"{seconds:g}"], "time_limit_s": seconds + 120}
    ids: list[str] = []
    answered: list[float] = []
    with CpuMeter(client.info()["pid"]) as cpu:
        t0 = time.time()
        for lo in range(0, hosts * gpus, BATCH):
            batch = client.call("submit_jobs", jobs=[spec] * min(BATCH, hosts * gpus - lo))["jobs"]
            answered += [time.time() - t0] * len(batch)
            ids += [j["job_id"] for j in batch]
        wait_all(client, ids)     # every job has run: each has its state.json and its events
    starts = []
    for job_id in ids:
        state = next(p for i in range(hosts)
                     if (p := root / f"w{i}" / "jobs" / f"{job_id}-{hid}" / "state.json").exists())
        starts.append(json.loads(state.read_text())["started_at"] - t0)
    # Only this wave's jobs are in this fresh history: no filter on ids needed.
    def stage(status: str) -> list[float]:
        row = client.call("query_results", sql=(
            "SELECT quantile_disc(t, [0, 0.5, 1]) FROM (SELECT min(epoch(t)) AS t FROM events "
            f"WHERE kind = 'status' AND new_status = '{status}' GROUP BY job_id)"))["rows"][0][0]
        return [v - t0 for v in row]
    stages = {"submit answered": answered, "placed": stage("dispatching"), "launch answered": stage("running"),
              "process started": starts}
    out = {"submit calls s": answered[-1]}
    for name, values in stages.items():
        out[f"{name}: first s"] = min(values)
        out[f"{name}: median s"] = statistics.median(values)
        out[f"{name}: last s"] = max(values)
    out["submit -> every GPU busy s"] = out["process started: last s"]
    machine, daemon = cpu.used(t0 + out["process started: last s"])
    out["until every GPU busy: CPU s available"] = (os.cpu_count() or 1) * out["process started: last s"]
    out["until every GPU busy: CPU s used, all"] = machine
    out["until every GPU busy: CPU s used, daemon"] = daemon
    return out


def dispatch_rounds(root: Path, hosts: int, gpus: int, queued: int, rounds: int) -> dict[str, float]:
    """Scheduler.dispatch_once on a real history with `queued` jobs waiting: every GPU busy, then one free."""
    sched, _ = busy_scheduler(root, hosts, gpus, queued)
    history = sched.history

    def timed(stale: bool) -> float:
        sched._queue_stale = stale
        t = time.perf_counter()
        sched.dispatch_once()
        return (time.perf_counter() - t) * 1000

    out = {}
    full = [timed(True) for _ in range(rounds)]
    out["round, all GPUs busy, queue re-read ms"] = statistics.median(full)
    out["round, all GPUs busy, queue cached ms"] = statistics.median(timed(False) for _ in range(rounds))
    one_free = []
    for _ in range(rounds):
        for key in [key for key, v in sched._busy_gpus.items() if not v.startswith("running-")]:
            del sched._busy_gpus[key]          # the previous round's placement ends
        sched._busy_gpus.pop(("n00", 0), None)
        one_free.append(timed(True))
    out["round, one GPU free, queue re-read ms"] = statistics.median(one_free)
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(rounds):
        timed(True)
    profile.disable()
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(12)
    out["profile"] = text.getvalue()
    history.close()
    return out


def memory(client: DaemonClient, jobs: int, step: int) -> list[dict]:
    """The daemon's RSS every `step` jobs, where it is (Python's objects, malloc's bytes in use and free but kept),
    and what its history's DuckDB holds: its buffers, and the records in its buffer pool's eviction queues
    (History.memory says why those grow, to a bound, and then stay)."""
    def sample(done: int) -> dict:
        m = client.get("/memory")
        return {"jobs": done, **{k: v for k, v in m.items() if k != "history"}, **m["history"]}

    samples = [sample(0)]
    done = 0
    while done < jobs:
        n = min(step, jobs - done)
        wait_all(client, submit(client, {"command": ["true"], "time_limit_s": 60}, n))
        done += n
        samples.append(sample(done))
        print("  memory: " + ", ".join(f"{k} {v}" for k, v in samples[-1].items()), flush=True)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=64)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--queued", type=int, default=10_000)
    parser.add_argument("--wave-seconds", type=float, default=10.0)
    parser.add_argument("--mem-jobs", type=int, default=10_000)
    parser.add_argument("--mem-step", type=int, default=1000)
    parser.add_argument("--only", choices=["dispatch", "start", "wave", "memory"], action="append")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    only = set(args.only or ["dispatch", "start", "wave", "memory"])
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
          f"{args.hosts} hosts x {args.gpus} GPUs", flush=True)
    results: dict = {"load": load}
    with tempfile.TemporaryDirectory(prefix="arc-scale-bench-") as tmp:
        tmp = Path(tmp)
        if "dispatch" in only:
            d = dispatch_rounds(tmp / "dispatch", args.hosts, args.gpus, args.queued, max(5, args.runs))
            print(d.pop("profile"))
            results["dispatch"] = d
            for k, v in d.items():
                print(f"  {k:<44} {v:8.2f}", flush=True)
        if only & {"start", "wave", "memory"}:
            root = tmp / "fleet"
            hosts_yaml = fleet_yaml(root, args.hosts, args.gpus)
            starts, waves = [], []
            for run in range(args.runs if only & {"start", "wave"} else 1):
                client, took = start_daemon(tmp / f"state{run}", hosts_yaml)
                starts.append(took)
                print(f"run {run + 1}: daemon start {took:.2f} s", flush=True)
                try:
                    if "wave" in only:
                        waves.append(wave(client, root, args.hosts, args.gpus, args.wave_seconds))
                        print(f"run {run + 1}, wave:", flush=True)
                        for k, v in waves[-1].items():
                            print(f"  {k:<44} {v:8.2f}", flush=True)
                    if "memory" in only and run == 0:
                        results["memory"] = memory(client, args.mem_jobs, args.mem_step)
                finally:
                    client.stop()
            results["daemon start s"] = statistics.median(starts)
            print(f"daemon start: median {results['daemon start s']:.2f} s of {starts}")
            if waves:
                results["wave"] = {k: statistics.median(w[k] for w in waves) for k in waves[0]}
                print("wave medians:")
                for k, v in results["wave"].items():
                    print(f"  {k:<44} {v:8.2f}")
    results["load end"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""Chaos at scale, one driver for both sizes: tests/test_chaos_scale.py runs it small in CI, bench/chaos.py runs it
at 8 hosts x 2 GPUs and 200 jobs and prints the figures.

A real `arc daemon` drives namespace hosts (real sshd, simulated GPUs) through jobs of a few seconds that print
metric lines with values unique to each job, while a background killer SIGKILLs a tenth of the jobs' processes by
their pids on the hosts (the experiment's own failure), and the timeline below, one fault at a time, each hitting
running jobs: sshd killed and restarted on two hosts, the daemon killed with -9, a host crash (every process of its
namespace killed, then sshd back with the same workdir), a host gone silent (link down), a full disk (one host's
workdir is a small tmpfs, filled, then freed), the daemon killed with -9 again.

`check()` then proves, from the hosts' own files and the history: every job terminal with a reason; the killed jobs
failed by SIGKILL and were not retried, every other job succeeded (infrastructure losses retried); each metric value
stored exactly once; no GPU held by two jobs at once (claim ledgers); a job's attempts never overlapped in time; the
GPU-hours research_status reports add up to the jobs' own times on the hosts plus their lost attempts.
"""
from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import threading
import time
from datetime import datetime
from dataclasses import dataclass, field
from pathlib import Path

from tests.daemon_support import (
    TERMINAL, Arc, claim_violations, event_chain_problems, expected_metric_rows, metric_job, printed_marker_lines,
    wait_for,
)
from tests.harness import NetnsFleet

GPU = {"model": "H100", "memory_gb": 80}
METRIC_STEPS = 6
STEP_PAUSE_S = 0.25
DISK_MB = 24                       # the full host's workdir: room for the agent and a few jobs, then filled


@dataclass
class ChaosPlan:
    hosts: int = 8
    gpus: int = 2
    jobs: int = 200
    min_s: float = 3.0                 # each job runs between min_s and max_s seconds (metrics, then a hold)
    max_s: float = 10.0
    kill_fraction: float = 0.10
    silent_s: float = 20.0
    full_disk_s: float = 10.0          # how long the disk stays full while jobs are dispatched
    seed: int = 14
    budget_gpu_hours: float = 100.0


@dataclass
class ChaosRun:
    """What happened: the jobs, the faults as they were done, the kills, and the final job details."""
    plan: ChaosPlan
    fleet: NetnsFleet
    arc: Arc
    history_id: str = ""
    jobs: list[str] = field(default_factory=list)
    tags: dict[str, int] = field(default_factory=dict)
    victims: set[str] = field(default_factory=set)
    killed: dict[str, str] = field(default_factory=dict)         # job -> the host job id whose process was killed
    faults: list[str] = field(default_factory=list)
    final: dict[str, dict] = field(default_factory=dict)
    research: dict = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def workdirs(self) -> dict[str, Path]:
        return {h.name: h.workdir for h in self.fleet.hosts}


def prepare(fleet: NetnsFleet, plan: ChaosPlan) -> Path:
    """Before the daemon starts: the last host's workdir becomes a small tmpfs (the disk that will fill), and a
    research.yaml with a GPU-hour budget sits beside the fleet file. Returns the mount point (unmount it after)."""
    host = fleet.hosts[-1]
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "arc-chaos-disk", str(host.workdir)],
                   check=True)
    # `ip netns exec` gave the running sshd a copy of the mount table without the tmpfs: its sessions (the agent,
    # the jobs) would write beneath it. A new sshd sees it.
    fleet.stop_sshd(host.name)
    fleet.start_sshd(host.name)
    (fleet.hosts_yaml.parent / "research.yaml").write_text(
        f"budgets: {{gpu_hours: {plan.budget_gpu_hours}}}\ncommand_policy: {{mode: any}}\n")
    return host.workdir


def unmount(disk: Path) -> None:
    subprocess.run(["umount", "-l", str(disk)], check=False)


def run_chaos(fleet: NetnsFleet, arc: Arc, plan: ChaosPlan, say=lambda msg: None) -> ChaosRun:
    """The whole run on a prepared fleet (see prepare) and a stopped daemon; stops the daemon at the end."""
    run = ChaosRun(plan, fleet, arc)
    rng = random.Random(plan.seed)
    started = time.monotonic()
    arc.start()
    run.history_id = arc.history_id()
    specs = []
    for tag in range(plan.jobs):
        hold = max(0.0, rng.uniform(plan.min_s, plan.max_s) - METRIC_STEPS * STEP_PAUSE_S)
        specs.append({"command": [*_job_argv(tag, hold)], "time_limit_s": 120, "name": f"chaos {tag}"})
    waves = _split(list(enumerate(specs)), 7)
    killer = Killer(run, rng.sample(range(plan.jobs), round(plan.kill_fraction * plan.jobs)))

    def submit(wave: list[tuple[int, dict]]) -> list[str]:
        ids = arc.submit([s for _, s in wave])
        for (tag, _), job in zip(wave, ids):
            run.tags[job] = tag
        run.jobs += ids
        killer.watch({job for (tag, _), job in zip(wave, ids) if tag in killer.victim_tags})
        return ids

    def running_now(ids: list[str], n: int) -> None:
        wait_for(lambda: sum(d["status"] == "running" for d in arc.jobs(ids).values()) >= n, 120,
                 f"{n} jobs of the wave to run")

    def fault(what: str) -> None:
        run.faults.append(what)
        say(f"[{time.monotonic() - started:6.1f}s] {what}")

    hosts = [h.name for h in fleet.hosts]
    crashed, silent, full = hosts[0], hosts[1], hosts[-1]
    n = min(len(hosts) * plan.gpus, 4)
    killer.start()
    try:
        running_now(submit(waves[0]), n)
        for name in hosts[2:4]:
            fleet.kill_sshd(name)
            fleet.start_sshd(name)
            fault(f"sshd of {name} killed with its sessions and started again")

        running_now(submit(waves[1]), n)
        arc.kill9()
        fault("daemon killed with -9")
        arc.start()

        submit(waves[2])
        wait_for(lambda: _running_on(arc, crashed), 120, f"a job to run on {crashed}")
        with killer.holding(crashed):
            for pid in fleet.pids(crashed):
                _kill(pid)
            wait_for(lambda: not fleet.pids(crashed), 30, f"every process of {crashed} to be gone")
            fault(f"{crashed} crashed (every process of its namespace killed)")
            fleet.start_sshd(crashed)

        running_now(submit(waves[3]), n)
        wait_for(lambda: _running_on(arc, silent), 120, f"a job to run on {silent}")
        fleet.link_down(silent)
        fault(f"{silent} silent (link down) for {plan.silent_s:g}s")
        time.sleep(plan.silent_s)           # the fault's length, not a synchronisation
        fleet.link_up(silent)

        with killer.holding(full):
            filler = fleet.host(full).workdir / "filler"
            _fill(filler)
            fault(f"{full}'s workdir full ({DISK_MB} MB tmpfs filled) for {plan.full_disk_s:g}s")
            submit(waves[4])
            time.sleep(plan.full_disk_s)    # the fault's length: jobs are dispatched meanwhile
            filler.unlink()

        running_now(submit(waves[5]), n)
        arc.kill9()
        fault("daemon killed with -9")
        arc.start()
        submit(waves[6])

        run.final = arc.wait(run.jobs, timeout=60 + 6 * plan.jobs)
        killer.stop()
        run.research = arc.call("research_status")
    finally:
        killer.stop()
        run.wall_s = time.monotonic() - started
        arc.stop()
    return run


def _job_argv(tag: int, hold: float) -> list[str]:
    return metric_job(tag, steps=METRIC_STEPS, pause_s=STEP_PAUSE_S, hold_s=round(hold, 2))["command"]


def _split(items: list, n: int) -> list[list]:
    size = -(-len(items) // n)
    return [items[i * size:(i + 1) * size] for i in range(n)]


def _running_on(arc: Arc, host: str) -> bool:
    return arc.call("list_jobs", status=["running"], host=host, limit=1)["total"] > 0


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _fill(path: Path) -> None:
    """Write until the file system says it is full (unbuffered: nothing left to fail at close)."""
    with open(path, "wb", buffering=0) as f:
        for size in (1 << 20, 4096):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                pass


class Killer(threading.Thread):
    """SIGKILLs each victim's job process once, by the pid its host recorded, after it printed some metrics; never
    on a host whose fault is under way (its kill would race the fault's own ending of the job)."""

    def __init__(self, run: ChaosRun, victim_tags: list[int]):
        super().__init__(daemon=True)
        self.chaos, self.victim_tags = run, set(victim_tags)
        self.pending: set[str] = set()
        self.lock = threading.Lock()
        self.held: set[str] = set()
        self.done = threading.Event()

    def watch(self, jobs: set[str]) -> None:
        with self.lock:
            self.pending |= jobs
            self.chaos.victims |= jobs

    def holding(self, host: str):
        killer = self

        class Hold:
            def __enter__(self):
                with killer.lock:
                    killer.held.add(host)

            def __exit__(self, *exc):
                with killer.lock:
                    killer.held.discard(host)
        return Hold()

    def stop(self) -> None:
        self.done.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join()

    def run(self) -> None:
        suffix = f"-{self.chaos.history_id}"
        while not self.done.wait(0.05):
            with self.lock:
                for host, workdir in self.chaos.workdirs.items():
                    if host in self.held or not self.pending:
                        continue
                    try:
                        names = os.listdir(workdir / "jobs")
                    except OSError:
                        continue
                    for name in names:
                        job = name[: -len(suffix)].split("_r")[0] if name.endswith(suffix) else None
                        if job in self.pending and self._kill(workdir / "jobs" / name):
                            self.pending.discard(job)
                            self.chaos.killed[job] = name[: -len(suffix)]

    @staticmethod
    def _kill(jobdir: Path) -> bool:
        try:
            state = json.loads((jobdir / "state.json").read_text())
            printed = len((jobdir / "metrics.jsonl").read_text().splitlines())
        except (OSError, ValueError):
            return False
        if state.get("status") != "running" or not state.get("pid") or printed < 2:
            return False
        os.kill(state["pid"], signal.SIGKILL)
        # Until the host has recorded it, no fault may start there (see holding()).
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if json.loads((jobdir / "state.json").read_text()).get("status") != "running":
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.02)
        return True


# ---- the checks ---------------------------------------------------------------------------------------------

def attempt_dirs(run: ChaosRun, job_id: str) -> list[tuple[str, str, Path]]:
    """(host, host job id, directory) of every attempt of the job on every host."""
    suffix = f"-{run.history_id}"
    found = []
    for host, workdir in run.workdirs.items():
        for d in (workdir / "jobs").glob(f"{job_id}*{suffix}"):
            if d.name[: -len(suffix)].split("_r")[0] == job_id:
                found.append((host, d.name[: -len(suffix)], d))
    return found


def check(run: ChaosRun) -> dict[str, object]:
    """Every check of the module docstring; returns the figures. Raises AssertionError naming what is wrong."""
    arc, final = run.arc, run.final
    problems: list[str] = []

    # Every job terminal with a reason; every status change an event with its reason.
    for j, d in final.items():
        if d["status"] not in TERMINAL:
            problems.append(f"{j} ended {d['status']}")
    events = arc.read_history("SELECT job_id, event_id, kind, old_status, new_status, reason FROM events "
                              "WHERE job_id IS NOT NULL ORDER BY event_id")
    problems += event_chain_problems(events)

    # The experiment's own failures (the killed processes) failed and were not retried; every other job succeeded,
    # however many attempts the infrastructure took from it.
    for j, d in final.items():
        current = j + (f"_r{d['attempts']}" if d["attempts"] else "")
        if j in run.killed:
            if (d["status"], d.get("signal")) != ("failed", signal.SIGKILL) or run.killed[j] != current:
                problems.append(f"{j} (its process killed as {run.killed[j]}) ended {d['status']} signal "
                                f"{d.get('signal')} at attempt {current}: {d.get('reason')}")
        elif (d["status"], d.get("exit_code")) != ("succeeded", 0):
            problems.append(f"{j} ended {d['status']} exit {d.get('exit_code')}: {d.get('reason')} "
                            f"(lost attempts {d['lost_attempts']})")

    # Each attempt ran on one host, one after the other; the last one is where the history says.
    metric_rows = arc.read_history("SELECT job_id, seq, step, name, value FROM metrics")
    stored: dict[str, list[tuple]] = collections.defaultdict(list)
    for row in metric_rows:
        stored[row[0]].append(tuple(row))
    host_seconds = 0.0
    for j, d in final.items():
        dirs = attempt_dirs(run, j)
        ids = [name for _, name, _ in dirs]
        if len(set(ids)) != len(ids):
            problems.append(f"{j}: one attempt on two hosts: {dirs}")
        spans = []
        for host, name, path in dirs:
            try:
                state = json.loads((path / "state.json").read_text())
            except (OSError, ValueError):
                continue   # an attempt whose launch never wrote its state (the disk was full)
            end = state.get("ended_at") or _lost_end(d, name, j)
            if state.get("started_at") and end:
                spans.append((state["started_at"], end, name))
        spans.sort()
        for (s0, e0, a), (s1, e1, b) in zip(spans, spans[1:]):
            if s1 < e0:
                problems.append(f"{j}: attempt {b} started at {s1} before attempt {a} ended at {e0}")
        current = j + (f"_r{d['attempts']}" if d["attempts"] else "")
        last = [(h, p) for h, name, p in dirs if name == current]
        if [h for h, _ in last] != [d["host"]]:
            problems.append(f"{j}: attempt {current} is on {[h for h, _ in last]}, the history says {d['host']}")
            continue
        jobdir = last[0][1]
        state = json.loads((jobdir / "state.json").read_text())
        host_seconds += (state["ended_at"] - state["started_at"]) * len(state.get("gpus") or [])
        # Each metric the last attempt printed is in the history exactly once, with its value.
        expected = expected_metric_rows(j, jobdir / "metrics.jsonl")
        markers = sum(1 for r in expected if r[3] == "x")
        if markers != printed_marker_lines(jobdir / "output.log"):
            problems.append(f"{j}: {markers} @arc records, {printed_marker_lines(jobdir / 'output.log')} printed")
        if sorted(stored.get(j, []), key=repr) != sorted(expected, key=repr):
            problems.append(f"{j}: the history has {len(stored.get(j, []))} metric rows, the host {len(expected)}")
    xs = collections.Counter(row[4] for row in metric_rows if row[3] == "x")
    problems += [f"metric value x={v} stored {c} times" for v, c in xs.items() if c != 1]
    if set(stored) - set(final):
        problems.append(f"metric rows of unknown jobs {sorted(set(stored) - set(final))}")

    # No GPU ever held by two jobs at once, from each host's own ledger.
    problems += [f"{w}: {p}" for w, ps in claim_violations(list(run.workdirs.values())).items() for p in ps]

    # GPU-hours: research_status against the jobs' own times on the hosts plus the attempts lost.
    lost = [a for d in final.values() for a in d["lost_attempts"]]
    lost_seconds = sum(a["gpu_seconds"] for a in lost)
    expected_h = (host_seconds + lost_seconds) / 3600
    used_h = run.research["gpu_hours_used"]
    # research_status rounds to 3 decimals of an hour, lost attempts are shown to 0.1 s each.
    if abs(used_h - expected_h) > 0.0006 + 0.05 / 3600 * len(lost):
        problems.append(f"research_status says {used_h} GPU-hours used; the jobs' own times add up to "
                        f"{expected_h:.4f}")
    left = run.research.get("gpu_hours_left")
    if left is None or abs(left - (run.plan.budget_gpu_hours - used_h)) > 0.0011:
        problems.append(f"budget left {left} is not {run.plan.budget_gpu_hours} - {used_h}")

    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:60])
    statuses = collections.Counter(d["status"] for d in final.values())
    return {
        "hosts": len(run.fleet.hosts), "gpus": len(run.fleet.hosts) * run.plan.gpus, "jobs": len(final),
        "succeeded": statuses["succeeded"], "failed (killed)": statuses["failed"],
        "processes killed": len(run.killed), "faults": len(run.faults) + len(run.killed),
        "infrastructure losses": len(lost), "jobs retried": sum(1 for d in final.values() if d["lost_attempts"]),
        "retried and succeeded": sum(1 for d in final.values() if d["lost_attempts"] and d["status"] == "succeeded"),
        "metric rows": len(metric_rows), "gpu hours": round(used_h, 3), "wall s": round(run.wall_s, 1),
    }


def _lost_end(detail: dict, host_job_id: str, job_id: str) -> float | None:
    """When the history closed a lost attempt (its supervisor died, so the host never wrote an end)."""
    n = int(host_job_id[len(job_id) + 2:]) if host_job_id != job_id else 0
    for a in detail["lost_attempts"]:
        if a["attempt"] == n + 1 and a["ended_at"]:
            return datetime.fromisoformat(a["ended_at"]).timestamp()
    return None

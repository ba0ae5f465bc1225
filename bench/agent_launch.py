"""How fast the host agent turns a launch into a running job, and a job's end into an event.

Over the serve protocol, locally (`python -m gpu_agent serve` as a child; no SSH), one simulated GPU:
- launch → start: from sending the launch request to the job's exec (state.started_at), and to the response;
- exit → event: from the job's last act (`date +%s.%N` prints the time, then exits) to the job_ended line;
- back-to-back: on each job_ended, launch the next job on the same GPU at once; the gap is the next job's
  started_at minus this job's ended_at (both from state.json), p50 and p99 over --jobs jobs.
- CPU per launch: a burst of --burst launches (`sleep 1`, one simulated GPU each, as a wave gives a host), the serve
  process's own CPU per launch, and its reaped children's (the supervisors and the jobs they started) per job: what
  a host spends to start a job, whatever the controller does.
Each figure is the median over --runs runs (fresh workdir and serve process each). Also the cost of a one-shot
`python -m gpu_agent hello` (a Python start) against a served hello: why serve exists, and why supervisors are forked
(the serve process keeps one spare forked ahead) rather than started as a new Python.

    python bench/agent_launch.py [--runs 5] [--jobs 60] [--samples 20] [--burst 64]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpu_agent.client import PACKAGE_PARENT, AgentProcess  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def cpu_s(pid: int) -> tuple[float, float]:
    """(own, reaped children's) CPU seconds of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
        except OSError:
            pass        # it exited while we looked
    return out


def burst_cpu(burst: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "agent.json").write_text(json.dumps({"simulate_gpus": [{"model": "SIM", "memory_gb": 80}] * burst}))
        with AgentProcess(workdir) as agent:
            agent.call("hello")
            own0, children0 = cpu_s(agent.proc.pid)
            for i in range(burst):
                agent.call("launch", job_id=f"c{i}", launch_token=f"c{i}", argv=["sleep", "1"], gpus=[i],
                           time_limit_s=30)
            own1, _ = cpu_s(agent.proc.pid)
            for i in range(burst):
                agent.event("job_ended", f"c{i}")
            # Only the spare forked ahead is left once the serve loop has reaped every job's supervisor.
            agent.wait_for(lambda: len(children(agent.proc.pid)) <= 1, timeout=10, what="every supervisor reaped")
            _, children1 = cpu_s(agent.proc.pid)
    return {"CPU per launch: serve process": (own1 - own0) / burst,
            "CPU per job: supervisor + job": (children1 - children0) / burst}


def one_run(jobs: int, samples: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "agent.json").write_text(json.dumps({"simulate_gpus": [{"model": "SIM", "memory_gb": 80}]}))
        with AgentProcess(workdir) as agent:
            agent.call("hello")
            served_hello = []
            for _ in range(samples):
                t0 = time.time()
                agent.call("hello")
                served_hello.append(time.time() - t0)

            to_response, to_start = [], []
            for i in range(samples):
                t0 = time.time()
                agent.call("launch", job_id=f"l{i}", launch_token=f"l{i}", argv=["true"], gpus=[0], time_limit_s=30)
                to_response.append(time.time() - t0)
                state = agent.event("job_ended", f"l{i}")[1]["state"]
                to_start.append(state["started_at"] - t0)

            to_event, to_detect = [], []
            for i in range(samples):
                agent.call("launch", job_id=f"e{i}", launch_token=f"e{i}", argv=["date", "+%s.%N"], gpus=[0],
                           time_limit_s=30)
                received, event = agent.event("job_ended", f"e{i}")
                printed = float(agent.call("tail", job_id=f"e{i}")["text"])
                to_event.append(received - printed)
                to_detect.append(event["state"]["ended_at"] - printed)

            gaps = []
            agent.call("launch", job_id="b0", launch_token="b0", argv=["sleep", "0.02"], gpus=[0], time_limit_s=30)
            for i in range(1, jobs + 1):
                previous = agent.event("job_ended", f"b{i - 1}")[1]["state"]
                agent.call("launch", job_id=f"b{i}", launch_token=f"b{i}", argv=["sleep", "0.02"], gpus=[0],
                           time_limit_s=30)
                started = agent.event("job_started", f"b{i}")[1]["state"]
                gaps.append(started["started_at"] - previous["ended_at"])
            agent.event("job_ended", f"b{jobs}")

        one_shot = []
        for _ in range(max(3, samples // 4)):
            t0 = time.time()
            subprocess.run([sys.executable, "-m", "gpu_agent", "--workdir", tmp, "hello"], cwd=PACKAGE_PARENT,
                           capture_output=True, check=True)
            one_shot.append(time.time() - t0)

    med = statistics.median
    return {"served hello": med(served_hello), "one-shot CLI hello (python start)": med(one_shot),
            "launch → response": med(to_response), "launch → job exec": med(to_start),
            "job exit → supervisor sees it": med(to_detect), "job exit → job_ended event": med(to_event),
            "back-to-back gap p50": percentile(gaps, 0.5), "back-to-back gap p99": percentile(gaps, 0.99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=60, help="back-to-back jobs per run (>= 50 for a p99)")
    parser.add_argument("--samples", type=int, default=20, help="launch and exit samples per run")
    parser.add_argument("--burst", type=int, default=64, help="launches in the CPU-per-launch burst")
    args = parser.parse_args()
    print(f"host: {os.uname().nodename}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; "
          f"python {sys.version.split()[0]}; "
          f"{args.runs} runs × ({args.samples} samples, {args.jobs} back-to-back jobs)")
    runs = [{**one_run(args.jobs, args.samples), **burst_cpu(args.burst)} for _ in range(args.runs)]
    print(f"{'figure':40} {'median':>10}   runs (ms)")
    for key in runs[0]:
        values = [r[key] * 1000 for r in runs]
        print(f"{key:40} {statistics.median(values):8.2f}ms   " + " ".join(f"{v:.2f}" for v in values))
    print(f"load at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

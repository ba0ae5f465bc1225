"""The CPU trainer beside another busy process, with GNU OpenMP's default spin and with the agent's (GOMP_SPINCOUNT).

arc starts every job in its own session, and Linux's autogroup schedules each session as its own group. With
anything else busy on the machine, a job's OpenMP threads then rarely run at once, and a thread that spins waiting
for one that is not running burns its group's share. Each run here is the trainer's CPU preset (`--preset cpu-tiny`,
40 steps, the demo's data) started in its own session as the agent starts a job, on a quiet machine and beside one
busy-looping process in another session; the figure is the trainer's own training_seconds, median of --runs.

    python bench/cpu_contention.py [--runs 3] [--steps 40]
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from contextlib import contextmanager, nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gpu_agent.launcher import JOB_ENV_DEFAULTS  # noqa: E402
from mcp_server.surfaces.demo import DATA_ARGS  # noqa: E402

SPINS = {"GNU default (300,000)": {}, f"agent's ({JOB_ENV_DEFAULTS['GOMP_SPINCOUNT']})": JOB_ENV_DEFAULTS}


def prepare(folder: Path) -> Path:
    subprocess.run([sys.executable, "-m", "trainer.prepare", "--out", str(folder), *DATA_ARGS],
                   cwd=ROOT, check=True, capture_output=True)
    return folder


def training_seconds(data: Path, steps: int, spin_env: dict[str, str]) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOMP_", "OMP_"))} | spin_env
    out = subprocess.run([sys.executable, "-m", "trainer.train", "--data", str(data), "--preset", "cpu-tiny",
                          "--set", f"max_steps={steps}", "seed=0"],
                         cwd=ROOT, env=env, capture_output=True, text=True, check=True, start_new_session=True)
    return float(re.search(r"^training_seconds:\s*([\d.]+)", out.stdout, re.M).group(1))


@contextmanager
def busy_neighbour():
    """One process spinning on a core, in a session of its own: another user's work, as the scheduler sees it."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare(Path(tmp) / "data")
        rows = []
        for machine, beside in (("quiet", nullcontext), ("one busy process beside it", busy_neighbour)):
            for spin, spin_env in SPINS.items():
                with beside():
                    times = [training_seconds(data, args.steps, spin_env) for _ in range(args.runs)]
                rows.append((machine, spin, statistics.median(times), min(times), max(times)))
                print(f"  {machine}, {spin}: {times}", file=sys.stderr)
    print(f"| machine ({os.cpu_count()} cores) | OpenMP spin | training s, median of {args.runs} (range) |")
    print("|---|---|---|")
    for machine, spin, median, low, high in rows:
        print(f"| {machine} | {spin} | {median:.1f} ({low:.1f}–{high:.1f}) |")


if __name__ == "__main__":
    main()

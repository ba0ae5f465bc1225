"""How long a person and Claude Code wait for arc to answer at start-up.

- `arc --help`: a person's first command (a Python start plus the CLI's imports), from the help index that any
  full command of this build stores (core/startup_cache.py), and without one (the first command of a new build);
- `arc mcp` to the answer of tools/list, with a daemon already running: what each new Claude session pays;
- the same when `arc mcp` must start the daemon first (none runs for the state dir): with the handshake a daemon of
  this build gave before (answered by the relay while the daemon starts), and without (a new build's first
  session); and, for the former, to the answer of the session's first tool call (list_gpus), which waits for the
  daemon.
Each figure is the median of --runs runs; the cache lives in a temporary ARC_CACHE_DIR, emptied for the "new build"
runs. The fleet is one `local` host with two simulated GPUs (the tests' own
hosts file), in a fresh state dir, so no SSH is timed.

    python bench/cold_start.py [--runs 5]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mcp_server.core.paths import StatePaths  # noqa: E402
from mcp_server.daemon.client import DaemonClient  # noqa: E402
from tests.harness.fixtures import DEFAULT_SIMULATED_GPUS, local_host_entry, write_hosts_yaml  # noqa: E402


HANDSHAKE = [
    {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench", "version": "0"}}},
    {"jsonrpc": "2.0", "method": "notifications/initialized"},
    {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
    {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "list_gpus", "arguments": {}}},
]


def arc() -> list[str]:
    """What the `arc` console script runs, without a version manager's shim in front (pyenv's costs ~2 s)."""
    return [sys.executable, "-m", "mcp_server"]


def time_help(env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([*arc(), "--help"], env=env, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def time_session(env: dict[str, str]) -> tuple[float, float]:
    """From starting `arc mcp` to reading tools/list's answer and the first tool call's, sending each message as
    Claude Code does: the next once the previous request is answered."""
    t0 = time.perf_counter()
    answered: dict[int, float] = {}
    proc = subprocess.Popen([*arc(), "mcp"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        for message in HANDSHAKE:
            proc.stdin.write(json.dumps(message).encode() + b"\n")
            proc.stdin.flush()
            while "id" in message:
                answer = json.loads(proc.stdout.readline() or b"null")
                if answer is None:
                    raise RuntimeError(f"`arc mcp` closed stdout before answering {message['method']}")
                if answer.get("id") == message["id"]:
                    answered[message["id"]] = time.perf_counter() - t0
                    break
        proc.stdin.close()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return answered[2], answered[3]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        hosts = write_hosts_yaml(Path(tmp) / "hosts.yaml", [local_host_entry(
            Path(tmp) / "work", simulate_gpus=DEFAULT_SIMULATED_GPUS, cpu_slots=2)])
        state, cache = Path(tmp) / "state", Path(tmp) / "cache"
        env = {**os.environ, "ARC_HOSTS": str(hosts), "ARC_STATE_DIR": str(state), "ARC_CACHE_DIR": str(cache)}
        daemon = DaemonClient(StatePaths.resolve(state))
        figures: dict[str, list[float]] = {name: [] for name in (
            "arc --help", "arc --help, new build", "arc mcp -> tools/list, daemon running",
            "arc mcp -> tools/list, daemon starting", "arc mcp -> first call, daemon starting",
            "arc mcp -> tools/list, daemon starting, new build")}
        try:
            for _ in range(args.runs):
                shutil.rmtree(cache, ignore_errors=True)
                figures["arc --help, new build"].append(time_help(env))
                daemon.stop()
                figures["arc mcp -> tools/list, daemon starting, new build"].append(time_session(env)[0])
                figures["arc --help"].append(time_help(env))
                daemon.stop()
                tools_list, first_call = time_session(env)
                figures["arc mcp -> tools/list, daemon starting"].append(tools_list)
                figures["arc mcp -> first call, daemon starting"].append(first_call)
                figures["arc mcp -> tools/list, daemon running"].append(time_session(env)[0])
        finally:
            daemon.stop()
    for name, values in figures.items():
        print(f"{name:50s} median {statistics.median(values):6.3f} s   runs: "
              + " ".join(f"{v:.3f}" for v in values))


if __name__ == "__main__":
    main()

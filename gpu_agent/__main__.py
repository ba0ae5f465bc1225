"""`python -m gpu_agent [--workdir W] COMMAND`: `serve` for the controller, one-shot commands for people.

One-shot commands print the same JSON response the serve loop would give (exit status 1 when it is an error).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

DEFAULT_WORKDIR = "~/.arc"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command: list[str] = []
    if "--" in argv:        # launch ... -- CMD ARGS: everything after `--` is the job's argv, untouched
        cut = argv.index("--")
        argv, command = argv[:cut], argv[cut + 1:]
    args = _parser().parse_args(argv)
    workdir = Path(args.workdir).expanduser()
    workdir.mkdir(parents=True, exist_ok=True)
    if args.command == "serve":
        from .serve import relay, serve
        (relay if args.via_socket else serve)(workdir)
        return 0
    if args.command == "hold":
        from .serve import hold
        hold(workdir)
        return 0
    from .ops import Agent
    agent = Agent(workdir)
    if args.command == "launch" and not command:
        print("launch needs the job's command after `--`, e.g. launch --job-id j1 --time-limit 60 -- python train.py",
              file=sys.stderr)
        return 2
    response = agent.handle({"id": 0, "op": args.command.replace("-", "_"), "params": _params(args, command)})
    if args.command == "cancel" and response["ok"] and args.wait:
        response = _wait_terminal(agent, args.job_id, args.wait) or response
    print(json.dumps(response, indent=2))
    return 0 if response["ok"] else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gpu_agent", description="arc's host agent")
    parser.add_argument("--workdir", default=DEFAULT_WORKDIR, help="agent state directory (default ~/.arc)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="JSON lines on stdin/stdout, for the controller")
    p.add_argument("--via-socket", action="store_true",
                   help="relay them to the `hold` agent of this workdir (inside a Slurm allocation)")
    sub.add_parser("hold", help="serve channels on <workdir>/agent.sock, for as long as the process lives "
                                "(a Slurm allocation's batch step)")
    sub.add_parser("hello", help="agent and host facts")
    sub.add_parser("inventory", help="GPUs and CPU slots with their claims")
    sub.add_parser("claims", help="claims, with stale ones flagged")
    p = sub.add_parser("status", help="jobs' states (default: every job holding a claim)")
    p.add_argument("job_ids", nargs="*")
    p = sub.add_parser("list", help="all jobs, newest first")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--offset", type=int, default=0)
    p = sub.add_parser("launch", help="start a job: launch --job-id ID --time-limit S [...] -- CMD ARGS")
    p.add_argument("--job-id", required=True)
    p.add_argument("--token", help="launch token (default: a fresh one)")
    p.add_argument("--time-limit", type=float, required=True, help="seconds")
    p.add_argument("--grace", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL")
    p.add_argument("--gpus", default="", help="comma-separated GPU indices (default: a CPU slot)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--cwd", default="", help="absolute, or relative to the workdir")
    p = sub.add_parser("cancel", help="stop a job (SIGTERM, SIGKILL after its grace)")
    p.add_argument("job_id")
    p.add_argument("--wait", type=float, default=0.0, help="wait up to this many seconds for the end")
    p = sub.add_parser("tail", help="a job's output: the last lines, or from a byte offset")
    p.add_argument("job_id")
    p.add_argument("-n", "--lines", type=int, default=80)
    p.add_argument("--offset", type=int)
    p.add_argument("--max-bytes", type=int, default=65536)
    p = sub.add_parser("metrics", help="a job's parsed metrics")
    p.add_argument("job_id")
    p.add_argument("--from-seq", type=int, default=0)
    p.add_argument("--limit", type=int, default=1000)
    p = sub.add_parser("release-stale", help="free a lost job's claims (kills what is left of it)")
    p.add_argument("job_id")
    return parser


def _params(args: argparse.Namespace, command: list[str]) -> dict[str, Any]:
    if args.command == "status":
        return {"job_ids": args.job_ids} if args.job_ids else {}
    if args.command == "list":
        return {"limit": args.limit, "offset": args.offset}
    if args.command == "launch":
        env = dict(item.partition("=")[::2] for item in args.env)
        gpus = [int(g) for g in args.gpus.split(",") if g.strip()]
        return {"job_id": args.job_id, "launch_token": args.token or uuid.uuid4().hex, "argv": command, "env": env,
                "cwd": args.cwd, "gpus": gpus, "time_limit_s": args.time_limit, "kill_grace_s": args.grace}
    if args.command == "tail":
        return {"job_id": args.job_id, "lines": args.lines, "offset": args.offset, "max_bytes": args.max_bytes}
    if args.command == "metrics":
        return {"job_id": args.job_id, "from_seq": args.from_seq, "limit": args.limit}
    if args.command in ("cancel", "release-stale"):
        return {"job_id": args.job_id}
    return {}


def _wait_terminal(agent: Any, job_id: str, wait_s: float) -> dict[str, Any] | None:
    from .protocol import TERMINAL_STATUSES
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        response = agent.handle({"id": 0, "op": "status", "params": {"job_ids": [job_id]}})
        jobs = response["ok"] and response["result"]["jobs"]
        if jobs and jobs[0]["status"] in TERMINAL_STATUSES:
            return {"id": 0, "ok": True, "result": jobs[0]}
        time.sleep(0.05)
    return None


if __name__ == "__main__":
    sys.exit(main())

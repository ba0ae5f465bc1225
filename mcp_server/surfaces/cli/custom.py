"""The operations whose command line is a person's own way of saying them: `arc submit` builds one job spec from
flags (or takes `-- CMD ARGS`), `arc logs` can follow a log, `arc wait` waits as long as it takes and exits 0 only
if every job succeeded. Each sets `dest` to the operation's parameter where it has one, so next-step hints map onto
its options; `hint_drops` names parameters a hint may leave out."""
from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from typing import Any

from ...core.vocabulary import ACTIVE_STATUSES, JobStatus
from .arguments import parse_overrides, subparser
from .reach import call
from .render import console, emit, render_jobs, render_submit


def add_submit(tree) -> None:
    s = subparser(tree, ["submit"], "submit one job: trainer overrides, or -- CMD ARGS for any command")
    s.add_argument("--host")
    s.add_argument("--label")
    s.add_argument("--gpus", type=int)
    s.add_argument("--gpu-class")
    s.add_argument("--gpu-model")
    s.add_argument("--min-memory-gb", type=float)
    s.add_argument("--cpu", action="store_true", help="run on a CPU slot")
    s.add_argument("--time-limit", type=float, help="hard kill limit in seconds")
    s.add_argument("--time-budget", type=float, help="trainer's training budget in seconds")
    s.add_argument("--preset")
    s.add_argument("--seed", type=int)
    s.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="trainer overrides")
    s.add_argument("--code", help="code folder to snapshot, or a code hash")
    s.add_argument("--name")
    s.add_argument("--tag", action="append")
    s.add_argument("--hypothesis")
    s.add_argument("--priority", type=int, default=0)
    s.add_argument("-q", "--quiet", action="store_true", help="print only the job id")
    s.add_argument("argv", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    s.set_defaults(fn=cmd_submit)


def cmd_submit(args) -> int:
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    requirements: dict[str, Any] = {}
    if args.cpu:
        requirements["cpu_only"] = True
    if args.gpus is not None:
        requirements["gpus"] = args.gpus
    for key in ("host", "label", "gpu_class", "gpu_model", "min_memory_gb"):
        if getattr(args, key) is not None:
            requirements[key] = getattr(args, key)
    spec: dict[str, Any] = {"requirements": requirements, "tags": args.tag or [], "priority": args.priority}
    if argv:
        spec["command"] = argv
        if args.code:
            spec["code"] = args.code
    else:
        spec["config"] = parse_overrides(args.set or [])
        for key, attr in (("preset", "preset"), ("time_budget_s", "time_budget"), ("seed", "seed"),
                          ("code", "code")):
            if getattr(args, attr) is not None:
                spec[key] = getattr(args, attr)
    if args.time_limit is not None:
        spec["time_limit_s"] = args.time_limit
    if args.name:
        spec["name"] = args.name
    if args.hypothesis:
        spec["hypothesis_id"] = args.hypothesis
    data = call(args, "submit_jobs", jobs=[spec], submitted_by=getpass.getuser())
    if args.json:
        print(json.dumps(data))
    elif args.quiet:
        print(data["jobs"][0]["job_id"])
    else:
        render_submit(console(), data)
    return 0


def add_logs(tree) -> None:
    lg = subparser(tree, ["logs"], "a job's output")
    lg.add_argument("job_id")
    lg.add_argument("-n", "--lines", type=int, default=80)
    lg.add_argument("-f", "--follow", action="store_true")
    lg.set_defaults(fn=cmd_logs, hint_drops=("offset",))      # arc logs shows the newest lines anyway


def cmd_logs(args) -> int:
    data = call(args, "tail_log", job_id=args.job_id, lines=args.lines)
    sys.stdout.write(data["text"] + ("\n" if data["text"] and not data["text"].endswith("\n") else ""))
    offset = data["next_offset"]
    while args.follow:
        status = call(args, "job_status", job_ids=[args.job_id])["jobs"][0]["status"]
        data = call(args, "tail_log", job_id=args.job_id, offset=offset)
        if data["text"]:
            sys.stdout.write(data["text"])
            sys.stdout.flush()
        offset = data["next_offset"]
        if status not in ACTIVE_STATUSES and not data["text"]:
            break
        time.sleep(1.0)
    return 0


def add_wait(tree) -> None:
    w = subparser(tree, ["wait"], "wait for jobs to end; exit 0 only if all succeeded")
    w.add_argument("job_ids", nargs="+")
    w.add_argument("--timeout", type=float, help="give up after this many seconds (exit 1)")
    w.set_defaults(fn=cmd_wait)


def cmd_wait(args) -> int:
    deadline = time.monotonic() + args.timeout if args.timeout else None
    pending = list(args.job_ids)
    done: list[dict] = []
    while pending:
        left = 600.0 if deadline is None else max(0.0, deadline - time.monotonic())
        data = call(args, "wait_for_jobs", timeout=left + 30, job_ids=pending, mode="all",
                    timeout_s=min(600.0, left))
        done += data["done"]
        pending = data["pending"]
        if deadline is not None and time.monotonic() >= deadline:
            break
    result = {"summary": f"{len(done)} ended, {len(pending)} still pending", "jobs": done, "pending": pending}
    emit(args, result, lambda c, d: render_jobs(c, {**d, "summary": d["summary"]}))
    ok = not pending and all(j["status"] == JobStatus.SUCCEEDED for j in done)
    return 0 if ok else 1


# The operations whose command line is written here instead of made from their declaration.
CUSTOM = {"submit_jobs": add_submit, "tail_log": add_logs, "wait_for_jobs": add_wait}

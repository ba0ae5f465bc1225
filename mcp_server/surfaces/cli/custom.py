"""The operations whose command line is a person's own way of saying them: `arc submit` builds one job spec from
flags (or takes `-- CMD ARGS`), `arc logs` can follow a log, `arc wait` waits as long as it takes and exits 0 only
if every job succeeded, `arc sql` prints in the format asked (and exports every row as TSV or CSV). Each sets `dest` to the operation's parameter where it has one, so next-step hints map onto
its options; `hint_drops` names parameters a hint may leave out."""
from __future__ import annotations

import argparse
import csv
import getpass
import json
import os
import sys
import time
from typing import Any, Iterable

from ...core.vocabulary import ACTIVE_STATUSES, JobStatus
from .arguments import parse_overrides, subparser
from .reach import CliError, call, read_or_call, state_paths
from .render import console, emit, render_jobs, render_sql, render_submit


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


SQL_FORMATS = ("table", "tsv", "csv", "json")
EXPORT_TIMEOUT_S = 300.0


def add_sql(tree) -> None:
    from ...core.service import MAX_ROWS

    q = subparser(tree, ["sql"], "read-only SQL on the history (one SELECT); `arc schema` lists the tables",
                  description="Read-only SQL on the history: exactly one SELECT. As a table (a record per row when "
                              "too wide) at a terminal, TSV when piped. TSV and CSV print every row (an export, "
                              "e.g. arc sql --format csv \"SELECT * FROM runs\" > runs.csv); table and JSON at "
                              f"most --limit rows (default 50, at most {MAX_ROWS}).")
    q.add_argument("sql", metavar="SQL")
    q.add_argument("--limit", type=int, metavar="N",
                   help=f"at most N rows (1 to {MAX_ROWS}; default 50 for table and JSON, every row for TSV/CSV)")
    q.add_argument("--format", choices=SQL_FORMATS, dest="sql_format",
                   help="table (default at a terminal), tsv (default when piped), csv, json (as --json)")
    q.set_defaults(fn=cmd_sql)


def cmd_sql(args) -> int:
    shape = "json" if args.json else args.sql_format or ("table" if sys.stdout.isatty() else "tsv")
    if shape in ("tsv", "csv") and args.limit is None:
        rows = export_rows(args)
    else:
        params = {"sql": args.sql} if args.limit is None else {"sql": args.sql, "limit": args.limit}
        data = read_or_call(args, "query_results", **params)
        if shape == "json":
            print(json.dumps(data))
            return 0
        if shape == "table":
            render_sql(console(), data)
            return 0
        rows = [data["columns"], *data["rows"]]
        if data["truncated"]:
            print(f"arc: {data['summary']}; without --limit, --format {shape} prints every row", file=sys.stderr)
    try:
        write_rows(rows, shape, sys.stdout)
    except BrokenPipeError:         # `arc sql ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def export_rows(args) -> Iterable[list[Any]]:
    """Every row, read as query_results reads them: the daemon's snapshot while it runs (the call refreshes it
    and checks the query), else the history file."""
    from ...daemon.client import DaemonClient
    from ...history.usersql import UserSqlError, stream_user_sql

    paths = state_paths(args)
    source = paths.history
    if DaemonClient(paths).running():
        read_or_call(args, "query_results", sql=args.sql, limit=1)
        source = paths.snapshot
    rows = stream_user_sql(source, args.sql, timeout_s=EXPORT_TIMEOUT_S)
    try:
        yield next(rows)
        yield from rows
    except UserSqlError as e:
        raise CliError(str(e)) from None


def write_rows(rows: Iterable[list[Any]], shape: str, out) -> None:
    """The header, then each row: CSV as the csv module writes it; TSV one line per row, its tabs, newlines and
    backslashes escaped (as PostgreSQL's text format), so every line is one row."""
    if shape == "csv":
        writer = csv.writer(out, lineterminator="\n")
        for row in rows:
            writer.writerow([_cell(v) for v in row])
        return
    for row in rows:
        out.write("\t".join(_cell(v).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
                            .replace("\r", "\\r") for v in row) + "\n")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


# The operations whose command line is written here instead of made from their declaration.
CUSTOM = {"submit_jobs": add_submit, "tail_log": add_logs, "wait_for_jobs": add_wait, "query_results": add_sql}

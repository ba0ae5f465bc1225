"""`arc`: the command line. Every MCP tool is also a command here, through the same service layer (human parity).

Commands talk to the daemon of the state dir, starting it when they need the hosts; `arc jobs` and `arc sql` read
the history directly when no daemon runs. Rich tables for people, `--json` for scripts.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from .cli_hints import as_command_line
from .paths import StatePaths, hosts_file
from .vocabulary import ACTIVE_STATUSES, HYPOTHESIS_STATUSES, JobStatus

EXIT_USAGE = 2


class CliError(Exception):
    pass


# ---- output ---------------------------------------------------------------------------------------------------

def _console():
    from rich.console import Console

    return Console(highlight=False)


def emit(args, data: dict[str, Any], render) -> None:
    if args.json:
        print(json.dumps(data, indent=None, default=str))
    else:
        render(_console(), data)


def _table(title: str | None, columns: list[str], rows: list[list[Any]]):
    from rich.table import Table

    t = Table(title=title, title_justify="left", show_edge=False, header_style="bold")
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*["" if v is None else str(v) for v in r])
    return t


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6f}" if abs(v) < 100 else f"{v:.1f}"
    return "" if v is None else str(v)


def render_summary(console, data: dict) -> None:
    console.print(data.get("summary", ""))
    render_next(console, data)


def render_next(console, data: dict) -> None:
    if data.get("next"):
        console.print(f"next: {as_command_line(data['next'])}", style="dim", markup=False, highlight=False)


def render_gpus(console, data: dict) -> None:
    rows = []
    for h in data["hosts"]:
        if not h["reachable"]:
            rows.append([h["name"], "-", "unreachable", "", "", "", h.get("error", "")])
            continue
        for g in h["gpus"]:
            mem = f"{_fmt(g.get('memory_used_gb'))}/{g['memory_total_gb']} GB"
            rows.append([h["name"], g["index"], g["gpu_class"] + (" (sim)" if g.get("simulated") else ""), mem,
                         _fmt(g.get("util_pct")), g.get("job_id") or "free",
                         f"frees in {g['frees_in_s']:.0f}s" if g.get("frees_in_s") is not None else ""])
        if h.get("cpu_slots"):
            rows.append([h["name"], "cpu", f"{h['cpu_slots']} slots", "", "", f"{h['cpu_slots_used']} used", ""])
    console.print(_table(None, ["host", "gpu", "class", "memory", "util %", "job", ""], rows))
    render_summary(console, data)


def render_jobs(console, data: dict) -> None:
    rows = [[j["job_id"], j["status"], j.get("host"), j.get("gpu_class"), _fmt(j.get("metric")),
             j.get("name") or "", (j.get("reason") or "")[:60]] for j in data["jobs"]]
    console.print(_table(None, ["job", "status", "host", "class", "metric", "name", "reason"], rows))
    render_summary(console, data)


def render_job_details(console, data: dict) -> None:
    for j in data["jobs"]:
        ended = "".join(f" {k}={j[k]}" for k in ("exit_code", "signal") if j.get(k) is not None)
        console.print(f"[bold]{j['job_id']}[/bold] {j['status']}  host={j.get('host')} class={j.get('gpu_class')}"
                      f"{ended}")
        for key in ("name", "config", "command", "code_hash", "seed", "reason", "summary_metrics", "last_metrics"):
            if j.get(key) not in (None, [], {}):
                console.print(f"  {key}: {j[key]}")
    render_summary(console, data)


def render_sql(console, data: dict) -> None:
    console.print(_table(None, data["columns"], [[_fmt(v) for v in r] for r in data["rows"]]))
    render_summary(console, data)


def render_submit(console, data: dict) -> None:
    for j in data["jobs"]:
        where = f"on {j['host']} ({j['gpu_class']})" if j.get("host") else f"queue position {j.get('queue_position')}"
        console.print(f"{j['job_id']} {j['status']} {where}")
    render_summary(console, data)


# ---- commands -------------------------------------------------------------------------------------------------

def _paths(args) -> StatePaths:
    return StatePaths.resolve(args.state_dir)


def _client(args, start: bool = True, daemon_args: tuple[str, ...] = ()):
    from .daemon_client import DaemonClient

    client = DaemonClient(_paths(args))
    # A running daemon already validated its files; checking them again would cost every command a second.
    if start and not client.running():
        hosts = hosts_file(args.hosts)
        if not hosts.exists():
            raise CliError(f"hosts file {hosts} not found; pass --hosts FILE or set ARC_HOSTS "
                           "(the repository's hosts.yaml describes this machine)")
        _check_hosts_file(hosts)
        client.ensure(hosts, _research_file(args), daemon_args)
    return client


def _research_file(args) -> Path:
    from .paths import default_research_file
    from .research import ResearchConfigError, load_research

    path = default_research_file(hosts_file(args.hosts), args.research)
    try:
        load_research(path)
    except ResearchConfigError as e:
        raise CliError(str(e)) from None
    return path


def _check_hosts_file(path: Path) -> None:
    from .hosts_config import HostsConfigError, load_hosts

    try:
        load_hosts(path)
    except HostsConfigError as e:
        raise CliError(str(e)) from None


def _call(args, method: str, timeout: float = 120.0, **params) -> dict:
    from .daemon_client import DaemonError

    try:
        return _client(args).call(method, timeout=timeout, **params)
    except DaemonError as e:
        raise CliError(str(e)) from None


def cmd_gpus(args) -> int:
    emit(args, _call(args, "list_gpus", host=args.host), render_gpus)
    return 0


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
        spec["config"] = _parse_overrides(args.set or [])
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
    data = _call(args, "submit_jobs", specs=[spec], submitted_by="cli")
    if args.json:
        print(json.dumps(data))
    elif args.quiet:
        print(data["jobs"][0]["job_id"])
    else:
        render_submit(_console(), data)
    return 0


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise CliError(f"--set takes key=value (got '{item}'), e.g. --set depth=10 matrix_lr=0.03")
        key, raw = item.split("=", 1)
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


def cmd_jobs(args) -> int:
    params = dict(status=args.status or None, host=args.host, tag=args.tag, hypothesis_id=args.hypothesis,
                  limit=args.limit, offset=args.offset)
    emit(args, _read_or_call(args, "list_jobs", **params), render_jobs)
    return 0


def cmd_status(args) -> int:
    emit(args, _read_or_call(args, "job_status", job_ids=args.job_ids), render_job_details)
    return 0


def cmd_sql(args) -> int:
    emit(args, _read_or_call(args, "query_results", sql=args.query, limit=args.limit), render_sql)
    return 0


def _read_or_call(args, method: str, **params) -> dict:
    """History reads go to the daemon when it runs, else straight to the DuckDB file."""
    from .daemon_client import DaemonClient, DaemonError

    client = DaemonClient(_paths(args))
    if client.running():
        try:
            return client.call(method, **params)
        except DaemonError as e:
            raise CliError(str(e)) from None
    from .research import load_research
    from .service import ArcError, Service

    paths = _paths(args)
    if not paths.history.exists():
        raise CliError(f"no history at {paths.history} yet; submit a job first (arc submit) or pass --state-dir")
    research = load_research(_research_file(args))    # the campaign's metric, space and noise settings
    try:
        with Service(paths, None, read_only=True, research=research) as service:
            return getattr(service, method)(**params).model_dump(mode="json")
    except ArcError as e:
        raise CliError(str(e)) from None


def cmd_logs(args) -> int:
    data = _call(args, "tail_log", job_id=args.job_id, lines=args.lines)
    sys.stdout.write(data["text"] + ("\n" if data["text"] and not data["text"].endswith("\n") else ""))
    offset = data["next_offset"]
    while args.follow:
        status = _call(args, "job_status", job_ids=[args.job_id])["jobs"][0]["status"]
        data = _call(args, "tail_log", job_id=args.job_id, offset=offset)
        if data["text"]:
            sys.stdout.write(data["text"])
            sys.stdout.flush()
        offset = data["next_offset"]
        if status not in ACTIVE_STATUSES and not data["text"]:
            break
        time.sleep(1.0)
    return 0


def cmd_wait(args) -> int:
    deadline = time.monotonic() + args.timeout if args.timeout else None
    pending = list(args.job_ids)
    done: list[dict] = []
    while pending:
        left = 600.0 if deadline is None else max(0.0, deadline - time.monotonic())
        data = _call(args, "wait_for_jobs", timeout=left + 30, job_ids=pending, mode="all",
                     timeout_s=min(600.0, left))
        done += data["done"]
        pending = data["pending"]
        if deadline is not None and time.monotonic() >= deadline:
            break
    result = {"summary": f"{len(done)} ended, {len(pending)} still pending", "jobs": done, "pending": pending}
    emit(args, result, lambda c, d: render_jobs(c, {**d, "summary": d["summary"]}))
    ok = not pending and all(j["status"] == JobStatus.SUCCEEDED for j in done)
    return 0 if ok else 1


def cmd_cancel(args) -> int:
    emit(args, _call(args, "cancel_jobs", job_ids=args.job_ids), render_summary)
    return 0


def cmd_hosts_check(args) -> int:
    import dataclasses

    from .fleet.bootstrap import check_hosts
    from .fleet.report import check_hosts_live
    from .hosts_config import HostsConfigError, load_hosts

    try:
        hosts = load_hosts(hosts_file(args.hosts))
    except HostsConfigError as e:
        raise CliError(str(e)) from None
    if args.json:
        results = check_hosts(hosts)
        ready = sum(r.ready for r in results)
        print(json.dumps({"summary": f"{ready}/{len(results)} hosts ready",
                          "hosts": [dataclasses.asdict(r) for r in results]}, default=str))
    else:
        results = check_hosts_live(hosts, _console())
    return 0 if all(r.ready for r in results) else 1


def cmd_daemon(args) -> int:
    from .daemon_client import DaemonClient

    paths = _paths(args)
    client = DaemonClient(paths)
    if args.action == "restart":        # e.g. after editing hosts.yaml: running jobs are kept and reconciled
        client.stop()
        args.action = "start"
    if args.action == "start":
        if args.foreground:
            from .daemon import serve
            from .daemon_state import DaemonRunning

            _setup_daemon_logging(paths)
            hosts = hosts_file(args.hosts)
            _check_hosts_file(hosts)
            settings = None
            if args.lost_after is not None:
                from .scheduler import SchedulerSettings

                settings = SchedulerSettings(lost_after_s=args.lost_after)
            try:
                serve(args.state_dir, hosts, _research_file(args), port=args.port, settings=settings)
            except DaemonRunning as e:
                raise CliError(str(e)) from None
            return 0
        daemon_args = [] if args.port is None else ["--port", str(args.port)]
        if args.lost_after is not None:
            daemon_args += ["--lost-after", f"{args.lost_after:g}"]
        if daemon_args and client.running():
            print(f"arc: a daemon already runs; {' '.join(daemon_args)} applies when it is started again "
                  "(arc daemon stop, then start)", file=sys.stderr)
        info = _client(args, daemon_args=tuple(daemon_args)).info()
        emit(args, info, lambda c, d: c.print(f"daemon pid {d['pid']} serving {d['socket']} and "
                                              f"http://127.0.0.1:{d['port']}/mcp"))
        return 0
    if args.action == "stop":
        stopped = client.stop()
        emit(args, {"stopped": stopped}, lambda c, d: c.print("daemon stopped" if d["stopped"] else "no daemon runs"))
        return 0
    info = client.info() if client.running() else {}
    emit(args, {"running": bool(info), **info},
         lambda c, d: c.print(f"daemon pid {d['pid']}: {d['socket']}, http://127.0.0.1:{d['port']}/mcp, "
                              f"log {d.get('log', paths.daemon_log)}" if d["running"]
                              else f"no daemon runs for {paths.root}"))
    return 0


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds > 0, e.g. --lost-after 60")
    return value


def _setup_daemon_logging(paths: StatePaths) -> None:
    logging.basicConfig(level=os.environ.get("ARC_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def cmd_data_prepare(args) -> int:
    from .datasets import DatasetError, prepare_dataset

    prepare_args = ["--source", args.source, "--vocab-size", str(args.vocab_size)]
    if args.max_bytes is not None:
        prepare_args += ["--max-bytes", str(args.max_bytes)]
    try:
        with _console().status(f"preparing the trainer's data from {args.source}"):
            digest, facts = prepare_dataset(_paths(args).ensure(), prepare_args)
    except DatasetError as e:
        raise CliError(str(e)) from None
    emit(args, {"data_hash": digest, **facts},
         lambda c, d: c.print(f"dataset {d['data_hash'][:12]} is now current: {d['train_tokens']:,} training "
                              f"tokens, vocabulary {d['vocab_size']}; new trainer jobs use it"))
    return 0


def cmd_mcp(args) -> int:
    from .bridge import run
    from .daemon_client import DaemonError

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    hosts = hosts_file(args.hosts)
    _check_hosts_file(hosts)
    try:
        run(_paths(args), hosts, _research_file(args))
    except DaemonError as e:           # the daemon cannot start: say why instead of a traceback
        raise CliError(str(e)) from None
    return 0


# ---- hypotheses, insights, demo (the same Service methods as the MCP tools) ------------------------------------

def render_hypotheses(console, data: dict) -> None:
    rows = [[h["hyp_id"], h["status"], h["text"][:70], h.get("verdict") or "", _fmt(h.get("effect_size")),
             " ".join(h.get("jobs") or [])] for h in data["hypotheses"]]
    console.print(_table(None, ["id", "status", "hypothesis", "verdict", "effect", "jobs"], rows))
    render_summary(console, data)


def render_hypothesis(console, data: dict) -> None:
    render_hypotheses(console, {**data, "hypotheses": [data["hypothesis"]]})


def render_leaderboard(console, data: dict) -> None:
    for c in data["classes"]:
        rows = [[r["rank"], r["job_id"], _fmt(r["metric"]), f"{r['vs_baseline']:+.6f}",
                 json.dumps(r["changes"]) if r["changes"] else "", "yes" if r["code_changed"] else "",
                 r.get("significance") or ""] for r in c["best"]]
        console.print(_table(f"{c['gpu_class']}: baseline {c['baseline_job']} {_fmt(c['baseline_metric'])} "
                             f"({c.get('baseline_runs', 1)} run(s)), {c['runs']} runs",
                             ["rank", "job", data["metric"], "vs baseline", "changes", "code", "significance"],
                             rows))
    render_summary(console, data)


def render_digest(console, data: dict) -> None:
    render_summary(console, data)
    for key in ("new_bests", "failures", "hypotheses", "significance", "health"):
        for line in data.get(key) or []:
            console.print(f"  {key.replace('_', ' ')}: {line}", markup=False)
    if data.get("guardrails"):
        console.print(f"  guardrails: {data['guardrails']}", markup=False)
    console.print(f"[dim]until {data['until']}[/dim]")


def render_schema(console, data: dict) -> None:
    for r in data["relations"]:
        console.print(f"[bold]{r['name']}[/bold] ({r['kind']}): {r['doc']}")
        for column, doc in r["columns"].items():
            console.print(f"  {column}  [dim]{doc}[/dim]")
    for e in data["examples"]:
        console.print(f"[bold]-- {e['title']}[/bold]\n{e['sql']}")
    render_summary(console, data)


def cmd_hypotheses(args) -> int:
    if args.hyp_action == "list":
        emit(args, _read_or_call(args, "list_hypotheses", status=args.status, limit=args.limit,
                                 offset=args.offset), render_hypotheses)
    elif args.hyp_action == "add":
        emit(args, _call(args, "append_hypothesis", text=args.text, rationale=args.rationale, tags=args.tag,
                         jobs=args.job, created_by="cli"), render_hypothesis)
    else:
        if bool(args.a) != bool(args.b):
            raise CliError("--a and --b go together: the reference runs and the hypothesis's runs")
        emit(args, _call(args, "update_hypothesis", hyp_id=args.hyp_id, status=args.status, verdict=args.verdict,
                         effect_size=args.effect_size, add_jobs=args.job,
                         compare={"a": args.a, "b": args.b} if args.a else None), render_hypothesis)
    return 0


def cmd_leaderboard(args) -> int:
    emit(args, _read_or_call(args, "leaderboard", gpu_class=args.gpu_class, top=args.top), render_leaderboard)
    return 0


def cmd_digest(args) -> int:
    emit(args, _read_or_call(args, "digest", since=args.since), render_digest)
    return 0


def cmd_schema(args) -> int:
    emit(args, _read_or_call(args, "describe_history", table=args.table), render_schema)
    return 0


def cmd_plot(args) -> int:
    import base64

    data = _read_or_call(args, "plot_runs", job_ids=args.job_ids or None, series=args.series, kind=args.kind,
                         gpu_class=args.gpu_class)
    out = Path(args.out)
    out.write_bytes(base64.urlsafe_b64decode(data.pop("png")))  # pydantic writes bytes as url-safe base64
    emit(args, {**data, "path": str(out)}, lambda c, d: c.print(f"{d['summary']}; saved {d['path']}"))
    return 0


# ---- research: guardrails, suggestions, noise, comparisons, snapshots ------------------------------------------

def render_guard(console, data: dict) -> None:
    console.print(data["summary"], markup=False)
    rows = [["GPU-hours", f"{data['gpu_hours_used']:.3f} used, {data['gpu_hours_committed']:.3f} committed"
             + (f", {data['gpu_hours_left']:.3f} left of {data['gpu_hours_budget']:g}"
                if data.get("gpu_hours_budget") is not None else "")]]
    if data.get("money_budget") is not None:
        rows.append(["money", f"{data['money_used']:.2f} used, {data['money_left']:.2f} left of "
                              f"{data['money_budget']:g}"])
    rows.append(["checkpoint", f"{data['experiments_since_checkpoint']} experiments"
                 + (f" of {data['checkpoint_every']}" if data.get("checkpoint_every") else "")
                 + f", {data['hours_since_checkpoint']:.2f} h"
                 + (f" of {data['checkpoint_every_hours']:g}" if data.get("checkpoint_every_hours") else "")
                 + " since the last approval"])
    rows.append(["GPUs", f"{data['gpus_in_use']} in use" + (f" of {data['max_gpus']}" if data.get("max_gpus")
                                                            else "")])
    if data.get("last_approval_at"):
        rows.append(["last approval", f"{data['last_approval_at']} by {data.get('last_approval_by') or '?'}: "
                                      f"{data.get('last_approval_note') or '(no note)'}"])
    if data.get("paused"):
        rows.append(["PAUSED", f"{data['paused']}; {data['resume']}"])
    table = _table(None, ["", ""], rows)
    table.show_header = False
    console.print(table)


def render_suggestions(console, data: dict) -> None:
    keys = sorted({k for c in data["configs"] for k in c})
    console.print(_table(None, ["#", *keys], [[i + 1, *(_fmt(c.get(k)) for k in keys)]
                                             for i, c in enumerate(data["configs"])]))
    render_summary(console, data)


def render_comparison(console, data: dict) -> None:
    console.print(data["summary"], markup=False)
    rows = [["a", data.get("gpu_class_a"), data["n_a"], _fmt(data["mean_a"])],
            ["b", data.get("gpu_class_b"), data["n_b"], _fmt(data["mean_b"])]]
    console.print(_table(None, ["side", "class", "runs", "mean"], rows))
    render_next(console, data)


def render_diff(console, data: dict) -> None:
    console.print(data["summary"], markup=False)
    for line in data["settings"] + data["files"]:
        console.print(f"  {line}", markup=False)
    if data.get("diff"):
        sys.stdout.write("\n" + data["diff"])


def cmd_research(args) -> int:
    method = "reload_research" if args.research_action == "reload" else "research_status"
    emit(args, _call(args, method), render_guard)
    return 0


def cmd_approve(args) -> int:
    import getpass

    emit(args, _call(args, "approve", note=args.note, by=getpass.getuser()), render_guard)
    return 0


def cmd_suggest(args) -> int:
    emit(args, _read_or_call(args, "suggest_configs", n=args.n, sampler=args.sampler, gpu_class=args.gpu_class,
                             seed=args.seed, preset=args.preset, fixed=_parse_overrides(args.set or []) or None),
         render_suggestions)
    return 0


def cmd_compare(args) -> int:
    emit(args, _read_or_call(args, "compare_runs", a=args.a, b=args.b), render_comparison)
    return 0


def cmd_noise(args) -> int:
    emit(args, _call(args, "measure_noise", gpu_class=args.gpu_class, seeds=args.seeds, preset=args.preset,
                     config=_parse_overrides(args.set or []) or None), render_submit)
    return 0


def cmd_diff(args) -> int:
    emit(args, _read_or_call(args, "diff_jobs", a=args.a, b=args.b, max_lines=args.max_lines), render_diff)
    return 0


def cmd_rerun(args) -> int:
    emit(args, _call(args, "rerun_job", job_id=args.job_id, seeds=args.seeds, gpu_class=args.gpu_class,
                     same_host=args.same_host), render_submit)
    return 0


def cmd_demo(args) -> int:
    from .demo import DEFAULT_STATE_DIR, DemoError, run_demo

    hosts = hosts_file(args.hosts)
    if not hosts.exists():
        raise CliError(f"hosts file {hosts} not found; run the demo from the repository (its hosts.yaml describes "
                       "this machine) or pass --hosts FILE")
    _check_hosts_file(hosts)
    try:
        run_demo(args.state_dir or DEFAULT_STATE_DIR, hosts.resolve(), steps=args.steps,
                 keep_daemon=args.keep_daemon)
    except DemoError as e:
        raise CliError(str(e)) from None
    return 0


# ---- parser ---------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="arc", description="Run autoresearch experiments on a GPU fleet.")
    _global_options(p, top=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    hosts = sub.add_parser("hosts", help="the fleet").add_subparsers(dest="hosts_action", required=True)
    hosts.add_parser("check", help="bootstrap every host and report its readiness").set_defaults(fn=cmd_hosts_check)

    g = sub.add_parser("gpus", help="every host and GPU, with the job on it")
    g.add_argument("--host")
    g.set_defaults(fn=cmd_gpus)

    s = sub.add_parser("submit", help="submit one job: trainer overrides, or -- CMD ARGS for any command")
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

    j = sub.add_parser("jobs", help="list jobs")
    j.add_argument("--status", action="append")
    j.add_argument("--host")
    j.add_argument("--tag")
    j.add_argument("--hypothesis")
    j.add_argument("--limit", type=int, default=50)
    j.add_argument("--offset", type=int, default=0)
    j.set_defaults(fn=cmd_jobs)

    st = sub.add_parser("status", help="one or more jobs in detail")
    st.add_argument("job_ids", nargs="+")
    st.set_defaults(fn=cmd_status)

    lg = sub.add_parser("logs", help="a job's output")
    lg.add_argument("job_id")
    lg.add_argument("-n", "--lines", type=int, default=80)
    lg.add_argument("-f", "--follow", action="store_true")
    lg.set_defaults(fn=cmd_logs)

    w = sub.add_parser("wait", help="wait for jobs to end; exit 0 only if all succeeded")
    w.add_argument("job_ids", nargs="+")
    w.add_argument("--timeout", type=float, help="give up after this many seconds (exit 1)")
    w.set_defaults(fn=cmd_wait)

    c = sub.add_parser("cancel", help="cancel jobs")
    c.add_argument("job_ids", nargs="+")
    c.set_defaults(fn=cmd_cancel)

    q = sub.add_parser("sql", help="read-only SQL on the history (one SELECT)")
    q.add_argument("query")
    q.add_argument("--limit", type=int, default=50)
    q.set_defaults(fn=cmd_sql)

    d = sub.add_parser("daemon", help="the controller daemon: start | stop | restart (after editing hosts.yaml) | "
                                      "status")
    d.add_argument("action", choices=["start", "stop", "restart", "status"])
    d.add_argument("--foreground", action="store_true", help="run in this process (what the background start runs)")
    d.add_argument("--port", type=int, help="loopback HTTP port for MCP (default: the last one, else a free one)")
    d.add_argument("--lost-after", type=_positive_seconds, metavar="S",
                   help="grace before the jobs of an unreachable host are marked lost (default 600 s; applies when "
                        "this command starts the daemon)")
    d.set_defaults(fn=cmd_daemon)

    hy = sub.add_parser("hypotheses", help="research hypotheses: list | add TEXT | update ID")
    hys = hy.add_subparsers(dest="hyp_action", required=True)
    hl = hys.add_parser("list", help="hypotheses, newest first")
    hl.add_argument("--status", choices=list(HYPOTHESIS_STATUSES))
    hl.add_argument("--limit", type=int, default=20)
    hl.add_argument("--offset", type=int, default=0)
    ha = hys.add_parser("add", help="write a hypothesis before the runs that test it")
    ha.add_argument("text")
    ha.add_argument("--rationale")
    ha.add_argument("--tag", action="append")
    ha.add_argument("--job", action="append", help="link a job (repeatable)")
    hu = hys.add_parser("update", help="judge a hypothesis: status, verdict, effect size, more jobs")
    hu.add_argument("hyp_id")
    hu.add_argument("--status", choices=list(HYPOTHESIS_STATUSES))
    hu.add_argument("--verdict")
    hu.add_argument("--effect-size", type=float)
    hu.add_argument("--job", action="append", help="link a job (repeatable)")
    hu.add_argument("--a", nargs="+", metavar="JOB", help="compare: reference runs (the verdict states the result)")
    hu.add_argument("--b", nargs="+", metavar="JOB", help="compare: the hypothesis's runs")
    hy.set_defaults(fn=cmd_hypotheses)

    lb = sub.add_parser("leaderboard", help="best runs per GPU class with their changes from the baseline")
    lb.add_argument("--gpu-class")
    lb.add_argument("--top", type=int, default=5)
    lb.set_defaults(fn=cmd_leaderboard)

    dg = sub.add_parser("digest", help="what changed since a time (ISO) or a span (30m, 2h, 1d)")
    dg.add_argument("--since")
    dg.set_defaults(fn=cmd_digest)

    sc = sub.add_parser("schema", help="the history's tables, columns and example queries")
    sc.add_argument("table", nargs="?")
    sc.set_defaults(fn=cmd_schema)

    pl = sub.add_parser("plot", help="PNG of loss curves for jobs, or of the running best (--kind best)")
    pl.add_argument("job_ids", nargs="*")
    pl.add_argument("--series", default="train_loss")
    pl.add_argument("--kind", choices=["curves", "best"], default="curves")
    pl.add_argument("--gpu-class")
    pl.add_argument("-o", "--out", default="arc-plot.png")
    pl.set_defaults(fn=cmd_plot)

    rs = sub.add_parser("research", help="the campaign's guardrails: research status | reload (after editing "
                                          "research.yaml)")
    rs.add_argument("research_action", choices=["status", "reload"])
    rs.set_defaults(fn=cmd_research)

    ap = sub.add_parser("approve", help="a person's go-ahead at a checkpoint; the note is shown to the agent")
    ap.add_argument("--note", help="what the agent should know for the next stretch")
    ap.set_defaults(fn=cmd_approve)

    sg = sub.add_parser("suggest", help="configs inside research.yaml's search space from Optuna (TPE or CMA-ES)")
    sg.add_argument("-n", type=int, default=8, help="how many (default 8)")
    sg.add_argument("--sampler", choices=["tpe", "cmaes"], default="tpe")
    sg.add_argument("--gpu-class", help="learn from this class's runs (default: the class with most runs)")
    sg.add_argument("--preset", help="learn from, and suggest for, runs of this trainer preset")
    sg.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="settings outside the space runs share")
    sg.add_argument("--seed", type=int, default=0)
    sg.set_defaults(fn=cmd_suggest)

    cp = sub.add_parser("compare", help="runs --b against runs --a: class, runs per side, difference, significance")
    cp.add_argument("--a", nargs="+", required=True, metavar="JOB", help="reference runs, e.g. the baseline's seeds")
    cp.add_argument("--b", nargs="+", required=True, metavar="JOB", help="candidate runs")
    cp.set_defaults(fn=cmd_compare)

    nz = sub.add_parser("noise", help="the baseline with several seeds per GPU class: the noise floor")
    nz.add_argument("--gpu-class", help="one class (default: each class of the fleet)")
    nz.add_argument("--seeds", type=int, help="seeds per class (default: research.yaml noise.seeds)")
    nz.add_argument("--preset")
    nz.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="the baseline's trainer overrides")
    nz.set_defaults(fn=cmd_noise)

    df = sub.add_parser("diff", help="settings and code differences from job A to job B")
    df.add_argument("a")
    df.add_argument("b")
    df.add_argument("--max-lines", type=int, default=300)
    df.set_defaults(fn=cmd_diff)

    rr = sub.add_parser("rerun", help="a job's exact code and config again, with new seeds or on another class")
    rr.add_argument("job_id")
    rr.add_argument("--seeds", type=int, nargs="+")
    rr.add_argument("--gpu-class")
    rr.add_argument("--same-host", action="store_true")
    rr.set_defaults(fn=cmd_rerun)

    dm = sub.add_parser("demo", help="a short research campaign on this machine through the real MCP client "
                                     "(state dir default ./.arc-demo)")
    dm.add_argument("--steps", type=int, default=40, help="training steps per run (default 40)")
    dm.add_argument("--keep-daemon", action="store_true", help="leave the demo's daemon running at the end")
    dm.set_defaults(fn=cmd_demo)

    data = sub.add_parser("data", help="the trainer's dataset").add_subparsers(dest="data_action", required=True)
    dp = data.add_parser("prepare", help="tokenize a corpus (python -m trainer.prepare) and make it current")
    dp.add_argument("--source", default="stdlib",
                    help="stdlib (Python's own source, the default), a glob of text files, or of parquet shards")
    dp.add_argument("--vocab-size", type=int, default=8192)
    dp.add_argument("--max-bytes", type=int, help="cap on the corpus size")
    dp.set_defaults(fn=cmd_data_prepare)

    m = sub.add_parser("mcp", help="MCP over stdio, for Claude Code (starts the daemon if needed)")
    m.set_defaults(fn=cmd_mcp)
    for command in _subcommands(p):
        _global_options(command, top=False)
    return p


def _global_options(parser: argparse.ArgumentParser, top: bool) -> None:
    """The options every command takes, before or after its name (`arc hosts check --hosts FILE`). A command's
    copies default to SUPPRESS, so they set only what is given after the name and keep what came before."""
    given_only = {} if top else {"default": argparse.SUPPRESS}
    parser.add_argument("--hosts", help="fleet file (env ARC_HOSTS, default ./hosts.yaml)", **given_only)
    parser.add_argument("--state-dir", help="history and daemon files (env ARC_STATE_DIR, default ./.arc)",
                        **given_only)
    parser.add_argument("--research", help="campaign rules (env ARC_RESEARCH, default research.yaml beside the "
                                           "hosts file)", **given_only)
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables", **given_only)


def _subcommands(parser: argparse.ArgumentParser):
    for action in parser._actions:      # argparse lists subcommands nowhere public
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                yield command
                yield from _subcommands(command)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except CliError as e:
        print(f"arc: {as_command_line(str(e))}", file=sys.stderr)   # refusals name tools too ("list_jobs shows...")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""`arc`'s commands that are not service operations: writing a first fleet file, checking the hosts, running the
daemon, preparing the data, the demo and the stdio bridge for Claude Code."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from pathlib import Path

from ...core.paths import DEFAULT_HOSTS_FILE, DEFAULT_RESEARCH_FILE, GIVEN, StatePaths, user_hosts_file
from .reach import CliError, check_hosts_file, client, fleet, missing_fleet, research_file, state_paths
from .render import console, emit


# The commands below: `arc` builds only these (not the operations) when one of them is asked for.
COMMANDS = ("init", "hosts", "clusters", "daemon", "demo", "data", "dashboard", "report", "mcp")


def add_commands(sub) -> None:
    """The commands that are not operations of the service: the fleet's hosts, the daemon, the data, the demo,
    the stdio bridge."""
    init = sub.add_parser("init", help="write a commented fleet file (this machine as `local`) where arc looks "
                                       f"for it: {user_hosts_file()} (or ./hosts.yaml with --here); never "
                                       "overwrites")
    init.add_argument("--here", action="store_true", help="write ./hosts.yaml, this folder's (a project's) fleet")
    # Not `--research`: that is every command's option naming the research file.
    init.add_argument("--with-research", action="store_true",
                      help="also write research.yaml beside it (the campaign's metric, search space and budgets)")
    init.set_defaults(fn=cmd_init)

    hosts = sub.add_parser("hosts", help="the fleet").add_subparsers(dest="hosts_action", required=True)
    hosts.add_parser("check", help="bootstrap every host and report its readiness").set_defaults(fn=cmd_hosts_check)

    clusters = sub.add_parser("clusters", help="Slurm clusters of hosts.yaml").add_subparsers(
        dest="clusters_action", required=True)
    clusters.add_parser("release", help="cancel every allocation this state dir holds on every cluster (a running "
                                        "daemon asks for new ones while work is queued: `arc daemon stop --release` "
                                        "stops it first)").set_defaults(fn=cmd_clusters_release)

    d = sub.add_parser("daemon", help="the controller daemon: start | stop | restart (after editing hosts.yaml) | "
                                      "status")
    d.add_argument("action", choices=["start", "stop", "restart", "status"])
    d.add_argument("--foreground", action="store_true", help="run in this process (what the background start runs)")
    d.add_argument("--port", type=int, help="loopback HTTP port for MCP (default: the last one, else a free one)")
    d.add_argument("--lost-after", type=_positive_seconds, metavar="S",
                   help="grace before the jobs of an unreachable host are marked lost (default 600 s; applies when "
                        "this command starts the daemon)")
    d.add_argument("--release", action="store_true",
                   help="with stop: also cancel every Slurm allocation the daemon held (they outlive it otherwise, so "
                        "that a restart adopts them)")
    d.set_defaults(fn=cmd_daemon)

    dm = sub.add_parser("demo", help="a short research campaign on this machine through the real MCP client, "
                                     "from any folder (state dir default ./.arc-demo; its fleet is this machine "
                                     "unless --hosts or ARC_HOSTS names one)")
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

    db = sub.add_parser("dashboard", help="the campaign in a browser: prints (or opens) a link to the daemon's page")
    db.add_argument("--open", action="store_true", help="open it in the default browser too")
    db.set_defaults(fn=cmd_dashboard)

    rp = sub.add_parser("report", help="the campaign as one self-contained HTML file (opens with no network)")
    rp.add_argument("-o", "--output", default="campaign.html", help="the file to write (default campaign.html)")
    rp.set_defaults(fn=cmd_report)

    m = sub.add_parser("mcp", help="MCP over stdio, for Claude Code (starts the daemon if needed)")
    m.set_defaults(fn=cmd_mcp)


def cmd_init(args) -> int:
    from importlib import resources

    hosts = Path(DEFAULT_HOSTS_FILE).resolve() if args.here else user_hosts_file()
    wanted = [(hosts, "hosts.yaml")]
    if args.with_research:
        wanted.append((hosts.parent / DEFAULT_RESEARCH_FILE, "research.yaml"))
    written, kept = [], []
    for path, template in wanted:
        if path.exists():
            kept.append(str(path))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(resources.files("mcp_server").joinpath("templates", template).read_text())
        written.append(str(path))
    hint = ("`arc hosts check` checks it; add GPU hosts by editing it" if args.here else
            "arc uses it from any folder without a hosts.yaml of its own; `arc hosts check` checks it")
    emit(args, {"written": written, "kept": kept},
         lambda c, d: c.print("\n".join([f"wrote {w}" for w in d["written"]]
                                        + [f"kept {k} (it exists; arc init never overwrites)" for k in d["kept"]]
                                        + ([hint] if d["written"] else []))))
    return 0


def cmd_hosts_check(args) -> int:
    import dataclasses

    from ...fleet.bootstrap import check_hosts
    from ...fleet.hosts_config import HostsConfigError, load_hosts
    from ...fleet.report import check_hosts_live

    chosen = fleet(args)
    if not chosen.path.exists():
        raise CliError(missing_fleet(chosen))
    try:
        hosts = load_hosts(chosen.path)
    except HostsConfigError as e:
        raise CliError(str(e)) from None
    if args.json:
        results = check_hosts(hosts)
        ready = sum(r.ready for r in results)
        print(json.dumps({"summary": f"{ready}/{len(results)} hosts ready",
                          "hosts": [dataclasses.asdict(r) for r in results]}, default=str))
    else:
        results = check_hosts_live(hosts, console())
    return 0 if all(r.ready for r in results) else 1


def cmd_daemon(args) -> int:
    from ...daemon.client import DaemonClient

    paths = state_paths(args)
    daemon = DaemonClient(paths)
    if args.action == "restart":        # e.g. after editing hosts.yaml: running jobs are kept and reconciled
        daemon.stop()
        args.action = "start"
    if args.action == "start":
        if args.foreground:
            from ...daemon.server import serve
            from ...daemon.state import DaemonRunning

            _setup_daemon_logging(paths)
            hosts = fleet(args).path
            check_hosts_file(hosts)
            settings = None
            if args.lost_after is not None:
                from ...core.scheduler import SchedulerSettings

                settings = SchedulerSettings(lost_after_s=args.lost_after)
            try:
                serve(args.state_dir, hosts, research_file(args), port=args.port, settings=settings)
            except DaemonRunning as e:
                raise CliError(str(e)) from None
            return 0
        daemon_args = [] if args.port is None else ["--port", str(args.port)]
        if args.lost_after is not None:
            daemon_args += ["--lost-after", f"{args.lost_after:g}"]
        if daemon_args and daemon.running():
            print(f"arc: a daemon already runs; {' '.join(daemon_args)} applies when it is started again "
                  "(arc daemon stop, then start)", file=sys.stderr)
        info = client(args, daemon_args=tuple(daemon_args)).info()
        emit(args, info, lambda c, d: c.print(f"daemon pid {d['pid']} serving {d['socket']} and "
                                              f"http://127.0.0.1:{d['port']}/mcp"))
        return 0
    if args.action == "stop":
        stopped = daemon.stop()
        emit(args, {"stopped": stopped}, lambda c, d: c.print("daemon stopped" if d["stopped"] else "no daemon runs"))
        return cmd_clusters_release(args) if args.release else 0
    info = daemon.info() if daemon.running() else {}
    files = {"state_dir": str(paths.root), "hosts_file": info.get("hosts_file") or str(fleet(args).path),
             "research_file": info.get("research_file") or str(research_file(args))}
    emit(args, {"running": bool(info), **info, **files}, _render_status)
    return 0


def _render_status(c, d: dict) -> None:
    if d["running"]:
        c.print(f"daemon pid {d['pid']}: {d['socket']}, http://127.0.0.1:{d['port']}/mcp, log {d['log']}")
    else:
        c.print(f"no daemon runs for {d['state_dir']}; one started now would use:")
    c.print(f"  state dir      {d['state_dir']}\n  fleet file     {d['hosts_file']}\n"
            f"  research file  {d['research_file']}")


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
    from ...stores.datasets import DatasetError, prepare_dataset

    prepare_args = ["--source", args.source, "--vocab-size", str(args.vocab_size)]
    if args.max_bytes is not None:
        prepare_args += ["--max-bytes", str(args.max_bytes)]
    try:
        with console().status(f"preparing the trainer's data from {args.source}"):
            digest, facts = prepare_dataset(state_paths(args).ensure(), prepare_args)
    except DatasetError as e:
        raise CliError(str(e)) from None
    emit(args, {"data_hash": digest, **facts},
         lambda c, d: c.print(f"dataset {d['data_hash'][:12]} is now current: {d['train_tokens']:,} training "
                              f"tokens, vocabulary {d['vocab_size']}; new trainer jobs use it"))
    return 0


def cmd_mcp(args) -> int:
    from ..bridge import run

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from ...daemon.client import DaemonClient

    chosen, research, unusable = fleet(args), None, None
    running = DaemonClient(state_paths(args)).info() if DaemonClient(state_paths(args)).running() else {}
    try:
        if not chosen.path.exists():
            raise CliError(missing_fleet(chosen))
        if running.get("hosts_file") == str(chosen.path.resolve()) and running.get("research_file"):
            # The daemon validated these files when it started: checking them again costs a start-up a second.
            research = Path(running["research_file"])
        else:
            check_hosts_file(chosen.path)
            research = research_file(args)
    except CliError as e:       # Claude Code shows only "Failed to connect" for a server that exits: answer instead
        unusable = str(e)
    return 0 if run(state_paths(args), chosen.path, research, unusable) else 1


def cmd_demo(args) -> int:
    from ..demo import DEFAULT_STATE_DIR, DemoError, run_demo

    chosen = fleet(args)
    # The demo's fleet is this machine, described by the demo itself: it needs no file, from any folder.
    hosts = chosen.path if chosen.origin == GIVEN else None
    if hosts is not None:
        if not hosts.exists():
            raise CliError(missing_fleet(chosen))
        check_hosts_file(hosts)
    try:
        run_demo(args.state_dir or DEFAULT_STATE_DIR, hosts, steps=args.steps, keep_daemon=args.keep_daemon)
    except DemoError as e:
        raise CliError(str(e)) from None
    return 0


def cmd_dashboard(args) -> int:
    from ..dashboard import dashboard_url

    daemon = client(args)
    url = dashboard_url(daemon.info()["port"], daemon.token())
    if args.open:
        import webbrowser

        webbrowser.open(url)
    # The link carries the token once (as Jupyter's does): whoever has it can act as the person until it changes.
    emit(args, {"url": url}, lambda c, d: c.print(f"dashboard: {d['url']}\n(the link holds the daemon's token: "
                                                  "keep it to yourself)", soft_wrap=True))
    return 0


def cmd_report(args) -> int:
    from pathlib import Path

    from ...daemon.client import DaemonError
    from ..dashboard.report import render

    try:
        data = client(args).get("/dashboard/api/report")
    except DaemonError as e:
        raise CliError(f"cannot read the campaign for the report: {e}") from None
    out = Path(args.output)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(render(data))
    tmp.replace(out)      # a half-written report never replaces a whole one
    emit(args, {"path": str(out.resolve()), "runs": len(data["points"])},
         lambda c, d: c.print(f"wrote {d['path']}: {d['runs']} run(s); it opens from disk with no network"))
    return 0


def cmd_clusters_release(args) -> int:
    from ...fleet.errors import FleetError
    from ...fleet.hosts_config import HostsConfigError, load_hosts
    from ...fleet.slurm import SlurmCluster, owner_id

    try:
        hosts = load_hosts(fleet(args).path)
    except HostsConfigError as e:
        raise CliError(str(e)) from None
    released, problems = {}, []
    for config in hosts.clusters:
        cluster = SlurmCluster(config, owner_id(state_paths(args).root))
        try:
            released[config.name] = cluster.release()
        except FleetError as e:
            problems.append(f"{config.name}: {e.message}")
        finally:
            cluster.close()
    emit(args, {"released": released, "problems": problems},
         lambda c, d: c.print("; ".join([f"{name}: cancelled {len(ids)} allocation(s) {' '.join(ids)}".rstrip()
                                         for name, ids in d["released"].items()] + d["problems"])
                              or "no clusters in the hosts file"))
    return 1 if problems else 0

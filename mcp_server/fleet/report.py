"""Rich rendering of host readiness for `arc hosts check`: a live progress display, then one table."""
from __future__ import annotations

import os
from collections import Counter
from typing import Any

from rich.console import Console, Group
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from mcp_server.fleet.bootstrap import STEPS, HostReadiness, check_hosts
from mcp_server.fleet.hosts_config import HostsFile, load_hosts


def readiness_table(results: list[HostReadiness]) -> Group:
    """One row per host and per cluster, then each problem in full (a table cell would cut it)."""
    ready = sum(r.ready for r in results)
    table = Table(title=f"{ready}/{len(results)} hosts ready", title_justify="left")
    for col in ("host", "status", "address", "python", "agent", "gpus", "cpu slots", "torch", "time"):
        table.add_column(col, no_wrap=col in ("host", "status", "time"))
    notes: list[Text] = []
    for r in results:
        status = Text("ready", "green") if r.ready else Text(f"failed: {r.failed_step}", "red")
        agent = "" if r.agent_hash is None else f"{r.agent_hash[:10]} {'pushed' if r.agent_uploaded else 'present'}"
        torch = r.torch or ""
        if r.cuda is not None:
            torch += " +cuda" if r.cuda else " cpu"
        table.add_row(r.host, status, r.address, r.python or "", agent, _gpus(r),
                      "" if r.cpu_slots is None else str(r.cpu_slots), torch, f"{r.seconds:.1f}s")
        if r.error:
            notes.append(Text(f"{r.host}: {r.error}", "red"))
        notes.extend(Text(f"{r.host}: {w}", "yellow") for w in r.warnings)
    return Group(table, *notes)


def check_hosts_live(hosts_file: HostsFile | str | os.PathLike, console: Console | None = None,
                     **kwargs: Any) -> list[HostReadiness]:
    """check_hosts() with a progress row per host while it runs, then the readiness table."""
    console = console or Console()
    hf = hosts_file if isinstance(hosts_file, HostsFile) else load_hosts(hosts_file)
    names = kwargs.get("hosts") or [*hf.names, *(c.name for c in hf.clusters)]
    progress = Progress(SpinnerColumn(), TextColumn("{task.fields[host]:<16}"), BarColumn(bar_width=20),
                        TextColumn("{task.description}"), TimeElapsedColumn(), console=console, transient=True)
    with progress:
        tasks = {n: progress.add_task("waiting", total=len(STEPS), host=n) for n in names}

        def update(host: str, step: str, done: int, total: int) -> None:
            progress.update(tasks[host], completed=done, total=total, description=step)

        results = check_hosts(hf, update, **kwargs)
    console.print(readiness_table(results))
    return results


def _gpus(r: HostReadiness) -> str:
    if r.slurm:
        return r.slurm      # a cluster: what its partition offers (allocations come later)
    if not r.gpus:
        return "none" if r.gpu_source else ""
    counts = Counter((g["name"], round((g["memory_total_mb"] or 0) / 1024)) for g in r.gpus)
    text = ", ".join(f"{n}x {name} {gb}GB" for (name, gb), n in counts.items())
    return text + (" (simulated)" if r.gpu_source == "simulated" else "")

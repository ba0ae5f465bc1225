"""Token budget: how much of a model's context arc's tool answers take over a scripted campaign.

    python bench/token_budget.py                     # the demo's campaign on this machine, 40-step runs
    python bench/token_budget.py --steps 20 --markdown

Runs `arc demo`'s scripted researcher through the real MCP client over stdio (`arc mcp` and its daemon, one local
CPU host in a temporary state dir and workdir) and reports every tool answer as the model would read it: Claude
Code shows the structured content as compact JSON when a result has one, else its text blocks; an image costs
about width x height / 750 tokens. Text tokens are estimated as characters / 4 (no Claude tokenizer offline).
Also reported: the answers per step of the campaign (survey, baseline, waves, checkpoint, report), and the fixed
cost of the tool list (names, descriptions, input schemas: what a session loads when tool search is off) and of the
`autoresearch` prompt.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from mcp import Client
from mcp.client.stdio import stdio_client
from rich.console import Console
from rich.table import Table


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mcp_server.core.paths import StatePaths  # noqa: E402
from mcp_server.daemon.client import DaemonClient  # noqa: E402
from mcp_server.surfaces.demo import Call, bridge_params, run_demo  # noqa: E402


async def fixed_costs(paths: StatePaths, hosts: Path) -> dict[str, int]:
    """Characters of the tool list and of the rendered prompt, through the same bridge."""
    with open(paths.root / "bridge.log", "a") as errlog:
        async with Client(stdio_client(bridge_params(paths, hosts), errlog=errlog)) as client:
            tools = (await client.list_tools()).tools
            listing = json.dumps([{"name": t.name, "description": t.description, "input_schema": t.input_schema}
                                  for t in tools], separators=(",", ":"))
            prompt = (await client.get_prompt("autoresearch", {})).messages[0].content.text
    return {"tool list": len(listing), "autoresearch prompt": len(prompt)}


def table(calls: list[Call], fixed: dict[str, int]) -> Table:
    per_tool: dict[str, list[Call]] = defaultdict(list)
    for c in calls:
        per_tool[c.tool].append(c)
    t = Table("tool", "calls", "chars (total)", "tokens (total)", "tokens (largest)", title="tool answers",
              title_justify="left")
    for tool, cs in sorted(per_tool.items(), key=lambda kv: -sum(c.tokens for c in kv[1])):
        t.add_row(tool, str(len(cs)), f"{sum(c.chars for c in cs):,}", f"{sum(c.tokens for c in cs):,}",
                  f"{max(c.tokens for c in cs):,}")
    t.add_row("[bold]all answers", str(len(calls)), f"{sum(c.chars for c in calls):,}",
              f"[bold]{sum(c.tokens for c in calls):,}", "")
    for what, chars in fixed.items():
        t.add_row(f"[dim]{what} (once per session)", "", f"{chars:,}", f"{math.ceil(chars / 4):,}", "")
    return t


def by_step(calls: list[Call]) -> Table:
    """Answers per step of the campaign, in the order the steps ran."""
    steps: dict[str, list[Call]] = defaultdict(list)
    for c in calls:
        steps[c.step].append(c)
    t = Table("step", "calls", "tokens", title="per campaign step", title_justify="left")
    for step, cs in steps.items():
        t.add_row(step, str(len(cs)), f"{sum(c.tokens for c in cs):,}")
    return t


def markdown(calls: list[Call], fixed: dict[str, int]) -> str:
    per_tool: dict[str, list[Call]] = defaultdict(list)
    for c in calls:
        per_tool[c.tool].append(c)
    lines = ["| tool | calls | chars | tokens | largest answer (tokens) |", "|---|---:|---:|---:|---:|"]
    for tool, cs in sorted(per_tool.items(), key=lambda kv: -sum(c.tokens for c in kv[1])):
        lines.append(f"| {tool} | {len(cs)} | {sum(c.chars for c in cs):,} | {sum(c.tokens for c in cs):,} | "
                     f"{max(c.tokens for c in cs):,} |")
    lines.append(f"| **all answers** | {len(calls)} | {sum(c.chars for c in calls):,} | "
                 f"**{sum(c.tokens for c in calls):,}** | |")
    for what, chars in fixed.items():
        lines.append(f"| {what} (once per session) | | {chars:,} | {math.ceil(chars / 4):,} | |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="training steps per run (default 40)")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown (for the README)")
    parser.add_argument("--calls", action="store_true", help="also list every call")
    args = parser.parse_args()

    console = Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="arc-token-budget-") as tmp:
        root = Path(tmp)
        hosts = root / "hosts.yaml"
        hosts.write_text(f"hosts:\n  - name: local\n    transport: local\n    workdir: {root / 'work'}\n"
                         f"    python: {sys.executable}\n")
        paths = StatePaths.resolve(root / "state")
        try:
            result = run_demo(paths.root, hosts, steps=args.steps, console=console, keep_daemon=True)
            fixed = asyncio.run(fixed_costs(paths, hosts))
        finally:
            DaemonClient(paths).stop()
    out = Console(width=120)
    if args.calls:
        t = Table("step", "tool", "chars", "tokens", "seconds")
        for c in result.calls:
            t.add_row(c.step, c.tool, f"{c.chars:,}", f"{c.tokens:,}", f"{c.seconds:.2f}")
        out.print(t)
    if args.markdown:
        print(markdown(result.calls, fixed))
    else:
        out.print(table(result.calls, fixed))
        out.print(by_step(result.calls))
    out.print(f"campaign: {len(result.calls)} calls in {result.seconds:.0f} s; text tokens = chars / 4, "
              "images = width x height / 750")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`arc demo`: a short research campaign on this machine, driven through the real MCP client over stdio.

It launches `arc mcp` exactly as Claude Code does (which starts the daemon for the demo's state dir), prepares the
trainer's data, and lets a scripted researcher (no model) follow the `autoresearch` protocol: a baseline, a wave of
variations that each test a written hypothesis, verdicts, a follow-up that keeps or discards, then a leaderboard,
a digest and plots saved as PNG files. Every tool answer's size is recorded (bench/token_budget.py reports them).

A campaign is the list `Researcher.steps`: to add a step, write an `async def` method and list it there.
"""
from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import math
import os
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.types import CallToolResult, ImageContent, TextContent
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .paths import StatePaths

DEFAULT_STATE_DIR = ".arc-demo"
DEFAULT_STEPS = 40
# The trainer's smallest preset on a small dataset, with a step budget: on the CPU the same config and seed then
# give the same val_bpb whatever the machine's load (a time budget would make verdicts depend on it), so the
# differences the verdicts read are the changes' own. A run takes ~15-25 s on 2 cores.
PRESET = "cpu-tiny"
DATA_ARGS = ["--max-bytes", "2000000", "--vocab-size", "2048"]
# The noise floor is the baseline's difference between two seeds (measured each campaign), at least this much.
SECOND_SEED = 7
MIN_NOISE = 0.005
TOOL_TIMEOUT_S = 900.0
FLEET_WAIT_S = 30.0


class DemoError(RuntimeError):
    pass


# ---- what the model would read -------------------------------------------------------------------------------

def answer_size(result: CallToolResult) -> tuple[int, int]:
    """Characters and estimated tokens of what a model reads of a tool result. Claude Code shows the structured
    content as compact JSON when there is one, else the content blocks; an image costs about width x height / 750
    tokens (Anthropic's estimate), text about 4 characters a token."""
    if result.structured_content is not None:
        text = json.dumps(result.structured_content, separators=(",", ":"), ensure_ascii=False)
        return len(text), math.ceil(len(text) / 4)
    chars = tokens = 0
    for block in result.content:
        if isinstance(block, TextContent):
            chars += len(block.text)
            tokens += math.ceil(len(block.text) / 4)
        elif isinstance(block, ImageContent):
            width, height = png_size(block.data)
            tokens += math.ceil(width * height / 750)
    return chars, tokens


def png_size(b64: str) -> tuple[int, int]:
    head = base64.b64decode(b64[:64])
    return struct.unpack(">II", head[16:24])


@dataclass
class Call:
    step: str
    tool: str
    chars: int
    tokens: int
    seconds: float
    error: bool


# ---- the researcher ------------------------------------------------------------------------------------------

@dataclass
class Idea:
    """A hypothesis with the config change that tests it and the direction it predicts (-1: metric goes down)."""
    text: str
    change: dict[str, Any]
    expect: int = -1
    hyp_id: str | None = None
    job_id: str | None = None
    metric: float | None = None


IDEAS = [   # inside the repository's research.yaml search space
    Idea("A higher Muon learning rate (matrix_lr 0.08 vs 0.04) lowers val_bpb in a short run",
         {"matrix_lr": 0.08}),
    Idea("A higher embedding learning rate (embedding_lr 1.2 vs 0.6) lowers val_bpb: embeddings learn slowly "
         "in short runs", {"embedding_lr": 1.2}),
    Idea("A shorter LR warmdown (warmdown_ratio 0.2 vs 0.5) hurts: the decay matters even in short runs",
         {"warmdown_ratio": 0.2}, expect=+1),
    Idea("No weight decay (0.0 vs 0.2) lowers val_bpb: a short run underfits, regularization only slows it",
         {"weight_decay": 0.0}),
]


@dataclass
class Researcher:
    client: Client
    console: Console
    train_steps: int
    out_dir: Path
    calls: list[Call] = field(default_factory=list)
    step: str = ""
    baseline: dict | None = None       # the default config at the default seed, and at SECOND_SEED
    second: dict | None = None
    noise: float = MIN_NOISE
    ideas: list[Idea] = field(default_factory=list)
    follow_ups: list[str] = field(default_factory=list)
    started_at: str | None = None
    pngs: list[Path] = field(default_factory=list)

    @property
    def steps(self):
        return [self.survey, self.run_baseline, self.first_wave, self.judge_wave, self.follow_up, self.report]

    async def run(self) -> None:
        for step in self.steps:
            self.step = step.__name__
            self.console.rule(f"[bold]{step.__doc__.splitlines()[0]}")
            await step()

    # ---- calling tools ---------------------------------------------------------------------------------------

    async def call(self, tool: str, progress=None, **args: Any) -> CallToolResult:
        started = time.perf_counter()
        result = await self.client.call_tool(tool, args, read_timeout_seconds=TOOL_TIMEOUT_S,
                                             progress_callback=progress)
        chars, tokens = answer_size(result)
        self.calls.append(Call(self.step, tool, chars, tokens, time.perf_counter() - started, result.is_error))
        if result.is_error:
            raise DemoError(f"{tool} refused: {result.content[0].text if result.content else '?'}")
        return result

    async def data(self, tool: str, **args: Any) -> dict:
        result = await self.call(tool, **args)
        self.console.print(f"[cyan]{tool}[/cyan] → {result.structured_content['summary']}")
        return result.structured_content

    async def submit(self, jobs: list[dict]) -> list[str]:
        answer = await self.data("submit_jobs", jobs=jobs)
        return [j["job_id"] for j in answer["jobs"]]

    async def wait(self, job_ids: list[str]) -> dict[str, dict]:
        """wait_for_jobs(all) with its progress notifications on a progress bar; returns the ended jobs by id."""
        with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                      TextColumn("{task.completed:.0f}/{task.total:.0f} ended"), TimeElapsedColumn(),
                      console=self.console, transient=True) as bar:
            task = bar.add_task(f"waiting for {', '.join(job_ids)}", total=len(job_ids))

            async def progress(done: float, total: float | None, message: str | None) -> None:
                bar.update(task, completed=done, total=total or len(job_ids), description=message or "waiting")

            ended: dict[str, dict] = {}
            while len(ended) < len(job_ids):
                pending = [j for j in job_ids if j not in ended]
                result = await self.call("wait_for_jobs", progress=progress, job_ids=pending, mode="all",
                                         timeout_s=600)
                for job in result.structured_content["done"]:
                    ended[job["job_id"]] = job
                bar.update(task, completed=len(ended))
        self.console.print(f"[cyan]wait_for_jobs[/cyan] → {result.structured_content['summary']}")
        return ended

    async def fleet(self) -> dict:
        """list_gpus once every host has answered (a daemon that just started is still connecting), or after
        FLEET_WAIT_S with whatever is reachable then."""
        deadline = time.monotonic() + FLEET_WAIT_S
        with self.console.status("connecting to the fleet"):
            while True:
                result = await self.call("list_gpus")
                hosts = result.structured_content["hosts"]
                if all(h["reachable"] for h in hosts) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
        self.console.print(f"[cyan]list_gpus[/cyan] → {result.structured_content['summary']}")
        return result.structured_content

    def trainer_job(self, change: dict[str, Any], **extra: Any) -> dict:
        return {"config": {**change, "max_steps": self.train_steps}, "preset": PRESET, "tags": ["demo"], **extra}

    # ---- the campaign --------------------------------------------------------------------------------------

    async def survey(self) -> None:
        """Survey: the fleet, and what the history already holds"""
        self.started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        fleet = await self.fleet()
        for host in fleet["hosts"]:
            what = (f"{len(host['gpus'])} GPUs, {host['cpu_slots']} CPU slots" if host["reachable"]
                    else f"unreachable: {host['error']}")
            self.console.print(f"  {host['name']}: {what}")
        await self.data("describe_history")
        board = await self.data("leaderboard")
        if board["classes"]:
            self.console.print("  earlier runs are in this history; this campaign adds its own baseline and wave")

    async def run_baseline(self) -> None:
        """Baseline: the default config first, with two seeds, whose difference is the noise floor"""
        ids = await self.submit([self.trainer_job({}, tags=["demo", "baseline"], name="baseline"),
                                 self.trainer_job({}, tags=["demo", "baseline"], name="baseline, seed 7",
                                                  seed=SECOND_SEED)])
        ended = await self.wait(ids)
        for job_id in ids:
            if ended[job_id]["status"] != "succeeded" or ended[job_id].get("metric") is None:
                log = await self.call("tail_log", job_id=job_id, lines=20)
                raise DemoError(f"the baseline {job_id} {ended[job_id]['status']}; its log:\n{log.content[1].text}")
        self.baseline, self.second = ended[ids[0]], ended[ids[1]]
        self.noise = max(MIN_NOISE, round(abs(self.baseline["metric"] - self.second["metric"]), 6))
        self.console.print(f"  baseline {ids[0]}: val_bpb {self.baseline['metric']:.4f}, with seed {SECOND_SEED} "
                           f"{ids[1]}: {self.second['metric']:.4f} on {self.baseline.get('gpu_class')}; "
                           f"noise floor {self.noise:.4f}")

    async def first_wave(self) -> None:
        """Wave 1: one hypothesis per idea, written before its run, all submitted at once"""
        self.ideas = [Idea(i.text, dict(i.change), i.expect) for i in IDEAS]
        for idea in self.ideas:
            idea.hyp_id = (await self.data("append_hypothesis", text=idea.text))["hypothesis"]["hyp_id"]
        ids = await self.submit([self.trainer_job(i.change, hypothesis_id=i.hyp_id) for i in self.ideas])
        for idea, job_id in zip(self.ideas, ids):
            idea.job_id = job_id
        ended = await self.wait(ids)
        for idea in self.ideas:
            idea.metric = ended[idea.job_id].get("metric")

    def verdict(self, job_id: str, metric: float, ref: dict) -> tuple[float, int, str]:
        """The effect against a reference run of the same seed, whether it clears the noise floor (-1 lower,
        +1 higher, 0 within noise), and the verdict line that says so."""
        effect = round(metric - ref["metric"], 6)
        moved = -1 if effect < -self.noise else +1 if effect > self.noise else 0
        words = "within noise" if moved == 0 else "clears the noise floor"
        return effect, moved, (f"{ref.get('gpu_class')}: {job_id} {metric:.4f} vs {ref['job_id']} "
                               f"{ref['metric']:.4f} ({effect:+.4f}, {words} {self.noise:.4f})")

    async def judge_wave(self) -> None:
        """Verdicts: each hypothesis against the baseline of its GPU class, beyond the noise floor or not"""
        table = Table("hypothesis", "job", "change", "val_bpb", "vs baseline", "verdict", show_edge=False)
        for idea in self.ideas:
            if idea.metric is None:
                status, verdict, effect = "abandoned", f"{idea.job_id} produced no val_bpb", None
            else:
                effect, moved, verdict = self.verdict(idea.job_id, idea.metric, self.baseline)
                status = "supported" if moved == idea.expect else "refuted"
            await self.data("update_hypothesis", hyp_id=idea.hyp_id, status=status, verdict=verdict,
                            effect_size=effect)
            table.add_row(idea.hyp_id, idea.job_id, json.dumps(idea.change),
                          "-" if idea.metric is None else f"{idea.metric:.4f}",
                          "-" if effect is None else f"{effect:+.4f}", status)
        self.console.print(table)

    async def follow_up(self) -> None:
        """Wave 2: stack the changes that cleared the noise, or retry the best change with the second seed"""
        tried = sorted((i for i in self.ideas if i.metric is not None), key=lambda i: i.metric)
        if not tried:
            self.console.print("  nothing to follow up: no run of wave 1 produced a metric")
            return
        helped = [i for i in tried if i.metric < self.baseline["metric"] - self.noise]
        if len(helped) > 1:    # the stack against its best part, at the same seed
            change = {k: v for i in helped for k, v in i.change.items()}
            ref, extra = {**self.baseline, "job_id": helped[0].job_id, "metric": helped[0].metric}, {}
            text = f"Stacking the changes that helped ({json.dumps(change)}) beats the best of them alone"
        else:                  # the best change at the second seed, against the baseline of that seed
            change, ref, extra = tried[0].change, self.second, {"seed": SECOND_SEED}
            text = f"{json.dumps(change)} also lowers val_bpb at seed {SECOND_SEED}"
        hyp = (await self.data("append_hypothesis", text=text))["hypothesis"]["hyp_id"]
        ids = await self.submit([self.trainer_job(change, hypothesis_id=hyp, **extra)])
        self.follow_ups += ids
        metric = (await self.wait(ids))[ids[0]].get("metric")
        if metric is None:
            await self.data("update_hypothesis", hyp_id=hyp, status="abandoned", verdict=f"{ids[0]} failed")
            return
        effect, moved, verdict = self.verdict(ids[0], metric, ref)
        keep = moved == -1
        await self.data("update_hypothesis", hyp_id=hyp, status="supported" if keep else "refuted",
                        verdict=f"{verdict}; {'keep' if keep else 'discard'}", effect_size=effect)
        self.console.print(f"  {'[green]keep' if keep else '[red]discard'}[/] {json.dumps(change)}")

    async def report(self) -> None:
        """Report: leaderboard, digest, the best run's log, plots"""
        board = await self.data("leaderboard")
        for cls in board["classes"]:
            table = Table("rank", "job", "val_bpb", "vs baseline", "changes", title=f"{cls['gpu_class']} "
                          f"(baseline {cls['baseline_job']}, {cls['runs']} runs)", title_justify="left",
                          show_edge=False)
            for run in cls["best"]:
                table.add_row(str(run["rank"]), run["job_id"], f"{run['metric']:.4f}",
                              f"{run['vs_baseline']:+.4f}", json.dumps(run["changes"]) if run["changes"] else "")
            self.console.print(table)
        await self.data("digest", since=self.started_at)
        await self.data("list_hypotheses")
        answer = await self.data("query_results", sql="SELECT status, count(*) AS jobs, round(min(val_bpb), 4) "
                                                      "AS best_val_bpb FROM runs GROUP BY status ORDER BY status")
        rows = Table(*answer["columns"], show_edge=False)
        for row in answer["rows"]:
            rows.add_row(*("" if v is None else str(v) for v in row))
        self.console.print(rows)
        best_job = board["classes"][0]["best"][0]["job_id"]
        log = await self.call("tail_log", job_id=best_job, lines=6)
        self.console.print(f"[cyan]tail_log[/cyan] → {json.loads(log.content[0].text)['summary']}")
        self.console.print(Panel(log.content[1].text, title=f"{best_job}: last lines (fenced as untrusted)",
                                 style="dim"))
        curves = [self.baseline["job_id"], self.second["job_id"]] + [i.job_id for i in self.ideas] + self.follow_ups
        await self.plot("curves.png", job_ids=curves, series="train_loss", kind="curves")
        await self.plot("best.png", kind="best")

    async def plot(self, filename: str, **args: Any) -> None:
        result = await self.call("plot_runs", **args)
        image = next(b for b in result.content if isinstance(b, ImageContent))
        path = self.out_dir / filename
        path.write_bytes(base64.b64decode(image.data))
        self.pngs.append(path)
        summary = next(b.text for b in result.content if isinstance(b, TextContent))
        self.console.print(f"[cyan]plot_runs[/cyan] → {summary}; saved [bold]{path}[/bold]")


# ---- set-up: data and the stdio connection -------------------------------------------------------------------

def prepare_data(paths: StatePaths, console: Console) -> str:
    """The trainer's dataset in the state dir (`data/<hash>`, named by `data/CURRENT`), built once."""
    from .fleet import content_hash

    current = paths.data_dir / "CURRENT"
    if current.exists() and (paths.data_dir / current.read_text().strip()).is_dir():
        digest = current.read_text().strip()
        console.print(f"dataset {digest[:12]} already prepared")
        return digest
    paths.data_dir.mkdir(parents=True, exist_ok=True)
    with console.status("preparing the trainer's data (tokenizer + token streams from Python's stdlib)"):
        with tempfile.TemporaryDirectory(dir=paths.data_dir, prefix=".incoming-") as tmp:
            out = Path(tmp) / "data"
            proc = subprocess.run([sys.executable, "-m", "trainer.prepare", "--out", str(out), *DATA_ARGS],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise DemoError(f"trainer.prepare failed:\n{proc.stderr[-2000:]}")
            digest = content_hash(out)
            if not (paths.data_dir / digest).exists():
                os.replace(out, paths.data_dir / digest)
    tmp_marker = current.with_suffix(".tmp")
    tmp_marker.write_text(digest + "\n")
    os.replace(tmp_marker, current)
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    console.print(f"dataset {digest[:12]}: {facts['train_tokens']:,} training tokens, vocab {facts['vocab_size']}")
    return digest


def bridge_params(paths: StatePaths, hosts_file: Path) -> StdioServerParameters:
    """`arc mcp` for this state dir and fleet, as Claude Code would launch it (same interpreter)."""
    repo = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
    return StdioServerParameters(command=sys.executable, args=[
        "-m", "mcp_server.cli", "--state-dir", str(paths.root), "--hosts", str(hosts_file), "mcp"], env=env)


@dataclass
class DemoResult:
    state_dir: Path
    calls: list[Call]
    pngs: list[Path]
    seconds: float


async def campaign(paths: StatePaths, hosts_file: Path, console: Console, steps: int) -> Researcher:
    with open(paths.root / "bridge.log", "a") as errlog:
        async with Client(stdio_client(bridge_params(paths, hosts_file), errlog=errlog)) as client:
            researcher = Researcher(client, console, steps, paths.root)
            await researcher.run()
    return researcher


def _find(error: BaseException, kind: type[BaseException]) -> BaseException | None:
    """`error` or the first `kind` inside it (the MCP client's task groups wrap what the campaign raised)."""
    if isinstance(error, kind):
        return error
    for inner in getattr(error, "exceptions", ()):
        found = _find(inner, kind)
        if found is not None:
            return found
    return None


def run_demo(state_dir: str | os.PathLike | None, hosts_file: Path, steps: int = DEFAULT_STEPS,
             console: Console | None = None, keep_daemon: bool = False) -> DemoResult:
    from .daemon_client import DaemonClient

    console = console or Console(highlight=False)
    started = time.perf_counter()
    paths = StatePaths.resolve(state_dir or DEFAULT_STATE_DIR).ensure()
    console.print(Panel(f"state dir [bold]{paths.root}[/bold]\nfleet     [bold]{hosts_file}[/bold]\n"
                        f"runs      {steps} training steps each ({PRESET} preset)", title="arc demo"))
    prepare_data(paths, console)
    try:
        researcher = asyncio.run(campaign(paths, hosts_file, console, steps))
    except Exception as e:
        refusal = _find(e, DemoError)
        if refusal is not None:
            raise refusal from None
        # The bridge or the daemon failed: their logs say why.
        raise DemoError(f"the MCP session ended with {type(e).__name__}: {e}\n"
                        f"see {paths.root / 'bridge.log'} and {paths.daemon_log}") from e
    finally:
        if not keep_daemon:
            DaemonClient(paths).stop()
    seconds = time.perf_counter() - started
    tokens = sum(c.tokens for c in researcher.calls)
    console.rule("[bold]done")
    console.print(f"{len(researcher.calls)} tool calls, ~{tokens:,} tokens of answers, {seconds:.0f} s in all")
    console.print(f"look around: arc --state-dir {paths.root} jobs | arc --state-dir {paths.root} sql "
                  "\"SELECT job_id, val_bpb, config FROM runs ORDER BY val_bpb\"")
    return DemoResult(paths.root, researcher.calls, researcher.pngs, seconds)

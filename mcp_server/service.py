"""arc's operations: the one service layer behind the MCP tools, the `arc` command and the daemon's RPC.

Every method validates its input, returns a pydantic result with a one-line summary, and raises `ArcError` with what
was wrong and what to do instead. The daemon owns the one instance (it holds the DuckDB file and the host sessions).
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable

from . import workloads
from .datasets import current_dataset
from .gpu_classes import CPU_CLASS, gpu_class
from .code_store import CodeStore, CodeStoreError
from .fleet import AgentError, HostUnavailable, RequestTimeout
from .history import History, SnapshotWriter, UserSqlError, run_user_sql
from .hosts_config import HostsFile
from .models import (
    ACTIVE_STATUSES, TERMINAL_STATUSES, CancelResult, GpuList, GpuView, HostView, JobDetail, JobDetails, JobList,
    JobSpec, JobView, LogTail, Requirements, SqlResult, SubmitResult, SubmittedJob, WaitResult, check_job_id,
)
from .models import Digest, HistorySchema, HypothesisList, HypothesisResult, Leaderboard, Plot, Suggestions
from .file_stamp import FileStamp
from .paths import StatePaths
from .research import (
    NOISE_TAG, Comparison, GuardError, Guardrails, GuardStatus, JobDiff, NoiseFloor, ResearchConfig,
    ResearchConfigError, Sides, Triage, compare_jobs, diff_jobs, hang_reason, job_times, load_research, noise_floors,
    suggest_configs, triage, warm_trials,
)
from .scheduler import Scheduler, SchedulerSettings
from .user_pattern import MAX_SUBJECT_CHARS, UserPatternError, compile_user_pattern

log = logging.getLogger("arc.service")

MAX_ROWS = 500
MAX_LOG_LINES = 2000
MAX_BATCH = 200
FIRST_CONNECT_WAIT_S = 5.0


class ArcError(Exception):
    """A refusal meant for the caller: what was wrong and what to do instead."""


def iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        value = dt.datetime.fromtimestamp(value, dt.timezone.utc)
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(value)


def next_page(tool: str, offset: int, **filters: Any) -> str:
    """The call that fetches the next page, carrying the caller's filters (None: left out)."""
    args = ", ".join(f"{k}={v!r}" for k, v in filters.items() if v not in (None, []))
    return f"{tool}({args + ', ' if args else ''}offset={offset})"


def _bounded(name: str, value: int, lo: int, hi: int) -> int:
    if not isinstance(value, int) or not lo <= value <= hi:
        raise ArcError(f"{name} must be an integer from {lo} to {hi} (got {value!r})")
    return value


class Service:
    """The daemon's instance owns the history and the fleet. A `read_only` instance (the CLI when no daemon runs)
    reads the history file directly and can answer only the operations that need no host."""

    def __init__(self, paths: StatePaths, hosts: HostsFile | None, settings: SchedulerSettings | None = None,
                 read_only: bool = False, research: ResearchConfig | None = None,
                 research_file: Path | None = None, hosts_file: Path | None = None):
        self.paths = paths.ensure()
        self.hosts = hosts
        self.read_only = read_only
        self.research = research or ResearchConfig()
        self.research_file = research_file      # what reload_research reads again
        # The files as the daemon read them, to say when they have been edited since (None: not from a file).
        self.hosts_stamp = FileStamp(hosts_file) if hosts_file is not None else None
        self.research_stamp = FileStamp(research_file) if research_file is not None else None
        self.primary_metric = self.research.metric.name
        self.history = History(paths.history, read_only=read_only)
        self.code = CodeStore(paths.snapshots_dir)
        self.scheduler: Scheduler | None = None
        self.snapshots: SnapshotWriter | None = None
        self.guard: Guardrails | None = None
        if not read_only:
            prices = {h.name: h.cost_per_gpu_hour for h in hosts.hosts if h.cost_per_gpu_hour is not None}
            self.guard = Guardrails(self.research, self.history, prices)
            self.scheduler = Scheduler(self.history, hosts, self.code, paths.data_dir, settings,
                                       allowance=self.guard.allowance, job_argv=workloads.job_argv,
                                       on_tick=self._on_tick)
            self.snapshots = SnapshotWriter(self.history, paths.snapshot)
        self._log_growth: dict[str, tuple[int, float, bool]] = {}   # job -> (log bytes, since, flagged hung)

    def start(self) -> None:
        self.scheduler.start()
        self.snapshots.start()

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()
            self.snapshots.stop()
        self.history.close()

    def __enter__(self) -> "Service":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- jobs as the agent sees them --------------------------------------------------------------------

    def _job_view(self, row: dict) -> JobView:
        return JobView(
            job_id=row["job_id"], status=row["status"], name=row.get("name"), host=row.get("host"),
            gpu_class=row.get("gpu_class"), metric=row.get("primary_value"),
            submitted_at=iso(row.get("submitted_at")), started_at=iso(row.get("started_at")),
            ended_at=iso(row.get("ended_at")), reason=row.get("reason"), hypothesis_id=row.get("hypothesis_id"),
            tags=list(row.get("tags") or []))

    def _job_detail(self, row: dict) -> JobDetail:
        base = self._job_view(row).model_dump()
        return JobDetail(
            **base, kind=row["kind"], config=row.get("config"),
            command=row.get("argv") if row["kind"] == "command" else None,
            code_hash=(row.get("code_hash") or "")[:12] or None, seed=row.get("seed"),
            gpu_indices=list(row.get("gpu_indices") or []), exit_code=row.get("exit_code"),
            signal=row.get("signal"), summary_metrics=row.get("summary"), triage=self._triage(row),
            last_metrics=self.history.last_metrics(row["job_id"]), attempts=int(row.get("attempts") or 0),
            time_limit_s=row.get("time_limit_s"))

    def _get(self, job_id: str) -> dict:
        try:
            check_job_id(job_id)
        except ValueError as e:
            raise ArcError(str(e)) from None
        row = self.history.get_job(job_id)
        if row is None:
            raise ArcError(f"no job {job_id}; list_jobs shows the jobs that exist")
        return row

    # ---- GPUs -------------------------------------------------------------------------------------------

    def list_gpus(self, host: str | None = None) -> GpuList:
        hosts = self.hosts.hosts if host is None else [h for h in self.hosts.hosts if h.name == host]
        if not hosts:
            raise ArcError(f"no host '{host}' in hosts.yaml; hosts are: "
                           + ", ".join(h.name for h in self.hosts.hosts))
        for h in hosts:   # right after the daemon starts, give each host its first connection attempt
            self.scheduler.fleet.session(h.name).wait_attempted(FIRST_CONNECT_WAIT_S)
        answers = self.scheduler.fleet.request_all("inventory", None, timeout=5.0,
                                                   hosts=[h.name for h in hosts])
        running = {j["job_id"]: j for j in self.history.jobs(status=list(ACTIVE_STATUSES), limit=None)}
        now = time.time()
        views: list[HostView] = []
        for h in hosts:
            inv = answers.get(h.name)
            if isinstance(inv, Exception) or inv is None:
                views.append(HostView(name=h.name, reachable=False, error=str(inv) if inv else "not connected",
                                      labels=list(h.labels)))
                continue
            gpus = []
            for g in inv.get("gpus", []):
                if h.gpus != "all" and g["index"] not in h.gpus:
                    continue
                job_id = self.scheduler.our_job_id(g.get("claimed_by"))
                job = running.get(job_id or "")
                frees = None
                if job and job.get("started_at") and job.get("time_limit_s"):
                    started = job["started_at"].timestamp() if hasattr(job["started_at"], "timestamp") \
                        else float(job["started_at"])
                    frees = max(0.0, round(started + float(job["time_limit_s"]) - now))
                gpus.append(GpuView(
                    index=g["index"], model=g["name"], gpu_class=gpu_class(g["name"]),
                    memory_used_gb=None if g.get("memory_used_mb") is None else round(g["memory_used_mb"] / 1024, 1),
                    memory_total_gb=round(g["memory_total_mb"] / 1024, 1), util_pct=g.get("utilization_pct"),
                    temp_c=g.get("temperature_c"), frees_in_s=frees,
                    job_id=job_id or ("another history's job" if g.get("claimed_by") else None),
                    simulated=bool(g.get("simulated"))))
            views.append(HostView(name=h.name, reachable=True, gpus=gpus, cpu_slots=inv.get("cpu_slots", 0),
                                  cpu_slots_used=inv.get("cpu_slots_used", 0), labels=list(h.labels)))
        n_gpus = sum(len(v.gpus) for v in views)
        n_free = sum(1 for v in views for g in v.gpus if g.job_id is None)
        down = [v.name for v in views if not v.reachable]
        summary = f"{len(views)} hosts, {n_gpus} GPUs ({n_free} free)" + (
            f"; unreachable: {', '.join(down)}" if down else "")
        cpu_free = sum(v.cpu_slots - v.cpu_slots_used for v in views if v.reachable)
        if not n_gpus:
            summary += f"; {cpu_free} CPU slots free"
        if self.hosts_stamp is not None and self.hosts_stamp.changed():
            summary += (f"; {self.hosts_stamp.path} has changed since the daemon started: a person runs "
                        "`arc daemon restart` to apply it")
        return GpuList(summary=summary, hosts=views, next="submit_jobs" if n_free or cpu_free else "wait_for_jobs")

    # ---- submission -------------------------------------------------------------------------------------

    def current_data_hash(self) -> str | None:
        return current_dataset(self.paths)

    def _resolve_code(self, spec: JobSpec) -> str | None:
        try:
            if spec.code in (None, "trainer"):
                return self.code.snapshot_trainer() if spec.kind == "trainer" or spec.code == "trainer" else None
            if "/" in spec.code or spec.code.startswith(("~", ".")) or Path(spec.code).is_dir():
                return self.code.snapshot(Path(spec.code))
            return self.code.resolve(spec.code)
        except CodeStoreError as e:
            raise ArcError(str(e)) from None

    @staticmethod
    def _check_trainer_config(spec: JobSpec) -> None:
        """Overrides the packaged trainer would refuse are refused now, not after a queue wait and a start-up."""
        from trainer.config import ConfigError, resolve_config

        overrides = [workloads.format_override(k, v) for k, v in (spec.config or {}).items()]
        try:
            resolve_config(spec.preset or "default", None, overrides, spec.time_budget_s, None)
        except ConfigError as e:
            raise ArcError(f"the trainer refuses this config: {e}") from None

    def _resolve_requirements(self, spec: JobSpec) -> Requirements:
        req = spec.requirements
        if req.same_class_as:
            ref = self._get(req.same_class_as)
            if ref.get("gpu_class") == CPU_CLASS:
                req = req.model_copy(update={"cpu_only": True, "gpus": 0})
            elif ref.get("gpu_class"):
                req = req.model_copy(update={"gpu_class": ref["gpu_class"]})
        gpu_asked = req.model_fields_set & {"gpus", "gpu_class", "gpu_model", "min_memory_gb"}
        if not req.cpu_only and not gpu_asked and not self.scheduler.fleet_has_gpus():
            # A fleet without GPUs (the demo on a laptop) runs everything on CPU slots.
            req = req.model_copy(update={"cpu_only": True, "gpus": 0})
        return req

    def submit_jobs(self, specs: Iterable[JobSpec | dict], submitted_by: str = "agent") -> SubmitResult:
        try:
            specs = [s if isinstance(s, JobSpec) else JobSpec.model_validate(s) for s in specs]
        except ValueError as e:
            raise ArcError(f"invalid job spec: {e}") from None
        if not specs:
            raise ArcError("no jobs given; pass at least one job spec")
        if len(specs) > MAX_BATCH:
            raise ArcError(f"{len(specs)} jobs in one call; submit at most {MAX_BATCH} per call")
        rows, problems = [], []
        for n, spec in enumerate(specs):
            try:
                req = self._resolve_requirements(spec)
                reason = self.scheduler.why_impossible(req)
                if reason:
                    raise ArcError(f"can never run: {reason}")
                code_hash = self._resolve_code(spec)
                data_hash = None
                if spec.kind == "trainer":
                    data_hash = self.current_data_hash()
                    if data_hash is None:
                        raise ArcError("no dataset prepared for trainer jobs; a person runs `arc data prepare` "
                                       "(see `arc data prepare --help`), then submit again")
                config = dict(spec.config or {})
                if spec.kind == "trainer" and spec.code in (None, "trainer"):
                    self._check_trainer_config(spec)
                if spec.preset:
                    config["preset"] = spec.preset
                budget, limit = job_times(self.research, spec.kind, spec.time_budget_s, spec.time_limit_s)
                rows.append({
                    "kind": spec.kind, "name": spec.name, "argv": spec.command or [], "env": spec.env,
                    "config": config if spec.kind == "trainer" else None, "seed": spec.seed,
                    "time_budget_s": budget, "time_limit_s": limit,
                    "code_hash": code_hash, "data_hash": data_hash, "tags": spec.tags,
                    "hypothesis_id": spec.hypothesis_id, "priority": spec.priority,
                    "requirements": req.model_dump(exclude_defaults=True), "submitted_by": submitted_by,
                    "primary_metric": self.primary_metric,
                })
            except ArcError as e:
                problems.append(f"job {n}: {e}")
        if problems:
            raise ArcError("nothing submitted; " + "; ".join(problems[:5])
                           + (f"; and {len(problems) - 5} more" if len(problems) > 5 else ""))
        try:
            self.guard.check(rows)
        except GuardError as e:
            raise ArcError(f"nothing submitted; {e}") from None
        ids = self.history.new_job_ids(len(rows))
        for job_id, row in zip(ids, rows):
            row.update(job_id=job_id, status="queued")
        self.history.insert_jobs(rows)
        self.scheduler.wake()
        time.sleep(0.05)   # let the dispatcher place what fits now, so the answer can say where
        queued = [j["job_id"] for j in self.history.jobs(status=["queued"], order="priority desc, job_num asc",
                                                           limit=None)]
        out = []
        for job_id in ids:
            row = self.history.get_job(job_id)
            out.append(SubmittedJob(job_id=job_id, status=row["status"], host=row.get("host"),
                                    gpu_class=row.get("gpu_class"),
                                    queue_position=queued.index(job_id) + 1 if job_id in queued else None))
        placed = sum(1 for j in out if j.host)
        span = ids[0] if len(ids) == 1 else f"{ids[0]}..{ids[-1]}"
        return SubmitResult(
            summary=f"submitted {len(ids)} job(s) {span}: {placed} placed, {len(ids) - placed} queued",
            jobs=out, next=f"wait_for_jobs(job_ids={ids[:8]!r}{'...' if len(ids) > 8 else ''})")

    # ---- looking at jobs ---------------------------------------------------------------------------------

    def job_status(self, job_ids: list[str]) -> JobDetails:
        if not job_ids:
            raise ArcError("give at least one job id, e.g. ['j17']")
        if len(job_ids) > 50:
            raise ArcError("at most 50 job ids per call; use list_jobs for more")
        details = [self._job_detail(self._get(j)) for j in job_ids]
        counts: dict[str, int] = {}
        for d in details:
            counts[d.status] = counts.get(d.status, 0) + 1
        return JobDetails(summary=", ".join(f"{n} {s}" for s, n in counts.items()), jobs=details)

    def list_jobs(self, status: list[str] | None = None, host: str | None = None, tag: str | None = None,
                  hypothesis_id: str | None = None, limit: int = 50, offset: int = 0) -> JobList:
        _bounded("limit", limit, 1, MAX_ROWS)
        _bounded("offset", offset, 0, 10**9)
        allowed = set(ACTIVE_STATUSES) | set(TERMINAL_STATUSES)
        for s in status or []:
            if s not in allowed:
                raise ArcError(f"unknown status '{s}'; use any of: {', '.join(sorted(allowed))}")
        rows, total = self.history.jobs_page(status=status, host=host, tag=tag, hypothesis=hypothesis_id,
                                             limit=limit, offset=offset)
        views = [self._job_view(r) for r in rows]
        more = offset + len(views) < total
        return JobList(summary=f"{total} job(s) match; showing {offset + 1 if views else 0}-{offset + len(views)}",
                       jobs=views, total=total, offset=offset,
                       next=next_page("list_jobs", offset + len(views), status=status, host=host, tag=tag,
                                      hypothesis_id=hypothesis_id, limit=None if limit == 50 else limit)
                       if more else None)

    def cancel_jobs(self, job_ids: list[str]) -> CancelResult:
        if not job_ids:
            raise ArcError("give at least one job id to cancel")
        rows = [self._get(j) for j in job_ids]
        cancelled, ended, notes = [], [], []
        for row in rows:
            if row["status"] in TERMINAL_STATUSES:
                ended.append(row["job_id"])
                continue
            outcome = self.scheduler.cancel(row)
            if outcome == "raced":
                outcome = self.scheduler.cancel(self.history.get_job(row["job_id"]))
            cancelled.append(row["job_id"])
            if outcome == "pending":
                notes.append(f"{row['job_id']}: host unreachable, cancel sent when it returns")
        summary = f"cancelling {len(cancelled)} job(s)" + (f"; {len(ended)} had already ended" if ended else "")
        if notes:
            summary += "; " + "; ".join(notes[:3])
        return CancelResult(summary=summary, cancelled=cancelled, already_ended=ended,
                            next="wait_for_jobs" if cancelled else None)

    def tail_log(self, job_id: str, lines: int = 80, grep: str | None = None, offset: int | None = None,
                 max_bytes: int = 64_000) -> LogTail:
        row = self._get(job_id)
        _bounded("lines", lines, 1, MAX_LOG_LINES)
        _bounded("max_bytes", max_bytes, 1_000, 1_000_000)
        if offset is not None:
            _bounded("offset", offset, 0, 2**62)
        if not row.get("host"):
            raise ArcError(f"{job_id} is {row['status']} and has not started on a host yet; no log")
        pattern = None
        if grep:
            try:
                pattern = compile_user_pattern(grep, "grep pattern")
            except UserPatternError as e:
                raise ArcError(str(e)) from None
        params: dict[str, Any] = {"job_id": self.scheduler.host_job_id(job_id), "max_bytes": max_bytes}
        if offset is not None:
            params["offset"] = offset
        else:
            params["lines"] = lines if pattern is None else MAX_LOG_LINES
        try:
            res = self.scheduler.request(row["host"], "tail", params, timeout=10.0)
        except (HostUnavailable, RequestTimeout) as e:
            raise ArcError(f"cannot reach {row['host']} to read the log ({e}); try again later") from None
        except AgentError as e:
            raise ArcError(f"{row['host']} could not read the log: {e.message}") from None
        text = res["text"]
        cut_note = ""
        if pattern is not None:
            all_lines = text.splitlines()
            hits = [ln for ln in all_lines if pattern.search(ln)]
            text = "\n".join(hits[-lines:])
            long_lines = sum(1 for ln in all_lines if len(ln) > MAX_SUBJECT_CHARS)
            if long_lines:
                cut_note = (f"; grep looked at only the first {MAX_SUBJECT_CHARS:,} characters of {long_lines} "
                            "longer line(s)")
        n = len(text.splitlines())
        return LogTail(summary=f"{n} line(s) of {job_id}'s log ({row['status']}){cut_note}", job_id=job_id,
                       text=text,
                       offset=res["offset"], next_offset=res["next_offset"], truncated=res["truncated"],
                       next=f"tail_log(job_id='{job_id}', offset={res['next_offset']}) for new output"
                       if row["status"] in ACTIVE_STATUSES else None)

    def wait_for_jobs(self, job_ids: list[str], mode: str = "any", timeout_s: float = 600.0,
                      progress: Callable[[int, int, str], None] | None = None) -> WaitResult:
        if mode not in ("any", "all"):
            raise ArcError("mode must be 'any' or 'all'")
        if not 0 <= timeout_s <= 3600:
            raise ArcError("timeout_s must be between 0 and 3600; call again to keep waiting")
        if not job_ids or len(job_ids) > 200:
            raise ArcError("give 1 to 200 job ids")
        for j in job_ids:
            self._get(j)
        deadline = time.monotonic() + timeout_s
        version = self.scheduler.terminal_version
        while True:
            rows = {r["job_id"]: r for r in self.history.get_jobs(job_ids)}   # one query per wake
            done = [j for j, r in rows.items() if r["status"] in TERMINAL_STATUSES]
            pending = [j for j in job_ids if j not in done]
            finished = bool(done) if mode == "any" else not pending
            # Queued jobs behind a human checkpoint will not start within any wait: say so now.
            held = self.guard.last_held if self.guard is not None else None
            stuck = bool(held and pending) and all(rows[j]["status"] in ("queued", "held") for j in pending)
            left = deadline - time.monotonic()
            if finished or stuck or left <= 0:
                views = [self._job_view(rows[j]) for j in done]
                ok = sum(1 for v in views if v.status == "succeeded")
                values = [v.metric for v in views if v.metric is not None]
                best = (min if self.metric_direction == "min" else max)(values, default=None)
                summary = f"{len(done)} of {len(job_ids)} ended ({ok} succeeded)" + (
                    f", best {self.primary_metric} {best:.6f}" if best is not None else "")
                if stuck and not finished:
                    summary += f"; {len(pending)} queued behind a pause: {held}"
                elif not finished:
                    summary += f"; timed out with {len(pending)} pending"
                follow = f"wait_for_jobs(job_ids={pending[:8]!r})" if pending else "leaderboard"
                return WaitResult(summary=summary, done=views[:50], pending=pending,
                                  timed_out=not finished and not stuck, held=held if stuck else None,
                                  next="research_status" if stuck and not finished else follow)
            if progress is not None:
                progress(len(done), len(job_ids), f"{len(done)}/{len(job_ids)} ended; waiting on "
                         + ", ".join(pending[:5]))
            version = self.scheduler.wait_terminal(version, min(left, 2.0))

    # ---- SQL ---------------------------------------------------------------------------------------------

    def query_results(self, sql: str, limit: int = 50) -> SqlResult:
        _bounded("limit", limit, 1, MAX_ROWS)
        if self.snapshots is not None:
            self.snapshots.refresh_now()
        source = self.paths.history if self.read_only else self.paths.snapshot
        try:
            res = run_user_sql(source, sql, limit=limit, timeout_s=10.0)
        except UserSqlError as e:
            raise ArcError(str(e)) from None
        summary = f"{res.row_count} row(s)" + (f", truncated at {res.row_count}" if res.truncated else "")
        return SqlResult(summary=summary + (f"; {res.cut}" if res.cut else ""), cut=res.cut,
                         columns=res.columns, rows=res.rows, row_count=res.row_count, truncated=res.truncated,
                         next="raise limit or add WHERE/ORDER BY" if res.truncated else None)

    # ---- research: guardrails, noise, suggestions, snapshots ----------------------------------------------

    def _guardrails(self) -> Guardrails:
        if self.guard is None:
            raise ArcError("the campaign's guardrails live in the daemon; run this through `arc` with the daemon "
                           "(it starts on demand) rather than on the history file")
        return self.guard

    def research_status(self) -> GuardStatus:
        """Budget used and left, experiments to the next checkpoint, whether dispatch is paused and what a person
        runs to go on, and the last approval's note."""
        status = self._guardrails().status()
        if self.research_stamp is not None and self.research_stamp.changed():
            status.summary += (f"; {self.research_stamp.path} has changed since it was loaded: a person runs "
                               "`arc research reload` to apply it")
        return status

    def reload_research(self) -> GuardStatus:
        """Read research.yaml again (a person raised a budget or max_gpus, widened the space): the new rules hold
        from the next submission and dispatch round. A broken file, or one that changes the metric the history
        ranks by, is refused and the rules in force stay. A person's act, like approve: no MCP tool."""
        guard = self._guardrails()
        if self.research_file is None:
            raise ArcError("this daemon was started without a research file to reload")
        stamp = FileStamp(self.research_file)        # before reading: an edit during the load shows as a change
        try:
            cfg = load_research(self.research_file)
        except ResearchConfigError as e:
            raise ArcError(f"{e}; the rules in force are unchanged") from None
        if cfg.metric != self.research.metric:
            raise ArcError(f"{self.research_file}: metric changed from {self.research.metric.name} "
                           f"({self.research.metric.direction}) to {cfg.metric.name} ({cfg.metric.direction}); "
                           "the history's results are ranked by the first, so a new metric needs a new state dir "
                           "(--state-dir); the rules in force are unchanged")
        try:
            guard.use(cfg)
        except ResearchConfigError as e:
            raise ArcError(f"{e}; the rules in force are unchanged") from None
        self.research, self.research_stamp = cfg, stamp
        self.history.add_event("research_reloaded", f"rules reloaded from {self.research_file}")
        guard.allowance()        # a lifted hold lifts now (and says so in the events), not at the next round
        self.scheduler.wake()
        status = guard.status()
        found = "" if self.research_file.exists() else " (no such file: the defaults, no limits)"
        status.summary = f"rules reloaded from {self.research_file}{found}; {status.summary}"
        return status

    def approve(self, note: str | None = None, by: str = "cli") -> GuardStatus:
        """A person's go-ahead at a checkpoint (deliberately no MCP tool: the agent cannot lift its own pause)."""
        if note is not None and len(note) > 2000:
            raise ArcError(f"the note has {len(note)} characters; keep it under 2000")
        status = self._guardrails().approve(note, by)
        self.scheduler.wake()
        return status

    def _floors(self) -> dict[str, NoiseFloor]:
        return noise_floors(self.history.jobs(tag=NOISE_TAG, status="succeeded", limit=None))

    def _busiest_class(self, rows: list[dict]) -> str | None:
        """The GPU class with the most finished runs: the history suggestions learn from when none is named."""
        counts = Counter(r.get("gpu_class") for r in rows if r.get("gpu_class") and r.get("primary_value") is not None)
        return counts.most_common(1)[0][0] if counts else None

    def suggest_configs(self, n: int = 8, sampler: str = "tpe", gpu_class: str | None = None, seed: int = 0,
                        preset: str | None = None, fixed: dict[str, Any] | None = None) -> Suggestions:
        """n trainer configs inside research.yaml's search space from Optuna, warm-started from the finished runs
        of one GPU class. `preset` and `fixed` (settings outside the space, e.g. {"max_steps": 40}) select the runs
        that learn from and are carried by every suggestion."""
        _bounded("n", n, 1, 50)
        if sampler not in ("tpe", "cmaes"):
            raise ArcError("sampler must be 'tpe' (default) or 'cmaes'")
        if not self.research.search_space:
            raise ArcError("research.yaml declares no search_space; add one to get suggestions")
        rows = self.history.jobs(status="succeeded", limit=None)
        gpu_class = gpu_class or self._busiest_class(rows)
        shared = {**(fixed or {}), **({"preset": preset} if preset else {})}
        try:
            configs = suggest_configs(self.research, rows, n, sampler=sampler, gpu_class=gpu_class, seed=seed,
                                      fixed=shared)
            used = len(warm_trials(self.research, rows, gpu_class, shared))
        except ValueError as e:
            raise ArcError(str(e)) from None
        for config in configs:
            config.pop("preset", None)      # a job names its preset beside its config
        where = {"cpu_only": True} if gpu_class == CPU_CLASS else {"gpu_class": gpu_class} if gpu_class else {}
        job = {"config": "<each>", **({"preset": preset} if preset else {}),
               **({"requirements": where} if where else {})}
        return Suggestions(summary=f"{len(configs)} {sampler.upper()} suggestion(s) inside the search space, "
                                   f"learned from {used} finished run(s)" + (f" on {gpu_class}" if gpu_class else ""),
                           configs=configs, preset=preset, gpu_class=gpu_class, based_on=used,
                           next=f"submit_jobs with one job per config: {json.dumps(job)}, and a hypothesis_id")

    def compare_runs(self, a: list[str], b: list[str]) -> Comparison:
        """Runs b against runs a on the primary metric: the GPU class, n per side, the difference, and whether it
        clears the noise (Welch's t-test with two or more runs a side, else the class's measured noise floor)."""
        if not a or not b or len(a) > 200 or len(b) > 200:
            raise ArcError("give 1 to 200 job ids on each side, e.g. a=['j3','j4'] b=['j9','j10']")
        rows_a, rows_b = [self._get(j) for j in a], [self._get(j) for j in b]
        missing = [r["job_id"] for r in rows_a + rows_b if r.get("primary_value") is None]
        if missing:
            raise ArcError(f"no {self.primary_metric} for {', '.join(missing[:8])} (not ended, or failed); "
                           "wait_for_jobs first, and compare only runs that produced the metric")
        try:
            result = compare_jobs(rows_a, rows_b, self.research.metric.direction, self._floors(),
                                  self.research.noise.alpha)
        except ValueError as e:
            raise ArcError(str(e)) from None
        if not result.comparable:
            result.next = (f"rerun_job(job_id='{b[0]}', gpu_class='{result.gpu_class_a}') to have both sides "
                           "on one class")
        elif result.test == "none":
            result.next = (f"measure_noise(gpu_class='{result.gpu_class}'), or rerun_job(job_id='{b[0]}', "
                           "seeds=[1, 2]) for a t-test")
        else:
            result.next = f"update_hypothesis(hyp_id=..., compare={{'a': {a[:8]!r}, 'b': {b[:8]!r}}}) to record it"
        return result

    def _fleet_classes(self) -> list[str]:
        """GPU classes the fleet has now, or the CPU class where it has none."""
        unknown = self.scheduler.unknown_hosts()
        if unknown:
            raise ArcError(f"hosts {', '.join(unknown)} have not reported their GPUs yet (list_gpus shows them); "
                           "try again in a moment, or name gpu_class")
        classes = sorted({g.gpu_class for c in self.scheduler.capacity() for g in c.gpus})
        return classes or [CPU_CLASS]

    def measure_noise(self, gpu_class: str | None = None, seeds: int | None = None,
                      config: dict[str, Any] | None = None, preset: str | None = None) -> SubmitResult:
        """The baseline K times with seeds 0..K-1 on one GPU class, or on each class of the fleet: the floor every
        comparison is held to."""
        k = seeds or self.research.noise.seeds
        _bounded("seeds", k, 2, 32)
        specs = []
        for cls in [gpu_class] if gpu_class else self._fleet_classes():
            requirements = {"cpu_only": True} if cls == CPU_CLASS else {"gpu_class": cls}
            specs += [JobSpec(config=config or {}, preset=preset, seed=i, tags=[NOISE_TAG, "baseline"],
                              name=f"noise {cls} seed {i}", requirements=requirements) for i in range(k)]
        result = self.submit_jobs(specs)
        result.summary = f"noise floor: {result.summary} ({k} seeds per class)"
        return result

    def diff_jobs(self, a: str, b: str, max_lines: int = 300) -> JobDiff:
        _bounded("max_lines", max_lines, 10, 5000)
        return diff_jobs(self._get(a), self._get(b), self.paths.snapshots_dir, max_lines=max_lines)

    def rerun_job(self, job_id: str, seeds: list[int] | None = None, gpu_class: str | None = None,
                  same_host: bool = False) -> SubmitResult:
        """The job's exact code snapshot and config again, on the GPU class it ran on unless another is named, with
        its seed or new ones."""
        row = self._get(job_id)
        if seeds is not None and not 1 <= len(seeds) <= 32:
            raise ArcError("give 1 to 32 seeds")
        if row.get("code_hash") and not self.code.has(row["code_hash"]):
            raise ArcError(f"{job_id}'s code snapshot {row['code_hash'][:12]} is not on this controller")
        requirements = dict(row.get("requirements") or {})
        gpu_class = gpu_class or row.get("gpu_class")     # by default where it ran: comparable with it
        if gpu_class == CPU_CLASS:
            requirements = {k: v for k, v in requirements.items() if k in ("host", "label")} | {"cpu_only": True}
        elif gpu_class is not None:
            requirements = {k: v for k, v in requirements.items()
                            if k not in ("gpu_model", "cpu_only", "same_class_as")}
            requirements.update(gpu_class=gpu_class, gpus=max(1, int(requirements.get("gpus", 1))))
        if same_host:
            requirements["host"] = row.get("host")
        config = dict(row.get("config") or {})
        preset = config.pop("preset", None)
        # A rerun's seed-twin is not part of a noise measurement; the tag says it is a rerun.
        tags = [t for t in row.get("tags") or [] if t != NOISE_TAG] + ["rerun"]
        base = dict(code=row.get("code_hash"), time_budget_s=row.get("time_budget_s"),
                    time_limit_s=row.get("time_limit_s"), requirements=requirements, tags=list(dict.fromkeys(tags)),
                    hypothesis_id=row.get("hypothesis_id"), env=row.get("env") or {},
                    name=f"rerun of {job_id}", priority=int(row.get("priority") or 0))
        if row["kind"] == "trainer":
            base.update(config=config, preset=preset)
        else:
            base.update(command=list(row.get("argv") or []))
        specs = [JobSpec(**base, seed=s) for s in (seeds if seeds is not None else [row.get("seed")])]
        result = self.submit_jobs(specs)
        result.summary = f"rerun of {job_id}: {result.summary}"
        return result

    def _triage(self, row: dict) -> Triage | None:
        if row["status"] not in ("failed", "timeout", "lost"):
            return None
        tail = ""
        if row["status"] != "lost" and row.get("host"):
            try:
                tail = self.tail_log(row["job_id"], lines=80).text
            except ArcError:
                tail = ""
        return triage(row["status"], row.get("exit_code"), row.get("signal"), row.get("reason"), tail)

    def _on_tick(self) -> None:
        """Keeps the guardrails' hold current while nothing is queued (every answer says when dispatch is paused),
        then looks for hung jobs: a log silent past research.yaml's hangs.silent_after_s while its GPUs sit idle."""
        self.guard.allowance()
        limit = self.research.hangs.silent_after_s
        if limit is None:
            return
        now = time.time()
        running = self.history.jobs(status=["running"], limit=None)
        alive = {j["job_id"] for j in running}
        for job_id in list(self._log_growth):
            if job_id not in alive:
                del self._log_growth[job_id]
        for job in running:
            size = job.get("log_bytes") or 0
            seen = self._log_growth.get(job["job_id"])
            if seen is None or seen[0] != size:
                self._log_growth[job["job_id"]] = (size, now, False)
                continue
            silent = now - seen[1]
            if silent < limit or seen[2]:
                continue
            utils: list[float | None] = []
            try:
                inv = self.scheduler.request(job["host"], "inventory", timeout=5.0)
                indices = set(job.get("gpu_indices") or [])
                utils = [g.get("utilization_pct") for g in inv.get("gpus", []) if g["index"] in indices]
            except Exception as e:   # an unreachable host is the reconciler's business, not a hang
                log.info("no utilization for %s: %s", job["job_id"], e)
                continue
            reason = hang_reason(self.research, silent, utils)
            if reason is None:
                continue
            self._log_growth[job["job_id"]] = (size, seen[1], True)
            self.history.add_event("hung", reason, job_id=job["job_id"], host=job["host"])
            if self.research.hangs.kill:
                self.scheduler.cancel(job)

    # ---- insights and hypotheses ----

    @property
    def metric_direction(self) -> str:
        """'min' when lower values of the primary metric are better (research.yaml), else 'max'."""
        return "min" if self.research.metric.lower_is_better else "max"

    def append_hypothesis(self, text: str, rationale: str | None = None, tags: list[str] | None = None,
                          jobs: list[str] | None = None, created_by: str = "agent") -> HypothesisResult:
        from . import hypotheses

        return hypotheses.append_hypothesis(self.history, text, rationale, tags, jobs, created_by)

    def update_hypothesis(self, hyp_id: str, status: str | None = None, verdict: str | None = None,
                          effect_size: float | None = None, add_jobs: list[str] | None = None,
                          compare: Sides | dict | None = None) -> HypothesisResult:
        """`compare` ({a: reference runs, b: the hypothesis's runs}) states the comparison in the verdict (GPU
        class, runs per side, difference, significance), sets effect_size to the difference and links the runs.
        A cross-class comparison can neither support nor refute."""
        from . import hypotheses

        if compare is not None:
            sides = compare if isinstance(compare, Sides) else Sides.model_validate(compare)
            result = self.compare_runs(sides.a, sides.b)
            if not result.comparable and status in ("supported", "refuted"):
                raise ArcError(f"{hyp_id} cannot be {status} on this comparison: {result.summary}")
            verdict = f"{verdict.strip()}; {result.summary}" if verdict and verdict.strip() else result.summary
            effect_size = result.diff if effect_size is None else effect_size
            add_jobs = list(dict.fromkeys([*(add_jobs or []), *sides.a, *sides.b]))
        return hypotheses.update_hypothesis(self.history, hyp_id, status, verdict, effect_size, add_jobs)

    def list_hypotheses(self, status: str | None = None, limit: int = 20, offset: int = 0) -> HypothesisList:
        from . import hypotheses

        return hypotheses.list_hypotheses(self.history, status, limit, offset)

    def leaderboard(self, gpu_class: str | None = None, top: int = 5) -> Leaderboard:
        from . import insights

        return insights.leaderboard(self.history, self.primary_metric, self.metric_direction, gpu_class, top,
                                    floors=self._floors(), alpha=self.research.noise.alpha)

    def digest(self, since: str | None = None) -> Digest:
        from . import insights

        return insights.digest(self.history, self.primary_metric, self.metric_direction, since,
                               research=self.research, floors=self._floors(),
                               guardrails=self.guard.status().summary if self.guard else None)

    def plot_runs(self, job_ids: list[str] | None = None, series: str = "train_loss", kind: str = "curves",
                  gpu_class: str | None = None) -> Plot:
        from . import insights

        return insights.plot_runs(self.history, self.primary_metric, self.metric_direction, job_ids=job_ids,
                                  series=series, kind=kind, gpu_class=gpu_class)

    def describe_history(self, table: str | None = None) -> HistorySchema:
        from . import insights

        return insights.describe_history(self.history, table)

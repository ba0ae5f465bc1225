"""What the history means for the research: the leaderboard, the digest of recent changes, and plots.

Functions over a `History` returning small result models (the agent reads them). Results are compared only within
one GPU class: a run's baseline is the earliest succeeded job tagged `baseline` in its class, else the first
succeeded job of that class. A leaderboard entry is held against the baseline as groups: the runs that share the
entry's code and config (its seeds) against the runs that share the baseline's, with Welch's t-test when both have
two or more, else against the class's measured noise floor (research/stats.py), and the answer says which.
"""
from __future__ import annotations

import datetime as dt
import io
import json
import re
from typing import TYPE_CHECKING, Any, Literal, Mapping

from ..core.errors import ArcError
from ..core.gpu_classes import CPU_CLASS
from ..core.models import ClassBoard, Digest, HistorySchema, Leaderboard, Plot, RunEntry, iso
from ..core.vocabulary import ACTIVE_STATUSES, FAILED_STATUSES, TERMINAL_STATUSES, WAITING_STATUSES, JobStatus, sql_list
from ..history.values import from_json, now, utc
from . import Comparison, NoiseFloor, ResearchConfig, compare, search_health
from .hypotheses import brief
from .memory import decision_line, incumbent_line, incumbents, lineage, ok_runs_sql


if TYPE_CHECKING:     # for annotations only: importing the history loads DuckDB
    from ..history import History


MAX_PLOT_JOBS = 12

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


# ---- helpers -------------------------------------------------------------------------------------------------

def parse_since(since: str | None, default: dt.timedelta = dt.timedelta(hours=1)) -> dt.datetime:
    """An instant from ISO 8601 text ('2025-06-01T12:00:00Z') or a span back from now ('30m', '2h', '1d')."""
    if since is None or not since.strip():
        return now() - default
    m = _DURATION.match(since)
    if m:
        return now() - dt.timedelta(seconds=float(m.group(1)) * _SECONDS[m.group(2)])
    try:
        return utc(since.strip().replace("Z", "+00:00"))
    except (ValueError, TypeError):
        raise ArcError(f"since={since!r} is neither an ISO time (2025-06-01T12:00:00Z) nor a span like "
                       "'30m', '2h', '1d'") from None


def _check_direction(direction: str) -> str:
    if direction not in ("min", "max"):
        raise ArcError(f"direction must be 'min' (lower is better) or 'max', not {direction!r}")
    return direction


def config_delta(baseline: dict | None, config: dict | None) -> dict[str, Any]:
    """The overrides in which `config` differs from `baseline`; a key the baseline set and `config` does not is
    None (back to the trainer's default)."""
    baseline, config = baseline or {}, config or {}
    delta = {k: v for k, v in sorted(config.items()) if baseline.get(k, object()) != v}
    delta.update({k: None for k in sorted(baseline) if k not in config})
    return delta


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def _group_key(cls: str, code_hash: str | None, config: Any, argv: Any) -> tuple[str, str, str, str]:
    """Runs that share a class, code, config and command differ only by seed: one group for significance."""
    config = from_json(config) if isinstance(config, str) else config
    return cls, code_hash or "", json.dumps(config or {}, sort_keys=True), json.dumps(list(argv or []))


def _significance(c: Comparison) -> str:
    """A comparison with the class baseline in a few words (the board names the class)."""
    runs = f"{c.n_b} vs {c.n_a} baseline run(s)"
    if c.test == "welch":
        return f"{'significant' if c.significant else 'not significant'} (Welch p={c.p_value:.2g}, {runs})"
    if c.test == "noise_floor":
        return (f"{'beyond' if c.significant else 'within'} noise (|Δ| {abs(c.diff):.4g} "
                f"{'>' if c.significant else '<='} floor {c.noise_floor:.4g}, {runs})")
    return f"unknown: {runs}, no noise floor measured (measure_noise, or more seeds)"


# ---- leaderboard ---------------------------------------------------------------------------------------------

def leaderboard(history: History, metric: str, direction: str = "min", gpu_class: str | None = None,
                top: int = 5, floors: Mapping[str, NoiseFloor] | None = None, alpha: float = 0.05,
                slow: Mapping[str, str] | None = None) -> Leaderboard:
    """The best `top` runs of each class against the class baseline; `floors` (per class, from measure_noise's
    runs) decide significance where a side has a single run. Each class also shows its lineage (baseline -> kept
    changes) and its runs in `slow` (throughput outliers: job id -> what was off)."""
    order = "ASC" if _check_direction(direction) == "min" else "DESC"
    if not 1 <= top <= 50:
        raise ArcError(f"top must be from 1 to 50 (got {top})")
    where, params = ("", [metric]) if gpu_class is None else ("AND coalesce(gpu_class, 'cpu') = ?", [metric, gpu_class])
    cur = history.cursor()
    baselines = {r[0]: r for r in cur.execute(f"""
        SELECT cls, job_id, v, config, code_hash, argv FROM ({ok_runs_sql(where)})
        QUALIFY row_number() OVER (PARTITION BY cls ORDER BY is_baseline DESC, job_num) = 1""", params).fetchall()}
    best = cur.execute(f"""
        SELECT cls, job_id, v, config, code_hash, argv, seed, hypothesis_id, count(*) OVER (PARTITION BY cls) AS n,
               row_number() OVER (PARTITION BY cls ORDER BY v {order}, job_num) AS rank
        FROM ({ok_runs_sql(where)}) QUALIFY rank <= ? ORDER BY cls, rank""", params + [top]).fetchall()
    # One value per seed: a rerun at a seed already measured repeats that measurement, it adds no replicate.
    groups: dict[tuple[str, str, str, str], dict[Any, float]] = {}
    for job_id, cls, code_hash, config, argv, seed, v in cur.execute(
            f"SELECT job_id, cls, code_hash, config, argv, seed, v FROM ({ok_runs_sql(where)}) ORDER BY job_num",
            params).fetchall():
        groups.setdefault(_group_key(cls, code_hash, config, argv), {}).setdefault(
            job_id if seed is None else seed, v)
    words = "minimize" if direction == "min" else "maximize"
    boards: dict[str, ClassBoard] = {}
    for cls, job_id, v, config, code_hash, argv, seed, hyp, n, rank in best:
        _, base_job, base_v, base_config, base_code, base_argv = baselines[cls]
        base_key, key = _group_key(cls, base_code, base_config, base_argv), _group_key(cls, code_hash, config, argv)
        floor = (floors or {}).get(cls)
        board = boards.setdefault(cls, ClassBoard(gpu_class=cls, runs=n, baseline_job=base_job,
                                                  baseline_metric=base_v, baseline_runs=len(groups[base_key]),
                                                  noise_sigma=None if floor is None else round(floor.sigma, 6),
                                                  best=[]))
        entry = RunEntry(
            rank=rank, job_id=job_id, metric=v, vs_baseline=round(v - base_v, 6),
            changes=config_delta(from_json(base_config), from_json(config)),
            code_changed=bool(code_hash and base_code and code_hash != base_code), seed=seed, hypothesis_id=hyp,
            n=len(groups[key]))
        if key != base_key:       # the baseline's own seeds are not compared with themselves
            c = compare(list(groups[base_key].values()), list(groups[key].values()), cls, cls, words,
                        floor.sigma if floor else None, alpha)
            entry.significance, entry.significant = _significance(c), c.significant
        if job_id in (slow or {}):
            entry.significance = f"{entry.significance or 'no comparison'}; CONFOUNDED: {job_id} {slow[job_id]}"
        board.best.append(entry)
    for cls, board in boards.items():
        board.lineage = lineage(history, metric, cls)
        board.confounded = sorted(f"{j} {why}" for j, why in (slow or {}).items()
                                  if ((history.get_job(j) or {}).get("gpu_class") or CPU_CLASS) == cls)
    classes = list(boards.values())
    if not classes:
        scope = f" in class {gpu_class}" if gpu_class else ""
        return Leaderboard(summary=f"no succeeded runs with {metric}{scope} yet", metric=metric,
                           direction=direction, classes=[],
                           next="submit_jobs with tags=['baseline'] on each GPU class (list_gpus shows them)")
    parts = [best_line(b, metric) + f", {b.runs} runs" + _lineage_words(b) for b in classes]
    if len(classes) > 1:
        parts.append("classes are ranked apart, never against each other")
    return Leaderboard(summary="; ".join(parts), metric=metric, direction=direction, classes=classes,
                       next="job_status(job_ids=[...]) for a run's details; plot_runs(kind='best') for the trend")


def _lineage_words(board: ClassBoard) -> str:
    kept = len(board.lineage) - 1
    flagged = f", {len(board.confounded)} throughput outlier(s)" if board.confounded else ""
    return (f", {kept} kept change(s), incumbent {'+'.join(board.lineage[-1].job_ids[:4])}" if kept > 0 else "") \
        + flagged


def best_line(board: ClassBoard, metric: str) -> str:
    """'cpu: best j7 val_bpb 2.65 (-0.047 vs baseline j1: beyond noise (...))'."""
    lead = board.best[0]
    line = f"{board.gpu_class}: best {lead.job_id} {metric} {_fmt(lead.metric)}"
    if lead.job_id == board.baseline_job:
        return line + " (the baseline)"
    return line + f" ({lead.vs_baseline:+.4g} vs baseline {board.baseline_job}: " + (
        f"{lead.significance})" if lead.significance else "the baseline's config at another seed)")


# ---- digest --------------------------------------------------------------------------------------------------

def digest(history: History, metric: str, direction: str = "min", since: str | None = None,
           research: ResearchConfig | None = None, floors: Mapping[str, NoiseFloor] | None = None,
           guardrails: str | None = None, slow: Mapping[str, str] | None = None) -> Digest:
    """What changed since `since` (default: the last hour), in a few lines; with the state of each class's best
    against its baseline, search-health warnings from `research`, and the `guardrails` status line."""
    pick = "min" if _check_direction(direction) == "min" else "max"
    start, until = parse_since(since), now()
    cur = history.cursor()
    counts = dict(cur.execute(f"""
        SELECT status, count(*) FROM jobs WHERE status IN ({sql_list(TERMINAL_STATUSES)})
          AND ended_at >= ? GROUP BY status""", [start]).fetchall())
    active = dict(cur.execute(f"""
        SELECT CASE WHEN status IN ({sql_list(WAITING_STATUSES)}) THEN 'queued' ELSE 'running' END, count(*)
        FROM jobs WHERE status IN ({sql_list(ACTIVE_STATUSES)})
        GROUP BY 1""").fetchall())
    # A class has a new best when its best run that ended since `start` beats every run that ended before.
    new_bests = [f"{cls}: {job} {metric} {_fmt(v)}" + (f" (was {_fmt(old)} {old_job})" if old_job else " (first)")
                 for cls, job, v, old_job, old in cur.execute(f"""
        WITH ok AS ({ok_runs_sql()}),
             before AS (SELECT cls, arg_{pick}(job_id, v) AS job, {pick}(v) AS v FROM ok WHERE ended_at < ?
                        GROUP BY cls),
             after AS (SELECT cls, arg_{pick}(job_id, v) AS job, {pick}(v) AS v FROM ok WHERE ended_at >= ?
                       GROUP BY cls)
        SELECT a.cls, a.job, a.v, b.job, b.v FROM after a LEFT JOIN before b USING (cls)
        WHERE b.v IS NULL OR a.v {'<' if pick == 'min' else '>'} b.v ORDER BY a.cls""",
                                                                     [metric, start, start]).fetchall()]
    failures = [f"{job} {status}: {(reason or f'exit code {code}')[:100]}" for job, status, reason, code in
                cur.execute(f"""SELECT job_id, status, reason, exit_code FROM jobs
                               WHERE status IN ({sql_list(FAILED_STATUSES)}) AND ended_at >= ?
                               ORDER BY job_num DESC LIMIT 5""", [start]).fetchall()]
    hypotheses = [f"{h} {status}: " + (brief(verdict) if verdict else text[:80])
                  for h, status, verdict, text in cur.execute("""
        SELECT hyp_id, status, verdict, text FROM hypotheses WHERE updated_at >= ? ORDER BY num DESC LIMIT 8""",
                                                              [start]).fetchall()]
    ok, failed, cancelled = counts.get(JobStatus.SUCCEEDED, 0), sum(counts.get(s, 0) for s in FAILED_STATUSES), \
        counts.get(JobStatus.CANCELLED, 0)
    summary = (f"since {iso(start)}: {ok + failed + cancelled} ended ({ok} succeeded, {failed} failed"
               + (f", {cancelled} cancelled" if cancelled else "") + f"); {active.get('running', 0)} running, "
               f"{active.get('queued', 0)} queued; {len(new_bests)} new best(s)")
    board = leaderboard(history, metric, direction, top=1, floors=floors,
                        alpha=research.noise.alpha if research else 0.05, slow=slow)
    health = search_health(research, _campaign_jobs(history, metric)) if research else []
    health += [f"throughput outlier {j}: {why}; its comparisons are confounded (throttled or shared GPU, loaded "
               "host?)" for j, why in sorted((slow or {}).items())]
    if health:
        summary += f"; {len(health)} search-health warning(s)"
    nxt = ("tail_log(job_id=...) on a failure" if failures else
           "suggest_configs for fresh proposals" if any(h.startswith("stagnation") for h in health) else
           "submit_jobs for the next wave" if not active else "wait_for_jobs")
    return Digest(summary=summary, since=iso(start), until=iso(until), succeeded=ok, failed=failed,
                  cancelled=cancelled, running=active.get("running", 0), queued=active.get("queued", 0),
                  new_bests=new_bests, failures=failures, hypotheses=hypotheses,
                  significance=[best_line(b, metric) for b in board.classes], health=health,
                  guardrails=guardrails, incumbents=[incumbent_line(i, metric) for i in incumbents(history, metric)],
                  decisions=[decision_line(d) for d in history.decisions(limit=5)], next=nxt)


def _campaign_jobs(history: History, metric: str) -> list[dict[str, Any]]:
    """Every job of the campaign's metric, in the few fields search health reads."""
    cur = history.cursor()
    cur.execute("""SELECT job_id, job_num, status, coalesce(gpu_class, ?) AS gpu_class, primary_value, config
                   FROM jobs WHERE primary_metric = ? OR primary_metric IS NULL ORDER BY job_num""",
                [CPU_CLASS, metric])
    names = [d[0] for d in cur.description]
    return [{**dict(zip(names, row)), "config": from_json(row[-1])} for row in cur.fetchall()]


# ---- plots ---------------------------------------------------------------------------------------------------

def plot_runs(history: History, metric: str, direction: str = "min", job_ids: list[str] | None = None,
              series: str = "train_loss", kind: Literal["curves", "best", "lineage"] = "curves",
              gpu_class: str | None = None) -> Plot:
    """A PNG of `series` per step for `job_ids` ("curves"), of every run's `metric` over time with the running
    best per GPU class ("best"), or the campaign's lineage ("lineage": every run a point, the kept ones joined)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    try:
        if kind == "curves":
            summary = _plot_curves(history, ax, job_ids or [], series)
        elif kind == "best":
            summary = _plot_best(history, ax, metric, _check_direction(direction), gpu_class)
        elif kind == "lineage":
            summary = _plot_lineage(history, ax, metric, _check_direction(direction), gpu_class)
        else:
            raise ArcError(f"kind must be 'curves' (a metric per step for job_ids), 'best' (running best over "
                           f"time) or 'lineage' (kept changes over every run), not {kind!r}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return Plot(summary=summary, png=buf.getvalue())
    finally:
        plt.close(fig)


def _plot_curves(history: History, ax, job_ids: list[str], series: str) -> str:
    if not job_ids:
        raise ArcError("kind='curves' needs job_ids, e.g. ['j3', 'j7']; or use kind='best' for the running best")
    if len(job_ids) > MAX_PLOT_JOBS:
        raise ArcError(f"at most {MAX_PLOT_JOBS} jobs per plot (got {len(job_ids)})")
    known = {j["job_id"]: j for j in history.get_jobs(job_ids)}
    missing = [j for j in job_ids if j not in known]
    if missing:
        raise ArcError(f"no job {', '.join(missing)}; list_jobs shows the jobs that exist")
    data = history.metric_series(job_ids, series, max_points=400)
    empty = [j for j in job_ids if not data[j]["value"]]
    if len(empty) == len(job_ids):
        names = sorted({n for j in job_ids for n in history.metric_names(j)})
        raise ArcError(f"no '{series}' values recorded for {', '.join(job_ids)}; recorded metrics: "
                       + (", ".join(names) if names else "none yet (jobs still starting?)"))
    for job_id in job_ids:
        s = data[job_id]
        if s["value"]:
            steps = [st if st is not None else i for i, st in enumerate(s["step"])]
            final = known[job_id].get("primary_value")
            label = job_id if final is None else f"{job_id} ({known[job_id]['primary_metric']} {_fmt(final)})"
            ax.plot(steps, s["value"], label=label, linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel(series)
    ax.set_title(f"{series} per step")
    return (f"{series} per step for {len(job_ids) - len(empty)} job(s)"
            + (f"; no points yet for {', '.join(empty)}" if empty else ""))


def _plot_best(history: History, ax, metric: str, direction: str, gpu_class: str | None) -> str:
    where, params = ("", [metric]) if gpu_class is None else ("AND coalesce(gpu_class, 'cpu') = ?", [metric, gpu_class])
    rows = history.cursor().execute(f"SELECT cls, ended_at, v, job_id FROM ({ok_runs_sql(where)}) "
                                    "ORDER BY ended_at", params).fetchall()
    if not rows:
        raise ArcError(f"no succeeded runs with {metric} yet" + (f" in class {gpu_class}" if gpu_class else ""))
    better = min if direction == "min" else max
    by_class: dict[str, list[tuple]] = {}
    for cls, ended, v, job in rows:
        by_class.setdefault(cls, []).append((ended, v, job))
    parts = []
    for cls, points in sorted(by_class.items()):
        times = [p[0] for p in points]
        values = [p[1] for p in points]
        running, best = [], None
        for v in values:
            best = v if best is None else better(best, v)
            running.append(best)
        dots = ax.scatter(times, values, s=14, alpha=0.5)
        ax.step(times, running, where="post", color=dots.get_facecolor()[0], label=f"{cls} best", linewidth=1.6)
        champion = points[values.index(running[-1])][2]
        parts.append(f"{cls}: {len(points)} runs, best {_fmt(running[-1])} ({champion})")
    ax.set_xlabel("run ended (UTC)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric}: every run and the running best ({'lower' if direction == 'min' else 'higher'} "
                 "is better)")
    ax.figure.autofmt_xdate()
    return "; ".join(parts)


def _plot_lineage(history: History, ax, metric: str, direction: str, gpu_class: str | None) -> str:
    """The chart of the public autoresearch run: every run a dot at the time it ended, the kept ones (the lineage)
    joined as a step line, one colour per class; a failed run is an x at the level of the incumbent it tried to
    beat, since it has no metric."""
    where, params = ("", [metric]) if gpu_class is None else ("AND coalesce(gpu_class, 'cpu') = ?", [metric, gpu_class])
    ok = history.cursor().execute(f"SELECT cls, ended_at, v FROM ({ok_runs_sql(where)}) ORDER BY ended_at",
                                  params).fetchall()
    failed = history.cursor().execute(f"""
        SELECT coalesce(gpu_class, '{CPU_CLASS}') AS cls, ended_at FROM jobs
        WHERE status IN ({sql_list(FAILED_STATUSES)}) AND ended_at IS NOT NULL AND primary_metric = ?
          {where}
        ORDER BY ended_at""", params).fetchall()
    if not ok:
        raise ArcError(f"no succeeded runs with {metric} yet" + (f" in class {gpu_class}" if gpu_class else ""))
    end = max(r[1] for r in ok + [(None, f[1]) for f in failed])
    parts = []
    for cls in sorted({r[0] for r in ok}):
        steps = lineage(history, metric, cls)
        times = [utc(s.since.replace("Z", "+00:00")) for s in steps] + [end]
        levels = [s.metric for s in steps] + [steps[-1].metric]
        dots = ax.scatter([r[1] for r in ok if r[0] == cls], [r[2] for r in ok if r[0] == cls], s=14, alpha=0.45)
        colour = dots.get_facecolor()[0]
        ax.step(times, levels, where="post", color=colour, linewidth=1.8, label=f"{cls} kept ({len(steps) - 1})")
        ax.scatter(times[:-1], levels[:-1], s=46, color=colour, edgecolors="black", zorder=3)
        lost = [t for c, t in failed if c == cls]
        if lost:
            level = [next((lv for tt, lv in reversed(list(zip(times, levels))) if tt <= t), levels[0]) for t in lost]
            ax.scatter(lost, level, marker="x", s=50, color=colour, label=f"{cls} failed ({len(lost)})", zorder=3)
        parts.append(f"{cls}: {sum(1 for r in ok if r[0] == cls)} runs, {len(steps) - 1} kept, {len(lost)} failed, "
                     f"incumbent {'+'.join(steps[-1].job_ids[:4])} {_fmt(steps[-1].metric)}")
    ax.set_xlabel("run ended (UTC)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric}: every run, the kept changes joined ({'lower' if direction == 'min' else 'higher'} "
                 "is better)")
    ax.figure.autofmt_xdate()
    return "lineage: " + "; ".join(parts)


# ---- the history's schema ------------------------------------------------------------------------------------

def describe_history(history: History, table: str | None = None) -> HistorySchema:
    """Every table and view with its columns' types, example queries and notes; with `table`, that one relation
    with what each column means (the full catalog is a few thousand tokens, so it comes one table at a time)."""
    info = history.describe()
    relations = info["relations"]
    if table is None:
        relations = [{**r, "columns": {c: doc.split(":", 1)[0] for c, doc in r["columns"].items()}}
                     for r in relations]
        return HistorySchema(summary=f"{len(relations)} tables and views: " + ", ".join(r["name"] for r in relations),
                             relations=relations, examples=info["examples"], notes=info["notes"],
                             next="describe_history(table='runs') for what each column means; query_results(sql=...)")
    relations = [r for r in relations if r["name"] == table]
    if not relations:
        raise ArcError(f"no table or view '{table}'; they are: " + ", ".join(r["name"] for r in info["relations"]))
    return HistorySchema(summary=f"{table}: {relations[0]['doc']}", relations=relations, examples=[],
                         notes=info["notes"], next="query_results(sql=...) with one SELECT")

"""The history's schema, as an ordered list of forward migrations.

A database records the migrations it has received in `schema_version`; opening it applies the missing ones in
order, each in its own transaction. To change the schema, append a `Migration` with the next version number to
`MIGRATIONS` (never edit one that has shipped): its `apply(cursor)` runs DDL (and `COMMENT ON` for the meaning of
every new column, which `describe()` and the duckdb CLI show). A database newer than this code is refused.

Timestamps are TIMESTAMPTZ (instants, compared correctly with `now()` in any session time zone); JSON columns hold
JSON text in which non-finite floats are the strings "NaN", "Infinity", "-Infinity".
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Callable

import duckdb

from ..core.vocabulary import DECISION_KINDS, HYPOTHESIS_STATUSES, JOB_KINDS, JOB_STATUSES, sql_list
from .values import first_row


# autoresearch's final `---` block keys that the `runs` view turns into columns.
SUMMARY_COLUMNS = ("val_bpb", "training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent",
                   "total_tokens_M", "num_steps", "num_params_M", "depth")

# Tables that hold machinery, not history: left out of describe().
INTERNAL_TABLES = frozenset({"schema_version", "counters", "meta"})


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[duckdb.DuckDBPyConnection], None]


def comment(cur: duckdb.DuckDBPyConnection, relation: str, doc: str, columns: dict[str, str]) -> None:
    """Record what a table or view and its columns mean, in the catalog itself."""
    is_view = first_row(cur.execute("SELECT count(*) FROM duckdb_views() WHERE view_name = ?", [relation]))[0]
    kind = "VIEW" if is_view else "TABLE"
    cur.execute(f"COMMENT ON {kind} {relation} IS '{doc.replace(chr(39), chr(39) * 2)}'")
    for column, text in columns.items():
        cur.execute(f"COMMENT ON COLUMN {relation}.{column} IS '{text.replace(chr(39), chr(39) * 2)}'")


_JOBS_DOC = {
    "job_id": "short stable id, 'j' + job_num (e.g. j17)",
    "job_num": "the number in job_id; orders jobs by submission",
    "name": "short human label given at submission",
    "launch_token": "unique per launch intent; the host agent's launch is idempotent on it",
    "status": f"one of {', '.join(JOB_STATUSES)}",
    "submitted_at": "when the job entered the queue",
    "started_at": "when its process started on the host (host clock)",
    "ended_at": "when its process exited or was found lost (host clock)",
    "updated_at": "last change to this row",
    "submitted_by": "who submitted it (agent session, user)",
    "kind": "'trainer' (arc's trainer with config overrides) or 'command' (any argv)",
    "argv": "the command, never run through a shell",
    "env": "extra environment variables (JSON object)",
    "config": "trainer config overrides as given (JSON object)",
    "seed": "random seed",
    "time_budget_s": "training time budget in seconds (e.g. 300)",
    "time_limit_s": "hard kill limit in seconds",
    "code_hash": "sha256 of the code snapshot the job ran",
    "data_hash": "sha256 of the staged dataset",
    "tags": "free-form labels",
    "hypothesis_id": "the hypothesis this job tests (h3), if any",
    "priority": "higher runs first",
    "requirements": "placement constraints (JSON: gpus, gpu_model, gpu_class, min_memory_gb, host, label, "
                    "cpu_only, same_class_as)",
    "host": "host it was placed on",
    "gpu_indices": "GPU indices on that host",
    "gpu_uuids": "GPU uuids it ran on",
    "gpu_model": "GPU model name, e.g. 'NVIDIA H100 80GB HBM3'",
    "gpu_class": "GPU class for fair comparisons, e.g. 'H100-SXM' (see gpus.gpu_class)",
    "exit_code": "process exit code",
    "signal": "signal that ended the process, if any",
    "reason": "why it ended or changed state when not by itself",
    "attempts": "launch attempts (infrastructure retries)",
    "primary_metric": "name of the metric that ranks runs (default val_bpb)",
    "primary_value": "value of primary_metric from the final summary",
    "summary": "the final `---` block as JSON (val_bpb, peak_vram_mb, ...)",
    "info": "non-numeric values the job printed (JSON object)",
    "gpu_seconds": "(ended_at - started_at) x number of GPUs",
    "log_bytes": "size of the job's output log",
    "last_output_at": "when the job last printed something",
    "cancel_requested": "a cancel is waiting for the host to become reachable",
    "metrics_seq": "highest metric record seq ingested (-1: none)",
}


def _hypotheses_ddl(name: str) -> str:
    return f"""
        CREATE TABLE {name} (
            hyp_id VARCHAR PRIMARY KEY,
            num BIGINT NOT NULL UNIQUE,
            created_at TIMESTAMPTZ NOT NULL,
            updated_at TIMESTAMPTZ NOT NULL,
            text VARCHAR NOT NULL,
            rationale VARCHAR,
            status VARCHAR NOT NULL CHECK (status IN ({sql_list(HYPOTHESIS_STATUSES)})),
            verdict VARCHAR,
            effect_size DOUBLE,
            jobs VARCHAR[] NOT NULL,
            tags VARCHAR[],
            created_by VARCHAR
        );"""


_HYPOTHESES_DOC = {
    "hyp_id": "short stable id, 'h' + num (e.g. h3)",
    "num": "the number in hyp_id",
    "created_at": "when it was written",
    "updated_at": "last change",
    "text": "the hypothesis",
    "rationale": "why it is worth testing",
    "status": f"one of {', '.join(HYPOTHESIS_STATUSES)}",
    "verdict": "the claim, then the comparison it rests on (class, runs per side, significance, confounds)",
    "effect_size": "measured effect on the primary metric",
    "jobs": "job ids that test it",
    "tags": "free-form labels",
    "created_by": "who wrote it",
}


# The CHECK lists come from mcp_server/vocabulary.py. A history made before `held` left the vocabulary still admits
# it in its CHECK (DuckDB cannot alter one); nothing writes it, and the store refuses it before any write.
def _v1(cur: duckdb.DuckDBPyConnection) -> None:
    cur.execute(f"""
        CREATE TABLE counters (name VARCHAR PRIMARY KEY, value BIGINT NOT NULL);
        INSERT INTO counters VALUES ('job', 0), ('hypothesis', 0);
        CREATE SEQUENCE event_id_seq START 1;

        CREATE TABLE jobs (
            job_id VARCHAR PRIMARY KEY,
            job_num BIGINT NOT NULL UNIQUE,
            name VARCHAR,
            launch_token VARCHAR,
            status VARCHAR NOT NULL CHECK (status IN ({sql_list(JOB_STATUSES)})),
            submitted_at TIMESTAMPTZ NOT NULL,
            started_at TIMESTAMPTZ,
            ended_at TIMESTAMPTZ,
            updated_at TIMESTAMPTZ NOT NULL,
            submitted_by VARCHAR,
            kind VARCHAR NOT NULL CHECK (kind IN ({sql_list(JOB_KINDS)})),
            argv VARCHAR[],
            env JSON,
            config JSON,
            seed BIGINT,
            time_budget_s DOUBLE,
            time_limit_s DOUBLE,
            code_hash VARCHAR,
            data_hash VARCHAR,
            tags VARCHAR[],
            hypothesis_id VARCHAR,
            priority INTEGER NOT NULL,
            requirements JSON,
            host VARCHAR,
            gpu_indices INTEGER[],
            gpu_uuids VARCHAR[],
            gpu_model VARCHAR,
            gpu_class VARCHAR,
            exit_code INTEGER,
            signal INTEGER,
            reason VARCHAR,
            attempts INTEGER NOT NULL,
            primary_metric VARCHAR NOT NULL,
            primary_value DOUBLE,
            summary JSON,
            info JSON,
            gpu_seconds DOUBLE,
            log_bytes BIGINT,
            last_output_at TIMESTAMPTZ,
            cancel_requested BOOLEAN NOT NULL DEFAULT false,
            metrics_seq BIGINT NOT NULL
        );

        CREATE TABLE metrics (
            job_id VARCHAR NOT NULL,
            seq BIGINT NOT NULL,
            t TIMESTAMPTZ,
            step BIGINT,
            name VARCHAR NOT NULL,
            value DOUBLE
        );

        CREATE TABLE events (
            event_id BIGINT PRIMARY KEY DEFAULT nextval('event_id_seq'),
            t TIMESTAMPTZ NOT NULL,
            job_id VARCHAR,
            host VARCHAR,
            kind VARCHAR NOT NULL,
            old_status VARCHAR,
            new_status VARCHAR,
            reason VARCHAR,
            data JSON
        );

        CREATE TABLE hosts (
            name VARCHAR PRIMARY KEY,
            transport VARCHAR,
            address VARCHAR,
            labels VARCHAR[],
            cost_per_gpu_hour DOUBLE,
            reachable BOOLEAN,
            last_seen TIMESTAMPTZ,
            last_error VARCHAR,
            python VARCHAR,
            agent_version VARCHAR,
            nvml BOOLEAN,
            torch VARCHAR
        );

        CREATE TABLE gpus (
            host VARCHAR NOT NULL,
            idx INTEGER NOT NULL,
            uuid VARCHAR,
            model VARCHAR,
            gpu_class VARCHAR,
            memory_total_mb DOUBLE,
            simulated BOOLEAN,
            last_seen TIMESTAMPTZ,
            PRIMARY KEY (host, idx)
        );

        {_hypotheses_ddl("hypotheses")}
    """)
    summary_columns = ",\n".join(f"TRY_CAST(summary ->> '{k}' AS DOUBLE) AS {k}" for k in SUMMARY_COLUMNS)
    cur.execute(f"""
        CREATE VIEW runs AS
        SELECT job_id, job_num, name, status, kind, host, gpu_class, gpu_model,
               coalesce(len(gpu_indices), 0) AS n_gpus,
               submitted_at, started_at, ended_at,
               epoch(ended_at) - epoch(started_at) AS duration_s,
               gpu_seconds, gpu_seconds / 3600 AS gpu_hours,
               seed, tags, hypothesis_id, config, code_hash,
               primary_metric, primary_value,
               {summary_columns},
               exit_code, signal, reason, attempts, argv
        FROM jobs;

        CREATE VIEW hypothesis_jobs AS
        SELECT h.hyp_id, unnest(h.jobs) AS job_id FROM hypotheses h;
    """)
    comment(cur, "jobs", "one row per submitted job: spec, placement, status, result", _JOBS_DOC)
    comment(cur, "metrics", "every numeric value a job printed, one row per (record, name)", {
        "job_id": "the job",
        "seq": "0-based record number in the job's metrics stream (one record gives several rows)",
        "t": "when the job printed the record (host clock)",
        "step": "training step of the record; NULL for the final summary",
        "name": "metric name, e.g. train_loss, val_bpb, tok_per_s",
        "value": "the value",
    })
    comment(cur, "events", "audit log: every state change and scheduler decision, with its reason", {
        "event_id": "increasing id",
        "t": "when it happened",
        "job_id": "the job concerned, if any",
        "host": "the host concerned, if any",
        "kind": "what happened, e.g. submitted, status, placed, launch_retry, host_down",
        "old_status": "job status before (status changes)",
        "new_status": "job status after (status changes)",
        "reason": "why",
        "data": "details (JSON)",
    })
    comment(cur, "hosts", "GPU hosts of the fleet as last seen", {
        "name": "host name from hosts.yaml",
        "transport": "local or ssh",
        "address": "network address",
        "labels": "labels from hosts.yaml",
        "cost_per_gpu_hour": "price of one GPU-hour on this host",
        "reachable": "whether the last contact worked",
        "last_seen": "last successful contact",
        "last_error": "why the last contact failed",
        "python": "host Python version",
        "agent_version": "content hash of the deployed gpu_agent",
        "nvml": "whether NVML works there",
        "torch": "torch version on the host, if any",
    })
    comment(cur, "gpus", "GPUs of each host as last seen", {
        "host": "host name",
        "idx": "GPU index on the host",
        "uuid": "GPU uuid",
        "model": "model name, e.g. 'NVIDIA H200'",
        "gpu_class": "class used for fair comparisons, e.g. 'H200'",
        "memory_total_mb": "total memory in MiB",
        "simulated": "declared by hosts.yaml simulate_gpus (tests), not real hardware",
        "last_seen": "last inventory that listed it",
    })
    comment(cur, "hypotheses", "research hypotheses and their verdicts", _HYPOTHESES_DOC)
    comment(cur, "runs", "jobs flattened for analysis: the autoresearch summary keys as columns", {
        "n_gpus": "number of GPUs the job held",
        "duration_s": "ended_at - started_at in seconds",
        "gpu_hours": "gpu_seconds / 3600",
        **{k: f"summary value {k}" for k in SUMMARY_COLUMNS},
    })
    comment(cur, "hypothesis_jobs", "one row per (hypothesis, linked job)", {
        "hyp_id": "hypothesis id", "job_id": "job id"})


def _v2(cur: duckdb.DuckDBPyConnection) -> None:
    """Human checkpoints of the research layer (mcp_server/research/checkpoints.py)."""
    cur.execute("""
        CREATE SEQUENCE approval_id_seq START 1;
        CREATE TABLE approvals (
            approval_id BIGINT PRIMARY KEY DEFAULT nextval('approval_id_seq'),
            t TIMESTAMPTZ NOT NULL,
            note VARCHAR,
            approved_by VARCHAR,
            experiments BIGINT NOT NULL,
            paused_reason VARCHAR
        );
    """)
    comment(cur, "approvals", "a person's go-ahead at a research checkpoint (arc approve)", {
        "approval_id": "increasing id",
        "t": "when it was given",
        "note": "what the person said; shown to the agent",
        "approved_by": "who approved",
        "experiments": "jobs placed on a host so far; the next checkpoint counts from here",
        "paused_reason": "the pause this approval ended, if any",
    })


def _v3(cur: duckdb.DuckDBPyConnection) -> None:
    """A random id per history: hosts know a job as `<job_id>-<history_id>`, so two histories (a demo and a real
    campaign, say) can share a host's workdir without their `j1`s colliding."""
    cur.execute("CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)")
    cur.execute("INSERT INTO meta VALUES ('history_id', ?)", [secrets.token_hex(4)])


def _v4(cur: duckdb.DuckDBPyConnection) -> None:
    """Nothing learns a host's torch version (the agent's hello does not carry it), so the column stayed NULL."""
    cur.execute("ALTER TABLE hosts DROP COLUMN torch")


def _v5(cur: duckdb.DuckDBPyConnection) -> None:
    """Infrastructure losses are retried (core/scheduler.py): each job carries its limit, and every attempt that an
    infrastructure failure ended stays on record, with the GPU time it cost."""
    cur.execute("ALTER TABLE jobs ADD COLUMN max_attempts INTEGER")
    cur.execute("""
        CREATE TABLE attempts (
            job_id VARCHAR NOT NULL,
            attempt INTEGER NOT NULL,
            host VARCHAR,
            gpu_indices INTEGER[],
            gpu_class VARCHAR,
            started_at TIMESTAMPTZ,
            ended_at TIMESTAMPTZ NOT NULL,
            reason VARCHAR NOT NULL,
            gpu_seconds DOUBLE NOT NULL,
            PRIMARY KEY (job_id, attempt)
        )""")
    comment(cur, "jobs", "one row per submitted job: spec, placement, status, result", {
        "max_attempts": "attempts allowed for infrastructure failures (lost host, failed launch); NULL: 3",
        "attempts": "attempts an infrastructure failure ended so far (each one a row of `attempts`)"})
    comment(cur, "attempts", "earlier attempts of a job: each one ended by an infrastructure failure, after which "
            "the job was queued again; the job's own row is its latest attempt", {
                "job_id": "the job",
                "attempt": "1 for the first attempt",
                "host": "where it was placed",
                "gpu_indices": "GPU indices it held there",
                "gpu_class": "GPU class it held",
                "started_at": "when its process started (NULL: it never started, e.g. a failed launch)",
                "ended_at": "when arc found it lost",
                "reason": "what the infrastructure did, e.g. its host has no record of the job",
                "gpu_seconds": "GPU time it spent for nothing: (ended_at - started_at) x GPUs (0 when never started)",
            })


def _v6(cur: duckdb.DuckDBPyConnection) -> None:
    """DuckDB cannot alter a CHECK in place, so the hypotheses table is rebuilt under the vocabulary's statuses
    (`inconclusive` joined them), every row copied; the hypothesis_jobs view binds by name and keeps working.
    Then the decisions table: the campaign's memory of what was kept and what discarded, per GPU class."""
    cur.execute(_hypotheses_ddl("hypotheses_v6"))
    cur.execute("INSERT INTO hypotheses_v6 SELECT * FROM hypotheses")
    cur.execute("DROP TABLE hypotheses")
    cur.execute("ALTER TABLE hypotheses_v6 RENAME TO hypotheses")
    comment(cur, "hypotheses", "research hypotheses and their verdicts", _HYPOTHESES_DOC)
    cur.execute(f"""
        CREATE SEQUENCE decision_id_seq START 1;
        CREATE TABLE decisions (
            decision_id BIGINT PRIMARY KEY DEFAULT nextval('decision_id_seq'),
            t TIMESTAMPTZ NOT NULL,
            kind VARCHAR NOT NULL CHECK (kind IN ({sql_list(DECISION_KINDS)})),
            gpu_class VARCHAR NOT NULL,
            job_ids VARCHAR[] NOT NULL,
            against VARCHAR[] NOT NULL,
            diff DOUBLE,
            comparison VARCHAR NOT NULL,
            reason VARCHAR NOT NULL,
            decided_by VARCHAR,
            hypothesis_id VARCHAR
        );
    """)
    comment(cur, "decisions", "keep/discard decisions: a kept run becomes its GPU class's incumbent (current best)", {
        "decision_id": "increasing id",
        "t": "when it was decided",
        "kind": f"one of {', '.join(DECISION_KINDS)}",
        "gpu_class": "the class whose incumbent it concerns",
        "job_ids": "the candidate's runs (its seeds or confirmation runs)",
        "against": "the runs it was compared with: the incumbent's at the time",
        "diff": "mean(candidate) - mean(against) in the primary metric",
        "comparison": "the comparison's statement: runs per side, test, significance, confounds",
        "reason": "why, in the decider's words",
        "decided_by": "the agent, or the person at `arc`",
        "hypothesis_id": "the hypothesis the candidate tested, if any",
    })


MIGRATIONS: list[Migration] = [
    Migration(1, "jobs, metrics, events, hosts, gpus, hypotheses; runs and hypothesis_jobs views", _v1),
    Migration(2, "approvals (research checkpoints)", _v2),
    Migration(3, "meta: the history's own id", _v3),
    Migration(4, "hosts: drop torch, which nothing writes", _v4),
    Migration(5, "jobs.max_attempts; attempts (infrastructure retries)", _v5),
    Migration(6, "hypotheses admit 'inconclusive'; decisions (keep/discard against the incumbent)", _v6),
]


def migrate(con: duckdb.DuckDBPyConnection, read_only: bool = False) -> int:
    """Bring the database up to the newest version; return it. Each migration commits on its own.
    `read_only`: only check that it is up to date."""
    has_versions = first_row(con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'schema_version' AND schema_name = 'main'"))[0]
    if not has_versions and not read_only:
        con.execute("CREATE TABLE schema_version "
                    "(version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL, description VARCHAR)")
    current = first_row(con.execute("SELECT coalesce(max(version), 0) FROM schema_version"))[0] \
        if has_versions or not read_only else 0
    newest = MIGRATIONS[-1].version
    if current > newest:
        raise RuntimeError(f"history database is at schema version {current}, newer than this arc "
                           f"(knows up to {newest}): upgrade arc, or use another --state-dir")
    if read_only:
        if current < newest:
            raise RuntimeError(f"history database is at schema version {current}, this arc needs {newest}: "
                               "open it read-write once (start the arc daemon) to upgrade it")
        return current
    for migration in MIGRATIONS:
        if migration.version <= current:
            continue
        con.begin()
        try:
            migration.apply(con)
            con.execute("INSERT INTO schema_version VALUES (?, now(), ?)",
                        [migration.version, migration.description])
            con.commit()
        except BaseException:
            con.rollback()
            raise
    return newest

"""The bad-input matrix (issue 14): every surface of ONE real daemon (local host, two simulated GPUs) fed what a
careless person or a confused agent would send. Each row is a case; each must get a clear answer (not a traceback,
not the SDK's bare "Error executing tool", and naming the field or rule at fault), the daemon must still answer
afterwards, and no job, metric row or hypothesis may be lost. The module prints its totals (cases, clear errors,
crashes) at the end.

Surfaces: the MCP tools through the real MCP client over the daemon's streamable HTTP endpoint; user SQL through
query_results; hosts.yaml and research.yaml through `arc`; the HTTP endpoint and unix socket themselves; and the
`arc submit`, `arc sql` and `arc approve` commands. The three inputs that used to take the daemon down (a
backtracking grep, a huge code folder, a 100 MB value through the bridge) have their own test in
tests/test_bad_inputs_daemon.py; the 100 MB value is a row here too, over HTTP."""
from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import anyio
import pytest
from mcp import Client
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.types import TextContent

from mcp_server.core.operations import registry, tools
from mcp_server.daemon.client import _UnixConnection
from tests.daemon_support import Arc, metric_job
from tests.harness import local_host_entry, write_hosts_yaml


UNKNOWN_JOB, UNKNOWN_HYP, UNKNOWN_HOST = "j987654", "h987654", "no-such-host"
# What never reads as a clear answer, whatever else it says.
CRASH_MARKS = ("Traceback (most recent call last)", "Error executing tool", "failed unexpectedly",
               "internal error in")

RESEARCH_YAML = """\
metric: {name: val_bpb, direction: minimize}
search_space:
  lr: {type: float, min: 0.0001, max: 0.1, log: true}
"""


@dataclass
class Answer:
    ok: bool                   # the surface said "done" (no refusal)
    text: str                  # everything the caller read
    crashed: str | None = None  # a transport/protocol failure: the caller got no answer at all


@dataclass
class Case:
    id: str
    send: Callable[["Matrix"], Answer]
    expect: tuple[str, ...] = ()        # each must appear (case-insensitive) in a refusal: the field or the rule
    succeeds: Callable[["Matrix", Answer], None] | None = None  # the input is legal: what must have happened


class Matrix:
    """The one daemon of the module and the ways in to it."""

    def __init__(self, arc: Arc, root: Path):
        self.arc, self.root = arc, root
        self.job = ""
        self.hyp = ""
        self.tally = {"cases": 0, "clear": 0, "ran literally": 0, "unclear": 0, "crashes": 0}

    # ---- ways in ------------------------------------------------------------------------------------------

    def mcp(self, tool: str, arguments: dict[str, Any]) -> Answer:
        info = self.arc.client.info()
        url = f"http://127.0.0.1:{info['port']}/mcp"

        async def go() -> Answer:
            http = create_mcp_http_client(headers={"Authorization": f"Bearer {self.arc.client.token()}"})
            async with Client(streamable_http_client(url, http_client=http), read_timeout_seconds=120) as c:
                result = await c.call_tool(tool, arguments)
            text = " ".join(b.text for b in result.content if isinstance(b, TextContent))
            return Answer(not result.is_error, text)

        try:
            return anyio.run(go)
        except Exception as e:
            found = leaves(e)
            if all(isinstance(x, MCPError) for x in found):   # a JSON-RPC error: an answer, though not a tool's
                return Answer(False, "; ".join(f"MCP error {x.error.code}: {x.error.message}" for x in found))
            # The client got no answer at all: the crash this matrix looks for.
            return Answer(False, "", crashed="; ".join(f"{type(x).__name__}: {x}" for x in found)[:1000])

    def cli(self, *args: str, state_dir: Path | None = None, hosts: Path | None = None) -> Answer:
        argv = [sys.executable, "-m", "mcp_server", "--state-dir", str(state_dir or self.arc.state_dir),
                "--hosts", str(hosts or self.arc.hosts_yaml), *args]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=180, cwd=Path(__file__).parent.parent)
        return Answer(proc.returncode == 0, proc.stdout + proc.stderr)

    def http(self, method: str, path: str, headers: dict[str, str], body: bytes | None = None,
             unix: bool = False) -> Answer:
        info = self.arc.client.info()
        conn = _UnixConnection(info["socket"], 30) if unix else \
            http.client.HTTPConnection("127.0.0.1", info["port"], timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            text = resp.read().decode(errors="replace")
        except (OSError, http.client.HTTPException) as e:
            return Answer(False, "", crashed=f"{type(e).__name__}: {e}")
        finally:
            conn.close()
        return Answer(resp.status == 200, f"HTTP {resp.status} {text}")

    def token_header(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.arc.client.token()}", "Content-Type": "application/json"}

    # ---- what must survive every case ---------------------------------------------------------------------

    def counts(self) -> tuple[int, int, int]:
        rows = self.arc.call("query_results", sql="SELECT (SELECT count(*) FROM jobs), "
                             "(SELECT count(*) FROM metrics), (SELECT count(*) FROM hypotheses)")["rows"]
        return tuple(rows[0])


def leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for e in error.exceptions for leaf in leaves(e)]
    return [error]


# ---- the rows ---------------------------------------------------------------------------------------------

def _wrong_type_for(annotation: str) -> Any:
    return "not-an-object" if "dict" in annotation else {"wrong": "type"}


def tool_cases() -> list[Case]:
    """For every tool: an extra field, each required field missing, each field of the wrong type, and each
    bounded number far past and just past its bounds, below zero included."""
    cases = []
    for op in tools():
        fields = op.params.model_fields
        minimal = minimal_of(op)
        cases.append(Case(f"mcp-{op.name}-extra-field",
                          lambda m, op=op: m.mcp(op.name, {**resolve(m, minimal_of(op)), "bogus_field": 1}),
                          ("bogus_field",)))
        for name, f in fields.items():
            if f.is_required():
                rest = {k: v for k, v in minimal.items() if k != name}
                cases.append(Case(f"mcp-{op.name}-missing-{name}",
                                  lambda m, op=op, rest=rest: m.mcp(op.name, resolve(m, rest)), (name,)))
            wrong = _wrong_type_for(str(f.annotation))
            cases.append(Case(f"mcp-{op.name}-wrong-type-{name}",
                              lambda m, op=op, name=name, wrong=wrong: m.mcp(
                                  op.name, {**resolve(m, minimal_of(op)), name: wrong}), (name,)))
            for bound in f.metadata:
                for attr, past in (("ge", lambda b: b - 1), ("le", lambda b: b + 1),
                                   ("min_length", None), ("max_length", None)):
                    if not hasattr(bound, attr):
                        continue
                    b = getattr(bound, attr)
                    if attr in ("ge", "le"):
                        values = {f"{attr}-just-past": past(b),
                                  "huge" if attr == "le" else "negative": 10**30 if attr == "le" else -10**30}
                    else:
                        sample = resolve_sample(op.name, name)
                        values = {f"{attr}-just-past": (sample * (b + 1))[:b + 1] if attr == "max_length"
                                  else sample[:max(b - 1, 0)]}
                    for label, value in values.items():
                        cases.append(Case(f"mcp-{op.name}-{name}-{label}",
                                          lambda m, op=op, name=name, value=value: m.mcp(
                                              op.name, {**resolve(m, minimal_of(op)), name: value}), (name,)))
    return cases


def minimal_of(op) -> dict[str, Any]:
    return {name: MINIMAL[op.name][name] for name, f in op.params.model_fields.items() if f.is_required()}


def resolve(m: Matrix, args: dict[str, Any]) -> dict[str, Any]:
    """Arguments with the placeholders JOB and HYP replaced by the module's real job and hypothesis."""
    def one(v):
        if v == "JOB":
            return m.job
        if v == "HYP":
            return m.hyp
        if isinstance(v, list):
            return [one(x) for x in v]
        return v
    return {k: one(v) for k, v in args.items()}


def resolve_sample(tool: str, field: str) -> list:
    """An item list to cut to a length bound."""
    return {"submit_jobs": [metric_job(1)], "rerun_job": [1]}.get(tool, ["JOB"])


# The smallest legal value of every required field (JOB/HYP: the module's own job and hypothesis).
MINIMAL: dict[str, dict[str, Any]] = {name: {} for name in registry()}
MINIMAL["submit_jobs"] = {"jobs": [{"command": ["true"], "requirements": {"cpu_only": True}}]}
MINIMAL["job_status"] = {"job_ids": ["JOB"]}
MINIMAL["cancel_jobs"] = {"job_ids": ["JOB"]}
MINIMAL["tail_log"] = {"job_id": "JOB"}
MINIMAL["wait_for_jobs"] = {"job_ids": ["JOB"]}
MINIMAL["query_results"] = {"sql": "SELECT 1"}
MINIMAL["compare_runs"] = {"a": ["JOB"], "b": ["JOB"]}
MINIMAL["diff_jobs"] = {"a": "JOB", "b": "JOB"}
MINIMAL["rerun_job"] = {"job_id": "JOB"}
MINIMAL["append_hypothesis"] = {"text": "a hypothesis"}
MINIMAL["update_hypothesis"] = {"hyp_id": "HYP"}
MINIMAL["keep_run"] = {"job_ids": ["JOB"], "reason": "it helped"}
MINIMAL["discard_run"] = {"job_ids": ["JOB"], "reason": "it did not help"}
MINIMAL["confirm_runs"] = {"job_ids": ["JOB"]}


def unknown_id_cases() -> list[Case]:
    rows = [
        ("job_status", {"job_ids": [UNKNOWN_JOB]}, UNKNOWN_JOB),
        ("cancel_jobs", {"job_ids": [UNKNOWN_JOB]}, UNKNOWN_JOB),
        ("tail_log", {"job_id": UNKNOWN_JOB}, UNKNOWN_JOB),
        ("wait_for_jobs", {"job_ids": [UNKNOWN_JOB], "timeout_s": 1}, UNKNOWN_JOB),
        ("compare_runs", {"a": [UNKNOWN_JOB], "b": ["JOB"]}, UNKNOWN_JOB),
        ("diff_jobs", {"a": UNKNOWN_JOB, "b": "JOB"}, UNKNOWN_JOB),
        ("rerun_job", {"job_id": UNKNOWN_JOB}, UNKNOWN_JOB),
        ("plot_runs", {"job_ids": [UNKNOWN_JOB]}, UNKNOWN_JOB),
        ("update_hypothesis", {"hyp_id": UNKNOWN_HYP, "verdict": "x"}, UNKNOWN_HYP),
        ("append_hypothesis", {"text": "x", "jobs": [UNKNOWN_JOB]}, UNKNOWN_JOB),
        ("update_hypothesis", {"hyp_id": "HYP", "add_jobs": [UNKNOWN_JOB]}, UNKNOWN_JOB),
        ("list_gpus", {"host": UNKNOWN_HOST}, UNKNOWN_HOST),
        ("submit_jobs", {"jobs": [{"command": ["true"], "requirements": {"host": UNKNOWN_HOST}}]}, UNKNOWN_HOST),
        ("submit_jobs", {"jobs": [{"command": ["true"], "hypothesis_id": UNKNOWN_HYP}]}, UNKNOWN_HYP),
        ("job_status", {"job_ids": ["../../etc/passwd"]}, "job id"),
        ("tail_log", {"job_id": "../../../etc/passwd"}, "job id"),
    ]
    return [Case(f"mcp-{tool}-unknown-{what}", lambda m, t=tool, a=args: m.mcp(t, resolve(m, a)), (what,))
            for tool, args, what in rows]


def ran_literally(m: Matrix, answer: Answer) -> None:
    """The job ran with its argument as one literal string: nothing of it reached a shell."""
    job_id = json.loads(answer.text)["jobs"][0]["job_id"]
    done = m.arc.wait([job_id], timeout=120)[job_id]
    assert done["status"] == "succeeded", done
    log = m.arc.call("tail_log", job_id=job_id)["text"]
    assert repr([HOSTILE]) in log, log
    assert not Path("/tmp/arc-matrix-owned").exists()


HOSTILE = "; touch /tmp/arc-matrix-owned $(touch /tmp/arc-matrix-owned) `id` | cat && echo owned > /tmp/arc-matrix-owned"
TEN_MB = "x" * 10_000_000
TOO_BIG = ("body too large", "MiB limit")        # what the daemon says of a request past its body limit


def special_mcp_cases() -> list[Case]:
    printing = [sys.executable, "-c", "import sys; print(sys.argv[1:])"]
    return [
        Case("mcp-submit_jobs-shell-metacharacters-run-literally",
             lambda m: m.mcp("submit_jobs", {"jobs": [{"command": printing + [HOSTILE],
                                                       "requirements": {"cpu_only": True}}]}),
             succeeds=ran_literally),
        Case("mcp-submit_jobs-code-path-traversal-to-a-file",
             lambda m: m.mcp("submit_jobs", {"jobs": [{"command": ["true"], "code": "../../../../../etc/passwd"}]}),
             ("code",)),
        Case("mcp-submit_jobs-code-path-traversal-nowhere",
             lambda m: m.mcp("submit_jobs", {"jobs": [{"command": ["true"],
                                                       "code": "../../../../../no/such/folder"}]}), ("code",)),
        Case("mcp-submit_jobs-10MB-argument",
             lambda m: m.mcp("submit_jobs", {"jobs": [{"command": ["echo", TEN_MB]}]}), TOO_BIG),
        Case("mcp-append_hypothesis-10MB-text",
             lambda m: m.mcp("append_hypothesis", {"text": TEN_MB}), TOO_BIG),
        Case("mcp-query_results-10MB-sql", lambda m: m.mcp("query_results", {"sql": "SELECT '" + TEN_MB + "'"}),
             TOO_BIG),
        Case("mcp-tail_log-10MB-grep", lambda m: m.mcp("tail_log", {"job_id": m.job, "grep": TEN_MB}), TOO_BIG),
        Case("mcp-submit_jobs-negative-time-limit",
             lambda m: m.mcp("submit_jobs", {"jobs": [{"command": ["true"], "time_limit_s": -5}]}),
             ("time_limit_s",)),
        Case("mcp-submit_jobs-huge-gpus",
             lambda m: m.mcp("submit_jobs", {"jobs": [{"command": ["true"], "requirements": {"gpus": 10**30}}]}),
             ("gpus",)),
        Case("mcp-submit_jobs-empty-command",
             lambda m: m.mcp("submit_jobs", {"jobs": [{"command": []}]}), ("command",)),
    ]


def sql_cases() -> list[Case]:
    rows = [
        ("copy", "COPY jobs TO '/tmp/arc-matrix-leak.csv'", "COPY"),
        ("export", "EXPORT DATABASE '/tmp/arc-matrix-export'", "EXPORT"),
        ("attach", "ATTACH '/tmp/arc-matrix-other.db' AS other", "ATTACH"),
        ("install", "INSTALL httpfs", "INSTALL"),
        ("load", "LOAD httpfs", "LOAD"),
        ("pragma", "PRAGMA database_list", "PRAGMA"),
        ("set", "SET enable_external_access = true", "SET"),
        ("call", "CALL pragma_database_list()", "CALL"),
        ("read_csv", "SELECT * FROM read_csv('/etc/passwd')", "file access"),
        ("read_parquet", "SELECT * FROM read_parquet('/tmp/*.parquet')", "file access"),
        ("read_text", "SELECT * FROM read_text('/etc/shadow')", "file access"),
        ("glob", "SELECT * FROM glob('/etc/*')", "file access"),
        ("multi-statement", "SELECT 1; DELETE FROM jobs", "one statement"),
        ("comment-hiding-a-statement", "SELECT 1 /* */; DROP TABLE metrics -- ", "one statement"),
        ("write", "DELETE FROM hypotheses", "DELETE"),
        ("never-ending-recursive-cte",
         "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r", "time limit"),
        ("1MB-query", "SELECT 1 WHERE " + " OR ".join(["1 = 0"] * 170_000), "at most 100000"),
    ]
    cases = [Case(f"sql-{name}", lambda m, q=q: m.mcp("query_results", {"sql": q}), (rule,))
             for name, q, rule in rows]

    def capped(m: Matrix, answer: Answer) -> None:
        assert len(answer.text) < 1_000_000, f"a {len(answer.text)}-character answer was not capped"
        assert "cut" in answer.text.lower() or "truncat" in answer.text.lower(), answer.text[:500]
    cases.append(Case("sql-100MB-string-is-capped", lambda m: m.mcp("query_results",
                                                                     {"sql": "SELECT repeat('x', 100000000)"}),
                      succeeds=capped))
    return cases


def config_cases() -> list[Case]:
    """hosts.yaml and research.yaml as `arc` reads them (a fresh state dir, so it is read), and research.yaml as
    the running daemon rereads it (`arc research reload`: a broken file keeps the rules in force)."""
    hosts = {
        "malformed": ("hosts: [\n  - name: a\n    transport: local", "YAML syntax error"),
        "wrong-typed": ("hosts:\n  - name: a\n    transport: local\n    cpu_slots: many\n", "cpu_slots"),
        "duplicate-key": ("hosts:\n  - name: a\n    transport: local\n    transport: ssh\n", "duplicate"),
        "unknown-key": ("hosts:\n  - name: a\n    transport: local\n    gpus_please: 8\n", "gpus_please"),
        "unknown-top-level-key": ("hosts:\n  - name: a\n    transport: local\nfleet: big\n", "fleet"),
    }
    research = {
        "malformed": ("metric: {name: val_bpb, direction: min\n", "YAML syntax error"),
        "wrong-typed": ("metric: {name: val_bpb, direction: minimize}\nmax_gpus: lots\n", "max_gpus"),
        "duplicate-key": ("metric: {name: val_bpb, direction: minimize}\nmetric: {name: loss, direction: minimize}\n",
                          "given twice"),
        "unknown-key": ("metric: {name: val_bpb, direction: min, colour: red}\n", "colour"),
    }
    cases = []
    for name, (text, rule) in hosts.items():
        def send(m: Matrix, text=text, name=name) -> Answer:
            path = m.root / f"hosts-{name}.yaml"
            path.write_text(text)
            return m.cli("submit", "--cpu", "--", "true", state_dir=m.root / f"fresh-{name}", hosts=path)
        cases.append(Case(f"config-hosts-{name}", send, (rule, f"hosts-{name}.yaml")))
    for name, (text, rule) in research.items():
        def send_fresh(m: Matrix, text=text, name=name) -> Answer:
            folder = m.root / f"research-{name}"
            folder.mkdir(exist_ok=True)
            (folder / "research.yaml").write_text(text)
            shutil.copy(m.arc.hosts_yaml, folder / "hosts.yaml")
            return m.cli("submit", "--cpu", "--", "true", state_dir=folder / "state", hosts=folder / "hosts.yaml")

        def send_reload(m: Matrix, text=text) -> Answer:
            research_file = m.arc.hosts_yaml.parent / "research.yaml"
            good = research_file.read_text()
            research_file.write_text(text)
            try:
                return m.cli("research", "reload")
            finally:
                research_file.write_text(good)
        cases.append(Case(f"config-research-{name}", send_fresh, (rule, "research.yaml")))
        cases.append(Case(f"config-research-{name}-reloaded", send_reload, (rule, "unchanged")))
    return cases


def access_cases() -> list[Case]:
    """The daemon's two doors (TCP and the unix socket), each path (/mcp, /rpc, /health)."""
    init = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "x", "version": "0"}}}).encode()
    mcp_headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    cases = []
    for door in ("tcp", "unix"):
        unix = door == "unix"
        for path, body, base in (("/rpc/list_jobs", b"{}", {"Content-Type": "application/json"}),
                                 ("/mcp", init, mcp_headers), ("/health", None, {})):
            method = "GET" if path == "/health" else "POST"
            tag = f"access-{door}-{path.strip('/').replace('/', '-')}"
            cases += [
                Case(f"{tag}-no-token", lambda m, p=path, b=body, h=base, me=method, u=unix:
                     m.http(me, p, h, b, unix=u), ("401", "Authorization: Bearer")),
                Case(f"{tag}-wrong-token", lambda m, p=path, b=body, h=base, me=method, u=unix:
                     m.http(me, p, {**h, "Authorization": "Bearer not-the-token"}, b, unix=u),
                     ("401", "Authorization: Bearer")),
                Case(f"{tag}-token-in-the-query", lambda m, p=path, b=body, h=base, me=method, u=unix:
                     m.http(me, f"{p}?token={m.arc.client.token()}", h, b, unix=u), ("401", "Authorization: Bearer")),
                Case(f"{tag}-token-without-bearer", lambda m, p=path, b=body, h=base, me=method, u=unix:
                     m.http(me, p, {**h, "Authorization": m.arc.client.token()}, b, unix=u),
                     ("401", "Authorization: Bearer")),
                Case(f"{tag}-foreign-origin", lambda m, p=path, b=body, h=base, me=method, u=unix:
                     m.http(me, p, {**h, **m.token_header(), "Origin": "http://evil.example"}, b, unix=u),
                     ("403", "Origin")),
            ]
            if not unix:   # on the socket the Host header is not where a browser came from
                cases.append(Case(f"{tag}-foreign-host", lambda m, p=path, b=body, h=base, me=method:
                                  m.http(me, p, {**h, **m.token_header(), "Host": "evil.example:80"}, b),
                                  ("Host",)))
        cases.append(Case(f"access-{door}-oversized-body", lambda m, u=unix: m.http(
            "POST", "/rpc/append_hypothesis", m.token_header(),
            json.dumps({"text": TEN_MB}).encode(), unix=u), ("413", *TOO_BIG)))
    cases.append(Case("access-rpc-not-json", lambda m: m.http("POST", "/rpc/list_jobs", m.token_header(), b"{nope"),
                      ("body",)))
    cases.append(Case("access-rpc-unknown-operation", lambda m: m.http("POST", "/rpc/drop_everything",
                                                                       m.token_header(), b"{}"),
                      ("drop_everything", "known")))
    return cases


def cli_cases() -> list[Case]:
    def ran_cli_literally(m: Matrix, answer: Answer) -> None:
        job_id = answer.text.strip().splitlines()[-1]
        ran_literally(m, Answer(True, json.dumps({"jobs": [{"job_id": job_id}]})))
    return [
        Case("cli-submit-shell-metacharacters-run-literally",
             lambda m: m.cli("submit", "-q", "--cpu", "--", sys.executable, "-c", "import sys; print(sys.argv[1:])",
                             HOSTILE), succeeds=ran_cli_literally),
        Case("cli-submit-unknown-host", lambda m: m.cli("submit", "--host", UNKNOWN_HOST, "--", "true"),
             (UNKNOWN_HOST,)),
        Case("cli-submit-negative-gpus", lambda m: m.cli("submit", "--gpus", "-3", "--", "true"), ("gpus",)),
        Case("cli-submit-huge-gpus", lambda m: m.cli("submit", "--gpus", str(10**30), "--", "true"), ("gpus",)),
        Case("cli-submit-wrong-type-gpus", lambda m: m.cli("submit", "--gpus", "two", "--", "true"), ("gpus",)),
        Case("cli-submit-negative-time-limit", lambda m: m.cli("submit", "--time-limit", "-1", "--", "true"),
             ("time_limit",)),
        Case("cli-submit-unknown-hypothesis", lambda m: m.cli("submit", "--hypothesis", UNKNOWN_HYP, "--", "true"),
             (UNKNOWN_HYP,)),
        Case("cli-submit-code-path-traversal", lambda m: m.cli("submit", "--code", "../../../../etc/passwd", "--",
                                                               "true"), ("code",)),
        Case("cli-submit-unknown-flag", lambda m: m.cli("submit", "--gpu-count", "2", "--", "true"),
             ("--gpu-count",)),
        Case("cli-submit-bad-override", lambda m: m.cli("submit", "--set", "lr"), ("KEY=VALUE",)),
        Case("cli-sql-copy", lambda m: m.cli("sql", "COPY jobs TO '/tmp/arc-matrix-cli.csv'"), ("COPY",)),
        Case("cli-sql-read-file", lambda m: m.cli("sql", "SELECT * FROM read_text('/etc/passwd')"),
             ("file access",)),
        Case("cli-sql-two-statements", lambda m: m.cli("sql", "SELECT 1; DROP TABLE jobs"), ("one statement",)),
        Case("cli-sql-syntax-error", lambda m: m.cli("sql", "SELEKT 1"), ("syntax",)),
        Case("cli-sql-huge-limit", lambda m: m.cli("sql", "SELECT 1", "--limit", str(10**30)), ("limit",)),
        Case("cli-sql-negative-limit", lambda m: m.cli("sql", "SELECT 1", "--limit", "-1"), ("limit",)),
        Case("cli-approve-huge-note", lambda m: m.cli("approve", "--note", "n" * 5000), ("note",)),
        Case("cli-approve-unknown-flag", lambda m: m.cli("approve", "--force"), ("--force",)),
    ]


CASES = tool_cases() + unknown_id_cases() + special_mcp_cases() + sql_cases() + config_cases() + access_cases() \
    + cli_cases()


# ---- running them -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def matrix(tmp_path_factory, request):
    root = tmp_path_factory.mktemp("matrix")
    hosts = write_hosts_yaml(root / "hosts.yaml", [local_host_entry(
        root / "work", simulate_gpus=[{"model": "H100", "memory_gb": 80}] * 2, cpu_slots=4)])
    (root / "research.yaml").write_text(RESEARCH_YAML)
    arc = Arc(root / "state", hosts)
    arc.start()
    m = Matrix(arc, root)
    m.job = arc.submit([metric_job(1)])[0]
    assert arc.wait([m.job])[m.job]["status"] == "succeeded"
    m.hyp = arc.call("append_hypothesis", text="the matrix's own hypothesis", jobs=[m.job])["hypothesis"]["hyp_id"]
    yield m
    arc.stop()
    t = m.tally
    # Teardown output is captured like a test's: the totals are for the person reading the run.
    with request.config.pluginmanager.get_plugin("capturemanager").global_and_fixture_disabled():
        print(f"\nbad-input matrix: {t['cases']} cases, {t['clear']} clear errors, {t['ran literally']} legal inputs run "
              f"as given, {t['unclear']} unclear answers, {t['crashes']} crashes")


def judge(case: Case, answer: Answer) -> tuple[str, str]:
    """(verdict, why): 'crash', 'unclear', 'clear' or 'ran literally'."""
    if answer.crashed:
        return "crash", f"no answer: {answer.crashed}"
    if any(mark in answer.text for mark in CRASH_MARKS):
        return "crash", answer.text[:2000]
    if case.succeeds is not None:
        return ("ran literally", "") if answer.ok else ("unclear", f"a legal input was refused: {answer.text[:2000]}")
    if answer.ok:
        return "unclear", f"accepted: {answer.text[:2000]}"
    missing = [w for w in case.expect if w.lower() not in answer.text.lower()]
    if missing:
        return "unclear", f"does not name {missing}: {answer.text[:2000]}"
    return "clear", ""


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(matrix, case):
    before = matrix.counts()
    answer = case.send(matrix)
    verdict, why = judge(case, answer)
    matrix.tally["cases"] += 1
    matrix.tally["crashes" if verdict == "crash" else verdict] += 1
    assert verdict in ("clear", "ran literally"), f"{verdict}: {why}"
    if case.succeeds is not None:
        case.succeeds(matrix, answer)
    assert matrix.arc.call("list_gpus")["hosts"][0]["reachable"], "the daemon no longer answers"
    jobs, metrics, hyps = matrix.counts()
    assert jobs >= before[0] and metrics >= before[1] and hyps >= before[2], (before, (jobs, metrics, hyps))

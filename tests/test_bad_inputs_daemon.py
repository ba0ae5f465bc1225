"""Inputs a careless or hostile agent sends, through the real MCP client over stdio (`arc mcp`, run as `python -m
mcp_server mcp`, and its daemon, hosts in network namespaces): each is answered or refused with the reason, and
the daemon answers the next call."""
from __future__ import annotations

import os
import signal
import sys

import pytest
from mcp import Client, StdioServerParameters

from mcp_server.daemon.client import DaemonClient
from mcp_server.core.paths import StatePaths
from tests.mcp_support import data, error_text, log_parts

pytestmark = pytest.mark.anyio
CALL_S = 60      # a daemon frozen by an input fails the test here instead of hanging it


@pytest.fixture(scope="module")
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
def arc_env(netns_hosts, tmp_path_factory):
    state = tmp_path_factory.mktemp("bad-inputs-state")
    env = {"ARC_HOSTS": str(netns_hosts.hosts_yaml), "ARC_STATE_DIR": str(state)}
    # The stdio client starts the bridge with a bare environment: pass PYTHONPATH on, so that the bridge and its
    # daemon run the code under test (a worktree), not whatever checkout the installed `arc` script comes from.
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    yield env, state
    client = DaemonClient(StatePaths.resolve(state))
    if client.running() and not client.stop(timeout=30):
        os.kill(client.info()["pid"], signal.SIGKILL)


def bridge(arc_env) -> Client:
    env, _ = arc_env
    return Client(StdioServerParameters(command=sys.executable, args=["-m", "mcp_server", "mcp"], env=env),
                  read_timeout_seconds=120)


async def still_serving(c) -> None:
    assert data(await c.call_tool("query_results", {"sql": "SELECT 41 + 1 AS x"}, read_timeout_seconds=CALL_S)
                )["rows"] == [[42]]


async def test_a_backtracking_grep_does_not_freeze_the_daemon(arc_env):
    code = "print('x' + 'a' * 50000 + 'b'); print('tail aaa'); print('zzz b')"
    async with bridge(arc_env) as c:
        job = data(await c.call_tool("submit_jobs", {"jobs": [{"command": [sys.executable, "-c", code]}]}))
        job_id = job["jobs"][0]["job_id"]
        done = data(await c.call_tool("wait_for_jobs", {"job_ids": [job_id], "timeout_s": 60}))
        assert done["done"][0]["status"] == "succeeded", done
        header, fenced = log_parts(await c.call_tool("tail_log", {"job_id": job_id, "grep": "(a+)+$"},
                                                     read_timeout_seconds=CALL_S))
        assert "tail aaa" in fenced and "zzz b" not in fenced
        assert "grep looked at only the first 10,000 characters of 1 longer line(s)" in header["summary"]
        refused = error_text(await c.call_tool("tail_log", {"job_id": job_id, "grep": r"(a)\1"}))
        assert "backreferences (\\1, (?P=name)) are not supported" in refused
        await still_serving(c)


async def test_a_huge_or_broad_code_folder_is_refused_before_any_copy(arc_env):
    state = arc_env[1]
    async with bridge(arc_env) as c:
        for folder, reason in (("/usr/lib", "holds more than 64 MiB"),
                               ("/", "is the root, a home folder or a folder above one")):
            spec = {"command": [sys.executable, "-c", "pass"], "code": folder}
            refused = error_text(await c.call_tool("submit_jobs", {"jobs": [spec]}, read_timeout_seconds=CALL_S))
            assert reason in refused and "point `code` at the folder holding only your training code" in refused
        stored = sum(f.stat().st_size for f in (state / "code").rglob("*") if f.is_file()) \
            if (state / "code").exists() else 0
        assert stored < 2**20
        await still_serving(c)


async def test_a_huge_value_arrives_bounded_and_says_it_was_cut(arc_env):
    async with bridge(arc_env) as c:
        big = data(await c.call_tool("query_results", {"sql": "SELECT repeat('x', 100000000) AS big"},
                                     read_timeout_seconds=CALL_S))
        assert len(big["rows"][0][0]) < 2100 and big["rows"][0][0].endswith("…[cut: 100,000,000 chars]")
        assert "1 cell(s) cut to 2,000 characters (row 1 'big' (100,000,000 chars))" in big["cut"]
        assert big["summary"].startswith("1 row(s); 1 cell(s) cut")
        many = data(await c.call_tool("query_results", {"sql": "SELECT repeat('y', 100000) FROM range(500)",
                                                        "limit": 500}, read_timeout_seconds=CALL_S))
        assert many["truncated"] and 0 < many["row_count"] < 500 and "left out to keep the answer" in many["cut"]
        await still_serving(c)


async def test_a_syntax_error_keeps_the_caret_under_the_token(arc_env):
    async with bridge(arc_env) as c:
        refused = error_text(await c.call_tool("query_results", {"sql": "SELECT job_id\n  FROM jobs WHERE = 1"}))
        assert "syntax error at or near \"=\"\nLINE 2:   FROM jobs WHERE = 1\n" in refused
        assert "\n                          ^\n" in refused and "fix the query where the ^ points" in refused
        await still_serving(c)

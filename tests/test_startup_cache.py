"""Start-up answers kept per build (core/startup_cache.py): `arc --help` from the help index, and the MCP handshake
answered by `arc mcp` while its daemon starts. Each is checked against the answer made the slow way, and for the
fast path by what the process did not do (import the declarations; reach a daemon)."""
from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mcp_server.core import startup_cache
from mcp_server.core.paths import StatePaths
from mcp_server.daemon.client import DaemonClient

INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "0"}}}
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}
TOOLS_LIST = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
LIST_GPUS = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "list_gpus", "arguments": {}}}


def _help(env: dict[str, str]) -> tuple[str, bool]:
    """`arc --help`'s text, and whether making it imported the operations' declarations."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "mcp_server", "--help"], env=env,
                         capture_output=True, text=True, timeout=120, check=True)
    return out.stdout, "mcp_server.core.operations" in out.stderr


def test_help_comes_from_the_index_once_a_command_has_built_it(tmp_path):
    env = {**os.environ, "ARC_CACHE_DIR": str(tmp_path / "cache"), "COLUMNS": "100"}
    built, imported = _help(env)
    assert imported and "submit" in built and "COMMAND" in built
    again, imported = _help(env)
    assert again == built and not imported
    narrow, imported = _help({**env, "COLUMNS": "60"})       # wrapped for another terminal: made again
    assert imported and narrow != built and max(map(len, narrow.splitlines())) <= 60


def test_an_entry_of_another_build_is_neither_read_nor_kept(tmp_path, monkeypatch):
    code = tmp_path / "code"
    shutil.copytree(startup_cache.PACKAGE_ROOT / "core", code)
    monkeypatch.setattr(startup_cache, "PACKAGE_ROOT", code)
    monkeypatch.setenv("ARC_CACHE_DIR", str(tmp_path / "cache"))
    startup_cache.write("probe", {"answer": 1})
    assert startup_cache.read("probe") == {"answer": 1}
    (code / "errors.py").write_text((code / "errors.py").read_text() + "\n# an edit\n")
    assert startup_cache.read("probe") is None
    startup_cache.write("probe", {"answer": 2})
    assert startup_cache.read("probe") == {"answer": 2}
    assert len(list((tmp_path / "cache").glob("probe-*"))) == 1


def _session(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mcp_server", "mcp"], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _ask(proc: subprocess.Popen, message: dict, within_s: float = 120.0) -> dict:
    proc.stdin.write(json.dumps(message).encode() + b"\n")
    proc.stdin.flush()
    while True:
        if not select.select([proc.stdout], [], [], within_s)[0]:
            pytest.fail(f"no answer to {message['method']} in {within_s:.0f} s")
        answer = json.loads(proc.stdout.readline() or b"null")
        assert answer is not None, proc.stderr.read().decode()
        if answer.get("id") == message["id"]:
            return answer


def _end(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    proc.wait(timeout=60)


@pytest.fixture
def mcp_env(tmp_path, local_hosts_yaml):
    state = tmp_path / "state"
    env = {**os.environ, "ARC_HOSTS": str(local_hosts_yaml), "ARC_STATE_DIR": str(state),
           "ARC_CACHE_DIR": str(tmp_path / "cache")}
    yield env
    DaemonClient(StatePaths.resolve(state)).stop()


def test_arc_mcp_answers_the_handshake_while_its_daemon_starts(mcp_env):
    first = _session(mcp_env)                            # a new build: the daemon answers, the relay keeps it
    try:
        daemon_initialize = _ask(first, INITIALIZE)["result"]
        first.stdin.write(json.dumps(INITIALIZED).encode() + b"\n")
        daemon_tools = _ask(first, TOOLS_LIST)["result"]
    finally:
        _end(first)
    paths = StatePaths.resolve(mcp_env["ARC_STATE_DIR"])
    DaemonClient(paths).stop()

    # Another client's daemon is starting (it holds the state dir's lock): no daemon can answer this session yet.
    lock = os.open(paths.daemon_lock, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    second = _session(mcp_env)
    try:
        assert _ask(second, INITIALIZE)["result"] == daemon_initialize
        second.stdin.write(json.dumps(INITIALIZED).encode() + b"\n")
        assert _ask(second, TOOLS_LIST)["result"] == daemon_tools
        assert not DaemonClient(paths).running()
        os.close(lock)                                   # that start failed: the session's first call starts one
        lock = None
        answer = _ask(second, LIST_GPUS)["result"]
        assert not answer.get("isError"), answer
        assert answer["structuredContent"]["hosts"][0]["reachable"] is not None
    finally:
        if lock is not None:
            os.close(lock)
        _end(second)


def test_a_damaged_handshake_entry_counts_as_none(mcp_env):
    probe = "from mcp_server.core import startup_cache as c; print(c._path('mcp-handshake', c.fingerprint(), ''))"
    entry = Path(subprocess.run([sys.executable, "-c", probe], env=mcp_env, capture_output=True, text=True,
                                check=True).stdout.strip())
    entry.parent.mkdir(parents=True, exist_ok=True)
    entry.write_text('{"initialize": {"2025-06-18": "not an answer"}, "lists": [')
    proc = _session(mcp_env)
    try:
        assert _ask(proc, INITIALIZE)["result"]["serverInfo"]["name"] == "arc"
        proc.stdin.write(json.dumps(INITIALIZED).encode() + b"\n")
        assert not _ask(proc, LIST_GPUS)["result"].get("isError")
    finally:
        _end(proc)
    assert "2025-06-18" in json.loads(entry.read_text())["initialize"]      # replaced by the daemon's own answer

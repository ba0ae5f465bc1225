"""`arc mcp` as a process: it ends with its client, and it starts without the heavy imports it does not need."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from mcp_server.core.paths import StatePaths
from mcp_server.daemon.client import DaemonClient


INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "0"}}}


def test_arc_mcp_exits_when_its_client_closes_stdin(tmp_path, local_hosts_yaml):
    state = tmp_path / "state"
    env = {**os.environ, "ARC_HOSTS": str(local_hosts_yaml), "ARC_STATE_DIR": str(state)}
    proc = subprocess.Popen([shutil.which("arc"), "mcp"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        proc.stdin.write(json.dumps(INITIALIZE).encode() + b"\n")
        proc.stdin.flush()
        answer = json.loads(proc.stdout.readline())
        assert answer["id"] == 1 and answer["result"]["serverInfo"]["name"], answer
        proc.stdin.close()                               # Claude Code went away
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("`arc mcp` still runs 60 s after its stdin closed")
        assert code == 0, proc.stderr.read().decode()
        assert proc.stdout.read() == b""                 # nothing but answers on stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        DaemonClient(StatePaths.resolve(state)).stop()


@pytest.mark.parametrize("module, absent", [
    ("mcp_server.surfaces.bridge", ["mcp", "anyio", "httpx2", "pydantic"]),
    ("mcp_server.daemon.server", ["scipy", "optuna", "matplotlib", "pandas", "paramiko"]),
])
def test_start_up_imports_leave_out_what_waits_for_first_use(module, absent):
    probe = f"import sys, {module}; print([m for m in {absent!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", f"importing {module} imported {out.stdout.strip()}"

"""The real Claude Code CLI sees arc as a connected MCP server, registered the way the README says.

Claude Code is installed from the npm registry into pytest's cache (`.pytest_cache/d/claude-code`, reused by later
runs). Each test runs `claude` with HOME in a temporary folder, so the user's own Claude configuration is never
read or changed, and with ARC_HOSTS / ARC_STATE_DIR pointing at a test fleet and state dir. An unreachable
registry fails the test: the registration is part of what arc delivers.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mcp_server.core.paths import StatePaths
from mcp_server.daemon.client import DaemonClient
from tests.harness import local_host_entry, write_hosts_yaml


REPO = Path(__file__).resolve().parent.parent
PACKAGE = "@anthropic-ai/claude-code"
NPM_TIMEOUT_S = 600


@pytest.fixture(scope="session")
def claude(request) -> Path:
    cache = Path(request.config.cache.mkdir("claude-code"))
    exe = cache / "node_modules" / ".bin" / "claude"
    if not exe.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("npm is not installed; Claude Code comes from the npm registry: apt-get install -y nodejs npm "
                        "(Node.js >= 18)")
        proc = subprocess.run([npm, "install", "--prefix", str(cache), "--no-audit", "--no-fund", "--loglevel=error",
                               PACKAGE], capture_output=True, text=True, timeout=NPM_TIMEOUT_S)
        if proc.returncode != 0 or not exe.exists():
            pytest.fail(f"could not install {PACKAGE} from the npm registry (is it reachable from here?): "
                        f"npm exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    version = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0, version.stderr
    return exe


@pytest.fixture
def arc_setup(tmp_path):
    """A throwaway HOME, a project folder, and the env a user would give `arc mcp` (one local CPU host)."""
    arc = shutil.which("arc")
    if arc is None:
        pytest.fail("the `arc` command is not on PATH: install the project first (pip install -e .)")
    home, project, state = tmp_path / "home", tmp_path / "project", tmp_path / "state"
    home.mkdir()
    project.mkdir()
    hosts = write_hosts_yaml(tmp_path / "hosts.yaml", [local_host_entry(tmp_path / "work", cpu_slots=1)])
    env = {**os.environ, "HOME": str(home), "ARC_HOSTS": str(hosts), "ARC_STATE_DIR": str(state),
           "DISABLE_AUTOUPDATER": "1", "DISABLE_TELEMETRY": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
    yield project, env
    DaemonClient(StatePaths.resolve(state)).stop()


def run(claude: Path, *args: str, cwd: Path, env: dict) -> str:
    proc = subprocess.run([str(claude), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"claude {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def server_line(listing: str, name: str) -> str:
    lines = [ln for ln in listing.splitlines() if ln.startswith(f"{name}:")]
    assert lines, f"{name} is not in `claude mcp list`:\n{listing}"
    return lines[0]


def test_claude_mcp_add_then_list_shows_arc_connected(claude, arc_setup):
    project, env = arc_setup
    run(claude, "mcp", "add", "arc", "--", "arc", "mcp", cwd=project, env=env)
    line = server_line(run(claude, "mcp", "list", cwd=project, env=env), "arc")
    assert "arc mcp" in line and "✔ Connected" in line, line


def test_project_mcp_json_registers_arc(claude, arc_setup):
    project, env = arc_setup
    shutil.copy(REPO / ".mcp.json", project / ".mcp.json")
    detail = run(claude, "mcp", "get", "arc", cwd=project, env=env)
    assert "Project config" in detail and "Command: arc" in detail and "Args: mcp" in detail, detail
    # A project's servers wait for the user's approval; with it given, Claude Code connects to arc.
    settings = Path(env["HOME"]) / ".claude" / "settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps({"enableAllProjectMcpServers": True}))
    line = server_line(run(claude, "mcp", "list", cwd=project, env=env), "arc")
    assert "✔ Connected" in line, line

"""The real Claude Code CLI sees arc as a connected MCP server, registered the way the README says.

Claude Code is installed from the npm registry into pytest's cache (`.pytest_cache/d/claude-code`, reused by later
runs). Each test runs `claude` with HOME in a temporary folder, so the user's own Claude configuration is never
read or changed. The registration tests give `arc mcp` no environment of its own, as the README registers it: the
fleet and history are the person's own (XDG dirs in the temporary HOME), found from any folder. An unreachable
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
# The version FACTS.md's Claude Code facts were measured on. To bump it: install the new version, re-check the
# facts that name the version in /work/shared/FACTS.md (result-size threshold, `claude mcp list` output), then
# change both together.
CLAUDE_CODE_VERSION = "2.1.328"
PACKAGE = f"@anthropic-ai/claude-code@{CLAUDE_CODE_VERSION}"
NPM_TIMEOUT_S = 600


@pytest.fixture(scope="session")
def claude(request) -> Path:
    cache = Path(request.config.cache.mkdir("claude-code"))
    exe = cache / "node_modules" / ".bin" / "claude"
    if not exe.exists() or not _version(exe).startswith(CLAUDE_CODE_VERSION):
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("npm is not installed; Claude Code comes from the npm registry: apt-get install -y nodejs npm "
                        "(Node.js >= 18)")
        proc = subprocess.run([npm, "install", "--prefix", str(cache), "--no-audit", "--no-fund", "--loglevel=error",
                               PACKAGE], capture_output=True, text=True, timeout=NPM_TIMEOUT_S)
        if proc.returncode != 0 or not exe.exists():
            pytest.fail(f"could not install {PACKAGE} from the npm registry (is it reachable from here?): "
                        f"npm exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    assert _version(exe).startswith(CLAUDE_CODE_VERSION), _version(exe)
    return exe


def _version(exe: Path) -> str:
    version = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0, version.stderr
    return version.stdout.strip()


@pytest.fixture
def person(tmp_path):
    """A person's machine as the README's registration meets it: a throwaway HOME (Claude's config and arc's user
    dirs in it), two unrelated folders, and no ARC_* variables."""
    if shutil.which("arc") is None:
        pytest.fail("the `arc` command is not on PATH: install the project first (pip install -e .)")
    home = tmp_path / "home"
    folders = [tmp_path / "project", tmp_path / "elsewhere"]
    for folder in (home, *folders):
        folder.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARC_", "XDG_"))}
    env |= {"HOME": str(home), "DISABLE_AUTOUPDATER": "1", "DISABLE_TELEMETRY": "1",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
    data = home / ".local" / "share" / "arc"          # XDG_DATA_HOME's default, under the HOME above
    yield *folders, env
    DaemonClient(StatePaths.resolve(data)).stop()


def arc_init(env: dict) -> None:
    subprocess.run(["arc", "init"], env=env, check=True, capture_output=True, timeout=120)


@pytest.mark.parametrize("scope", ["local", "project", "user"])
def test_the_readmes_registration_connects_at_each_scope_from_a_folder_without_hosts_yaml(claude, person, scope):
    project, elsewhere, env = person
    arc_init(env)                       # the person's own fleet: this machine
    run(claude, "mcp", "add", "--scope", scope, "arc", "--", "arc", "mcp", cwd=project, env=env)
    if scope == "project":          # a project's servers wait for the person's approval
        assert json.loads((project / ".mcp.json").read_text())["mcpServers"]["arc"]["command"] == "arc"
        approve(env)
    line = server_line(run(claude, "mcp", "list", cwd=project, env=env), "arc")
    assert "arc mcp" in line and "✔ Connected" in line, line
    home = Path(env["HOME"])
    # The history is the person's, whatever folder Claude Code started in, not a ./.arc there.
    assert (home / ".local" / "share" / "arc" / "history.duckdb").exists()
    assert not (project / ".arc").exists()
    if scope == "user":                 # registered once, connected from any folder
        line = server_line(run(claude, "mcp", "list", cwd=elsewhere, env=env), "arc")
        assert "✔ Connected" in line, line


def test_without_a_fleet_file_arc_still_connects_and_says_why(claude, person):
    project, _, env = person
    run(claude, "mcp", "add", "--scope", "user", "arc", "--", "arc", "mcp", cwd=project, env=env)
    line = server_line(run(claude, "mcp", "list", cwd=project, env=env), "arc")
    assert "✔ Connected" in line, line    # not "Failed to connect": its tool calls say `arc init` (test_cli_anywhere)


def approve(env: dict) -> None:
    settings = Path(env["HOME"]) / ".claude" / "settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps({"enableAllProjectMcpServers": True}))


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
    approve(env)
    line = server_line(run(claude, "mcp", "list", cwd=project, env=env), "arc")
    assert "✔ Connected" in line, line

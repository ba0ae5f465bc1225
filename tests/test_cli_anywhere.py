"""arc as a person meets it from any folder: where the fleet file and the history are when no project file is given,
`arc init`, an `arc mcp` that answers with the reason instead of exiting, the demo's fleet that needs no file, and a
refusal that names both fleet files when the daemon runs another one."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from mcp_server.core.paths import StatePaths
from mcp_server.daemon.client import DaemonClient
from mcp_server.fleet.hosts_config import load_hosts
from mcp_server.surfaces.demo import demo_fleet
from tests.harness import local_host_entry, write_hosts_yaml


REPO = Path(__file__).resolve().parent.parent
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "0"}}}


@pytest.fixture
def person(tmp_path):
    """An empty folder to work in and the env of a person with no arc files: the user dirs are in tmp_path."""
    arc = shutil.which("arc")
    if arc is None:
        pytest.fail("the `arc` command is not on PATH: install the project first (pip install -e .)")
    cwd = tmp_path / "anywhere"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARC_")}
    env |= {"XDG_CONFIG_HOME": str(tmp_path / "config"), "XDG_DATA_HOME": str(tmp_path / "data"), "HOME": str(tmp_path)}
    return arc, cwd, env


def arc_run(person, *args: str, cwd: Path | None = None, stdin: str | None = None,
            ok: bool = True) -> subprocess.CompletedProcess:
    arc, here, env = person
    proc = subprocess.run([arc, *args], cwd=cwd or here, env=env, input=stdin, capture_output=True, text=True,
                          timeout=120)
    if ok:
        assert proc.returncode == 0, f"arc {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}"
    return proc


def status(person, *args: str, cwd: Path | None = None) -> dict:
    return json.loads(arc_run(person, *args, "--json", "daemon", "status", cwd=cwd).stdout)


def test_the_fleet_and_history_are_found_in_order_given_then_project_then_user(person, tmp_path):
    user = status(person)            # no file anywhere: the user's own places, whatever the folder
    assert user["hosts_file"] == str(tmp_path / "config" / "arc" / "hosts.yaml")
    assert user["state_dir"] == str(tmp_path / "data" / "arc") and not user["running"]

    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(REPO / "hosts.yaml", project / "hosts.yaml")
    here = status(person, cwd=project)          # a project's own file, and its history beside it
    assert here["hosts_file"] == str(project / "hosts.yaml") and here["state_dir"] == str(project / ".arc")

    other = write_hosts_yaml(tmp_path / "other.yaml", [local_host_entry(tmp_path / "work")])
    given = status(person, "--hosts", str(other), "--state-dir", str(tmp_path / "s"), cwd=project)
    assert given["hosts_file"] == str(other) and given["state_dir"] == str(tmp_path / "s")
    assert given["research_file"] == str(tmp_path / "research.yaml")


def test_arc_init_writes_a_commented_fleet_of_this_machine_and_never_overwrites(person, tmp_path):
    arc_run(person, "init", "--with-research")
    hosts = tmp_path / "config" / "arc" / "hosts.yaml"
    assert hosts.read_text() == (REPO / "hosts.yaml").read_text()      # the repository's file is the model
    assert [h.name for h in load_hosts(hosts).hosts] == ["local"]
    assert "search_space:" in (hosts.parent / "research.yaml").read_text()
    hosts.write_text(hosts.read_text() + "# the person's edit\n")
    again = arc_run(person, "--json", "init")
    assert json.loads(again.stdout) == {"written": [], "kept": [str(hosts)]}
    assert hosts.read_text().endswith("# the person's edit\n")
    _, cwd, _ = person
    arc_run(person, "init", "--here")
    assert (cwd / "hosts.yaml").exists() and not (cwd / "research.yaml").exists()


def test_arc_mcp_without_a_fleet_answers_every_tool_call_with_the_reason_and_the_fix(person):
    requests = [INITIALIZE, {"jsonrpc": "2.0", "method": "notifications/initialized"},
                {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "list_gpus", "arguments": {}}}]
    proc = arc_run(person, "mcp", stdin="".join(json.dumps(r) + "\n" for r in requests), ok=False)
    answers = {a["id"]: a for a in map(json.loads, proc.stdout.splitlines())}
    assert answers[1]["result"]["serverInfo"]["name"] == "arc"
    assert "no fleet file" in answers[1]["result"]["instructions"]
    assert [t["name"] for t in answers[2]["result"]["tools"]] == ["arc_setup"]
    refusal = answers[3]["result"]
    assert refusal["isError"] and "no fleet file" in refusal["content"][0]["text"]
    assert "arc init" in refusal["content"][0]["text"] and "reconnect" in refusal["content"][0]["text"]
    assert proc.stderr.startswith("arc: no fleet file")               # a person running it by hand sees it too


def test_arc_mcp_with_a_broken_fleet_file_answers_with_its_error(person, tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("hosts:\n  - name: gpu1\n    transport: teleport\n")
    proc = arc_run(person, "--hosts", str(broken), "mcp", stdin=json.dumps(INITIALIZE) + "\n", ok=False)
    (answer,) = map(json.loads, proc.stdout.splitlines())
    assert "arc cannot serve" in answer["result"]["instructions"] and "transport" in answer["result"]["instructions"]


def test_the_demo_fleet_is_this_machine_and_needs_no_file(tmp_path):
    paths = StatePaths.resolve(tmp_path / "demo").ensure()
    fleet = load_hosts(demo_fleet(paths))
    (host,) = fleet.hosts
    assert host.name == "local" and host.transport == "local"
    assert yaml.safe_load(demo_fleet(paths).read_text())["hosts"][0]["workdir"].startswith(str(paths.root))


def test_a_daemon_running_another_fleet_file_is_named_with_the_fix(person, tmp_path):
    state = tmp_path / "state"
    first = write_hosts_yaml(tmp_path / "a" / "hosts.yaml", [local_host_entry(tmp_path / "work")])
    other = write_hosts_yaml(tmp_path / "b" / "hosts.yaml", [local_host_entry(tmp_path / "work", name="h1")])
    try:
        arc_run(person, "--hosts", str(first), "--state-dir", str(state), "daemon", "start")
        refused = arc_run(person, "--hosts", str(other), "--state-dir", str(state), "submit", "--host", "h1", "--",
                          "true", ok=False)
        assert refused.returncode == 1
        assert str(first) in refused.stderr and str(other) in refused.stderr, refused.stderr
        assert "arc daemon restart" in refused.stderr and "--state-dir" in refused.stderr
        # The fix it names works: the restarted daemon runs the other file and takes the job.
        arc_run(person, "--hosts", str(other), "--state-dir", str(state), "daemon", "restart")
        gpus = json.loads(arc_run(person, "--hosts", str(other), "--state-dir", str(state), "--json", "gpus").stdout)
        assert f"fleet file {other}, history {state}" in gpus["summary"], gpus["summary"]
        job = arc_run(person, "--hosts", str(other), "--state-dir", str(state), "submit", "-q", "--host", "h1", "--",
                      "true").stdout.strip()
        assert job
    finally:
        DaemonClient(StatePaths.resolve(state)).stop()

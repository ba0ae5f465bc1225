"""Bootstrap and `arc hosts check`: pushes, checks and one readiness record per host, rendered with rich."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from rich.console import Console

from mcp_server.fleet import check_hosts, content_hash
from mcp_server.fleet.bootstrap import STEPS, TRAINER_DIR
from mcp_server.fleet.report import check_hosts_live, readiness_table
from mcp_server.fleet.session import AGENT_DIR
from tests.harness import local_host_entry, write_hosts_yaml

TORCH_TIMEOUT = 180.0   # three cold `import torch` at once on two cores


def test_check_hosts_bootstraps_each_host_and_reports_failures(netns_hosts, tmp_path):
    agent_dir = shutil.copytree(AGENT_DIR, tmp_path / "agent" / "gpu_agent")   # edits elsewhere cannot race us
    code_dir = shutil.copytree(TRAINER_DIR, tmp_path / "trainer")
    path = netns_hosts.write_hosts_yaml(tmp_path / "hosts.yaml", [
        netns_hosts.host_entry("h1", workdir=str(tmp_path / "h1")),
        netns_hosts.host_entry("h2", workdir=str(tmp_path / "h2"), simulate_gpus=None, cpu_slots=3),
        local_host_entry(tmp_path / "local"),
        netns_hosts.host_entry("h3", port=2222),
    ])
    steps = defaultdict(list)
    results = check_hosts(path, lambda host, step, done, total: steps[host].append((step, done, total)),
                          torch_timeout=TORCH_TIMEOUT, connect_timeout=5, agent_dir=agent_dir,
                          code_dir=code_dir)
    by = {r.host: r for r in results}
    assert [r.host for r in results] == ["h1", "h2", "local", "h3"]
    python = "%d.%d.%d" % sys.version_info[:3]
    for name in ("h1", "h2", "local"):
        r = by[name]
        assert r.ready and r.error is None, r
        assert r.python == python
        assert (r.agent_hash, r.agent_uploaded) == (content_hash(agent_dir, prefix="gpu_agent"), True)
        assert r.code_hash == content_hash(code_dir, prefix="trainer") and r.code_uploaded
        assert (Path(r.code_path) / "trainer" / "__init__.py").is_file()
        assert r.torch is not None and r.torch.split("+")[0][0].isdigit() and r.cuda is False
        assert r.nvml is False and "NVML" in (r.nvml_error or "")
        assert [s for s, _, _ in steps[name]] == [*STEPS, "ready"]
    assert by["h1"].gpu_source == "simulated" and len(by["h1"].gpus) == 2 and by["h1"].cpu_slots == 2
    assert by["h2"].gpu_source != "simulated" and by["h2"].gpus == [] and by["h2"].cpu_slots == 3
    assert any(w.startswith("no GPUs") for w in by["h2"].warnings)
    assert by["local"].address == "this machine"
    bad = by["h3"]
    assert not bad.ready and bad.failed_step == "connect" and "connection refused" in bad.error
    assert steps["h3"][-1] == ("failed at connect", len(STEPS), len(STEPS))

    console = Console(record=True, width=250, file=io.StringIO())
    console.print(readiness_table(results))
    text = console.export_text()
    assert "3/4 hosts ready" in text
    assert "2x H100 80GB (simulated)" in text and "failed: connect" in text
    assert f"h3: {bad.error}" in text.replace("\n", "")


def test_second_check_finds_everything_in_place(netns_hosts, tmp_path):
    out = io.StringIO()
    frozen = {"agent_dir": shutil.copytree(AGENT_DIR, tmp_path / "agent" / "gpu_agent"),
              "code_dir": shutil.copytree(TRAINER_DIR, tmp_path / "trainer")}   # edits elsewhere cannot race us
    # A torch import slower than its deadline is reported, not fatal: the host can still run other workloads.
    # The host's python hangs on `import torch` (and only there), so the deadline, not the import's speed, decides.
    stalls = tmp_path / "python-stalling-on-torch"
    stalls.write_text(f'#!/bin/sh\ncase "$*" in *"import torch"*) exec sleep 600;; esac\n'
                      f'exec {sys.executable} "$@"\n')
    stalls.chmod(0o755)
    path = netns_hosts.write_hosts_yaml(tmp_path / "hosts.yaml", [
        netns_hosts.host_entry("h1", workdir=str(tmp_path / "w"), python=str(stalls))])
    first = check_hosts_live(path, Console(file=out, width=200), torch_timeout=2, **frozen)
    second = check_hosts_live(path, Console(file=out, width=200), torch_timeout=2, **frozen)
    assert first[0].ready and second[0].ready
    assert first[0].torch == "unknown: import torch took over 2s" and first[0].torch in first[0].warnings
    assert (first[0].agent_uploaded, second[0].agent_uploaded) == (True, False)
    assert (first[0].code_uploaded, second[0].code_uploaded) == (True, False)
    assert out.getvalue().count("1/1 hosts ready") == 2


def test_arc_hosts_check_prints_the_table_or_json_and_exits_by_readiness(tmp_path):
    """The command itself, as a person types it: options after the command name work as well as before."""
    good = write_hosts_yaml(tmp_path / "hosts.yaml", [local_host_entry(tmp_path / "local", cpu_slots=1)])
    broken = write_hosts_yaml(tmp_path / "broken.yaml", [local_host_entry(tmp_path / "local", python="/no/python")])

    def arc(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mcp_server", *args], cwd=tmp_path, capture_output=True,
                              text=True, timeout=TORCH_TIMEOUT, env={**os.environ, "COLUMNS": "200"})

    table = arc("hosts", "check", "--hosts", str(good))
    assert table.returncode == 0, table.stderr
    assert "1/1 hosts ready" in table.stdout and "this machine" in table.stdout
    as_json = arc("--json", "hosts", "check", "--hosts", str(good))
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    assert report["summary"] == "1/1 hosts ready" and report["hosts"][0]["cpu_slots"] == 1
    failed = arc("hosts", "check", "--json", "--hosts", str(broken))
    assert failed.returncode == 1
    [host] = json.loads(failed.stdout)["hosts"]
    assert not host["ready"] and "/no/python" in host["error"]

"""`arc sql` as a person reads it: a wide result as one record per row, TSV when piped, `--format csv|tsv|json`, and
every row of an export past the 500-row cap, through the daemon's snapshot and from the history file alike."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess

import pytest

from mcp_server.core.paths import StatePaths
from mcp_server.daemon.client import DaemonClient


@pytest.fixture(scope="module")
def arc(tmp_path_factory):
    """`arc` on a state dir whose history holds two finished jobs."""
    from tests.harness import local_host_entry, write_hosts_yaml

    exe = shutil.which("arc")
    if exe is None:
        pytest.fail("the `arc` command is not on PATH: install the project first (pip install -e .)")
    root = tmp_path_factory.mktemp("sql")
    hosts = write_hosts_yaml(root / "hosts.yaml", [local_host_entry(root / "work", cpu_slots=2)])
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARC_")} | {"COLUMNS": "100"}

    def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([exe, "--hosts", str(hosts), "--state-dir", str(root / "state"), *args],
                              capture_output=True, text=True, timeout=180, env=env)
        if ok:
            assert proc.returncode == 0, f"arc {' '.join(args)}: {proc.stderr}"
        return proc

    jobs = [run("submit", "-q", "--cpu", "--", "echo", f"job {n}").stdout.strip() for n in range(2)]
    run("wait", *jobs)
    yield run
    DaemonClient(StatePaths.resolve(root / "state")).stop()


def test_a_wide_result_prints_one_record_per_row_and_piped_it_is_tsv(arc):
    wide = arc("sql", "--format", "table", "SELECT * FROM jobs ORDER BY job_num").stdout
    assert "-[ row 1 ]" in wide and "-[ row 2 ]" in wide and "-[ row 3 ]" not in wide, wide
    assert "━" not in wide and "│" not in wide                         # no empty columns of box characters
    assert any(line.startswith("status") and line.rstrip().endswith("| succeeded") for line in wide.splitlines())

    narrow = arc("sql", "--format", "table", "SELECT job_num, status FROM jobs ORDER BY job_num").stdout
    assert "-[ row" not in narrow and "succeeded" in narrow            # fits: a table

    piped = arc("sql", "SELECT * FROM jobs ORDER BY job_num").stdout.splitlines()   # stdout is a pipe here
    assert len(piped) == 3 and piped[0].split("\t")[:2] == ["job_id", "job_num"], piped[0]
    assert len({len(line.split("\t")) for line in piped}) == 1                     # one line per row, aligned


def test_csv_and_tsv_export_every_row_past_the_cap_and_json_is_the_tool_answer(arc):
    query = "SELECT range AS n, 'a,b\tc' AS text FROM range(1200)"
    for daemon in ("running", "stopped"):                # the snapshot, then the history file itself
        rows = list(csv.reader(io.StringIO(arc("sql", "--format", "csv", query).stdout)))
        assert rows[0] == ["n", "text"] and len(rows) == 1201 and rows[-1] == ["1199", "a,b\tc"], daemon
        tsv = arc("sql", "--format", "tsv", query).stdout.splitlines()
        assert len(tsv) == 1201 and tsv[1] == "0\ta,b\\tc", daemon
        if daemon == "running":
            arc("daemon", "stop")
    capped = arc("sql", "--format", "tsv", "--limit", "2", query)
    assert len(capped.stdout.splitlines()) == 3 and "prints every row" in capped.stderr
    answer = json.loads(arc("sql", "--format", "json", query).stdout)
    assert answer["row_count"] == 50 and answer["truncated"]


def test_an_export_is_as_read_only_as_the_tool(arc):
    refused = arc("sql", "--format", "csv", "DELETE FROM jobs", ok=False)
    assert refused.returncode == 1 and "only SELECT is allowed" in refused.stderr, refused.stderr
    files = arc("sql", "--format", "csv", "SELECT * FROM read_csv('/etc/passwd')", ok=False)
    assert files.returncode == 1 and "file access is disabled" in files.stderr, files.stderr
    assert arc("sql", "--format", "csv", "SELECT count(*) FROM jobs").stdout.splitlines()[1] == "2"

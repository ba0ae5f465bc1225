"""`arc daemon` as a process: one per state dir (a second start finds the first, even two at once), a clean
shutdown that closes the history, and a kill -9 after which a restart loses nothing; several CLI processes
submitting at once share one queue without lock errors. Hosts: the shared netns sshd fleet."""
from __future__ import annotations

import json
import shlex
import subprocess
from concurrent.futures import ThreadPoolExecutor

from mcp_server.daemon.state import lock_is_held
from tests.daemon_support import REPO, Gates, metric_job, wait_for


def test_one_daemon_per_state_dir_even_when_two_start_at_once(netns_hosts, arcs, tmp_path):
    arc = arcs(tmp_path / "state", netns_hosts.hosts_yaml)
    starts = [subprocess.Popen(arc.argv("--json", "daemon", "start"), cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=90) for p in starts]
    assert [p.returncode for p in starts] == [0, 0], outputs
    assert {json.loads(out)["pid"] for out, _ in outputs} == {arc.pid}
    assert arc.cli_json("daemon", "start")["pid"] == arc.pid
    second = arc.cli("daemon", "start", "--foreground", check=False, timeout=60)
    assert second.returncode == 1
    assert f"a daemon already runs for {arc.paths.root} (pid {arc.pid})" in second.stderr
    status = arc.cli_json("daemon", "status")
    assert (status["running"], status["pid"]) == (True, arc.pid)
    assert arc.log().count(" serving ") == 1     # one daemon ever served this state dir


def test_a_clean_shutdown_closes_everything(netns_hosts, arcs, tmp_path):
    arc = arcs(tmp_path / "state", netns_hosts.hosts_yaml)
    arc.start()
    [job] = arc.submit([metric_job(1)])
    arc.wait([job])
    first = arc.pid
    restarted = arc.cli_json("daemon", "restart")                # what a person runs after editing hosts.yaml
    assert restarted["pid"] not in (None, first) and arc.pid == restarted["pid"]
    assert "arc.daemon: daemon stopping" in arc.log()
    assert arc.cli("daemon", "stop").stdout.strip() == "daemon stopped"
    assert not lock_is_held(arc.paths)
    assert not arc.paths.daemon_socket.exists() and not arc.paths.daemon_info.exists()
    assert "arc.daemon: daemon stopping" in arc.log()
    assert not arc.paths.history.with_name("history.duckdb.wal").exists()   # closed, not abandoned
    # With no daemon, the CLI reads the history file itself.
    jobs = arc.cli_json("jobs")["jobs"]
    assert [(j["job_id"], j["status"]) for j in jobs] == [(job, "succeeded")]
    assert arc.cli("daemon", "stop").stdout.strip() == "no daemon runs"


def test_kill_9_then_restart_loses_nothing(netns_hosts, arcs, tmp_path):
    arc = arcs(tmp_path / "state", netns_hosts.hosts_yaml)
    gates = Gates(tmp_path / "gates")
    arc.start()
    done = arc.submit([metric_job(i) for i in range(2)])
    arc.wait(done)
    held = arc.submit([metric_job(10 + i, gate=gates.path(f"g{i}")) for i in range(2)])
    wait_for(lambda: all(j["status"] == "running" for j in arc.jobs(held).values()), 60, "two jobs to run")
    before = arc.cli_json("jobs")
    arc.kill9()
    # The killed daemon's history opens at once, write-ahead log replayed, for the CLI with no daemon...
    assert arc.cli_json("jobs")["jobs"] == before["jobs"]
    # ...and for the next daemon, which carries on with the same jobs and never hands out an id twice.
    arc.start()
    gates.open("g0", "g1")
    final = arc.wait(done + held)
    assert {j: d["status"] for j, d in final.items()} == {j: "succeeded" for j in done + held}
    assert all(final[j]["last_metrics"]["x"] == 10 + i + 3 / 7 for i, j in enumerate(held))
    [new] = arc.submit([metric_job(20)])
    assert int(new[1:]) == max(int(j[1:]) for j in done + held) + 1
    arc.wait([new])
    assert arc.event_chain_problems() == []
    arc.stop()


def test_two_clis_submitting_at_once_share_one_queue(netns_hosts, arcs, tmp_path):
    arc = arcs(tmp_path / "state", netns_hosts.hosts_yaml)
    per_cli = 5

    def submit_many(n: int) -> list[subprocess.CompletedProcess]:
        return [arc.cli("submit", "-q", "--name", f"cli{n}-{i}", "--", "true", check=False) for i in range(per_cli)]

    # No daemon runs yet: both CLIs start one at the same moment, and keep submitting.
    with ThreadPoolExecutor(2) as pool:
        results = [r for batch in pool.map(submit_many, range(2)) for r in batch]
    problems = [(r.returncode, r.stderr) for r in results if r.returncode != 0 or r.stderr.strip()]
    assert problems == []
    ids = [r.stdout.strip() for r in results]
    assert len(set(ids)) == 2 * per_cli
    final = arc.wait(ids)
    assert {d["status"] for d in final.values()} == {"succeeded"}
    listed = arc.call("list_jobs", limit=100)
    assert listed["total"] == 2 * per_cli and {j["job_id"] for j in listed["jobs"]} == set(ids)
    # A page's hint is a command line a person can run as printed, and it gives the next page.
    hint = arc.cli("jobs", "--limit", "3").stdout.splitlines()[-1]
    assert hint == "next: arc jobs --limit 3 --offset 3"
    following = json.loads(arc.cli(*shlex.split(hint)[2:], "--json").stdout)
    assert following["offset"] == 3 and [j["job_id"] for j in following["jobs"]] == \
        [j["job_id"] for j in listed["jobs"]][3:6]
    assert "Could not set lock" not in arc.log() and "Traceback" not in arc.log()

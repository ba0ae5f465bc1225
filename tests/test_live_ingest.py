"""Live ingest (the scheduler's tick, real local agent): what a running job prints reaches the history while it runs.
Each tick asks the host once for all its running jobs and ingests only those with news: new metrics, more log, or
an end. A job that printed only log text is news too, and a quiet job beside it gets nothing."""
import sys

from mcp_server.core.scheduler import Scheduler, SchedulerSettings
from mcp_server.fleet.hosts_config import load_hosts
from mcp_server.history import History
from mcp_server.stores.code import CodeStore
from tests.agent_support import wait_until

# Prints a metric, then a log line once `go1` exists, then ends once `go2` exists: the test says when.
TALKER = """
import os, sys, time
def wait(name):
    while not os.path.exists(name):
        time.sleep(0.02)
print('@arc {"step": 1, "loss": 2.5}', flush=True)
wait(sys.argv[1])
print("a log line, no metric", flush=True)
wait(sys.argv[2])
"""


def job(argv: list[str]) -> dict:
    return {"kind": "command", "argv": argv, "time_limit_s": 120.0, "requirements": {}}


def test_running_jobs_metrics_and_log_reach_the_history_before_they_end(tmp_path, local_hosts_yaml):
    go1, go2 = tmp_path / "go1", tmp_path / "go2"
    history = History(tmp_path / "history.duckdb")
    scheduler = Scheduler(history, load_hosts(local_hosts_yaml), CodeStore(tmp_path / "code"), tmp_path / "data",
                          SchedulerSettings(tick_s=0.1, live_ingest_every_s=0.2))
    talker, quiet = history.insert_jobs([job([sys.executable, "-c", TALKER, str(go1), str(go2)]),
                                         job([sys.executable, "-c", f"import os, time\nwhile not os.path.exists("
                                              f"{str(go2)!r}): time.sleep(0.02)"])])
    scheduler.start()
    try:
        def row(job_id: str) -> dict:
            return history.get_job(job_id)

        wait_until(lambda: history.last_metrics(talker), timeout=30, what="the running job's metric in the history")
        assert row(talker)["status"] == "running"
        assert history.last_metrics(talker) == {"loss": 2.5}
        logged, seq = row(talker)["log_bytes"], row(talker)["metrics_seq"]

        go1.touch()
        wait_until(lambda: row(talker)["log_bytes"] > logged, timeout=30, what="the log-only output ingested")
        assert row(talker)["status"] == "running" and row(talker)["metrics_seq"] == seq
        assert row(quiet)["status"] == "running" and history.last_metrics(quiet) is None
        assert row(quiet)["log_bytes"] in (0, None)

        go2.touch()
        wait_until(lambda: row(talker)["status"] == row(quiet)["status"] == "succeeded", timeout=30,
                   what="both jobs' ends")
        assert history.last_metrics(talker) == {"loss": 2.5}
    finally:
        scheduler.stop()
        history.close()

"""One GPU-class rule: for every model in the trainer's GPU table, the class placement stamps on `jobs` and the
class the inventory writes to `gpus` are the same, and the table's own. Through the real paths: a real Service on
this machine's `local` host simulating one GPU of every model, jobs placed and run there, the history read back
with SQL. The history's example queries then find what they teach."""
from __future__ import annotations

import sys

import pytest

from mcp_server.core.paths import StatePaths
from mcp_server.core.service import Service
from mcp_server.fleet.hosts_config import load_hosts
from mcp_server.history import EXAMPLES
from tests.harness import local_host_entry, write_hosts_yaml
from tests.mcp_support import started
from trainer.contract import REPORTED_NAMES


FINISHES = [sys.executable, "-c", "print('---'); print('val_bpb: 1.000000')"]


@pytest.fixture(scope="module")
def fleet_of_every_model(tmp_path_factory):
    """(service, {job_id: the class the table gives its GPU}) once one job per model has run on its GPU."""
    root = tmp_path_factory.mktemp("classes")
    hosts = write_hosts_yaml(root / "hosts.yaml", [local_host_entry(
        root / "work", simulate_gpus=[{"model": name, "memory_gb": 80} for name in REPORTED_NAMES.values()],
        cpu_slots=0)])
    svc = started(Service(StatePaths.resolve(root / "state"), load_hosts(hosts)))
    try:
        specs = [{"command": FINISHES, "requirements": {"gpu_class": cls}} for cls in REPORTED_NAMES]
        jobs = [j.job_id for j in svc.submit_jobs(specs, submitted_by="test").jobs]
        waited = svc.wait_for_jobs(jobs, mode="all", timeout_s=120)
        assert not waited.pending and {j.status for j in waited.done} == {"succeeded"}, waited.summary
        yield svc, dict(zip(jobs, REPORTED_NAMES))
    finally:
        svc.close()


def test_jobs_and_gpus_tables_name_every_model_alike(fleet_of_every_model):
    svc, expected = fleet_of_every_model
    rows = svc.query_results(
        "SELECT j.job_id, g.model, j.gpu_class, g.gpu_class FROM jobs j "
        "JOIN gpus g ON g.host = j.host AND g.idx = j.gpu_indices[1] ORDER BY j.job_num", limit=50).rows
    assert len(rows) == len(REPORTED_NAMES)
    assert {job: (model, job_class, inventory_class) for job, model, job_class, inventory_class in rows} == {
        job: (REPORTED_NAMES[cls], cls, cls) for job, cls in expected.items()}


def test_describe_history_examples_find_the_values_the_history_holds(fleet_of_every_model):
    svc, expected = fleet_of_every_model
    examples = {e["title"]: e["sql"] for e in EXAMPLES}
    per_class = svc.query_results(examples["best val_bpb per GPU class"]).rows
    assert {row[0] for row in per_class} == set(expected.values())
    (top,) = svc.query_results(examples["top 10 runs within one GPU class"]).rows
    assert top[0] in expected and top[1] == 1.0


def test_a_host_that_answered_is_recorded_with_its_facts(fleet_of_every_model):
    svc, _ = fleet_of_every_model
    ((name, transport, reachable, seen, python, agent, labels),) = svc.query_results(
        "SELECT name, transport, reachable, last_seen IS NOT NULL, python, agent_version, labels "
        "FROM hosts").rows
    assert (name, transport, reachable, seen, labels) == ("local", "local", True, True, [])
    assert python and agent

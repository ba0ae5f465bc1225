"""The trainer as a fleet job: prepared once on the controller, pushed over SSH, run under the host agent, and its
val_bpb and curve in the DuckDB history (issue 3's end-to-end test)."""
from __future__ import annotations

import json
import time
from pathlib import Path

from mcp_server.stores.datasets import prepare_dataset
from tests.daemon_support import host_job_dir


SMALL_DATA = ["--max-bytes", "400000", "--vocab-size", "512"]


def test_trainer_job_on_an_ssh_host_lands_its_val_bpb_in_duckdb(tmp_path, netns_hosts, arcs):
    arc = arcs(tmp_path / "state", netns_hosts.hosts_yaml)
    data_hash, facts = prepare_dataset(arc.paths.ensure(), SMALL_DATA)
    assert facts["vocab_size"] == 512
    arc.start()

    # Simulated GPUs run on the CPU (the agent hides CUDA from them), so the cpu-tiny preset fits.
    [job] = arc.submit([{"preset": "cpu-tiny", "config": {"max_steps": 12, "log_every": 4}, "seed": 3,
                         "requirements": {"host": "h2"}}])
    done = arc.wait([job], timeout=240)[job]
    assert done["status"] == "succeeded", arc.cli("logs", job, "-n", "30").stdout

    [(host, data, val_bpb, steps, code_hash)] = arc.sql(
        f"SELECT r.host, j.data_hash, r.val_bpb, r.num_steps, r.code_hash FROM runs r JOIN jobs j USING (job_id) "
        f"WHERE job_id = '{job}'")
    assert host == "h2" and data == data_hash
    assert 0 < val_bpb < 20 and steps == 12
    # The job ran the snapshot the controller pushed: the host holds the same files under the snapshot's hash,
    # and the agent launched the trainer from there (its spec as the host recorded it).
    workdir = netns_hosts.host("h2").workdir
    ours, theirs = arc.paths.snapshots_dir / code_hash, workdir / "code" / code_hash
    assert sorted(p.relative_to(ours) for p in ours.rglob("*.py")) == \
        sorted(p.relative_to(theirs) for p in theirs.rglob("*.py")) != []
    assert all((theirs / p.relative_to(ours)).read_bytes() == p.read_bytes() for p in ours.rglob("*.py"))
    spec = json.loads((host_job_dir(workdir, job, arc.history_id()) / "spec.json").read_text())
    assert Path(spec["cwd"]) in (theirs, Path("code") / code_hash), spec["cwd"]
    assert spec["argv"][1:3] == ["-m", "trainer.train"], spec["argv"]
    [(points,)] = arc.sql(f"SELECT count(*) FROM metrics WHERE job_id = '{job}' AND name = 'train_loss'")
    assert points >= 3
    # The dataset lives on the host under its content hash, pushed once.
    assert (workdir / "data" / data_hash).is_dir()


def test_the_next_trainer_job_on_a_host_starts_warm_and_trains_the_same(tmp_path, netns_hosts, arcs):
    """hosts.yaml's preload reaches the host's agent; the second job starts in the interpreter it kept ready."""
    hosts_yaml = netns_hosts.write_hosts_yaml(tmp_path / "hosts.yaml",
                                              [netns_hosts.host_entry("h2", preload=["torch"])])
    arc = arcs(tmp_path / "state", hosts_yaml)
    prepare_dataset(arc.paths.ensure(), SMALL_DATA)
    started = time.time()
    arc.start()
    spec = {"preset": "cpu-tiny", "config": {"max_steps": 6, "log_every": 3}, "seed": 5}
    jobs = []
    for _ in range(2):
        [job] = arc.submit([spec])
        assert arc.wait([job], timeout=240)[job]["status"] == "succeeded", arc.cli("logs", job, "-n", "30").stdout
        jobs.append(job)
    [first, second] = [arc.sql(f"SELECT val_bpb FROM runs WHERE job_id = '{job}'")[0][0] for job in jobs]
    assert first == second                  # the same seed and settings: the same val_bpb, warm or not
    notes = {}     # by our job id, for this test's jobs (the host's workdir also holds other tests' jobs)
    for jobdir in (netns_hosts.host("h2").workdir / "jobs").iterdir():
        spec_json = json.loads((jobdir / "spec.json").read_text())
        if spec_json["created_at"] >= started:
            log = jobdir / "supervisor.log"
            notes[spec_json["env"]["ARC_HISTORY_JOB_ID"]] = log.read_text() if log.exists() else ""
    assert notes.keys() == set(jobs)
    assert "warm" not in notes[jobs[0]] and "started warm: torch imported ahead" in notes[jobs[1]]

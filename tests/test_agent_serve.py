"""The serve loop and the CLI: bad input answered, events pushed, supervisors independent of the serve process."""
from __future__ import annotations

import json
import os
import signal
import socket
import sys

import pytest

from gpu_agent.client import AgentProcess
from gpu_agent.errors import AgentRefusal
from gpu_agent.protocol import MAX_REQUEST_BYTES
from tests.agent_support import (agent, cli, ended, gated, kill_jobs, launch, make_workdir,  # noqa: F401
                                      python_job, wait_until, workdir)


def _error(agent: AgentProcess, line: bytes) -> dict:
    before = {id(r) for r in agent._responses.values()}
    agent.send_raw(line)
    return agent.wait_for(lambda: next((r for r in agent._responses.values() if id(r) not in before), None), 10,
                          f"an answer to {line[:40]!r}")


@pytest.mark.parametrize("request_, code, words", [
    ({"id": 1, "op": "launch", "params": {"job_id": "x"}}, "bad_request", "required"),
    ({"id": 1, "op": "launch", "params": {"job_id": "../x", "launch_token": "t", "argv": ["true"],
                                          "time_limit_s": 5}}, "bad_request", "job_id"),
    ({"id": 1, "op": "launch", "params": {"job_id": "a/b", "launch_token": "t", "argv": ["true"],
                                          "time_limit_s": 5}}, "bad_request", "job_id"),
    ({"id": 1, "op": "launch", "params": {"job_id": "x", "launch_token": "t", "argv": ["true"],
                                          "time_limit_s": "5"}}, "bad_request", "time_limit_s"),
    ({"id": 1, "op": "launch", "params": {"job_id": "x", "launch_token": "t", "argv": "true",
                                          "time_limit_s": 5}}, "bad_request", "argv"),
    ({"id": 1, "op": "launch", "params": {"job_id": "x", "launch_token": "t", "argv": ["true"], "gpus": [0],
                                          "cpu_slot": True, "time_limit_s": 5}}, "bad_request", "cpu_slot"),
    ({"id": 1, "op": "launch", "params": {"job_id": "x", "launch_token": "t", "argv": ["true"],
                                          "time_limit": 5}}, "bad_request", "unknown param"),
    ({"id": 1, "op": "launch", "params": {"job_id": "x", "launch_token": "t", "argv": ["true"], "cwd": "nowhere",
                                          "time_limit_s": 5}}, "bad_request", "cwd"),
    ({"id": 1, "op": "tail", "params": {"job_id": "nope"}}, "unknown_job", "nope"),
    ({"id": 1, "op": "tail", "params": {"job_id": "x", "lines": 0}}, "bad_request", "lines"),
    ({"id": 1, "op": "status", "params": {"job_ids": "j1"}}, "bad_request", "job_ids"),
    ({"id": 1, "op": "reboot"}, "bad_request", "unknown op"),
    ({"id": 1, "op": "hello", "params": [1]}, "bad_request", "params"),
    ([1, 2], "bad_request", "JSON object"),
])
def test_bad_requests_get_errors_and_the_loop_keeps_serving(agent, request_, code, words):
    response = agent.request(request_["op"], request_.get("params"), 10) if isinstance(request_, dict) else \
        _error(agent, json.dumps(request_).encode() + b"\n")
    assert not response["ok"]
    assert response["error"]["code"] == code and words in response["error"]["message"]
    assert agent.call("hello")["protocol"] == 1


def test_garbage_and_oversized_lines(agent):
    assert _error(agent, b"this is not json\n")["error"]["code"] == "bad_request"
    huge = _error(agent, b'{"id": 9, "op": "hello", "params": {"x": "' + b"a" * (MAX_REQUEST_BYTES + 10) + b'"}}\n')
    assert huge["error"]["code"] == "bad_request" and "longer than" in huge["error"]["message"]
    assert agent.call("hello")["pid"] == agent.proc.pid
    assert agent.call("shutdown") == {"stopping": True}
    assert agent.proc.wait(10) == 0


def test_events_for_own_launches(agent):
    launch(agent, "ev1", python_job('print("@arc {\\"x\\": 1}")'), gpus=[0])
    started_at, started = agent.event("job_started", "ev1")
    ended_at, end = agent.event("job_ended", "ev1")
    assert started["state"]["status"] == "running" and started["state"]["pid"]
    state = end["state"]
    assert state["status"] == "succeeded" and state["metrics_count"] == 1
    assert agent.call("claims")["claims"] == []         # the GPU is free by the time the event says so
    assert started_at <= ended_at                       # how soon it comes is bench/agent_launch.py's "exit → event"
    assert [e["event"] for _, e in agent.events] == ["job_started", "job_ended"]


def test_events_for_jobs_this_serve_process_did_not_launch(workdir, tmp_path):
    with AgentProcess(workdir) as first:
        launch(first, "old", gated(tmp_path / "old-may-end"), gpus=[0])
        first.event("job_started", "old")
    with AgentProcess(workdir) as second:               # the job was running when this one started
        second.call("hello")
        # Over before the next poll, most likely: the claim ledger still shows it came and went.
        rc, out = cli(workdir, "launch", "--job-id", "cli1", "--time-limit", "30", "--", "true")
        assert rc == 0 and out["ok"]
        assert ended(second, "cli1")["status"] == "succeeded"
        (tmp_path / "old-may-end").touch()
        assert ended(second, "old")["status"] == "succeeded"
        assert sorted(e["job_id"] for _, e in second.events) == ["cli1", "old"]


def test_supervisor_survives_the_serve_process(workdir, tmp_path):
    serve = AgentProcess(workdir)
    launch(serve, "keep", gated(tmp_path / "may-end", "printf -- '---\\nval_bpb: 0.5\\n'"), gpus=[1])
    serve.event("job_started", "keep")
    os.kill(serve.proc.pid, signal.SIGKILL)
    serve.close()
    with AgentProcess(workdir) as again:
        assert again.call("status")["jobs"][0]["status"] == "running"
        (tmp_path / "may-end").touch()
        state = ended(again, "keep")
        assert state["status"] == "succeeded"
        assert again.call("metrics", job_id="keep")["records"][0]["data"] == {"val_bpb": 0.5}


def test_a_killed_spare_supervisor_is_replaced(agent):
    def spare() -> int | None:
        for pid in os.listdir("/proc"):
            try:
                stat = open(f"/proc/{pid}/stat").read()
            except (OSError, ValueError):
                continue
            if "(arc-spare)" in stat and int(stat.rsplit(")", 1)[1].split()[1]) == agent.proc.pid:
                return int(pid)
        return None

    agent.call("hello")
    os.kill(wait_until(spare, what="the serve process's spare supervisor"), signal.SIGKILL)
    launch(agent, "after-spare", ["true"], gpus=[0])
    assert ended(agent, "after-spare")["status"] == "succeeded"


def test_simulated_gpus_exist_only_when_configured(tmp_path):
    bare = make_workdir(tmp_path / "bare")
    with AgentProcess(bare) as a:
        inv = a.call("inventory")
        assert (inv["source"], inv["gpus"]) == ("none", [])
        assert inv["nvml_error"]                         # says why there is no GPU
        assert inv["cpu_slots"] == max(1, os.cpu_count() // 2)
        with pytest.raises(AgentRefusal) as e:
            a.call("launch", job_id="g", launch_token="t", argv=["true"], gpus=[0], time_limit_s=5)
        assert e.value.code == "no_such_gpu"

    some = make_workdir(tmp_path / "some", {"gpus": [1], "simulate_gpus": [
        {"model": "A", "memory_gb": 24}, {"model": "B", "memory_gb": 48}], "cpu_slots": 0})
    with AgentProcess(some) as a:
        inv = a.call("inventory")
        assert inv["source"] == "simulated" and inv["cpu_slots"] == 0
        assert [(g["index"], g["name"], g["uuid"], g["memory_total_mb"], g["simulated"]) for g in inv["gpus"]] == [
            (1, "B", f"SIM-{socket.gethostname()}-1", 48 * 1024, True)]
        with pytest.raises(AgentRefusal) as e:
            a.call("launch", job_id="g", launch_token="t", argv=["true"], time_limit_s=5)
        assert e.value.code == "claim_conflict" and "cpu_slots" in e.value.message

    broken = make_workdir(tmp_path / "broken", {"simulate_gpus": [{"model": "A"}]})
    with AgentProcess(broken) as a:
        assert "simulate_gpus" in a.call("hello")["config_error"]
        with pytest.raises(AgentRefusal) as e:
            a.call("inventory")
        assert e.value.code == "bad_config" and "memory_gb" in e.value.message


def test_one_shot_cli(workdir):
    rc, out = cli(workdir, "launch", "--job-id", "c1", "--gpus", "0", "--time-limit", "30", "--env", "A=b=c", "--",
                  sys.executable, "-c", "import os; print('@arc {\"a\": \"' + os.environ['A'] + '\"}')")
    assert rc == 0 and out["ok"] and out["result"]["gpus"] == [0]
    wait_until(lambda: cli(workdir, "status", "c1")[1]["result"]["jobs"][0]["status"] == "succeeded",
               what="c1 to finish")
    assert cli(workdir, "metrics", "c1")[1]["result"]["records"][0]["data"] == {"a": "b=c"}
    assert cli(workdir, "tail", "c1", "-n", "1")[1]["result"]["text"] == '@arc {"a": "b=c"}\n'
    for n in (2, 3):
        cli(workdir, "launch", "--job-id", f"c{n}", "--time-limit", "30", "--", "true")
    listed = cli(workdir, "list", "--limit", "2")[1]["result"]
    assert [j["job_id"] for j in listed["jobs"]] == ["c3", "c2"] and listed["total"] == 3
    assert listed["next_offset"] == 2
    assert [j["job_id"] for j in cli(workdir, "list", "--offset", "2")[1]["result"]["jobs"]] == ["c1"]
    rc, out = cli(workdir, "launch", "--job-id", "c4", "--time-limit", "30", "--", "sleep", "30")
    rc, out = cli(workdir, "cancel", "c4", "--wait", "10")
    assert rc == 0 and out["result"]["status"] == "cancelled"
    rc, out = cli(workdir, "status", "nope")
    assert rc == 0 and out["result"]["unknown"] == ["nope"]
    rc, out = cli(workdir, "tail", "nope")
    assert rc == 1 and out["error"]["code"] == "unknown_job"
    kill_jobs(workdir)

"""A job's life under its supervisor: environment, metrics, output, time limit, cancel, idempotent launch."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from gpu_agent.client import AgentProcess
from gpu_agent.errors import AgentRefusal
from gpu_agent.metrics import MAX_LINE_BYTES, MetricsParser
from tests.agent_support import (  # noqa: F401
    agent, ended, launch, process_gone, python_job, read_ledger, wait_until, workdir)

METRICS_JOB = r'''
print("step 1 starting")
print('@arc {"step": 1, "train_loss": 3.5}')
print('@arc {"step": 2, "train_loss": oops}')
print('@arc [1, 2]')
print("---")
print("an ordinary line ends this empty block")
print('@arc {"step": 3, "train_loss": NaN}')
print("---")
print("val_bpb:          0.997900")
print("num_steps:        953")
print("gpu: NVIDIA H100 80GB HBM3")
'''


def test_metrics_from_markers_and_final_block(agent, workdir):
    launch(agent, "m1", python_job(METRICS_JOB), gpus=[0])
    state = ended(agent, "m1")
    assert state["status"] == "succeeded" and state["exit_code"] == 0
    assert state["metrics_count"] == 3

    result = agent.call("metrics", job_id="m1")
    assert [r["seq"] for r in result["records"]] == [0, 1, 2]
    assert [(r["source"], r["data"]) for r in result["records"]] == [
        ("marker", {"step": 1, "train_loss": 3.5}),
        ("marker", {"step": 3, "train_loss": "nan"}),
        ("summary", {"val_bpb": 0.9979, "num_steps": 953, "gpu": "NVIDIA H100 80GB HBM3"}),
    ]
    assert result["next_seq"] == 3 and not result["more"]
    assert all(state["started_at"] <= r["t"] <= state["ended_at"] + 1 for r in result["records"])

    page = agent.call("metrics", job_id="m1", from_seq=1, limit=1)
    assert [r["seq"] for r in page["records"]] == [1] and page["next_seq"] == 2 and page["more"]

    log = agent.call("tail", job_id="m1")["text"]
    assert '@arc {"step": 2, "train_loss": oops}' in log and "@arc [1, 2]" in log   # kept in the log, skipped


# What karpathy/autoresearch's train.py prints, byte for byte in its format: progress redrawn with \r and no newline
# until training ends, then the final block.
AUTORESEARCH_JOB = r"""
import os, sys, time
def progress(step, pct, loss, dt_ms, tok, mfu, remaining):
    print(f"\rstep {step:05d} ({pct:.1f}%) | loss: {loss:.6f} | lrm: 1.00 | dt: {dt_ms:.0f}ms | tok/sec: {tok:,} | "
          f"mfu: {mfu:.1f}% | epoch: 1 | remaining: {remaining:.0f}s    ", end="", flush=True)
print("Time budget: 300s")
progress(0, 0.0, 9.012345, 46000, 11398, 0.3, 300)
progress(1, 0.1, 8.5, 320, 1646117, 39.8, 300)
progress(2, 0.2, 8.1, 322, 1630000, 39.5, 300)  # this redraw's own \r ends the one before: step 1 is complete
while not os.path.exists(sys.argv[1]):      # the test reads the progress so far before the run goes on
    time.sleep(0.02)
sys.stdout.write("\rstep 00042 (14.0%) | loss: 3.210000 | lrm: 1.00 | dt: 320ms | tok/sec: 1,646,117 | mfu: 39.8% "
                 "| epoch: 1 | remaining: 258s    \rstep 00043 (14.1%) | loss: 3.200000 | lrm: 0.95 | dt: 321ms | "
                 "tok/sec: 1,640,000 | mfu: 39.6% | epoch: 2 | remaining: 257s    ")
sys.stdout.flush()
print()
print("Total training time: 300.0s")
print("---")
print("val_bpb:          0.997900")
print("mfu_percent:      39.80")
print("num_steps:        953")
"""


def test_unmodified_autoresearch_output_gives_progress_live_and_the_summary(agent, workdir):
    gate = workdir / "go-on"
    launch(agent, "a1", python_job(AUTORESEARCH_JOB) + [str(gate)], gpus=[0])
    live = wait_until(lambda: agent.call("metrics", job_id="a1")["records"][1:], what="the second progress line")
    assert [(r["source"], r["data"]) for r in live] == [
        ("progress", {"step": 1, "progress_percent": 0.1, "train_loss": 8.5, "lr_mult": 1.0, "dt_ms": 320,
                      "tok_per_s": 1646117, "mfu_percent": 39.8, "epoch": 1, "remaining_s": 300})]
    gate.touch()
    state = ended(agent, "a1")
    assert state["status"] == "succeeded"
    records = agent.call("metrics", job_id="a1")["records"]
    assert [r["source"] for r in records] == ["progress"] * 5 + ["summary"]
    assert [(r["data"]["step"], r["data"]["train_loss"], r["data"]["tok_per_s"]) for r in records[:5]] == [
        (0, 9.012345, 11398), (1, 8.5, 1646117), (2, 8.1, 1630000), (42, 3.21, 1646117), (43, 3.2, 1640000)]
    assert records[4]["data"] == {"step": 43, "progress_percent": 14.1, "train_loss": 3.2, "lr_mult": 0.95,
                                  "dt_ms": 321, "tok_per_s": 1640000, "mfu_percent": 39.6, "epoch": 2,
                                  "remaining_s": 257}
    assert records[5]["data"] == {"val_bpb": 0.9979, "mfu_percent": 39.8, "num_steps": 953}


def test_parser_reads_a_crlf_once_across_chunks_and_leaves_unknown_progress_fields_out():
    out = []
    parser = MetricsParser(lambda source, data: out.append((source, data)))
    for chunk in (b"---\r", b"\nval_bpb: 1.5\r\n",
                  b"step 00007 (50.0%) | loss: nan | dt: 3s | colour: blue | tok/sec: 12", b"\r"):
        parser.feed(chunk)
    parser.close()
    assert out == [("summary", {"val_bpb": 1.5}), ("progress", {"step": 7, "progress_percent": 50.0, "tok_per_s": 12})]


def test_a_failing_job_says_its_exit_code_in_its_reason(agent):
    launch(agent, "x1", python_job("import sys; print('giving up'); sys.exit(3)"), gpus=[0])
    state = ended(agent, "x1")
    assert (state["status"], state["exit_code"], state["signal"], state["reason"]) == ("failed", 3, None,
                                                                                      "exit code 3")


def test_parser_is_indifferent_to_chunking_and_skips_overlong_lines():
    out = []
    parser = MetricsParser(lambda source, data: out.append((source, data)))
    stream = (b'noise\rprogress 10%\r@arc {"a": 1}\n---\nval_bpb: 1.25\nnote: a: b\n\n---\nz: x\n'
              + b"y" * (MAX_LINE_BYTES * 3) + b'\n@arc {"b": 2}\n---\nlast: 7')
    for i in range(0, len(stream), 1000):
        parser.feed(stream[i:i + 1000])
    parser.close()
    assert out == [("marker", {"a": 1}), ("summary", {"val_bpb": 1.25, "note": "a: b"}), ("summary", {"z": "x"}),
                   ("marker", {"b": 2}), ("summary", {"last": 7})]


def test_job_environment_cwd_and_argv(agent, workdir):
    (workdir / "code" / "abc").mkdir(parents=True)
    show = python_job('''
        import json, os, sys
        keys = ["CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "ARC_JOB_ID", "ARC_CACHE_DIR", "ARC_GPU_MODEL", "MINE",
                "GOMP_SPINCOUNT"]
        print("@arc " + json.dumps({"env": {k: os.environ.get(k) for k in keys}, "cwd": os.getcwd(),
                                    "args": sys.argv[1:]}))
    ''') + ["$HOME; ls", "*"]
    launch(agent, "e1", show, gpus=[1], cwd="code/abc", env={"MINE": "x y", "CUDA_VISIBLE_DEVICES": "0,1"})
    assert ended(agent, "e1")["status"] == "succeeded"
    data = agent.call("metrics", job_id="e1")["records"][0]["data"]
    assert data["env"] == {"CUDA_VISIBLE_DEVICES": "", "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "ARC_JOB_ID": "e1",
                           "ARC_CACHE_DIR": str((workdir / "cache").resolve()), "ARC_GPU_MODEL": "NVIDIA H200",
                           "MINE": "x y", "GOMP_SPINCOUNT": "1000"}
    assert data["cwd"] == str((workdir / "code" / "abc").resolve())
    assert data["args"] == ["$HOME; ls", "*"]       # no shell: nothing expanded

    launch(agent, "e2", show, cwd="code/abc", env={"GOMP_SPINCOUNT": "300000"})      # CPU-only job
    state = ended(agent, "e2")
    assert state["cpu_slot"] in (0, 1) and state["gpus"] == []
    env = agent.call("metrics", job_id="e2")["records"][0]["data"]["env"]
    assert (env["ARC_GPU_MODEL"], env["GOMP_SPINCOUNT"]) == ("", "300000")     # the job's own setting wins


def test_a_job_that_cannot_start_fails_with_the_reason(agent, workdir):
    launch(agent, "n1", ["no-such-program-arc"], gpus=[0])
    state = ended(agent, "n1")
    assert (state["status"], state["pid"], state["exit_code"]) == ("failed", None, None)
    assert "no-such-program-arc" in state["reason"] and "PATH" in state["reason"]
    (workdir / "not-executable").write_text("echo hi\n")
    launch(agent, "n2", [str(workdir / "not-executable")], gpus=[0])
    assert "Permission denied" in ended(agent, "n2")["reason"]
    assert agent.call("claims")["claims"] == []


def test_launch_is_idempotent_on_its_token(agent, workdir):
    first = launch(agent, "i1", ["sleep", "30"], gpus=[0], launch_token="tok-A")
    again = launch(agent, "i1", ["sleep", "30"], gpus=[0], launch_token="tok-A")
    assert again["supervisor_pid"] == first["supervisor_pid"]
    assert again["created_at"] == first["created_at"]
    with pytest.raises(AgentRefusal) as e:
        launch(agent, "i1", ["sleep", "30"], gpus=[0], launch_token="tok-B")
    assert e.value.code == "job_exists"
    running = agent.event("job_started", "i1")[1]["state"]
    assert [c["job_id"] for c in agent.call("claims")["claims"]] == ["i1"]
    assert sum(e["op"] == "acquire" for e in read_ledger(workdir / "claims.log")) == 1
    assert len([p for p in os.listdir("/proc") if p.isdigit() and _cmdline(p) == ["sleep", "30"]
                and _pgrp(p) == running["pid"]]) == 1
    agent.call("cancel", job_id="i1")
    assert ended(agent, "i1")["status"] == "cancelled"


def test_a_launch_revoked_through_another_connection_is_refused_when_it_arrives(workdir):
    # old: the serve process of a connection the controller gave up on; new: the one it reconnected through
    with AgentProcess(workdir) as old, AgentProcess(workdir) as new:
        assert new.call("revoke_launch", job_id="r1", launch_token="tok-1") == {"revoked": True, "state": None}
        with pytest.raises(AgentRefusal) as e:
            launch(old, "r1", ["sleep", "30"], gpus=[0], launch_token="tok-1")
        assert e.value.code == "launch_revoked"
        assert new.call("claims")["claims"] == []
        assert new.call("status", job_ids=["r1"])["unknown"] == ["r1"]
        # Queued again, the job may land on this host again, under its new token.
        launch(new, "r1", ["true"], gpus=[0], launch_token="tok-2")
        assert ended(new, "r1")["status"] == "succeeded"
        answer = new.call("revoke_launch", job_id="r1", launch_token="tok-2")
        assert answer["revoked"] is False and answer["state"]["launch_token"] == "tok-2"
    assert [e["job_id"] for e in read_ledger(workdir / "claims.log") if e["op"] == "acquire"] == ["r1"]
    assert os.listdir(workdir / "jobs") == ["r1"]       # job directories only: the revocations live beside it


def test_revoking_and_launching_at_once_have_exactly_one_winner(workdir):
    with AgentProcess(workdir) as old, AgentProcess(workdir) as new:
        for i in range(12):
            job_id, outcome = f"race{i}", {}

            def launching() -> None:
                try:
                    outcome["launched"] = launch(old, job_id, ["true"], launch_token=f"t{i}")
                except AgentRefusal as e:
                    outcome["refused"] = e.code
            racer = threading.Thread(target=launching)
            racer.start()
            answer = new.call("revoke_launch", job_id=job_id, launch_token=f"t{i}")
            racer.join(30)
            assert ("launched" in outcome) == (not answer["revoked"]), (outcome, answer)
            if answer["revoked"]:
                assert outcome["refused"] == "launch_revoked"
            else:
                assert ended(old, job_id)["status"] == "succeeded"


def test_cancel_terms_then_kills_after_grace_and_is_idempotent(agent, workdir):
    launch(agent, "c1", ["sleep", "30"])
    agent.event("job_started", "c1")
    inventory = agent.call("inventory")
    assert inventory["cpu_slots_used"] == 1 and [c["job_id"] for c in inventory["cpu_claims"]] == ["c1"]
    assert all(g["claimed_by"] is None for g in inventory["gpus"])
    agent.call("cancel", job_id="c1")
    state = ended(agent, "c1")
    assert (state["status"], state["reason"], state["signal"]) == ("cancelled", "cancelled", 15)
    assert agent.call("cancel", job_id="c1")["status"] == "cancelled"     # again: no error, nothing changes

    stubborn = python_job('''
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ready", flush=True)
        time.sleep(30)
    ''')
    launch(agent, "c2", stubborn, kill_grace_s=0.3)
    wait_until(lambda: "ready" in agent.call("tail", job_id="c2")["text"], what="the job to ignore SIGTERM")
    agent.call("cancel", job_id="c2")
    state = ended(agent, "c2")
    assert (state["status"], state["signal"]) == ("cancelled", 9)
    assert not agent.call("claims")["claims"]


def test_time_limit_kills_the_job_with_its_children(agent, workdir):
    family = python_job('''
        import json, subprocess, time
        child = subprocess.Popen(["sh", "-c", "sleep 60 & echo $!; exec sleep 61"], stdout=subprocess.PIPE, text=True)
        grandchild = int(child.stdout.readline())
        escapee = subprocess.Popen(["setsid", "sleep", "62"])     # its own session: out of the process group
        print("@arc " + json.dumps({"child": child.pid, "grandchild": grandchild, "escapee": escapee.pid}),
              flush=True)
        time.sleep(60)
    ''')
    launch(agent, "t1", family, gpus=[0], time_limit_s=1.5, kill_grace_s=0.5)
    pids = wait_until(lambda: agent.call("metrics", job_id="t1")["records"], what="the family's pids")[0]["data"]
    assert not any(process_gone(p) for p in pids.values())
    state = ended(agent, "t1")
    assert (state["status"], state["reason"], state["signal"]) == ("timeout", "time limit 1.5s", 15)
    assert process_gone(state["pid"])
    gone = {name: process_gone(pid) for name, pid in pids.items()}
    assert gone == {"child": True, "grandchild": True, "escapee": True}
    assert not agent.call("claims")["claims"]


def test_tail_last_lines_and_byte_offsets(agent, workdir):
    launch(agent, "l1", python_job('for i in range(1000): print(f"line {i}")'))
    assert ended(agent, "l1")["status"] == "succeeded"
    content = (workdir / "jobs" / "l1" / "output.log").read_bytes()

    last = agent.call("tail", job_id="l1", lines=5)
    assert last["text"] == "".join(f"line {i}\n" for i in range(995, 1000))
    assert last["next_offset"] == last["size"] == len(content) and last["truncated"]
    assert last["offset"] == len(content) - len(last["text"])

    pieces, offset = [], 0
    while True:
        part = agent.call("tail", job_id="l1", offset=offset, max_bytes=100)
        assert part["offset"] == offset and len(part["text"]) <= 100
        assert part["text"].endswith("\n")              # pages end on a line
        pieces.append(part["text"])
        offset = part["next_offset"]
        if not part["truncated"]:
            break
    assert "".join(pieces).encode() == content and offset == len(content)

    capped = agent.call("tail", job_id="l1", lines=1000, max_bytes=50)
    assert capped["text"].startswith("line ") and len(capped["text"]) <= 50
    with pytest.raises(AgentRefusal) as e:
        agent.call("tail", job_id="l1", offset=len(content) + 1)
    assert e.value.code == "bad_request" and "past the end" in e.value.message


def test_huge_output_and_long_lines_in_bounded_memory(agent, workdir):
    flood = python_job('''
        import sys, time
        out = sys.stdout.buffer
        for i in range(60_000):
            out.write(b"%06d " % i + b"x" * 92 + b"\\n")        # 6 MB of lines
        out.write(b"---\\nval_bpb: 1.5\\n")
        out.write(b"y" * (24 << 20))                             # 24 MB with no newline
        out.write(b'\\n@arc {"after": 1}\\n')
        out.flush()
        time.sleep(1.0)                                          # the test samples the supervisor here
        out.write(b"z" * (1 << 20))                              # the output ends inside a 1 MB line
    ''')
    launch(agent, "h1", flood, time_limit_s=60)
    running = agent.event("job_started", "h1")[1]["state"]
    wait_until(lambda: agent.call("metrics", job_id="h1")["records"][1:], what="the marker after the long line")
    peak_kb = _status_kb(running["supervisor_pid"], "VmHWM")
    state = ended(agent, "h1", timeout=60)
    assert state["status"] == "succeeded"
    expected = 60_000 * 100 + len(b"---\nval_bpb: 1.5\n") + (24 << 20) + len(b'\n@arc {"after": 1}\n') + (1 << 20)
    assert state["log_bytes"] == os.path.getsize(workdir / "jobs" / "h1" / "output.log") == expected
    records = agent.call("metrics", job_id="h1")["records"]
    assert [r["data"] for r in records] == [{"val_bpb": 1.5}, {"after": 1}]
    # The supervisor is a fork of the serve process: its peak may exceed the serve's size by buffers, not by lines.
    assert peak_kb - _status_kb(agent.proc.pid, "VmRSS") < 16 * 1024


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def _cmdline(pid: str) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    except OSError:
        return []


def _pgrp(pid: str) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2])
    except OSError:
        return None

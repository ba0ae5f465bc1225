"""Failure triage on real failures: each case is a real process run by the real host agent (python -m gpu_agent),
whose job state (status, exit code, signal, reason) and output.log are what triage reads in production."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mcp_server.research.triage import triage

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
ABSURD_LR = ["matrix_lr=1000", "embedding_lr=1000", "unembedding_lr=1000", "scalar_lr=1000"]

CASES = {
    "oom": [PY, "-c", "import resource; resource.setrlimit(resource.RLIMIT_AS, (512 << 20, 512 << 20)); "
                      "print('loading', flush=True); data = bytearray(4 << 30)"],
    "syntax": [PY, "broken.py"],
    "import": [PY, "-c", "import arc_module_that_does_not_exist"],
    "disk_full": [PY, "-c", "f = open('/dev/full', 'w'); f.write('x' * 100000); f.close()"],
    "timeout": [PY, "-c", "import time; print('step 1', flush=True); time.sleep(60)"],
    "killed": [PY, "-c", "import os, signal; print('working', flush=True); os.kill(os.getpid(), signal.SIGKILL)"],
    "other": [PY, "-c", "raise ValueError('tokenizer file is corrupt')"],
    "cancel": [PY, "-c", "import time; time.sleep(60)"],
}


def agent(workdir: Path, *args: str) -> dict:
    out = subprocess.run([PY, "-m", "gpu_agent", "--workdir", str(workdir), *args], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    response = json.loads(out.stdout)
    assert response["ok"], response
    return response["result"]


def launch(root: Path, name: str, argv: list[str], time_limit: float = 120.0) -> Path:
    workdir = root / name   # one agent workdir per case: each gets its own CPU slot
    agent(workdir, "launch", "--job-id", name, "--time-limit", str(time_limit), "--grace", "1", "--cwd",
          str(root), "--", *argv)
    return workdir


def wait(workdir: Path, name: str, deadline: float) -> dict:
    while time.monotonic() < deadline:
        state = agent(workdir, "status", name)["jobs"][0]
        if state["status"] in ("succeeded", "failed", "cancelled", "timeout", "lost"):
            return state
        time.sleep(0.2)
    raise AssertionError(f"{name} did not end in time")


@pytest.fixture(scope="module")
def failures(tmp_path_factory) -> dict[str, tuple[dict, str]]:
    """Every case run to its end in parallel: {name: (job state, log)}."""
    root = tmp_path_factory.mktemp("triage")
    (root / "broken.py").write_text("import os\n\ndef train(:\n    pass\n")
    data = root / "data"
    subprocess.run([PY, "-m", "trainer.prepare", "--out", str(data), "--max-bytes", "100000", "--vocab-size", "300",
                    "--val-fraction", "0.2"], cwd=REPO, check=True, capture_output=True, timeout=120)
    cases = dict(CASES, nan=[PY, "-m", "trainer.train", "--data", str(data), "--preset", "cpu-tiny",
                             "--max-steps", "40", "--set", *ABSURD_LR])
    workdirs = {}
    for name, argv in cases.items():
        workdirs[name] = launch(root, name, argv, time_limit=1.0 if name == "timeout" else 240.0)
    agent(workdirs["cancel"], "cancel", "cancel", "--wait", "10")
    deadline = time.monotonic() + 240
    results = {}
    for name, workdir in workdirs.items():
        state = wait(workdir, name, deadline)
        results[name] = (state, (workdir / "jobs" / name / "output.log").read_text(errors="replace"))
    return results


def classify(failures, name):
    state, log = failures[name]
    return triage(state["status"], state["exit_code"], state["signal"], state["reason"], log)


def test_out_of_memory(failures):
    result = classify(failures, "oom")
    assert result.category == "oom" and result.summary == "out of host memory"
    assert result.evidence == "MemoryError" and "device_batch_size" in result.remedy


def test_syntax_error_in_the_code(failures):
    result = classify(failures, "syntax")
    assert result.category == "code_error" and result.summary == "SyntaxError at broken.py:3: the code did not start"
    assert result.evidence.startswith("SyntaxError") and "fix the syntax" in result.remedy


def test_import_error(failures):
    result = classify(failures, "import")
    assert result.category == "code_error" and result.summary.startswith("ModuleNotFoundError")
    assert result.evidence == "ModuleNotFoundError: No module named 'arc_module_that_does_not_exist'"
    assert "install the missing module" in result.remedy


def test_disk_full(failures):
    result = classify(failures, "disk_full")
    assert result.category == "disk_full" and "No space left on device" in result.evidence


def test_killed_at_the_time_limit(failures):
    state, _ = failures["timeout"]
    assert state["status"] == "timeout"
    result = classify(failures, "timeout")
    assert result.category == "time_limit" and result.summary == f"killed at the time limit ({state['reason']})"
    assert "time_limit_s" in result.remedy


def test_diverged_trainer(failures):
    state, log = failures["nan"]
    assert state["status"] == "failed" and state["exit_code"] == 1, log[-2000:]
    result = classify(failures, "nan")
    assert result.category == "nan" and result.evidence.startswith("FAIL step ")
    assert "learning rates" in result.remedy


def test_sigkill_without_a_cause_in_the_log(failures):
    state, _ = failures["killed"]
    assert state["signal"] == 9
    result = classify(failures, "killed")
    assert result.category == "killed" and result.summary.startswith("killed by SIGKILL (with no other cause")


def test_unknown_failure_shows_exit_and_last_error_line(failures):
    result = classify(failures, "other")
    assert result.category == "failed"
    assert result.summary == "failed (exit 1): ValueError: tokenizer file is corrupt"


def test_cancelled(failures):
    state, _ = failures["cancel"]
    assert state["status"] == "cancelled"
    assert classify(failures, "cancel").category == "cancelled"


def test_host_lost_and_oom_hints():
    lost = triage("lost", None, None, "gpu3 unreachable for more than 600 s", "")
    assert lost.category == "host_lost" and lost.summary == "host lost: gpu3 unreachable for more than 600 s"
    cuda = triage("failed", 1, None, None, "step 3\nFAIL out of GPU memory (CUDA out of memory. Tried to allocate "
                                           "2.00 GiB); set device_batch_size lower\n")
    assert cuda.category == "oom" and cuda.summary == "out of GPU memory"
    kernel = triage("failed", None, 9, "killed by SIGKILL", "Out of memory: Killed process 4242 (python)")
    assert kernel.category == "oom"


def test_divergence_without_the_trainer_verdict_line():
    log = '@arc {"step": 10, "train_loss": 3.2}\n@arc {"step": 20, "train_loss": NaN}\nTraceback ...\nRuntimeError: x\n'
    assert triage("failed", 1, None, None, log).category == "nan"
    config_line = '@arc {"config": {"logit_softcap": 15.0, "loss_scale": 1, "attention": "auto", "nan_check": 1}}\n'
    assert triage("failed", 3, None, None, config_line + "boom\n").category == "failed"

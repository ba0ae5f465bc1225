"""Warm starts: a Python job handed to an interpreter that imported the host's preload modules ahead of it.

Real serve processes and real jobs; the preload is standard-library modules here, and torch in the trainer's case.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from gpu_agent.client import AgentProcess
from tests.agent_support import SIMULATED, ended, kill_jobs, launch, make_workdir, process_gone, wait_until

PRELOADED = "xml.dom.minidom"       # not imported by a bare interpreter, so its presence proves the preload
REPORT = f"""
import json, os, sys
print("@arc " + json.dumps({{"preloaded": {PRELOADED!r} in sys.modules, "argv": sys.argv, "path0": sys.path[0],
                            "cwd": os.getcwd(), "job": os.environ["ARC_JOB_ID"], "name": __name__,
                            "stdin": sys.stdin.read(), "executable": sys.executable, "prefix": sys.prefix,
                            "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
                            "globals": sorted(globals()), "builtins": type(__builtins__).__name__,
                            "orig_argv": sys.orig_argv}}))
sys.exit(int(sys.argv[-1]))
"""


@pytest.fixture
def marker() -> str:
    """A preload module that does not exist (skipped by the warm child) and names this test's warm children."""
    return f"arc_warm_test_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def warm_agent(tmp_path: Path, marker: str):
    workdir = make_workdir(tmp_path / "agent", {"simulate_gpus": SIMULATED, "cpu_slots": 2,
                                                "preload": [PRELOADED, marker]})
    code = tmp_path / "agent" / "code"
    code.mkdir()
    (code / "report.py").write_text(REPORT)
    (code / "reportmod.py").write_text(REPORT)
    with AgentProcess(workdir) as agent:
        yield agent, workdir
    kill_jobs(workdir)


def warm_children(marker: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker.encode() in argv and any(a.endswith(b"warm_child.py") for a in argv) and not process_gone(int(pid)):
            found.append(int(pid))
    return found


def run(agent: AgentProcess, workdir: Path, job_id: str, argv: list[str], **params) -> tuple[dict, dict, str]:
    """Launch, wait for the end; the job's state, its one report and its supervisor's notes."""
    launch(agent, job_id, argv, cwd="code", **params)
    state = ended(agent, job_id)
    records = agent.call("metrics", job_id=job_id)["records"]
    notes = workdir / "jobs" / job_id / "supervisor.log"
    return state, records[0]["data"] if records else {}, notes.read_text() if notes.exists() else ""


def test_the_next_python_job_starts_warm_and_sees_what_a_cold_start_would(warm_agent, marker):
    agent, workdir = warm_agent
    script = [sys.executable, "report.py", "3"]
    cold_state, cold, cold_notes = run(agent, workdir, "cold", script, gpus=[0])
    assert (cold_state["status"], cold_state["exit_code"], cold["preloaded"]) == ("failed", 3, False)
    assert "warm" not in cold_notes
    assert wait_until(lambda: warm_children(marker), what="a warm interpreter for GPU 0")

    warm_state, warm, warm_notes = run(agent, workdir, "warm", script, gpus=[0])
    assert f"started warm: {PRELOADED}, {marker} imported ahead" in warm_notes
    assert (warm_state["status"], warm_state["exit_code"], warm["preloaded"]) == ("failed", 3, True)
    assert {**warm, "preloaded": False, "job": "cold"} == cold      # argv, sys.path[0], cwd, __name__, empty stdin

    # Another environment (beyond the per-job ARC_* names) is another key: an ordinary start, then warm again.
    # This one is a venv's interpreter, found on the job's PATH: the warm one must be in that venv too.
    venv = workdir / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True)
    module, env = ["python", "-m", "reportmod", "0"], {"PATH": f"{venv}/bin:{os.environ['PATH']}"}
    _, cold_m, notes = run(agent, workdir, "cold-m", module, gpus=[1], env=env)
    assert not cold_m["preloaded"] and "warm" not in notes
    state, warm_m, notes = run(agent, workdir, "warm-m", module, gpus=[1], env=env)
    assert state["status"] == "succeeded" and "started warm" in notes and warm_m["preloaded"]
    assert {**warm_m, "preloaded": False, "job": "cold-m"} == cold_m
    assert cold_m["argv"] == [str(workdir / "code" / "reportmod.py"), "0"] and cold_m["name"] == "__main__"
    assert cold_m["prefix"] == str(venv)

    # Not a `python -m` / `python script.py` command: never warm.
    state, _, notes = run(agent, workdir, "dash-c", [sys.executable, "-c", "pass"], gpus=[0])
    assert state["status"] == "succeeded" and "warm" not in notes


def test_a_warm_job_is_cancelled_like_any_other_and_nothing_outlives_the_serve_process(warm_agent, marker, tmp_path):
    agent, workdir = warm_agent
    (workdir / "code" / "sleeper.py").write_text("import time\nprint('@arc {\"up\": 1}', flush=True)\n"
                                                 "time.sleep(120)\n")
    run(agent, workdir, "first", [sys.executable, "report.py", "0"], gpus=[0])
    wait_until(lambda: warm_children(marker), what="a warm interpreter")
    launch(agent, "sleeper", [sys.executable, "sleeper.py"], gpus=[0], cwd="code")
    wait_until(lambda: agent.call("metrics", job_id="sleeper")["records"], what="the warm job to run")
    pid = agent.call("status", job_ids=["sleeper"])["jobs"][0]["pid"]
    agent.call("cancel", job_id="sleeper")
    assert ended(agent, "sleeper")["status"] == "cancelled"
    assert process_gone(pid)
    assert "started warm" in (workdir / "jobs" / "sleeper" / "supervisor.log").read_text()
    assert agent.call("claims")["claims"] == []

    wait_until(lambda: warm_children(marker), what="the next warm interpreter")
    assert agent.close() == 0
    wait_until(lambda: not warm_children(marker), what="the warm interpreters to exit with their serve process")


def test_a_failing_preload_still_runs_the_job_the_ordinary_way(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "broken_preload.py").write_text("raise RuntimeError('this module cannot be imported')\n")
    workdir = make_workdir(tmp_path / "agent", {"cpu_slots": 2, "preload": ["broken_preload"]})
    (workdir / "code").mkdir()
    (workdir / "code" / "report.py").write_text(REPORT)
    env = {"PYTHONPATH": str(lib)}
    with AgentProcess(workdir) as agent:
        first, _, _ = run(agent, workdir, "first", [sys.executable, "report.py", "0"], env=env)
        second, report, notes = run(agent, workdir, "second", [sys.executable, "report.py", "0"], env=env)
    assert first["status"] == second["status"] == "succeeded" and report["job"] == "second"
    assert not report["preloaded"] and report["argv"] == ["report.py", "0"]
    assert "warm start failed, the job was exec()ed the ordinary way: importing broken_preload failed: " \
           "RuntimeError: this module cannot be imported" in notes
    kill_jobs(workdir)


def test_a_preloaded_module_upgraded_meanwhile_is_not_used(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    # Every import of the module leaves a file named by the importing process's pid.
    (lib / "versioned.py").write_text(f"import os\nopen(f'{lib}/imported-{{os.getpid()}}', 'w').close()\n"
                                      "VERSION = 1\n")
    workdir = make_workdir(tmp_path / "agent", {"cpu_slots": 2, "preload": ["versioned"]})
    (workdir / "code").mkdir()
    (workdir / "code" / "job.py").write_text("import versioned\nprint('@arc {\"version\": %d}' % versioned.VERSION)\n")
    env = {"PYTHONPATH": str(lib)}
    with AgentProcess(workdir) as agent:
        first, _, _ = run(agent, workdir, "first", [sys.executable, "job.py"], env=env)
        wait_until(lambda: {p.name for p in lib.glob("imported-*")} - {f"imported-{first['pid']}"},
                   what="the warm interpreter to import the module")
        (lib / "versioned.py").write_text("VERSION = 2  # upgraded while a warm interpreter held version 1\n")
        state, report, notes = run(agent, workdir, "second", [sys.executable, "job.py"], env=env)
    assert state["status"] == "succeeded" and report["version"] == 2
    assert f"warm start skipped, the job was exec()ed the ordinary way: {lib / 'versioned.py'} changed" in notes
    kill_jobs(workdir)


def test_a_symlinked_script_puts_its_real_folder_first_on_sys_path_warm_too(warm_agent):
    agent, workdir = warm_agent
    (workdir / "code" / "real").mkdir()
    (workdir / "code" / "real" / "report.py").write_text(REPORT)
    (workdir / "code" / "link.py").symlink_to("real/report.py")
    reports = {}
    for job_id in ("cold", "warm"):
        _, reports[job_id], notes = run(agent, workdir, job_id, [sys.executable, "link.py", "0"], gpus=[0])
    assert "started warm" in notes
    assert {**reports["warm"], "preloaded": False, "job": "cold"} == reports["cold"]
    assert reports["cold"]["path0"] == str((workdir / "code" / "real").resolve())


def test_pythonsafepath_keeps_the_job_folder_off_sys_path_warm_too(warm_agent):
    agent, workdir = warm_agent
    reports = {}
    env = {"PYTHONSAFEPATH": "1", "PYTHONPATH": "/nonexistent"}     # so sys.path[0] shows whether the folder came first
    for job_id in ("cold", "warm"):
        _, reports[job_id], notes = run(agent, workdir, job_id, [sys.executable, "report.py", "0"], gpus=[0],
                                        env=env)
    assert "started warm" in notes and reports["warm"]["preloaded"]
    assert {**reports["warm"], "preloaded": False, "job": "cold"} == reports["cold"]
    assert reports["cold"]["path0"] == "/nonexistent"


@pytest.mark.parametrize("local", ["shadowed.py", "shadowed/__init__.py"])
def test_a_job_whose_folder_shadows_a_preloaded_module_starts_the_ordinary_way(tmp_path, local):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "shadowed.py").write_text("WHERE = 'installed'\n")
    workdir = make_workdir(tmp_path / "agent", {"cpu_slots": 2, "preload": ["shadowed"]})
    code = workdir / "code"
    (code / local).parent.mkdir(parents=True, exist_ok=True)
    (code / local).write_text("WHERE = 'the job folder'\n")       # an ordinary start imports this one first
    (code / "job.py").write_text("import shadowed\nprint('@arc {\"where\": \"%s\"}' % shadowed.WHERE)\n")
    env = {"PYTHONPATH": str(lib)}
    with AgentProcess(workdir) as agent:
        _, cold, _ = run(agent, workdir, "first", [sys.executable, "job.py"], env=env)
        state, warm, notes = run(agent, workdir, "second", [sys.executable, "job.py"], env=env)
    assert state["status"] == "succeeded" and cold == warm == {"where": "the job folder"}
    assert f"warm start skipped, the job was exec()ed the ordinary way: {code / local.split('/')[0]} would shadow " \
           "the module shadowed, imported ahead" in notes
    kill_jobs(workdir)


@pytest.mark.parametrize("preload", ["torch", ["torch", 1], ["bad-name"]])
def test_a_bad_preload_setting_is_refused(tmp_path, preload):
    workdir = make_workdir(tmp_path / "agent", {"preload": preload})
    with AgentProcess(workdir) as agent:
        error = agent.call("hello")["config_error"]
    assert '"preload" must be null or a list of module names' in error


def test_no_preload_by_default_without_real_gpus(tmp_path):
    workdir = make_workdir(tmp_path / "agent", {"simulate_gpus": SIMULATED})
    (workdir / "code").mkdir()
    (workdir / "code" / "report.py").write_text(REPORT.replace(PRELOADED, "torch"))
    with AgentProcess(workdir) as agent:
        for job_id in ("one", "two"):
            _, report, notes = run(agent, workdir, job_id, [sys.executable, "report.py", "0"], gpus=[0])
            assert not report["preloaded"] and "warm" not in notes


def test_the_trainer_starts_warm_with_torch_imported_and_trains_the_same(tmp_path):
    repo = Path(__file__).resolve().parent.parent
    data = tmp_path / "data"
    prepared = subprocess.run([sys.executable, "-m", "trainer.prepare", "--out", str(data), "--max-bytes", "300000",
                               "--vocab-size", "300"], cwd=repo, capture_output=True, text=True, timeout=120)
    assert prepared.returncode == 0, prepared.stderr
    workdir = make_workdir(tmp_path / "agent", {"cpu_slots": 1, "preload": ["torch"]})
    argv = [sys.executable, "-m", "trainer.train", "--data", str(data), "--preset", "cpu-tiny", "--max-steps", "4"]
    summaries, notes = [], []
    with AgentProcess(workdir) as agent:
        for job_id in ("cold", "warm"):
            launch(agent, job_id, argv, cwd=str(repo), time_limit_s=300)
            assert ended(agent, job_id, timeout=300)["status"] == "succeeded"
            log = agent.call("tail", job_id=job_id, lines=40)["text"]
            summaries.append(dict(re.findall(r"^(val_bpb|num_steps|warm_start):\s+(\S+)$", log, re.M)))
            startup = json.loads(next(line for line in log.splitlines() if '"startup_s"' in line)[5:])
            notes.append((workdir / "jobs" / job_id / "supervisor.log").read_text()
                         if (workdir / "jobs" / job_id / "supervisor.log").exists() else "")
            assert set(startup["startup_s"]) >= {"imports", "model"}
    assert "warm" not in notes[0] and "started warm: torch imported ahead" in notes[1]
    assert (summaries[0].pop("warm_start"), summaries[1].pop("warm_start")) == ("0", "1")
    assert summaries[0] == summaries[1] and summaries[0]["num_steps"] == "4"     # same seed, same val_bpb
    kill_jobs(workdir)


def test_a_warm_interpreter_that_dies_is_replaced_by_an_ordinary_start(warm_agent, marker):
    agent, workdir = warm_agent
    script = [sys.executable, "report.py", "0"]
    run(agent, workdir, "first", script, gpus=[0])
    [pid] = wait_until(lambda: warm_children(marker), what="a warm interpreter")
    os.kill(pid, signal.SIGKILL)                 # dead before the launch
    wait_until(lambda: process_gone(pid), what="the warm interpreter to die")
    state, report, notes = run(agent, workdir, "second", script, gpus=[0])
    assert state["status"] == "succeeded" and report["job"] == "second" and not report["preloaded"]
    assert "warm start failed, started the ordinary way: the warm interpreter exited (signal 9) before its job" \
        in notes

    # Dead after the hand-over but before it read its job (stopped first, so the order is certain): the job
    # never ran, so it starts again the ordinary way.
    [pid] = wait_until(lambda: warm_children(marker), what="the next warm interpreter")
    os.kill(pid, signal.SIGSTOP)
    launch(agent, "third", script, gpus=[0], cwd="code")
    agent.event("job_started", "third")
    os.kill(pid, signal.SIGKILL)
    state = ended(agent, "third")
    [report] = [r["data"] for r in agent.call("metrics", job_id="third")["records"]]
    assert state["status"] == "succeeded" and report["job"] == "third" and not report["preloaded"]
    notes = (workdir / "jobs" / "third" / "supervisor.log").read_text()
    assert "the warm interpreter ended (signal 9) before it took the job" in notes


@pytest.mark.parametrize("how", [["missing.py"], ["-m", "missing"]], ids=["script", "module"])
def test_a_job_that_cannot_start_fails_as_it_would_after_a_cold_start(warm_agent, how):
    agent, workdir = warm_agent
    outcomes = []
    for job_id in ("cold", "warm"):
        state, _, notes = run(agent, workdir, job_id, [sys.executable, *how], gpus=[0])
        outcomes.append((state["status"], state["exit_code"], (workdir / "jobs" / job_id / "output.log").read_text()))
    assert outcomes[0] == outcomes[1] and outcomes[0][1] == (2 if how == ["missing.py"] else 1), outcomes
    assert "can't open file" in outcomes[0][2] or "No module named missing" in outcomes[0][2]
    assert "warm start skipped" in notes if how == ["missing.py"] else "started warm" in notes


@pytest.mark.parametrize("how", [["boom.py"], ["-m", "boom"]], ids=["script", "module"])
@pytest.mark.parametrize("source, where", [
    ("def fail():\n    raise ValueError('boom')\n\n\nfail()\n", 'boom.py", line 5, in <module>\n'),
    ("x = 1\ndef broken(:\n    pass\n", 'boom.py", line 2\n    def broken(:\n'),
], ids=["exception", "syntax-error"])
def test_an_uncaught_exception_reads_as_it_would_after_a_cold_start(warm_agent, how, source, where):
    agent, workdir = warm_agent
    (workdir / "code" / "boom.py").write_text(source)
    logs = []
    for job_id in ("cold", "warm"):
        state, _, notes = run(agent, workdir, job_id, [sys.executable, *how], gpus=[0])
        assert (state["status"], state["exit_code"]) == ("failed", 1)
        logs.append((workdir / "jobs" / job_id / "output.log").read_text())
    assert "started warm" in notes
    assert logs[0] == logs[1] and where in logs[0], logs
    # a traceback unless a script's own syntax is wrong (that is reported before it runs, with no frames)
    assert logs[0].startswith("Traceback") == (how == ["-m", "boom"] or "ValueError" in logs[0])

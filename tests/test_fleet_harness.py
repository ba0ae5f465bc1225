"""The netns harness cleans up after itself, and after runs that were killed before they could."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.harness.netns import FAMILY, STATE_DIR, _our_links, _our_namespaces, _running, cleanup_stale

REPO = Path(__file__).resolve().parent.parent

BUILD_AND_HANG = """
import sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
from tests.harness import NetnsFleet
fleet = NetnsFleet.create(Path({root!r}), 2)
print(fleet.tag, fleet.sshd_pid("h1"), flush=True)
time.sleep(600)
"""


def names_of(tag: str) -> list[str]:
    return [n for n in _our_namespaces() + _our_links() if n.startswith(FAMILY + tag)]


def test_a_killed_run_is_cleaned_up_by_the_next(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", BUILD_AND_HANG.format(repo=str(REPO), root=str(tmp_path))],
                            stdout=subprocess.PIPE, text=True)
    try:
        tag, sshd = proc.stdout.readline().split()
        assert len(names_of(tag)) == 2 + 3          # two namespaces; two veths and a bridge
        assert json.loads((STATE_DIR / f"{tag}.json").read_text())["pid"] == proc.pid
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert names_of(tag) and _running(int(sshd))     # a SIGKILLed run leaves everything behind
    cleanup_stale()
    assert names_of(tag) == []
    assert not (STATE_DIR / f"{tag}.json").exists()
    deadline = time.monotonic() + 5
    while _running(int(sshd)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _running(int(sshd))                   # its sshd was in the namespace and is gone too



def test_live_runs_are_left_alone(netns_factory):
    fleet = netns_factory(1)
    cleanup_stale()
    assert len(names_of(fleet.tag)) == 1 + 2
    assert fleet.sshd_pid("h1") is not None and os.path.exists(f"/proc/{fleet.sshd_pid('h1')}")

"""Agent sessions over real SSH and locally: requests, events, concurrency, loss and reconnection."""
from __future__ import annotations

import shutil
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from mcp_server.fleet import AgentError, Fleet, HostUnavailable, RequestTimeout
from mcp_server.fleet.hosts_config import load_hosts
from mcp_server.fleet.session import AGENT_DIR
from tests.harness import local_host_entry, write_hosts_yaml


class Recorder:
    """Collects on_event/on_state callbacks and waits for them."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []
        self.states: list[tuple[str, bool, str | None]] = []
        self.cond = threading.Condition()

    def on_event(self, host: str, event: dict) -> None:
        with self.cond:
            self.events.append((host, event))
            self.cond.notify_all()

    def on_state(self, host: str, connected: bool, error: str | None) -> None:
        with self.cond:
            self.states.append((host, connected, error))
            self.cond.notify_all()

    def wait_for(self, predicate, timeout: float):
        with self.cond:
            assert self.cond.wait_for(predicate, timeout), f"timed out; states={self.states} events={self.events}"


def wait_until(predicate, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


@pytest.fixture(scope="module")
def shared(netns_hosts):
    rec = Recorder()
    fleet = Fleet(netns_hosts.hosts_yaml, on_event=rec.on_event, on_state=rec.on_state).start(wait=60)
    yield fleet, rec
    fleet.close()


def test_sessions_come_up_on_every_host(shared, netns_hosts):
    fleet, rec = shared
    assert sorted(h for h, connected, _ in rec.states if connected) == [h.name for h in netns_hosts.hosts]
    inventories = fleet.request_all("inventory", timeout=10)
    for h in netns_hosts.hosts:
        inv = inventories[h.name]
        assert inv["source"] == "simulated"
        assert [(g["name"], g["memory_total_mb"]) for g in inv["gpus"]] == [("H100", 80 * 1024)] * 2
        assert fleet.session(h.name).hello["workdir"] == str(h.workdir)


def test_a_job_reports_start_and_end_events(shared):
    fleet, rec = shared
    session = fleet.session("h2")
    state = session.request("launch", {
        "job_id": "sess-ev1", "launch_token": "tok-ev1", "gpus": [1], "time_limit_s": 30,
        "argv": ["sh", "-c", "echo '@arc {\"step\": 1, \"loss\": 2.5}'; sleep 0.3"]}, timeout=15)
    assert state["job_id"] == "sess-ev1" and state["gpus"] == [1]
    rec.wait_for(lambda: any(h == "h2" and e["job_id"] == "sess-ev1" and e["event"] == "job_ended"
                             for h, e in rec.events), 20)
    mine = [e for h, e in rec.events if h == "h2" and e["job_id"] == "sess-ev1"]
    assert [e["event"] for e in mine] == ["job_started", "job_ended"]
    assert mine[-1]["state"]["status"] == "succeeded" and mine[-1]["state"]["exit_code"] == 0
    metrics = session.request("metrics", {"job_id": "sess-ev1"}, timeout=10)
    assert [r["data"] for r in metrics["records"]] == [{"step": 1, "loss": 2.5}]


def test_concurrent_requests_get_their_own_answers(shared):
    fleet, _ = shared
    session = fleet.session("h1")

    def ask(i: int) -> list[str]:
        wrong = []
        for k in range(15):
            job = f"nope-{i}-{k}"
            try:
                session.request("tail", {"job_id": job}, timeout=15)
                wrong.append(f"{job}: answered")
            except AgentError as e:
                if e.code != "unknown_job" or job not in e.message:
                    wrong.append(f"{job}: {e}")
        return wrong

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(ask, range(8)), []) == []


def test_agent_errors_carry_code_and_message(shared):
    fleet, _ = shared
    with pytest.raises(AgentError) as info:
        fleet.session("h1").request("launch", {"job_id": "BAD ID!", "argv": ["true"]}, timeout=10)
    assert info.value.code == "bad_request" and info.value.request_sent
    assert str(info.value).startswith("host 'h1': agent error bad_request: ")


def test_local_host_session(local_hosts_yaml):
    rec = Recorder()
    with Fleet(local_hosts_yaml, on_event=rec.on_event, on_state=rec.on_state).start(wait=30) as fleet:
        assert rec.states == [("local", True, None)]
        inv = fleet.session("local").request("inventory", timeout=10)
        assert inv["source"] == "simulated" and inv["cpu_slots"] == 2
        fleet.session("local").request("launch", {"job_id": "loc1", "launch_token": "t-loc1", "cpu_slot": True,
                                                   "argv": ["true"], "time_limit_s": 10}, timeout=10)
        rec.wait_for(lambda: any(e["event"] == "job_ended" for _, e in rec.events), 15)


def test_unreachable_host_fails_fast_and_says_why(netns_hosts, tmp_path):
    path = netns_hosts.write_hosts_yaml(tmp_path / "hosts.yaml", [
        netns_hosts.host_entry("h1"), netns_hosts.host_entry("h2", port=2222)])
    rec = Recorder()
    with Fleet(path, on_state=rec.on_state, connect_timeout=3).start(wait=30) as fleet:
        assert ("h1", True, None) in rec.states
        h2_error = next(e for h, c, e in rec.states if h == "h2" and not c)
        assert "connection refused" in h2_error
        results = fleet.request_all("hello", timeout=5)
        assert results["h1"]["protocol"] == 1
        # refused without being sent: the down host never held the call up to its deadline
        assert isinstance(results["h2"], HostUnavailable) and not results["h2"].request_sent
        assert "not connected: connection refused" in str(results["h2"])


def test_bad_python_is_reported(netns_hosts, tmp_path):
    path = netns_hosts.write_hosts_yaml(tmp_path / "hosts.yaml", [
        netns_hosts.host_entry("h3", python="/nonexistent/python3", workdir=str(tmp_path / "w"))])
    rec = Recorder()
    with Fleet(path, on_state=rec.on_state).start(wait=30):
        error = rec.states[0][2]
        assert rec.states[0][1] is False
        assert "'/nonexistent/python3' was not found on the host" in error and "fix: set python:" in error


def test_vanished_host_times_out_goes_down_and_comes_back(netns_factory, tmp_path):
    fleet_hosts = netns_factory(2, simulate_gpus=[{"model": "A100", "memory_gb": 40}])
    agent = shutil.copytree(AGENT_DIR, tmp_path / "gpu_agent")   # frozen: the re-check below must find it unchanged
    rec = Recorder()
    with Fleet(fleet_hosts.hosts_yaml, on_state=rec.on_state, heartbeat_s=60, probe_timeout=2,
               connect_timeout=3, agent_dir=agent).start(wait=60) as fleet:
        assert fleet.session("h1").connected and fleet.session("h2").connected
        fleet_hosts.link_down("h1")
        try:
            in_flight: list[BaseException] = []

            def long_request() -> None:
                try:
                    fleet.session("h1").request("inventory", timeout=60)
                except BaseException as e:  # recorded for the assertions below
                    in_flight.append(e)

            waiter = threading.Thread(target=long_request)
            waiter.start()
            results = fleet.request_all("inventory", timeout=2)
            assert isinstance(results["h1"], RequestTimeout) and results["h1"].request_sent
            assert "no answer to 'inventory' within 2s" in str(results["h1"])
            assert results["h2"]["gpus"][0]["name"] == "A100"
            # the timeout makes the session probe the host and declare it down (30 s: a hang guard only)
            rec.wait_for(lambda: ("h1", False, "the host stopped answering (link down, host gone, or sshd dead)")
                         in rec.states, 30)
            # a request still waiting on the lost host fails then, not at its own (60 s) deadline: its error is
            # the lost connection, not a RequestTimeout
            waiter.join(55)
            assert not waiter.is_alive() and isinstance(in_flight[0], HostUnavailable)
            assert in_flight[0].request_sent and "connection lost before the answer" in str(in_flight[0])
            with pytest.raises(HostUnavailable, match="not connected: the host stopped answering"):
                fleet.session("h1").request("hello", timeout=5)
            assert fleet.session("h2").request("hello", timeout=5)["protocol"] == 1
        finally:
            fleet_hosts.link_up("h1")
        rec.wait_for(lambda: rec.states[-1] == ("h1", True, None), 30)
        assert fleet.session("h1").request("inventory", timeout=5)["gpus"][0]["name"] == "A100"
        assert fleet.session("h1").agent_tree.uploaded is False     # the bootstrap re-check found it in place


def test_heartbeat_notices_a_silent_host_without_requests(netns_factory):
    fleet_hosts = netns_factory(1)
    rec = Recorder()
    with Fleet(fleet_hosts.hosts_yaml, on_state=rec.on_state, heartbeat_s=1, probe_timeout=1.5,
               connect_timeout=3).start(wait=60) as fleet:
        assert fleet.session("h1").connected
        fleet_hosts.link_down("h1")
        try:
            seen = len(rec.states)
            # no request is made: only the heartbeat can notice (30 s: a hang guard; the path is ~5 s)
            rec.wait_for(lambda: rec.states[-1][1] is False, 30)
            assert rec.states[seen:] == [("h1", False, "the host stopped answering (link down, host gone, or sshd "
                                                       "dead)")]
        finally:
            fleet_hosts.link_up("h1")
        rec.wait_for(lambda: rec.states[-1] == ("h1", True, None), 30)


def test_killed_sshd_drops_the_session_and_it_reconnects(netns_factory):
    fleet_hosts = netns_factory(1)
    rec = Recorder()
    with Fleet(fleet_hosts.hosts_yaml, on_state=rec.on_state).start(wait=60) as fleet:
        session = fleet.session("h1")
        first_pid = session.hello["pid"]
        seen = len(rec.states)
        fleet_hosts.kill_sshd("h1")   # every connection dies; the listener too
        rec.wait_for(lambda: len(rec.states) > seen, 5)
        assert rec.states[seen][1] is False
        assert rec.states[seen][2] in ("the SSH connection closed", "the agent process ended")
        with pytest.raises(HostUnavailable):
            session.request("hello", timeout=5)
        fleet_hosts.start_sshd("h1")
        rec.wait_for(lambda: rec.states[-1] == ("h1", True, None), 30)
        assert session.request("hello", timeout=5)["pid"] != first_pid
        # the old agent process ended with its stdin; the new one serves
        assert wait_until(lambda: first_pid not in _agent_pids(fleet_hosts, "h1"), 5)
        assert session.hello["pid"] in _agent_pids(fleet_hosts, "h1")


def test_close_fails_waiting_requests_and_stops_the_agent(netns_factory):
    fleet_hosts = netns_factory(1)
    fleet = Fleet(fleet_hosts.hosts_yaml).start(wait=60)
    session = fleet.session("h1")
    assert session.connected and session.hello["pid"] in _agent_pids(fleet_hosts, "h1")
    fleet.close()
    with pytest.raises(HostUnavailable, match="session closed"):
        session.request("hello")
    assert wait_until(lambda: _agent_pids(fleet_hosts, "h1") == [], 5)


def _agent_pids(fleet_hosts, name: str) -> list[int]:
    """The host's `gpu_agent serve` processes (the agent may fork helpers that keep its command line)."""
    pids = []
    for pid in fleet_hosts.pids(name):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"gpu_agent" in argv and b"serve" in argv:
            pids.append(pid)
    return pids


def test_hosts_file_path_or_object(local_hosts_yaml, tmp_path):
    hf = load_hosts(local_hosts_yaml)
    with Fleet(hf) as fleet:
        assert list(fleet.sessions) == ["local"]
    with pytest.raises(KeyError, match="no host 'nope'"):
        Fleet(write_hosts_yaml(tmp_path / "h.yaml", [local_host_entry(tmp_path / "w")])).session("nope")


def test_tilde_workdir_session(netns_hosts):
    workdir = f"~/.arc-session-test-{uuid.uuid4().hex[:8]}"
    path = netns_hosts.write_hosts_yaml(netns_hosts.root / f"{workdir[2:]}.yaml",
                                        [netns_hosts.host_entry("h3", workdir=workdir)])
    try:
        with Fleet(path).start(wait=60) as fleet:
            session = fleet.session("h3")
            assert session.connected, session.last_error
            assert session.hello["workdir"] == f"/root/{workdir[2:]}"      # the harness logs in as root
            assert session.agent_tree.path.startswith(f"/root/{workdir[2:]}/agent/")
    finally:
        shutil.rmtree(f"/root/{workdir[2:]}", ignore_errors=True)

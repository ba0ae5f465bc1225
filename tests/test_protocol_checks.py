"""The protocol (gpu_agent/protocol.py) checked on both sides: the agent refuses a malformed request naming the
field, the controller refuses a malformed answer naming the host, the op and the field, and keeps serving."""
from __future__ import annotations

import logging
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mcp_server.fleet import ProtocolError
from mcp_server.fleet.connect import make_transport
from mcp_server.fleet.hosts_config import load_hosts
from mcp_server.fleet.session import AGENT_DIR, HostSession
from tests.harness import local_host_entry, write_hosts_yaml
from tests.agent_support import agent, workdir  # noqa: F401


LAUNCH = {"job_id": "x", "launch_token": "t", "argv": ["true"], "time_limit_s": 5}


@pytest.mark.parametrize("params, message", [
    ({**LAUNCH, "argv": ["python3", 3]}, "launch: params.argv.1: expected str, got int"),
    ({**LAUNCH, "env": {"A": "1", "B": 2}}, "launch: params.env.B: expected str, got int"),
    ({**LAUNCH, "gpus": [0, True]}, "launch: params.gpus.1: expected int, got bool"),
    ({**LAUNCH, "cpu_slot": "yes"}, "launch: params.cpu_slot: expected bool, got str"),
    ({**LAUNCH, "time_limit_s": 0}, "launch: params.time_limit_s: must be a number > 0 (seconds), got 0"),
    ({"job_ids": ["j1", 7]}, "status: params.job_ids.1: expected str, got int"),
])
def test_the_agent_refuses_a_malformed_field_by_its_path(agent, params, message):  # noqa: F811
    op = "status" if "job_ids" in params else "launch"
    response = agent.request(op, params)
    assert response["ok"] is False
    assert response["error"] == {"code": "bad_request", "message": message}
    assert agent.call("claims") == {"claims": []}     # nothing was claimed, and the loop keeps serving


def _broken_agent(tmp_path: Path) -> Path:
    """A copy of the agent that answers inventory without GPU 0's memory_total_mb and, before answering claims,
    writes a response whose id no request can have and an event without its state."""
    agent_dir = shutil.copytree(AGENT_DIR, tmp_path / "broken" / "gpu_agent")
    ops = agent_dir / "ops.py"
    source = ops.read_text()
    for old, new in (
            ("        return inventory(self.gpus, self.claims)\n",
             "        found = inventory(self.gpus, self.claims)\n"
             "        del found['gpus'][0]['memory_total_mb']\n"
             "        return found\n"),
            ('        return {"claims": self.claims.list()}\n',
             "        os.write(1, b'{\"id\": [1], \"ok\": true, \"result\": {}}\\n'\n"
             "                    b'{\"event\": \"job_ended\", \"job_id\": \"j1\"}\\n')\n"
             '        return {"claims": self.claims.list()}\n')):
        assert old in source, f"the agent changed: update this test's edit of {old.strip()!r}"
        source = source.replace(old, new)
    ops.write_text(source)
    return agent_dir


@pytest.fixture
def broken_session(tmp_path):
    hosts = write_hosts_yaml(tmp_path / "hosts.yaml", [local_host_entry(
        tmp_path / "w", name="h1", simulate_gpus=[{"model": "NVIDIA H100 80GB HBM3", "memory_gb": 80}])])
    events: list[dict] = []
    session = HostSession(make_transport(load_hosts(hosts), "h1"), agent_dir=_broken_agent(tmp_path),
                          on_event=lambda host, event: events.append(event), connect_timeout=30)
    session.start(wait=60)
    assert session.connected, session.last_error
    yield session, events
    session.close()


def test_the_controller_refuses_a_malformed_result_naming_host_op_and_field(broken_session):
    session, _ = broken_session
    with pytest.raises(ProtocolError) as info:
        session.request("inventory")
    assert str(info.value).startswith(
        "host 'h1': answered inventory with a malformed result: gpus.0.memory_total_mb: field required")
    assert info.value.request_sent
    assert session.connected and session.request("hello")["protocol"] == 1


def test_malformed_answers_fail_their_own_request_only(broken_session, caplog):
    session, events = broken_session
    ops = ["inventory", "claims"] * 8
    with caplog.at_level(logging.ERROR, logger="mcp_server.fleet.session"), ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda op: _outcome(session, op), ops))
    # The stray id and the stateless event reached the reader 8 times: neither ended the connection nor cost
    # another request its answer.
    assert outcomes == [ProtocolError, {"claims": []}] * 8
    assert session.connected and session.request("hello")["protocol"] == 1
    assert events == []
    assert "dropped an agent event that does not match the protocol (state: field required)" in caplog.text


def _outcome(session: HostSession, op: str):
    try:
        return session.request(op)
    except ProtocolError:
        return ProtocolError


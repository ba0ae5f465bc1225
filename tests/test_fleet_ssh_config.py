"""~/.ssh/config entries and ProxyJump on real sshd hosts."""
from __future__ import annotations

import re
import subprocess
import time

import pytest

from mcp_server.fleet import HostUnavailable, make_transport
from mcp_server.fleet.hosts_config import load_hosts


@pytest.fixture(scope="module")
def fleet(netns_factory):
    return netns_factory(2)


def eth0_address(transport) -> str:
    r = transport.run("ip -o -4 addr show dev eth0", timeout=15)
    return re.search(r"inet (\S+)/", r.text).group(1)


def accepted_from(host) -> list[str]:
    return re.findall(r"Accepted publickey for root from (\S+)", host.log.read_text())


def test_ssh_config_supplies_hostname_user_port_and_key(fleet, tmp_path):
    h2 = fleet.host("h2")
    config = tmp_path / "ssh_config"
    config.write_text(f"Host gpu-box\n  HostName {h2.address}\n  User root\n  Port 22\n"
                      f"  IdentityFile {fleet.client_key}\n")
    hosts = fleet.write_hosts_yaml(tmp_path / "hosts.yaml", [
        {"name": "gpu-box", "known_hosts": str(fleet.known_hosts), "workdir": str(h2.workdir)}])
    hf = load_hosts(hosts, ssh_config_path=config)
    t = make_transport(hf, "gpu-box")
    try:
        assert eth0_address(t) == h2.address
    finally:
        t.close()


def test_proxy_jump_reaches_a_host_the_controller_cannot(fleet, tmp_path):
    h1, h2 = fleet.host("h1"), fleet.host("h2")
    fleet.block_controller("h2")
    try:
        direct = make_transport(load_hosts(fleet.write_hosts_yaml(tmp_path / "direct.yaml",
                                                                  [fleet.host_entry("h2")])), "h2",
                                connect_timeout=1.5)
        with pytest.raises(HostUnavailable, match="no answer"):
            direct.connect()
        before = accepted_from(h2)
        hosts = fleet.write_hosts_yaml(tmp_path / "jump.yaml", [fleet.host_entry("h1"),
                                                                fleet.host_entry("h2", proxy_jump="h1")])
        t = make_transport(load_hosts(hosts), "h2")
        try:
            assert eth0_address(t) == h2.address
            assert accepted_from(h2)[len(before):] == [h1.address]   # the connection came from the jump host
        finally:
            t.close()
    finally:
        fleet.unblock_controller("h2")


def test_proxy_jump_from_the_ssh_config(fleet, tmp_path):
    h1, h2 = fleet.host("h1"), fleet.host("h2")
    config = tmp_path / "ssh_config"
    config.write_text(f"Host bastion\n  HostName {h1.address}\n  User root\n  IdentityFile {fleet.client_key}\n"
                      f"Host inner\n  HostName {h2.address}\n  User root\n  IdentityFile {fleet.client_key}\n"
                      f"  ProxyJump bastion\n")
    hosts = fleet.write_hosts_yaml(tmp_path / "hosts.yaml", [
        {"name": "inner", "known_hosts": str(fleet.known_hosts), "workdir": str(h2.workdir)}])
    hf = load_hosts(hosts, ssh_config_path=config)
    assert [hop.hostname for hop in hf.ssh_route("inner")] == [h1.address, h2.address]
    before = accepted_from(h2)
    t = make_transport(hf, "inner")
    try:
        assert eth0_address(t) == h2.address
        assert accepted_from(h2)[len(before):] == [h1.address]
    finally:
        t.close()


def test_jump_host_failures_name_the_hop(fleet, tmp_path):
    hosts = fleet.write_hosts_yaml(tmp_path / "hosts.yaml", [
        fleet.host_entry("h1", port=2222), fleet.host_entry("h2", proxy_jump="h1")])
    t = make_transport(load_hosts(hosts), "h2", connect_timeout=3)
    with pytest.raises(HostUnavailable, match=r"^host 'h2': jump host 'h1': connection refused at .*:2222"):
        t.connect()
    hosts = fleet.write_hosts_yaml(tmp_path / "hosts2.yaml", [
        fleet.host_entry("h1"), fleet.host_entry("h2", proxy_jump="h1", port=2222)])
    t = make_transport(load_hosts(hosts), "h2", connect_timeout=3)
    with pytest.raises(HostUnavailable, match=r"^host 'h2': the jump host could not connect to root@.*:2222 via "
                                              r"jump host 'h1'"):
        t.connect()


def test_keys_from_ssh_agent(fleet, tmp_path, monkeypatch):
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        assert wait_for_path(sock, 5)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        subprocess.run(["ssh-add", str(fleet.client_key)], check=True, capture_output=True)
        monkeypatch.setenv("HOME", str(tmp_path))            # no ~/.ssh/id_* to fall back on
        hosts = fleet.write_hosts_yaml(tmp_path / "hosts.yaml", [fleet.host_entry("h1", identity_file=None)])
        t = make_transport(load_hosts(hosts), "h1")
        try:
            assert eth0_address(t) == fleet.host("h1").address
        finally:
            t.close()
    finally:
        agent.terminate()
        agent.wait(5)


def wait_for_path(path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return path.exists()


def test_a_skypilot_style_config_with_include_and_proxy_command(fleet, tmp_path):
    """SkyPilot's layout: the main config Includes a generated file whose `Host gpus` reaches the node through a
    ProxyCommand. The address resolves as OpenSSH resolves it (`ssh -G`): paramiko's parser alone finds nothing."""
    h1, h2 = fleet.host("h1"), fleet.host("h2")
    generated = tmp_path / "sky" / "generated" / "ssh"
    generated.mkdir(parents=True)
    (generated / "gpus").write_text(
        f"Host gpus\n  HostName {h2.address}\n  User root\n  IdentityFile {fleet.client_key}\n"
        f"  ProxyCommand ssh -F /dev/null -i {fleet.client_key} -o UserKnownHostsFile={fleet.known_hosts} "
        f"-o StrictHostKeyChecking=yes -o BatchMode=yes -W %h:%p root@{h1.address}\n")
    config = tmp_path / "ssh_config"
    config.write_text(f"Include {generated}/*\n")
    hosts = fleet.write_hosts_yaml(tmp_path / "hosts.yaml", [
        {"name": "gpus", "known_hosts": str(fleet.known_hosts), "workdir": str(h2.workdir)}])
    hf = load_hosts(hosts, ssh_config_path=config)
    host = hf.get("gpus")
    assert host.address == h2.address and f"-W {h2.address}:22 root@{h1.address}" in host.proxy_command
    t = make_transport(hf, "gpus")
    try:
        assert eth0_address(t) == h2.address
    finally:
        t.close()
    # The connection came through the jump: h2 saw h1's address.
    assert h1.address in accepted_from(h2)

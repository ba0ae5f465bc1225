"""~/.ssh/config entries and ProxyJump on real sshd hosts."""
from __future__ import annotations

import re
import subprocess
import time

import pytest

from mcp_server.fleet import HostKeyChanged, HostKeyUnknown, HostUnavailable, make_transport
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


def connections_to(host) -> int:
    """Every TCP connection the host's sshd accepted, authenticated or not."""
    return host.log.read_text().count("Connection from ")


def fingerprint(host) -> str:
    return subprocess.run(["ssh-keygen", "-lf", str(host.host_key.with_suffix(".pub"))], capture_output=True,
                          text=True, check=True).stdout.split()[1]


def test_unknown_jump_host_key_is_refused_naming_the_hop_before_the_target_is_reached(fleet, tmp_path):
    h1, h2 = fleet.host("h1"), fleet.host("h2")
    jump_known = tmp_path / "jump_known_hosts"
    jump_known.write_text("")
    hosts = fleet.write_hosts_yaml(tmp_path / "hosts.yaml", [fleet.host_entry("h1", known_hosts=str(jump_known)),
                                                             fleet.host_entry("h2", proxy_jump="h1")])
    before = connections_to(h2)
    t = make_transport(load_hosts(hosts), "h2", connect_timeout=10)
    with pytest.raises(HostKeyUnknown) as info:
        t.connect()
    message = str(info.value)
    assert message.startswith(f"host 'h2': jump host 'h1': unknown host key for {h1.address}: "
                              f"ssh-ed25519 {fingerprint(h1)} is not in {jump_known}")
    assert "\n" not in message
    assert connections_to(h2) == before                      # nothing went past the unverified hop
    assert jump_known.read_text() == ""
    fix = re.search(r"then run: (ssh-keyscan [^;]+);", message).group(1)
    subprocess.run(fix, shell=True, check=True, capture_output=True)
    try:
        assert eth0_address(t) == h2.address
        assert accepted_from(h2)[-1] == h1.address
    finally:
        t.close()


def test_unknown_key_of_the_host_behind_a_jump_gives_the_jump_route_as_the_fix(fleet, tmp_path):
    h1, h2 = fleet.host("h1"), fleet.host("h2")
    inner_known = tmp_path / "inner_known_hosts"
    inner_known.write_text("")
    hosts = fleet.write_hosts_yaml(tmp_path / "hosts.yaml", [
        fleet.host_entry("h1"), fleet.host_entry("h2", proxy_jump="h1", known_hosts=str(inner_known))])
    before = accepted_from(h2)
    t = make_transport(load_hosts(hosts), "h2", connect_timeout=10)
    with pytest.raises(HostKeyUnknown) as info:
        t.connect()
    message = str(info.value)
    assert message.startswith(f"host 'h2': unknown host key for {h2.address}: ssh-ed25519 {fingerprint(h2)}")
    # ssh-keyscan from here cannot reach a host that needs a jump: the fix goes through the same route
    assert (f"then run: ssh -o UserKnownHostsFile={inner_known} -J root@{h1.address}:22 -p 22 root@{h2.address} "
            f"true") in message
    assert accepted_from(h2) == before and inner_known.read_text() == ""


def test_changed_jump_host_key_is_refused_naming_the_hop_even_under_trust_on_first_use(netns_factory, tmp_path):
    fleet = netns_factory(2)
    h1, h2 = fleet.host("h1"), fleet.host("h2")
    known = tmp_path / "known_hosts"
    known.write_text(fleet.known_hosts.read_text())
    old = fingerprint(h1)
    fleet.new_host_key("h1")
    before = connections_to(h2)
    for policy in ("verify", "trust-on-first-use"):
        hosts = fleet.write_hosts_yaml(tmp_path / f"hosts-{policy}.yaml", [
            fleet.host_entry("h1", known_hosts=str(known), host_key_policy=policy),
            fleet.host_entry("h2", known_hosts=str(known), proxy_jump="h1")])
        t = make_transport(load_hosts(hosts), "h2", connect_timeout=10)
        with pytest.raises(HostKeyChanged) as info:
            t.connect()
        message = str(info.value)
        assert message.startswith(f"host 'h2': jump host 'h1': HOST KEY CHANGED for {h1.address}: {known} line ")
        assert f"records ssh-ed25519 {old}, the host offered ssh-ed25519 {fingerprint(h1)}" in message
        assert f"`ssh-keygen -f {known} -R '{h1.address}'`" in message
    assert connections_to(h2) == before
    assert known.read_text() == fleet.known_hosts.read_text()   # nothing rewritten
    subprocess.run(["ssh-keygen", "-f", str(known), "-R", h1.address], check=True, capture_output=True)
    subprocess.run(f"ssh-keyscan -p 22 -H {h1.address} >> {known}", shell=True, check=True, capture_output=True)
    t = make_transport(load_hosts(tmp_path / "hosts-verify.yaml"), "h2", connect_timeout=10)
    try:
        assert eth0_address(t) == h2.address
    finally:
        t.close()

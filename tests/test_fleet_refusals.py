"""SSH refusals on real sshd: each is a clear, one-line error within the deadline, and its fix works."""
from __future__ import annotations

import re
import subprocess
import threading

import pytest

from mcp_server.fleet import AuthFailed, HostKeyChanged, HostKeyUnknown, HostUnavailable, make_transport
from mcp_server.fleet.hosts_config import load_hosts


@pytest.fixture(scope="module")
def fleet(netns_factory):
    return netns_factory(2)


def transport_for(fleet, tmp_path, name="h1", connect_timeout=5.0, **overrides):
    path = fleet.write_hosts_yaml(tmp_path / f"hosts-{name}.yaml", [fleet.host_entry(name, **overrides)])
    return make_transport(load_hosts(path), name, connect_timeout=connect_timeout)


def fingerprint(pub_key_path) -> str:
    return subprocess.run(["ssh-keygen", "-lf", str(pub_key_path)], capture_output=True, text=True,
                          check=True).stdout.split()[1]


def test_unknown_host_key_is_refused_with_a_fix_that_works(fleet, tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text("")
    t = transport_for(fleet, tmp_path, known_hosts=str(known))
    with pytest.raises(HostKeyUnknown) as info:
        t.connect()
    message = str(info.value)
    h1 = fleet.host("h1")
    assert "\n" not in message
    assert f"unknown host key for {h1.address}: ssh-ed25519 {fingerprint(h1.host_key.with_suffix('.pub'))}" in message
    fix = re.search(r"then run: (ssh-keyscan [^;]+);", message).group(1)
    assert fix == f"ssh-keyscan -p 22 -H {h1.address} >> {known}"
    assert known.read_text() == ""                       # nothing was recorded behind the user's back
    subprocess.run(fix, shell=True, check=True, capture_output=True)
    t.connect()
    assert t.run("echo ok", timeout=10).text == "ok\n"
    t.close()


def test_trust_on_first_use_records_the_key_once(fleet, tmp_path):
    known = tmp_path / "ssh" / "known_hosts"
    t = transport_for(fleet, tmp_path, known_hosts=str(known), host_key_policy="trust-on-first-use")
    assert t.run("echo ok", timeout=10).text == "ok\n"
    t.close()
    recorded = known.read_text()
    assert recorded.split()[1:] == fleet.host("h1").known_hosts_line().split()[1:]
    # from now on the recorded key is verified like any other
    t = transport_for(fleet, tmp_path, known_hosts=str(known))
    assert t.run("echo again", timeout=10).text == "again\n"
    t.close()
    assert known.read_text() == recorded


def test_changed_host_key_is_refused_loudly_even_under_trust_on_first_use(netns_factory, tmp_path):
    fleet = netns_factory(1)
    known = tmp_path / "known_hosts"
    known.write_text("# my hosts\n" + fleet.known_hosts.read_text())
    old = fingerprint(fleet.host("h1").host_key.with_suffix(".pub"))
    fleet.new_host_key("h1")
    new = fingerprint(fleet.host("h1").host_key.with_suffix(".pub"))
    address = fleet.host("h1").address
    for policy in ("verify", "trust-on-first-use"):
        t = transport_for(fleet, tmp_path, known_hosts=str(known), host_key_policy=policy)
        with pytest.raises(HostKeyChanged) as info:
            t.connect()
        message = str(info.value)
        assert f"HOST KEY CHANGED for {address}: {known} line 2 records ssh-ed25519 {old}" in message
        assert f"the host offered ssh-ed25519 {new}" in message
        assert f"`ssh-keygen -f {known} -R '{address}'`" in message
    assert known.read_text().count(address) == 1             # nothing rewritten
    subprocess.run(["ssh-keygen", "-f", str(known), "-R", address], check=True, capture_output=True)
    t = transport_for(fleet, tmp_path, known_hosts=str(known), host_key_policy="trust-on-first-use")
    assert t.run("echo ok", timeout=10).text == "ok\n"
    t.close()


def test_wrong_private_key_is_an_auth_failure(fleet, tmp_path):
    key = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    t = transport_for(fleet, tmp_path, identity_file=str(key))
    with pytest.raises(AuthFailed) as info:       # sshd's refusal itself, not a deadline (that is HostUnavailable)
        t.connect()
    message = str(info.value)
    assert f"authentication refused for root@{fleet.host('h1').address}:22" in message
    assert f"offered: {key}" in message and "authorized_keys" in message


def test_missing_identity_file_is_named(fleet, tmp_path):
    t = transport_for(fleet, tmp_path, identity_file=str(tmp_path / "nope"))
    with pytest.raises(AuthFailed, match=r"identity file\(s\) .*/nope do not exist; fix: identity_file:"):
        t.connect()


def test_closed_port_is_refused_at_once(fleet, tmp_path):
    # The kernel's RST, not the (hour-long) connect deadline, ends the attempt: nothing else says "refused".
    t = transport_for(fleet, tmp_path, port=2222, connect_timeout=3600)
    with pytest.raises(HostUnavailable, match=r"connection refused at 10\.77\.\d+\.11:2222 \(nothing listens"):
        t.connect()


def test_stopped_sshd_refuses_new_connections_but_open_ones_keep_working(netns_factory, tmp_path):
    fleet = netns_factory(1)
    t = transport_for(fleet, tmp_path)
    t.connect()
    fleet.stop_sshd("h1")
    assert t.run("echo open", timeout=10).text == "open\n"
    with pytest.raises(HostUnavailable, match="connection refused"):
        transport_for(fleet, tmp_path).connect()
    fleet.kill_sshd("h1")                              # now the open connection dies too
    with pytest.raises(HostUnavailable):
        t.run("true", timeout=5)
    fleet.start_sshd("h1")
    assert t.run("echo back", timeout=10).text == "back\n"
    t.close()


@pytest.mark.timeout(120)     # a hang guard only: the deadlines below are 5 s and 2 s, a hang would be minutes
def test_vanished_host_fails_at_its_deadline_and_others_are_unaffected(fleet, tmp_path):
    gone = transport_for(fleet, tmp_path, "h1")
    other = transport_for(fleet, tmp_path, "h2")
    gone.connect()
    other.connect()
    fleet.link_down("h1")
    try:
        errors: dict[str, Exception] = {}
        finished: list[str] = []           # the order the calls returned in

        def call(name, t, timeout):
            try:
                t.run("true", timeout=timeout)
            except Exception as e:  # recorded for the assertions below
                errors[name] = e
            finished.append(name)

        # 5 s leaves the others' three quick calls room to finish first even on a loaded machine
        lost = threading.Thread(target=call, args=("h1", gone, 5.0))
        lost.start()
        # The other host's calls go through while the lost host's call is still waiting on its deadline.
        others = [threading.Thread(target=call, args=(f"h2-{i}", other, 60.0)) for i in range(3)]
        for th in others:
            th.start()
        for th in others:
            th.join()
        lost.join()
        failure = errors.pop("h1")
        assert isinstance(failure, HostUnavailable) and "within 5s" in str(failure)
        assert errors == {}
        assert finished[-1] == "h1" and sorted(finished[:-1]) == ["h2-0", "h2-1", "h2-2"]
        # a fresh connection to the vanished host also gives up at its deadline, with the reason
        with pytest.raises(HostUnavailable, match=r"no answer from 10\.77\.\d+\.11:22 within 2s \(host down, "
                                                  r"link cut"):
            transport_for(fleet, tmp_path, "h1", connect_timeout=2.0).connect()
    finally:
        fleet.link_up("h1")
    assert gone.run("echo back", timeout=10).text == "back\n"   # reconnects on the next call
    gone.close()
    other.close()


def test_error_messages_are_one_line(fleet, tmp_path):
    t = transport_for(fleet, tmp_path, port=2222)
    with pytest.raises(HostUnavailable) as info:
        t.connect()
    assert "\n" not in str(info.value) and str(info.value).startswith("host 'h1': ")

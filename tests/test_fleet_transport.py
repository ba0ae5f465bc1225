"""Both transports run commands the same way: exit codes, combined output, stdin, bounded output, deadlines."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from mcp_server.fleet import RequestTimeout, make_transport, shell_path
from mcp_server.fleet.hosts_config import load_hosts
from tests.harness import local_host_entry, write_hosts_yaml


@pytest.fixture(params=["local", "ssh"])
def transport(request, netns_hosts, tmp_path):
    if request.param == "local":
        hf = load_hosts(write_hosts_yaml(tmp_path / "hosts.yaml", [local_host_entry(tmp_path / "work")]))
        t = make_transport(hf, "local")
    else:
        t = make_transport(load_hosts(netns_hosts.hosts_yaml), "h1")
    yield t
    t.close()


def test_a_command_on_each_ssh_host(netns_hosts):
    hf = load_hosts(netns_hosts.hosts_yaml)
    transports = [make_transport(hf, h.name, connect_timeout=5) for h in netns_hosts.hosts]
    try:
        with ThreadPoolExecutor(len(transports)) as pool:
            results = list(pool.map(lambda t: t.run("ip -o -4 addr show dev eth0", timeout=15), transports))
        for h, r in zip(netns_hosts.hosts, results):
            assert r.exit_code == 0, r.text
            assert f"inet {h.address}/24" in r.text    # it ran inside that host's namespace
    finally:
        for t in transports:
            t.close()


def test_exit_code_and_combined_output(transport):
    r = transport.run("echo out; echo err >&2; exit 7", timeout=15)
    assert r.exit_code == 7
    assert r.text.splitlines() == ["out", "err"]
    assert not r.truncated


def test_stdin_is_fed_while_output_flows(transport):
    # The command prints 3 MB before reading stdin: a writer that waits for the reader (or vice versa) deadlocks.
    payload = bytes(range(256)) * 8192 * 2   # 4 MiB
    r = transport.run("head -c 3000000 /dev/zero; sha256sum", stdin=payload, timeout=30, max_output=200)
    import hashlib
    assert r.exit_code == 0
    assert hashlib.sha256(payload).hexdigest() in r.text
    assert r.total_bytes > 3_000_000 and len(r.output) == 200


@pytest.mark.timeout(120)        # the hang guard: "does not hang" is this test finishing at all
def test_output_over_5mb_is_bounded_and_does_not_hang(transport):
    r = transport.run("head -c 12000000 /dev/zero | tr '\\0' x; echo; echo tail-marker", timeout=60,
                      max_output=1 << 20)
    assert r.exit_code == 0
    assert r.total_bytes == 12_000_000 + len("\ntail-marker\n")
    assert len(r.output) == 1 << 20 and r.truncated
    assert r.output.endswith(b"x\ntail-marker\n")     # the last bytes are kept


def test_deadline_kills_a_command_that_runs_too_long(transport):
    with pytest.raises(RequestTimeout) as info:
        transport.run("echo started; sleep 30; echo slept", timeout=1.5)
    assert info.value.output == b"started\n"                # stopped at the deadline, long before the sleep ended
    assert "did not finish within 1.5s" in str(info.value)
    assert transport.run("echo still usable", timeout=15).text == "still usable\n"


def test_tilde_workdir_expands_on_the_host_and_the_rest_is_quoted(transport):
    assert shell_path("~/a b/c") == "~/'a b/c'"
    assert shell_path("/abs/$x") == "'/abs/$x'"
    r = transport.run(f"mkdir -p {shell_path('~/.arc-test dir')} && cd {shell_path('~/.arc-test dir')} && pwd && "
                      f"rmdir \"$PWD\"", timeout=15)
    assert r.exit_code == 0, r.text
    assert r.text.strip().endswith("/.arc-test dir") and not r.text.startswith("~")


def test_more_concurrent_commands_than_sshd_allows_channels(transport):
    # sshd allows 10 channels per connection (MaxSessions); the transport queues the rest instead of failing.
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: transport.run(f"sleep 0.3; echo {i}", timeout=30), range(16)))
    # (only the last line: this machine's root ~/.bashrc runs `pyenv init`, which may complain when 16 shells race)
    assert [(r.exit_code, r.text.splitlines()[-1]) for r in results] == [(0, str(i)) for i in range(16)]

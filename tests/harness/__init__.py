"""Test hosts on real parts: network namespaces on a bridge, each with its own sshd, address and agent workdir.

Needs root, iproute2 and openssh-server (CI installs it). A host that cannot be built fails the test loudly
(HarnessError), never skips. Every namespace/link is named `arct<tag>...` with a 4-char tag per fleet, recorded
in /run/arc-test-harness/<tag>.json with the owning pid; stale ones (owner dead) are removed before each build.

Fixtures (registered by tests/conftest.py):
    netns_factory            session: make(n, *, simulate_gpus=None, cpu_slots=None) -> NetnsFleet, torn down
                             at session end. Use it for tests that break hosts.
    netns_hosts              session: a shared NetnsFleet of 3 hosts h1..h3, 2 simulated H100s each, cpu_slots 2.
                             Do not break it (no link_down/kill there).
    local_hosts_yaml         function: Path of a hosts.yaml with one `local` host (own workdir, 2 simulated GPUs).

NetnsFleet (tests.harness.NetnsFleet):
    .hosts: list[NetnsHost]  each with .name ("h1"..), .ns, .address (10.77.X.(10+i)), .dir, .workdir, .log
    .hosts_yaml: Path        hosts.yaml for all hosts (ssh, user root, identity_file, known_hosts, workdir,
                             python = this interpreter, simulate_gpus/cpu_slots as created)
    .known_hosts, .client_key, .bridge_address (10.77.X.1: the controller's side), .subnet (X)
    .host(name) -> NetnsHost
    .host_entry(name, **overrides) -> dict      one hosts.yaml entry; override=None removes a field
    .write_hosts_yaml(path=None, entries=None, **top_level) -> Path
                                                e.g. mixed GPU models: write_hosts_yaml(tmp / "h.yaml", [
                                                  f.host_entry("h1", simulate_gpus=[{"model": "H200",
                                                  "memory_gb": 141}]), f.host_entry("h2")])
    .exec(name, *argv, check=True)              run a command inside the host's namespace
    .link_down(name) / .link_up(name)           the host vanishes silently / comes back
    .block_controller(name) / .unblock_controller(name)
                                                only the root namespace loses the host (jump tests)
    .stop_sshd / .start_sshd / .restart_sshd(name)
                                                the listener only; open connections survive (like a real restart)
    .kill_sshd(name)                            SIGKILL every sshd of the host: open sessions drop at once
    .drop_connections(name)                     kill open connections, keep the listener
    .new_host_key(name)                         a reinstalled host: new key, sshd restarted, known_hosts unchanged
    .pids(name) -> list[int]                    every process in the host's namespace (sshd, agents, jobs)
    .teardown()                                 kill those processes, delete namespaces and links (idempotent)

Sessions: mcp_server.fleet.Fleet(fleet.hosts_yaml).start(wait=60) pushes the agent into each host's workdir and
serves it over SSH (see mcp_server/fleet). Namespaces share the filesystem and pids with the test process, so a
host's files are readable at their paths and `pids(name)` finds its processes; everything runs as root there.

Helpers: write_hosts_yaml(path, entries, **top_level) -> Path; local_host_entry(workdir, name="local", **fields);
cleanup_stale(); HarnessError.
"""
from tests.harness.netns import (HarnessError, NetnsFleet, NetnsHost, cleanup_stale, local_host_entry,
                                 write_hosts_yaml)

__all__ = ["HarnessError", "NetnsFleet", "NetnsHost", "cleanup_stale", "local_host_entry", "write_hosts_yaml"]

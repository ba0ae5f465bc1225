"""Build a host's transport from its hosts.yaml entry."""
from __future__ import annotations

from mcp_server.fleet.hosts_config import HostsFile
from mcp_server.fleet.local import LocalTransport
from mcp_server.fleet.transport import Transport


DEFAULT_CONNECT_TIMEOUT_S = 10.0


def make_transport(hosts_file: HostsFile, name: str, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S) -> Transport:
    host = hosts_file.get(name)
    if host.transport == "local":
        return LocalTransport(host)
    from mcp_server.fleet.ssh import SshTransport    # paramiko: a daemon of local hosts starts without it

    return SshTransport(host, hosts_file.ssh_route(name), connect_timeout=connect_timeout)

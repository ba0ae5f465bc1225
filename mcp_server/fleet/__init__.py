"""The fleet: where hosts come from (sources.py: hosts.yaml's static hosts today), transports to them (local
subprocess, SSH), one agent session per host, pushes and bootstrap.

    from mcp_server.fleet import Fleet
    with Fleet("hosts.yaml", on_event=..., on_state=...).start(wait=15) as fleet:
        fleet.session("gpu1").request("inventory", timeout=10)
        fleet.request_all("inventory")      # {host: result or the exception}
"""
from mcp_server.fleet.bootstrap import HostReadiness, bootstrap_host, check_hosts
from mcp_server.fleet.connect import make_transport
from mcp_server.fleet.errors import (AgentError, AuthFailed, FleetError, HostKeyChanged, HostKeyUnknown,
                                     HostUnavailable, ProtocolError, RequestTimeout)
from mcp_server.fleet.fleet import Fleet
from mcp_server.fleet.push import PushedTree, content_hash, push_tree
from mcp_server.fleet.session import HostSession, prepare_agent
from mcp_server.fleet.sources import Demand, HostFacts, HostSource, StaticHosts
from mcp_server.fleet.transport import CommandResult, ProcessStream, Transport, shell_path

__all__ = ["AgentError", "AuthFailed", "CommandResult", "Demand", "Fleet", "FleetError", "HostFacts", "HostKeyChanged",
           "HostKeyUnknown", "HostReadiness", "HostSession", "HostSource", "HostUnavailable", "StaticHosts", "ProcessStream", "ProtocolError", "PushedTree",
           "RequestTimeout", "Transport", "bootstrap_host", "check_hosts", "content_hash", "make_transport",
           "prepare_agent", "push_tree", "shell_path"]

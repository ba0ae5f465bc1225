"""The fleet: where hosts come from (sources.py: hosts.yaml's static hosts today), transports to them (local
subprocess, SSH), one agent session per host, pushes and bootstrap.

    from mcp_server.fleet import Fleet
    with Fleet("hosts.yaml", on_event=..., on_state=...).start(wait=15) as fleet:
        fleet.session("gpu1").request("inventory", timeout=10)
        fleet.request_all("inventory")      # {host: result or the exception}
"""
from ..lazy import lazy_exports

# Each name is imported from its module on first use: importing one light part of this package loads no other.
__getattr__, __all__ = lazy_exports(__name__, {
    "HostReadiness": ".bootstrap",
    "bootstrap_host": ".bootstrap",
    "check_hosts": ".bootstrap",
    "make_transport": ".connect",
    "AgentError": ".errors",
    "AuthFailed": ".errors",
    "FleetError": ".errors",
    "HostKeyChanged": ".errors",
    "HostKeyUnknown": ".errors",
    "HostUnavailable": ".errors",
    "ProtocolError": ".errors",
    "RequestTimeout": ".errors",
    "Fleet": ".fleet",
    "PushedTree": ".push",
    "content_hash": ".push",
    "push_tree": ".push",
    "HostSession": ".session",
    "prepare_agent": ".session",
    "Demand": ".sources",
    "HostFacts": ".sources",
    "HostSource": ".sources",
    "StaticHosts": ".sources",
    "CommandResult": ".transport",
    "ProcessStream": ".transport",
    "Transport": ".transport",
    "shell_path": ".transport",
})

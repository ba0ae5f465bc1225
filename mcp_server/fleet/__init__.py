"""The fleet: where hosts come from (sources.py: hosts.yaml's static hosts today), transports to them (local
subprocess, SSH), one agent session per host, pushes and bootstrap.

    from mcp_server.fleet import Fleet
    with Fleet("hosts.yaml", on_event=..., on_state=...).start(wait=15) as fleet:
        fleet.session("gpu1").request("inventory", timeout=10)
        fleet.request_all("inventory")      # {host: result or the exception}
"""
from __future__ import annotations

import importlib
from typing import Any

# Each name is imported from its module on first use (PEP 562), so that importing one light part of this package
# (a result model, a type) does not load the heavy ones: `arc --help` and `arc mcp` start without them.
_EXPORTS = {
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
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value

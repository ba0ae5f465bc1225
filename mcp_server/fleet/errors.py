"""What can go wrong talking to a host. Every message is one line for people: what happened and how to fix it."""
from __future__ import annotations


class FleetError(Exception):
    """Base of every fleet error.

    `request_sent` is True when an agent request had been written before the failure: the agent may have acted
    on it (the outcome is unknown, not failed), so ask the host before acting again.
    """

    def __init__(self, host: str, message: str, *, request_sent: bool = False):
        self.host = host
        self.message = message
        self.request_sent = request_sent
        super().__init__(f"host {host!r}: {message}")


class HostUnavailable(FleetError):
    """The host cannot be reached or its session is down; `reason` says why."""

    @property
    def reason(self) -> str:
        return self.message


class HostKeyUnknown(HostUnavailable):
    """The host's key is not in known_hosts (and the host's policy is `verify`)."""


class HostKeyChanged(HostUnavailable):
    """The host offered a different key than known_hosts records: possibly an attack, never accepted."""


class AuthFailed(HostUnavailable):
    """The host refused every key we offered."""


class RequestTimeout(FleetError, TimeoutError):
    """No answer within the deadline. `output` holds what a command printed before it (may be empty)."""

    def __init__(self, host: str, message: str, output: bytes = b"", *, request_sent: bool = False):
        super().__init__(host, message, request_sent=request_sent)
        self.output = output


class AgentError(FleetError):
    """The agent answered ok=false. `code` is one of gpu_agent.protocol.ErrorCode."""

    def __init__(self, host: str, code: str, message: str):
        super().__init__(host, f"agent error {code}: {message}", request_sent=True)
        self.code = code
        self.message = message


class ProtocolError(FleetError):
    """The agent answered something the protocol (gpu_agent/protocol.py) does not allow: a bug, or an agent and a
    controller of different versions. The agent may have acted on the request, so `request_sent` is True."""

    def __init__(self, host: str, message: str):
        super().__init__(host, f"{message} (the agent and the controller disagree on gpu_agent/protocol.py: "
                               "report it with this message)", request_sent=True)

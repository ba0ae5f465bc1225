"""Where hosts come from: the one seam between the scheduler and the kinds of infrastructure.

Every job runs through a host agent; what differs is how a host comes to exist. Static hosts (`local`, `ssh`) are
listed in hosts.yaml; a Slurm cluster makes hosts as allocations that appear, expire and go. The scheduler never
asks which: it reads the hosts a source has now, asks it for a transport to each, lets it react to the queue once a
tick (a source that makes hosts grows or shrinks there), and honours the facts it states about a host (an
allocation's end). Modelled on Optuna's storage interface: one narrow abstract class, several backends.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Sequence

from mcp_server.fleet.connect import DEFAULT_CONNECT_TIMEOUT_S, make_transport
from mcp_server.fleet.hosts_config import HostConfig, HostsFile
from mcp_server.fleet.transport import Transport


@dataclass(frozen=True)
class HostFacts:
    """What the scheduler must honour about a host beyond its GPUs."""
    expires_at: float | None = None   # the host goes away then (epoch s): no job whose time limit runs past it
    waiting: str | None = None        # why capacity is not there yet (a pending allocation's reason), for people


@dataclass(frozen=True)
class QueuedJob:
    requirements: dict           # as submitted
    time_limit_s: float          # a host made for it must live at least this long


@dataclass(frozen=True)
class Demand:
    """The queue as a source that makes hosts sees it."""
    queued: Sequence[QueuedJob]


class HostSource(ABC):
    """A kind of host. `hosts()` is read every tick: a host that appears gets a session, one that disappears has its
    in-flight jobs settled as lost by the scheduler (the infrastructure lost them)."""

    name: str
    # Set by the scheduler: a source whose hosts changed between ticks (an allocation began to run) calls it to have
    # them read now rather than at the next tick.
    on_change: Callable[[], None] | None = None

    @abstractmethod
    def hosts(self) -> Sequence[HostConfig]:
        """The hosts that exist now."""

    @abstractmethod
    def transport(self, name: str, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S) -> Transport:
        """How to reach host `name`'s agent."""

    def refresh(self, demand: Demand) -> None:
        """Once a tick, and at once when new work is queued or `on_change` is called: make or release hosts for the
        queue (static hosts: nothing to do)."""

    def facts(self, name: str) -> HostFacts:
        return HostFacts()

    def why_gone(self, name: str) -> str | None:
        """Why host `name` went away, in the infrastructure's words (Slurm's end state), if the source knows."""
        return None

    def could_make(self, requirements: dict, time_limit_s: float | None = None) -> bool:
        """True when this source would make a host for a job with these requirements that lives past the job's time
        limit (None: any lifetime; static hosts: never)."""
        return False

    def pending(self) -> dict[str, HostFacts]:
        """Capacity asked for and not there yet (a pending allocation, an unreachable cluster), with `waiting`
        saying why, for people: {name: facts}."""
        return {}

    def close(self) -> None:
        """Release what the source holds (static hosts: nothing)."""


class StaticHosts(HostSource):
    """The hosts listed in hosts.yaml: they exist as long as the file says so."""

    def __init__(self, hosts_file: HostsFile):
        self.hosts_file = hosts_file
        self.name = str(hosts_file.path)

    def hosts(self) -> Sequence[HostConfig]:
        return self.hosts_file.hosts

    def transport(self, name: str, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S) -> Transport:
        return make_transport(self.hosts_file, name, connect_timeout)

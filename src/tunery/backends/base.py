"""The seam between the scheduler and where workers run: capacity, start, placement, cancel.

A backend owns placement: the scheduler asks it for a slot of a tier (``claim``), hands it
the attempt (``start``), and later, possibly from a restarted control plane, asks where the
worker is (``placement``: pending and why, running on a node, or gone). What ``start`` hands
back is a ``Handle``: its own kind plus a reference string only it reads (the local backend
packs a process id and start time into it, Ray an actor name). The scheduler stores handles
through ``tunery.runs.store`` and passes them back unread. Implementations: ``local`` (a
process group per attempt on this machine's nodes), ``ray`` (an actor per attempt on a Ray
cluster) and ``fake`` (in memory, for tests).

Every backend runs the same worker protocol (``tunery.worker.attempt``): a worker gets its
attempt id and token (never on a command line), and everything else over the API.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


@dataclass(frozen=True)
class AttemptLaunch:
    """What a worker needs to find its spec: the server, its attempt id and fencing token.

    ``token`` is a secret: backends hand it over by environment, stdin or an RPC argument,
    never on a command line. ``node`` is the node ``claim`` gave ("" where the backend
    places the attempt itself). Everything else the worker reads from its spec.
    """

    attempt_id: str
    run_id: str
    number: int
    tier: str
    node: str
    token: str
    server_url: str


class WorkerState(StrEnum):
    PENDING = "pending"
    """Waiting for placement (the cluster has no free node of its tier yet)."""
    RUNNING = "running"
    """Placed and started (it may still be loading)."""
    GONE = "gone"
    """Exited, killed, or lost with its node."""


@dataclass(frozen=True)
class Placement:
    """Where a started worker is: ``node`` once placed, ``reason`` while pending."""

    state: WorkerState
    node: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class TierCapacity:
    """Slots of a tier: on live nodes (``total``) and free now (``free``)."""

    total: int
    free: int


@dataclass(frozen=True)
class Handle:
    """Enough to find a worker again after a control-plane restart; opaque outside its
    backend."""

    backend: str
    ref: str

    def encode(self) -> str:
        return f"{self.backend}:{self.ref}"

    @classmethod
    def decode(cls, text: str) -> Handle:
        backend, _, ref = text.partition(":")
        return cls(backend, ref)


class Backend(Protocol):
    kind: str
    """The ``Handle.backend`` of the handles it makes."""

    @property
    def default_tier(self) -> str | None:
        """The tier a submission that names none runs on; None: submissions must name one."""

    def serves(self, tier: str) -> bool:
        """Whether an attempt of ``tier`` can ever be placed here: a pool of fixed nodes
        serves its nodes' tiers; a cluster every tier it was configured with, since nodes
        may join. A run of a served tier waits for a free node; any other is refused."""

    def capacity(self, tier: str, busy: Collection[str]) -> TierCapacity:
        """The tier's slots; ``busy`` names the nodes that hold a live attempt."""

    def claim(self, tier: str, busy: Collection[str]) -> str | None:
        """A slot for one more attempt of ``tier`` now: the node's name, "" where the backend
        places attempts itself, or None to keep the run in tunery's queue."""

    def start(self, launch: AttemptLaunch) -> Handle:
        """Start the worker; returns once it is spawned or submitted (not loaded).

        Raises OSError when it cannot."""

    def placement(self, handle: Handle) -> Placement:
        """Whether the worker is pending, running (and where), or gone."""

    def cancel(self, handle: Handle, *, grace_seconds: float) -> None:
        """Stop the worker and everything it started, and free its slot."""

    def collect(self) -> None:
        """Release what workers that have exited still hold (called every scheduler tick)."""


def pool_default_tier(nodes: Iterable[tuple[str, str]]) -> str | None:
    """The first node's tier, for pools of named nodes (local, fake)."""
    return next((tier for _, tier in nodes), None)


def pool_serves(nodes: Iterable[tuple[str, str]], tier: str) -> bool:
    return any(node_tier == tier for _, node_tier in nodes)


def node_slots(
    nodes: Iterable[tuple[str, str]], tier: str, busy: Collection[str]
) -> tuple[TierCapacity, str | None]:
    """Capacity and the first idle node of ``tier`` among ``(name, tier)`` pairs: how a
    pool of named one-attempt nodes (local, fake) answers ``capacity`` and ``claim``."""
    names = [name for name, node_tier in nodes if node_tier == tier]
    idle = [name for name in names if name not in busy]
    return TierCapacity(total=len(names), free=len(idle)), (idle[0] if idle else None)

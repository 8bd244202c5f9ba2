"""An in-memory backend: workers that exist only as records, for scheduler tests.

``start`` records the launch and returns a handle; nothing runs. Placement comes from
``nodes`` (``(name, tier)`` pairs, one attempt each) as the local pool's does. Tests play the
worker's part through the control plane's functions (spec, reports) and the backend's
controls: ``lose`` (the worker vanished), ``fail_starts`` (spawning raises OSError),
``hold`` (a started worker waits for placement, with a reason, as on a full cluster). With
``cluster`` set it places attempts itself, as the Ray backend does: ``claim`` gives "", each
started worker waits until ``place`` names its node.
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tunery.backends.base import (
    AttemptLaunch,
    Handle,
    Placement,
    TierCapacity,
    WorkerState,
    node_slots,
    pool_default_tier,
    pool_serves,
)

if TYPE_CHECKING:
    from tunery.settings import Settings

KIND = "fake"


@dataclass
class FakeBackend:
    nodes: list[tuple[str, str]] = field(default_factory=list)
    """``(name, tier)`` of each node."""
    kind: str = KIND
    fail_starts: int = 0
    """How many of the next starts raise OSError."""
    launches: list[AttemptLaunch] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    """Attempt ids whose workers were cancelled, in order."""
    pending: dict[str, str] = field(default_factory=dict)
    """Attempt id → why it waits for placement (``hold``)."""
    cluster: bool = False
    """Place attempts itself: one waits for placement per tier at a time, the others stay
    in tunery's queue (as ``RayBackend.claim``)."""
    placed: dict[str, str] = field(default_factory=dict)
    """Attempt id → the node ``place`` put it on (``cluster``)."""
    tiers: list[str] | None = None
    """The tiers a ``cluster`` serves, first the default (None: its nodes' tiers)."""
    _alive: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def for_settings(cls, settings: Settings) -> FakeBackend:
        """A fake pool of the settings' nodes."""
        return cls(nodes=[(node.name, node.tier) for node in settings.nodes])

    @property
    def default_tier(self) -> str | None:
        if self.tiers is not None:
            return self.tiers[0] if self.tiers else None
        return pool_default_tier(self.nodes)

    def serves(self, tier: str) -> bool:
        if self.tiers is not None:
            return tier in self.tiers
        return pool_serves(self.nodes, tier)

    def capacity(self, tier: str, busy: Collection[str]) -> TierCapacity:
        return node_slots(self.nodes, tier, busy)[0]

    def claim(self, tier: str, busy: Collection[str]) -> str | None:
        if self.cluster:
            with self._lock:
                waiting = any(
                    launch.tier == tier and launch.attempt_id in self.pending
                    for launch in self.launches
                )
            return None if waiting else ""
        return node_slots(self.nodes, tier, busy)[1]

    def start(self, launch: AttemptLaunch) -> Handle:
        with self._lock:
            if self.fail_starts > 0:
                self.fail_starts -= 1
                raise OSError("the fake node refused to start a worker")
            self.launches.append(launch)
            self._alive.add(launch.attempt_id)
            if self.cluster:
                self.pending[launch.attempt_id] = f"no node of tier {launch.tier} is free yet"
        return Handle(KIND, launch.attempt_id)

    def placement(self, handle: Handle) -> Placement:
        with self._lock:
            if handle.ref not in self._alive:
                return Placement(WorkerState.GONE)
            if handle.ref in self.pending:
                return Placement(WorkerState.PENDING, reason=self.pending[handle.ref])
            node = self.placed.get(handle.ref) or next(
                (launch.node for launch in self.launches if launch.attempt_id == handle.ref), None
            )
            return Placement(WorkerState.RUNNING, node=node)

    def hold(self, attempt_id: str, reason: str) -> None:
        """The worker of ``attempt_id`` waits for placement until ``place`` is called."""
        with self._lock:
            self.pending[attempt_id] = reason

    def place(self, attempt_id: str, node: str | None = None) -> None:
        """The worker of ``attempt_id`` is placed: on ``node`` where the backend chooses
        (``cluster``), else on the node it was claimed for."""
        with self._lock:
            self.pending.pop(attempt_id, None)
            if node is not None:
                self.placed[attempt_id] = node

    def cancel(self, handle: Handle, *, grace_seconds: float) -> None:
        with self._lock:
            if handle.ref in self._alive:
                self._alive.discard(handle.ref)
                self.cancelled.append(handle.ref)

    def collect(self) -> None:
        """Nothing to release: fake workers hold nothing."""

    def lose(self, attempt_id: str) -> None:
        """The worker of ``attempt_id`` vanished without a word (a killed process)."""
        with self._lock:
            self._alive.discard(attempt_id)

    def running(self) -> set[str]:
        """Attempt ids whose workers exist now."""
        with self._lock:
            return set(self._alive)

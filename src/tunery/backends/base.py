"""The seam between the scheduler and where workers run: start, poll, cancel.

A backend starts one worker per attempt and can be asked, later and possibly from a
restarted control plane, whether it is still running. What it hands back is a ``Handle``:
its own kind plus a reference string only it reads (the local backend packs a process id
and start time into it; a Ray backend would use an actor id). The scheduler stores handles
through ``tunery.runs.store`` and passes them back unread. Implementations: ``local`` (a
process group per attempt on this machine) and ``fake`` (in memory, for tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class AttemptLaunch:
    """What a worker needs to find its spec: the server, its attempt id and fencing token.

    Everything else (recipe, threads, where to write) the worker reads from its spec.
    """

    attempt_id: str
    token: str
    server_url: str
    node: str
    log_path: str


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

    def start(self, launch: AttemptLaunch) -> Handle:
        """Start the worker; returns once it is spawned (not loaded). Raises OSError."""

    def alive(self, handle: Handle) -> bool:
        """Whether the worker still exists."""

    def cancel(self, handle: Handle, *, grace_seconds: float) -> None:
        """Stop the worker and everything it started: terminate, then kill after the grace."""

    def collect(self) -> None:
        """Release what workers that have exited still hold (called every scheduler tick)."""

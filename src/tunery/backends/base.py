"""The seam between the scheduler and where workers run: start, poll, cancel.

A backend starts one worker per attempt and can be asked, later and possibly from a
restarted control plane, whether it is still running. Implementations: ``local`` (a process
group per attempt on this machine); a Ray backend fits the same three calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class AttemptLaunch:
    """What a worker needs to find its spec: the server, its attempt id and fencing token."""

    attempt_id: str
    token: str
    server_url: str
    node: str
    threads: int | None
    log_path: str


@dataclass(frozen=True)
class Handle:
    """Enough to find the worker again after a control-plane restart."""

    pid: int
    started: str  # the process's start time, so a reused pid is not mistaken for it


class Backend(Protocol):
    def start(self, launch: AttemptLaunch) -> Handle:
        """Start the worker; returns once it is spawned (not loaded)."""

    def alive(self, handle: Handle) -> bool:
        """Whether the worker process still exists."""

    def cancel(self, handle: Handle, *, grace_seconds: float) -> None:
        """Stop the worker and everything it started: terminate, then kill after the grace."""

    def collect(self) -> None:
        """Release what workers that have exited still hold (called every scheduler tick)."""

"""An in-memory backend: workers that exist only as records, for scheduler tests.

``start`` records the launch and returns a handle; nothing runs. Tests play the worker's
part through the control plane's functions (spec, reports) and the backend's controls:
``lose`` (the worker vanished), ``fail_starts`` (spawning raises OSError).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from tunery.backends.base import AttemptLaunch, Handle

KIND = "fake"


@dataclass
class FakeBackend:
    kind: str = KIND
    fail_starts: int = 0
    """How many of the next starts raise OSError."""
    launches: list[AttemptLaunch] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    """Attempt ids whose workers were cancelled, in order."""
    _alive: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, launch: AttemptLaunch) -> Handle:
        with self._lock:
            if self.fail_starts > 0:
                self.fail_starts -= 1
                raise OSError("the fake node refused to start a worker")
            self.launches.append(launch)
            self._alive.add(launch.attempt_id)
        return Handle(KIND, launch.attempt_id)

    def alive(self, handle: Handle) -> bool:
        with self._lock:
            return handle.ref in self._alive

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

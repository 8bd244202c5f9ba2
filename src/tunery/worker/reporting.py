"""The worker's reporter: events to the control plane over HTTP, the cancel flag back.

Training never waits on the network: events go into a queue that a background thread
sends in batches (an empty batch is a heartbeat). If the control plane is unreachable
(restarting, say) the thread keeps retrying and nothing is lost or reordered. A 409 means
this attempt was fenced off (cancelled, or declared lost and replaced): the run stops at
the next step boundary and nothing more is sent.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import httpx

from tunery.pipeline.reporting import StepMetrics

BATCH_SECONDS = 0.05
RETRY_SECONDS = 0.5
_WAKE: dict[str, Any] = {"kind": "wake"}


class Fenced(Exception):
    """The control plane no longer accepts writes from this attempt."""


class HttpReporter:
    def __init__(
        self, client: httpx.Client, attempt_id: str, token: str, *, heartbeat_seconds: float
    ) -> None:
        self._client = client
        self._path = f"/internal/attempts/{attempt_id}/events"
        self._headers = {"X-Attempt-Token": token}
        self._heartbeat = heartbeat_seconds
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue()
        self._lock = threading.Lock()
        self._stop_requested = threading.Event()
        self._closed = threading.Event()
        self.fenced = False
        # Events taken off the queue but not yet delivered; finish() sends them first.
        self._unsent: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._loop, name="tunery-reporter", daemon=True)

    def start(self) -> None:
        self._thread.start()

    # Reporter protocol -------------------------------------------------------------

    def phase(self, name: str) -> None:
        self._queue.put({"kind": "phase", "data": {"phase": name}})

    def log(self, message: str) -> None:
        self._queue.put({"kind": "log", "data": {"message": message}})

    def metrics(self, metrics: StepMetrics) -> None:
        self._queue.put({"kind": "metrics", "data": metrics.as_dict()})

    def resumed(self, history: list[dict[str, Any]]) -> None:
        self._queue.put({"kind": "history", "data": {"steps": history}})

    def should_stop(self) -> bool:
        return self._stop_requested.is_set()

    # Delivery ----------------------------------------------------------------------

    def finish(self, event: dict[str, Any], *, deadline_seconds: float = 600.0) -> bool:
        """Deliver everything queued plus ``event``; False if fenced or out of time."""
        self._closed.set()
        self._queue.put(_WAKE)  # the sender may be asleep on the queue
        self._thread.join()
        batch = [*self._unsent, *self._drain(), event]
        deadline = time.monotonic() + deadline_seconds
        while time.monotonic() < deadline and not self.fenced:
            if self._send(batch):
                return True
            time.sleep(1.0)
        return False

    def _drain(self) -> list[dict[str, Any]]:
        batch = []
        while True:
            try:
                event = self._queue.get_nowait()
            except queue.Empty:
                return batch
            if event is not _WAKE:
                batch.append(event)

    def _loop(self) -> None:
        pending = self._unsent
        last_sent = 0.0
        while not self._closed.is_set() and not self.fenced:
            if not pending:
                # Sleep until the first event (or the heartbeat is due), then give the
                # training loop a moment to add more, so bursts go out as one batch.
                try:
                    event = self._queue.get(timeout=self._heartbeat)
                except queue.Empty:
                    event = _WAKE
                if event is not _WAKE:
                    pending.append(event)
                    time.sleep(BATCH_SECONDS)
            else:
                time.sleep(RETRY_SECONDS)
            pending.extend(self._drain())
            if not pending and time.monotonic() - last_sent < self._heartbeat:
                continue
            if self._send(pending):
                pending.clear()
                last_sent = time.monotonic()

    def _send(self, batch: list[dict[str, Any]]) -> bool:
        """True once delivered; False to try again later (network or server error)."""
        try:
            response = self._client.post(self._path, json={"events": batch}, headers=self._headers)
        except httpx.HTTPError:
            return False
        if response.status_code in (404, 409):
            self.fenced = True
            self._stop_requested.set()
            return False
        if response.status_code >= 400:
            return False
        if response.json().get("cancel"):
            self._stop_requested.set()
        return True
